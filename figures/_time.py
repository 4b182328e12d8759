"""F5: gradient similarity over training steps.

Paper (Gradient Vaccine, finding 3): similarity changes quickly early in training, then
settles, at different levels for different pairs: the motivation for GradVac's adaptive,
EMA-tracked target instead of PCGrad's fixed 0. Every snapshot is drawn, step 0 (the
untrained model) included; the settling step is drawn with its interval over task pairs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

import analyses
import geomtrace as gt
from figures._style import (
    ACROSS,
    ALL_PAIRS,
    CATEGORICAL,
    MARKERS,
    WITHIN,
    add_footnote,
    context,
    group_label,
    measure_label,
    new_figure,
    nouns,
    set_titles,
    style,
)

_KIND_COLORS = {"within": WITHIN, "across": ACROSS, "all": ALL_PAIRS}


def snapshots_text(steps) -> str:
    """``11 snapshots, steps 0–100 (step 0: untrained model)``: what F5 draws."""
    steps = [int(s) for s in steps]
    if not steps:
        return "no snapshot"
    n = len(steps)
    text = f"{n} snapshot{'s' if n != 1 else ''}, steps {min(steps)}–{max(steps)}"
    return text + (" (step 0: untrained model)" if 0 in steps else "")


def figure(result) -> object:
    """F5 of a run: within/across-family trajectories (``family_trajectories``,
    ``family_settling``) or, without families, the headline group's (``group_trajectories``,
    ``group_settling``), the pairs' interquartile band (``pair_spread``) and the named pairs
    (``pairs``, chosen by ``analyses.pick_pairs``)."""
    _, plural = nouns(result.description)
    if len(result.tasks) < 2:
        return analyses.NotApplicable(
            f"the run has {len(result.tasks)} task: no pair of {plural} to follow over steps"
        )
    traj = result.frames.get("family_trajectories")
    settle = result.frames.get("family_settling")
    if traj is None:
        groups = result.frame("group_trajectories")
        if isinstance(groups, analyses.NotApplicable):
            return groups
        traj = groups[groups["group"] == result.group].assign(kind="all")
        settle = result.frames.get("group_settling")
    spread = result.frames.get("pair_spread")
    if spread is not None and "group" in spread:
        spread = spread[spread["group"] == result.group]
    steps = sorted(set(traj["step"]))
    window = snapshots_text(steps)
    fig = similarity_over_time(
        traj, spread, result.frames.get("pairs"), settling=settle,
        title=f"Gradient similarity over training ({group_label(result.group)})",
        subtitle=context(result, window=f"{measure_label(result.measure)} per snapshot, {window}"),
        measure=measure_label(result.measure), task_noun=nouns(result.description)[0],
        reliability=result.frames.get("reliability_trajectory"),
    )  # fmt: skip
    add_footnote(fig, result.warnings)
    return fig


def _settle_text(row: pd.Series) -> str:
    """The settle step, without its pair-bootstrap interval: the calibration harness does not
    score that interval yet (analyses/README.md), so only the point is drawn."""
    step = float(row["settle_step"])
    if not np.isfinite(float(row["final_value"])):
        return "no final value (last snapshot not finite)"
    if not np.isfinite(step):
        return "does not settle"
    return f"settles at step {step:.0f} (exploratory)"


def similarity_over_time(
    trajectories: pd.DataFrame,
    spread: pd.DataFrame | None = None,
    pairs: pd.DataFrame | None = None,
    *,
    settling: pd.DataFrame | None = None,
    title: str = "Gradient similarity over training",
    subtitle: str = "",
    measure: str = "gradient cosine",
    task_noun: str = "task",
    reliability: pd.DataFrame | None = None,
):
    """Left: the mean similarity per snapshot by kind (within / across family, or ``all``)
    with the interquartile band over pairs and the settling step with its interval; right:
    the similarity of a few named pairs. (``settling``'s intervals are not drawn: the
    calibration harness does not score them yet.)

    ``reliability``: rows (step, reliability, mean_corrected) of
    ``analyses.reliability_trajectory``: the noise-corrected mean over all pairs (dashed) and
    the mean reliability (grey, right axis, 0-1) are drawn on the left panel, so that a fall of
    the raw mean can be read against the fall of reliability that attenuates it.

    ``trajectories``: rows (step, kind, mean_cosine[, n_pairs]); ``spread``: rows (step,
    kind, q25, q75) (``analyses.pair_spread``); ``pairs``: rows (step, task_a, task_b, cosine
    [, same_family]) of the pairs to name; ``settling``: rows (kind, settle_step,
    settle_ci_low, settle_ci_high, last_step[, final_value, final_ci_low, final_ci_high])
    from ``analyses.settling_with_interval``: a dotted line at the settle step, a shaded span
    over its interval, and the final value's interval as a bar at the right edge. Returns
    the Figure; :class:`geomtrace.InvalidInputError` with fewer than 2 snapshots.
    """
    if trajectories.empty or trajectories["step"].nunique() < 2:
        raise gt.InvalidInputError(
            "similarity over time needs at least 2 snapshots; the trace has "
            f"{trajectories['step'].nunique() if not trajectories.empty else 0}"
        )
    named = pairs is not None and not pairs.empty
    with style():
        fig = new_figure(11.0 if named else 6.2, 4.6)
        axes = fig.subplots(1, 2 if named else 1, sharey=True, squeeze=False).ravel()
        ax = axes[0]
        for kind, part in trajectories.groupby("kind", sort=False):
            part = part.sort_values("step")
            color = _KIND_COLORS.get(kind, ALL_PAIRS)
            n = int(part["n_pairs"].iloc[0]) if "n_pairs" in part else None
            label = f"{kind}-family pairs" if kind in ("within", "across") else f"{kind} pairs"
            ax.plot(part["step"], part["mean_cosine"], color=color, lw=1.6, marker="o", ms=3,
                    label=label + (f" (n={n})" if n is not None else "") + ": mean")  # fmt: skip
            if spread is not None and not spread.empty:
                band = spread[spread["kind"] == kind].sort_values("step")
                if not band.empty:
                    ax.fill_between(band["step"], band["q25"], band["q75"], color=color, alpha=0.15,
                                    lw=0, label=f"{kind}: interquartile range over pairs")  # fmt: skip
            if settling is not None and not settling.empty and "kind" in settling:
                hit = settling[settling["kind"] == kind]
                if not hit.empty:
                    row = hit.iloc[0]
                    if np.isfinite(float(row["settle_step"])):
                        ax.axvline(float(row["settle_step"]), color=color, ls=":", lw=1.1,
                                   label=f"{kind}: {_settle_text(row)}")  # fmt: skip
        if reliability is not None and not reliability.empty:
            rel = reliability.sort_values("step")
            ax.plot(rel["step"], rel["mean_corrected"], color=ALL_PAIRS, ls="--", lw=1.3,
                    label="all pairs: noise-corrected mean")  # fmt: skip
            twin = ax.twinx()
            twin.plot(rel["step"], rel["reliability"], color="0.55", lw=1.0, marker=".",
                      label="reliability (right axis)")  # fmt: skip
            twin.set_ylim(0, 1.02)
            twin.set_ylabel("reliability (signal fraction)", color="0.4")
            twin.grid(False)
            handles, labels = ax.get_legend_handles_labels()
            more, more_labels = twin.get_legend_handles_labels()
            ax.legend(handles + more, labels + more_labels, loc="best", fontsize=6.5,
                      framealpha=0.9)  # fmt: skip
        else:
            ax.legend(loc="best", fontsize=6.5, framealpha=0.9)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xlabel("training step")
        ax.set_ylabel(measure)
        ax.set_title("mean over pairs, interquartile band; settle step (exploratory)",
                     fontsize=8)  # fmt: skip
        if named:
            ax = axes[1]
            keys = list(dict.fromkeys(zip(pairs["task_a"], pairs["task_b"], strict=True)))
            for n, (a, b) in enumerate(keys):
                part = pairs[(pairs["task_a"] == a) & (pairs["task_b"] == b)].sort_values("step")
                same = part["same_family"].iloc[0] if "same_family" in part else None
                tag = {True: ", same family", False: ", different families"}.get(same, "")
                ax.plot(part["step"], part["cosine"], color=CATEGORICAL[n % len(CATEGORICAL)],
                        marker=MARKERS[n % len(MARKERS)], ms=3, lw=1.3, label=f"{a}–{b}{tag}")  # fmt: skip
            ax.axhline(0, color="black", lw=0.6)
            ax.set_xlabel("training step")
            ax.set_title(f"named {task_noun} pairs (highest and lowest at the last snapshot)",
                         fontsize=8)  # fmt: skip
            ax.legend(loc="best", fontsize=7, framealpha=0.9)
        set_titles(fig, title, subtitle)
    return fig
