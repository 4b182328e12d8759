"""Turning what the user passes (a trace, a stack of matrices, one matrix) into arrays.

Every analysis accepts either a trace (anything with ``tasks``, ``steps``, ``groups`` and
``gram(group)``, i.e. :class:`geomtrace.Trace`) or plain numpy arrays plus a task list, so the
statistics can be tested on planted data without writing a trace.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

import geomtrace as gt
from geomtrace import InvalidInputError, cosine_from_gram

#: Pseudo-group meaning "the whole model": its Gram matrix is the sum of the groups' Gram
#: matrices (groups are disjoint parameter blocks, so dot products add up exactly). The one
#: name is the trace store's (``gt.ALL_GROUPS``).
ALL = gt.ALL_GROUPS

Window = tuple[int | None, int | None]


@dataclass(frozen=True)
class CosineStack:
    """Cosine matrices of one group over snapshots: ``cosine`` [S, K, K], ``steps`` [S]."""

    cosine: np.ndarray
    steps: np.ndarray
    tasks: list[str]
    group: str


def is_trace(source: Any) -> bool:
    return hasattr(source, "gram") and hasattr(source, "tasks") and hasattr(source, "steps")


def trace_cosine(trace: Any, group: str | None) -> np.ndarray:
    """[S, K, K] cosines of ``group``; ``all`` sums the Gram matrices of every group."""
    group = group or ALL
    if group == ALL and ALL not in trace.groups:
        grams = [np.asarray(trace.gram(g), dtype=np.float64) for g in trace.groups]
        if not grams:
            raise InvalidInputError("the trace has no parameter groups")
        return cosine_from_gram(np.sum(grams, axis=0))
    if group not in trace.groups:
        raise InvalidInputError(
            f"unknown group {group!r}; the trace has {list(trace.groups)} (or {ALL!r}: whole model)"
        )
    return cosine_from_gram(trace.gram(group))


def cosine_stack(
    source: Any,
    group: str | None = None,
    *,
    tasks: Sequence[str] | None = None,
    steps: Sequence[int] | None = None,
) -> CosineStack:
    """Resolve ``source`` to a :class:`CosineStack`.

    ``source`` is a trace, a [S, K, K] array of cosines (``steps`` default ``0..S-1``), a [K, K]
    array (one matrix, step 0) or a square DataFrame (tasks from its index).
    """
    if is_trace(source):
        cos = trace_cosine(source, group)
        return CosineStack(
            cos, np.asarray(source.steps, dtype=np.int64), list(source.tasks), group or ALL
        )
    if isinstance(source, pd.DataFrame):
        if tasks is None:
            tasks = [str(t) for t in source.index]
        source = source.to_numpy(dtype=np.float64)
    cos = np.asarray(source, dtype=np.float64)
    if cos.ndim == 2:
        cos = cos[None]
    if cos.ndim != 3 or cos.shape[1] != cos.shape[2]:
        raise InvalidInputError(
            f"expected cosine matrices of shape [S, K, K] or [K, K], got shape {cos.shape}"
        )
    K = cos.shape[1]
    tasks = [str(i) for i in range(K)] if tasks is None else [str(t) for t in tasks]
    if len(tasks) != K:
        raise InvalidInputError(f"{len(tasks)} task names for {K}x{K} matrices")
    if len(set(tasks)) != K:
        raise InvalidInputError(f"task names are not unique: {tasks}")
    step_arr = np.arange(len(cos), dtype=np.int64) if steps is None else np.asarray(steps, np.int64)
    if step_arr.shape != (len(cos),):
        raise InvalidInputError(f"{len(step_arr)} steps for {len(cos)} matrices")
    return CosineStack(cos, step_arr, tasks, group or "input")


def window_mask(steps: np.ndarray, window: Window | None) -> np.ndarray:
    """Boolean mask of the snapshots in ``window`` = (first, last), inclusive, None = open.

    The default window (``None``) is every snapshot after step 0: the untrained model's
    gradients describe the initialisation, not what training learns, and are reported
    separately as the step-0 baseline.
    """
    steps = np.asarray(steps)
    if window is None:
        return steps > 0
    if len(window) != 2:
        raise InvalidInputError(f"window must be (first_step, last_step), got {window!r}")
    first, last = window
    mask = np.ones(len(steps), dtype=bool)
    if first is not None:
        mask &= steps >= first
    if last is not None:
        mask &= steps <= last
    return mask


def select_window_mask(steps: np.ndarray, window: Window | None) -> np.ndarray:
    """:func:`window_mask`, refusing an empty window with the steps the trace has."""
    steps = np.asarray(steps)
    mask = window_mask(steps, window)
    if not mask.any():
        have = f"{steps.min()}..{steps.max()}" if len(steps) else "none"
        raise InvalidInputError(
            f"no snapshot in step window {window if window is not None else '(after step 0)'}; "
            f"the snapshots cover steps {have}"
            + ("; pass window=(0, None) to include step 0" if window is None else "")
        )
    return mask


def select_window(stack: CosineStack, window: Window | None) -> CosineStack:
    mask = select_window_mask(stack.steps, window)
    return CosineStack(stack.cosine[mask], stack.steps[mask], stack.tasks, stack.group)


def step0_matrix(stack: CosineStack) -> np.ndarray | None:
    """The cosine matrix at step 0 (untrained model), or None when there is no such snapshot."""
    hit = np.flatnonzero(stack.steps == 0)
    return stack.cosine[hit[0]] if hit.size else None


def mean_matrix(cos: np.ndarray) -> np.ndarray:
    """Mean over snapshots ignoring NaN (absent tasks); NaN where a pair never co-occurs
    (``gt.nanmean`` over axis 0)."""
    return gt.nanmean(cos, axis=0)


def off_diagonal_pairs(K: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (i, j) with i < j: each unordered task pair once."""
    return np.triu_indices(K, k=1)


