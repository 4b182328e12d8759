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

Non-finite tasks: a task whose gradient is NaN/inf in some group (e.g. a NaN loss) is left out
of the combination like an absent task (weight 0 and its gradient row zeroed, so ``.grad``
stays finite), recorded in the trace's ``nonfinite`` array and warned about once per task.

Communication (torch.distributed, see docs/scaling.md). ``gram="exact"`` (default) reduces
every task's gradient before the Gram (about (K + 1) / 2 plain data-parallel steps of traffic).
``gram="sketch", sketch=d`` (:class:`~geomtrace._sketch.SketchedGram`) keeps each rank's local
task gradients, all-reduces only their [G, K, d] CountSketches to estimate the Gram, and
all-reduces the combined update once: one plain step plus G K d floats. Under FSDP2
(``fully_shard``) the capture is :class:`~geomtrace._fsdp.ShardedTaskGradients`: each task's
backward is reduce-scattered by FSDP, the exact Gram comes from partial Grams on the shards
(one [G, K, K] all-reduce) and each rank combines its own shard into its ``.grad`` shard:
K reduce-scatters per step. ``gram="sketch"`` under FSDP2 is the two-pass path of
:mod:`geomtrace._fsdp_sketch` (:class:`~geomtrace._fsdp_sketch.ShardedSketchedGram`): one
all-gather of the parameters, sketches of the local task gradients, one reduce-scatter of the
combined update (one extra backward per task).

With ``tracer=Tracer(..., halves=True)`` the traced steps also record ``split_half`` (the
aggregator still sees the full Gram matrix). A windowed tracer (``window > 1``) is refused:
the aggregator needs each step's own Gram matrix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from geomtrace import _distributed, _fsdp
from geomtrace._aggregators import Aggregator
from geomtrace._capture import Capture, TaskGradients
from geomtrace._errors import InvalidInputError
from geomtrace._fsdp import ShardedTaskGradients
from geomtrace._fsdp_sketch import ShardedSketchedGram
from geomtrace._groups import ParameterGroup, resolve_groups
from geomtrace._sketch import IDENTITY, SketchedGram, check_sketch_dim, check_sketch_dtype
from geomtrace._step import (
    Step,
    StepPolicy,
    TrainableCheck,
    check_capture_fits,
    check_real_params,
    step_number,
    validate_tasks,
)
from geomtrace._tracer import Tracer

# Kept importable from here (the step class used to live in this module).
MultiTaskStep = Step
__all__ = ["GRAM_MODES", "MultiTask", "MultiTaskStep"]

#: how a MultiTask obtains the Gram matrices (see the module docstring)
GRAM_MODES = ("exact", "sketch")


