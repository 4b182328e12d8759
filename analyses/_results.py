"""``analyse_run``: every number a run's commands, figures and report show, computed once.

:class:`RunResults` is the one object behind ``geomtrace inspect``, ``analyze``, the summary
printed by ``geomtrace trace``, every figure (F1-F6) and the HTML report: each number in it
is defined by one function of ``analyses`` (listed per frame in :data:`FRAMES`), and no other
layer recomputes it. What a run cannot support is a :class:`NotApplicable` with its reason
(tasks without ISO codes have no typology; a run without quality rows has no quality
correlation), never an exception caught as a skip: only real input errors raise.

Uncertainty (see ``analyses._uncertainty``): every statistic carries a circular block bootstrap
interval over snapshots (``ci_low``, ``ci_high``) next to its permutation p-value, each table
of tests a Holm-adjusted p (``p_holm``) with the number of tests in its family
(``frames["tests"]``), and, when the trace has split halves, reliability per group and task.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import geomtrace as gt
from analyses._clustering import ClusterTree, cluster_tasks, family_agreement
from analyses._evolution import (
    family_means_by_group,
    family_trajectories,
    group_trajectories,
    pair_spread,
    pair_trajectories,
    reliability_trajectory,
    settling_step,
)
from analyses._flat_clusters import tree_dict
from analyses._inputs import ALL, Window, part_of, tasks_with_nan, window_mask
from analyses._iso import usable_iso_codes
from analyses._mantel import typology_correlation
from analyses._measures import check_measure, has_halves
from analyses._optimizers import gradvac_target_trajectories
from analyses._quality import quality_correlation, task_quality
from analyses._similarity import (
    DIFFERENCE_COLUMNS,
    LOW_RELIABILITY,
    group_difference,
    reliability_table,
    similarity_summary,
    task_alignment,
    windowed,
)
from analyses._task_specific import task_specific_groups, task_specific_note
from analyses._typology import DISTANCES, language_families, typological_distances
from analyses._uncertainty import LEVEL, N_BOOTSTRAP, benjamini_hochberg, holm, interval
from geomtrace import InvalidInputError, TraceError, open_trace

log = logging.getLogger(__name__)

#: Significance level of the "survives Holm" marks.
ALPHA = 0.05

#: Frame name -> the function that defines its numbers (documentation and the report).
FRAMES: dict[str, str] = {
    "similarity": "similarity_summary (every group)",
    "reliability": "reliability_table (split halves)",
    "task_alignment": "task_alignment",
    "similarity_matrix": "similarity_matrix",
    "similarity_matrix_step0": "similarity_matrix(window=(0, 0))",
    "families": "language_families",
    "clustering": "family_agreement (family and genus levels) / cluster_tasks",
    "typology": "typology_correlation",
    "layers": "typology_correlation per group (layer x distance)",
    "layer_clustering": "family_agreement per group",
    "task_quality": "task_quality",
    "quality": "quality_correlation",
    "group_trajectories": "group_trajectories",
    "group_differences": "group_difference, decoder minus encoder at the same depth (paired)",
    "reliability_trajectory": "reliability_trajectory (reliability, raw and corrected mean)",
    "group_settling": "settling (by group) + pair bootstrap",
    "family_trajectories": "family_trajectories",
    "family_settling": "settling (by kind) + pair bootstrap",
    "by_family": "family_means_by_group",
    "pair_spread": "pair_spread",
    "pairs": "pair_trajectories (named pairs)",
    "final_pairs": "pair_trajectories at the last snapshot",
    "quality_values": "trace.quality()",
    "gradvac_targets": "gradvac_target_trajectories",
    "gradvac_tracking": "targets vs (corrected) similarity",
    "tests": "every test with its Holm adjustment",
    "task_specific_groups": "task_specific_groups (groups one task's gradient alone reaches)",
}


@dataclass(frozen=True)
class NotApplicable:
    """An analysis that does not apply to this run, and why (a result, not an error)."""

    reason: str

    def __bool__(self) -> bool:
        return False

    def __str__(self) -> str:
        return self.reason


@dataclass
class RunDescription:
    """What the run is, read from its own metadata (the report's and figures' wording).

    task_noun: "language" when the tasks carry ISO 639-3 codes, else "task"; metrics: the
    quality metrics recorded (first recorded first); model/data: free text from meta
    (``param_count``, ``domains``, ``recipe``), empty when the run did not say.
    """

    method: str
    granularity: str | None
    direction: str | None
    task_noun: str
    metrics: list[str]
    model: str
    data: str
    halves: bool
    window: int | None
    n_snapshots: int
    steps: list[int]

    @property
    def tasks_noun(self) -> str:
        return f"{self.task_noun}s"

    def method_label(self) -> str:
        name = {"sum": "sum (baseline)", "pcgrad": "PCGrad", "gradvac": "GradVac"}.get(
            self.method, self.method
        )
        return f"{name} ({self.granularity})" if self.method != "sum" and self.granularity else name


@dataclass
class RunResults:
    """Everything :func:`analyse_run` computed for one run (see the module docstring).

    frames: name -> DataFrame (see :data:`FRAMES`); not_applicable: name -> reason;
    warnings: statements about how far the numbers can be trusted (low reliability, ...);
    tree: the clustering of the headline matrix; distances: typological distance matrices
    over the tasks (F2); families/genera/scripts: per task, where known.
    """

    run: str | None
    label: str
    tasks: list[str]
    group: str
    measure: str
    description: RunDescription
    settings: dict[str, Any]
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    not_applicable: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: statements about the statistics themselves (e.g. too few permutations for Holm)
    notes: list[str] = field(default_factory=list)
    tree: ClusterTree | None = None
    distances: dict[str, pd.DataFrame] = field(default_factory=dict)
    families: dict[str, str] = field(default_factory=dict)
    genera: dict[str, str] = field(default_factory=dict)
    scripts: dict[str, str] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    #: the tree as JSON with its flat clusters (``analyses._flat_clusters.tree_dict``)
    clusters: dict[str, Any] | None = None

    def frame(self, name: str) -> pd.DataFrame | NotApplicable:
        """The frame ``name``, or a :class:`NotApplicable` saying why it is missing."""
        if name in self.frames:
            return self.frames[name]
        return NotApplicable(self.not_applicable.get(name, f"{name} was not computed"))

    def headline(self) -> dict[str, Any]:
        """The run's headline numbers: mean similarity (headline group) with its interval."""
        sim = self.frames.get("similarity")
        if sim is None or sim.empty:
            return {"group": self.group, "mean_similarity": None}
        row = sim[sim["group"] == self.group].iloc[0]
        out = {
            "group": self.group,
            "measure": self.measure,
            "mean_similarity": _num(row["mean_cosine"]),
            "ci_low": _num(row["ci_low"]),
            "ci_high": _num(row["ci_high"]),
            "n_snapshots": int(row["n_steps"]),
            "reliability": _num(row["reliability"]),
            "mean_corrected": _num(row["mean_corrected"]),
        }
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: frames as lists of records (NaN -> null), matrices as tasks + values."""
        frames: dict[str, Any] = {}
        for name, frame in self.frames.items():
            if name.startswith("similarity_matrix"):
                frames[name] = {
                    "tasks": [str(t) for t in frame.index],
                    "values": json.loads(frame.to_json(orient="values")),
                }
            else:
                frames[name] = json.loads(frame.to_json(orient="records"))
        d = self.description
        return {
            "run": self.run,
            "label": self.label,
            "group": self.group,
            "measure": self.measure,
            "tasks": self.tasks,
            "description": {
                "method": d.method,
                "granularity": d.granularity,
                "direction": d.direction,
                "task_noun": d.task_noun,
                "metrics": d.metrics,
                "halves": d.halves,
                "window": d.window,
                "n_snapshots": d.n_snapshots,
            },  # fmt: skip
            "settings": self.settings,
            "headline": self.headline(),
            "warnings": self.warnings,
            "notes": self.notes,
            "results": frames,
            "clustering_tree": self.clusters,
            "not_applicable": self.not_applicable,
        }

    def to_text(self) -> str:
        """Human-readable tables (``geomtrace analyze``)."""
        from analyses._text import results_text

        return results_text(self)

    def summary_text(self) -> str:
        """One screen per run (the summary printed by ``geomtrace trace``)."""
        from analyses._text import summary_text

        return summary_text(self)


def _num(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def describe(trace: Any) -> RunDescription:
    """A :class:`RunDescription` from the trace's metadata and contents."""
    config = dict(getattr(trace, "config", {}) or {})
    meta = trace.meta if hasattr(trace, "meta") else (lambda key, default=None: default)
    codes = {t: c for t, c in (getattr(trace, "iso_codes", {}) or {}).items() if c}
    quality = trace.quality() if hasattr(trace, "quality") else pd.DataFrame()
    metrics = list(dict.fromkeys(quality["metric"])) if not quality.empty else []
    params = meta("param_count")
    model = f"{int(params):,} trainable parameters" if params else ""
    domains = meta("domains")
    data = ""
    if domains:
        data = "gettext catalogs (" + ", ".join(map(str, domains)) + ")"
    elif config.get("recipe"):
        data = f"recipe {config['recipe']}"
    window = meta("window")
    return RunDescription(
        method=str(meta("method") or config.get("method") or "sum"),
        granularity=meta("granularity") or config.get("granularity"),
        direction=meta("direction") or config.get("direction"),
        task_noun="language" if codes else "task",
        metrics=metrics,
        model=model,
        data=data,
        halves=has_halves(trace),
        window=int(window) if window else None,
        n_snapshots=len(trace.steps),
        steps=[int(s) for s in trace.steps],
    )


