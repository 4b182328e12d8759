"""Summaries of similarity matrices that every layer shares: one definition each.

numpy only. The analyses, the integrations' scalars and the benchmarks all call these, so a
"mean similarity" or a "conflict rate" means the same number wherever it is printed.

- :func:`nanmean`: the NaN-aware mean along an axis (NaN where nothing is finite): absent tasks
  and snapshots are NaN in a trace and must not count as zeros.
- :func:`mean_pair_similarity`: for a [..., K, K] matrix M, the mean of the finite M_ij over
  unordered pairs i < j (each pair counts once; NaN when there is none).
- :func:`conflict_rate`: the fraction of finite M_ij (i < j) below 0 (PCGrad's "conflicting
  gradients").
- :func:`whole_model_sum`: the whole model (group ``"all"``) as the sum of the groups' Gram
  matrices (or split-half products): exact, since the groups are disjoint parameter blocks;
  NaN propagates, so a task absent from a snapshot stays absent.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "conflict_rate",
    "mean_pair_similarity",
    "nanmean",
    "ordered_pair_values",
    "pair_values",
    "whole_model_sum",
]


def nanmean(values: np.ndarray, axis: int = 0) -> np.ndarray:
    """Mean along ``axis`` of the finite entries; NaN where none is finite (no warning)."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    count = finite.sum(axis=axis)
    total = np.where(finite, values, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def pair_values(matrices: np.ndarray) -> np.ndarray:
    """Upper triangles (i < j) of [..., K, K] matrices: [..., K(K-1)/2]."""
    matrices = np.asarray(matrices, dtype=np.float64)
    iu = np.triu_indices(matrices.shape[-1], k=1)
    return matrices[..., iu[0], iu[1]]


def ordered_pair_values(matrices: np.ndarray) -> np.ndarray:
    """Off-diagonal entries (i != j, row by row) of [..., K, K] matrices: [..., K(K-1)]. For
    directed quantities (GradVac's targets phi_ij), where M_ij and M_ji differ."""
    matrices = np.asarray(matrices, dtype=np.float64)
    K = matrices.shape[-1]
    return matrices[..., ~np.eye(K, dtype=bool)]


def mean_pair_similarity(matrices: np.ndarray) -> np.ndarray | float:
    """mean_{i<j, M_ij finite} M_ij of each [K, K] matrix of a [..., K, K] stack.

    Returns a float for one matrix, else an array of the leading shape; NaN without a finite
    pair.
    """
    out = nanmean(pair_values(matrices), axis=-1)
    return float(out) if out.ndim == 0 else out


def conflict_rate(matrices: np.ndarray) -> float:
    """Fraction of finite M_ij (i < j, over every matrix of the stack) that are < 0."""
    values = pair_values(matrices)
    values = values[np.isfinite(values)]
    return float((values < 0).mean()) if values.size else float("nan")


def whole_model_sum(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Sum of the groups' arrays (Gram matrices or split-half products), NaN-propagating."""
    if not len(parts):
        raise ValueError("the whole model needs at least one parameter group")
    return np.sum(np.stack([np.asarray(p, dtype=np.float64) for p in parts]), axis=0)