class MultiTask(StepPolicy):
    """Per-task gradients every step, combined per parameter group by an aggregator.

    Args:
        model: the model whose trainable parameters are optimised (real dtypes only).
        tasks: task names, in the order of the Gram matrices' rows and of the weights.
        aggregator: an :class:`Aggregator` (``Sum()``, ``Mean()``, ``PCGrad()``, ``GradVac()``).
        groups: parameter groups, as for the Tracer (``"whole_model"``, ``"enc_dec"``,
            ``"all_layer"``, ``"all_matrix"`` or ``{name: regex}``); each group gets its own
            weights (GradVac's paper granularities).
        tracer: optional :class:`Tracer` with the same tasks and group names: on the steps its
            schedule selects, the step's Gram matrices, losses, weights ``[G, K]`` (and, for
            GradVac, the targets ``gradvac_target`` ``[G, K, K]``; with ``halves=True``,
            ``split_half``) are recorded from this MultiTask's capture (the tracer builds
            none of its own). Use the tracer only for recording here, not its own ``step``.
            With ``gram="sketch"`` the tracer must have the same ``sketch=d`` and ``seed``
            (its trace then says the Gram matrices are estimates).
        gram: ``"exact"`` (default) or ``"sketch"``: estimate the Gram matrices from
            CountSketches of dimension ``sketch`` (the combination stays exact; under
            torch.distributed it costs one plain all-reduce plus G K d floats per step).
        sketch / seed: the sketch dimension d (``gram="sketch"`` only; ``"identity"`` makes the
            sketch the identity: an exact check of the sketched path) and its seed.
            On a fully_shard model ``gram="sketch"`` is the two-pass path of
            :mod:`geomtrace._fsdp_sketch` (one all-gather and one reduce-scatter per step).
        sketch_dtype: ``"float32"`` (default) or ``"float16"``: the sketches travel between
            ranks as scaled float16 (half the sketch bytes; see
            :func:`geomtrace._sketch.all_reduce_sketch_mean`).

    ``step(n)`` returns a :class:`~geomtrace.Step`; after it closes, ``s.gram`` and
    ``s.weights`` hold the step's Gram matrices and weights.
    """

    _owner_name = "mt"
    sums_into_grad = False

    def __init__(
        self,
        model: nn.Module,
        tasks: Sequence[str],
        aggregator: Aggregator,
        groups: str | Mapping[str, str] = "whole_model",
        tracer: Tracer | None = None,
        gram: str = "exact",
        sketch: int | str | None = None,
        seed: int = 0,
        sketch_dtype: str = "float32",
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
        check_real_params(self.groups)
        self._trainable = TrainableCheck(_distributed.unwrap(model), self.groups, "MultiTask")
        aggregator.bind(self.tasks, [g.name for g in self.groups])  # names in its state_dict
        _check_gram_options(gram, sketch, sketch_dtype)
        self.sketch_dtype = sketch_dtype
        self.gram_mode = gram
        self.sketch = sketch
        self.seed = seed
        #: the FSDP layout when ``model`` is sharded with fully_shard (see ``geomtrace._fsdp``)
        self.fsdp: _fsdp.FSDPLayout | None = None
        if _fsdp.is_fully_sharded(model):
            self.fsdp = _fsdp.fsdp_layout(model, self.groups, _distributed.AUTO, "MultiTask")
        if tracer is not None:
            self._check_tracer(tracer)
        self.tracer = tracer
        halves = tracer is not None and tracer.halves
        if self.fsdp is None:  # under FSDP each rank holds only its P / W columns
            check_capture_fits(
                self.groups,
                len(self.tasks),
                sketch=sketch if gram == "sketch" and sketch != IDENTITY else None,
                halves=halves,
                owner="MultiTask",
            )
        self.capture: Capture = self._new_capture(halves)
        if tracer is not None:
            tracer._adopt(self.capture, self)
        self._active_step: Step | None = None

    def _check_tracer(self, tracer: Tracer) -> None:
        """Refuse a ``tracer`` that cannot record what this MultiTask aggregates with: another
        sketch (or seed), a window, probe batches, other groups or other tasks."""
        gram, sketch, seed = self.gram_mode, self.sketch, self.seed
        if not isinstance(tracer, Tracer):
            raise InvalidInputError(
                f"tracer must be a geomtrace Tracer, got {type(tracer).__name__}"
            )
        wanted = sketch if gram == "sketch" and sketch != IDENTITY else None
        if tracer.sketch != wanted or (wanted is not None and tracer.seed != seed):
            raise InvalidInputError(
                "a MultiTask records the Gram matrices it aggregates with: "
                + (
                    "give it a tracer without sketch="
                    if wanted is None
                    else f"give it a tracer with sketch={wanted} and seed={seed}"
                )
                + f" (got sketch={tracer.sketch}, seed={tracer.seed})"
            )
        if tracer.window > 1:
            raise InvalidInputError(
                f"a MultiTask needs the Gram matrix of every step: give it a tracer "
                f"without window= (got window={tracer.window})"
            )
        if tracer.probe is not None:
            raise InvalidInputError(
                "a MultiTask records the gradients it combines: give it a tracer without probe="
            )
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

    def _new_capture(self, halves: bool) -> Capture:
        """The capture of the per-task gradients: sharded under FSDP (gradients, or sketches
        with ``gram="sketch"``), sketched with ``gram="sketch"``, else the exact per-task
        gradients (with split ``halves``); split halves refused with a sketch."""
        model, gram, sketch, seed = self.model, self.gram_mode, self.sketch, self.seed
        sketch_dtype = self.sketch_dtype
        if self.fsdp is not None and gram == "sketch":
            if halves:
                raise InvalidInputError("gram='sketch' cannot record split halves (halves=True)")
            # Two passes at the traffic of one FSDP step (see geomtrace._fsdp_sketch).
            return ShardedSketchedGram(
                model, self.groups, len(self.tasks), self.fsdp, sketch, seed, dtype=sketch_dtype
            )
        elif self.fsdp is not None:
            return ShardedTaskGradients(self.groups, len(self.tasks), self.fsdp)
        elif gram == "sketch":
            if halves:
                raise InvalidInputError("gram='sketch' cannot record split halves (halves=True)")
            return SketchedGram(self.groups, len(self.tasks), sketch, seed, dtype=sketch_dtype)
        else:
            return TaskGradients(self.groups, len(self.tasks), halves=halves)

    @property
    def _process_group(self) -> object:
        return self.capture.process_group

    def step(self, step: int) -> Step:
        """Context manager for one optimisation step (``with mt.step(step) as s: ...``)."""
        step = step_number(step)
        traced = self.tracer is not None and self.tracer.should_trace(step)
        return Step(self, step, traced)

    def follow(self) -> MultiTask:
        """Keep the capture on the device the parameters live on now (after ``model.to``)."""
        self.capture.follow()
        return self

    def _open(self, step: Step) -> Capture:
        if self.fsdp is not None:
            self.fsdp.check_gradient_sync()
        self._trainable.check()
        self.capture.check_ranks_agree(self.tasks)  # once, before the first collective
        self.capture.reset()
        return self.capture

    def _half(self, step: Step, task_index: int, half: int | None) -> int | None:
        tracer = self.tracer
        if tracer is None or not tracer.halves:
            return super()._half(step, task_index, half)
        if not step.traced:
            return None  # split halves are only worth their copies on recorded steps
        return half if half is not None else step._backwards[task_index] % 2

    def _close(self, step: Step) -> None:
        capture = self.capture
        distributed = capture.process_group is not None
        # A step without any backward changes neither .grad nor the aggregator's state.
        # Distributed, gram()/combine() are collective: every rank must take part even if it
        # saw no task this step.
        if not distributed and not any(capture.present):
            return
        step.gram = capture.gram()  # non-finite tasks come back NaN, like absent ones
        step.weights = self.aggregator.weights(step.gram)
        capture.combine_into_grad(step.weights)  # non-finite rows count as zero
        if step.traced:
            arrays = {
                "weights": step.weights,
                **self.aggregator.trace_arrays(),
                "nonfinite": capture.nonfinite(),
            }
            if capture.halves:
                arrays["split_half"] = capture.split_half()
            self.tracer.record(step.step, step.gram, step.mean_losses(), arrays=arrays)

    def _abort(self, step: Step) -> None:
        # An interrupted sketched FSDP step holds unsharded parameters and retained graphs.
        if isinstance(self.capture, ShardedSketchedGram):
            self.capture.abort()

    def __repr__(self) -> str:
        return (
            f"MultiTask(tasks={self.tasks}, aggregator={self.aggregator!r}, "
            f"groups={len(self.groups)})"
        )


def _check_gram_options(gram: str, sketch: int | str | None, sketch_dtype: str) -> None:
    """Refuse an unknown ``gram`` mode, a sketch dimension or dtype in exact mode, and sketch
    mode without a valid sketch dimension or with a dtype it cannot send."""
    if gram not in GRAM_MODES:
        raise InvalidInputError(f"gram={gram!r}: use one of {', '.join(GRAM_MODES)}")
    if gram == "exact" and sketch is not None:
        raise InvalidInputError(
            f"sketch={sketch!r} needs gram='sketch' (exact mode has no sketch dimension)"
        )
    if gram == "sketch":
        if sketch is None:
            raise InvalidInputError("gram='sketch' needs sketch=d (the sketch dimension)")
        if sketch != IDENTITY:
            check_sketch_dim(sketch)
    if gram == "exact" and sketch_dtype != "float32":
        raise InvalidInputError(
            f"sketch_dtype={sketch_dtype!r} needs gram='sketch' (exact mode sends no sketches)"
        )
    if gram == "sketch":
        check_sketch_dtype(sketch_dtype, sketch)
