"""Reliability of a snapshot's task gradients from split halves, and the corrected cosine.

numpy only (no torch): the trace reader and the analyses use it on stored arrays.

Model. On a traced step, task i's gradient is captured as two independent halves (disjoint
micro-batches, or the even and odd steps of a window), ``a = s + n_a`` and ``b = s + n_b``,
where ``s`` is the half's expected gradient (the signal) and the sampling noises ``n_a``,
``n_b`` are independent with mean 0. The snapshot's gradient is the full ``g = a + b``. Then

    E[a . b]  = |s|^2                       (the noise terms vanish in expectation)
    E[|g|^2]  = |2 s|^2 + E|n_a|^2 + E|n_b|^2

so, with the split-half products ``aa = a.a``, ``bb = b.b``, ``ab = a.b`` stored per snapshot
(array ``split_half`` [G, K, 3]), the *reliability* (signal fraction) of the FULL gradient is
estimated by

    r = 4 ab / |a + b|^2 = 4 ab / (aa + bb + 2 ab)

This is the estimator used here. It equals the Spearman-Brown prophecy ``2 r_h / (1 + r_h)``
of the half reliability ``r_h = 2 ab / (aa + bb)`` when ``aa = bb`` (equal halves) and stays
right when the halves are unequal (it only assumes the halves share the signal ``s``; with
halves of different sizes, e.g. 1 and 2 micro-batches of the same rows' kind, ``s`` differs
between them and ``r`` is then approximate).

Corrected cosine. For tasks i != j with independent data, ``E[g_i . g_j] = 4 s_i . s_j``, and
``|E g_i|^2 = 4 |s_i|^2`` is estimated by ``4 ab_i``. The cosine of the tasks' expected
gradients is therefore estimated by

    cos_c_ij = G_ij / sqrt(4 ab_i * 4 ab_j)     (i != j; diagonal 1)

NaN where ``ab <= 0`` or missing. The raw cosine ``G_ij / sqrt(G_ii G_jj)`` equals
``cos_c_ij * sqrt(r_i r_j)`` in expectation: sampling noise attenuates it towards 0.

Single snapshots are noisy: a snapshot's ``ab`` can be <= 0 when the noise dominates, and a
ratio of noisy estimates is biased. For a matrix averaged over snapshots, average the products
first and divide once (a ratio of means, :func:`corrected_cosine_from_means`); do not average
per-snapshot corrected cosines. A correction only rescales: it does not remove the noise in
``G_ij`` itself; less noise needs more gradient (larger batches, windows, probe batches).
"""

from __future__ import annotations

import numpy as np

from geomtrace._errors import InvalidInputError

__all__ = ["corrected_cosine", "corrected_cosine_from_means", "split_half_reliability"]


def _split(split_half: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    split = np.asarray(split_half, dtype=np.float64)
    if split.ndim < 1 or split.shape[-1] != 3:
        raise InvalidInputError(
            f"split_half must have a last axis of 3 (a.a, b.b, a.b), got shape {split.shape}"
        )
    return split[..., 0], split[..., 1], split[..., 2]


def split_half_reliability(split_half: np.ndarray) -> np.ndarray:
    """Reliability ``r = 4 ab / (aa + bb + 2 ab)`` of the full gradient, over ``[..., 3]``.

    Returns ``[...]``; NaN where a product is missing or ``|a + b|^2 <= 0``. Not clipped: a
    single snapshot's ``r`` can be negative (``ab < 0``) when noise dominates.
    """
    aa, bb, ab = _split(split_half)
    total = aa + bb + 2 * ab
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, 4 * ab / np.where(total > 0, total, 1.0), np.nan)


def corrected_cosine(gram: np.ndarray, split_half: np.ndarray) -> np.ndarray:
    """``cos_c_ij = G_ij / sqrt(4 ab_i 4 ab_j)`` (diagonal 1) for ``gram`` [..., K, K] and
    ``split_half`` [..., K, 3]; NaN where ``ab <= 0``, missing, or ``G_ij`` missing."""
    gram = np.asarray(gram, dtype=np.float64)
    _, _, ab = _split(split_half)
    if gram.shape[-1] != gram.shape[-2] or gram.shape[:-1] != ab.shape:
        raise InvalidInputError(
            f"gram [..., K, K] and split_half [..., K, 3] disagree: {gram.shape} vs "
            f"{np.shape(split_half)}"
        )
    valid = (ab > 0) & np.isfinite(np.asarray(split_half, dtype=np.float64)).all(axis=-1)
    signal = np.sqrt(np.where(valid, 4 * ab, np.nan))
    denom = signal[..., :, None] * signal[..., None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = gram / denom
    k = gram.shape[-1]
    diag = np.where(valid, 1.0, np.nan)
    out[..., np.arange(k), np.arange(k)] = diag
    return out


def corrected_cosine_from_means(gram_mean: np.ndarray, split_half_mean: np.ndarray) -> np.ndarray:
    """The corrected cosine of matrices averaged over snapshots, as a ratio of means.

    ``gram_mean`` [K, K] and ``split_half_mean`` [K, 3] are means over the same snapshots
    (e.g. ``np.nanmean(trace.gram(g), 0)`` and ``np.nanmean(trace.split_half(g), 0)``); the
    result is ``mean(G_ij) / sqrt(4 mean(ab_i) 4 mean(ab_j))``, the robust estimator for an
    averaged matrix (single-snapshot ``ab`` can be <= 0).
    """
    return corrected_cosine(gram_mean, split_half_mean)
