"""Training the runs of an experiment: a pool of single-threaded worker processes, the reuse
of finished runs, and workers that exit with their parent.

Shared by the paper reproduction (``reproduce``) and the grouping experiment
(``reproduce_grouping``): both train recipe runs ``workers`` at a time and reuse a finished run
whose config matches.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from geomtrace import GeomtraceError, open_trace

#: Config keys that may differ between a reused run and the experiment's (where and how fast
#: it ran, not what it computed).
_RUN_ONLY_KEYS = ("name", "out", "threads", "device", "eval_batch")


def _say(message: str) -> None:
    print(f"[reproduce] {message}", file=sys.stderr, flush=True)


def finished(run_dir: Path) -> bool:
    """A run whose trace holds quality rows (written after the last step) is complete."""
    try:
        with open_trace(run_dir) as trace:
            return not trace.quality().empty
    except GeomtraceError:
        return False


#: Exit status of a training worker whose parent (the reproduce process) has gone.
ORPHAN_EXIT = 3


def _exit_with_parent(parent: int, poll: float = 1.0) -> None:
    """Worker initializer: a daemon thread ends this process (``os._exit``) once its parent
    ``parent`` is gone (the worker has been reparented).

    Why: a pool's workers outlive a killed parent (SIGKILL, or a ``pkill`` of the parent alone)
    and keep training their queued runs, writing into run directories the user believes
    stopped (measured: two orphans trained two more runs into a recreated output folder).
    Runs are crash-safe, so an orphan that stops mid-run leaves a readable, unfinished trace
    that the next ``reproduce`` replaces.
    """
    import threading

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(ORPHAN_EXIT)
            time.sleep(poll)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _train_in_worker(values: dict[str, Any], force: bool) -> str:
    """One run in a worker process; progress as a line every tenth of the steps."""
    from geomtrace.recipe import RecipeConfig, run

    config = RecipeConfig.from_dict(values)
    every = max(1, config.steps // 10)

    def on_step(step: int, loss: float) -> None:
        if (step + 1) % every == 0 or step + 1 == config.steps:
            _say(f"  {config.name}: step {step + 1}/{config.steps}, loss {loss:.3f}")

    return str(run(config, force=force, on_step=on_step))


def _train(values: dict[str, Any], force: bool) -> str:
    from tqdm import tqdm

    from geomtrace.recipe import RecipeConfig, run

    config = RecipeConfig.from_dict(values)
    bar = tqdm(total=config.steps, desc=f"{config.name:<22}", unit="step", file=sys.stderr)

    def on_step(step: int, loss: float) -> None:
        bar.n = min(step + 1, config.steps)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        bar.refresh()

    try:
        return str(run(config, force=force, on_step=on_step))
    finally:
        bar.close()


def _config_differences(run_dir: Path, config: Any) -> list[str]:
    """Config keys (besides where and how fast it ran) in which a run differs from ``config``."""
    from geomtrace.recipe import RecipeConfig

    try:
        stored = RecipeConfig.from_toml(run_dir / "config.toml").to_dict()
    except GeomtraceError:
        return ["config.toml (missing or unreadable)"]
    wanted = config.to_dict()
    return [k for k in wanted if k not in _RUN_ONLY_KEYS and stored.get(k) != wanted[k]]


def _train_all(
    todo: list[tuple[dict[str, Any], bool]],
    workers: int,
    finished: Callable[[str], None] | None = None,
    while_idle: Callable[[], bool] | None = None,
) -> None:
    """Train ``todo`` ((config values, force) pairs), ``workers`` at a time (as ``reproduce``).

    ``finished(run_dir)`` is called in this process as each run ends. ``while_idle()`` is
    called in this process whenever fewer runs remain than workers, i.e. a core would
    otherwise wait for the last runs: it does one piece of other work (the reproduction
    analyses a finished run there) and returns False when it has none left. Calling it only
    then keeps it from slowing the runs that are still training.
    """
    if workers > 1 and len(todo) > 1:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        # spawn: a fresh interpreter per worker (no forked torch/OpenMP state)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            min(workers, len(todo)), mp_context=context, initializer=_exit_with_parent,
            initargs=(os.getpid(),),
        ) as pool:  # fmt: skip
            pending = {pool.submit(_train_in_worker, values, again) for values, again in todo}
            while pending:
                if len(pending) < workers and while_idle is not None and while_idle():
                    continue
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    run_dir = future.result()
                    _say(f"finished {run_dir}")
                    if finished is not None:
                        finished(run_dir)
    else:
        for values, again in todo:
            run_dir = _train(values, again)
            if finished is not None:
                finished(run_dir)
