"""The grouping experiment end to end on a tiny recipe: baselines, schemes, group runs, the
seed-matched differences, the figure, the table and the JSON."""

import json
import math

import pytest

import analyses
import figures
from geomtrace import InvalidInputError, open_trace
from reproduce import reproduce_grouping

LANGS = ["es", "fr", "de", "ru", "fi"]
TINY = {
    "langs": LANGS, "steps": 4, "every": 2, "d_model": 32, "d_ff": 64, "nhead": 2,
    "max_bytes": 24, "batch_per_lang": 4, "warmup": 1, "eval_batch": 64,
}  # fmt: skip


def _chrf(run_dir):
    with open_trace(run_dir) as trace:
        return analyses.latest_quality(trace.quality(), "chrf")


@pytest.mark.slow
def test_grouping_experiment_end_to_end(tmp_path):
    result = reproduce_grouping(tmp_path, k=2, seeds=2, n_bootstrap=20, workers=1, overrides=TINY)
    # The schemes: each a partition of the languages into k = 2 groups of <= ceil(5 / 2).
    assert list(result.schemes)[0] == "gradient" and "random" in result.schemes
    assert any(name.startswith("typology") for name in result.schemes)
    for groups in result.schemes.values():
        assert len(groups) == 2 and all(1 <= len(g) <= 3 for g in groups)
        assert sorted(t for g in groups for t in g) == sorted(LANGS)
    sizes = sorted(len(g) for g in result.schemes["gradient"])
    assert sorted(len(g) for g in result.schemes["random"]) == sizes
    # One run per group and seed, trained on exactly the group, with the baseline's steps.
    for name, by_seed in result.runs.items():
        assert sorted(by_seed) == [0, 1]
        for s, run_dirs in by_seed.items():
            for group, run_dir in zip(result.schemes[name], run_dirs, strict=True):
                with open_trace(run_dir) as trace:
                    assert sorted(trace.tasks) == sorted(group)
                    assert trace.config["seed"] == s and trace.config["steps"] == 4
    # Every difference is the group model's chrF minus the same seed's all-language chrF.
    exp = result.experiment
    base = {s: _chrf(run_dir) for s, run_dir in result.baselines.items()}
    assert not base[0].equals(base[1])  # the seeds differ, so a mix-up would show
    for name, by_seed in result.runs.items():
        for s, run_dirs in by_seed.items():
            for run_dir in run_dirs:
                for task, value in _chrf(run_dir).items():
                    row = exp.deltas[(exp.deltas["scheme"] == name) & (exp.deltas["seed"] == s)
                                     & (exp.deltas["task"] == task)].iloc[0]  # fmt: skip
                    assert row["value"] == value and row["baseline"] == base[s][task]
                    assert row["delta"] == pytest.approx(value - base[s][task])
    assert len(exp.deltas) == len(result.schemes) * 2 * len(LANGS)
    assert set(exp.per_scheme["scheme"]) == set(result.schemes)
    assert all(exp.per_scheme["n_seeds"] == 2) and all(exp.per_scheme["n_tasks"] == len(LANGS))
    assert all(math.isfinite(x) for x in exp.per_scheme["ci_low"])
    # Files.
    assert [p.name for p in result.figures] == ["grouping.png"]
    assert "| gradient |" in result.table.read_text()
    payload = json.loads(result.results.read_text())
    assert payload["k"] == 2 and payload["max_size"] == 3 and payload["seeds"] == [0, 1]
    assert payload["schemes"] == result.schemes
    assert len(payload["experiment"]["per_scheme"]) == len(result.schemes)
    # scored out of sample: chosen on seed 0's run and scored on seed 1's, and back
    across = payload["holdout_across_seeds"]
    assert [(r["fit_on"], r["scored_on"]) for r in across] == [
        ("seed 0", "seed 1"),
        ("seed 1", "seed 0"),
    ]
    assert all(0 < r["p_value"] <= 1 and r["n_random"] == 999 for r in across)
    assert any(n.startswith("out of sample: chosen on seed 0") for n in result.notes)
    # A rerun reuses every run; a different config in the same folder is refused.
    again = reproduce_grouping(tmp_path, k=2, seeds=2, n_bootstrap=20, workers=1,
                               overrides=TINY)  # fmt: skip
    assert again.experiment.deltas.equals(exp.deltas)
    with pytest.raises(InvalidInputError, match="config differs"):
        reproduce_grouping(tmp_path, k=2, seeds=2, workers=1, overrides=TINY | {"steps": 5})


def test_the_figure_and_table_draw_hand_made_numbers():
    import pandas as pd

    base = pd.DataFrame([(s, t, 10.0 + s) for s in (0, 1) for t in "abcd"],
                        columns=["seed", "task", "value"])  # fmt: skip
    values = pd.DataFrame(
        [(m, s, t, 10.0 + s + d) for m, d in (("gradient", 1.0), ("random", -0.5))
         for s in (0, 1) for t in "abcd"],
        columns=["scheme", "seed", "task", "value"],
    )  # fmt: skip
    schemes = {"gradient": [["a", "b"], ["c", "d"]], "random": [["a", "c"], ["b", "d"]]}
    exp = analyses.grouping_experiment(values, base, schemes=schemes)
    fig = figures.grouping_figure(exp)
    assert len(fig.axes) == 2
    text = figures.grouping_markdown(exp, notes=["a note"])
    assert "| gradient | +1.0 [+1.0, +1.0] | 2 | 4 | 4 | 4 | 0 |" in text
    assert "| random | -0.5 [-0.5, -0.5] | 2 | 4 | 0 | 0 | 4 |" in text and "- Note: a note" in text
    na = figures.grouping_figure(analyses.NotApplicable("nothing"))
    assert isinstance(na, analyses.NotApplicable)
    with pytest.raises(InvalidInputError):
        reproduce_grouping("unused", k=0)
