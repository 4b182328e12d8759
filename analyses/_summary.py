"""``summary(trace)``: every analysis with its defaults, parts it cannot do skipped with a reason."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from analyses._clustering import family_agreement
from analyses._evolution import family_trajectories, group_trajectories, settling
from analyses._inputs import ALL, Window, tasks_with_nan
from analyses._mantel import typology_correlation
from analyses._quality import quality_correlation, task_quality
from analyses._similarity import similarity_matrix, similarity_summary, task_alignment
from analyses._typology import language_families
from geomtrace._errors import GeomtraceError, InvalidInputError

log = logging.getLogger(__name__)

#: Frames ``summary`` may hold, in print order (a skipped one is in ``Summary.skipped``).
SUMMARY_PARTS = (
    "similarity", "task_alignment", "similarity_matrix", "families", "clustering", "typology",
    "task_quality", "quality", "group_trajectories", "group_settling", "family_trajectories",
    "family_settling",
)  # fmt: skip
_LONG = {"group_trajectories", "family_trajectories"}  # printed as their settling tables only
_HIDDEN = {  # columns left out of the text view (still in the frames and the JSON)
    "families": ("path",),
    "typology": ("group", "n_permutations", "excluded", "note"),
    "quality": ("n_permutations", "excluded", "note"),
    "clustering": ("note",),
}


@dataclass
class Summary:
    """What :func:`summary` found: ``frames[name]`` per part, ``skipped[name]`` = reason.

    Frames (columns documented by the function that makes them): similarity
    (``similarity_summary``, every group), task_alignment, similarity_matrix (K x K),
    families (task + ``language_families`` columns), clustering (``family_agreement`` with a
    leading ``level`` column: family, genus), typology (``typology_correlation``),
    task_quality, quality (``quality_correlation``), group_trajectories, group_settling
    (``settling`` by group), family_trajectories, family_settling (by group, kind).
    """

    run: str | None
    group: str
    tasks: list[str]
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: frames as lists of records (NaN -> null), the matrix as tasks + rows."""
        frames: dict[str, Any] = {}
        for name, frame in self.frames.items():
            if name == "similarity_matrix":
                frames[name] = {
                    "tasks": [str(t) for t in frame.index],
                    "values": json.loads(frame.to_json(orient="values")),
                }
            else:
                frames[name] = json.loads(frame.to_json(orient="records"))
        return {
            "run": self.run,
            "group": self.group,
            "tasks": self.tasks,
            "settings": self.settings,
            "results": frames,
            "skipped": self.skipped,
        }

    def to_text(self) -> str:
        """Human-readable tables (the CLI's ``geomtrace analyze`` output)."""
        out = [
            f"run {self.run}  group {self.group}  tasks {len(self.tasks)}: {', '.join(self.tasks)}"
        ]
        fmt = lambda v: f"{v:.3f}"  # noqa: E731
        with pd.option_context("display.width", 200, "display.max_columns", 30):
            for name in SUMMARY_PARTS:
                if name in self.frames and name not in _LONG:
                    frame = self.frames[name]
                    drop = [c for c in _HIDDEN.get(name, ()) if c in frame.columns]
                    text = frame.drop(columns=drop).to_string(
                        index=name == "similarity_matrix", float_format=fmt
                    )
                    out += ["", f"== {name}", text]
                    for col in ("excluded", "note"):
                        if col in frame.columns:
                            for value in sorted({v for v in frame[col] if v}):
                                out.append(f"  {col}: {value}")
        if self.skipped:
            out += ["", "== skipped"] + [f"  {k}: {v}" for k, v in self.skipped.items()]
        return "\n".join(out)


