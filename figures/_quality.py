"""F3: a language's mean gradient similarity to the others against its translation quality.

Paper (Gradient Vaccine, finding 2): languages whose gradients align better with the others
suffer less interference and reach better translation quality.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from figures._style import (
    ALL_PAIRS,
    categorical_colors,
    fmt,
    new_figure,
    set_titles,
    short_p,
    stats_box,
    style,
)
from geomtrace._errors import InvalidInputError

METRIC_LABELS = {
    "chrf": "chrF (test split, greedy decoding)",
    "heldout_loss": "held-out loss (nats/byte)",
}
_BASE = {"group", "task", "mean_similarity", "mean_similarity_step0"}


def quality_metrics(task_quality: pd.DataFrame) -> list[str]:
    """Metric columns of a ``task_quality`` frame that hold at least one value (chrF first)."""
    metrics = [c for c in task_quality.columns if c not in _BASE and task_quality[c].notna().any()]
    return sorted(metrics, key=lambda m: (m != "chrf", m))


def quality_scatter(
    task_quality: pd.DataFrame,
    correlation: pd.DataFrame | None = None,
    *,
    families: Mapping[str, str] | None = None,
    metrics: Sequence[str] | None = None,
    title: str = "Gradient similarity vs translation quality",
    subtitle: str = "",
):
    """One panel per quality metric: x = mean cosine of a language with the others, y = quality.

    ``task_quality``: the ``analyses.task_quality`` frame; ``correlation``: the
    ``analyses.quality_correlation`` frame (Spearman rho, permutation p, step-0 rho and the
    partial rho controlling for character overlap go in each panel). ``families`` colours the
    points. Raises :class:`InvalidInputError` when the frame holds no quality metric.
    """
    available = quality_metrics(task_quality)
    metrics = available if metrics is None else list(metrics)
    absent = [m for m in metrics if m not in available]
    if absent or not metrics:
        raise InvalidInputError(
            f"no quality values for metric(s) {absent or ['chrf']}: F3 (similarity vs quality) "
            f"needs per-task quality rows (metric 'chrf' or 'heldout_loss') in the trace; it has "
            f"{available or 'none'} (the recipe records them after the last step: did the run finish?)"
        )
    colors = categorical_colors(sorted(set(families.values()))) if families else {}
    with style():
        fig = new_figure(4.2 * len(metrics), 4.0)
        axes = np.atleast_1d(fig.subplots(1, len(metrics), squeeze=False)).ravel()
        for ax, metric in zip(axes, metrics, strict=True):
            frame = task_quality.dropna(subset=["mean_similarity", metric])
            for row in frame.itertuples():
                color = colors.get(families.get(row.task), ALL_PAIRS) if families else ALL_PAIRS
                ax.scatter(row.mean_similarity, getattr(row, metric), s=28, color=color,
                           edgecolors="white", linewidths=0.5, zorder=3)  # fmt: skip
                ax.annotate(row.task, (row.mean_similarity, getattr(row, metric)), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")  # fmt: skip
            lines = [f"n = {len(frame)} languages"]
            if correlation is not None and not correlation.empty:
                hit = correlation[correlation["metric"] == metric]
                if not hit.empty:
                    r = hit.iloc[0]
                    lines.append(f"Spearman ρ = {fmt(r['rho'])}, {short_p(r['p_value'])}")
                    lines.append(f"step 0: ρ = {fmt(r['rho_step0'])}")
                    if r["control"] is not None and r["control"] == r["control"]:
                        lines.append(f"partial | {r['control']}: ρ = {fmt(r['partial_rho'])}")
                    if r["note"]:
                        lines.append(str(r["note"])[:60])
            stats_box(ax, lines)
            ax.set_xlabel("mean gradient cosine with the other languages")
            ax.set_ylabel(METRIC_LABELS.get(metric, metric))
            ax.set_title(METRIC_LABELS.get(metric, metric).split(" (")[0])
        if colors:
            from matplotlib.lines import Line2D

            handles = [
                Line2D([], [], ls="", marker="o", color=c, label=f) for f, c in colors.items()
            ]
            fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6),
                       frameon=False, title="family")  # fmt: skip
        set_titles(fig, title, subtitle)
    return fig
