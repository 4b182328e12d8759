"""FSDP2 (``torch.distributed.fsdp.fully_shard``): per-task capture on sharded parameters.

Under ``fully_shard`` every parameter is a DTensor sharded over a 1-D device mesh of W ranks;
rank r holds a shard of each parameter (``p.to_local()``, dim-0 chunks, uneven allowed) and the
graph of a forward pass uses the all-gathered *unsharded* parameters, so
``torch.autograd.grad(loss, model.parameters())`` cannot differentiate with respect to them.
What does work is ``loss.backward()``: FSDP's post-backward hook reduce-scatters the unsharded
gradient and leaves in ``p.grad`` (a DTensor) this rank's shard of the rank average

    g_i = (1/W) sum_r g_i^(r)            (the same average as DDP's)

Capture (:class:`ShardedTaskGradients`). For each task backward: stash every ``.grad`` and set
it to None, run ``loss.backward()`` (FSDP reduce-scatters), copy the fresh local shards into the
task's row of a local [K, S] float32 buffer (S = this rank's shard size summed over the
parameters), then put ``.grad`` back (the Tracer adds the task's shard to it: the plain summed
update; a MultiTask leaves it as it was). Micro-batches of one task add to its row.

Gram. Parameter groups are defined on the original parameter names and *global* sizes (as in
one process); group k's columns on rank r are the local shard pieces of its parameters, and the
shards of all ranks partition every parameter, so

    G_k = sum_r B_k^(r) B_k^(r)T            (partial Gram per group on the local shard, one
                                              all-reduce of [G, K, K] + K presence flags)

is the exact Gram matrix of the averaged task gradients on every rank. Aggregator weights
computed from it are identical on every rank.

Combination (MultiTask). ``sum_i w_ki g_i`` is linear, so each rank combines its own shard rows
and adds the result to its ``.grad`` shard: FSDP's optimizer works on shards, no all-gather is
needed. Communication per traced / MultiTask step: K FSDP reduce-scatters of P (one per task
backward, against one for a plain step) plus the [G, K, K] all-reduce; the K forwards
all-gather the parameters as K forwards do under FSDP anyway.

Supported: any 1-D mesh, ``reshard_after_forward`` True/False/int, ``MixedPrecisionPolicy``
(bf16/fp16 params and reduce: ``.grad`` shards come back in the parameters' dtype and the buffer
is fp32, so Gram matrices are fp32), any ``Shard(dim)`` placement (the Gram does not depend on
where the columns sit). Refused with a message naming the option: CPU offload
(``offload_policy=CPUOffloadPolicy()``: not testable here and it moves every task's shard
through host memory), HSDP (a 2-D mesh), trainable parameters not managed by ``fully_shard``
(``ignored_params``, or a root module left unsharded), gradient sync switched off
(``set_requires_gradient_sync(False)``) on a capturing step, probe mode in the Tracer.

The Tracer's ``sketch=d`` and MultiTask's ``gram="sketch"`` take the sketched path instead
(:mod:`geomtrace._fsdp_sketch`): the parameters gathered once per step, the local task
gradients sketched, one reduce-scatter of the update: the traffic of one FSDP step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from geomtrace import _distributed
from geomtrace._capture import Capture
from geomtrace._errors import InvalidInputError
from geomtrace._groups import ParameterGroup


def _dtensor_type() -> type | None:
    if not torch.distributed.is_available():
        return None
    from torch.distributed.tensor import DTensor

    return DTensor


def _fsdp_module_type() -> type | None:
    if not torch.distributed.is_available():
        return None
    from torch.distributed.fsdp import FSDPModule

    return FSDPModule


def is_fully_sharded(model: nn.Module) -> bool:
    """Whether ``model`` is (partly) sharded by FSDP2: an ``FSDPModule`` in its module tree or a
    DTensor parameter."""
    dist = torch.distributed
    # fully_shard needs an initialised process group: without one, skip importing FSDP at all.
    if not (dist.is_available() and dist.is_initialized()):
        return False
    fsdp_module, dtensor = _fsdp_module_type(), _dtensor_type()
    if any(isinstance(m, fsdp_module) for m in model.modules()):
        return True
    return any(isinstance(p, dtensor) for p in model.parameters())


@dataclass(frozen=True)
class FSDPLayout:
    """What geomtrace needs of a fully_shard model: the mesh's process group and the FSDP
    states (to check gradient sync on capturing steps)."""

    process_group: Any
    world_size: int
    states: tuple[Any, ...]

    def check_gradient_sync(self) -> None:
        """Refuse a capturing step while FSDP's gradient reduction is switched off (the task's
        shard would not be in ``.grad`` after its backward)."""
        for state in self.states:
            for group in _param_groups(state):
                if not getattr(group, "reduce_grads", True):
                    raise InvalidInputError(
                        "set_requires_gradient_sync(False) is active on a fully_shard module "
                        "during a traced / MultiTask step: per-task capture needs FSDP to "
                        "reduce-scatter every task's backward; call "
                        "set_requires_gradient_sync(True) before such a step"
                    )


def _param_groups(state: Any) -> list[Any]:
    groups = getattr(state, "_fsdp_param_groups", None)
    if groups is None:
        group = getattr(state, "_fsdp_param_group", None)
        groups = [] if group is None else [group]
    return list(groups)


def fsdp_layout(
    model: nn.Module, groups: Sequence[ParameterGroup], process_group: Any, owner: str
) -> FSDPLayout:
    """Check that ``model`` is a fully_shard model geomtrace supports (see the module
    docstring) and return its layout; raise :class:`InvalidInputError` naming the option."""
    dtensor = _dtensor_type()
    if not (isinstance(process_group, str) and process_group == _distributed.AUTO):
        raise InvalidInputError(
            f"process_group={process_group!r} with a fully_shard model: the {owner} reduces over "
            "the FSDP device mesh's group; leave process_group='auto'"
        )
    meshes = []
    for group in groups:
        for name, p in zip(group.param_names, group.params, strict=True):
            if not isinstance(p, dtensor):
                raise InvalidInputError(
                    f"parameter {name!r} is trainable but not managed by fully_shard (a plain "
                    "tensor next to sharded ones): apply fully_shard to the root module too and "
                    "do not pass it in ignored_params, or freeze it (requires_grad=False)"
                )
            meshes.append((name, p.device_mesh))
    mesh = meshes[0][1]
    if mesh.ndim != 1:
        raise InvalidInputError(
            f"parameter {meshes[0][0]!r} lives on a {mesh.ndim}-D device mesh (HSDP): geomtrace "
            "supports fully_shard on a 1-D mesh (plain FSDP) only"
        )
    for name, other in meshes[1:]:
        if other != mesh:
            raise InvalidInputError(
                f"parameter {name!r} is sharded over another device mesh than {meshes[0][0]!r}: "
                "shard every parameter over one 1-D mesh"
            )
    fsdp_module = _fsdp_module_type()
    states = tuple(m._get_fsdp_state() for m in model.modules() if isinstance(m, fsdp_module))
    from torch.distributed.fsdp import CPUOffloadPolicy

    for state in states:
        for group in _param_groups(state):
            if isinstance(getattr(group, "offload_policy", None), CPUOffloadPolicy):
                raise InvalidInputError(
                    "fully_shard(..., offload_policy=CPUOffloadPolicy()) is not supported: "
                    "per-task capture would move every task's gradient shard through host "
                    "memory; use the default OffloadPolicy() (no offload)"
                )
    pg = mesh.get_group()
    return FSDPLayout(pg, torch.distributed.get_world_size(pg), states)


def refuse_fsdp_option(model: nn.Module, option: str, why: str) -> None:
    """Raise if ``model`` is fully sharded and ``option`` was asked for."""
    if is_fully_sharded(model):
        raise InvalidInputError(f"{option} is not supported with a fully_shard model: {why}")


class ShardedTaskGradients(Capture):
    """Exact capture on a fully_shard model: this rank's shards of the K rank-averaged task
    gradients, [K, S] float32 (see the module docstring for the math and the cost).

    ``backward`` is the only way in (``add`` raises: gradients of sharded parameters come from
    FSDP's reduce-scatter, not from ``torch.autograd.grad``). ``gram`` is a collective call
    over the mesh's group; ``combine`` is local (each rank combines its own shard).
    """

    def __init__(
        self,
        groups: Sequence[ParameterGroup],
        num_tasks: int,
        layout: FSDPLayout,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(groups, num_tasks, device, process_group=None)
        self.process_group = layout.process_group
        self.layout = layout
        # Column layout of the local shards, group by group (host ints, computed once).
        self.local_sizes = [p.to_local().numel() for p in self.params]
        self.local_offsets: list[tuple[int, int]] = []
        start, n = 0, 0
        for group in self.groups:
            width = sum(self.local_sizes[n : n + len(group.params)])
            self.local_offsets.append((start, start + width))
            start += width
            n += len(group.params)
        self.local_numel = start
        self._buffer: torch.Tensor | None = None
        self._present_mask: torch.Tensor | None = None
        self._row_views: list[list[torch.Tensor]] = []

    @property
    def buffer(self) -> torch.Tensor:
        """The [K, S] float32 buffer of this rank's shards of the averaged task gradients
        (absent tasks' rows zero)."""
        if self._buffer is None:
            self.reset()
        return self._buffer

    @property
    def present_mask(self) -> torch.Tensor:
        if self._present_mask is None:
            self.reset()
        return self._present_mask

    def reset(self) -> None:
        if self._buffer is None:
            self._buffer = torch.zeros(
                self.num_tasks, self.local_numel, dtype=torch.float32, device=self.device
            )
            self._present_mask = torch.zeros(self.num_tasks, dtype=torch.bool, device=self.device)
            self._row_views = [
                [
                    chunk.view(p.to_local().shape)
                    for chunk, p in zip(row.split(self.local_sizes), self.params, strict=True)
                ]
                for row in self._buffer
            ]
        else:
            self._buffer.zero_()
            self._present_mask.zero_()
        self._nonfinite = None
        self.present = [False] * self.num_tasks
        self.touched = [False] * len(self.params)

    def release(self) -> None:
        self._buffer = None
        self._present_mask = None
        self._row_views = []

    def add(self, task_index, grads, half=None) -> None:
        raise InvalidInputError(
            "gradients of a fully_shard model are captured through s.backward(task, loss) "
            "(FSDP's reduce-scatter), not given as tensors"
        )

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
        if self._buffer is None:
            self.reset()
        params = self.params
        stash = [p.grad for p in params]
        for p in params:
            p.grad = None  # FSDP then assigns this backward's shard instead of accumulating
        loss.backward(retain_graph=retain_graph)
        dst, src = [], []
        for n, (p, view) in enumerate(zip(params, self._row_views[task_index], strict=True)):
            g = p.grad
            if g is None:
                continue
            dst.append(view)
            src.append(g.to_local().to(torch.float32))
            self.touched[n] = True
        if dst:
            torch._foreach_add_(dst, src)  # rows start at zero (reset): micro-batches add
        self._mark_present(task_index, None)
        for p, old in zip(params, stash, strict=True):
            new = p.grad
            if not into_grad or new is None:
                p.grad = old
            elif old is not None:
                old.to_local().add_(new.to_local())
                p.grad = old
            # into_grad and no previous .grad: keep FSDP's fresh shard as .grad

    def gram(self) -> torch.Tensor:
        """[G, K, K] exact Gram matrices of the averaged task gradients (collective call)."""
        K = self.num_tasks
        shard = self.buffer
        partial = [
            shard[:, a:b] @ shard[:, a:b].T
            if b > a
            else torch.zeros(K, K, dtype=shard.dtype, device=shard.device)
            for a, b in self.local_offsets
        ]
        packed = torch.cat([torch.stack(partial).reshape(-1), self._present_mask.float()])
        _distributed.all_reduce_sum(packed, self.process_group)
        grams = packed[:-K].view(len(self.groups), K, K)
        return self._mask_grams(grams, packed[-K:] > 0)

    def combine(self, weights: torch.Tensor, exclude_nonfinite: bool = True) -> list[torch.Tensor]:
        """Per parameter, this rank's shard of sum_i w_ki g_i (shaped like ``p.to_local()``);
        local, no communication."""
        weights = weights.to(device=self.device, dtype=torch.float32)
        rows = self.buffer
        bad = self._nonfinite
        if exclude_nonfinite and bad is not None:
            rows.masked_fill_(bad[:, None], 0.0)  # 0 x NaN = NaN: zero the rows (no sync)
        flat = torch.empty(self.local_numel, dtype=torch.float32, device=self.device)
        for k, (a, b) in enumerate(self.local_offsets):
            if b > a:
                torch.mv(rows[:, a:b].T, weights[k], out=flat[a:b])
        return [
            chunk.view(p.to_local().shape)
            for chunk, p in zip(flat.split(self.local_sizes), self.params, strict=True)
        ]

    def combine_into_grad(self, weights: torch.Tensor) -> None:
        """``.grad += sum_i w_gi g_i`` on this rank's shard of every parameter a task reached."""
        add_to_grad_shards(self.params, self.combine(weights), self.touched)

    def sum_into_grad(self) -> None:
        return None  # every backward already added the task's (averaged) shard to .grad


def add_to_grad_shards(
    params: Sequence[torch.Tensor], shards: Sequence[torch.Tensor], touched: Sequence[bool]
) -> None:
    """``p.grad += shard`` on this rank's shard of every touched sharded parameter (a DTensor
    ``.grad`` is created where it is None; untouched parameters keep ``.grad`` as it was)."""
    from torch.distributed.tensor import DTensor

    for p, g, hit in zip(params, shards, touched, strict=True):
        if not hit:
            continue
        g = g if g.dtype == p.dtype else g.to(p.dtype)
        if p.grad is None:
            p.grad = DTensor.from_local(
                g.contiguous(),
                p.device_mesh,
                p.placements,
                shape=p.shape,
                stride=p.stride(),
                run_check=False,
            )
        else:
            p.grad.to_local().add_(g)
