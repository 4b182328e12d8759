"""Split halves as one value: whether a run captures two halves of each task's gradient, and
the rule that credits each backward to half a or b.

With halves on, each task's gradient on a traced step is g_i = a_i + b_i, a_i and b_i from
disjoint halves of its data, and every snapshot stores ``split_half`` [G, K, 3] = (a.a, b.b,
a.b) (see ``geomtrace._reliability`` for what they estimate). The value is validated once,
where the option enters (``Tracer(halves=, halves_rule=, window=)``), written to the trace's
meta (``"halves"``, ``"halves_rule"``) and read back from it by the reader.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from geomtrace._errors import InvalidInputError

#: half rules: ``micro_batches`` alternates a task's micro-batches 0, 1, 0, ... within a step;
#: ``step_parity`` gives a window's even steps to a and its odd steps to b
HALVES_RULES = ("micro_batches", "step_parity")


@dataclass(frozen=True)
class Halves:
    """Split-half capture on or off, and its ``rule`` (one of :data:`HALVES_RULES`; None when
    off, or for an old trace that did not record it)."""

    enabled: bool = False
    rule: str | None = None

    @classmethod
    def choose(cls, enabled: bool, rule: str | None, window: int) -> Halves:
        """The halves of a tracer with ``halves=enabled``, ``halves_rule=rule`` and
        ``window``: the rule defaults to ``step_parity`` for a window of >= 2 steps, else
        ``micro_batches``; a rule without halves, an unknown rule or ``step_parity`` without a
        window is refused."""
        if rule is None:
            if not enabled:
                return cls()
            return cls(True, "step_parity" if window > 1 else "micro_batches")
        if not enabled:
            raise InvalidInputError(f"halves_rule={rule!r} needs halves=True")
        if rule not in HALVES_RULES:
            raise InvalidInputError(f"halves_rule={rule!r}: use one of {', '.join(HALVES_RULES)}")
        if rule == "step_parity" and window < 2:
            raise InvalidInputError("halves_rule='step_parity' needs a window of window >= 2 steps")
        return cls(True, rule)

    def meta(self) -> dict[str, Any]:
        """What the trace's meta records: ``halves`` (true or false, so a reader never has to
        infer it) and, with halves on, ``halves_rule``."""
        return {"halves": True, "halves_rule": self.rule} if self.enabled else {"halves": False}

    @classmethod
    def from_meta(cls, meta: Callable[[str], Any], has_split_half: Callable[[], bool]) -> Halves:
        """The halves a trace was written with, from its meta (``meta(key)``, None when
        absent). A trace written before the ``"halves"`` meta was always recorded says
        nothing either way: it has halves when its snapshots carry the ``split_half`` array
        (``has_split_half()``), with its rule unknown (None)."""
        recorded = meta("halves")
        enabled = bool(recorded) if recorded is not None else has_split_half()
        return cls(True, meta("halves_rule")) if enabled else cls()
