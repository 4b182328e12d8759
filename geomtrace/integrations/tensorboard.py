"""TensorBoard: per traced step, scalars per group and the cosine heatmap as an image.

    from geomtrace.integrations.tensorboard import TensorBoardSink

    tracer = gt.Tracer(model, tasks=langs, groups="enc_dec", every=50, out="runs/a")
    TensorBoardSink("runs/a/tb", tasks=langs).attach(tracer)   # or SummaryWriter(...)
    ...train as usual...; tracer.close()

    export_trace("runs/a", "runs/a/tb")                        # or afterwards, from the trace

Written through ``torch.utils.tensorboard.SummaryWriter`` at the snapshot's step, per group g:

- ``geomtrace/<g>/mean_cosine``, ``geomtrace/<g>/conflict_rate`` (fraction of negative
  off-diagonal cosines), ``geomtrace/<g>/gradvac_target_mean`` when the snapshot carries GradVac
  targets (see :func:`geomtrace.integrations._scalars.snapshot_scalars` for the definitions);
- ``geomtrace/loss/<task>``: the task's loss of the snapshot;
- image ``geomtrace/<g>/cosine``: the K x K cosine heatmap (matplotlib, Agg canvas, no pyplot),
  for the groups named by ``images`` (all by default; ``False`` for none).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

import geomtrace as gt
from geomtrace import InvalidInputError
from geomtrace.integrations._extras import require
from geomtrace.integrations._scalars import snapshot_scalars

require("tensorboard")

__all__ = ["TensorBoardSink", "export_trace", "heatmap_image"]

log = logging.getLogger(__name__)

TARGETS = "gradvac_target"  # the array name GradVac's targets are recorded under


def heatmap_image(cosine: np.ndarray, tasks: Sequence[str], title: str) -> np.ndarray:
    """The cosine matrix [K, K] drawn as an RGB image [H, W, 3] uint8 (diverging, -1..1)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    size = 1.6 + 0.35 * len(tasks)
    figure = Figure(figsize=(size + 0.9, size), dpi=80)
    canvas = FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    shown = np.ma.masked_invalid(np.asarray(cosine, dtype=np.float64))
    image = ax.imshow(shown, vmin=-1.0, vmax=1.0, cmap="RdBu_r")
    ax.set_xticks(range(len(tasks)), labels=list(tasks), rotation=90, fontsize=7)
    ax.set_yticks(range(len(tasks)), labels=list(tasks), fontsize=7)
    ax.set_title(title, fontsize=8)
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    figure.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class TensorBoardSink:
    """Writes each snapshot's scalars and heatmaps to TensorBoard.

    Args:
        writer: a ``SummaryWriter`` or a log directory to create one in.
        tasks: the task names, in matrix order.
        groups: the group names in matrix order (``attach`` fills them in from the tracer).
        images: ``True`` (every group), ``False`` (none) or the group names to draw.
        prefix: the tag prefix.
    """

    def __init__(
        self,
        writer: Any,
        tasks: Sequence[str],
        groups: Sequence[str] | None = None,
        images: bool | Sequence[str] = True,
        prefix: str = "geomtrace",
    ) -> None:
        if isinstance(writer, str | os.PathLike):
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(writer))
        self.writer = writer
        self.tasks = list(tasks)
        self.groups = list(groups) if groups is not None else None
        self.images = images
        self.prefix = prefix

    def _draws(self, group: str) -> bool:
        if isinstance(self.images, bool):
            return self.images
        return group in self.images

    def log(
        self,
        step: int,
        gram: Any,
        losses: Mapping[str, float] | None = None,
        arrays: Mapping[str, Any] | None = None,
    ) -> None:
        """Write the scalars (and images) of one snapshot: ``gram`` [G, K, K]."""
        if self.groups is None:
            raise InvalidInputError(
                "TensorBoardSink needs the group names: pass groups= or attach()"
            )
        gram = _numpy(gram)
        targets = _numpy(arrays[TARGETS]) if arrays and TARGETS in arrays else None
        for (group, name), value in snapshot_scalars(gram, self.groups, targets).items():
            self.writer.add_scalar(f"{self.prefix}/{group}/{name}", value, step)
        for task, value in (losses or {}).items():
            self.writer.add_scalar(f"{self.prefix}/loss/{task}", float(value), step)
        if self.images is not False:
            cosine = gt.cosine_from_gram(gram)
            for k, group in enumerate(self.groups):
                if self._draws(group):
                    picture = heatmap_image(cosine[k], self.tasks, f"{group}, step {step}")
                    self.writer.add_image(
                        f"{self.prefix}/{group}/cosine", picture, step, dataformats="HWC"
                    )
        self.writer.flush()

    def attach(self, tracer: Any) -> TensorBoardSink:
        """Log every snapshot ``tracer`` records (its own steps, or a MultiTask's through it)."""
        if self.groups is None:
            self.groups = [g.name for g in tracer.groups]
        if list(tracer.tasks) != self.tasks:
            raise InvalidInputError(
                f"the tracer's tasks {list(tracer.tasks)} differ from {self.tasks}"
            )
        # Every recorded snapshot (the Tracer's own steps, a MultiTask's, record() by hand).
        tracer.add_listener(
            lambda step, gram, losses, arrays, source: self.log(step, gram, losses, arrays)
        )
        return self

    def close(self) -> None:
        self.writer.close()


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, possibly on an accelerator
        value = value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def export_trace(
    run: str | os.PathLike,
    log_dir: str | os.PathLike,
    images: bool | Sequence[str] = True,
) -> int:
    """Write every snapshot of the trace in ``run`` to TensorBoard in ``log_dir``.

    Returns the number of snapshots written.
    """

    with gt.open_trace(run) as trace:
        grams = np.stack([trace.gram(g) for g in trace.groups], axis=1)  # [S, G, K, K]
        targets = None
        if TARGETS in trace.array_names():
            stacked = trace.array(TARGETS)
            if stacked.shape[0] == len(trace.steps):
                targets = stacked
            else:
                log.warning(
                    "%s is stored at %d of %d snapshots: its scalars are left out",
                    TARGETS,
                    stacked.shape[0],
                    len(trace.steps),
                )
        frame = trace.losses()
        losses = {
            int(step): dict(zip(rows.task, rows.loss, strict=True))
            for step, rows in frame.groupby("step")
        }
        sink = TensorBoardSink(log_dir, trace.tasks, trace.groups, images=images)
        try:
            for n, step in enumerate(trace.steps.tolist()):
                arrays = {TARGETS: targets[n]} if targets is not None else None
                sink.log(step, grams[n], losses.get(step), arrays)
        finally:
            sink.close()
        return len(trace.steps)
