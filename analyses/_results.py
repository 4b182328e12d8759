"""The result types of :func:`analyses.analyse_run`: :class:`RunResults` and its parts.

:class:`RunResults` is the one object behind ``geomtrace inspect``, ``analyze``, the summary
printed by ``geomtrace trace``, every figure (F1-F6) and the HTML report: each number in it
is defined by one function of ``analyses`` (listed per frame in :data:`FRAMES`), and no other
layer recomputes it. What a run cannot support is a :class:`NotApplicable` with its reason
(tasks without ISO codes have no typology; a run without quality rows has no quality
correlation), never an exception caught as a skip: only real input errors raise.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from analyses._clustering import ClusterTree
from analyses._measures import has_halves

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
    "layers_script": "typology_correlation per group, the partials given script",
    "layer_clustering": "family_agreement per group",
    "task_quality": "task_quality",
    "quality": "quality_correlation",
    "group_trajectories": "group_trajectories",
    "group_differences": "group_difference, decoder minus encoder at the same depth (paired)",
    "training_change": "training_change, trained window minus step 0 per group (paired)",
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


__all__ = ["FRAMES", "NotApplicable", "RunDescription", "RunResults", "describe"]
