"""Gradient similarity summaries: the step-averaged matrix, its mean, alignment, reliability.

One definition for every command, figure and report (``inspect``, ``analyze``, the summary of
``geomtrace trace``, F1-F6): with M the step-averaged similarity matrix of a group over the
step window (:class:`analyses.Similarity`), the **mean similarity** of a group is

    mean_similarity = mean over unordered task pairs i < j with finite M_ij of M_ij

(:func:`mean_pair_similarity`), and a task's **alignment** is a_i = mean_{j != i} M_ij
(:func:`task_alignment`). Each pair (each task) counts once, however many snapshots it
appears in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import t as student_t

import geomtrace as gt
from analyses._inputs import ALL, Window, part_of, select_window_mask
from analyses._measures import Similarity, check_measure, is_trace, similarity
from analyses._uncertainty import (
    CORRELATION_RANGE,
    LEVEL,
    N_BOOTSTRAP,
    interval,
    jackknife_se,
    upper,
)
from geomtrace import InvalidInputError

SUMMARY_COLUMNS = [
    "group", "position", "part", "measure", "n_steps", "step_first", "step_last",
    "mean_cosine", "ci_low", "ci_high", "std_over_steps", "conflict_rate", "reliability",
    "mean_corrected", "corrected_ci_low", "corrected_ci_high", "n_pairs", "n_missing",
    "not_estimable",
]  # fmt: skip
ALIGNMENT_COLUMNS = [
    "group", "task", "mean_alignment", "ci_low", "ci_high", "std_over_steps", "conflict_rate",
    "n_steps", "reliability",
]  # fmt: skip
RELIABILITY_COLUMNS = [
    "group",
    "task",
    "reliability",
    "median_snapshot",
    "fraction_below",
    "n_snapshots",
]
#: Reliability below which a statistic is flagged as resting on mostly-noise gradients.
LOW_RELIABILITY = 0.5


#: The mean of the finite M_ij over unordered pairs i < j (``gt.mean_pair_similarity``: the
#: one definition, shared with the integrations' scalars); on a [B, K, K] stack, one per matrix.
mean_pair_similarity = gt.mean_pair_similarity


def alignment_rows(matrices: np.ndarray) -> np.ndarray:
    """a_i = mean over j != i of finite M_ij, for each matrix of a [..., K, K] stack: [..., K]."""
    m = np.array(matrices, dtype=np.float64)
    K = m.shape[-1]
    m[..., np.arange(K), np.arange(K)] = np.nan
    return gt.nanmean(m, axis=-1)


def windowed(
    source: Any,
    group: str | None = None,
    measure: str = "raw",
    *,
    window: Window | None = None,
    tasks: Sequence[str] | None = None,
    steps: Sequence[int] | None = None,
) -> Similarity:
    """The :class:`Similarity` of ``group`` restricted to the step window (default: steps > 0)."""
    sim = similarity(source, group, check_measure(measure), tasks=tasks, steps=steps)
    return sim.select(select_window_mask(sim.steps, window))


def _groups(source: Any, group: str | Sequence[str] | None) -> list[str | None]:
    if is_trace(source):
        if group is None:
            return [ALL, *source.groups] if ALL not in source.groups else list(source.groups)
        return [group] if isinstance(group, str) else list(group)
    return [group if isinstance(group, str) or group is None else group[0]]


def similarity_matrix(
    source: Any,
    group: str | None = None,
    *,
    measure: str = "raw",
    window: Window | None = None,
    tasks: Sequence[str] | None = None,
    steps: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Step-averaged similarity matrix [K, K] (index and columns: tasks).

    ``raw``/``centred``: mean over the window's snapshots of the per-snapshot cosine (NaN
    snapshots skipped; NaN where the pair never co-occurs); ``corrected``: the ratio of means
    of :mod:`analyses._measures`. Default window: every snapshot after step 0. A single
    [K, K] matrix passed as ``source`` is returned as is.
    """
    if not is_trace(source) and np.ndim(source) == 2:
        sim = similarity(source, group, tasks=tasks)
        return pd.DataFrame(sim.per_snapshot[0], index=sim.tasks, columns=sim.tasks)
    sim = windowed(source, group, measure, window=window, tasks=tasks, steps=steps)
    return pd.DataFrame(sim.matrix(), index=sim.tasks, columns=sim.tasks)


