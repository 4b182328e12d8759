"""The reproduction's record: the headline numbers of a ``results.json`` as one markdown table.

figures/README.md quotes its numbers from this table, between the markers
``<!-- headline:start -->`` and ``<!-- headline:end -->``; a test regenerates the table from
the committed ``figures/gallery/results.json`` and checks that the README holds it verbatim,
so every number there can be traced to the record. ``geomtrace reproduce`` writes the same
table to ``OUT/headline.md``.

Every row names its statistic, the question its interval answers and its correction:
"[lang CI]" is the language (node) jackknife interval of the noise-removed relation (the
claim about languages), "p" the test that keeps the languages' autocorrelation (spatial
surrogates) unless the row says otherwise, "Holm" the adjustment within the run's layer
table (every group x distance, rho and partial). Columns: the summed-gradient runs in seed
order. Missing values (an older results.json, a table not computed) print as "–".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

#: Where the layer table's headline rows come from: (group, distance) pairs.
HEADLINE_CELLS = (("all", "geographic"), ("all", "genetic"), ("encoder.layers.0", "geographic"),
                  ("encoder.layers.0", "genetic"))  # fmt: skip
START, END = "<!-- headline:start -->", "<!-- headline:end -->"


def _num(value: Any, digits: int = 2, signed: bool = True) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "–"
    if not math.isfinite(v):
        return "–"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def _p(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "–"
    if not math.isfinite(v):
        return "–"
    return "<.001" if v < 0.001 else f"{v:.3f}".lstrip("0")


def _ci(row: Mapping[str, Any], value: str, low: str, high: str) -> str:
    return f"{_num(row.get(value))} [{_num(row.get(low))}, {_num(row.get(high))}]"


def _q(run: Mapping[str, Any], test: str, tables: Sequence[str]) -> str:
    """The run-wide correction of one test (``frames["tests"]``): its Benjamini-Hochberg q
    over the exploratory tests, or, for a declared primary, its Holm p across the primaries
    ("H" before it); a layer-table repeat of a typology row takes the typology row's."""
    rows = [t for t in _rows(run, "tests") if t.get("test") == test and t.get("table") in tables]
    for t in sorted(rows, key=lambda t: t.get("role") == "repeat"):
        if t.get("role") == "primary":
            return "H " + _p(t.get("p_primary"))
        if t.get("role") == "exploratory":
            return _p(t.get("q_fdr"))
    return "–"


def _rows(run: Mapping[str, Any], frame: str) -> list[dict[str, Any]]:
    return list((run.get("results") or {}).get(frame) or [])


def _find(rows: Sequence[Mapping[str, Any]], **match: Any) -> Mapping[str, Any]:
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    return {}


def baseline_runs(results: Mapping[str, Any]) -> list[str]:
    """The summed-gradient runs of a results dict, in seed order."""
    runs = results.get("runs") or {}
    return [name for name in runs if name.startswith("sum-")]


