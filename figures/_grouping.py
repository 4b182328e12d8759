"""The grouping experiment: per task and scheme, group models against the all-task model.

Beyond the paper (issue 15; after GradSim, Wang et al. EMNLP 2023, and TAG, Fifty et al.
NeurIPS 2021): does training one model per group of a gradient-based grouping beat the
single all-task model, and does it beat typology-based and random groups of the same sizes?
Every number comes from ``analyses.grouping_experiment`` (seed-matched differences,
t intervals across seeds); this module draws them and writes them as a Markdown table.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

import analyses
import geomtrace as gt
from figures._style import (
    BASELINE,
    categorical_colors,
    ci,
    direction_words,
    error_lengths,
    fmt,
    metric_label,
    new_figure,
    set_titles,
    style,
)


def _task_order(experiment) -> list[str]:
    """Tasks grouped by the first scheme's groups (its groups drawn side by side)."""
    tasks = experiment.tasks
    first = next(iter(experiment.schemes.values()), [])
    ordered = [t for g in first for t in g if t in tasks]
    return ordered + [t for t in tasks if t not in ordered]


def _subtitle(experiment) -> str:
    n = len(experiment.seeds)
    bits = [
        f"{n} seed{'s' if n != 1 else ''} ({', '.join(map(str, experiment.seeds))})",
        f"each difference against the {experiment.baseline} of the same seed",
        f"{experiment.level:.0%} t interval across seeds" if n > 1 else "one seed: no interval",
    ]
    return "; ".join(bits)


def figure(experiment) -> object:
    """The grouping figure from ``analyses.grouping_experiment`` (NotApplicable passed on)."""
    if isinstance(experiment, analyses.NotApplicable):
        return experiment
    return grouping_comparison(experiment)


def grouping_comparison(experiment, *, title: str | None = None, task_noun: str = "language"):
    """Two panels. Left: per task (x, ordered by the first scheme's groups, dotted lines
    between them) and scheme (one marker column each), the mean difference over seeds with its
    t interval and each seed's difference (small dots). Right: per scheme, the mean over
    tasks with its t interval across seeds, each seed's mean (small dots), and how many tasks
    gain (mean better than the all-task model) / gain or lose with an interval excluding 0."""
    per_task, per_scheme = experiment.per_task, experiment.per_scheme
    schemes = list(experiment.schemes) or list(dict.fromkeys(per_scheme["scheme"]))
    if not schemes or per_task.empty:
        raise gt.InvalidInputError("the grouping figure needs at least one scheme with values")
    colors = categorical_colors(schemes)
    tasks = _task_order(experiment)
    label = metric_label(experiment.metric)
    with style():
        fig = new_figure(min(18.0, max(9.0, 4.5 + 0.5 * len(tasks))), 5.0)
        ax_t, ax_s = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3.2, 1.0]})
        x = np.arange(len(tasks))
        width = 0.75 / len(schemes)
        summary = per_scheme.set_index("scheme")
        for n, scheme in enumerate(schemes):
            offset = -0.375 + width * (n + 0.5)
            part = per_task[per_task["scheme"] == scheme].set_index("task").reindex(tasks)
            mean = part["mean_delta"].to_numpy(dtype=float)
            err = error_lengths(part, mean)
            legend = scheme
            if scheme in summary.index:
                r = summary.loc[scheme]
                legend += (
                    f": mean {ci(r['mean_delta'], r['ci_low'], r['ci_high'])}, gains for "
                    f"{int(r['n_gain'])}/{int(r['n_tasks'])}"
                )
            ax_t.errorbar(x + offset, mean, yerr=err, fmt="o", ms=4, color=colors[scheme],
                          capsize=2, elinewidth=0.9, label=legend, zorder=3)  # fmt: skip
            seeds = experiment.deltas[experiment.deltas["scheme"] == scheme]
            position = {t: i for i, t in enumerate(tasks)}
            xs = seeds["task"].map(position).to_numpy(dtype=float) + offset
            ax_t.scatter(xs, seeds["delta"].to_numpy(dtype=float), s=7, color=colors[scheme],
                         alpha=0.45, edgecolors="none", zorder=2)  # fmt: skip
        first = next(iter(experiment.schemes.values()), [])
        edge = 0
        for group in first[:-1]:
            edge += len([t for t in group if t in tasks])
            ax_t.axvline(edge - 0.5, color="#999999", lw=0.7, ls=":")
        ax_t.axhline(0, color=BASELINE, lw=0.8)
        ax_t.set_xticks(x, tasks, rotation=90 if len(tasks) > 10 else 0)
        ax_t.set_xlim(-0.6, len(tasks) - 0.4)
        ax_t.set_xlabel(
            f"{task_noun} (dotted lines: the groups of {schemes[0]}; small dots: one seed each)"
        )
        ax_t.set_ylabel(
            f"{label} of the group model − {label} of the {experiment.baseline}\n"
            f"({direction_words(experiment.metric, experiment.higher_is_better)}; "
            f"mean over seeds, {experiment.level:.0%} interval)"
        )
        ax_t.set_title(f"per {task_noun}")
        ax_t.legend(loc="best", fontsize=7, framealpha=0.9)

        y = np.arange(len(schemes))[::-1]
        for yy, scheme in zip(y, schemes, strict=True):
            if scheme not in summary.index:
                continue
            r = summary.loc[scheme]
            mean = float(r["mean_delta"])
            lo, hi = float(r["ci_low"]), float(r["ci_high"])
            xerr = None if lo != lo else [[mean - lo], [hi - mean]]
            ax_s.errorbar([mean], [yy], xerr=xerr, fmt="o", ms=6, color=colors[scheme],
                          capsize=3, zorder=3)  # fmt: skip
            seed_means = (
                experiment.deltas[experiment.deltas["scheme"] == scheme]
                .groupby("seed")["delta"].mean().to_numpy(dtype=float)
            )  # fmt: skip
            ax_s.scatter(seed_means, np.full(len(seed_means), yy), s=12, color=colors[scheme],
                         alpha=0.5, edgecolors="none", zorder=2)  # fmt: skip
            ax_s.annotate(
                f"{fmt(mean)}; gains for {int(r['n_gain'])}/{int(r['n_tasks'])} "
                f"({int(r['n_gain_clear'])} clearly), clearly worse for {int(r['n_loss_clear'])}",
                (0, yy), xycoords=("axes fraction", "data"), xytext=(2, 7),
                textcoords="offset points", fontsize=7, color="#333333",
            )  # fmt: skip
        ax_s.axvline(0, color=BASELINE, lw=0.8)
        ax_s.set_yticks(y, schemes)
        ax_s.set_ylim(-0.7, len(schemes) - 0.3)
        ax_s.set_xlabel(f"mean {label} difference over {task_noun}s\n(dots: one seed each)")
        ax_s.set_title("per scheme")
        set_titles(
            fig,
            title or f"One model per group vs the {experiment.baseline}",
            _subtitle(experiment),
        )
    return fig


