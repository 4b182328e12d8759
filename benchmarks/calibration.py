"""Calibration harness: do the product's intervals cover and its tests hold their level?

For every scenario (:data:`SCENARIOS`, a seeded generator configuration of
``planted_traces``) and repetition, a planted trace is written through ``geomtrace.TraceWriter``
and analysed through the public API with the calls ``analyze`` makes
(``analyses.similarity_summary``, ``analyses.typology_correlation``; the planted covariates are
passed as ``covariates`` like the character-overlap control), plus ``analyses.mantel`` /
``partial_mantel`` on the noise-free planted similarity in the trait scenarios. Each reported
interval is then scored against every truth it may claim, and each reported p-value counts
as a rejection at ``ALPHA``:

- coverage = fraction of repetitions with low <= truth <= high (NaN intervals count as misses
  and are counted separately), with its binomial standard error sqrt(c (1 - c) / n);
- bias = mean(estimate - truth); width = mean(high - low);
- rejection rate under each null (population relation exactly 0: type-I error) and under
  each planted relation (|population relation| >= ``POWER_MIN``: power), with its standard error.

Truths (``planted_traces``): ``run`` = the same analysis on the same run's noise-free trace
("this run's matrix"); ``noisy`` = the raw measure's own estimand (its expectation over
sampling noise, group ``all``); ``process`` = the expected-gradient cosines averaged over the
window; ``population`` = the relation over the language pool (the claim about languages).

The statistics are a registry (:data:`INTERVALS`, :data:`TESTS`): one entry per reported
column; entries whose columns a frame lacks are skipped, so new columns (e.g.
``rho_disattenuated``, ``lang_ci_low``/``lang_ci_high``, ``p_spatial``) need one line each.

    python benchmarks/calibration.py --quick
    python benchmarks/calibration.py --reps 200 --out benchmarks/calibration_before.json
    python benchmarks/calibration.py --only ordinary,null_geographic --reps 50
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from planted_traces import (  # noqa: E402
    PlantedRun,
    Scenario,
    partial,
    population_truth,
    relation,
    simulate,
    spearman_vectors,
)

import analyses  # noqa: E402
import geomtrace as gt  # noqa: E402

ALPHA = 0.05
#: Population relations at least this large count as "an effect" for power.
POWER_MIN = 0.05
#: Per-repetition analysis settings (stated in the output).
N_PERMUTATIONS = 199
N_BOOTSTRAP = 200
MEASURES = ("raw", "corrected")
#: What each repetition runs: the similarity summary, the typology table, and the Mantel
#: tests on the noise-free planted similarity (trait scenarios).
PARTS = ("similarity", "typology", "direct", "quality", "clustering")

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario("ordinary", "genetic geometry + nuisance, reliability 0.3"),
        Scenario(
            "few_tasks",
            "ordinary with the first 8 default languages (issue 18's setting)",
            n_languages=8,
        ),
        Scenario(
            "heterogeneous",
            "per-task reliability U(0.1, 0.9), halving over training",
            reliability=(0.1, 0.9),
            reliability_fall=0.5,
        ),
        Scenario(
            "falling_similarity", "planted share of |s|^2 falls 0.8 -> 0.24", similarity_fall=0.3
        ),
        Scenario("falling_norms", "gradient norms fall 10x over the run", norm_fall=0.1),
        Scenario("low_reliability", "reliability 0.07", reliability=0.07),
        Scenario(
            "language_sample",
            "ordinary, 24 languages drawn from the ~90-language pool each repetition",
            languages="sample",
        ),
        Scenario(
            "null_geographic",
            "two independent traits, both Gaussian processes over real geography",
            mode="traits",
            space="geographic",
            distances=(),
        ),
        Scenario(
            "null_genetic",
            "two independent traits, both Gaussian processes over genetic distance",
            mode="traits",
            space="genetic",
            distances=(),
        ),
        Scenario(
            "null_exchangeable",
            "two independent iid traits (languages exchangeable)",
            mode="traits",
            space="iid",
            distances=(),
        ),
        Scenario(
            "power_geographic_0.2",
            "similarity follows trait 2 with share 0.2 (geographic traits)",
            mode="traits",
            space="geographic",
            effect=0.2,
            distances=(),
        ),
        Scenario(
            "power_geographic_0.5",
            "similarity follows trait 2 with share 0.5 (geographic traits)",
            mode="traits",
            space="geographic",
            effect=0.5,
            distances=(),
        ),
        Scenario(
            "power_quality",
            "quality = sqrt(0.3) z(alignment) + sqrt(0.7) z(geographic trait)",
            mode="traits",
            space="geographic",
            quality_effect=0.3,
            distances=(),
        ),
    ]
}


# --------------------------------------------------------------------------- registry

#: A truth: (context, row, quantity) -> value. ``quantity`` is what the column estimates.
Truth = Callable[["Context", pd.Series, str], float]


@dataclass
class Context:
    """One repetition: the planted run, its frames, and the noise-free run's frames."""

    scenario: Scenario
    planted: PlantedRun
    frames: dict[str, pd.DataFrame]
    free_frames: dict[str, pd.DataFrame]
    population: dict


