"""The recipe's configuration: one flat dataclass, presets, and TOML in and out.

Flat on purpose: every field is one ``--flag`` on the command line and one ``key = value`` line
in the TOML file, and flags override the file. ``RecipeConfig.from_toml`` reads with the standard
``tomllib``; :func:`to_toml` is a tiny writer for the value types used here (str, int, float,
bool, list of str).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geomtrace import InvalidInputError
from geomtrace.recipe.languages import DEFAULT_LANGUAGES, DJANGO_LANGUAGES, FULL_LANGUAGES

log = logging.getLogger(__name__)

DIRECTIONS = ("x2en", "en2x")
METHODS = ("sum", "pcgrad", "gradvac")
BUCKETS = ("independent", "shared", "none")
#: the largest config.toml read (a recipe config is a few hundred bytes)
MAX_CONFIG_BYTES = 1 << 20


@dataclass
class RecipeConfig:
    """Everything a run depends on (stored as ``config.toml`` in the run and in the trace)."""

    # run
    name: str = ""  # run directory name under ``out``; "" = "<direction>-<method>-<timestamp>"
    out: str = "runs"
    recipe: str = ""  # "module:function" for a user recipe; "" = the embedded corpus + model
    seed: int = 0
    device: str = "cpu"
    # torch.set_num_threads; 0 = torch's default. 1 by default: with 2 threads on 2 cores that
    # other jobs share, each step waits for the descheduled thread (measured 4-5x slower).
    threads: int = 1
    # data
    langs: list[str] = field(default_factory=lambda: list(DEFAULT_LANGUAGES))
    direction: str = "x2en"
    # every text domain (geomtrace/recipe/README.md, "Sources"): ~1,700-4,000 train pairs per
    # default language, >= 200 test strings each
    domains: list[str] = field(
        default_factory=lambda: ["django", "wagtail", "jupyterlab", "sphinx", "allauth", "drf"]
    )
    max_bytes: int = 40  # pairs longer than this (UTF-8 bytes, either side) are left out
    batch_per_lang: int = 12  # rows per language per step (one sub-batch per language)
    sampling_temperature: float = 0.0  # 0: equal rows per language; T > 0: rows ∝ n_l^(1/T)
    # length windows of the sampler (embedded.sample_indices): "independent" (each half of each
    # language's sub-batch from its own window), "shared" (the pre-issue-11 sampler: one window
    # quantile per step for all languages, a length component common to every task), "none".
    # Old configs' ``bucket = true`` / ``false`` load as "shared" / "none".
    bucket: str = "independent"
    dev_fraction: float = 0.05
    test_fraction: float = 0.10
    # model
    d_model: int = 128
    nhead: int = 4
    enc_layers: int = 2
    dec_layers: int = 2
    d_ff: int = 256  # 512 gave +0.7 chrF for ~25% more time: not worth it at this budget
    dropout: float = 0.1
    # optimisation
    steps: int = 400  # 303 s end to end on an idle 2-core CPU (chrF 11.3); 320 steps gave 9.8
    lr: float = 3e-3
    warmup: int = 40
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    clip_norm: float = 1.0
    method: str = "sum"  # sum (plain Tracer) | pcgrad | gradvac (MultiTask)
    granularity: str = "all_layer"  # parameter groups of pcgrad/gradvac (and of their trace)
    beta: float = 0.01  # GradVac's EMA rate
    # tracing
    every: int = 40  # 11 snapshots (step 0 and 10 after it) of snapshot_rows fresh rows each
    groups: str = "all_layer"
    probe: bool = False
    probe_size: int = 16
    # split-half capture: each traced sub-batch's rows in two halves a, b (a + b = the
    # full-batch gradient), so the trace carries each task's reliability (needs the Tracer's
    # ``halves``; ``.grad`` and the update are unchanged)
    halves: bool = True
    # steps per snapshot: a snapshot sums each task's gradients over steps t..t+window-1 (with
    # halves: even/odd steps of the window are the halves); 1 = the step's own batch
    window: int = 1
    # rows per language of a separate snapshot batch on traced steps: fresh uniform rows, model
    # in eval mode (no dropout noise), halves = its two row halves, not used for the update
    # (benchmarks/snapshot_design.py: whole-model reliability 0.42 at 96 rows vs 0.03 for the
    # 12-row training batch; on the default corpus, issue 21, 0.78 at 480 rows and 0.79-0.85
    # over three seeds at 640; 768 is what Spearman-Brown asks of the weakest seed for 0.8
    # with a margin, measured 0.81-0.87); 0 = snapshot the training batch
    snapshot_rows: int = 768
    # evaluation
    eval_batch: int = 512

    def __post_init__(self) -> None:
        if isinstance(self.bucket, bool):  # configs written before bucket took a mode
            mapped = "shared" if self.bucket else "none"
            log.info(
                "config bucket=%s is the old spelling: read as bucket=%r (the sampler of runs "
                "before issue 11; the default is now 'independent')",
                str(self.bucket).lower(), mapped,
            )  # fmt: skip
            self.bucket = mapped

    def validate(self) -> RecipeConfig:
        """Check values a user can get wrong; raise :class:`InvalidInputError` naming them.

        Called before any work (``run``, the CLI), so a bad value costs nothing.
        """
        _check_field_types(self)
        # counts first: `--every 0` is about `every`, not about the windows that depend on it
        for key in ("steps", "every", "batch_per_lang", "d_model", "nhead", "max_bytes"):
            if getattr(self, key) < 1:
                raise InvalidInputError(f"{key}={getattr(self, key)}: must be >= 1")
        _check_ranges(self)
        check_snapshot_fields(self)
        if self.direction not in DIRECTIONS:
            raise InvalidInputError(
                f"direction={self.direction!r}; allowed: {', '.join(DIRECTIONS)}"
            )
        if self.method not in METHODS:
            raise InvalidInputError(f"method={self.method!r}; allowed: {', '.join(METHODS)}")
        if self.d_model % self.nhead:
            raise InvalidInputError(
                f"d_model={self.d_model} must be a multiple of nhead={self.nhead}"
            )
        if not self.langs and not self.recipe:
            raise InvalidInputError("langs is empty: give at least one language")
        if not self.recipe:
            from geomtrace.recipe.corpus import check_domains

            check_domains(self.domains)
        if not (0 < self.test_fraction and 0 <= self.dev_fraction) or (
            self.test_fraction + self.dev_fraction >= 1
        ):
            raise InvalidInputError(
                f"test_fraction={self.test_fraction}, dev_fraction={self.dev_fraction}: "
                "need 0 < test, 0 <= dev, test + dev < 1"
            )
        if self.method != "sum" and self.probe:
            raise InvalidInputError(
                f"--probe needs method 'sum': with {self.method!r} the trace records the Gram "
                "matrices the optimizer used, so probe batches would measure something else"
            )
        if self.sampling_temperature < 0 or not math.isfinite(self.sampling_temperature):
            raise InvalidInputError(
                f"sampling_temperature={self.sampling_temperature}: must be >= 0 (0 = equal rows)"
            )
        check_machine(self)
        return self

    @property
    def trace_groups(self) -> str:
        """The groups of the trace: ``groups`` with method sum, ``granularity`` otherwise
        (the optimizer's Gram matrices are the ones recorded)."""
        return self.groups if self.method == "sum" else self.granularity

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], base: RecipeConfig | None = None) -> RecipeConfig:
        """A config from ``values`` over ``base`` (default: the defaults); unknown keys are
        an error naming them."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise InvalidInputError(
                f"unknown config key(s) {', '.join(unknown)}; known: {', '.join(known)}"
            )
        merged = (base or cls()).to_dict()
        for key, value in values.items():
            default = merged[key]
            if isinstance(default, bool) and not isinstance(value, bool):
                raise InvalidInputError(f"config {key}={value!r}: expected true or false")
            if (
                isinstance(default, float)
                and isinstance(value, int)
                and not isinstance(value, bool)
            ):
                value = float(value)
            if isinstance(default, list) and isinstance(value, str):
                value = value.replace(",", " ").split()
            merged[key] = list(value) if isinstance(value, list | tuple) else value
        return cls(**merged)

    @classmethod
    def from_toml(cls, path: str | os.PathLike, base: RecipeConfig | None = None) -> RecipeConfig:
        """Read a config file; anything but a readable UTF-8 TOML file of at most
        ``MAX_CONFIG_BYTES`` (a binary file, a directory, nesting deeper than the TOML parser
        can follow) is refused with :class:`InvalidInputError` naming the file."""
        path = Path(path)
        name = repr(str(path))
        try:
            if path.is_dir():
                raise InvalidInputError(f"config file {name} is a directory, not a TOML file")
            size = path.stat().st_size
            if size > MAX_CONFIG_BYTES:
                raise InvalidInputError(
                    f"config file {name} is {size / 2**20:.1f} MiB; a recipe config is a few "
                    f"lines (at most {MAX_CONFIG_BYTES // 2**20} MiB)"
                )
            with path.open("rb") as f:
                data = f.read(MAX_CONFIG_BYTES + 1)
        except FileNotFoundError:
            raise InvalidInputError(f"config file {name} does not exist") from None
        except OSError as err:
            raise InvalidInputError(
                f"cannot read config file {name}: {err.strerror or err}"
            ) from None
        try:
            values = tomllib.loads(data.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise InvalidInputError(
                f"config file {name} is not UTF-8 text (byte {err.start} is {data[err.start]:#04x}): "
                "a config.toml is a text file"
            ) from None
        except tomllib.TOMLDecodeError as err:
            raise InvalidInputError(f"config file {name} is not valid TOML: {err}") from None
        except RecursionError:
            raise InvalidInputError(
                f"config file {name} is nested too deeply for the TOML parser; a recipe config "
                "is flat (key = value lines)"
            ) from None
        return cls.from_dict(values, base)

    def write_toml(self, path: str | os.PathLike) -> None:
        Path(path).write_text(to_toml(self.to_dict()), encoding="utf-8")


def check_snapshot_fields(config: RecipeConfig) -> RecipeConfig:
    """Check the sampler and snapshot-design fields (``bucket``, ``halves``, ``window``,
    ``snapshot_rows``);
    raise :class:`InvalidInputError` naming them. ``RecipeConfig.validate`` calls it; the
    training loop calls it too (a config built by hand and never validated)."""
    if config.bucket not in BUCKETS:
        raise InvalidInputError(f"bucket={config.bucket!r}; allowed: {', '.join(BUCKETS)}")
    if not isinstance(config.halves, bool):
        raise InvalidInputError(f"halves={config.halves!r}: expected true or false")
    if isinstance(config.window, bool) or not isinstance(config.window, int) or config.window < 1:
        raise InvalidInputError(f"window={config.window!r}: must be an integer >= 1")
    rows = config.snapshot_rows
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0 or rows == 1:
        raise InvalidInputError(
            f"snapshot_rows={rows!r}: 0 (the training batch) or >= 2 rows per language"
        )
    if rows and config.window > 1:
        raise InvalidInputError(
            f"snapshot_rows={rows} with window={config.window}: a separate snapshot batch is "
            "taken at one step; set window=1 or snapshot_rows=0"
        )
    if config.window > config.every:
        raise InvalidInputError(
            f"window={config.window} > every={config.every}: windows of consecutive snapshots "
            "would overlap (use window <= every)"
        )
    return config


#: Named starting points; ``quick`` is what ``geomtrace reproduce`` uses for a fast check,
#: ``full`` is the same experiment at GPU scale (every language with >= 200 test strings at
#: 128 bytes, a 44M-parameter model).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "quick": {
        "langs": ["es", "fr", "de", "ru", "fi", "tr", "ar", "hi"],
        "domains": ["django"],
        "steps": 120,
        "every": 10,
        "batch_per_lang": 8,
        "d_model": 96,
        "d_ff": 384,
        "snapshot_rows": 48,  # 13 snapshots of 8 languages: 96 rows would double the run
    },
    # The default before issue 21: Django catalogs only, 24 languages (kk, hi, mr with 30-32
    # test strings), 96 snapshot rows every 20 steps (whole-model reliability ~0.42).
    "django24": {
        "langs": list(DJANGO_LANGUAGES),
        "domains": ["django"],
        "every": 20,
        "snapshot_rows": 96,
    },
    # Sized for the data, not for the GPU (geomtrace/recipe/README.md, "The GPU preset"): the
    # 34 languages with >= 200 test strings at 128 bytes, ~2,800 training pairs each, so 3,000
    # steps of 32 rows are ~35 epochs per language (20,000 steps of 64 were ~1,270); computed
    # ~15-30 minutes on one H100/H200-class GPU (not measured: no GPU was lent to this work).
    "full": {
        "langs": list(FULL_LANGUAGES),
        "domains": ["django", "wagtail", "jupyterlab", "sphinx", "allauth", "drf"],
        "device": "cuda",
        "threads": 0,
        "max_bytes": 128,
        "batch_per_lang": 32,
        "d_model": 512,
        "nhead": 8,
        "enc_layers": 6,
        "dec_layers": 6,
        "d_ff": 2048,
        "steps": 3000,
        "lr": 7e-4,
        "warmup": 300,
        "every": 100,
        "eval_batch": 1024,
    },
}


def preset(name: str) -> RecipeConfig:
    """The config of a named preset (see :data:`PRESETS`)."""
    if name not in PRESETS:
        raise InvalidInputError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    return RecipeConfig.from_dict(dict(PRESETS[name]))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInputError(f"cannot write non-finite float {value} to TOML")
        return repr(value)
    if isinstance(value, str):
        # json-style escaping is valid TOML basic-string escaping for these characters
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise InvalidInputError(f"cannot write {type(value).__name__} value {value!r} to TOML")


def to_toml(values: Mapping[str, Any]) -> str:
    """Flat ``key = value`` TOML (str, int, float, bool and lists of them)."""
    return "".join(f"{key} = {_toml_value(v)}\n" for key, v in values.items())


def _type_matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits the annotation ``hint`` (bool is not an int; an int is a float)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, list) and all(_type_matches(v, args[0]) for v in value)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # an annotation this check does not know: left to the field's own check


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _check_field_types(config: RecipeConfig) -> None:
    """Every field against its annotation, so ``--set lr=abc`` fails here, naming the field,
    the value and the expected type, not as a TypeError deep in training."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        hint = hints.get(f.name, Any)
        if not _type_matches(value, hint):
            expected = _TYPE_NAMES.get(hint)
            if expected is None:
                expected = "a list of strings" if typing.get_origin(hint) is list else str(hint)
            raise InvalidInputError(
                f"config {f.name}={value!r}: expected {expected}, got {type(value).__name__}"
            )


