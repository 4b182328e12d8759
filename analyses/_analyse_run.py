"""``analyse_run``: every number a run's commands, figures and report show, computed once.

The orchestration: which statistic runs on which group, window and tasks, and what a run
cannot support (a :class:`~analyses._results.NotApplicable` with its reason). The statistics
themselves live in the modules that own them (similarity, clustering, typology, quality,
evolution, optimizers, multiplicity); the result types in ``analyses._results``.

Uncertainty (see ``analyses._uncertainty``): every statistic carries a circular block bootstrap
interval over snapshots (``ci_low``, ``ci_high``) next to its permutation p-value, each table
of tests a Holm-adjusted p (``p_holm``) with the number of tests in its family
(``frames["tests"]``, ``analyses._multiplicity``), and, when the trace has split halves,
reliability per group and task.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analyses._clustering import cluster_tasks, family_agreement
from analyses._evolution import (
    family_means_by_group,
    family_trajectories,
    group_trajectories,
    pair_spread,
    pair_trajectories,
    pick_pairs,
    reliability_trajectory,
    settling_with_interval,
)
from analyses._flat_clusters import tree_dict
from analyses._inputs import ALL, Window, part_of, tasks_with_nan, window_mask
from analyses._iso import usable_iso_codes
from analyses._mantel import typology_correlation
from analyses._measures import check_measure, has_halves
from analyses._multiplicity import tests_table
from analyses._optimizers import gradvac_target_trajectories, gradvac_tracking
from analyses._quality import quality_correlation, task_quality
from analyses._results import RunResults, describe
from analyses._similarity import (
    LOW_RELIABILITY,
    encoder_decoder_differences,
    reliability_table,
    similarity_summary,
    task_alignment,
    training_changes,
    windowed,
)
from analyses._task_specific import task_specific_groups, task_specific_note
from analyses._typology import DISTANCES, task_family_table, typological_distances
from analyses._uncertainty import LEVEL, N_BOOTSTRAP
from geomtrace import InvalidInputError, TraceError, open_trace


def run_label(path: str | os.PathLike, labels: Sequence[str] = ()) -> str:
    """The run directory's name, made unique among ``labels`` with its parent's name."""
    path = Path(path)
    base = path.parent.name if path.suffix == ".sqlite" else path.name
    label = base or str(path)
    if label in labels:
        label = f"{path.parent.name}/{label}"
    return label


def open_run(run: str | os.PathLike) -> Any:
    """Open a run's trace; a clear :class:`TraceError` for an empty or snapshot-less run."""
    path = Path(run)
    if path.is_dir() and not any(path.iterdir()):
        raise TraceError(f"run directory {str(path)!r} is empty: it holds no trace.sqlite")
    trace = open_trace(path)
    if len(trace.steps) == 0:
        raise TraceError(f"the trace of {str(path)!r} has no snapshots yet: nothing to analyse")
    return trace


#: Parts of :func:`analyse_run`, in order; ``parts=`` selects a subset (and what they need).
PARTS = ("similarity", "clustering", "typology", "layers", "quality", "evolution", "optimizer")


#: Trace meta copied into ``RunResults.meta`` (the report and results.json read them).
RUN_META = ("train_seconds", "train_cpu_seconds", "versions", "interrupted_at_step",
            "corpus_counts")  # fmt: skip


