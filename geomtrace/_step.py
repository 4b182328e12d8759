"""One step class for recording and aggregating: :class:`Step`, driven by a :class:`StepPolicy`.

``Tracer.step(n)`` and ``MultiTask.step(n)`` both return a :class:`Step`. The step does what is
the same for both: checking arguments, opening and closing the step (at most one at a time),
DistributedDataParallel's ``no_sync`` on capturing steps, routing each task's backward to the
capture (:class:`~geomtrace._capture.Capture`) or to a plain ``loss.backward()``, choosing the
split half of each backward, and keeping the per-task losses. Its owner, the *policy*, decides
the rest:

- ``_open(step)``: which capture this step feeds, or None (plain ``loss.backward()``: the
  Tracer's untraced steps);
- ``sums_into_grad``: True when every backward also accumulates into ``.grad`` at once (the
  Tracer: the update is the plain sum of the task gradients); False when nothing reaches
  ``.grad`` until the step closes (MultiTask: the update is the aggregator's combination);
- ``_close(step)`` on a clean exit (record, combine), ``_abort(step)`` on an exception (an
  interrupted step writes nothing and changes no aggregator state).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from geomtrace import _distributed
from geomtrace._capture import Capture, LossWithoutGradient
from geomtrace._errors import InvalidInputError
from geomtrace._format import check_step
from geomtrace._groups import ParameterGroup


def validate_tasks(tasks: Sequence[str]) -> list[str]:
    """Task names: a non-empty sequence of distinct, non-empty strings."""
    if isinstance(tasks, str) or not isinstance(tasks, Iterable):
        raise InvalidInputError(f"tasks must be a list of task names, not {tasks!r}")
    tasks = list(tasks)
    if not tasks:
        raise InvalidInputError("tasks is empty: give at least one task name")
    seen = set()
    for task in tasks:
        if not isinstance(task, str) or not task:
            raise InvalidInputError(f"task names must be non-empty strings, got {task!r}")
        if task in seen:
            raise InvalidInputError(f"task {task!r} appears twice in tasks")
        seen.add(task)
    return tasks


def check_real_params(groups: Sequence[ParameterGroup]) -> None:
    """Refuse complex parameters: Gram matrices and cosines here are of real vectors (taking
    the real part silently would give wrong numbers)."""
    for group in groups:
        for name, p in zip(group.param_names, group.params, strict=True):
            if p.is_complex():
                raise InvalidInputError(
                    f"parameter {name!r} is complex ({p.dtype}); geomtrace traces real "
                    "parameters only: freeze it (requires_grad=False) or store it as "
                    "torch.view_as_real"
                )


class TrainableCheck:
    """The parameters a Tracer or MultiTask captures are fixed when it is built (they are the
    columns of its buffer and the trace's groups); :meth:`check` refuses a model whose trainable
    parameters changed since: a parameter unfrozen or added (e.g. a replaced head), which
    ``torch.autograd.grad`` over the old set would silently leave without ``.grad``, or one
    frozen or removed (autograd.grad then raised a raw RuntimeError).

    Cost: one pass over ``module.parameters()`` and a set lookup per parameter, on capturing
    steps only: the same order as the capture's own per-parameter work for one task.
    """

    def __init__(self, module: nn.Module, groups: Sequence[ParameterGroup], owner: str) -> None:
        self.module = module
        self.owner = owner
        self.expected = {
            id(p): name
            for group in groups
            for name, p in zip(group.param_names, group.params, strict=True)
        }

    def check(self) -> None:
        current = [p for p in self.module.parameters() if p.requires_grad]
        if len(current) == len(self.expected) and all(id(p) in self.expected for p in current):
            return
        now = {id(p) for p in current}
        added = [
            name
            for name, p in self.module.named_parameters()
            if p.requires_grad and id(p) not in self.expected
        ]
        gone = [name for key, name in self.expected.items() if key not in now]
        what = []
        if added:
            what.append(
                f"trainable but not traced: {_listed(added)} (unfrozen, or added by a replaced "
                "module)"
            )
        if gone:
            what.append(f"traced but no longer trainable: {_listed(gone)} (frozen, or removed)")
        raise InvalidInputError(
            f"the model's trainable parameters changed after the {self.owner} was built: "
            f"{'; '.join(what)}. Its parameter groups (the trace's columns) are fixed when it is "
            f"built: build a new {self.owner} after freezing, unfreezing or replacing parameters"
        )


def _listed(names: Sequence[str], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(repr(n) for n in names[:shown]) + more


def step_number(step: Any) -> int:
    """An integral step number (int, numpy integer, ...) that fits a signed 64-bit integer
    (the trace's step column); strings, floats and larger numbers are refused."""
    return check_step(step)


def device_memory(device: torch.device | str) -> int | None:
    """Total memory of ``device`` in bytes (physical RAM for the CPU), None when unknown."""
    device = torch.device(device)
    if device.type == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):  # not POSIX
            return None
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(device).total_memory
    return None


def _bytes(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def check_capture_fits(
    groups: Sequence[ParameterGroup],
    num_tasks: int,
    *,
    exact: bool = True,
    sketch: int | None = None,
    halves: bool = False,
    owner: str = "Tracer",
) -> None:
    """Refuse, at construction, a capture whose buffers exceed the total memory of the
    parameters' device (they would fail in the allocator at the first step): the exact
    buffer holds K (2K with halves) float32 rows of P columns, a sketch G K d floats.
    Only what cannot fit on the device at all is refused; what merely does not fit *now*
    (other tensors, fragmentation) still fails in the allocator."""
    if not groups or not groups[0].params:
        return
    device = groups[0].params[0].device
    total = device_memory(device)
    if total is None:
        return
    P = sum(g.numel for g in groups)
    rows = (2 if halves else 1) * num_tasks
    if sketch is not None:
        need = 4 * len(groups) * num_tasks * sketch
        if need > total:
            raise InvalidInputError(
                f"sketch={sketch} needs {_bytes(need)} for the G x K x d float32 sketches "
                f"({len(groups)} x {num_tasks} x {sketch} x 4 bytes), more than the "
                f"{_bytes(total)} of memory of {device}: a sketch dimension in the thousands "
                "gives cosines within about 3 / sqrt(d)"
            )
    if exact and 4 * rows * P > total:
        raise InvalidInputError(
            f"{num_tasks} task gradients of {P} parameters (float32"
            + (", two halves each" if halves else "")
            + f") need {_bytes(4 * rows * P)}, more than the {_bytes(total)} of memory of "
            f"{device}: trace fewer tasks or parameters (groups=, requires_grad=False)"
            + (", or use sketch=d" if owner == "Tracer" else "")
        )


def mean_losses(
    losses: Mapping[str, list[torch.Tensor]], tasks: Sequence[str], process_group: Any
) -> dict[str, float]:
    """Per task, the mean of its micro-batch losses (one host sync for all of them).

    Distributed: the mean over ranks of the ranks' means (the loss of the global batch when
    ranks hold equal shares), a collective call; tasks no rank saw are left out.
    """
    group = _distributed.resolve_group(process_group)
    if group is None:
        if not losses:
            return {}
        names = list(losses)
        means = torch.stack([torch.stack(losses[t]).float().mean() for t in names])
        return dict(zip(names, means.cpu().tolist(), strict=True))
    index = {t: i for i, t in enumerate(tasks)}
    device = next(iter(losses.values()))[0].device if losses else None
    values = torch.zeros(len(tasks), device=device)
    counts = torch.zeros(len(tasks), device=device)
    for task, task_losses in losses.items():
        values[index[task]] = torch.stack(task_losses).float().mean()
        counts[index[task]] = 1.0
    # One all-reduce of sums and counts; tasks no rank saw (count 0) are left out, a task with
    # a non-finite loss keeps its NaN/inf mean.
    packed = torch.stack([values, counts])
    _distributed.all_reduce_sum(packed, group)
    means = (packed[0] / packed[1]).cpu().tolist()
    seen = (packed[1] > 0).cpu().tolist()
    return {t: m for t, m, c in zip(tasks, means, seen, strict=True) if c}


class StepPolicy(ABC):
    """What a step's owner (Tracer, MultiTask) decides; see the module docstring."""

    #: name used in error messages (``with tracer.step(n) as s``)
    _owner_name: str = "owner"
    #: True: each backward accumulates into .grad at once (plain sum); False: on close
    sums_into_grad: bool = True
    model: nn.Module
    tasks: list[str]
    _active_step: Step | None = None

    @property
    @abstractmethod
    def _process_group(self) -> Any:
        """The process group over which losses are averaged (None: one process)."""

    @abstractmethod
    def _open(self, step: Step) -> Capture | None:
        """Called on entering ``step``: the capture it feeds, or None for plain backward."""

    @abstractmethod
    def _close(self, step: Step) -> None:
        """Called on a clean exit of a step."""

    def _abort(self, step: Step) -> None:
        """Called when a step exits with an exception (default: nothing is recorded)."""
        return None

    def _half(self, step: Step, task_index: int, half: int | None) -> int | None:
        """The split half (0, 1) a capturing backward is credited to, or None (no halves)."""
        if half is not None:
            raise InvalidInputError(
                f"half={half!r}: split halves need a Tracer(..., halves=True) "
                f"(for a MultiTask: its tracer=)"
            )
        return None


class Step:
    """One training step under a Tracer or a MultiTask (``with owner.step(n) as s: ...``).

    ``s.backward(task, loss)`` works like ``loss.backward()`` for one task's loss; repeated
    calls for one task sum (micro-batches). Attributes: ``step`` (the number), ``traced``
    (whether this step contributes to a snapshot), ``capturing`` (whether its backward passes
    feed a capture), and, for a MultiTask, ``gram`` [G, K, K] and ``weights`` [G, K] once the
    step has closed.
    """

    def __init__(self, policy: StepPolicy, step: int, traced: bool) -> None:
        self._policy = policy
        self._tasks = list(policy.tasks)
        self._task_index = {t: i for i, t in enumerate(self._tasks)}
        self.step = step
        self.traced = traced
        self.capturing = False
        self.active = False
        self.capture: Capture | None = None
        #: the Gram matrices [G, K, K] of this step (MultiTask, set on exit)
        self.gram: torch.Tensor | None = None
        #: the weights [G, K] of this step (MultiTask, set on exit)
        self.weights: torch.Tensor | None = None
        # Detached loss tensors per task (no .item(): converted once, when the step is recorded).
        self._losses: dict[str, list[torch.Tensor]] = {}
        self._backwards = [0] * len(self._tasks)  # capturing backward passes per task
        self._no_sync = None

    # -- backward ----------------------------------------------------------------------------
    def _check(self, task: str, loss: torch.Tensor) -> int:
        if not self.active:
            raise InvalidInputError(
                f"backward({task!r}, ...) called outside a step: use "
                f"`with {self._policy._owner_name}.step(step) as s: s.backward(task, loss)`"
            )
        if task not in self._task_index:
            raise InvalidInputError(f"unknown task {task!r}; the tasks are {self._tasks}")
        if not isinstance(loss, torch.Tensor):
            raise InvalidInputError(
                f"loss of task {task!r} must be a torch.Tensor, not {type(loss).__name__}"
            )
        if not loss.requires_grad:
            raise InvalidInputError(
                f"loss of task {task!r} does not require grad (was it computed under "
                "torch.no_grad(), or from frozen parameters only?)"
            )
        if loss.numel() != 1:
            raise InvalidInputError(
                f"loss of task {task!r} has shape {tuple(loss.shape)}; backward needs a scalar loss"
            )
        return self._task_index[task]

    def backward(
        self,
        task: str,
        loss: torch.Tensor,
        retain_graph: bool = False,
        half: int | None = None,
    ) -> None:
        """Backward of one task's loss, like ``loss.backward()``; repeated calls sum.

        ``half`` (0 or 1; Tracer with ``halves=True`` only): the split half this backward
        belongs to; None applies the Tracer's ``halves_rule``.
        """
        index = self._check(task, loss)
        # user input: bools refused; Capture._mark_present (_capture.py), internal, takes 1/0
        if half is not None and (isinstance(half, bool) or half not in (0, 1)):
            raise InvalidInputError(f"half must be 0, 1 or None, got {half!r}")
        self._losses.setdefault(task, []).append(loss.detach().reshape(()))
        if self.capture is None:
            if half is not None:
                self._policy._half(self, index, half)  # refuses half= without halves
            loss.backward(retain_graph=retain_graph)
            return
        half = self._policy._half(self, index, half)
        try:
            self.capture.backward(
                index, loss, retain_graph, into_grad=self._policy.sums_into_grad, half=half
            )
        except LossWithoutGradient as err:
            raise InvalidInputError(f"task {task!r}: {err}") from None
        self._backwards[index] += 1

    def backward_shared(self, losses: Mapping[str, torch.Tensor], half: int | None = None) -> None:
        """Backward of several tasks' losses computed from one shared forward pass."""
        items = list(losses.items())
        for n, (task, loss) in enumerate(items):
            self.backward(task, loss, retain_graph=n < len(items) - 1, half=half)

    def mean_losses(self) -> dict[str, float]:
        """Per task, the mean of its micro-batch losses (distributed: over ranks too)."""
        return mean_losses(self._losses, self._tasks, self._policy._process_group)

    # -- context manager ---------------------------------------------------------------------
    def __enter__(self) -> Step:
        policy = self._policy
        if policy._active_step is not None:
            raise InvalidInputError(
                f"step {self.step} opened inside step {policy._active_step.step}: "
                "close one step before starting the next"
            )
        self.capture = policy._open(self)
        self.capturing = self.capture is not None
        policy._active_step = self
        self.active = True
        if self.capturing:
            # DDP must not expect reducer hooks that autograd.grad never fires; the reduction
            # of the task gradients replaces DDP's on this step. Entered here so it covers the
            # forward passes (DDP decides at forward time).
            self._no_sync = _distributed.no_sync(policy.model)
            self._no_sync.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        policy = self._policy
        self.active = False
        policy._active_step = None
        if self._no_sync is not None:
            self._no_sync.__exit__(None, None, None)
            self._no_sync = None
        if exc_type is not None:
            policy._abort(self)  # an interrupted step writes nothing
            return
        policy._close(self)

    def __repr__(self) -> str:
        return f"Step({self.step}, traced={self.traced}, capturing={self.capturing})"
