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

from geomtrace import GeomtraceError, InvalidInputError, StorageError

DESCRIPTION = """\
geomtrace: the geometry of per-task gradients in multilingual (multi-task) training.

Trace each language's gradient along training, store Gram/cosine matrices per parameter
group in a crash-safe SQLite trace, analyse them against typology and quality, compare
optimizers that use that geometry (PCGrad, GradVac), and redraw the Gradient Vaccine figures.
"""


def _json_argument(p, what: str) -> None:
    """``--json [FILE]``: one convention for every command (no FILE or ``-``: standard output)."""
    p.add_argument(
        "--json", nargs="?", const="-", default=None, metavar="FILE",
        help=f"write {what} as JSON to FILE (no FILE or '-': standard output)",
    )  # fmt: skip


def _check_output_file(path: str | None, flag: str) -> None:
    """Refuse an output file that cannot be written, before any work is done.

    Its folder must exist (an output file does not create folders) and take a new file: a
    probe file is created and removed there, which catches read-only media, permissions and
    pseudo file systems (/proc) that ``os.access`` reports writable.
    """
    if path in (None, "-"):
        return
    import tempfile
    from pathlib import Path

    target = Path(path)
    if target.is_dir():
        raise InvalidInputError(f"{flag} {path!r} is a directory; give a file name")
    parent = target.parent if str(target.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise InvalidInputError(f"{flag} {path!r}: {str(parent)!r} is not a directory")
    if not parent.exists():
        raise InvalidInputError(
            f"{flag} {path!r}: the folder {str(parent)!r} does not exist; create it first"
        )
    if target.exists() and not target.is_file():
        return  # a device or pipe (/dev/stdout): its write errors are reported when written
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".geomtrace-probe-"):
            pass
    except OSError as err:
        raise InvalidInputError(
            f"{flag} {path!r}: cannot write in {str(parent)!r} ({err.strerror or err})"
        ) from None


def _check_output_dir(path: str, flag: str) -> None:
    """Refuse an output directory that is a file or cannot be created, before any work: it is
    created now (with its parents) and a probe file written in it."""
    import tempfile
    from pathlib import Path

    target = Path(path)
    if target.exists() and not target.is_dir():
        raise InvalidInputError(f"{flag} {path!r} exists and is not a directory")
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InvalidInputError(f"{flag} {path!r}: {str(existing)!r} is not a directory")
    try:
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target, prefix=".geomtrace-probe-"):
            pass
    except OSError as err:
        raise InvalidInputError(
            f"{flag} {path!r}: cannot create or write it ({err.strerror or err})"
        ) from None


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
    p = sub.add_parser(
        "inspect",
        help="summarise a trace: tasks, groups, snapshots, mean similarity per group",
        description="Print what a trace holds: its tasks (with ISO 639-3 codes), parameter "
        "groups with their sizes, the number of snapshots and their step range, and per group "
        "the mean pair similarity over the snapshots after step 0 (the number analyze, the "
        "report and the trace summary show) with its 95% bootstrap interval, and the "
        "reliability (signal fraction) of the gradients when the trace has split halves.",
    )
    p.add_argument("run", help="run directory (or its trace.sqlite)")
    _json_argument(p, "the summary")
    p.set_defaults(func=_cmd_inspect)


