"""Claims about languages: the matrix's own reliability, disattenuation, the language jackknife.

A Mantel rho between a run's similarity matrix X and a typology distance Y answers "how does
*this run's* matrix relate to Y?". A claim about languages ("typologically closer languages
have more aligned gradients") needs two more things:

1. **Noise removed.** X = T + E, the run's true similarity plus snapshot noise. A Pearson
   correlation with a noisy X is attenuated towards 0 by sqrt(rel_X), rel_X = var(T) / var(X)
   over the pairs (Spearman 1904). rel_X is the matrix's own split-half reliability: the
   snapshots of the window are split by parity (interleaved, so slow drift is shared and the
   noise is independent), the two half-window matrices X_even, X_odd are correlated over the
   pairs (Pearson r_h), and Spearman-Brown gives the full window's reliability,
   ``rel = 2 r_h / (1 + r_h)`` (:func:`matrix_reliability`). The disattenuated statistic is
   ``r(X, rank Y) / sqrt(rel)``: Pearson in the similarity values (the attenuation algebra is
   exact for Pearson; a Spearman rank of a noisy X is attenuated by more than sqrt(rel),
   measured -0.1 in the calibration harness), ranks in the noise-free typology distance Y
   (robust to its scale). For a partial correlation given a noise-free control Z, r_xy and r_xz
   are both disattenuated before the partial formula (:func:`disattenuated`). Below
   :data:`MATRIX_RELIABILITY_FLOOR` the correction is not estimable (NaN). What is removed is
   the snapshot noise of this run; task-specific drift along the trajectory is shared by the
   two halves and stays (another seed would change it: ``across_seeds``).
2. **Languages as the unit.** The languages are a sample; another sample gives another rho.
   The node jackknife (Snijders & Borgatti 1999) leaves each language out with all its pairs
   and recomputes the statistic (on the noisy matrix, so the snapshot noise of each
   language's pairs is part of what it sees); the interval is ``tanh(z +- t_{n-1} se)`` on
   Fisher's z scale (:func:`language_interval`). This interval answers "what is the
   relation in languages like these, noise removed?"; the snapshot interval of rho answers
   "how much would this run's matrix move with other snapshots?".
"""

from __future__ import annotations

import numpy as np
from scipy.stats import t as student_t

from analyses._uncertainty import (
    LEVEL,
    correlation_rows,
    fisher_z,
    jackknife_se,
    partial_from_r,
    rank_rows,
    upper,
)

#: Matrix reliability below which a disattenuated correlation is "not estimable".
MATRIX_RELIABILITY_FLOOR = 0.2


def value_rank_correlation(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row of ``x`` [B, m] (values) with the ranks of ``y`` [m]."""
    return correlation_rows(np.atleast_2d(x), rank_rows(np.asarray(y)[None])[0], "pearson")


def rank_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman r of each row of ``a`` [B, m] with ``b`` [m] or with each row of ``b`` [B, m]."""
    ra = rank_rows(np.atleast_2d(a))
    b = np.asarray(b, dtype=np.float64)
    rb = rank_rows(b) if b.ndim == 2 else rank_rows(b[None])[0]
    return correlation_rows(ra, rb, "pearson")


def matrix_reliability(even: np.ndarray, odd: np.ndarray) -> np.ndarray:
    """Spearman-Brown reliability 2 r / (1 + r) of the pair values of half-window matrices.

    ``even``, ``odd``: [K, K] or [B, K, K] matrices from the even and odd snapshots of the
    window; r = Pearson r of their upper triangles. Returns a float or [B] (NaN where r <= 0
    or undefined: the halves do not agree on the pairs, so nothing can be corrected).
    """
    single = np.ndim(even) == 2
    ue, uo = np.atleast_2d(upper(np.asarray(even))), np.atleast_2d(upper(np.asarray(odd)))
    r = correlation_rows(ue, uo, "pearson")
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(r > 0, 2 * r / (1 + r), np.nan)
    return float(rel[0]) if single else rel


def disattenuated(
    rxy: np.ndarray,
    reliability: np.ndarray,
    rxz: np.ndarray | None = None,
    ryz: float | None = None,
    floor: float = MATRIX_RELIABILITY_FLOOR,
) -> np.ndarray:
    """rho_xy / sqrt(rel) (or the partial r_xy.z from r_xy / sqrt(rel), r_xz / sqrt(rel), r_yz),
    clipped to [-1, 1]; NaN where ``reliability`` < ``floor``."""
    rel = np.asarray(reliability, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        root = np.sqrt(np.where(rel >= floor, rel, np.nan))
        dxy = np.clip(np.asarray(rxy) / root, -1.0, 1.0)
        if rxz is None:
            return dxy
        dxz = np.clip(np.asarray(rxz) / root, -1.0, 1.0)
        return np.clip(partial_from_r(dxy, dxz, ryz), -1.0, 1.0)


def detectable_effect(
    low: float, high: float, n: int, level: float = LEVEL, power: float = 0.8
) -> float:
    """The smallest |correlation| a two-sided test at 1 - ``level`` detects with ``power``,
    given a :func:`language_interval` [low, high] over ``n`` languages: with
    se = (atanh(high) - atanh(low)) / (2 t_{n-1}((1 + level) / 2)) the interval's Fisher-z
    standard error, tanh((t_{n-1}((1 + level) / 2) + t_{n-1}(power)) se). It states what a
    "not detected" could have detected at this size (a null result's power, issue 22). NaN
    when the interval is undefined."""
    se = interval_se(low, high, n, level)
    if not np.isfinite(se):
        return float("nan")
    df = max(n - 1, 1)
    return float(np.tanh((student_t.ppf((1 + level) / 2, df) + student_t.ppf(power, df)) * se))


def interval_se(low: float, high: float, n: int, level: float = LEVEL) -> float:
    """The Fisher-z standard error behind a :func:`language_interval` [low, high] over ``n``
    languages: (atanh(high) - atanh(low)) / (2 t_{n-1}((1 + level) / 2)); NaN when the
    interval is undefined or empty."""
    if not (np.isfinite(low) and np.isfinite(high)) or n < 3 or high <= low:
        return float("nan")
    t_level = float(student_t.ppf((1 + level) / 2, max(n - 1, 1)))
    z_high, z_low = np.arctanh(min(high, 1 - 1e-12)), np.arctanh(max(low, -1 + 1e-12))
    return float(z_high - z_low) / (2 * t_level)


def language_interval(
    estimate: float, leave_one_out: np.ndarray, level: float = LEVEL
) -> tuple[float, float]:
    """tanh(z +- t_{n-1} se_lang) on Fisher's z scale, se_lang the node-jackknife standard
    error of the ``n`` leave-one-out values. NaN when the estimate or the jackknife is
    undefined.

    The jackknife sees both sources of error of a claim about languages: which languages were
    sampled, and the snapshot noise in each language's pairs (every leave-one-out value is
    computed on the noisy matrix), so no snapshot term is added; for pairwise (dyadic)
    statistics the node jackknife is conservative (Snijders & Borgatti 1999; measured in the
    calibration harness, ``analyses/README.md``).
    """
    if not np.isfinite(estimate):
        return float("nan"), float("nan")
    n = int(np.isfinite(leave_one_out).sum())
    se = jackknife_se(fisher_z(leave_one_out))
    if not np.isfinite(se):
        return float("nan"), float("nan")
    half = float(student_t.ppf((1 + level) / 2, max(n - 1, 1))) * se
    z = float(fisher_z(estimate))
    return float(np.tanh(z - half)), float(np.tanh(z + half))
