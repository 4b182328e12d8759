"""Data parallelism with torch.distributed: each task's gradient is the mean over ranks.

With W ranks (data-parallel replicas) and K tasks, rank r computes its local task gradients
g_i^(r) on its share of the global batch; the task gradient is DDP's average

    g_i = (1/W) sum_r g_i^(r).

Exact mode (:class:`~geomtrace._capture.TaskGradients`) never materialises the full reduced
[K, P] matrix on any rank. The local [K, P] buffer is padded to P' = W * S columns and each
task row is *reduce-scattered*, so rank r owns the column shard [r S, (r+1) S) of every g_i.
Everything else is done on the shard and summed:

    G_k = sum_r B_k^(r) B_k^(r)T          partial Gram per group on the shard, one all-reduce of
                                           the [G, K, K] result (+ K presence flags)
    u   = all_gather_r ( sum_i w_ki B^(r)_i )   the combined update (Tracer: w = 1, MultiTask:
                                           the aggregator's weights), gathered into every .grad

so a traced step moves K P' floats (reduce-scatter) + P' floats (all-gather) + G K^2 + K floats
(all-reduce) per rank, against the 2 P of a DDP all-reduce (a ring all-reduce is one
reduce-scatter and one all-gather of P). Aggregator weights are computed from the identical
all-reduced Gram matrices on every rank, so they agree without further communication.

Sketch mode (:class:`~geomtrace._sketch.TaskSketches`) all-reduces only the [G, K, d] sketches
(CountSketch is linear, so the mean of sketches is the sketch of the mean) and the summed
``.grad`` as DDP would: P + G K d floats.

``torch.autograd.grad`` bypasses DDP's reducer hooks: traced steps run under
``DistributedDataParallel.no_sync()`` (:func:`no_sync`) and the reduction above replaces DDP's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from geomtrace._errors import InvalidInputError

AUTO = "auto"


def resolve_group(process_group: Any = AUTO) -> Any:
    """The process group to reduce over, or None for a single process.

    ``"auto"``: the default group when torch.distributed is initialised with more than one rank;
    None or False: no reduction; a ProcessGroup: that group.
    """
    if process_group is None or process_group is False:
        return None
    if isinstance(process_group, str):
        if process_group != AUTO:
            raise InvalidInputError(
                f"process_group={process_group!r}: use 'auto', None or a ProcessGroup"
            )
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return None
        if torch.distributed.get_world_size() == 1:
            return None
        return torch.distributed.group.WORLD
    return process_group


def world_size(group: Any) -> int:
    return 1 if group is None else torch.distributed.get_world_size(group)


def rank(group: Any) -> int:
    return 0 if group is None else torch.distributed.get_rank(group)


def global_rank() -> int:
    """This process's rank in the default group (0 when torch.distributed is not initialised)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel (or DataParallel) wrapper, else ``model``.

    Groups are resolved on the inner module so parameter names match a single-process run.
    """
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


@contextlib.contextmanager
def no_sync(model: nn.Module) -> Iterator[None]:
    """``model.no_sync()`` for DistributedDataParallel (its reducer must not wait for hooks
    that ``torch.autograd.grad`` never fires); a no-op for any other module.

    The context must cover the forward passes too: DDP decides at forward time whether the
    next backward is reduced. The Tracer and MultiTask enter it in ``step().__enter__``.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
    else:
        yield


def reduce_scatter(output: torch.Tensor, input: torch.Tensor, group: Any, async_op: bool = False):
    """Sum ``input`` (1-D, W * len(output)) over ranks; rank r receives chunk r."""
    dist = torch.distributed
    fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    return fn(output, input, group=group, async_op=async_op)


def all_gather(output: torch.Tensor, input: torch.Tensor, group: Any) -> None:
    """Concatenate every rank's ``input`` (1-D) into ``output`` (W * len(input)), rank order."""
    dist = torch.distributed
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    fn(output, input, group=group)


def all_reduce_sum(tensor: torch.Tensor, group: Any) -> None:
    torch.distributed.all_reduce(tensor, group=group)


