"""The calibration harness (benchmarks/calibration.py) in CI size: its generator's truths are
right, its scoring machinery counts what it says, and a tiny run reproduces what main gets
wrong. The known failures are stated in one place (:data:`KNOWN`): flip "fails" to "holds"
when a change to analyses/ fixes one, and the same test then asserts that it holds."""

from __future__ import annotations

import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import analyses
import geomtrace as gt

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import calibration  # noqa: E402
import planted_traces as pt  # noqa: E402

#: main (e855b80), measured by this harness: "fails" or "holds" per property. With the
#: repetitions used here, "holds" means coverage >= HOLDS_COVERAGE / level <= HOLDS_LEVEL
#: (the 95% / 5% targets less about two binomial standard errors); "fails" means the
#: opposite side of the target itself (coverage < 0.92, level > 0.06).
KNOWN = {
    # similarity_summary's interval of mean_corrected, 8 tasks, vs the process (main e855b80:
    # percentile interval, fails; now the basic interval over circular blocks)
    "mean_corrected_covers_process": "holds",
    # analyses.mantel / partial_mantel (exchangeable permutations) on two independent
    # geographic traits (noise-free): they still fail, which is why the product reports ...
    "mantel_holds_level_geographic": "fails",
    "partial_mantel_holds_level_geographic": "fails",
    # ... analyses.spatial_mantel (surrogates keeping the autocorrelation) instead
    "spatial_mantel_holds_level_geographic": "holds",
    "spatial_partial_mantel_holds_level_geographic": "holds",
}
TARGET_COVERAGE, TARGET_LEVEL = 0.92, 0.06
HOLDS_COVERAGE, HOLDS_LEVEL = 0.85, 0.12

TINY = pt.Scenario("tiny", "6 tasks, 4 snapshots", n_languages=6, n_snapshots=4, dim=16)


def _stack(trace, name):
    """[S, G, ...]: an extra per-snapshot array of every group."""
    return np.asarray(trace.array(name), dtype=np.float64)


def test_noise_free_trace_is_the_planted_matrix(tmp_path):
    """No drift, no falling similarity: every estimator on the noise-free trace gives C."""
    sc = replace(TINY, drift=0.0, norm_fall=0.1)
    run = pt.simulate(sc, 0, tmp_path)
    free = gt.open_trace(run.free_run)
    assert free.tasks == run.tasks and list(free.steps) == run.steps
    assert list(free.iso_codes.values()) == pt.default_codes()[:6]
    np.testing.assert_allclose(run.process, run.C, atol=1e-12)
    for measure in ("raw", "corrected"):
        for group in (analyses.ALL, *free.groups):
            got = analyses.similarity_matrix(free, group, measure=measure).to_numpy()
            np.testing.assert_allclose(got, run.C, atol=2e-5)
    R = analyses.reliability_table(free, analyses.ALL)["reliability"].to_numpy()
    np.testing.assert_allclose(R, 1.0, atol=1e-5)


def test_process_truth_is_the_window_mean_of_the_planted_share(tmp_path):
    sc = replace(TINY, drift=0.3, similarity_fall=0.5)
    run = pt.simulate(sc, 1, tmp_path, noise_free=False)
    w = 0.7 * 0.5 ** np.linspace(0, 1, 5)
    off = ~np.eye(6, dtype=bool)
    np.testing.assert_allclose(run.process[off], w[1:].mean() * run.C[off])


def test_halves_and_half_grams_are_consistent(tmp_path):
    """G_ii = a.a + b.b + 2 a.b, and the half Gram matrices' diagonals are a.a and b.b."""
    run = pt.simulate(TINY, 2, tmp_path, noise_free=False, half_grams=True)
    trace = gt.open_trace(run.run)
    halves = _stack(trace, "split_half")  # [S, G, K, 3]
    gram = np.stack([trace.gram(g) for g in trace.groups], axis=1)
    diag = np.diagonal(gram, axis1=-2, axis2=-1)
    np.testing.assert_allclose(
        diag, halves[..., 0] + halves[..., 1] + 2 * halves[..., 2], rtol=1e-4
    )
    for k, name in enumerate(("half_gram_a", "half_gram_b")):
        hg = _stack(trace, name)
        assert hg.shape == gram.shape
        np.testing.assert_allclose(np.diagonal(hg, axis1=-2, axis2=-1), halves[..., k], rtol=1e-5)


