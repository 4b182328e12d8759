"""F6: the sum baseline against PCGrad and GradVac (at one or more granularities).

Paper (Gradient Vaccine, the method and its results): GradVac improves over the baseline and
over PCGrad, finer granularities more; its EMA targets sit at positive, pair- and
layer-specific values rather than PCGrad's implicit 0.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from figures._style import BASELINE, method_color, new_figure, set_titles, style
from geomtrace._errors import InvalidInputError


def _colors(methods: Mapping[str, str]) -> dict[str, str]:
    seen: dict[str, int] = {}
    out = {}
    for label, method in methods.items():
        out[label] = method_color(method, seen.get(method, 0))
        seen[method] = seen.get(method, 0) + 1
    return out


def optimizer_comparison(
    chrf_delta: pd.DataFrame,
    final_cosines: pd.DataFrame,
    targets: pd.DataFrame | None,
    *,
    methods: Mapping[str, str],
    baseline: str,
    title: str = "Baseline (sum) vs PCGrad vs GradVac",
    subtitle: str = "",
):
    """Three panels: per-language chrF difference vs the baseline; the distribution of the
    pairwise cosines at the last snapshot per run; GradVac's EMA targets over steps.

    ``methods``: {run label: method} in legend order (the baseline included); ``chrf_delta``:
    rows (run, task, delta) for the non-baseline runs; ``final_cosines``: rows (run, cosine),
    one per language pair; ``targets``: rows (run, step, group, mean_target) of GradVac runs
    (None or empty: the panel says there is none). Returns the Figure.
    """
    if len(methods) < 2:
        raise InvalidInputError(
            f"F6 (optimizers) compares runs: it needs the baseline and at least one PCGrad or "
            f"GradVac run, got {list(methods)}"
        )
    colors = _colors(methods)
    others = [r for r in methods if r != baseline]
    with style():
        fig = new_figure(15.0, 4.6)
        ax_q, ax_c, ax_t = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.5, 1.0, 1.0]})

        if chrf_delta is not None and not chrf_delta.empty:
            tasks = list(dict.fromkeys(chrf_delta["task"]))
            width = 0.8 / max(len(others), 1)
            x = np.arange(len(tasks))
            for n, run in enumerate(others):
                part = (
                    chrf_delta[chrf_delta["run"] == run].set_index("task")["delta"].reindex(tasks)
                )
                mean = (
                    float(np.nanmean(part.to_numpy(dtype=float))) if part.notna().any() else np.nan
                )
                ax_q.bar(x - 0.4 + width * (n + 0.5), part.to_numpy(dtype=float), width=width,
                         color=colors[run], label=f"{run}: mean {mean:+.2f}")  # fmt: skip
            ax_q.set_xticks(x, tasks, rotation=90 if len(tasks) > 10 else 0)
            ax_q.axhline(0, color=BASELINE, lw=0.8)
            ax_q.legend(loc="best", fontsize=7, framealpha=0.9)
        else:
            ax_q.text(0.5, 0.5, "no chrF in these runs", ha="center", transform=ax_q.transAxes)
        ax_q.set_xlabel("language")
        ax_q.set_ylabel(f"chrF − chrF of {baseline}")
        ax_q.set_title("quality difference vs baseline")

        runs = [r for r in methods if r in set(final_cosines["run"])]
        data = [
            final_cosines.loc[final_cosines["run"] == r, "cosine"].dropna().to_numpy() for r in runs
        ]
        parts = ax_c.violinplot(
            [d if len(d) else [np.nan] for d in data], showmedians=True, widths=0.8
        )
        for body, run in zip(parts["bodies"], runs, strict=True):
            body.set_facecolor(colors[run])
            body.set_edgecolor(colors[run])
            body.set_alpha(0.45)
        for key in ("cmedians", "cmins", "cmaxes", "cbars"):
            if key in parts:
                parts[key].set_color("#333333")
                parts[key].set_linewidth(0.8)
        rng = np.random.default_rng(0)  # jitter only; fixed so files are reproducible
        for n, (run, d) in enumerate(zip(runs, data, strict=True)):
            ax_c.scatter(n + 1 + rng.uniform(-0.12, 0.12, len(d)), d, s=6, color=colors[run],
                         edgecolors="none", alpha=0.8, zorder=3)  # fmt: skip
        ax_c.set_xticks(np.arange(1, len(runs) + 1), runs, rotation=20, ha="right")
        ax_c.axhline(0, color=BASELINE, lw=0.6)
        ax_c.set_ylabel("pairwise gradient cosine, last snapshot")
        ax_c.set_title("cosines at the end of training")

        if targets is not None and not targets.empty:
            for run, part in targets.groupby("run", sort=False):
                part = part.astype({"step": float, "mean_target": float})
                per_step = part.groupby("step")["mean_target"]
                mean, lo, hi = per_step.mean(), per_step.min(), per_step.max()
                color = colors.get(run, "#333333")
                ax_t.plot(
                    mean.index,
                    mean.to_numpy(),
                    color=color,
                    lw=1.6,
                    label=f"{run}: mean over groups",
                )
                if part["group"].nunique() > 1:
                    ax_t.fill_between(mean.index, lo.to_numpy(), hi.to_numpy(), color=color, alpha=0.2,
                                      lw=0, label=f"{run}: range over groups")  # fmt: skip
            ax_t.axhline(0, color=BASELINE, lw=0.8, ls="--", label="PCGrad's implicit target (0)")
            ax_t.legend(loc="best", fontsize=7, framealpha=0.9)
        else:
            ax_t.text(
                0.5, 0.5, "no GradVac run: no EMA targets", ha="center", transform=ax_t.transAxes
            )
        ax_t.set_xlabel("training step")
        ax_t.set_ylabel("EMA target φ̂ (mean over language pairs)")
        ax_t.set_title("GradVac targets over steps")
        set_titles(fig, title, subtitle)
    return fig