@dataclass(frozen=True)
class IntervalStat:
    """A reported estimate with its interval: frame, columns, what it estimates, which truths.

    ``quantity``: ``mean`` (mean pair similarity), ``rho`` (relation with ``distance``) or
    ``partial`` (given ``control``); ``key``: the columns naming a row (rows with the same key
    report the same number, the first is scored).
    """

    name: str
    frame: str
    estimate: str
    low: str
    high: str
    quantity: str
    truths: tuple[str, ...]
    key: tuple[str, ...]


@dataclass(frozen=True)
class TestStat:
    """A reported p-value; its null holds where the population relation is exactly 0."""

    name: str
    frame: str
    p: str
    quantity: str
    key: tuple[str, ...]


def _matrix(ctx: Context, row: pd.Series, truth: str) -> np.ndarray | None:
    measure = row.get("measure", "raw")
    if truth == "process":
        return ctx.planted.process
    if truth == "noisy":
        if measure != "raw" or row.get("group", analyses.ALL) != analyses.ALL:
            return None
        return ctx.planted.noisy_expectation
    if truth == "run":
        return ctx.free_frames[f"matrix:{measure}:{row.get('group', analyses.ALL)}"]
    raise KeyError(truth)


def relation_vr(sim, dist, control=None):
    """Pearson of the similarity values with the ranks of -distance (partial given -control):
    the estimand of rho_disattenuated (analyses._language_level)."""
    from scipy.stats import rankdata

    iu = np.triu_indices(len(sim), 1)
    x = np.asarray(sim)[iu]
    r = lambda a, b: float(np.corrcoef(a, b)[0, 1])  # noqa: E731
    ry = rankdata(-np.asarray(dist)[iu])
    rxy = r(x, ry)
    if control is None:
        return rxy
    rz = rankdata(-np.asarray(control)[iu])
    rxz, ryz = r(x, rz), r(ry, rz)
    return (rxy - rxz * ryz) / np.sqrt((1 - rxz**2) * (1 - ryz**2))


def _same_row(ctx: Context, row: pd.Series, stat: IntervalStat) -> float:
    """The same column of the same row from the same analysis of the noise-free trace."""
    free = ctx.free_frames.get(stat.frame)
    if free is None:
        return float("nan")
    match = free[(free[list(stat.key)] == row[list(stat.key)]).all(axis=1)]
    return float(match[stat.estimate].iloc[0]) if len(match) else float("nan")


def _quality_or_agreement_truth(ctx: Context, row: pd.Series, stat: IntervalStat, truth: str):
    """Truths of the quality correlation (``quality``, ``quality_partial``) and of the
    clustering agreement (``agreement``): ``run`` = the same number on the noise-free trace;
    ``process`` = Spearman(process alignment, quality) (partial given the planted covariate);
    ``population`` = 0 where the planted quality never sees the similarity (e_q = 0)."""
    if truth == "run":
        return _same_row(ctx, row, stat)
    if stat.quantity == "agreement":
        return float("nan")
    if truth == "population":
        return 0.0 if ctx.scenario.quality_effect == 0.0 else float("nan")
    if truth != "process":
        return float("nan")
    tasks = ctx.planted.tasks
    q = np.array([ctx.planted.quality[t] for t in tasks])
    align = analyses.alignment_rows(ctx.planted.process)
    rxy = spearman_vectors(align, q)
    if stat.quantity == "quality":
        return rxy
    z = np.array([ctx.planted.quality_control[t] for t in tasks])
    return partial(rxy, spearman_vectors(align, z), spearman_vectors(q, z))