def headline_table(results: Mapping[str, Any]) -> str:
    """The headline numbers of a ``geomtrace reproduce`` results dict as a markdown table (one
    column per summed-gradient seed), then the optimizer comparison."""
    names = baseline_runs(results)
    runs = [results["runs"][n] for n in names]
    lines = ["| statistic | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]

    def row(label: str, cell) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(r) for r in runs) + " |")

    def similarity(r):
        return _find(_rows(r, "similarity"), group="all")

    row("languages", lambda r: str(len(r.get("tasks") or [])))
    row(
        "whole-model snapshot reliability",
        lambda r: _num(similarity(r).get("reliability"), 2, False),
    )
    row("mean similarity, raw [CI: this run]",
        lambda r: _ci(similarity(r), "mean_cosine", "ci_low", "ci_high"))  # fmt: skip
    row("mean similarity, noise-corrected [CI: this run]",
        lambda r: _ci(similarity(r), "mean_corrected", "corrected_ci_low", "corrected_ci_high"))  # fmt: skip

    def chrf(r):
        values = [q.get("chrf") for q in _rows(r, "task_quality") if q.get("chrf") is not None]
        if not values:
            return "–"
        return f"{sum(values) / len(values):.1f} ({min(values):.1f}-{max(values):.1f})"

    row("chrF, mean over languages (min-max)", chrf)

    def primaries(r):
        return [t for t in _rows(r, "tests") if t.get("role") == "primary"]

    names = list(dict.fromkeys(t["test"] for r in runs for t in primaries(r)))
    for name in names:
        shown = name.replace(" | ", " given ")  # a "|" would split the markdown cell
        row(f"PRIMARY {shown} (p; Holm across the primaries)",
            lambda r, name=name: (lambda t: f"{_num(t.get('value'))} ({_p(t.get('p_value'))}; "
                                  f"{_p(t.get('p_primary'))})")(_find(primaries(r), test=name)))  # fmt: skip

    def fdr(r):
        explore = [t for t in _rows(r, "tests") if t.get("role") == "exploratory"]
        if not explore:
            return "–"
        passed = sum(1 for t in explore if (t.get("q_fdr") is not None and t["q_fdr"] < 0.05))
        return f"{passed} of {len(explore)}"

    row("exploratory tests with BH q < 0.05", fdr)
    _typology_rows(row)
    _structure_rows(row, runs)
    lines += _optimizer_lines(results)
    return "\n".join(lines)


def _typology_rows(row) -> None:
    """The layer table's headline cells, the script control, the matrix's reliability and the
    quality correlations (``row(label, cell)`` adds one row of the headline table)."""
    for group, distance in HEADLINE_CELLS:
        where = "whole model" if group == "all" else group

        def cell(r, group=group, distance=distance):
            return _find(_rows(r, "layers"), group=group, distance=distance)

        tables = ("typology", "layers")
        row(f"{where}, {distance}: rho (p; Holm; q)",
            lambda r, cell=cell, g=group, d=distance, tables=tables: f"{_num(cell(r).get('rho'))} "
            f"({_p(cell(r).get('p_value'))}; {_p(cell(r).get('p_holm'))}; "
            f"{_q(r, f'{g} {d}: rho', tables)})")  # fmt: skip
        row(f"{where}, {distance}: noise-removed rho [lang CI]",
            lambda r, cell=cell: _ci(cell(r), "rho_disattenuated", "lang_ci_low", "lang_ci_high"))  # fmt: skip
        row(f"{where}, {distance} given char. overlap: partial rho (p; Holm; q)",
            lambda r, cell=cell, g=group, d=distance, tables=tables: f"{_num(cell(r).get('partial_rho'))} "
            f"({_p(cell(r).get('partial_p_value'))}; {_p(cell(r).get('partial_p_holm'))}; "
            f"{_q(r, f'{g} {d} | char_overlap: partial rho', tables)})")  # fmt: skip
        row(f"{where}, {distance} given char. overlap: noise-removed partial [lang CI]",
            lambda r, cell=cell: _ci(cell(r), "partial_disattenuated", "partial_lang_ci_low",
                                     "partial_lang_ci_high"))  # fmt: skip
        row(f"{where}, {distance} given char. overlap: detectable partial (80% power)",
            lambda r, cell=cell: _num(cell(r).get("partial_detectable"), 2, False))  # fmt: skip
    for distance in ("geographic", "genetic"):

        def by_script(r, distance=distance):
            return _find(_rows(r, "typology"), group="all", distance=distance, control="script")

        row(f"whole model, {distance} given script: partial rho (p; q)",
            lambda r, c=by_script, d=distance: f"{_num(c(r).get('partial_rho'))} "
            f"({_p(c(r).get('partial_p_value'))}; "
            f"{_q(r, f'all {d} | script: partial rho', ('typology',))})")  # fmt: skip

        def layer_by_script(r, distance=distance):
            return _find(_rows(r, "layers_script"), group="encoder.layers.0", distance=distance)

        row(f"encoder.layers.0, {distance} given script: partial rho (p; q)",
            lambda r, c=layer_by_script, d=distance: f"{_num(c(r).get('partial_rho'))} "
            f"({_p(c(r).get('partial_p_value'))}; "
            f"{_q(r, f'encoder.layers.0 {d} | script: partial rho', ('layers_script',))})")  # fmt: skip
    row("whole-model matrix split-half reliability",
        lambda r: _num(_find(_rows(r, "layers"), group="all").get("matrix_reliability"), 2, False))  # fmt: skip
    for metric in ("chrf", "heldout_loss"):

        def q(r, metric=metric):
            return _find(_rows(r, "quality"), metric=metric)

        row(f"similarity vs {metric}: rho (p, test; q) [task CI]",
            lambda r, q=q, m=metric: f"{_num(q(r).get('rho'))} ({_p(q(r).get('p_value'))}, "
            f"{q(r).get('test', 'permutation')}; {_q(r, f'{m}: rho', ('quality',))}) "
            f"[{_num(q(r).get('lang_ci_low'))}, {_num(q(r).get('lang_ci_high'))}]")  # fmt: skip
        for control, words in (("char_overlap", "char. overlap"), ("script", "script")):

            def given(r, metric=metric, control=control):
                return _find(_rows(r, "quality"), metric=metric, control=control)

            row(f"similarity vs {metric} given {words}: partial (p; q)",
                lambda r, g=given, m=metric, c=control: f"{_num(g(r).get('partial_rho'))} "
                f"({_p(g(r).get('partial_p_value'))}; "
                f"{_q(r, f'{m} | {c}: partial rho', ('quality',))})")  # fmt: skip