#: (field, low, low inclusive, high, high inclusive, note); checked only where the field exists
_RANGES: list[tuple[str, float, bool, float, bool, str]] = [
    ("lr", 0.0, False, math.inf, False, "> 0"),
    ("dropout", 0.0, True, 1.0, False, "in [0, 1)"),
    ("label_smoothing", 0.0, True, 1.0, False, "in [0, 1)"),
    ("weight_decay", 0.0, True, math.inf, False, ">= 0"),
    ("clip_norm", 0.0, True, math.inf, False, ">= 0 (0 = no clipping)"),
    ("beta", 0.0, False, 1.0, True, "in (0, 1] (beta 0 is --method pcgrad)"),
    ("eval_batch", 1, True, math.inf, False, ">= 1"),
    ("probe_size", 1, True, math.inf, False, ">= 1"),
    ("d_ff", 1, True, math.inf, False, ">= 1"),
    ("warmup", 0, True, math.inf, False, ">= 0"),
    ("threads", 0, True, math.inf, False, ">= 0 (0 = torch's default)"),
]
_DEVICE = re.compile(r"(cpu|cuda|mps)(:\d+)?")
_DEVICE_FORMS = "cpu, cuda, cuda:N (N = GPU index), mps"


def _check_ranges(config: RecipeConfig) -> None:
    for key, low, low_ok, high, high_ok, note in _RANGES:
        if not hasattr(config, key):
            continue
        value = getattr(config, key)
        inside = math.isfinite(value) and (value >= low if low_ok else value > low)
        inside = inside and (value <= high if high_ok else value < high)
        if not inside:
            finite = "" if math.isfinite(value) else "a finite number "
            raise InvalidInputError(f"{key}={value!r}: must be {finite}{note}")
    _check_device(config.device)
    _check_name(config.name, config.out)