def truth_value(ctx: Context, row: pd.Series, stat: IntervalStat, truth: str) -> float:
    """The value of ``truth`` for the quantity ``stat`` estimates on this row (NaN: none)."""
    dropped = str(row.get("not_estimable", "") or "")
    if stat.quantity == "mean" and stat.estimate == "mean_corrected" and dropped:
        # The estimate averages the estimable tasks' pairs (reliability >= the floor): so
        # does its truth.
        keep = [k for k, t in enumerate(ctx.planted.tasks) if t not in dropped.split("; ")]
        if truth == "process":
            M = ctx.planted.process
        elif truth == "run":
            M = analyses.similarity_matrix(
                gt.open_trace(ctx.planted.free_run), row.get("group", analyses.ALL),
                measure="corrected",
            ).to_numpy()  # fmt: skip
        else:
            return float("nan")
        return analyses.mean_pair_similarity(M[np.ix_(keep, keep)])
    if stat.quantity == "alignment":
        if truth != "noisy":
            return float("nan")
        k = ctx.planted.tasks.index(row["task"])
        return float(analyses.alignment_rows(ctx.planted.noisy_expectation)[k])
    if stat.quantity in ("quality", "quality_partial", "agreement"):
        return _quality_or_agreement_truth(ctx, row, stat, truth)
    if truth == "run" and stat.quantity == "mean":
        # The same column of the same row, from the same analysis of the noise-free trace.
        free = ctx.free_frames[stat.frame]
        match = free[(free[list(stat.key)] == row[list(stat.key)]).all(axis=1)]
        return float(match[stat.estimate].iloc[0]) if len(match) else float("nan")
    if stat.quantity in ("rho_vr", "partial_vr"):
        if truth == "population":
            return float("nan")  # the pool truth is computed with Spearman only
        M = _matrix(ctx, row, truth)
        if M is None:
            return float("nan")
        D = ctx.planted.distances[row["distance"]]
        Z = ctx.planted.distances[row["control"]] if stat.quantity == "partial_vr" else None
        return relation_vr(M, D, Z)
    if truth == "population":
        if stat.quantity == "mean":
            return float("nan")
        control = row["control"] if stat.quantity == "partial" else None
        return ctx.population.get((row["distance"], control), float("nan"))
    M = _matrix(ctx, row, truth)
    if M is None:
        return float("nan")
    if stat.quantity == "mean":
        return analyses.mean_pair_similarity(M)
    D = ctx.planted.distances[row["distance"]]
    if stat.quantity == "rho":
        return relation(M, D)
    return relation(M, D, ctx.planted.distances[row["control"]])


