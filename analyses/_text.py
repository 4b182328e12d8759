"""The text view of :class:`analyses.RunResults` (``geomtrace analyze``): tables, no new numbers."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from analyses._grouping_holdout import holdout_lines


def _f(value: Any, digits: int = 3) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "–" if not math.isfinite(v) else f"{v:+.{digits}f}" if digits == 2 else f"{v:.{digits}f}"


def _plain(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{v:.2f}" if math.isfinite(v) else "–"


def with_interval(value: Any, lo: Any, hi: Any, digits: int = 2) -> str:
    """ "+0.41 [+0.12, +0.60]" (a dash for a missing value or bound)."""
    return f"{_f(value, 2)} [{_f(lo, 2)}, {_f(hi, 2)}]"


def p_text(p: Any) -> str:
    try:
        v = float(p)
    except (TypeError, ValueError):
        return "–"
    if not math.isfinite(v):
        return "–"
    return "<.001" if v < 0.001 else f"{v:.3f}"


def mark(p_holm: Any, alpha: float = 0.05) -> str:
    """ "*" when the test survives Holm's correction at ``alpha``."""
    try:
        return "*" if float(p_holm) < alpha else ""
    except (TypeError, ValueError):
        return ""


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    return "\n".join([line(header), *(line(r) for r in rows)])


def results_text(res) -> str:
    d = res.description
    level = int(round(100 * res.settings["level"]))
    out = [
        f"run {res.run or res.label}  method {d.method_label()}  group {res.group}  "
        f"measure {res.measure}",
        f"{len(res.tasks)} {d.tasks_noun}: {', '.join(res.tasks)}",
        f"[CI]: {level}% basic interval, circular block bootstrap over snapshots "
        f"({res.settings['n_bootstrap']} replicates, widened for the number of blocks): how "
        f"much THIS RUN's matrix would move with other snapshots; [lang CI] / [{d.task_noun} "
        f"CI]: {d.task_noun} jackknife (typology: on the disattenuated, noise-removed "
        f"statistic): the relation in {d.tasks_noun} like these; p: "
        f"{res.settings['n_permutations']} surrogates or permutations; * = survives Holm's "
        "correction within its table (alpha 0.05). Only intervals and p-values the "
        "calibration harness checks are printed (analyses/README.md, Calibration); the JSON "
        "has the rest",
    ]
    for warning in res.warnings:
        out.append(f"WARNING: {warning}")
    f = res.frames
    out += primary_text(f.get("tests"))
    out += _similarity_sections(res)
    out += _structure_sections(res)
    out += _quality_section(res)
    if "gradvac_tracking" in f:
        out += ["", "== GradVac targets vs the similarity they track (last fifth of snapshots)"]
        rows = [
            [r.group, _f(r.final_target, 2), _f(r.mean_similarity, 2), _f(r.mean_corrected, 2),
             _f(r.reliability, 2)]
            for r in f["gradvac_tracking"].itertuples()
        ]  # fmt: skip
        out.append(_table(rows, ["group", "target", "raw", "corrected", "reliability"]))
    if "tests" in f and len(f["tests"]):
        t = f["tests"]
        counts = t.groupby("table", sort=False).agg(
            n=("n_tests", "first"), raw=("p_value", lambda p: int((p < 0.05).sum())),
            holm=("survives_holm", "sum"),
        )  # fmt: skip
        out += ["", "== tests per table (p < 0.05 raw / after Holm)"]
        out.append(_table([[k, str(r.n), str(r.raw), str(int(r.holm))]
                           for k, r in counts.iterrows()], ["table", "tests", "p<.05", "Holm"]))  # fmt: skip
    for note in res.notes:
        out.append(f"note: {note}")
    if res.not_applicable:
        out += ["", "== not applicable"] + [f"  {k}: {v}" for k, v in res.not_applicable.items()]
    return "\n".join(out)