def _cmd_inspect(args) -> int:
    from analyses import trace_summary, trace_summary_text
    from geomtrace import open_trace

    _check_output_file(args.json, "--json")
    summary = trace_summary(open_trace(args.run))
    if args.json:
        _write_json(summary, args.json)
        return 0
    print(trace_summary_text(summary))
    for warning in summary["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
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
    from analyses import language_families, typological_distances, typology_text

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
    print(typology_text(matrices, families))
    return 0


def _add_analysis_options(p, *, permutations: int) -> None:
    """Options shared by analyze, plot, report and reproduce (one meaning everywhere)."""
    from analyses import MEASURES

    p.add_argument(
        "--permutations", type=int, default=permutations,
        help=f"permutations per test (default {permutations})",
    )  # fmt: skip
    p.add_argument(
        "--bootstrap", type=int, default=1000,
        help="circular block bootstrap replicates over snapshots for every interval (default 1000)",
    )  # fmt: skip
    p.add_argument(
        "--measure", default="raw", choices=MEASURES,
        help="similarity of the headline matrix: raw cosine (the paper's), corrected for "
        "sampling noise (needs a trace with split halves), or centred (the component common to "
        "every task at a snapshot projected out); default raw",
    )  # fmt: skip
    p.add_argument(
        "--metric", default=None,
        help="quality metric of the quality figure and comparisons (default: the first "
        "recorded, e.g. chrf)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of permutations and bootstrap")


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
    p = sub.add_parser(
        "analyze",
        help="run every analysis on a trace, with intervals (similarity, reliability, "
        "clustering, typology, quality, evolution)",
        description="Summarise a trace: gradient similarity per group with bootstrap "
        "intervals and reliability, clustering (vs language families where known), Mantel "
        "correlations with typology per group (step-0 baselines, partial controls for "
        "character/script overlap), similarity vs quality, how similarity evolves and settles, "
        "GradVac targets vs the similarity they track, and every test with its Holm-adjusted "
        "p. Parts a run cannot support (tasks without ISO codes, no quality rows) say why.",
    )
    p.add_argument("run", help="run directory (or its trace.sqlite)")
    p.add_argument(
        "--group",
        default=None,
        help="parameter group for per-task analyses (default: all = whole model)",
    )
    _json_argument(p, "every result")
    _add_analysis_options(p, permutations=9999)
    p.set_defaults(func=_cmd_analyze)


def _cmd_analyze(args) -> int:
    from analyses import analyse_run

    _check_output_file(args.json, "--json")
    result = analyse_run(args.run, group=args.group, **_analysis_kwargs(args))
    if args.json == "-":
        _write_json(result.to_dict(), "-")
        return 0
    print(result.to_text())
    if args.json:
        _write_json(result.to_dict(), args.json)
    return 0


def _add_design_parser(sub) -> None:
    p = sub.add_parser(
        "design",
        help="how many snapshot rows / languages the next run needs, from this run's noise",
        description="From a run's measured noise: the snapshot rows per task for a target "
        "reliability (0.8, 0.9; Spearman-Brown from each group's reliability), and, for each "
        "typology relation given the character-overlap control, the smallest noise-removed "
        "partial |rho| this design detects with the given power, the same at 24 and 48 "
        "languages, and the languages needed for --effect. Projections from one run: they "
        "assume the noise per row and the spread between languages stay as measured.",
    )
    p.add_argument("run", help="run directory (or its trace.sqlite)")
    p.add_argument("--effect", type=float, default=0.3,
                   help="the noise-removed partial |rho| to detect (default 0.3)")  # fmt: skip
    p.add_argument("--power", type=float, default=0.8, help="power (default 0.8)")
    p.add_argument("--permutations", type=int, default=199,
                   help="surrogates for the typology tests it runs (default 199: the design "
                   "reads intervals, not p-values)")  # fmt: skip
    p.set_defaults(func=_cmd_design)


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

    p = sub.add_parser(
        "group",
        help="which tasks should share a model: the best partition by gradient affinity",
        description="Partition the run's tasks into K groups maximising the total "
        "within-group gradient affinity (centred: pairs more alike than the average pair add, "
        "others cost): exact search for up to 12 tasks, a documented heuristic beyond. "
        "Affinity 'cosine' is the step-averaged similarity; 'lookahead' is the first-order "
        "relative loss change lr g_i.g_j / L_j of one step on task i for task j (see "
        "analyses/README.md). Prints the groups, their score, how often each grouped pair "
        "stays together under the snapshot bootstrap, and the baselines: typology, family "
        "tree and random groups of the same sizes.",
    )
    p.add_argument("run", help="run directory (or its trace.sqlite)")
    p.add_argument("--k", type=int, required=True, help="number of groups")
    p.add_argument("--measure", dest="affinity", default="cosine", choices=AFFINITIES,
                   help="affinity: cosine (default) or lookahead")  # fmt: skip
    p.add_argument("--similarity", default="raw", choices=MEASURES,
                   help="similarity measure of the cosine affinity (default raw)")  # fmt: skip
    p.add_argument("--group", default=None, help="parameter group (default: all)")
    p.add_argument("--max-size", type=int, default=None, help="largest group allowed")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate of the lookahead (default: the run's config lr)")  # fmt: skip
    p.add_argument("--distance", default="genetic", choices=DISTANCES,
                   help="typological distance of the typology baseline (default genetic)")  # fmt: skip
    p.add_argument("--bootstrap", type=int, default=200,
                   help="bootstrap replicates for the stability (default 200; 0: none)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of bootstrap and random groups")
    _json_argument(p, "the grouping")
    p.set_defaults(func=_cmd_group)


def _cmd_group(args) -> int:
    from analyses import group_tasks, grouping_text

    _check_output_file(args.json, "--json")
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
    p = sub.add_parser(
        "plot",
        help="draw every figure the runs support (F1-F5, F7 per run; F6 across runs)",
        description="Draw the Gradient Vaccine figures from one or more runs: F7 where the "
        "language structure lives (partial rho per parameter group x typological distance), "
        "F1 clustered similarity heatmap, F2 similarity vs typology, F3 similarity vs quality, "
        "F4 per-group profile with reliability, F5 similarity over steps (per run), and F6 "
        "baseline vs PCGrad vs GradVac with intervals across seeds (needs a sum run and a "
        "pcgrad/gradvac run). Every statistic carries its bootstrap interval. A figure a run "
        "cannot support is not drawn and the reason printed. With several runs, per-run "
        "figures go to OUT/<run>/. See figures/README.md.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (or trace.sqlite files)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--format", default="png", help="comma-separated formats: png,pdf,svg (default png)"
    )
    p.add_argument(
        "--group", default=None, help="parameter group of F1-F3/F5 (default: all = whole model)"
    )
    _add_analysis_options(p, permutations=999)
    p.add_argument("--dpi", type=int, default=None, help="PNG resolution (default 120)")
    p.set_defaults(func=_cmd_plot)


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
    import figures

    if args.dpi is not None and args.dpi < 1:
        raise InvalidInputError(f"--dpi {args.dpi}: give a positive resolution (e.g. 120)")
    formats = figures.parse_formats(args.format)
    _check_output_dir(args.out, "--out")

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
    p = sub.add_parser(
        "report",
        help="one self-contained HTML page: every figure, the numbers behind it, run configs",
        description="Write a single HTML file (figures embedded as base64 images, the tables "
        "of numbers behind each figure with their intervals, every test with its Holm count, "
        "results across seeds, run configs, what each figure corresponds to in the paper and "
        "what differs). It leads with where the structure lives (F7) and has no external "
        "reference: it reads offline.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (or trace.sqlite files)")
    p.add_argument("--out", default="report.html", help="output file (default report.html)")
    p.add_argument(
        "--group", default=None, help="parameter group of F1-F3/F5 (default: all = whole model)"
    )
    p.add_argument(
        "--image-format", default="png", choices=["png", "svg"], help="embedded image format"
    )
    _add_analysis_options(p, permutations=999)
    p.set_defaults(func=_cmd_report)


def _cmd_report(args) -> int:
    import analyses
    import figures

    _check_output_file(args.out, "--out")

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
    p = sub.add_parser(
        "reproduce",
        help="the paper-figure reproduction end to end: trace runs, analyses, figures, report",
        description="Train and trace the embedded recipe with sum and GradVac (and PCGrad with "
        "--mode extended or --quick) over several seeds, run every analysis (with bootstrap "
        "intervals, reliability, the layer x distance table and Holm corrections), compare the "
        "optimizers seed by seed, summarise every statistic across seeds, draw every figure "
        "into OUT/figures and write OUT/report.html and OUT/results.json. The default plan "
        "(sum x 3 seeds, GradVac all_layer x 1; two runs at a time) took 22 minutes on an "
        "idle 2-core CPU (measured: figures/README.md); --mode extended (sum x "
        "3, GradVac x 2, PCGrad x 1) about 30 minutes; --quick (8 languages, one seed each) a "
        "few minutes. Finished runs under OUT/runs are reused on a rerun.",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--quick", action="store_true", help="fewer languages and steps (minutes)")
    p.add_argument(
        "--mode", choices=("default", "extended", "quick"), default=None,
        help="the plan: default (sum x 3, GradVac x 1), extended (sum x 3, GradVac x 2, "
        "PCGrad x 1), quick (= --quick)",
    )  # fmt: skip
    p.add_argument(
        "--seeds", type=int, default=None,
        help="seeds per method (default: the plan's, 3/1 for sum/GradVac, extended 3/2/1 with "
        "PCGrad; quick: 1)",
    )  # fmt: skip
    p.add_argument("--format", default="png", help="figure formats: png,pdf,svg (default png)")
    p.add_argument(
        "--permutations", type=int, default=999, help="permutations per test (default 999)"
    )
    p.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap replicates per interval (1000)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="first training seed and the analyses' seed (0)"
    )
    p.add_argument("--force", action="store_true", help="overwrite existing runs under OUT/runs")
    p.add_argument(
        "--workers", type=int, default=None,
        help="runs trained at once, one process and one torch thread each (default 2)",
    )  # fmt: skip
    p.add_argument(
        "--grouping", action="store_true",
        help="instead: the grouping experiment (one model per group of the gradient, typology "
        "and a random grouping, 2 seeds, vs the all-language model; OUT/grouping.md, "
        "OUT/grouping.json, OUT/figures/grouping.png; ~15 min on 2 idle cores when OUT holds "
        "a reproduction's sum runs, ~20 min without)",
    )  # fmt: skip
    p.add_argument(
        "--k", type=int, default=None, help="with --grouping: the number of groups (default 3)"
    )
    p.set_defaults(func=_cmd_reproduce)


def _cmd_reproduce(args) -> int:
    import figures
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
    _check_output_dir(args.out, "--out")
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


TRACE_DESCRIPTION = """\
Train a model with per-task gradient tracing and write runs/<name>/ (trace.sqlite,
config.toml, model.safetensors).

Without arguments: the embedded experiment. An English<->X parallel corpus built offline from
the gettext catalogs of Django, Wagtail, JupyterLab's language packs, Sphinx, django-allauth
and Django REST framework (16 languages with >= 200 test strings each, 6 scripts, 7
families; --list-languages shows the counts), a 0.7M-parameter byte-level Transformer
translating X->English, a Gram-matrix snapshot every 40 steps (and at step 0, untrained)
taken on a separate 768-row eval-mode batch per language in two halves (so the trace
measures how much of each gradient is signal, ~0.8 for the whole model: --set
snapshot_rows=0 snapshots the 12-row training batches instead, ~96% noise), then chrF (with
a bootstrap interval over each language's test strings) and held-out loss per language on
the test split. About 11-13 minutes on a 2-core CPU; `--preset django24` is the previous
default (Django only, 24 languages); `--preset full --device cuda` is the same experiment at
GPU scale. After the run it prints the summary analyze computes (the same numbers).

Ctrl-C stops after the current step and leaves a valid trace (then evaluates the model).
"""

#: ``geomtrace trace`` flags that set one config key: (flag, config key, type, help)
_TRACE_FLAGS: list[tuple[str, str, type, str]] = [
    ("--direction", "direction", str, "x2en (many-to-one, default) or en2x (one-to-many)"),
    ("--steps", "steps", int, "optimizer steps (default 400)"),
    ("--every", "every", int, "trace every N steps (default 40; step 0 and the last always)"),
    ("--groups", "groups", str, "parameter groups of the trace with method sum: whole_model, "
     "enc_dec, all_layer (default), all_matrix"),
    ("--seed", "seed", int, "seed of the model, dropout and batch sampling (default 0)"),
    ("--device", "device", str, "torch device (default cpu)"),
    ("--threads", "threads", int, "torch CPU threads; 0 = torch's default (default 1)"),
    ("--runs-dir", "out", str, "parent folder of the run directories (default runs; the run "
     "goes to RUNS_DIR/NAME). Unlike reproduce --out and Tracer(out=), which are the output "
     "directory itself; --out is kept as an alias"),
    ("--name", "name", str, "run directory name (default <direction>-<method>-<timestamp>)"),
    ("--recipe", "recipe", str, "module:function returning a geomtrace.recipe.Recipe "
     "(your own model and data)"),
    ("--method", "method", str, "sum (plain training, default), pcgrad or gradvac"),
    ("--granularity", "granularity", str, "parameter groups pcgrad/gradvac act on (and the "
     "trace records): whole_model, enc_dec, all_layer (default), all_matrix"),
    ("--beta", "beta", float, "GradVac's EMA rate (default 0.01)"),
    ("--batch-per-lang", "batch_per_lang", int, "rows per language per step (default 12)"),
    ("--max-bytes", "max_bytes", int, "longest string kept, in UTF-8 bytes (default 40)"),
]  # fmt: skip


def _add_trace_parser(sub) -> None:
    """Precedence of the run's config: the preset (``--preset``, default "default"), then
    ``--config FILE.toml``, then ``--set key=value`` pairs, then the dedicated flags."""
    from geomtrace.recipe.languages import DEFAULT_LANGUAGES

    p = sub.add_parser(
        "trace",
        help="train with per-task gradient tracing (default: the embedded multilingual run)",
        description=TRACE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--langs",
        nargs="+",
        metavar="LANG",
        help="languages (locale codes, e.g. es fr zh_Hans pt-BR; commas also work); "
        f"default: {' '.join(DEFAULT_LANGUAGES)}",
    )
    for flag, key, typ, text in _TRACE_FLAGS:
        # `--out` was the old name of --runs-dir: still accepted, one meaning per name.
        names = (flag, "--out") if flag == "--runs-dir" else (flag,)
        p.add_argument(*names, dest=key, type=typ, default=None, help=text)
    p.add_argument(
        "--probe",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="snapshots from fixed multi-way-parallel probe batches (the same English strings "
        "in every language) instead of the training batches (default: --no-probe)",
    )
    p.add_argument("--config", metavar="FILE.toml", help="config file; flags override it")
    p.add_argument(
        "--preset",
        default="default",
        help="starting config: default (every text domain, 16 languages, 768-row snapshots "
        "every 40 steps), quick (8 languages, Django only, minutes), django24 (the default "
        "before issue 21: Django only, 24 languages, 96-row snapshots every 20 steps), full "
        "(GPU scale)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other config key, e.g. --set lr=0.001 --set d_model=256 (repeatable)",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing run directory")
    p.add_argument(
        "--list-languages",
        action="store_true",
        help="print the language table with each language's train/test pairs per corpus source "
        "(at --max-bytes, for --set domains=[...]; only --langs when given) and exit",
    )
    p.set_defaults(func=_cmd_trace)


def _parse_value(raw: str):
    """A ``--set`` value as TOML (numbers, booleans, lists), else the bare string."""
    import tomllib

    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # a bare string


def resolve_config(args: argparse.Namespace):
    """The run's config from preset, file, --set and flags (in that order of precedence)."""
    from geomtrace.recipe.config import RecipeConfig, preset

    config = preset(args.preset)
    if args.config:
        config = RecipeConfig.from_toml(args.config, base=config)
    values = {}
    for item in args.overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise InvalidInputError(f"--set {item!r}: expected KEY=VALUE")
        values[key.strip()] = _parse_value(raw.strip())
    for _, key, _, _ in _TRACE_FLAGS:
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    if args.probe is not None:
        values["probe"] = args.probe
    if args.langs:
        values["langs"] = [c for item in args.langs for c in item.replace(",", " ").split()]
    return RecipeConfig.from_dict(values, base=config).validate()


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
    _add_inspect_parser(sub)
    _add_typology_parser(sub)
    _add_analyze_parser(sub)
    _add_design_parser(sub)
    _add_group_parser(sub)
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
    except BrokenPipeError:
        # `geomtrace inspect --json | head`: the reader left; exit quietly like other tools.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
