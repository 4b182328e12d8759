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
  The estimators (scale, ratio of means, the bound to [-1, 1] and the reliability floor below
  which a pair is "not estimable") live in ``geomtrace`` (``gt.scaled_products``,
  ``gt.corrected_of_means``, ``gt.reliability_of_means``): ``Trace.window_cosine`` and this
  module give the same numbers because they run the same code.
- ``centred``: the component common to every task at a snapshot projected out before the
  cosine: G_c = (I - 11^T/K) G~ (I - 11^T/K) over the tasks present at s. A step-common
  direction (every language's batch short at once, the shared English target) inflates every
  raw cosine by about the same amount; centring removes it, at the price of making the
  average centred cosine about -1/(K-1) by construction: compare pairs, not levels. With
  split halves, G~ is the denoised Gram (``gt.denoised_gram``: diagonal 4 ab, the signal) and
  the cosine is a ratio of scaled means like ``corrected``: centring the raw G would turn
  unequal noise into structure (noisy pairs pushed below reliable ones). Without halves G~ = G,
  and the centred measure is unfit when the tasks' reliabilities differ (a note says so).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

import geomtrace as gt
from analyses._inputs import ALL, is_trace
from analyses._uncertainty import N_BOOTSTRAP, block_bootstrap, default_block, snapshot_df
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
        return gt.whole_model_sum([trace.gram(g) for g in trace.groups])
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
            return gt.whole_model_sum([trace.split_half(g) for g in trace.groups])
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


@dataclass(frozen=True)
class Similarity:
    """One group's similarity under one measure at every snapshot, ready to be averaged.

    ``per_snapshot`` [S, K, K]: raw/centred cosines, or for a ratio-of-means measure
    (``corrected``; ``centred`` with halves) the scaled products P_ij(s) (G_ij / c_s, or the
    centred denoised products / c_s); ``denominator`` [S, K] (ratio-of-means measures only):
    the diagonal the ratio divides by (4 ab_i / c_s, or the centred diagonal); ``signal``
    [S, K]: 4 ab_i(s) / c_s and ``power`` [S, K]: G_ii(s) / c_s, for reliability (None
    without halves). ``steps`` [S].
    """

    group: str
    measure: str
    tasks: list[str]
    steps: np.ndarray
    per_snapshot: np.ndarray
    signal: np.ndarray | None = None
    power: np.ndarray | None = None
    denominator: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def ratio_of_means(self) -> bool:
        """Whether the window matrix is a ratio of means (``gt.corrected_of_means``)."""
        return self.denominator is not None

    def select(self, mask: np.ndarray) -> Similarity:
        """The snapshots where ``mask`` is true (a boolean or index array)."""
        pick = lambda a: None if a is None else a[mask]  # noqa: E731
        return replace(
            self,
            steps=self.steps[mask],
            per_snapshot=self.per_snapshot[mask],
            signal=pick(self.signal),
            power=pick(self.power),
            denominator=pick(self.denominator),
        )

    def matrix(self, index: np.ndarray | None = None) -> np.ndarray:
        """[K, K] step-averaged similarity over the snapshots ``index`` (default: all).

        Plain measures: the NaN-aware mean of the snapshot matrices. Ratio-of-means measures:
        ``gt.corrected_of_means`` (bounded to [-1, 1], NaN for a task below the reliability
        floor ``gt.RELIABILITY_FLOOR``).
        """
        take = (lambda a: a) if index is None else (lambda a: a[index])  # noqa: E731
        values = take(self.per_snapshot)
        if self.ratio_of_means:
            reliability = None  # the floor is the corrected measure's (module docstring)
            if self.measure == "corrected" and self.signal is not None and self.power is not None:
                reliability = gt.reliability_of_means(take(self.signal), take(self.power))
            return gt.corrected_of_means(values, take(self.denominator), reliability=reliability)
        out = gt.nanmean(values).copy()
        np.fill_diagonal(out, 1.0)
        present = np.isfinite(np.diagonal(gt.nanmean(values)))
        out[~present, :] = np.nan
        out[:, ~present] = np.nan
        return out

    def block_length(self, block: int | None = None) -> int:
        """``block``, or the default block length of the bootstrap over these snapshots: it
        follows the autocorrelation of the per-snapshot mean pair value."""
        if block is not None:
            return block
        series = gt.mean_pair_similarity(self.per_snapshot) if len(self) else None
        return default_block(len(self), series)

    def bootstrap_df(self, block: int | None = None) -> int:
        """Degrees of freedom of the bootstrap's spread (``snapshot_df``: blocks - 1), which
        widens the intervals (``analyses._uncertainty.interval``)."""
        return snapshot_df(len(self), self.block_length(block))

    def bootstrap_index(
        self, n_bootstrap: int = N_BOOTSTRAP, *, block: int | None = None, seed: int = 0
    ) -> np.ndarray:
        """[B, S] snapshot indices of circular block bootstrap replicates (block length:
        :meth:`block_length`)."""
        length = self.block_length(block) if len(self) else block
        return block_bootstrap(len(self), n_bootstrap, block=length, seed=seed)

    def replicates(
        self, n_bootstrap: int = N_BOOTSTRAP, *, block: int | None = None, seed: int = 0
    ) -> np.ndarray:
        """[B, K, K] matrices of circular block bootstrap replicates of the snapshots."""
        index = self.bootstrap_index(n_bootstrap, block=block, seed=seed)
        return np.stack([self.matrix(row) for row in index])

    def snapshot_matrices(self) -> np.ndarray:
        """[S, K, K] similarity at each snapshot (ratio measures: the per-snapshot ratio,
        clipped to [-1, 1]; noisy, NaN where a snapshot's denominator is <= 0)."""
        if not self.ratio_of_means:
            return self.per_snapshot
        with np.errstate(invalid="ignore", divide="ignore"):
            d = self.denominator
            scale = np.sqrt(np.where(d > 0, d, np.nan))
            out = np.clip(self.per_snapshot / (scale[:, :, None] * scale[:, None, :]), -1, 1)
        K = len(self.tasks)
        out[:, np.arange(K), np.arange(K)] = np.where(np.isfinite(scale), 1.0, np.nan)
        return out

    def reliability(self, index: np.ndarray | None = None) -> np.ndarray:
        """[K] window reliability R_i (``gt.reliability_of_means``) over ``index``; NaN
        without halves."""
        if self.signal is None or self.power is None:
            return np.full(len(self.tasks), np.nan)
        if index is None:
            return gt.reliability_of_means(self.signal, self.power)
        return gt.reliability_of_means(self.signal[index], self.power[index])

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
    halves = (
        group_split_half(source, group) if has_halves(source) or measure == "corrected" else None
    )
    products, signal, power = gt.scaled_products(gram, halves)
    if halves is None:
        power = None
    denominator = None
    if measure == "raw":
        values = cosine_from_gram(gram)
    elif measure == "corrected":
        values, denominator = products, signal
    elif halves is None:
        values = cosine_from_gram(centred_gram(gram))
    else:
        scale = gt.snapshot_scale(gram)
        with np.errstate(invalid="ignore", divide="ignore"):
            values = centred_gram(gt.denoised_gram(gram, halves)) / scale[:, None, None]
        denominator = np.diagonal(values, axis1=-2, axis2=-1).copy()
    return Similarity(group, measure, task_list, step_arr, values, signal, power, denominator)