def _similarity_sections(res) -> list[str]:
    """Similarity per group, the paired decoder-encoder and step-0 differences, and each task's reliability."""
    d, f = res.description, res.frames
    out: list[str] = []
    if "similarity" in f:
        rows = [
            [r.group, str(r.n_steps), with_interval(r.mean_cosine, r.ci_low, r.ci_high),
             _f(r.reliability, 2), with_interval(r.mean_corrected, r.corrected_ci_low,
                                                  r.corrected_ci_high)]
            for r in f["similarity"].itertuples()
        ]  # fmt: skip
        out += ["", f"== similarity ({res.measure}; mean over {d.task_noun} pairs)"]
        out.append(_table(rows, ["group", "snapshots", "mean [CI]", "reliability",
                                 "corrected [CI]"]))  # fmt: skip
    if "group_differences" in f:
        diff = f["group_differences"]
        out += ["", f"== decoder minus encoder at the same depth ({diff['measure'].iloc[0]} mean "
                "similarity; paired: both groups on the same bootstrap replicates)"]  # fmt: skip
        out.append(
            _table(
                [[f"{r.group_b} - {r.group_a}", _f(r.mean_b, 2), _f(r.mean_a, 2),
                  with_interval(r.difference, r.ci_low, r.ci_high)] for r in diff.itertuples()],
                ["pair", "decoder", "encoder", "difference [CI]"],
            )
        )  # fmt: skip
    if "training_change" in f:
        change = f["training_change"]
        out += ["", f"== trained window minus step 0 ({change['measure'].iloc[0]} mean similarity; "
                f"paired; interval: {d.task_noun} jackknife, both ends recomputed without "
                f"each {d.task_noun})"]  # fmt: skip
        out.append(
            _table(
                [[r.group, _f(r.mean_step0, 2), _f(r.mean_trained, 2),
                  with_interval(r.change, r.lang_ci_low, r.lang_ci_high)]
                 for r in change.itertuples()],
                ["group", "step 0", "trained", f"change [{d.task_noun} CI]"],
            )
        )  # fmt: skip
    if "reliability" in f:
        rel = f["reliability"]
        head = rel[rel["group"] == res.group]
        out += ["", f"== reliability of the {res.group} gradients per {d.task_noun} "
                "(signal fraction; split halves)"]  # fmt: skip
        out.append(
            _table(
                [[r.task, _f(r.reliability, 2), _f(r.median_snapshot, 2), _plain(r.fraction_below)]
                 for r in head.itertuples()],
                [d.task_noun, "reliability", "median snapshot", "fraction < 0.5"],
            )
        )  # fmt: skip
    return out


def _structure_sections(res) -> list[str]:
    """Clusters against the labels, the typology table, the layer grid and per-group agreement."""
    d, f = res.description, res.frames
    out: list[str] = []
    if "clustering" in f:
        out += ["", "== clustering vs families (tree of the headline matrix; p: labels "
                "permuted, i.e. agreement beyond a random labelling, which geography alone can "
                "also produce; the bootstrap interval of the agreement is not printed: it "
                "covered 45-85% in the harness)"]  # fmt: skip
        out.append(
            _table(
                [[r.level, r.statistic, _f(r.value, 2),
                  p_text(r.p_value), _f(r.null_mean, 2), mark(getattr(r, "p_holm", np.nan))]
                 for r in f["clustering"].itertuples()],
                ["level", "statistic", "value", "p", "chance", ""],
            )
        )  # fmt: skip
    elif res.tree is not None:
        out += ["", f"== clustering: tree over {len(res.tree.tasks)} {d.tasks_noun} "
                f"(cophenetic r {res.tree.cophenetic_correlation:.2f}); no family labels"]  # fmt: skip
    if res.clusters is not None:
        out.append(clusters_line(res.clusters, d.tasks_noun))
    if "typology" in f:
        test = f["typology"]["test"].iloc[0] if len(f["typology"]) else "spatial"
        p_is = (
            "p from surrogates keeping the autocorrelation over geography and genealogy"
            if test == "spatial"
            else "p from permuting languages (assumes they are exchangeable)"
        )
        out += ["", "== typology (Mantel rho > 0: closer languages, more aligned gradients; "
                f"{p_is}; dis.: noise removed by the matrix's split-half reliability)"]  # fmt: skip
        rows = []
        for r in f["typology"].itertuples():
            rows.append(
                [r.distance, str(r.control), _f(r.rho, 2),
                 p_text(r.p_value) + mark(r.p_holm), _f(r.rho_step0, 2),
                 _f(r.partial_rho, 2),
                 p_text(r.partial_p_value) + mark(r.partial_p_holm),
                 _f(r.matrix_reliability, 2),
                 with_interval(r.rho_disattenuated, r.lang_ci_low, r.lang_ci_high),
                 with_interval(r.partial_disattenuated, r.partial_lang_ci_low,
                               r.partial_lang_ci_high)]
            )  # fmt: skip
        out.append(_table(rows, ["distance", "control", "rho", "p", "rho step 0",
                                 "partial rho", "p", "matrix rel.", "rho dis. [lang CI]",
                                 "partial dis. [lang CI]"]))  # fmt: skip
        out.append(
            "  rho of this run's noisy matrix is attenuated towards 0 (its snapshot interval, "
            "in the JSON, covers no truth about languages); read the noise-removed rho and its "
            "language interval"
        )
        typ = f["typology"]
        if "partial_detectable" in typ and typ["partial_detectable"].notna().any():
            det = typ["partial_detectable"].dropna()
            out.append(
                f"  a relation not detected here could still be as large as the design's "
                f"detectable effect: noise-removed partial |rho| {det.min():.2f}-{det.max():.2f} "
                f"(80% power at alpha 0.05 from the {d.task_noun} jackknife; JSON columns "
                "detectable, partial_detectable)"
            )
    if "layers" in f:
        out += ["", "== where the language structure lives: partial rho given "
                f"{_first_control(f['layers'])} per group (raw rho in parentheses)"]  # fmt: skip
        out.append(layer_grid(f["layers"]))
    if "layer_clustering" in f:
        lc = f["layer_clustering"]
        rows = [
            [r.group, r.level, r.statistic, _f(r.value, 2), p_text(r.p_value) + mark(r.p_holm)]
            for r in lc.itertuples()
        ]  # fmt: skip
        out += ["", "== family / genus / script agreement per group (p: labels permuted; genus "
                "within the largest script where it has >= 4 languages)"]  # fmt: skip
        out.append(_table(rows, ["group", "level", "statistic", "value", "p"]))
    return out


