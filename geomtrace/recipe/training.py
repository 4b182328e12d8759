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
"""

from __future__ import annotations

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
        meta: extra trace metadata (JSON-serialisable), e.g. "scripts", "char_profiles".
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
    """First Ctrl-C: finish the current step, then stop cleanly. Second: the usual
    KeyboardInterrupt (the default handler is back after the first)."""

    def __init__(self) -> None:
        self.stop = False
        self._previous = None

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.stop = True
        log.warning("interrupted: stopping after the current step (Ctrl-C again to abort)")
        signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _aggregator(config: RecipeConfig):
    from geomtrace._aggregators import GradVac, PCGrad

    if config.method == "pcgrad":
        return PCGrad(seed=config.seed)
    return GradVac(beta=config.beta, seed=config.seed)


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
    from geomtrace._tracer import Tracer

    start_time = time.perf_counter()
    device = torch.device(config.device)
    model = recipe.model.to(device)
    tasks = list(recipe.tasks)
    steps = config.steps
    every = config.every
    generator = torch.Generator().manual_seed(config.seed)
    param_count = sum(p.numel() for p in model.parameters() if p.requires_grad)

    probe = None
    if config.probe:
        if recipe.probe is None:
            from geomtrace._errors import InvalidInputError

            raise InvalidInputError("--probe: this recipe provides no probe batches")
        probe = {t: _to_device(b, device) for t, b in recipe.probe.items()}

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
    )
    driver = tracer
    if config.method != "sum":
        from geomtrace._multitask import MultiTask

        driver = MultiTask(
            model, tasks, aggregator=_aggregator(config), groups=config.granularity, tracer=tracer
        )

    meta = {
        "direction": config.direction,
        "method": config.method,
        "granularity": config.trace_groups,
        "param_count": param_count,
        **recipe.meta,
    }
    for key, value in meta.items():
        tracer.set_meta(key, value)

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
        optimizer, lambda s: lr_factor(s, config.warmup, steps)
    )

    model.train()
    final_step = 0
    interrupted = False
    with tracer, _StopFlag() as flag:
        for step in range(steps + 1):
            last = step == steps
            traced = tracer.should_trace(step)
            batches = {t: _to_device(b, device) for t, b in recipe.sample(step, generator).items()}
            per_task = (
                config.method != "sum" or (traced and probe is None) or (recipe.joint_loss is None)
            )
            with driver.step(step) as s:
                if per_task:
                    for task in tasks:
                        s.backward(task, recipe.loss(model, task, batches[task]))
                    total = None
                else:
                    losses = recipe.joint_loss(model, batches)
                    total = torch.stack([losses[t] for t in tasks]).sum()
                    total.backward()
            if per_task:
                mean_loss = sum(s.mean_losses().values()) / len(tasks)
            else:
                mean_loss = float(total.detach()) / len(tasks)
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

        quality: dict[str, dict[str, float]] = {}
        if interrupted:
            tracer.set_meta("interrupted_at_step", final_step)
        if recipe.evaluate is not None:
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
        seconds = time.perf_counter() - start_time
        tracer.set_meta("train_seconds", seconds)
    return TrainResult(final_step, interrupted, quality, seconds, param_count)
