"""F4: mean gradient similarity per parameter group, in model order, with its reliability.

Paper (Gradient Vaccine, finding 3): similarity differs across layers (encoder vs decoder, low
vs high layers; in X->En the shared English target makes decoder gradients more alike).
With split halves (``Tracer(halves=True)``) a second panel shows how much of each group's
snapshot gradients is signal, and the noise-corrected mean is drawn next to the raw one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

import analyses
import geomtrace as gt
from figures._style import (
    ACROSS,
    ALL_PAIRS,
    OKABE_ITO,
    PART_SHADE,
    WITHIN,
    add_footnote,
    context,
    measure_label,
    new_figure,
    nouns,
    set_titles,
    style,
)

CORRECTED = OKABE_ITO["green"]
#: Model parts that get a shaded band and a label (``other`` gets neither).
NAMED_PARTS = ("embedding", "encoder", "decoder")


def figure(result) -> object:
    """F4 of a run: ``result.frames["similarity"]`` per group, the within/across-family means
    (``by_family``) and, with split halves, the per-task reliability (``reliability``)."""
    summary = result.frame("similarity")
    if isinstance(summary, analyses.NotApplicable):
        return summary
    groups = summary[summary["position"] >= 0]
    if len(groups) < 2:
        return analyses.NotApplicable(
            f"the trace has {len(groups)} parameter group: no profile across groups"
        )
    _, plural = nouns(result.description)
    if len(result.tasks) < 2:
        return analyses.NotApplicable(f"a similarity needs at least 2 {plural}")
    reliability = result.frames.get("reliability")
    fig = layer_profile(
        summary, result.frames.get("by_family"), reliability=reliability,
        halves=result.description.halves,
        title="Gradient similarity per parameter group (model order)",
        subtitle=context(result), task_noun=nouns(result.description)[0],
        measure=measure_label(result.measure), level=result.settings.get("level", 0.95),
        low_reliability=analyses.LOW_RELIABILITY,
    )  # fmt: skip
    add_footnote(fig, result.warnings)
    return fig


def layer_profile(
    summary: pd.DataFrame,
    by_family: pd.DataFrame | None = None,
    *,
    reliability: pd.DataFrame | None = None,
    halves: bool = False,
    title: str = "Gradient similarity per parameter group",
    subtitle: str = "",
    task_noun: str = "task",
    measure: str = "gradient cosine",
    level: float = 0.95,
    low_reliability: float = 0.5,
):
    """Mean similarity of every parameter group, in model order, with its bootstrap interval.

    ``summary``: ``analyses.similarity_summary`` rows (group, position, part, mean_cosine,
    ci_low, ci_high, reliability, mean_corrected, corrected_ci_low, corrected_ci_high); the
    whole-model row (position -1) is a dashed reference line. ``by_family``: optional rows
    (group, kind in {within, across}, mean_cosine) adding within- and across-family lines.
    ``halves``: whether the run has split halves (``result.description.halves``, read from
    the trace); then the noise-corrected mean is drawn with its interval and a lower panel
    shows each group's reliability (bar) and its tasks' (``reliability``:
    ``analyses.reliability_table`` rows, dots), with ``low_reliability`` as a line. Parts
    (embedding/encoder/decoder) are shaded when the group names tell them. Returns the Figure.
    """
    groups = summary[summary["position"] >= 0].sort_values("position")
    if groups.empty:
        raise gt.InvalidInputError("layer_profile needs similarity_summary rows of real groups")
    names = list(groups["group"])
    x = np.arange(len(names))
    rel = groups["reliability"].to_numpy(dtype=float)
    width = min(max(6.5, 0.42 * len(names) + 3.0), 18.0)
    with style():
        fig = new_figure(width, 6.8 if halves else 4.8)
        if halves:
            ax, ax_r = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2.2, 1]})
        else:
            ax, ax_r = fig.subplots(), None
        parts = list(groups["part"])
        for a in [ax] + ([ax_r] if ax_r is not None else []):
            _shade_parts(a, parts, label=a is ax)
        shift = 0.12 if halves else 0.0
        _draw_means(ax, groups, x, shift, halves=halves, measure=measure, level=level)
        if by_family is not None and not by_family.empty:
            _draw_families(ax, by_family, names, x - shift)
        whole = summary[summary["position"] < 0]
        if not whole.empty:
            ax.axhline(float(whole["mean_cosine"].iloc[0]), color=ALL_PAIRS, ls="--", lw=0.8,
                       label="whole model (all groups' Gram summed)")  # fmt: skip
        ax.axhline(0, color="black", lw=0.6)
        ax.set_ylabel(f"mean {measure}\nover {task_noun} pairs")
        ax.legend(loc="best", frameon=True, framealpha=0.9, fontsize=7)
        last = ax
        if ax_r is not None:
            _draw_reliability(ax_r, rel, names, reliability, task_noun, low_reliability)
            last = ax_r
        last.set_xticks(
            x,
            names,
            rotation=60 if len(names) > 6 else 0,
            ha="right" if len(names) > 6 else "center",
        )
        last.set_xlim(-0.5, len(names) - 0.5)
        last.set_xlabel("parameter group (model order)")
        set_titles(fig, title, subtitle)
    return fig


def _draw_means(
    ax, groups: pd.DataFrame, x: np.ndarray, shift: float, *, halves: bool, measure: str,
    level: float,
) -> None:  # fmt: skip
    """Each group's mean similarity with its interval at ``x - shift`` and, with ``halves``,
    its noise-corrected mean with its interval at ``x + shift``."""
    mean = groups["mean_cosine"].to_numpy(dtype=float)
    ax.errorbar(x - shift, mean, yerr=_error_bars(ax, groups, "ci_low", "ci_high", mean, x - shift),
                color=ALL_PAIRS, marker="o", ms=4, capsize=2, lw=1.2, elinewidth=0.8,
                ecolor="#888888", label=f"all pairs, {measure} ({level:.0%} interval)",
                zorder=3)  # fmt: skip
    if halves:
        corrected = groups["mean_corrected"].to_numpy(dtype=float)
        ax.errorbar(x + shift, corrected,
                    yerr=_error_bars(ax, groups, "corrected_ci_low", "corrected_ci_high",
                                     corrected, x + shift, CORRECTED),
                    color=CORRECTED, marker="D", ms=4, capsize=2, lw=1.2, elinewidth=0.8,
                    label=f"all pairs, noise-corrected ({level:.0%} interval)",
                    zorder=3)  # fmt: skip


def _error_bars(
    ax, groups: pd.DataFrame, lo_col: str, hi_col: str, mean: np.ndarray, xs=None,
    color: str = "#888888",
) -> np.ndarray:  # fmt: skip
    """The [2, n] error-bar lengths of ``mean`` to the interval (``lo_col``, ``hi_col``),
    clipped at 0; an interval that does not contain its mean is drawn whole at ``xs`` as a
    dashed segment."""
    # A percentile bootstrap interval need not contain its point estimate (an unstable
    # ratio, e.g. a noise-corrected mean at very low reliability): the error bar keeps
    # the part it can draw and the whole interval is drawn as a dashed segment.
    lo = groups[lo_col].to_numpy(dtype=float)
    hi = groups[hi_col].to_numpy(dtype=float)
    outside = np.isfinite(lo) & np.isfinite(hi) & ((mean < lo) | (mean > hi))
    if xs is not None and outside.any():
        ax.vlines(xs[outside], lo[outside], hi[outside], colors=color, linestyles="--",
                  lw=0.8, zorder=2)  # fmt: skip
    return np.clip(np.vstack([np.nan_to_num(mean - lo), np.nan_to_num(hi - mean)]), 0.0, None)


def _draw_families(ax, by_family: pd.DataFrame, names: list[str], xs: np.ndarray) -> None:
    """The within- and across-family mean similarity of every group in ``names``, as lines
    at ``xs`` (a kind without any value is left out)."""
    for kind, color, marker in (("within", WITHIN, "s"), ("across", ACROSS, "^")):
        part = by_family[by_family["kind"] == kind].set_index("group")
        values = part["mean_cosine"].reindex(names).to_numpy(dtype=float)
        if np.isfinite(values).any():
            ax.plot(xs, values, color=color, marker=marker, ms=4, lw=1.0,
                    label=f"{kind}-family pairs", zorder=4)  # fmt: skip


def _draw_reliability(
    ax, rel: np.ndarray, names: list[str], reliability: pd.DataFrame | None, task_noun: str,
    low_reliability: float,
) -> None:  # fmt: skip
    """The reliability panel: each group's mean reliability ``rel`` (bars), its tasks' (dots,
    from the ``reliability`` table) and the ``low_reliability`` line."""
    x = np.arange(len(names))
    ax.bar(x, np.nan_to_num(rel), width=0.6, color="#BBBBBB", zorder=2,
           label=f"group (mean over {task_noun}s)")  # fmt: skip
    if reliability is not None and not reliability.empty:
        pos = {g: i for i, g in enumerate(names)}
        rows = reliability[reliability["group"].isin(pos)]
        rx = rows["group"].map(pos).to_numpy(dtype=float)
        ax.scatter(rx, rows["reliability"].to_numpy(dtype=float), s=9, color=ALL_PAIRS,
                   zorder=3, label=f"one {task_noun}")  # fmt: skip
    ax.axhline(low_reliability, color=OKABE_ITO["vermillion"], ls="--", lw=0.9,
               label=f"low below {low_reliability:g}")  # fmt: skip
    ax.set_ylim(min(0.0, float(np.nanmin(np.append(rel, 0)))), 1.05)
    ax.set_ylabel("reliability\n(signal fraction)")
    ax.legend(loc="upper left", fontsize=7, framealpha=0.9, ncol=3)


def _shade_parts(ax, parts: list[str], *, label: bool) -> None:
    """One shaded band (and, on the top panel, a label) per run of equal named parts."""
    if not any(p in NAMED_PARTS for p in parts):
        return
    start = 0
    for i in range(1, len(parts) + 1):
        if i == len(parts) or parts[i] != parts[start]:
            part = parts[start]
            if part in NAMED_PARTS:
                ax.axvspan(start - 0.5, i - 0.5, color=PART_SHADE[part], zorder=0)
                if label:
                    ax.text((start + i - 1) / 2, 1.0, part, transform=ax.get_xaxis_transform(),
                            ha="center", va="bottom", fontsize=8, color="#444444")  # fmt: skip
            start = i
