"""Lightning integration: a ``LightningModule`` mixin whose training step is one loss per task.

    from geomtrace.integrations.lightning import GeometryMixin

    class Model(GeometryMixin, L.LightningModule):
        def configure_geometry(self):                    # called on fit start, after device moves
            return gt.Tracer(self, tasks=LANGS, groups="all_layer", every=50, out="runs/pl")
        def task_losses(self, batch, batch_idx):         # {task: scalar loss}
            return {task: self.loss(rows) for task, rows in batch.items()}
        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

Automatic optimisation: the mixin's ``training_step`` calls ``task_losses`` and returns their
sum (what Lightning logs and hands to ``backward``); the mixin's ``backward`` then runs each
task's backward through the geomtrace step instead of one backward of the sum. The per-task
losses may come from separate forwards or from one shared forward (their backward passes keep
the graph alive as needed). They are divided by ``accumulate_grad_batches`` as Lightning divides
the summed loss, so with a ``Tracer`` (or ``MultiTask(aggregator=Sum())``) the update equals the
plain ``loss.backward()`` update. One geomtrace step spans one optimizer update: it opens at the
first backward of an accumulation window and closes in ``on_before_optimizer_step``, before
Lightning clips gradients and steps; its number is ``trainer.global_step``.

Manual optimisation: ``with self.geometry_step() as s: s.backward(task, loss)`` inside your own
``training_step``, then step your optimizer.

``configure_geometry`` returns a :class:`~geomtrace.Tracer` (trace only) or a
:class:`~geomtrace.MultiTask` (aggregate, e.g. with ``PCGrad()``/``GradVac()``); the result is
``self.geometry``. Build it there rather than in ``__init__`` so its buffers are created on the
device Lightning moved the model to (a geometry object set in ``__init__`` also works: its
buffer follows the parameters' device). Close its tracer yourself after ``fit`` (the trace is
committed snapshot by snapshot either way). If you override ``backward`` or
``on_before_optimizer_step``, call ``super()``.

Precision: 32-bit and bf16 work as they are. With fp16 and a GradScaler (``precision="16-mixed"``)
the task losses are scaled like Lightning's loss, and the step closes in the last ``backward``
of the update, before Lightning unscales ``.grad``: the captured task gradients are unscaled
first (the trace and the aggregator see true gradients), and what the step writes into
``.grad`` is rescaled for Lightning's own unscaling (see
``geomtrace.integrations._stepping.close_step``). An overflow in any task's gradient makes the
GradScaler skip the update and lower its scale, as after a plain backward.

Strategies: one device, and data parallel (``strategy="ddp"``, ``"ddp_spawn"``; several
processes, CPU with gloo or GPUs). Under DDP the mixin turns DDP's reducer off and the update
is reduced by geomtrace when the step closes: each task's gradient is the mean over ranks, as
in the core (see ``geomtrace.Tracer``), and a step that captures nothing (a Tracer's
unscheduled step) gets one all-reduce of its summed gradient, which is what DDP would have
done. Build the geometry in ``configure_geometry`` (it runs after the process group exists);
only rank 0 writes the trace. Refused, with the reason: ``deepspeed`` (its engine owns the
backward and the gradients), ``fsdp`` (Lightning's FSDP strategy wraps the model in FSDP1's
``FullyShardedDataParallel``; geomtrace's sharded capture is for FSDP2's ``fully_shard``) and
the other model-parallel strategies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

import geomtrace as gt
from geomtrace import InvalidInputError
from geomtrace.integrations._extras import require
from geomtrace.integrations._stepping import check_loss_scaling, close_step, unreduced_policies

require("lightning")

__all__ = ["GeometryMixin"]


class GeometryMixin:
    """Mixin for a ``LightningModule`` (put it first in the bases); see the module docstring."""

    geometry: Any = None

    # -- user hooks ------------------------------------------------------------------------
    def configure_geometry(self) -> Any:
        """Return the ``Tracer`` or ``MultiTask`` to run every step (default: ``self.geometry``)."""
        return self.geometry

    def task_losses(self, batch: Any, batch_idx: int) -> Mapping[str, torch.Tensor]:
        """Return ``{task: scalar loss}`` for one batch (automatic optimisation)."""
        raise NotImplementedError(
            f"{type(self).__name__} must define task_losses(batch, batch_idx) -> {{task: loss}}"
        )

    # -- Lightning hooks -------------------------------------------------------------------
    def on_fit_start(self) -> None:
        geometry = self.configure_geometry()
        if not isinstance(geometry, gt.Tracer | gt.MultiTask):
            raise InvalidInputError(
                f"{type(self).__name__}.configure_geometry() must return a geomtrace Tracer or "
                f"MultiTask, got {type(geometry).__name__}"
            )
        self._check_strategy()
        unreduced = unreduced_policies(geometry)
        if self.trainer.world_size > 1 and unreduced:
            raise InvalidInputError(
                f"this run has {self.trainer.world_size} processes but the geomtrace "
                f"{' and '.join(unreduced)} was built before torch.distributed was initialised "
                "(it would neither average task gradients over ranks nor write from rank 0 "
                "only): build it in configure_geometry()"
            )
        check_loss_scaling(geometry, self._grad_scaler())
        geometry.follow()  # Lightning moved the model to its device in setup
        ddp = self._ddp_module()
        if ddp is not None:
            # DDP's reducer stays off: with one backward per task (or K backward passes of a
            # shared forward), its per-backward all-reduce would not match up; geomtrace
            # reduces the update when the step closes (see the module docstring).
            ddp.require_backward_grad_sync = False
        self.geometry = geometry
        self._geometry_step = None
        self._pending_task_losses = None
        super().on_fit_start()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        losses = dict(self.task_losses(batch, batch_idx))
        if not losses:
            raise InvalidInputError("task_losses returned no losses")
        self._pending_task_losses = losses
        return torch.stack([loss.reshape(()) for loss in losses.values()]).sum()

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        losses = getattr(self, "_pending_task_losses", None)
        if losses is None:  # not from our training_step (e.g. manual_backward of your own)
            super().backward(loss, *args, **kwargs)
            return
        self._pending_task_losses = None
        if self._geometry_step is None:
            self._geometry_step = self.geometry.step(self.trainer.global_step).__enter__()
        accumulate = self.trainer.accumulate_grad_batches
        scaler = self._grad_scaler()
        scaled = {}
        for task, task_loss in losses.items():
            task_loss = task_loss / accumulate if accumulate > 1 else task_loss
            scaled[task] = scaler.scale(task_loss) if scaler is not None else task_loss
        try:
            self._geometry_step.backward_shared(scaled)
        except BaseException as exc:
            step, self._geometry_step = self._geometry_step, None
            step.__exit__(type(exc), exc, exc.__traceback__)
            raise
        # The last backward of the update closes the step: the precision plugin unscales
        # .grad (fp16) right after the closure, before on_before_optimizer_step.
        if not self.trainer.fit_loop._should_accumulate():
            self._close_geometry_step()

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        # Normally closed in backward already; this closes a step the loop ended otherwise,
        # before Lightning clips gradients and steps.
        self._close_geometry_step()
        super().on_before_optimizer_step(optimizer)

    def _close_geometry_step(self) -> None:
        step = getattr(self, "_geometry_step", None)
        if step is not None:
            self._geometry_step = None
            close_step(step, self._grad_scaler(), self.parameters())

    # -- manual optimisation ---------------------------------------------------------------
    def geometry_step(self) -> Any:
        """The geomtrace step of the current update, for manual optimisation:
        ``with self.geometry_step() as s: s.backward(task, loss)``; under DDP the update is
        reduced over ranks when the ``with`` block ends."""
        if self.geometry is None:
            raise InvalidInputError("no geometry: define configure_geometry() or set self.geometry")
        if self._grad_scaler() is not None:
            raise InvalidInputError(
                "geometry_step() with fp16 and a GradScaler is not supported: the task losses "
                "would need the scaler's scale before backward; use automatic optimisation "
                "(task_losses), bf16 or fp32"
            )
        self.geometry.follow()
        return _ManualStep(self, self.geometry.step(self.trainer.global_step))

    def _grad_scaler(self) -> Any:
        return getattr(self.trainer.precision_plugin, "scaler", None)

    def _ddp_module(self) -> Any:
        model = getattr(self.trainer.strategy, "model", None)
        return model if isinstance(model, torch.nn.parallel.DistributedDataParallel) else None

    def _check_strategy(self) -> None:
        from lightning.pytorch import strategies

        strategy = self.trainer.strategy
        refused = {
            "DeepSpeedStrategy": "DeepSpeed's engine owns the backward pass and the gradients "
            "(ZeRO partitions and reduces them in its own buffers), while geomtrace takes each "
            "task's gradient with torch.autograd.grad and writes the update into .grad",
            "FSDPStrategy": "Lightning's FSDP strategy wraps the model in FSDP1's "
            "FullyShardedDataParallel, whose flat parameters geomtrace cannot group; "
            "geomtrace's sharded capture is for FSDP2's fully_shard (your own loop: "
            "examples/torchrun_trace.py --fsdp)",
            "XLAStrategy": "XLA traces the step lazily; geomtrace's per-task capture and "
            "collectives are written for eager torch.distributed",
        }
        name = type(strategy).__name__
        for cls in type(strategy).__mro__:
            if cls.__name__ in refused:
                raise InvalidInputError(
                    f"GeometryMixin does not support {name}: {refused[cls.__name__]}. "
                    "Supported: one device, strategy='ddp' or 'ddp_spawn'"
                )
        if not isinstance(strategy, strategies.SingleDeviceStrategy | strategies.DDPStrategy):
            raise InvalidInputError(
                f"GeometryMixin does not support {name}: geomtrace's reduction assumes every "
                "rank holds the whole model (data parallel). Supported: one device, "
                "strategy='ddp' or 'ddp_spawn'"
            )


class _ManualStep:
    """``with module.geometry_step() as s``: the step, closed (and reduced over ranks when it
    captured nothing) by :func:`~geomtrace.integrations._stepping.close_step`."""

    def __init__(self, module: GeometryMixin, step: Any) -> None:
        self.module, self.step = module, step

    def __enter__(self) -> Any:
        return self.step.__enter__()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.step.__exit__(exc_type, exc, tb)
            return
        close_step(self.step, None, self.module.parameters())