def run_label(path: str | os.PathLike, labels: Sequence[str] = ()) -> str:
    """The run directory's name, made unique among ``labels`` with its parent's name."""
    path = Path(path)
    base = path.parent.name if path.suffix == ".sqlite" else path.name
    label = base or str(path)
    if label in labels:
        label = f"{path.parent.name}/{label}"
    return label


def open_run(run: str | os.PathLike) -> Any:
    """Open a run's trace; a clear :class:`TraceError` for an empty or snapshot-less run."""
    path = Path(run)
    if path.is_dir() and not any(path.iterdir()):
        raise TraceError(f"run directory {str(path)!r} is empty: it holds no trace.sqlite")
    trace = open_trace(path)
    if len(trace.steps) == 0:
        raise TraceError(f"the trace of {str(path)!r} has no snapshots yet: nothing to analyse")
    return trace


#: Parts of :func:`analyse_run`, in order; ``parts=`` selects a subset (and what they need).
PARTS = ("similarity", "clustering", "typology", "layers", "quality", "evolution", "optimizer")


def analyse_run(
    run: Any,
    *,
    group: str | None = None,
    measure: str = "raw",
    window: Window | None = None,
    metric: str | None = None,
    n_permutations: int = 999,
    n_bootstrap: int = N_BOOTSTRAP,
    block: int | None = None,
    seed: int = 0,
    level: float = LEVEL,
    tol: float = 0.05,
    parts: Sequence[str] | None = None,
    label: str | None = None,
    cache: str | os.PathLike | None = None,
    keep_task_specific: bool = False,
) -> RunResults:
    """Analyse one run (a trace, or a run directory / trace.sqlite path) with every analysis.

    ``group`` (default ``all``: whole model) and ``measure`` (``raw``, ``corrected`` with split
    halves, ``centred``) are the headline matrix of the per-task analyses; the similarity
    summary, reliability and the layer table cover every group. ``metric``: the headline
    quality metric (default: the first recorded). ``parts``: a subset of :data:`PARTS`.
    Task-specific groups (``analyses._task_specific``: per-task heads) are reported once in
    ``frames["task_specific_groups"]`` and a note, and left out of the per-group tables
    unless ``keep_task_specific``.
    """
    if (
        isinstance(n_permutations, bool)
        or not isinstance(n_permutations, int)
        or n_permutations < 1
    ):
        raise InvalidInputError(
            f"n_permutations={n_permutations!r}: give a positive number of permutations"
        )
    check_measure(measure)
    parts = list(PARTS if parts is None else parts)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise InvalidInputError(f"unknown part(s) {unknown}; allowed: {', '.join(PARTS)}")
    trace = run if hasattr(run, "gram") else open_run(run)
    path = getattr(trace, "path", None)
    group = group or ALL
    if group != ALL and group not in trace.groups:
        raise InvalidInputError(
            f"unknown group {group!r}; the trace has {list(trace.groups)} or {ALL!r}"
        )
    if measure == "corrected" and not has_halves(trace):
        raise InvalidInputError(
            "measure='corrected' needs split halves: trace with Tracer(..., halves=True) "
            "(geomtrace trace --set halves=true); this trace has none"
        )
    description = describe(trace)
    if metric is not None and metric not in description.metrics:
        raise InvalidInputError(
            f"metric {metric!r} is not recorded in the run; it has "
            f"{description.metrics or 'no quality metric'}"
        )
    result = RunResults(
        run=str(path) if path is not None else None,
        label=label or (run_label(path) if path is not None else "run"),
        tasks=list(trace.tasks),
        group=group,
        measure=measure,
        description=description,
        settings={
            "window": window,
            "n_permutations": n_permutations,
            "n_bootstrap": n_bootstrap,
            "block": block,
            "seed": seed,
            "level": level,
            "tol": tol,
            "metric": metric or (description.metrics[0] if description.metrics else None),
        },  # fmt: skip
        scripts=trace.meta("scripts") if hasattr(trace, "meta") else None,
        config=dict(getattr(trace, "config", {}) or {}),
        meta={
            k: trace.meta(k)
            for k in (
                "train_seconds",
                "train_cpu_seconds",
                "versions",
                "interrupted_at_step",
                "corpus_counts",
            )
        }
        if hasattr(trace, "meta")
        else {},
    )
    boot = {"n_bootstrap": n_bootstrap, "block": block, "seed": seed, "level": level}
    specific = task_specific_groups(trace)
    if len(specific):
        result.frames["task_specific_groups"] = specific
        result.notes.append(task_specific_note(specific, description.tasks_noun))
    hidden = set() if keep_task_specific else set(specific["group"])
    shared = [g for g in trace.groups if g not in hidden]
    result.settings["groups"] = shared if ALL in trace.groups else [ALL, *shared]
    tables = result.settings["groups"] if hidden else None  # None: every group, as before
    later = window_mask(np.asarray(trace.steps), window)
    if not later.any():
        reason = (
            f"no snapshot in the step window {window or '(after step 0)'}: the trace has steps "
            f"{[int(s) for s in trace.steps]}"
        )
        for name in ("similarity", "task_alignment", "similarity_matrix", "clustering",
                     "typology", "layers", "task_quality", "quality"):  # fmt: skip
            result.not_applicable[name] = reason
        if "evolution" in parts:
            _evolution(result, trace, tol)
        return result

    # Similarity, reliability, the headline matrix.
    result.frames["similarity"] = similarity_summary(
        trace, tables, measure=measure, window=window, **boot
    )
    differences = _paired_differences(trace, result.settings["groups"], window, boot)
    if differences is not None:
        result.frames["group_differences"] = differences
    if description.halves:
        result.frames["reliability"] = reliability_table(trace, tables, window=window)
    else:
        result.not_applicable["reliability"] = (
            "the trace has no split halves (Tracer(..., halves=True)): reliability unknown"
        )
    _reliability_warnings(result)
    if "similarity" in parts and len(parts) == 1:
        return result
    sim = windowed(trace, group, measure, window=window)
    matrix = pd.DataFrame(sim.matrix(), index=sim.tasks, columns=sim.tasks)
    result.frames["similarity_matrix"] = matrix
    at0 = np.asarray(trace.steps) == 0
    if at0.any():
        full = windowed(trace, group, measure, window=(0, 0))
        result.frames["similarity_matrix_step0"] = pd.DataFrame(
            full.matrix(), index=full.tasks, columns=full.tasks
        )
    result.frames["task_alignment"] = task_alignment(
        trace, group, measure=measure, window=window, **boot
    )
    complete = [t for t in sim.tasks if t not in tasks_with_nan(matrix.to_numpy(), sim.tasks)]
    result.settings["complete_tasks"] = complete

    codes, unknown = usable_iso_codes(trace.iso_codes)
    if unknown:
        result.notes.append(unknown)
    if codes:
        families = _families_frame(codes, cache)
        result.frames["families"] = families
        result.families = dict(zip(families["task"], families["family"], strict=True))
        result.genera = dict(zip(families["task"], families["genus"], strict=True))
    no_iso = (
        f"the {description.tasks_noun} have no ISO 639-3 codes: typological distances and "
        "families need them (Tracer(..., iso_codes=...))"
    )
    if "clustering" in parts:
        _clustering(result, sim, complete, n_permutations, boot)
    if "typology" in parts or "layers" in parts:
        if not codes:
            result.not_applicable["typology"] = result.not_applicable["layers"] = no_iso
        else:
            _typology(result, trace, codes, parts, measure, window, n_permutations, boot, cache)
    if "quality" in parts:
        _quality(result, trace, measure, window, n_permutations, boot, codes, cache)
    if "evolution" in parts:
        _evolution(result, trace, tol)
    if "optimizer" in parts:
        _optimizer(result, trace)
    _tests_table(result)
    return result


