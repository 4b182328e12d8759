"""Level and power of the quality correlation's partial tests given script (issue 22).

``quality_correlation`` reports, per control, the partial Spearman correlation of a task's
mean gradient similarity with its quality given the task's script share (the share of the
other tasks written in its script) or its character overlap. This benchmark plants data on the
default experiment's 16 languages (their real scripts and lang2vec geography) where script
drives both sides, and checks the tests through the public call ``analyse_run`` makes
(spatial test over the languages' geography and genealogy):

- planted gradients per snapshot: g_i = alpha_i c + gamma c_script(i) + sigma e_i (c a
  direction shared by all languages, c_script one per script, e fresh noise per snapshot), so
  a language's mean similarity with the others grows with alpha_i and with how many others
  share its script;
- planted quality: q_i = z(script share_i) + beta z(alpha_i) + u_i, with u a Gaussian process
  over geography (exp(-d / 1500 km)): quality depends on script, and on the gradient
  alignment beyond script only when beta > 0;
- ``alpha``: iid, or itself a Gaussian process over geography (the structured null: both
  sides vary by region).

Under beta = 0 the raw correlation is confounded by script (it rejects far above 5%: that is
why the partial is reported) and the partial given script should hold its level; beta > 0
is its power. Each rejection rate has a binomial sd sqrt(p (1 - p) / reps).

    GEOMTRACE_CACHE_DIR=/tmp/gtcache .venv/bin/python benchmarks/quality_control_calibration.py

Session 5 (200 reps each, seed 3; 199 surrogates): the table is in analyses/README.md,
"Calibration" (quality correlation given script).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

import analyses
from geomtrace.recipe.languages import DEFAULT_LANGUAGES, LANGUAGES

RANGE_KM = 1500.0


def _z(v: np.ndarray) -> np.ndarray:
    return (v - v.mean()) / v.std()


def planted(rng, scripts, geo_cov, *, beta: float, alpha_geo: bool, snapshots: int = 10,
            dim: int = 64, gamma: float = 0.8, sigma: float = 1.6):  # fmt: skip
    """(cosines [S+1, K, K] with an unstructured step 0, quality values [K])."""
    K = len(scripts)
    chol = np.linalg.cholesky(geo_cov + 1e-9 * np.eye(K))
    alpha = chol @ rng.normal(size=K) if alpha_geo else rng.normal(size=K)
    alpha = 0.6 + 0.3 * _z(alpha)
    names = sorted(set(scripts))
    c = rng.normal(size=dim) / np.sqrt(dim)
    c_script = {s: rng.normal(size=dim) / np.sqrt(dim) for s in names}
    signal = np.stack([alpha[i] * c + gamma * c_script[scripts[i]] for i in range(K)])
    cos = []
    for step in range(snapshots + 1):
        noise = rng.normal(size=(K, dim)) / np.sqrt(dim)
        g = (signal if step else 0.0) + sigma * noise
        g /= np.linalg.norm(g, axis=1, keepdims=True)
        cos.append(g @ g.T)
    share = np.array([(np.array(scripts) == s).sum() - 1 for s in scripts]) / (K - 1)
    quality = _z(share) + beta * _z(alpha) + chol @ rng.normal(size=K)
    return np.stack(cos), quality, share


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--surrogates", type=int, default=199)
    args = parser.parse_args(argv)
    tasks = list(DEFAULT_LANGUAGES)
    scripts = [LANGUAGES[t].script for t in tasks]
    codes = {t: LANGUAGES[t].iso639_3 for t in tasks}
    geo = analyses.typological_distances(list(codes.values()), ["geographic"])["geographic"]
    km = geo.loc[list(codes.values()), list(codes.values())].to_numpy(dtype=float)
    geo_cov = np.exp(-km / RANGE_KM)  # distances in km (great circle)
    rng = np.random.default_rng(args.seed)
    cases = [
        (0.0, False, "null: quality ~ script, alpha iid"),
        (0.0, True, "null: quality ~ script, alpha geographic"),
        (0.5, False, "power: beta 0.5, alpha iid"),
        (1.0, False, "power: beta 1.0, alpha iid"),
        (1.0, True, "power: beta 1.0, alpha geographic"),
    ]
    steps = list(range(0, 110, 10))
    print(f"{len(tasks)} languages, scripts {dict(pd.Series(scripts).value_counts())}; "
          f"{args.reps} reps, {args.surrogates} surrogates")  # fmt: skip
    print("rejection rates at .05 (spatial = the reported p; perm. = permuting languages)")
    print(
        f"{'data':<42} {'raw':>6} {'raw':>6} {'|script':>8} {'|script':>8} {'|random':>8} "
        f"{'mean':>6} {'mean':>8}"
    )
    print(f"{'':<42} {'spat.':>6} {'perm.':>6} {'spat.':>8} {'perm.':>8} {'spat.':>8} "
          f"{'rho':>6} {'partial':>8}")  # fmt: skip
    for beta, alpha_geo, label in cases:
        t0 = time.perf_counter()
        hits = {k: [] for k in ("raw", "raw_perm", "script", "script_perm", "random")}
        rho, value = [], []
        for rep in range(args.reps):
            cos, quality, share = planted(rng, scripts, geo_cov, beta=beta, alpha_geo=alpha_geo)
            control = {"script": dict(zip(tasks, share, strict=True)),
                       "random": dict(zip(tasks, rng.normal(size=len(tasks)), strict=True))}  # fmt: skip
            frame = analyses.quality_correlation(
                cos, tasks=tasks, steps=steps, quality={"chrf": dict(zip(tasks, quality, strict=True))},
                control=control, iso_codes=codes, n_permutations=args.surrogates,
                n_bootstrap=50, seed=rep,
            )  # fmt: skip
            by = frame.set_index("control")
            hits["raw"].append(by.loc["script", "p_value"] < 0.05)
            hits["raw_perm"].append(by.loc["script", "p_permutation"] < 0.05)
            hits["script"].append(by.loc["script", "partial_p_value"] < 0.05)
            hits["script_perm"].append(by.loc["script", "partial_p_permutation"] < 0.05)
            hits["random"].append(by.loc["random", "partial_p_value"] < 0.05)
            rho.append(by.loc["script", "rho"])
            value.append(by.loc["script", "partial_rho"])
        rates = [np.mean(v) for v in hits.values()]
        print(f"{label:<42} {rates[0]:6.3f} {rates[1]:6.3f} {rates[2]:8.3f} {rates[3]:8.3f} "
              f"{rates[4]:8.3f} {np.nanmean(rho):6.2f} {np.nanmean(value):8.2f}   "
              f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip
    print(f"binomial sd at 0.05: {np.sqrt(0.05 * 0.95 / args.reps):.3f}")


if __name__ == "__main__":
    main()
