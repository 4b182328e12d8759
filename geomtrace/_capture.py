"""Per-task gradients of one step, and their Gram matrices per parameter group.

All K task gradients live in one float32 buffer ``B`` of shape [K, P] on the parameters'
device, its columns ordered group by group, so that group k is the column range
``offsets[k] = (a_k, b_k)`` and its Gram matrix is one matmul:

    G_k = B[:, a_k:b_k] @ B[:, a_k:b_k]^T        (K x K, fp32 accumulation)

Gradients of any floating dtype (fp16/bf16 under autocast) are accumulated into the fp32
buffer, so Gram matrices are fp32. Nothing here synchronises with the host: the buffer, the Gram
matrices and the combinations stay on the device; only the caller decides when K x K numbers
travel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from geomtrace._groups import ParameterGroup


class TaskGradients:
    """The gradients g_1..g_K of K tasks for one step, flattened per group.

    The buffer is allocated on first use (``reset``), so an object that is never used on an
    untraced step costs no memory.
    """

    def __init__(
        self,
        groups: Sequence[ParameterGroup],
        num_tasks: int,
        device: torch.device | str | None = None,
    ) -> None:
        self.groups = list(groups)
        self.num_tasks = num_tasks
        self.params = [p for group in self.groups for p in group.params]
        self.device = torch.device(device) if device is not None else self.params[0].device
        self.offsets: list[tuple[int, int]] = []
        start = 0
        for group in self.groups:
            self.offsets.append((start, start + group.numel))
            start += group.numel
        self.numel = start
        self.present = [False] * num_tasks
        self._buffer: torch.Tensor | None = None
        self._row_views: list[list[torch.Tensor]] = []

    @property
    def buffer(self) -> torch.Tensor:
        """The [K, P] float32 buffer (allocated by ``reset``)."""
        if self._buffer is None:
            self.reset()
        return self._buffer

    def reset(self) -> None:
        """Zero every task gradient and mark every task absent."""
        if self._buffer is None:
            self._buffer = torch.zeros(
                self.num_tasks, self.numel, dtype=torch.float32, device=self.device
            )
            # Per task, one view per parameter, shaped like the parameter: lets `add` use one
            # fused foreach kernel instead of a Python loop of copies.
            self._row_views = [
                _split_like(self._buffer[t], self.params) for t in range(self.num_tasks)
            ]
        else:
            self._buffer.zero_()
        self.present = [False] * self.num_tasks

    def release(self) -> None:
        """Free the buffer (it is reallocated by the next ``reset``)."""
        self._buffer = None
        self._row_views = []

    def add(self, task_index: int, grads: Sequence[torch.Tensor | None]) -> None:
        """Add one backward's gradients (aligned with ``self.params``; None = zero) to a task.

        Several calls for the same task in one step sum, as micro-batches do.
        """
        if self._buffer is None:
            self.reset()
        views = self._row_views[task_index]
        pairs = [(v, g) for v, g in zip(views, grads, strict=True) if g is not None]
        if pairs:
            dst, src = zip(*pairs, strict=True)
            torch._foreach_add_(list(dst), [g.to(torch.float32) for g in src])
        self.present[task_index] = True

    def gram(self) -> torch.Tensor:
        """Gram matrices of all groups, [G, K, K] float32; absent tasks' rows/columns are NaN."""
        buffer = self.buffer
        grams = torch.stack([buffer[:, a:b] @ buffer[:, a:b].T for a, b in self.offsets])
        if not all(self.present):
            absent = torch.tensor([not p for p in self.present], device=buffer.device)
            nan = torch.full_like(grams, float("nan"))
            mask = absent[None, :, None] | absent[None, None, :]
            grams = torch.where(mask, nan, grams)
        return grams

    def combine(self, weights: torch.Tensor) -> list[torch.Tensor]:
        """Per parameter, the combined gradient sum_i w_{k,i} g_i of its group k.

        ``weights`` is [G, K]; returns tensors shaped like ``self.params`` (float32 views of one
        flat vector), in ``self.params`` order.
        """
        buffer = self.buffer
        weights = weights.to(device=buffer.device, dtype=buffer.dtype)
        flat = torch.cat([weights[k] @ buffer[:, a:b] for k, (a, b) in enumerate(self.offsets)])
        return _split_like(flat, self.params)


def _split_like(flat: torch.Tensor, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Views of consecutive slices of ``flat`` shaped like ``params``."""
    sizes = [p.numel() for p in params]
    return [chunk.view(p.shape) for chunk, p in zip(flat.split(sizes), params, strict=True)]
