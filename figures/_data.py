"""What the figures draw, gathered from one run or several: analyses results only.

The analyses (``analyses.summary``, ``analyses.family_means_by_group``, ``analyses.pair_spread``,
``analyses.quality_difference``, ``analyses.gradvac_target_trajectories`` ...) compute every
number; this module opens the runs, calls them and keeps the results with the run's labels.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geomtrace._errors import GeomtraceError, InvalidInputError, TraceError

log = logging.getLogger(__name__)

FIGURES = {
    "f1": "similarity_heatmap",
    "f2": "typology",
    "f3": "quality",
    "f4": "layers",
    "f5": "time",
    "f6": "optimizers",
}


@dataclass
class RunData:
    """One run's trace and the analysis results its figures draw (None: not available)."""

    path: Path
    label: str
    trace: Any
    group: str
    method: str
    granularity: str | None
    direction: str | None
    summary: Any  # analyses.Summary
    families: dict[str, str] = field(default_factory=dict)
    scripts: dict[str, str] | None = None
    tree: Any = None  # analyses.ClusterTree over the tasks with complete similarity
    similarity_step0: pd.DataFrame | None = None
    distances: dict[str, pd.DataFrame] = field(default_factory=dict)
    by_family: pd.DataFrame | None = None
    spread: pd.DataFrame | None = None
    pairs: pd.DataFrame | None = None
    skipped: dict[str, str] = field(default_factory=dict)  # figure key -> why it is missing

    @property
    def frames(self) -> dict[str, pd.DataFrame]:
        return self.summary.frames

    @property
    def method_label(self) -> str:
        from figures._style import method_label

        return method_label(self.method, self.granularity)

    def context(self) -> str:
        """Subtitle: run, group, direction, step window, tasks."""
        steps = np.asarray(self.trace.steps)
        later = steps[steps > 0]
        window = (
            f"steps {later.min()}–{later.max()} ({len(later)} snapshots)"
            if len(later)
            else "no step > 0"
        )
        bits = [f"run {self.label}", f"method {self.method_label}", f"group {self.group}"]
        if self.direction:
            bits.append(self.direction)
        bits += [window, f"{len(self.trace.tasks)} languages"]
        return " · ".join(bits)


def run_label(path: Path, labels: Sequence[str] = ()) -> str:
    """The run directory's name, made unique among ``labels`` with its parent's name."""
    path = Path(path)
    base = path.parent.name if path.suffix == ".sqlite" else path.name
    label = base or str(path)
    if label in labels:
        label = f"{path.parent.name}/{label}"
    return label


def open_run(run: str | os.PathLike) -> Any:
    """Open a run's trace; a clear :class:`TraceError` for an empty or snapshot-less run."""
    from geomtrace._trace import open_trace

    path = Path(run)
    if path.is_dir() and not any(path.iterdir()):
        raise TraceError(f"run directory {str(path)!r} is empty: it holds no trace.sqlite")
    trace = open_trace(path)
    if len(trace.steps) == 0:
        raise TraceError(f"the trace of {str(path)!r} has no snapshots yet: nothing to plot")
    return trace


def final_cosines(run: RunData) -> pd.DataFrame:
    """Pairwise cosines (whole model) at the run's last snapshot: rows run, task_a, task_b, cosine."""
    from analyses import pair_trajectories

    pairs = pair_trajectories(run.trace, "all")
    last = pairs[pairs["step"] == pairs["step"].max()]
    return last.assign(run=run.label)[["run", "task_a", "task_b", "cosine"]]


def collect_run(
    run: str | os.PathLike,
    *,
    group: str | None = None,
    n_permutations: int = 999,
    seed: int = 0,
    label: str | None = None,
) -> RunData:
    """Open ``run`` and compute every analysis its figures need (``analyses.summary`` plus
    the clustering tree, step-0 matrix, typology distances per pair, per-group family means,
    pair trajectories). What the trace cannot support is listed in ``RunData.skipped``."""
    import analyses

    trace = open_run(run)
    group = group or analyses.ALL
    if group != analyses.ALL and group not in trace.groups:
        raise InvalidInputError(f"unknown group {group!r}; the trace has {trace.groups} (or 'all')")
    summary = analyses.summary(trace, group=group, n_permutations=n_permutations, seed=seed)
    data = RunData(
        path=Path(run),
        label=label or run_label(Path(run)),
        trace=trace,
        group=group,
        method=str(trace.meta("method") or trace.config.get("method") or "sum"),
        granularity=trace.meta("granularity") or trace.config.get("granularity"),
        direction=trace.meta("direction") or trace.config.get("direction"),
        summary=summary,
        scripts=trace.meta("scripts"),
    )
    fam = summary.frames.get("families")
    if fam is not None:
        data.families = dict(zip(fam["task"], fam["family"], strict=True))

    sim = summary.frames.get("similarity_matrix")
    if sim is None:
        data.skipped["f1"] = summary.skipped.get("similarity_matrix", "no similarity matrix")
    else:
        keep = analyses.complete_tasks(sim)
        if len(keep) >= 3:
            data.tree = analyses.cluster_tasks(sim.loc[keep, keep])
        if len(keep) < 2:
            data.skipped["f1"] = f"fewer than 2 tasks with similarities ({keep})"
        try:
            data.similarity_step0 = analyses.similarity_matrix(trace, group, window=(0, 0))
        except GeomtraceError:
            data.similarity_step0 = None

    if "typology" not in summary.frames:
        data.skipped["f2"] = summary.skipped.get("typology", "no typology correlation")
    else:
        corr = summary.frames["typology"]
        codes = {t: str(c).lower() for t, c in trace.iso_codes.items() if c}
        kinds = [k for k in analyses.DISTANCES if k in set(corr["distance"])]
        matrices = analyses.typological_distances(sorted(set(codes.values())), kinds)
        tasks = [t for t in trace.tasks if t in codes]
        data.distances = {
            k: pd.DataFrame(
                m.loc[[codes[t] for t in tasks], [codes[t] for t in tasks]].to_numpy(),
                index=tasks, columns=tasks,
            )
            for k, m in matrices.items()
        }  # fmt: skip

    if "task_quality" not in summary.frames:
        data.skipped["f3"] = summary.skipped.get("task_quality", "no quality measurements")
    if len(trace.groups) < 2:
        data.skipped["f4"] = f"the trace has one parameter group ({trace.groups}): no layer profile"
    elif data.families:
        data.by_family = analyses.family_means_by_group(trace, data.families)

    if len(trace.steps) < 2:
        data.skipped["f5"] = f"the trace has {len(trace.steps)} snapshot: no evolution to draw"
    else:
        pairs = analyses.pair_trajectories(trace, group, families=data.families or None)
        data.spread = analyses.pair_spread(pairs)
        from figures._time import pick_pairs

        chosen = set(pick_pairs(pairs))
        mask = [(a, b) in chosen for a, b in zip(pairs["task_a"], pairs["task_b"], strict=True)]
        data.pairs = pairs[mask]
    return data