def _check_device(device: str) -> None:
    """A device string torch understands and a device this machine has."""
    match = _DEVICE.fullmatch(device)
    if match is None:
        raise InvalidInputError(f"device={device!r}; allowed: {_DEVICE_FORMS}")
    kind, index = match.group(1), match.group(2)
    if kind == "cpu":
        if index:
            raise InvalidInputError(f"device={device!r}; allowed: {_DEVICE_FORMS}")
        return
    import torch

    if kind == "cuda":
        if not torch.cuda.is_available():
            raise InvalidInputError(
                f"device={device!r}, but CUDA is not available here (torch "
                f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); use "
                "--device cpu"
            )
        count = torch.cuda.device_count()
        if index and int(index[1:]) >= count:
            raise InvalidInputError(
                f"device={device!r}: this machine has {count} CUDA device(s), cuda:0 to "
                f"cuda:{count - 1}"
            )
    elif kind == "mps":
        if index or not torch.backends.mps.is_available():
            raise InvalidInputError(
                f"device={device!r}: MPS is not available here; use --device cpu"
            )


def _check_name(name: str, out: str) -> None:
    """A run name is a path inside ``out``: not absolute, and no ``..`` climbing out of it."""
    if not name:
        return
    if Path(name).is_absolute():
        raise InvalidInputError(
            f"name={name!r} is an absolute path: the run directory must be inside --out "
            f"({out!r}); give a relative name, or set --out"
        )
    base = Path(out).resolve()
    target = (base / name).resolve()
    if target == base or base not in target.parents:
        raise InvalidInputError(
            f"name={name!r} leads to {str(target)!r}, outside --out {str(base)!r}: the run "
            "directory must be inside --out (no '..' in --name)"
        )


