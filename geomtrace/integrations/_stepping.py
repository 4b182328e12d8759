"""What the framework integrations share: the object that runs a step (Tracer or MultiTask)."""

from __future__ import annotations

from typing import Any

from geomtrace._errors import InvalidInputError


def check_stepper(tracer: Any = None, multitask: Any = None) -> Any:
    """The one step-runner given: a :class:`~geomtrace.Tracer` (trace only, ``.grad`` as a
    summed backward) or a :class:`~geomtrace.MultiTask` (combine the task gradients with its
    aggregator, and record through its own ``tracer`` if it has one)."""
    from geomtrace._multitask import MultiTask
    from geomtrace._tracer import Tracer

    if (tracer is None) == (multitask is None):
        raise InvalidInputError(
            "give exactly one of tracer=Tracer(...) (trace only) or "
            "multitask=MultiTask(...) (aggregate, optionally with its own tracer)"
        )
    if tracer is not None and not isinstance(tracer, Tracer):
        raise InvalidInputError(f"tracer must be a geomtrace.Tracer, got {type(tracer).__name__}")
    if multitask is not None and not isinstance(multitask, MultiTask):
        raise InvalidInputError(
            f"multitask must be a geomtrace.MultiTask, got {type(multitask).__name__}"
        )
    return tracer if tracer is not None else multitask


def follow_device(stepper: Any) -> None:
    """Put the stepper's gradient buffer on the device the parameters now live on.

    Frameworks move the model (Trainer.__init__, Lightning's setup) after the user built the
    Tracer/MultiTask on the CPU copy; the buffer is reallocated lazily on the new device.
    """
    capture = stepper.capture
    device = capture.params[0].device
    if capture.device != device:
        capture.release()
        capture.device = device


def tracer_of(stepper: Any) -> Any:
    """The Tracer that records for ``stepper`` (itself, a MultiTask's tracer, or None)."""
    from geomtrace._tracer import Tracer

    return stepper if isinstance(stepper, Tracer) else stepper.tracer
