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


def summarize(run_dir: str | Path) -> str:
    """A one-screen summary of a finished run: per-task quality and mean gradient cosine.

    The cosine of a task is the mean, over the snapshots after step 0 and over parameter
    groups, of its off-diagonal cosines with the other tasks.
    """
    import numpy as np

    from geomtrace._trace import open_trace

    trace = open_trace(run_dir)
    tasks = trace.tasks
    k = len(tasks)
    steps = trace.steps
    later = steps > 0 if (steps > 0).any() else np.ones_like(steps, dtype=bool)
    off = ~np.eye(k, dtype=bool)
    per_task = np.zeros(k)
    group_means = []
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices for absent tasks
        stack = np.stack([trace.cosine(g)[later] for g in trace.groups])  # [G, S, K, K]
        masked = np.where(off, stack, np.nan)
        per_task = np.nanmean(masked, axis=(0, 1, 3))
        group_means = np.nanmean(masked, axis=(1, 2, 3))
        overall = float(np.nanmean(masked))
    q = trace.quality()
    table: dict[str, dict[str, float]] = {}
    if len(q):
        last = q[q.step == q.step.max()]
        for row in last.itertuples():
            table.setdefault(row.task, {})[row.metric] = row.value
    lines = [f"run        {Path(run_dir)}"]
    lines.append(
        f"snapshots  {len(steps)} (steps {int(steps.min())}..{int(steps.max())}), "
        f"{len(trace.groups)} groups, method {trace.meta('method', 'sum')}"
    )
    counts = trace.meta("corpus_counts") or {}
    lines.append(
        f"{'task':<9} {'iso':<4} {'train':>5} {'test':>4} {'chrF':>6} {'loss':>6} {'mean cos':>9}"
    )
    for i, t in enumerate(tasks):
        n_train = counts.get(t, {}).get("train", "-")
        n_test = counts.get(t, {}).get("test", "-")
        m = table.get(t, {})
        chrf = f"{m['chrf']:6.1f}" if "chrf" in m else "     -"
        loss = f"{m['heldout_loss']:6.2f}" if "heldout_loss" in m else "     -"
        lines.append(
            f"{t:<9} {trace.iso_codes.get(t) or '-':<4} {n_train:>5} {n_test:>4} {chrf} {loss} "
            f"{per_task[i]:9.3f}"
        )
    chrfs = [m["chrf"] for m in table.values() if "chrf" in m]
    if chrfs:
        lines.append(
            f"chrF mean {np.mean(chrfs):.1f} (min {min(chrfs):.1f}, max {max(chrfs):.1f}); "
            f"mean off-diagonal cosine {overall:.3f} (steps > 0, all groups)"
        )
    else:
        lines.append(f"mean off-diagonal cosine {overall:.3f} (steps > 0, all groups)")
    if len(trace.groups) > 1:
        lo, hi = int(np.nanargmin(group_means)), int(np.nanargmax(group_means))
        lines.append(
            f"groups: lowest {trace.groups[lo]} {group_means[lo]:.3f}, "
            f"highest {trace.groups[hi]} {group_means[hi]:.3f}"
        )
    interrupted = trace.meta("interrupted_at_step")
    if interrupted is not None:
        lines.append(f"interrupted after step {interrupted}")
    return "\n".join(lines)
