"""Arguments and body of ``geomtrace trace`` (cli.py registers them; the CLI owns the terminal).

Precedence: the preset (``--preset``, default "default"), then ``--config FILE.toml``, then
``--set key=value`` pairs, then the dedicated flags.
"""

from __future__ import annotations

import argparse
import sys
import time

from geomtrace import InvalidInputError
from geomtrace.recipe.languages import DEFAULT_LANGUAGES

DESCRIPTION = """\
Train a model with per-task gradient tracing and write runs/<name>/ (trace.sqlite,
config.toml, model.safetensors).

Without arguments: the embedded experiment. An English<->X parallel corpus built offline from
the gettext catalogs of Django, Wagtail, JupyterLab's language packs, Sphinx, django-allauth
and Django REST framework (16 languages with >= 200 test strings each, 6 scripts, 7
families; --list-languages shows the counts), a 0.7M-parameter byte-level Transformer
translating X->English, a Gram-matrix snapshot every 40 steps (and at step 0, untrained)
taken on a separate 640-row eval-mode batch per language in two halves (so the trace
measures how much of each gradient is signal, ~0.8 for the whole model: --set
snapshot_rows=0 snapshots the 12-row training batches instead, ~96% noise), then chrF (with
a bootstrap interval over each language's test strings) and held-out loss per language on
the test split. About 11-13 minutes on a 2-core CPU; `--preset django24` is the previous
default (Django only, 24 languages); `--preset full --device cuda` is the same experiment at
GPU scale. After the run it prints the summary analyze computes (the same numbers).

Ctrl-C stops after the current step and leaves a valid trace (then evaluates the model).
"""

# (flag, config key, type, help)
_FLAGS: list[tuple[str, str, type, str]] = [
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--langs",
        nargs="+",
        metavar="LANG",
        help="languages (locale codes, e.g. es fr zh_Hans pt-BR; commas also work); "
        f"default: {' '.join(DEFAULT_LANGUAGES)}",
    )
    for flag, key, typ, text in _FLAGS:
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
        help="starting config: default (every text domain, 16 languages, 640-row snapshots "
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


def _parse_value(raw: str):
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
    for _, key, _, _ in _FLAGS:
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    if args.probe is not None:
        values["probe"] = args.probe
    if args.langs:
        values["langs"] = [c for item in args.langs for c in item.replace(",", " ").split()]
    return RecipeConfig.from_dict(values, base=config).validate()


def language_table(config=None, languages=None) -> str:
    """The language table with each language's train/test pairs per corpus source.

    Counts are those a run would use: pairs of at most ``config.max_bytes`` bytes (both sides),
    split by ``config.test_fraction``/``dev_fraction``. ``run`` is the run's ``domains``;
    each source column is what that source adds when every installed source is read, in the
    order of the columns (an English string counts for the first source that has it);
    a source whose package is missing is left out with a note. ``languages``: the rows to
    show (default: every locale of the table).
    """
    from geomtrace.recipe.config import RecipeConfig
    from geomtrace.recipe.corpus import DOMAINS, TEXT_DOMAINS, build_corpus, domain_catalogs
    from geomtrace.recipe.languages import LANGUAGES, NOT_IN_URIEL

    config = config or RecipeConfig()
    langs = list(LANGUAGES) if languages is None else list(languages)
    fractions = {"dev_fraction": config.dev_fraction, "test_fraction": config.test_fraction}
    wanted = list(dict.fromkeys([*TEXT_DOMAINS, *config.domains]))
    sources, missing = [], []
    for d in wanted:
        try:
            domain_catalogs(d, "fr")  # raises when the domain's package is not installed
            sources.append(d)
        except InvalidInputError:
            missing.append(d)
    run_domains = [d for d in DOMAINS if d in config.domains and d in sources]
    run_domains = [d for d in config.domains if d in run_domains]
    run = build_corpus(langs, run_domains, **fractions, allow_empty=True).counts(config.max_bytes)
    every = build_corpus(langs, sources, **fractions, allow_empty=True)
    by_source = every.domain_counts(config.max_bytes)
    total = every.counts(config.max_bytes)

    def cell(c) -> str:
        return f"{c['train']}/{c['test']}" if c and c["total"] else "-"

    width = {d: max(len(d), 9) for d in sources}
    lines = [
        f"train/test pairs of at most {config.max_bytes} bytes (test fraction "
        f"{config.test_fraction}); run = the run's domains ({', '.join(config.domains)}), "
        "then what each source adds in this order:",
        f"{'locale':<8} {'iso':<4} {'script':<5} {'family':<14} {'run':>9} {'all':>9} "
        + " ".join(f"{d:>{width[d]}}" for d in sources)
        + "  name / note",
    ]
    for row in (LANGUAGES[lg] for lg in langs):
        flag = " [not in URIEL]" if row.iso639_3 in NOT_IN_URIEL else ""
        note = f" ({row.note})" if row.note else ""
        loc = row.locale
        lines.append(
            f"{loc:<8} {row.iso639_3:<4} {row.script:<5} {row.family:<14} "
            f"{cell(run[loc]):>9} {cell(total[loc]):>9} "
            + " ".join(f"{cell(by_source[loc].get(d)):>{width[d]}}" for d in sources)
            + f"  {row.name}{note}{flag}"
        )
    if missing:
        lines.append(
            f"not installed: {', '.join(missing)} (pip install 'geomtrace[corpus]'; "
            "scripts/setup.sh installs it)"
        )
    return "\n".join(lines)


def command(args: argparse.Namespace):
    """Run ``geomtrace trace``; returns the run directory (None for --list-languages).

    The summary of the finished run is printed by the command line (cli.py), from analyses:
    geomtrace/ defines no statistic of its own.
    """
    config = resolve_config(args)
    if args.list_languages:
        from geomtrace.recipe.embedded import resolve_languages

        # every locale of the table, or only those of --langs when given
        print(language_table(config, resolve_languages(config.langs) if args.langs else None))
        return None

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
    return run_dir


#: Public names (``geomtrace.recipe``) of the ``trace`` command's parts.
TRACE_DESCRIPTION = DESCRIPTION
add_trace_arguments = add_arguments
trace_command = command
