"""A per-language correlation whose null keeps one vector's autocorrelation over the languages.

The vector analogue of :func:`analyses.spatial_mantel` (see :mod:`analyses._spatial` for the
Moran basis and why languages are not exchangeable).
"""

from __future__ import annotations

import numpy as np

from analyses._spatial import (
    _basis_for,
    _prepared,
    _rotations,
    check_test_options,
    observed_statistic,
)
from analyses._stats import PermutationResult, _partial, p_value
from geomtrace import InvalidInputError


def spatial_correlation(
    x,
    y,
    z=None,
    *,
    weights,
    n_surrogates: int = 999,
    seed: int = 0,
    method: str = "spearman",
    alternative: str = "two-sided",
) -> PermutationResult:
    """Correlation of two per-language vectors whose null keeps x's autocorrelation.

    The vector analogue of :func:`spatial_mantel` (and of :func:`analyses.permutation_correlation`,
    the same statistic): r = corr(x, y), or the partial r_xy.z given ``z``. Null: Moran spectral
    surrogates of x (Wagner & Dray 2015, "singleton"): with Q = [1/sqrt(K), V] the Moran basis
    of W, x* = Q O Q^T x with O = diag(1, +-1, ..., +-1) random signs, so x* keeps x's mean,
    norm and its power on every Moran eigenvector of W (its autocorrelation over geography and
    genealogy), where a permutation would break it. W: ``weights`` as in :func:`spatial_mantel`;
    a mapping of candidates is fitted (:func:`fitted_proximity`) to the centred outer product
    (x - mean)(x - mean)^T, i.e. to which languages have similar x. Spearman: x* is re-ranked.
    Why: a language's mean gradient similarity and its quality (chrF) both vary by region and
    family for reasons of their own; the permutation null then rejects 5-15% at alpha 0.05
    (analyses/README.md, Calibration). ``quality_correlation`` passes the quality as x (the
    surrogates then held 2-8%). Needs n >= 4 finite values.
    """
    check_test_options(method, alternative, n_surrogates)
    vecs = [np.asarray(v, dtype=np.float64) for v in ((x, y) if z is None else (x, y, z))]
    if len({v.shape for v in vecs}) != 1 or vecs[0].ndim != 1:
        raise InvalidInputError(f"vectors of equal length expected, got {[v.shape for v in vecs]}")
    if not all(np.isfinite(v).all() for v in vecs):
        raise InvalidInputError("spatial_correlation: NaN values; drop those languages first")
    k = len(vecs[0])
    if k < 4:
        raise InvalidInputError(f"a spatial correlation needs at least 4 languages, got {k}")
    nan = PermutationResult(float("nan"), float("nan"), k, n_surrogates, method, alternative)
    xc = vecs[0] - vecs[0].mean()
    basis = _basis_for(weights, np.outer(xc, xc), 1)
    ys = _prepared(vecs[1], method)
    zs = None if z is None else _prepared(vecs[2], method)
    stat = observed_statistic(_prepared(vecs[0], method), ys, zs)
    if stat is None:
        return nan
    observed, ryz = stat
    rng = np.random.default_rng(seed)
    rotations = _rotations(basis, n_surrogates, rng)  # [n, K, K] = Q O
    coefficients = basis.vectors.T @ vecs[0]  # x in the Moran basis
    surrogates = _prepared(rotations @ coefficients, method)  # [n, K]
    if zs is None:
        null = surrogates @ ys
    else:
        null = _partial(surrogates @ ys, surrogates @ zs, ryz)
    null = np.where(np.isfinite(null), null, 0.0)
    return PermutationResult(
        observed, p_value(null, observed, alternative), k, n_surrogates, method, alternative
    )