INTERVALS: list[IntervalStat] = [
    IntervalStat(
        "mean_cosine", "similarity", "mean_cosine", "ci_low", "ci_high", "mean",
        ("noisy",), ("group",),
    ),
    IntervalStat(
        "mean_corrected", "similarity", "mean_corrected", "corrected_ci_low",
        "corrected_ci_high", "mean", ("run", "process"), ("group",),
    ),
    IntervalStat(
        "difference", "difference", "difference", "ci_low", "ci_high", "mean", ("run",),
        ("group_a",),
    ),
    IntervalStat(
        "training_change task CI", "training_change", "change", "lang_ci_low", "lang_ci_high",
        "mean", ("run",), ("group",),
    ),
    IntervalStat(
        "rho", "typology", "rho", "ci_low", "ci_high", "rho",
        ("noisy", "run", "process", "population"), ("measure", "distance"),
    ),
    IntervalStat(
        "partial_rho", "typology", "partial_rho", "partial_ci_low", "partial_ci_high",
        "partial", ("noisy", "run", "process", "population"), ("measure", "distance", "control"),
    ),
    # The noise-removed relation with its language-jackknife interval (issue 18): its
    # estimand is r(similarity values, rank of -distance), hence the quantity "rho_vr".
    IntervalStat(
        "rho_disattenuated", "typology", "rho_disattenuated", "lang_ci_low", "lang_ci_high",
        "rho_vr", ("run", "process"), ("measure", "distance"),
    ),
    IntervalStat(
        "partial_disattenuated", "typology", "partial_disattenuated", "partial_lang_ci_low",
        "partial_lang_ci_high", "partial_vr", ("run", "process"),
        ("measure", "distance", "control"),
    ),
    # Similarity vs quality (quality_correlation, as analyze calls it; planted quality and
    # covariate): the snapshot interval claims this run's rho, the task jackknife the relation.
    IntervalStat(
        "quality_rho", "quality", "rho", "ci_low", "ci_high", "quality", ("run",), ("metric",),
    ),
    IntervalStat(
        "quality_rho_tasks", "quality", "rho", "lang_ci_low", "lang_ci_high", "quality",
        ("run", "process", "population"), ("metric",),
    ),
    IntervalStat(
        "quality_partial", "quality", "partial_rho", "partial_ci_low", "partial_ci_high",
        "quality_partial", ("run",), ("metric",),
    ),
    # Raw, so its own estimand is the noisy expectation (three tasks scored per repetition).
    IntervalStat(
        "alignment", "alignment", "mean_alignment", "ci_low", "ci_high", "alignment",
        ("noisy",), ("slot",),
    ),
    # Clusters vs the languages' real families and genera (family_agreement, as analyze).
    IntervalStat(
        "agreement", "clustering", "value", "ci_low", "ci_high", "agreement", ("run",),
        ("level", "statistic"),
    ),
]  # fmt: skip

TESTS: list[TestStat] = [
    TestStat("mantel", "typology", "p_value", "rho", ("measure", "distance")),
    TestStat("partial_mantel", "typology", "partial_p_value", "partial",
             ("measure", "distance", "control")),
    TestStat("mantel_noise_free", "direct", "p_value", "rho", ("measure", "distance")),
    TestStat("partial_mantel_noise_free", "direct", "partial_p_value", "partial",
             ("measure", "distance", "control")),
    # The exchangeable permutation p kept beside the reported (spatial) p, and the spatial
    # design on the noise-free planted similarity.
    TestStat("mantel_exchangeable", "typology", "p_mantel", "rho", ("measure", "distance")),
    TestStat("partial_mantel_exchangeable", "typology", "partial_p_mantel", "partial",
             ("measure", "distance", "control")),
    TestStat("spatial_mantel_noise_free", "direct", "p_spatial", "rho", ("measure", "distance")),
    TestStat("spatial_partial_mantel_noise_free", "direct", "partial_p_spatial", "partial",
             ("measure", "distance", "control")),
    TestStat("quality", "quality", "p_value", "quality", ("metric",)),
    TestStat("quality_partial", "quality", "partial_p_value", "quality", ("metric",)),
    TestStat("agreement", "clustering", "p_value", "agreement", ("level", "statistic")),
]  # fmt: skip


# --------------------------------------------------------------------------- one repetition


