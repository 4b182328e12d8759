"""Sketched aggregation under FSDP2: a MultiTask or traced step at the traffic of one FSDP step.

The exact FSDP path (:class:`~geomtrace._fsdp.ShardedTaskGradients`) lets FSDP reduce-scatter
every task's backward: K reduce-scatters of P per step, and, with the default
``reshard_after_forward=True``, an all-gather of the parameters in every task's forward and
backward. :class:`ShardedSketchedGram` (``MultiTask(..., gram="sketch", sketch=d)`` or
``Tracer(..., sketch=d)`` on a fully_shard model) replaces that by:

0. **One all-gather.** When the step opens, every FSDP module is unsharded once and told not to
   reshard after forward or backward, so the K forwards and all backward passes of the step
   reuse the unsharded parameters; they are resharded when the step closes. The price is
   memory: the unsharded parameters (P values) stay allocated for the whole step, as with
   ``reshard_after_forward=False`` (ZeRO-2).
1. **Pass 1, local gradients, nothing reduced.** Each ``backward(i, loss)`` differentiates the
   task's loss with respect to the *unsharded* parameters (``torch.autograd.grad``: FSDP's
   post-backward hook finds no ``.grad`` and reduces nothing) and keeps only the CountSketch of
   this rank's local gradient, per group: y_i^(r) = S_k g_i^(r) (G K d floats). The sketch is
   seeded identically on every rank and hashes *global* column indices, so it is the sketch of
   the one-process layout.
2. **One small all-reduce.** CountSketch is linear, so the rank mean of the sketches is the
   sketch of the rank-averaged gradient (FSDP's and DDP's g_i = (1/W) sum_r g_i^(r)):

       Y_k = (1/W) sum_r Y_k^(r) = S_k B_k,     G~_k = Y_k Y_k^T     (G K d + K floats)

   Every rank holds the same G~, hence the same weights w = aggregator(G~).
3. **Pass 2, one reduce-scatter (MultiTask).** The weighted update per group,
   u|_k = sum_i w_ki g_i|_k, is linear in the local gradients, so each rank forms its local
   u^(r) and one reduce-scatter (FSDP's layout: dim-0 chunks, rank-major) leaves each rank its
   shard of u = (1/W) sum_r u^(r), added into the ``.grad`` shards. Per-group weights cannot be
   applied by one backward of a weighted loss sum_i w_i L_i (that gives one weight per task for
   the whole model; autograd sums the tasks' contributions to a parameter before any hook sees
   them), so pass 2 differentiates each task's loss again (the graphs of pass 1 are retained)
   and adds w_ki times group k of its gradient into an fp32 [W, S] reduce-scatter buffer: the
   same backward FLOPs as one backward of the summed loss, one extra backward per step.
   Traced Tracer steps need no weights: pass 1 adds every task's gradient into that buffer at
   once (no retained graphs, no second pass) and the step closes with the reduce-scatter of
   the plain sum.

Communication per step (floats, W ranks): one all-gather of P, one reduce-scatter of P, one
all-reduce of G K d + K (plus 2 K for the losses), against an all-gather in every forward and
backward plus one reduce-scatter for a joint FSDP step: at or below one plain FSDP step when
G K d is small next to P (``benchmarks/communication.py``; ``docs/scaling.md``).

Compute: K forwards and 2K task backward passes (MultiTask; the Tracer: K), plus hashing P
columns per task backward (about 12 integer operations per parameter; ``cache=False`` is the
default here, since the ``cache=True`` codes would cost P int32 per rank, i.e. 28 GB at 7B
parameters). Memory per rank beyond a plain FSDP step: the
unsharded parameters for the whole step, the retained graphs of the K tasks' forwards
(MultiTask: the activations a joint forward over all tasks' rows would hold), the [W, S] fp32
reduce-scatter buffer (P floats) and one task's unsharded gradient in flight (P values).

``dim="identity"`` keeps the local [K, P] gradients themselves and all-reduces them (K P
floats: a test oracle of the path, not a mode to train with): the Gram is then exact and the
step equals the one-process exact MultiTask. Non-finite tasks are left out of the combination
like absent ones (their rows are skipped in pass 2: one host read of K flags per step).
Assumed, as FSDP itself assumes: every rank's losses reach the same parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from geomtrace import _distributed
from geomtrace._capture import Capture
from geomtrace._errors import InvalidInputError
from geomtrace._fsdp import FSDPLayout, add_to_grad_shards
from geomtrace._groups import ParameterGroup
from geomtrace._sketch import (
    IDENTITY,
    CountSketch,
    all_reduce_sketch_mean,
    check_sketch_dim,
    check_sketch_dtype,
)


@dataclass(frozen=True)
class _Chunking:
    """Where one parameter's global gradient goes in the rank-major reduce-scatter buffer.

    FSDP2 shards dim ``dim`` (``Shard(dim)``) into chunks of ``chunk = ceil(rows / W)`` rows
    (``torch.chunk``: the last ranks may get fewer or none); the buffer gives every rank a
    segment of the same width, in which this parameter occupies columns
    [offset, offset + chunk * inner).
    """

    dim: int
    rows: int
    inner: int
    chunk: int
    offset: int
    local_shape: torch.Size

    def add(self, buffer: torch.Tensor, grad: torch.Tensor, scale: torch.Tensor | None) -> None:
        """``buffer[r, this parameter's columns] += scale * rows of chunk r of grad``."""
        if self.rows == 0:
            return
        g = grad if self.dim == 0 else grad.movedim(self.dim, 0)
        flat = g.reshape(self.rows, self.inner)
        width = self.chunk * self.inner
        full, rest = divmod(self.rows, self.chunk)
        lo = self.offset
        # addcmul_ with a 0-d scale: no scaled copy of the gradient, no host sync.
        one = (
            scale if scale is not None else torch.ones((), dtype=buffer.dtype, device=buffer.device)
        )
        if full:
            dst = buffer[:full, lo : lo + width]
            dst.addcmul_(flat[: full * self.chunk].reshape(full, width), one)
        if rest:
            dst = buffer[full, lo : lo + rest * self.inner]
            dst.addcmul_(flat[full * self.chunk :].reshape(-1), one)

    def local(self, segment: torch.Tensor) -> torch.Tensor:
        """This rank's shard of the parameter from its reduced segment, shaped like
        ``p.to_local()``."""
        shape = list(self.local_shape)
        if self.dim != 0:
            shape.insert(0, shape.pop(self.dim))
        n = 1
        for s in shape:
            n *= s
        part = segment[self.offset : self.offset + n].view(shape)
        return part if self.dim == 0 else part.movedim(0, self.dim)


def _fsdp_modules(model: torch.nn.Module) -> list[Any]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


class _KeepUnsharded:
    """Unshard every FSDP module of ``model`` once and keep it unsharded until ``release``
    (reshard after forward and after backward switched off, then restored as they were)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.modules = _fsdp_modules(model)
        self._saved: list[tuple[Any, Any, bool]] | None = None

    @property
    def active(self) -> bool:
        return self._saved is not None

    def hold(self) -> None:
        if self._saved is not None:
            return
        # A root's lazy init decides its reshard_after_forward: run it before saving. Roots are
        # the FSDP modules inside no other one (siblings without a sharded parent each are one).
        inner = {id(sub) for m in self.modules for sub in m.modules() if sub is not m}
        for module in self.modules:
            if id(module) not in inner:
                module._get_fsdp_state()._lazy_init()
        saved = []
        for module in self.modules:
            for group in module._get_fsdp_state()._fsdp_param_groups:
                saved.append((group, group.post_forward_mesh_info, group.reshard_after_backward))
                group.post_forward_mesh_info = None
                group.reshard_after_backward = False
        self._saved = saved
        for module in self.modules:
            module.unshard()

    def release(self) -> None:
        saved, self._saved = self._saved, None
        if saved is None:
            return
        for group, mesh_info, after_backward in saved:
            group.post_forward_mesh_info = mesh_info
            group.reshard_after_backward = after_backward
        for module in self.modules:
            module.reshard()


def _unsharded_params(model: torch.nn.Module, params: Sequence[torch.Tensor]) -> list[Any]:
    """FSDP's parameter record (``FSDPParam``) of every sharded parameter in ``params``."""
    records = {}
    for module in _fsdp_modules(model):
        for group in module._get_fsdp_state()._fsdp_param_groups:
            for record in group.fsdp_params:
                records[id(record.sharded_param)] = record
    return [records[id(p)] for p in params]


class ShardedSketchedGram(Capture):
    """Two-pass sketched aggregation on a fully_shard model (see the module docstring).

    ``dim``: the sketch dimension d, or ``"identity"`` (exact Gram from the all-reduced local
    [K, P] gradients: a test oracle). ``backward(..., into_grad=False)`` (MultiTask) retains
    the task's graph for pass 2; ``into_grad=True`` (Tracer) adds the gradient to the plain
    summed update at once. ``gram`` and ``combine`` / ``sum_into_grad`` are collective calls.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        groups: Sequence[ParameterGroup],
        num_tasks: int,
        layout: FSDPLayout,
        dim: int | str,
        seed: int = 0,
        cache: bool = False,
        dtype: str = "float32",
    ) -> None:
        super().__init__(groups, num_tasks, None, process_group=None)
        self.process_group = layout.process_group
        self.layout = layout
        self.identity = dim == IDENTITY
        self.dim = None if self.identity else check_sketch_dim(dim)
        self.sketch = (
            None if self.identity else CountSketch(self.offsets, self.dim, seed, cache=cache)
        )
        #: the dtype the sketches travel in (``geomtrace._sketch.all_reduce_sketch_mean``)
        self.dtype = check_sketch_dtype(dtype, dim)
        self._keep = _KeepUnsharded(model)
        self._records = _unsharded_params(model, self.params)
        W = layout.world_size
        rank = torch.distributed.get_rank(self.process_group)
        self._places: list[tuple[int, int]] = []  # per parameter: (group, column in group)
        for k, group in enumerate(self.groups):
            column = 0
            for p in group.params:
                self._places.append((k, column))
                column += p.numel()
        self._chunks: list[_Chunking] = []
        offset = 0
        for name, p in zip(self._param_names(), self.params, strict=True):
            placement = p.placements[0]
            dim_ = getattr(placement, "dim", None)
            if dim_ is None:
                raise InvalidInputError(
                    f"parameter {name!r} has placement {placement!r}: the sketched FSDP path "
                    "supports Shard(dim) placements only"
                )
            rows = p.shape[dim_] if p.dim() else 1
            chunk = -(-rows // W) if rows else 0
            inner = p.numel() // rows if rows else 0
            local_shape = p.to_local().shape
            mine = min(max(rows - rank * chunk, 0), chunk)
            if p.dim() and local_shape[dim_] != mine:
                raise InvalidInputError(
                    f"parameter {name!r}: rank {rank} holds {local_shape[dim_]} rows of dim "
                    f"{dim_}, not the {mine} of torch.chunk sharding; the sketched FSDP path "
                    "supports FSDP2's default even chunking only"
                )
            self._chunks.append(_Chunking(dim_, rows, inner, chunk, offset, local_shape))
            offset += chunk * inner
        self.segment = offset  # S: the width of every rank's segment of the buffer
        self._sketches: torch.Tensor | None = None  # [G, K, d] (identity: [K, P])
        self._present_mask: torch.Tensor | None = None
        self._update: torch.Tensor | None = None  # [W, S] fp32 local update
        self._losses: list[list[torch.Tensor]] = []
        self._retained = False
        self._reduced = False

    @property
    def reduce_dtype(self) -> torch.dtype:
        """The dtype of the reduce-scatter, as FSDP's: its reduce dtype, else the (mixed
        precision) parameter dtype, else the parameters' own (set by FSDP's lazy init)."""
        first = self._records[0]
        return first.reduce_dtype or first.param_dtype or first.orig_dtype

    def _param_names(self) -> list[str]:
        return [name for group in self.groups for name in group.param_names]

    # -- one step ----------------------------------------------------------------------------
    @property
    def present_mask(self) -> torch.Tensor:
        if self._present_mask is None:
            self.reset()
        return self._present_mask

    @property
    def sketches(self) -> torch.Tensor:
        """This rank's [G, K, d] sketches (after ``gram``: the rank means); identity: the
        [K, P] local gradients."""
        if self._sketches is None:
            self.reset()
        return self._sketches

    def reset(self) -> None:
        """Start a step: every task absent; the parameters are all-gathered once and kept
        unsharded until the step's update is reduce-scattered."""
        device = self.params[0].device
        self.device = device
        G, K = len(self.groups), self.num_tasks
        shape = (K, self.numel) if self.identity else (G, K, self.dim)
        if self._sketches is None or self._reduced:
            self._sketches = torch.zeros(shape, dtype=torch.float32, device=device)
        else:
            self._sketches.zero_()
        self._present_mask = torch.zeros(K, dtype=torch.bool, device=device)
        self._update = None
        self._losses = [[] for _ in range(K)]
        self._reduced = False
        self._nonfinite = None
        self.present = [False] * K
        self.touched = [False] * len(self.params)
        self._keep.hold()

    def release(self) -> None:
        """Drop the step's state (retained graphs included) and reshard the parameters."""
        self._sketches = None
        self._present_mask = None
        self._update = None
        self._losses = []
        self._keep.release()

    def abort(self) -> None:
        """An interrupted step: reshard and drop everything it captured."""
        self.release()

    def add(self, task_index, grads, half=None) -> None:
        raise InvalidInputError(
            "gradients of a fully_shard model are captured through s.backward(task, loss), "
            "not given as tensors"
        )

    def _sketch_into(self, task_index: int, grads: Sequence[torch.Tensor | None]) -> None:
        out = self._sketches
        for n, g in enumerate(grads):
            if g is None:
                continue
            k, column = self._places[n]
            if self.identity:
                a = self.offsets[k][0] + column
                out[task_index, a : a + g.numel()] += g.reshape(-1).float()
            else:
                self.sketch.accumulate(out[k, task_index], k, column, g.float())
            self.touched[n] = True

    def _buffer(self) -> torch.Tensor:
        if self._update is None:
            W = self.layout.world_size
            self._update = torch.zeros(W, self.segment, dtype=torch.float32, device=self.device)
        return self._update

    def backward(
        self,
        task_index: int,
        loss: torch.Tensor,
        retain_graph: bool = False,
        into_grad: bool = True,
        half: int | None = None,
    ) -> None:
        if half is not None:
            raise InvalidInputError("split halves are not supported with a fully_shard model")
        if self._sketches is None or not self._keep.active:
            self.reset()
        if self._reduced:
            raise RuntimeError("ShardedSketchedGram.backward after gram in the same step")
        inputs = [record.unsharded_param for record in self._records]
        # Pass 1 of a MultiTask keeps the graph: pass 2 differentiates the loss again.
        keep = retain_graph or not into_grad
        grads = torch.autograd.grad(loss, inputs, retain_graph=keep, allow_unused=True)
        self._sketch_into(task_index, grads)
        self._mark_present(task_index, None)
        if into_grad:
            buffer = self._buffer()
            for chunking, g in zip(self._chunks, grads, strict=True):
                if g is not None:
                    chunking.add(buffer, g, None)
        else:
            self._losses[task_index].append(loss)

    def gram(self) -> torch.Tensor:
        """[G, K, K] Gram estimates from the rank-averaged sketches (identity: exact); absent
        and non-finite tasks NaN. Collective: one all-reduce of G K d + K floats (float16:
        G K d halves and a MAX all-reduce of G K + K floats)."""
        if not self._reduced:
            self._sketches, self._present_mask = all_reduce_sketch_mean(
                self.sketches, self._present_mask, self.process_group, self.dtype
            )
            self._reduced = True
        y = self._sketches
        if self.identity:
            grams = torch.stack([y[:, a:b] @ y[:, a:b].T for a, b in self.offsets])
        else:
            grams = y @ y.transpose(1, 2)
        return self._mask_grams(grams, self._present_mask)

    def _reduce_update(self) -> list[torch.Tensor]:
        """Reduce-scatter the local update buffer (one collective) and return this rank's
        shard of every parameter's rank-averaged update; then reshard the parameters."""
        buffer = self._buffer()
        send = buffer if self.reduce_dtype == torch.float32 else buffer.to(self.reduce_dtype)
        segment = torch.empty(self.segment, dtype=send.dtype, device=self.device)
        _distributed.reduce_scatter(segment, send.reshape(-1), self.process_group)
        segment = segment.float().div_(self.layout.world_size)
        self._update = None
        self._losses = [[] for _ in range(self.num_tasks)]
        self._keep.release()
        return [chunking.local(segment) for chunking in self._chunks]

    def combine(self, weights: torch.Tensor) -> list[torch.Tensor]:
        """Pass 2: this rank's shard of sum_i w_ki g_i per parameter (collective: one
        reduce-scatter). Tasks flagged by ``nonfinite()`` are skipped."""
        weights = weights.to(device=self.device, dtype=torch.float32)
        bad = self.nonfinite().tolist()  # one host read of K flags
        losses = [(i, loss) for i, task in enumerate(self._losses) if not bad[i] for loss in task]
        inputs = [record.unsharded_param for record in self._records]
        buffer = self._buffer()
        group_of = [k for k, _ in self._places]
        for n, (i, loss) in enumerate(losses):
            # A shared forward (backward_shared) needs its graph until the last task.
            last = n == len(losses) - 1
            grads = torch.autograd.grad(loss, inputs, retain_graph=not last, allow_unused=True)
            for chunking, k, g in zip(self._chunks, group_of, grads, strict=True):
                if g is not None:
                    chunking.add(buffer, g, weights[k, i])
            del grads  # else the next task's gradient would be computed next to this one
        return self._reduce_update()

    def combine_into_grad(self, weights: torch.Tensor) -> None:
        add_to_grad_shards(self.params, self.combine(weights), self.touched)

    def sum_into_grad(self) -> None:
        """Tracer: reduce-scatter the plain summed update of pass 1 into ``.grad``."""
        add_to_grad_shards(self.params, self._reduce_update(), self.touched)