def analyse_run(
    run: Any,
    *,
    group: str | None = None,
    measure: str = "raw",
    window: Window | None = None,
    metric: str | None = None,
    n_permutations: int = 999,
    n_bootstrap: int = N_BOOTSTRAP,
    block: int | None = None,
    seed: int = 0,
    level: float = LEVEL,
    tol: float = 0.05,
    parts: Sequence[str] | None = None,
    label: str | None = None,
    cache: str | os.PathLike | None = None,
    keep_task_specific: bool = False,
) -> RunResults:
    """Analyse one run (a trace, or a run directory / trace.sqlite path) with every analysis.

    ``group`` (default ``all``: whole model) and ``measure`` (``raw``, ``corrected`` with split
    halves, ``centred``) are the headline matrix of the per-task analyses; the similarity
    summary, reliability and the layer table cover every group. ``metric``: the headline
    quality metric (default: the first recorded). ``parts``: a subset of :data:`PARTS`.
    Task-specific groups (``analyses._task_specific``: per-task heads) are reported once in
    ``frames["task_specific_groups"]`` and a note, and left out of the per-group tables
    unless ``keep_task_specific``.
    """
    parts = _checked_parts(n_permutations, measure, parts)
    trace = run if hasattr(run, "gram") else open_run(run)
    group = group or ALL
    _check_for_trace(trace, group, measure)
    description = describe(trace)
    if metric is not None and metric not in description.metrics:
        raise InvalidInputError(
            f"metric {metric!r} is not recorded in the run; it has "
            f"{description.metrics or 'no quality metric'}"
        )
    path = getattr(trace, "path", None)
    result = RunResults(
        run=str(path) if path is not None else None,
        label=label or (run_label(path) if path is not None else "run"),
        tasks=list(trace.tasks),
        group=group,
        measure=measure,
        description=description,
        settings={
            "window": window,
            "n_permutations": n_permutations,
            "n_bootstrap": n_bootstrap,
            "block": block,
            "seed": seed,
            "level": level,
            "tol": tol,
            "metric": metric or (description.metrics[0] if description.metrics else None),
        },  # fmt: skip
        scripts=trace.meta("scripts") if hasattr(trace, "meta") else None,
        config=dict(getattr(trace, "config", {}) or {}),
        meta={k: trace.meta(k) for k in RUN_META} if hasattr(trace, "meta") else {},
    )
    boot = {"n_bootstrap": n_bootstrap, "block": block, "seed": seed, "level": level}
    tables = _task_specific(result, trace, keep_task_specific)
    if not window_mask(np.asarray(trace.steps), window).any():
        _no_snapshot_in_window(result, trace)
        if "evolution" in parts:
            _evolution(result, trace, tol)
        return result

    _similarity(result, trace, tables, boot)
    if "similarity" in parts and len(parts) == 1:
        return result
    sim, complete = _headline_matrix(result, trace, boot)
    codes = _families(result, trace, cache)
    no_iso = (
        f"the {description.tasks_noun} have no ISO 639-3 codes: typological distances and "
        "families need them (Tracer(..., iso_codes=...))"
    )
    if "clustering" in parts:
        _clustering(result, sim, complete, n_permutations, boot)
    if "typology" in parts or "layers" in parts:
        if not codes:
            result.not_applicable["typology"] = result.not_applicable["layers"] = no_iso
        else:
            _typology(result, trace, codes, parts, measure, window, n_permutations, boot, cache)
    if "quality" in parts:
        _quality(result, trace, measure, window, n_permutations, boot, codes, cache)
    if "evolution" in parts:
        _evolution(result, trace, tol)
    if "optimizer" in parts:
        _optimizer(result, trace)
    adjusted, notes = tests_table(result.frames, result.settings["n_permutations"])
    result.frames.update(adjusted)
    result.notes.extend(notes)
    return result


def _no_snapshot_in_window(result: RunResults, trace) -> None:
    """Every windowed part is not applicable: say why once for each."""
    window = result.settings["window"]
    reason = (
        f"no snapshot in the step window {window or '(after step 0)'}: the trace has steps "
        f"{[int(s) for s in trace.steps]}"
    )
    for name in ("similarity", "task_alignment", "similarity_matrix", "clustering",
                 "typology", "layers", "task_quality", "quality"):  # fmt: skip
        result.not_applicable[name] = reason


def _task_specific(result: RunResults, trace, keep: bool) -> list[str] | None:
    """Report the task-specific groups (per-task heads) once and set the groups of the
    per-group tables (``settings["groups"]``): without them unless ``keep``. Returns those
    groups, or None (every group) when none is left out."""
    specific = task_specific_groups(trace)
    if len(specific):
        result.frames["task_specific_groups"] = specific
        result.notes.append(task_specific_note(specific, result.description.tasks_noun))
    hidden = set() if keep else set(specific["group"])
    shared = [g for g in trace.groups if g not in hidden]
    result.settings["groups"] = shared if ALL in trace.groups else [ALL, *shared]
    return result.settings["groups"] if hidden else None  # None: every group, as before


def _checked_parts(n_permutations: Any, measure: str, parts: Sequence[str] | None) -> list[str]:
    """The parts to run (default: every part of :data:`PARTS`), after checking the options
    that need no trace."""
    if (
        isinstance(n_permutations, bool)
        or not isinstance(n_permutations, int)
        or n_permutations < 1
    ):
        raise InvalidInputError(
            f"n_permutations={n_permutations!r}: give a positive number of permutations"
        )
    check_measure(measure)
    parts = list(PARTS if parts is None else parts)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise InvalidInputError(f"unknown part(s) {unknown}; allowed: {', '.join(PARTS)}")
    return parts


