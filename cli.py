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