def _structure_rows(row, runs) -> None:
    """Clusters against family, genus, script and genus within one script; the paired
    decoder-minus-encoder differences; the whole model's trajectory and settle step."""
    for level in ("family", "genus", "script"):

        def agreement(r, level=level):
            return _find(_rows(r, "clustering"), level=level, statistic="ari")

        row(f"clusters vs {level}: ARI (p, labels permuted; q; chance)",
            lambda r, a=agreement: f"{_num(a(r).get('value'))} "
            f"({_p(a(r).get('p_value'))}; {_q(r, _agreement_test(a(r)), ('clustering',))}; "
            f"{_num(a(r).get('null_mean'))})")  # fmt: skip

    def within_script(r):
        return next((c for c in _rows(r, "clustering") if c.get("group") == "all"
                     and str(c.get("level", "")).startswith("genus within")
                     and c.get("statistic") == "ari"), {})  # fmt: skip

    row("clusters vs genus within the largest script: ARI (p; q; languages)",
        lambda r: (lambda a: f"{_num(a.get('value'))} ({_p(a.get('p_value'))}; "
                   f"{_q(r, _agreement_test(a), ('clustering',))}; "
                   f"{a.get('n_tasks', '–')})")(within_script(r)))  # fmt: skip
    _layer_clustering_rows(row)
    pairs = [(d.get("group_a"), d.get("group_b")) for d in _rows(runs[0], "group_differences")]
    for a, b in pairs if runs else []:

        def difference(r, a=a, b=b):
            return _find(_rows(r, "group_differences"), group_a=a, group_b=b)

        row(f"{b} minus {a}, noise-corrected mean [paired CI]",
            lambda r, d=difference: _ci(d(r), "difference", "ci_low", "ci_high"))  # fmt: skip

    def trajectory(r, at):
        rows = [t for t in _rows(r, "reliability_trajectory") if t.get("group") == "all"]
        return (rows[0] if at == "first" else rows[-1]) if rows else {}

    for column, label in (("mean_cosine", "raw mean"), ("reliability", "reliability"),
                          ("mean_corrected", "noise-corrected mean")):  # fmt: skip
        row(f"whole model over training: {label}, first -> last snapshot (steps)",
            lambda r, c=column: f"{_num(trajectory(r, 'first').get(c), 2, False)} -> "
            f"{_num(trajectory(r, 'last').get(c), 2, False)} "
            f"({trajectory(r, 'first').get('step', '–')}, {trajectory(r, 'last').get('step', '–')})")  # fmt: skip
    row("whole model, trained window minus step 0, noise-corrected mean [paired lang CI]",
        lambda r: _ci(_find(_rows(r, "training_change"), group="all"), "change", "lang_ci_low",
                      "lang_ci_high"))  # fmt: skip
    row("whole model, raw mean: settle step (exploratory)",
        lambda r: str(_find(_rows(r, "group_settling"), group="all").get("settle_step") or
                      "still moving"))  # fmt: skip


