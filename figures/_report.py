"""``write_report``: one self-contained HTML page with every figure and the numbers behind it.

The page renders ``analyses.RunResults`` (one per run), optionally a comparison of runs
(``analyses.compare_runs``: F6) and the statistics across seeds (``analyses.across_seeds``).
It computes nothing: every number shown is a cell of those results. Figures are embedded as
base64 PNG (or SVG) data URIs, tables are plain HTML, styles are inline: the page has no
external reference, no script, and reads offline. Each run's section leads with F7 and the
layer x distance table (where the structure lives), after the run's trust warnings.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

import analyses
import geomtrace as gt
from figures._draw import FIGURES, RUN_FIGURES, draw_comparison, draw_run
from figures._style import (
    averaged_window,
    direction_words,
    group_label,
    measure_label,
    metric_label,
    nouns,
)

log = logging.getLogger(__name__)

TITLES = {
    "f1": "F1. Gradient-similarity heatmap, clustered",
    "f2": "F2. Gradient similarity vs typological similarity",
    "f3": "F3. Similarity vs quality",
    "f4": "F4. Similarity per parameter group",
    "f5": "F5. Similarity over training",
    "f6": "F6. Baseline vs PCGrad vs GradVac",
    "f7": "F7. Where the structure lives: typology per parameter group",
}

#: What each figure redraws from the paper; ``language`` runs get the paper's own words, other
#: runs the same finding stated for tasks.
PAPER: dict[str, dict[str, str]] = {
    "language": {
        "f1": "Finding 1 of Gradient Vaccine: the step-averaged cosine similarity between "
        "language gradients, ordered by hierarchical clustering, groups languages largely by "
        "family.",
        "f2": "Finding 1: gradient similarity correlates with typological similarity "
        "(URIEL / lang2vec features).",
        "f3": "Finding 2: languages whose gradients align better with the others reach "
        "better translation quality (BLEU in the paper).",
        "f4": "Finding 3: similarity differs across layers (encoder vs decoder, low vs high "
        "layers; in X->En the shared English target makes decoder gradients more alike).",
        "f5": "Finding 3: similarity changes quickly early in training, then settles, at "
        "different levels for different pairs (the motivation for GradVac's adaptive target).",
        "f7": "Findings 1 and 3 together: which parameter groups carry the typological "
        "structure, beyond what shared characters explain.",
    },
    "task": {
        "f1": "Finding 1 of Gradient Vaccine (multilingual translation): related tasks have "
        "more similar gradients, and clustering the similarity matrix recovers the relation.",
        "f3": "Finding 2: tasks whose gradients align better with the others suffer less "
        "interference and reach better quality.",
        "f4": "Finding 3: similarity differs across the model's parameter groups.",
        "f5": "Finding 3: similarity changes quickly early in training, then settles, at "
        "different levels for different pairs (the motivation for GradVac's adaptive target).",
    },
}
PAPER_F6 = (
    "The method's results: GradVac improves over the baseline and over PCGrad, finer "
    "granularities more; its EMA targets sit at positive, pair-specific values rather than "
    "PCGrad's implicit 0."
)

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;max-width:1150px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #0072B2;padding-bottom:.2em;
margin-top:2em}h3{margin-top:1.6em}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:.9em;color:#444}
table{border-collapse:collapse;font-size:.82em;margin:.5em 0 1em}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#f0f4f8}
td:first-child,th:first-child{text-align:left}
.note{background:#f7f7f7;border-left:4px solid #E69F00;padding:.4em .8em;font-size:.92em}
.warning{background:#fff1e6;border:1px solid #D55E00;border-left:6px solid #D55E00;
padding:.5em .9em;margin:1em 0;color:#5a2500}
.headline{font-size:1.05em;background:#eef5fb;border-left:4px solid #0072B2;padding:.4em .8em}
.skip{color:#8a4b00}details{margin:.4em 0}summary{cursor:pointer;color:#0072B2}
nav ul{columns:2}code{background:#f2f2f2;padding:0 3px}
.tbl{overflow-x:auto;max-width:100%}
"""