def _table_groups(result: RunResults, trace) -> list[str]:
    """The groups of the per-group tables: ``all`` and every group but task-specific ones."""
    return result.settings.get("groups") or (
        [ALL, *trace.groups] if ALL not in trace.groups else list(trace.groups)
    )


def _reliability_warnings(result: RunResults) -> None:
    sim = result.frames["similarity"]
    head = sim[sim["group"] == result.group]
    if head.empty:
        return
    r = float(head["reliability"].iloc[0])
    if not result.description.halves:
        result.warnings.append(
            "reliability unknown (no split halves in the trace): the similarities may be mostly "
            "sampling noise, which pulls every cosine towards 0; trace with halves=True to know"
        )
    elif not math.isfinite(r):
        result.warnings.append("reliability could not be estimated (split-half products <= 0)")
    elif r < LOW_RELIABILITY:
        where = "whole-model" if result.group == ALL else f"{result.group}"
        result.warnings.append(
            f"low reliability: the {where} snapshot gradients are {100 * (1 - r):.0f}% sampling "
            f"noise (reliability {r:.2f} < {LOW_RELIABILITY}); raw similarities are attenuated "
            "by about sqrt(r_i r_j) and their statistics rest on noisy matrices: take each "
            "snapshot from more rows per task (larger snapshot or probe batches)"
        )


