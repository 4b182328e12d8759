"""Warnings about the gradients a snapshot saw, each said once: a task with a zero gradient in
a group (with a summary count at the end), a non-finite loss or gradient, a missing split half;
and groups that only one task's gradient reaches (per-task heads), reported once as expected.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

# The Tracer's logger: its messages keep the logger name they have always had.
log = logging.getLogger("geomtrace._tracer")


class SnapshotWarnings:
    """The Tracer's memory of what it has already warned about, over the snapshots of a run.

    ``tasks``: the task names (rows of every matrix); ``groups``: the group names, in order.
    ``zero_norm_warnings``: how many (snapshot, group, task) zero gradients were seen.
    """

    def __init__(self, tasks: Sequence[str], groups: Sequence[str]) -> None:
        self.tasks = list(tasks)
        self.groups = list(groups)
        self.zero_norm_warnings = 0
        self._zero_norms: Counter[tuple[str, str]] = Counter()
        self._warned: set[tuple[str, str]] = set()  # (kind, task): warned once
        # group -> the one task with a gradient there on every snapshot so far (a per-task
        # head), or None once the group broke that pattern
        self._specific: dict[str, int | None] = {}
        self._zero_warned: set[tuple[str, str]] = set()  # (task, group): warned once

    def _warn_once(self, kind: str, task: str, message: str, *args: Any) -> None:
        if (kind, task) not in self._warned:
            self._warned.add((kind, task))
            log.warning(message, *args)

    def _follow_task_specific(self, diag: np.ndarray) -> None:
        """Update which groups are task-specific (one task with a gradient, every other task's
        exactly zero or absent, on every snapshot so far); log newly found ones in one line.

        A zero task counts only when its gradient is non-zero in another group: a task with no
        gradient anywhere (a zero or unrelated loss) is a fault and keeps its warning."""
        if len(self.tasks) < 2:
            return
        found = []
        reached = np.isfinite(diag) & (diag != 0)  # [G, K]
        elsewhere = reached.any(axis=0)
        for k, norms in enumerate(diag):
            name = self.groups[k]
            nonzero = np.flatnonzero(reached[k])
            zero = norms == 0
            heads = len(nonzero) == 1 and zero.any() and elsewhere[zero].all()
            one = int(nonzero[0]) if heads else None
            if name not in self._specific:
                self._specific[name] = one
                if one is not None:
                    found.append(f"{name!r} <- {self.tasks[one]!r}")
            elif self._specific[name] != one:
                self._specific[name] = None
        if found:
            more = f" and {len(found) - 6} more" if len(found) > 6 else ""
            log.info(
                "%d task-specific group(s), each reached by one task's gradient only (the other "
                "tasks' are exactly zero there, e.g. per-task heads): %s%s; expected, not a "
                "fault: their cosines are undefined and the analyses leave them out",
                len(found), ", ".join(found[:6]), more,
            )  # fmt: skip

    def check(self, gram: torch.Tensor, arrays: Mapping[str, np.ndarray]) -> None:
        """Log what the host copy of a snapshot's ``gram`` [G, K, K] and its ``arrays``
        (``nonfinite``, ``split_half``) show: zero, non-finite and half-missing gradients."""
        diag = torch.diagonal(gram, dim1=-2, dim2=-1)
        self._follow_task_specific(diag.numpy())
        for k, i in (diag == 0).nonzero().tolist():
            self.zero_norm_warnings += 1
            key = (self.tasks[i], self.groups[k])
            self._zero_norms[key] += 1
            if self._specific.get(key[1]) is None and key not in self._zero_warned:
                self._zero_warned.add(key)
                log.warning(
                    "task %r has a zero gradient in group %r: its cosines there are NaN "
                    "(reported once per task and group; counted in a summary at close)",
                    *key,
                )
        for i in np.flatnonzero(arrays["nonfinite"]).tolist():
            task = self.tasks[i]
            self._warn_once(
                "nonfinite",
                task,
                "task %r has a non-finite (NaN/inf) loss or gradient: recorded in the array "
                "'nonfinite' and left out like an absent task (warned once per task)",
                task,
            )
        split = arrays.get("split_half")
        if split is not None:
            present = np.isfinite(diag.numpy()).all(axis=0)
            missing = np.isnan(split).any(axis=(0, 2)) & present
            for i in np.flatnonzero(missing).tolist():
                task = self.tasks[i]
                self._warn_once(
                    "half",
                    task,
                    "task %r got no gradient in one of its two halves: its split-half products "
                    "are NaN (give it two micro-batches per traced step, or half=0/1; warned "
                    "once per task)",
                    task,
                )

    def summarise_zero_norms(self) -> None:
        """Log the zero gradients seen so far in one line (at ``close``), then forget them."""
        # zero gradients in groups that stayed task-specific were reported as such
        counts = {k: n for k, n in self._zero_norms.items() if self._specific.get(k[1]) is None}
        if not counts:
            self._zero_norms.clear()
            return
        items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        shown = ", ".join(f"{t!r} in {g!r} x{n}" for (t, g), n in items[:10])
        more = f" and {len(items) - 10} more" if len(items) > 10 else ""
        log.warning(
            "zero task gradients over the run (task in group x snapshots): %s%s", shown, more
        )
        self._zero_norms.clear()