def _table(
    frame: pd.DataFrame | None, *, index: bool = False, digits: int = 3, max_rows: int = 200
) -> str:
    if frame is None or frame.empty:
        return "<p><em>no rows</em></p>"
    frame = frame.head(max_rows)
    table = frame.to_html(
        index=index, float_format=lambda v: f"{v:.{digits}f}", na_rep="–", border=0, escape=True
    )
    return f'<div class="tbl">{table}</div>'


def _details(summary: str, body: str) -> str:
    return f"<details><summary>{html.escape(summary)}</summary>{body}</details>"


def _num(value: Any, digits: int = 3) -> str:
    if value is None or value != value:
        return "n/a"
    return f"{float(value):.{digits}f}"


def encode_figure(fig, image_format: str = "png", dpi: int = 100) -> str:
    """A data URI of ``fig`` (PNG or SVG, base64)."""
    buf = io.BytesIO()
    fig.savefig(buf, format=image_format, dpi=dpi, bbox_inches="tight")
    mime = {"png": "image/png", "svg": "image/svg+xml"}[image_format]
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


# --- Wording from the run's own metadata -------------------------------------------------------


def describe_run(result: analyses.RunResults) -> str:
    """One paragraph saying what the run is, from its metadata only."""
    d = result.description
    _, plural = nouns(d)
    bits = [f"{len(result.tasks)} {plural} ({', '.join(result.tasks)})"]
    bits.append(f"method {d.method_label()}")
    if d.direction:
        bits.append(f"direction {d.direction}")
    if d.model:
        bits.append(f"model: {d.model}")
    if d.data:
        bits.append(f"data: {d.data}")
    steps = d.steps
    if steps:
        bits.append(f"{d.n_snapshots} snapshots at steps {min(steps)}–{max(steps)}")
    if d.window:
        bits.append(f"each snapshot sums a window of {d.window} steps")
    bits.append(
        "split halves recorded (reliability measured)"
        if d.halves
        else "no split halves (reliability unknown)"
    )
    if d.metrics:
        bits.append("quality metrics: " + ", ".join(metric_label(m) for m in d.metrics))
    return "This run: " + "; ".join(bits) + "."


def _here(result: analyses.RunResults, key: str) -> str:
    d = result.description
    noun, plural = nouns(d)
    where = f"{group_label(result.group)}, {measure_label(result.measure)}"
    window = averaged_window(result)
    s = result.settings
    tests = (
        f"{s.get('n_permutations')} permutations, {s.get('n_bootstrap')} bootstrap replicates "
        f"over snapshots ({s.get('level', 0.95):.0%} basic intervals: how much this run's "
        "matrix would move with other snapshots; the typology table's lang_ci columns add "
        f"{noun} sampling and remove the noise: the relation in {plural} like these)"
    )
    if key == "f1":
        text = f"Average-linkage clustering on 1 − similarity ({where}; {window}). " + (
            "Families from Glottolog (lang2vec), scripts from the run's metadata; the table "
            f"tests how well the tree recovers them ({tests})."
            if result.families
            else f"No families are known for these {plural}: the tree is drawn without a "
            "test of agreement."
        )
        return text
    if key == "f2":
        return (
            f"Mantel tests (Spearman, {plural} permuted jointly) of the {where} against each "
            f"URIEL distance; the partial value controls for character overlap, the step-0 "
            f"value shows the untrained model; {tests}; Holm within the table."
        )
    if key == "f3":
        metric = s.get("metric")
        return (
            f"The run's recorded quality ({', '.join(metric_label(m) for m in d.metrics)}; "
            f"headline {metric_label(metric)}, {direction_words(metric)}) against each "
            f"{noun}'s mean similarity to the others ({where}; {window}); Spearman over "
            f"{plural} with {tests}; each partial controls for one confound (a {noun}'s mean "
            f"character overlap with the others, or the share of the others in its script)."
        )
    if key == "f4":
        rel = (
            "Reliability per group (signal fraction of the snapshot gradients, from the split "
            "halves) and the noise-corrected mean are drawn below."
            if d.halves
            else "The trace has no split halves: reliability per group is unknown."
        )
        return f"Every parameter group of the run, in model order ({window}). {rel}"
    if key == "f5":
        return (
            f"Every snapshot of the run ({d.n_snapshots}, step 0 = untrained model included), "
            f"{where}; 'settles' is when the curve stays within {s.get('tol', 0.05)} of its "
            "final value, with an interval from resampling the pairs."
        )
    if key == "f7":
        return (
            f"Each row is one parameter group's step-averaged matrix ({measure_label(result.measure)}; "
            f"{window}) against each URIEL distance: raw rho, partial rho given character "
            f"overlap, and the clustering's agreement with families; {tests}; Holm within the "
            "table."
        )
    return ""