def as_square(
    matrix: Any, labels: Sequence[str] | None = None, *, what: str = "matrix"
) -> tuple[np.ndarray, list[str]]:
    """A square float matrix and its labels (from a DataFrame's index, or ``labels``)."""
    if isinstance(matrix, pd.DataFrame):
        if labels is None:
            labels = [str(x) for x in matrix.index]
        if list(map(str, matrix.index)) != list(map(str, matrix.columns)):
            raise InvalidInputError(f"{what}: index and columns differ")
        matrix = matrix.to_numpy(dtype=np.float64)
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise InvalidInputError(f"{what} must be square [n, n], got shape {m.shape}")
    labels = [str(i) for i in range(len(m))] if labels is None else [str(x) for x in labels]
    if len(labels) != len(m):
        raise InvalidInputError(f"{what}: {len(labels)} labels for a {len(m)}x{len(m)} matrix")
    return m, labels


def check_finite_offdiag(m: np.ndarray, labels: Sequence[str], what: str) -> None:
    """Refuse NaN off-diagonal entries (a task absent from every snapshot, a zero gradient)."""
    bad = ~np.isfinite(m)
    np.fill_diagonal(bad, False)
    if bad.any():
        i, j = np.nonzero(np.triu(bad | bad.T))
        pairs = ", ".join(f"{labels[a]}-{labels[b]}" for a, b in list(zip(i, j, strict=True))[:8])
        tasks = sorted({labels[a] for a in i} | {labels[b] for b in j})
        raise InvalidInputError(
            f"{what} has missing (NaN) values for {len(i)} pair(s) ({pairs}"
            f"{', ...' if len(i) > 8 else ''}); tasks involved: {tasks}. Drop those tasks "
            "(e.g. tasks absent from every snapshot in the window) before this analysis"
        )


def tasks_with_nan(m: np.ndarray, labels: Sequence[str]) -> list[str]:
    """Tasks to drop so that the off-diagonal has no NaN (greedy: most NaNs first)."""
    bad = ~np.isfinite(m)
    np.fill_diagonal(bad, False)
    bad = bad | bad.T
    keep = np.ones(len(m), dtype=bool)
    dropped = []
    while True:
        counts = (bad & keep[None, :] & keep[:, None]).sum(axis=1)
        if counts.max(initial=0) == 0:
            return dropped
        worst = int(np.argmax(counts))
        keep[worst] = False
        dropped.append(labels[worst])


def complete_tasks(matrix: Any, labels: Sequence[str] | None = None) -> list[str]:
    """The tasks left once every task with a missing similarity is dropped, in input order.

    ``matrix``: a square frame (labels from its index) or array plus ``labels``. Greedy, as
    :func:`tasks_with_nan`: while some off-diagonal entry (i, j) is NaN (in either triangle),
    drop the task with the most such entries (first in order on a tie). The submatrix of the
    tasks returned has no NaN off the diagonal, so clustering and Mantel tests can use it.
    """
    m, labels = as_square(matrix, labels, what="similarity matrix")
    dropped = set(tasks_with_nan(m, labels))
    return [t for t in labels if t not in dropped]


def part_of(group: str) -> str:
    """Coarse model part of a group name: embedding, encoder, decoder, or other."""
    name = group.lower()
    if "emb" in name:
        return "embedding"
    if "enc" in name:
        return "encoder"
    if "dec" in name:
        return "decoder"
    return "other"