def _quality_section(res) -> list[str]:
    """Similarity against each quality metric, one row per control."""
    d, f = res.description, res.frames
    out: list[str] = []
    if "quality" in f:
        q = f["quality"]
        spatial = "test" in q and (q["test"] == "spatial").all()
        p_is = (
            "p from surrogates keeping the autocorrelation over geography and genealogy"
            if spatial
            else f"p from permuting {d.tasks_noun} (assumes they are exchangeable)"
        )
        out += ["", f"== similarity vs quality (Spearman over {d.tasks_noun}; {p_is}; the "
                "snapshot interval of rho is not printed: it covered 54-92% in the harness)"]  # fmt: skip
        rows = [
            [r.metric, str(r.n_tasks), _f(r.rho, 2), p_text(r.p_value) + mark(r.p_holm),
             with_interval(r.rho, r.lang_ci_low, r.lang_ci_high), _f(r.rho_step0, 2),
             str(r.control), _f(r.partial_rho, 2),
             p_text(r.partial_p_value) + mark(r.partial_p_holm)]
            for r in q.itertuples()
        ]  # fmt: skip
        out.append(_table(rows, ["metric", "n", "rho", "p", f"rho [{d.task_noun} CI]",
                                 "rho step 0", "control", "partial", "p"]))  # fmt: skip
    for name in ("group_settling", "family_settling"):
        if name in f:
            out += ["", f"== settling of the mean pair similarity ({name.split('_')[0]}; "
                    f"{res.measure}; exploratory: its pair-bootstrap intervals are in the JSON, "
                    "not yet checked by the calibration harness)"]  # fmt: skip
            rows = [
                [r.kind, _f(r.final_value, 2),
                 "– (last snapshot not finite)" if not np.isfinite(r.final_value)
                 else "still moving" if not np.isfinite(r.settle_step)
                 else str(int(r.settle_step)), str(r.last_step)]
                for r in f[name].itertuples()
            ]  # fmt: skip
            out.append(_table(rows, ["kind", "final", "settle step", "last step"]))
    return out