def test_planted_reliability_is_measured(tmp_path):
    """Heterogeneous R_i in [0.1, 0.9]: the product's split-half reliability finds them."""
    sc = pt.Scenario("rel", "", n_languages=8, n_snapshots=60, reliability=(0.1, 0.9))
    run = pt.simulate(sc, 0, tmp_path, noise_free=False, n_noise_draws=1)
    measured = analyses.reliability_table(gt.open_trace(run.run), analyses.ALL)["reliability"]
    planted = run.reliability[0]
    assert planted.min() < 0.3 and planted.max() > 0.7
    assert np.abs(measured.to_numpy() - planted).max() < 0.06
    assert np.corrcoef(measured, planted)[0, 1] > 0.98


def test_generator_is_seeded(tmp_path):
    a = pt.simulate(TINY, 3, tmp_path / "a", noise_free=False)
    b = pt.simulate(TINY, 3, tmp_path / "b", noise_free=False)
    c = pt.simulate(TINY, 4, tmp_path / "c", noise_free=False)
    ga, gb, gc = (gt.open_trace(r.run).gram(analyses.ALL) for r in (a, b, c))
    np.testing.assert_array_equal(ga, gb)
    assert not np.allclose(ga, gc)


def test_traits_follow_their_space_and_the_null_population_is_zero():
    """Structured traits are autocorrelated over real geography (iid ones are not); the
    language-population truth of a null scenario is 0, of a planted relation clearly not."""
    codes = pt.default_codes()
    real = pt.real_distances(codes)
    rng = np.random.default_rng(0)
    r = {}
    for space in ("geographic", "iid"):
        sc = pt.Scenario("t", "", mode="traits", space=space, distances=())
        r[space] = np.mean(
            [pt.spearman(-pt.geometry(sc, rng, real)[1]["trait"], -real["geographic"])
             for _ in range(20)]
        )  # fmt: skip
    assert r["geographic"] > 0.2 and abs(r["iid"]) < 0.1
    null = calibration.SCENARIOS["null_geographic"]
    assert pt.population_truth(null, n_draws=2)[("trait", None)] == 0.0
    power = calibration.SCENARIOS["power_geographic_0.5"]
    assert pt.population_truth(power, n_draws=4)[("trait", None)] > 0.2


def test_registry_scores_a_new_column_with_one_entry(tmp_path, monkeypatch):
    """A column the lead adds (here a copy of rho and its interval) is scored by adding one
    registry entry, with the same coverage records as the column it copies."""
    sc = replace(TINY, n_languages=8, distances=("genetic",))
    run = pt.simulate(sc, 0, tmp_path)
    settings = {"n_bootstrap": 20, "n_permutations": 19, "measures": ["raw"]}
    frames, free_frames = calibration.analyse(run, sc, settings)
    typ = frames["typology"]
    frames["typology"] = typ.assign(
        rho_copy=typ["rho"], copy_lo=typ["ci_low"], copy_hi=typ["ci_high"]
    )
    entry = calibration.IntervalStat(
        "rho_copy", "typology", "rho_copy", "copy_lo", "copy_hi", "rho",
        ("run", "process"), ("measure", "distance"),
    )  # fmt: skip
    monkeypatch.setattr(calibration, "INTERVALS", [*calibration.INTERVALS, entry])
    records = {"intervals": defaultdict(list), "tests": defaultdict(list)}
    ctx = calibration.Context(sc, run, frames, free_frames, pt.population_truth(sc, n_draws=1))
    calibration.score(ctx, records)
    got = records["intervals"]
    for truth in ("run", "process"):
        assert got[("rho_copy[raw|genetic]", truth)] == got[("rho[raw|genetic]", truth)]
    # the run truth is the same analysis on the noise-free trace
    free_matrix = analyses.similarity_matrix(gt.open_trace(run.free_run)).to_numpy()
    est, lo, hi = typ.loc[typ["distance"] == "genetic", ["rho", "ci_low", "ci_high"]].iloc[0]
    truth = pt.relation(free_matrix, run.distances["genetic"])
    assert got[("rho[raw|genetic]", "run")][0][:2] == (
        lo <= truth <= hi,
        pytest.approx(est - truth),
    )
    # a test row under a non-null population relation counts as power, not type-I; the
    # quality test is a type-I row (the planted quality never sees the similarity here), and
    # the clustering agreement with real families a power row (similarity follows genealogy)
    kinds = {label.split("[")[0]: kind for label, kind in records["tests"]}
    assert {kinds["mantel"], kinds["partial_mantel"]} == {"power"}
    assert kinds["quality"] == kinds["quality_partial"] == "type-I"
    assert kinds["agreement"] == "power"
    # the quality truths: this run's rho is the noise-free trace's, the process one is
    # Spearman(process alignment, planted quality)
    q = frames["quality"].iloc[0]
    free_q = free_frames["quality"].iloc[0]
    assert got[("quality_rho[chrf]", "run")][0][1] == pytest.approx(q["rho"] - free_q["rho"])
    quality = np.array([run.quality[t] for t in run.tasks])
    process_rho = pt.spearman_vectors(analyses.alignment_rows(run.process), quality)
    assert got[("quality_rho_tasks[chrf]", "process")][0][1] == pytest.approx(
        q["rho"] - process_rho
    )


