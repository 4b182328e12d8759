"""The recipe interface and the generic traced training loop.

A *recipe* is whatever ``--recipe module:function`` names: ``function(config: RecipeConfig)``
returns a :class:`Recipe`: the model, the task names, a per-step batch sampler, a per-task loss,
and optionally ISO codes, probe batches, an evaluation callback and a fused loss. The embedded
recipe (:mod:`geomtrace.recipe.embedded`) is one such function; :func:`train` runs any of them.

The loop, per step ``t = 0 .. steps`` (AdamW, linear warmup then cosine decay to lr/10)::

    batches = recipe.sample(t, generator)            # {task: batch}, one sub-batch per task
    with tracer.step(t) as s:                        # (or MultiTask(..., tracer=tracer).step(t))
        for task in tasks:
            s.backward(task, recipe.loss(model, task, batches[task]))
    clip, optimizer.step()                           # not at t == steps: that snapshot only
                                                     # measures the final model

Untraced steps with method ``sum`` use ``recipe.joint_loss`` when the recipe has one: one
forward and one backward over all sub-batches at once. The gradient is the same,
d/dθ sum_i L_i = sum_i dL_i/dθ, so this changes nothing but speed (per-task passes are only
needed when per-task gradients are captured). The schedule always includes step 0 (the
untrained model, the analyses' baseline) and the last step, where quality is recorded.

Snapshot design (``config.halves``, ``config.window``): with ``halves`` each task's traced
sub-batch is split into two halves of rows, one forward and two backward passes
(``recipe.half_losses``, ``s.backward(task, loss_h, half=h)``), so that a + b is exactly the
sub-batch's gradient and ``.grad`` is what it would be without halves; with ``window=m`` every
step of t..t+m-1 after a traced step t is a per-task step and the Tracer sums them (its
halves are then the even and odd steps). Untraced steps are unchanged. With
``config.snapshot_rows`` > 0 (the default) a traced step's snapshot comes from its own batch
(``recipe.snapshot_sample``, model in eval mode) in a tracer step of its own, and the training
step that follows is untraced.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geomtrace.recipe.config import RecipeConfig

log = logging.getLogger(__name__)


@dataclass
class Recipe:
    """What a recipe function returns.

    Attributes:
        model: the ``nn.Module`` to train (moved to ``config.device`` by the loop).
        tasks: task names, the order of every matrix in the trace.
        sample: ``sample(step, generator) -> {task: batch}``: the step's sub-batch of every
            task; draw all randomness from ``generator`` (a seeded ``torch.Generator``) so the
            same seed gives the same run.
        loss: ``loss(model, task, batch) -> scalar tensor``: a task's mean loss on its batch.
        iso_codes: ``{task: ISO 639-3 code or None}`` for the typology analyses.
        probe: fixed ``{task: batch}`` for the tracer's probe mode (``config.probe``).
        evaluate: ``evaluate(model) -> {task: {metric: value}}`` after training, model in eval
            mode; stored as quality rows of the final step (e.g. "chrf", "heldout_loss").
        joint_loss: optional ``joint_loss(model, batches) -> {task: loss}`` computing every
            task's loss in one forward; used on untraced steps (same gradient, faster).
        half_losses: optional ``half_losses(model, task, batch) -> (loss_0, loss_1)`` for
            split-half capture (``config.halves``): the losses of two disjoint halves of the
            batch's rows, scaled so that ``loss_0 + loss_1 == loss(model, task, batch)``
            (e.g. each half's token-loss sum over the whole batch's token count).
        snapshot_sample: optional ``snapshot_sample(step, generator, rows) -> {task: batch}``:
            ``rows`` fresh rows per task for a snapshot taken apart from the training step
            (``config.snapshot_rows``); halves are its two row halves (``half_losses``).
        meta: extra trace metadata (JSON-serialisable), e.g. "scripts", "char_profiles";
            keys that ``evaluate`` adds to it are written after the evaluation.
        describe: optional lines for the run summary (e.g. corpus sizes).
    """

    model: nn.Module
    tasks: list[str]
    sample: Callable[[int, torch.Generator], Mapping[str, Any]]
    loss: Callable[[nn.Module, str, Any], torch.Tensor]
    iso_codes: Mapping[str, str | None] | None = None
    probe: Mapping[str, Any] | None = None
    evaluate: Callable[[nn.Module], Mapping[str, Mapping[str, float]]] | None = None
    joint_loss: Callable[[nn.Module, Mapping[str, Any]], Mapping[str, torch.Tensor]] | None = None
    half_losses: Callable[[nn.Module, str, Any], tuple[torch.Tensor, torch.Tensor]] | None = None
    snapshot_sample: Callable[[int, torch.Generator, int], Mapping[str, Any]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    describe: list[str] = field(default_factory=list)


@dataclass
class TrainResult:
    final_step: int
    interrupted: bool
    quality: dict[str, dict[str, float]]
    seconds: float
    param_count: int


def lr_factor(step: int, warmup: int, steps: int, floor: float = 0.1) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay from 1 to ``floor`` at ``steps``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, tuple | list):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


class _StopFlag:
    """First Ctrl-C (SIGINT) or SIGTERM (``kill``, a job scheduler's stop): finish the current
    step, then stop cleanly (trace closed, model saved and evaluated). Second: the usual
    behaviour (each signal's previous handler is back after the first)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.stop = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.stop = True
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        log.warning("%s: stopping after the current step (%s again to abort)", name, name)
        for sig, previous in self._previous.items():
            default = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
            signal.signal(sig, previous if previous is not None else default)

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            if previous is not None:
                signal.signal(sig, previous)


def _aggregator(config: RecipeConfig):
    from geomtrace import GradVac, PCGrad

    if config.method == "pcgrad":
        return PCGrad(seed=config.seed)
    return GradVac(beta=config.beta, seed=config.seed)


def make_optimizer(model: nn.Module, config: RecipeConfig):
    """AdamW (betas 0.9/0.98; weight decay on matrices only) and its warmup + cosine schedule."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            # no weight decay on biases, norms and embeddings (standard AdamW practice)
            (no_decay if p.ndim < 2 or "embed" in name or "pos" in name else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.98),
    )  # fmt: skip
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, config.warmup, config.steps)
    )
    return optimizer, scheduler


def snapshot_options(recipe: Recipe, config: RecipeConfig) -> dict[str, Any]:
    """The Tracer's ``halves`` and ``window`` arguments for ``config`` (only those that differ
    from the Tracer's defaults); refuses snapshot fields that are invalid in themselves
    (``check_snapshot_fields``).

    Where a field does not apply it is left out, with a log line saying why: probe snapshots
    have no split halves and no windows (the Tracer refuses both with ``probe=``: a probe
    snapshot is one fixed batch per task); with pcgrad/gradvac the trace records the Gram
    matrix the optimizer used at each traced step, so there is no window (``MultiTask``
    refuses a windowed Tracer), but halves work.
    """
    from geomtrace.recipe.config import check_snapshot_fields

    check_snapshot_fields(config)
    halves, window = config.halves, config.window
    if config.probe and (halves or window > 1):
        log.info(
            "probe mode: snapshots come from the fixed probe batches, without split halves or "
            "windows (halves=%s, window=%d not applied)", str(halves).lower(), window,
        )  # fmt: skip
        halves, window = False, 1
    if config.method != "sum" and window > 1:
        log.info(
            "method %s: the trace records the Gram matrix the optimizer used at each traced "
            "step; window=%d not applied", config.method, window,
        )  # fmt: skip
        window = 1
    if halves and window == 1 and recipe.half_losses is None:
        log.warning(
            "halves=true: this recipe has no half_losses (two halves of each batch's rows), so "
            "the trace has no split halves and no reliability; give the recipe half_losses or "
            "use window >= 2 (halves from even and odd steps)"
        )
        halves = False
    options: dict[str, Any] = {}
    if halves:
        options["halves"] = True
    if window > 1:
        options["window"] = window
    return options


def separate_snapshot_rows(recipe: Recipe, config: RecipeConfig) -> int:
    """Rows per task of the separate snapshot batch (``config.snapshot_rows``), or 0 where it
    does not apply (with a log line): probe mode has its own snapshot batches, with
    pcgrad/gradvac the trace records the Gram matrix the optimizer used, and a recipe without
    ``snapshot_sample`` cannot draw one."""
    rows = config.snapshot_rows
    if rows == 0:
        return 0
    if config.probe or config.method != "sum":
        why = "probe mode" if config.probe else f"method {config.method}"
        log.info("%s: snapshots of the training batches; snapshot_rows=%d not applied", why, rows)
        return 0
    if recipe.snapshot_sample is None:
        log.warning(
            "snapshot_rows=%d: this recipe has no snapshot_sample, so snapshots come from the "
            "training batches", rows,
        )  # fmt: skip
        return 0
    return rows


class _PlainStep:
    """What a step is when the tracer already took this step's snapshot: plain backward."""

    def __init__(self) -> None:
        self._losses: list[torch.Tensor] = []

    def backward(self, task: str, loss: torch.Tensor, **_: Any) -> None:
        self._losses.append(loss.detach())
        loss.backward()

    def mean_losses(self) -> dict[str, float]:
        return {str(i): float(v) for i, v in enumerate(self._losses)}


def _separate_snapshot(tracer, recipe: Recipe, step: int, generator, rows: int, device) -> None:
    """Snapshot ``step`` from ``rows`` fresh rows per task, model in eval mode (no dropout
    noise), halves = the batch's two row halves. ``.grad`` is left for the caller to clear."""
    model = tracer.model
    batches = recipe.snapshot_sample(step, generator, rows)
    was_training = model.training
    model.eval()
    try:
        with tracer.step(step) as s:
            for task, batch in batches.items():
                batch = _to_device(batch, device)
                if tracer.halves:
                    loss_a, loss_b = recipe.half_losses(model, task, batch)
                    s.backward(task, loss_a + loss_b.detach(), retain_graph=True, half=0)
                    s.backward(task, loss_b + loss_a.detach(), half=1)
                else:
                    s.backward(task, recipe.loss(model, task, batch))
    finally:
        model.train(was_training)


def train(
    recipe: Recipe,
    config: RecipeConfig,
    run_dir: Path,
    overwrite: bool = False,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train ``recipe`` under a Tracer writing ``run_dir/trace.sqlite``.

    ``on_step(step, mean_loss)`` is called after every step (the CLI's progress bar). Returns
    the final step, whether Ctrl-C stopped the run early, and the evaluation results.
    """
    start_time = time.perf_counter()
    # CPU seconds of this process as well: the wall time depends on what else the machine
    # runs; CPU time at one thread is what a budget on an idle machine is computed from
    start_cpu = time.process_time()
    device = torch.device(config.device)
    model = recipe.model.to(device)
    tasks = list(recipe.tasks)
    steps = config.steps
    generator = torch.Generator().manual_seed(config.seed)
    param_count = sum(p.numel() for p in model.parameters() if p.requires_grad)

    probe = _probe_batches(recipe, config, device)
    snapshot = snapshot_options(recipe, config)
    snapshot_rows = separate_snapshot_rows(recipe, config)
    # its own stream: the training batches are those of a run without separate snapshots
    snapshot_gen = torch.Generator().manual_seed(config.seed + 1)
    tracer, driver = _tracer_and_driver(recipe, model, config, run_dir, overwrite, probe, snapshot)
    meta = _write_run_meta(tracer, recipe, config, param_count)

    optimizer, scheduler = make_optimizer(model, config)

    model.train()
    final_step = 0
    interrupted = False
    with tracer, _StopFlag() as flag:
        for step in range(steps + 1):
            last = step == steps
            batches = {t: _to_device(b, device) for t, b in recipe.sample(step, generator).items()}
            capturing = tracer.captures(step)  # never in probe mode
            separate = capturing and snapshot_rows > 0
            if separate:  # the snapshot from its own batch; then an untraced training step
                _separate_snapshot(tracer, recipe, step, snapshot_gen, snapshot_rows, device)
                optimizer.zero_grad(set_to_none=True)
                capturing = False
            per_task = config.method != "sum" or capturing or (recipe.joint_loss is None)
            split = capturing and snapshot.get("halves") and "window" not in snapshot
            context = contextlib.nullcontext(_PlainStep()) if separate else driver.step(step)
            mean_loss = _backward(recipe, model, tasks, batches, context, per_task, bool(split))
            if not last:
                if config.clip_norm > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
                optimizer.step()
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            final_step = step if last else step + 1
            if on_step is not None:
                on_step(step, mean_loss)
            if flag.stop and not last:
                interrupted = True
                break

        if interrupted:
            tracer.set_meta("interrupted_at_step", final_step)
        quality = _evaluate(tracer, recipe, model, final_step, meta)
        seconds = time.perf_counter() - start_time
        tracer.set_meta("train_seconds", seconds)
        tracer.set_meta("train_cpu_seconds", time.process_time() - start_cpu)
    return TrainResult(final_step, interrupted, quality, seconds, param_count)


def _probe_batches(recipe: Recipe, config: RecipeConfig, device: torch.device):
    """The recipe's fixed probe batches on ``device`` in probe mode (``config.probe``; refused
    when the recipe has none), else None."""
    if not config.probe:
        return None
    if recipe.probe is None:
        from geomtrace import InvalidInputError

        raise InvalidInputError("--probe: this recipe provides no probe batches")
    return {t: _to_device(b, device) for t, b in recipe.probe.items()}


def _tracer_and_driver(
    recipe: Recipe,
    model: nn.Module,
    config: RecipeConfig,
    run_dir: Path,
    overwrite: bool,
    probe: Mapping[str, Any] | None,
    snapshot: dict[str, Any],
):
    """The run's Tracer (every ``config.every`` steps and the last; ``probe`` batches in probe
    mode; the ``snapshot`` options) and what drives each step: the Tracer itself for ``sum``,
    else a ``MultiTask`` with the config's aggregator feeding that Tracer."""
    from geomtrace import Tracer

    tasks = list(recipe.tasks)
    steps, every = config.steps, config.every
    tracer = Tracer(
        model,
        tasks,
        groups=config.trace_groups,
        every=lambda s: s % every == 0 or s == steps,
        out=run_dir,
        iso_codes=recipe.iso_codes,
        config=config.to_dict(),
        probe=probe,
        probe_loss=recipe.loss if probe is not None else None,
        overwrite=overwrite,
        **snapshot,
    )
    driver = tracer
    if config.method != "sum":
        from geomtrace import MultiTask

        driver = MultiTask(
            model, tasks, aggregator=_aggregator(config), groups=config.granularity, tracer=tracer
        )
    return tracer, driver


def _write_run_meta(tracer, recipe: Recipe, config: RecipeConfig, param_count: int) -> dict:
    """Write what the run is (direction, method, granularity, parameter count and the recipe's
    own meta) to the trace's meta; returns what was written."""
    meta = {
        "direction": config.direction,
        "method": config.method,
        "granularity": config.trace_groups,
        "param_count": param_count,
        **recipe.meta,
    }
    for key, value in meta.items():
        tracer.set_meta(key, value)
    return meta


def _backward(
    recipe: Recipe,
    model: nn.Module,
    tasks: list[str],
    batches: Mapping[str, Any],
    context,
    per_task: bool,
    split: bool,
) -> float:
    """One step's backward passes inside the step ``context``; returns the mean task loss.

    ``per_task``: one backward per task (two with ``split``: the losses of the sub-batch's two
    row halves, whose gradients sum to the sub-batch's); else one backward of the summed
    ``recipe.joint_loss`` (the same gradient, one forward)."""
    with context as s:
        if per_task:
            for task in tasks:
                if split:  # rows in two halves: a + b is the sub-batch's gradient
                    loss_a, loss_b = recipe.half_losses(model, task, batches[task])
                    # each value shifted to the whole batch's loss (the Tracer records
                    # the mean of a task's backward losses); gradients unchanged
                    s.backward(task, loss_a + loss_b.detach(), retain_graph=True, half=0)
                    s.backward(task, loss_b + loss_a.detach(), half=1)
                else:
                    s.backward(task, recipe.loss(model, task, batches[task]))
            total = None
        else:
            losses = recipe.joint_loss(model, batches)
            total = torch.stack([losses[t] for t in tasks]).sum()
            total.backward()
    if per_task:
        return sum(s.mean_losses().values()) / len(tasks)
    return float(total.detach()) / len(tasks)


def _evaluate(tracer, recipe: Recipe, model: nn.Module, final_step: int, meta: dict) -> dict:
    """The recipe's evaluation of the trained model (eval mode, no gradients), recorded as
    quality rows of ``final_step``, with the meta keys ``evaluate`` added to ``recipe.meta``
    (beyond ``meta``, already written); {} without ``evaluate`` or when Ctrl-C stops it."""
    quality: dict[str, dict[str, float]] = {}
    if recipe.evaluate is None:
        return quality
    model.eval()
    try:
        with torch.no_grad():
            quality = {t: dict(m) for t, m in recipe.evaluate(model).items()}
    except KeyboardInterrupt:
        log.warning("evaluation interrupted: the trace has no quality rows")
        quality = {}
    for task, metrics in quality.items():
        for metric, value in metrics.items():
            tracer.record_quality(final_step, task, metric, float(value))
    for key in recipe.meta.keys() - meta.keys():  # added by evaluate (chrf_intervals)
        tracer.set_meta(key, recipe.meta[key])
    return quality
