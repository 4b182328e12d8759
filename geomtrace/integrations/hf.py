"""Hugging Face ``Trainer`` integration: per-task backward passes inside ``Trainer.train()``.

    from geomtrace.integrations.hf import GeomtraceTrainer, TaskCollator

    args = TrainingArguments(...)          # first: under accelerate launch / torchrun it sets up
                                           # torch.distributed, which the Tracer must see
    tracer = gt.Tracer(model, tasks=langs, groups="all_layer", every=50, out="runs/hf")
    trainer = GeomtraceTrainer(
        model=model, args=args, train_dataset=ds,            # each example has a "task" name
        data_collator=TaskCollator(langs),                   # batch["task"]: LongTensor of indices
        tracer=tracer,                                       # or multitask=gt.MultiTask(...)
    )
    trainer.train(); tracer.close()

Any other trainer class composes with the mixin, keeping its own behaviour (generation-based
evaluation, its loss, its collator)::

    class Seq2SeqGeometry(GeomtraceMixin, Seq2SeqTrainer): pass     # or with_geometry(SFTTrainer)
    trainer = Seq2SeqGeometry(model=model, args=seq2seq_args, ..., tracer=tracer)

Design: :class:`GeomtraceMixin` overrides ``training_step`` (and ``prediction_step``, to drop the
task column); ``GeomtraceTrainer`` is ``GeomtraceMixin`` + ``Trainer``. Each batch carries one
task index per row (``TaskCollator`` turns the examples' task names into a LongTensor); the
batch is split into one sub-batch per task present, and each sub-batch gets its own forward
(the trainer's ``compute_loss``) and its own backward through the Tracer's or MultiTask's step.
One geomtrace step spans one optimizer update: it opens at the first micro-batch of a gradient
accumulation window and closes after the last one (``accelerator.sync_gradients``), i.e. before
the Trainer clips gradients and steps the optimizer, so a MultiTask's combined gradient is what
gets clipped and applied.

Loss scaling (why the per-task losses add up to the plain Trainer's loss): with B rows of which
task t has the rows R_t, and n_r the loss items of row r (labels != -100; 1 per row without
labels),

- when the Trainer passes ``num_items_in_batch`` N to a loss that divides by it (checked once,
  by evaluating one sub-batch's loss with N and 2N under ``no_grad`` in eval mode), each task's
  loss is already ``sum_{r in R_t} l_r / N`` and the task losses sum to the batch loss as they
  are;
- otherwise the loss is a mean over the sub-batch's items (many models accept ``**kwargs`` yet
  ignore N, e.g. ``BertForMaskedLM``, T5), and task t's loss is weighted by
  ``sum_{r in R_t} n_r / sum_r n_r``, and divided by the accumulation steps when the Trainer
  would divide the whole batch's loss by them.

So with ``MultiTask(aggregator=Sum())`` or a ``Tracer``, ``.grad`` equals the plain Trainer's up
to float rounding (tested to 1e-5 after several steps). The per-task losses stored in the trace
are these scaled contributions, not per-task means. The Gram matrices are of the contributions'
gradients (they sum to the batch gradient); cosines do not depend on the scaling.

Several processes (``accelerate launch --num_processes 2`` or ``torchrun --nproc_per_node 2``,
data parallel): DDP's reducer is off during the task backward passes (ranks hold different
tasks, so they run different numbers of backward passes), and geomtrace reduces each update
when the step closes: each task's gradient is the mean over ranks, as in the core
(see ``geomtrace.Tracer``); a Tracer's unscheduled step gets one all-reduce of its summed
gradient, as DDP would. The Trainer counts N over all ranks and multiplies the loss by the
number of processes (``average_tokens_across_devices``), so for a loss that divides by N the
rank-mean of the task gradients is the task gradient of the global batch: the trace equals a
one-process run on the same global batch (tested to 1e-5 on 2 processes). For a loss that
ignores N it is what the plain Trainer would do on several processes. The recorded per-task
loss is the mean over all ranks of the rank's contribution (0 on a rank without rows of the
task), i.e. again the one-process contribution. Build the Tracer/MultiTask after
``TrainingArguments`` (refused otherwise, with that fix); only rank 0 writes the trace.

Precision: fp32, bf16, and fp16 with a GradScaler: the task gradients are unscaled before the
Gram matrices and the aggregation, and an overflow in any task makes the scaler skip the
update (see ``geomtrace.integrations._stepping.close_step``).

Refused, by name with the reason (``InvalidInputError``): DeepSpeed (its engine owns backward
and the gradients), accelerate's FSDP (it shards the model inside ``train()``, after the Tracer
was built on the unsharded model; geomtrace's FSDP2 capture must be built on the sharded model:
trace FSDP2 from your own loop, ``examples/torchrun_trace.py --fsdp``), Megatron-LM, XLA, and
tensor or context parallelism.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from geomtrace import InvalidInputError
from geomtrace.integrations._extras import require
from geomtrace.integrations._stepping import (
    check_loss_scaling,
    check_stepper,
    close_step,
    no_sync,
    unreduced_policies,
)

transformers = require("transformers")
require("accelerate")
from accelerate.utils import DistributedType  # noqa: E402  (after the extra's check)

__all__ = ["GeomtraceMixin", "GeomtraceTrainer", "TaskCollator", "with_geometry"]

IGNORE_INDEX = -100  # the label value Transformers losses ignore

#: accelerate's distributed types the mixin refuses, and why
_REFUSED = {
    DistributedType.DEEPSPEED: (
        "DeepSpeed's engine owns the backward pass and the gradients (engine.backward; ZeRO "
        "partitions, reduces and keeps them in its own buffers, so .grad is not the update), "
        "while geomtrace takes each task's gradient with torch.autograd.grad and writes the "
        "update into .grad"
    ),
    DistributedType.FSDP: (
        "accelerate shards the model inside train(), after the Tracer was built on the "
        "unsharded model, and geomtrace's FSDP2 capture must be built on the fully_shard "
        "model; trace FSDP2 from your own loop (examples/torchrun_trace.py --fsdp)"
    ),
    DistributedType.MEGATRON_LM: (
        "Megatron-LM splits layers across ranks (tensor/pipeline parallel) inside its own "
        "training step; geomtrace's reduction assumes every rank holds the whole model"
    ),
    DistributedType.XLA: (
        "XLA traces the step lazily; geomtrace's per-task capture and collectives are written "
        "for eager torch.distributed"
    ),
}


class TaskCollator:
    """Collates examples that each name their task, for :class:`GeomtraceTrainer`.

    Each example is a mapping with ``example[task_column]`` a task name (one of ``tasks``) or
    its index; the other keys go to ``collator`` (default: ``transformers.default_data_collator``)
    and the result gets ``batch[task_column]``, a LongTensor [B] of task indices.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        collator: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
        task_column: str = "task",
    ) -> None:
        self.tasks = list(tasks)
        self.index = {t: i for i, t in enumerate(self.tasks)}
        self.collator = collator if collator is not None else transformers.default_data_collator
        self.task_column = task_column

    def _task_index(self, value: Any) -> int:
        if isinstance(value, str):
            if value not in self.index:
                raise InvalidInputError(f"unknown task {value!r}; the tasks are {self.tasks}")
            return self.index[value]
        index = int(value)
        if not 0 <= index < len(self.tasks):
            raise InvalidInputError(
                f"task index {index} out of range: there are {len(self.tasks)} tasks"
            )
        return index

    def __call__(self, features: list[Mapping[str, Any]]) -> dict[str, Any]:
        column = self.task_column
        missing = [n for n, f in enumerate(features) if column not in f]
        if missing:
            raise InvalidInputError(
                f"example {missing[0]} of the batch has no {column!r} key naming its task"
            )
        indices = [self._task_index(f[column]) for f in features]
        batch = self.collator([{k: v for k, v in f.items() if k != column} for f in features])
        batch = dict(batch)
        batch[column] = torch.tensor(indices, dtype=torch.long)
        return batch


