"""Across runs: optimizers against the baseline (F6) and every statistic across seeds.

Runs are grouped into *methods* by :meth:`RunDescription.method_label` (e.g. "GradVac
(all_layer)") and, within a method, by the seed in their config. A quality difference is
seed-matched: method m at seed s minus the baseline (method ``sum``) at seed s, per task
(the baseline's first seed when it lacks s, noted). Across seeds, with n differences of mean
d and standard deviation s_d (ddof 1), the interval is the Student t interval
d +- t_{(1+level)/2, n-1} s_d / sqrt(n): with 2 seeds it is wide (t = 12.7), honestly so; with
one seed there is none (NaN).

A second interval (``ref_ci_low``, ``ref_ci_high``, ``ref_p``) takes the seed noise from the
baseline's own seeds, so that one or two seeds of a method still get an interval: with m >= 2
baseline seeds whose task-mean metric has standard deviation s_B (ddof 1),

    d +- t_{(1+level)/2, m-1} s_B sqrt(2 / n)

and ref_p the two-sided t test of d / (s_B sqrt(2 / n)) on m - 1 df. ``detectable``: the
smallest |d| that test detects with 80% power at two-sided 1 - level,
(t_{(1+level)/2, m-1} + t_{0.8, m-1}) s_B sqrt(2 / n); it falls as 1 / sqrt(n) with the
method's seeds n (the design question "how many seeds for a difference of x"). Why sqrt(2): a paired
difference M_s - B_s has variance Var(M) + Var(B) - 2 Cov(M_s, B_s) <= 2 sigma^2 when the
method's seed variance is the baseline's sigma^2 and a shared seed (same initialisation and
data order) does not make the two runs vary in opposite directions (Cov >= 0): conservative
under those assumptions, which the across-seed rows of an extended reproduction can check.
It is training noise only: the test strings are the same in every run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from analyses._results import NotApplicable, RunResults
from analyses._uncertainty import LEVEL

DELTA_COLUMNS = ["method", "seed", "task", "value", "baseline", "delta"]
PER_TASK_COLUMNS = ["method", "task", "mean_delta", "ci_low", "ci_high", "n_seeds"]
PER_METHOD_COLUMNS = [
    "method", "mean_delta", "ci_low", "ci_high", "n_seeds", "n_tasks", "n_better",
    "ref_ci_low", "ref_ci_high", "ref_p", "detectable", "n_baseline_seeds",
]  # fmt: skip
SEED_COLUMNS = [
    "method", "table", "test", "n_seeds", "mean", "sd", "min", "max", "n_positive",
    "n_negative", "n_significant",
]  # fmt: skip

_LOWER_IS_BETTER = re.compile(r"loss|mse|mae|rmse|error|perplexity|ppl|\bwer\b|\bter\b|nll")


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is better: False for names that say loss, error,
    (R)MSE/MAE, perplexity, NLL, WER or TER; True otherwise (chrF, BLEU, accuracy, F1...)."""
    return not _LOWER_IS_BETTER.search(metric.lower())


