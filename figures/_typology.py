"""F2: gradient similarity against typological similarity, one panel per distance.

Paper (Gradient Vaccine, finding 1): gradient similarity correlates with typological
similarity of the languages (URIEL / lang2vec features).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

import analyses
import geomtrace as gt
from figures._style import (
    ACROSS,
    ALL_PAIRS,
    BASELINE,
    WITHIN,
    add_footnote,
    averaged_window,
    ci,
    context,
    fmt,
    group_label,
    holm_mark,
    measure_label,
    new_figure,
    set_titles,
    short_p,
    stats_title,
    style,
)

#: Significance level of the Holm marks (analyses' own when it exports one).
ALPHA = getattr(analyses, "ALPHA", 0.05)

#: Axis labels of the distances (``analyses.DISTANCES`` and the covariates).
DISTANCE_LABELS = {
    "syntactic": "syntactic distance (URIEL, cosine)",
    "phonological": "phonological distance (URIEL, cosine)",
    "inventory": "phoneme-inventory distance (URIEL, cosine)",
    "featural": "featural distance (URIEL, cosine)",
    "geographic": "geographic distance (km)",
    "genetic": "genetic distance (Glottolog path)",
    "char_overlap": "character-profile distance (1 - overlap)",
    "script": "script differs (0/1)",
}
#: How a control is named in a panel.
CONTROL_NAMES = {"char_overlap": "character overlap", "script": "script"}
#: Controls preferred for the partial value shown in a panel, first found wins.
CONTROL_PREFERENCE = ("char_overlap", "script")


def _language_ci(row, prefix: str) -> str:
    """The noise-removed (disattenuated) value with its language-jackknife interval."""
    value = row.get("rho_disattenuated" if not prefix else "partial_disattenuated", np.nan)
    low = row.get(f"{prefix}lang_ci_low", np.nan)
    high = row.get(f"{prefix}lang_ci_high", np.nan)
    return f"{ci(value, low, high)} (languages)"


def needs_languages(result):
    """NotApplicable for the typology figures (F2, F7) of a run whose tasks are not languages
    (worded without the analyses' language jargon), else None."""
    if result.description.task_noun == "language":
        return None
    _, plural = nouns_of(result)
    return analyses.NotApplicable(
        f"typological distances need ISO 639-3 codes; the {plural} of this run have none"
    )


def nouns_of(result) -> tuple[str, str]:
    from figures._style import nouns

    return nouns(result.description)


def figure(result) -> object:
    """F2 of a run: its headline matrix against each typological distance of
    ``result.distances``, numbers from ``result.frames["typology"]``."""
    na = needs_languages(result)
    if na is not None:
        return na
    corr = result.frame("typology")
    if isinstance(corr, analyses.NotApplicable):
        return corr
    if not result.distances:
        return analyses.NotApplicable("no typological distance matrix for these languages")
    matrix = result.frames["similarity_matrix"]
    first = next(iter(result.distances.values()))
    tasks = [t for t in matrix.index if t in first.index]
    step0 = result.frames.get("similarity_matrix_step0")
    fig = typology_scatter(
        matrix.loc[tasks, tasks], result.distances, corr,
        similarity_step0=step0.loc[tasks, tasks] if step0 is not None else None,
        families=result.families or None,
        title=f"Gradient similarity vs typological distance ({group_label(result.group)})",
        subtitle=context(result),
        value_label=f"{measure_label(result.measure)} ({averaged_window(result).split(',')[0]})",
        level=result.settings.get("level", 0.95),
    )  # fmt: skip
    add_footnote(fig, result.warnings)
    return fig


def _pairs(frame: pd.DataFrame, tasks: list[str]) -> np.ndarray:
    m = frame.loc[tasks, tasks].to_numpy(dtype=float)
    return m[np.triu_indices(len(tasks), 1)]


def _row(correlation: pd.DataFrame, kind: str) -> pd.Series | None:
    rows = correlation[correlation["distance"] == kind]
    if rows.empty:
        return None
    for control in CONTROL_PREFERENCE:
        hit = rows[rows["control"] == control]
        if not hit.empty:
            return hit.iloc[0]
    return rows.iloc[0]


def typology_scatter(
    similarity: pd.DataFrame,
    distances: Mapping[str, pd.DataFrame],
    correlation: pd.DataFrame,
    *,
    similarity_step0: pd.DataFrame | None = None,
    families: Mapping[str, str] | None = None,
    title: str = "Gradient similarity vs typological distance",
    subtitle: str = "",
    value_label: str = "gradient cosine (mean over snapshots)",
    alpha: float = ALPHA,
    level: float = 0.95,
):
    """One panel per distance: points are language pairs (distance, gradient cosine).

    ``similarity``: [K, K] step-averaged cosines (``analyses.similarity_matrix``);
    ``distances``: {kind: [K, K] distance frame indexed by the same tasks} (typology
    distances reindexed from ISO codes to tasks); ``correlation``: the
    ``analyses.typology_correlation`` frame (with ``p_holm`` / ``partial_p_holm`` when it
    comes from ``analyses.analyse_run``): rho with its bootstrap interval, Mantel p and Holm
    p (✓: survives Holm at ``alpha``), the partial rho given character overlap (or script)
    with its interval and p, and the step-0 rho go in each panel's box.
    ``similarity_step0`` adds the untrained model's pairs as grey crosses. ``families``
    colours within- vs across-family pairs. Returns the Figure.
    """
    tasks = [str(t) for t in similarity.index]
    _check_distances(distances, tasks)
    y = _pairs(similarity, tasks)
    y0 = _pairs(similarity_step0, tasks) if similarity_step0 is not None else None
    same = _same_family(tasks, families)
    kinds = list(distances)
    ncol = min(3, len(kinds))
    nrow = int(np.ceil(len(kinds) / ncol))
    with style():
        fig = new_figure(3.6 * ncol, 3.2 * nrow + 0.9)
        axes = np.atleast_1d(fig.subplots(nrow, ncol, sharey=True, squeeze=False)).ravel()
        for ax, kind in zip(axes, kinds, strict=False):
            _draw_pairs(ax, _pairs(distances[kind], tasks), y, y0, same)
            stats_title(ax, kind, _panel_lines(_row(correlation, kind), alpha))
            ax.set_xlabel(DISTANCE_LABELS.get(kind, f"{kind} distance"))
        for ax in axes[len(kinds) :]:
            ax.set_visible(False)
        for ax in axes[::ncol]:
            ax.set_ylabel(value_label)
        handles = _legend_handles(same, y0 is not None, level, alpha)
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)
        set_titles(fig, title, subtitle)
    return fig