# --- Sections -----------------------------------------------------------------------------------


def _figure_html(
    key: str, fig: Any, paper: str | None, here: str, tables: str, anchor: str,
    image_format: str,
) -> str:  # fmt: skip
    title = TITLES[key]
    parts = [f'<h3 id="{anchor}">{html.escape(title)}</h3>']
    notes = []
    if paper:
        notes.append(f"<b>Paper.</b> {html.escape(paper)}")
    if here:
        notes.append(f"<b>Here.</b> {html.escape(here)}")
    if notes:
        parts.append(f'<p class="note">{"<br>".join(notes)}</p>')
    if isinstance(fig, analyses.NotApplicable) or fig is None:
        reason = "not drawn" if fig is None else str(fig)
        parts.append(f'<p class="skip"><b>Not drawn:</b> {html.escape(reason)}</p>')
    else:
        uri = encode_figure(fig, image_format)
        parts.append(
            f'<figure><img src="{uri}" alt="{html.escape(title)}">'
            f"<figcaption>{html.escape(title)}</figcaption></figure>"
        )
    parts.append(tables)
    return "\n".join(parts)


#: Columns of the typology tables the report leaves out: the snapshot intervals of the run's
#: attenuated rho (kept in results.json), which cover no truth about languages.
SNAPSHOT_RHO_INTERVALS = ("ci_low", "ci_high", "partial_ci_low", "partial_ci_high")


def _run_tables(result: analyses.RunResults, key: str) -> str:
    f = result.frames
    _, plural = nouns(result.description)
    if key == "f7":
        out = ""
        if "layers" in f:
            # The run's rho with its test, and the noise-removed value with its language
            # interval; the snapshot interval of rho is left to results.json (it covers no
            # truth about languages: analyses/README.md, Calibration).
            cols = [
                "group", "distance", "control", "rho", "p_value", "p_holm", "partial_rho",
                "partial_p_value", "partial_p_holm", "matrix_reliability", "rho_disattenuated",
                "lang_ci_low", "lang_ci_high", "partial_disattenuated", "partial_lang_ci_low",
                "partial_lang_ci_high", "rho_step0", "n_languages",
            ]  # fmt: skip
            table = f["layers"][[c for c in cols if c in f["layers"].columns]]
            out += "<p>Layer x distance table (Holm within the table):</p>" + _table(table)
        if "layer_clustering" in f:
            table = f["layer_clustering"].drop(columns=["ci_low", "ci_high"], errors="ignore")
            out += _details("family / genus agreement per group", _table(table))
        return out
    if key == "f1":
        out = ""
        if "similarity_matrix" in f:
            out += _details("similarity matrix", _table(f["similarity_matrix"], index=True))
        if result.clusters is not None:
            flat = result.clusters["flat"]
            groups = " ".join("{" + " ".join(c) + "}" for c in flat["clusters"])
            out += f"<p>Which {plural} cluster together ({html.escape(flat['criterion'])}): "
            out += f"{html.escape(groups)}</p>"
        if "clustering" in f:
            # without the bootstrap interval of the agreement (not calibrated: results.json)
            table = f["clustering"].drop(columns=["ci_low", "ci_high"], errors="ignore")
            out += "<p>Do the clusters recover the families?</p>" + _table(table)
        if "families" in f:
            out += _details(
                "families (Glottolog via lang2vec)",
                _table(f["families"].drop(columns=["path"], errors="ignore")),
            )
        return out
    if key == "f2" and "typology" in f:
        drop = ("group", "n_permutations", "excluded", *SNAPSHOT_RHO_INTERVALS)
        cols = [c for c in f["typology"].columns if c not in drop]
        return _table(f["typology"][cols])
    if key == "f3":
        # the snapshot intervals of rho are left to results.json (not calibrated)
        out = (
            _table(f["quality"].drop(columns=list(SNAPSHOT_RHO_INTERVALS), errors="ignore"))
            if "quality" in f
            else ""
        )
        if "task_quality" in f:
            out += _details("similarity and quality per task", _table(f["task_quality"]))
        return out
    if key == "f4":
        out = _table(f["similarity"]) if "similarity" in f else ""
        if "task_specific_groups" in f:  # per-task heads: one line, not a row of dashes each
            note = next((n for n in result.notes if "task-specific" in n), "")
            out += f"<p>{html.escape(note)}</p>"
        if "reliability" in f:
            out += _details("reliability per group and task", _table(f["reliability"]))
        if "by_family" in f:
            out += _details("within- vs across-family mean per group", _table(f["by_family"]))
        return out
    if key == "f5":
        out = ""
        for name in ("family_settling", "group_settling"):
            if name in f:
                out += f"<p>{name.replace('_', ' ')}:</p>" + _table(f[name])
        if "gradvac_tracking" in f:
            out += (
                "<p>GradVac targets next to the similarity they track (last fifth of the "
                "snapshots):</p>" + _table(f["gradvac_tracking"])
            )
        return out
    return ""


