"""Every figure a set of runs supports: build them from analysis results, save them.

F1-F5 are drawn per run; F6 compares runs and needs a baseline (method ``sum``) and at
least one PCGrad or GradVac run. Figures a run cannot support are skipped with the reason.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from figures._data import FIGURES, RunData, collect_run, final_cosines, run_label
from figures._style import parse_formats, save
from geomtrace._errors import GeomtraceError, InvalidInputError

log = logging.getLogger(__name__)

_GROUP_NAME = {"all": "whole model"}


def _group(data: RunData) -> str:
    return _GROUP_NAME.get(data.group, f"group {data.group}")


def figure_f1(data: RunData):
    from analyses import complete_tasks
    from figures._heatmap import similarity_heatmap

    sim = data.frames["similarity_matrix"]
    keep = complete_tasks(sim)
    direction = f", {data.direction}" if data.direction else ""
    return similarity_heatmap(
        sim.loc[keep, keep], data.tree, families=data.families or None, scripts=data.scripts,
        title=f"Gradient similarity between languages ({_group(data)}{direction}), "
        "ordered by average-linkage clustering",
        subtitle=data.context(),
    )  # fmt: skip


def figure_f2(data: RunData):
    from figures._typology import typology_scatter

    sim = data.frames["similarity_matrix"]
    tasks = [t for t in sim.index if t in next(iter(data.distances.values())).index]
    s0 = data.similarity_step0.loc[tasks, tasks] if data.similarity_step0 is not None else None
    return typology_scatter(
        sim.loc[tasks, tasks], data.distances, data.frames["typology"], similarity_step0=s0,
        families=data.families or None,
        title=f"Gradient similarity vs typological distance ({_group(data)})",
        subtitle=data.context(),
    )  # fmt: skip


def figure_f3(data: RunData):
    from figures._quality import quality_scatter

    if "task_quality" not in data.frames:
        raise InvalidInputError(
            f"run {data.label!r} has no quality measurements: F3 (similarity vs quality) needs "
            "per-task chrF or held-out loss in the trace (recorded after the last step)"
        )
    return quality_scatter(
        data.frames["task_quality"], data.frames.get("quality"), families=data.families or None,
        title=f"Gradient similarity vs translation quality ({_group(data)})",
        subtitle=data.context(),
    )  # fmt: skip


def figure_f4(data: RunData):
    from figures._layers import layer_profile

    return layer_profile(
        data.frames["similarity"], data.by_family,
        title="Gradient similarity per parameter group (model order)", subtitle=data.context(),
    )  # fmt: skip


def figure_f5(data: RunData):
    from figures._time import similarity_over_time

    traj = data.frames.get("family_trajectories")
    settle = data.frames.get("family_settling")
    if traj is None:  # no families: the mean over all pairs, from the group trajectories
        gt = data.frames["group_trajectories"]
        traj = gt[gt["group"] == data.group].assign(kind="all")
        settle = None
    return similarity_over_time(
        traj, data.spread, data.pairs, settling=settle,
        title=f"Gradient similarity over training ({_group(data)})", subtitle=data.context(),
    )  # fmt: skip


PER_RUN: dict[str, Callable[[RunData], Any]] = {
    "f1": figure_f1,
    "f2": figure_f2,
    "f3": figure_f3,
    "f4": figure_f4,
    "f5": figure_f5,
}


@dataclass
class Comparison:
    """F6's inputs across runs."""

    methods: dict[str, str]
    baseline: str
    chrf_delta: pd.DataFrame
    final_cosines: pd.DataFrame
    targets: pd.DataFrame
    skipped: str | None = None


