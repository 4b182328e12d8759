"""The ``geomtrace`` command line: a thin layer over geomtrace/, analyses/ and figures/.

Each subcommand has one ``_add_<name>_parser`` function (its arguments and help) and one
``_cmd_<name>`` function (what it runs). User errors (``GeomtraceError``) print one line and
exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from geomtrace._errors import GeomtraceError

DESCRIPTION = """\
geomtrace: the geometry of per-task gradients in multilingual (multi-task) training.

Trace each language's gradient along training, store Gram/cosine matrices per parameter
group in a crash-safe SQLite trace, analyse them against typology and quality, compare
optimizers that use that geometry (PCGrad, GradVac), and redraw the Gradient Vaccine figures.
"""


def _add_inspect_parser(sub) -> None:
    p = sub.add_parser(
        "inspect",
        help="summarise a trace: tasks, groups, snapshots, mean cosine per group",
        description="Print what a trace holds: its tasks (with ISO 639-3 codes), parameter "
        "groups with their sizes, the number of snapshots and their step range, and the mean "
        "off-diagonal gradient cosine of each group over all snapshots.",
    )
    p.add_argument("run", help="run directory (or its trace.sqlite)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_inspect)


def _cmd_inspect(args) -> int:
    import numpy as np

    from geomtrace._trace import open_trace

    trace = open_trace(args.run)
    K = len(trace.tasks)
    off_diagonal = ~np.eye(K, dtype=bool)
    groups = []
    for group in trace.groups:
        cos = trace.cosine(group)
        values = cos[:, off_diagonal] if len(cos) else np.array([np.nan])
        finite = values[np.isfinite(values)]
        groups.append(
            {
                "group": group,
                "numel": trace.group_sizes[group],
                "params": len(trace.group_params[group]),
                "mean_cosine": float(finite.mean()) if finite.size else None,
            }
        )
    summary = {
        "path": str(trace.path),
        "tasks": [{"name": t, "iso639_3": trace.iso_codes[t]} for t in trace.tasks],
        "groups": groups,
        "snapshots": len(trace.steps),
        "steps": [int(trace.steps.min()), int(trace.steps.max())] if len(trace.steps) else None,
        "sources": sorted(set(trace.sources)),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"trace      {summary['path']}")
    tasks = ", ".join(
        f"{t['name']}" + (f" ({t['iso639_3']})" if t["iso639_3"] else "") for t in summary["tasks"]
    )
    print(f"tasks      {K}: {tasks}")
    steps = summary["steps"]
    print(
        f"snapshots  {summary['snapshots']}"
        + (f", steps {steps[0]}..{steps[1]} ({', '.join(summary['sources'])})" if steps else "")
    )
    print(f"groups     {len(groups)}")
    width = max(len(g["group"]) for g in groups)
    for g in groups:
        mean = "n/a" if g["mean_cosine"] is None else f"{g['mean_cosine']:+.3f}"
        print(f"  {g['group']:<{width}}  {g['numel']:>10,d} params  mean cosine {mean}")
    return 0


def _add_typology_parser(sub) -> None:
    p = sub.add_parser(
        "typology",
        help="typological distances between languages (lang2vec/URIEL)",
        description="Print distance matrices between languages given as ISO 639-3 codes: "
        "syntactic, phonological and inventory (cosine distance of URIEL kNN features), "
        "featural (the three concatenated), geographic (great-circle km) and genetic "
        "(1 - shared Glottolog path / longer path depth); see analyses/README.md.",
    )
    p.add_argument(
        "languages", nargs="+", metavar="ISO", help="ISO 639-3 codes, e.g. fra deu rus jpn"
    )
    p.add_argument(
        "--distance",
        default="all",
        choices=[
            "syntactic",
            "phonological",
            "inventory",
            "geographic",
            "featural",
            "genetic",
            "all",
        ],
        help="which distance (default: all)",
    )
    p.add_argument("--json", action="store_true", help="print the matrices as JSON")
    p.set_defaults(func=_cmd_typology)


def _cmd_typology(args) -> int:
    from analyses import language_families, typological_distances

    matrices = typological_distances(args.languages, args.distance)
    families = language_families(args.languages)
    if args.json:
        print(
            json.dumps(
                {
                    "languages": list(families["language"]),
                    "distances": {k: m.to_numpy().round(6).tolist() for k, m in matrices.items()},
                    "families": json.loads(families.to_json(orient="records")),
                },
                indent=2,
            )
        )
        return 0
    units = {"geographic": "km"}
    for kind, m in matrices.items():
        print(f"{kind} distance ({units.get(kind, '0 = identical')})")
        fmt = "{:.0f}".format if kind == "geographic" else "{:.3f}".format
        print(m.to_string(float_format=fmt))
        print()
    print(families.drop(columns=["path"]).to_string(index=False, float_format="{:.2f}".format))
    return 0


def _add_analyze_parser(sub) -> None:
    p = sub.add_parser(
        "analyze",
        help="run every analysis on a trace (similarity, clustering, typology, quality, evolution)",
        description="Summarise a trace: gradient similarity per group, clustering vs language "
        "families, Mantel correlations with typology (with step-0 baselines and partial "
        "controls), similarity vs quality, and how similarity evolves. Parts the trace cannot "
        "support (no ISO codes, no quality) are skipped with the reason.",
    )
    p.add_argument("run", help="run directory (or its trace.sqlite)")
    p.add_argument(
        "--group",
        default=None,
        help="parameter group for per-task analyses (default: all = whole model)",
    )
    p.add_argument(
        "--json", metavar="FILE", default=None, help="also write machine-readable results to FILE"
    )
    p.add_argument(
        "--permutations", type=int, default=9999, help="permutations per test (default 9999)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the permutations (default 0)")
    p.set_defaults(func=_cmd_analyze)


def _cmd_analyze(args) -> int:
    from analyses import summary
    from geomtrace._trace import open_trace

    result = summary(
        open_trace(args.run), group=args.group, n_permutations=args.permutations, seed=args.seed
    )
    print(result.to_text())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result.to_dict(), f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


def _add_plot_parser(sub) -> None:
    p = sub.add_parser(
        "plot",
        help="draw every figure the runs support (F1-F5 per run, F6 across runs)",
        description="Draw the Gradient Vaccine figures from one or more runs: F1 clustered "
        "similarity heatmap, F2 similarity vs typology, F3 similarity vs quality, F4 per-group "
        "profile, F5 similarity over steps (per run) and F6 sum vs PCGrad vs GradVac (needs a "
        "sum run and a pcgrad/gradvac run). Figures a run cannot support are skipped with the "
        "reason. With several runs, per-run figures go to OUT/<run>/. See figures/README.md.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (or trace.sqlite files)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--format", default="png", help="comma-separated formats: png,pdf,svg (default png)"
    )
    p.add_argument(
        "--group", default=None, help="parameter group of F1-F3/F5 (default: all = whole model)"
    )
    p.add_argument(
        "--permutations", type=int, default=999, help="permutations per test (default 999)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the permutations (default 0)")
    p.add_argument("--dpi", type=int, default=None, help="PNG resolution (default 120)")
    p.set_defaults(func=_cmd_plot)


def _cmd_plot(args) -> int:
    from figures._plot import plot_runs

    def progress(message: str) -> None:
        print(f"[plot] {message}", file=sys.stderr)

    result = plot_runs(
        args.runs, args.out, formats=args.format, group=args.group,
        n_permutations=args.permutations, seed=args.seed, dpi=args.dpi, progress=progress,
    )  # fmt: skip
    for path in result.paths:
        print(path)
    for name, reason in result.skipped.items():
        print(f"skipped {name}: {reason}", file=sys.stderr)
    return 0


def _add_report_parser(sub) -> None:
    p = sub.add_parser(
        "report",
        help="one self-contained HTML page: every figure, the numbers behind it, run configs",
        description="Write a single HTML file (figures embedded as base64 images, tables of "
        "the numbers behind each figure, run configs, what each figure corresponds to in the "
        "paper and what differs). It has no external reference and reads offline.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (or trace.sqlite files)")
    p.add_argument("--out", default="report.html", help="output file (default report.html)")
    p.add_argument(
        "--group", default=None, help="parameter group of F1-F3/F5 (default: all = whole model)"
    )
    p.add_argument(
        "--image-format", default="png", choices=["png", "svg"], help="embedded image format"
    )
    p.add_argument(
        "--permutations", type=int, default=999, help="permutations per test (default 999)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the permutations (default 0)")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args) -> int:
    from figures._report import write_report

    def progress(message: str) -> None:
        print(f"[report] {message}", file=sys.stderr)

    path = write_report(
        args.runs, args.out, group=args.group, n_permutations=args.permutations, seed=args.seed,
        image_format=args.image_format, progress=progress,
    )  # fmt: skip
    print(path)
    return 0


def _add_reproduce_parser(sub) -> None:
    p = sub.add_parser(
        "reproduce",
        help="the paper-figure reproduction end to end: trace runs, analyses, figures, report",
        description="Train and trace the embedded recipe with sum, PCGrad and GradVac, run "
        "every analysis, draw every figure into OUT/figures and write OUT/report.html and "
        "OUT/results.json. The default (24 languages, 4 runs of 400 steps, two at a time) took "
        "11 minutes on an idle 2-core CPU; --quick (8 languages, 120 steps, the same code "
        "path) under 2 minutes. Finished runs under OUT/runs are reused on a rerun.",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--quick", action="store_true", help="fewer languages and steps (minutes)")
    p.add_argument("--format", default="png", help="figure formats: png,pdf,svg (default png)")
    p.add_argument(
        "--permutations", type=int, default=None, help="permutations per test (default 999)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of training and permutations (default 0)"
    )
    p.add_argument("--force", action="store_true", help="overwrite existing runs under OUT/runs")
    p.add_argument(
        "--workers", type=int, default=None,
        help="runs trained at once, one process and one torch thread each (default 2)",
    )  # fmt: skip
    p.set_defaults(func=_cmd_reproduce)


def _cmd_reproduce(args) -> int:
    from figures._reproduce import reproduce

    result = reproduce(
        args.out, quick=args.quick, formats=args.format, n_permutations=args.permutations,
        seed=args.seed, force=args.force, workers=args.workers,
    )  # fmt: skip
    for path in result.figures:
        print(path)
    print(result.report)
    print(result.results)
    return 0


def _add_trace_parser(sub) -> None:
    from geomtrace.recipe._cli import DESCRIPTION as TRACE_DESCRIPTION
    from geomtrace.recipe._cli import add_arguments

    p = sub.add_parser(
        "trace",
        help="train with per-task gradient tracing (default: the embedded multilingual run)",
        description=TRACE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=_cmd_trace)


def _cmd_trace(args) -> int:
    from geomtrace.recipe._cli import command

    return command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="geomtrace",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_inspect_parser(sub)
    _add_typology_parser(sub)
    _add_analyze_parser(sub)
    _add_plot_parser(sub)
    _add_report_parser(sub)
    _add_reproduce_parser(sub)
    _add_trace_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except GeomtraceError as err:
        print(f"geomtrace: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
