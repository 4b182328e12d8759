"""Similarity measures of one parameter group over snapshots: raw, corrected, centred.

Every step-averaged similarity matrix of the analyses is made here, by :class:`Similarity`,
so that the point estimate and every bootstrap replicate come from the same code. With G(s)
the group's Gram matrix at snapshot s (``all``: the sum over groups, exact since groups are
disjoint parameter blocks):

- ``raw``: cos_ij(s) = G_ij / sqrt(G_ii G_jj), averaged over snapshots (NaN skipped). The
  paper's measure. With noisy minibatch gradients it is attenuated towards 0: if
  g_i = s_i + n_i with independent noise, E[G_ij] = s_i.s_j but E[G_ii] = |s_i|^2 + E|n_i|^2,
  so cos ~= cos(s_i, s_j) * sqrt(r_i r_j) with r_i the signal fraction (reliability).
- ``corrected`` (traces with split halves, ``Tracer(halves=True)``): each task's gradient
  is a + b with independent halves, so 4 a.b estimates |s_i + s_i|^2 = the squared norm of the
  full gradient's signal, and

      C_ij = mean_s(G_ij(s) / c_s) / sqrt(mean_s(4 ab_i(s) / c_s) * mean_s(4 ab_j(s) / c_s))

  a ratio of means (single-snapshot a.b can be <= 0), with c_s = mean_i G_ii(s) a per-snapshot
  scale that keeps late snapshots (small gradients) from being drowned by early ones.
  Dividing removes the attenuation; it cannot remove the noise in the cross-task products,
  which only more gradient (bigger batches, windows) reduces. The reliability of the full
  gradient of task i over the window is R_i = mean_s(4 ab_i / c_s) / mean_s(G_ii / c_s).
- ``centred``: the component common to every task at a snapshot projected out before the
  cosine: G_c = (I - 11^T/K) G (I - 11^T/K) over the tasks present at s. A step-common
  direction (every language's batch short at once, the shared English target) inflates every
  raw cosine by about the same amount; centring removes it, at the price of making the
  average centred cosine about -1/(K-1) by construction: compare pairs, not levels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from analyses._inputs import ALL, is_trace, mean_matrix
from analyses._uncertainty import N_BOOTSTRAP, block_bootstrap
from geomtrace import InvalidInputError, cosine_from_gram

MEASURES = ("raw", "corrected", "centred")

#: The trace array of split-half products [S, G, K, 3] = (a.a, b.b, a.b) per group and task.
SPLIT_HALF = "split_half"


def check_measure(measure: str) -> str:
    if measure not in MEASURES:
        raise InvalidInputError(f"measure={measure!r}; allowed: {', '.join(MEASURES)}")
    return measure


def check_group(trace: Any, group: str | None) -> str:
    group = group or ALL
    if group != ALL and group not in trace.groups:
        raise InvalidInputError(
            f"unknown group {group!r}; the trace has {list(trace.groups)} (or {ALL!r}: whole model)"
        )
    return group


def group_gram(trace: Any, group: str | None) -> np.ndarray:
    """[S, K, K] Gram matrices of ``group``; ``all`` sums the groups' Gram matrices."""
    group = check_group(trace, group)
    if group == ALL and ALL not in trace.groups:
        if not trace.groups:
            raise InvalidInputError("the trace has no parameter groups")
        return np.sum([np.asarray(trace.gram(g), dtype=np.float64) for g in trace.groups], axis=0)
    return np.asarray(trace.gram(group), dtype=np.float64)


def has_halves(trace: Any) -> bool:
    """Whether the trace holds split-half products (``Tracer(halves=True)``)."""
    flag = getattr(trace, "has_halves", None)
    if flag is not None:
        return bool(flag)
    names = trace.array_names() if hasattr(trace, "array_names") else []
    return SPLIT_HALF in names


def group_split_half(trace: Any, group: str | None) -> np.ndarray:
    """[S, K, 3] split-half products (a.a, b.b, a.b) of ``group``; ``all`` sums the groups."""
    group = check_group(trace, group)
    if not has_halves(trace):
        raise InvalidInputError(
            "the trace has no split halves: trace with Tracer(..., halves=True) "
            "(geomtrace trace --set halves=true) to measure reliability and correct for noise"
        )
    if callable(getattr(trace, "split_half", None)):
        if group == ALL and ALL not in trace.groups:  # exact: groups are disjoint blocks
            return np.sum(
                [np.asarray(trace.split_half(g), dtype=np.float64) for g in trace.groups], axis=0
            )
        return np.asarray(trace.split_half(group), dtype=np.float64)
    data = np.asarray(trace.array(SPLIT_HALF), dtype=np.float64)  # [S, G, K, 3]
    if group == ALL:
        return data.sum(axis=1)
    return data[:, list(trace.groups).index(group)]


def centred_gram(gram: np.ndarray) -> np.ndarray:
    """(I - 11^T/K) G (I - 11^T/K) per snapshot, over the tasks present (finite diagonal)."""
    gram = np.asarray(gram, dtype=np.float64)
    out = np.full_like(gram, np.nan)
    for s, G in enumerate(gram):
        present = np.isfinite(np.diagonal(G))
        k = int(present.sum())
        if k < 2:
            continue
        sub = G[np.ix_(present, present)]
        J = np.eye(k) - np.full((k, k), 1.0 / k)
        out[s][np.ix_(present, present)] = J @ sub @ J
    return out