def primary_text(tests: pd.DataFrame | None) -> list[str]:
    """The declared primary tests first (Holm across them), then how many exploratory tests
    pass a 5% false-discovery rate; [] without a tests table."""
    if tests is None or not len(tests) or "role" not in tests:
        return []
    primary = tests[tests["role"] == "primary"]
    explore = tests[tests["role"] == "exploratory"]
    out = []
    if len(primary):  # a run without them (no ISO codes, no quality) gets no empty section
        out += ["", "== primary tests (declared in advance: analyses.PRIMARY_TESTS; p adjusted "
                "by Holm across them)"]  # fmt: skip
        out.append(
            _table(
                [[r.table, r.test, _f(r.value, 2), p_text(r.p_value), p_text(r.p_primary),
                  "yes" if r.p_primary < 0.05 else "no"] for r in primary.itertuples()],
                ["table", "test", "value", "p", "p (Holm, primaries)", "at 0.05"],
            )
        )  # fmt: skip
    n_fdr = int((explore["q_fdr"] < 0.05).sum())
    out.append(
        f"exploratory: {len(explore)} other tests, each counted once; {n_fdr} with a "
        "Benjamini-Hochberg q < 0.05 (column q_fdr of the tests table)"
    )
    return out


def clusters_line(clusters: dict[str, Any], tasks_noun: str = "tasks") -> str:
    """ "flat clusters (2, silhouette 0.41): {a b c} {d e}" from ``RunResults.clusters``."""
    flat = clusters["flat"]
    groups = " ".join("{" + " ".join(c) + "}" for c in flat["clusters"])
    if flat["n_clusters"] == 1:
        return (
            f"flat clusters: one cluster of {len(flat['clusters'][0])} {tasks_noun} (no cut of "
            "the tree has a positive mean silhouette)"
        )
    return (
        f"flat clusters ({flat['n_clusters']}, cut with the best mean silhouette "
        f"{flat['silhouette']:.2f}): {groups}"
    )


def _first_control(layers: pd.DataFrame) -> str:
    controls = [c for c in layers["control"] if isinstance(c, str)]
    return controls[0] if controls else "no control"


def layer_grid(layers: pd.DataFrame) -> str:
    """Group x distance grid of "partial (raw)" with * for Holm survivors of the partial."""
    distances = list(dict.fromkeys(layers["distance"]))
    rows = []
    for g, part in layers.groupby("group", sort=False):
        by = part.set_index("distance")
        cells = [g]
        for dist in distances:
            if dist not in by.index:
                cells.append("–")
                continue
            r = by.loc[dist]
            cells.append(
                f"{_f(r['partial_rho'], 2)}{mark(r.get('partial_p_holm'))} ({_f(r['rho'], 2)})"
            )
        rows.append(cells)
    return _table(rows, ["group", *distances])


def summary_text(res) -> str:
    """Per task: its quality, alignment and reliability; then the headline numbers."""
    d = res.description
    head = res.headline()
    counts = res.meta.get("corpus_counts") or {}
    quality = res.frames.get("task_quality")
    align = res.frames.get("task_alignment")
    metrics = d.metrics
    # an ISO column only where tasks are languages (a head or a regression target has none)
    with_iso = "families" in res.frames
    header = [d.task_noun] + (["iso"] if with_iso else []) + (["train", "test"] if counts else [])
    header += metrics
    header += ["alignment [CI]", "reliability"]
    rows = []
    iso = dict(zip(res.frames["families"]["task"], res.frames["families"]["language"],
                   strict=True)) if "families" in res.frames else {}  # fmt: skip
    by_task = quality.set_index("task") if quality is not None else None
    by_align = align.set_index("task") if align is not None else None
    for task in res.tasks:
        row = [task] + ([iso.get(task, "-")] if with_iso else [])
        if counts:
            row += [str(counts.get(task, {}).get("train", "-")),
                    str(counts.get(task, {}).get("test", "-"))]  # fmt: skip
        for m in metrics:
            row.append(
                _plain(by_task.loc[task, m]) if by_task is not None and m in by_task else "–"
            )
        if by_align is not None and task in by_align.index:
            a = by_align.loc[task]
            row += [with_interval(a["mean_alignment"], a["ci_low"], a["ci_high"]),
                    _f(a["reliability"], 2)]  # fmt: skip
        else:
            row += ["–", "–"]
        rows.append(row)
    out = [f"run        {res.run or res.label}",
           f"snapshots  {d.n_snapshots} (steps {d.steps[0]}..{d.steps[-1]}), method "
           f"{d.method_label()}" if d.steps else "snapshots  0", "",
           _table(rows, header), ""]  # fmt: skip
    if head.get("mean_similarity") is not None:
        line = f"mean similarity ({res.group}, {res.measure}, steps > 0): " + with_interval(
            head["mean_similarity"], head["ci_low"], head["ci_high"]
        )
        if head.get("reliability") is not None:
            line += f"; reliability {head['reliability']:.2f}"
        if head.get("mean_corrected") is not None:
            line += f"; corrected {head['mean_corrected']:+.2f}"
        out.append(line)
    if quality is not None:
        for m in metrics:
            values = quality[m].to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            if values.size:
                noun = d.task_noun if values.size == 1 else d.tasks_noun
                out.append(f"{m}: mean {values.mean():.2f} (min {values.min():.2f}, max "
                           f"{values.max():.2f}) over {values.size} {noun}")  # fmt: skip
    sim = res.frames.get("similarity")
    if sim is not None and len(sim) > 2:
        groups = sim[sim["group"] != "all"]
        lo = (
            groups.loc[groups["mean_cosine"].idxmin()]
            if groups["mean_cosine"].notna().any()
            else None
        )
        hi = (
            groups.loc[groups["mean_cosine"].idxmax()]
            if groups["mean_cosine"].notna().any()
            else None
        )
        if lo is not None:
            out.append(f"groups: lowest {lo['group']} {lo['mean_cosine']:+.3f}, highest "
                       f"{hi['group']} {hi['mean_cosine']:+.3f}")  # fmt: skip
    for warning in res.warnings:
        out.append(f"warning: {warning}")
    interrupted = res.meta.get("interrupted_at_step")
    if interrupted is not None:
        out.append(f"interrupted after step {interrupted}")
    return "\n".join(out)


