"""Planted traces for the calibration harness: real traces whose truth is known.

Each repetition writes a real trace through the public ``geomtrace.TraceWriter`` (the same
store ``analyze`` reads), from a generative model whose every truth is stated:

**Geometry.** K tasks (languages, ISO 639-3 codes) get a signal correlation matrix C
(unit diagonal, positive semi-definite) from a latent distance D_lat:

    C = w_p exp(-D_p / l_p) + w_n exp(-D_n / l_n) + (1 - w_p - w_n) I

- ``mode="planted"``: D_p a real distance between the languages (lang2vec ``genetic`` or
  ``geographic``, through ``analyses.typological_distances``) and D_n a *nuisance* distance
  that no typological distance captures (iid 2-D positions per language, handed to the
  analyses as the covariate ``overlap``, like the character-overlap control);
- ``mode="traits"`` (Guillot & Rousset 2013): two independent traits t1, t2 (q-dim Gaussian
  processes over the languages with covariance exp(-D_space / l_space), D_space the real
  geographic or genetic distance; iid for ``space="iid"``). The similarity follows
  x = sqrt(1 - e) t1 + sqrt(e) t2 (D_p = |x_i - x_j|) and the distance under test is
  trait 2's, D_t2 = |t2_i - t2_j| (covariate ``trait``). e = 0: a structured null (both
  spatially autocorrelated, independent); e > 0: a planted relation (power).

**Gradients.** With B B^T = C (B: K x K) embedded in R^d by a random orthonormal Q (K x d),
task i's expected half-sum gradient at snapshot t (t = 0..S, step 0 = snapshot 0) is

    s_i(t) = nu_i n(t) [sqrt(w(t)) (B Q)_i + sqrt(1 - w(t)) e_i(t)]

with e_i(t) task-specific drift, AR(1) over snapshots (e_i(t) = phi e_i(t-1) + sqrt(1-phi^2)
xi, xi ~ N(0, I/d)), w(t) the share of the planted geometry (``drift`` = 1 - w(0); falling
over training by ``similarity_fall``), n(t) = norm_fall^(t/S) the falling gradient norm and
nu_i ~ logNormal(0, 0.3) a per-task scale. Each snapshot draws two independent halves

    a_i = s_i / 2 + n_a,   b_i = s_i / 2 + n_b,   n ~ N(0, sigma_i(t)^2 I / d)

with sigma_i(t)^2 = E|s_i|^2 (1 - R_i(t)) / (2 R_i(t)), so that the full gradient g = a + b
has reliability E|s|^2 / E|g|^2 = R_i(t) and E[4 a.b] = E|s|^2. Two parameter groups
(independent Q, drift and noise; the second at half the norm); ``all`` is their sum. Stored
per snapshot: gram [G, K, K] = g_i.g_j, ``split_half`` [G, K, 3] = (a.a, b.b, a.b) and, with
``half_grams=True``, ``half_gram_a`` / ``half_gram_b`` [G, K, K] = a_i.a_j, b_i.b_j.

**Truths** (:class:`PlantedRun`):

- *this run's matrix*: the same trace written from the noise-free halves (a = b = s/2,
  ``noise_free=True``), read by the same analyses;
- *the process*: P(t) = E[s_i.s_j] / sqrt(E|s_i|^2 E|s_j|^2) = w(t) C_ij off the diagonal,
  averaged over the window (snapshots after step 0): ``process``;
- *the noisy expectation* of the raw measure: the window-mean raw cosine matrix averaged over
  ``n_noise_draws`` fresh noise draws with this run's signal (what a raw statistic estimates);
- *the relation in the language population*: the statistic over a pool of languages (the
  recipe's language table, ~90 languages with lang2vec data) from the same generator,
  averaged over draws of its random parts (:func:`population_truth`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata

import geomtrace as gt

#: Real distances the generator can follow (``analyses.typological_distances`` kinds).
SPACES = ("geographic", "genetic")
#: Kernel length scales in the distances' units (km; genetic distance is in [0, 1]).
LENGTH = {"geographic": 3000.0, "genetic": 0.5, "overlap": 1.0, "trait": 1.0, "iid": 1.0}
#: Names of the two parameter groups of every planted trace.
GROUPS = ("encoder.0", "decoder.0")


@dataclass(frozen=True)
class Scenario:
    """One named, seeded generator configuration (see the module docstring for the model)."""

    name: str
    description: str
    mode: str = "planted"  # "planted" or "traits"
    n_languages: int = 24
    languages: str = "default"  # "default": the recipe's 24 (first n); "sample": from the pool
    n_snapshots: int = 20  # after step 0
    dim: int = 64  # effective dimension: cross-task noise products shrink as 1/sqrt(dim)
    reliability: float | tuple[float, float] = 0.3  # constant, or per-task uniform (lo, hi)
    reliability_fall: float = 1.0  # R(end) / R(start)
    similarity_fall: float = 1.0  # w(end) / w(start)
    norm_fall: float = 1.0  # |s|(end) / |s|(start)
    drift: float = 0.2  # 1 - w(0): share of |s|^2 that is task-specific drift
    ar: float = 0.8  # AR(1) coefficient of the drift over snapshots
    planted: str = "genetic"  # mode "planted": the real distance C follows
    weights: tuple[float, float] = (0.6, 0.25)  # w_p, w_n (rest: identity)
    space: str = "geographic"  # mode "traits": the traits' covariance ("iid": none)
    trait_dims: int = 2
    effect: float = 0.0  # mode "traits": share of trait 2 in the similarity's latent position
    distances: tuple[str, ...] = ("geographic", "genetic")  # lang2vec rows of the typology frame
    quality_effect: float = 0.0  # share of the process alignment in the planted quality
    seed: int = 0

    @property
    def is_null(self) -> bool:
        """Whether the covariate ``trait`` is unrelated to the similarity in the population."""
        return self.mode == "traits" and self.effect == 0.0


@dataclass
class PlantedRun:
    """What one repetition wrote, and its truths (matrices over ``tasks``)."""

    run: Path
    free_run: Path | None
    tasks: list[str]
    iso_codes: dict[str, str]
    steps: list[int]
    C: np.ndarray  # [K, K] planted signal correlation
    process: np.ndarray  # [K, K] window mean of P(t)
    noisy_expectation: np.ndarray  # [K, K] E_noise of the window-mean raw cosine (group all)
    covariates: dict[str, pd.DataFrame]  # overlap | trait, space: distances beyond lang2vec
    distances: dict[str, np.ndarray] = field(default_factory=dict)  # every distance by name
    reliability: np.ndarray | None = None  # [S + 1, K] planted R_i(t)
    quality: dict[str, float] = field(default_factory=dict)  # planted quality per task
    quality_control: dict[str, float] = field(default_factory=dict)  # its covariate per task


# --------------------------------------------------------------------------- languages


def default_codes() -> list[str]:
    """ISO 639-3 codes of the 24 languages of the Django-only experiment (the default before
    issue 21, ``DJANGO_LANGUAGES``), in the recipe's order: the harness tables use them."""
    from geomtrace.recipe import DJANGO_LANGUAGES, LANGUAGES

    return [LANGUAGES[loc].iso639_3 for loc in DJANGO_LANGUAGES]