def _layer_clustering_rows(row) -> None:
    """Per parameter group (the layer table's clustering): how many groups' clusters agree
    with script and with genus within the largest script at p < .05 (uncorrected) and at
    BH q < .05, and encoder.layers.0's two values (where the typology relation is strongest)."""

    def ari(r, level):
        return [c for c in _rows(r, "layer_clustering") if c.get("statistic") == "ari"
                and (c.get("level") == level or (level == "genus within"
                     and str(c.get("level", "")).startswith("genus within")))]  # fmt: skip

    for level, label in (("script", "script"), ("genus within", "genus within the largest script")):
        row(f"groups whose clusters agree with {label} (p < .05 uncorrected; q < .05)",
            lambda r, lv=level: (lambda cs: f"{sum(1 for c in cs if (c.get('p_value') or 1) < 0.05)}"
                                 f" of {len(cs)}; {_n_q(r, cs)}")(ari(r, lv)))  # fmt: skip
        row(f"encoder.layers.0 clusters vs {label}: ARI (p; q)",
            lambda r, lv=level: (lambda c: f"{_num(c.get('value'))} ({_p(c.get('p_value'))}; "
                                 f"{_q(r, _agreement_test(c), ('layer_clustering',))})")(
                next((c for c in ari(r, lv) if c.get("group") == "encoder.layers.0"), {})))  # fmt: skip


def _n_q(run: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
    """How many of the layer-clustering ``rows`` have a BH q below .05."""
    qs = [_q(run, _agreement_test(c), ("layer_clustering",)) for c in rows]
    return str(sum(1 for q in qs if q not in ("–",) and float(q.lstrip("<")) < 0.05))


def _agreement_test(row: Mapping[str, Any]) -> str:
    """The tests-table name of a clustering agreement row: "group level statistic"."""
    return f"{row.get('group')} {row.get('level')} {row.get('statistic')}"


def _optimizer_lines(results: Mapping[str, Any]) -> list[str]:
    """The optimizer comparison's table (its own columns)."""
    lines: list[str] = []
    lines += ["", "| optimizer vs the same-seed baseline | chrF difference [t-interval over seeds] "
              "| [interval with the baseline seeds' noise] (p) | detectable (80% power) "
              "| seeds (baseline seeds) | languages better |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for m in (results.get("comparison") or {}).get("per_method") or []:
        lines.append(
            f"| {m.get('method')} | {_ci(m, 'mean_delta', 'ci_low', 'ci_high')} | "
            f"[{_num(m.get('ref_ci_low'))}, {_num(m.get('ref_ci_high'))}] ({_p(m.get('ref_p'))}) "
            f"| {_num(m.get('detectable'), signed=False)} | {m.get('n_seeds')} ({m.get('n_baseline_seeds', '–')}) | "
            f"{m.get('n_better')} of {m.get('n_tasks')} |"
        )
    return lines


def readme_block(text: str) -> str:
    """The part of a README between :data:`START` and :data:`END` (stripped); "" if absent."""
    if START not in text or END not in text:
        return ""
    return text.split(START, 1)[1].split(END, 1)[0].strip()