def similarity_summary(
    source: Any,
    group: str | Sequence[str] | None = None,
    *,
    measure: str = "raw",
    window: Window | None = None,
    tasks: Sequence[str] | None = None,
    steps: Sequence[int] | None = None,
    n_bootstrap: int = N_BOOTSTRAP,
    block: int | None = None,
    seed: int = 0,
    level: float = LEVEL,
) -> pd.DataFrame:
    """One row per group: how aligned the task gradients are over the step window.

    mean_cosine = :func:`mean_pair_similarity` of the step-averaged matrix under ``measure``
    with its circular block bootstrap interval (ci_low, ci_high; ``analyses._uncertainty``);
    std_over_steps = std (ddof 0) over snapshots of the per-snapshot mean pair similarity;
    conflict_rate = fraction of finite (pair, snapshot) similarities < 0 (PCGrad's
    "conflicting gradients"); n_missing = NaN (pair, snapshot) cells. When the trace has split
    halves: reliability = mean over tasks of R_i (the signal fraction of the snapshot
    gradients, see :mod:`analyses._measures`) and mean_corrected (+ interval) = the mean pair
    similarity of the noise-corrected matrix over the estimable tasks, with not_estimable
    naming the tasks whose window reliability is below ``gt.RELIABILITY_FLOOR``; NaN
    otherwise. For a trace and ``group=None``:
    the whole model (``all``) then every group in model order (position -1 for ``all``).
    """
    rows = []
    for g in _groups(source, group):
        sim = windowed(source, g, measure, window=window, tasks=tasks, steps=steps)
        index = sim.bootstrap_index(n_bootstrap, block=block, seed=seed)
        per_snapshot = sim.snapshot_matrices()
        values = upper(per_snapshot)  # [S, pairs]
        finite = np.isfinite(values)
        per_step = mean_pair_similarity(per_snapshot)
        per_step = per_step[np.isfinite(per_step)]
        boot = mean_pair_similarity(np.stack([sim.matrix(row) for row in index]))
        mean = mean_pair_similarity(sim.matrix())
        df = sim.bootstrap_df(block)
        lo, hi = interval(boot, level, estimate=mean, bounds=CORRELATION_RANGE, df=df)
        row = {
            "group": sim.group,
            "position": source.groups.index(g) if is_trace(source) and g in source.groups else -1,
            "part": "whole" if sim.group == ALL else part_of(sim.group),
            "measure": measure,
            "n_steps": len(sim),
            "step_first": int(sim.steps[0]),
            "step_last": int(sim.steps[-1]),
            "mean_cosine": mean,
            "ci_low": lo,
            "ci_high": hi,
            "std_over_steps": float(per_step.std()) if per_step.size else np.nan,
            "conflict_rate": gt.conflict_rate(per_snapshot),
            "reliability": np.nan,
            "mean_corrected": np.nan,
            "corrected_ci_low": np.nan,
            "corrected_ci_high": np.nan,
            "n_pairs": values.shape[1],
            "n_missing": int((~finite).sum()),
            "not_estimable": "",
        }
        if sim.signal is not None:
            reliability = sim.reliability()
            row["reliability"] = (
                float(np.nanmean(reliability)) if np.isfinite(reliability).any() else np.nan
            )
            corrected = (
                sim
                if measure == "corrected"
                else windowed(source, g, "corrected", window=window, tasks=tasks, steps=steps)
            )
            boot = mean_pair_similarity(np.stack([corrected.matrix(r) for r in index]))
            matrix = corrected.matrix()
            mean = mean_pair_similarity(matrix)
            lo, hi = interval(boot, level, estimate=mean, bounds=CORRELATION_RANGE, df=df)
            present = np.isfinite(np.diagonal(sim.matrix()))
            dropped = present & ~np.isfinite(np.diagonal(matrix))
            row.update(
                not_estimable="; ".join(t for t, d in zip(sim.tasks, dropped, strict=True) if d),
                mean_corrected=mean,
                corrected_ci_low=lo,
                corrected_ci_high=hi,
            )
        rows.append(row)
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


DIFFERENCE_COLUMNS = [
    "group_a", "group_b", "measure", "mean_a", "mean_b", "difference", "ci_low", "ci_high",
    "n_steps",
]  # fmt: skip