def _headline(result: analyses.RunResults) -> str:
    h = result.headline()
    if h.get("mean_similarity") is None:
        reason = result.not_applicable.get("similarity", "no similarity computed")
        return f'<p class="headline">No mean similarity: {html.escape(reason)}</p>'
    text = (
        f"Mean similarity ({html.escape(group_label(h['group']))}, "
        f"{html.escape(measure_label(h.get('measure', result.measure)))}): "
        f'<b class="value">{_num(h["mean_similarity"])}</b> '
        f'[<span class="ci">{_num(h["ci_low"])}, {_num(h["ci_high"])}</span>] over '
        f"{h['n_snapshots']} snapshots"
    )
    if h.get("reliability") is not None:
        text += f"; reliability {_num(h['reliability'], 2)}"
    if h.get("mean_corrected") is not None:
        text += f"; noise-corrected mean {_num(h['mean_corrected'])}"
    return f'<p class="headline">{text}.</p>'


def _warnings_html(results: Sequence[analyses.RunResults]) -> str:
    items = [
        f"<li><b>{html.escape(r.label)}</b>: {html.escape(w)}</li>"
        for r in results
        for w in r.warnings
    ]
    if not items:
        return ""
    return (
        '<div class="warning"><b>⚠ How far these numbers can be trusted</b>'
        f"<ul>{''.join(items)}</ul></div>"
    )


def _config_table(result: analyses.RunResults) -> str:
    d = result.description
    rows = [
        ("method", d.method_label()),
        ("direction", d.direction or "–"),
        ("tasks", ", ".join(result.tasks)),
        ("headline group", group_label(result.group)),
        ("measure", result.measure),
        ("snapshots", f"{d.n_snapshots} (steps {', '.join(map(str, d.steps[:30]))}"
                      f"{' …' if len(d.steps) > 30 else ''})"),
        ("split halves", "yes" if d.halves else "no"),
        ("window", str(d.window or "–")),
        ("quality metric", metric_label(result.settings.get("metric") or "–")),
        ("permutations / bootstrap", f"{result.settings.get('n_permutations')} / "
                                      f"{result.settings.get('n_bootstrap')}"),
    ]  # fmt: skip
    if result.run:
        rows.append(("trace", result.run))
    seconds = (result.meta or {}).get("train_seconds")
    if seconds is not None:
        rows.append(("train seconds", f"{float(seconds):.0f}"))
    versions = (result.meta or {}).get("versions")
    if versions:
        rows.append(("versions", json.dumps(versions)))
    body = _table(pd.DataFrame(rows, columns=["", "value"]))
    config = [
        (k, v if isinstance(v, str) else json.dumps(v)) for k, v in (result.config or {}).items()
    ]
    if config:
        body += _details("run config", _table(pd.DataFrame(config, columns=["key", "value"])))
    return body