def _check_for_trace(trace, group: str, measure: str) -> None:
    """Refuse a group the trace does not have, or the corrected measure without halves."""
    if group != ALL and group not in trace.groups:
        raise InvalidInputError(
            f"unknown group {group!r}; the trace has {list(trace.groups)} or {ALL!r}"
        )
    if measure == "corrected" and not has_halves(trace):
        raise InvalidInputError(
            "measure='corrected' needs split halves: trace with Tracer(..., halves=True) "
            "(geomtrace trace --set halves=true); this trace has none"
        )


def _similarity(result: RunResults, trace, tables: list[str] | None, boot) -> None:
    """Similarity of every group of ``tables`` (None: every group), the paired
    encoder/decoder differences, reliability, and the warnings they call for."""
    window = result.settings["window"]
    result.frames["similarity"] = similarity_summary(
        trace, tables, measure=result.measure, window=window, **boot
    )
    differences = encoder_decoder_differences(trace, result.settings["groups"], window, boot)
    if differences is not None:
        result.frames["group_differences"] = differences
    # each group's change from step 0 to the window (paired, noise-corrected with halves)
    changes = training_changes(
        trace, tables, result.description.halves, result.measure, window, boot
    )
    if changes is None:
        result.not_applicable["training_change"] = "the trace has no step-0 snapshot"
    else:
        result.frames["training_change"] = changes
    if result.description.halves:
        result.frames["reliability"] = reliability_table(trace, tables, window=window)
    else:
        result.not_applicable["reliability"] = (
            "the trace has no split halves (Tracer(..., halves=True)): reliability unknown"
        )
    _reliability_warnings(result)


def _headline_matrix(result: RunResults, trace, boot) -> tuple[Any, list[str]]:
    """The headline group's similarity (window and step 0) and its task alignment; returns
    the windowed ``Similarity`` and the tasks with complete similarities."""
    group, measure, window = result.group, result.measure, result.settings["window"]
    sim = windowed(trace, group, measure, window=window)
    matrix = pd.DataFrame(sim.matrix(), index=sim.tasks, columns=sim.tasks)
    result.frames["similarity_matrix"] = matrix
    at0 = np.asarray(trace.steps) == 0
    if at0.any():
        full = windowed(trace, group, measure, window=(0, 0))
        result.frames["similarity_matrix_step0"] = pd.DataFrame(
            full.matrix(), index=full.tasks, columns=full.tasks
        )
    result.frames["task_alignment"] = task_alignment(
        trace, group, measure=measure, window=window, **boot
    )
    complete = [t for t in sim.tasks if t not in tasks_with_nan(matrix.to_numpy(), sim.tasks)]
    result.settings["complete_tasks"] = complete
    return sim, complete


def _families(result: RunResults, trace, cache) -> dict[str, str]:
    """The usable ISO codes of the tasks ({task: code}), with their families and genera
    recorded in ``result`` where there are any."""
    codes, unknown = usable_iso_codes(trace.iso_codes)
    if unknown:
        result.notes.append(unknown)
    if codes:
        families = task_family_table(codes, cache)
        result.frames["families"] = families
        result.families = dict(zip(families["task"], families["family"], strict=True))
        result.genera = dict(zip(families["task"], families["genus"], strict=True))
    return codes


def _table_groups(result: RunResults, trace) -> list[str]:
    """The groups of the per-group tables: ``all`` and every group but task-specific ones."""
    return result.settings.get("groups") or (
        [ALL, *trace.groups] if ALL not in trace.groups else list(trace.groups)
    )


