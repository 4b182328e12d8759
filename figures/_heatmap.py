"""F1: the gradient-similarity matrix, clustered, with family and script strips.

Paper (Gradient Vaccine, finding 1 in shared/PAPER.md): the step-averaged cosine similarity of
language gradients, grouped by hierarchical clustering, groups languages largely by family.
For any multi-task run the same figure shows which tasks share gradient directions.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

import analyses
import geomtrace as gt
from figures._style import (
    HEATMAP_CMAP,
    add_footnote,
    averaged_window,
    categorical_colors,
    context,
    group_label,
    measure_label,
    new_figure,
    nouns,
    style,
)


def figure(result) -> object:
    """F1 of a run (``analyses.RunResults``): its headline matrix over the tasks with complete
    similarities, in the order of ``result.tree``; a NotApplicable when it cannot be drawn."""
    matrix = result.frame("similarity_matrix")
    if isinstance(matrix, analyses.NotApplicable):
        return matrix
    noun, plural = nouns(result.description)
    tree = result.tree
    keep = list(tree.tasks) if tree is not None else list(result.settings.get("complete_tasks", []))
    if len(keep) < 2:
        return analyses.NotApplicable(
            f"a similarity matrix needs at least 2 {plural} with similarities; the run has "
            f"{len(keep)} ({', '.join(keep) or 'none'})"
        )
    direction = f", {result.description.direction}" if result.description.direction else ""
    fig = similarity_heatmap(
        matrix.loc[keep, keep], tree, families=result.families or None, scripts=result.scripts,
        title=f"Gradient similarity between {plural} ({group_label(result.group)}{direction}), "
        + ("ordered by average-linkage clustering" if tree is not None else "in run order"),
        subtitle=context(result), task_noun=noun,
        value_label=f"{measure_label(result.measure)} ({averaged_window(result).split(',')[0]})",
    )  # fmt: skip
    add_footnote(fig, result.warnings)
    return fig


def similarity_heatmap(
    similarity: pd.DataFrame,
    tree=None,
    *,
    families: Mapping[str, str] | None = None,
    scripts: Mapping[str, str] | None = None,
    title: str = "Gradient similarity between tasks",
    subtitle: str = "",
    annotate: bool | None = None,
    task_noun: str = "task",
    value_label: str = "gradient cosine (mean over snapshots)",
):
    """Clustered heatmap of a [K, K] similarity frame (``analyses.similarity_matrix``).

    ``tree``: an ``analyses.ClusterTree`` of the same tasks (``analyses.cluster_tasks``);
    rows and columns follow its leaf order and its dendrogram is drawn left and on top.
    Without it, the frame's order is kept and no dendrogram is drawn. ``families`` and
    ``scripts`` ({task: label}) add colour strips. ``annotate``: write the values in the
    cells (default: when K <= 14). ``task_noun`` names the x axis, ``value_label`` the colour
    bar. Title and subtitle are wrapped to the figure's width. Returns the Figure.
    """
    order = _leaf_order(similarity, tree)
    m = similarity.loc[order, order].to_numpy(dtype=float)
    K = len(order)
    annotate = K <= 14 if annotate is None else annotate
    strips = [(name, lab) for name, lab in (("family", families), ("script", scripts)) if lab]

    size = min(max(5.0, 0.42 * K + 3.2), 16.0)
    width, height = size + 1.2, size + 0.6
    title_lines, sub_lines, top = _wrapped_header(title, subtitle, width, height)
    with style():
        fig = new_figure(width, height)
        fig.set_layout_engine("none")
        n_strip = len(strips)
        label_room = 0.12 * max(len(t) for t in order) + 0.3  # row labels sit right of the map
        widths = [1.4] + [0.28] * n_strip + [9.0, label_room, 0.3]
        gs = fig.add_gridspec(
            2, len(widths), width_ratios=widths, height_ratios=[1.4, 10],
            wspace=0.03, hspace=0.03, left=0.04, right=0.9, top=top, bottom=0.17,
        )  # fmt: skip
        ax = fig.add_subplot(gs[1, 1 + n_strip])
        mesh = _draw_matrix(ax, m, order, annotate=annotate, task_noun=task_noun)
        cax = fig.add_subplot(gs[1, -1])
        fig.colorbar(mesh, cax=cax, label=value_label)
        if tree is not None:
            _draw_dendrograms(fig, gs, tree, K, n_strip)
        _draw_strips(fig, gs, strips, order)
        _draw_header(fig, title_lines, sub_lines, height)
    return fig


def _leaf_order(similarity: pd.DataFrame, tree) -> list[str]:
    """The task order of the heatmap: ``tree``'s leaf order, or the frame's own order without a
    tree; refuses a frame that is not square, has fewer than 2 tasks, or other tasks than the
    tree."""
    if not isinstance(similarity, pd.DataFrame) or similarity.shape[0] != similarity.shape[1]:
        raise gt.InvalidInputError(
            "similarity must be a square DataFrame (analyses.similarity_matrix)"
        )
    tasks = [str(t) for t in similarity.index]
    if len(tasks) < 2:
        raise gt.InvalidInputError(f"a similarity heatmap needs at least 2 tasks, got {tasks}")
    if tree is not None and sorted(tree.tasks) != sorted(tasks):
        raise gt.InvalidInputError(
            f"the tree's tasks {tree.tasks} differ from the matrix's {tasks}"
        )
    return list(tree.leaves) if tree is not None else tasks


def _wrapped_header(
    title: str, subtitle: str, width: float, height: float
) -> tuple[list[str], list[str], float]:
    """The title and subtitle wrapped to a ``width``-inch figure (lines of each), and the top of
    the plotting area as a fraction of the ``height``-inch figure, below that header."""
    import textwrap

    chars = max(40, int(width * 11))
    title_lines = textwrap.wrap(title, chars)
    sub_lines = textwrap.wrap(subtitle, int(chars * 1.25)) if subtitle else []
    # Header height in inches: ~0.2 in per title line, ~0.16 per subtitle line, plus margins.
    header = 0.15 + 0.21 * len(title_lines) + 0.16 * len(sub_lines) + 0.1
    return title_lines, sub_lines, 1 - (header + 0.1) / height


def _draw_matrix(ax, m: np.ndarray, order: list[str], *, annotate: bool, task_noun: str):
    """The off-diagonal cells of ``m`` on a colour scale symmetric about 0 (limit: the largest
    finite |value|), the diagonal grey, tasks labelled below and right, values written in the
    cells when ``annotate``. Returns the mesh (for the colour bar)."""
    K = len(order)
    off = ~np.eye(K, dtype=bool)
    finite = m[off][np.isfinite(m[off])]
    lim = float(np.max(np.abs(finite))) if finite.size else 1.0
    lim = max(lim, 1e-6)
    ax.set_facecolor("#DDDDDD")  # the diagonal (cos = 1 by definition) is left grey
    mesh = ax.pcolormesh(
        np.ma.masked_invalid(np.where(off, m, np.nan)), cmap=HEATMAP_CMAP, vmin=-lim, vmax=lim, edgecolors="white",
        linewidth=0.3 if K <= 30 else 0,
    )  # fmt: skip
    ax.set_xlim(0, K)
    ax.set_ylim(K, 0)
    ax.set_xticks(np.arange(K) + 0.5, order, rotation=90)
    ax.yaxis.tick_right()
    ax.set_yticks(np.arange(K) + 0.5, order)
    ax.tick_params(length=0)
    ax.grid(False)
    ax.set_xlabel(task_noun)
    for side in ax.spines.values():
        side.set_visible(False)
    if annotate:
        for i in range(K):
            for j in range(K):
                if i != j and np.isfinite(m[i, j]):
                    ax.text(
                        j + 0.5, i + 0.5, f"{m[i, j]:.2f}".replace("0.", "."), ha="center",
                        va="center", fontsize=6.5,
                        color="white" if abs(m[i, j]) > 0.6 * lim else "black",
                    )  # fmt: skip
    return mesh


def _draw_dendrograms(fig, gs, tree, K: int, n_strip: int) -> None:
    """``tree``'s dendrogram left of the matrix and on top of it, aligned with its K cells."""
    from scipy.cluster.hierarchy import dendrogram

    left = fig.add_subplot(gs[1, 0])
    dendrogram(tree.linkage, ax=left, orientation="left", no_labels=True,
               color_threshold=0, above_threshold_color="#444444")  # fmt: skip
    left.set_ylim(10 * K, 0)
    top = fig.add_subplot(gs[0, 1 + n_strip])
    dendrogram(tree.linkage, ax=top, no_labels=True, color_threshold=0,
               above_threshold_color="#444444")  # fmt: skip
    top.set_xlim(0, 10 * K)
    for a in (left, top):
        a.axis("off")