def _families_frame(codes: Mapping[str, str], cache) -> pd.DataFrame:
    unique = list(dict.fromkeys(codes.values()))
    table = language_families(unique, cache=cache).set_index("language")
    rows = [{"task": t, "language": c} for t, c in codes.items()]
    frame = pd.DataFrame(rows).join(table, on="language")
    frame["depth"] = frame["depth"].astype(np.int64)
    return frame


def _clustering(result: RunResults, sim, complete, n_permutations, boot) -> None:
    """The tree always (it needs no labels); agreement with families where they are known."""
    if len(complete) < 3:
        result.not_applicable["clustering"] = (
            f"clustering needs at least 3 {result.description.tasks_noun} with complete "
            f"similarities, got {len(complete)} ({complete})"
        )
        return
    index = [sim.tasks.index(t) for t in complete]
    matrix = sim.matrix()[np.ix_(index, index)]
    result.tree = cluster_tasks(matrix, complete)
    result.clusters = tree_dict(result.tree, matrix)
    labelled = [t for t in complete if t in result.families]
    if len(labelled) < 4 or not result.families:
        noun = result.description.tasks_noun
        result.not_applicable["clustering"] = (
            "agreement with families needs >= 4 languages with ISO 639-3 codes (Glottolog "
            f"families); the tree of the {noun} is drawn without it ({len(labelled)} labelled)"
            if result.description.task_noun == "language"
            else f"the {noun} have no ISO 639-3 codes, so no family labels: the tree is drawn "
            "without an agreement test"
        )
        return
    index = [sim.tasks.index(t) for t in labelled]
    full = sim.matrix()
    sub = pd.DataFrame(full[np.ix_(index, index)], index=labelled, columns=labelled)
    replicates = sim.replicates(boot["n_bootstrap"], block=boot["block"], seed=boot["seed"])
    replicates = replicates[:, index][:, :, index]
    parts = []
    levels = [("family", result.families, labelled), ("genus", result.genera, labelled)]
    # Script is a named confound (issue 22): byte-level models see shared characters, and
    # script agrees with family for many languages. Its agreement sits beside family and
    # genus, and genus agreement is repeated within the largest script (stratified).
    scripts = {t: s for t, s in (result.scripts or {}).items() if t in labelled and s}
    if len(scripts) == len(labelled):
        levels.append(("script", scripts, labelled))
        largest = max(set(scripts.values()), key=list(scripts.values()).count)
        within = [t for t in labelled if scripts[t] == largest]
        if len(within) >= 4 and len({result.genera[t] for t in within}) > 1:
            levels.append((f"genus within {largest}", result.genera, within))
    for level, labels, tasks in levels:
        pick = [labelled.index(t) for t in tasks]
        frame = family_agreement(
            sub.loc[tasks, tasks], {t: labels[t] for t in tasks},
            n_permutations=n_permutations, seed=boot["seed"],
            replicates=replicates[:, pick][:, :, pick], level=boot["level"],
            df=sim.bootstrap_df(boot["block"]),
        )  # fmt: skip
        parts.append(frame.assign(level=level, group=result.group))
    out = pd.concat(parts, ignore_index=True)
    left_out = [t for t in sim.tasks if t not in labelled]
    if left_out:
        why = f"left out (missing similarity or family): {', '.join(left_out)}"
        out["note"] = [f"{n}; {why}" if n else why for n in out["note"]]
    result.frames["clustering"] = out[["group", "level", *out.columns[:-2]]]


