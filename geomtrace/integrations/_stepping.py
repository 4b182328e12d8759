"""What the framework integrations share: the object that runs a step (Tracer or MultiTask)."""

from __future__ import annotations

from typing import Any

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
