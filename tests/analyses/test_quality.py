import numpy as np
import pandas as pd
import pytest
from scipy import stats

import geomtrace as gt
from analyses import (
    QUALITY_CORRELATION_COLUMNS,
    QUALITY_DIFFERENCE_COLUMNS,
    quality_correlation,
    quality_difference,
    task_quality,
)
from geomtrace import InvalidInputError

TASKS = [f"t{i}" for i in range(8)]


def stack(seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for level in (0.0, 1.0, 1.0):  # step 0 has no structure
        strength = level * np.linspace(0, 1, 8)
        m = np.outer(strength, strength) + 0.3 * rng.normal(size=(8, 8))
        m = (m + m.T) / 2
        np.fill_diagonal(m, 1.0)
        out.append(np.clip(m, -1, 1))
    return np.stack(out)


def test_task_quality_and_planted_correlation():
    cos = stack()
    mean_sim = np.array([np.delete(cos[1:].mean(0)[i], i).mean() for i in range(8)])
    chrf = {t: 20 + 40 * s for t, s in zip(TASKS, mean_sim, strict=True)}
    loss = {t: 3 - s for t, s in zip(TASKS, mean_sim, strict=True)}
    quality = {"chrf": chrf, "heldout_loss": loss}
    table = task_quality(cos, tasks=TASKS, steps=[0, 10, 20], quality=quality)
    assert list(table.columns) == [
        "group",
        "task",
        "mean_similarity",
        "ci_low",
        "ci_high",
        "mean_similarity_step0",
        "chrf",
        "heldout_loss",
    ]
    assert table["mean_similarity"].to_numpy() == pytest.approx(
        [np.mean([np.delete(cos[s, i], i).mean() for s in (1, 2)]) for i in range(8)]
    )
    assert table["mean_similarity_step0"].to_numpy() == pytest.approx(
        [np.delete(cos[0, i], i).mean() for i in range(8)]
    )
    frame = quality_correlation(
        cos, tasks=TASKS, steps=[0, 10, 20], quality=quality, n_permutations=999
    ).set_index("metric")
    assert list(frame.reset_index().columns) == [
        "metric",
        *[c for c in QUALITY_CORRELATION_COLUMNS if c != "metric"],
    ]
    expected = stats.spearmanr(table["mean_similarity"], table["chrf"]).statistic
    assert frame.loc["chrf", "rho"] == pytest.approx(expected)
    assert frame.loc["chrf", "p_value"] < 0.01
    assert frame.loc["heldout_loss", "rho"] == pytest.approx(-expected)
    assert frame.loc["chrf", "n_tasks"] == 8
    assert np.isfinite(frame.loc["chrf", "rho_step0"])
    assert "no control" in frame.loc["chrf", "note"] and np.isnan(frame.loc["chrf", "partial_rho"])
    given = quality_correlation(
        cos, tasks=TASKS, steps=[0, 10, 20], quality=quality, metrics=["chrf"],
        control=dict(zip(TASKS, np.arange(8.0), strict=True)), n_permutations=99,
    )  # fmt: skip
    assert given["control"].iloc[0] == "given" and np.isfinite(given["partial_rho"].iloc[0])


def test_latest_quality_step_wins_and_missing_values_are_excluded():
    cos = stack(1)
    q = pd.DataFrame(
        [(0, t, "chrf", 0.0) for t in TASKS]
        + [(50, t, "chrf", float(i)) for i, t in enumerate(TASKS[:-1])],
        columns=["step", "task", "metric", "value"],
    )
    table = task_quality(cos, tasks=TASKS, steps=[0, 10, 20], quality=q).set_index("task")
    assert table.loc["t3", "chrf"] == 3.0 and table.loc["t7", "chrf"] == 0.0  # t7 only at step 0
    frame = quality_correlation(cos, tasks=TASKS, steps=[0, 10, 20], quality=q, n_permutations=9)
    assert frame["n_tasks"].iloc[0] == 8
    few = {"chrf": {"t0": 1.0, "t1": 2.0, "t2": 3.0}}
    frame = quality_correlation(cos, tasks=TASKS, steps=[0, 10, 20], quality=few, n_permutations=9)
    assert np.isnan(frame["rho"].iloc[0]) and "need >= 4" in frame["note"].iloc[0]
    assert frame["excluded"].iloc[0].count("missing value") == 5
    with pytest.raises(InvalidInputError, match="no quality metric"):
        quality_correlation(cos, tasks=TASKS, steps=[0, 10, 20], quality=few, metrics=["bleu"])
    with pytest.raises(InvalidInputError, match="no quality measurements"):
        quality_correlation(cos, tasks=TASKS, steps=[0, 10, 20], quality={})


def test_quality_difference_by_hand():
    later = pd.DataFrame(
        {"step": [10, 100, 100], "task": ["a", "a", "b"], "metric": ["chrf", "chrf", "loss"],
         "value": [30.0, 41.0, 2.0]}
    )  # fmt: skip
    runs = {
        "gv": {"chrf": {"a": 42.5, "b": 49.0}},
        "base": {"chrf": {"b": 50.0, "a": 40.0}},
        "pc": later,  # chrF of a at its latest step (100); b has no chrF
    }
    frame = quality_difference(runs, "base")
    assert list(frame.columns) == QUALITY_DIFFERENCE_COLUMNS
    assert frame[["run", "task"]].values.tolist() == [
        ["gv", "a"], ["gv", "b"], ["pc", "a"], ["pc", "b"],
    ]  # fmt: skip
    np.testing.assert_allclose(frame["value"], [42.5, 49.0, 41.0, np.nan])
    np.testing.assert_allclose(frame["baseline"], [40.0, 50.0, 40.0, 50.0])
    np.testing.assert_allclose(frame["delta"], [2.5, -1.0, 1.0, np.nan])
    with pytest.raises(InvalidInputError, match="baseline 'sum' is not one of the runs"):
        quality_difference(runs, "sum")
    with pytest.raises(InvalidInputError, match="run 'gv' has no 'bleu' quality values"):
        quality_difference(runs, "base", metric="bleu")


def test_quality_difference_keeps_the_trace_task_order(tmp_path):
    traces = {}
    for name, chrf in {"sum": {"y": 30.0, "x": 20.0}, "gradvac": {"y": 33.0, "x": 19.5}}.items():
        with gt.TraceWriter(tmp_path / name, ["y", "x"], [("g", 4, ["p"])]) as w:
            w.write_snapshot(0, np.eye(2)[None])
            for task, value in chrf.items():
                w.write_quality(0, task, "chrf", value)
        traces[name] = gt.open_trace(tmp_path / name)
    frame = quality_difference(traces, "sum")
    assert frame["task"].tolist() == ["y", "x"]
    np.testing.assert_allclose(frame["delta"], [3.0, -0.5])


def test_task_covariates_by_hand():
    from analyses import task_covariates

    meta = {
        "scripts": {"a": "Latn", "b": "Latn", "c": "Cyrl", "d": "Latn"},
        "char_profiles": {"a": {"x": 1}, "b": {"x": 1, "y": 1}, "c": {"z": 1}, "d": {"x": 1}},
    }
    found, skipped = task_covariates(meta, ["a", "b", "c", "d"])
    assert skipped == {}
    # script: share of the other three written in one's script
    assert found["script"].to_dict() == pytest.approx({"a": 2 / 3, "b": 2 / 3, "c": 0, "d": 2 / 3})
    # char overlap: mean over the others of sum_c min(p_a, p_b); a-b 0.5, a-c 0, a-d 1, b-c 0,
    # b-d 0.5, c-d 0
    assert found["char_overlap"].to_dict() == pytest.approx(
        {"a": 1.5 / 3, "b": 1 / 3, "c": 0, "d": 1.5 / 3}
    )
    found, skipped = task_covariates({"scripts": {"a": "Latn"}}, ["a", "b"])
    assert found == {} and "no script recorded for ['b']" in skipped["script"]
    assert task_covariates(meta, ["a"])[0] == {}


def test_named_controls_give_one_row_each_with_the_hand_partial():
    cos = stack(2)
    mean_sim = np.array([np.delete(cos[1:].mean(0)[i], i).mean() for i in range(8)])
    rng = np.random.default_rng(5)
    chrf = dict(zip(TASKS, 30 + 10 * mean_sim + rng.normal(size=8), strict=True))
    share = dict(zip(TASKS, [0, 0, 1 / 7, 1 / 7, 3 / 7, 3 / 7, 3 / 7, 3 / 7], strict=True))
    other = dict(zip(TASKS, rng.normal(size=8), strict=True))
    frame = quality_correlation(
        cos, tasks=TASKS, steps=[0, 10, 20], quality={"chrf": chrf},
        control={"script": share, "noise": other}, n_permutations=99,
    )  # fmt: skip
    assert list(frame["control"]) == ["script", "noise"]
    assert frame["rho"].nunique() == 1  # the raw rho is repeated on each control row
    x, y = stats.rankdata(mean_sim), stats.rankdata([chrf[t] for t in TASKS])
    for name, z in (("script", share), ("noise", other)):
        zr = stats.rankdata([z[t] for t in TASKS])  # ties get mean ranks
        rxy, rxz, ryz = (np.corrcoef(a, b)[0, 1] for a, b in ((x, y), (x, zr), (y, zr)))
        hand = (rxy - rxz * ryz) / np.sqrt((1 - rxz**2) * (1 - ryz**2))
        row = frame[frame["control"] == name].iloc[0]
        assert row["partial_rho"] == pytest.approx(hand)
        assert row["partial_ci_low"] <= row["partial_rho"] <= row["partial_ci_high"]
    same = quality_correlation(
        cos, tasks=TASKS, steps=[0, 10, 20], quality={"chrf": chrf},
        control={"script": dict.fromkeys(TASKS, 1.0)}, n_permutations=9,
    )  # fmt: skip
    assert np.isnan(same["partial_rho"].iloc[0])
    assert "script is constant over these tasks" in same["note"].iloc[0]
    with pytest.raises(InvalidInputError, match="control of type int"):
        quality_correlation(cos, tasks=TASKS, steps=[0, 10, 20], quality={"chrf": chrf}, control=3)