def pool_codes() -> list[str]:
    """The language population: every distinct ISO code of the recipe's table with lang2vec
    geography and genealogy (sorted)."""
    from geomtrace.recipe import LANGUAGES

    codes = sorted({lang.iso639_3 for lang in LANGUAGES.values()})
    frames = _typology(tuple(codes))
    geo, gen = frames["geographic"], frames["genetic"]
    ok = [c for c in codes if np.isfinite(geo.loc[c]).all() and np.isfinite(gen.loc[c]).all()]
    return ok


@functools.cache
def _typology(codes: tuple[str, ...]) -> dict[str, pd.DataFrame]:
    """lang2vec geographic and genetic distances, once per language set per process (and on
    disk under $GEOMTRACE_CACHE_DIR across processes)."""
    import analyses

    try:
        return analyses.typological_distances(list(codes), list(SPACES))
    except gt.GeomtraceError:
        # Languages lang2vec lacks: keep those it has, one at a time (cached, so cheap).
        keep = []
        for c in codes:
            try:
                analyses.typological_distances([c], list(SPACES))
                keep.append(c)
            except gt.GeomtraceError:
                continue
        frames = analyses.typological_distances(keep, list(SPACES))
        return {k: f.reindex(index=list(codes), columns=list(codes)) for k, f in frames.items()}