def _draw_strips(fig, gs, strips: list[tuple[str, Mapping[str, str]]], order: list[str]) -> None:
    """One colour strip per (name, {task: label}) of ``strips`` left of the matrix (script
    codes written in the cells), colours distinct across strips, and one legend row each."""
    from matplotlib.colors import ListedColormap, to_hex
    from matplotlib.patches import Patch

    K = len(order)
    handles = []
    for s, (name, labels) in enumerate(strips):
        values = [str(labels.get(t, "?")) for t in order]
        used = [c for _, patches in handles for c in (p.get_facecolor() for p in patches)]
        colors = categorical_colors(sorted(set(values)), exclude=[to_hex(c) for c in used])
        cats = list(colors)
        sax = fig.add_subplot(gs[1, 1 + s])
        sax.pcolormesh(
            np.array([[cats.index(v)] for v in values]),
            cmap=ListedColormap([colors[c] for c in cats]), vmin=-0.5, vmax=len(cats) - 0.5,
            edgecolors="white", linewidth=0.3,
        )  # fmt: skip
        if name == "script" and K <= 60:
            # Codes written in the cells: readable whatever the number of colours.
            for i, v in enumerate(values):
                sax.text(0.5, i + 0.5, v[:4], ha="center", va="center", rotation=90,
                         fontsize=5, color=_ink(colors[v]))  # fmt: skip
        sax.set_ylim(K, 0)
        sax.set_xticks([0.5], [name], rotation=90)
        sax.set_yticks([])
        sax.tick_params(length=0)
        sax.grid(False)
        for side in sax.spines.values():
            side.set_visible(False)
        handles.append((name, [Patch(color=colors[c], label=c) for c in cats]))
    for n, (name, patches) in enumerate(handles):  # one legend row per strip
        fig.legend(
            handles=patches, title=f"{name}:", loc="lower left", ncol=len(patches),
            bbox_to_anchor=(0.04, 0.045 * (len(handles) - 1 - n)), frameon=False,
            fontsize=7, title_fontsize=8, alignment="left", columnspacing=1.0,
        )  # fmt: skip


def _draw_header(fig, title_lines: list[str], sub_lines: list[str], height: float) -> None:
    """The wrapped title, and the subtitle below it, left-aligned at the figure's top."""
    y = 1 - 0.15 / height
    fig.text(0.04, y, "\n".join(title_lines), ha="left", va="top", fontsize=11)
    if sub_lines:
        y -= (0.21 * len(title_lines) + 0.04) / height
        fig.text(0.04, y, "\n".join(sub_lines), ha="left", va="top", fontsize=8,
                 color="#333333")  # fmt: skip


def _ink(background: str) -> str:
    """Black or white text, whichever reads better on ``background`` (relative luminance)."""
    from matplotlib.colors import to_rgb

    r, g, b = to_rgb(background)
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.45 else "white"