def _languages_for_typology(trace, group, measure, window, codes) -> list[str]:
    """The tasks a typology test of ``group`` can use: ISO code and complete similarities."""
    sim = windowed(trace, group, measure, window=window)
    labelled = [t for t in sim.tasks if t in codes]
    index = [sim.tasks.index(t) for t in labelled]
    sub = sim.matrix()[np.ix_(index, index)]
    drop = set(tasks_with_nan(sub, labelled))
    return [t for t in labelled if t not in drop]


def _typology(result, trace, codes, parts, measure, window, n_permutations, boot, cache) -> None:
    kw = {"measure": measure, "window": window, "n_permutations": n_permutations,
          "cache": cache, "iso_codes": codes, **boot}  # fmt: skip
    usable = _languages_for_typology(trace, result.group, measure, window, codes)
    if "typology" in parts:
        if len(usable) < 4:
            result.not_applicable["typology"] = (
                f"a Mantel test needs >= 4 languages with ISO codes and complete similarities; "
                f"the run has {len(usable)} ({usable})"
            )
        else:
            result.frames["typology"] = typology_correlation(trace, result.group, **kw)
            tasks = [t for t in trace.tasks if t in codes]
            kinds = [k for k in DISTANCES if k in set(result.frames["typology"]["distance"])]
            matrices = typological_distances(sorted(set(codes.values())), kinds, cache=cache)
            result.distances = {
                k: pd.DataFrame(
                    m.loc[[codes[t] for t in tasks], [codes[t] for t in tasks]].to_numpy(),
                    index=tasks, columns=tasks,
                )
                for k, m in matrices.items()
            }  # fmt: skip
    if "layers" not in parts:
        return
    groups = _table_groups(result, trace)
    if len(groups) < 3:  # "all" and one group: the same numbers twice
        result.not_applicable["layers"] = (
            f"the trace has one parameter group ({list(trace.groups)}): no layer table"
        )
        return
    rows, agreement, skipped = [], [], []
    for g in groups:
        if len(_languages_for_typology(trace, g, measure, window, codes)) < 4:
            skipped.append(g)
            continue
        frame = (
            result.frames["typology"]
            if g == result.group and "typology" in result.frames
            else typology_correlation(trace, g, **kw)
        )
        frame = frame.assign(position=list(trace.groups).index(g) if g in trace.groups else -1)
        rows.append(frame.assign(part="whole" if g == ALL else part_of(g)))
        agreement.append(_group_agreement(result, trace, g, measure, window, n_permutations, boot))
    if not rows:
        result.not_applicable["layers"] = (
            "no group has >= 4 languages with ISO codes and complete similarities"
        )
    if skipped and rows:
        result.warnings.append(
            f"layer table: groups {skipped} left out (< 4 languages with complete similarities)"
        )
    if rows:
        table = pd.concat(rows, ignore_index=True)
        # One control per row in the layer table: character overlap where known (the main
        # confound of byte-level models), else script; the covariates themselves are left out.
        controls = [c for c in ("char_overlap", "script") if c in set(table["control"].dropna())]
        keep = table["distance"].isin(DISTANCES)
        if controls:
            keep &= table["control"] == controls[0]
        result.frames["layers"] = table[keep].reset_index(drop=True)
    agreement = [a for a in agreement if a is not None]
    if agreement:
        result.frames["layer_clustering"] = pd.concat(agreement, ignore_index=True)


def _group_agreement(result, trace, g, measure, window, n_permutations, boot):
    if not result.families:
        return None
    sim = windowed(trace, g, measure, window=window)
    matrix = sim.matrix()
    labelled = [t for t in sim.tasks if t in result.families]
    index = [sim.tasks.index(t) for t in labelled]
    sub = matrix[np.ix_(index, index)]
    drop = set(tasks_with_nan(sub, labelled))
    labelled = [t for t in labelled if t not in drop]
    if len(labelled) < 4:
        return None
    index = [sim.tasks.index(t) for t in labelled]
    replicates = sim.replicates(boot["n_bootstrap"], block=boot["block"], seed=boot["seed"])
    replicates = replicates[:, index][:, :, index]
    frames = []
    for level, labels in (("family", result.families), ("genus", result.genera)):
        frame = family_agreement(
            pd.DataFrame(matrix[np.ix_(index, index)], index=labelled, columns=labelled),
            {t: labels[t] for t in labelled}, n_permutations=n_permutations, seed=boot["seed"],
            replicates=replicates, level=boot["level"], df=sim.bootstrap_df(boot["block"]),
        )  # fmt: skip
        frames.append(frame[frame["statistic"] != "cophenetic_correlation"].assign(level=level))
    out = pd.concat(frames, ignore_index=True).assign(group=g)
    return out[["group", "level", *[c for c in out.columns if c not in ("group", "level")]]]


