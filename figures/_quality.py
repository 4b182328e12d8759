"""F3: a task's mean gradient similarity to the others against its quality.

Paper (Gradient Vaccine, finding 2): languages whose gradients align better with the others
suffer less interference and reach better translation quality. Here: any quality metric the
run recorded (``Tracer.record_quality``), named and oriented by the metric itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

import analyses
import geomtrace as gt
from figures._style import (
    ALL_PAIRS,
    add_footnote,
    categorical_colors,
    ci,
    context,
    direction_words,
    fmt,
    group_label,
    holm_mark,
    measure_label,
    metric_label,
    new_figure,
    nouns,
    set_titles,
    short_p,
    stats_title,
    style,
)

ALPHA = getattr(analyses, "ALPHA", 0.05)
#: Columns of ``analyses.task_quality`` that are not metrics.
_BASE = {"group", "task", "mean_similarity", "ci_low", "ci_high", "mean_similarity_step0"}


def quality_metrics(task_quality: pd.DataFrame, first: str | None = None) -> list[str]:
    """Metric columns of a ``task_quality`` frame holding at least one value, ``first`` first
    (then in the frame's order)."""
    metrics = [c for c in task_quality.columns if c not in _BASE and task_quality[c].notna().any()]
    return sorted(metrics, key=lambda m: m != first)


def figure(result) -> object:
    """F3 of a run: every recorded metric, the run's headline metric
    (``result.settings["metric"]``) first."""
    tq = result.frame("task_quality")
    if isinstance(tq, analyses.NotApplicable):
        return tq
    _, plural = nouns(result.description)
    if len(result.tasks) < 2:
        return analyses.NotApplicable(
            f"a task's similarity to the others needs at least 2 {plural}; the run has "
            f"{len(result.tasks)}"
        )
    metric = result.settings.get("metric")
    metrics = quality_metrics(tq, metric)
    if not metrics:
        return analyses.NotApplicable("the run's quality rows hold no value for any task")
    corr = result.frames.get("quality")
    fig = quality_scatter(
        tq, corr, families=result.families or None, metrics=metrics[:3],
        title=f"Gradient similarity vs quality ({group_label(result.group)}): "
        + ", ".join(metric_label(m) for m in metrics[:3]),
        subtitle=context(result), task_noun_plural=plural,
        similarity_label=f"mean {measure_label(result.measure)} with the other {plural}",
        level=result.settings.get("level", 0.95),
    )  # fmt: skip
    add_footnote(fig, result.warnings)
    return fig


def quality_scatter(
    task_quality: pd.DataFrame,
    correlation: pd.DataFrame | None = None,
    *,
    families: Mapping[str, str] | None = None,
    metrics: Sequence[str] | None = None,
    title: str = "Gradient similarity vs quality",
    subtitle: str = "",
    task_noun_plural: str = "tasks",
    similarity_label: str = "mean gradient cosine with the other tasks",
    level: float = 0.95,
    alpha: float = ALPHA,
):
    """One panel per quality metric: x = a task's mean similarity with the others (with its
    bootstrap interval as a horizontal error bar), y = its quality.

    ``task_quality``: the ``analyses.task_quality`` frame (columns task, mean_similarity,
    ci_low, ci_high and one column per metric; metric names may be any string, e.g.
    ``chrF++``); ``correlation``: the ``analyses.quality_correlation`` frame (rho with its
    interval, permutation p, Holm p, step-0 rho and the partial rhos given character overlap
    and script go in each panel's box). ``families`` colours the points. Raises
    :class:`geomtrace.InvalidInputError` when the frame holds none of ``metrics``.
    """
    available = quality_metrics(task_quality)
    metrics = available if metrics is None else list(metrics)
    absent = [m for m in metrics if m not in available]
    if absent or not metrics:
        raise gt.InvalidInputError(
            f"no quality values for metric(s) {absent or metrics}: F3 (similarity vs quality) "
            f"needs per-task quality rows in the trace; it has {available or 'none'}"
        )
    colors = categorical_colors(sorted(set(families.values()))) if families else {}
    with style():
        fig = new_figure(max(4.4 * len(metrics), 5.6), 4.3)
        axes = np.atleast_1d(fig.subplots(1, len(metrics), squeeze=False)).ravel()
        for ax, metric in zip(axes, metrics, strict=True):
            frame = task_quality.dropna(subset=["mean_similarity", metric])
            tasks = [str(t) for t in frame["task"]]
            x = frame["mean_similarity"].to_numpy(dtype=float)
            y = frame[metric].to_numpy(dtype=float)
            lo = (
                frame["ci_low"].to_numpy(dtype=float)
                if "ci_low" in frame
                else np.full_like(x, np.nan)
            )
            hi = (
                frame["ci_high"].to_numpy(dtype=float)
                if "ci_high" in frame
                else np.full_like(x, np.nan)
            )
            point = [
                colors.get(families.get(t), ALL_PAIRS) if families else ALL_PAIRS for t in tasks
            ]
            # A bootstrap interval may miss its point estimate: draw what lies on either side.
            xerr = np.clip(np.vstack([np.nan_to_num(x - lo), np.nan_to_num(hi - x)]), 0.0, None)
            ax.errorbar(x, y, xerr=xerr, fmt="none", ecolor="#999999", elinewidth=0.8, capsize=2,
                        zorder=2)  # fmt: skip
            ax.scatter(x, y, s=28, c=point, edgecolors="white", linewidths=0.5, zorder=3)
            for t, xi, yi in zip(tasks, x, y, strict=True):
                ax.annotate(t, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
            lines = [f"n = {len(frame)} {task_noun_plural}"]
            if correlation is not None and not correlation.empty:
                hit = correlation[correlation["metric"] == metric]
                if not hit.empty:
                    r = hit.iloc[0]
                    # The task-jackknife interval (the relation in tasks like these: the one
                    # the calibration harness shows covering); the snapshot interval of rho
                    # covered 54-92% and is left to results.json.
                    low, high = r.get("lang_ci_low", np.nan), r.get("lang_ci_high", np.nan)
                    lines.append(f"Spearman ρ = {ci(r['rho'], low, high)} ({task_noun_plural})")
                    lines.append(f"   {short_p(r['p_value'])}{holm_mark(r.get('p_holm'), alpha)}")
                    lines.append(f"step 0: ρ = {fmt(r['rho_step0'])}")
                    for _, c in hit.iterrows():  # one row per control
                        if isinstance(c["control"], str):
                            lines.append(f"partial | {c['control']}: ρ = {fmt(c['partial_rho'])}, "
                                         f"{short_p(c['partial_p_value'])}")  # fmt: skip
                    if r["note"]:
                        lines.append(str(r["note"])[:60])
            stats_title(ax, metric_label(metric), lines)
            ax.set_xlabel(f"{similarity_label}\n(bar: {level:.0%} bootstrap interval)")
            ax.set_ylabel(f"{metric_label(metric)} ({direction_words(metric)})")
        if colors:
            from matplotlib.lines import Line2D

            handles = [
                Line2D([], [], ls="", marker="o", color=c, label=f) for f, c in colors.items()
            ]
            fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6),
                       frameon=False, title="family")  # fmt: skip
        set_titles(fig, title, subtitle)
    return fig
