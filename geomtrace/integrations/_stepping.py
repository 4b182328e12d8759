"""What the framework integrations share: the object that runs a step (Tracer or MultiTask),
closing a step under fp16 loss scaling, and the gradient reduction of steps that capture nothing.

Several processes (data parallel): the integrations switch DistributedDataParallel's reducer
off for every backward (``no_sync``), because each micro-batch runs one forward and one
backward per task present on *this* rank, so ranks run different numbers of backward passes
and DDP's per-backward all-reduce would pair up the wrong calls (or hang). geomtrace then
reduces each update once, when the step closes: a capturing step through the core (each
task's gradient is the mean over ranks), a step that captures
nothing (a Tracer's unscheduled step) through :func:`reduce_plain_grads`, one all-reduce of the
summed gradient, i.e. what DDP would have done.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch

import geomtrace as gt


def check_stepper(tracer: Any = None, multitask: Any = None) -> Any:
    """The one step-runner given: a :class:`~geomtrace.Tracer` (trace only, ``.grad`` as a
    summed backward) or a :class:`~geomtrace.MultiTask` (combine the task gradients with its
    aggregator, and record through its own ``tracer`` if it has one)."""
    if (tracer is None) == (multitask is None):
        raise gt.InvalidInputError(
            "give exactly one of tracer=Tracer(...) (trace only) or "
            "multitask=MultiTask(...) (aggregate, optionally with its own tracer)"
        )
    if tracer is not None and not isinstance(tracer, gt.Tracer):
        raise gt.InvalidInputError(
            f"tracer must be a geomtrace.Tracer, got {type(tracer).__name__}"
        )
    if multitask is not None and not isinstance(multitask, gt.MultiTask):
        raise gt.InvalidInputError(
            f"multitask must be a geomtrace.MultiTask, got {type(multitask).__name__}"
        )
    return tracer if tracer is not None else multitask


def process_group(geometry: Any) -> Any:
    """The process group ``geometry`` reduces over (None: one process)."""
    return geometry._process_group


def unreduced_policies(geometry: Any) -> list[str]:
    """Names of the step-runners in ``geometry`` (itself, a MultiTask's tracer) that would not
    reduce over ranks: built before torch.distributed was initialised."""
    policies = [geometry, getattr(geometry, "tracer", None)]
    return [type(p).__name__ for p in policies if p is not None and p._process_group is None]


def reduce_plain_grads(params: Iterable[torch.Tensor], group: Any) -> None:
    """Average ``.grad`` over the ranks of ``group``, as DDP would have: one all-reduce of the
    flat gradients and a presence flag per parameter.

    A parameter whose ``.grad`` is None on this rank contributes zeros (another rank's tasks
    may have reached it); it gets a gradient when any rank had one, and stays None otherwise.
    """
    if group is None:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    device = params[0].device
    flat = torch.cat(
        [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
            for p in params
        ]
        + [torch.tensor([float(p.grad is not None) for p in params], device=device)]
    )
    torch.distributed.all_reduce(flat, group=group)
    values, present = flat[: -len(params)], flat[-len(params) :].cpu().tolist()
    values.div_(torch.distributed.get_world_size(group))
    for p, value, seen in zip(
        params, values.split([p.numel() for p in params]), present, strict=True
    ):
        if seen:
            p.grad = value.view_as(p).to(p.dtype)


@contextlib.contextmanager
def no_sync(model: torch.nn.Module) -> Iterator[None]:
    """DistributedDataParallel's ``no_sync()`` (a no-op for any other module): see the module
    docstring for why the integrations' backward passes run without DDP's reducer."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
    else:
        yield


def check_loss_scaling(geometry: Any, scaler: Any) -> None:
    """fp16 with a GradScaler: the task gradients are unscaled in the exact capture buffer
    (:func:`close_step`), which sketches and the FSDP capture do not have."""
    if scaler is None:
        return
    capture = geometry.capture
    if not isinstance(capture, gt.TaskGradients):
        raise gt.InvalidInputError(
            f"fp16 with a GradScaler needs geomtrace's exact capture (TaskGradients) to unscale "
            f"the task gradients before the Gram matrices; this {type(geometry).__name__} uses "
            f"{type(capture).__name__}: use bf16 or fp32, or exact capture (no sketch, no FSDP)"
        )


def close_step(step: Any, scaler: Any = None, params: Iterable[torch.Tensor] = ()) -> None:
    """Close ``step`` (``__exit__`` without an exception), then reduce a non-capturing step's
    ``.grad`` over ranks (:func:`reduce_plain_grads` over ``params``).

    ``scaler``: the GradScaler whose scale s multiplied every task loss (fp16). The captured
    task gradients are s g_i; they are divided by s before the Gram matrices and the
    aggregation, so the trace and the aggregator see g_i (s is a power of two: dividing and
    multiplying by it is exact). What the step writes into ``.grad`` on closing (a MultiTask's
    combination, a distributed Tracer's reduced sum) is then multiplied by s, because the
    trainer unscales ``.grad`` once more before clipping and stepping; a one-process Tracer's
    ``.grad`` already holds s sum_i g_i from the backward passes. If any task's scaled gradient
    overflowed (NaN/inf), the core leaves that task out of the combination, so ``.grad`` would
    look finite: the first written gradient is set to inf, and the GradScaler skips the update
    and lowers its scale, as it would after a plain backward.
    """
    capture = step.capture if step.capturing else None
    scale = None
    if scaler is not None and capture is not None:
        scale = float(scaler.get_scale())  # one host read per update
        capture.buffer.mul_(1.0 / scale)
    step.__exit__(None, None, None)
    if capture is None:
        reduce_plain_grads(params, step._policy._process_group)
        return
    if scale is None:
        return
    writes_on_close = not step._policy.sums_into_grad or capture.process_group is not None
    grads = [p.grad for p, hit in zip(capture.params, capture.touched, strict=True) if hit]
    grads = [g for g in grads if g is not None]
    if writes_on_close and grads:
        torch._foreach_mul_(grads, scale)
        overflowed = bool(capture.nonfinite().any()) or not all(
            math.isfinite(x) for x in torch.stack([g.float().abs().max() for g in grads]).tolist()
        )
        if overflowed:
            grads[0].fill_(math.inf)
