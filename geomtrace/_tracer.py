"""The Tracer: per-task gradient capture inside any training loop, written to a trace.

    tracer = Tracer(model, tasks=langs, groups="all_layer", every=50, out="runs/a")
    for step, batches in enumerate(loader):
        with tracer.step(step) as s:
            for task, batch in batches.items():
                s.backward(task, loss_fn(model, batch))     # like loss.backward()
        optimizer.step(); optimizer.zero_grad()

``s.backward(task, loss)`` accumulates into ``.grad`` exactly like ``loss.backward()``, so any
optimizer works unchanged. On traced steps it computes the task's gradient with
``torch.autograd.grad`` (same FLOPs as the backward it replaces), adds it to the task's row of a
[K, P] buffer and to ``.grad``; on leaving the step the Gram matrix of every group is computed on
the device and only the [G, K, K] result is copied to the host and written as one snapshot.
Untraced steps call ``loss.backward()`` and nothing else.

Feeding modes:

- (a) one sub-batch per task, each with its own forward and ``s.backward(task, loss)``: the cheap
  default (the K backward passes together cost what one backward of the combined batch costs);
- (b) one shared forward with one loss per task: ``s.backward_shared({task: loss, ...})``
  keeps the graph alive between the tasks' backward passes (K full backward passes).

Probe mode (``probe={task: batch}, probe_loss=fn``): on traced steps the snapshot is taken from
the gradients of fixed per-task probe batches (e.g. the same English sentences in every
language) evaluated with the model in eval mode, instead of from the training batches. Use it
when snapshots must compare like with like across steps (training batches vary in content and
length from step to step); use the default when the question is about the gradients the
optimizer actually followed.

Scaling (see docs/scaling.md):

- Under torch.distributed (process group initialised before the Tracer; the model plain or
  wrapped in DistributedDataParallel) each task gradient is the mean over ranks, like DDP's:
  traced steps run under ``no_sync()`` and reduce the task gradients themselves (reduce-scatter
  of the [K, P] buffer, partial Grams, all-reduce of [G, K, K], all-gather of the summed update);
  untraced steps are plain ``loss.backward()`` with DDP's own reduction. Only rank 0 writes.
- ``sketch=d`` keeps a CountSketch of each task gradient (G x K x d floats) instead of the
  [K, P] buffer; the trace's meta ``"sketch"`` is d (see ``geomtrace._sketch``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from geomtrace import _distributed
from geomtrace._capture import TaskGradients
from geomtrace._errors import InvalidInputError
from geomtrace._groups import ParameterGroup, resolve_groups
from geomtrace._sketch import TaskSketches, check_sketch_dim
from geomtrace._trace import TraceWriter

log = logging.getLogger(__name__)

Schedule = int | Iterable[int] | Callable[[int], bool]


def make_schedule(every: Schedule) -> Callable[[int], bool]:
    """``every``: trace when ``step % every == 0`` (int), when ``step`` is listed, or when
    ``every(step)`` is true."""
    if isinstance(every, bool):
        raise InvalidInputError(
            f"every={every!r}: give a positive int, a list of steps or a callable"
        )
    if isinstance(every, int):
        if every < 1:
            raise InvalidInputError(f"every={every}: must be a positive number of steps")
        return lambda step: step % every == 0
    if callable(every):
        return lambda step: bool(every(step))
    try:
        steps = {int(s) for s in every}
    except (TypeError, ValueError):
        raise InvalidInputError(
            f"every={every!r}: give a positive int, a list of steps or a callable"
        ) from None
    return steps.__contains__


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


class StepBase:
    """What the Tracer's and MultiTask's step objects share: validation and loss bookkeeping.

    Subclasses implement ``_backward(task_index, loss, retain_graph)``.
    """

    #: process group over which ``mean_losses`` averages ("auto": the default group if any)
    _process_group: Any = _distributed.AUTO

    def __init__(self, owner_name: str, tasks: Sequence[str], step: int) -> None:
        self._owner_name = owner_name
        self._tasks = list(tasks)
        self._task_index = {t: i for i, t in enumerate(self._tasks)}
        self.step = step
        self.active = False
        # Detached loss tensors per task (no .item(): converted once, when the step is recorded).
        self._losses: dict[str, list[torch.Tensor]] = {}

    def _check(self, task: str, loss: torch.Tensor) -> int:
        if not self.active:
            raise InvalidInputError(
                f"backward({task!r}, ...) called outside a step: use "
                f"`with {self._owner_name}.step(step) as s: s.backward(task, loss)`"
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

    def backward(self, task: str, loss: torch.Tensor, retain_graph: bool = False) -> None:
        """Backward of one task's loss, like ``loss.backward()``; repeated calls sum."""
        index = self._check(task, loss)
        self._losses.setdefault(task, []).append(loss.detach().reshape(()))
        self._backward(index, loss, retain_graph)

    def backward_shared(self, losses: Mapping[str, torch.Tensor]) -> None:
        """Backward of several tasks' losses computed from one shared forward pass."""
        items = list(losses.items())
        for n, (task, loss) in enumerate(items):
            self.backward(task, loss, retain_graph=n < len(items) - 1)

    def mean_losses(self) -> dict[str, float]:
        """Per task, the mean of its micro-batch losses (one host sync for all of them).

        Distributed: the mean over ranks of the ranks' means (the loss of the global batch when
        ranks hold equal shares), a collective call; tasks no rank saw are left out.
        """
        group = _distributed.resolve_group(self._process_group)
        if group is None:
            if not self._losses:
                return {}
            tasks = list(self._losses)
            means = torch.stack([torch.stack(self._losses[t]).float().mean() for t in tasks])
            return dict(zip(tasks, means.cpu().tolist(), strict=True))
        device = next(iter(self._losses.values()))[0].device if self._losses else None
        values = torch.zeros(len(self._tasks), device=device)
        counts = torch.zeros(len(self._tasks), device=device)
        for task, losses in self._losses.items():
            values[self._task_index[task]] = torch.stack(losses).float().mean()
            counts[self._task_index[task]] = 1.0
        means = _distributed.mean_over_ranks(values, counts, group).cpu().tolist()
        return {t: m for t, m in zip(self._tasks, means, strict=True) if m == m}  # m == m: not NaN

    def _backward(self, index: int, loss: torch.Tensor, retain_graph: bool) -> None:
        raise NotImplementedError


