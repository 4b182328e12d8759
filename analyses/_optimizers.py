"""What the gradient-surgery optimizers recorded in a trace (GradVac's EMA targets)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

import geomtrace as gt
from analyses._inputs import is_trace
from analyses._similarity import similarity_summary
from geomtrace import InvalidInputError

GRADVAC_TARGET_COLUMNS = ["step", "group", "mean_target", "n_pairs"]
GRADVAC_TRACKING_COLUMNS = [
    "group",
    "final_target",
    "mean_similarity",
    "mean_corrected",
    "reliability",
    "n_snapshots",
]

#: Trace array holding GradVac's EMA targets phi_hat [S, G, K, K].
GRADVAC_TARGET = "gradvac_target"


def gradvac_target_trajectories(trace: Any) -> pd.DataFrame:
    """Mean off-diagonal GradVac EMA target per parameter group and snapshot.

    From the trace array ``gradvac_target`` [S, G, K, K] (phi_hat_ij of group g at snapshot
    s): mean_target = mean of phi_hat_ij over the ordered pairs i != j whose target is finite
    (NaN when none is), n_pairs = how many. Groups named from ``trace.groups`` when the array
    has one slice per group, else ``group 0``, ``group 1``, ... Empty frame when the trace has
    no such array (a run that did not use GradVac). Columns: step, group, mean_target, n_pairs.
    """
    if not is_trace(trace):
        raise InvalidInputError("gradvac_target_trajectories needs a trace (gradvac_target)")
    if GRADVAC_TARGET not in trace.array_names():
        return pd.DataFrame(columns=GRADVAC_TARGET_COLUMNS)
    target = np.asarray(trace.array(GRADVAC_TARGET), dtype=np.float64)
    if target.ndim != 4 or target.shape[-1] != target.shape[-2]:
        raise InvalidInputError(
            f"trace array {GRADVAC_TARGET!r} should be [S, G, K, K], got shape {target.shape}"
        )
    off = gt.ordered_pair_values(target)  # [S, G, K(K-1)]
    n = np.isfinite(off).sum(axis=-1)
    means = gt.nanmean(off, axis=-1)  # [S, G]
    S, G = means.shape
    groups = list(trace.groups) if G == len(trace.groups) else [f"group {g}" for g in range(G)]
    return pd.DataFrame(
        {
            "step": np.repeat(np.asarray(trace.steps, dtype=np.int64), G),
            "group": np.tile(np.array(groups, dtype=object), S),
            "mean_target": means.reshape(-1),
            "n_pairs": n.reshape(-1).astype(np.int64),
        },
        columns=GRADVAC_TARGET_COLUMNS,
    )


def gradvac_tracking(trace: Any, targets: pd.DataFrame) -> pd.DataFrame | None:
    """GradVac's final targets next to the tracked similarity of the same groups.

    Over the last fifth of the snapshots after step 0 (at least one): per group, the mean of
    ``targets``' finite ``mean_target`` values (:func:`gradvac_target_trajectories`), and the
    group's raw mean similarity, noise-corrected mean and reliability from
    ``similarity_summary`` (20 bootstrap replicates: the interval is not shown). None when
    the trace has no snapshot after step 0.
    """
    # GradVac's targets are EMAs of the observed (noisy) cosines, so they track the attenuated
    # raw similarity; put them next to the raw and the noise-corrected similarity of the same
    # group over the last fifth of the snapshots.
    steps = np.asarray(trace.steps)
    later = steps[steps > 0]
    if not later.size:
        return None
    n_final = max(1, math.ceil(0.2 * len(later)))
    window = (int(later[-n_final]), None)
    summary = similarity_summary(trace, list(trace.groups), window=window, n_bootstrap=20)
    summary = summary.set_index("group")
    rows = []
    for g, part in targets.groupby("group", sort=False):
        final = part[part["step"] >= window[0]]["mean_target"].to_numpy(dtype=float)
        final = final[np.isfinite(final)]
        row = summary.loc[g] if g in summary.index else None
        rows.append(
            (g, float(final.mean()) if final.size else np.nan,
             np.nan if row is None else float(row["mean_cosine"]),
             np.nan if row is None else float(row["mean_corrected"]),
             np.nan if row is None else float(row["reliability"]), int(final.size))
        )  # fmt: skip
    return pd.DataFrame(rows, columns=GRADVAC_TRACKING_COLUMNS)
