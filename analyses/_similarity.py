"""Gradient similarity summaries: mean cosine, spread over steps, conflict rate, alignment."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from analyses._inputs import (
    ALL,
    Window,
    cosine_stack,
    is_trace,
    mean_matrix,
    off_diagonal_pairs,
    part_of,
    select_window,
)

SUMMARY_COLUMNS = [
    "group", "position", "part", "n_steps", "step_first", "step_last", "mean_cosine",
    "std_over_steps", "conflict_rate", "n_pairs", "n_missing",
]  # fmt: skip
ALIGNMENT_COLUMNS = [
    "group",
    "task",
    "mean_alignment",
    "std_over_steps",
    "conflict_rate",
    "n_steps",
]


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
    window: Window | None = None,
    tasks: Sequence[str] | None = None,
    steps: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Step-averaged cosine matrix [K, K] (index and columns: tasks).

    phi_ij = mean over the window's snapshots of cos(g_i, g_j), NaN snapshots (absent task)
    skipped; NaN where the pair never co-occurs. Default window: every snapshot after step 0.
    A single [K, K] matrix passed as ``source`` is returned as is.
    """
    if not is_trace(source) and np.ndim(source) == 2:
        stack = cosine_stack(source, group, tasks=tasks)
        return pd.DataFrame(stack.cosine[0], index=stack.tasks, columns=stack.tasks)
    stack = select_window(cosine_stack(source, group, tasks=tasks, steps=steps), window)
    return pd.DataFrame(mean_matrix(stack.cosine), index=stack.tasks, columns=stack.tasks)


def similarity_summary(
    source: Any,
    group: str | Sequence[str] | None = None,
    *,
    window: Window | None = None,
    tasks: Sequence[str] | None = None,
    steps: Sequence[int] | None = None,
) -> pd.DataFrame:
    """One row per group: how aligned the task gradients are over the step window.

    With c_s = mean over unordered pairs i<j of cos_ij at snapshot s (NaN pairs skipped):
    mean_cosine = mean over all finite (pair, snapshot) cosines; std_over_steps = std of c_s
    over snapshots (ddof 0); conflict_rate = fraction of finite (pair, snapshot) cosines < 0
    (PCGrad's "conflicting gradients"); n_missing = NaN (pair, snapshot) cells excluded.
    For a trace and ``group=None``: the whole model (``all``) then every group in model order.
    Columns: group, position (model order, -1 for ``all``), part, n_steps, step_first,
    step_last, mean_cosine, std_over_steps, conflict_rate, n_pairs, n_missing.
    """
    rows = []
    for g in _groups(source, group):
        stack = select_window(cosine_stack(source, g, tasks=tasks, steps=steps), window)
        iu = off_diagonal_pairs(len(stack.tasks))
        values = stack.cosine[:, iu[0], iu[1]]  # [S, pairs]
        finite = np.isfinite(values)
        with np.errstate(invalid="ignore"):
            per_step = (
                np.nanmean(np.where(finite, values, np.nan), axis=1) if values.size else values
            )
        per_step = per_step[np.isfinite(per_step)]
        flat = values[finite]
        position = source.groups.index(g) if is_trace(source) and g in source.groups else -1
        rows.append(
            {
                "group": stack.group,
                "position": position,
                "part": "whole" if stack.group == ALL else part_of(stack.group),
                "n_steps": len(stack.steps),
                "step_first": int(stack.steps[0]),
                "step_last": int(stack.steps[-1]),
                "mean_cosine": float(flat.mean()) if flat.size else np.nan,
                "std_over_steps": float(per_step.std()) if per_step.size else np.nan,
                "conflict_rate": float((flat < 0).mean()) if flat.size else np.nan,
                "n_pairs": len(iu[0]),
                "n_missing": int((~finite).sum()),
            }
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def task_alignment(
    source: Any,
    group: str | None = None,
    *,
    window: Window | None = None,
    tasks: Sequence[str] | None = None,
    steps: Sequence[int] | None = None,
) -> pd.DataFrame:
    """One row per task: its mean alignment with the other tasks.

    a_i(s) = mean over j != i of cos_ij at snapshot s (NaN skipped); mean_alignment = mean of
    a_i over snapshots, std_over_steps its std (ddof 0), conflict_rate = fraction of finite
    cos_ij (j != i, all snapshots) < 0, n_steps = snapshots where a_i is defined.
    Columns: group, task, mean_alignment, std_over_steps, conflict_rate, n_steps.
    """
    stack = select_window(cosine_stack(source, group, tasks=tasks, steps=steps), window)
    K = len(stack.tasks)
    off = ~np.eye(K, dtype=bool)
    cos = np.where(off[None], stack.cosine, np.nan)
    finite = np.isfinite(cos)
    count = finite.sum(axis=2)  # [S, K]
    with np.errstate(invalid="ignore", divide="ignore"):
        per_step = np.where(count > 0, np.where(finite, cos, 0).sum(axis=2) / count, np.nan)
        negative = (np.where(finite, cos, 0) < 0).sum(axis=(0, 2))
        conflict = np.where(count.sum(0) > 0, negative / np.maximum(count.sum(0), 1), np.nan)
    rows = []
    for k, task in enumerate(stack.tasks):
        a = per_step[:, k][np.isfinite(per_step[:, k])]
        rows.append(
            {
                "group": stack.group,
                "task": task,
                "mean_alignment": float(a.mean()) if a.size else np.nan,
                "std_over_steps": float(a.std()) if a.size else np.nan,
                "conflict_rate": float(conflict[k]),
                "n_steps": int(a.size),
            }
        )
    return pd.DataFrame(rows, columns=ALIGNMENT_COLUMNS)
