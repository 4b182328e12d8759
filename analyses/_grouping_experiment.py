"""Does a grouping help? Per-language quality of group models against the all-language model.

The experiment (``reproduce.reproduce_grouping``): a *scheme* partitions the K tasks into
groups (gradient affinity, typology, random with the same sizes, ...); one model is trained
per group and seed with the same recipe, the same steps and the same rows per task per step,
so every task sees exactly the data it saw in the single all-task model. For task t, scheme
m and seed s the difference is seed-matched:

    d(m, t, s) = q(m, t, s) - q(all, t, s)

(q: the task's quality, e.g. chrF, of the group model holding t; q(all, t, s): the all-task
model trained with the same seed). Across the n seeds of (m, t), the interval of the mean d
is the Student t interval d +- t_{(1+level)/2, n-1} s_d / sqrt(n) (``t_interval``; NaN
with one seed; wide with two, t = 12.7, honestly so). Per scheme, the mean over tasks at each
seed, D(m, s) = mean_t d(m, t, s), gives the scheme's mean difference and its t interval
across seeds (the tasks of one seed share the seed's noise, so they are not independent
replicates). A task *gains* when its mean d is better (> 0 for higher-is-better metrics, < 0
for losses); it gains or loses *clearly* when its interval excludes 0.

No training here: the inputs are frames of numbers (``grouping_experiment``), and random
partitions of given sizes (``random_groupings``) are plain seeded draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from analyses._compare import higher_is_better, t_interval
from analyses._results import NotApplicable
from analyses._uncertainty import LEVEL
from geomtrace import InvalidInputError

GROUPING_DELTA_COLUMNS = ["scheme", "seed", "task", "group", "value", "baseline", "delta"]
GROUPING_TASK_COLUMNS = [
    "scheme", "task", "group", "mean_delta", "ci_low", "ci_high", "n_seeds", "mean_value",
    "mean_baseline",
]  # fmt: skip
GROUPING_SCHEME_COLUMNS = [
    "scheme", "mean_delta", "ci_low", "ci_high", "n_seeds", "n_tasks", "n_gain", "n_gain_clear",
    "n_loss_clear",
]  # fmt: skip


@dataclass
class GroupingExperiment:
    """Seed-matched quality differences of group models against the all-task model.

    ``deltas``: one row per (scheme, seed, task): the group model's value, the same-seed
    baseline and their difference; ``per_task``: per (scheme, task) the mean difference over
    seeds with its t interval; ``per_scheme``: per scheme the mean over seeds of the per-seed
    mean over tasks, its t interval across seeds, how many tasks gain (n_gain) and gain or lose
    with an interval excluding 0 (n_gain_clear, n_loss_clear). ``schemes``: {scheme: groups}.
    """

    metric: str
    higher_is_better: bool
    schemes: dict[str, list[list[str]]]
    deltas: pd.DataFrame
    per_task: pd.DataFrame
    per_scheme: pd.DataFrame
    seeds: list[int]
    notes: list[str] = field(default_factory=list)
    level: float = LEVEL
    baseline: str = "all-language model"

    @property
    def tasks(self) -> list[str]:
        return list(dict.fromkeys(self.deltas["task"]))

    def table(self) -> pd.DataFrame:
        """Per task (rows) and scheme (columns): the mean difference over seeds."""
        return self.per_task.pivot(index="task", columns="scheme", values="mean_delta").reindex(
            index=self.tasks, columns=list(self.schemes)
        )

    def to_dict(self) -> dict[str, Any]:
        import json

        records = lambda f: json.loads(f.to_json(orient="records"))  # noqa: E731
        return {
            "metric": self.metric, "higher_is_better": self.higher_is_better,
            "baseline": self.baseline, "level": self.level, "seeds": self.seeds,
            "schemes": self.schemes, "per_scheme": records(self.per_scheme),
            "per_task": records(self.per_task), "deltas": records(self.deltas),
            "notes": self.notes,
        }  # fmt: skip


def random_groupings(
    tasks: Sequence[str], sizes: Sequence[int], n: int, *, seed: int = 0
) -> list[list[list[str]]]:
    """``n`` uniformly random partitions of ``tasks`` into groups of ``sizes`` (in order),
    drawn from ``numpy.random.default_rng(seed)``; each group keeps the order of ``tasks``."""
    tasks = list(tasks)
    sizes = [int(s) for s in sizes]
    if sum(sizes) != len(tasks) or any(s < 1 for s in sizes):
        raise InvalidInputError(
            f"group sizes {sizes} do not partition {len(tasks)} tasks into non-empty groups"
        )
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InvalidInputError(f"n={n!r}: give a number of random groupings >= 0")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        perm = rng.permutation(len(tasks))
        groups, start = [], 0
        for size in sizes:
            members = sorted(perm[start : start + size].tolist())
            groups.append([tasks[i] for i in members])
            start += size
        out.append(groups)
    return out


def latest_quality(quality: pd.DataFrame, metric: str) -> pd.Series:
    """Per task, the ``metric`` value at the latest step it was measured (``trace.quality()``
    frame: step, task, metric, value)."""
    if quality is None or quality.empty:
        return pd.Series(dtype=float)
    q = quality[quality["metric"] == metric].sort_values("step", kind="stable")
    return q.groupby("task", sort=False)["value"].last().astype(float)


def _check_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InvalidInputError(f"{what} lacks the columns {missing} (has {list(frame.columns)})")


def grouping_experiment(
    values: pd.DataFrame,
    baseline: pd.DataFrame,
    *,
    schemes: Mapping[str, Sequence[Sequence[str]]] | None = None,
    metric: str = "chrf",
    higher: bool | None = None,
    level: float = LEVEL,
) -> GroupingExperiment | NotApplicable:
    """Seed-matched differences of every scheme's group models against the all-task model.

    ``values``: rows (scheme, seed, task, value): task t's quality in the group model that
    held it, under scheme and seed; ``baseline``: rows (seed, task, value) of the all-task
    model. Every (scheme, seed) must have the all-task model of the same seed (no fallback to
    another seed: that would mix seed noise into the difference). ``schemes``: {scheme:
    groups} (the group of each task goes into the tables; default: from ``values``'s
    optional ``group`` column). ``higher``: whether larger is better (default from the metric
    name, ``higher_is_better``). See the module docstring for the statistics.
    """
    refused = _checked_inputs(values, baseline)
    if refused is not None:
        return refused
    better = higher_is_better(metric) if higher is None else bool(higher)
    scheme_names = list(dict.fromkeys(values["scheme"]))
    schemes = _scheme_groups(values, scheme_names, schemes)
    deltas, notes = _deltas(values, baseline, schemes, scheme_names)
    per_task, per_scheme = _per_task_and_scheme(deltas, scheme_names, better, level)
    seeds = sorted({int(s) for s in deltas["seed"]})
    if len(seeds) < 2:
        notes.append("one seed: no interval across seeds")
    return GroupingExperiment(
        metric=metric, higher_is_better=better,
        schemes={name: schemes.get(name, []) for name in scheme_names}, deltas=deltas,
        per_task=pd.DataFrame(per_task, columns=GROUPING_TASK_COLUMNS),
        per_scheme=pd.DataFrame(per_scheme, columns=GROUPING_SCHEME_COLUMNS), seeds=seeds,
        notes=list(dict.fromkeys(notes)), level=level,
    )  # fmt: skip


def _checked_inputs(values: pd.DataFrame, baseline: pd.DataFrame) -> NotApplicable | None:
    """Refuse frames without their columns or with two rows for one (scheme, seed, task) or
    (seed, task); a NotApplicable when either is empty; None when both can be compared."""
    _check_columns(values, ["scheme", "seed", "task", "value"], "values")
    _check_columns(baseline, ["seed", "task", "value"], "baseline")
    if values.empty:
        return NotApplicable("no group model has a quality value: nothing to compare")
    if baseline.empty:
        return NotApplicable("the all-task model has no quality value: nothing to compare")
    dup = values.duplicated(["scheme", "seed", "task"])
    if dup.any():
        first = values[dup].iloc[0]
        raise InvalidInputError(
            f"values has more than one row for scheme {first['scheme']!r}, seed "
            f"{first['seed']!r}, task {first['task']!r}: a task belongs to one group per scheme"
        )
    if baseline.duplicated(["seed", "task"]).any():
        raise InvalidInputError("baseline has more than one row for a (seed, task)")
    return None


def _scheme_groups(
    values: pd.DataFrame,
    scheme_names: list[str],
    schemes: Mapping[str, Sequence[Sequence[str]]] | None,
) -> dict[str, list[list[str]]]:
    """{scheme: groups of task names}: ``schemes`` as strings, or (None) from the ``group``
    column of ``values`` (groups in sorted group order; {} without that column)."""
    if schemes is None:
        schemes = {}
        if "group" in values.columns:
            for name in scheme_names:
                part = values[values["scheme"] == name].drop_duplicates("task")
                schemes[name] = [list(g["task"]) for _, g in part.groupby("group", sort=True)]
    return {str(k): [list(map(str, g)) for g in v] for k, v in schemes.items()}


def _deltas(
    values: pd.DataFrame,
    baseline: pd.DataFrame,
    schemes: Mapping[str, list[list[str]]],
    scheme_names: list[str],
) -> tuple[pd.DataFrame, list[str]]:
    """The seed-matched differences (``GROUPING_DELTA_COLUMNS``: a group model's value minus
    the all-task model's of the same seed and task), in scheme, seed and baseline task order,
    and notes on the tasks left out; refuses a seed without an all-task model."""
    group_of = {
        (name, task): n for name, groups in schemes.items() for n, g in enumerate(groups)
        for task in g
    }  # fmt: skip
    base = {(int(r.seed), str(r.task)): float(r.value) for r in baseline.itertuples()}
    base_seeds = {s for s, _ in base}
    missing = sorted({int(s) for s in values["seed"]} - base_seeds)
    if missing:
        raise InvalidInputError(
            f"no all-task model for seed(s) {missing}: each difference is taken against the "
            "all-task model of the same seed; train it first"
        )
    notes = []
    rows = []
    for r in values.itertuples():
        key = (int(r.seed), str(r.task))
        if key not in base:
            notes.append(f"{r.task}: not in the all-task model of seed {r.seed}; left out")
            continue
        value = float(r.value)
        rows.append((str(r.scheme), int(r.seed), str(r.task),
                     group_of.get((str(r.scheme), str(r.task)), -1), value, base[key],
                     value - base[key]))  # fmt: skip
    deltas = pd.DataFrame(rows, columns=GROUPING_DELTA_COLUMNS)
    task_order = list(dict.fromkeys(baseline["task"].astype(str)))
    rank = {t: n for n, t in enumerate(task_order)}
    order = {"scheme": {s: n for n, s in enumerate(scheme_names)}, "task": rank}
    deltas = deltas.sort_values(
        ["scheme", "seed", "task"],
        key=lambda c: c.map(order[c.name]) if c.name in order else c,
        kind="stable",
    ).reset_index(drop=True)
    return deltas, notes


def _per_task_and_scheme(
    deltas: pd.DataFrame, scheme_names: list[str], better: bool, level: float
) -> tuple[list[tuple], list[tuple]]:
    """Rows of the per-task table (``GROUPING_TASK_COLUMNS``: mean difference over seeds with
    its t-interval) and of the per-scheme table (``GROUPING_SCHEME_COLUMNS``: mean of the
    per-seed mean differences with its t-interval, and how many tasks are better, clearly
    better and clearly worse, ``better`` saying which sign is better)."""
    sign = 1.0 if better else -1.0
    per_task, per_scheme = [], []
    for name in scheme_names:
        part = deltas[deltas["scheme"] == name]
        task_rows = []
        for task, d in part.groupby("task", sort=False):
            lo, hi = t_interval(d["delta"], level)
            task_rows.append((name, task, int(d["group"].iloc[0]), float(d["delta"].mean()), lo, hi,
                         int(d["delta"].notna().sum()), float(d["value"].mean()),
                         float(d["baseline"].mean())))  # fmt: skip
        per_task += task_rows
        tasks = pd.DataFrame(task_rows, columns=GROUPING_TASK_COLUMNS)
        seed_means = part.groupby("seed")["delta"].mean()
        lo, hi = t_interval(seed_means, level)
        # better = sign * d > 0; an interval is clearly better when its worse end is.
        good = sign * tasks["mean_delta"] > 0
        worse_end = sign * (tasks["ci_low"] if better else tasks["ci_high"])
        better_end = sign * (tasks["ci_high"] if better else tasks["ci_low"])
        per_scheme.append((name, float(seed_means.mean()), lo, hi, int(seed_means.size),
                           int(len(tasks)), int(good.sum()), int((worse_end > 0).sum()),
                           int((better_end < 0).sum())))  # fmt: skip
    return per_task, per_scheme


__all__ = [
    "GROUPING_DELTA_COLUMNS", "GROUPING_SCHEME_COLUMNS", "GROUPING_TASK_COLUMNS",
    "GroupingExperiment", "grouping_experiment", "latest_quality", "random_groupings",
]  # fmt: skip