def analyse(planted: PlantedRun, sc: Scenario, settings: dict) -> tuple[dict, dict]:
    """The frames ``analyze`` reports for the planted run, and the noise-free run's frames."""
    boot = {"n_bootstrap": settings["n_bootstrap"], "seed": 0}
    trace = gt.open_trace(planted.run)
    free = gt.open_trace(planted.free_run)
    frames: dict[str, pd.DataFrame] = {}
    free_frames: dict[str, pd.DataFrame] = {}
    sims, free_sims, typ = [], [], []
    parts = settings.get("parts", PARTS)
    groups = settings.get("groups", [analyses.ALL])
    if "similarity" in parts:
        # As analyze: one summary under the headline measure (raw), every group; its
        # mean_corrected columns do not depend on the measure.
        sims.append(analyses.similarity_summary(trace, groups, measure="raw", **boot))
        free_sims.append(analyses.similarity_summary(free, groups, measure="raw", n_bootstrap=1))
        # decoder minus encoder, paired (analyze's "group_differences")
        pair = ("encoder.0", "decoder.0")
        frames["difference"] = pd.DataFrame([analyses.group_difference(trace, *pair, **boot)])
        free_frames["difference"] = pd.DataFrame(
            [analyses.group_difference(free, *pair, n_bootstrap=1)]
        )
        # trained window minus step 0, noise-corrected (analyze's "training_change")
        frames["training_change"] = pd.DataFrame([analyses.training_change(trace)])
        free_frames["training_change"] = pd.DataFrame([analyses.training_change(free)])
    for measure in settings["measures"] if "typology" in parts else []:
        for g in [analyses.ALL, *trace.groups]:
            free_frames[f"matrix:{measure}:{g}"] = analyses.similarity_matrix(
                free, g, measure=measure
            ).to_numpy()
        try:
            typ.append(
                analyses.typology_correlation(
                    trace,
                    analyses.ALL,
                    measure=measure,
                    distances=list(sc.distances),
                    covariates=planted.covariates,
                    n_permutations=settings["n_permutations"],
                    **boot,
                )
            )
        except gt.InvalidInputError:
            # Fewer than 4 estimable languages (e.g. the corrected measure below the
            # reliability floor): analyze reports the table as not applicable; nothing to score.
            continue
    if "quality" in parts:
        # As analyze: the headline measure (raw), group all, the run's quality and control.
        kw = {"quality": {"chrf": planted.quality}, "control": planted.quality_control,
              "measure": "raw", "n_permutations": settings["n_permutations"]}  # fmt: skip
        frames["quality"] = analyses.quality_correlation(trace, analyses.ALL, **kw, **boot)
        free_frames["quality"] = analyses.quality_correlation(
            free, analyses.ALL, **kw, n_bootstrap=1
        )
        # each task's mean alignment with the others ("alignment [CI]" of analyze's summary)
        # (the first three tasks, scored by position: a sampled scenario changes the names)
        frames["alignment"] = (
            analyses.task_alignment(trace, analyses.ALL, **boot).iloc[:3].assign(slot=[1, 2, 3])
        )
    if "clustering" in parts:
        frames["clustering"] = _agreement(trace, planted, settings, settings["n_bootstrap"])
        free_frames["clustering"] = _agreement(free, planted, settings, 1)
    if sims:
        frames["similarity"] = pd.concat(sims, ignore_index=True)
        free_frames["similarity"] = pd.concat(free_sims, ignore_index=True)
    if typ:
        frames["typology"] = pd.concat(typ, ignore_index=True)
    if sc.mode == "traits" and "direct" in parts:
        # The tests themselves, on the noise-free planted similarity (no gradient noise).
        C = planted.C
        y = -planted.distances["trait"]
        z = -planted.distances["space"]
        kw = {"n_permutations": settings["n_permutations"], "seed": 0}
        m = analyses.mantel(C, y, **kw)
        pm = analyses.partial_mantel(C, y, z, **kw)
        # The product's design (typology_correlation): surrogates over the languages' own
        # geography and genealogy candidates.
        weights = {
            k: w.to_numpy()
            for k, w in analyses.language_proximity(list(planted.iso_codes.values())).items()
        }
        skw = {"n_surrogates": settings["n_permutations"], "seed": 0, "weights": weights}
        sm = analyses.spatial_mantel(C, y, **skw)
        spm = analyses.spatial_mantel(C, y, control=z, **skw)
        frames["direct"] = pd.DataFrame(
            [
                {"measure": "planted", "distance": "trait", "control": "space",
                 "rho": m.statistic, "p_value": m.p_value,
                 "partial_rho": pm.statistic, "partial_p_value": pm.p_value,
                 "p_spatial": sm.p_value, "partial_p_spatial": spm.p_value},
            ]
        )  # fmt: skip
    return frames, free_frames