def _comparison_html(comparison: Any, fig: Any, image_format: str) -> str:
    if comparison is None:
        return ""
    tables = ""
    if not isinstance(comparison, analyses.NotApplicable):
        metric = metric_label(comparison.metric)
        tables += (
            f"<p>Mean {html.escape(metric)} difference per method vs {html.escape(comparison.baseline)} "
            f"({direction_words(comparison.metric, comparison.higher_is_better)}), interval "
            "across seeds:</p>" + _table(comparison.per_method)
        )
        for note in getattr(comparison, "notes", None) or []:
            tables += f'<p class="skip">{html.escape(note)}</p>'
        if not comparison.targets.empty:
            tables += _details(
                "GradVac EMA targets (mean over pairs) per method, seed, group and step",
                _table(comparison.targets),
            )
        tables += _details("difference per task", _table(comparison.per_task))
    here = (
        ""
        if isinstance(comparison, analyses.NotApplicable)
        else (
            f"Quality is the runs' {metric_label(comparison.metric)}; differences are matched "
            "by seed, and their intervals are t-intervals across seeds (none with one seed). "
            "ref_ci_low / ref_ci_high / ref_p: the interval and test with the seed noise of the "
            "baseline's own seeds (a method with one seed still gets one); detectable: the "
            "smallest difference that test detects with 80% power (it falls as 1/sqrt(seeds)); "
            "a difference inside it is 'not detected at this size', not 'absent'."
        )
    )
    return _figure_html("f6", fig, PAPER_F6, here, tables, "f6", image_format)


