"""The paper-figure reproduction end to end (``geomtrace reproduce``): the plans, the runs,
the analyses, every figure, the report and ``results.json``."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geomtrace import InvalidInputError

from ._runs import _config_differences, _say, _train_all, finished


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


#: Per mode: (method, granularity, number of seeds). The default fits the 25-minute budget on
#: 2 cores (issue 21): three seeds of the baseline (the geometry and its replication across
#: seeds) and GradVac at the paper's best (finest affordable) granularity, one seed, compared
#: with the baseline seeds' own noise (``analyses.compare_runs``). Measured CPU seconds per
#: run: sum 642-669 (11 snapshots of 768 rows), GradVac 348 (it snapshots the training
#: batches its update uses); two runs train at once, so the four take ~1,340 s on the busier
#: worker (23 min 23 s end to end), and a fifth run (PCGrad, ~350 s) would push the
#: reproduction past 25 minutes. ``extended`` is the previous default (GradVac x 2 and
#: PCGrad x 1; about 30 minutes).
PLANS: dict[str, list[tuple[str, str | None, int]]] = {
    "quick": [("sum", None, 1), ("pcgrad", "all_layer", 1), ("gradvac", "all_layer", 1)],
    "default": [("sum", None, 3), ("gradvac", "all_layer", 1)],
    "extended": [("sum", None, 3), ("gradvac", "all_layer", 2), ("pcgrad", "all_layer", 1)],
}
#: The recipe preset each mode trains (``geomtrace.recipe.preset``).
MODE_PRESETS: dict[str, str] = {"quick": "quick", "default": "default", "extended": "default"}

#: ``geomtrace reproduce --help``: what the plans above train and what they took
DESCRIPTION = (
    "Train and trace the embedded recipe with sum and GradVac (and PCGrad with "
    "--mode extended or --quick) over several seeds, run every analysis (with bootstrap "
    "intervals, reliability, the layer x distance table and Holm corrections), compare the "
    "optimizers seed by seed, summarise every statistic across seeds, draw every figure "
    "into OUT/figures and write OUT/report.html and OUT/results.json. The default plan "
    "(sum x 3 seeds, GradVac all_layer x 1; two runs at a time) took 22 minutes on an "
    "idle 2-core CPU (measured: figures/README.md); --mode extended (sum x "
    "3, GradVac x 2, PCGrad x 1) about 30 minutes; --quick (8 languages, one seed each) a "
    "few minutes. Finished runs under OUT/runs are reused on a rerun."
)


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
    #: finished runs reused although their config differs from the plan's: {run: [keys]}
    reused_differing: dict[str, list[str]] = field(default_factory=dict)


def reproduce(
    out: str | os.PathLike,
    *,
    quick: bool = False,
    mode: str | None = None,
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
    ``out/results.json``. ``mode``: a plan of :data:`PLANS` (``quick=True`` is
    ``mode="quick"``; default "default"). ``overrides``: recipe config values for every run
    (e.g. fewer steps in a test). ``workers``: runs trained at once, each in its own process with one torch
    thread (default 2 on >= 2 cores: two single-threaded runs keep both cores busy without
    OpenMP threads spin-waiting on each other; every run is seeded, so results do not depend
    on ``workers``).
    """
    import analyses
    import figures

    formats = figures.parse_formats(formats)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out {str(out)!r} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    if quick and mode not in (None, "quick"):
        raise InvalidInputError(f"--quick with --mode {mode}: give one of them")
    mode = "quick" if quick else (mode or "default")
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
    todo = _schedule_runs(plan, mode, out, overrides, workers, force, result)
    results = _train_and_analyse(
        todo, workers, result, n_permutations=n_permutations, n_bootstrap=n_bootstrap,
        seed=seed,
    )  # fmt: skip
    t0 = time.perf_counter()
    comparison = analyses.compare_runs(results)
    seed_table = analyses.across_seeds(results)
    result.timings["analyses"] += round(time.perf_counter() - t0, 1)
    result.timings["analyses_after_training"] += round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    drawn, skipped = _draw_all(results, comparison, out, formats, result)
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
    # The record's headline table (what figures/README.md quotes), from the same payload.
    (out / "headline.md").write_text(figures.headline_table(payload) + "\n")
    _say(f"done in {result.timings['total']:.0f} s: {out / 'report.html'}")
    return result