def _quality(result, trace, measure, window, n_permutations, boot, codes, cache) -> None:
    quality = trace.quality() if hasattr(trace, "quality") else pd.DataFrame()
    if quality.empty:
        reason = "the run recorded no quality measurements (Tracer.record_quality)"
        result.not_applicable["task_quality"] = result.not_applicable["quality"] = reason
        return
    result.frames["quality_values"] = quality
    result.frames["task_quality"] = task_quality(
        trace, result.group, quality=quality, measure=measure, window=window,
        n_bootstrap=boot["n_bootstrap"], seed=boot["seed"],
    )  # fmt: skip
    complete = result.settings.get("complete_tasks", result.tasks)
    if len(complete) < 4:
        result.not_applicable["quality"] = (
            f"a quality correlation needs >= 4 {result.description.tasks_noun} with "
            f"similarities, got {len(complete)}"
        )
        return
    # The spatial test where every task has a usable ISO code (else permutations, noted).
    result.frames["quality"] = quality_correlation(
        trace, result.group, quality=quality, measure=measure, window=window,
        n_permutations=n_permutations, iso_codes=codes, cache=cache, **boot,
    )  # fmt: skip


def _evolution(result: RunResults, trace, tol: float) -> None:
    if len(trace.steps) < 2:
        reason = f"the trace has {len(trace.steps)} snapshot: no evolution over steps"
        for name in ("group_trajectories", "family_trajectories", "pair_spread", "pairs"):
            result.not_applicable[name] = reason
        return
    measure = result.measure
    traj = group_trajectories(trace, _table_groups(result, trace), measure=measure)
    result.frames["group_trajectories"] = traj
    rel = reliability_trajectory(trace, result.group)
    if not rel.empty:
        result.frames["reliability_trajectory"] = rel
    pairs = pair_trajectories(
        trace, result.group, families=result.families or None, measure=measure
    )
    result.frames["group_settling"] = settling_with_interval(
        pairs, kinds=False, tol=tol, seed=result.settings["seed"]
    ).assign(group=result.group)
    result.frames["pair_spread"] = pair_spread(pairs)
    chosen = set(pick_pairs(pairs))
    mask = [(a, b) in chosen for a, b in zip(pairs["task_a"], pairs["task_b"], strict=True)]
    result.frames["pairs"] = pairs[mask].reset_index(drop=True)
    last = pairs[pairs["step"] == pairs["step"].max()]
    result.frames["final_pairs"] = last[["task_a", "task_b", "cosine"]].reset_index(drop=True)
    if result.families:
        result.frames["family_trajectories"] = family_trajectories(
            trace, result.families, result.group, measure=measure
        )
        result.frames["family_settling"] = settling_with_interval(
            pairs, kinds=True, tol=tol, seed=result.settings["seed"]
        ).assign(group=result.group)
        if len(trace.groups) >= 2:
            result.frames["by_family"] = family_means_by_group(
                trace, result.families, _table_groups(result, trace), measure=measure
            )
    else:
        result.not_applicable["family_trajectories"] = (
            f"no families: the {result.description.tasks_noun} have no ISO 639-3 codes"
        )


SETTLING_INTERVAL_COLUMNS = [
    "kind", "final_value", "final_ci_low", "final_ci_high", "settle_step", "settle_ci_low",
    "settle_ci_high", "n_pairs", "last_step", "tol",
]  # fmt: skip


def settling_with_interval(
    pairs: pd.DataFrame,
    *,
    kinds: bool = True,
    tol: float = 0.05,
    n_bootstrap: int = 400,
    seed: int = 0,
    level: float = LEVEL,
) -> pd.DataFrame:
    """Settling of the mean pair trajectory per kind, with a bootstrap over task pairs.

    The trajectory m(s) = mean over the kind's pairs of cos_ij(s); :func:`settling_step`
    gives the final value and the settle step. Resampling snapshots would break the time
    order a settling step is about, so the interval resamples the *pairs* (with replacement,
    ``n_bootstrap`` times): how much the curve depends on which pairs make it. A replicate
    that never settles counts as the last step + 1 in the interval of the settle step (so an
    upper bound past the last step means "may still be moving"). ``kinds``: within / across
    family separately (pairs with unknown families are left out), else all pairs as ``all``.
    """
    frame = pairs.copy()
    if kinds:
        frame = frame[frame["same_family"].notna()]
        frame["kind"] = frame["same_family"].map({True: "within", False: "across"})
    else:
        frame["kind"] = "all"
    rng = np.random.default_rng(seed)
    rows = []
    for kind, part in frame.groupby("kind", sort=False):
        # One row per pair of the run (unstack keeps NaN cells; pivot_table(dropna=False)
        # built the cartesian product task_a x task_b: phantom all-NaN pairs)
        wide = part.set_index(["task_a", "task_b", "step"])["cosine"].unstack("step")
        steps = wide.columns.to_numpy()
        values = wide.to_numpy(dtype=float)  # [pairs, S]
        settle, final = settling_step(steps, gt.nanmean(values), tol=tol)
        n = len(values)
        finals, settles = [], []
        for _ in range(n_bootstrap):
            pick = values[rng.integers(0, n, n)]
            s, f = settling_step(steps, gt.nanmean(pick), tol=tol)
            finals.append(f)
            settles.append(steps[-1] + 1 if s is None else s)
        rows.append(
            (kind, final, *interval(np.array(finals), level),
             np.nan if settle is None else settle, *interval(np.array(settles), level), n,
             int(steps[-1]), tol)
        )  # fmt: skip
    return pd.DataFrame(rows, columns=SETTLING_INTERVAL_COLUMNS)