@dataclass(frozen=True)
class Sharding:
    """Which columns of the padded [K, P'] buffer this rank owns after the reduce-scatter.

    ``shard_size`` S = ceil(P / W); this rank owns global columns [start, start + S). For each
    group k, ``local[k]`` is its column range inside the shard (empty ranges allowed) and
    ``world_size`` is W. All host-side integers, computed once: nothing per step.
    """

    world_size: int
    rank: int
    numel: int
    shard_size: int
    start: int
    local: tuple[tuple[int, int], ...]

    @property
    def padded(self) -> int:
        return self.world_size * self.shard_size

    @classmethod
    def make(cls, offsets: Sequence[tuple[int, int]], numel: int, w: int, r: int) -> Sharding:
        """The shard of rank ``r`` of ``w``."""
        size = -(-numel // w)
        start, stop = r * size, (r + 1) * size
        local = tuple(
            (min(max(a, start), stop) - start, min(max(b, start), stop) - start) for a, b in offsets
        )
        return cls(w, r, numel, size, start, local)


def _digest(value: Any) -> int:
    """A signed 64-bit digest of a JSON-serialisable value (the first 8 bytes of its SHA-256)."""
    text = json.dumps(value, sort_keys=True, default=str).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little", signed=True)


def check_ranks_agree(
    parts: Mapping[str, Any], group: Any, device: torch.device | str, fix: str = ""
) -> None:
    """Refuse, on every rank at once, ranks that disagree on any of ``parts``.

    ``parts`` maps a description (e.g. ``"tasks (names and order)"``) to a JSON-serialisable
    value that must be the same on every rank. Each value is reduced to a 64-bit digest and the
    [len(parts)] digests of all ranks travel in one all-gather of fixed size, so ranks that
    disagree (on the task count, say) still meet in this collective instead of hanging in a
    later one of another size. Every rank sees the same table and raises the same
    :class:`InvalidInputError`, naming what differs, which ranks differ from rank 0 and this
    rank's own value (each rank's log then shows its side). A collective call.
    """
    if group is None:
        return
    names = list(parts)
    local = torch.tensor([_digest(parts[n]) for n in names], dtype=torch.int64, device=device)
    w = world_size(group)
    gathered = torch.empty(w * len(names), dtype=torch.int64, device=device)
    all_gather(gathered, local, group)
    table = gathered.view(w, len(names)).cpu().tolist()
    for j, name in enumerate(names):
        differ = [r for r in range(w) if table[r][j] != table[0][j]]
        if differ:
            value = json.dumps(parts[name], default=str)
            if len(value) > 300:
                value = value[:300] + "..."
            raise InvalidInputError(
                f"ranks disagree on the {name}: rank(s) {differ} differ from rank 0 (this is "
                f"rank {rank(group)}, with {value}); every rank must trace the same {name}"
                + (f": {fix}" if fix else "")
            )


def mean_over_ranks(values: torch.Tensor, counts: torch.Tensor, group: Any) -> torch.Tensor:
    """Per entry, sum_r values / sum_r counts (NaN where every count is 0); one all-reduce."""
    packed = torch.stack([values, counts])
    if group is not None:
        all_reduce_sum(packed, group)
    return packed[0] / packed[1]


def all_reduce_grads(params: Sequence[torch.Tensor], group: Any) -> None:
    """Average ``.grad`` over ranks in place, as DDP does: one all-reduce of one flat vector.

    Parameters whose ``.grad`` is None are skipped; they must be None on every rank (as DDP
    requires every rank to use the same parameters).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or group is None:
        return
    dtype = grads[0].dtype
    if any(g.dtype != dtype for g in grads):
        for g in grads:  # mixed dtypes: one collective per tensor (rare)
            all_reduce_sum(g, group)
            g.div_(world_size(group))
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce_sum(flat, group)
    flat.div_(world_size(group))
    torch._foreach_copy_(
        grads,
        [c.view_as(g) for c, g in zip(flat.split([g.numel() for g in grads]), grads, strict=True)],
    )


class CollectiveBytes:
    """Counts the collectives issued through torch's dispatcher inside ``with`` (ours, FSDP's,
    plain ``torch.distributed`` calls), by op: ``calls[op]`` and ``bytes[op]``.

    Convention: a collective's size is the largest tensor handed to it, i.e. the full,
    unsharded payload n (all-reduce: the tensor; reduce-scatter: its input; all-gather: its
    output). A ring algorithm sends 2 (W-1)/W n bytes per rank for an all-reduce and
    (W-1)/W n for a reduce-scatter or an all-gather. DDP's C++ reducer does not go through
    the Python dispatcher and is not counted. For measurements (tests, benchmarks), not for
    training: a dispatch mode sees every op.
    """

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.bytes: dict[str, int] = {}
        self._mode = None

    @property
    def total(self) -> int:
        return sum(self.bytes.values())

    def __enter__(self) -> CollectiveBytes:
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves

        counter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = str(func.overloadpacket)
                if "c10d" in name and "wait" not in name and "barrier" not in name:
                    tensors = [
                        t for t in tree_leaves((args, kwargs or {})) if isinstance(t, torch.Tensor)
                    ]
                    size = max((t.numel() * t.element_size() for t in tensors), default=0)
                    op = name.split(".")[-1]
                    counter.calls[op] = counter.calls.get(op, 0) + 1
                    counter.bytes[op] = counter.bytes.get(op, 0) + size
                return func(*args, **(kwargs or {}))

        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        self._mode = None