#: Mean over axis 0 skipping NaN (NaN where nothing is finite): the one NaN-aware average.
_nanmean0 = mean_matrix


@dataclass(frozen=True)
class Similarity:
    """One group's similarity under one measure at every snapshot, ready to be averaged.

    ``per_snapshot`` [S, K, K]: raw/centred cosines, or for ``corrected`` the scaled
    products G_ij(s) / c_s; ``signal`` [S, K] (``corrected`` only): 4 ab_i(s) / c_s;
    ``power`` [S, K]: G_ii(s) / c_s (for reliability; NaN without halves). ``steps`` [S].
    """

    group: str
    measure: str
    tasks: list[str]
    steps: np.ndarray
    per_snapshot: np.ndarray
    signal: np.ndarray | None = None
    power: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.steps)

    def select(self, mask: np.ndarray) -> Similarity:
        """The snapshots where ``mask`` is true (a boolean or index array)."""
        pick = lambda a: None if a is None else a[mask]  # noqa: E731
        return replace(
            self,
            steps=self.steps[mask],
            per_snapshot=self.per_snapshot[mask],
            signal=pick(self.signal),
            power=pick(self.power),
        )

    def matrix(self, index: np.ndarray | None = None) -> np.ndarray:
        """[K, K] step-averaged similarity over the snapshots ``index`` (default: all)."""
        values = self.per_snapshot if index is None else self.per_snapshot[index]
        if self.measure != "corrected":
            out = _nanmean0(values)
        else:
            signal = self.signal if index is None else self.signal[index]
            num = _nanmean0(values)
            den = _nanmean0(signal)
            with np.errstate(invalid="ignore", divide="ignore"):
                scale = np.sqrt(np.where(den > 0, den, np.nan))
                out = num / (scale[:, None] * scale[None, :])
        out = out.copy()
        np.fill_diagonal(out, 1.0)
        present = np.isfinite(np.diagonal(_nanmean0(values)))
        out[~present, :] = np.nan
        out[:, ~present] = np.nan
        return out

    def replicates(
        self, n_bootstrap: int = N_BOOTSTRAP, *, block: int | None = None, seed: int = 0
    ) -> np.ndarray:
        """[B, K, K] matrices of moving-block bootstrap replicates of the snapshots."""
        index = block_bootstrap(len(self), n_bootstrap, block=block, seed=seed)
        return np.stack([self.matrix(row) for row in index])

    def snapshot_matrices(self) -> np.ndarray:
        """[S, K, K] similarity at each snapshot (``corrected``: the per-snapshot ratio)."""
        if self.measure != "corrected":
            return self.per_snapshot
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = np.sqrt(np.where(self.signal > 0, self.signal, np.nan))
            out = self.per_snapshot / (scale[:, :, None] * scale[:, None, :])
        K = len(self.tasks)
        out[:, np.arange(K), np.arange(K)] = 1.0
        return out

    def reliability(self, index: np.ndarray | None = None) -> np.ndarray:
        """[K] R_i = mean_s(4 ab_i / c_s) / mean_s(G_ii / c_s) over ``index`` (NaN: no halves)."""
        if self.signal is None or self.power is None:
            return np.full(len(self.tasks), np.nan)
        signal = self.signal if index is None else self.signal[index]
        power = self.power if index is None else self.power[index]
        num, den = _nanmean0(signal), _nanmean0(power)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / den, np.nan)

    def snapshot_reliability(self) -> np.ndarray:
        """[S, K] per-snapshot reliability 4 ab_i / G_ii (noisy; can be <= 0)."""
        if self.signal is None or self.power is None:
            return np.full(self.per_snapshot.shape[:2], np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.power > 0, self.signal / self.power, np.nan)


def similarity(
    source: Any,
    group: str | None = None,
    measure: str = "raw",
    *,
    tasks: Sequence[str] | None = None,
    steps: Sequence[int] | None = None,
) -> Similarity:
    """A :class:`Similarity` of ``group`` under ``measure`` from a trace or from arrays.

    ``source``: a trace (anything with ``tasks``, ``steps``, ``groups``, ``gram``), or a
    [S, K, K] / [K, K] array of cosines (``raw`` only; ``steps`` default 0..S-1; ``tasks``
    default "0".."K-1").
    """
    check_measure(measure)
    if not is_trace(source):
        if measure != "raw":
            raise InvalidInputError(
                f"measure={measure!r} needs a trace (Gram matrices and split halves); "
                "arrays of cosines support measure='raw' only"
            )
        from analyses._inputs import cosine_stack

        stack = cosine_stack(source, group, tasks=tasks, steps=steps)
        return Similarity(stack.group, "raw", stack.tasks, stack.steps, stack.cosine)
    group = check_group(source, group)
    gram = group_gram(source, group)
    task_list = list(source.tasks)
    step_arr = np.asarray(source.steps, dtype=np.int64)
    signal = power = None
    if has_halves(source) or measure == "corrected":
        halves = group_split_half(source, group)
        diag = np.diagonal(gram, axis1=-2, axis2=-1)
        # c_s: the mean squared norm of the tasks present at snapshot s (a common scale).
        scale = _nanmean0(np.where(diag > 0, diag, np.nan).T)[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            signal = 4.0 * halves[..., 2] / scale
            power = diag / scale
    if measure == "raw":
        values = cosine_from_gram(gram)
    elif measure == "centred":
        values = cosine_from_gram(centred_gram(gram))
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            values = gram / scale[:, :, None]
    return Similarity(group, measure, task_list, step_arr, values, signal, power)
