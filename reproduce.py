"""``geomtrace reproduce``: the paper-figure reproduction end to end, above figures/.

The pipeline: train and trace the embedded recipe once per (optimizer, seed) of the plan
(``geomtrace.recipe``), analyse every run once (``analyses.analyse_runs``: intervals,
reliability, the layer x distance table), compare the optimizers seed by seed
(``analyses.compare_runs``) and summarise every statistic across seeds
(``analyses.across_seeds``), draw every figure (``figures``) and write the HTML report and
``results.json``. It lives beside cli.py, not in figures/, because it trains and analyses:
figures only draw.
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

from geomtrace import GeomtraceError, InvalidInputError, open_trace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlannedRun:
    """One training run of a plan: method, its granularity (None for sum) and seed."""

    method: str
    granularity: str | None
    seed: int

    @property
    def name(self) -> str:
        base = self.method if self.granularity is None else f"{self.method}-{self.granularity}"
        return f"{base}-s{self.seed}"


#: Per mode: (method, granularity, number of seeds). The default spends the 25-minute budget
#: on seeds of the baseline and of GradVac at the paper's best (finest affordable)
#: granularity: the comparisons and the geometry then carry an across-seed spread. PCGrad
#: gets one seed (its comparison is reported without an across-seed interval).
PLANS: dict[str, list[tuple[str, str | None, int]]] = {
    "quick": [("sum", None, 1), ("pcgrad", "all_layer", 1), ("gradvac", "all_layer", 1)],
    "default": [("sum", None, 3), ("gradvac", "all_layer", 2), ("pcgrad", "all_layer", 1)],
}


def plan_runs(mode: str, seeds: int | None = None, base_seed: int = 0) -> list[PlannedRun]:
    """The runs of ``mode``; ``seeds`` gives every method that many seeds instead."""
    if mode not in PLANS:
        raise InvalidInputError(f"unknown reproduction mode {mode!r}; allowed: {', '.join(PLANS)}")
    if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1):
        raise InvalidInputError(f"--seeds {seeds!r}: give a positive number of seeds")
    runs = []
    for method, granularity, n in PLANS[mode]:
        for k in range(seeds or n):
            runs.append(PlannedRun(method, granularity, base_seed + k))
    return runs


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


def finished(run_dir: Path) -> bool:
    """A run whose trace holds quality rows (written after the last step) is complete."""
    try:
        with open_trace(run_dir) as trace:
            return not trace.quality().empty
    except GeomtraceError:
        return False


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


def reproduce(
    out: str | os.PathLike,
    *,
    quick: bool = False,
    seeds: int | None = None,
    formats: str | Sequence[str] = ("png",),
    n_permutations: int = 999,
    n_bootstrap: int = 1000,
    seed: int = 0,
    force: bool = False,
    workers: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> ReproduceResult:
    """Train the plan's runs, analyse them, draw every figure, write the report.

    Runs go to ``out/runs/<name>``; a finished run found there is reused unless ``force``.
    Figures go to ``out/figures/``, the report to ``out/report.html``, the numbers to
    ``out/results.json``. ``overrides``: recipe config values for every run (e.g. fewer steps
    in a test). ``workers``: runs trained at once, each in its own process with one torch
    thread (default 2 on >= 2 cores: two single-threaded runs keep both cores busy without
    OpenMP threads spin-waiting on each other; every run is seeded, so results do not depend
    on ``workers``).
    """
    import analyses
    import figures
    from geomtrace.recipe import RecipeConfig, preset

    formats = figures.parse_formats(formats)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out {str(out)!r} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    mode = "quick" if quick else "default"
    plan = plan_runs(mode, seeds, seed)
    workers = workers if workers is not None else (2 if (os.cpu_count() or 1) >= 2 else 1)
    if workers < 1:
        raise InvalidInputError(f"--workers {workers}: give at least 1")
    result = ReproduceResult(out)
    start = time.perf_counter()
    _say(
        f"{mode} reproduction into {out}: {len(plan)} runs "
        f"({', '.join(r.name for r in plan)}), {workers} at a time"
    )
    todo: list[tuple[dict[str, Any], bool]] = []
    for n, planned in enumerate(plan, 1):
        values = preset(mode).to_dict() | dict(overrides or {})
        values |= {"out": str(out / "runs"), "name": planned.name, "method": planned.method}
        values["seed"] = planned.seed
        if planned.granularity is not None:
            values["granularity"] = planned.granularity
        if workers > 1 and "threads" not in (overrides or {}):
            values["threads"] = 1
        config = RecipeConfig.from_dict(values)
        run_dir = out / "runs" / config.name
        result.runs.append(run_dir)
        if not force and finished(run_dir):
            _say(f"run {n}/{len(plan)} {config.name}: reusing the finished run (--force retrains)")
            continue
        again = run_dir.exists() and any(run_dir.iterdir())
        _say(
            f"run {n}/{len(plan)} {config.name}: {len(config.langs)} languages, "
            f"{config.steps} steps" + (" (replacing an unfinished run)" if again else "")
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
            _train(values, again)
    result.timings["train"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    results = analyses.analyse_runs(
        result.runs, n_permutations=n_permutations, n_bootstrap=n_bootstrap, seed=seed,
        progress=_say,
    )  # fmt: skip
    comparison = analyses.compare_runs(results)
    seed_table = analyses.across_seeds(results)
    result.timings["analyses"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    _say("drawing figures")
    drawn: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for res in results:
        figs = figures.draw_run(res)
        drawn[res.label] = {
            k: f for k, f in figs.items() if not isinstance(f, analyses.NotApplicable)
        }
        for key, fig in figs.items():
            if isinstance(fig, analyses.NotApplicable):
                skipped[f"{res.label}/{key}"] = fig.reason
        result.figures += figures.save_figures(
            drawn[res.label], out / "figures" / res.label, formats=formats
        )
    if isinstance(comparison, analyses.NotApplicable):
        skipped["f6"] = comparison.reason
    else:
        f6 = figures.draw_comparison(comparison)
        drawn["f6"] = f6
        result.figures += figures.save_figures({"f6": f6}, out / "figures", formats=formats)
    for name, reason in skipped.items():
        _say(f"not drawn {name}: {reason}")
    result.timings["figures"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    _say("writing the report")
    result.report = figures.write_report(
        results, out / "report.html",
        comparison=None if isinstance(comparison, analyses.NotApplicable) else comparison,
        seeds=seed_table, figures=drawn, title=f"geomtrace reproduction ({mode})",
    )  # fmt: skip
    result.timings["report"] = round(time.perf_counter() - t0, 1)
    result.timings["total"] = round(time.perf_counter() - start, 1)
    result.results = out / "results.json"
    payload = results_payload(mode, results, comparison, seed_table, skipped, result)
    tmp = result.results.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    tmp.replace(result.results)
    _say(f"done in {result.timings['total']:.0f} s: {out / 'report.html'}")
    return result


_LONG_FRAMES = ("similarity_matrix", "similarity_matrix_step0", "group_trajectories",
                "family_trajectories", "pair_spread", "pairs", "quality_values")  # fmt: skip


def results_payload(mode, results, comparison, seed_table, skipped, result) -> dict[str, Any]:
    """The numbers behind the figures (JSON-ready): per run, across runs, across seeds."""
    import analyses

    runs = {}
    for res in results:
        payload = res.to_dict()
        for name in _LONG_FRAMES:
            payload["results"].pop(name, None)
        payload["config"] = res.config
        payload["train_seconds"] = res.meta.get("train_seconds")
        runs[res.label] = payload
    return {
        "mode": mode,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "timings_seconds": result.timings,
        "cpu_count": os.cpu_count(),
        "runs": runs,
        "comparison": None
        if isinstance(comparison, analyses.NotApplicable)
        else comparison.to_dict(),
        "comparison_not_applicable": comparison.reason
        if isinstance(comparison, analyses.NotApplicable)
        else None,
        "across_seeds": json.loads(seed_table.to_json(orient="records")),
        "not_drawn": skipped,
    }
