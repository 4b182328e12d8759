"""Matrix association tests whose null keeps the autocorrelation of languages.

Languages are not exchangeable: neighbours (in space, in the family tree) have similar
gradients and similar typology even when the two are unrelated, so the Mantel permutation null
(every relabelling of languages equally likely) is too narrow and rejects far more than alpha
(Guillot & Rousset 2013). Here the null distribution comes from *Moran spectral surrogates* of
``x`` (Wagner & Dray 2015, "singleton"/"pair" procedures; the idea of variogram-preserving nulls
as in Burt et al. 2020), applied jointly to every coordinate of the languages' embedding so
that a similarity *matrix* is randomised, not a vector:

1. W: a symmetric language proximity: exp(-d_km / range) over geography, the shared fraction
   of the Glottolog path over genealogy (:func:`proximity`), or, by default, the non-negative
   combination of such candidates (:func:`language_proximity`, :func:`proximity_candidates`:
   ranges 300, 1000, 3000 km and genealogy) that best fits x's centred pairs
   (:func:`fitted_proximity`).
2. H [K, K-1]: an orthonormal basis of the contrasts (vectors orthogonal to 1). The Moran
   eigenvectors are V = H U with H^T W H = U diag(lambda) U^T, sorted by decreasing lambda
   (lambda is Moran's I of the eigenvector up to a constant: large = smooth over W). Q = [1 /
   sqrt(K), V] is an orthonormal basis of R^K.
3. x = C + E with C = J x J (J = I - 11^T / K: x double-centred) and E = x - C (the
   languages' main effects, a_i + a_j - mean). With B = Q^T C Q (C in the Moran basis), a
   surrogate is x* = Q O B O^T Q^T + E, where O = diag(1, O_1, ..., O_m) is block diagonal:
   O_b is a Haar-random orthogonal matrix on the b-th bin of ``bin_size`` consecutive
   eigenvectors (``bin_size=1``: a random sign per eigenvector, MSR "singleton"; 2: random
   plane rotations, MSR "pair"). R = Q O Q^T is orthogonal and fixes the constant vector, so
   J x* J = R C R^T.

So the centred part of x* has exactly the spectrum of C (an orthogonal conjugation:
symmetric, PSD when C is) and each Moran eigenvector (bin) carries the same share of its
variation: its power spectrum over W, hence its spatial/genealogical autocorrelation; the main
effects are kept as observed. Why centre: if x is the Gram (or, approximately, the cosine) of
task embeddings 1 u^T + A whose columns of A are random fields with covariance S, then
C = J A A^T J, whose distribution is invariant under every R that commutes with J S J, i.e.
exactly when the centred W shares J S J's eigenvectors; the shared component u (a positive
mean similarity) and S's non-constant row sums, which break that invariance for x itself
(measured: 11-14% at alpha 0.05 with the true S), drop out. The test is then exact when W is
right; with W fitted among candidates it is an approximation whose level is measured
(:func:`spatial_null_level`, ``benchmarks/spatial_level.py``, analyses/README.md).

The statistic is the Mantel correlation r = corr(upper(x), upper(y)) over the K(K-1)/2 pairs
(Spearman: Pearson of the ranks) or, with a control z, the partial correlation
r_xy.z = (r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2)); under the null r_xy and r_xz are
recomputed on every surrogate x* (r_yz fixed). p-values as in :mod:`analyses._stats`
(Phipson & Smyth 2010: the observed arrangement counts as one draw).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from analyses._stats import (
    ALTERNATIVES,
    METHODS,
    PermutationResult,
    _partial,
    _square_inputs,
    mantel,
    p_value,
    partial_mantel,
)
from geomtrace import InvalidInputError

log = logging.getLogger(__name__)

#: Kinds of proximity :func:`language_proximity` builds.
PROXIMITY_KINDS = ("geographic", "genetic")
#: Default range of the geographic proximity exp(-d / range_km).
RANGE_KM = 1000.0
#: Ranges (km) of the geographic candidate proximities and of the null scenarios.
NULL_RANGES_KM = (300.0, 1000.0, 3000.0)
#: Memory for one block of surrogates ([block, pairs, K] float64 products).
_BLOCK_BYTES = 64 * 2**20


def proximity(
    geographic_km=None,
    genetic=None,
    *,
    range_km: float = RANGE_KM,
) -> np.ndarray:
    """Language proximity W [K, K] from distance matrices (arrays or DataFrames).

    geographic: exp(-d_ij / range_km) (d in km); genetic: 1 - d_ij, the shared fraction of the
    Glottolog path (:mod:`analyses._typology`; 0 across families). Both given: their mean. The
    diagonal is 1. Only the eigenvectors of W matter to :func:`spatial_mantel`.
    """
    if not np.isfinite(range_km) or range_km <= 0:
        raise InvalidInputError(f"range_km must be a positive number of km, got {range_km!r}")
    parts = []
    for name, d in (("geographic", geographic_km), ("genetic", genetic)):
        if d is None:
            continue
        m = np.asarray(d.to_numpy() if isinstance(d, pd.DataFrame) else d, dtype=np.float64)
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise InvalidInputError(f"{name} distance must be square [K, K], got shape {m.shape}")
        bad = ~np.isfinite(m) | (m < 0)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise InvalidInputError(
                f"{name} distance must be finite and >= 0, got {m[i, j]!r} at ({i}, {j})"
            )
        parts.append(np.exp(-m / range_km) if name == "geographic" else 1.0 - m)
    if not parts:
        raise InvalidInputError("proximity needs a geographic and/or a genetic distance matrix")
    if len(parts) == 2 and parts[0].shape != parts[1].shape:
        raise InvalidInputError(
            f"geographic {parts[0].shape} and genetic {parts[1].shape} shapes differ"
        )
    w = sum(parts) / len(parts)
    w = (w + w.T) / 2
    np.fill_diagonal(w, 1.0)
    return w


def proximity_candidates(
    geographic_km=None, genetic=None, *, ranges_km: Sequence[float] = NULL_RANGES_KM
) -> dict[str, np.ndarray]:
    """Candidate proximities for :func:`fitted_proximity`: ``geographic <r> km`` =
    exp(-d_km / r) for every r in ``ranges_km``, ``genetic`` = 1 - d_genetic."""
    out = {}
    if geographic_km is not None:
        for r in ranges_km:
            out[f"geographic {r:g} km"] = proximity(geographic_km, range_km=r)
    if genetic is not None:
        out["genetic"] = proximity(genetic=genetic)
    if not out:
        raise InvalidInputError("proximity candidates need a geographic and/or genetic distance")
    return out


def language_proximity(
    iso_codes: Sequence[str],
    kinds: str | Sequence[str] = PROXIMITY_KINDS,
    *,
    ranges_km: Sequence[float] = NULL_RANGES_KM,
    cache: str | os.PathLike | None = None,
) -> dict[str, pd.DataFrame]:
    """:func:`proximity_candidates` of languages from lang2vec's geography and genealogy.

    ``iso_codes``: ISO 639-3 codes (repeats allowed: several tasks of one language get
    proximity 1); ``kinds``: ``"geographic"``, ``"genetic"`` or both. Returns {candidate:
    [K, K] DataFrame indexed by the codes as given}, to pass as ``weights`` to
    :func:`spatial_mantel` (which fits their combination to x).
    """
    from analyses._typology import typological_distances

    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    bad = [k for k in kinds if k not in PROXIMITY_KINDS]
    if bad or not kinds:
        raise InvalidInputError(f"proximity kinds {bad or kinds!r}; allowed: {PROXIMITY_KINDS}")
    codes = [str(c).lower() for c in iso_codes]
    typ = typological_distances(list(dict.fromkeys(codes)), list(kinds), cache=cache)
    mats = {k: typ[k].loc[codes, codes].to_numpy() for k in kinds}
    cands = proximity_candidates(mats.get("geographic"), mats.get("genetic"), ranges_km=ranges_km)
    labels = list(iso_codes)
    return {name: pd.DataFrame(w, index=labels, columns=labels) for name, w in cands.items()}


@dataclass(frozen=True)
class MoranBasis:
    """Q = [1/sqrt(K), V]: the constant vector, then W's Moran eigenvectors (see module doc).

    vectors: [K, K] orthonormal columns; values: [K-1] eigenvalues of H^T W H, decreasing;
    bins: the index ranges (into columns 1..K-1 of ``vectors``) rotated together.
    """

    vectors: np.ndarray
    values: np.ndarray
    bins: tuple[tuple[int, int], ...]


def moran_basis(weights, *, bin_size: int = 1) -> MoranBasis:
    """The Moran basis of a symmetric [K, K] proximity W (see module docstring).

    Bins are ``bin_size`` consecutive eigenvectors; a shorter remainder joins the last bin.
    """
    w, _ = _square_inputs([weights], None, ["weights"])
    w = w[0]
    if not np.isfinite(w).all():
        raise InvalidInputError("weights must be finite everywhere (the diagonal included)")
    k = len(w)
    if not isinstance(bin_size, int | np.integer) or not 1 <= bin_size <= k - 1:
        raise InvalidInputError(f"bin_size must be an integer in [1, {k - 1}], got {bin_size!r}")
    # H: orthonormal contrasts, from the QR of the centring matrix's first K-1 columns.
    centring = np.eye(k) - 1.0 / k
    h, _ = np.linalg.qr(centring[:, : k - 1])
    values, u = np.linalg.eigh(h.T @ w @ h)
    order = np.argsort(values)[::-1]
    values, v = values[order], h @ u[:, order]
    q = np.concatenate([np.full((k, 1), 1.0 / np.sqrt(k)), v], axis=1)
    starts = list(range(0, k - 1, bin_size))
    if len(starts) > 1 and (k - 1) - starts[-1] < bin_size:
        starts.pop()
    bins = tuple((s, starts[i + 1] if i + 1 < len(starts) else k - 1) for i, s in enumerate(starts))
    return MoranBasis(q, values, bins)


def _haar(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """[n, size, size] Haar-distributed orthogonal matrices (QR of Gaussians, signs fixed so
    that R has a positive diagonal, which makes Q uniform; size 1: random signs)."""
    g = rng.standard_normal((n, size, size))
    q, r = np.linalg.qr(g)
    return q * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[:, None, :]


def _rotations(basis: MoranBasis, n: int, rng: np.random.Generator) -> np.ndarray:
    """[n, K, K] matrices M = Q O (O block diagonal, 1 on the constant vector)."""
    k = len(basis.vectors)
    o = np.zeros((n, k, k))
    o[:, 0, 0] = 1.0
    for lo, hi in basis.bins:
        o[:, 1 + lo : 1 + hi, 1 + lo : 1 + hi] = _haar(rng, n, hi - lo)
    return basis.vectors @ o


def spatial_surrogates(
    x, weights, *, n_surrogates: int = 99, seed: int = 0, bin_size: int = 1
) -> np.ndarray:
    """[n_surrogates, K, K] Moran spectral surrogates of a symmetric x.

    x = J x J + E with J = I - 11^T / K (E: the languages' main effects, x - J x J, kept as
    observed); x* = R (J x J) R^T + E with R = Q O Q^T (module docstring), orthogonal, R 1 = 1,
    so J x* J = R (J x J) R^T: the centred part keeps its spectrum and its power per Moran
    eigenvector (bin) of ``weights``. ``weights``: a [K, K] proximity, a :class:`MoranBasis`, or
    a mapping of candidate proximities (:func:`fitted_proximity`). x's diagonal enters J x J,
    so it must be finite.
    """
    (xm,), _ = _square_inputs([x], None, ["x"])
    _check_diagonal(xm)
    if n_surrogates < 1:
        raise InvalidInputError(f"n_surrogates must be >= 1, got {n_surrogates}")
    basis = _basis_for(weights, xm, bin_size)
    centred, effects = _split(xm)
    rng = np.random.default_rng(seed)
    b = basis.vectors.T @ centred @ basis.vectors
    m = _rotations(basis, n_surrogates, rng)
    return m @ b @ np.swapaxes(m, 1, 2) + effects


def _split(xm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(J x J, x - J x J): the double-centred part and the main effects of the languages."""
    centred = xm - xm.mean(axis=0, keepdims=True) - xm.mean(axis=1, keepdims=True) + xm.mean()
    return centred, xm - centred


