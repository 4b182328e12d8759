"""Uncertainty of a statistic: block bootstrap over snapshots, percentile intervals, Holm.

A permutation p-value (``analyses._stats``) says whether a pattern beats chance *for a fixed
similarity matrix*. It does not say how much the matrix itself would move if the snapshots
had been drawn again: with small per-task batches most of a gradient is sampling noise, so two
traces of the same run can differ as much as the effects reported. The interval here carries
that second uncertainty:

- **Circular block bootstrap over snapshots** (Politis & Romano 1992). The S snapshots of the
  window, in step order, are resampled as ``ceil(S / L)`` blocks of L consecutive snapshots
  with uniform random starts, wrapping from the last snapshot to the first (then cut to S), so
  neighbouring snapshots, which share slowly changing parameters, stay together and every
  snapshot is drawn at the same rate (a moving-block bootstrap without wrapping draws the
  first and last snapshots at ~1/L the rate of the others). Block length: from the lag-1
  autocorrelation rho of the statistic's per-snapshot series (:func:`default_block`), the
  Politis & White (2004) rate for the circular block bootstrap of an AR(1) series,
  ``L = (sqrt(6) rho / (1 - rho^2))^(2/3) S^(1/3)``, at least 1 and at most S/2; without a
  series, ``L = round(S^(1/3))``. Each replicate gives a step-averaged matrix, and every
  statistic is recomputed on it.
- **Basic (reflected) interval** (Davison & Hinkley 1997, eq. 5.6): with q_lo, q_hi the
  (1 - level)/2 and (1 + level)/2 quantiles of the replicates' statistic and theta the
  estimate, ``[2 theta - q_hi, 2 theta - q_lo]``, clipped to the statistic's range. The
  statistics here are ratios and rank correlations of noisy means, biased by O(1/S); the
  replicates carry the same bias again, so a percentile interval doubles it (measured: 80-85%
  coverage of nominal 95% for the mean corrected similarity) while the reflection removes it
  to first order (92.5-95.5%; ``analyses/README.md``, Calibration). NaN replicates (an
  undefined correlation) are dropped; fewer than 10 finite replicates gives NaN.
- **Few snapshots, few blocks** (``df``): the bootstrap's spread is itself estimated from
  ``ceil(S / L)`` blocks, so the interval inherits the uncertainty of a variance estimated
  from few units, as a normal interval with an estimated standard error does; its
  deviations ``theta - (2 theta - q_hi)`` and ``(2 theta - q_lo) - theta`` are widened by
  ``t_{df}(1 - a/2) / z(1 - a/2)`` with ``df = ceil(S / L) - 1`` (:func:`snapshot_df`; the
  studentisation a t interval makes, applied to the bootstrap quantiles). Measured on planted
  traces (20 snapshots, mostly L = 1, so a factor ~1.08): 89% -> 93% coverage of this run's
  mean corrected similarity, where the reflected interval alone fell short although its
  spread matched the true error's (0.0077 vs 0.0075).
- **Language jackknife** (Snijders & Borgatti 1999): claims about languages are claims about a
  sample of languages; :func:`jackknife_se` is the node-jackknife standard error of a pairwise
  statistic (each language left out in turn, with all its pairs).
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


def lag1_autocorrelation(series: np.ndarray) -> float:
    """Lag-1 autocorrelation of the finite values of a series (0 when it is undefined)."""
    x = np.asarray(series, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size < 3:
        return 0.0
    x = x - x.mean()
    den = float((x * x).sum())
    return float((x[1:] * x[:-1]).sum() / den) if den > 0 else 0.0


def detrended(series: np.ndarray) -> np.ndarray:
    """The finite values of a series minus their least-squares line over their positions."""
    x = np.asarray(series, dtype=np.float64)
    t = np.flatnonzero(np.isfinite(x)).astype(np.float64)
    y = x[np.isfinite(x)]
    if y.size < 3:
        return y
    slope, intercept = np.polyfit(t, y, 1)
    return y - (slope * t + intercept)


def default_block(n_snapshots: int, series: np.ndarray | None = None) -> int:
    """Block length of the circular block bootstrap over ``n_snapshots`` snapshots.

    With ``series`` (the statistic's per-snapshot values): ``L = (sqrt(6) rho / (1 - rho^2))
    ^(2/3) n^(1/3)`` for the lag-1 autocorrelation rho, clipped to [0, 0.95], of the series'
    residuals from its least-squares line (Politis & White 2004, AR(1)), between 1 and n/2;
    without: ``round(n^(1/3))``. Why the residuals: similarity drifts over training, and a
    drift is part of the run the window averages, not a dependence of its fluctuations; on
    the raw series a steady fall reads as rho ~ 0.9, L = n/2 and two blocks (measured on the
    default reproduction: intervals of the mean similarity 0.85 wide on 10 snapshots).
    """
    if series is None:
        return max(1, round(n_snapshots ** (1 / 3)))
    rho = min(max(lag1_autocorrelation(detrended(series)), 0.0), 0.95)
    length = (math.sqrt(6) * rho / (1 - rho**2)) ** (2 / 3) * n_snapshots ** (1 / 3)
    return int(min(max(1, round(length)), max(1, n_snapshots // 2)))


def block_bootstrap(
    n: int,
    n_bootstrap: int = N_BOOTSTRAP,
    *,
    block: int | None = None,
    seed: int = 0,
    series: np.ndarray | None = None,
) -> np.ndarray:
    """[B, n] snapshot indices of ``n_bootstrap`` circular block bootstrap replicates.

    Each row concatenates ``ceil(n / L)`` runs ``s, s+1, ..., s+L-1`` (mod n) with starts
    ``s`` drawn uniformly from ``0 .. n - 1`` (``default_rng(seed)``), cut to n entries; L is
    ``block`` or :func:`default_block` of ``series``.
    """
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 1:
        raise InvalidInputError(
            f"n_bootstrap={n_bootstrap!r}: give a positive number of replicates"
        )
    if n < 1:
        raise InvalidInputError("the bootstrap needs at least one snapshot")
    L = default_block(n, series) if block is None else int(block)
    if not 1 <= L <= n:
        raise InvalidInputError(f"block={block!r}: must be between 1 and the {n} snapshots")
    rng = np.random.default_rng(seed)
    n_blocks = math.ceil(n / L)
    starts = rng.integers(0, n, size=(n_bootstrap, n_blocks))
    index = (starts[:, :, None] + np.arange(L)[None, None, :]).reshape(n_bootstrap, -1) % n
    return index[:, :n]


#: The range of a correlation (clip of a reflected interval).
CORRELATION_RANGE = (-1.0, 1.0)


def snapshot_df(n_snapshots: int, block: int) -> int:
    """Degrees of freedom of a block bootstrap's spread: ``ceil(S / L) - 1`` blocks, >= 1."""
    return max(1, math.ceil(n_snapshots / max(1, block)) - 1)


def interval(
    values: np.ndarray,
    level: float = LEVEL,
    *,
    estimate: float | None = None,
    bounds: tuple[float, float] | None = None,
    df: int | None = None,
) -> tuple[float, float]:
    """Bootstrap interval of replicates ``values`` (NaN ones dropped); (nan, nan) if < 10 finite.

    With ``estimate``: the basic (reflected) interval ``[2 theta - q_hi, 2 theta - q_lo]``
    (see the module docstring), its two deviations from theta widened by ``t_df / z`` when
    ``df`` (the bootstrap's degrees of freedom, :func:`snapshot_df`) is given, clipped to
    ``bounds``; without: the percentile interval ``[q_lo, q_hi]`` (for statistics the harness
    shows unbiased, e.g. a pair bootstrap of settling steps).
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size < _MIN_FINITE:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    if estimate is not None:
        if not np.isfinite(estimate):
            return float("nan"), float("nan")
        lo, hi = 2 * estimate - hi, 2 * estimate - lo
        if df is not None:
            from scipy.stats import norm, t

            widen = float(t.ppf(1 - alpha, df) / norm.ppf(1 - alpha))
            lo, hi = estimate - widen * (estimate - lo), estimate + widen * (hi - estimate)
        if bounds is not None:
            lo, hi = np.clip([lo, hi], *bounds)
    return float(lo), float(hi)


def jackknife_se(leave_one_out: np.ndarray) -> float:
    """Jackknife standard error sqrt((n - 1)/n sum_i (theta_(i) - mean theta_(.))^2) of the n
    leave-one-out values (NaN ones dropped; NaN with fewer than 3 finite)."""
    v = np.asarray(leave_one_out, dtype=np.float64)
    v = v[np.isfinite(v)]
    n = v.size
    if n < 3:
        return float("nan")
    return float(math.sqrt((n - 1) / n * ((v - v.mean()) ** 2).sum()))


def fisher_z(r):
    """atanh(r), with r clipped to +-0.9999 so that a correlation of +-1 stays finite."""
    return np.arctanh(np.clip(np.asarray(r, dtype=np.float64), -0.9999, 0.9999))


def _finite_order(p_values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p as floats, an all-NaN output of its shape, the finite entries' indices sorted by p):
    NaN is not a test in either adjustment."""
    p = np.asarray(p_values, dtype=np.float64)
    ok = np.flatnonzero(np.isfinite(p))
    return p, np.full(p.shape, np.nan), ok[np.argsort(p[ok], kind="stable")]


def holm(p_values) -> np.ndarray:
    """Holm-adjusted p-values (NaN stays NaN and does not count as a test)."""
    p, out, order = _finite_order(p_values)
    m = order.size
    if not m:
        return out
    adjusted = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(adjusted)
    return out


def benjamini_hochberg(p_values) -> np.ndarray:
    """Benjamini-Hochberg q-values (false-discovery rate; NaN stays NaN and is not a test):
    with the m finite p sorted increasingly, q_(k) = min_{j >= k} min(1, m p_(j) / j)."""
    p, out, order = _finite_order(p_values)
    m = order.size
    if not m:
        return out
    scaled = np.minimum(1.0, m * p[order] / np.arange(1, m + 1))
    out[order] = np.minimum.accumulate(scaled[::-1])[::-1]
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
