"""Gradient similarity against model quality (chrF, held-out loss) per task."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from analyses._covariates import COVARIATES, task_covariates
from analyses._inputs import Window, is_trace
from analyses._language_level import language_interval
from analyses._measures import similarity
from analyses._similarity import alignment_rows, task_alignment, windowed
from analyses._spatial import language_proximity
from analyses._spatial_correlation import spatial_correlation
from analyses._stats import permutation_correlation
from analyses._uncertainty import (
    CORRELATION_RANGE,
    LEVEL,
    N_BOOTSTRAP,
    interval,
    partial_from_r,
    spearman_rows,
)
from geomtrace import InvalidInputError

QUALITY_CORRELATION_COLUMNS = [
    "group", "measure", "metric", "n_tasks", "rho", "ci_low", "ci_high", "p_value", "rho_step0",
    "p_value_step0", "control", "partial_rho", "partial_ci_low", "partial_ci_high",
    "partial_p_value", "lang_ci_low", "lang_ci_high", "test", "p_permutation",
    "partial_p_permutation", "n_permutations", "n_bootstrap", "excluded", "note",
]  # fmt: skip
#: How quality_correlation's p-values are computed (see its docstring).
QUALITY_TESTS = ("spatial", "permutation")
QUALITY_DIFFERENCE_COLUMNS = ["run", "task", "value", "baseline", "delta"]


def _quality_table(source: Any, quality) -> pd.DataFrame:
    """Wide table task x metric holding, per (task, metric), the value at the latest step."""
    if quality is None:
        if not is_trace(source):
            raise InvalidInputError("pass quality=... (a frame step, task, metric, value)")
        quality = source.quality()
    if isinstance(quality, Mapping):
        quality = pd.DataFrame(
            [(0, t, m, v) for m, per in quality.items() for t, v in per.items()],
            columns=["step", "task", "metric", "value"],
        )
    need = {"task", "metric", "value"}
    if not need <= set(quality.columns):
        raise InvalidInputError(
            f"quality frame needs columns {sorted(need)}, has {list(quality.columns)}"
        )
    if quality.empty:
        return pd.DataFrame()
    q = quality if "step" in quality else quality.assign(step=0)
    latest = q.sort_values("step").groupby(["task", "metric"], sort=False).tail(1)
    return latest.pivot(index="task", columns="metric", values="value")


def task_quality(
    source: Any,
    group: str | None = None,
    *,
    quality=None,
    measure: str = "raw",
    window: Window | None = None,
    tasks: Sequence[str] | None = None,
    steps: Sequence[int] | None = None,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
) -> pd.DataFrame:
    """Per task: mean gradient similarity with the other tasks, and its quality numbers.

    Columns: group, task, mean_similarity (``task_alignment``'s mean_alignment over the window)
    with its bootstrap interval (ci_low, ci_high), mean_similarity_step0 (mean similarity
    with the others at step 0, NaN without a step-0 snapshot), then one column per quality metric (e.g. chrf, heldout_loss) holding the value
    at the latest step it was measured (NaN when not measured for that task).
    ``quality``: a frame (step, task, metric, value), ``{metric: {task: value}}``, or None to
    read ``trace.quality()``.
    """
    full = similarity(source, group, measure, tasks=tasks, steps=steps)
    align = task_alignment(
        source, group, measure=measure, window=window, tasks=tasks, steps=steps,
        n_bootstrap=n_bootstrap, seed=seed,
    )  # fmt: skip
    out = pd.DataFrame(
        {"group": align["group"], "task": align["task"], "mean_similarity": align["mean_alignment"],
         "ci_low": align["ci_low"], "ci_high": align["ci_high"]}
    )  # fmt: skip
    at0 = full.steps == 0
    out["mean_similarity_step0"] = (
        alignment_rows(full.select(at0).matrix()) if at0.any() else np.nan
    )
    table = _quality_table(source, quality)
    for metric in table.columns:
        out[str(metric)] = out["task"].map(table[metric])
    return out


def quality_correlation(
    source: Any,
    group: str | None = None,
    *,
    quality=None,
    metrics: Sequence[str] | None = None,
    control: str | Mapping[str, float] | None = "auto",
    measure: str = "raw",
    window: Window | None = None,
    tasks: Sequence[str] | None = None,
    steps: Sequence[int] | None = None,
    n_permutations: int = 9999,
    n_bootstrap: int = N_BOOTSTRAP,
    block: int | None = None,
    seed: int = 0,
    level: float = LEVEL,
    test: str = "spatial",
    iso_codes: Mapping[str, str] | None = None,
    cache=None,
) -> pd.DataFrame:
    """Spearman correlation between a task's mean similarity and its quality, per metric.

    rho = Spearman(mean_similarity_i, quality_i) over tasks with both values, two-sided p.
    For chrF the paper's finding is rho > 0; for held-out loss, rho < 0. ``test="spatial"``
    (default, when every task has an ISO code: the trace's or ``iso_codes``):
    p from ``analyses.spatial_correlation``, whose null keeps the quality's autocorrelation
    over the languages' geography and genealogy (a language's quality and its gradient
    alignment both vary by region and family: permuting languages rejects 5-15% at alpha 0.05
    in the calibration harness, the surrogates 2-8%); otherwise, or with ``test="permutation"``, p by
    permuting tasks (exchangeable tasks; column ``test`` says which). p_permutation /
    partial_p_permutation: the permutation p, kept for reference.
    rho_step0 uses the step-0 mean similarity (does the untrained geometry already predict
    quality?). partial_rho controls for ``control``, one row per control (the raw columns
    repeated on each): ``auto`` = every per-task covariate the trace's meta allows
    (:func:`analyses.task_covariates`: ``char_overlap``, a task's mean character overlap
    1 - d_char with the others; ``script``, the share of the other tasks in its script), a
    {task: value} mapping (control ``given``), {name: {task: value}} (one row per name), or
    None (no partial). ci_low/ci_high (and partial_ci_*): the ``level`` basic interval of rho
    recomputed on ``n_bootstrap`` circular block bootstrap replicates of the snapshots (quality
    values fixed): how much THIS RUN's rho would move with other snapshots. lang_ci_low,
    lang_ci_high: the task jackknife (each task left out, the others' alignment recomputed
    without it) on Fisher's z scale
    (``analyses._language_level.language_interval``): the relation in tasks like these.
    Columns: see ``QUALITY_CORRELATION_COLUMNS``.
    """
    if test not in QUALITY_TESTS:  # before any work
        raise InvalidInputError(f"test={test!r}; allowed: {', '.join(QUALITY_TESTS)}")
    # The table gives the point values; its own per-task intervals are not used here (the
    # correlation's interval comes from the replicates below), so it gets the fewest.
    table = task_quality(
        source, group, quality=quality, measure=measure, window=window, tasks=tasks,
        steps=steps, n_bootstrap=1, seed=seed,
    )  # fmt: skip
    sim = windowed(source, group, measure, window=window, tasks=tasks, steps=steps)
    boot_align = alignment_rows(sim.replicates(n_bootstrap, block=block, seed=seed))  # [B, K]
    df = sim.bootstrap_df(block)
    position = {t: k for k, t in enumerate(sim.tasks)}
    base = {"group", "task", "mean_similarity", "mean_similarity_step0", "ci_low", "ci_high"}
    available = [c for c in table.columns if c not in base]
    metrics = available if metrics is None else list(metrics)
    unknown = [m for m in metrics if m not in available]
    if unknown:
        raise InvalidInputError(f"no quality metric {unknown} in the trace; it has {available}")
    if not metrics:
        raise InvalidInputError("no quality measurements: the trace has no quality rows")
    notes: list[str] = []
    controls = _quality_controls(source, control, list(table["task"]), notes)
    kw = {"n_permutations": n_permutations, "seed": seed}
    codes = dict(iso_codes) if iso_codes is not None else dict(getattr(source, "iso_codes", {}))
    rows = []
    for metric in metrics:
        f, excluded = _metric_frame(table, metric, controls)
        base = _empty_row(table["group"].iloc[0], measure, metric, len(f), n_permutations,
                          n_bootstrap, excluded, notes)  # fmt: skip
        if len(f) < 4:
            base["note"] = "; ".join(notes + [f"only {len(f)} tasks with values: need >= 4"])
            rows += [base | {"control": name} for name, _ in controls]
            continue
        weights = _spatial_weights(list(f.index), codes, cache) if test == "spatial" else None
        if test == "spatial" and weights is None:
            base["note"] = "; ".join(
                notes + ["p from permuting tasks (not every task has an ISO code)"]
            )
        rows_k = [position[t] for t in f.index]
        r_boot = spearman_rows(boot_align[:, rows_k], f[metric].to_numpy(dtype=float))
        matrix = sim.matrix()[np.ix_(rows_k, rows_k)]
        base.update(_raw_columns(f, metric, weights, kw, r_boot, matrix, level, df))
        for k, (name, values) in enumerate(controls):
            row = base | {"control": name}
            if values is not None:
                z = f[f"_ctrl{k}"]
                row.update(_partial(f["mean_similarity"], f[metric], z, name, row["note"],
                                    weights, kw, (r_boot, boot_align[:, rows_k]), level, df))  # fmt: skip
            rows.append(row)
    return pd.DataFrame(rows, columns=QUALITY_CORRELATION_COLUMNS)


def _raw_columns(f, metric, weights, kw, r_boot, matrix, level, df) -> dict[str, Any]:
    """rho of the tasks' mean similarity with ``metric`` and its test (``_tested``), its
    snapshot interval (replicates ``r_boot``), its task-jackknife interval (the alignment
    recomputed from ``matrix`` without each task) and the step-0 rho."""
    r, r_plain = _tested(f["mean_similarity"], f[metric], None, weights, kw)
    out = {"test": "spatial" if weights is not None else "permutation",
           "p_permutation": r_plain.p_value, "rho": r.statistic, "p_value": r.p_value}  # fmt: skip
    out["ci_low"], out["ci_high"] = interval(
        r_boot, level, estimate=r.statistic, bounds=CORRELATION_RANGE, df=df
    )
    loo = _leave_one_task_out(matrix, f[metric].to_numpy(dtype=float))
    out["lang_ci_low"], out["lang_ci_high"] = language_interval(r.statistic, loo, level)
    if f["mean_similarity_step0"].notna().all():
        r0, _ = _tested(f["mean_similarity_step0"], f[metric], None, weights, kw)
        out.update(rho_step0=r0.statistic, p_value_step0=r0.p_value)
    return out


def _empty_row(group, measure, metric, n_tasks, n_permutations, n_bootstrap, excluded, notes):
    """A row of :data:`QUALITY_CORRELATION_COLUMNS` before any statistic: NaN values, the
    tasks left out and the notes."""
    return {
        "group": group, "measure": measure, "metric": metric, "n_tasks": n_tasks,
        "rho": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan,
        "rho_step0": np.nan, "p_value_step0": np.nan, "control": None,
        "partial_rho": np.nan, "partial_ci_low": np.nan, "partial_ci_high": np.nan,
        "partial_p_value": np.nan, "test": "permutation", "p_permutation": np.nan,
        "partial_p_permutation": np.nan, "n_permutations": n_permutations,
        "n_bootstrap": n_bootstrap,
        "excluded": "; ".join(f"{t} (missing value)" for t in excluded),
        "note": "; ".join(notes),
    }  # fmt: skip


def _spatial_weights(tasks: list[str], codes: Mapping[str, Any], cache) -> dict | None:
    """The spatial test's proximity candidates over the tasks' languages (as arrays), or None
    when a task has no ISO code (the test then permutes tasks)."""
    if not all(codes.get(t) for t in tasks):
        return None
    weights = language_proximity([str(codes[t]) for t in tasks], cache=cache)
    return {k: w.to_numpy() for k, w in weights.items()}


def _metric_frame(
    table: pd.DataFrame, metric: str, controls: list[tuple[str | None, pd.Series | None]]
) -> tuple[pd.DataFrame, list[str]]:
    """The tasks with a mean similarity, a ``metric`` value and every control's value (the
    controls as columns ``_ctrl0``, ``_ctrl1``, ...), and the tasks left out for a missing one."""
    frame = table.set_index("task")[["mean_similarity", metric, "mean_similarity_step0"]]
    for k, (_, values) in enumerate(controls):
        if values is not None:
            frame[f"_ctrl{k}"] = values.reindex(frame.index)
    needed = ["mean_similarity", metric] + [c for c in frame if c.startswith("_ctrl")]
    ok = frame[needed].notna().all(axis=1)
    return frame[ok], [t for t in frame.index if not ok[t]]


def _partial(x, y, z, name, note, weights, kw, boot, level, df) -> dict[str, Any]:
    """The partial columns of one control row: rho_xy.z with its test (``_tested``) and its
    snapshot interval from the replicates ``boot`` = (r_xy per replicate, alignment per
    replicate [B, n]) with r_yz fixed; a constant control gives NaN and a note instead."""
    z_values = z.to_numpy(dtype=float)
    if np.ptp(z_values) == 0:
        return {
            "note": "; ".join([n for n in [note] if n] + [f"{name} is constant over these tasks"])
        }
    pr, pr_plain = _tested(x, y, z, weights, kw)
    r_boot, align_boot = boot
    ryz = float(spearman_rows(y.to_numpy(dtype=float)[None], z_values)[0])
    partial = partial_from_r(r_boot, spearman_rows(align_boot, z_values), ryz)
    low, high = interval(partial, level, estimate=pr.statistic, bounds=CORRELATION_RANGE, df=df)
    return {"partial_rho": pr.statistic, "partial_p_value": pr.p_value,
            "partial_p_permutation": pr_plain.p_value, "partial_ci_low": low,
            "partial_ci_high": high}  # fmt: skip


def _quality_controls(
    source: Any, control: Any, tasks: list[str], notes: list[str]
) -> list[tuple[str | None, pd.Series | None]]:
    """The controls of ``quality_correlation`` as (name, per-task values) pairs; [(None,
    None)] for none. Why each ``auto`` control is missing goes to ``notes``."""
    if isinstance(control, str):
        if control != "auto":
            raise InvalidInputError(
                f"control={control!r}; allowed: 'auto', a {{task: value}} mapping, "
                "{name: {task: value}}, None"
            )
        if not is_trace(source):
            notes.append("no control: arrays carry no corpus metadata")
            return [(None, None)]
        found, skipped = task_covariates(source, tasks)
        notes += [f"no {name} control: {skipped[name]}" for name in COVARIATES if name in skipped]
        return [(name, found[name]) for name in COVARIATES if name in found] or [(None, None)]
    if control is None:
        return [(None, None)]
    if not isinstance(control, Mapping):
        raise InvalidInputError(
            f"control of type {type(control).__name__}; allowed: 'auto', a {{task: value}} "
            "mapping, {name: {task: value}}, None"
        )
    if control and all(isinstance(v, Mapping) for v in control.values()):
        return [(str(name), pd.Series(dict(v), dtype=float)) for name, v in control.items()]
    return [("given", pd.Series(dict(control), dtype=float))]


def _tested(x, y, z, weights, kw):
    """(reported result, permutation result) of corr(x, y | z) for x the mean similarity and y
    the quality: the reported one from ``spatial_correlation`` over ``weights``, its
    surrogates drawn for the quality (the harness: 2-8% at alpha 0.05 under the structured
    nulls, against 2-11% when the mean similarity is randomised instead), or the permutation
    test when there are no weights. The statistic is symmetric in x and y."""
    plain = permutation_correlation(x, y, z, **kw)
    if weights is None:
        return plain, plain
    spatial = spatial_correlation(
        y, x, z, weights=weights, n_surrogates=kw["n_permutations"], seed=kw["seed"]
    )
    return spatial, plain


def _leave_one_task_out(matrix: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """Spearman(alignment, quality) with each task left out, the alignment a_i = mean_{j != i}
    M_ij recomputed over the remaining tasks: [n]."""
    n = len(quality)
    out = np.full(n, np.nan)
    for left in range(n):
        keep = np.delete(np.arange(n), left)
        align = alignment_rows(matrix[np.ix_(keep, keep)])
        out[left] = float(spearman_rows(align[None], quality[keep])[0])
    return out


def quality_difference(
    runs: Mapping[str, Any], baseline: str, *, metric: str = "chrf"
) -> pd.DataFrame:
    """Per run and task: the run's quality minus the baseline run's (e.g. chrF gain of GradVac).

    ``runs``: {run name: trace, quality frame (step, task, metric, value) or
    ``{metric: {task: value}}``}; ``baseline``: the name of one of them. For each other run r
    and each task t the baseline measured: value = q_r(t), baseline = q_base(t), delta = value -
    baseline, where q(t) is ``metric`` at the latest step it was measured for t (value and
    delta NaN when run r did not measure t). Runs in the order given, tasks in the baseline
    trace's task order (sorted for a frame). Columns: run, task, value, baseline, delta.
    """
    if baseline not in runs:
        raise InvalidInputError(f"baseline {baseline!r} is not one of the runs {list(runs)}")
    tables = {}
    for name, source in runs.items():
        table = _quality_table(source, None if is_trace(source) else source)
        if metric not in table.columns:
            have = [str(m) for m in table.columns]
            raise InvalidInputError(
                f"run {name!r} has no {metric!r} quality values (it has {have}); the recipe "
                f"records {metric!r} after the last step: did the run finish?"
            )
        values = table[metric].astype(float)
        if is_trace(source):  # the trace's task order, not the pivot's sorted one
            order = [t for t in source.tasks if t in values.index]
            values = values.reindex(order + [t for t in values.index if t not in order])
        tables[name] = values
    base = tables[baseline].dropna()
    rows = []
    for name, values in tables.items():
        if name == baseline:
            continue
        for task, b in base.items():
            v = float(values.get(task, np.nan))
            rows.append((name, str(task), v, float(b), v - float(b)))
    return pd.DataFrame(rows, columns=QUALITY_DIFFERENCE_COLUMNS)