def _agreement(trace, planted: PlantedRun, settings: dict, n_bootstrap: int) -> pd.DataFrame:
    """``family_agreement`` of the run's window matrix (raw, group all) with the languages'
    real Glottolog families and genera, with snapshot replicates: as analyze calls it."""
    sim = analyses.similarity(trace, analyses.ALL, "raw")
    sim = sim.select(np.asarray(sim.steps) > 0)
    matrix = pd.DataFrame(sim.matrix(), index=planted.tasks, columns=planted.tasks)
    replicates = sim.replicates(n_bootstrap, seed=0)
    parts = []
    for level in ("family", "genus"):
        labels = analyses.task_families(planted.iso_codes, level=level)
        frame = analyses.family_agreement(
            matrix, labels, n_permutations=settings["n_permutations"], seed=0,
            replicates=replicates, df=sim.bootstrap_df(),
        )  # fmt: skip
        # The tree's cophenetic correlation is a fit, not an agreement: analyze's layer
        # table leaves it out too.
        parts.append(frame[frame["statistic"] != "cophenetic_correlation"].assign(level=level))
    return pd.concat(parts, ignore_index=True)


def score(ctx: Context, records: dict) -> None:
    """Append this repetition's coverage / bias / width and rejections to ``records``."""
    for stat in INTERVALS:
        frame = ctx.frames.get(stat.frame)
        if frame is None or not {stat.estimate, stat.low, stat.high} <= set(frame.columns):
            continue
        rows = frame.dropna(subset=[stat.estimate]).drop_duplicates(list(stat.key))
        for _, row in rows.iterrows():
            if stat.quantity == "partial" and not isinstance(row.get("control"), str):
                continue
            label = f"{stat.name}[{'|'.join(str(row[k]) for k in stat.key)}]"
            for truth in stat.truths:
                value = truth_value(ctx, row, stat, truth)
                if not math.isfinite(value):
                    continue
                lo, hi, est = float(row[stat.low]), float(row[stat.high]), float(row[stat.estimate])
                records["intervals"][(label, truth)].append(
                    (lo <= value <= hi, est - value, hi - lo, math.isfinite(lo))
                )
    for test in TESTS:
        frame = ctx.frames.get(test.frame)
        if frame is None or test.p not in frame.columns:
            continue
        rows = frame.dropna(subset=[test.p]).drop_duplicates(list(test.key))
        for _, row in rows.iterrows():
            if test.quantity == "partial" and not isinstance(row.get("control"), str):
                continue
            kind = test_kind(ctx, test, row)
            if kind is None:
                continue
            label = f"{test.name}[{'|'.join(str(row[k]) for k in test.key)}]"
            records["tests"][(label, kind)].append(bool(row[test.p] <= ALPHA))


def test_kind(ctx: Context, test: TestStat, row: pd.Series) -> str | None:
    """Whether a rejection of ``test`` on ``row`` is a type-I error, power, or neither here.

    Typology tests: by the population relation (exactly 0: type-I; >= ``POWER_MIN``: power).
    Quality tests: type-I where the planted quality never sees the similarity (e_q = 0),
    power otherwise. Clustering agreement (labels permuted: "clusters agree with the families
    more than a random labelling would"): type-I only where the similarity is independent of
    the languages' identity (iid traits); power where it follows genealogy (planted genetic);
    elsewhere (similarity following geography, which families also follow) the literal null
    is false, and the rate is reported as ``via-space``: how often agreement that geography
    alone produces is declared.
    """
    sc = ctx.scenario
    if test.quantity == "quality":
        return "type-I" if sc.quality_effect == 0.0 else "power"
    if test.quantity == "agreement":
        if sc.mode == "traits" and sc.space == "iid":
            return "type-I"
        if sc.mode == "planted" and sc.planted == "genetic":
            return "power"
        return "via-space"
    control = row["control"] if test.quantity == "partial" else None
    pop = ctx.population.get((row["distance"], control), float("nan"))
    if pop == 0.0:
        return "type-I"
    if abs(pop) >= POWER_MIN:
        return "power"
    return None


def run_scenario(sc: Scenario, reps: int, settings: dict, progress=None) -> dict:
    """Repetitions 0..reps-1 of ``sc``: per statistic and truth, coverage, bias, width; per
    test, the rejection rate (type-I or power)."""
    population = population_truth(sc)
    records = {"intervals": defaultdict(list), "tests": defaultdict(list)}
    with tempfile.TemporaryDirectory(prefix=f"calib-{sc.name}-") as tmp:
        for rep in range(reps):
            planted = simulate(sc, rep, tmp, half_grams=settings.get("half_grams", False))
            frames, free_frames = analyse(planted, sc, settings)
            score(Context(sc, planted, frames, free_frames, population), records)
            if progress is not None:
                progress.update(1)
    return summarise(records)


