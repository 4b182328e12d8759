"""Which steps a Tracer traces: ``every`` as a number of steps, a list of steps or a callable."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from geomtrace._errors import InvalidInputError

Schedule = int | Iterable[int] | Callable[[int], bool]

_SCHEDULE_HELP = "give a positive integer, a list of integer steps or a callable(step) -> bool"


def is_integral(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def make_schedule(every: Schedule) -> Callable[[int], bool]:
    """``every``: trace when ``step % every == 0`` (an integral number: int, numpy integer),
    when ``step`` is listed (an iterable of integral numbers), or when ``every(step)`` is true.
    Strings, floats and booleans are refused."""
    if isinstance(every, str | bytes | bool | float):
        raise InvalidInputError(f"every={every!r}: {_SCHEDULE_HELP}")
    if is_integral(every):
        every = int(every)
        if every < 1:
            raise InvalidInputError(f"every={every}: must be a positive number of steps")
        return lambda step: step % every == 0
    if callable(every):
        return lambda step: _schedule_answer(every, step)
    try:
        steps = list(every)
    except TypeError:
        raise InvalidInputError(f"every={every!r}: {_SCHEDULE_HELP}") from None
    bad = [s for s in steps if not is_integral(s)]
    if bad:
        raise InvalidInputError(f"every lists {bad[0]!r}, not an integer step: {_SCHEDULE_HELP}")
    return {int(s) for s in steps}.__contains__


def _schedule_answer(every: Callable[[int], Any], step: int) -> bool:
    """``every(step)`` as a bool: True/False, an integer, or a one-element numpy array or
    tensor of those; anything else (a longer array, None, a string, a float) is refused
    instead of being guessed at."""
    answer = every(step)
    value = answer
    if isinstance(value, np.ndarray | torch.Tensor) and value.ndim == 0:
        value = value.item()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or is_integral(value):
        return bool(value)
    raise InvalidInputError(
        f"every({step}) returned {answer!r} ({type(answer).__name__}); a schedule callable "
        "must return True or False"
    )


def positive_int(name: str, value: Any) -> int:
    if not is_integral(value) or int(value) < 1:
        raise InvalidInputError(f"{name}={value!r}: give a positive integer")
    return int(value)
