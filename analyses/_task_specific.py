"""Task-specific parameter groups: a group only one task's loss reaches (a per-task head).

In a shared trunk with one head per task, head i's parameters get a gradient from task i and
exactly zero from every other task. Its Gram matrix is then zero except G_ii, so every cosine
of that group is undefined (0/0): not a fault of the run but the architecture. Such groups are
found from the diagonal of their Gram matrices, reported once, and left out of the per-group
similarity tables (the whole model ``all`` still contains them: it is the whole model).

Definition, for a group g with diagonal n_j(s) = G_jj(s) = |g_j(s)|^2 over snapshots s and
K >= 2 tasks: g is *specific to task i* when n_i(s) > 0 on at least one snapshot and, for every
other task j, n_j(s) = 0 exactly on every snapshot where it is recorded (NaN: the task was
absent from that snapshot) and on at least one, while j's gradient is non-zero in some other
group (a task with no gradient anywhere, e.g. a zero loss, is a fault, not a head). Exact
zeros are what the capture stores for a parameter no backward pass reached, so the test needs
no tolerance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

TASK_SPECIFIC_COLUMNS = ["group", "task", "n_snapshots"]


def task_specific_groups(trace: Any, groups: Sequence[str] | None = None) -> pd.DataFrame:
    """The task-specific groups of ``trace`` (see the module docstring), in model order.

    Columns: group, task (the one task with a gradient there), n_snapshots (snapshots where
    that task's gradient in the group is non-zero). Empty for a run with fewer than 2 tasks.
    """
    tasks = list(trace.tasks)
    rows: list[tuple[str, str, int]] = []
    if len(tasks) < 2 or len(trace.steps) == 0:
        return pd.DataFrame(rows, columns=TASK_SPECIFIC_COLUMNS)
    names = list(trace.groups)
    norms = {
        g: np.diagonal(np.asarray(trace.gram(g), dtype=np.float64), axis1=-2, axis2=-1)
        for g in names
    }  # group -> [S, K]
    reached = {g: (np.isfinite(n) & (n != 0)).any(axis=0) for g, n in norms.items()}  # [K]
    for g in names if groups is None else groups:
        recorded = np.isfinite(norms[g])
        nonzero = recorded & (norms[g] != 0)
        with_gradient = np.flatnonzero(nonzero.any(axis=0))
        if len(with_gradient) != 1:
            continue
        i = int(with_gradient[0])
        others = np.delete(np.arange(len(tasks)), i)
        if not recorded[:, others].any(axis=0).all():
            continue  # a task never recorded: no evidence that its gradient there is zero
        elsewhere = (
            np.any([reached[h] for h in names if h != g], axis=0) if len(names) > 1 else None
        )
        if elsewhere is None or not elsewhere[others].all():
            continue  # a task with no gradient in any other group: a fault, not a head
        rows.append((str(g), tasks[i], int(nonzero[:, i].sum())))
    return pd.DataFrame(rows, columns=TASK_SPECIFIC_COLUMNS)


def task_specific_note(frame: pd.DataFrame, tasks_noun: str = "tasks", shown: int = 6) -> str:
    """One line saying which groups are task-specific (empty string when none)."""
    if frame.empty:
        return ""
    items = [f"{r.group} ({r.task})" for r in frame.itertuples()]
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    noun = tasks_noun[:-1] if tasks_noun.endswith("s") else tasks_noun
    return (
        f"{len(items)} task-specific group(s), each reached by one {noun}'s gradient only (the "
        f"other {tasks_noun}' gradients are exactly zero there, e.g. per-task heads): "
        f"{', '.join(items[:shown])}{more}; their cosines are undefined, so they are left out "
        "of the per-group tables ('all' still holds them)"
    )


__all__ = ["TASK_SPECIFIC_COLUMNS", "task_specific_groups", "task_specific_note"]