def _check_distances(distances: Mapping[str, pd.DataFrame], tasks: list[str]) -> None:
    """Refuse no distance at all, or a distance matrix that lacks some of ``tasks``."""
    if not distances:
        raise gt.InvalidInputError("typology_scatter needs at least one distance matrix")
    missing = {k: [t for t in tasks if t not in d.index] for k, d in distances.items()}
    missing = {k: v for k, v in missing.items() if v}
    if missing:
        raise gt.InvalidInputError(f"distance matrices lack tasks: {missing}")


def _same_family(tasks: list[str], families: Mapping[str, str] | None) -> np.ndarray | None:
    """Per pair (i < j, row-major upper triangle), whether both tasks have the same known
    family; None without ``families``."""
    if not families:
        return None
    iu = np.triu_indices(len(tasks), 1)
    fam = [families.get(t) for t in tasks]
    return np.array([fam[i] is not None and fam[i] == fam[j] for i, j in zip(*iu, strict=True)])


def _draw_pairs(ax, x: np.ndarray, y: np.ndarray, y0: np.ndarray | None, same) -> None:
    """The pairs at (distance ``x``, similarity ``y``): within- and across-family colours when
    ``same`` tells them apart, else one colour; the step-0 similarities ``y0`` as grey
    crosses."""
    if y0 is not None:
        ax.scatter(x, y0, marker="x", s=14, color="#AAAAAA", linewidths=0.8, zorder=1)
    if same is not None:
        ax.scatter(
            x[same],
            y[same],
            s=18,
            color=WITHIN,
            edgecolors="white",
            linewidths=0.4,
            zorder=3,
        )
        ax.scatter(
            x[~same],
            y[~same],
            s=18,
            color=ACROSS,
            edgecolors="white",
            linewidths=0.4,
            zorder=2,
        )
    else:
        ax.scatter(x, y, s=18, color=ALL_PAIRS, edgecolors="white", linewidths=0.4, zorder=2)


def _panel_lines(row: pd.Series | None, alpha: float) -> list[str]:
    """A panel's statistics box: rho with its test's p (and Holm mark at ``alpha``), its
    noise-removed value with the language interval, the same for the partial rho given the
    control when there is one, and the step-0 rho."""
    if row is None:
        return ["no correlation row for this distance"]
    # The run's rho is attenuated by gradient noise and its snapshot interval covers no truth
    # about languages (analyses/README.md, Calibration): the panel gives the rho with its
    # test, then the noise-removed relation with its language interval, which is what a
    # claim about languages reads.
    test = "spatial" if row.get("test", "spatial") == "spatial" else "Mantel"
    lines = [
        f"ρ = {fmt(row['rho'])}, {test} {short_p(row['p_value'])}"
        f"{holm_mark(row.get('p_holm'), alpha)}",
        f"   noise-removed {_language_ci(row, '')}",
    ]
    if isinstance(row["control"], str):
        lines.append(
            f"partial | {CONTROL_NAMES.get(row['control'], row['control'])}: ρ = "
            f"{fmt(row['partial_rho'])}, {short_p(row['partial_p_value'])}"
            f"{holm_mark(row.get('partial_p_holm'), alpha)}"
        )
        lines.append(f"   noise-removed {_language_ci(row, 'partial_')}")
    lines.append(f"step 0: ρ = {fmt(row['rho_step0'])}, {short_p(row['p_value_step0'])}")
    return lines


def _legend_handles(same, step0: bool, level: float, alpha: float) -> list:
    """The figure legend's entries: the pair markers (by family when ``same`` is given), the
    step-0 cross when ``step0``, and a line saying what rho and ✓ are."""
    from matplotlib.lines import Line2D

    handles = []
    if same is not None:
        handles += [
            Line2D([], [], ls="", marker="o", color=WITHIN, label="pair, same family"),
            Line2D([], [], ls="", marker="o", color=ACROSS, label="pair, different families"),
        ]
    else:
        handles.append(Line2D([], [], ls="", marker="o", color=ALL_PAIRS, label="language pair"))
    if step0:
        handles.append(
            Line2D(
                [],
                [],
                ls="",
                marker="x",
                color="#AAAAAA",
                label="same pair at step 0 (untrained)",
            )
        )
    handles.append(
        Line2D(
            [],
            [],
            ls="",
            label=f"ρ: Spearman of cosine with −distance [{level:.0%} bootstrap interval]; "
            f"✓: survives Holm at {alpha:g}",
            color=BASELINE,
        )
    )
    return handles