def pick_pairs(pairs: pd.DataFrame, n_per_kind: int = 2) -> list[tuple[str, str]]:
    """Pairs worth naming in F5: per kind (same family / not / unknown), the pair with the
    highest and the one with the lowest similarity at the last snapshot. A choice of what to
    show, not a statistic."""
    last = pairs[pairs["step"] == pairs["step"].max()]
    last = last.dropna(subset=["cosine"]).sort_values("cosine", ascending=False)
    chosen: list[tuple[str, str]] = []
    for _, part in last.groupby(last["same_family"].astype(str), sort=False):
        rows = [part.iloc[0], part.iloc[-1]][:n_per_kind] if len(part) > 1 else [part.iloc[0]]
        for r in rows:
            key = (r["task_a"], r["task_b"])
            if key not in chosen:
                chosen.append(key)
    return chosen


GRADVAC_TRACKING_COLUMNS = [
    "group",
    "final_target",
    "mean_similarity",
    "mean_corrected",
    "reliability",
    "n_snapshots",
]


def _optimizer(result: RunResults, trace) -> None:
    targets = gradvac_target_trajectories(trace)
    if targets.empty:
        result.not_applicable["gradvac_targets"] = result.not_applicable["gradvac_tracking"] = (
            f"the run's method is {result.description.method!r}: no GradVac targets recorded"
        )
        return
    result.frames["gradvac_targets"] = targets
    # GradVac's targets are EMAs of the observed (noisy) cosines, so they track the attenuated
    # raw similarity; put them next to the raw and the noise-corrected similarity of the same
    # group over the last fifth of the snapshots.
    steps = np.asarray(trace.steps)
    later = steps[steps > 0]
    if not later.size:
        return
    n_final = max(1, math.ceil(0.2 * len(later)))
    window = (int(later[-n_final]), None)
    summary = similarity_summary(trace, list(trace.groups), window=window, n_bootstrap=20)
    summary = summary.set_index("group")
    rows = []
    for g, part in targets.groupby("group", sort=False):
        final = part[part["step"] >= window[0]]["mean_target"].to_numpy(dtype=float)
        final = final[np.isfinite(final)]
        row = summary.loc[g] if g in summary.index else None
        rows.append(
            (g, float(final.mean()) if final.size else np.nan,
             np.nan if row is None else float(row["mean_cosine"]),
             np.nan if row is None else float(row["mean_corrected"]),
             np.nan if row is None else float(row["reliability"]), int(final.size))
        )  # fmt: skip
    result.frames["gradvac_tracking"] = pd.DataFrame(rows, columns=GRADVAC_TRACKING_COLUMNS)


TESTS_COLUMNS = [
    "table", "test", "value", "ci_low", "ci_high", "p_value", "n_tests", "p_holm",
    "survives_holm", "role", "p_primary", "q_fdr",
]  # fmt: skip

#: The declared primary tests (issue 22): the paper's findings that one run can test, fixed
#: before any result is seen, with Holm's family-wise control across them (``p_primary``).
#: Every other test is exploratory: Benjamini-Hochberg q over all of them, each test counted
#: once (``q_fdr``). (table, test name as in ``frames["tests"]``.)
PRIMARY_TESTS = (
    ("typology", "all genetic | char_overlap: partial rho"),
    ("typology", "all geographic | char_overlap: partial rho"),
    ("quality", "chrf: rho"),
)


def _paired_differences(trace, groups, window, boot) -> pd.DataFrame | None:
    """Decoder minus encoder at the same depth (groups whose names differ only by "encoder" /
    "decoder"), on the noise-corrected measure when the trace has halves: paired bootstrap
    differences (``group_difference``). None when no such pair exists (any other model)."""
    pairs = [(g, g.replace("encoder", "decoder")) for g in groups if "encoder" in g]
    pairs = [(a, b) for a, b in pairs if b in groups]
    if not pairs:
        return None
    measure = "corrected" if trace.has_halves else "raw"
    rows = [group_difference(trace, a, b, measure=measure, window=window, **boot) for a, b in pairs]
    return pd.DataFrame(rows, columns=DIFFERENCE_COLUMNS)