def _se(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n) if n else float("nan")


def summarise(records: dict) -> dict:
    intervals = []
    for (label, truth), rows in sorted(records["intervals"].items()):
        arr = np.array(rows, dtype=np.float64)
        n = len(arr)
        cov = float(arr[:, 0].mean())
        intervals.append(
            {
                "statistic": label, "truth": truth, "n": n, "coverage": cov,
                "se": _se(cov, n), "bias": float(np.mean(arr[:, 1])),
                "width": float(np.nanmean(arr[:, 2])) if np.isfinite(arr[:, 2]).any() else None,
                "n_nan_interval": int(n - arr[:, 3].sum()),
            }
        )  # fmt: skip
    tests = []
    for (label, kind), rows in sorted(records["tests"].items()):
        rate = float(np.mean(rows))
        tests.append(
            {"test": label, "kind": kind, "n": len(rows), "rejection": rate,
             "se": _se(rate, len(rows))}
        )  # fmt: skip
    return {"intervals": intervals, "tests": tests}


# --------------------------------------------------------------------------- output


def markdown(results: dict) -> str:
    """Two markdown tables: coverage (bias, width) per interval and truth; rejection rates."""
    lines = [
        "| scenario | interval | truth | coverage (± se) | bias | width | n |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, res in results["scenarios"].items():
        for r in res["intervals"]:
            width = "nan" if r["width"] is None else f"{r['width']:.3f}"
            cov = f"{100 * r['coverage']:.1f}"
            cov = f"**{cov}**" if r["coverage"] < 0.92 else cov
            lines.append(
                f"| {name} | {r['statistic']} | {r['truth']} | {cov} ± {100 * r['se']:.1f} | "
                f"{r['bias']:+.3f} | {width} | {r['n']} |"
            )
    lines += [
        "",
        "| scenario | test | kind | rejection at 0.05 (± se) | n |",
        "|---|---|---|---|---|",
    ]
    for name, res in results["scenarios"].items():
        for r in res["tests"]:
            bad = r["kind"] == "type-I" and r["rejection"] > 0.06
            rate = f"{100 * r['rejection']:.1f}"
            rate = f"**{rate}**" if bad else rate
            lines.append(
                f"| {name} | {r['test']} | {r['kind']} | {rate} ± {100 * r['se']:.1f} | {r['n']} |"
            )
    return "\n".join(lines)


def _lookup(results: dict | None) -> dict:
    """{(scenario, kind, label, truth-or-kind): value} of a results dict (empty for None)."""
    out = {}
    for name, res in (results or {}).get("scenarios", {}).items():
        for r in res["intervals"]:
            out[(name, "iv", r["statistic"], r["truth"])] = r["coverage"]
        for r in res["tests"]:
            out[(name, "test", r["test"], r["kind"])] = r["rejection"]
    return out


def pivot_markdown(results: dict, baseline: dict | None = None) -> str:
    """Compact tables, one column per scenario, scenarios split by generator mode: coverage %
    (bias) per interval and truth; rejection % per test (type-I bold above 6%, "P" = power).
    With ``baseline`` (an earlier results dict), each cell starts with "before ->"."""
    before = _lookup(baseline)

    def was(key, scale=100):
        return f"{scale * before[key]:.0f} -> " if key in before else ""

    out = []
    modes: dict[str, list[str]] = defaultdict(list)
    for name in results["scenarios"]:
        modes[results["config"][name]["mode"]].append(name)
    for mode, names in modes.items():
        cells: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
        for name in names:
            for r in results["scenarios"][name]["intervals"]:
                cov = f"{100 * r['coverage']:.0f}"
                cov = f"**{cov}**" if r["coverage"] < 0.92 else cov
                prior = was((name, "iv", r["statistic"], r["truth"]))
                cells[(r["statistic"], r["truth"])][name] = f"{prior}{cov} ({r['bias']:+.3f})"
        head = "| interval | truth | " + " | ".join(names) + " |"
        out += [f"Coverage % of the 95% intervals (mean bias), {mode} scenarios:", "", head,
                "|---|---|" + "---|" * len(names)]  # fmt: skip
        for (stat, truth), row in cells.items():
            out.append(f"| {stat} | {truth} | " + " | ".join(row.get(n, "") for n in names) + " |")
        tcells: dict[str, dict[str, str]] = defaultdict(dict)
        for name in names:
            for r in results["scenarios"][name]["tests"]:
                rate = f"{100 * r['rejection']:.1f}"
                if r["kind"] == "type-I":
                    rate = f"**{rate}**" if r["rejection"] > 0.06 else rate
                elif r["kind"] == "via-space":
                    rate = f"S {rate}"
                else:
                    rate = f"P {rate}"
                tcells[r["test"]][name] = was((name, "test", r["test"], r["kind"])) + rate
        out += ["", f"Rejections % at alpha {ALPHA} (type-I; P = power; S = agreement that only "
                f"geography produces), {mode} scenarios:", "",
                "| test | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]  # fmt: skip
        for test, row in tcells.items():
            out.append(f"| {test} | " + " | ".join(row.get(n, "") for n in names) + " |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=200, help="repetitions per scenario")
    parser.add_argument("--quick", action="store_true", help="10 reps, 99 permutations, 100 boot")
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--n-permutations", type=int, default=N_PERMUTATIONS)
    parser.add_argument("--n-bootstrap", type=int, default=N_BOOTSTRAP)
    parser.add_argument("--measures", default=",".join(MEASURES))
    parser.add_argument("--groups", default=analyses.ALL, help="groups of the similarity rows")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"subset of {PARTS}")
    parser.add_argument("--half-grams", action="store_true", help="also store half_gram_a/b")
    parser.add_argument("--long", action="store_true", help="one row per scenario and statistic")
    parser.add_argument("--table", default=None, help="print the tables of this JSON file and exit")
    parser.add_argument("--baseline", default=None, help="JSON of an earlier run: before -> after")
    parser.add_argument("--seed", type=int, default=0, help="generator seed of every scenario")
    args = parser.parse_args(argv)
    baseline = json.loads(Path(args.baseline).read_text()) if args.baseline else None
    if args.table:
        results = json.loads(Path(args.table).read_text())
        print(markdown(results) if args.long else pivot_markdown(results, baseline))
        return results
    reps, n_perm, n_boot = args.reps, args.n_permutations, args.n_bootstrap
    if args.quick:
        reps, n_perm, n_boot = 10, 99, 100
    names = [n for n in args.only.split(",") if n] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; available: {', '.join(SCENARIOS)}")
    settings = {
        "reps": reps, "n_permutations": n_perm, "n_bootstrap": n_boot,
        "measures": [m for m in args.measures.split(",") if m], "alpha": ALPHA,
        "half_grams": args.half_grams, "seed": args.seed,
        "groups": [g for g in args.groups.split(",") if g],
        "parts": [p for p in args.parts.split(",") if p],
    }  # fmt: skip
    from tqdm import tqdm

    results = {"settings": settings, "scenarios": {}, "config": {}}
    start = time.time()
    with tqdm(total=reps * len(names), desc="calibration", unit="rep") as bar:
        for name in names:
            sc = replace(SCENARIOS[name], seed=args.seed)
            bar.set_postfix_str(name)
            results["scenarios"][name] = run_scenario(sc, reps, settings, bar)
            results["config"][name] = asdict(sc)
            if args.out:  # after every scenario: a stopped run keeps what it measured
                Path(args.out).write_text(json.dumps(results, indent=1, default=str) + "\n")
    results["settings"]["seconds"] = round(time.time() - start, 1)
    results["settings"]["commit"] = (
        os.popen("git rev-parse --short HEAD 2>/dev/null").read().strip()
    )
    print(markdown(results) if args.long else pivot_markdown(results, baseline))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1, default=str) + "\n")
    return results


if __name__ == "__main__":
    main()
