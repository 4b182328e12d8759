"""The grouping experiment (issue 15, ``geomtrace reproduce --grouping``): does training one
model per gradient-based group of languages beat the all-language model?

The steps of :func:`reproduce_grouping`, each a function here: train the all-language
baselines, choose the schemes (the gradient grouping and its baselines), train one model per
group, compute the seed-matched differences (``analyses.grouping_experiment``) and write the
figure, the table and ``grouping.json``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geomtrace import InvalidInputError

from ._paper import PlannedRun
from ._runs import _config_differences, _say, _train_all, finished

#: Schemes ``reproduce_grouping`` can train: the gradient grouping and its baselines.
GROUPING_SCHEMES = ("gradient", "typology", "family", "random")

#: ``geomtrace reproduce --grouping``'s help: the experiment and what it took
GROUPING_HELP = (
    "instead: the grouping experiment (one model per group of the gradient, typology and a "
    "random grouping, 2 seeds, vs the all-language model; OUT/grouping.md, OUT/grouping.json, "
    "OUT/figures/grouping.png; ~15 min on 2 idle cores when OUT holds a reproduction's sum "
    "runs, ~20 min without)"
)


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
    import figures

    formats = figures.parse_formats(formats)
    schemes = _checked_schemes(k, seeds, n_random, schemes)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out {str(out)!r} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    mode = "quick" if quick else "default"
    workers = workers if workers is not None else (2 if (os.cpu_count() or 1) >= 2 else 1)
    if workers < 1:
        raise InvalidInputError(f"--workers {workers}: give at least 1")
    base_values = _base_values(mode, k, workers, overrides)
    seed_list = [seed + n for n in range(seeds)]
    result = GroupingResult(out)
    start = time.perf_counter()

    # 1. The all-language baselines.
    _say(f"grouping experiment ({mode}) into {out}: k={k}, seeds {seed_list}, {workers} at a time")
    _train_baselines(result, base_values, seed_list, force, workers)

    # 2. The schemes.
    t0 = time.perf_counter()
    max_size = _choose_grouping(result, k, affinity, distance, n_bootstrap, seed)
    across = _holdout_across_seeds(result, k, seed_list, max_size, affinity, seed)
    _choose_schemes(result, schemes, n_random, seed)
    result.timings["grouping"] = round(time.perf_counter() - t0, 1)

    # 3. One model per group, scheme and seed.
    _train_group_runs(result, base_values, seed_list, force, workers)

    # 4. The numbers.
    result.experiment = _experiment(result, metric)

    # 5. Figure, table, JSON.
    _write_figure_and_table(result, formats)
    result.timings["total"] = round(time.perf_counter() - start, 1)
    _say_per_scheme(result.experiment, metric)
    settings = {
        "mode": mode, "k": k, "max_size": max_size, "seeds": seed_list, "metric": metric,
        "affinity": affinity, "distance": distance, "n_random": n_random,
    }  # fmt: skip
    payload = _grouping_payload(result, settings, workers, base_values, across)
    result.results = out / "grouping.json"
    tmp = result.results.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    tmp.replace(result.results)
    _say(f"done in {result.timings['total']:.0f} s: {result.table}")
    return result


def _checked_schemes(k: int, seeds: int, n_random: int, schemes: Sequence[str]) -> list[str]:
    """The schemes to train (duplicates dropped); refuses counts below their minimum and
    schemes not in :data:`GROUPING_SCHEMES`."""
    for name, value, low in (("k", k, 1), ("seeds", seeds, 1), ("n_random", n_random, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InvalidInputError(f"{name}={value!r}: give an integer >= {low}")
    schemes = list(dict.fromkeys(schemes))
    bad = [s for s in schemes if s not in GROUPING_SCHEMES]
    if bad or not schemes:
        raise InvalidInputError(
            f"schemes {bad or schemes}: choose from {', '.join(GROUPING_SCHEMES)}"
        )
    return schemes


def _base_values(mode: str, k: int, workers: int, overrides: dict[str, Any] | None) -> dict:
    """The config values every run of the experiment shares (the preset of ``mode`` with
    ``overrides``); refuses a ``k`` above the number of languages before any training."""
    from geomtrace.recipe import preset

    base_values = preset(mode).to_dict() | dict(overrides or {})
    n_langs = len(base_values["langs"])
    if k > n_langs:  # before any training: the baselines alone take minutes
        raise InvalidInputError(
            f"k={k}: the {mode} grouping experiment has {n_langs} languages; give k between 1 "
            f"and {n_langs}"
        )
    if workers > 1 and "threads" not in (overrides or {}):
        base_values["threads"] = 1
    return base_values


def _train_baselines(
    result: GroupingResult, base_values: dict, seed_list: list[int], force: bool, workers: int
) -> None:
    """Step 1: the all-language ``sum`` run of each seed (``result.baselines``)."""
    from geomtrace.recipe import RecipeConfig

    out = result.out
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


def _choose_grouping(
    result: GroupingResult, k: int, affinity: str, distance: str, n_bootstrap: int, seed: int
) -> int:
    """Step 2a: the gradient grouping of the first seed's baseline (``result.grouping``, its
    notes and in-sample holdout); returns the largest group size allowed, ceil(K / k)."""
    import analyses
    from geomtrace import open_trace

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
    return max_size


def _holdout_across_seeds(
    result: GroupingResult, k: int, seed_list: list[int], max_size: int, affinity: str, seed: int
):
    """Step 2b, out of sample (issue 22): within the first seed's run (half the snapshots each
    way, in ``grouping.holdout``) and, with two seeds, chosen on one seed's run and scored on
    the other's: the grouping's score on data its search never saw. Both go to the notes; the
    across-seeds frame (empty with one seed or another affinity) is returned."""
    import pandas as pd

    import analyses

    across = pd.DataFrame()
    if affinity == "cosine" and len(seed_list) >= 2:
        across = analyses.grouping_holdout(
            result.baselines[seed_list[0]], k, other=result.baselines[seed_list[1]],
            max_size=max_size, n_random=999, seed=seed,
        )  # fmt: skip
        across["fit_on"] = [f"seed {s}" for s in seed_list[:2]]
        across["scored_on"] = [f"seed {s}" for s in reversed(seed_list[:2])]
    for frame in (result.grouping.holdout, across):
        for row in frame.itertuples():
            result.notes.append(
                f"out of sample: chosen on {row.fit_on}, scored on {row.scored_on}: "
                f"{row.score:+.3f} vs random {row.random_mean:+.3f}, p = {row.p_value:.3f}, "
                f"retains {row.retained:.0%} of the best above-chance score there"
            )
    return across


def _choose_schemes(result: GroupingResult, schemes: list[str], n_random: int, seed: int) -> None:
    """Step 2c: the partition of each scheme (``result.schemes``), in the order asked; a
    scheme the grouping could not compute and a partition two schemes share go to the notes."""
    import analyses

    grouping = result.grouping
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


def _task_order(result: GroupingResult) -> dict[str, int]:
    """Each task's position in the grouping's task order."""
    return {t: n for n, t in enumerate(result.grouping.affinity.tasks)}


def _train_group_runs(
    result: GroupingResult, base_values: dict, seed_list: list[int], force: bool, workers: int
) -> None:
    """Step 3: one model per group, scheme and seed (``result.runs``); a group two schemes
    share is trained once."""
    from geomtrace.recipe import RecipeConfig

    order = _task_order(result)
    todo, planned = [], set()
    runs_dir = result.out / "runs" / "grouping"
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


def _experiment(result: GroupingResult, metric: str):
    """Step 4: ``analyses.grouping_experiment`` on the final ``metric`` of every group run and
    of the baseline of the same seed."""
    import pandas as pd

    import analyses
    from geomtrace import open_trace

    def quality(run_dir: Path) -> pd.Series:
        with open_trace(run_dir) as trace:
            return analyses.latest_quality(trace.quality(), metric)

    order = _task_order(result)
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
    return analyses.grouping_experiment(
        pd.DataFrame(rows, columns=["scheme", "seed", "task", "value"]),
        pd.DataFrame(base_rows, columns=["seed", "task", "value"]),
        schemes=result.schemes, metric=metric,
    )  # fmt: skip


def _write_figure_and_table(result: GroupingResult, formats: list[str]) -> None:
    """Step 5a: ``figures/grouping.<fmt>`` (unless the experiment does not apply) and the
    Markdown table ``grouping.md`` with the notes."""
    import analyses
    import figures

    experiment = result.experiment
    fig = figures.grouping_figure(experiment)
    if isinstance(fig, analyses.NotApplicable):
        _say(f"not drawn: grouping figure: {fig.reason}")
    else:
        result.figures += figures.save_figures(
            {"grouping": fig}, result.out / "figures", formats=formats
        )
    result.table = result.out / "grouping.md"
    result.table.write_text(
        figures.grouping_markdown(experiment, notes=result.notes), encoding="utf-8"
    )


def _say_per_scheme(experiment: Any, metric: str) -> None:
    """One progress line per scheme: its mean difference, interval and gains."""
    import analyses

    if isinstance(experiment, analyses.NotApplicable):
        return
    for r in experiment.per_scheme.itertuples():
        interval = f" [{r.ci_low:+.2f}, {r.ci_high:+.2f}]" if math.isfinite(r.ci_low) else ""
        _say(
            f"{r.scheme}: mean {metric} difference {r.mean_delta:+.2f}{interval} over "
            f"{r.n_seeds} seed(s); gains for {r.n_gain}/{r.n_tasks} languages"
        )


def _grouping_payload(
    result: GroupingResult, settings: dict, workers: int, base_values: dict, across: Any
) -> dict[str, Any]:
    """Step 5b: the contents of ``grouping.json`` (``settings``: the experiment's parameters,
    its first keys)."""
    import analyses
    from geomtrace.recipe import RecipeConfig

    experiment = result.experiment
    return settings | {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu_count": os.cpu_count(), "workers": workers, "timings_seconds": result.timings,
        "config": {k_: v for k_, v in RecipeConfig.from_dict(base_values).to_dict().items()
                   if k_ not in ("name", "out")},
        "baselines": {str(s): str(p) for s, p in result.baselines.items()},
        "schemes": result.schemes,
        "runs": {n: {str(s): [str(p) for p in ps] for s, ps in by.items()}
                 for n, by in result.runs.items()},
        "grouping": result.grouping.to_dict(),
        "holdout_across_seeds": json.loads(across.to_json(orient="records")),
        "experiment": None if isinstance(experiment, analyses.NotApplicable)
        else experiment.to_dict(),
        "not_applicable": experiment.reason
        if isinstance(experiment, analyses.NotApplicable) else None,
        "notes": result.notes,
    }  # fmt: skip
