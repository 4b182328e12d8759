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
  [K, P] buffer; the trace's meta ``"sketch"`` is d (see ``geomtrace._sketch``). On a
  fully_shard model it is the sketched FSDP path (``geomtrace._fsdp_sketch``): one all-gather
  and one reduce-scatter per traced step instead of one per task backward.

Reliability (``halves=True``, see ``geomtrace._reliability``): on traced steps each backward is
credited to one of two independent halves of its task, a_i or b_i, with the task's gradient the
full g_i = a_i + b_i (what goes into ``.grad`` and into the Gram matrix is unchanged). The rule
(meta ``"halves_rule"``): ``s.backward(task, loss, half=0|1)`` names the half; with ``half=None``
a task's micro-batches alternate 0, 1, 0, ... within the step (``"micro_batches"``, the default
for ``window=1``: give each task at least two micro-batches on traced steps), or, in a window of
m >= 2 steps, the window's even steps go to a and its odd steps to b (``"step_parity"``, the
default for ``window >= 2``: each half is then whole batches from independently sampled
steps). Each snapshot stores the array ``split_half`` [G, K, 3] = (a.a, b.b, a.b) per group
and task, NaN for a task that got no gradient in one half (warned once per task). Not available
with ``sketch=``, ``probe=`` or under torch.distributed (refused at construction).