def compare_runs(runs: Sequence[RunData]) -> Comparison:
    """Gather F6's inputs; :class:`InvalidInputError` naming what is missing."""
    if len(runs) < 2:
        raise InvalidInputError(
            f"F6 (optimizers) needs several runs with different methods (sum plus pcgrad and/or "
            f"gradvac); got {len(runs)} run ({', '.join(r.label for r in runs)})"
        )
    baselines = [r for r in runs if r.method == "sum"]
    if not baselines:
        raise InvalidInputError(
            "F6 (optimizers) needs a baseline run with method 'sum'; the runs have methods "
            + ", ".join(f"{r.label}: {r.method}" for r in runs)
        )
    baseline = baselines[0]
    if not [r for r in runs if r.method != "sum"]:
        raise InvalidInputError(
            "F6 (optimizers) needs at least one pcgrad or gradvac run besides the baseline; "
            "every run has method 'sum'"
        )
    if len({tuple(r.trace.tasks) for r in runs}) > 1:
        raise InvalidInputError(
            "F6 (optimizers) compares runs over the same languages; their task lists differ: "
            + "; ".join(f"{r.label}: {r.trace.tasks}" for r in runs)
        )
    # Legend names: the method (with granularity) when that tells the runs apart, else
    # "method · run directory".
    names = [r.method_label for r in runs]
    unique = len(set(names)) == len(names)
    labels = {r.label: r.method_label if unique else f"{r.method_label} · {r.label}" for r in runs}
    ordered = [baseline] + [r for r in runs if r is not baseline]
    methods = {labels[r.label]: r.method for r in ordered}
    from analyses import gradvac_target_trajectories, quality_difference

    traces = {r.label: r.trace for r in ordered}
    delta = quality_difference(traces, baseline.label, metric="chrf")
    delta["run"] = delta["run"].map(labels)
    cos = pd.concat([final_cosines(r) for r in ordered], ignore_index=True)
    cos["run"] = cos["run"].map(labels)
    targets = pd.concat(
        [gradvac_target_trajectories(r.trace).assign(run=labels[r.label]) for r in ordered],
        ignore_index=True,
    )
    return Comparison(methods, labels[baseline.label], delta, cos, targets)


def figure_f6(comparison: Comparison):
    from figures._optimizers import optimizer_comparison

    return optimizer_comparison(
        comparison.chrf_delta, comparison.final_cosines, comparison.targets,
        methods=comparison.methods, baseline=comparison.baseline,
        subtitle="per-language chrF vs the sum baseline · whole-model cosines at the last "
        "snapshot · GradVac EMA targets φ̂ (mean over pairs; band: range over groups)",
    )  # fmt: skip


@dataclass
class PlotResult:
    """Paths written per run label and figure key, and why figures were skipped."""

    paths: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # "label/f3" -> reason
    runs: list[RunData] = field(default_factory=list)
    comparison: Comparison | None = None


def collect_runs(
    runs: Sequence[str | os.PathLike], *, group: str | None = None, n_permutations: int = 999,
    seed: int = 0, progress: Callable[[str], None] | None = None,
) -> list[RunData]:  # fmt: skip
    """``collect_run`` for every run, with unique labels."""
    if not runs:
        raise InvalidInputError("no run given: pass at least one run directory")
    out: list[RunData] = []
    for run in runs:
        label = run_label(Path(run), [r.label for r in out])
        if progress:
            progress(f"analysing {label}")
        out.append(
            collect_run(run, group=group, n_permutations=n_permutations, seed=seed, label=label)
        )
    return out


def build_figures(
    data: Sequence[RunData],
) -> tuple[dict[tuple[str, str], Any], dict[str, str], Comparison | None]:
    """Figures per (run label, key) (F6 under label ``""``) and skip reasons per "label/key"."""
    figures: dict[tuple[str, str], Any] = {}
    skipped: dict[str, str] = {}
    for run in data:
        for key, build in PER_RUN.items():
            if key in run.skipped:
                skipped[f"{run.label}/{key}"] = run.skipped[key]
                continue
            try:
                figures[(run.label, key)] = build(run)
            except GeomtraceError as err:
                skipped[f"{run.label}/{key}"] = str(err)
    comparison = None
    try:
        comparison = compare_runs(data)
        figures[("", "f6")] = figure_f6(comparison)
    except GeomtraceError as err:
        skipped["f6"] = str(err)
    return figures, skipped, comparison


def figure_stem(out: Path, label: str, key: str, several: bool) -> Path:
    name = f"{key}_{FIGURES[key]}"
    return out / label / name if (several and label) else out / name


def plot_runs(
    runs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    formats: str | Sequence[str] = ("png",),
    group: str | None = None,
    n_permutations: int = 999,
    seed: int = 0,
    dpi: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> PlotResult:
    """Draw every figure ``runs`` support into ``out`` (``out/<run>/`` when several runs).

    Files: ``f1_similarity_heatmap``, ``f2_typology``, ``f3_quality``, ``f4_layers``,
    ``f5_time`` per run and ``f6_optimizers`` across runs, in each of ``formats``.
    """
    formats = parse_formats(formats)
    data = collect_runs(
        runs, group=group, n_permutations=n_permutations, seed=seed, progress=progress
    )
    figures, skipped, comparison = build_figures(data)
    result = PlotResult(skipped=skipped, runs=data, comparison=comparison)
    several = len(data) > 1
    kw = {} if dpi is None else {"dpi": dpi}
    for (label, key), fig in figures.items():
        result.paths += save(fig, figure_stem(Path(out), label, key, several), formats, **kw)
    for name, reason in skipped.items():
        log.debug("skipped %s: %s", name, reason)
    return result
