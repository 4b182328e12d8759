"""Level and power of the Mantel tests when languages are not exchangeable (issue 18, item 4).

Languages: the 24 languages of the pre-issue-21 default (geomtrace.recipe.DJANGO_LANGUAGES), with their
real great-circle distances (km) and Glottolog genetic distances from lang2vec
(``analyses.typological_distances``). Per scenario (``analyses.null_covariances``: iid,
geographic Gaussian-process traits with ranges 300 / 1000 / 3000 km, genetic, geographic +
genetic), seeded repetitions draw a gradient similarity x and an independent typological
similarity y (``analyses.simulate_pair``: both follow the scenario's covariance, neither
follows the other) and count rejections at alpha 0.05 of:

- mantel: ``analyses.mantel`` (languages permuted);
- partial_mantel: ``analyses.partial_mantel`` given geography (z = -distance in km);
- spatial_mantel / spatial_partial_mantel: ``analyses.spatial_mantel`` with the candidate
  proximities (geographic 300 / 1000 / 3000 km, genetic) fitted to each x, without / with z;
- the same spatial tests with one fixed proximity (the mean of exp(-d/1000 km) and the shared
  genetic fraction), to show why the fit is needed.

Power: the same, with x following y's trait (``effect`` 0.25, 0.5, 1) in two scenarios.

Second table (``--part real``): y is the languages' real geographic or genetic distance, as in
the report's headline rows; x follows one of them (a Gaussian-process trait, geographic over
1000 km or genetic). "does x follow y beyond the other?" is then tested by the plain Mantel,
the partial Mantel given the other distance (the product's practice), and the spatial tests
with proximity candidates of the other kind only (fitted to x). x following the other kind is
a null for that question; x following y's kind measures power.

Third table (``--part alternatives``): the other designs of issue 18 under the same nulls:
Mantel with languages permuted only within their top-level Glottolog family (restricted
permutations), and the partial test given geography by MRQAP with double semi-partialling
(Dekker, Krackhardt & Snijders 2007: y's residual on z permuted; Spearman ranks first).

Prints markdown tables (rate and binomial SE per test); ``--json PATH`` writes the rows too.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/spatial_level.py            # full
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/spatial_level.py --reps 50  # quick
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/spatial_level.py --part real
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd

import analyses
from geomtrace.recipe import DJANGO_LANGUAGES
from geomtrace.recipe.languages import LANGUAGES

POWER_SCENARIOS = ("geographic 1000 km", "geographic+genetic")
EFFECTS = (0.25, 0.5, 1.0)


def default_distances() -> tuple[list[str], np.ndarray, np.ndarray]:
    codes = [LANGUAGES[loc].iso639_3 for loc in DJANGO_LANGUAGES]
    typ = analyses.typological_distances(codes, ["geographic", "genetic"])
    return codes, typ["geographic"].to_numpy(), typ["genetic"].to_numpy()


def run(reps: int, power_reps: int, surrogates: int, seed: int) -> pd.DataFrame:
    codes, geo, gen = default_distances()
    control = -geo
    frames = []
    designs = {
        "fitted": None,
        "fixed mean": analyses.proximity(geo, gen),
    }
    for design, weights in designs.items():
        start = time.perf_counter()
        df = analyses.spatial_null_level(
            geo, gen, weights=weights, control=control, n_reps=reps, n_surrogates=surrogates,
            seed=seed,
        )  # fmt: skip
        df["design"] = design
        frames.append(df)
        print(f"# nulls, {design}: {time.perf_counter() - start:.0f} s", flush=True)
    for effect in EFFECTS:
        start = time.perf_counter()
        df = analyses.spatial_null_level(
            geo, gen, control=control, scenarios=POWER_SCENARIOS, effect=effect,
            n_reps=power_reps, n_surrogates=surrogates, seed=seed + 1,
        )  # fmt: skip
        df["design"] = "fitted"
        frames.append(df)
        print(f"# power, effect {effect}: {time.perf_counter() - start:.0f} s", flush=True)
    out = pd.concat(frames, ignore_index=True)
    # The fixed-proximity design changes only the spatial tests; drop its duplicate rows.
    dup = (out["design"] == "fixed mean") & out["test"].isin(["mantel", "partial_mantel"])
    return out[~dup].reset_index(drop=True)


def run_real(reps: int, surrogates: int, seed: int) -> pd.DataFrame:
    codes, geo, gen = default_distances()
    covs = analyses.null_covariances(geo, gen, ranges_km=(1000.0,))
    kinds = {"geographic": (geo, "geographic 1000 km"), "genetic": (gen, "genetic")}
    rows = []
    for y_kind, (y_dist, _) in kinds.items():
        other = "genetic" if y_kind == "geographic" else "geographic"
        z = -kinds[other][0]
        cands = (
            analyses.proximity_candidates(geo)
            if other == "geographic"
            else analyses.proximity_candidates(genetic=gen)
        )
        for x_kind, (_, scenario) in kinds.items():
            rng = np.random.default_rng([seed, len(rows)])
            hits = dict.fromkeys(["mantel", "partial_mantel", "spatial_mantel"], 0)
            hits["spatial_partial_mantel"] = 0
            start = time.perf_counter()
            for rep in range(reps):
                x, _ = analyses.simulate_pair(covs[scenario], rng)
                kw = {"n_permutations": surrogates, "seed": seed + rep}
                skw = {"n_surrogates": surrogates, "seed": seed + rep}
                basis = analyses.moran_basis(analyses.fitted_proximity(x, cands)[0])
                hits["mantel"] += analyses.mantel(x, -y_dist, **kw).p_value <= 0.05
                hits["partial_mantel"] += (
                    analyses.partial_mantel(x, -y_dist, z, **kw).p_value <= 0.05
                )
                res = analyses.spatial_mantel(x, -y_dist, weights=basis, **skw)
                hits["spatial_mantel"] += res.p_value <= 0.05
                res = analyses.spatial_mantel(x, -y_dist, weights=basis, control=z, **skw)
                hits["spatial_partial_mantel"] += res.p_value <= 0.05
            for test, h in hits.items():
                rate = h / reps
                rows.append(
                    {
                        "y": y_kind, "x follows": x_kind, "proximity": other,
                        "kind": "level" if x_kind != y_kind else "power", "test": test,
                        "rejections": int(h), "n_reps": reps, "rate": rate,
                        "se": np.sqrt(rate * (1 - rate) / reps),
                    }
                )  # fmt: skip
            print(f"# y {y_kind}, x follows {x_kind}: {time.perf_counter() - start:.0f} s")
    return pd.DataFrame(rows)


def _families(gen: np.ndarray) -> np.ndarray:
    """Top-level family per language: connected components of genetic distance < 1."""
    label = -np.ones(len(gen), dtype=int)
    for i in range(len(gen)):
        if label[i] < 0:
            label[(gen[i] < 1) & (label < 0)] = i
    return np.unique(label, return_inverse=True)[1]


def _within(rng: np.random.Generator, groups: np.ndarray, n: int) -> np.ndarray:
    """[n, K] permutations that move languages only within their group."""
    keys = rng.random((n, len(groups))) + groups[None, :] * 2.0  # sort by group, then at random
    order = np.argsort(keys, axis=1)  # position -> language, grouped
    home = np.argsort(groups, kind="stable")  # the grouped slots, in order
    perm = np.empty_like(order)
    perm[:, home] = order
    return perm


def _ranked(m: np.ndarray, iu) -> np.ndarray:
    from scipy.stats import rankdata

    v = rankdata(m[iu])
    return (v - v.mean()) / np.linalg.norm(v - v.mean())


def _pairs(m: np.ndarray, perms: np.ndarray, iu) -> np.ndarray:
    return m[perms[:, iu[0]], perms[:, iu[1]]]


def run_alternatives(reps: int, surrogates: int, seed: int) -> pd.DataFrame:
    codes, geo, gen = default_distances()
    covs = analyses.null_covariances(geo, gen)
    groups = _families(gen)
    iu = np.triu_indices(len(geo), k=1)
    zs = _ranked(-geo, iu)
    rows = []
    for s_idx, scenario in enumerate(covs):
        rng = np.random.default_rng([seed, s_idx])
        hits = {"within-family mantel": 0, "dsp partial (given geography)": 0}
        for _ in range(reps):
            x, y = analyses.simulate_pair(covs[scenario], rng)
            xs, ys = _ranked(x, iu), _ranked(y, iu)
            observed = xs @ ys
            # Restricted permutations: rank vectors of permuted x (a permutation keeps ranks).
            xr = np.zeros_like(x)
            xr[iu] = xs
            xr = xr + xr.T
            null = _pairs(xr, _within(rng, groups, surrogates), iu) @ ys
            p = (1 + np.sum(np.abs(null) >= abs(observed) - 1e-12)) / (1 + surrogates)
            hits["within-family mantel"] += p <= 0.05
            # DSP: residuals of x and y on z; y's residual matrix permuted, residualised again.
            ex = xs - (xs @ zs) * zs
            ey = ys - (ys @ zs) * zs
            obs = (ex @ ey) / np.linalg.norm(ex) / np.linalg.norm(ey)
            er = np.zeros_like(x)
            er[iu] = ey
            er = er + er.T
            perms = np.argsort(rng.random((surrogates, len(x))), axis=1)
            ep = _pairs(er, perms, iu)
            ep = ep - ep.mean(axis=1, keepdims=True)
            ep = ep - (ep @ zs)[:, None] * zs[None, :]
            null = (ep @ ex) / np.linalg.norm(ex) / np.linalg.norm(ep, axis=1)
            p = (1 + np.sum(np.abs(null) >= abs(obs) - 1e-12)) / (1 + surrogates)
            hits["dsp partial (given geography)"] += p <= 0.05
        for test, h in hits.items():
            rate = h / reps
            rows.append(
                {
                    "scenario": scenario, "effect": 0.0, "test": test, "design": "",
                    "rejections": int(h), "n_reps": reps, "rate": rate,
                    "se": np.sqrt(rate * (1 - rate) / reps),
                }
            )  # fmt: skip
    return pd.DataFrame(rows)


def table_real(df: pd.DataFrame) -> str:
    df = df.copy()
    df["cell"] = [
        f"{100 * r:.1f} ± {100 * s:.1f}" for r, s in zip(df["rate"], df["se"], strict=True)
    ]
    wide = df.pivot_table(
        index=["y", "x follows", "kind"], columns="test", values="cell", aggfunc="first", sort=False
    )
    lines = ["| y | x follows | rate is | " + " | ".join(wide.columns) + " |"]
    lines.append("|" + "---|" * (len(wide.columns) + 3))
    for (y, xf, kind), row in wide.iterrows():
        lines.append(f"| {y} | {xf} | {kind} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def table(df: pd.DataFrame) -> str:
    df = df.copy()
    df["column"] = np.where(
        df["test"].str.startswith("spatial") & (df["design"] != "fitted"),
        df["test"] + " (" + df["design"] + ")",
        df["test"],
    )
    df["cell"] = [
        f"{100 * r:.1f} ± {100 * s:.1f}" for r, s in zip(df["rate"], df["se"], strict=True)
    ]
    wide = df.pivot_table(
        index=["effect", "scenario"], columns="column", values="cell", aggfunc="first", sort=False
    )
    order = [
        "mantel", "partial_mantel", "spatial_mantel", "spatial_partial_mantel",
        "spatial_mantel (fixed mean)", "spatial_partial_mantel (fixed mean)",
    ]  # fmt: skip
    wide = wide[[c for c in order if c in wide.columns] + [c for c in wide if c not in order]]
    lines = ["| effect | scenario | " + " | ".join(wide.columns) + " |"]
    lines.append("|" + "---|" * (len(wide.columns) + 2))
    for (effect, scenario), row in wide.iterrows():
        cells = " | ".join("" if pd.isna(v) else v for v in row)
        lines.append(f"| {effect:g} | {scenario} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=300, help="repetitions per null scenario")
    parser.add_argument("--power-reps", type=int, default=150, help="repetitions per effect")
    parser.add_argument("--surrogates", type=int, default=199)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--part", choices=["nulls", "real", "alternatives"], default="nulls")
    args = parser.parse_args()
    if args.part == "alternatives":
        df = run_alternatives(args.reps, args.surrogates, args.seed)
        title, text = "Other designs; rejection rate at alpha 0.05 under the nulls", table(df)
    elif args.part == "real":
        df = run_real(args.reps, args.surrogates, args.seed)
        title, text = "y = a real distance; rejection rate at alpha 0.05", table_real(df)
    else:
        df = run(args.reps, args.power_reps, args.surrogates, args.seed)
        title = "Rejection rate at alpha 0.05 (effect 0: level; > 0: power)"
        text = table(df)
    print(f"{title}, % ± binomial SE")
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(df.to_dict(orient="records"), f, indent=1)


if __name__ == "__main__":
    main()
