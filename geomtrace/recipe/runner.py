"""``run(config) -> run directory``: the Python entry point behind ``geomtrace trace``.

A run directory holds ``trace.sqlite`` (the trace), ``config.toml`` (the resolved config: rerun
with ``geomtrace trace --config runs/<name>/config.toml``) and ``model.safetensors`` (the final
weights; :func:`load_model` rebuilds the embedded model from the two files).

One run owns its directory: the directory's lock (:class:`geomtrace.RunLock`) is held
from before the first file is written until the model is saved, so a second run on the same
directory (even with ``--force``) is refused while the first is alive, and the config, trace
and model in a directory always come from one run (config and model are written to a
temporary file and renamed into place). See ``docs/reliability.md``.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
import os
import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from geomtrace import LOCK_FILENAME, InvalidInputError, RunLock, StorageError, is_disk_full
from geomtrace.recipe.config import RecipeConfig, preset, to_toml

log = logging.getLogger(__name__)

RUN_FILES = ("trace.sqlite", "config.toml", "model.safetensors")


def run_directory(config: RecipeConfig) -> Path:
    """``out/name``; an empty name becomes ``<direction>-<method>-<UTC timestamp>-<6 hex>``.

    The random suffix keeps runs launched in the same second apart (the timestamp alone
    collided); it is not part of any experiment, so it does not come from the run's seed.
    """
    name = config.name or (
        f"{config.direction}-{config.method}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
        f"-{secrets.token_hex(3)}"
    )
    return Path(config.out) / name


def check_run_directory(run_dir: Path, force: bool) -> None:
    """Refuse to overwrite an existing, non-empty run directory unless ``force``."""
    if run_dir.exists() and not run_dir.is_dir():
        raise InvalidInputError(f"run directory {str(run_dir)!r} exists and is not a directory")
    if run_dir.is_dir() and not force and any(p.name != LOCK_FILENAME for p in run_dir.iterdir()):
        raise InvalidInputError(
            f"run directory {str(run_dir)!r} already exists; pass --force to overwrite it "
            "or choose another --name/--out"
        )


def check_output_directory(out: str | os.PathLike) -> None:
    """Refuse an ``--out`` that cannot hold run directories, before any work is done.

    The nearest existing folder of ``out`` must be a directory we may write to (a read-only
    mount is refused even for root, whom permissions do not stop).
    """
    path = Path(out)
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise InvalidInputError(
            f"--out {str(out)!r}: {str(existing)!r} exists and is not a directory"
        )
    try:
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        read_only = False
    if read_only or not os.access(existing, os.W_OK | os.X_OK):
        why = "a read-only file system" if read_only else "not writable (permission denied)"
        raise InvalidInputError(f"--out {str(out)!r}: {str(existing)!r} is {why}")


def load_recipe_function(spec: str) -> Callable[[RecipeConfig], Any]:
    """``"package.module:function"`` -> the function, checked before anything calls it.

    A recipe is a Python function of the user's own: it takes the run's :class:`RecipeConfig`
    (one positional argument; an annotation, if any, must be ``RecipeConfig``) and returns a
    :class:`~geomtrace.recipe.Recipe` (a return annotation, if any, must say so). Built-ins,
    classes and other callables, and functions of the Python standard library (``os:system``
    would run the config as a shell command) are refused without being called; the result
    is checked by :func:`run` before anything is trained.
    """
    import sys

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise InvalidInputError(f"--recipe {spec!r}: expected 'module:function'")
    top = module_name.split(".")[0]
    if top in sys.stdlib_module_names or top == "builtins":
        raise InvalidInputError(
            f"--recipe {spec!r}: {module_name} is part of the Python standard library (a "
            "built-in or library function, not a recipe); give a function of your own that "
            "takes the run's RecipeConfig and returns a geomtrace.recipe.Recipe"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise InvalidInputError(
            f"--recipe {spec!r}: cannot import {module_name!r} ({err})"
        ) from None
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise InvalidInputError(f"--recipe {spec!r}: {module_name} has no function {attr!r}")
    what = f"--recipe {spec!r}: {module_name}.{attr}"
    if not (inspect.isfunction(fn) or inspect.ismethod(fn)):
        kind = "a built-in" if inspect.isbuiltin(fn) else f"a {type(fn).__name__}"
        raise InvalidInputError(
            f"{what} is {kind}, not a function: a recipe is a Python function taking the "
            "run's RecipeConfig and returning a geomtrace.recipe.Recipe"
        )
    origin = (getattr(fn, "__module__", None) or "").split(".")[0]
    if origin in sys.stdlib_module_names:
        raise InvalidInputError(
            f"{what} comes from the Python standard library ({fn.__module__}), not a recipe"
        )
    signature = inspect.signature(fn)
    try:
        bound = signature.bind(RecipeConfig())
    except TypeError as err:
        raise InvalidInputError(
            f"{what} is not a recipe function ({err}): a recipe takes the run's RecipeConfig "
            "and returns a geomtrace.recipe.Recipe"
        ) from None
    name = next(iter(bound.arguments))
    hint = signature.parameters[name].annotation
    if not _names(hint, "RecipeConfig"):
        raise InvalidInputError(
            f"{what}: its parameter {name!r} is annotated {_shown(hint)}, not RecipeConfig: "
            "a recipe takes the run's RecipeConfig"
        )
    if not _names(signature.return_annotation, "Recipe"):
        raise InvalidInputError(
            f"{what} returns {_shown(signature.return_annotation)} by its annotation, not a "
            "geomtrace.recipe.Recipe"
        )
    return fn


def _names(annotation: Any, name: str) -> bool:
    """Whether an annotation is absent, ``Any``, or names ``name`` (class or string form)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return True
    if isinstance(annotation, str):
        return annotation in ("Any", "typing.Any") or annotation.split(".")[-1] == name
    return getattr(annotation, "__name__", None) == name