def test_summary_counts_and_standard_errors():
    records = {
        "intervals": {("s", "run"): [(True, 0.1, 1.0, True)] * 3 + [(False, -0.1, np.nan, False)]},
        "tests": {("t", "type-I"): [True, False, False, False, False]},
    }
    out = calibration.summarise(records)
    (iv,), (te,) = out["intervals"], out["tests"]
    assert iv["coverage"] == 0.75 and iv["se"] == pytest.approx(np.sqrt(0.75 * 0.25 / 4))
    assert iv["bias"] == pytest.approx(0.05) and iv["width"] == 1.0 and iv["n_nan_interval"] == 1
    assert te["rejection"] == 0.2 and te["n"] == 5
    assert "| x | t | type-I | **20.0**" in calibration.markdown({"scenarios": {"x": out}})
    results = {"scenarios": {"x": out}, "config": {"x": {"mode": "traits"}}}
    table = calibration.pivot_markdown(results, baseline=results)
    assert "| s | run | 75 -> **75** (+0.050) |" in table and "| t | 20 -> **20.0** |" in table


def _check(name: str, value: float, kind: str) -> None:
    state = KNOWN[name]
    if kind == "coverage":
        ok = value >= HOLDS_COVERAGE if state == "holds" else value < TARGET_COVERAGE
    else:
        ok = value <= HOLDS_LEVEL if state == "holds" else value > TARGET_LEVEL
    assert ok, f"{name}: measured {kind} {value:.3f}; KNOWN says it {state} (update KNOWN?)"


def test_main_mean_corrected_interval_coverage():
    """8 tasks, 20 snapshots, reliability 0.3, 40 repetitions: the percentile interval of the
    mean corrected similarity against the process truth (main: ~82%)."""
    sc = calibration.SCENARIOS["few_tasks"]
    settings = {
        "n_bootstrap": 200,
        "n_permutations": 9,
        "measures": ["raw"],
        "parts": ["similarity"],
    }
    res = calibration.run_scenario(sc, 40, settings)
    row = next(
        r for r in res["intervals"]
        if r["statistic"] == "mean_corrected[all]" and r["truth"] == "process"
    )  # fmt: skip
    assert row["n"] == 40 and row["width"] > 0
    _check("mean_corrected_covers_process", row["coverage"], "coverage")


def test_main_mantel_level_under_structured_geographic_null():
    """Two independent traits over the 24 default languages' real geography (Guillot &
    Rousset 2013), 60 repetitions, 99 permutations (main: Mantel ~30%, partial ~12%)."""
    sc = replace(calibration.SCENARIOS["null_geographic"], n_snapshots=2, dim=24)
    settings = {"n_bootstrap": 10, "n_permutations": 99, "measures": ["raw"], "parts": ["direct"]}
    res = calibration.run_scenario(sc, 60, settings)
    rates = {r["test"]: r for r in res["tests"]}
    assert {r["kind"] for r in rates.values()} == {"type-I"}
    _check(
        "mantel_holds_level_geographic",
        rates["mantel_noise_free[planted|trait]"]["rejection"],
        "level",
    )
    _check(
        "partial_mantel_holds_level_geographic",
        rates["partial_mantel_noise_free[planted|trait|space]"]["rejection"],
        "level",
    )
    _check(
        "spatial_mantel_holds_level_geographic",
        rates["spatial_mantel_noise_free[planted|trait]"]["rejection"],
        "level",
    )
    _check(
        "spatial_partial_mantel_holds_level_geographic",
        rates["spatial_partial_mantel_noise_free[planted|trait|space]"]["rejection"],
        "level",
    )


def test_scenarios_are_named_and_distinct():
    names = list(calibration.SCENARIOS)
    assert len(set(names)) == len(names) >= 12
    kinds = {n: calibration.SCENARIOS[n].is_null for n in names}
    # three trait nulls, and the quality scenario, whose similarity ignores trait 2 as well
    assert sum(kinds.values()) == 4 and kinds["power_quality"]
    assert calibration.SCENARIOS["power_quality"].quality_effect > 0