def group_difference(
    source: Any,
    group_a: str,
    group_b: str,
    *,
    measure: str = "corrected",
    window: Window | None = None,
    n_bootstrap: int = N_BOOTSTRAP,
    block: int | None = None,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, Any]:
    """The paired difference of two groups' mean pair similarity over the same snapshots.

    difference = m_b - m_a, m = :func:`mean_pair_similarity` of the group's window matrix under
    ``measure`` (default the noise-corrected one: groups differ in reliability, so raw means
    are not comparable). Interval: both groups recomputed on the *same* circular block
    bootstrap replicates of the snapshots (paired), basic interval widened for the number of
    blocks, clipped to [-2, 2]: how much this run's difference would move with other
    snapshots. Comparing two groups' separate intervals instead ignores that they share the
    snapshots (issue 22: "separate at layer 0 only" where the paired differences excluded 0
    at every depth). A row of :data:`DIFFERENCE_COLUMNS` as a dict.
    """
    a = windowed(source, group_a, measure, window=window)
    b = windowed(source, group_b, measure, window=window)
    if list(a.steps) != list(b.steps):
        raise InvalidInputError(
            f"groups {group_a!r} and {group_b!r} have different snapshots: no paired difference"
        )
    index = a.bootstrap_index(n_bootstrap, block=block, seed=seed)
    mean_a, mean_b = mean_pair_similarity(a.matrix()), mean_pair_similarity(b.matrix())
    boot = np.array([mean_pair_similarity(b.matrix(r)) for r in index]) - np.array(
        [mean_pair_similarity(a.matrix(r)) for r in index]
    )
    lo, hi = interval(
        boot, level, estimate=mean_b - mean_a, bounds=(-2.0, 2.0), df=a.bootstrap_df(block)
    )
    return {
        "group_a": group_a, "group_b": group_b, "measure": measure, "mean_a": mean_a,
        "mean_b": mean_b, "difference": mean_b - mean_a, "ci_low": lo, "ci_high": hi,
        "n_steps": len(a),
    }  # fmt: skip


def encoder_decoder_differences(
    trace: Any, groups: Sequence[str], window: Window | None, boot: dict[str, Any]
) -> pd.DataFrame | None:
    """Decoder minus encoder at the same depth (groups whose names differ only by "encoder" /
    "decoder"), on the noise-corrected measure when the trace has halves: paired bootstrap
    differences (``group_difference``). None when no such pair exists (any other model)."""
    pairs = [(g, g.replace("encoder", "decoder")) for g in groups if "encoder" in g]
    pairs = [(a, b) for a, b in pairs if b in groups]
    if not pairs:
        return None
    measure = "corrected" if trace.has_halves else "raw"
    rows = [group_difference(trace, a, b, measure=measure, window=window, **boot) for a, b in pairs]
    return pd.DataFrame(rows, columns=DIFFERENCE_COLUMNS)


def task_alignment(
    source: Any,
    group: str | None = None,
    *,
    measure: str = "raw",
    window: Window | None = None,
    tasks: Sequence[str] | None = None,
    steps: Sequence[int] | None = None,
    n_bootstrap: int = N_BOOTSTRAP,
    block: int | None = None,
    seed: int = 0,
    level: float = LEVEL,
) -> pd.DataFrame:
    """One row per task: its mean alignment with the other tasks.

    mean_alignment = a_i = mean over j != i of the step-averaged M_ij (:func:`alignment_rows`)
    with its bootstrap interval; std_over_steps = std (ddof 0) over snapshots of the
    per-snapshot alignment; conflict_rate = fraction of finite per-snapshot similarities with
    the others below 0; n_steps = snapshots where the task has a finite similarity;
    reliability = R_i when the trace has split halves (NaN otherwise).
    """
    sim = windowed(source, group, measure, window=window, tasks=tasks, steps=steps)
    index = sim.bootstrap_index(n_bootstrap, block=block, seed=seed)
    df = sim.bootstrap_df(block)
    boot = alignment_rows(np.stack([sim.matrix(row) for row in index]))  # [B, K]
    point = alignment_rows(sim.matrix())
    per_step = alignment_rows(sim.snapshot_matrices())  # [S, K]
    off = ~np.eye(len(sim.tasks), dtype=bool)
    snap = sim.snapshot_matrices()
    reliability = sim.reliability()
    rows = []
    for k, task in enumerate(sim.tasks):
        a = per_step[:, k][np.isfinite(per_step[:, k])]
        others = snap[:, k, :][:, off[k]]
        others = others[np.isfinite(others)]
        lo, hi = interval(boot[:, k], level, estimate=point[k], bounds=CORRELATION_RANGE, df=df)
        rows.append(
            {
                "group": sim.group,
                "task": task,
                "mean_alignment": float(point[k]),
                "ci_low": lo,
                "ci_high": hi,
                "std_over_steps": float(a.std()) if a.size else np.nan,
                "conflict_rate": float((others < 0).mean()) if others.size else np.nan,
                "n_steps": int(a.size),
                "reliability": float(reliability[k]),
            }
        )
    return pd.DataFrame(rows, columns=ALIGNMENT_COLUMNS)


