"""The one shared style of every figure: palette, fonts, sizes, titles and saving.

Colours come from the Okabe-Ito palette (Okabe & Ito 2008), readable with every common form of
colour-vision deficiency; categorical sets larger than it fall back to seaborn's
``colorblind`` palette and then to distinct markers. Heatmaps use the diverging ``RdBu_r``
map centred on 0 (cosine sign is the quantity that matters). Figures are built on
``matplotlib.figure.Figure`` objects (no pyplot state), so drawing is thread-safe and needs no
display; the Agg canvas renders PNG, PDF and SVG.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path

import geomtrace as gt

log = logging.getLogger(__name__)

#: Okabe-Ito colours, in the order categorical sets use them (black last: reserved for baselines).
OKABE_ITO = {
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "green": "#009E73",
    "orange": "#E69F00",
    "sky": "#56B4E9",
    "purple": "#CC79A7",
    "yellow": "#F0E442",
    "black": "#000000",
}
CATEGORICAL = [c for name, c in OKABE_ITO.items() if name != "black"]
#: seaborn's ``colorblind`` colours that are not near-copies of Okabe-Ito ones (tan, pink, grey).
EXTRA = ["#CA9161", "#FBAFE4", "#949494"]
WITHIN = OKABE_ITO["blue"]  # within-family pairs
ACROSS = OKABE_ITO["vermillion"]  # across-family pairs
ALL_PAIRS = "#555555"  # every pair
BASELINE = OKABE_ITO["black"]  # step-0 / sum baseline
PART_SHADE = {
    "embedding": "#F2F2F2",
    "encoder": "#E3EEF7",
    "decoder": "#F8ECE3",
    "other": "#FFFFFF",
}
METHOD_COLORS = {
    "sum": OKABE_ITO["black"],
    "pcgrad": OKABE_ITO["orange"],
    "gradvac": OKABE_ITO["green"],
}
HEATMAP_CMAP = "RdBu_r"
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]
FORMATS = ("png", "pdf", "svg")
DPI = 120

RC = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "figure.titlesize": 11,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "savefig.bbox": "tight",
    "svg.fonttype": "none",  # text stays text in SVG (searchable, smaller)
    "pdf.fonttype": 42,
}


@contextmanager
def style():
    """Matplotlib rc settings of every geomtrace figure (restored on exit)."""
    import matplotlib

    with matplotlib.rc_context(RC):
        yield


def new_figure(width: float, height: float):
    """A pyplot-free Figure with an Agg canvas (``savefig`` works, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def categorical_colors(labels: Iterable[str], exclude: Iterable[str] = ()) -> dict[str, str]:
    """A colour per distinct label (first-seen order): Okabe-Ito, then three more from seaborn's
    ``colorblind``; larger sets cycle.

    ``exclude``: colours already used by another categorical strip of the same figure
    (scripts next to families), skipped while enough others remain.
    """
    distinct = list(dict.fromkeys(str(x) for x in labels))
    pool = list(CATEGORICAL) + EXTRA
    used = {c.upper() for c in exclude}
    free = [c for c in pool if c.upper() not in used]
    pool = free if len(free) >= len(distinct) else pool
    return {label: pool[i % len(pool)] for i, label in enumerate(distinct)}


def method_label(method: str | None, granularity: str | None = None) -> str:
    """``gradvac (all_layer)`` for methods with groups, ``sum`` for the baseline."""
    method = method or "sum"
    return method if method == "sum" or not granularity else f"{method} ({granularity})"


def method_color(method: str | None, index: int = 0) -> str:
    """Baseline black, PCGrad orange, GradVac green; variants of one method cycle the rest."""
    base = METHOD_COLORS.get(method or "sum")
    if index == 0 and base is not None:
        return base
    others = [c for c in CATEGORICAL if c not in METHOD_COLORS.values()]
    return others[(index - 1) % len(others)] if base else CATEGORICAL[index % len(CATEGORICAL)]


def parse_formats(formats: str | Sequence[str]) -> list[str]:
    """``"png,pdf"`` or ``["png"]`` -> checked list of formats."""
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    items = [f.strip().lower().lstrip(".") for f in items if f.strip()]
    bad = [f for f in items if f not in FORMATS]
    if bad or not items:
        raise gt.InvalidInputError(
            f"format(s) {bad or formats!r} not supported; allowed: {', '.join(FORMATS)}"
        )
    return list(dict.fromkeys(items))


def save(fig, stem: str | Path, formats: Sequence[str] = ("png",), dpi: int = DPI) -> list[Path]:
    """Write ``fig`` to ``stem.<format>`` for each format; returns the paths written."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in parse_formats(formats):
        path = stem.with_name(f"{stem.name}.{fmt}")
        fig.savefig(path, format=fmt, dpi=dpi, bbox_inches="tight")
        log.debug("wrote %s", path)
        paths.append(path)
    return paths


def set_titles(fig, title: str, subtitle: str = "") -> None:
    """Suptitle plus a smaller subtitle line, wrapped to the figure's width."""
    import textwrap

    chars = max(40, int(fig.get_figwidth() * 10.5))  # ~7 pt per character at the title size
    text = "\n".join(textwrap.wrap(title, chars))
    if subtitle:
        text += "\n" + "\n".join(textwrap.wrap(subtitle, chars))
    fig.suptitle(text)


def stats_box(ax, lines: Sequence[str]) -> None:
    """Numbers in a legend box placed where it hides the fewest points (``loc="best"``)."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="") for _ in lines]
    box = ax.legend(handles, lines, loc="best", handlelength=0, handletextpad=0, fontsize=7,
                    framealpha=0.9, borderpad=0.4)  # fmt: skip
    box.set_zorder(5)


def stats_title(ax, heading: str, lines: Sequence[str]) -> None:
    """A panel's numbers as its (left-aligned) title block: never over the points."""
    ax.set_title("\n".join([heading, *lines]), loc="left", fontsize=7.5)


def short_p(p: float) -> str:
    """A p-value for a legend: ``p=0.012``, ``p<0.001``, ``p=n/a``."""
    if p is None or p != p:
        return "p=n/a"
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def fmt(value: float, digits: int = 2) -> str:
    """A number for a legend, ``n/a`` for NaN/None."""
    if value is None or value != value:
        return "n/a"
    return f"{value:+.{digits}f}"


def ci(value: float, low: float, high: float, digits: int = 2) -> str:
    """``+0.53 [+0.35, +0.69]``; the bracket is left out when the interval is unknown."""
    text = fmt(value, digits)
    if low is None or high is None or low != low or high != high:
        return text
    return f"{text} [{fmt(low, digits)}, {fmt(high, digits)}]"


def error_lengths(part, mean):
    """[2, n] error-bar lengths below and above ``mean`` from a frame's ``ci_low`` and
    ``ci_high`` columns (matplotlib's ``yerr``); an undefined bound draws no bar (0)."""
    import numpy as np

    low = part["ci_low"].to_numpy(dtype=float)
    high = part["ci_high"].to_numpy(dtype=float)
    return np.vstack([np.nan_to_num(mean - low), np.nan_to_num(high - mean)])


def holm_mark(p_holm: float, alpha: float) -> str:
    """``, Holm p=0.012 ✓`` (survives the table's Holm correction at ``alpha``) or
    ``, Holm p=0.38``; empty when unknown."""
    if p_holm is None or p_holm != p_holm:
        return ""
    mark = " ✓" if p_holm < alpha else ""
    return f", Holm {short_p(p_holm)}{mark}"


# --- Wording: from the run's own metadata, never the embedded experiment's --------------------

#: Metric names shown on axes; anything else is shown as recorded (``mse``, ``chrF++``).
METRIC_NAMES = {
    "chrf": "chrF",
    "bleu": "BLEU",
    "heldout_loss": "held-out loss (nats/byte)",
}


def metric_label(metric: str) -> str:
    """How a quality metric is named on an axis: ``chrF``, ``held-out loss (nats/byte)``
    (the recipe's ``heldout_loss``), else the name as the run recorded it."""
    return METRIC_NAMES.get(str(metric), str(metric))


def direction_words(metric: str, higher: bool | None = None) -> str:
    """``higher is better`` / ``lower is better``: ``higher`` when the caller knows it (a
    comparison carries it), else ``analyses.higher_is_better`` from the metric's name."""
    if higher is None:
        import analyses

        higher = analyses.higher_is_better(str(metric))
    return "higher is better" if higher else "lower is better"


def nouns(description) -> tuple[str, str]:
    """(singular, plural) name of the run's tasks: language(s) only for runs over languages."""
    noun = getattr(description, "task_noun", None) or "task"
    return noun, f"{noun}s"


def group_label(group: str) -> str:
    return "whole model" if group == "all" else f"group {group}"


MEASURE_LABELS = {
    "raw": "gradient cosine",
    "corrected": "noise-corrected gradient cosine",
    "centred": "centred gradient cosine",
}


def measure_label(measure: str) -> str:
    return MEASURE_LABELS.get(measure, f"gradient similarity ({measure})")


def averaged_window(result) -> str:
    """``mean over 10 snapshots, steps 10–100 (step 0 left out)`` from the similarity summary
    of the headline group (what the step-averaged figures average)."""
    sim = result.frames.get("similarity")
    if sim is None or sim.empty:
        return ""
    row = sim[sim["group"] == result.group]
    if row.empty:
        return ""
    row = row.iloc[0]
    n = int(row["n_steps"])
    steps = result.description.steps
    left_out = " (step 0 left out)" if 0 in steps and int(row["step_first"]) > 0 else ""
    return (
        f"mean over {n} snapshot{'s' if n != 1 else ''}, steps "
        f"{int(row['step_first'])}–{int(row['step_last'])}{left_out}"
    )


def context(result, *, window: str | None = None) -> str:
    """Subtitle: run, method, group, direction, measure, step window, number of tasks."""
    d = result.description
    _, plural = nouns(d)
    bits = [f"run {result.label}", f"method {d.method_label()}", group_label(result.group)]
    if d.direction:
        bits.append(str(d.direction))
    if result.measure != "raw":
        bits.append(f"{result.measure} similarity")
    window = averaged_window(result) if window is None else window
    if window:
        bits.append(window)
    bits.append(f"{len(result.tasks)} {plural}")
    return " · ".join(bits)


def add_footnote(fig, warnings: Sequence[str], notes: Sequence[str] = ()) -> None:
    """``notes`` (grey) and the run's trust ``warnings`` (warning colour, each marked ⚠) under
    the figure; saved files keep them (``save`` uses a tight bounding box)."""
    import textwrap

    if not warnings and not notes:
        return
    chars = max(60, int(fig.get_figwidth() * 15))

    def wrap(items: Sequence[str], mark: str = "") -> str:
        return "\n".join(line for w in items for line in textwrap.wrap(f"{mark}{w}", chars))

    blocks = [(wrap(notes), "#333333")] if notes else []
    if warnings:
        blocks.append((wrap(warnings, "⚠ "), OKABE_ITO["vermillion"]))
    # Lay the figure out once and freeze it, then write the footnote under everything drawn:
    # a layout run again at save time would move legends placed "outside lower center" to the
    # bottom of the enlarged (tight) bounding box, over the footnote.
    fig.draw_without_rendering()
    fig.set_layout_engine("none")
    to_figure = fig.transFigure.inverted()
    for legend in fig.legends:  # pinned where the layout put them, in figure fractions
        x0, y0 = to_figure.transform(legend.get_window_extent().p0)
        legend.set_loc("lower left")
        legend.set_bbox_to_anchor((x0, y0), transform=fig.transFigure)
        legend.borderaxespad = 0
    height = fig.get_figheight()
    y = (fig.get_tightbbox().y0 - 0.05) / height
    for text, color in blocks:
        fig.text(0.01, y, text, ha="left", va="top", fontsize=7, color=color)
        y -= (0.125 * (text.count("\n") + 1) + 0.06) / height