def _cell(mean: float, low: float, high: float) -> str:
    return ci(mean, low, high, digits=1)


def grouping_markdown(
    experiment, *, title: str = "Grouping experiment", notes: Sequence[str] = ()
) -> str:
    """The experiment as Markdown: the schemes' groups, per-scheme means, per-task table, then
    the experiment's and the caller's ``notes``."""
    if isinstance(experiment, analyses.NotApplicable):
        return f"# {title}\n\nNot applicable: {experiment.reason}\n" + "".join(
            f"\n- Note: {n}" for n in notes
        )
    label = metric_label(experiment.metric)
    lines = [f"# {title}", "", f"{label} of the group model minus {label} of the "
             f"{experiment.baseline} ({_subtitle(experiment)}; "
             f"{direction_words(experiment.metric, experiment.higher_is_better)}).", "",
             "## Schemes", ""]  # fmt: skip
    for scheme, groups in experiment.schemes.items():
        lines.append(f"- **{scheme}**: " + " | ".join(" ".join(g) for g in groups))
    lines += ["", "## Per scheme (mean over languages)", "",
              "| scheme | mean difference [interval] | seeds | languages | gain | gain, clearly "
              "| lose, clearly |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in experiment.per_scheme.itertuples():
        lines.append(
            f"| {r.scheme} | {_cell(r.mean_delta, r.ci_low, r.ci_high)} | {r.n_seeds} | "
            f"{r.n_tasks} | {r.n_gain} | {r.n_gain_clear} | {r.n_loss_clear} |"
        )
    schemes = list(experiment.schemes)
    baseline = (
        experiment.deltas.groupby("task", sort=False)["baseline"].mean().reindex(_task_order(experiment))
    )  # fmt: skip
    lines += ["", "## Per language", "",
              f"| language | {label} (all-language model) | "
              + " | ".join(schemes) + " |", "|---|---|" + "---|" * len(schemes)]  # fmt: skip
    per = experiment.per_task.set_index(["scheme", "task"])
    for task, base in baseline.items():
        cells = []
        for scheme in schemes:
            if (scheme, task) in per.index:
                r = per.loc[(scheme, task)]
                cells.append(f"{_cell(r['mean_delta'], r['ci_low'], r['ci_high'])} "
                             f"(g{int(r['group']) + 1})")  # fmt: skip
            else:
                cells.append("")
        lines.append(f"| {task} | {base:.1f} | " + " | ".join(cells) + " |")
    notes = list(dict.fromkeys([*experiment.notes, *notes]))
    if notes:
        lines += ["", *[f"- Note: {n}" for n in notes]]
    return "\n".join(lines) + "\n"


#: The public name of :func:`figure` (``figures.grouping_figure``).
grouping_figure = figure
