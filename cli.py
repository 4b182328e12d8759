"""The ``geomtrace`` command line: a thin layer over geomtrace/, analyses/ and figures/.

Each subcommand has one ``_add_<name>_parser`` function (its arguments and help) and one
``_cmd_<name>`` function (what it runs). User errors (``GeomtraceError``) print one line and
exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import figures
from geomtrace import GeomtraceError, InvalidInputError, StorageError

DESCRIPTION = """\
geomtrace: the geometry of per-task gradients in multilingual (multi-task) training.

Trace each language's gradient along training, store Gram/cosine matrices per parameter
group in a crash-safe SQLite trace, analyse them against typology and quality, compare
optimizers that use that geometry (PCGrad, GradVac), and redraw the Gradient Vaccine figures.
"""


def _arguments(p, *rows: tuple[str, dict]) -> None:
    """Add ``rows`` to the parser ``p``, each a (flags, keywords) pair; ``flags`` separated by
    spaces ("--runs-dir --out"). One row per argument keeps each command's table short, and a
    row several commands share is written once (``_RUN``, ``_RUNS``, ``_analysis_options``)."""
    for flags, keywords in rows:
        p.add_argument(*flags.split(), **keywords)


def _command(sub, name: str, func, help: str, description: str, *rows, **keywords):
    """The subcommand ``name``: its one-line ``help``, ``description`` (the --help text), the
    arguments ``rows`` (see :func:`_arguments`) and the ``_cmd_<name>`` function it runs."""
    p = sub.add_parser(name, help=help, description=description, **keywords)
    _arguments(p, *rows)
    p.set_defaults(func=func)
    return p


_RUN = ("run", dict(help="run directory (or its trace.sqlite)"))
_RUNS = ("runs", dict(nargs="+", metavar="RUN", help="run directories (or trace.sqlite files)"))
_FIGURE_GROUP = (
    "--group",
    dict(default=None, help="parameter group of F1-F3/F5 (default: all = whole model)"),
)


def _json_argument(what: str) -> tuple[str, dict]:
    """``--json [FILE]``: one convention for every command (no FILE or ``-``: standard output)."""
    return "--json", dict(
        nargs="?", const="-", default=None, metavar="FILE",
        help=f"write {what} as JSON to FILE (no FILE or '-': standard output)",
    )  # fmt: skip


def _write_json(payload, target: str) -> None:
    text = json.dumps(payload, indent=2)
    if target == "-":
        print(text)
        return
    try:
        with open(target, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    except OSError as err:  # a full disk, /dev/full: the results are lost, say where and why
        raise StorageError(f"cannot write --json {target!r}: {err.strerror or err}") from None
    print(f"wrote {target}", file=sys.stderr)


def _add_inspect_parser(sub) -> None:
    _command(
        sub, "inspect", _cmd_inspect,
        "summarise a trace: tasks, groups, snapshots, mean similarity per group",
        "Print what a trace holds: its tasks (with ISO 639-3 codes), parameter "
        "groups with their sizes, the number of snapshots and their step range, and per group "
        "the mean pair similarity over the snapshots after step 0 (the number analyze, the "
        "report and the trace summary show) with its 95% bootstrap interval, and the "
        "reliability (signal fraction) of the gradients when the trace has split halves.",
        _RUN, _json_argument("the summary"),
    )  # fmt: skip


def _cmd_inspect(args) -> int:
    from analyses import trace_summary, trace_summary_text
    from geomtrace import open_trace

    figures.check_output_file(args.json, "--json")
    summary = trace_summary(open_trace(args.run))
    if args.json:
        _write_json(summary, args.json)
        return 0
    print(trace_summary_text(summary))
    for warning in summary["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


#: the distances of ``geomtrace typology --distance``
_DISTANCES = ["syntactic", "phonological", "inventory", "geographic", "featural", "genetic", "all"]


def _add_typology_parser(sub) -> None:
    _command(
        sub, "typology", _cmd_typology,
        "typological distances between languages (lang2vec/URIEL)",
        "Print distance matrices between languages given as ISO 639-3 codes: "
        "syntactic, phonological and inventory (cosine distance of URIEL kNN features), "
        "featural (the three concatenated), geographic (great-circle km) and genetic "
        "(1 - shared Glottolog path / longer path depth); see analyses/README.md.",
        ("languages", dict(nargs="+", metavar="ISO", help="ISO 639-3 codes, e.g. fra deu rus jpn")),
        ("--distance", dict(default="all", choices=_DISTANCES, help="which distance (default: all)")),
        ("--json", dict(action="store_true", help="print the matrices as JSON")),
    )  # fmt: skip


def _cmd_typology(args) -> int:
    from analyses import language_families, typological_distances, typology_text

    matrices = typological_distances(args.languages, args.distance)
    families = language_families(args.languages)
    if args.json:
        distances = {k: m.to_numpy().round(6).tolist() for k, m in matrices.items()}
        families_json = json.loads(families.to_json(orient="records"))
        payload = {"languages": list(families["language"]), "distances": distances}
        _write_json(payload | {"families": families_json}, "-")
        return 0
    print(typology_text(matrices, families))
    return 0


def _analysis_options(*, permutations: int) -> list[tuple[str, dict]]:
    """Options shared by analyze, plot, report and reproduce (one meaning everywhere)."""
    from analyses import MEASURES

    return [
        ("--permutations", dict(type=int, default=permutations,
                                help=f"permutations per test (default {permutations})")),
        ("--bootstrap", dict(type=int, default=1000, help="circular block bootstrap replicates "
                             "over snapshots for every interval (default 1000)")),
        ("--measure", dict(default="raw", choices=MEASURES, help="similarity of the headline "
                           "matrix: raw cosine (the paper's), corrected for sampling noise "
                           "(needs a trace with split halves), or centred (the component "
                           "common to every task at a snapshot projected out); default raw")),
        ("--metric", dict(default=None, help="quality metric of the quality figure and "
                          "comparisons (default: the first recorded, e.g. chrf)")),
        ("--seed", dict(type=int, default=0, help="seed of permutations and bootstrap")),
    ]  # fmt: skip


#: numpy's default_rng takes seeds >= 0, torch's manual_seed < 2**64: 32 bits fit both
MAX_SEED = 2**32 - 1


def _check_seed(seed: int) -> int:
    if not 0 <= seed <= MAX_SEED:
        raise InvalidInputError(f"--seed {seed}: give a seed from 0 to {MAX_SEED}")
    return seed


def _analysis_kwargs(args) -> dict:
    _check_seed(args.seed)
    if args.permutations < 1:
        raise InvalidInputError(
            f"--permutations {args.permutations}: give at least 1 (999 or more for p < .001)"
        )
    if args.bootstrap < 10:
        raise InvalidInputError(f"--bootstrap {args.bootstrap}: give at least 10 replicates")
    return {
        "n_permutations": args.permutations, "n_bootstrap": args.bootstrap,
        "measure": args.measure, "metric": args.metric, "seed": args.seed,
    }  # fmt: skip


def _add_analyze_parser(sub) -> None:
    _command(
        sub, "analyze", _cmd_analyze,
        "run every analysis on a trace, with intervals (similarity, reliability, "
        "clustering, typology, quality, evolution)",
        "Summarise a trace: gradient similarity per group with bootstrap "
        "intervals and reliability, clustering (vs language families where known), Mantel "
        "correlations with typology per group (step-0 baselines, partial controls for "
        "character/script overlap), similarity vs quality, how similarity evolves and settles, "
        "GradVac targets vs the similarity they track, and every test with its Holm-adjusted "
        "p. Parts a run cannot support (tasks without ISO codes, no quality rows) say why.",
        _RUN,
        ("--group", dict(default=None, help="parameter group for per-task analyses (default: "
                         "all = whole model)")),
        _json_argument("every result"), *_analysis_options(permutations=9999),
    )  # fmt: skip


def _cmd_analyze(args) -> int:
    from analyses import analyse_run

    figures.check_output_file(args.json, "--json")
    result = analyse_run(args.run, group=args.group, **_analysis_kwargs(args))
    if args.json == "-":
        _write_json(result.to_dict(), "-")
        return 0
    print(result.to_text())
    if args.json:
        _write_json(result.to_dict(), args.json)
    return 0


def _add_design_parser(sub) -> None:
    _command(
        sub, "design", _cmd_design,
        "how many snapshot rows / languages the next run needs, from this run's noise",
        "From a run's measured noise: the snapshot rows per task for a target "
        "reliability (0.8, 0.9; Spearman-Brown from each group's reliability), and, for each "
        "typology relation given the character-overlap control, the smallest noise-removed "
        "partial |rho| this design detects with the given power, the same at 24 and 48 "
        "languages, and the languages needed for --effect. Projections from one run: they "
        "assume the noise per row and the spread between languages stay as measured.",
        _RUN,
        ("--effect", dict(type=float, default=0.3,
                          help="the noise-removed partial |rho| to detect (default 0.3)")),
        ("--power", dict(type=float, default=0.8, help="power (default 0.8)")),
        ("--permutations", dict(type=int, default=199, help="surrogates for the typology tests "
                                "it runs (default 199: the design reads intervals, not "
                                "p-values)")),
    )  # fmt: skip


def _cmd_design(args) -> int:
    from analyses import analyse_run, design_text

    if not 0 < args.effect < 1:
        raise InvalidInputError(f"--effect {args.effect}: a correlation in (0, 1)")
    if not 0 < args.power < 1:
        raise InvalidInputError(f"--power {args.power}: a probability in (0, 1)")
    if args.permutations < 1:
        raise InvalidInputError(f"--permutations {args.permutations}: give at least 1")
    result = analyse_run(
        args.run, parts=("similarity", "typology", "layers"), n_permutations=args.permutations
    )
    print(design_text(result, args.effect, power=args.power))
    return 0


def _add_group_parser(sub) -> None:
    from analyses import AFFINITIES, DISTANCES, MEASURES

    _command(
        sub, "group", _cmd_group,
        "which tasks should share a model: the best partition by gradient affinity",
        "Partition the run's tasks into K groups maximising the total "
        "within-group gradient affinity (centred: pairs more alike than the average pair add, "
        "others cost): exact search for up to 12 tasks, a documented heuristic beyond. "
        "Affinity 'cosine' is the step-averaged similarity; 'lookahead' is the first-order "
        "relative loss change lr g_i.g_j / L_j of one step on task i for task j (see "
        "analyses/README.md). Prints the groups, their score, how often each grouped pair "
        "stays together under the snapshot bootstrap, and the baselines: typology, family "
        "tree and random groups of the same sizes.",
        _RUN,
        ("--k", dict(type=int, required=True, help="number of groups")),
        ("--measure", dict(dest="affinity", default="cosine", choices=AFFINITIES,
                           help="affinity: cosine (default) or lookahead")),
        ("--similarity", dict(default="raw", choices=MEASURES,
                              help="similarity measure of the cosine affinity (default raw)")),
        ("--group", dict(default=None, help="parameter group (default: all)")),
        ("--max-size", dict(type=int, default=None, help="largest group allowed")),
        ("--lr", dict(type=float, default=None,
                      help="learning rate of the lookahead (default: the run's config lr)")),
        ("--distance", dict(default="genetic", choices=DISTANCES, help="typological distance "
                            "of the typology baseline (default genetic)")),
        ("--bootstrap", dict(type=int, default=200,
                             help="bootstrap replicates for the stability (default 200; 0: none)")),
        ("--seed", dict(type=int, default=0, help="seed of bootstrap and random groups")),
        _json_argument("the grouping"),
    )  # fmt: skip


def _cmd_group(args) -> int:
    from analyses import group_tasks, grouping_text

    figures.check_output_file(args.json, "--json")
    _check_seed(args.seed)
    if args.bootstrap < 0:
        raise InvalidInputError(f"--bootstrap {args.bootstrap}: give 0 or more replicates")
    grouping = group_tasks(
        args.run, args.k, affinity=args.affinity, group=args.group, measure=args.similarity,
        max_size=args.max_size, lr=args.lr, n_bootstrap=args.bootstrap,
        distance=args.distance, seed=args.seed,
    )  # fmt: skip
    if args.json == "-":
        _write_json(grouping.to_dict(), "-")
        return 0
    print(grouping_text(grouping, args.bootstrap))
    if args.json:
        _write_json(grouping.to_dict(), args.json)
    return 0


def _add_plot_parser(sub) -> None:
    _command(
        sub, "plot", _cmd_plot,
        "draw every figure the runs support (F1-F5, F7 per run; F6 across runs)",
        "Draw the Gradient Vaccine figures from one or more runs: F7 where the "
        "language structure lives (partial rho per parameter group x typological distance), "
        "F1 clustered similarity heatmap, F2 similarity vs typology, F3 similarity vs quality, "
        "F4 per-group profile with reliability, F5 similarity over steps (per run), and F6 "
        "baseline vs PCGrad vs GradVac with intervals across seeds (needs a sum run and a "
        "pcgrad/gradvac run). Every statistic carries its bootstrap interval. A figure a run "
        "cannot support is not drawn and the reason printed. With several runs, per-run "
        "figures go to OUT/<run>/. See figures/README.md.",
        _RUNS,
        ("--out", dict(required=True, help="output directory")),
        ("--format", dict(default="png",
                          help="comma-separated formats: png,pdf,svg (default png)")),
        _FIGURE_GROUP, *_analysis_options(permutations=999),
        ("--dpi", dict(type=int, default=None, help="PNG resolution (default 120)")),
    )  # fmt: skip


def _analyse_for_figures(args, progress):
    """Analyse the runs once (analyses), then draw (figures): the plot and report commands."""
    import analyses

    kwargs = _analysis_kwargs(args)
    results = analyses.analyse_runs(args.runs, group=args.group, progress=progress, **kwargs)
    comparison = analyses.compare_runs(results, metric=args.metric) if len(results) > 1 else (
        analyses.NotApplicable("F6 compares several runs (a sum baseline and pcgrad/gradvac)")
    )  # fmt: skip
    seeds = analyses.across_seeds(results) if len(results) > 1 else None
    return results, comparison, seeds


def _cmd_plot(args) -> int:
    import analyses

    if args.dpi is not None and args.dpi < 1:
        raise InvalidInputError(f"--dpi {args.dpi}: give a positive resolution (e.g. 120)")
    formats = figures.parse_formats(args.format)
    figures.check_output_dir(args.out, "--out")

    def progress(message: str) -> None:
        print(f"[plot] {message}", file=sys.stderr)

    from pathlib import Path

    results, comparison, _ = _analyse_for_figures(args, progress)
    several = len(results) > 1
    written, skipped = [], {}
    for res in results:
        drawn = figures.draw_run(res)
        for key, fig in drawn.items():
            if isinstance(fig, analyses.NotApplicable):
                skipped[f"{res.label}/{key}" if several else key] = fig.reason
        out = Path(args.out) / res.label if several else Path(args.out)
        written += figures.save_figures(drawn, out, formats=formats, dpi=args.dpi)
    if several:
        f6 = figures.draw_comparison(comparison)
        if isinstance(f6, analyses.NotApplicable):
            skipped["f6"] = f6.reason
        else:
            written += figures.save_figures({"f6": f6}, args.out, formats=formats, dpi=args.dpi)
    for path in written:
        print(path)
    for name, reason in skipped.items():
        print(f"not drawn {name}: {reason}", file=sys.stderr)
    return 0


def _add_report_parser(sub) -> None:
    _command(
        sub, "report", _cmd_report,
        "one self-contained HTML page: every figure, the numbers behind it, run configs",
        "Write a single HTML file (figures embedded as base64 images, the tables "
        "of numbers behind each figure with their intervals, every test with its Holm count, "
        "results across seeds, run configs, what each figure corresponds to in the paper and "
        "what differs). It leads with where the structure lives (F7) and has no external "
        "reference: it reads offline.",
        _RUNS,
        ("--out", dict(default="report.html", help="output file (default report.html)")),
        _FIGURE_GROUP,
        ("--image-format", dict(default="png", choices=["png", "svg"],
                                help="embedded image format")),
        *_analysis_options(permutations=999),
    )  # fmt: skip


def _cmd_report(args) -> int:
    import analyses

    figures.check_output_file(args.out, "--out")

    def progress(message: str) -> None:
        print(f"[report] {message}", file=sys.stderr)

    results, comparison, seeds = _analyse_for_figures(args, progress)
    path = figures.write_report(
        results, args.out,
        comparison=None if isinstance(comparison, analyses.NotApplicable) else comparison,
        seeds=seeds, image_format=args.image_format,
    )  # fmt: skip
    print(path)
    return 0


def _add_reproduce_parser(sub) -> None:
    import reproduce

    _command(
        sub, "reproduce", _cmd_reproduce,
        "the paper-figure reproduction end to end: trace runs, analyses, figures, report",
        reproduce.DESCRIPTION,
        ("--out", dict(required=True, help="output directory")),
        ("--quick", dict(action="store_true", help="fewer languages and steps (minutes)")),
        ("--mode", dict(choices=("default", "extended", "quick"), default=None,
                        help="the plan: default (sum x 3, GradVac x 1), extended (sum x 3, "
                        "GradVac x 2, PCGrad x 1), quick (= --quick)")),
        ("--seeds", dict(type=int, default=None, help="seeds per method (default: the plan's, "
                         "3/1 for sum/GradVac, extended 3/2/1 with PCGrad; quick: 1)")),
        ("--format", dict(default="png", help="figure formats: png,pdf,svg (default png)")),
        ("--permutations", dict(type=int, default=999,
                                help="permutations per test (default 999)")),
        ("--bootstrap", dict(type=int, default=1000,
                             help="bootstrap replicates per interval (1000)")),
        ("--seed", dict(type=int, default=0,
                        help="first training seed and the analyses' seed (0)")),
        ("--force", dict(action="store_true", help="overwrite existing runs under OUT/runs")),
        ("--workers", dict(type=int, default=None, help="runs trained at once, one process and "
                           "one torch thread each (default 2)")),
        ("--grouping", dict(action="store_true", help=reproduce.GROUPING_HELP)),
        ("--k", dict(type=int, default=None,
                     help="with --grouping: the number of groups (default 3)")),
    )  # fmt: skip


def _cmd_reproduce(args) -> int:
    from reproduce import reproduce

    figures.parse_formats(args.format)
    _check_seed(args.seed)
    if args.k is not None and not args.grouping:
        raise InvalidInputError(f"--k {args.k} applies only with --grouping (the number of groups)")
    if args.grouping and args.mode not in (None, "quick"):
        raise InvalidInputError(
            f"--mode {args.mode} does not apply with --grouping (its plan is the grouping "
            "experiment's; --quick for the small one)"
        )
    figures.check_output_dir(args.out, "--out")
    if args.grouping:
        from reproduce import reproduce_grouping

        if args.bootstrap < 0:
            raise InvalidInputError(f"--bootstrap {args.bootstrap}: give 0 or more replicates")
        grouped = reproduce_grouping(
            args.out, k=3 if args.k is None else args.k, seeds=args.seeds if args.seeds is not None else 2,
            quick=args.quick or args.mode == "quick", n_bootstrap=args.bootstrap,
            formats=args.format, seed=args.seed, workers=args.workers, force=args.force,
        )  # fmt: skip
        for path in [*grouped.figures, grouped.table, grouped.results]:
            print(path)
        return 0
    if args.permutations < 1 or args.bootstrap < 10:
        raise InvalidInputError(
            f"--permutations {args.permutations} / --bootstrap {args.bootstrap}: give at least "
            "1 permutation and 10 bootstrap replicates"
        )
    result = reproduce(
        args.out, quick=args.quick, mode=args.mode, seeds=args.seeds, formats=args.format,
        n_permutations=args.permutations, n_bootstrap=args.bootstrap, seed=args.seed,
        force=args.force, workers=args.workers,
    )  # fmt: skip
    for path in result.figures:
        print(path)
    print(result.report)
    print(result.results)
    return 0


def _add_trace_parser(sub) -> None:
    """Its arguments set the recipe's config (``geomtrace.recipe.flags``, beside the defaults
    their help quotes); precedence: the preset (``--preset``, default "default"), then
    ``--config FILE.toml``, then ``--set key=value`` pairs, then the dedicated flags."""
    from geomtrace.recipe.flags import DESCRIPTION, arguments

    _command(
        sub, "trace", _cmd_trace,
        "train with per-task gradient tracing (default: the embedded multilingual run)",
        DESCRIPTION, *arguments(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip


def resolve_config(args: argparse.Namespace):
    """The run's config from preset, file, --set and flags (in that order of precedence)."""
    from geomtrace.recipe.flags import FLAGS, resolve

    values = {key: getattr(args, key) for _, key, _, _ in FLAGS if getattr(args, key) is not None}
    if args.probe is not None:
        values["probe"] = args.probe
    if args.langs:
        values["langs"] = [c for item in args.langs for c in item.replace(",", " ").split()]
    return resolve(args.preset, args.config, args.overrides, values)