def write_report(
    results: Sequence[analyses.RunResults],
    out: str | os.PathLike,
    *,
    comparison: Any = None,
    seeds: pd.DataFrame | None = None,
    figures: Mapping[str, Any] | None = None,
    title: str = "geomtrace report",
    image_format: str = "png",
) -> Path:
    """Write the HTML report of ``results`` (``analyses.RunResults``, one per run) to ``out``.

    ``comparison``: ``analyses.compare_runs(results)`` (or a NotApplicable) for F6;
    ``seeds``: ``analyses.across_seeds(results)``; ``figures``: figures already drawn, so
    files and report share one drawing: {run label: ``draw_run(result)``} and optionally
    ``"f6"``: ``draw_comparison(comparison)``; what is missing is drawn here. Returns the path.
    """
    if image_format not in ("png", "svg"):
        raise gt.InvalidInputError(f"image_format={image_format!r}; allowed: png, svg")
    results = list(results)
    if not results:
        raise gt.InvalidInputError("write_report needs at least one analysed run")
    figures = dict(figures or {})
    sections, toc = [], []
    for n, result in enumerate(results):
        anchor = f"run-{n}"
        drawn = figures.get(result.label)
        if not isinstance(drawn, Mapping):
            drawn = draw_run(result)
        toc.append(
            f'<li><a href="#{anchor}">{html.escape(result.label)}</a> '
            f"({html.escape(result.description.method_label())})</li>"
        )
        sections.append(_run_section(result, anchor, drawn, len(results) > 1, image_format))
    across = _across_html(comparison, seeds, figures.get("f6"), toc, image_format)
    page = _page(title, results, toc, sections, across)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    log.info("wrote %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return out


def _run_section(
    result: analyses.RunResults,
    anchor: str,
    drawn: Mapping[str, Any],
    several: bool,
    image_format: str,
) -> str:
    """One run's section of the report: its headline, description and configuration, its
    warnings (when the report has ``several`` runs; one run's are the page's banner), every
    run figure of ``drawn`` with what the paper and this run say, and its table of tests."""
    kind = "language" if result.description.task_noun == "language" else "task"
    body = [
        f'<h2 id="{anchor}">Run {html.escape(result.label)}</h2>',
        _headline(result),
        f'<p class="note"><b>Here.</b> {html.escape(describe_run(result))}</p>',
        _config_table(result),
    ]
    if result.warnings and several:  # one run: the page's banner says it
        items = "".join(f"<li>{html.escape(w)}</li>" for w in result.warnings)
        body.append(f'<div class="warning"><b>⚠ Warnings</b><ul>{items}</ul></div>')
    for key in RUN_FIGURES:
        fig = drawn.get(key)
        paper = PAPER[kind].get(key)
        if kind == "task" and key in ("f2", "f7"):
            paper = None
        body.append(
            _figure_html(
                key, fig, paper, _here(result, key) if fig is not None and not isinstance(
                    fig, analyses.NotApplicable) else "",
                _run_tables(result, key), f"{anchor}-{key}", image_format,
            )
        )  # fmt: skip
    if "tests" in result.frames and not result.frames["tests"].empty:
        tests = result.frames["tests"]
        counts = tests.drop_duplicates("table")[["table", "n_tests"]]
        body.append(
            _details(
                f"every test of the run ({len(tests)}), Holm-adjusted within its table",
                _table(counts) + _table(tests),
            )
        )
    return "\n".join(body)


def _across_html(
    comparison: Any,
    seeds: pd.DataFrame | None,
    fig6: Any,
    toc: list[str],
    image_format: str,
) -> str:
    """The sections across runs: F6 from ``comparison`` (``fig6``, drawn here when None) and
    the table across ``seeds``; each adds its entry to ``toc``."""
    across = ""
    if comparison is not None:
        if fig6 is None:
            fig6 = draw_comparison(comparison)
        across += '<h2 id="f6">Across runs</h2>' + _comparison_html(comparison, fig6, image_format)
        toc.append('<li><a href="#f6">F6: optimizers</a></li>')
    if seeds is not None and not seeds.empty:
        across += (
            '<h2 id="seeds">Across seeds</h2><p>Each statistic over the seeds of each method: '
            "mean, spread, and how many seeds agree in sign and significance.</p>" + _table(seeds)
        )
        toc.append('<li><a href="#seeds">Across seeds</a></li>')
    return across


def _page(
    title: str,
    results: Sequence[analyses.RunResults],
    toc: list[str],
    sections: list[str],
    across: str,
) -> str:
    """The whole HTML page: title, what the report is (settings of the first run), the
    warnings banner, contents, the run ``sections``, the sections ``across`` runs and notes."""
    settings = results[0].settings
    noun, plural = nouns(results[0].description)
    names = ", ".join(FIGURES.values())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>Gradient geometry of multi-task training, redrawn after <i>Gradient Vaccine</i>
(Wang, Tsvetkov, Firat, Cao, ICLR 2021). Generated {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
by geomtrace {html.escape(gt.__version__)}; {len(results)} run{"s" if len(results) != 1 else ""};
permutation tests with {settings.get("n_permutations")} permutations, intervals from
{settings.get("n_bootstrap")} bootstrap replicates over snapshots (seed {settings.get("seed")}):
an interval named CI says how much <i>this run's matrix</i> would move with other snapshots;
one named lang CI (typology, quality) adds the sampling of {plural} by a jackknife and,
for typology, removes the noise (disattenuated): it is the one to read as a claim about
{plural}.
Each run leads with F7, where in the model the structure lives.</p>
{_warnings_html(results)}
<nav><b>Contents</b><ul>{"".join(toc)}</ul></nav>
{"".join(sections)}
{across}
<h2>Notes</h2>
<p>Every number comes from <code>analyses/</code> (<code>analyses.analyse_run</code>,
<code>compare_runs</code>, <code>across_seeds</code>); the figures and this page only draw
them. Figure files: {html.escape(names)}.</p>
</body></html>
"""