def fitted_proximity(
    x, candidates: Mapping[str, np.ndarray | pd.DataFrame]
) -> tuple[np.ndarray, dict[str, float]]:
    """The non-negative combination W = sum_c beta_c W_c of candidate proximities that best
    fits x's centred pairs: beta = argmin_{beta >= 0} || upper(J x J) - sum_c beta_c
    upper(J W_c J) ||^2 after removing the mean of each side (an intercept). All beta = 0 (no
    candidate follows x): equal weights. Returns (W, {candidate: beta}).

    Why: the surrogates keep x's distribution when W shares the eigenvectors of the covariance
    of the process behind x (module docstring); the expectation of J x J under that process is
    proportional to that covariance (centred), so the best fitting candidate is the best guess.
    """
    (xm,), _ = _square_inputs([x], None, ["x"])
    _check_diagonal(xm)
    if not candidates:
        raise InvalidInputError("fitted_proximity needs at least one candidate proximity")
    names = list(candidates)
    mats = []
    for name in names:
        w = candidates[name]
        w = np.asarray(w.to_numpy() if isinstance(w, pd.DataFrame) else w, dtype=np.float64)
        if w.shape != xm.shape or not np.isfinite(w).all():
            raise InvalidInputError(
                f"candidate proximity {name!r} must be finite and {xm.shape}, got {w.shape}"
            )
        mats.append(w)
    from scipy.optimize import nnls

    iu = np.triu_indices(len(xm), k=1)
    design = np.stack([_split(w)[0][iu] for w in mats], axis=1)
    design = design - design.mean(axis=0)
    target = _split(xm)[0][iu]
    beta, _ = nnls(design, target - target.mean())
    if not np.any(beta > 0):
        beta = np.ones(len(mats))
    beta = beta / beta.sum()
    log.debug("fitted proximity: %s", dict(zip(names, beta.round(3), strict=True)))
    return sum(bc * w for bc, w in zip(beta, mats, strict=True)), dict(
        zip(names, map(float, beta), strict=True)
    )


