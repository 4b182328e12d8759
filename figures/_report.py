"""``write_report``: one self-contained HTML page with every figure and the numbers behind it.

Figures are embedded as base64 PNG (or SVG) data URIs, tables are plain HTML, styles are
inline: the page has no external reference and reads offline. No script is included.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from figures._data import FIGURES, RunData
from figures._plot import Comparison, build_figures, collect_runs
from geomtrace._errors import InvalidInputError

log = logging.getLogger(__name__)

#: Per figure: its title, the paper finding it redraws, and what differs in our setting.
NOTES: dict[str, dict[str, str]] = {
    "f1": {
        "title": "F1. Gradient-similarity heatmap, clustered",
        "paper": "Finding 1 of Gradient Vaccine: the step-averaged cosine similarity between "
        "language gradients, ordered by hierarchical clustering, groups languages largely by "
        "family.",
        "differs": "Average-linkage clustering on 1 - cosine of the whole model (or the chosen "
        "group); families from Glottolog (lang2vec), scripts from the corpus. The table gives "
        "how well the tree recovers the families (adjusted Rand index, nearest-neighbour "
        "agreement, permutation p-values).",
    },
    "f2": {
        "title": "F2. Gradient similarity vs typological similarity",
        "paper": "Finding 1: gradient similarity correlates with typological similarity "
        "(URIEL / lang2vec features).",
        "differs": "Mantel tests (Spearman, languages permuted jointly) instead of a plain "
        "correlation over non-independent pairs; the step-0 (untrained) baseline shows what "
        "the data alone give, and the partial value controls for character/script overlap, "
        "which byte-level models see directly.",
    },
    "f3": {
        "title": "F3. Similarity vs quality",
        "paper": "Finding 2: languages whose gradients align better with the others reach "
        "better translation quality (BLEU in the paper).",
        "differs": "chrF on held-out gettext strings (greedy decoding) instead of BLEU on WMT / "
        "in-house test sets; Spearman over languages with a permutation p-value.",
    },
    "f4": {
        "title": "F4. Similarity per parameter group",
        "paper": "Finding 3: similarity differs across layers (encoder vs decoder, low vs high "
        "layers; in X->En the shared English target makes decoder gradients more alike).",
        "differs": "A small byte-level Transformer (a few layers) instead of the paper's large "
        "Transformer; groups follow the run's granularity.",
    },
    "f5": {
        "title": "F5. Similarity over training",
        "paper": "Finding 3: similarity changes quickly early in training, then settles, at "
        "different levels for different pairs (the motivation for GradVac's adaptive target).",
        "differs": "Hundreds of steps on a CPU instead of long GPU training; 'settles' is when "
        "the curve stays within a tolerance of its final value (analyses.settling).",
    },
    "f6": {
        "title": "F6. Baseline vs PCGrad vs GradVac",
        "paper": "The method's results: GradVac improves over the baseline and over PCGrad, "
        "finer granularities more; its EMA targets sit at positive, pair-specific values "
        "rather than PCGrad's implicit 0.",
        "differs": "One seed per method on a small corpus: chrF differences of a point or two "
        "are within seed noise here; the paper's gains come from large-scale training.",
    },
}

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


def encode_figure(fig, image_format: str = "png", dpi: int = 100) -> str:
    """A data URI of ``fig`` (PNG or SVG, base64)."""
    buf = io.BytesIO()
    fig.savefig(buf, format=image_format, dpi=dpi)
    mime = {"png": "image/png", "svg": "image/svg+xml"}[image_format]
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def _figure_html(key: str, uri: str | None, reason: str | None, tables: str, anchor: str) -> str:
    note = NOTES[key]
    parts = [f'<h3 id="{anchor}">{html.escape(note["title"])}</h3>']
    parts.append(
        f'<p class="note"><b>Paper.</b> {html.escape(note["paper"])}<br>'
        f"<b>Here.</b> {html.escape(note['differs'])}</p>"
    )
    if uri is not None:
        parts.append(
            f'<figure><img src="{uri}" alt="{html.escape(note["title"])}">'
            f"<figcaption>{html.escape(note['title'])}</figcaption></figure>"
        )
    else:
        parts.append(f'<p class="skip"><b>Not drawn:</b> {html.escape(reason or "")}</p>')
    parts.append(tables)
    return "\n".join(parts)


def _run_tables(run: RunData, key: str) -> str:
    f = run.frames
    if key == "f1":
        out = ""
        if "similarity_matrix" in f:
            out += _details(
                "similarity matrix (mean cosine)", _table(f["similarity_matrix"], index=True)
            )
        if "clustering" in f:
            out += "<p>Do the clusters recover the families?</p>" + _table(f["clustering"])
        if "families" in f:
            out += _details(
                "families (Glottolog via lang2vec)",
                _table(f["families"].drop(columns=["path"], errors="ignore")),
            )
        return out
    if key == "f2" and "typology" in f:
        cols = [
            c for c in f["typology"].columns if c not in ("group", "n_permutations", "excluded")
        ]
        return _table(f["typology"][cols])
    if key == "f3":
        out = _table(f["quality"]) if "quality" in f else ""
        if "task_quality" in f:
            out += _details("per-language similarity and quality", _table(f["task_quality"]))
        return out
    if key == "f4":
        out = _table(f["similarity"]) if "similarity" in f else ""
        if run.by_family is not None:
            wide = run.by_family.pivot_table(
                index=["position", "group"], columns="kind", values="mean_cosine"
            )
            out += "<p>Within- vs across-family mean cosine per group (mean over snapshots after step 0):</p>"
            out += _table(wide.reset_index())
        return out
    if key == "f5":
        out = ""
        for name in ("family_settling", "group_settling"):
            if name in f:
                out += f"<p>{name.replace('_', ' ')}:</p>" + _table(f[name])
        if "family_trajectories" in f:
            wide = f["family_trajectories"].pivot_table(
                index="step", columns="kind", values="mean_cosine"
            )
            out += _details("within/across mean cosine per step", _table(wide.reset_index()))
        return out
    return ""


def _comparison_tables(c: Comparison | None) -> str:
    if c is None:
        return ""
    out = ""
    if not c.chrf_delta.empty:
        wide = c.chrf_delta.pivot_table(index="task", columns="run", values="delta", sort=False)
        mean = c.chrf_delta.groupby("run", sort=False)[["value", "delta"]].mean().reset_index()
        out += "<p>Mean chrF and mean difference vs the baseline:</p>" + _table(mean, digits=2)
        out += _details("chrF difference per language", _table(wide.reset_index(), digits=2))
    cos = c.final_cosines.groupby("run", sort=False)["cosine"]
    stats = pd.DataFrame(
        {
            "mean": cos.mean(),
            "median": cos.median(),
            "negative fraction": cos.apply(lambda s: float((s < 0).mean())),
        }
    ).reset_index()
    out += "<p>Pairwise cosines at the last snapshot:</p>" + _table(stats)
    if not c.targets.empty:
        last = c.targets[c.targets["step"] == c.targets.groupby("run")["step"].transform("max")]
        out += _details("GradVac EMA targets at the last snapshot (mean over pairs)", _table(last))
    return out


def _config_table(run: RunData) -> str:
    config = dict(run.trace.config)
    rows = [(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in config.items()]
    meta = [
        ("method", run.method_label),
        ("direction", run.direction or "–"),
        ("tasks", ", ".join(f"{t} ({run.trace.iso_codes.get(t) or '–'})" for t in run.trace.tasks)),
        (
            "groups",
            f"{len(run.trace.groups)}: {', '.join(run.trace.groups[:12])}{' …' if len(run.trace.groups) > 12 else ''}",
        ),
        (
            "snapshots",
            f"{len(run.trace.steps)} (steps {int(run.trace.steps.min())}–{int(run.trace.steps.max())})",
        ),
        ("versions", json.dumps(run.trace.meta("versions", {}))),
        ("trace", str(run.trace.path)),
    ]
    if run.trace.meta("train_seconds") is not None:
        meta.append(("train seconds", f"{float(run.trace.meta('train_seconds')):.0f}"))
    body = _table(pd.DataFrame(meta, columns=["", "value"]))
    if rows:
        body += _details("run config", _table(pd.DataFrame(rows, columns=["key", "value"])))
    return body


def write_report(
    runs: Sequence[str | os.PathLike] | Sequence[RunData],
    out: str | os.PathLike,
    *,
    group: str | None = None,
    n_permutations: int = 999,
    seed: int = 0,
    image_format: str = "png",
    dpi: int = 100,
    title: str = "geomtrace report",
    extra_html: str = "",
    progress: Callable[[str], None] | None = None,
    built: tuple[dict, dict, Comparison | None] | None = None,
) -> Path:
    """Write the HTML report of ``runs`` (run directories, or ``RunData`` already collected)
    to ``out``; returns its path. ``built``: the result of ``build_figures`` on those
    ``RunData`` (so figures saved to files and the report are drawn once)."""
    if image_format not in ("png", "svg"):
        raise InvalidInputError(f"image_format={image_format!r}; allowed: png, svg")
    if runs and isinstance(runs[0], RunData):
        data = list(runs)
    else:
        data = collect_runs(
            runs, group=group, n_permutations=n_permutations, seed=seed, progress=progress
        )
    if progress:
        progress("drawing figures")
    figures, skipped, comparison = built if built is not None else build_figures(data)
    several = len(data) > 1
    sections, toc = [], []
    for run in data:
        anchor = f"run-{len(sections)}"
        toc.append(
            f'<li><a href="#{anchor}">{html.escape(run.label)}</a> ({html.escape(run.method_label)})</li>'
        )
        body = [f'<h2 id="{anchor}">Run {html.escape(run.label)}</h2>', _config_table(run)]
        for key in ("f1", "f2", "f3", "f4", "f5"):
            fig = figures.get((run.label, key))
            uri = encode_figure(fig, image_format, dpi) if fig is not None else None
            body.append(
                _figure_html(
                    key,
                    uri,
                    skipped.get(f"{run.label}/{key}"),
                    _run_tables(run, key),
                    f"{anchor}-{key}",
                )
            )
        if run.summary.skipped:
            items = "".join(
                f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>"
                for k, v in run.summary.skipped.items()
            )
            body.append(_details("analyses skipped for this run", f"<ul>{items}</ul>"))
        sections.append("\n".join(body))
    fig6 = figures.get(("", "f6"))
    f6 = _figure_html(
        "f6", encode_figure(fig6, image_format, dpi) if fig6 is not None else None,
        skipped.get("f6"), _comparison_tables(comparison), "f6",
    )  # fmt: skip
    helpers = (
        "<p>Every number comes from <code>analyses/</code>, including the per-group "
        "within/across-family means (<code>family_means_by_group</code>), the interquartile "
        "bands over pairs (<code>pair_spread</code>), chrF differences between runs "
        "(<code>quality_difference</code>) and GradVac target means "
        "(<code>gradvac_target_trajectories</code>).</p>"
    )
    from geomtrace import __version__

    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>Gradient geometry of multilingual training, redrawn after <i>Gradient Vaccine</i>
(Wang, Tsvetkov, Firat, Cao, ICLR 2021). Generated {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
by geomtrace {html.escape(__version__)}; permutation tests with {n_permutations} permutations (seed {seed}).
{"F1–F5 are drawn per run; F6 compares the runs." if several else ""}</p>
{extra_html}
<nav><b>Contents</b><ul>{"".join(toc)}<li><a href="#f6">F6: optimizers</a></li></ul></nav>
{"".join(sections)}
<h2>Across runs</h2>
{f6}
<h2>Notes</h2>
{helpers}
<p>Figure files: {", ".join(f"{k}_{v}" for k, v in FIGURES.items())}.</p>
</body></html>
"""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    log.info("wrote %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return out
