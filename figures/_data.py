"""What the figures draw, gathered from one run or several: analyses results plus a few helpers.

The analyses (``analyses.summary`` and friends) compute every statistic. The helpers below,
marked *helper*, compute small derived numbers the analyses do not provide yet (candidates to
move to analyses/): per-group within/across-family means, interquartile bands over pairs,
chrF differences between runs and GradVac target means.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
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


def complete_tasks(similarity: pd.DataFrame) -> list[str]:
    """Tasks left after dropping, one at a time, the task with the most NaN off-diagonal
    cosines (absent from the window), until none remain."""
    m = similarity.to_numpy(dtype=float).copy()
    np.fill_diagonal(m, 0.0)
    keep = list(range(len(m)))
    while keep:
        bad = ~np.isfinite(m[np.ix_(keep, keep)])
        counts = bad.sum(axis=1)
        if counts.max() == 0:
            break
        keep.pop(int(np.argmax(counts)))
    return [str(similarity.index[k]) for k in keep]


def family_means_by_group(
    trace: Any, families: Mapping[str, str], groups: Sequence[str] | None = None
) -> pd.DataFrame:
    """*Helper.* Within- and across-family mean cosine per parameter group.

    For each group: ``analyses.family_trajectories`` per snapshot, then the mean of those
    per-snapshot means over the snapshots after step 0 (the analyses' default window).
    Columns: group, position, part, kind, mean_cosine.
    """
    from analyses import family_trajectories
    from analyses._inputs import part_of

    rows = []
    for g in trace.groups if groups is None else groups:
        traj = family_trajectories(trace, families, g)
        traj = traj[traj["step"] > 0]
        for kind, part in traj.groupby("kind", sort=False):
            values = part["mean_cosine"].to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            rows.append(
                {
                    "group": g,
                    "position": list(trace.groups).index(g),
                    "part": part_of(g),
                    "kind": kind,
                    "mean_cosine": float(values.mean()) if values.size else np.nan,
                }
            )
    return pd.DataFrame(rows, columns=["group", "position", "part", "kind", "mean_cosine"])


def pair_spread(pair_trajectories: pd.DataFrame) -> pd.DataFrame:
    """*Helper.* Interquartile range of the pairs' cosines per step and kind.

    kind = within / across (``same_family`` True / False) or ``all`` when families are
    unknown. Columns: step, kind, q25, q75.
    """
    frame = pair_trajectories.dropna(subset=["cosine"])
    kind = frame["same_family"].map({True: "within", False: "across"}).fillna("all")
    grouped = frame.assign(kind=kind).groupby(["step", "kind"])["cosine"]
    out = pd.DataFrame({"q25": grouped.quantile(0.25), "q75": grouped.quantile(0.75)}).reset_index()
    return out[["step", "kind", "q25", "q75"]]


def chrf_difference(
    runs: Sequence[RunData], baseline: RunData, metric: str = "chrf"
) -> pd.DataFrame:
    """*Helper.* Per run and task: ``metric`` of the run minus that of ``baseline``.

    Columns: run, task, value, baseline, delta (tasks of the baseline only).
    """
    base = _metric(baseline, metric)
    rows = []
    for run in runs:
        if run is baseline:
            continue
        values = _metric(run, metric)
        for task, b in base.items():
            v = values.get(task, np.nan)
            rows.append({"run": run.label, "task": task, "value": v, "baseline": b, "delta": v - b})
    return pd.DataFrame(rows, columns=["run", "task", "value", "baseline", "delta"])


def _metric(run: RunData, metric: str) -> dict[str, float]:
    table = run.frames.get("task_quality")
    if table is None or metric not in table:
        raise InvalidInputError(
            f"run {run.label!r} has no {metric!r} quality values; F6 compares per-language "
            f"{metric} (the recipe records it after the last step: did the run finish?)"
        )
    return dict(zip(table["task"], table[metric].astype(float), strict=True))


def final_cosines(run: RunData) -> pd.DataFrame:
    """Pairwise cosines (whole model) at the run's last snapshot: rows run, task_a, task_b, cosine."""
    from analyses import pair_trajectories

    pairs = pair_trajectories(run.trace, "all")
    last = pairs[pairs["step"] == pairs["step"].max()]
    return last.assign(run=run.label)[["run", "task_a", "task_b", "cosine"]]


def gradvac_target_trajectories(run: RunData) -> pd.DataFrame:
    """*Helper.* Mean off-diagonal GradVac EMA target per group and step.

    From the trace array ``gradvac_target`` [S, G, K, K]: mean of phi_hat_ij over i != j.
    Columns: run, step, group, mean_target. Empty when the run has no such array.
    """
    if "gradvac_target" not in run.trace.array_names():
        return pd.DataFrame(columns=["run", "step", "group", "mean_target"])
    target = run.trace.array("gradvac_target")  # [S, G, K, K]
    K = target.shape[-1]
    off = ~np.eye(K, dtype=bool)
    means = target[..., off].mean(axis=-1)  # [S, G]
    S, G = means.shape
    groups = (
        list(run.trace.groups) if G == len(run.trace.groups) else [f"group {g}" for g in range(G)]
    )
    return pd.DataFrame(
        {
            "run": run.label,
            "step": np.repeat(run.trace.steps, G),
            "group": np.tile(groups, S),
            "mean_target": means.reshape(-1),
        }
    )


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
        keep = complete_tasks(sim)
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
        data.by_family = family_means_by_group(trace, data.families)

    if len(trace.steps) < 2:
        data.skipped["f5"] = f"the trace has {len(trace.steps)} snapshot: no evolution to draw"
    else:
        pairs = analyses.pair_trajectories(trace, group, families=data.families or None)
        data.spread = pair_spread(pairs)
        from figures._time import pick_pairs

        chosen = set(pick_pairs(pairs))
        mask = [(a, b) in chosen for a, b in zip(pairs["task_a"], pairs["task_b"], strict=True)]
        data.pairs = pairs[mask]
    return data
