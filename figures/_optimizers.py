"""F6: the sum baseline against PCGrad and GradVac (at one or more granularities), over seeds.

Paper (Gradient Vaccine, the method and its results): GradVac improves over the baseline and
over PCGrad, finer granularities more; its EMA targets sit at positive, pair- and
layer-specific values rather than PCGrad's implicit 0. Every number comes from
``analyses.compare_runs`` (seed-matched differences, t-intervals across seeds).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

import analyses
import geomtrace as gt
from figures._style import (
    BASELINE,
    ci,
    direction_words,
    error_lengths,
    fmt,
    method_color,
    metric_label,
    new_figure,
    set_titles,
    style,
)

METHOD_NAMES = {"sum": "sum", "pcgrad": "PCGrad", "gradvac": "GradVac"}


def _colors(methods: Mapping[str, str]) -> dict[str, str]:
    seen: dict[str, int] = {}
    out = {}
    for label, method in methods.items():
        out[label] = method_color(method, seen.get(method, 0))
        seen[method] = seen.get(method, 0) + 1
    return out


def figure(comparison) -> object:
    """F6 from an ``analyses.compare_runs`` result (a NotApplicable is passed through)."""
    if isinstance(comparison, analyses.NotApplicable):
        return comparison
    names = list(dict.fromkeys(METHOD_NAMES.get(m, m) for m in comparison.methods.values()))
    return optimizer_comparison(
        comparison.per_task, comparison.per_method, comparison.final_pairs, comparison.targets,
        methods=comparison.methods, baseline=comparison.baseline, metric=comparison.metric,
        title=" vs ".join(["Baseline (sum)", *[n for n in names if n != "sum"]]),
        subtitle=_seeds_text(comparison), task_noun=getattr(comparison, "task_noun", "task"),
        level=getattr(comparison, "level", 0.95),
        higher_is_better=getattr(comparison, "higher_is_better", None),
    )  # fmt: skip


def _seeds_text(comparison) -> str:
    per = comparison.per_method
    if per is None or per.empty or "n_seeds" not in per:
        return ""
    seeds = sorted({int(n) for n in per["n_seeds"] if n == n})
    text = "/".join(str(s) for s in seeds)
    return (
        f"{text} seed{'s' if seeds != [1] else ''} per method, seed-matched differences "
        f"against {comparison.baseline}" + ("; one seed: no interval" if seeds == [1] else "")
    )


def optimizer_comparison(
    per_task: pd.DataFrame,
    per_method: pd.DataFrame | None,
    final_pairs: pd.DataFrame,
    targets: pd.DataFrame | None,
    *,
    methods: Mapping[str, str],
    baseline: str,
    metric: str,
    title: str = "Baseline (sum) vs PCGrad vs GradVac",
    subtitle: str = "",
    task_noun: str = "task",
    level: float = 0.95,
    higher_is_better: bool | None = None,
):
    """Three panels: per-task quality difference vs the baseline (mean over seeds with its
    t-interval, one marker row per method) with each method's mean difference and interval in
    the legend; the pairwise cosines at the last snapshot per method (seeds pooled); GradVac's
    EMA targets over steps (one thin line per group and seed).

    ``methods``: {label: method name} in legend order, the baseline first; ``per_task``: rows
    (method, task, mean_delta, ci_low, ci_high, n_seeds); ``per_method``: rows (method,
    mean_delta, ci_low, ci_high, n_seeds, n_tasks, n_better); ``final_pairs``: rows (method,
    seed, task_a, task_b, cosine); ``targets``: rows (method, seed, step, group, mean_target).
    ``higher_is_better`` (the comparison's) words the y axis.
    """
    if len(methods) < 2:
        raise gt.InvalidInputError(
            f"F6 (optimizers) compares runs: it needs the baseline and at least one PCGrad or "
            f"GradVac run, got {list(methods)}"
        )
    colors = _colors(methods)
    others = [m for m in methods if m != baseline]
    with style():
        fig = new_figure(16.0, 5.0)
        ax_q, ax_c, ax_t = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.6, 1.0, 1.0]})
        _quality_panel(ax_q, per_task, per_method, others, colors, metric=metric)
        ax_q.set_xlabel(f"{task_noun} (dashed: the method's mean over {task_noun}s)")
        ax_q.set_ylabel(
            f"{metric_label(metric)} − {metric_label(metric)} of {baseline}\n"
            f"({direction_words(metric, higher_is_better)}; mean over seeds, {level:.0%} interval)"
        )
        ax_q.set_title("quality difference vs baseline")
        _cosine_panel(ax_c, final_pairs, methods, colors)
        _target_panel(ax_t, targets, colors, task_noun)
        set_titles(fig, title, subtitle)
    return fig


def _quality_panel(
    ax,
    per_task: pd.DataFrame | None,
    per_method: pd.DataFrame | None,
    others: list[str],
    colors: Mapping[str, str],
    *,
    metric: str,
) -> None:
    """Per task, each method's mean quality difference vs the baseline with its interval (one
    marker row per method), the method's mean over tasks as a dashed line and its summary in
    the legend; a note when there are no differences."""
    if per_task is None or per_task.empty:
        ax.text(0.5, 0.5, f"no {metric_label(metric)} differences", ha="center",
                transform=ax.transAxes)  # fmt: skip
        return
    tasks = list(dict.fromkeys(per_task["task"]))
    step = 0.7 / max(len(others), 1)
    x = np.arange(len(tasks))
    summary = per_method.set_index("method") if per_method is not None else None
    for n, label in enumerate(others):
        part = per_task[per_task["method"] == label].set_index("task").reindex(tasks)
        mean = part["mean_delta"].to_numpy(dtype=float)
        err = error_lengths(part, mean)
        ax.errorbar(x - 0.35 + step * (n + 0.5), mean, yerr=err, fmt="o", ms=4,
                    color=colors[label], capsize=2, elinewidth=0.9,
                    label=_method_legend(label, summary))  # fmt: skip
        if summary is not None and label in summary.index:
            r = summary.loc[label]
            ax.axhline(float(r["mean_delta"]), color=colors[label], lw=0.8, ls="--")
    ax.set_xticks(x, tasks, rotation=90 if len(tasks) > 10 else 0)
    ax.set_xlim(-0.6, len(tasks) - 0.4)
    ax.axhline(0, color=BASELINE, lw=0.8)
    ax.legend(loc="best", fontsize=7, framealpha=0.9)


def _method_legend(label: str, summary: pd.DataFrame | None) -> str:
    """A method's legend entry: its label, then (from its ``summary`` row, when there is one)
    its mean difference with its interval, the interval with the baseline seeds' noise, and
    for how many tasks it is better."""
    legend = label
    if summary is None or label not in summary.index:
        return legend
    r = summary.loc[label]
    legend += f": mean {ci(r['mean_delta'], r['ci_low'], r['ci_high'])}"
    # with the seed noise of the baseline's seeds (analyses._compare): the interval a method
    # with one or two seeds can still have
    if "ref_ci_low" in r and r["ref_ci_low"] == r["ref_ci_low"]:
        legend += (f", [{fmt(r['ref_ci_low'])}, {fmt(r['ref_ci_high'])}] with "
                   "the baseline seeds' noise")  # fmt: skip
    if "n_better" in r and r["n_better"] == r["n_better"]:
        legend += f", better for {int(r['n_better'])}/{int(r['n_tasks'])}"
    return legend


def _cosine_panel(
    ax, final_pairs: pd.DataFrame, methods: Mapping[str, str], colors: Mapping[str, str]
) -> None:
    """Per method (in ``methods`` order, those with pairs), the pairwise cosines at the last
    snapshot, seeds pooled: a violin and the jittered points."""
    labels = [m for m in methods if m in set(final_pairs["method"])]
    data = [
        final_pairs.loc[final_pairs["method"] == m, "cosine"].dropna().to_numpy() for m in labels
    ]
    if labels:
        parts = ax.violinplot(
            [d if len(d) else [np.nan] for d in data], showextrema=False, widths=0.8
        )
        for body, label in zip(parts["bodies"], labels, strict=True):
            body.set_facecolor(colors[label])
            body.set_edgecolor(colors[label])
            body.set_alpha(0.35)
        rng = np.random.default_rng(0)  # jitter only; fixed so files are reproducible
        for n, (label, d) in enumerate(zip(labels, data, strict=True)):
            ax.scatter(n + 1 + rng.uniform(-0.12, 0.12, len(d)), d, s=6,
                       color=colors[label], edgecolors="none", alpha=0.8,
                       zorder=3)  # fmt: skip
    ax.set_xticks(np.arange(1, len(labels) + 1), labels, rotation=20, ha="right")
    ax.axhline(0, color=BASELINE, lw=0.6)
    ax.set_ylabel("pairwise gradient cosine, last snapshot\n(whole model, seeds pooled)")
    ax.set_title("cosines at the end of training")


def _target_panel(
    ax, targets: pd.DataFrame | None, colors: Mapping[str, str], task_noun: str
) -> None:
    """GradVac's EMA targets over steps, one thin line per group and seed, against PCGrad's
    implicit target 0; a note without a GradVac run."""
    if targets is not None and not targets.empty:
        for label, part in targets.groupby("method", sort=False):
            color = colors.get(label, "#333333")
            first = True
            for _, line in part.groupby(["seed", "group"], sort=False):
                line = line.sort_values("step")
                ax.plot(line["step"].to_numpy(dtype=float),
                        line["mean_target"].to_numpy(dtype=float), color=color, lw=0.8,
                        alpha=0.5, label=f"{label}: one group, one seed" if first else None)  # fmt: skip
                first = False
        ax.axhline(0, color=BASELINE, lw=0.8, ls="--", label="PCGrad's implicit target (0)")
        ax.legend(loc="best", fontsize=7, framealpha=0.9)
    else:
        ax.text(0.5, 0.5, "no GradVac run: no EMA targets", ha="center", transform=ax.transAxes)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"EMA target φ̂ (mean over {task_noun} pairs)")
    ax.set_title("GradVac targets over steps")
