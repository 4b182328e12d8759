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
from collections.abc import Callable, Sequence
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
    from geomtrace.recipe import RecipeConfig, preset

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
    # Each run is analysed on its own (seeded, so the order does not matter); a run finished
    # while others still train is analysed on the core their end leaves idle.
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
            run_dir, label=labels[run_dir.name], n_permutations=n_permutations,
            n_bootstrap=n_bootstrap, seed=seed,
        )  # fmt: skip
        analysis_seconds += time.perf_counter() - t
        return True

    t0 = time.perf_counter()
    _train_all(
        todo, workers, finished=lambda d: waiting.append(out / "runs" / Path(d).name),
        while_idle=analyse_next,
    )  # fmt: skip
    result.timings["train"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    overlapped = analysis_seconds  # analyses done while the last runs trained
    while analyse_next():
        pass
    results = [analysed[d.name] for d in result.runs]
    comparison = analyses.compare_runs(results)
    seed_table = analyses.across_seeds(results)
    # analyses: every run's analysis (some while the last runs trained) and the comparisons
    result.timings["analyses"] = round(overlapped + time.perf_counter() - t0, 1)
    result.timings["analyses_after_training"] = round(time.perf_counter() - t0, 1)

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
    # The record's headline table (what figures/README.md quotes), from the same payload.
    (out / "headline.md").write_text(figures.headline_table(payload) + "\n")
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


# --- The grouping experiment (issue 15) -------------------------------------------------------

#: Schemes ``reproduce_grouping`` can train: the gradient grouping and its baselines.
GROUPING_SCHEMES = ("gradient", "typology", "family", "random")
#: Config keys that may differ between a reused run and the experiment's (where and how fast
#: it ran, not what it computed).
_RUN_ONLY_KEYS = ("name", "out", "threads", "device", "eval_batch")


@dataclass
class GroupingResult:
    """What ``reproduce_grouping`` trained and wrote.

    baselines: {seed: all-language run}; schemes: {scheme: groups}; runs: {scheme: {seed:
    group runs, in the order of the scheme's groups}}; grouping: the ``analyses.Grouping`` of
    the baseline of the first seed; experiment: ``analyses.GroupingExperiment`` (or a
    NotApplicable); figures, table (Markdown), results (``grouping.json``), timings (seconds).
    """

    out: Path
    baselines: dict[int, Path] = field(default_factory=dict)
    schemes: dict[str, list[list[str]]] = field(default_factory=dict)
    runs: dict[str, dict[int, list[Path]]] = field(default_factory=dict)
    grouping: Any = None
    experiment: Any = None
    figures: list[Path] = field(default_factory=list)
    table: Path | None = None
    results: Path | None = None
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


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


def _schedule(config: Any, force: bool, what: str) -> tuple[dict[str, Any], bool] | None:
    """A run to train, or None to reuse a finished one with the same config."""
    run_dir = Path(config.out) / config.name
    if not force and finished(run_dir):
        differ = _config_differences(run_dir, config)
        if differ:
            raise InvalidInputError(
                f"{run_dir} is a finished run whose config differs from the grouping "
                f"experiment's in {differ}: the experiment compares runs of one config; use "
                "another --out, or --force to retrain"
            )
        _say(f"{what} {config.name}: reusing the finished run (--force retrains)")
        return None
    again = run_dir.exists() and any(run_dir.iterdir())
    _say(
        f"{what} {config.name}: {len(config.langs)} languages, {config.steps} steps"
        + (" (replacing an unfinished run)" if again else "")
    )
    return config.to_dict(), force or again


def _scheme_groups(grouping: Any, scheme: str) -> list[list[str]] | None:
    """The groups of a baseline scheme from ``Grouping.schemes`` (None when not computed)."""
    rows = grouping.schemes
    rows = rows[(rows["scheme"].str.startswith(scheme)) & (rows["group"] >= 0)]
    if rows.empty:
        return None
    return [str(t).split(" ") for t in rows.sort_values("group")["tasks"]]


def reproduce_grouping(
    out: str | os.PathLike,
    *,
    k: int = 3,
    seeds: int = 2,
    quick: bool = False,
    schemes: Sequence[str] = ("gradient", "typology", "random"),
    n_random: int = 1,
    affinity: str = "cosine",
    distance: str = "genetic",
    n_bootstrap: int = 200,
    metric: str = "chrf",
    formats: str | Sequence[str] = ("png",),
    seed: int = 0,
    workers: int | None = None,
    overrides: dict[str, Any] | None = None,
    force: bool = False,
) -> GroupingResult:
    """Does training one model per gradient-based group beat the all-language model?

    1. The all-language ``sum`` runs of seeds ``seed .. seed + seeds - 1`` (``out/runs/
       sum-s<seed>``, the names ``reproduce`` gives them: a finished run there with the same
       config is reused, so pointing ``out`` at a reproduction's folder saves their training).
    2. The schemes, each a partition of the K languages into ``k`` groups: ``gradient`` =
       ``analyses.group_tasks`` on the first seed's trace (``affinity``, at most ceil(K / k)
       languages per group, so sizes stay balanced); ``typology`` = the same search on the
       lang2vec ``distance`` (same k and size limit); ``family`` = the genetic tree cut into k
       groups (sizes as they fall); ``random`` = ``n_random`` seeded uniform partitions with the
       gradient grouping's sizes ("random 1", "random 2", ... when more than one).
    3. One model per group, scheme and seed (``out/runs/grouping/<langs>-s<seed>``; a group two
       schemes share is trained once): the same config as the all-language model but
       ``langs`` = the group, so every language gets the same rows per step and the same steps
       as in the all-language model; traced only at step 0 and the last step (the experiment
       reads quality, not geometry; the update of a sum step is the same either way). Runs are
       trained ``workers`` at a time (default 2), one torch thread each.
    4. ``analyses.grouping_experiment``: per language, scheme and seed the group model's
       ``metric`` minus the all-language model's at the same seed; t intervals across seeds.
    5. Writes ``out/grouping.json``, ``out/grouping.md`` and ``out/figures/grouping.<fmt>``.

    ``overrides``: recipe config values for every run (e.g. fewer steps in a test).
    """
    import math

    import pandas as pd

    import analyses
    import figures
    from geomtrace import open_trace
    from geomtrace.recipe import RecipeConfig, preset

    formats = figures.parse_formats(formats)
    for name, value, low in (("k", k, 1), ("seeds", seeds, 1), ("n_random", n_random, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InvalidInputError(f"{name}={value!r}: give an integer >= {low}")
    schemes = list(dict.fromkeys(schemes))
    bad = [s for s in schemes if s not in GROUPING_SCHEMES]
    if bad or not schemes:
        raise InvalidInputError(
            f"schemes {bad or schemes}: choose from {', '.join(GROUPING_SCHEMES)}"
        )
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out {str(out)!r} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    mode = "quick" if quick else "default"
    workers = workers if workers is not None else (2 if (os.cpu_count() or 1) >= 2 else 1)
    if workers < 1:
        raise InvalidInputError(f"--workers {workers}: give at least 1")
    base_values = preset(mode).to_dict() | dict(overrides or {})
    n_langs = len(base_values["langs"])
    if k > n_langs:  # before any training: the baselines alone take minutes
        raise InvalidInputError(
            f"k={k}: the {mode} grouping experiment has {n_langs} languages; give k between 1 "
            f"and {n_langs}"
        )
    if workers > 1 and "threads" not in (overrides or {}):
        base_values["threads"] = 1
    seed_list = [seed + n for n in range(seeds)]
    result = GroupingResult(out)
    start = time.perf_counter()

    # 1. The all-language baselines.
    _say(f"grouping experiment ({mode}) into {out}: k={k}, seeds {seed_list}, {workers} at a time")
    todo = []
    for s in seed_list:
        values = base_values | {"out": str(out / "runs"), "method": "sum", "seed": s}
        values["name"] = PlannedRun("sum", None, s).name
        config = RecipeConfig.from_dict(values)
        result.baselines[s] = out / "runs" / config.name
        job = _schedule(config, force, "all-language run")
        if job is not None:
            todo.append(job)
    t0 = time.perf_counter()
    _train_all(todo, workers)
    result.timings["train_baselines"] = round(time.perf_counter() - t0, 1)

    # 2. The schemes.
    t0 = time.perf_counter()
    with open_trace(result.baselines[seed]) as trace:
        n_tasks = len(trace.tasks)
    if k > n_tasks:
        raise InvalidInputError(f"k={k} groups of {n_tasks} languages: give k <= {n_tasks}")
    max_size = math.ceil(n_tasks / k)
    grouping = analyses.group_tasks(
        result.baselines[seed], k, affinity=affinity, max_size=max_size,
        n_bootstrap=n_bootstrap, distance=distance, seed=seed,
    )  # fmt: skip
    result.grouping = grouping
    result.notes += grouping.notes
    # Out of sample (issue 22): within the first seed's run (half the snapshots each way,
    # in grouping.holdout) and, with two seeds, chosen on one seed's run and scored on the
    # other's: the grouping's score on data its search never saw.
    across = pd.DataFrame()
    if affinity == "cosine" and len(seed_list) >= 2:
        across = analyses.grouping_holdout(
            result.baselines[seed_list[0]], k, other=result.baselines[seed_list[1]],
            max_size=max_size, n_random=999, seed=seed,
        )  # fmt: skip
        across["fit_on"] = [f"seed {s}" for s in seed_list[:2]]
        across["scored_on"] = [f"seed {s}" for s in reversed(seed_list[:2])]
    for frame in (grouping.holdout, across):
        for row in frame.itertuples():
            result.notes.append(
                f"out of sample: chosen on {row.fit_on}, scored on {row.scored_on}: "
                f"{row.score:+.3f} vs random {row.random_mean:+.3f}, p = {row.p_value:.3f}, "
                f"retains {row.retained:.0%} of the best above-chance score there"
            )
    tasks = grouping.affinity.tasks
    gradient = grouping.groups()
    for scheme in schemes:
        if scheme == "gradient":
            result.schemes["gradient"] = gradient
        elif scheme in ("typology", "family"):
            groups = _scheme_groups(grouping, scheme)
            if groups is None:
                result.notes.append(f"scheme {scheme}: not computed ({'; '.join(grouping.notes)})")
                continue
            name = next(s for s in grouping.schemes["scheme"] if s.startswith(scheme))
            result.schemes[name] = groups
        else:
            draws = analyses.random_groupings(
                tasks, [len(g) for g in gradient], n_random, seed=seed
            )
            for n, groups in enumerate(draws, 1):
                result.schemes["random" if n_random == 1 else f"random {n}"] = groups
    seen: dict[frozenset, str] = {}
    for name, groups in result.schemes.items():
        _say(f"scheme {name}: " + " | ".join(" ".join(g) for g in groups))
        key = frozenset(frozenset(g) for g in groups)
        if key in seen:
            result.notes.append(f"scheme {name} is the same partition as {seen[key]}")
        seen.setdefault(key, name)
    result.timings["grouping"] = round(time.perf_counter() - t0, 1)

    # 3. One model per group, scheme and seed.
    order = {t: n for n, t in enumerate(tasks)}
    todo, planned = [], set()
    runs_dir = out / "runs" / "grouping"
    for name, groups in result.schemes.items():
        result.runs[name] = {}
        for s in seed_list:
            result.runs[name][s] = []
            for group in groups:
                langs = sorted(group, key=order.__getitem__)
                values = base_values | {
                    "out": str(runs_dir), "name": f"{'-'.join(langs)}-s{s}", "method": "sum",
                    "seed": s, "langs": langs, "every": base_values.get("steps", 400),
                }  # fmt: skip
                config = RecipeConfig.from_dict(values)
                result.runs[name][s].append(runs_dir / config.name)
                if config.name in planned:
                    continue  # the same group in another scheme: one run serves both
                planned.add(config.name)
                job = _schedule(config, force, f"group run ({name})")
                if job is not None:
                    todo.append(job)
    _say(f"{len(planned)} group runs, {len(todo)} to train")
    t0 = time.perf_counter()
    _train_all(todo, workers)
    result.timings["train_groups"] = round(time.perf_counter() - t0, 1)

    # 4. The numbers.
    def quality(run_dir: Path) -> pd.Series:
        with open_trace(run_dir) as trace:
            return analyses.latest_quality(trace.quality(), metric)

    base_rows = [
        (s, task, float(value))
        for s, run_dir in result.baselines.items()
        for task, value in quality(run_dir).items()
        if task in order
    ]
    rows = []
    for name, by_seed in result.runs.items():
        for s, run_dirs in by_seed.items():
            for run_dir in run_dirs:
                rows += [(name, s, task, float(v)) for task, v in quality(run_dir).items()]
    experiment = analyses.grouping_experiment(
        pd.DataFrame(rows, columns=["scheme", "seed", "task", "value"]),
        pd.DataFrame(base_rows, columns=["seed", "task", "value"]),
        schemes=result.schemes, metric=metric,
    )  # fmt: skip
    result.experiment = experiment

    # 5. Figure, table, JSON.
    fig = figures.grouping_figure(experiment)
    if isinstance(fig, analyses.NotApplicable):
        _say(f"not drawn: grouping figure: {fig.reason}")
    else:
        result.figures += figures.save_figures({"grouping": fig}, out / "figures", formats=formats)
    result.table = out / "grouping.md"
    result.table.write_text(
        figures.grouping_markdown(experiment, notes=result.notes), encoding="utf-8"
    )
    result.timings["total"] = round(time.perf_counter() - start, 1)
    if not isinstance(experiment, analyses.NotApplicable):
        for r in experiment.per_scheme.itertuples():
            interval = f" [{r.ci_low:+.2f}, {r.ci_high:+.2f}]" if math.isfinite(r.ci_low) else ""
            _say(
                f"{r.scheme}: mean {metric} difference {r.mean_delta:+.2f}{interval} over "
                f"{r.n_seeds} seed(s); gains for {r.n_gain}/{r.n_tasks} languages"
            )
    payload = {
        "mode": mode, "k": k, "max_size": max_size, "seeds": seed_list, "metric": metric,
        "affinity": affinity, "distance": distance, "n_random": n_random,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu_count": os.cpu_count(), "workers": workers, "timings_seconds": result.timings,
        "config": {k_: v for k_, v in RecipeConfig.from_dict(base_values).to_dict().items()
                   if k_ not in ("name", "out")},
        "baselines": {str(s): str(p) for s, p in result.baselines.items()},
        "schemes": result.schemes,
        "runs": {n: {str(s): [str(p) for p in ps] for s, ps in by.items()}
                 for n, by in result.runs.items()},
        "grouping": grouping.to_dict(),
        "holdout_across_seeds": json.loads(across.to_json(orient="records")),
        "experiment": None if isinstance(experiment, analyses.NotApplicable)
        else experiment.to_dict(),
        "not_applicable": experiment.reason
        if isinstance(experiment, analyses.NotApplicable) else None,
        "notes": result.notes,
    }  # fmt: skip
    result.results = out / "grouping.json"
    tmp = result.results.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    tmp.replace(result.results)
    _say(f"done in {result.timings['total']:.0f} s: {result.table}")
    return result