def seed_of(result: RunResults) -> int | str:
    seed = result.config.get("seed")
    return (
        int(seed) if isinstance(seed, int | float) and not isinstance(seed, bool) else result.label
    )


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """Student t interval of the mean of ``values`` (NaN bounds with fewer than 2 finite)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return float("nan"), float("nan")
    half = stats.t.ppf((1 + level) / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return float(v.mean() - half), float(v.mean() + half)


def _latest(result: RunResults, metric: str) -> pd.Series:
    q = result.frames.get("quality_values")
    if q is None or q.empty:
        return pd.Series(dtype=float)
    q = q[q["metric"] == metric].sort_values("step")
    return q.groupby("task", sort=False)["value"].last().astype(float)


@dataclass
class Comparison:
    """Methods against the baseline: quality differences per task and seed, final pair
    similarities, GradVac targets (see the module docstring for the intervals)."""

    baseline: str
    methods: dict[str, str]
    metric: str
    higher_is_better: bool
    deltas: pd.DataFrame
    per_task: pd.DataFrame
    per_method: pd.DataFrame
    final_pairs: pd.DataFrame
    targets: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    level: float = LEVEL
    task_noun: str = "task"

    def to_dict(self) -> dict:
        import json

        records = lambda f: json.loads(f.to_json(orient="records"))  # noqa: E731
        return {
            "baseline": self.baseline, "methods": self.methods, "metric": self.metric,
            "higher_is_better": self.higher_is_better, "per_method": records(self.per_method),
            "per_task": records(self.per_task), "deltas": records(self.deltas),
            "notes": self.notes,
        }  # fmt: skip


def baseline_seed_interval(
    mean_delta: float, n_seeds: int, baseline_means: Sequence[float], level: float = LEVEL
) -> tuple[float, float, float, float]:
    """(low, high, p, detectable) of a method's mean seed-matched difference with the seed
    noise taken from the baseline's seeds (module docstring); NaNs with fewer than 2 baseline
    seeds or where they agree exactly (no noise to borrow)."""
    nan = float("nan")
    b = np.asarray(baseline_means, dtype=np.float64)
    b = b[np.isfinite(b)]
    if b.size < 2 or n_seeds < 1 or not math.isfinite(mean_delta):
        return nan, nan, nan, nan
    se = b.std(ddof=1) * math.sqrt(2.0 / n_seeds)
    if se <= 0:
        return nan, nan, nan, nan
    df = b.size - 1
    half = stats.t.ppf((1 + level) / 2, df) * se
    p = 2 * stats.t.sf(abs(mean_delta) / se, df)
    detectable = (stats.t.ppf((1 + level) / 2, df) + stats.t.ppf(0.8, df)) * se
    return mean_delta - half, mean_delta + half, float(p), float(detectable)


def _not_comparable(results, baselines, others) -> NotApplicable | None:
    """Why these runs cannot be compared (no baseline, no other method, different tasks)."""
    if not baselines:
        return NotApplicable(
            "comparing optimizers needs a baseline run with method 'sum'; the runs have "
            + ", ".join(f"{r.label}: {r.description.method}" for r in results)
        )
    if not others:
        return NotApplicable(
            "comparing optimizers needs a pcgrad or gradvac run besides the baseline; every "
            "run has method 'sum'"
        )
    if len({tuple(r.tasks) for r in results}) > 1:
        return NotApplicable(
            "comparing optimizers needs runs over the same tasks; their task lists differ: "
            + "; ".join(f"{r.label}: {r.tasks}" for r in results)
        )
    return None


def _pooled_frames(results) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every run's final pairs and GradVac targets, labelled by method and seed."""
    final = []
    targets = []
    for r in results:
        label, seed = r.description.method_label(), seed_of(r)
        if "final_pairs" in r.frames:
            final.append(r.frames["final_pairs"].assign(method=label, seed=seed))
        if "gradvac_targets" in r.frames:
            targets.append(r.frames["gradvac_targets"].assign(method=label, seed=seed))
    final_pairs = (
        pd.concat(final, ignore_index=True)[["method", "seed", "task_a", "task_b", "cosine"]]
        if final
        else pd.DataFrame(columns=["method", "seed", "task_a", "task_b", "cosine"])
    )
    target_cols = ["method", "seed", "step", "group", "mean_target", "n_pairs"]
    target_frame = (
        pd.concat(targets, ignore_index=True)[target_cols]
        if targets
        else pd.DataFrame(columns=target_cols)
    )
    return final_pairs, target_frame


