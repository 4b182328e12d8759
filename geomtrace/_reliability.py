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
ratio of noisy estimates is biased. For a matrix over a window of snapshots, average the
products first and divide once (a ratio of means, :func:`window_corrected_cosine`); do not
average per-snapshot corrected cosines. A correction only rescales: it does not remove the
noise in ``G_ij`` itself; less noise needs more gradient (larger batches, windows, probes).

Over a window of snapshots s (the estimators ``analyze`` prints; this module is their one
home). Gradients shrink over training, so each snapshot is first divided by a common scale
``c_s = mean_i G_ii(s)`` (the mean squared norm of the tasks present), which keeps late
snapshots from being drowned by early ones without changing any single-snapshot ratio:

    R_i    = mean_s(4 ab_i / c_s) / mean_s(G_ii / c_s)                  (window reliability)
    C_ij   = mean_s(G_ij / c_s) / sqrt(mean_s(4 ab_i / c_s) mean_s(4 ab_j / c_s))

``C_ij`` is bounded: a ratio of noisy means can leave [-1, 1]; it is clipped to [-1, 1], and
reported as not estimable (NaN) when either task's window reliability is below
:data:`RELIABILITY_FLOOR` = 0.2 (below it the denominator is mostly noise: at 0.1 the ratio is not
an estimate of anything, and with tasks between 0.1 and 0.2 the bootstrap interval of the mean
corrected similarity covered 82% instead of 95% in the calibration harness; 88-93% at 0.2).

Centring with unequal noise. Sampling noise adds only to the diagonal of a snapshot's Gram
(E G = 4 S + diag(N), N_i = E|n_a - n_b|^2 for task i), so centring G itself,
(I - 11^T/K) G (I - 11^T/K), turns unequal noise into off-diagonal structure (noisy pairs
pushed down, reliable pairs up). :func:`denoised_gram` replaces the diagonal by its signal
estimate 4 ab_i (i.e. subtracts |a - b|^2, the noise power), so the centred measure is
computed on an estimate of 4 S.
"""

from __future__ import annotations

import numpy as np

from geomtrace._errors import InvalidInputError

__all__ = [
    "RELIABILITY_FLOOR",
    "corrected_cosine",
    "corrected_of_means",
    "denoised_gram",
    "reliability_of_means",
    "scaled_products",
    "snapshot_scale",
    "split_half_reliability",
    "window_corrected_cosine",
    "window_reliability",
]

#: Window reliability below which a corrected similarity is "not estimable" (NaN).
RELIABILITY_FLOOR = 0.2


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


def snapshot_scale(gram: np.ndarray) -> np.ndarray:
    """c_s = mean over the tasks present (finite, positive G_ii) of G_ii(s): [S] for [S, K, K]."""
    from geomtrace._summaries import nanmean

    diag = np.diagonal(np.asarray(gram, dtype=np.float64), axis1=-2, axis2=-1)
    return nanmean(np.where(diag > 0, diag, np.nan), axis=-1)


def scaled_products(
    gram: np.ndarray, split_half: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Per-snapshot products divided by the common scale c_s (see the module docstring).

    Returns ``products`` [S, K, K] = G / c_s, ``signal`` [S, K] = 4 ab / c_s (None without
    halves) and ``power`` [S, K] = G_ii / c_s. Averaging these over any subset of snapshots and
    calling :func:`corrected_of_means` / :func:`reliability_of_means` gives the window
    estimators, so a bootstrap replicate costs a mean, not a re-read.
    """
    gram = np.asarray(gram, dtype=np.float64)
    scale = snapshot_scale(gram)
    with np.errstate(invalid="ignore", divide="ignore"):
        products = gram / scale[:, None, None]
        power = np.diagonal(gram, axis1=-2, axis2=-1) / scale[:, None]
        signal = None
        if split_half is not None:
            _, _, ab = _split(split_half)
            signal = 4.0 * ab / scale[:, None]
    return products, signal, power


def reliability_of_means(signal: np.ndarray, power: np.ndarray) -> np.ndarray:
    """R_i = mean_s(signal_si) / mean_s(power_si) over the snapshots given: [K] (NaN: none)."""
    from geomtrace._summaries import nanmean

    num, den = nanmean(signal), nanmean(power)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def corrected_of_means(
    products: np.ndarray,
    signal: np.ndarray,
    *,
    reliability: np.ndarray | None = None,
    floor: float = RELIABILITY_FLOOR,
) -> np.ndarray:
    """C_ij = mean_s(P_ij) / sqrt(mean_s(sig_i) mean_s(sig_j)), clipped to [-1, 1]: [K, K].

    ``products`` [S, K, K] and ``signal`` [S, K] as returned by :func:`scaled_products` (any
    subset of snapshots). Diagonal 1 for the tasks that are estimable; NaN rows and columns
    for a task whose mean signal is <= 0 or, with ``reliability`` [K] given (the window
    reliability :func:`reliability_of_means`), whose reliability is below ``floor``.
    """
    from geomtrace._summaries import nanmean

    num = nanmean(products)
    den = nanmean(signal)
    ok = den > 0
    if reliability is not None:
        ok &= np.asarray(reliability) >= floor
    with np.errstate(invalid="ignore", divide="ignore"):
        root = np.sqrt(np.where(ok, den, np.nan))
        out = np.clip(num / (root[:, None] * root[None, :]), -1.0, 1.0)
    K = out.shape[-1]
    out[np.arange(K), np.arange(K)] = np.where(ok, 1.0, np.nan)
    return out


def window_reliability(gram: np.ndarray, split_half: np.ndarray) -> np.ndarray:
    """R_i over the snapshots of ``gram`` [S, K, K] and ``split_half`` [S, K, 3]: [K]."""
    _, signal, power = scaled_products(gram, split_half)
    return reliability_of_means(signal, power)


def window_corrected_cosine(
    gram: np.ndarray, split_half: np.ndarray, *, floor: float = RELIABILITY_FLOOR
) -> np.ndarray:
    """The noise-corrected similarity over a window of snapshots: [K, K] (see module doc).

    ``gram`` [S, K, K] and ``split_half`` [S, K, 3] of the same snapshots, e.g.
    ``trace.gram(g)[mask]`` and ``trace.split_half(g)[mask]``. This is the number ``analyze``
    prints for ``measure="corrected"``.
    """
    gram = np.asarray(gram, dtype=np.float64)
    if gram.ndim != 3 or np.shape(split_half)[:-1] != gram.shape[:-1]:
        raise InvalidInputError(
            f"gram [S, K, K] and split_half [S, K, 3] disagree: {gram.shape} vs "
            f"{np.shape(split_half)}"
        )
    products, signal, power = scaled_products(gram, split_half)
    reliability = reliability_of_means(signal, power)
    return corrected_of_means(products, signal, reliability=reliability, floor=floor)


def denoised_gram(gram: np.ndarray, split_half: np.ndarray) -> np.ndarray:
    """G with each diagonal G_ii replaced by its signal estimate 4 ab_i: [..., K, K].

    E[G_ij] = 4 s_i.s_j off the diagonal, but E[G_ii] = 4|s_i|^2 + noise power; the
    replacement removes the noise power (|a - b|^2) so that centring sees no noise structure.
    """
    out = np.array(gram, dtype=np.float64)
    _, _, ab = _split(split_half)
    K = out.shape[-1]
    out[..., np.arange(K), np.arange(K)] = np.where(
        np.isfinite(np.diagonal(out, axis1=-2, axis2=-1)), 4.0 * ab, np.nan
    )
    return out