def _reliability_warnings(result: RunResults) -> None:
    sim = result.frames["similarity"]
    head = sim[sim["group"] == result.group]
    if head.empty:
        return
    r = float(head["reliability"].iloc[0])
    if not result.description.halves:
        result.warnings.append(
            "reliability unknown (no split halves in the trace): the similarities may be mostly "
            "sampling noise, which pulls every cosine towards 0; trace with halves=True to know"
        )
    elif not math.isfinite(r):
        result.warnings.append("reliability could not be estimated (split-half products <= 0)")
    elif r < LOW_RELIABILITY:
        where = "whole-model" if result.group == ALL else f"{result.group}"
        result.warnings.append(
            f"low reliability: the {where} snapshot gradients are {100 * (1 - r):.0f}% sampling "
            f"noise (reliability {r:.2f} < {LOW_RELIABILITY}); raw similarities are attenuated "
            "by about sqrt(r_i r_j) and their statistics rest on noisy matrices: take each "
            "snapshot from more rows per task (larger snapshot or probe batches)"
        )


def agreement_levels(result: RunResults, labelled: list[str]) -> list[tuple]:
    """The label sets the clusters are compared with: (level, {task: label}, tasks).

    Family and genus; script where every task has one; genus within the largest script.
    Why script: it is a named confound (issue 22). Byte-level models see shared characters,
    and script agrees with family for many languages, so script agreement sits beside family
    and genus, and genus agreement is repeated within one script (stratified).
    """
    levels = [("family", result.families, labelled), ("genus", result.genera, labelled)]
    scripts = {t: s for t, s in (result.scripts or {}).items() if t in labelled and s}
    if len(scripts) == len(labelled):
        levels.append(("script", scripts, labelled))
        largest = max(set(scripts.values()), key=list(scripts.values()).count)
        within = [t for t in labelled if scripts[t] == largest]
        if len(within) >= 4 and len({result.genera[t] for t in within}) > 1:
            levels.append((f"genus within {largest}", result.genera, within))
    return levels


def _agreement_frames(result: RunResults, sim, labelled, n_permutations, boot) -> list:
    """``family_agreement`` of ``sim``'s step-averaged matrix over ``labelled`` at every level
    of :func:`agreement_levels` (column ``level`` added), one bootstrap for all levels."""
    index = [sim.tasks.index(t) for t in labelled]
    sub = pd.DataFrame(sim.matrix()[np.ix_(index, index)], index=labelled, columns=labelled)
    replicates = sim.replicates(boot["n_bootstrap"], block=boot["block"], seed=boot["seed"])
    replicates = replicates[:, index][:, :, index]
    frames = []
    for level, labels, tasks in agreement_levels(result, labelled):
        pick = [labelled.index(t) for t in tasks]
        frame = family_agreement(
            sub.loc[tasks, tasks], {t: labels[t] for t in tasks},
            n_permutations=n_permutations, seed=boot["seed"],
            replicates=replicates[:, pick][:, :, pick], level=boot["level"],
            df=sim.bootstrap_df(boot["block"]),
        )  # fmt: skip
        frames.append(frame.assign(level=level))
    return frames


def _clustering(result: RunResults, sim, complete, n_permutations, boot) -> None:
    """The tree always (it needs no labels); agreement with families where they are known."""
    if len(complete) < 3:
        result.not_applicable["clustering"] = (
            f"clustering needs at least 3 {result.description.tasks_noun} with complete "
            f"similarities, got {len(complete)} ({complete})"
        )
        return
    index = [sim.tasks.index(t) for t in complete]
    matrix = sim.matrix()[np.ix_(index, index)]
    result.tree = cluster_tasks(matrix, complete)
    result.clusters = tree_dict(result.tree, matrix)
    labelled = [t for t in complete if t in result.families]
    if len(labelled) < 4 or not result.families:
        noun = result.description.tasks_noun
        result.not_applicable["clustering"] = (
            "agreement with families needs >= 4 languages with ISO 639-3 codes (Glottolog "
            f"families); the tree of the {noun} is drawn without it ({len(labelled)} labelled)"
            if result.description.task_noun == "language"
            else f"the {noun} have no ISO 639-3 codes, so no family labels: the tree is drawn "
            "without an agreement test"
        )
        return
    parts = _agreement_frames(result, sim, labelled, n_permutations, boot)
    out = pd.concat([f.assign(group=result.group) for f in parts], ignore_index=True)
    left_out = [t for t in sim.tasks if t not in labelled]
    if left_out:
        why = f"left out (missing similarity or family): {', '.join(left_out)}"
        out["note"] = [f"{n}; {why}" if n else why for n in out["note"]]
    result.frames["clustering"] = out[["group", "level", *out.columns[:-2]]]


