"""Permutation statistics, vectorised over permutations.

All tests here permute *labels* (languages/tasks) and recompute a statistic; permutations are
drawn from ``numpy.random.default_rng(seed)`` and processed in blocks whose size bounds memory,
so 9999 permutations cost a handful of matrix products, not 9999 Python iterations.

p-values include the observed arrangement (Phipson & Smyth 2010):
``p = (1 + #{null >= observed}) / (1 + n_permutations)`` (one-sided), with ``|null| >= |observed|``
for two-sided tests. Ties are counted with a relative tolerance of 1e-12.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.stats import rankdata

from analyses._inputs import as_square, check_finite_offdiag
from geomtrace import InvalidInputError

ALTERNATIVES = ("two-sided", "greater", "less")
METHODS = ("spearman", "pearson")
_BLOCK_BYTES = 64 * 2**20
_TIE = 1e-12


@dataclass(frozen=True)
class PermutationResult:
    """A correlation and its permutation p-value.

    statistic: Spearman (or Pearson) r; for a partial test, the partial correlation r_xy.z.
    p_value: permutation p-value (see module docstring); NaN when the statistic is undefined.
    n: number of objects (languages/tasks) permuted; n_permutations; method; alternative.
    """

    statistic: float
    p_value: float
    n: int
    n_permutations: int
    method: str
    alternative: str


def permutations(n: int, n_permutations: int, seed: int) -> np.ndarray:
    """[P, n] int array: P independent uniform permutations of range(n), from ``seed``."""
    if n_permutations < 1:
        raise InvalidInputError(f"n_permutations must be >= 1, got {n_permutations}")
    rng = np.random.default_rng(seed)
    return np.argsort(rng.random((n_permutations, n)), axis=1)


def p_value(null: np.ndarray, observed: float, alternative: str) -> float:
    if alternative not in ALTERNATIVES:
        raise InvalidInputError(f"alternative {alternative!r}; allowed: {ALTERNATIVES}")
    if not np.isfinite(observed):
        return float("nan")
    tol = _TIE * max(1.0, abs(observed))
    if alternative == "greater":
        hits = np.count_nonzero(null >= observed - tol)
    elif alternative == "less":
        hits = np.count_nonzero(null <= observed + tol)
    else:
        hits = np.count_nonzero(np.abs(null) >= abs(observed) - tol)
    return float((1 + hits) / (1 + len(null)))


def _standardise(v: np.ndarray) -> np.ndarray | None:
    """(v - mean) / (sqrt(len) * std) so that a dot product of two such vectors is Pearson r."""
    v = v - v.mean(axis=-1, keepdims=True)
    norm = np.sqrt((v * v).sum(axis=-1, keepdims=True))
    if np.any(norm == 0):
        return None
    return v / norm


def _prepare(m: np.ndarray, method: str) -> np.ndarray:
    """Upper-triangle values to correlate, as a full symmetric matrix (ranks for Spearman)."""
    n = len(m)
    iu = np.triu_indices(n, k=1)
    values = m[iu]
    if method == "spearman":
        values = rankdata(values)
    out = np.zeros((n, n))
    out[iu] = values
    return out + out.T


def _square_inputs(
    matrices: Sequence, labels: Sequence[str] | None, names: Sequence[str]
) -> tuple[list[np.ndarray], list[str]]:
    out = []
    ref_labels = None
    for m, name in zip(matrices, names, strict=True):
        arr, lab = as_square(m, labels, what=name)
        if ref_labels is None:
            ref_labels = lab
        elif arr.shape != out[0].shape:
            raise InvalidInputError(f"{name} has shape {arr.shape}, expected {out[0].shape}")
        elif lab != ref_labels and labels is None:
            raise InvalidInputError(f"{name} is labelled {lab}, expected {ref_labels}")
        check_finite_offdiag(arr, lab, name)
        # Float32 tolerance: matrices derived from float32 Gram matrices can be asymmetric by
        # a few ulps (~1e-6 relative); a real asymmetry is orders of magnitude larger.
        scale = np.abs(arr[np.isfinite(arr)]).max(initial=0.0)
        if not np.allclose(arr, arr.T, rtol=1e-5, atol=1e-5 * scale + 1e-12, equal_nan=True):
            raise InvalidInputError(
                f"{name} is not symmetric (only symmetric matrices are allowed)"
            )
        out.append(arr)
    n = len(out[0])
    if n < 4:
        raise InvalidInputError(
            f"a Mantel test needs at least 4 languages/tasks, got {n} ({ref_labels}): with 3 there "
            "are only 6 distinct permutations"
        )
    return out, ref_labels


@lru_cache(maxsize=2)
def _flat_index(n: int, n_permutations: int, seed: int) -> np.ndarray | None:
    """Flat indices of the permuted upper triangles, [P, n(n-1)/2] int32, reused across the
    tests of one analysis (same languages, same seed); None when it would exceed the budget."""
    m = n * (n - 1) // 2
    if 4 * m * n_permutations > _BLOCK_BYTES:
        return None
    return _index_block(n, permutations(n, n_permutations, seed))


def _index_block(n: int, perms: np.ndarray) -> np.ndarray:
    iu = np.triu_indices(n, k=1)
    return (perms[:, iu[0]] * n + perms[:, iu[1]]).astype(np.int32)


def _blocks(n_perm: int, width: int):
    size = max(1, _BLOCK_BYTES // (12 * max(width, 1)))  # int32 index + float64 values
    for start in range(0, n_perm, size):
        yield slice(start, min(n_perm, start + size))


def _null_products(
    X: np.ndarray, targets: np.ndarray, n_permutations: int, seed: int
) -> np.ndarray:
    """upper(X[p][:, p]) @ targets for every permutation p: [P, targets.shape[1]]."""
    n = len(X)
    flat = X.ravel()
    cached = _flat_index(n, n_permutations, seed)
    if cached is not None:
        return np.take(flat, cached) @ targets
    perms = permutations(n, n_permutations, seed)
    out = np.empty((n_permutations, targets.shape[1]))
    m = n * (n - 1) // 2
    for block in _blocks(n_permutations, m):
        out[block] = np.take(flat, _index_block(n, perms[block])) @ targets
    return out


def mantel(
    x,
    y,
    *,
    labels: Sequence[str] | None = None,
    n_permutations: int = 9999,
    seed: int = 0,
    method: str = "spearman",
    alternative: str = "two-sided",
) -> PermutationResult:
    """Mantel test between two symmetric [n, n] matrices (arrays or labelled DataFrames).

    statistic r = corr(upper(x), upper(y)) over the n(n-1)/2 unordered pairs (Spearman: Pearson
    of the ranks). Null: rows and columns of ``x`` permuted jointly (languages relabelled), which
    keeps the dependence between pairs sharing a language that a plain correlation test ignores.
    """
    if method not in METHODS:
        raise InvalidInputError(f"method {method!r}; allowed: {METHODS}")
    (xm, ym), _ = _square_inputs([x, y], labels, ["x", "y"])
    X, Y = _prepare(xm, method), _prepare(ym, method)
    iu = np.triu_indices(len(X), k=1)
    xs, ys = _standardise(X[iu]), _standardise(Y[iu])
    n = len(X)
    if xs is None or ys is None:
        return PermutationResult(float("nan"), float("nan"), n, n_permutations, method, alternative)
    observed = float(xs @ ys)
    # A joint permutation only reorders the same multiset of pair values, so mean and norm are
    # unchanged; ys sums to 0, so (v - mean) * scale @ ys = scale * (v @ ys).
    scale = 1.0 / np.sqrt(((X[iu] - X[iu].mean()) ** 2).sum())
    null = scale * _null_products(X, ys[:, None], n_permutations, seed)[:, 0]
    return PermutationResult(
        observed, p_value(null, observed, alternative), n, n_permutations, method, alternative
    )


def _partial(rxy, rxz, ryz):
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rxy - rxz * ryz) / np.sqrt((1 - rxz**2) * (1 - ryz**2))


def partial_mantel(
    x,
    y,
    z,
    *,
    labels: Sequence[str] | None = None,
    n_permutations: int = 9999,
    seed: int = 0,
    method: str = "spearman",
    alternative: str = "two-sided",
) -> PermutationResult:
    """Partial Mantel test of x and y controlling for z (Smouse, Long & Sokal 1986).

    statistic r_xy.z = (r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2)), each r a Mantel
    correlation over the upper triangles (Spearman: of ranks). Null: rows/columns of ``x``
    permuted jointly, r_xy and r_xz recomputed, r_yz fixed (as vegan's ``mantel.partial``).
    NaN when z explains y or x completely (|r| = 1).
    """
    if method not in METHODS:
        raise InvalidInputError(f"method {method!r}; allowed: {METHODS}")
    (xm, ym, zm), _ = _square_inputs([x, y, z], labels, ["x", "y", "z"])
    X, Y, Z = (_prepare(m, method) for m in (xm, ym, zm))
    iu = np.triu_indices(len(X), k=1)
    xs, ys, zs = (_standardise(M[iu]) for M in (X, Y, Z))
    n = len(X)
    nan = PermutationResult(float("nan"), float("nan"), n, n_permutations, method, alternative)
    if xs is None or ys is None or zs is None:
        return nan
    ryz = float(ys @ zs)
    observed = float(_partial(xs @ ys, xs @ zs, ryz))
    if not np.isfinite(observed) or abs(ryz) >= 1 - 1e-12:
        return nan
    scale = 1.0 / np.sqrt(((X[iu] - X[iu].mean()) ** 2).sum())
    r = scale * _null_products(X, np.stack([ys, zs], axis=1), n_permutations, seed)
    null = _partial(r[:, 0], r[:, 1], ryz)
    null = np.where(np.isfinite(null), null, 0.0)
    return PermutationResult(
        observed, p_value(null, observed, alternative), n, n_permutations, method, alternative
    )


def permutation_correlation(
    x,
    y,
    z=None,
    *,
    n_permutations: int = 9999,
    seed: int = 0,
    method: str = "spearman",
    alternative: str = "two-sided",
) -> PermutationResult:
    """Correlation of two vectors (one value per task) with a permutation p-value.

    Without ``z``: r = corr(x, y). With ``z``: partial r_xy.z (formula as in
    :func:`partial_mantel`). Null: the entries of ``x`` permuted. Needs n >= 4 finite triples.
    """
    if method not in METHODS:
        raise InvalidInputError(f"method {method!r}; allowed: {METHODS}")
    vecs = [np.asarray(v, dtype=np.float64) for v in ((x, y) if z is None else (x, y, z))]
    if len({v.shape for v in vecs}) != 1 or vecs[0].ndim != 1:
        raise InvalidInputError(f"vectors of equal length expected, got {[v.shape for v in vecs]}")
    if not all(np.isfinite(v).all() for v in vecs):
        raise InvalidInputError("permutation_correlation: NaN values; drop those tasks first")
    n = len(vecs[0])
    if n < 4:
        raise InvalidInputError(f"a permutation correlation needs at least 4 tasks, got {n}")
    if method == "spearman":
        vecs = [rankdata(v) for v in vecs]
    std = [_standardise(v) for v in vecs]
    nan = PermutationResult(float("nan"), float("nan"), n, n_permutations, method, alternative)
    if any(s is None for s in std):
        return nan
    perms = permutations(n, n_permutations, seed)
    xp = std[0][perms]  # [P, n]: a permutation keeps mean and norm
    if z is None:
        observed = float(std[0] @ std[1])
        null = xp @ std[1]
    else:
        ryz = float(std[1] @ std[2])
        observed = float(_partial(std[0] @ std[1], std[0] @ std[2], ryz))
        if not np.isfinite(observed):
            return nan
        null = _partial(xp @ std[1], xp @ std[2], ryz)
        null = np.where(np.isfinite(null), null, 0.0)
    return PermutationResult(
        observed, p_value(null, observed, alternative), n, n_permutations, method, alternative
    )