def _check_diagonal(xm: np.ndarray) -> None:
    bad = np.flatnonzero(~np.isfinite(np.diagonal(xm)))
    if len(bad):
        raise InvalidInputError(
            f"x has a non-finite diagonal at positions {bad.tolist()[:8]}: the surrogates "
            "x* = R x R^T mix the diagonal into the pairs, so give each task's self-similarity "
            "(1 for a cosine similarity)"
        )


def _basis_for(weights, xm: np.ndarray, bin_size: int) -> MoranBasis:
    if isinstance(weights, MoranBasis):
        basis = weights
    elif isinstance(weights, Mapping):
        basis = moran_basis(fitted_proximity(xm, weights)[0], bin_size=bin_size)
    else:
        basis = moran_basis(weights, bin_size=bin_size)
    k = len(xm)
    if len(basis.vectors) != k:
        raise InvalidInputError(
            f"weights are {len(basis.vectors)}x{len(basis.vectors)}, x is {k}x{k}: one row per "
            "language, in the same order"
        )
    return basis


def _prepared(values: np.ndarray, method: str) -> np.ndarray:
    """Rows of pair values standardised so that a dot product is Pearson r (ranks first for
    Spearman); a constant row gives NaN."""
    if method == "spearman":
        values = rankdata(values, axis=-1)
    values = values - values.mean(axis=-1, keepdims=True)
    norm = np.sqrt((values * values).sum(axis=-1, keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        return values / norm


def check_test_options(method: str, alternative: str, n_surrogates: int) -> None:
    """Refuse an unknown method or alternative, or a surrogate count below 1, by name."""
    if method not in METHODS:
        raise InvalidInputError(f"method {method!r}; allowed: {METHODS}")
    if alternative not in ALTERNATIVES:
        raise InvalidInputError(f"alternative {alternative!r}; allowed: {ALTERNATIVES}")
    if not isinstance(n_surrogates, int | np.integer) or n_surrogates < 1:
        raise InvalidInputError(f"n_surrogates must be an integer >= 1, got {n_surrogates!r}")


def observed_statistic(
    xs: np.ndarray, ys: np.ndarray, zs: np.ndarray | None
) -> tuple[float, float] | None:
    """(r_xy or r_xy.z, r_yz) of standardised rows (:func:`_prepared`); None when a value is
    not finite, y and z are collinear, or the partial is undefined (the test is then NaN)."""
    if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
        return None
    if zs is None:
        return float(xs @ ys), float("nan")
    if not np.isfinite(zs).all():
        return None
    ryz = float(ys @ zs)
    if abs(ryz) >= 1 - 1e-12:
        return None
    observed = float(_partial(xs @ ys, xs @ zs, ryz))
    return (observed, ryz) if np.isfinite(observed) else None


def spatial_mantel(
    x,
    y,
    *,
    weights,
    control=None,
    labels: Sequence[str] | None = None,
    n_surrogates: int = 999,
    seed: int = 0,
    method: str = "spearman",
    alternative: str = "two-sided",
    bin_size: int = 1,
) -> PermutationResult:
    """(Partial) Mantel test of x and y whose null keeps x's autocorrelation over ``weights``.

    x: [K, K] symmetric similarity with a finite diagonal (gradient similarity); y: [K, K]
    symmetric (a typological similarity or distance); control: optional [K, K] z, rows in the
    same language order. weights: a mapping of candidate proximities (recommended:
    :func:`language_proximity`, whose combination is fitted to x by :func:`fitted_proximity`),
    one [K, K] proximity (:func:`proximity`), or a :class:`MoranBasis`.
    statistic: r_xy, or r_xy.z with ``control`` (module docstring), the same number as
    :func:`analyses.mantel` / :func:`analyses.partial_mantel`. Null: ``n_surrogates`` Moran
    spectral surrogates x* = R (J x J) R^T + (x - J x J) (:func:`spatial_surrogates`), each
    re-ranked for Spearman (y's and z's ranks are computed once), in blocks whose products
    take at most 64 MiB. ``n_permutations`` of the result is the number of surrogates. Only
    pairs enter the statistic; x's diagonal enters the surrogates. Measured level and power:
    analyses/README.md ("Tests under spatial and genealogical autocorrelation").
    """
    check_test_options(method, alternative, n_surrogates)
    mats = [x, y] if control is None else [x, y, control]
    names = ["x", "y"] if control is None else ["x", "y", "control"]
    arrays, _ = _square_inputs(mats, labels, names)
    xm = arrays[0]
    _check_diagonal(xm)
    k = len(xm)
    basis = _basis_for(weights, xm, bin_size)
    iu = np.triu_indices(k, k=1)
    nan = PermutationResult(float("nan"), float("nan"), k, n_surrogates, method, alternative)
    xs, ys = _prepared(xm[iu], method), _prepared(arrays[1][iu], method)
    zs = None if control is None else _prepared(arrays[2][iu], method)
    stat = observed_statistic(xs, ys, zs)
    if stat is None:
        return nan
    observed, ryz = stat
    rng = np.random.default_rng(seed)
    centred, effects = _split(xm)
    b = basis.vectors.T @ centred @ basis.vectors
    e_pairs = effects[iu]
    null = np.empty(n_surrogates)
    block = max(1, _BLOCK_BYTES // (8 * len(iu[0]) * k))
    for start in range(0, n_surrogates, block):
        n = min(block, n_surrogates - start)
        m = _rotations(basis, n, rng)
        # upper(x*) for every surrogate: x*_ij = sum_kl M_ik B_kl M_jl.
        left = m[:, iu[0], :] @ b  # [n, pairs, K]
        pairs = np.einsum("spk,spk->sp", left, m[:, iu[1], :]) + e_pairs
        r = _prepared(pairs, method)
        if zs is None:
            null[start : start + n] = r @ ys
        else:
            part = _partial(r @ ys, r @ zs, ryz)
            null[start : start + n] = np.where(np.isfinite(part), part, 0.0)
    null = np.where(np.isfinite(null), null, 0.0)
    return PermutationResult(
        observed, p_value(null, observed, alternative), k, n_surrogates, method, alternative
    )


# ---------------------------------------------------------------------------------------------
# Structured nulls: the level of each test on the languages at hand, measured by simulation.

#: Share of a simulated trait that is independent noise per language (a nugget).
_NUGGET = 0.1


def _psd(m: np.ndarray) -> np.ndarray:
    """The nearest PSD matrix (negative eigenvalues set to 0), rescaled to a unit diagonal."""
    values, vectors = np.linalg.eigh((m + m.T) / 2)
    out = (vectors * np.clip(values, 0, None)) @ vectors.T
    d = np.sqrt(np.clip(np.diagonal(out), 1e-12, None))
    return out / d[:, None] / d[None, :]


def null_covariances(
    geographic_km=None, genetic=None, *, ranges_km: Sequence[float] = NULL_RANGES_KM
) -> dict[str, np.ndarray]:
    """Covariances over languages of the simulated traits, one per scenario: [K, K], unit
    diagonal, PSD, each mixed with a nugget: (1 - 0.1) C + 0.1 I.

    ``iid``: C = I (exchangeable languages); ``geographic <r> km``: C = exp(-d_km / r) for
    every r in ``ranges_km``; ``genetic``: the PSD part of 1 - d_genetic (the shared fraction of
    the Glottolog path); ``geographic+genetic``: the mean of ``geographic 1000 km`` and
    ``genetic``.
    """
    k = None
    out: dict[str, np.ndarray] = {}
    geo = None if geographic_km is None else np.asarray(geographic_km, dtype=np.float64)
    gen = None if genetic is None else np.asarray(genetic, dtype=np.float64)
    for m in (geo, gen):
        if m is not None:
            k = len(m)
    if k is None:
        raise InvalidInputError("null_covariances needs a geographic and/or genetic distance")
    out["iid"] = np.eye(k)
    if geo is not None:
        for r in ranges_km:
            out[f"geographic {r:g} km"] = _psd(np.exp(-geo / r))
    if gen is not None:
        out["genetic"] = _psd(1.0 - gen)
    if geo is not None and gen is not None:
        out["geographic+genetic"] = _psd((np.exp(-geo / 1000.0) + (1.0 - gen)) / 2)
    return {
        name: (1 - _NUGGET) * c + _NUGGET * np.eye(k) if name != "iid" else c
        for name, c in out.items()
    }


def _fields(rng: np.random.Generator, chol: np.ndarray, n: int) -> np.ndarray:
    """[K, n] independent Gaussian fields with covariance chol @ chol.T."""
    return chol @ rng.standard_normal((len(chol), n))


def simulate_pair(
    covariance: np.ndarray,
    rng: np.random.Generator,
    *,
    effect: float = 0.0,
    dim: int = 16,
    n_features: int = 40,
    noise: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """One planted (x, y): gradient similarity and typological similarity of K languages.

    Typology: b [K, n_features] fields with covariance C (``covariance``), binarised (b > 0,
    URIEL-like 0/1 features); y = -(cosine distance) of the feature vectors. Gradients:
    g_i = u + a_i + noise * e_i in R^dim, u a shared direction (|u| = 1), e iid N(0, I), and
    a = sqrt(effect) b[:, :dim] + sqrt(1 - effect) a', a' independent fields with the same C;
    x = cosine similarity of the g_i (diagonal 1). effect = 0: x and y are independent but
    both autocorrelated over C (the null); effect > 0: x follows y's trait.
    """
    if not 0.0 <= effect <= 1.0:
        raise InvalidInputError(f"effect must be in [0, 1], got {effect!r}")
    chol = np.linalg.cholesky(covariance + 1e-10 * np.eye(len(covariance)))
    b = _fields(rng, chol, n_features)
    feats = (b > 0).astype(np.float64)
    empty = feats.sum(axis=1) == 0
    feats[empty, 0] = 1.0  # a language needs one feature for a cosine distance
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    y = unit @ unit.T - 1.0
    a = np.sqrt(effect) * b[:, :dim] + np.sqrt(1.0 - effect) * _fields(rng, chol, dim)
    u = np.zeros(dim)
    u[0] = 1.0
    g = u + a + noise * rng.standard_normal(a.shape)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    return g @ g.T, y


LEVEL_COLUMNS = ["scenario", "effect", "test", "rejections", "n_reps", "rate", "se"]


def spatial_null_level(
    geographic_km=None,
    genetic=None,
    *,
    weights=None,
    control=None,
    scenarios: Sequence[str] | None = None,
    effect: float = 0.0,
    n_reps: int = 200,
    n_surrogates: int = 199,
    alpha: float = 0.05,
    seed: int = 0,
    bin_size: int = 1,
    method: str = "spearman",
) -> pd.DataFrame:
    """Rejection rates at ``alpha`` of the plain, partial and spatial Mantel tests, simulated
    on these languages (their distances) under the :func:`null_covariances` scenarios.

    Each repetition draws (x, y) with :func:`simulate_pair` (``effect`` = 0: the null, so the
    rate is the test's level; > 0: its power) and tests it with :func:`analyses.mantel`
    (``mantel``) and :func:`spatial_mantel` (``spatial_mantel``) and, given a ``control`` z,
    with :func:`analyses.partial_mantel` (``partial_mantel``) and :func:`spatial_mantel`
    with z (``spatial_partial_mantel``); ``n_surrogates`` permutations/surrogates each.
    ``weights``: as in :func:`spatial_mantel`; default: :func:`proximity_candidates` of the
    given distances, fitted to each simulated x. rate = rejections / n_reps, se = sqrt(rate (1 - rate) / n).
    Columns: ``LEVEL_COLUMNS``. A report prints ``rate`` next to a p-value whose test does not
    hold its level (rate > 0.06 at alpha 0.05) on the scenario it cannot rule out.
    """
    covs = null_covariances(geographic_km, genetic)
    names = list(covs) if scenarios is None else list(scenarios)
    unknown = [s for s in names if s not in covs]
    if unknown:
        raise InvalidInputError(f"unknown scenarios {unknown}; allowed: {list(covs)}")
    if n_reps < 1:
        raise InvalidInputError(f"n_reps must be >= 1, got {n_reps}")
    if not 0 < alpha < 1:
        raise InvalidInputError(f"alpha must be in (0, 1), got {alpha!r}")
    w = proximity_candidates(geographic_km, genetic) if weights is None else weights
    k = len(next(iter(covs.values())))
    # A fixed proximity is decomposed once; candidates are fitted to each simulated x.
    basis = w if isinstance(w, Mapping) else _basis_for(w, np.zeros((k, k)), bin_size)
    z = None if control is None else np.asarray(control, dtype=np.float64)
    rows = []
    for s_idx, name in enumerate(names):
        rng = np.random.default_rng([seed, s_idx])
        tests = ["mantel", "spatial_mantel"]
        tests += [] if z is None else ["partial_mantel", "spatial_partial_mantel"]
        hits = dict.fromkeys(tests, 0)
        for rep in range(n_reps):
            x, y = simulate_pair(covs[name], rng, effect=effect)
            kw = {"n_permutations": n_surrogates, "seed": seed + rep, "method": method}
            skw = {"n_surrogates": n_surrogates, "seed": seed + rep, "method": method}
            # One fit of the candidates per x, shared by the plain and the partial test.
            b = basis if isinstance(basis, MoranBasis) else _basis_for(basis, x, bin_size)
            hits["mantel"] += mantel(x, y, **kw).p_value <= alpha
            hits["spatial_mantel"] += spatial_mantel(x, y, weights=b, **skw).p_value <= alpha
            if z is not None:
                hits["partial_mantel"] += partial_mantel(x, y, z, **kw).p_value <= alpha
                res = spatial_mantel(x, y, weights=b, control=z, **skw)
                hits["spatial_partial_mantel"] += res.p_value <= alpha
        for test, h in hits.items():
            rate = h / n_reps
            rows.append(
                {
                    "scenario": name, "effect": effect, "test": test, "rejections": int(h),
                    "n_reps": n_reps, "rate": rate, "se": np.sqrt(rate * (1 - rate) / n_reps),
                }
            )  # fmt: skip
    return pd.DataFrame(rows, columns=LEVEL_COLUMNS)