def _languages_for_typology(trace, group, measure, window, codes) -> list[str]:
    """The tasks a typology test of ``group`` can use: ISO code and complete similarities."""
    sim = windowed(trace, group, measure, window=window)
    labelled = [t for t in sim.tasks if t in codes]
    index = [sim.tasks.index(t) for t in labelled]
    sub = sim.matrix()[np.ix_(index, index)]
    drop = set(tasks_with_nan(sub, labelled))
    return [t for t in labelled if t not in drop]


def _typology(result, trace, codes, parts, measure, window, n_permutations, boot, cache) -> None:
    kw = {"measure": measure, "window": window, "n_permutations": n_permutations,
          "cache": cache, "iso_codes": codes, **boot}  # fmt: skip
    usable = _languages_for_typology(trace, result.group, measure, window, codes)
    if "typology" in parts:
        if len(usable) < 4:
            result.not_applicable["typology"] = (
                f"a Mantel test needs >= 4 languages with ISO codes and complete similarities; "
                f"the run has {len(usable)} ({usable})"
            )
        else:
            result.frames["typology"] = typology_correlation(trace, result.group, **kw)
            tasks = [t for t in trace.tasks if t in codes]
            kinds = [k for k in DISTANCES if k in set(result.frames["typology"]["distance"])]
            matrices = typological_distances(sorted(set(codes.values())), kinds, cache=cache)
            result.distances = {
                k: pd.DataFrame(
                    m.loc[[codes[t] for t in tasks], [codes[t] for t in tasks]].to_numpy(),
                    index=tasks, columns=tasks,
                )
                for k, m in matrices.items()
            }  # fmt: skip
    if "layers" not in parts:
        return
    groups = _table_groups(result, trace)
    if len(groups) < 3:  # "all" and one group: the same numbers twice
        result.not_applicable["layers"] = (
            f"the trace has one parameter group ({list(trace.groups)}): no layer table"
        )
        return
    rows, agreement, skipped = [], [], []
    for g in groups:
        if len(_languages_for_typology(trace, g, measure, window, codes)) < 4:
            skipped.append(g)
            continue
        frame = (
            result.frames["typology"]
            if g == result.group and "typology" in result.frames
            else typology_correlation(trace, g, **kw)
        )
        frame = frame.assign(position=list(trace.groups).index(g) if g in trace.groups else -1)
        rows.append(frame.assign(part="whole" if g == ALL else part_of(g)))
        agreement.append(_group_agreement(result, trace, g, measure, window, n_permutations, boot))
    if not rows:
        result.not_applicable["layers"] = (
            "no group has >= 4 languages with ISO codes and complete similarities"
        )
    if skipped and rows:
        result.warnings.append(
            f"layer table: groups {skipped} left out (< 4 languages with complete similarities)"
        )
    if rows:
        table = pd.concat(rows, ignore_index=True)
        # One control per row in the layer table: character overlap where known (the main
        # confound of byte-level models), else script; the covariates themselves are left out.
        controls = [c for c in ("char_overlap", "script") if c in set(table["control"].dropna())]
        keep = table["distance"].isin(DISTANCES)
        if controls:
            keep &= table["control"] == controls[0]
        result.frames["layers"] = table[keep].reset_index(drop=True)
        if controls[:1] == ["char_overlap"] and "script" in controls:
            # Script as the second control of every group's partials (issue 22): its own
            # frame, so the layer table keeps one row per (group, distance).
            by_script = table["distance"].isin(DISTANCES) & (table["control"] == "script")
            result.frames["layers_script"] = table[by_script].reset_index(drop=True)
    agreement = [a for a in agreement if a is not None]
    if agreement:
        result.frames["layer_clustering"] = pd.concat(agreement, ignore_index=True)


def _group_agreement(result, trace, g, measure, window, n_permutations, boot):
    if not result.families:
        return None
    sim = windowed(trace, g, measure, window=window)
    matrix = sim.matrix()
    labelled = [t for t in sim.tasks if t in result.families]
    index = [sim.tasks.index(t) for t in labelled]
    sub = matrix[np.ix_(index, index)]
    drop = set(tasks_with_nan(sub, labelled))
    labelled = [t for t in labelled if t not in drop]
    if len(labelled) < 4:
        return None
    frames = _agreement_frames(result, sim, labelled, n_permutations, boot)
    frames = [f[f["statistic"] != "cophenetic_correlation"] for f in frames]
    out = pd.concat(frames, ignore_index=True).assign(group=g)
    return out[["group", "level", *[c for c in out.columns if c not in ("group", "level")]]]