def _select_rows(inputs: Mapping[str, Any], rows: torch.Tensor, batch_size: int) -> dict:
    """The sub-batch of ``rows``: every tensor with a leading batch dimension is indexed."""
    return {
        k: v.index_select(0, rows)
        if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == batch_size
        else v
        for k, v in inputs.items()
    }


def _count_absent_losses_as_zero(step: Any) -> None:
    """Several processes, on a recorded step: a zero loss for each task that another rank saw
    and this one did not.

    The task losses here are contributions to the global batch loss (they sum to it), and the
    core records the mean over the ranks that saw a task; a rank without rows of a task
    contributed 0 to it, so it must count in that mean. Costs one all-reduce of K flags.
    """
    group = step._policy._process_group
    if group is None or not step.traced or not step._losses:
        return
    tasks = step._policy.tasks
    device = next(iter(step._losses.values()))[0].device
    seen = torch.tensor([float(t in step._losses) for t in tasks], device=device)
    torch.distributed.all_reduce(seen, group=group)
    for task, anywhere in zip(tasks, seen.tolist(), strict=True):
        if anywhere and task not in step._losses:
            step._losses[task] = [torch.zeros((), device=device)]


class GeomtraceMixin:
    """Per-task backward passes for any ``transformers.Trainer`` subclass; put it first::

        class Seq2SeqGeometry(GeomtraceMixin, Seq2SeqTrainer): ...
        class SFTGeometry(GeomtraceMixin, SFTTrainer): ...

    Args (keyword-only, besides the trainer's own):
        tracer: a :class:`geomtrace.Tracer` (trace the scheduled steps; the update is the plain
            summed-loss update).
        multitask: a :class:`geomtrace.MultiTask` instead (update with its aggregator, e.g.
            ``PCGrad()`` or ``GradVac()``; give it a ``tracer`` to record). Exactly one of the two.
        task_column: the batch key holding each row's task index (see :class:`TaskCollator`).

    The mixin overrides ``training_step`` (one forward per task through the trainer's own
    ``compute_loss``, so the trainer's loss, label smoothing, metrics and autocast apply to
    each task's sub-batch) and ``prediction_step`` (drops the task column, then calls the
    trainer's own: ``Seq2SeqTrainer`` still generates). A trainer whose own ``training_step``
    only wraps the base one in a context (TRL's ``SFTTrainer``: activation offloading) loses
    that context. The geomtrace step number is ``state.global_step``, the number of optimizer
    updates done.

    Several processes: ranks hold different tasks, so they call ``compute_loss`` different
    numbers of times; a ``compute_loss`` that issues collectives would pair them wrongly (TRL's
    trainers gather metrics there: refused on more than one process).
    """

    def __init__(
        self,
        *args: Any,
        tracer: Any = None,
        multitask: Any = None,
        task_column: str = "task",
        **kwargs: Any,
    ) -> None:
        self.geometry = check_stepper(tracer, multitask)
        self.task_column = task_column
        collator = kwargs.get("data_collator")
        if isinstance(collator, TaskCollator) and collator.tasks != list(self.geometry.tasks):
            raise InvalidInputError(
                f"the TaskCollator's tasks {collator.tasks} differ from the tracer's "
                f"{list(self.geometry.tasks)}: task indices would name the wrong tasks"
            )
        self._geometry_step = None
        self._loss_divides_by_items: bool | None = None  # probed once, see the module docstring
        super().__init__(*args, **kwargs)
        self._check_process_group()

    # The task column is not an argument of model.forward: keep remove_unused_columns from
    # dropping it before the collator sees it.
    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if self.task_column not in self._signature_columns:
            self._signature_columns.append(self.task_column)

    def _check_process_group(self) -> None:
        """Several processes: the geometry must reduce over them (built after torch.distributed
        was initialised, which ``TrainingArguments`` does under ``accelerate launch``/torchrun)."""
        world = self.args.world_size
        if world <= 1:
            return
        unreduced = unreduced_policies(self.geometry)
        if unreduced:
            raise InvalidInputError(
                f"this run has {world} processes but the geomtrace {' and '.join(unreduced)} "
                "was built before torch.distributed was "
                "initialised, so it would neither average task gradients over ranks nor write "
                "the trace from rank 0 only: build it after TrainingArguments(...), which sets "
                "up the process group under accelerate launch / torchrun"
            )

    def _check_supported(self) -> None:
        kind = self.accelerator.distributed_type
        if kind in _REFUSED:
            raise InvalidInputError(
                f"{type(self).__name__} does not support {kind.value}: {_REFUSED[kind]}. "
                "Supported: one process or data parallel (DDP: accelerate launch / torchrun)"
            )
        if self.args.world_size > 1:
            owner = next(c for c in type(self).__mro__ if "compute_loss" in vars(c))
            if owner.__module__.split(".")[0] == "trl":
                raise InvalidInputError(
                    f"{owner.__name__} on {self.args.world_size} processes is not supported: its "
                    "compute_loss gathers metrics over the ranks on every call, and the mixin "
                    "calls compute_loss once per task a rank holds, so ranks holding different "
                    "tasks would pair those gathers with different calls; run it on one process"
                )
        for size, what in ((self.get_tp_size(), "tensor"), (self.get_cp_size(), "context")):
            if size > 1:
                raise InvalidInputError(
                    f"{what} parallelism (size {size}) is not supported: geomtrace's "
                    "distributed reduction assumes every rank holds the whole model (DDP)"
                )

    def _loss_already_scaled(self, num_items_in_batch: Any) -> bool:
        """Whether ``compute_loss`` already divides by the whole update's item count (as the
        plain ``training_step`` decides it)."""
        explicit = getattr(self, "loss_is_scaled_for_ga", None)
        if explicit is not None:
            return bool(explicit)
        return bool(
            (self.model_accepts_loss_kwargs and num_items_in_batch is not None)
            or self.compute_loss_func is not None
        )

    def _divides_by_items(self, model: torch.nn.Module, sub: dict, num_items: Any) -> bool:
        """Whether ``compute_loss`` divides by ``num_items_in_batch``: its loss halves when
        that count doubles (one probe, no gradients, dropout off)."""
        if self._loss_divides_by_items is None:
            model.eval()
            try:
                with torch.no_grad(), self.compute_loss_context_manager():
                    once = self.compute_loss(model, dict(sub), num_items_in_batch=num_items)
                    twice = self.compute_loss(model, dict(sub), num_items_in_batch=2 * num_items)
            finally:
                model.train()
            ratio = (once / twice).item()
            self._loss_divides_by_items = abs(ratio - 2.0) < 1e-3
        return self._loss_divides_by_items

    def _item_counts(self, inputs: Mapping[str, Any], batch_size: int) -> torch.Tensor:
        """Loss items per row: labels != -100 (shifted for causal LMs), or 1 without labels."""
        labels = inputs.get("labels")
        if not torch.is_tensor(labels) or labels.dim() == 0 or labels.shape[0] != batch_size:
            return torch.ones(batch_size)
        if getattr(self, "_loss_shifts_labels", False) and labels.dim() > 1:
            labels = labels[..., 1:]
        return labels.ne(IGNORE_INDEX).reshape(batch_size, -1).sum(1)

    def training_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        if self.task_column not in inputs:
            raise InvalidInputError(
                f"the batch has no {self.task_column!r} column of task indices: give the Trainer "
                f"data_collator=TaskCollator(tasks) and a {self.task_column!r} key per example"
            )
        tasks = self.geometry.tasks
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        inputs = self._prepare_inputs(inputs)
        task_ids = inputs[self.task_column]
        inputs = {k: v for k, v in inputs.items() if k != self.task_column}
        batch_size = task_ids.shape[0]
        # One host sync per micro-batch: which tasks have rows decides the Python loop.
        counts = torch.bincount(task_ids, minlength=len(tasks)).tolist()
        if len(counts) > len(tasks) or task_ids.min() < 0:
            raise InvalidInputError(
                f"task indices must lie in 0..{len(tasks) - 1} (tasks {tasks}); got "
                f"{task_ids.tolist()}"
            )
        # How the plain Trainer treats the batch loss: already normalised over the update or not.
        scaled = self._loss_already_scaled(num_items_in_batch)
        items = self._item_counts(inputs, batch_size).to(task_ids.device)
        total_items = items.sum()

        if self._geometry_step is None:
            self._check_supported()
            self.geometry.follow()  # the Trainer moved the model after the user built it
            check_loss_scaling(self.geometry, self._grad_scaler())
            self._geometry_step = self.geometry.step(self.state.global_step).__enter__()
        step = self._geometry_step
        scaler = self._grad_scaler()
        total = None
        try:
            # DDP's reducer stays off: ranks run different numbers of backward passes (one per
            # task present), and geomtrace reduces the update when the step closes.
            with no_sync(model):
                for index, count in enumerate(counts):
                    if count == 0:
                        continue
                    rows = (task_ids == index).nonzero().squeeze(1)
                    sub = _select_rows(inputs, rows, batch_size)
                    # Decided before the training forward: compute_loss may pop "labels".
                    divided = (
                        scaled
                        and num_items_in_batch is not None
                        and self._divides_by_items(model, sub, num_items_in_batch)
                    )
                    with self.compute_loss_context_manager():
                        loss = self.compute_loss(model, sub, num_items_in_batch=num_items_in_batch)
                    if self.args.n_gpu > 1:
                        loss = loss.mean()
                    if not divided:
                        loss = loss * (items.index_select(0, rows).sum() / total_items)
                        if not scaled:
                            loss = loss / self.current_gradient_accumulation_steps
                    step.backward(tasks[index], scaler.scale(loss) if scaler is not None else loss)
                    total = loss.detach() if total is None else total + loss.detach()
        except BaseException as exc:
            self._geometry_step = None
            step.__exit__(type(exc), exc, exc.__traceback__)
            raise
        if self.accelerator.sync_gradients:  # the last micro-batch before the optimizer step
            self._geometry_step = None
            try:
                _count_absent_losses_as_zero(step)
            except BaseException as exc:
                step.__exit__(type(exc), exc, exc.__traceback__)
                raise
            close_step(step, scaler, model.parameters())
        return total

    def _grad_scaler(self) -> Any:
        return getattr(self.accelerator, "scaler", None)

    def prediction_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
        **kwargs: Any,
    ):
        inputs = {k: v for k, v in inputs.items() if k != self.task_column}
        return super().prediction_step(
            model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **kwargs
        )


class GeomtraceTrainer(GeomtraceMixin, transformers.Trainer):
    """The ready-made ``Trainer`` with :class:`GeomtraceMixin` (same arguments)."""


def with_geometry(trainer_class: type) -> type:
    """``trainer_class`` with :class:`GeomtraceMixin` in front, e.g. ``with_geometry(SFTTrainer)``
    (the same as ``class T(GeomtraceMixin, trainer_class): pass``)."""
    if not (isinstance(trainer_class, type) and issubclass(trainer_class, transformers.Trainer)):
        raise InvalidInputError(
            f"with_geometry needs a transformers.Trainer subclass, got {trainer_class!r}"
        )
    if issubclass(trainer_class, GeomtraceMixin):
        return trainer_class
    return type(f"Geomtrace{trainer_class.__name__}", (GeomtraceMixin, trainer_class), {})