def real_distances(codes: list[str]) -> dict[str, np.ndarray]:
    """{geographic (km), genetic} [n, n] arrays over ``codes`` (lang2vec, cached)."""
    frames = _typology(tuple(sorted(set(codes))))
    return {k: f.loc[codes, codes].to_numpy(dtype=np.float64) for k, f in frames.items()}


# --------------------------------------------------------------------------- geometry


def nearest_correlation(M: np.ndarray) -> np.ndarray:
    """The symmetric PSD matrix nearest in eigenvalues (negatives clipped), unit diagonal."""
    M = (M + M.T) / 2
    vals, vecs = np.linalg.eigh(M)
    out = (vecs * np.clip(vals, 0.0, None)) @ vecs.T
    d = np.sqrt(np.clip(np.diag(out), 1e-12, None))
    out = out / d[:, None] / d[None, :]
    np.fill_diagonal(out, 1.0)
    return out


def kernel(D: np.ndarray, length: float) -> np.ndarray:
    """exp(-D / length) with a unit diagonal."""
    K = np.exp(-np.asarray(D, dtype=np.float64) / length)
    np.fill_diagonal(K, 1.0)
    return K


def gaussian_process(rng: np.random.Generator, D: np.ndarray | None, n: int, dims: int, length):
    """[n, dims] independent draws with covariance exp(-D / length) (iid N(0, 1) if D is None)."""
    if D is None:
        return rng.normal(size=(n, dims))
    cov = nearest_correlation(kernel(D, length))
    vals, vecs = np.linalg.eigh(cov)
    root = vecs * np.sqrt(np.clip(vals, 0.0, None))
    return root @ rng.normal(size=(n, dims))


def euclidean(x: np.ndarray) -> np.ndarray:
    """Pairwise Euclidean distances of the rows of ``x``."""
    diff = x[:, None, :] - x[None, :, :]
    return np.sqrt((diff**2).sum(-1))


def scale_free(D: np.ndarray) -> np.ndarray:
    """D divided by the RMS pair distance (so one length scale fits every draw)."""
    iu = np.triu_indices(len(D), 1)
    rms = np.sqrt(np.mean(D[iu] ** 2))
    return D / rms if rms > 0 else D