def reliability_table(
    source: Any,
    group: str | Sequence[str] | None = None,
    *,
    window: Window | None = None,
    threshold: float = LOW_RELIABILITY,
) -> pd.DataFrame:
    """Per group and task: how much of the snapshot gradients is signal (split halves).

    reliability = R_i = mean_s(4 ab_i / c_s) / mean_s(G_ii / c_s) over the window (a ratio of
    means, robust to single snapshots with a.b <= 0); median_snapshot = the median over
    snapshots of 4 ab_i / G_ii; fraction_below = the fraction of snapshots whose value is below
    ``threshold``. Raises :class:`InvalidInputError` for a trace without halves.
    """
    rows = []
    for g in _groups(source, group):
        sim = windowed(source, g, "corrected", window=window)
        R = sim.reliability()
        snap = sim.snapshot_reliability()
        for k, task in enumerate(sim.tasks):
            values = snap[:, k][np.isfinite(snap[:, k])]
            rows.append(
                {
                    "group": sim.group,
                    "task": task,
                    "reliability": float(R[k]),
                    "median_snapshot": float(np.median(values)) if values.size else np.nan,
                    "fraction_below": float((values < threshold).mean()) if values.size else np.nan,
                    "n_snapshots": int(values.size),
                }
            )
    return pd.DataFrame(rows, columns=RELIABILITY_COLUMNS)


TRAINING_CHANGE_COLUMNS = [
    "group", "measure", "mean_step0", "mean_trained", "change", "lang_ci_low", "lang_ci_high",
    "n_steps", "n_tasks",
]  # fmt: skip


def training_change(
    source: Any,
    group: str = ALL,
    *,
    measure: str = "corrected",
    window: Window | None = None,
    tasks: Sequence[str] | None = None,
    steps: Sequence[int] | None = None,
    level: float = LEVEL,
) -> dict[str, Any]:
    """The change of a group's mean pair similarity from the untrained model to training.

    change = m_trained - m_0, m = :func:`mean_pair_similarity` of the window's matrix (default
    window: the snapshots after step 0) and of the step-0 matrix, under ``measure`` (default
    the noise-corrected one: reliability falls over training, 1.00 at step 0 to 0.6-0.7 by the
    end of the default run, so a fall of the raw mean is partly attenuation, issue 22).
    Interval (paired: the same tasks and pairs at both ends): the node jackknife over tasks,
    each task left out with its pairs at both ends and the change recomputed, change +-
    t_{n-1} se; every pair's noise at step 0 and in the window is in the spread of the
    leave-one-out values (harness coverage 96-98%, analyses/README.md). A snapshot bootstrap
    with step 0 held fixed is not offered: it leaves out step 0's own noise (one snapshot,
    nothing to resample) and covered 24-40%.

    A row of :data:`TRAINING_CHANGE_COLUMNS` as a dict; NaN values without a step-0 snapshot.
    """
    full = similarity(source, group, check_measure(measure), tasks=tasks, steps=steps)
    trained = full.select(select_window_mask(full.steps, window))
    window_matrix = trained.matrix()
    n = len(trained.tasks)
    row = {"group": full.group, "measure": measure, "mean_step0": np.nan,
           "mean_trained": mean_pair_similarity(window_matrix), "change": np.nan,
           "lang_ci_low": np.nan, "lang_ci_high": np.nan, "n_steps": len(trained),
           "n_tasks": n}  # fmt: skip
    at0 = np.asarray(full.steps) == 0
    if not at0.any():
        return row
    start_matrix = full.select(at0).matrix()
    start = mean_pair_similarity(start_matrix)
    change = row["mean_trained"] - start

    def without(matrix: np.ndarray, i: int) -> np.ndarray:
        return np.delete(np.delete(matrix, i, 0), i, 1)

    loo = np.array([
        mean_pair_similarity(without(window_matrix, i)) - mean_pair_similarity(without(start_matrix, i))
        for i in range(n)
    ])  # fmt: skip
    se = jackknife_se(loo)
    half = float(student_t.ppf((1 + level) / 2, max(n - 1, 1))) * se if np.isfinite(se) else np.nan
    return row | {"mean_step0": start, "change": change,
                  "lang_ci_low": change - half, "lang_ci_high": change + half}  # fmt: skip


def training_changes(
    trace: Any,
    groups: Sequence[str] | None,
    halves: bool,
    measure: str,
    window: Window | None,
    boot: dict[str, Any],
) -> pd.DataFrame | None:
    """:func:`training_change` of every group (None: every group of the trace), on the
    noise-corrected measure where the trace has halves (reliability falls over training),
    else on ``measure``; None when the trace has no step-0 snapshot."""
    if not (np.asarray(trace.steps) == 0).any():
        return None
    measure = "corrected" if halves else measure
    groups = list(groups) if groups is not None else [ALL, *trace.groups]
    rows = [
        training_change(trace, g, measure=measure, window=window, level=boot["level"])
        for g in groups
    ]
    return pd.DataFrame(rows, columns=TRAINING_CHANGE_COLUMNS)