def _tests_table(result: RunResults) -> None:
    """Every permutation test of the run, per table, with Holm's adjustment within the table.

    Adds ``p_holm`` (and ``partial_p_holm``) columns to the typology, layers, clustering and
    quality frames and collects one row per test in ``frames["tests"]``.
    """
    rows = []

    def family(table: str, entries: list[tuple[str, float, float, float, float]]) -> np.ndarray:
        p = np.array([e[4] for e in entries], dtype=float)
        adjusted = holm(p)
        m = int(np.isfinite(p).sum())
        for (name, value, lo, hi, pv), ph in zip(entries, adjusted, strict=True):
            if np.isfinite(pv):
                rows.append((table, name, value, lo, hi, pv, m, ph, bool(ph < ALPHA), "", np.nan,
                             np.nan))  # fmt: skip
        return adjusted

    for name in ("typology", "layers"):
        frame = result.frames.get(name)
        if frame is None:
            continue
        # The raw rho of a distance is repeated on each control row: test it once.
        raw = frame.drop_duplicates(subset=["group", "distance"])
        entries = [
            (f"{r.group} {r.distance}: rho", r.rho, r.ci_low, r.ci_high, r.p_value)
            for r in raw.itertuples()
        ] + [
            (f"{r.group} {r.distance} | {r.control}: partial rho", r.partial_rho,
             r.partial_ci_low, r.partial_ci_high, r.partial_p_value)
            for r in frame.itertuples() if isinstance(r.control, str)
        ]  # fmt: skip
        adjusted = family(name, entries)
        n_raw = len(raw)
        raw_holm = pd.Series(adjusted[:n_raw], index=raw.index)
        key = raw.set_index(["group", "distance"]).index
        lookup = dict(zip(key, raw_holm, strict=True))
        frame = frame.copy()
        frame["p_holm"] = [
            lookup[(g, d)] for g, d in zip(frame["group"], frame["distance"], strict=True)
        ]
        partial = np.full(len(frame), np.nan)
        controlled = [i for i, c in enumerate(frame["control"]) if isinstance(c, str)]
        partial[controlled] = adjusted[n_raw:]
        frame["partial_p_holm"] = partial
        result.frames[name] = frame
    for name in ("clustering", "layer_clustering"):
        frame = result.frames.get(name)
        if frame is None:
            continue
        tested = frame[frame["p_value"].notna()]
        entries = [
            (f"{r.group} {r.level} {r.statistic}", r.value, r.ci_low, r.ci_high, r.p_value)
            for r in tested.itertuples()
        ]
        adjusted = family(name, entries)
        frame = frame.copy()
        frame["p_holm"] = np.nan
        frame.loc[tested.index, "p_holm"] = adjusted
        result.frames[name] = frame
    quality = result.frames.get("quality")
    if quality is not None:
        entries = [
            (f"{r.metric}: rho", r.rho, r.ci_low, r.ci_high, r.p_value) for r in quality.itertuples()
        ] + [
            (f"{r.metric} | {r.control}: partial rho", r.partial_rho, r.partial_ci_low,
             r.partial_ci_high, r.partial_p_value)
            for r in quality.itertuples()
        ]  # fmt: skip
        adjusted = family("quality", entries)
        quality = quality.copy()
        quality["p_holm"] = adjusted[: len(quality)]
        quality["partial_p_holm"] = adjusted[len(quality) :]
        result.frames["quality"] = quality
    result.frames["tests"] = _roles(pd.DataFrame(rows, columns=TESTS_COLUMNS))
    # A permutation p is at least 1 / (P + 1): with m tests, Holm's smallest adjusted p is
    # m / (P + 1), so a table with more tests than that cannot have a survivor at all.
    floor = 1.0 / (result.settings["n_permutations"] + 1)
    tests = result.frames["tests"]
    for table, m in tests.groupby("table")["n_tests"].first().items():
        if m * floor > ALPHA:
            need = int(np.ceil(m / ALPHA))
            result.notes.append(
                f"the {table} table holds {m} tests: with {result.settings['n_permutations']} "
                f"permutations no test can survive Holm's correction at {ALPHA} (smallest "
                f"adjusted p {m * floor:.2f}); use at least {need} permutations"
            )


def _roles(tests: pd.DataFrame) -> pd.DataFrame:
    """Mark the declared primary tests (:data:`PRIMARY_TESTS`) with Holm across them
    (``p_primary``) and give every other test a Benjamini-Hochberg q over the run's exploratory
    tests (``q_fdr``), each test counted once: the layer table repeats the typology table's
    whole-model rows, which keep their typology-table entry."""
    tests = tests.copy()
    key = list(zip(tests["table"], tests["test"], strict=True))
    primary = np.array([k in PRIMARY_TESTS for k in key], dtype=bool)
    tests["role"] = np.where(primary, "primary", "exploratory")
    tests.loc[primary, "p_primary"] = holm(tests.loc[primary, "p_value"].to_numpy())
    typology_names = set(tests.loc[tests["table"] == "typology", "test"])
    repeat = (tests["table"] == "layers") & tests["test"].isin(typology_names)
    tests.loc[repeat, "role"] = "repeat"
    explore = tests["role"] == "exploratory"
    tests.loc[explore, "q_fdr"] = benjamini_hochberg(tests.loc[explore, "p_value"].to_numpy())
    return tests


def analyse_runs(runs: Sequence[Any], *, progress=None, **kwargs: Any) -> list[RunResults]:
    """:func:`analyse_run` for every run, with unique labels."""
    if not runs:
        raise InvalidInputError("no run given: pass at least one run directory")
    out: list[RunResults] = []
    for run in runs:
        path = getattr(run, "path", run)
        label = run_label(Path(path), [r.label for r in out])
        if progress:
            progress(f"analysing {label}")
        out.append(analyse_run(run, label=label, **kwargs))
    return out


__all__ = [
    "ALPHA", "FRAMES", "NotApplicable", "PARTS", "PRIMARY_TESTS", "RunDescription", "RunResults",
    "analyse_run", "analyse_runs", "describe", "open_run", "pick_pairs", "run_label",
    "settling_with_interval",
]  # fmt: skip
