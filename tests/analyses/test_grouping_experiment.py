"""The grouping experiment's numbers from hand-made values: exact differences and intervals."""

import math

import pandas as pd
import pytest
from scipy import stats

import analyses
from geomtrace import InvalidInputError

T1 = stats.t.ppf(0.975, 1)  # two seeds: one degree of freedom

BASE = pd.DataFrame(
    [(0, "a", 10.0), (0, "b", 20.0), (0, "c", 30.0), (0, "d", 40.0),
     (1, "a", 12.0), (1, "b", 18.0), (1, "c", 30.0), (1, "d", 44.0)],
    columns=["seed", "task", "value"],
)  # fmt: skip
#: Scheme g: groups (a, b) and (c, d). Differences: seed 0: +1 +1 -1 0; seed 1: +2 +1 +1 0.
VALUES = pd.DataFrame(
    [("g", 0, "a", 11.0), ("g", 0, "b", 21.0), ("g", 0, "c", 29.0), ("g", 0, "d", 40.0),
     ("g", 1, "a", 14.0), ("g", 1, "b", 19.0), ("g", 1, "c", 31.0), ("g", 1, "d", 44.0)],
    columns=["scheme", "seed", "task", "value"],
)  # fmt: skip
SCHEMES = {"g": [["a", "b"], ["c", "d"]]}


def test_differences_intervals_and_counts_are_exact():
    exp = analyses.grouping_experiment(VALUES, BASE, schemes=SCHEMES)
    assert exp.higher_is_better and exp.seeds == [0, 1]
    d = exp.deltas.set_index(["seed", "task"])["delta"]
    assert d.to_dict() == {(0, "a"): 1, (0, "b"): 1, (0, "c"): -1, (0, "d"): 0,
                           (1, "a"): 2, (1, "b"): 1, (1, "c"): 1, (1, "d"): 0}  # fmt: skip
    assert list(exp.deltas["group"]) == [0, 0, 1, 1] * 2
    per = exp.per_task.set_index("task")
    assert per.loc["a", "mean_delta"] == 1.5
    half = T1 * math.sqrt(0.5) / math.sqrt(2)
    assert per.loc["a", "ci_low"] == pytest.approx(1.5 - half)
    assert per.loc["a", "ci_high"] == pytest.approx(1.5 + half)
    assert (per.loc["b", "ci_low"], per.loc["b", "ci_high"]) == (1.0, 1.0)  # no spread
    assert per.loc["c", "ci_low"] == pytest.approx(-T1)
    assert per.loc["a", "mean_value"] == 12.5 and per.loc["a", "mean_baseline"] == 11.0
    assert set(per["n_seeds"]) == {2}
    row = exp.per_scheme.iloc[0]
    # Per seed, the mean over tasks: 0.25 and 1.0; their t interval.
    assert row["mean_delta"] == pytest.approx(0.625)
    assert row["ci_low"] == pytest.approx(0.625 - T1 * 0.375)
    assert row["ci_high"] == pytest.approx(0.625 + T1 * 0.375)
    assert (row["n_seeds"], row["n_tasks"]) == (2, 4)
    assert (row["n_gain"], row["n_gain_clear"], row["n_loss_clear"]) == (2, 1, 0)  # a, b; b
    table = exp.table()
    assert list(table.index) == ["a", "b", "c", "d"] and table.loc["c", "g"] == 0.0
    payload = exp.to_dict()
    assert payload["schemes"] == SCHEMES and len(payload["deltas"]) == 8


def test_each_difference_uses_the_baseline_of_its_own_seed():
    # Scheme h has seed 1 only: its differences are against seed 1's baseline, not seed 0's.
    h = pd.DataFrame([("h", 1, t, 50.0) for t in "abcd"], columns=VALUES.columns)
    exp = analyses.grouping_experiment(pd.concat([VALUES, h]), BASE)
    d = exp.deltas[exp.deltas["scheme"] == "h"].set_index("task")
    assert d["baseline"].to_dict() == {"a": 12.0, "b": 18.0, "c": 30.0, "d": 44.0}
    assert d["delta"].to_dict() == {"a": 38.0, "b": 32.0, "c": 20.0, "d": 6.0}
    row = exp.per_scheme.set_index("scheme").loc["h"]
    assert row["n_seeds"] == 1 and math.isnan(row["ci_low"]) and row["mean_delta"] == 24.0
    assert list(exp.schemes) == ["g", "h"]
    with pytest.raises(InvalidInputError, match="same seed"):
        analyses.grouping_experiment(VALUES, BASE[BASE["seed"] == 0])


def test_lower_is_better_counts_decreases_as_gains():
    exp = analyses.grouping_experiment(VALUES, BASE, schemes=SCHEMES, metric="heldout_loss")
    row = exp.per_scheme.iloc[0]
    assert not exp.higher_is_better
    # task means: a +1.5, b +1, c 0, d 0: none decreases; b increases with no spread.
    assert (row["n_gain"], row["n_gain_clear"], row["n_loss_clear"]) == (0, 0, 1)


def test_groups_from_the_values_and_input_checks():
    values = VALUES.assign(group=[0, 0, 1, 1] * 2)
    exp = analyses.grouping_experiment(values, BASE)
    assert exp.schemes == SCHEMES
    empty = analyses.grouping_experiment(VALUES.iloc[:0], BASE)
    assert isinstance(empty, analyses.NotApplicable) and "nothing to compare" in empty.reason
    with pytest.raises(InvalidInputError, match="more than one row"):
        analyses.grouping_experiment(pd.concat([VALUES, VALUES.iloc[:1]]), BASE)
    with pytest.raises(InvalidInputError, match="lacks the columns"):
        analyses.grouping_experiment(VALUES.drop(columns="seed"), BASE)


def test_random_groupings_partition_with_the_given_sizes():
    tasks = list("abcdefg")
    draws = analyses.random_groupings(tasks, [3, 2, 2], 5, seed=3)
    assert draws == analyses.random_groupings(tasks, [3, 2, 2], 5, seed=3)  # seeded
    assert len({str(d) for d in draws}) > 1
    for groups in draws:
        assert [len(g) for g in groups] == [3, 2, 2]
        assert sorted(t for g in groups for t in g) == tasks
        assert all(g == sorted(g, key=tasks.index) for g in groups)
    with pytest.raises(InvalidInputError, match="do not partition"):
        analyses.random_groupings(tasks, [3, 3], 1)


def test_latest_quality_takes_the_last_step():
    q = pd.DataFrame(
        [(10, "a", "chrf", 1.0), (20, "a", "chrf", 2.0), (20, "a", "heldout_loss", 9.0),
         (10, "b", "chrf", 3.0)],
        columns=["step", "task", "metric", "value"],
    )  # fmt: skip
    assert analyses.latest_quality(q, "chrf").to_dict() == {"a": 2.0, "b": 3.0}
    assert analyses.latest_quality(q.iloc[:0], "chrf").empty
