"""``run(config) -> run directory``: the Python entry point behind ``geomtrace trace``.

A run directory holds ``trace.sqlite`` (the trace), ``config.toml`` (the resolved config: rerun
with ``geomtrace trace --config runs/<name>/config.toml``) and ``model.safetensors`` (the final
weights; :func:`load_model` rebuilds the embedded model from the two files).
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from geomtrace._errors import InvalidInputError
from geomtrace.recipe.config import RecipeConfig, preset

log = logging.getLogger(__name__)

RUN_FILES = ("trace.sqlite", "config.toml", "model.safetensors")


def run_directory(config: RecipeConfig) -> Path:
    """``out/name``; an empty name becomes ``<direction>-<method>-<UTC timestamp>``."""
    name = config.name or (
        f"{config.direction}-{config.method}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    )
    return Path(config.out) / name


def check_run_directory(run_dir: Path, force: bool) -> None:
    """Refuse to overwrite an existing, non-empty run directory unless ``force``."""
    if run_dir.exists() and not run_dir.is_dir():
        raise InvalidInputError(f"run directory {str(run_dir)!r} exists and is not a directory")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not force:
        raise InvalidInputError(
            f"run directory {str(run_dir)!r} already exists; pass --force to overwrite it "
            "or choose another --name/--out"
        )


def load_recipe_function(spec: str) -> Callable[[RecipeConfig], Any]:
    """``"package.module:function"`` -> the function (an error names what is missing)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise InvalidInputError(f"--recipe {spec!r}: expected 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise InvalidInputError(
            f"--recipe {spec!r}: cannot import {module_name!r} ({err})"
        ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise InvalidInputError(f"--recipe {spec!r}: {module_name} has no function {attr!r}")
    return fn


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

    from geomtrace.recipe.training import Recipe, train

    if config is None:
        config = RecipeConfig()
    elif isinstance(config, str):
        config = preset(config)
    elif isinstance(config, Mapping):
        config = RecipeConfig.from_dict(config)
    config.validate()
    run_dir = run_directory(config)
    check_run_directory(run_dir, force)

    old_threads = torch.get_num_threads()
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    try:
        torch.manual_seed(config.seed)  # model init and dropout; batches use their own generator
        if config.recipe:
            recipe = load_recipe_function(config.recipe)(config)
            if not isinstance(recipe, Recipe):
                raise InvalidInputError(
                    f"--recipe {config.recipe!r} returned {type(recipe).__name__}, "
                    "not a geomtrace.recipe.Recipe"
                )
        else:
            from geomtrace.recipe.embedded import make_recipe

            recipe, _ = make_recipe(config)
        config.langs = list(recipe.tasks)  # what ran, in resolved spellings (pt-BR -> pt_BR)
        run_dir.mkdir(parents=True, exist_ok=True)
        config.write_toml(run_dir / "config.toml")
        if on_start is not None:
            on_start(run_dir, recipe)
        result = train(recipe, config, run_dir, overwrite=force, on_step=on_step)
        save_model(recipe.model, run_dir / "model.safetensors")
    finally:
        torch.set_num_threads(old_threads)
    log.info(
        "run %s: %d steps in %.0f s%s", run_dir, result.final_step, result.seconds,
        " (interrupted)" if result.interrupted else "",
    )  # fmt: skip
    return run_dir


def save_model(model, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))


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