def accumulate_grads(params: Sequence[nn.Parameter], grads: Sequence[torch.Tensor | None]) -> None:
    """``p.grad += g`` for every parameter, as ``loss.backward()`` would (None = no gradient)."""
    existing, added = [], []
    for p, g in zip(params, grads, strict=True):
        if g is None:
            continue
        if p.grad is None:
            p.grad = g
        else:
            existing.append(p.grad)
            added.append(g)
    if existing:
        torch._foreach_add_(existing, added)


class TraceStep(StepBase):
    """One training step under a Tracer (returned by ``Tracer.step``)."""

    def __init__(self, tracer: Tracer, step: int, traced: bool) -> None:
        super().__init__("tracer", tracer.tasks, step)
        self._tracer = tracer
        self._process_group = tracer.capture.process_group
        self.traced = traced
        # In probe mode the snapshot comes from the probe batches, not the training batches.
        self._capturing = traced and tracer.probe is None
        self._no_sync = None

    def _backward(self, index: int, loss: torch.Tensor, retain_graph: bool) -> None:
        if not self._capturing:
            loss.backward(retain_graph=retain_graph)
            return
        capture = self._tracer.capture
        if isinstance(capture, TaskSketches):
            # Copy-free: plain backward into .grad, sketch the change it made.
            loss.backward(retain_graph=retain_graph)
            capture.add_grad_change(index)
            return
        grads = torch.autograd.grad(
            loss, capture.params, retain_graph=retain_graph, allow_unused=True
        )
        capture.add(index, grads)
        if capture.process_group is None:
            accumulate_grads(capture.params, grads)
        # Distributed: .grad gets the rank-averaged sum on exit (from the reduced shards).

    def __enter__(self) -> TraceStep:
        if self._tracer._active_step is not None:
            raise InvalidInputError(
                f"step {self.step} opened inside step {self._tracer._active_step.step}: "
                "close one step before starting the next"
            )
        self._tracer._active_step = self
        self.active = True
        if self._capturing:
            # DDP must not expect reducer hooks that autograd.grad never fires; the reduction
            # of the task gradients replaces DDP's on this step.
            self._no_sync = _distributed.no_sync(self._tracer.model)
            self._no_sync.__enter__()
            capture = self._tracer.capture
            capture.reset()
            if isinstance(capture, TaskSketches):
                capture.begin()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.active = False
        self._tracer._active_step = None
        if self._no_sync is not None:
            self._no_sync.__exit__(None, None, None)
            self._no_sync = None
        if exc_type is not None or not self.traced:
            return  # an interrupted step writes nothing: the trace keeps its last good snapshot
        tracer = self._tracer
        if tracer.probe is not None:
            gram, losses = tracer.probe_gram()
            tracer.record(self.step, gram, losses, source="probe")
            return
        capture = tracer.capture
        gram = capture.gram()
        if capture.process_group is not None:
            if isinstance(capture, TaskSketches):
                _distributed.all_reduce_grads(capture.params, capture.process_group)
            else:
                ones = torch.ones(len(capture.groups), capture.num_tasks, device=capture.device)
                summed = capture.combine(ones)
                params, grads = [], []
                for p, g, touched in zip(capture.params, summed, capture.touched, strict=True):
                    if touched:
                        params.append(p)
                        grads.append(g if g.dtype == p.dtype else g.to(p.dtype))
                accumulate_grads(params, grads)
        tracer.record(self.step, gram, self.mean_losses())