def _cmd_trace(args) -> int:
    """Train and trace (``geomtrace.recipe.run``) with progress on standard error, then print
    the run's summary from analyses (geomtrace/ defines no statistic of its own)."""
    config = resolve_config(args)
    if args.list_languages:
        from geomtrace.recipe import language_table
        from geomtrace.recipe.embedded import resolve_languages

        # every locale of the table, or only those of --langs when given
        print(language_table(config, resolve_languages(config.langs) if args.langs else None))
        return 0

    from tqdm import tqdm

    from geomtrace.recipe.runner import run

    bar = None
    started = time.perf_counter()

    def on_start(run_dir, recipe) -> None:
        nonlocal bar
        print(f"run directory {run_dir}", file=sys.stderr)
        for line in recipe.describe:
            print(line, file=sys.stderr)
        params = sum(p.numel() for p in recipe.model.parameters() if p.requires_grad)
        print(
            f"model: {params:,} parameters; {len(recipe.tasks)} tasks; method {config.method}; "
            f"{config.steps} steps, snapshot every {config.every}",
            file=sys.stderr,
        )
        bar = tqdm(total=config.steps + 1, desc="train", unit="step", dynamic_ncols=True)

    def on_step(step: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        if step == config.steps:
            bar.set_description("train done; evaluating on the test split")

    try:
        run_dir = run(config, force=args.force, on_start=on_start, on_step=on_step)
    finally:
        if bar is not None:
            bar.close()
    print(f"wall time {time.perf_counter() - started:.0f} s; trace in {run_dir}/trace.sqlite")
    from analyses import analyse_run

    # The same numbers as inspect and analyze (one definition, in analyses).
    result = analyse_run(run_dir, parts=["similarity", "quality"], n_permutations=999)
    print(result.summary_text())
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
    for add_parser in (_add_inspect_parser, _add_typology_parser, _add_analyze_parser,
                       _add_design_parser, _add_group_parser, _add_plot_parser,
                       _add_report_parser, _add_reproduce_parser, _add_trace_parser):  # fmt: skip
        add_parser(sub)
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
    except BrokenPipeError:
        # `geomtrace inspect --json | head`: the reader left; exit quietly like other tools.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
