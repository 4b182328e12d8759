"""Per-task gradients of one step, and their Gram matrices per parameter group.

The capture protocol (:class:`Capture`) is what the step class (``geomtrace._step.Step``) talks
to; exact capture (:class:`TaskGradients`, here) and sketch capture
(:class:`~geomtrace._sketch.TaskSketches`) both implement it, so the Tracer and MultiTask never
ask which one they hold. One step's life::

    capture.reset()                                   # every task absent
    capture.backward(i, loss, into_grad=..., half=h)  # per micro-batch (or add(i, grads, h))
    capture.gram()                                    # [G, K, K] on the device; absent NaN
    capture.split_half()                              # [G, K, 3] (halves=True only)
    capture.sum_into_grad()        # Tracer: make .grad the (rank-averaged) summed update
    capture.combine_into_grad(w)   # MultiTask: .grad += sum_i w_gi g_i (exact capture only)

Exact capture. All K task gradients live in one float32 buffer ``B`` of shape [K, P] on the
parameters' device, its columns ordered group by group, so that group k is the column range
``offsets[k] = (a_k, b_k)`` and its Gram matrix is one matmul:

    G_k = B[:, a_k:b_k] @ B[:, a_k:b_k]^T        (K x K, fp32 accumulation)

Gradients of any floating dtype (fp16/bf16 under autocast) are accumulated into the fp32
buffer, so Gram matrices are fp32. Nothing here synchronises with the host: the buffer, the Gram
matrices and the combinations stay on the device (task presence is tracked both as host booleans
and as a device mask, so masking absent tasks needs no host -> device copy); only the caller
decides when K x K numbers travel.

Split halves (``halves=True``). Each backward is credited to half 0 (``a_i``) or half 1
(``b_i``) of its task; the task's gradient is still the full ``g_i = a_i + b_i`` (the Gram, the
combination and ``.grad`` are unchanged). The buffer gets K extra rows holding ``a_i`` only, and
per group ``gram`` also yields, in O(K P) more work (two row-wise dot products per group; no 2K x 2K Gram)::

    aa = |a|^2,   ag = a . g   =>   bb = |g|^2 - 2 ag + aa,   ab = ag - aa

``split_half()`` returns ``[G, K, 3] = (aa, bb, ab)``, NaN for a task that got no gradient in
one of its halves (see ``geomtrace._reliability`` for what they estimate).

Non-finite gradients. A task whose gradient in any group is NaN or infinite (|g|^2 not finite,
e.g. a NaN loss) is reported like an absent task (NaN rows and columns in ``gram``, so
aggregators give it weight 0) and flagged in ``nonfinite()``; ``combine`` zeroes its row first
(0 x NaN would be NaN), so a combination over the other tasks stays finite.

Under torch.distributed (an initialised process group with W > 1 ranks), every task gradient is
the mean over ranks, as DDP's: ``gram`` reduce-scatters each task's row so every rank owns a
column shard, computes partial Gram matrices there and all-reduces the [G, K, K] result;
``combine`` combines on the shard and all-gathers the result (see ``geomtrace._distributed``).
``gram`` and ``combine`` are then collective calls: every rank must make them, in the same order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from geomtrace import _distributed
from geomtrace._errors import InvalidInputError
from geomtrace._groups import ParameterGroup


def accumulate_grads(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None]) -> None:
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


class LossWithoutGradient(InvalidInputError):
    """A task's loss reaches none of the traced parameters (raised by the captures; the step
    names the task)."""


def check_reaches_params(grads: Sequence[torch.Tensor | None]) -> None:
    """Refuse a backward that gave no gradient to any traced parameter.

    ``autograd.grad(..., allow_unused=True)`` returns None for every parameter the loss does
    not depend on; all None means the loss was computed by another model (or from detached
    tensors), and accepting it would record a task with no gradient anywhere.
    """
    if all(g is None for g in grads):
        raise LossWithoutGradient(
            "its loss reaches none of the traced model's trainable parameters (computed by "
            "another model, or from detached tensors): there is no gradient to capture"
        )


class Capture(ABC):
    """The capture protocol: K task gradients of one step, reduced to per-group Gram matrices.

    Shared state (host-side, set up once): ``groups``, ``num_tasks``, ``params`` (the groups'
    parameters in column order), ``offsets`` (column range per group), ``numel``, ``device``,
    ``process_group`` (None: one process), ``halves``; per step: ``present`` (host bools per
    task) and ``touched`` (host bools per parameter: did any backward reach it).

    Subclasses implement ``reset``, ``release``, ``add``, ``backward``, ``gram``, ``combine``,
    ``sum_into_grad`` and the ``present_mask`` property; ``can_combine`` says whether
    ``combine`` works (False: it raises ``InvalidInputError`` naming the fix).
    """

    #: whether ``combine`` can form sum_i w_i g_i (sketches cannot: they are projections)
    can_combine: ClassVar[bool] = True

    def __init__(
        self,
        groups: Sequence[ParameterGroup],
        num_tasks: int,
        device: torch.device | str | None = None,
        process_group: Any = _distributed.AUTO,
        halves: bool = False,
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
        self.halves = bool(halves)
        self.present = [False] * num_tasks
        #: per half (0, 1) and task, whether a backward was credited to that half (host-side)
        self.present_halves = [[False] * num_tasks, [False] * num_tasks]
        #: per parameter, whether any ``add`` since ``reset`` gave it a gradient (host-side)
        self.touched = [False] * len(self.params)
        self._nonfinite: torch.Tensor | None = None
        self._ranks_checked = False

    # -- placement ---------------------------------------------------------------------------
    def to(self, device: torch.device | str) -> Capture:
        """Keep the buffers on ``device`` from now on (freed now, reallocated there on use)."""
        device = torch.device(device)
        if device != self.device:
            self.release()
            self.device = device
        return self

    def follow(self) -> Capture:
        """Move to the device the parameters live on now (after ``model.to(...)``)."""
        return self.to(self.params[0].device)

    # -- agreement across ranks ----------------------------------------------------------------
    def check_ranks_agree(self, tasks: Sequence[str]) -> None:
        """Distributed: refuse, on every rank, ranks that disagree on the tasks (names and
        order), the groups, the parameters (names, shapes, dtypes) or the capture (kind,
        halves, sketch dimension and seed). Called by the Tracer and MultiTask before the
        first capturing step's first collective, once (one all-gather of 4 int64 per rank);
        without the check, ranks whose buffers differ in size hang in the reduce-scatter
        until the process group times out, and ranks with the tasks in another order mix two
        tasks' gradients in every row without any error."""
        if self._ranks_checked or self.process_group is None:
            return
        sketch = getattr(self, "sketch", None)
        parts = {
            "tasks (names and order)": list(tasks),
            "parameter groups": [g.name for g in self.groups],
            "parameters (names, shapes, dtypes)": [
                [name, list(p.shape), str(p.dtype)]
                for g in self.groups
                for name, p in zip(g.param_names, g.params, strict=True)
            ],
            "capture (kind, halves, sketch)": [
                type(self).__name__,
                self.halves,
                [sketch.dim, sketch.coeffs] if hasattr(sketch, "coeffs") else None,
            ],
        }
        _distributed.check_ranks_agree(
            parts,
            self.process_group,
            self.device,
            fix="build the Tracer/MultiTask from the same model, tasks and options on every rank",
        )
        self._ranks_checked = True

    # -- one step ----------------------------------------------------------------------------
    @abstractmethod
    def reset(self) -> None:
        """Start a step: every task absent (and every half)."""

    @abstractmethod
    def release(self) -> None:
        """Free the buffers (reallocated by the next ``reset``)."""

    @abstractmethod
    def add(
        self, task_index: int, grads: Sequence[torch.Tensor | None], half: int | None = None
    ) -> None:
        """Add one backward's gradients (aligned with ``params``; None = zero) to a task, and
        to half ``half`` (0 or 1) of it when ``halves``; repeated calls sum (micro-batches)."""

    @abstractmethod
    def backward(
        self,
        task_index: int,
        loss: torch.Tensor,
        retain_graph: bool = False,
        into_grad: bool = True,
        half: int | None = None,
    ) -> None:
        """Capture the gradient of ``loss`` for a task; ``into_grad``: also accumulate it into
        ``.grad`` as ``loss.backward()`` would (distributed: see ``sum_into_grad``)."""

    @property
    @abstractmethod
    def present_mask(self) -> torch.Tensor:
        """[K] bool on the device: tasks that got a gradient this step (any rank)."""

    @abstractmethod
    def gram(self) -> torch.Tensor:
        """[G, K, K] float32 Gram matrices; absent and non-finite tasks' rows/columns NaN."""

    @abstractmethod
    def combine(self, weights: torch.Tensor) -> list[torch.Tensor]:
        """Per parameter, sum_i w_gi g_i of its group g (``weights`` [G, K]); or raise."""

    @abstractmethod
    def sum_into_grad(self) -> None:
        """After a step of ``backward(..., into_grad=True)``: make ``.grad`` hold the summed
        update (one process: already there; distributed: the rank average, as DDP's)."""

    def split_half(self) -> torch.Tensor:
        """[G, K, 3] = (a.a, b.b, a.b) per group and task (``halves=True`` only)."""
        raise InvalidInputError(f"{type(self).__name__} was not built with halves=True")

    def nonfinite(self) -> torch.Tensor:
        """[K] bool on the device: present tasks whose gradient was NaN/inf in the last gram."""
        if self._nonfinite is None:
            return torch.zeros(self.num_tasks, dtype=torch.bool, device=self.device)
        return self._nonfinite

    def combine_into_grad(self, weights: torch.Tensor) -> None:
        """``.grad += sum_i w_gi g_i`` for every parameter some task's gradient reached
        (the others keep ``.grad`` untouched: None after ``zero_grad(set_to_none=True)``)."""
        combined = self.combine(weights)
        params, grads = [], []
        for p, g, touched in zip(self.params, combined, self.touched, strict=True):
            if touched:
                params.append(p)
                # combine() returns views of one fresh flat vector: safe to keep as .grad.
                grads.append(g if g.dtype == p.dtype else g.to(p.dtype))
        accumulate_grads(params, grads)

    # -- shared helpers ----------------------------------------------------------------------
    def _mark_present(self, task_index: int, half: int | None) -> None:
        if half is not None:
            if not self.halves:
                raise InvalidInputError(f"half={half!r} given to a capture without halves=True")
            # internal: True/False pass as 1/0; Step.backward (_step.py) refuses user bools
            if half not in (0, 1):
                raise InvalidInputError(f"half must be 0 or 1, got {half!r}")
            if not self.present_halves[half][task_index]:
                self._half_mask[half, task_index].fill_(True)
            self.present_halves[half][task_index] = True
        if not self.present[task_index]:
            # A fill kernel with a scalar argument: no host -> device copy, no sync.
            self._present_mask[task_index].fill_(True)
        self.present[task_index] = True

    def _mask_grams(self, grams: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Symmetrised Gram matrices, (G + G^T) / 2, with NaN rows/columns for absent and
        non-finite tasks; remembers the non-finite ones.

        Every capture's ``gram`` ends here. A float32 matmul ``B @ B^T`` (and a sum of partial
        Grams over ranks) is not bit-symmetric for every K: the BLAS kernel accumulates C_ij
        and C_ji in different orders (on CPU, K = 5, 6, 7, 9, 10, 11 differ by a few ulps),
        while every consumer (cosines, Mantel tests, aggregators) assumes G = G^T. Float
        addition commutes, so (G + G^T) / 2 is exactly symmetric, at G K^2 flops.
        """
        grams = 0.5 * (grams + grams.transpose(-1, -2))
        diag = grams.diagonal(dim1=-2, dim2=-1)
        finite = torch.isfinite(diag).all(dim=0)
        self._nonfinite = present & ~finite
        keep = present & finite
        nan = torch.full_like(grams, float("nan"))
        drop = ~keep
        return torch.where(drop[None, :, None] | drop[None, None, :], nan, grams)


class TaskGradients(Capture):
    """Exact capture: the gradients g_1..g_K of K tasks for one step, flattened per group.

    The buffer is allocated on first use (``reset``), so an object that is never used on an
    untraced step costs no memory. With ``halves=True`` it holds 2K rows (the K full gradients,
    then the K first halves).

    ``process_group``: ``"auto"`` (default) reduces over the default group when
    torch.distributed is initialised with several ranks; None disables the reduction.
    """

    def __init__(
        self,
        groups: Sequence[ParameterGroup],
        num_tasks: int,
        device: torch.device | str | None = None,
        process_group: Any = _distributed.AUTO,
        halves: bool = False,
    ) -> None:
        super().__init__(groups, num_tasks, device, process_group, halves)
        if self.halves and self.process_group is not None:
            raise InvalidInputError(
                "halves=True is not supported under torch.distributed (a process group with "
                "several ranks): trace split halves in one process, or pass process_group=None"
            )
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
        self._rows = 2 * num_tasks if self.halves else num_tasks
        self._buffer: torch.Tensor | None = None
        self._present_mask: torch.Tensor | None = None
        self._half_mask: torch.Tensor | None = None
        self._row_views: list[list[torch.Tensor]] = []
        self._shard: torch.Tensor | None = None  # [K, S] this rank's reduced columns
        self._rows_clean = False  # absent tasks' rows zeroed since the last reset
        self._gram_diag: torch.Tensor | None = None  # [G, K] raw |g|^2 of this step's gram

    @property
    def buffer(self) -> torch.Tensor:
        """The [K, P] float32 buffer of this rank's (unreduced) gradients (allocated by
        ``reset``); with ``halves``, [2K, P]: rows K..2K-1 hold the first halves a_i."""
        if self._buffer is None:
            self.reset()
        self._zero_absent_rows()
        return self._buffer[:, : self.numel]

    @property
    def present_mask(self) -> torch.Tensor:
        if self._present_mask is None:
            self.reset()
        return self._present_mask

    def _zero_absent_rows(self) -> None:
        # `add` overwrites a task's row on its first gradient of the step instead of `reset`
        # zeroing all K x P floats (a measurable share of a traced step); rows of tasks that got
        # no gradient still hold the previous step's values and are zeroed here, once, before
        # any read (Gram, combination, reduction): absent tasks must count as zero, never as
        # stale or uninitialised numbers (0 * NaN would poison a combination).
        if not self._rows_clean:
            K = self.num_tasks
            for t, present in enumerate(self.present):
                if not present:
                    self._buffer[t].zero_()
            if self.halves:
                for t, present in enumerate(self.present_halves[0]):
                    if not present:
                        self._buffer[K + t].zero_()
            self._rows_clean = True

    def reset(self) -> None:
        """Mark every task absent: each task's row restarts from zero at its next ``add``."""
        if self._buffer is None:
            # Distributed: rows padded to W * S columns so each row reduce-scatters evenly.
            width = self.sharding.padded if self.sharding is not None else self.numel
            self._buffer = torch.zeros(self._rows, width, dtype=torch.float32, device=self.device)
            self._present_mask = torch.zeros(self.num_tasks, dtype=torch.bool, device=self.device)
            self._half_mask = torch.zeros(2, self.num_tasks, dtype=torch.bool, device=self.device)
            # Per row, one view per parameter, shaped like the parameter: lets `add` use one
            # fused foreach kernel instead of a Python loop of copies.
            self._row_views = [
                _split_like(self._buffer[t, : self.numel], self.params) for t in range(self._rows)
            ]
        else:
            self._present_mask.zero_()
            self._half_mask.zero_()
        self._shard = None
        self._rows_clean = False
        self._nonfinite = None
        self._gram_diag = None
        self.present = [False] * self.num_tasks
        self.present_halves = [[False] * self.num_tasks, [False] * self.num_tasks]
        self.touched = [False] * len(self.params)

    def release(self) -> None:
        """Free the buffer (it is reallocated by the next ``reset``)."""
        self._buffer = None
        self._present_mask = None
        self._half_mask = None
        self._shard = None
        self._row_views = []

    def _write_row(self, row: int, first: bool, grads: Sequence[torch.Tensor | None]) -> None:
        dst, src = [], []
        for n, (v, g) in enumerate(zip(self._row_views[row], grads, strict=True)):
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

    def add(
        self, task_index: int, grads: Sequence[torch.Tensor | None], half: int | None = None
    ) -> None:
        if self._buffer is None:
            self.reset()
        if self._shard is not None:
            raise RuntimeError("TaskGradients.add after gram/combine in the same step: reset first")
        grads = list(grads)
        self._write_row(task_index, not self.present[task_index], grads)
        if half == 0 and self.halves:
            self._write_row(
                self.num_tasks + task_index, not self.present_halves[0][task_index], grads
            )
        self._mark_present(task_index, half)

    def backward(
        self,
        task_index: int,
        loss: torch.Tensor,
        retain_graph: bool = False,
        into_grad: bool = True,
        half: int | None = None,
    ) -> None:
        # autograd.grad costs the FLOPs of the loss.backward() it replaces.
        grads = torch.autograd.grad(loss, self.params, retain_graph=retain_graph, allow_unused=True)
        check_reaches_params(grads)
        self.add(task_index, grads, half)
        if into_grad and self.process_group is None:
            accumulate_grads(self.params, grads)
        # Distributed: .grad gets the rank-averaged sum in sum_into_grad (from the shards).

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
        """Gram matrices of all groups, [G, K, K] float32; absent tasks' rows/columns are NaN
        (and those of tasks with a non-finite gradient, see ``nonfinite``).

        Distributed: the Gram matrices of the rank-averaged gradients (collective call); a task
        is present when any rank saw it.
        """
        K = self.num_tasks
        if self.sharding is None:
            full = self.buffer[:K]
            grams = torch.stack([full[:, a:b] @ full[:, a:b].T for a, b in self.offsets])
            present = self._present_mask
        else:
            shard = self._reduced()
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
        self._gram_diag = grams.diagonal(dim1=-2, dim2=-1) if self.halves else None
        return self._mask_grams(grams, present)

    def split_half(self) -> torch.Tensor:
        """[G, K, 3] = (a.a, b.b, a.b) per group and task, with b = g - a (O(K P) work: three
        row-wise dot products per group); NaN for a task missing a half."""
        if not self.halves:
            return super().split_half()
        K = self.num_tasks
        buffer = self.buffer
        full, first = buffer[:K], buffer[K:]
        # |g|^2 is the Gram's diagonal when gram() ran this step (the Tracer's order).
        diag = self._gram_diag
        out = []
        for k, (a, b) in enumerate(self.offsets):
            f, h = full[:, a:b], first[:, a:b]
            # Row-wise dot products per group (vecdot: the fastest of bmm/einsum/mul-sum here).
            aa = torch.linalg.vecdot(h, h)
            ag = torch.linalg.vecdot(h, f)
            gg = diag[k] if diag is not None else torch.linalg.vecdot(f, f)
            out.append(torch.stack([aa, gg - 2 * ag + aa, ag - aa], dim=-1))
        split = torch.stack(out)
        both = self._half_mask.all(dim=0)
        return torch.where(both[None, :, None], split, torch.full_like(split, float("nan")))

    def _drop_nonfinite_rows(self, rows: torch.Tensor) -> None:
        # 0 x NaN = NaN: a non-finite task's weight being 0 is not enough, its row must be 0.
        bad = self._nonfinite
        if bad is None:
            return
        if bad.device.type == "cpu":
            if bool(bad.any()):  # a free host read on the CPU
                rows.masked_fill_(bad[:, None], 0.0)
        else:
            rows.masked_fill_(bad[:, None], 0.0)  # no host sync on accelerators

    def combine(self, weights: torch.Tensor, exclude_nonfinite: bool = True) -> list[torch.Tensor]:
        """Per parameter, the combined gradient sum_i w_{k,i} g_i of its group k.

        ``weights`` is [G, K]; returns tensors shaped like ``self.params`` (float32 views of one
        flat vector of P floats, the only allocation), in ``self.params`` order. Tasks flagged
        by ``nonfinite()`` (from the last ``gram``) count as zero unless
        ``exclude_nonfinite=False``. Distributed: combined on this rank's shard, then
        all-gathered (collective call).
        """
        weights = weights.to(device=self.device, dtype=torch.float32)
        if self.sharding is None:
            return _split_like(self._combine_local(weights, exclude_nonfinite), self.params)
        shard = self._reduced()
        if exclude_nonfinite:
            self._drop_nonfinite_rows(shard)
        local = torch.zeros(shard.shape[1], dtype=torch.float32, device=self.device)
        for k, (a, b) in enumerate(self.sharding.local):
            if b > a:
                torch.mv(shard[:, a:b].T, weights[k], out=local[a:b])
        full = torch.empty(self.sharding.padded, dtype=torch.float32, device=self.device)
        _distributed.all_gather(full, local, self.process_group)
        return _split_like(full[: self.numel], self.params)

    def _combine_local(self, weights: torch.Tensor, exclude_nonfinite: bool) -> torch.Tensor:
        """sum_i w_ki g_i of this rank's own (unreduced) rows, one flat [P] float32 vector."""
        rows = self.buffer[: self.num_tasks]
        if exclude_nonfinite:
            self._drop_nonfinite_rows(rows)
        flat = torch.empty(self.numel, dtype=torch.float32, device=self.device)
        for k, (a, b) in enumerate(self.offsets):
            torch.mv(rows[:, a:b].T, weights[k], out=flat[a:b])
        return flat

    def sum_into_grad(self) -> None:
        if self.process_group is None:
            return  # every backward already accumulated into .grad
        ones = torch.ones(len(self.groups), self.num_tasks, device=self.device)
        params, grads = [], []
        summed = self.combine(ones, exclude_nonfinite=False)  # as a plain backward would
        for p, g, touched in zip(self.params, summed, self.touched, strict=True):
            if touched:
                params.append(p)
                grads.append(g if g.dtype == p.dtype else g.to(p.dtype))
        accumulate_grads(params, grads)


def _split_like(flat: torch.Tensor, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Views of consecutive slices of ``flat`` shaped like ``params``."""
    sizes = [p.numel() for p in params]
    return [chunk.view(p.shape) for chunk, p in zip(flat.split(sizes), params, strict=True)]