def _schedule_runs(plan, mode, out, overrides, workers, force, result) -> list:
    """The plan's runs as (config values, force) pairs to train; finished runs are reused
    (their directories still go to ``result.runs``; a config that differs from the plan's is
    said and recorded in ``result.reused_differing``)."""
    from geomtrace.recipe import RecipeConfig, preset

    todo: list[tuple[dict[str, Any], bool]] = []
    for n, planned in enumerate(plan, 1):
        values = preset(MODE_PRESETS[mode]).to_dict() | dict(overrides or {})
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
            # Reused, but said when its config is not the plan's (results.json records it).
            differ = _config_differences(run_dir, config)
            if differ:
                result.reused_differing[config.name] = differ
                _say(
                    f"  WARNING: {config.name} was trained with a different {', '.join(differ)} "
                    "than this plan; its numbers are from that config (--force retrains)"
                )
            continue
        again = run_dir.exists() and any(run_dir.iterdir())
        _say(
            f"run {n}/{len(plan)} {config.name}: {len(config.langs)} languages, "
            f"{config.steps} steps" + (" (replacing an unfinished run)" if again else "")
        )
        todo.append((config.to_dict(), force or again))
    return todo


def _train_and_analyse(todo, workers, result, **analysis) -> list:
    """Train ``todo`` and analyse every run of ``result.runs`` (``analyses.analyse_run`` with
    ``analysis`` keywords), in plan order. Each run is analysed on its own (seeded, so the
    order does not matter); a run finished while others still train is analysed on the core
    their end leaves idle. Sets the train and analyses timings."""
    import analyses

    labels: dict[str, str] = {}
    for run_dir in result.runs:
        labels[run_dir.name] = analyses.run_label(run_dir, list(labels.values()))
    training = {values["name"] for values, _ in todo}
    waiting = [d for d in result.runs if d.name not in training]  # reused runs first
    analysed: dict[str, Any] = {}
    analysis_seconds = 0.0

    def analyse_next() -> bool:
        nonlocal analysis_seconds
        if not waiting:
            return False
        run_dir = waiting.pop(0)
        _say(f"analysing {labels[run_dir.name]}")
        t = time.perf_counter()
        analysed[run_dir.name] = analyses.analyse_run(
            run_dir, label=labels[run_dir.name], **analysis
        )
        analysis_seconds += time.perf_counter() - t
        return True

    t0 = time.perf_counter()
    runs_dir = result.out / "runs"
    _train_all(
        todo, workers, finished=lambda d: waiting.append(runs_dir / Path(d).name),
        while_idle=analyse_next,
    )  # fmt: skip
    result.timings["train"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    overlapped = analysis_seconds  # analyses done while the last runs trained
    while analyse_next():
        pass
    # analyses: every run's analysis (some while the last runs trained); the caller adds the
    # comparisons across runs
    result.timings["analyses"] = round(overlapped + time.perf_counter() - t0, 1)
    result.timings["analyses_after_training"] = round(time.perf_counter() - t0, 1)
    return [analysed[d.name] for d in result.runs]


def _draw_all(results, comparison, out, formats, result) -> tuple[dict, dict]:
    """Every run's figures and F6, saved under ``out/figures``: (drawn figures per run label
    and "f6", {figure: why it was not drawn})."""
    import analyses
    import figures

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
    return drawn, skipped


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
        payload["train_cpu_seconds"] = res.meta.get("train_cpu_seconds")
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
        "reused_with_other_config": result.reused_differing,
    }