def summary(
    trace: Any,
    *,
    group: str | None = None,
    window: Window | None = None,
    n_permutations: int = 9999,
    seed: int = 0,
    tol: float = 0.05,
    cache: str | os.PathLike | None = None,
) -> Summary:
    """Run every analysis on ``trace`` with defaults.

    ``group`` (default ``all``: whole model, Gram matrices summed over groups) is used by the
    per-task analyses; ``similarity`` and ``group_trajectories`` cover every group. A part that
    needs what the trace lacks (ISO codes, quality rows, >= 4 languages, a snapshot after
    step 0) is skipped and ``skipped[part]`` says why; nothing is invented.
    """
    group = group or ALL
    if group != ALL and group not in trace.groups:
        raise InvalidInputError(
            f"unknown group {group!r}; the trace has {list(trace.groups)} or {ALL!r}"
        )
    run = str(getattr(trace, "path", "")) or None
    result = Summary(run, group, list(trace.tasks))
    result.settings = {"window": window, "n_permutations": n_permutations, "seed": seed, "tol": tol}

    def attempt(name: str, fn, *args, **kwargs):
        try:
            result.frames[name] = fn(*args, **kwargs)
            return result.frames[name]
        except GeomtraceError as err:
            result.skipped[name] = str(err)
            log.info("summary: skipped %s: %s", name, err)
            return None

    attempt(
        "similarity", similarity_summary, trace, None if group == ALL else [group], window=window
    )
    attempt("task_alignment", task_alignment, trace, group, window=window)
    sim = attempt("similarity_matrix", similarity_matrix, trace, group, window=window)

    codes = {t: c for t, c in (getattr(trace, "iso_codes", {}) or {}).items() if c}
    families: dict[str, str] = {}
    no_iso = "the trace has no ISO 639-3 codes (pass iso_codes to the Tracer)"
    if not codes:
        for name in (
            "families",
            "clustering",
            "typology",
            "family_trajectories",
            "family_settling",
        ):
            result.skipped[name] = no_iso
    else:
        table = attempt("families", _families_frame, codes, cache)
        if table is not None:
            families = dict(zip(table["task"], table["family"], strict=True))
        if sim is not None and families:
            labelled = [t for t in sim.index if t in families]
            sub = sim.loc[labelled, labelled]
            drop = tasks_with_nan(sub.to_numpy(), labelled)
            keep = [t for t in labelled if t not in drop]
            if drop:
                log.info("summary: clustering leaves out %s (missing similarity)", drop)
            genera = dict(zip(table["task"], table["genus"], strict=True))
            frame = attempt(
                "clustering", _agreement, sub.loc[keep, keep], families, genera, keep,
                n_permutations, seed,
            )  # fmt: skip
            if frame is not None and drop:
                left_out = f"left out (missing similarity): {', '.join(drop)}"
                frame["note"] = [f"{n}; {left_out}" if n else left_out for n in frame["note"]]
        elif "clustering" not in result.skipped:
            result.skipped["clustering"] = "no similarity matrix or no families"
        attempt(
            "typology", typology_correlation, trace, group, window=window,
            n_permutations=n_permutations, seed=seed, cache=cache,
        )  # fmt: skip
    quality = trace.quality() if hasattr(trace, "quality") else pd.DataFrame()
    if quality.empty:
        reason = "the trace has no quality measurements (record_quality: chrf, heldout_loss)"
        result.skipped["task_quality"] = result.skipped["quality"] = reason
    else:
        attempt("task_quality", task_quality, trace, group, quality=quality, window=window)
        attempt(
            "quality", quality_correlation, trace, group, quality=quality, window=window,
            n_permutations=n_permutations, seed=seed,
        )  # fmt: skip
    traj = attempt("group_trajectories", group_trajectories, trace)
    if traj is not None:
        attempt("group_settling", settling, traj, by=("group",), tol=tol)
    if families:
        fam = attempt("family_trajectories", family_trajectories, trace, families, group)
        if fam is not None:
            attempt("family_settling", settling, fam, by=("group", "kind"), tol=tol)
    return result


def _families_frame(codes: dict[str, str], cache) -> pd.DataFrame:
    unique = list(dict.fromkeys(str(c).lower() for c in codes.values()))
    table = language_families(unique, cache=cache).set_index("language")
    rows = [{"task": t, "language": str(c).lower()} for t, c in codes.items()]
    frame = pd.DataFrame(rows).join(table, on="language")
    frame["depth"] = frame["depth"].astype(np.int64)
    return frame


def _agreement(sim, families, genera, keep, n_permutations, seed) -> pd.DataFrame:
    """family_agreement at the family and at the genus level, with a leading ``level`` column."""
    parts = []
    for level, labels in (("family", families), ("genus", genera)):
        frame = family_agreement(
            sim, {t: labels[t] for t in keep}, n_permutations=n_permutations, seed=seed
        )
        parts.append(frame.assign(level=level))
    out = pd.concat(parts, ignore_index=True)
    return out[["level", *out.columns[:-1]]]