def compare_runs(
    results: Sequence[RunResults], *, metric: str | None = None, level: float = LEVEL
) -> Comparison | NotApplicable:
    """Compare every non-baseline method with the baseline (method ``sum``); see the module
    docstring. ``metric``: default the first metric the baseline recorded."""
    results = list(results)
    baselines = [r for r in results if r.description.method == "sum"]
    others = [r for r in results if r.description.method != "sum"]
    why_not = _not_comparable(results, baselines, others)
    if why_not is not None:
        return why_not
    base_label = baselines[0].description.method_label()
    metrics = baselines[0].description.metrics
    metric = metric or (metrics[0] if metrics else None)
    if metric is None:
        return NotApplicable("the baseline run recorded no quality metric: nothing to compare")
    missing = [r.label for r in results if metric not in r.description.metrics]
    if missing:
        return NotApplicable(f"runs {missing} did not record {metric!r}: did they finish?")
    better = higher_is_better(metric)
    methods = {base_label: "sum"}
    for r in others:
        methods.setdefault(r.description.method_label(), r.description.method)
    base_by_seed = {seed_of(r): _latest(r, metric) for r in baselines}
    first_seed = next(iter(base_by_seed))
    notes, rows = [], []
    for r in others:
        seed = seed_of(r)
        base = base_by_seed.get(seed)
        if base is None:
            base = base_by_seed[first_seed]
            notes.append(
                f"{r.label}: no baseline with seed {seed}; compared with seed {first_seed}"
            )
        values = _latest(r, metric)
        for task in r.tasks:
            if task in base.index:
                v = float(values.get(task, np.nan))
                rows.append((r.description.method_label(), seed, task, v, float(base[task]),
                             v - float(base[task])))  # fmt: skip
    deltas = pd.DataFrame(rows, columns=DELTA_COLUMNS)
    per_task, per_method = [], []
    for method, part in deltas.groupby("method", sort=False):
        for task, d in part.groupby("task", sort=False):
            lo, hi = t_interval(d["delta"], level)
            per_task.append(
                (method, task, float(d["delta"].mean()), lo, hi, int(d["delta"].notna().sum()))
            )
        seed_means = part.groupby("seed")["delta"].mean()
        lo, hi = t_interval(seed_means, level)
        task_means = part.groupby("task")["delta"].mean()
        n_better = int((task_means > 0).sum() if better else (task_means < 0).sum())
        tasks = list(task_means.index)
        reference = baseline_seed_interval(
            float(seed_means.mean()), int(seed_means.size),
            [float(b.reindex(tasks).mean()) for b in base_by_seed.values()], level,
        )  # fmt: skip
        per_method.append(
            (method, float(seed_means.mean()), lo, hi, int(seed_means.size),
             int(task_means.size), n_better, *reference, len(base_by_seed))
        )  # fmt: skip
    final_pairs, target_frame = _pooled_frames(results)
    return Comparison(
        baseline=base_label,
        methods=methods,
        metric=metric,
        higher_is_better=better,
        deltas=deltas,
        per_task=pd.DataFrame(per_task, columns=PER_TASK_COLUMNS),
        per_method=pd.DataFrame(per_method, columns=PER_METHOD_COLUMNS),
        final_pairs=final_pairs,
        targets=target_frame,
        notes=notes,
        level=level,
        task_noun=baselines[0].description.task_noun,
    )


def across_seeds(results: Sequence[RunResults], *, alpha: float = 0.05) -> pd.DataFrame:
    """Every test of every run, summarised per method across its seeds.

    One row per (method, table, test) of the runs' ``frames["tests"]`` plus the headline mean
    similarity (table ``similarity``) and reliability: n_seeds, mean, sd (ddof 1; NaN for one
    seed), min, max, n_positive / n_negative (sign agreement), n_significant (p < ``alpha``,
    uncorrected; the per-run Holm marks are in each run's own table).
    """
    rows = []
    for r in results:
        method, seed = r.description.method_label(), seed_of(r)
        tests = r.frames.get("tests")
        if tests is not None:
            for t in tests.itertuples():
                rows.append((method, seed, t.table, t.test, t.value, t.p_value))
        head = r.headline()
        if head.get("mean_similarity") is not None:
            rows.append((method, seed, "similarity", f"mean similarity ({r.group})",
                         head["mean_similarity"], np.nan))  # fmt: skip
        if head.get("reliability") is not None:
            rows.append((method, seed, "similarity", f"reliability ({r.group})",
                         head["reliability"], np.nan))  # fmt: skip
    frame = pd.DataFrame(rows, columns=["method", "seed", "table", "test", "value", "p_value"])
    out = []
    for (method, table, test), part in frame.groupby(["method", "table", "test"], sort=False):
        v = part["value"].to_numpy(dtype=float)
        v = v[np.isfinite(v)]
        p = part["p_value"].to_numpy(dtype=float)
        out.append(
            (method, table, test, int(v.size), float(v.mean()) if v.size else np.nan,
             float(v.std(ddof=1)) if v.size > 1 else np.nan,
             float(v.min()) if v.size else np.nan, float(v.max()) if v.size else np.nan,
             int((v > 0).sum()), int((v < 0).sum()), int((p < alpha).sum()))
        )  # fmt: skip
    return pd.DataFrame(out, columns=SEED_COLUMNS)
