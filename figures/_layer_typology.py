"""F7: where the language structure lives: typology per parameter group (the report's lead).

Issue 11, item 5: a layer x distance table of the Mantel correlation between gradient
similarity and typological similarity, raw and partial given character overlap (the main
confound of byte-level models), each with its bootstrap interval and Holm mark, plus the
family / genus agreement (ARI) of each group's clustering. Rows are the whole model then the
groups in model order; numbers come from ``result.frames["layers"]`` and
``["layer_clustering"]`` (``analyses.analyse_run``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

import analyses
import geomtrace as gt
from figures._style import (
    HEATMAP_CMAP,
    add_footnote,
    context,
    new_figure,
    set_titles,
    style,
)
from figures._typology import ALPHA, CONTROL_NAMES, needs_languages


def figure(result) -> object:
    """F7 of a run; NotApplicable without languages or with a single parameter group."""
    na = needs_languages(result)
    if na is not None:
        return na
    layers = result.frame("layers")
    if isinstance(layers, analyses.NotApplicable):
        return layers
    fig = layer_typology(
        layers, result.frames.get("layer_clustering"),
        title="Where typology lives: gradient similarity vs typological similarity per "
        "parameter group",
        subtitle=context(result), level=result.settings.get("level", 0.95),
        warnings=result.warnings,
    )  # fmt: skip
    return fig


def _grid(layers: pd.DataFrame, rows: list[str], kinds: list[str], cols: tuple[str, ...]):
    table = layers.drop_duplicates(subset=["group", "distance"]).set_index(["group", "distance"])
    out = []
    for c in cols:
        m = np.full((len(rows), len(kinds)), np.nan)
        for i, g in enumerate(rows):
            for j, k in enumerate(kinds):
                if (g, k) in table.index and c in table.columns:
                    m[i, j] = float(table.loc[(g, k), c])
        out.append(m)
    return out


def layer_typology(
    layers: pd.DataFrame,
    clustering: pd.DataFrame | None = None,
    *,
    title: str = "Gradient similarity vs typological similarity per parameter group",
    subtitle: str = "",
    level: float = 0.95,
    alpha: float = ALPHA,
    warnings: Sequence[str] = (),
):
    """Heatmaps group x distance: left the relation, middle the partial relation given the
    control (character overlap), each cell with its interval and ✓ where the test survives
    the table's Holm correction at ``alpha``; right (when ``clustering`` is given) the
    adjusted Rand index of each group's tree against the families and genera.

    The relation is the noise-removed one (``rho_disattenuated``, ``partial_disattenuated``)
    with its language interval (``lang_ci_*``, ``partial_lang_ci_*``) when ``layers`` has
    those columns (``analyses.typology_correlation`` gives them), else the run's rho with its
    snapshot interval. ``layers``: rows (group, position, distance, control, rho, ci_low,
    ci_high, p_holm, partial_rho, partial_ci_low, partial_ci_high, partial_p_holm, and the
    noise-removed columns); ``clustering``: rows
    (group, level, statistic, value, ci_low, ci_high, p_holm) of ``family_agreement`` per
    group. ``warnings`` go in the footnote under the cell legend. Returns the Figure.
    """
    if layers is None or layers.empty:
        raise gt.InvalidInputError("layer_typology needs the layer x distance table")
    order = layers.drop_duplicates("group").sort_values("position", kind="stable")
    rows = [str(g) for g in order["group"]]
    kinds = list(dict.fromkeys(layers["distance"]))
    controls = [c for c in layers["control"].dropna().unique() if isinstance(c, str)]
    control = CONTROL_NAMES.get(controls[0], controls[0]) if controls else None
    # The noise-removed relation with its language interval where the table has it (what a
    # claim about languages reads; the run's rho is attenuated and its snapshot interval
    # covers no truth about languages), else the run's rho and its snapshot interval.
    removed = {"rho_disattenuated", "lang_ci_low", "partial_disattenuated"} <= set(layers)
    if removed:
        whole = ("rho_disattenuated", "lang_ci_low", "lang_ci_high", "p_holm")
        part = ("partial_disattenuated", "partial_lang_ci_low", "partial_lang_ci_high",
                "partial_p_holm")  # fmt: skip
        names = ("noise-removed ρ", "noise-removed partial ρ")
    else:
        whole = ("rho", "ci_low", "ci_high", "p_holm")
        part = ("partial_rho", "partial_ci_low", "partial_ci_high", "partial_p_holm")
        names = ("ρ (raw)", "partial ρ")
    rho, lo, hi, ph = _grid(layers, rows, kinds, whole)
    prho, plo, phi, pph = _grid(layers, rows, kinds, part)
    panels = [(names[0], rho, lo, hi, ph)]
    if control is not None:
        panels.append((f"{names[1]} | {control}", prho, plo, phi, pph))
    ari = None
    if clustering is not None and not clustering.empty:
        hit = clustering[clustering["statistic"] == "ari"]
        # script beside family and genus (a named confound), and genus within one script
        present = list(dict.fromkeys(hit["level"]))
        levels = [lv for lv in ("family", "genus", "script") if lv in present]
        levels += [lv for lv in present if lv.startswith("genus within")]
        if levels:
            wide = hit.set_index(["group", "level"])
            # No interval for the agreement: its bootstrap covered 45-85% in the harness.
            ari = [
                np.array([[float(wide.loc[(g, lv), c]) if (g, lv) in wide.index and c in wide
                           else np.nan for lv in levels] for g in rows])
                for c in ("value", "no interval", "no interval", "p_holm")
            ]  # fmt: skip
    labels = ["whole model" if g == "all" else g for g in rows]
    cell_w, cell_h = 0.95, 0.46
    label_w = 0.075 * max(len(s) for s in labels) + 0.4
    widths = [len(kinds)] * len(panels) + ([len(levels)] if ari is not None else [])
    fig_w = label_w + sum(widths) * cell_w + 0.55 * len(widths) + 0.9
    fig_h = len(rows) * cell_h + 2.6
    with style():
        fig = new_figure(fig_w, fig_h)
        axes = fig.subplots(1, len(widths), gridspec_kw={"width_ratios": widths}, squeeze=False)
        axes = axes.ravel()
        mesh = None
        for n, (name, value, low, high, holm) in enumerate(panels):
            mesh = _heat(axes[n], value, low, high, holm, alpha, kinds, labels, first=n == 0)
            axes[n].set_title(name)
        if ari is not None:
            ax = axes[-1]
            _heat(ax, *ari, alpha, [f"{lv} ARI" for lv in levels], labels, first=False)
            ax.set_title("clusters vs\nfamilies")
        fig.colorbar(mesh, ax=list(axes), shrink=0.8, pad=0.02,
                     label="Spearman ρ (cosine vs −distance) / ARI")  # fmt: skip
        set_titles(fig, title, subtitle)
    what = (
        f"noise-removed value (disattenuated by the matrix's split-half reliability) "
        f"[{level:.0%} language-jackknife interval]"
        if removed
        else f"value [{level:.0%} bootstrap interval over snapshots]"
    )
    notes = [
        f"Cells: {what}; bold ✓: the test of the run's rho survives Holm at {alpha:g} within "
        "the table (every rho and partial rho of it); blank: not computed."
    ]
    add_footnote(fig, warnings, notes=notes)
    return fig


def _heat(ax, value, low, high, holm, alpha, columns, rows, *, first: bool):
    R, C = value.shape
    mesh = ax.pcolormesh(np.ma.masked_invalid(value), cmap=HEATMAP_CMAP, vmin=-1, vmax=1,
                         edgecolors="white", linewidth=0.8)  # fmt: skip
    ax.set_xlim(0, C)
    ax.set_ylim(R, 0)
    ax.set_xticks(np.arange(C) + 0.5, columns, rotation=30, ha="right")
    ax.set_yticks(np.arange(R) + 0.5, rows if first else [])
    ax.tick_params(length=0)
    ax.grid(False)
    for side in ax.spines.values():
        side.set_visible(False)
    for i in range(R):
        for j in range(C):
            v = value[i, j]
            if not np.isfinite(v):
                continue
            mark = " ✓" if np.isfinite(holm[i, j]) and holm[i, j] < alpha else ""
            text = f"{v:+.2f}{mark}"
            if np.isfinite(low[i, j]) and np.isfinite(high[i, j]):
                text += f"\n[{low[i, j]:+.2f}, {high[i, j]:+.2f}]"
            ax.text(j + 0.5, i + 0.5, text, ha="center", va="center", fontsize=6.2,
                    color="white" if abs(v) > 0.6 else "black",
                    fontweight="bold" if mark else "normal")  # fmt: skip
    return mesh
