"""MultiTask: optimise with an aggregator of the per-task Gram matrices (Sum, PCGrad, GradVac).

    mt = MultiTask(model, tasks=langs, aggregator=GradVac(beta=1e-2), groups="all_matrix")
    for step, batches in enumerate(loader):
        with mt.step(step) as s:
            for task, batch in batches.items():
                s.backward(task, loss_fn(model, batch))
        optimizer.step(); optimizer.zero_grad()

Every step, each ``s.backward(task, loss)`` computes the task's gradient with
``torch.autograd.grad`` (the FLOPs of the ``loss.backward()`` it replaces) into row i of a
[K, P] buffer (:class:`TaskGradients`); nothing reaches ``.grad`` during the step. On leaving
the step, for every group g::

    G_g = [g_i . g_j]                    (TaskGradients.gram, one matmul per group)
    w_g = aggregator.weights(G)[g]       (K x K arithmetic, all groups at once)
    .grad += sum_i w_gi g_i              (TaskGradients.combine)

``.grad`` is accumulated into, as ``loss.backward()`` would, so a MultiTask step behaves like a
summed-loss backward with ``Sum()``. Parameters that no task's loss reaches keep ``.grad``
untouched (None after ``zero_grad(set_to_none=True)``). Everything stays on the parameters'
device; nothing synchronises with the host except on traced steps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from geomtrace import _distributed
from geomtrace._aggregators import Aggregator
from geomtrace._capture import TaskGradients
from geomtrace._errors import InvalidInputError
from geomtrace._groups import ParameterGroup, resolve_groups
from geomtrace._tracer import StepBase, Tracer, accumulate_grads, validate_tasks

__all__ = ["MultiTask", "MultiTaskStep"]


class MultiTaskStep(StepBase):
    """One optimisation step under a :class:`MultiTask` (returned by ``MultiTask.step``)."""

    def __init__(self, owner: MultiTask, step: int) -> None:
        super().__init__("mt", owner.tasks, step)
        self._owner = owner
        # Host-side record of which parameters received a gradient from any task: those that
        # did not keep .grad untouched (a None check on autograd's output, no device sync).
        self._touched = [False] * len(owner.capture.params)
        #: the weights [G, K] of this step (set on exit)
        self.weights: torch.Tensor | None = None
        #: the Gram matrices [G, K, K] of this step (set on exit)
        self.gram: torch.Tensor | None = None
        self._no_sync = None

    def _backward(self, index: int, loss: torch.Tensor, retain_graph: bool) -> None:
        capture = self._owner.capture
        grads = torch.autograd.grad(
            loss, capture.params, retain_graph=retain_graph, allow_unused=True
        )
        capture.add(index, grads)
        touched = self._touched
        for n, g in enumerate(grads):
            if g is not None:
                touched[n] = True

    def __enter__(self) -> MultiTaskStep:
        owner = self._owner
        if owner._active_step is not None:
            raise InvalidInputError(
                f"step {self.step} opened inside step {owner._active_step.step}: "
                "close one step before starting the next"
            )
        owner._active_step = self
        self.active = True
        owner.capture.reset()
        # DDP's reducer never sees autograd.grad's gradients; the capture reduces them itself.
        # Entered here so it covers the forward passes (DDP decides at forward time).
        self._no_sync = _distributed.no_sync(owner.model)
        self._no_sync.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        owner = self._owner
        self.active = False
        owner._active_step = None
        if self._no_sync is not None:
            self._no_sync.__exit__(None, None, None)
            self._no_sync = None
        distributed = owner.capture.process_group is not None
        # An interrupted step, or one without any backward, changes neither .grad nor the
        # aggregator's state. Distributed, gram()/combine() are collective: every rank must
        # take part even if it saw no task this step.
        if exc_type is not None or (not distributed and not any(owner.capture.present)):
            return
        capture = owner.capture
        self.gram = capture.gram()
        self.weights = owner.aggregator.weights(self.gram)
        combined = capture.combine(self.weights)
        params, grads = [], []
        for p, g, touched in zip(capture.params, combined, self._touched, strict=True):
            if touched:
                params.append(p)
                # combine() returns views of one fresh flat vector: safe to keep as .grad.
                grads.append(g if g.dtype == p.dtype else g.to(p.dtype))
        accumulate_grads(params, grads)
        tracer = owner.tracer
        if tracer is not None and tracer.should_trace(self.step):
            arrays = {"weights": self.weights, **owner.aggregator.trace_arrays()}
            tracer.record(self.step, self.gram, self.mean_losses(), arrays=arrays)


class MultiTask:
    """Per-task gradients every step, combined per parameter group by an aggregator.

    Args:
        model: the model whose trainable parameters are optimised.
        tasks: task names, in the order of the Gram matrices' rows and of the weights.
        aggregator: an :class:`Aggregator` (``Sum()``, ``Mean()``, ``PCGrad()``, ``GradVac()``).
        groups: parameter groups, as for the Tracer (``"whole_model"``, ``"enc_dec"``,
            ``"all_layer"``, ``"all_matrix"`` or ``{name: regex}``); each group gets its own
            weights (GradVac's paper granularities).
        tracer: optional :class:`Tracer` with the same tasks and group names: on the steps its
            schedule selects, the step's Gram matrices, losses, weights ``[G, K]`` (and, for
            GradVac, the targets ``gradvac_target`` ``[G, K, K]``) are recorded without a second
            capture. Use the tracer only for recording here, not its own ``step``.
    """

    def __init__(
        self,
        model: nn.Module,
        tasks: Sequence[str],
        aggregator: Aggregator,
        groups: str | Mapping[str, str] = "whole_model",
        tracer: Tracer | None = None,
    ) -> None:
        if not isinstance(aggregator, Aggregator):
            raise InvalidInputError(
                f"aggregator must be a geomtrace Aggregator (Sum(), Mean(), PCGrad(), GradVac()), "
                f"got {aggregator!r}"
            )
        self.model = model
        self.tasks = validate_tasks(tasks)
        self.aggregator = aggregator
        # Groups on the module inside a DDP wrapper, so names match the Tracer's.
        self.groups: list[ParameterGroup] = resolve_groups(_distributed.unwrap(model), groups)
        aggregator.bind(self.tasks, [g.name for g in self.groups])  # names in its state_dict
        if tracer is not None and getattr(tracer, "sketch", None) is not None:
            raise InvalidInputError(
                "a MultiTask records exact Gram matrices: give it a tracer without sketch="
            )
        if tracer is not None:
            ours = [g.name for g in self.groups]
            theirs = [g.name for g in tracer.groups]
            if ours != theirs:
                raise InvalidInputError(
                    f"the tracer's groups {theirs} differ from the MultiTask's groups {ours}: "
                    "build both with the same model and groups"
                )
            if list(tracer.tasks) != self.tasks:
                raise InvalidInputError(
                    f"the tracer's tasks {list(tracer.tasks)} differ from the MultiTask's tasks "
                    f"{self.tasks}: give both the same tasks in the same order"
                )
        self.tracer = tracer
        self.capture = TaskGradients(self.groups, len(self.tasks))
        self._active_step: MultiTaskStep | None = None

    def step(self, step: int) -> MultiTaskStep:
        """Context manager for one optimisation step (``with mt.step(step) as s: ...``)."""
        return MultiTaskStep(self, int(step))

    def __repr__(self) -> str:
        return (
            f"MultiTask(tasks={self.tasks}, aggregator={self.aggregator!r}, "
            f"groups={len(self.groups)})"
        )
