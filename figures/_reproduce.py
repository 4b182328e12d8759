"""``reproduce``: the paper-figure reproduction end to end on the embedded recipe.

Trains and traces the embedded default (gettext corpus, byte-level Transformer) once per
optimizer (sum baseline, PCGrad, GradVac at one or two granularities), runs every analysis,
draws every figure and writes the HTML report plus ``results.json`` (the numbers behind the
figures and the time each stage took). ``quick`` uses the recipe's ``quick`` preset (fewer
languages, steps and a smaller model): the same code path in minutes.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geomtrace._errors import GeomtraceError

log = logging.getLogger(__name__)

#: (method, granularity) of the runs, the baseline first. GradVac's finer granularity is the
#: paper's best; the default adds the coarse encoder/decoder split to show the trend.
PLANS: dict[str, list[tuple[str, str | None]]] = {
    "quick": [("sum", None), ("pcgrad", "all_layer"), ("gradvac", "all_layer")],
    "default": [
        ("sum", None),
        ("pcgrad", "all_layer"),
        ("gradvac", "enc_dec"),
        ("gradvac", "all_layer"),
    ],
}


@dataclass
class ReproduceResult:
    out: Path
    runs: list[Path] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    report: Path | None = None
    results: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)


def _say(message: str) -> None:
    print(f"[reproduce] {message}", file=sys.stderr, flush=True)


def _finished(run_dir: Path) -> bool:
    """A run whose trace holds quality rows (written after the last step) is complete."""
    from geomtrace._trace import open_trace

    try:
        with open_trace(run_dir) as trace:
            return not trace.quality().empty
    except GeomtraceError:
        return False


def run_name(method: str, granularity: str | None) -> str:
    return method if granularity is None else f"{method}-{granularity}"


def _train(config, *, force: bool) -> Path:
    from tqdm import tqdm

    from geomtrace.recipe import run

    bar = tqdm(
        total=config.steps, desc=f"{config.name:<18}", unit="step", file=sys.stderr, leave=True
    )

    def on_step(step: int, loss: float) -> None:
        bar.n = min(step + 1, config.steps)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        bar.refresh()

    try:
        return run(config, force=force, on_step=on_step)
    finally:
        bar.close()


def _train_in_worker(values: dict[str, Any], force: bool) -> str:
    """One run in a worker process; progress as a line every tenth of the steps."""
    from geomtrace.recipe import run
    from geomtrace.recipe.config import RecipeConfig

    config = RecipeConfig.from_dict(values)
    every = max(1, config.steps // 10)

    def on_step(step: int, loss: float) -> None:
        if (step + 1) % every == 0 or step + 1 == config.steps:
            _say(f"  {config.name}: step {step + 1}/{config.steps}, loss {loss:.3f}")

    return str(run(config, force=force, on_step=on_step))


def reproduce(
    out: str | os.PathLike,
    *,
    quick: bool = False,
    formats: str | Sequence[str] = ("png",),
    n_permutations: int | None = None,
    seed: int = 0,
    force: bool = False,
    workers: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> ReproduceResult:
    """Trace the runs of :data:`PLANS`, analyse them, draw every figure and the report.

    Runs go to ``out/runs/<method>[-<granularity>]``; a finished run found there is reused
    unless ``force``. Figures go to ``out/figures/``, the report to ``out/report.html``,
    the numbers to ``out/results.json``. ``overrides``: recipe config values applied to every
    run (e.g. fewer steps for a test). ``workers``: runs trained at once, each in its own
    process with one torch thread (default: 2 when the machine has >= 2 cores). Small models
    gain little from intra-op threads, and two single-threaded runs keep both cores busy
    without OpenMP threads spin-waiting on each other; every run is seeded, so the result
    does not depend on ``workers``.
    """
    from figures._plot import build_figures, collect_runs, figure_stem
    from figures._report import write_report
    from figures._style import parse_formats, save
    from geomtrace.recipe.config import RecipeConfig, preset

    formats = parse_formats(formats)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mode = "quick" if quick else "default"
    n_permutations = 999 if n_permutations is None else n_permutations
    workers = workers if workers is not None else (2 if (os.cpu_count() or 1) >= 2 else 1)
    result = ReproduceResult(out)
    start = time.perf_counter()
    plan = PLANS[mode]
    names = ", ".join(run_name(*p) for p in plan)
    _say(f"{mode} reproduction into {out}: {len(plan)} runs ({names}), {workers} at a time")
    todo: list[tuple[dict[str, Any], bool]] = []
    for n, (method, granularity) in enumerate(plan, 1):
        values = preset(mode).to_dict() | dict(overrides or {})
        values |= {"out": str(out / "runs"), "name": run_name(method, granularity)}
        values |= {"method": method, "seed": seed}
        if granularity is not None:
            values["granularity"] = granularity
        if workers > 1 and "threads" not in (overrides or {}):
            values["threads"] = 1
        config = RecipeConfig.from_dict(values)
        run_dir = out / "runs" / config.name
        result.runs.append(run_dir)
        if not force and _finished(run_dir):
            _say(f"run {n}/{len(plan)} {config.name}: reusing the finished run (--force retrains)")
            continue
        again = run_dir.exists() and any(run_dir.iterdir())
        _say(
            f"run {n}/{len(plan)} {config.name}: {len(config.langs)} languages, "
            f"{config.steps} steps, method {method}{f' ({granularity})' if granularity else ''}"
            + (" (replacing an unfinished run)" if again else "")
        )
        todo.append((config.to_dict(), force or again))
    t0 = time.perf_counter()
    if workers > 1 and len(todo) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: a fresh interpreter per worker (no forked torch/OpenMP state)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=context) as pool:
            values, again = zip(*todo, strict=True)
            for done in pool.map(_train_in_worker, values, again):
                _say(f"finished {done}")
    else:
        for values, again in todo:
            _train(RecipeConfig.from_dict(values), force=again)
    result.timings["train"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    data = collect_runs(result.runs, n_permutations=n_permutations, seed=seed, progress=_say)
    result.timings["analyses"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    _say("drawing figures")
    built = build_figures(data)
    figures, skipped, comparison = built
    for (label, key), fig in figures.items():
        result.figures += save(fig, figure_stem(out / "figures", label, key, True), formats)
    for name, reason in skipped.items():
        _say(f"skipped {name}: {reason}")
    result.timings["figures"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    _say("writing the report")
    result.report = write_report(
        data, out / "report.html", n_permutations=n_permutations, seed=seed, built=built,
        title=f"geomtrace reproduction ({mode})",
    )  # fmt: skip
    result.timings["report"] = round(time.perf_counter() - t0, 1)
    result.timings["total"] = round(time.perf_counter() - start, 1)
    result.results = out / "results.json"
    result.results.write_text(
        json.dumps(_results(mode, data, comparison, skipped, result), indent=1) + "\n"
    )
    _say(f"done in {result.timings['total']:.0f} s: {out / 'report.html'}")
    return result


def _records(frame) -> list[dict[str, Any]]:
    return json.loads(frame.to_json(orient="records")) if frame is not None else []


def _results(mode, data, comparison, skipped, result: ReproduceResult) -> dict[str, Any]:
    """The numbers the figures show, per run and across runs (JSON-ready)."""
    runs = {}
    for run in data:
        summary = run.summary.to_dict()["results"]
        summary.pop("similarity_matrix", None)
        summary.pop("group_trajectories", None)
        summary.pop("family_trajectories", None)
        runs[run.label] = {
            "method": run.method_label,
            "tasks": list(run.trace.tasks),
            "config": run.trace.config,
            "train_seconds": run.trace.meta("train_seconds"),
            "analyses": summary,
            "by_family_per_group": _records(run.by_family),
            "skipped": run.summary.skipped,
        }
    across = {}
    if comparison is not None:
        delta = comparison.chrf_delta.groupby("run", sort=False)[
            ["value", "baseline", "delta"]
        ].mean()
        across["chrf_mean"] = _records(delta.reset_index())
        cos = comparison.final_cosines.groupby("run", sort=False)["cosine"]
        across["final_cosine"] = _records(
            cos.agg(["mean", "median", lambda s: float((s < 0).mean())]).set_axis(
                ["mean", "median", "negative_fraction"], axis=1
            ).reset_index()
        )  # fmt: skip
        if not comparison.targets.empty:
            t = comparison.targets
            last = t[t["step"] == t.groupby("run")["step"].transform("max")]
            across["gradvac_target_last"] = _records(
                last.groupby("run")["mean_target"].agg(["mean", "min", "max"]).reset_index()
            )
    return {
        "mode": mode,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "timings_seconds": result.timings,
        "cpu_count": os.cpu_count(),
        "runs": runs,
        "across_runs": across,
        "skipped_figures": skipped,
    }
