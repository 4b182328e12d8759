"""F4: mean gradient similarity per parameter group, in model order.

Paper (Gradient Vaccine, finding 3): similarity differs across layers (encoder vs decoder, low
vs high layers; in X->En the shared English target makes decoder gradients more alike).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from figures._style import ACROSS, ALL_PAIRS, PART_SHADE, WITHIN, new_figure, set_titles, style
from geomtrace._errors import InvalidInputError


def layer_profile(
    summary: pd.DataFrame,
    by_family: pd.DataFrame | None = None,
    *,
    title: str = "Gradient similarity per parameter group",
    subtitle: str = "",
):
    """Mean cosine of every parameter group, in model order, with encoder/decoder shading.

    ``summary``: ``analyses.similarity_summary`` rows (group, position, part, mean_cosine,
    std_over_steps, conflict_rate); the whole-model row (position -1) is drawn as a dashed
    reference line. ``by_family``: optional rows (group, kind in {within, across},
    mean_cosine) adding within- and across-family lines. Returns the Figure.
    """
    groups = summary[summary["position"] >= 0].sort_values("position")
    if groups.empty:
        raise InvalidInputError("layer_profile needs similarity_summary rows of real groups")
    names = list(groups["group"])
    x = np.arange(len(names))
    width = min(max(6.0, 0.38 * len(names) + 2.5), 18.0)
    with style():
        fig = new_figure(width, 4.6)
        ax = fig.subplots()
        parts = list(groups["part"])
        start = 0
        for i in range(1, len(parts) + 1):  # one shaded band per run of equal parts
            if i == len(parts) or parts[i] != parts[start]:
                ax.axvspan(
                    start - 0.5, i - 0.5, color=PART_SHADE.get(parts[start], "#FFFFFF"), zorder=0
                )
                ax.text((start + i - 1) / 2, 1.0, parts[start], transform=ax.get_xaxis_transform(),
                        ha="center", va="bottom", fontsize=8, color="#444444")  # fmt: skip
                start = i
        mean = groups["mean_cosine"].to_numpy(dtype=float)
        spread = groups["std_over_steps"].to_numpy(dtype=float)
        ax.errorbar(x, mean, yerr=np.nan_to_num(spread), color=ALL_PAIRS, marker="o", ms=4,
                    capsize=2, lw=1.2, elinewidth=0.8, ecolor="#999999",
                    label="all pairs (± std over steps)", zorder=3)  # fmt: skip
        if by_family is not None and not by_family.empty:
            for kind, color, marker in (("within", WITHIN, "s"), ("across", ACROSS, "^")):
                part = by_family[by_family["kind"] == kind].set_index("group")
                values = part["mean_cosine"].reindex(names).to_numpy(dtype=float)
                if np.isfinite(values).any():
                    ax.plot(x, values, color=color, marker=marker, ms=4, lw=1.2,
                            label=f"{kind}-family pairs", zorder=4)  # fmt: skip
        whole = summary[summary["position"] < 0]
        if not whole.empty:
            ax.axhline(float(whole["mean_cosine"].iloc[0]), color=ALL_PAIRS, ls="--", lw=0.8,
                       label="whole model (all groups' Gram summed)")  # fmt: skip
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(
            x,
            names,
            rotation=60 if len(names) > 6 else 0,
            ha="right" if len(names) > 6 else "center",
        )
        ax.set_xlim(-0.5, len(names) - 0.5)
        ax.set_xlabel("parameter group (model order)")
        ax.set_ylabel("mean gradient cosine over language pairs")
        ax.legend(loc="best", frameon=True, framealpha=0.9)
        set_titles(fig, title, subtitle)
    return fig
