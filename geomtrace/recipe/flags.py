"""The recipe's config on the command line (``geomtrace trace``): its help text, the flags that
set one config key, ``--set KEY=VALUE`` values, and the order in which they apply.

Precedence, lowest first: the preset (``--preset``, default "default"), ``--config
FILE.toml``, ``--set`` pairs, then the dedicated flags (:func:`resolve`). The command itself
is defined in cli.py; what it documents and resolves is the recipe's, so it lives here, beside
the config's defaults that the help text quotes.
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Iterable, Mapping
from typing import Any

from geomtrace import InvalidInputError
from geomtrace.recipe.config import RecipeConfig, preset

#: the description of ``geomtrace trace --help``
DESCRIPTION = """\
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
FLAGS: list[tuple[str, str, type, str]] = [
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


def arguments() -> list[tuple[str, dict[str, Any]]]:
    """The arguments of ``geomtrace trace`` in --help order, each a (flags, ``add_argument``
    keywords) pair; several flags separated by spaces."""
    from geomtrace.recipe.languages import DEFAULT_LANGUAGES

    # `--out` was the old name of --runs-dir: still accepted, one meaning per name.
    flags = [
        (f"{flag} --out" if flag == "--runs-dir" else flag,
         dict(dest=key, type=typ, default=None, help=text))
        for flag, key, typ, text in FLAGS
    ]  # fmt: skip
    return [
        ("--langs", dict(nargs="+", metavar="LANG", help="languages (locale codes, e.g. es fr "
                         "zh_Hans pt-BR; commas also work); default: "
                         f"{' '.join(DEFAULT_LANGUAGES)}")),
        *flags,
        ("--probe", dict(action=argparse.BooleanOptionalAction, default=None,
                         help="snapshots from fixed multi-way-parallel probe batches (the same "
                         "English strings in every language) instead of the training batches "
                         "(default: --no-probe)")),
        ("--config", dict(metavar="FILE.toml", help="config file; flags override it")),
        ("--preset", dict(default="default", help="starting config: default (every text "
                          "domain, 16 languages, 768-row snapshots every 40 steps), quick (8 "
                          "languages, Django only, minutes), django24 (the default before "
                          "issue 21: Django only, 24 languages, 96-row snapshots every 20 "
                          "steps), full (GPU scale)")),
        ("--set", dict(dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="any other config key, e.g. --set lr=0.001 --set d_model=256 "
                       "(repeatable)")),
        ("--force", dict(action="store_true", help="overwrite an existing run directory")),
        ("--list-languages", dict(action="store_true", help="print the language table with "
                                  "each language's train/test pairs per corpus source (at "
                                  "--max-bytes, for --set domains=[...]; only --langs when "
                                  "given) and exit")),
    ]  # fmt: skip


def parse_value(raw: str) -> Any:
    """A ``--set`` value as TOML (numbers, booleans, lists), else the bare string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # a bare string


def resolve(
    preset_name: str = "default",
    config_file: str | None = None,
    overrides: Iterable[str] = (),
    values: Mapping[str, Any] | None = None,
) -> RecipeConfig:
    """The run's config: the preset ``preset_name``, then ``config_file`` (TOML), then the
    ``overrides`` ("KEY=VALUE" strings, values parsed by :func:`parse_value`), then ``values``
    (the dedicated flags' {config key: value}); validated."""
    config = preset(preset_name)
    if config_file:
        config = RecipeConfig.from_toml(config_file, base=config)
    layered = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise InvalidInputError(f"--set {item!r}: expected KEY=VALUE")
        layered[key.strip()] = parse_value(raw.strip())
    layered |= dict(values or {})
    return RecipeConfig.from_dict(layered, base=config).validate()