class Tracer:
    """Captures per-task gradients on scheduled steps and writes their Gram matrices.

    Args:
        model: the model whose trainable parameters are traced.
        tasks: task (language) names, in the order of every matrix's rows and columns.
        groups: parameter groups (see ``resolve_groups``): ``"whole_model"``, ``"enc_dec"``,
            ``"all_layer"``, ``"all_matrix"`` or ``{name: regex}``.
        every: which steps to trace: every N steps, a list of steps, or ``callable(step)``.
        out: run directory for ``trace.sqlite``; None keeps only ``last_gram`` in memory.
        iso_codes: optional ``{task: ISO 639-3 code}`` stored with the tasks.
        config: the run's configuration, stored in the trace.
        probe / probe_loss: fixed per-task batches and ``probe_loss(model, task, batch) -> loss``
            (see the module docstring).
        overwrite: replace an existing trace in ``out``.
    """

    def __init__(
        self,
        model: nn.Module,
        tasks: Sequence[str],
        groups: str | Mapping[str, str] = "whole_model",
        every: Schedule = 1,
        out: str | os.PathLike | None = None,
        iso_codes: Mapping[str, str | None] | None = None,
        config: Mapping[str, Any] | None = None,
        probe: Mapping[str, Any] | None = None,
        probe_loss: Callable[[nn.Module, str, Any], torch.Tensor] | None = None,
        overwrite: bool = False,
        sketch: int | None = None,
        seed: int = 0,
        process_group: Any = _distributed.AUTO,
    ) -> None:
        self.model = model
        self.tasks = validate_tasks(tasks)
        # Groups of the inner module: parameter names as in a single-process run.
        self.groups: list[ParameterGroup] = resolve_groups(_distributed.unwrap(model), groups)
        self.should_trace = make_schedule(every)
        if (probe is None) != (probe_loss is None):
            raise InvalidInputError("probe mode needs both probe={task: batch} and probe_loss")
        if probe is not None:
            unknown = [t for t in probe if t not in self.tasks]
            if unknown:
                raise InvalidInputError(
                    f"probe names unknown task {unknown[0]!r}; tasks are {self.tasks}"
                )
        self.probe = dict(probe) if probe is not None else None
        self.probe_loss = probe_loss
        self.sketch = None if sketch is None else check_sketch_dim(sketch)
        if self.sketch is None:
            self.capture = TaskGradients(self.groups, len(self.tasks), process_group=process_group)
        else:
            self.capture = TaskSketches(
                self.groups, len(self.tasks), self.sketch, seed, process_group=process_group
            )
        self.last_gram: torch.Tensor | None = None
        self.zero_norm_warnings = 0
        self._listeners: list[Callable[..., None]] = []
        self._active_step: StepBase | None = None
        # Only global rank 0 writes (the Gram matrices are identical on every rank).
        self.writer = (
            TraceWriter(out, self.tasks, self.groups, iso_codes, config, overwrite)
            if out is not None and _distributed.global_rank() == 0
            else None
        )
        if self.writer is not None:
            world = _distributed.world_size(self.capture.process_group)
            if world > 1:
                self.writer.set_meta("world_size", world)
            if self.sketch is not None:
                self.writer.set_meta("sketch", self.sketch)
                self.writer.set_meta("sketch_seed", seed)

    def step(self, step: int) -> TraceStep:
        """Context manager for one training step; traced when the schedule says so."""
        return TraceStep(self, int(step), self.should_trace(int(step)))

    def probe_gram(self) -> tuple[torch.Tensor, dict[str, float]]:
        """Gram matrices [G, K, K] of the probe batches' gradients (``.grad`` untouched)."""
        capture = self.capture
        capture.reset()
        was_training = self.model.training
        self.model.eval()  # no dropout noise: the probe measures the same function every time
        losses = {}
        try:
            with _distributed.no_sync(self.model):
                for task, batch in self.probe.items():
                    loss = self.probe_loss(self.model, task, batch)
                    grads = torch.autograd.grad(loss, capture.params, allow_unused=True)
                    capture.add(self.tasks.index(task), grads)
                    losses[task] = loss.detach()
        finally:
            self.model.train(was_training)
        values = torch.stack(list(losses.values())).float()
        group = capture.process_group
        if group is not None:  # probe batches may differ per rank: average like the gradients
            values = _distributed.mean_over_ranks(values, torch.ones_like(values), group)
        return capture.gram(), dict(zip(losses, values.cpu().tolist(), strict=True))

    def record(
        self,
        step: int,
        gram: torch.Tensor,
        losses: Mapping[str, float] | None = None,
        arrays: Mapping[str, Any] | None = None,
        source: str = "train",
    ) -> None:
        """Write one snapshot: ``gram`` [G, K, K], per-task losses, extra arrays."""
        self.last_gram = gram
        host = gram.detach().float().cpu()  # the only device -> host copy: G x K x K numbers
        self._warn_zero_norms(host)
        if self.writer is not None:
            self.writer.write_snapshot(step, host.numpy(), losses, arrays, source)
        for listener in self._listeners:
            listener(step, host.numpy(), losses, arrays, source)

    def add_listener(self, listener: Callable[..., None]) -> None:
        """Call ``listener(step, gram, losses, arrays, source)`` after every recorded snapshot.

        ``gram`` is the host copy ([G, K, K] float32 numpy) that was written, so a listener
        (TensorBoard, a dashboard) costs no second device transfer. Listeners run on every rank
        that records; ``arrays`` values are passed as given (tensors or arrays).
        """
        if not callable(listener):
            raise InvalidInputError(f"listener must be callable, got {listener!r}")
        self._listeners.append(listener)

    def _warn_zero_norms(self, gram: torch.Tensor) -> None:
        diag = torch.diagonal(gram, dim1=-2, dim2=-1)
        for k, i in (diag == 0).nonzero().tolist():
            self.zero_norm_warnings += 1
            log.warning(
                "task %r has a zero gradient in group %r: its cosines are NaN (warning %d)",
                self.tasks[i],
                self.groups[k].name,
                self.zero_norm_warnings,
            )

    def record_quality(self, step: int, task: str, metric: str, value: float) -> None:
        """Store a quality measurement (e.g. ``chrf``) of ``task`` at ``step``."""
        if self.writer is not None:
            self.writer.write_quality(step, task, metric, value)

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable value in the trace's metadata."""
        if self.writer is not None:
            self.writer.set_meta(key, value)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def __enter__(self) -> Tracer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