def _quality(result, trace, measure, window, n_permutations, boot, codes, cache) -> None:
    quality = trace.quality() if hasattr(trace, "quality") else pd.DataFrame()
    if quality.empty:
        reason = "the run recorded no quality measurements (Tracer.record_quality)"
        result.not_applicable["task_quality"] = result.not_applicable["quality"] = reason
        return
    result.frames["quality_values"] = quality
    result.frames["task_quality"] = task_quality(
        trace, result.group, quality=quality, measure=measure, window=window,
        n_bootstrap=boot["n_bootstrap"], seed=boot["seed"],
    )  # fmt: skip
    complete = result.settings.get("complete_tasks", result.tasks)
    if len(complete) < 4:
        result.not_applicable["quality"] = (
            f"a quality correlation needs >= 4 {result.description.tasks_noun} with "
            f"similarities, got {len(complete)}"
        )
        return
    # The spatial test where every task has a usable ISO code (else permutations, noted).
    result.frames["quality"] = quality_correlation(
        trace, result.group, quality=quality, measure=measure, window=window,
        n_permutations=n_permutations, iso_codes=codes, cache=cache, **boot,
    )  # fmt: skip


def _evolution(result: RunResults, trace, tol: float) -> None:
    if len(trace.steps) < 2:
        reason = f"the trace has {len(trace.steps)} snapshot: no evolution over steps"
        for name in ("group_trajectories", "family_trajectories", "pair_spread", "pairs"):
            result.not_applicable[name] = reason
        return
    measure = result.measure
    traj = group_trajectories(trace, _table_groups(result, trace), measure=measure)
    result.frames["group_trajectories"] = traj
    rel = reliability_trajectory(trace, result.group)
    if not rel.empty:
        result.frames["reliability_trajectory"] = rel
    pairs = pair_trajectories(
        trace, result.group, families=result.families or None, measure=measure
    )
    result.frames["group_settling"] = settling_with_interval(
        pairs, kinds=False, tol=tol, seed=result.settings["seed"]
    ).assign(group=result.group)
    result.frames["pair_spread"] = pair_spread(pairs)
    chosen = set(pick_pairs(pairs))
    mask = [(a, b) in chosen for a, b in zip(pairs["task_a"], pairs["task_b"], strict=True)]
    result.frames["pairs"] = pairs[mask].reset_index(drop=True)
    last = pairs[pairs["step"] == pairs["step"].max()]
    result.frames["final_pairs"] = last[["task_a", "task_b", "cosine"]].reset_index(drop=True)
    if result.families:
        result.frames["family_trajectories"] = family_trajectories(
            trace, result.families, result.group, measure=measure
        )
        result.frames["family_settling"] = settling_with_interval(
            pairs, kinds=True, tol=tol, seed=result.settings["seed"]
        ).assign(group=result.group)
        if len(trace.groups) >= 2:
            result.frames["by_family"] = family_means_by_group(
                trace, result.families, _table_groups(result, trace), measure=measure
            )
    else:
        result.not_applicable["family_trajectories"] = (
            f"no families: the {result.description.tasks_noun} have no ISO 639-3 codes"
        )


def _optimizer(result: RunResults, trace) -> None:
    targets = gradvac_target_trajectories(trace)
    if targets.empty:
        result.not_applicable["gradvac_targets"] = result.not_applicable["gradvac_tracking"] = (
            f"the run's method is {result.description.method!r}: no GradVac targets recorded"
        )
        return
    result.frames["gradvac_targets"] = targets
    tracking = gradvac_tracking(trace, targets)
    if tracking is not None:
        result.frames["gradvac_tracking"] = tracking


def analyse_runs(runs: Sequence[Any], *, progress=None, **kwargs: Any) -> list[RunResults]:
    """:func:`analyse_run` for every run, with unique labels."""
    if not runs:
        raise InvalidInputError("no run given: pass at least one run directory")
    out: list[RunResults] = []
    for run in runs:
        path = getattr(run, "path", run)
        label = run_label(Path(path), [r.label for r in out])
        if progress:
            progress(f"analysing {label}")
        out.append(analyse_run(run, label=label, **kwargs))
    return out


__all__ = ["PARTS", "analyse_run", "analyse_runs", "open_run", "run_label"]