#: Seeds go to numpy (``default_rng``: >= 0) and torch (``manual_seed``: < 2**64), offset by
#: small counts (a run's snapshot stream, a reproduction's seeds): 32 bits fit both with room.
MAX_SEED = 2**32 - 1


def _physical_memory() -> int | None:
    """Bytes of RAM of this machine (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
        return None


def _device_memory(device: str) -> tuple[int | None, str]:
    """(bytes, description) of the memory a run on ``device`` allocates from."""
    if device.startswith("cuda"):
        import torch

        index = int(device.partition(":")[2] or 0)
        props = torch.cuda.get_device_properties(index)
        return int(props.total_memory), f"{props.name} ({device})"
    return _physical_memory(), "RAM"


def memory_estimate(config: RecipeConfig) -> int:
    """Bytes the embedded recipe needs at least (a lower bound, in exact integers).

    P parameters of the byte-level Transformer (vocabulary V = 259 + K, positions
    L = max_bytes + 2, width d, feed-forward f, E + D layers: V d + L d + E (4 d^2 + 2 d f) +
    D (8 d^2 + 2 d f) + V d) held as parameter, gradient, two AdamW moments and K task
    gradient copies; plus activations at the shortest possible rows (T = 3 tokens: a tag,
    one byte, EOS; real rows are longer): for the backward of the largest training batch at
    once (the K sub-batches of an untraced step, or a snapshot batch) each layer's input,
    attention output and feed-forward state, T (2 d + f) per row and layer, and T V logits;
    for an evaluation batch one layer's T (d + f) and the logits. float32: 4 bytes each.
    Everything left out (attention maps, longer rows, allocator slack) comes on top, so a
    config this bound refuses cannot run.
    """
    K = max(1, len(config.langs))
    d, f = config.d_model, config.d_ff
    L, V, T = config.max_bytes + 2, 259 + K, 3
    layers = config.enc_layers + config.dec_layers
    params = 2 * V * d + L * d + config.enc_layers * (4 * d * d + 2 * d * f)
    params += config.dec_layers * (8 * d * d + 2 * d * f)
    train_rows = max(config.batch_per_lang * K, config.snapshot_rows)
    train = train_rows * T * (layers * (2 * d + f) + V)
    evaluation = config.eval_batch * T * (d + f + V)
    return 4 * (params * (4 + K) + max(train, evaluation))


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n < 2**60 else f"about 2^{n.bit_length() - 1} bytes"


def check_machine(config: RecipeConfig) -> RecipeConfig:
    """Bound what is configurable by what this machine can do, before any allocation.

    Integers fit 64 bits (torch and numpy take no more); ``seed`` in [0, :data:`MAX_SEED`];
    ``threads`` at most the CPUs of this machine; the embedded recipe's model and batches
    (:func:`memory_estimate`) within the memory of the device they run on. A user recipe
    (``recipe = "module:function"``) sizes its own model: only seed and threads apply.
    """
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
            raise InvalidInputError(
                f"config {f.name}={value}: larger than a 64-bit integer (torch and numpy take "
                "no more)"
            )
    if not 0 <= config.seed <= MAX_SEED:
        raise InvalidInputError(f"seed={config.seed}: give a seed from 0 to {MAX_SEED}")
    cpus = os.cpu_count() or 1
    if config.threads > cpus:
        raise InvalidInputError(
            f"threads={config.threads}: this machine has {cpus} CPU(s); give 0 (torch's "
            f"default) to {cpus}"
        )
    if config.recipe:
        return config
    need = memory_estimate(config)
    have, where = _device_memory(config.device)
    if have is not None and need > have:
        raise InvalidInputError(
            f"config d_model={config.d_model}, d_ff={config.d_ff}, layers "
            f"{config.enc_layers}+{config.dec_layers}, batch_per_lang={config.batch_per_lang} x "
            f"{len(config.langs)} languages, snapshot_rows={config.snapshot_rows}, "
            f"eval_batch={config.eval_batch}: the model and its batches need at least "
            f"{_gib(need)} of memory, and this machine has {_gib(have)} of {where}; make them "
            "smaller"
        )
    return config
