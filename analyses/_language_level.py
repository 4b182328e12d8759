"""Claims about languages: the matrix's own reliability, disattenuation, the language jackknife.

A Mantel rho between a run's similarity matrix X and a typology distance Y answers "how does
*this run's* matrix relate to Y?". A claim about languages ("typologically closer languages
have more aligned gradients") needs two more things:

1. **Noise removed.** X = T + E, the run's true similarity plus snapshot noise. A correlation
   with a noisy X is attenuated towards 0 by sqrt(rel_X), rel_X = var(T) / var(X) over the
   pairs (Spearman 1904). rel_X is the matrix's own split-half reliability: the snapshots of the
   window are split by parity (interleaved, so slow drift is shared and the noise is
   independent), the two half-window matrices X_even, X_odd are correlated over the pairs, and
   Spearman-Brown gives the full window's reliability, ``rel = 2 r_h / (1 + r_h)``
   (:func:`matrix_reliability`). Then ``rho_dis = rho / sqrt(rel)`` and, for a partial
   correlation given a noise-free control Z, r_xy and r_xz are both disattenuated before the
   partial formula (:func:`disattenuated`). Ranks (Spearman) follow the same algebra to first
   order; ``analyses/README.md`` (Calibration) has the measured bias. Below
   :data:`MATRIX_RELIABILITY_FLOOR` the correction is not estimable (NaN).
2. **Languages as the unit.** The languages are a sample; another sample gives another rho.
   The node jackknife (Snijders & Borgatti 1999) leaves each language out with all its pairs
   and recomputes the statistic; its standard error, on Fisher's z scale, is combined with the
   snapshot bootstrap's: ``se = sqrt(se_lang^2 + se_snap^2)``, and the interval is
   ``tanh(z +- t_{n-1} se)`` (:func:`language_interval`). This interval answers "what is the
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


def rank_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman r of each row of ``a`` [B, m] with ``b`` [m] or with each row of ``b`` [B, m]."""
    ra = rank_rows(np.atleast_2d(a))
    b = np.asarray(b, dtype=np.float64)
    rb = rank_rows(b) if b.ndim == 2 else rank_rows(b[None])[0]
    return correlation_rows(ra, rb, "pearson")


def matrix_reliability(even: np.ndarray, odd: np.ndarray) -> np.ndarray:
    """Spearman-Brown reliability 2 r / (1 + r) of the pair values of half-window matrices.

    ``even``, ``odd``: [K, K] or [B, K, K] matrices from the even and odd snapshots of the
    window; r = Spearman r of their upper triangles. Returns a float or [B] (NaN where r <= 0
    or undefined: the halves share no ranking of the pairs, so nothing can be corrected).
    """
    single = np.ndim(even) == 2
    ue, uo = np.atleast_2d(upper(np.asarray(even))), np.atleast_2d(upper(np.asarray(odd)))
    r = rank_correlation(ue, uo)
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


def language_interval(
    estimate: float,
    leave_one_out: np.ndarray,
    replicates: np.ndarray,
    level: float = LEVEL,
) -> tuple[float, float]:
    """tanh(z +- t_{n-1} sqrt(se_lang^2 + se_snap^2)) on Fisher's z scale.

    ``leave_one_out`` [n]: the statistic with each language left out; ``replicates`` [B]: the
    snapshot bootstrap replicates (their sd is se_snap). NaN when the estimate or the
    jackknife is undefined.
    """
    if not np.isfinite(estimate):
        return float("nan"), float("nan")
    n = int(np.isfinite(leave_one_out).sum())
    se_lang = jackknife_se(fisher_z(leave_one_out))
    boot = fisher_z(np.asarray(replicates, dtype=np.float64))
    boot = boot[np.isfinite(boot)]
    se_snap = float(boot.std(ddof=1)) if boot.size >= 10 else 0.0
    if not np.isfinite(se_lang):
        return float("nan"), float("nan")
    se = np.hypot(se_lang, se_snap)
    half = float(student_t.ppf((1 + level) / 2, max(n - 1, 1))) * se
    z = float(fisher_z(estimate))
    return float(np.tanh(z - half)), float(np.tanh(z + half))