def geometry(
    sc: Scenario, rng: np.random.Generator, real: dict[str, np.ndarray]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """C [K, K] and the distances it was built from / that the analyses test."""
    n = len(next(iter(real.values())))
    if sc.mode == "planted":
        nuisance = euclidean(rng.normal(size=(n, 2)))
        wp, wn = sc.weights
        C = (
            wp * kernel(real[sc.planted], LENGTH[sc.planted])
            + wn * kernel(nuisance, LENGTH["overlap"])
            + (1 - wp - wn) * np.eye(n)
        )
        return nearest_correlation(C), {**real, "overlap": nuisance}
    if sc.mode != "traits":
        raise ValueError(f"mode {sc.mode!r}; allowed: 'planted', 'traits'")
    space = None if sc.space == "iid" else real[sc.space]
    length = LENGTH[sc.space]
    t1 = gaussian_process(rng, space, n, sc.trait_dims, length)
    t2 = gaussian_process(rng, space, n, sc.trait_dims, length)
    x = np.sqrt(1 - sc.effect) * t1 + np.sqrt(sc.effect) * t2
    wp = sc.weights[0] + sc.weights[1]
    C = wp * kernel(scale_free(euclidean(x)), LENGTH["trait"]) + (1 - wp) * np.eye(n)
    space_d = real["geographic" if sc.space == "iid" else sc.space]
    return nearest_correlation(C), {**real, "trait": euclidean(t2), "space": space_d}


def share(sc: Scenario) -> np.ndarray:
    """w(t), t = 0..S: the planted geometry's share of E|u|^2 (falls by ``similarity_fall``)."""
    frac = np.linspace(0.0, 1.0, sc.n_snapshots + 1)
    return (1 - sc.drift) * sc.similarity_fall**frac


def planted_reliability(sc: Scenario, rng: np.random.Generator, K: int) -> np.ndarray:
    """R_i(t) [S + 1, K]: per-task start values, falling geometrically by ``reliability_fall``."""
    if isinstance(sc.reliability, tuple):
        start = rng.uniform(*sc.reliability, size=K)
    else:
        start = np.full(K, float(sc.reliability))
    frac = np.linspace(0.0, 1.0, sc.n_snapshots + 1)[:, None]
    return start[None, :] * sc.reliability_fall**frac


def process_matrix(C: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Window mean (t >= 1) of P(t) = w(t) C off the diagonal, 1 on it."""
    P = float(np.mean(w[1:])) * C
    np.fill_diagonal(P, 1.0)
    return P


# --------------------------------------------------------------------------- simulation


def _halves(sc, rng, C, R, w, nu, norm_t):
    """Signals s [T, K, d] and the noise sd sigma [T, K] of one group."""
    K, d, T = len(C), sc.dim, sc.n_snapshots + 1
    vals, vecs = np.linalg.eigh(C)
    B = vecs * np.sqrt(np.clip(vals, 0.0, None))
    Q, _ = np.linalg.qr(rng.normal(size=(d, K)))  # [d, K] orthonormal columns
    base = B @ Q.T  # [K, d], base_i . base_j = C_ij
    e = rng.normal(size=(K, d)) / np.sqrt(d)
    s = np.empty((T, K, d))
    for t in range(T):
        if t:
            e = sc.ar * e + np.sqrt(1 - sc.ar**2) * rng.normal(size=(K, d)) / np.sqrt(d)
        u = np.sqrt(w[t]) * base + np.sqrt(1 - w[t]) * e
        s[t] = (nu * norm_t[t])[:, None] * u
    power = (nu[None, :] * norm_t[:, None]) ** 2  # E|s_i(t)|^2 (E|u|^2 = 1)
    sigma = np.sqrt(power * (1 - R) / (2 * R))
    return s, sigma


def _raw_cosine(g: np.ndarray) -> np.ndarray:
    G = np.einsum("tkd,tld->tkl", g, g)
    n = np.sqrt(np.einsum("tkk->tk", G))
    return G / n[:, :, None] / n[:, None, :]


def simulate(
    sc: Scenario,
    rep: int,
    out: str | Path,
    *,
    noise_free: bool = True,
    half_grams: bool = False,
    n_noise_draws: int = 8,
) -> PlantedRun:
    """Write repetition ``rep`` of ``sc`` under ``out`` (``run/`` and, with ``noise_free``,
    ``free/``) and return its truths. Deterministic in (sc.seed, sc.name, rep)."""
    out = Path(out)
    rng = np.random.default_rng([sc.seed, rep, _name_seed(sc.name)])
    if sc.languages == "default":
        codes = default_codes()[: sc.n_languages]
    elif sc.languages == "sample":
        pool = pool_codes()
        codes = [pool[i] for i in np.sort(rng.choice(len(pool), sc.n_languages, replace=False))]
    else:
        raise ValueError(f"languages {sc.languages!r}; allowed: 'default', 'sample'")
    real = real_distances(codes)
    C, dists = geometry(sc, rng, real)
    K, T = len(codes), sc.n_snapshots + 1
    if sc.dim < K:
        raise ValueError(f"dim={sc.dim} < {K} tasks: the planted geometry needs dim >= K")
    w = share(sc)
    R = planted_reliability(sc, rng, K)
    norm_t = sc.norm_fall ** np.linspace(0.0, 1.0, T)
    tasks = [f"{c}-en" for c in codes]
    signals, sigmas = [], []
    # Per-task scales shared by the groups (the second at half the norm), so that the
    # process cosine of "all" is exactly w(t) C as in each group.
    nu0 = np.exp(rng.normal(0.0, 0.3, size=K))
    for g in range(len(GROUPS)):
        nu = nu0 * (1.0 if g == 0 else 0.5)
        s, sigma = _halves(sc, rng, C, R, w, nu, norm_t)
        signals.append(s)
        sigmas.append(sigma)
    noise = [
        [rng.normal(size=s.shape) * (sig / np.sqrt(sc.dim))[:, :, None] for _ in range(2)]
        for s, sig in zip(signals, sigmas, strict=True)
    ]
    covariates = {
        name: pd.DataFrame(dists[name], index=tasks, columns=tasks)
        for name in ("overlap", "trait", "space")
        if name in dists
    }
    steps = [10 * t for t in range(T)]
    run = _write(out / "run", sc, rep, tasks, codes, steps, signals, noise, half_grams)
    free = None
    if noise_free:
        free = _write(out / "free", sc, rep, tasks, codes, steps, signals, None, half_grams)
    # E_noise of the window-mean raw cosine of group "all" (the raw measure's own estimand).
    draws = []
    for _ in range(n_noise_draws):
        g_all = np.concatenate(
            [
                s
                + (rng.normal(size=s.shape) + rng.normal(size=s.shape))
                * (sig / np.sqrt(sc.dim))[:, :, None]
                for s, sig in zip(signals, sigmas, strict=True)
            ],
            axis=-1,
        )
        draws.append(_raw_cosine(g_all[1:]).mean(axis=0))
    noisy = np.mean(draws, axis=0)
    np.fill_diagonal(noisy, 1.0)
    process = process_matrix(C, w)
    quality, quality_control = planted_quality(sc, rep, process, real)
    return PlantedRun(
        run=run,
        free_run=free,
        tasks=tasks,
        iso_codes=dict(zip(tasks, codes, strict=True)),
        steps=steps,
        C=C,
        process=process,
        noisy_expectation=noisy,
        covariates=covariates,
        distances=dists,
        reliability=R,
        quality=dict(zip(tasks, quality, strict=True)),
        quality_control=dict(zip(tasks, quality_control, strict=True)),
    )


def _standardised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).ravel()
    sd = x.std()
    return (x - x.mean()) / sd if sd > 0 else x - x.mean()


def planted_quality(
    sc: Scenario, rep: int, process: np.ndarray, real: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """A task quality and a covariate of it, [K] each, with a known relation to similarity.

    q = sqrt(e_q) z(a) + sqrt(1 - e_q) z(t3), with a_i = mean_{j != i} P_ij the process
    alignment, e_q = ``quality_effect`` and t3 a Gaussian process over the languages' real
    geography (the scenario's ``space`` in trait mode; iid for ``space="iid"``): quality varies
    by region for reasons of its own (data size, script support), so under e_q = 0 quality and
    alignment are independent but both autocorrelated: the realistic null of a quality
    correlation. The covariate (the analyses' control, like character overlap) is an
    independent draw of the same process. Drawn from a stream of its own, so adding quality
    changes none of the other draws of the repetition.
    """
    rng = np.random.default_rng([sc.seed, rep, _name_seed(sc.name), 7])
    K = len(process)
    space = sc.space if sc.mode == "traits" else "geographic"
    D = None if space == "iid" else real[space]
    length = LENGTH[space]
    trait = gaussian_process(rng, D, K, 1, length)[:, 0]
    control = gaussian_process(rng, D, K, 1, length)[:, 0]
    align = (process.sum(1) - np.diag(process)) / (K - 1)
    e = float(sc.quality_effect)
    q = np.sqrt(e) * _standardised(align) + np.sqrt(1 - e) * _standardised(trait)
    return q, control


def _name_seed(name: str) -> int:
    return int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "little") % (2**31)


def _write(path, sc, rep, tasks, codes, steps, signals, noise, half_grams) -> Path:
    """One trace: a = s/2 + n_a, b = s/2 + n_b per group (noise None: a = b = s/2)."""
    dim = sc.dim
    groups = [(name, dim, [f"{name}.weight"]) for name in GROUPS]
    writer = gt.TraceWriter(
        path,
        tasks,
        groups,
        iso_codes=dict(zip(tasks, codes, strict=True)),
        config={"scenario": sc.name, "rep": rep, "seed": sc.seed, "halves": True},
        overwrite=True,
    )
    for t, step in enumerate(steps):
        grams, split, ga, gb = [], [], [], []
        for g, s in enumerate(signals):
            a = s[t] / 2 + (0.0 if noise is None else noise[g][0][t])
            b = s[t] / 2 + (0.0 if noise is None else noise[g][1][t])
            full = a + b
            grams.append(full @ full.T)
            split.append(np.stack([(a * a).sum(1), (b * b).sum(1), (a * b).sum(1)], axis=1))
            ga.append(a @ a.T)
            gb.append(b @ b.T)
        arrays = {"split_half": np.stack(split)}
        if half_grams:
            arrays.update(half_gram_a=np.stack(ga), half_gram_b=np.stack(gb))
        writer.write_snapshot(step, np.stack(grams), losses={k: 1.0 for k in tasks}, arrays=arrays)
    writer.close()
    return path


# --------------------------------------------------------------------------- statistics


def upper(M: np.ndarray) -> np.ndarray:
    iu = np.triu_indices(len(M), 1)
    return np.asarray(M, dtype=np.float64)[iu]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman r of two [K, K] matrices' upper triangles."""
    a, b = rankdata(upper(x)), rankdata(upper(y))
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float(a @ b / den) if den > 0 else float("nan")


def spearman_vectors(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman r of two [K] vectors."""
    a, b = rankdata(x), rankdata(y)
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float(a @ b / den) if den > 0 else float("nan")


def partial(rxy: float, rxz: float, ryz: float) -> float:
    """r_xy.z from the three correlations."""
    den = np.sqrt((1 - rxz**2) * (1 - ryz**2))
    return float((rxy - rxz * ryz) / den) if den > 0 else float("nan")


def relation(sim: np.ndarray, dist: np.ndarray, control: np.ndarray | None = None) -> float:
    """Spearman of similarity with -distance (partial given -control when one is given)."""
    r = spearman(sim, -dist)
    if control is None:
        return r
    return partial(r, spearman(sim, -control), spearman(-dist, -control))


@functools.cache
def population_truth(sc: Scenario, n_draws: int = 20) -> dict[tuple[str, str | None], float]:
    """{(distance, control): the relation in the language population}.

    The generator run on the whole pool (:func:`pool_codes`), noise-free: the Spearman
    correlation (and partial) of the process similarity with each distance, averaged over
    ``n_draws`` draws of the random parts (nuisance positions, traits). Under a null scenario
    the relation with ``trait`` is 0 by construction (independent traits), and is set so.
    """
    pool = pool_codes()
    real = real_distances(pool)
    rng = np.random.default_rng([sc.seed, 999_983, _name_seed(sc.name)])
    w = share(sc)
    names = [*sc.distances, *(("overlap",) if sc.mode == "planted" else ("trait", "space"))]
    acc: dict[tuple[str, str | None], list[float]] = {}
    for _ in range(n_draws):
        C, dists = geometry(sc, rng, real)
        P = process_matrix(C, w)
        for d in names:
            for c in [None, *(x for x in names if x != d)]:
                acc.setdefault((d, c), []).append(
                    relation(P, dists[d], None if c is None else dists[c])
                )
    out = {k: float(np.mean(v)) for k, v in acc.items()}
    if sc.is_null:  # exact: the similarity never sees trait 2
        for k in out:
            if k[0] == "trait":
                out[k] = 0.0
    return out


def with_seed(sc: Scenario, seed: int) -> Scenario:
    return replace(sc, seed=seed)


__all__ = [
    "GROUPS", "LENGTH", "PlantedRun", "SPACES", "Scenario", "default_codes", "geometry",
    "population_truth", "pool_codes", "process_matrix", "real_distances", "relation",
    "simulate", "spearman", "with_seed",
]  # fmt: skip