def _shown(annotation: Any) -> str:
    return (
        annotation
        if isinstance(annotation, str)
        else getattr(annotation, "__name__", repr(annotation))
    )


def _build_recipe(config: RecipeConfig):
    from geomtrace.recipe.training import Recipe

    if config.recipe:
        recipe = load_recipe_function(config.recipe)(config)
        if not isinstance(recipe, Recipe):
            raise InvalidInputError(
                f"--recipe {config.recipe!r} returned {type(recipe).__name__}, "
                "not a geomtrace.recipe.Recipe"
            )
        return recipe
    from geomtrace.recipe.embedded import make_recipe

    recipe, _ = make_recipe(config)
    return recipe


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place: a
    reader (or a crash) sees the old file or the new one, never a mix or a truncated one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        reason = "disk full" if is_disk_full(err) else "write failed"
        raise StorageError(f"{reason}: cannot write {path} ({err})") from err


def run(
    config: RecipeConfig | Mapping[str, Any] | str | None = None,
    *,
    force: bool = False,
    on_start: Callable[[Path, Any], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> Path:
    """Run a traced training job and return its run directory.

    ``config``: a :class:`RecipeConfig`, a mapping of overrides of the defaults, a preset name
    (``"default"``, ``"quick"``, ``"full"``) or None (the default). ``on_start(run_dir, recipe)``
    is called once the recipe is built, ``on_step(step, mean_loss)`` after every step.
    """
    import torch

    from geomtrace.recipe.training import train

    if config is None:
        config = RecipeConfig()
    elif isinstance(config, str):
        config = preset(config)
    elif isinstance(config, Mapping):
        config = RecipeConfig.from_dict(config)
    config.validate()
    check_output_directory(config.out)
    run_dir = run_directory(config)
    created = not run_dir.exists()
    # Held from here to the saved model: one writer per run directory (see the module doc).
    lock = RunLock(run_dir).acquire()
    old_threads = torch.get_num_threads()
    try:
        check_run_directory(run_dir, force)
        if config.threads > 0:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)  # model init and dropout; batches use their own generator
        try:
            recipe = _build_recipe(config)
        except BaseException:
            lock.release()
            if created:
                _remove_if_empty(run_dir)  # a failed start leaves no run directory behind
            raise
        config.langs = list(recipe.tasks)  # what ran, in resolved spellings (pt-BR -> pt_BR)
        for name in ("model.safetensors", "config.toml"):  # a replaced run's (--force)
            (run_dir / name).unlink(missing_ok=True)
        _write_atomic(run_dir / "config.toml", to_toml(config.to_dict()).encode("utf-8"))
        if on_start is not None:
            on_start(run_dir, recipe)
        result = train(recipe, config, run_dir, overwrite=force, on_step=_divergence_watch(on_step))
        save_model(recipe.model, run_dir / "model.safetensors")
    finally:
        torch.set_num_threads(old_threads)
        lock.release()
    log.info(
        "run %s: %d steps in %.0f s%s", run_dir, result.final_step, result.seconds,
        " (interrupted)" if result.interrupted else "",
    )  # fmt: skip
    return run_dir


def _remove_if_empty(run_dir: Path) -> None:
    try:
        run_dir.rmdir()
    except OSError:
        pass


def _divergence_watch(on_step: Callable[[int, float], None] | None):
    """``on_step`` plus one warning at the first non-finite mean loss: a diverged run goes on
    (its trace records the NaN losses) and saves what it has, it does not crash."""
    warned = False

    def watch(step: int, loss: float) -> None:
        nonlocal warned
        if not warned and not math.isfinite(loss):
            warned = True
            log.warning(
                "step %d: the mean loss is %s: training diverged (try a lower lr, or "
                "clip_norm > 0); the run goes on and saves its trace, config and model", step, loss,
            )  # fmt: skip
        if on_step is not None:
            on_step(step, loss)

    return watch


def save_model(model, path: Path) -> None:
    """Save the weights as safetensors, atomically (temporary file + rename).

    A full disk raises :class:`StorageError` saying that the trace and config are complete
    and the model was not saved; no truncated ``model.safetensors`` is left behind.
    """
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(state, str(tmp))
        os.replace(tmp, path)
    except Exception as err:
        tmp.unlink(missing_ok=True)
        if is_disk_full(err) or isinstance(err, OSError):
            reason = "disk full" if is_disk_full(err) else "write failed"
            raise StorageError(
                f"{reason}: cannot write the model to {path} ({err}); the trace and "
                f"config.toml in {path.parent} are complete, the model was not saved"
            ) from err
        raise


def load_model(run_dir: str | Path):
    """The embedded model of a run, with its final weights, in eval mode."""
    from safetensors.torch import load_file

    from geomtrace.recipe.model import ByteTransformer

    run_dir = Path(run_dir)
    config = RecipeConfig.from_toml(run_dir / "config.toml")
    if config.recipe:
        raise InvalidInputError(
            f"{run_dir} was trained with --recipe {config.recipe}: load it there"
        )
    model = ByteTransformer(
        len(config.langs), config.d_model, config.nhead, config.enc_layers, config.dec_layers,
        config.d_ff, config.dropout, max_len=config.max_bytes + 2,
    )  # fmt: skip
    model.load_state_dict(load_file(str(run_dir / "model.safetensors")))
    return model.eval()
