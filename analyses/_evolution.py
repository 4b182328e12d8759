"""How similarity evolves: across groups in model order, over steps, per pair, and when it settles."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

import geomtrace as gt
from analyses._inputs import (
    ALL,
    CosineStack,
    Window,
    is_trace,
    off_diagonal_pairs,
    part_of,
    window_mask,
)
from analyses._measures import similarity
from analyses._uncertainty import LEVEL, interval
from geomtrace import InvalidInputError

GROUP_TRAJECTORY_COLUMNS = ["group", "position", "part", "step", "mean_cosine", "conflict_rate"]
FAMILY_TRAJECTORY_COLUMNS = ["group", "step", "kind", "mean_cosine", "n_pairs"]
PAIR_TRAJECTORY_COLUMNS = ["group", "step", "task_a", "task_b", "cosine", "same_family"]
SETTLING_COLUMNS = ["final_value", "settle_step", "last_step", "tol", "n_final"]
FAMILY_GROUP_COLUMNS = ["group", "position", "part", "kind", "mean_cosine", "n_snapshots"]
PAIR_SPREAD_COLUMNS = ["group", "step", "kind", "q25", "q75", "n_pairs"]
RELIABILITY_TRAJECTORY_COLUMNS = ["group", "step", "reliability", "mean_cosine", "mean_corrected"]


def reliability_trajectory(trace: Any, group: str = ALL) -> pd.DataFrame:
    """Per snapshot of ``group``: the mean reliability over tasks, the raw and the
    noise-corrected mean pair similarity (issue 22: a fall of the raw mean over training is
    partly attenuation, as reliability falls).

    reliability = mean_i R_i(t), R_i(t) = 4 a_i.b_i / |a_i + b_i|^2 (``Trace.reliability``);
    mean_cosine = mean over pairs of the raw cosine at t; mean_corrected = mean over pairs of
    the per-snapshot noise-corrected cosine (``Trace.cosine(corrected=True)``, clipped to
    [-1, 1]; NaN where a task's signal estimate is <= 0). A per-snapshot corrected value is
    noisy (its denominator is one snapshot's signal estimate); the window estimates of
    ``similarity_summary`` average before dividing. Empty without split halves.
    """
    if not is_trace(trace) or not trace.has_halves:
        return pd.DataFrame(columns=RELIABILITY_TRAJECTORY_COLUMNS)
    raw = trace.cosine(group)
    with np.errstate(invalid="ignore", divide="ignore"):
        corrected = np.clip(trace.cosine(group, corrected=True), -1.0, 1.0)
        reliability = trace.reliability(group)
    return pd.DataFrame(
        {
            "group": group,
            "step": np.asarray(trace.steps),
            "reliability": gt.nanmean(reliability, axis=1),
            "mean_cosine": gt.mean_pair_similarity(raw),
            "mean_corrected": gt.mean_pair_similarity(corrected),
        }
    )[RELIABILITY_TRAJECTORY_COLUMNS]


def _snapshots(source, group, measure="raw", tasks=None, steps=None) -> CosineStack:
    """Per-snapshot similarity matrices of ``group`` under ``measure`` (step 0 included)."""
    sim = similarity(source, group, measure, tasks=tasks, steps=steps)
    return CosineStack(sim.snapshot_matrices(), sim.steps, sim.tasks, sim.group)


def _pair_values(stack) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    iu = off_diagonal_pairs(len(stack.tasks))
    return stack.cosine[:, iu[0], iu[1]], iu


def group_trajectories(
    trace: Any, groups: Sequence[str] | None = None, *, measure: str = "raw"
) -> pd.DataFrame:
    """Mean off-diagonal cosine and conflict rate of every group at every snapshot.

    Groups in model order (``position`` = index in ``trace.groups``, -1 for ``all``); ``part``
    is embedding / encoder / decoder / other from the group name. Step 0 included.
    Columns: group, position, part, step, mean_cosine, conflict_rate.
    """
    if not is_trace(trace):
        raise InvalidInputError("group_trajectories needs a trace (it spans the groups)")
    groups = (
        ([ALL] if ALL not in trace.groups else []) + list(trace.groups)
        if groups is None
        else list(groups)
    )
    parts = []
    for g in groups:
        stack = _snapshots(trace, g, measure)
        values, _ = _pair_values(stack)
        conflict = np.array([gt.conflict_rate(m) for m in stack.cosine])
        parts.append(
            pd.DataFrame(
                {
                    "group": g,
                    "position": trace.groups.index(g) if g in trace.groups else -1,
                    "part": "whole" if g == ALL else part_of(g),
                    "step": stack.steps,
                    "mean_cosine": gt.mean_pair_similarity(stack.cosine),
                    "conflict_rate": conflict,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)[GROUP_TRAJECTORY_COLUMNS]


def _family_list(families, tasks: list[str]) -> list[str | None]:
    if isinstance(families, Mapping):
        return [None if families.get(t) is None else str(families[t]) for t in tasks]
    fam = [None if f is None else str(f) for f in families]
    if len(fam) != len(tasks):
        raise InvalidInputError(f"{len(fam)} families for {len(tasks)} tasks")
    return fam


def family_trajectories(
    source: Any,
    families: Mapping[str, str] | Sequence[str],
    group: str | None = None,
    *,
    measure: str = "raw",
    tasks: Sequence[str] | None = None,
    steps: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Within-family vs across-family mean cosine at every snapshot.

    kind ``within``: mean cos_ij over pairs i<j of the same family; ``across``: different
    families (NaN cosines skipped; tasks without a family are left out). n_pairs counts the
    pairs of that kind. Columns: group, step, kind, mean_cosine, n_pairs.
    """
    stack = _snapshots(source, group, measure, tasks, steps)
    fam = _family_list(families, stack.tasks)
    values, (i, j) = _pair_values(stack)
    known = np.array(
        [fam[a] is not None and fam[b] is not None for a, b in zip(i, j, strict=True)], dtype=bool
    )
    same = np.array([fam[a] == fam[b] for a, b in zip(i, j, strict=True)], dtype=bool) & known
    rows = []
    for kind, mask in (("within", same), ("across", known & ~same)):
        mean = (
            gt.nanmean(values[:, mask], axis=1) if mask.any() else np.full(len(stack.steps), np.nan)
        )
        rows.append(
            pd.DataFrame(
                {
                    "group": stack.group,
                    "step": stack.steps,
                    "kind": kind,
                    "mean_cosine": mean,
                    "n_pairs": int(mask.sum()),
                }
            )
        )
    return pd.concat(rows, ignore_index=True)[FAMILY_TRAJECTORY_COLUMNS]


def family_means_by_group(
    trace: Any,
    families: Mapping[str, str] | Sequence[str],
    groups: Sequence[str] | None = None,
    *,
    window: Window | None = None,
    measure: str = "raw",
) -> pd.DataFrame:
    """Within- and across-family mean cosine of every parameter group, averaged over a window.

    For group g and kind k (``within``/``across``, as in :func:`family_trajectories`), with
    m_gk(s) the mean of cos_ij over the pairs i<j of that kind at snapshot s:
    mean_cosine = mean of m_gk(s) over the snapshots s in ``window`` where m_gk(s) is finite
    (default window: every snapshot after step 0), n_snapshots = how many such s.
    Groups in the order asked (default: ``trace.groups``, model order); ``position`` = index
    in ``trace.groups`` (-1 for ``all``), ``part`` = embedding / encoder / decoder / other
    (``whole`` for ``all``). Columns: group, position, part, kind, mean_cosine, n_snapshots.
    """
    if not is_trace(trace):
        raise InvalidInputError("family_means_by_group needs a trace (it spans the groups)")
    rows = []
    for g in list(trace.groups) if groups is None else list(groups):
        traj = family_trajectories(trace, families, g, measure=measure)
        traj = traj[window_mask(traj["step"].to_numpy(), window)]
        for kind, part in traj.groupby("kind", sort=False):
            values = part["mean_cosine"].to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            rows.append(
                {
                    "group": g,
                    "position": trace.groups.index(g) if g in trace.groups else -1,
                    "part": "whole" if g == ALL else part_of(g),
                    "kind": kind,
                    "mean_cosine": float(values.mean()) if values.size else np.nan,
                    "n_snapshots": int(values.size),
                }
            )
    return pd.DataFrame(rows, columns=FAMILY_GROUP_COLUMNS)


def pair_trajectories(
    source: Any,
    group: str | None = None,
    *,
    families: Mapping[str, str] | Sequence[str] | None = None,
    measure: str = "raw",
    tasks: Sequence[str] | None = None,
    steps: Sequence[int] | None = None,
) -> pd.DataFrame:
    """cos_ij of every unordered pair i<j (task order) at every snapshot.

    same_family: True/False when both tasks have a family, else None.
    Columns: group, step, task_a, task_b, cosine, same_family.
    """
    stack = _snapshots(source, group, measure, tasks, steps)
    values, (i, j) = _pair_values(stack)
    S, P = values.shape
    fam = _family_list(families, stack.tasks) if families is not None else [None] * len(stack.tasks)
    same = [
        None if fam[a] is None or fam[b] is None else fam[a] == fam[b]
        for a, b in zip(i, j, strict=True)
    ]
    tasks_arr = np.array(stack.tasks, dtype=object)
    return pd.DataFrame(
        {
            "group": stack.group,
            "step": np.repeat(stack.steps, P),
            "task_a": np.tile(tasks_arr[i], S),
            "task_b": np.tile(tasks_arr[j], S),
            "cosine": values.reshape(-1),
            "same_family": np.tile(np.array(same, dtype=object), S),
        },
        columns=PAIR_TRAJECTORY_COLUMNS,
    )


def pair_spread(pairs: pd.DataFrame) -> pd.DataFrame:
    """Interquartile band of the pairs' cosines per group, step and kind.

    ``pairs``: a :func:`pair_trajectories` frame. kind = ``within`` / ``across``
    (same_family True / False) or ``all`` when the pair's families are unknown. q25, q75 =
    the 25th and 75th percentiles (linear interpolation, as ``numpy.quantile``) of the finite
    cosines of that kind at that step; n_pairs = how many. Columns: group, step, kind, q25,
    q75, n_pairs.
    """
    need = {"group", "step", "cosine", "same_family"}
    if not need <= set(pairs.columns):
        raise InvalidInputError(
            f"pair_spread needs a pair_trajectories frame with columns {sorted(need)}, "
            f"got {list(pairs.columns)}"
        )
    frame = pairs[np.isfinite(pairs["cosine"].to_numpy(dtype=float))]
    kind = frame["same_family"].map({True: "within", False: "across"}).fillna("all")
    grouped = frame.assign(kind=kind).groupby(["group", "step", "kind"])["cosine"]
    out = pd.DataFrame(
        {
            "q25": grouped.quantile(0.25),
            "q75": grouped.quantile(0.75),
            "n_pairs": grouped.size(),
        }
    ).reset_index()
    return out[PAIR_SPREAD_COLUMNS]


def settling_step(
    steps: Sequence[int], values: Sequence[float], *, tol: float = 0.05, final_fraction: float = 0.2
) -> tuple[int | None, float]:
    """When a trajectory settles: ``(settle_step, final_value)``.

    final_value = mean of the last ceil(final_fraction * S) finite values (at least one);
    settle_step = the first step s such that every finite value at steps >= s lies within
    [final_value - tol, final_value + tol]. None when the last value is outside the band
    (still moving) or there is no finite value. A trajectory whose *last* snapshot is not
    finite (a diverged run: NaN from some step on) has no final value: ``(None, nan)``; a
    non-finite value before the last finite one (a task absent once) is skipped.
    """
    if tol < 0 or not 0 < final_fraction <= 1:
        raise InvalidInputError(
            f"need tol >= 0 and 0 < final_fraction <= 1, got {tol}, {final_fraction}"
        )
    steps = np.asarray(steps)
    values = np.asarray(values, dtype=np.float64)
    if len(values) and not np.isfinite(values[np.argmax(steps)]):
        return None, float("nan")
    ok = np.isfinite(values)
    steps, values = steps[ok], values[ok]
    if not len(values):
        return None, float("nan")
    order = np.argsort(steps, kind="stable")
    steps, values = steps[order], values[order]
    n_final = max(1, math.ceil(final_fraction * len(values)))
    final = float(values[-n_final:].mean())
    outside = np.abs(values - final) > tol + 1e-12
    if outside[-1]:
        return None, final
    last_out = np.flatnonzero(outside)
    first = 0 if not last_out.size else last_out[-1] + 1
    return int(steps[first]), final


def settling(
    frame: pd.DataFrame,
    *,
    by: Sequence[str] = ("group", "kind"),
    value: str = "mean_cosine",
    tol: float = 0.05,
    final_fraction: float = 0.2,
) -> pd.DataFrame:
    """:func:`settling_step` for every trajectory in a long frame (one per ``by`` key).

    Works on ``family_trajectories`` (by group, kind), ``group_trajectories`` (by group) and
    ``pair_trajectories`` (by group, task_a, task_b). Columns: the ``by`` columns, then
    final_value, settle_step (NaN: never settles), last_step, tol, n_final.
    """
    by = [c for c in by if c in frame.columns]
    rows = []
    for key, part in frame.groupby(by, sort=False) if by else [((), frame)]:
        key = key if isinstance(key, tuple) else (key,)
        step, final = settling_step(
            part["step"], part[value], tol=tol, final_fraction=final_fraction
        )
        n = int(np.isfinite(part[value].to_numpy(dtype=float)).sum())
        rows.append(
            (*key, final, np.nan if step is None else step, int(part["step"].max()), tol,
             max(1, math.ceil(final_fraction * n)) if n else 0)
        )  # fmt: skip
    return pd.DataFrame(rows, columns=[*by, *SETTLING_COLUMNS])


SETTLING_INTERVAL_COLUMNS = [
    "kind", "final_value", "final_ci_low", "final_ci_high", "settle_step", "settle_ci_low",
    "settle_ci_high", "n_pairs", "last_step", "tol",
]  # fmt: skip


def settling_with_interval(
    pairs: pd.DataFrame,
    *,
    kinds: bool = True,
    tol: float = 0.05,
    n_bootstrap: int = 400,
    seed: int = 0,
    level: float = LEVEL,
) -> pd.DataFrame:
    """Settling of the mean pair trajectory per kind, with a bootstrap over task pairs.

    The trajectory m(s) = mean over the kind's pairs of cos_ij(s); :func:`settling_step`
    gives the final value and the settle step. Resampling snapshots would break the time
    order a settling step is about, so the interval resamples the *pairs* (with replacement,
    ``n_bootstrap`` times): how much the curve depends on which pairs make it. A replicate
    that never settles counts as the last step + 1 in the interval of the settle step (so an
    upper bound past the last step means "may still be moving"). ``kinds``: within / across
    family separately (pairs with unknown families are left out), else all pairs as ``all``.
    """
    frame = pairs.copy()
    if kinds:
        frame = frame[frame["same_family"].notna()]
        frame["kind"] = frame["same_family"].map({True: "within", False: "across"})
    else:
        frame["kind"] = "all"
    rng = np.random.default_rng(seed)
    rows = []
    for kind, part in frame.groupby("kind", sort=False):
        # One row per pair of the run (unstack keeps NaN cells; pivot_table(dropna=False)
        # built the cartesian product task_a x task_b: phantom all-NaN pairs)
        wide = part.set_index(["task_a", "task_b", "step"])["cosine"].unstack("step")
        steps = wide.columns.to_numpy()
        values = wide.to_numpy(dtype=float)  # [pairs, S]
        settle, final = settling_step(steps, gt.nanmean(values), tol=tol)
        n = len(values)
        finals, settles = [], []
        for _ in range(n_bootstrap):
            pick = values[rng.integers(0, n, n)]
            s, f = settling_step(steps, gt.nanmean(pick), tol=tol)
            finals.append(f)
            settles.append(steps[-1] + 1 if s is None else s)
        rows.append(
            (kind, final, *interval(np.array(finals), level),
             np.nan if settle is None else settle, *interval(np.array(settles), level), n,
             int(steps[-1]), tol)
        )  # fmt: skip
    return pd.DataFrame(rows, columns=SETTLING_INTERVAL_COLUMNS)


def pick_pairs(pairs: pd.DataFrame, n_per_kind: int = 2) -> list[tuple[str, str]]:
    """Pairs worth naming in F5: per kind (same family / not / unknown), the pair with the
    highest and the one with the lowest similarity at the last snapshot. A choice of what to
    show, not a statistic."""
    last = pairs[pairs["step"] == pairs["step"].max()]
    last = last.dropna(subset=["cosine"]).sort_values("cosine", ascending=False)
    chosen: list[tuple[str, str]] = []
    for _, part in last.groupby(last["same_family"].astype(str), sort=False):
        rows = [part.iloc[0], part.iloc[-1]][:n_per_kind] if len(part) > 1 else [part.iloc[0]]
        for r in rows:
            key = (r["task_a"], r["task_b"])
            if key not in chosen:
                chosen.append(key)
    return chosen
