"""Uncertainty of a statistic: block bootstrap over snapshots, percentile intervals, Holm.

A permutation p-value (``analyses._stats``) says whether a pattern beats chance *for a fixed
similarity matrix*. It does not say how much the matrix itself would move if the snapshots
had been drawn again: with small per-task batches most of a gradient is sampling noise, so two
traces of the same run can differ as much as the effects reported. The interval here carries
that second uncertainty:

- **Moving-block bootstrap over snapshots** (Kunsch 1989). The S snapshots of the window, in
  step order, are resampled as ``ceil(S / L)`` blocks of L consecutive snapshots with random
  starts (then cut to S), so neighbouring snapshots, which share slowly changing parameters,
  stay together. The default block length is ``L = max(1, round(S ** (1/3)))`` (the usual
  n^(1/3) rate; 3 for 20 snapshots). Each replicate gives a step-averaged matrix, and every
  statistic is recomputed on it.
- **Percentile interval**: the (1 - level)/2 and (1 + level)/2 quantiles of the replicates'
  statistic (NaN replicates, e.g. an undefined correlation, are dropped; fewer than 10 finite
  replicates gives NaN).
- **Holm (1979)** step-down adjustment for the family of tests of one table:
  ``p_(k) -> max_{j <= k} min(1, (m - j + 1) p_(j))`` over the p-values sorted increasingly.

Seeds are the third level (``analyses.across_seeds``): a bootstrap over one run's snapshots
cannot see how a different initialisation or data order would change the run.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata

from geomtrace import InvalidInputError

#: Default number of bootstrap replicates and interval level.
N_BOOTSTRAP = 1000
LEVEL = 0.95
_MIN_FINITE = 10


def default_block(n_snapshots: int) -> int:
    """L = max(1, round(S ** (1/3))): the block length of the moving-block bootstrap."""
    return max(1, round(n_snapshots ** (1 / 3)))


def block_bootstrap(
    n: int, n_bootstrap: int = N_BOOTSTRAP, *, block: int | None = None, seed: int = 0
) -> np.ndarray:
    """[B, n] snapshot indices of ``n_bootstrap`` moving-block bootstrap replicates.

    Each row concatenates ``ceil(n / L)`` runs ``s, s+1, ..., s+L-1`` with starts ``s`` drawn
    uniformly from ``0 .. n - L`` (``default_rng(seed)``), cut to n entries.
    """
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 1:
        raise InvalidInputError(
            f"n_bootstrap={n_bootstrap!r}: give a positive number of replicates"
        )
    if n < 1:
        raise InvalidInputError("the bootstrap needs at least one snapshot")
    L = default_block(n) if block is None else int(block)
    if not 1 <= L <= n:
        raise InvalidInputError(f"block={block!r}: must be between 1 and the {n} snapshots")
    rng = np.random.default_rng(seed)
    n_blocks = math.ceil(n / L)
    starts = rng.integers(0, n - L + 1, size=(n_bootstrap, n_blocks))
    index = (starts[:, :, None] + np.arange(L)[None, None, :]).reshape(n_bootstrap, -1)
    return index[:, :n]


def interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates (NaN ones dropped); (nan, nan) if < 10 finite."""
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size < _MIN_FINITE:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi)


def holm(p_values) -> np.ndarray:
    """Holm-adjusted p-values (NaN stays NaN and does not count as a test)."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if not m:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adjusted = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(adjusted)
    return out


def upper(matrices: np.ndarray) -> np.ndarray:
    """Upper triangles (i < j) of [..., K, K] matrices: [..., K(K-1)/2]."""
    K = matrices.shape[-1]
    iu = np.triu_indices(K, k=1)
    return matrices[..., iu[0], iu[1]]


def _standardise_rows(v: np.ndarray) -> np.ndarray:
    v = v - v.mean(axis=-1, keepdims=True)
    norm = np.sqrt((v * v).sum(axis=-1, keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, v / np.where(norm > 0, norm, 1.0), np.nan)


def rank_rows(x: np.ndarray) -> np.ndarray:
    """Average ranks of each row of ``x`` [B, m]; a row with a NaN becomes all NaN."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    bad = ~np.isfinite(x).all(axis=1)
    ranks = rankdata(np.where(np.isfinite(x), x, 0.0), axis=1)
    ranks[bad] = np.nan
    return ranks


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman r of every row of ``x`` [B, m] with ``y`` [m] (or with each row of y [B, m]).

    A row with a NaN or no variance gives NaN.
    """
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    y = np.asarray(y, dtype=np.float64)
    bad = ~np.isfinite(x).all(axis=1)
    xr = _standardise_rows(rankdata(np.where(np.isfinite(x), x, 0.0), axis=1))
    yr = _standardise_rows(rankdata(y, axis=-1))
    r = (xr * yr).sum(axis=1) if yr.ndim == 2 else xr @ yr
    return np.where(bad, np.nan, r)


def correlation_rows(x: np.ndarray, y: np.ndarray, method: str = "spearman") -> np.ndarray:
    """Spearman (ranks) or Pearson r of each row of ``x`` [B, m] with ``y`` [m] or [B, m]."""
    if method == "spearman":
        return spearman_rows(x, y)
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    y = np.asarray(y, dtype=np.float64)
    bad = ~np.isfinite(x).all(axis=1)
    xs, ys = _standardise_rows(np.where(np.isfinite(x), x, 0.0)), _standardise_rows(y)
    r = (xs * ys).sum(axis=1) if ys.ndim == 2 else xs @ ys
    return np.where(bad, np.nan, r)


def partial_from_r(rxy, rxz, ryz):
    """r_xy.z = (r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2)), elementwise."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rxy - rxz * ryz) / np.sqrt((1 - rxz**2) * (1 - ryz**2))
