"""The end-to-end reproduction on a tiny plan: training, analyses, figures, report, JSON."""

import json
from pathlib import Path

import pytest

import reproduce as reproduce_module
from reproduce import PLANS, plan_runs, reproduce

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "langs": ["es", "fr", "de", "ru"], "steps": 4, "every": 2, "d_model": 32, "d_ff": 64,
    "nhead": 2, "max_bytes": 24, "batch_per_lang": 4, "warmup": 1, "eval_batch": 64,
}  # fmt: skip


def test_plans_give_every_method_its_seeds():
    runs = plan_runs("default")
    names = [r.name for r in runs]
    # four runs of equal cost: two rounds of two workers (issue 21's 25-minute budget)
    assert names == ["sum-s0", "sum-s1", "sum-s2", "gradvac-all_layer-s0"]
    assert sum(n for _, _, n in PLANS["default"]) == len(runs)
    extended = [r.name for r in plan_runs("extended")]
    assert extended[:4] == names and extended[4:] == ["gradvac-all_layer-s1", "pcgrad-all_layer-s0"]
    assert [r.seed for r in plan_runs("quick", seeds=2)] == [0, 1] * 3


def test_mode_and_quick_must_agree_and_modes_are_named(tmp_path):
    from geomtrace import InvalidInputError

    with pytest.raises(InvalidInputError, match="--quick with --mode extended"):
        reproduce(tmp_path / "out", quick=True, mode="extended")
    with pytest.raises(InvalidInputError, match="allowed: quick, default, extended"):
        reproduce(tmp_path / "out", mode="paper")
    from cli import main

    assert (
        main(["reproduce", "--out", str(tmp_path / "g"), "--grouping", "--mode", "extended"]) == 2
    )


@pytest.mark.slow
def test_quick_reproduction_end_to_end(tmp_path, monkeypatch):
    # Two methods x two seeds: the smallest plan with seed-matched comparisons.
    monkeypatch.setitem(PLANS, "quick", [("sum", None, 1), ("gradvac", "all_layer", 1)])
    # two workers: runs finished while the last ones train are analysed meanwhile
    result = reproduce(
        tmp_path, quick=True, seeds=2, n_permutations=19, n_bootstrap=20, workers=2,
        overrides=TINY,
    )  # fmt: skip
    assert len(result.runs) == 4 and result.report.exists()
    payload = json.loads(result.results.read_text())
    assert set(payload["runs"]) == {r.name for r in result.runs}
    # ... with the numbers of analysing the finished runs one after another
    import analyses

    one_by_one = analyses.analyse_runs(result.runs, n_permutations=19, n_bootstrap=20)
    expected = reproduce_module.results_payload(
        "quick", one_by_one, analyses.compare_runs(one_by_one), analyses.across_seeds(one_by_one),
        {}, result,
    )  # fmt: skip
    for key in ("runs", "comparison", "across_seeds"):
        assert json.loads(json.dumps(expected[key])) == payload[key], key
    assert {"train", "analyses", "analyses_after_training"} <= set(payload["timings_seconds"])
    assert payload["comparison"]["metric"] == "chrf"
    methods = {row["method"] for row in payload["comparison"]["per_method"]}
    assert methods == {"GradVac (all_layer)"}
    assert all(row["n_seeds"] == 2 for row in payload["comparison"]["per_method"])
    seeds = [row for row in payload["across_seeds"] if row["table"] == "similarity"]
    assert seeds and all(row["n_seeds"] == 2 for row in seeds)
    names = {p.name for p in result.figures}
    assert "f6_optimizers.png" in names and "f1_similarity_heatmap.png" in names
    # A second call reuses the finished runs.
    again = reproduce(tmp_path, quick=True, seeds=2, n_permutations=19, n_bootstrap=20,
                      workers=1, overrides=TINY)  # fmt: skip
    assert again.timings["train"] < result.timings["train"]
    assert again.reused_differing == {}
    # the record's headline table is written beside results.json
    assert (tmp_path / "headline.md").read_text().startswith("| statistic | sum-s0 | sum-s1 |")
    # A finished run reused under a plan whose config differs is said, and recorded.
    other = reproduce(tmp_path, quick=True, seeds=2, n_permutations=19, n_bootstrap=20,
                      workers=1, overrides=TINY | {"lr": 0.002})  # fmt: skip
    assert other.reused_differing == {r.name: ["lr"] for r in result.runs}
    recorded = json.loads((tmp_path / "results.json").read_text())
    assert recorded["reused_with_other_config"] == {r.name: ["lr"] for r in result.runs}


def test_a_worker_exits_when_its_parent_is_gone():
    """A training worker whose reproduce process died stops instead of training on: here the
    "parent" it watches is a pid that is not its parent, so it exits at the first poll."""
    import subprocess
    import sys

    code = (
        "import time; from reproduce._runs import _exit_with_parent; "
        "_exit_with_parent({parent}, poll=0.05); time.sleep(20)"
    )
    bogus = subprocess.run(
        [sys.executable, "-c", code.format(parent=2**22 + 7)], timeout=15, cwd=ROOT
    )
    assert bogus.returncode == reproduce_module.ORPHAN_EXIT
    # with its real parent alive it keeps running (killed here after a few polls)
    own = subprocess.Popen(
        [sys.executable, "-c", code.format(parent="__import__('os').getppid()")], cwd=ROOT
    )
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            own.wait(timeout=1.0)
    finally:
        own.kill()
        own.wait()