Windows (``window=m``, default 1): a snapshot sums each task's gradients over the m consecutive
steps t, t+1, ..., t+m-1 starting at a scheduled step t and is recorded under step t (meta
``"window"`` = m, array ``window_steps`` [1] = the number of steps actually summed: fewer when
training ends inside a window and ``close()`` writes it, or when step numbers jump past the
window's end). Call ``tracer.step(s)`` every step as usual: every step of an open window
captures (per-task backward; ``.grad`` still gets the plain summed gradient). The parameters
move between the steps of a window (the optimizer steps in between), so a window's gradient is
a sum along a short stretch of the trajectory, not m batches at one point: keep m small
against the time the geometry takes to change. A step that raises inside a window drops the
whole window (nothing is written). Windows are for the plain Tracer: ``MultiTask`` needs the
Gram matrix of every step and refuses a windowed tracer; probe mode, sketches and
torch.distributed refuse ``window > 1`` too.

Logging: warnings (a task with a zero gradient in a group, reported once per (task, group) with
a summary count at ``close()``, except in *task-specific* groups: a group that exactly one
task's gradient reaches while every other task's is exactly zero, snapshot after snapshot (a
per-task head), is expected, not a fault, and is reported once, in one info line for all such
groups; a non-finite gradient or loss, once per task; a missing split
half, once per task) go to the ``geomtrace`` logger. Silence them with
``logging.getLogger("geomtrace").setLevel(logging.ERROR)``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from geomtrace import _distributed, _fsdp
from geomtrace._capture import Capture, TaskGradients
from geomtrace._errors import InvalidInputError
from geomtrace._fsdp import ShardedTaskGradients
from geomtrace._fsdp_sketch import ShardedSketchedGram
from geomtrace._groups import ParameterGroup, resolve_groups
from geomtrace._halves import HALVES_RULES, Halves
from geomtrace._schedule import Schedule, is_integral, make_schedule, positive_int
from geomtrace._sketch import TaskSketches, check_sketch_dim
from geomtrace._snapshot_warnings import SnapshotWarnings
from geomtrace._step import (
    Step,
    StepPolicy,
    TrainableCheck,
    check_capture_fits,
    check_real_params,
    mean_losses,
    step_number,
    validate_tasks,
)
from geomtrace._writer import TraceWriter

log = logging.getLogger(__name__)

# Kept importable from here (the step class used to live in this module).
TraceStep = Step
__all__ = ["HALVES_RULES", "Schedule", "TraceStep", "Tracer", "make_schedule", "validate_tasks"]


def _check_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The run's config as a dict, refused *before* any file is created if not JSON."""
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise InvalidInputError(f"config must be a mapping, not {type(config).__name__}")
    try:
        json.dumps(dict(config), allow_nan=True)
    except (TypeError, ValueError) as err:
        raise InvalidInputError(f"config is not JSON-serialisable: {err}") from None
    return dict(config)


@dataclass
class _Window:
    """An open window: its first step, the steps summed so far and their losses."""

    start: int
    steps: int = 0
    losses: dict[str, list[torch.Tensor]] = field(default_factory=dict)


class Tracer(StepPolicy):
    """Captures per-task gradients on scheduled steps and writes their Gram matrices.

    Args:
        model: the model whose trainable parameters are traced (real dtypes only).
        tasks: task (language) names, in the order of every matrix's rows and columns.
        groups: parameter groups (see ``resolve_groups``): ``"whole_model"``, ``"enc_dec"``,
            ``"all_layer"``, ``"all_matrix"`` or ``{name: regex}``.
        every: which steps to trace: every N steps (an integral number), a list of steps, or
            ``callable(step)``; with ``window=m``, the first step of each window.
        out: run directory for ``trace.sqlite``; None keeps only ``last_gram`` in memory.
        iso_codes: optional ``{task: ISO 639-3 code}`` stored with the tasks.
        config: the run's configuration (JSON-serialisable, checked before any file is
            created), stored in the trace.
        probe / probe_loss: fixed per-task batches and ``probe_loss(model, task, batch) -> loss``
            (see the module docstring).
        overwrite: replace an existing trace in ``out``.
        sketch / seed: CountSketch dimension d and its seed (see the module docstring).
        process_group: ``"auto"``, None or a ProcessGroup (see ``geomtrace._distributed``).
        halves: capture two split halves per task and record ``split_half`` (module docstring).
        halves_rule: ``"micro_batches"`` or ``"step_parity"``; None: ``"step_parity"`` when
            ``window >= 2``, else ``"micro_batches"``. An explicit ``half=`` always wins.
        window: steps summed per snapshot (module docstring).

    Public state: ``capture`` (the :class:`~geomtrace.Capture`, built on first use),
    ``last_gram`` (the last recorded [G, K, K], on the device), ``zero_norm_warnings`` (how many
    (snapshot, group, task) zero gradients were seen).
    """

    _owner_name = "tracer"
    sums_into_grad = True

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
        halves: bool = False,
        halves_rule: str | None = None,
        window: int = 1,
    ) -> None:
        self.model = model
        self.tasks = validate_tasks(tasks)
        # Groups of the inner module: parameter names as in a single-process run.
        self.groups: list[ParameterGroup] = resolve_groups(_distributed.unwrap(model), groups)
        check_real_params(self.groups)
        self._trainable = TrainableCheck(_distributed.unwrap(model), self.groups, "Tracer")
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
        self.seed = seed
        #: the FSDP layout when ``model`` is sharded with fully_shard (see ``geomtrace._fsdp``)
        self.fsdp: _fsdp.FSDPLayout | None = None
        if _fsdp.is_fully_sharded(model):
            for option, value, why in (
                ("probe=", self.probe, "probe gradients would need torch.autograd.grad"),
            ):
                if value is not None:
                    raise InvalidInputError(
                        f"{option} is not supported with a fully_shard model: {why}"
                    )
            self.fsdp = _fsdp.fsdp_layout(model, self.groups, process_group, "Tracer")
            self._group_arg = self.fsdp.process_group
        else:
            self._group_arg = _distributed.resolve_group(process_group)
        self.window = positive_int("window", window)
        if is_integral(every) and self.window > int(every):
            raise InvalidInputError(
                f"window={self.window} is longer than every={int(every)}: windows would "
                "overlap; use every >= window"
            )
        #: split-half capture, validated once here (``geomtrace._halves``)
        self.split_halves = Halves.choose(bool(halves), halves_rule, self.window)
        self.halves = self.split_halves.enabled
        self.halves_rule = self.split_halves.rule
        for option, value, bad in (
            ("probe=", self.probe, self.halves or self.window > 1),
            ("sketch=", self.sketch, self.halves or self.window > 1),
            ("torch.distributed (process_group)", self._group_arg, self.halves or self.window > 1),
        ):
            if value is not None and bad:
                what = "halves=True" if self.halves else f"window={self.window}"
                raise InvalidInputError(
                    f"{what} is not supported with {option}: trace split halves and windows "
                    "with exact capture of the training batches in one process"
                )
        if self.fsdp is None:  # under FSDP each rank holds only its P / W columns
            check_capture_fits(
                self.groups,
                len(self.tasks),
                exact=self.sketch is None,
                sketch=self.sketch,
                halves=self.halves,
                owner="Tracer",
            )
        config = _check_config(config)
        self._capture: Capture | None = None
        self.last_gram: torch.Tensor | None = None
        self._warnings = SnapshotWarnings(self.tasks, [g.name for g in self.groups])
        self._listeners: list[Callable[..., None]] = []
        self._active_step: Step | None = None
        self._window: _Window | None = None
        #: the MultiTask this tracer records for (``MultiTask(..., tracer=self)``), or None
        self._recording_for: StepPolicy | None = None
        # Only global rank 0 writes (the Gram matrices are identical on every rank).
        self.writer = (
            TraceWriter(out, self.tasks, self.groups, iso_codes, config, overwrite)
            if out is not None and _distributed.global_rank() == 0
            else None
        )
        if self.writer is not None:
            self._write_capture_meta()

    def _write_capture_meta(self) -> None:
        """How the snapshots are taken, in the trace's meta: split halves (always, on or
        off); world size, sketch (dimension and seed) and window only where they are not the
        plain default."""
        world = _distributed.world_size(self._group_arg)
        if world > 1:
            self.writer.set_meta("world_size", world)
        if self.sketch is not None:
            self.writer.set_meta("sketch", self.sketch)
            self.writer.set_meta("sketch_seed", self.seed)
        for key, value in self.split_halves.meta().items():
            self.writer.set_meta(key, value)
        if self.window > 1:
            self.writer.set_meta("window", self.window)

    # -- the capture ---------------------------------------------------------------------------
    @property
    def capture(self) -> Capture:
        """The capture the traced steps feed (built on first use; a MultiTask hands over its
        own, so a Tracer used for recording only never allocates one)."""
        if self._capture is None:
            if self.fsdp is not None and self.sketch is not None:
                # One all-gather, one reduce-scatter per traced step (geomtrace._fsdp_sketch).
                self._capture = ShardedSketchedGram(
                    self.model, self.groups, len(self.tasks), self.fsdp, self.sketch, self.seed
                )
            elif self.fsdp is not None:
                self._capture = ShardedTaskGradients(self.groups, len(self.tasks), self.fsdp)
            elif self.sketch is None:
                self._capture = TaskGradients(
                    self.groups, len(self.tasks), process_group=self._group_arg, halves=self.halves
                )
            else:
                self._capture = TaskSketches(
                    self.groups,
                    len(self.tasks),
                    self.sketch,
                    self.seed,
                    process_group=self._group_arg,
                )
        return self._capture

    def _adopt(self, capture: Capture, owner: StepPolicy) -> None:
        """Record from ``capture`` (the MultiTask ``owner``'s) instead of building one."""
        if self._recording_for is not None and self._recording_for is not owner:
            raise InvalidInputError(
                f"this tracer already records for {self._recording_for!r}: give each MultiTask "
                "its own Tracer"
            )
        self._capture = capture
        self._recording_for = owner

    def follow(self) -> Tracer:
        """Keep the capture on the device the parameters live on now (after ``model.to``)."""
        if self._capture is not None:
            self._capture.follow()
        return self

    @property
    def _process_group(self) -> Any:
        return self._group_arg

    # -- steps ---------------------------------------------------------------------------------
    def _in_window(self, step: int) -> bool:
        w = self._window
        return w is not None and w.start <= step < w.start + self.window

    def captures(self, step: int) -> bool:
        """Whether ``s.backward`` on ``step`` will capture per-task gradients of the training
        batches (a traced step, or any step of an open window; never in probe mode): a loop
        that can also run one joint backward must run per-task backward passes then."""
        step = step_number(step)
        if self.probe is not None:
            return False
        return self._in_window(step) or self.should_trace(step)

    def step(self, step: int) -> Step:
        """Context manager for one training step; traced when the schedule says so.

        Refused for a tracer that records for a MultiTask (``MultiTask(..., tracer=...)``):
        its steps would reset the capture the MultiTask shares with it (nested inside a
        MultiTask step, a task's gradient was silently dropped); open steps with the
        MultiTask's ``step``.
        """
        step = step_number(step)
        if self._recording_for is not None:
            raise InvalidInputError(
                f"tracer.step({step}): this tracer records for {self._recording_for!r} and "
                "has no steps of its own (they would reset the capture it shares); use "
                "`with mt.step(step) as s:` of that MultiTask"
            )
        return Step(self, step, self._in_window(step) or self.should_trace(step))

    def _open(self, step: Step) -> Capture | None:
        n = step.step
        if self._window is not None and not self._in_window(n):
            self._close_window()  # step numbers jumped past the window's end
        if self._window is not None:
            self._trainable.check()
            return self.capture
        if not self.should_trace(n) or self.probe is not None:
            return None
        self._trainable.check()
        if self.fsdp is not None:
            self.fsdp.check_gradient_sync()
        capture = self.capture
        capture.check_ranks_agree(self.tasks)  # once, before the first collective
        capture.reset()
        if self.window > 1:
            self._window = _Window(n)
        return capture

    def _half(self, step: Step, task_index: int, half: int | None) -> int | None:
        if not self.halves:
            return super()._half(step, task_index, half)
        if half is not None or not step.capturing:
            return half
        if self.halves_rule == "step_parity":
            return (step.step - self._window.start) % 2
        return step._backwards[task_index] % 2

    def _close(self, step: Step) -> None:
        if self.probe is not None:
            if step.traced:
                gram, losses = self.probe_gram()
                self.record(step.step, gram, losses, arrays=self._capture_arrays(), source="probe")
            return
        if not step.capturing:
            return
        step.capture.sum_into_grad()
        window = self._window
        if window is None:
            gram = step.capture.gram()
            self.record(step.step, gram, step.mean_losses(), arrays=self._capture_arrays())
            return
        window.steps += 1
        for task, losses in step._losses.items():
            window.losses.setdefault(task, []).extend(losses)
        if step.step >= window.start + self.window - 1:
            self._close_window()

    def _abort(self, step: Step) -> None:
        if isinstance(step.capture, ShardedSketchedGram):
            step.capture.abort()  # reshard the parameters it kept unsharded
        if self._window is not None and step.capturing:
            log.warning(
                "step %d raised inside the window opened at step %d: the window is dropped "
                "(nothing is written for it)",
                step.step,
                self._window.start,
            )
            self._window = None

    def _close_window(self) -> None:
        window, self._window = self._window, None
        if window is None or window.steps == 0:
            return
        gram = self.capture.gram()
        arrays = self._capture_arrays()
        arrays["window_steps"] = np.array([window.steps], dtype=np.float32)
        losses = mean_losses(window.losses, self.tasks, self._group_arg)
        self.record(window.start, gram, losses, arrays=arrays)

    def _capture_arrays(self) -> dict[str, Any]:
        """Per-snapshot arrays that come from the capture (after its ``gram()``)."""
        capture = self.capture
        arrays: dict[str, Any] = {"nonfinite": capture.nonfinite()}
        if self.halves:
            arrays["split_half"] = capture.split_half()
        return arrays

    def probe_gram(self) -> tuple[torch.Tensor, dict[str, float]]:
        """Gram matrices [G, K, K] of the probe batches' gradients (``.grad`` untouched)."""
        self._trainable.check()
        capture = self.capture
        capture.check_ranks_agree(self.tasks)
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

    @property
    def zero_norm_warnings(self) -> int:
        """How many (snapshot, group, task) zero gradients were seen."""
        return self._warnings.zero_norm_warnings

    # -- recording -----------------------------------------------------------------------------
    def record(
        self,
        step: int,
        gram: torch.Tensor,
        losses: Mapping[str, float] | None = None,
        arrays: Mapping[str, Any] | None = None,
        source: str = "train",
    ) -> None:
        """Write one snapshot: ``gram`` [G, K, K], per-task losses, extra arrays.

        Every snapshot also gets the array ``nonfinite`` [K] (1 for a task whose gradient or
        loss was NaN/inf, recorded as absent in ``gram``; 0 otherwise).
        """
        self.last_gram = gram
        host = gram.detach().float().cpu()  # the main device -> host copy: G x K x K numbers
        arrays = {k: _host(v) for k, v in (arrays or {}).items()}
        nonfinite = np.zeros(len(self.tasks), dtype=np.float32)
        if "nonfinite" in arrays:
            nonfinite = np.asarray(arrays["nonfinite"], dtype=np.float32).reshape(-1).copy()
        for task, value in (losses or {}).items():
            if not np.isfinite(value):
                nonfinite[self.tasks.index(task)] = 1.0
        arrays["nonfinite"] = nonfinite
        self._warnings.check(host, arrays)
        if self.writer is not None:
            self.writer.write_snapshot(step, host.numpy(), losses, arrays, source)
        for listener in self._listeners:
            listener(step, host.numpy(), losses, arrays, source)

    def add_listener(self, listener: Callable[..., None]) -> None:
        """Call ``listener(step, gram, losses, arrays, source)`` after every recorded snapshot.

        ``gram`` is the host copy ([G, K, K] float32 numpy) that was written, so a listener
        (TensorBoard, a dashboard) costs no second device transfer. Listeners run on every rank
        that records; ``arrays`` values are host numpy arrays.
        """
        if not callable(listener):
            raise InvalidInputError(f"listener must be callable, got {listener!r}")
        self._listeners.append(listener)

    def record_quality(self, step: int, task: str, metric: str, value: float) -> None:
        """Store a quality measurement (e.g. ``chrf``) of ``task`` at ``step``."""
        if self.writer is not None:
            self.writer.write_quality(step, task, metric, value)

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable value in the trace's metadata."""
        if self.writer is not None:
            self.writer.set_meta(key, value)

    def close(self) -> None:
        """Write an open window (with the steps it summed), log the zero-gradient summary and
        close the trace."""
        if self._window is not None and self._active_step is None:
            self._close_window()
        self._warnings.summarise_zero_norms()
        if self.writer is not None:
            self.writer.close()

    def __enter__(self) -> Tracer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _host(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu().numpy()
    return value
