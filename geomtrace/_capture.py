"""Per-task gradients of one step, and their Gram matrices per parameter group.

All K task gradients live in one float32 buffer ``B`` of shape [K, P] on the parameters'
device, its columns ordered group by group, so that group k is the column range
``offsets[k] = (a_k, b_k)`` and its Gram matrix is one matmul:

    G_k = B[:, a_k:b_k] @ B[:, a_k:b_k]^T        (K x K, fp32 accumulation)

Gradients of any floating dtype (fp16/bf16 under autocast) are accumulated into the fp32
buffer, so Gram matrices are fp32. Nothing here synchronises with the host: the buffer, the Gram
matrices and the combinations stay on the device (task presence is tracked both as host booleans
and as a device mask, so masking absent tasks needs no host -> device copy); only the caller
decides when K x K numbers travel.

Under torch.distributed (an initialised process group with W > 1 ranks), every task gradient is
the mean over ranks, as DDP's: ``gram`` reduce-scatters each task's row so every rank owns a
column shard, computes partial Gram matrices there and all-reduces the [G, K, K] result;
``combine`` combines on the shard and all-gathers the result (see ``geomtrace._distributed``).
``gram`` and ``combine`` are then collective calls: every rank must make them, in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from geomtrace import _distributed
from geomtrace._groups import ParameterGroup


class TaskGradients:
    """The gradients g_1..g_K of K tasks for one step, flattened per group.

    The buffer is allocated on first use (``reset``), so an object that is never used on an
    untraced step costs no memory.

    ``process_group``: ``"auto"`` (default) reduces over the default group when
    torch.distributed is initialised with several ranks; None disables the reduction.
    """

    def __init__(
        self,
        groups: Sequence[ParameterGroup],
        num_tasks: int,
        device: torch.device | str | None = None,
        process_group: Any = _distributed.AUTO,
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
        self.process_group = _distributed.resolve_group(process_group)
        self.sharding = (
            _distributed.Sharding.make(
                self.offsets,
                self.numel,
                _distributed.world_size(self.process_group),
                _distributed.rank(self.process_group),
            )
            if self.process_group is not None
            else None
        )
        self.present = [False] * num_tasks
        #: per parameter, whether any ``add`` since ``reset`` gave it a gradient (host-side)
        self.touched = [False] * len(self.params)
        self._buffer: torch.Tensor | None = None
        self._present_mask: torch.Tensor | None = None
        self._row_views: list[list[torch.Tensor]] = []
        self._shard: torch.Tensor | None = None  # [K, S] this rank's reduced columns
        self._rows_clean = False  # absent tasks' rows zeroed since the last reset

    @property
    def buffer(self) -> torch.Tensor:
        """The [K, P] float32 buffer of this rank's (unreduced) gradients (allocated by ``reset``)."""
        if self._buffer is None:
            self.reset()
        self._zero_absent_rows()
        return self._buffer[:, : self.numel]

    def _zero_absent_rows(self) -> None:
        # `add` overwrites a task's row on its first gradient of the step instead of `reset`
        # zeroing all K x P floats (a measurable share of a traced step); rows of tasks that got
        # no gradient still hold the previous step's values and are zeroed here, once, before
        # any read (Gram, combination, reduction): absent tasks must count as zero, never as
        # stale or uninitialised numbers (0 * NaN would poison a combination).
        if not self._rows_clean:
            for t, present in enumerate(self.present):
                if not present:
                    self._buffer[t].zero_()
            self._rows_clean = True

    def reset(self) -> None:
        """Mark every task absent: each task's row restarts from zero at its next ``add``."""
        if self._buffer is None:
            # Distributed: rows padded to W * S columns so each row reduce-scatters evenly.
            width = self.sharding.padded if self.sharding is not None else self.numel
            self._buffer = torch.zeros(
                self.num_tasks, width, dtype=torch.float32, device=self.device
            )
            self._present_mask = torch.zeros(self.num_tasks, dtype=torch.bool, device=self.device)
            # Per task, one view per parameter, shaped like the parameter: lets `add` use one
            # fused foreach kernel instead of a Python loop of copies.
            self._row_views = [
                _split_like(self._buffer[t, : self.numel], self.params)
                for t in range(self.num_tasks)
            ]
        else:
            self._present_mask.zero_()
        self._shard = None
        self._rows_clean = False
        self.present = [False] * self.num_tasks
        self.touched = [False] * len(self.params)

    def release(self) -> None:
        """Free the buffer (it is reallocated by the next ``reset``)."""
        self._buffer = None
        self._present_mask = None
        self._shard = None
        self._row_views = []

    def add(self, task_index: int, grads: Sequence[torch.Tensor | None]) -> None:
        """Add one backward's gradients (aligned with ``self.params``; None = zero) to a task.

        Several calls for the same task in one step sum, as micro-batches do.
        """
        if self._buffer is None:
            self.reset()
        if self._shard is not None:
            raise RuntimeError("TaskGradients.add after gram/combine in the same step: reset first")
        views = self._row_views[task_index]
        first = not self.present[task_index]
        dst, src = [], []
        for n, (v, g) in enumerate(zip(views, grads, strict=True)):
            if g is not None:
                dst.append(v)
                src.append(g.to(torch.float32))
                self.touched[n] = True
            elif first:
                v.zero_()  # no gradient from this backward: the row starts at zero here
        if dst:
            # The first backward of a task in a step overwrites its row (no K x P zeroing in
            # reset); later micro-batches add to it.
            (torch._foreach_copy_ if first else torch._foreach_add_)(dst, src)
        if not self.present[task_index]:
            # A fill kernel with a scalar argument: no host -> device copy, no sync.
            self._present_mask[task_index].fill_(True)
        self.present[task_index] = True

    def _reduced(self) -> torch.Tensor:
        """This rank's [K, S] shard of the rank-averaged task gradients (reduce-scatter, once)."""
        if self._shard is None:
            if self._buffer is None:
                self.reset()
            self._zero_absent_rows()
            sharding, group = self.sharding, self.process_group
            shard = torch.empty(
                self.num_tasks, sharding.shard_size, dtype=torch.float32, device=self.device
            )
            # One reduce-scatter per task row (each row is contiguous, chunk r -> rank r); all
            # issued before waiting so the backend can pipeline them.
            works = [
                _distributed.reduce_scatter(shard[t], self._buffer[t], group, async_op=True)
                for t in range(self.num_tasks)
            ]
            for work in works:
                work.wait()
            shard.div_(sharding.world_size)
            self._shard = shard
        return self._shard

    def gram(self) -> torch.Tensor:
        """Gram matrices of all groups, [G, K, K] float32; absent tasks' rows/columns are NaN.

        Distributed: the Gram matrices of the rank-averaged gradients (collective call); a task
        is present when any rank saw it.
        """
        if self.sharding is None:
            buffer = self.buffer
            grams = torch.stack([buffer[:, a:b] @ buffer[:, a:b].T for a, b in self.offsets])
            if all(self.present):
                return grams
            present = self._present_mask
        else:
            shard = self._reduced()
            K = self.num_tasks
            partial = [
                shard[:, a:b] @ shard[:, a:b].T
                if b > a
                else torch.zeros(K, K, dtype=shard.dtype, device=shard.device)
                for a, b in self.sharding.local
            ]
            # Partial Gram matrices and presence flags travel in one all-reduce.
            packed = torch.cat([torch.stack(partial).reshape(-1), self._present_mask.float()])
            _distributed.all_reduce_sum(packed, self.process_group)
            grams = packed[:-K].view(len(self.offsets), K, K)
            present = packed[-K:] > 0
        nan = torch.full_like(grams, float("nan"))
        absent = ~present
        return torch.where(absent[None, :, None] | absent[None, None, :], nan, grams)

    def combine(self, weights: torch.Tensor) -> list[torch.Tensor]:
        """Per parameter, the combined gradient sum_i w_{k,i} g_i of its group k.

        ``weights`` is [G, K]; returns tensors shaped like ``self.params`` (float32 views of one
        flat vector of P floats, the only allocation), in ``self.params`` order. Distributed:
        combined on this rank's shard, then all-gathered (collective call).
        """
        weights = weights.to(device=self.device, dtype=torch.float32)
        if self.sharding is None:
            buffer = self.buffer
            flat = torch.empty(self.numel, dtype=torch.float32, device=self.device)
            for k, (a, b) in enumerate(self.offsets):
                torch.mv(buffer[:, a:b].T, weights[k], out=flat[a:b])
            return _split_like(flat, self.params)
        shard = self._reduced()
        local = torch.zeros(shard.shape[1], dtype=torch.float32, device=self.device)
        for k, (a, b) in enumerate(self.sharding.local):
            if b > a:
                torch.mv(shard[:, a:b].T, weights[k], out=local[a:b])
        full = torch.empty(self.sharding.padded, dtype=torch.float32, device=self.device)
        _distributed.all_gather(full, local, self.process_group)
        return _split_like(full[: self.numel], self.params)


def _split_like(flat: torch.Tensor, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Views of consecutive slices of ``flat`` shaped like ``params``."""
    sizes = [p.numel() for p in params]
    return [chunk.view(p.shape) for chunk, p in zip(flat.split(sizes), params, strict=True)]