def grouping_text(grouping: Any, n_bootstrap: int) -> str:
    """A :class:`~analyses.Grouping` as the lines ``geomtrace group`` prints: the groups with
    how often their pairs stay together over the ``n_bootstrap`` replicates (none when 0),
    the stability, every scheme's within-group affinity, the baselines' groups, the
    out-of-sample score (``grouping_holdout``), the notes."""
    noun = "group" if grouping.k == 1 else "groups"
    lines = [
        f"{grouping.k} {noun} by {grouping.affinity.kind} affinity ({grouping.affinity.note}); "
        f"{grouping.method} search; score {grouping.score:+.3f}"
    ]
    tasks = grouping.affinity.tasks
    for n, members in enumerate(grouping.groups(), 1):
        index = [tasks.index(t) for t in members]
        pairs = [(a, b) for a in index for b in index if a < b]
        together = [grouping.together[a, b] for a, b in pairs]
        stay = f"  stays together {np.nanmean(together):.0%}" if pairs and n_bootstrap else ""
        lines.append(f"  group {n}: {' '.join(members)}{stay}")
    if np.isfinite(grouping.stability):
        lines.append(f"stability: grouped pairs share a group in {grouping.stability:.0%} of "
                     f"{n_bootstrap} bootstrap replicates")  # fmt: skip
    totals = grouping.schemes[grouping.schemes["group"] == -1]
    lines.append("\nschemes (within-group affinity under the gradient affinity, centred):")
    for row in totals.itertuples():
        lines.append(f"  {row.scheme:<24} {row.gradient_score:+.3f}")
    for row in grouping.schemes[grouping.schemes["group"] >= 0].itertuples():
        if row.scheme != "gradient":
            lines.append(f"    {row.scheme}: {row.tasks}")
    lines += holdout_lines(grouping.holdout)
    for note in grouping.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def typology_text(matrices: dict[str, pd.DataFrame], families: pd.DataFrame) -> str:
    """Distance matrices (``typological_distances``) and the families table
    (``language_families``) as the text ``geomtrace typology`` prints: km for geographic,
    three decimals otherwise."""
    units = {"geographic": "km"}
    lines = []
    for kind, m in matrices.items():
        lines.append(f"{kind} distance ({units.get(kind, '0 = identical')})")
        fmt = "{:.0f}".format if kind == "geographic" else "{:.3f}".format
        lines.append(m.to_string(float_format=fmt))
        lines.append("")
    lines.append(
        families.drop(columns=["path"]).to_string(index=False, float_format="{:.2f}".format)
    )
    return "\n".join(lines)
