"""F5: gradient similarity over training steps.

Paper (Gradient Vaccine, finding 3): similarity changes quickly early in training, then
settles, at different levels for different pairs: the motivation for GradVac's adaptive,
EMA-tracked target instead of PCGrad's fixed 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from figures._style import (
    ACROSS,
    ALL_PAIRS,
    CATEGORICAL,
    MARKERS,
    WITHIN,
    new_figure,
    set_titles,
    style,
)
from geomtrace._errors import InvalidInputError

_KIND_COLORS = {"within": WITHIN, "across": ACROSS, "all": ALL_PAIRS}


def similarity_over_time(
    trajectories: pd.DataFrame,
    spread: pd.DataFrame | None = None,
    pairs: pd.DataFrame | None = None,
    *,
    settling: pd.DataFrame | None = None,
    title: str = "Gradient similarity over training",
    subtitle: str = "",
):
    """Left: within- vs across-family mean cosine per step with an interquartile band;
    right: the cosine of a few named language pairs.

    ``trajectories``: rows (step, kind, mean_cosine), e.g. ``analyses.family_trajectories``
    (kind within/across) or a single kind ``all``; ``spread``: rows (step, kind, q25, q75)
    over the pairs of each kind; ``pairs``: ``analyses.pair_trajectories`` rows (step, task_a,
    task_b, cosine) of the pairs to name; ``settling``: ``analyses.settling`` rows (kind,
    settle_step) drawn as dotted vertical lines. Returns the Figure.
    """
    if trajectories.empty or trajectories["step"].nunique() < 2:
        raise InvalidInputError(
            "similarity over time needs at least 2 snapshots; the trace has "
            f"{trajectories['step'].nunique() if not trajectories.empty else 0}"
        )
    named = pairs is not None and not pairs.empty
    with style():
        fig = new_figure(10.0 if named else 5.6, 4.2)
        axes = fig.subplots(1, 2 if named else 1, sharey=True, squeeze=False).ravel()
        ax = axes[0]
        for kind, part in trajectories.groupby("kind", sort=False):
            part = part.sort_values("step")
            color = _KIND_COLORS.get(kind, ALL_PAIRS)
            n = int(part["n_pairs"].iloc[0]) if "n_pairs" in part else None
            label = f"{kind}-family pairs" if kind in ("within", "across") else f"{kind} pairs"
            ax.plot(part["step"], part["mean_cosine"], color=color, lw=1.6, marker="o", ms=3,
                    label=label + (f" (n={n})" if n is not None else ""))  # fmt: skip
            if spread is not None and not spread.empty:
                band = spread[spread["kind"] == kind].sort_values("step")
                if not band.empty:
                    ax.fill_between(band["step"], band["q25"], band["q75"], color=color, alpha=0.18,
                                    lw=0, label=f"{kind}: interquartile range over pairs")  # fmt: skip
            if settling is not None and not settling.empty and "kind" in settling:
                hit = settling[settling["kind"] == kind]
                if not hit.empty and np.isfinite(hit["settle_step"].iloc[0]):
                    step = float(hit["settle_step"].iloc[0])
                    ax.axvline(
                        step, color=color, ls=":", lw=1.0, label=f"{kind} settles (step {step:.0f})"
                    )
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xlabel("training step")
        ax.set_ylabel("gradient cosine")
        ax.set_title("families: mean and spread")
        ax.legend(loc="best", fontsize=7, framealpha=0.9)
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
            ax.set_title("named language pairs")
            ax.legend(loc="best", fontsize=7, framealpha=0.9)
        set_titles(fig, title, subtitle)
    return fig


def pick_pairs(pair_trajectories: pd.DataFrame, n_per_kind: int = 2) -> list[tuple[str, str]]:
    """Pairs worth naming: per kind (same family / not / unknown), the pair with the highest
    and the one with the lowest cosine at the last snapshot (at most ``n_per_kind`` per kind).

    A choice of what to show, not a statistic.
    """
    last = pair_trajectories[pair_trajectories["step"] == pair_trajectories["step"].max()]
    last = last.dropna(subset=["cosine"]).sort_values("cosine", ascending=False)
    chosen: list[tuple[str, str]] = []
    for _, part in last.groupby(last["same_family"].astype(str), sort=False):
        rows = [part.iloc[0], part.iloc[-1]][:n_per_kind] if len(part) > 1 else [part.iloc[0]]
        for r in rows:
            key = (r["task_a"], r["task_b"])
            if key not in chosen:
                chosen.append(key)
    return chosen
