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

Precision: 32-bit and bf16 work as they are. With fp16 and a GradScaler the task losses are
scaled like Lightning's loss (Gram matrices in scaled units, cosines unaffected); a
``MultiTask`` is refused there, since Lightning unscales ``.grad`` before the combined gradient
would be written. Single-process strategies only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

import geomtrace as gt
from geomtrace import InvalidInputError
from geomtrace.integrations._extras import require

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
        if self.trainer.world_size > 1:
            raise InvalidInputError(
                f"GeometryMixin runs in one process; this run has world size "
                f"{self.trainer.world_size}"
            )
        if isinstance(geometry, gt.MultiTask) and self._grad_scaler() is not None:
            raise InvalidInputError(
                "MultiTask with fp16 mixed precision (GradScaler) is not supported: Lightning "
                "unscales .grad before the combined gradient exists; use precision='bf16-mixed' "
                "or '32'"
            )
        geometry.follow()  # Lightning moved the model to its device in setup
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

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        # Close the step here: a MultiTask writes the combined .grad on exit, and Lightning
        # clips gradients right after this hook.
        step = getattr(self, "_geometry_step", None)
        if step is not None:
            self._geometry_step = None
            step.__exit__(None, None, None)
        super().on_before_optimizer_step(optimizer)

    # -- manual optimisation ---------------------------------------------------------------
    def geometry_step(self) -> Any:
        """The geomtrace step of the current update, for manual optimisation:
        ``with self.geometry_step() as s: s.backward(task, loss)``."""
        if self.geometry is None:
            raise InvalidInputError("no geometry: define configure_geometry() or set self.geometry")
        self.geometry.follow()
        return self.geometry.step(self.trainer.global_step)

    def _grad_scaler(self) -> Any:
        return getattr(self.trainer.precision_plugin, "scaler", None)
