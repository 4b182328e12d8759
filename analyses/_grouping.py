"""Which tasks should share a model? Affinities from a trace and the best partition.

Affinities (``task_affinity``), one [K, K] matrix per run:

- ``cosine``: the step-averaged similarity matrix (``measure`` raw, corrected or centred).
- ``lookahead``: the first-order effect of one step on task i's gradient on task j's loss
  (after Fifty et al., NeurIPS 2021). A gradient step theta' = theta - lr g_i changes
  L_j(theta') = L_j(theta) - lr g_i.g_j + O(lr^2 |g_i|^2), so the relative loss change

      Z(i -> j) = 1 - L_j(theta') / L_j(theta) ~= lr g_i.g_j / L_j

  averaged over the snapshots of the window (each snapshot's G_ij and L_j). Assumptions:
  a plain gradient step with the run's base learning rate (Adam's per-coordinate scaling,
  the schedule and clipping are not modelled), small enough for the first-order term to
  dominate, and g_i the gradient of the same loss L_i the trace recorded. Z is asymmetric
  (Z(i -> j) != Z(j -> i) when L_i != L_j): the matrix is a result in itself.

Grouping (``best_partition``): the partition of the K tasks into exactly ``k`` non-empty
groups (each at most ``max_size`` tasks) maximising the total within-group affinity

    score(P) = sum over groups g of P, sum over ordered pairs i != j in g of A_ij

(for a symmetric A, twice the sum over unordered pairs). ``group_tasks`` maximises it for the
*centred* affinity A_ij - mean_{i != j} A: raw gradient cosines are mostly positive, and with
positive affinities the uncentred objective rewards one giant group plus singletons (every
added pair adds); centred, a pair adds only when it is more alike than the average pair, so a
group is worth forming when its members are closer to each other than to the rest. Exact for K <= 12 by dynamic
programming over subsets (best(S, k) = max over blocks B containing the lowest task of S of
score(B) + best(S \\ B, k - 1): about 3^K / 2 block choices per level); beyond, a heuristic:
average-linkage start on the symmetrised affinity, then single-task moves and pairwise swaps
while the score improves, from the linkage start and ``restarts`` random starts (seeded),
best kept. Its gap to the exact optimum on small K is measured in tests/benchmarks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

import geomtrace as gt
from analyses._inputs import ALL, Window, is_trace, window_mask
from analyses._iso import usable_iso_codes
from analyses._measures import group_gram
from analyses._similarity import windowed
from analyses._uncertainty import block_bootstrap
from geomtrace import InvalidInputError

AFFINITIES = ("cosine", "lookahead")
#: Largest K solved exactly (3^12 / 2 ~ 266k block choices per level).
EXACT_MAX = 12


@dataclass
class Affinity:
    """A [K, K] affinity (``matrix``: A_ij = effect of task i on task j) and how it was made."""

    kind: str
    tasks: list[str]
    matrix: np.ndarray
    replicates: np.ndarray | None = None  # [B, K, K] bootstrap replicates over snapshots
    note: str = ""

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.matrix, index=self.tasks, columns=self.tasks)


def _learning_rate(trace: Any, lr: float | None) -> float:
    if lr is not None:
        value = float(lr)
    else:
        config = getattr(trace, "config", {}) or {}
        if "lr" not in config:
            raise InvalidInputError(
                "the lookahead affinity needs the learning rate: the run's config has no 'lr'; "
                "pass lr= (CLI: --lr)"
            )
        value = float(config["lr"])
    if not math.isfinite(value) or value <= 0:
        raise InvalidInputError(f"lr={value!r}: the learning rate must be a positive number")
    return value


def lookahead_affinity(
    trace: Any,
    group: str | None = None,
    *,
    lr: float | None = None,
    window: Window | None = None,
    n_bootstrap: int = 0,
    block: int | None = None,
    seed: int = 0,
) -> Affinity:
    """Z(i -> j) = mean over the window's snapshots of lr G_ij(s) / L_j(s) (module docstring)."""
    rate = _learning_rate(trace, lr)
    gram = group_gram(trace, group or ALL)
    steps = np.asarray(trace.steps)
    mask = window_mask(steps, window)
    if not mask.any():
        raise InvalidInputError("no snapshot in the step window for the lookahead affinity")
    losses = trace.losses()
    K = len(trace.tasks)
    L = np.full((len(steps), K), np.nan)
    index = {t: k for k, t in enumerate(trace.tasks)}
    position = {int(s): n for n, s in enumerate(steps)}
    for row in losses.itertuples():
        L[position[int(row.step)], index[row.task]] = row.loss
    with np.errstate(invalid="ignore", divide="ignore"):
        per = rate * gram / np.where(L > 0, L, np.nan)[:, None, :]  # [S, K(i), K(j)]
    per = per[mask]
    if not np.isfinite(per).any():
        raise InvalidInputError(
            "the lookahead affinity needs per-task losses at the snapshots (trace.losses()); "
            "this trace has none in the window"
        )

    replicates = None
    if n_bootstrap:
        rows = block_bootstrap(len(per), n_bootstrap, block=block, seed=seed)
        replicates = np.stack([gt.nanmean(per[r]) for r in rows])
    # SGD-only by construction: an Adam(W) step is lr D g_i with D from the second moments,
    # whose lookahead is lr g_j . D g_i / L_j; the trace does not record D, so this is the
    # affinity a plain SGD step would have, not what an Adam-trained run did.
    note = (
        f"SGD-only: the first-order effect of a plain SGD step with lr = {rate:g} (the run's "
        "base rate); an Adam(W) step (lr D g_i, D from the second moments), clipping and the "
        "schedule are not modelled"
    )
    return Affinity("lookahead", list(trace.tasks), gt.nanmean(per), replicates, note)


def task_affinity(
    trace: Any,
    kind: str = "cosine",
    group: str | None = None,
    *,
    measure: str = "raw",
    lr: float | None = None,
    window: Window | None = None,
    n_bootstrap: int = 0,
    block: int | None = None,
    seed: int = 0,
) -> Affinity:
    """The ``kind`` affinity (``cosine`` or ``lookahead``) of ``group`` over the window."""
    if kind not in AFFINITIES:
        raise InvalidInputError(f"affinity {kind!r}; allowed: {', '.join(AFFINITIES)}")
    if kind == "lookahead":
        return lookahead_affinity(
            trace, group, lr=lr, window=window, n_bootstrap=n_bootstrap, block=block, seed=seed
        )
    sim = windowed(trace, group, measure, window=window)
    replicates = sim.replicates(n_bootstrap, block=block, seed=seed) if n_bootstrap else None
    return Affinity("cosine", sim.tasks, sim.matrix(), replicates, f"measure {measure}")


def partition_score(affinity: np.ndarray, labels: Sequence[int]) -> float:
    """sum over groups of sum over ordered pairs i != j in the group of A_ij."""
    A = np.asarray(affinity, dtype=np.float64)
    labels = np.asarray(labels)
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    return float(np.where(same, np.nan_to_num(A), 0.0).sum())


def random_partition_scores(
    A: np.ndarray, sizes: Sequence[int], n_random: int, rng: np.random.Generator
) -> np.ndarray:
    """Scores on ``A`` of ``n_random`` uniformly random partitions with group ``sizes``."""
    K = int(sum(sizes))
    scores = np.empty(n_random)
    base = np.repeat(np.arange(len(sizes)), sizes)
    for n in range(n_random):
        scores[n] = partition_score(A, base[rng.permutation(K)])
    return scores


def _check(K: int, k: int, max_size: int | None) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= K:
        raise InvalidInputError(f"k={k!r}: the number of groups must be between 1 and {K}")
    if max_size is not None:
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise InvalidInputError(f"max_size={max_size!r}: give a positive group size")
        if max_size * k < K:
            raise InvalidInputError(
                f"max_size={max_size} x k={k} < {K} tasks: no partition fits; raise either"
            )


def exact_partition(
    affinity: np.ndarray, k: int, *, max_size: int | None = None
) -> tuple[np.ndarray, float]:
    """The optimal partition into exactly ``k`` groups by dynamic programming over subsets.

    Returns (labels [K] in 0..k-1, numbered by first appearance, score). K <= 12.
    """
    A = np.nan_to_num(np.asarray(affinity, dtype=np.float64))
    K = len(A)
    _check(K, k, max_size)
    if K > EXACT_MAX:
        raise InvalidInputError(f"exact search is for K <= {EXACT_MAX} tasks, got {K}")
    S = A + A.T
    np.fill_diagonal(S, 0.0)
    n = 1 << K
    masks = np.arange(n)
    bits = ((masks[:, None] >> np.arange(K)) & 1).astype(np.float64)  # [2^K, K]
    block_score = 0.5 * np.einsum("mi,ij,mj->m", bits, S, bits)  # ordered pairs within
    size = bits.sum(axis=1).astype(int)
    limit = K if max_size is None else max_size
    allowed = (size >= 1) & (size <= limit)
    full = n - 1
    # best[level][mask]: best score of partitioning `mask` into `level` blocks.
    neg = -np.inf
    best = [np.full(n, neg) for _ in range(k + 1)]
    choice = [np.zeros(n, dtype=np.int64) for _ in range(k + 1)]
    best[0][0] = 0.0
    best[1] = np.where(allowed, block_score, neg)
    choice[1] = masks.copy()
    for level in range(2, k + 1):
        cur, prev = best[level], best[level - 1]
        pick = choice[level]
        for mask in range(1, n):
            if size[mask] < level:
                continue
            low = mask & -mask
            rest = mask ^ low
            sub = rest
            top, arg = neg, 0
            while True:  # blocks = low | sub for every submask sub of rest
                block = low | sub
                if allowed[block]:
                    value = block_score[block] + prev[mask ^ block]
                    if value > top:
                        top, arg = value, block
                if sub == 0:
                    break
                sub = (sub - 1) & rest
            cur[mask], pick[mask] = top, arg
    if not np.isfinite(best[k][full]):
        raise InvalidInputError(f"no partition into {k} groups of at most {max_size} tasks")
    labels = np.full(K, -1)
    mask, level = full, k
    while level:
        block = int(choice[level][mask])
        labels[[i for i in range(K) if block >> i & 1]] = level - 1
        mask ^= block
        level -= 1
    return _renumber(labels), partition_score(A, labels)


def _renumber(labels: np.ndarray) -> np.ndarray:
    order = {}
    return np.array([order.setdefault(int(x), len(order)) for x in labels])


def heuristic_partition(
    affinity: np.ndarray,
    k: int,
    *,
    max_size: int | None = None,
    restarts: int = 8,
    seed: int = 0,
) -> tuple[np.ndarray, float]:
    """Average-linkage start plus local moves and swaps, from several starts (docstring)."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    A = np.nan_to_num(np.asarray(affinity, dtype=np.float64))
    K = len(A)
    _check(K, k, max_size)
    S = A + A.T
    np.fill_diagonal(S, 0.0)
    limit = K if max_size is None else max_size
    rng = np.random.default_rng(seed)
    starts = []
    if K >= 2 and k < K:
        d = S.max() - S
        np.fill_diagonal(d, 0.0)
        tree = linkage(squareform(d, checks=False), method="average")
        starts.append(fcluster(tree, t=k, criterion="maxclust") - 1)
    for _ in range(restarts):
        labels = np.concatenate([np.arange(k), rng.integers(0, k, K - k)])
        starts.append(rng.permutation(labels))
    best_labels, best_score = None, -np.inf
    for start in starts:
        labels = _repair(np.asarray(start), k, limit, S)
        labels = _local_search(labels, S, k, limit)
        score = partition_score(A, labels)
        if score > best_score + 1e-12:
            best_labels, best_score = labels, score
    return _renumber(best_labels), best_score


def _repair(labels: np.ndarray, k: int, limit: int, S: np.ndarray) -> np.ndarray:
    """Make a start feasible: exactly k non-empty groups, none larger than ``limit``."""
    labels = labels.copy()
    sizes = np.bincount(labels, minlength=k)
    for g in range(k):
        while sizes[g] == 0 or sizes.max() > limit:
            src = int(np.argmax(sizes))
            task = int(np.flatnonzero(labels == src)[0])
            dst = g if sizes[g] == 0 else int(np.argmin(sizes))
            labels[task] = dst
            sizes = np.bincount(labels, minlength=k)
            if sizes[g] > 0 and sizes.max() <= limit:
                break
    return labels


def _local_search(labels: np.ndarray, S: np.ndarray, k: int, limit: int) -> np.ndarray:
    """Moves (one task to another group) and swaps while the score improves."""
    labels = labels.copy()
    K = len(labels)
    improved = True
    while improved:
        improved = False
        onehot = np.eye(k)[labels]  # [K, k]
        gain_to = S @ onehot  # [K, k]: sum of S_ij over j in group g
        sizes = onehot.sum(axis=0)
        for i in range(K):
            g = labels[i]
            if sizes[g] <= 1:
                continue
            current = gain_to[i, g]
            for h in range(k):
                if h != g and sizes[h] < limit and gain_to[i, h] > current + 1e-12:
                    labels[i] = h
                    improved = True
                    break
            if improved:
                break
        if improved:
            continue
        for i in range(K):
            for j in range(i + 1, K):
                gi, gj = labels[i], labels[j]
                if gi == gj:
                    continue
                delta = (gain_to[i, gj] - S[i, j] - gain_to[i, gi]) + (
                    gain_to[j, gi] - S[i, j] - gain_to[j, gj]
                )
                if delta > 1e-12:
                    labels[i], labels[j] = gj, gi
                    improved = True
                    break
            if improved:
                break
    return labels


def best_partition(
    affinity: np.ndarray,
    k: int,
    *,
    max_size: int | None = None,
    method: str = "auto",
    seed: int = 0,
) -> tuple[np.ndarray, float, str]:
    """(labels, score, method used): exact for K <= 12 (``auto``), else the heuristic."""
    K = len(affinity)
    if method not in ("auto", "exact", "heuristic"):
        raise InvalidInputError(f"method {method!r}; allowed: auto, exact, heuristic")
    if method == "exact" or (method == "auto" and K <= EXACT_MAX):
        labels, score = exact_partition(affinity, k, max_size=max_size)
        return labels, score, "exact"
    labels, score = heuristic_partition(affinity, k, max_size=max_size, seed=seed)
    return labels, score, "heuristic"


GROUPING_COLUMNS = ["scheme", "group", "tasks", "size", "score", "gradient_score"]


@dataclass
class Grouping:
    """A gradient-based grouping, its stability, and the baselines (``group_tasks``).

    labels: {task: group number}; score: total within-group affinity; method: exact or
    heuristic; together: [K, K] fraction of bootstrap replicates in which i and j share a
    group (NaN without replicates); stability: mean of ``together`` over the pairs the
    grouping puts together; schemes: one row per (scheme, group) with each scheme's
    within-group score under the scheme's own affinity and under the gradient affinity.
    """

    affinity: Affinity
    k: int
    labels: dict[str, int]
    score: float
    method: str
    together: np.ndarray
    stability: float
    schemes: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: list[str] = field(default_factory=list)
    #: the grouping chosen on half the snapshots and scored on the other half
    #: (``grouping_holdout``, two folds); empty where the window has < 2 snapshots
    holdout: pd.DataFrame = field(default_factory=pd.DataFrame)

    def groups(self) -> list[list[str]]:
        out: dict[int, list[str]] = {}
        for task, g in self.labels.items():
            out.setdefault(g, []).append(task)
        return [out[g] for g in sorted(out)]

    def to_dict(self) -> dict[str, Any]:
        import json

        return {
            "affinity": self.affinity.kind, "note": self.affinity.note, "k": self.k,
            "method": self.method, "score": self.score, "groups": self.groups(),
            "stability": None if not math.isfinite(self.stability) else self.stability,
            "together": {
                "tasks": self.affinity.tasks,
                "values": json.loads(pd.DataFrame(self.together).to_json(orient="values")),
            },
            "schemes": json.loads(self.schemes.to_json(orient="records")),
            "holdout": json.loads(self.holdout.to_json(orient="records")),
            "notes": self.notes,
        }  # fmt: skip


def _centred(A: np.ndarray) -> np.ndarray:
    """A - mean of its finite off-diagonal entries (the objective of ``group_tasks``)."""
    A = np.asarray(A, dtype=np.float64)
    off = A[~np.eye(len(A), dtype=bool)]
    off = off[np.isfinite(off)]
    return A - (off.mean() if off.size else 0.0)


def _scheme_rows(name, labels, tasks, own, gradient) -> list[tuple]:
    rows = []
    for g in sorted(set(labels)):
        members = [t for t, x in zip(tasks, labels, strict=True) if x == g]
        rows.append((name, int(g), " ".join(members), len(members), np.nan, np.nan))
    total_own = partition_score(own, labels) if own is not None else np.nan
    total_grad = partition_score(gradient, labels)
    rows.append((name, -1, "(total)", len(tasks), total_own, total_grad))
    return rows


def group_tasks(
    trace: Any,
    k: int,
    *,
    affinity: str = "cosine",
    group: str | None = None,
    measure: str = "raw",
    max_size: int | None = None,
    lr: float | None = None,
    window: Window | None = None,
    n_bootstrap: int = 200,
    baselines: bool = True,
    distance: str = "genetic",
    n_random: int = 100,
    seed: int = 0,
    cache: Any = None,
) -> Grouping:
    """Partition the trace's tasks into ``k`` groups by gradient affinity, with baselines.

    Stability: the best partition of each of ``n_bootstrap`` circular block bootstrap
    replicates of the affinity (heuristic search beyond K = 8 for speed) gives ``together``.
    Baselines (tasks with ISO codes only): ``typology`` = the best partition of the
    typological similarity -d (``distance``, any of analyses.DISTANCES) with the same k and
    max_size; ``family`` = average-linkage on the genetic distance cut into k groups;
    ``random`` = ``n_random`` uniformly random partitions with the grouping's group sizes
    (their mean gradient score is reported, and the fraction scoring at least as high: in
    sample, on the matrix the grouping maximised, so it is high by construction).
    ``holdout`` (cosine affinity): the grouping chosen on half the window's snapshots and
    scored on the other half, against random partitions there (``grouping_holdout``): the
    out-of-sample test of whether the grouping is structure rather than noise.
    """
    if not is_trace(trace):
        from analyses._analyse_run import open_run

        trace = open_run(trace)
    aff = task_affinity(
        trace, affinity, group, measure=measure, lr=lr, window=window,
        n_bootstrap=n_bootstrap, seed=seed,
    )  # fmt: skip
    tasks = aff.tasks
    keep = [i for i in range(len(tasks)) if np.isfinite(np.delete(aff.matrix[i], i)).all()]
    notes = []
    if len(keep) < len(tasks):
        dropped = [tasks[i] for i in range(len(tasks)) if i not in keep]
        notes.append(f"left out (missing affinity): {dropped}")
    if not keep:
        raise InvalidInputError(
            f"no task of the run has a finite {aff.kind} affinity with the others (all of "
            f"{tasks} have zero or missing gradients in group {group or 'all'!r}): there is "
            "nothing to group"
        )
    tasks = [tasks[i] for i in keep]
    A = _centred(aff.matrix[np.ix_(keep, keep)])
    K = len(tasks)
    _check(K, k, max_size)
    labels, score, method = best_partition(A, k, max_size=max_size, seed=seed)
    together = np.full((K, K), np.nan)
    stability = float("nan")
    if aff.replicates is not None:
        counts = np.zeros((K, K))
        fast = "exact" if K <= 8 else "heuristic"
        for n, rep in enumerate(aff.replicates):
            rep_labels, _, _ = best_partition(
                _centred(rep[np.ix_(keep, keep)]), k, max_size=max_size, method=fast, seed=seed + n
            )
            counts += rep_labels[:, None] == rep_labels[None, :]
        together = counts / len(aff.replicates)
        same = labels[:, None] == labels[None, :]
        np.fill_diagonal(same, False)
        stability = float(together[same].mean()) if same.any() else float("nan")
    rows = _scheme_rows("gradient", labels, tasks, A, A)
    if baselines:
        rows += _baselines(
            trace, tasks, labels, A, k, max_size, distance, n_random, seed, notes, cache
        )
    schemes = pd.DataFrame(rows, columns=GROUPING_COLUMNS)
    # imported here: analyses._grouping_holdout builds on this module's search and score
    from analyses._grouping_holdout import holdout_or_note

    holdout = holdout_or_note(
        trace, aff.kind, k, group, measure, max_size, window, n_random, seed, notes
    )
    return Grouping(
        affinity=Affinity(aff.kind, tasks, A, None, aff.note), k=k,
        labels=dict(zip(tasks, labels.tolist(), strict=True)), score=score, method=method,
        together=together, stability=stability, schemes=schemes, notes=notes, holdout=holdout,
    )  # fmt: skip


def _baselines(trace, tasks, labels, A, k, max_size, distance, n_random, seed, notes, cache):
    from analyses._typology import DISTANCES, typological_distances

    rows = []
    rng = np.random.default_rng(seed)
    sizes = np.bincount(labels)
    random_scores = random_partition_scores(A, sizes[sizes > 0], n_random, rng)
    grad = partition_score(A, labels)
    rows.append(("random", -1, f"(mean of {n_random} random partitions, sizes {sizes.tolist()})",
                 len(tasks), np.nan, float(random_scores.mean())))  # fmt: skip
    notes.append(
        f"in sample (on the matrix the grouping maximised, so by construction): random "
        f"partitions with the same sizes reach its score in "
        f"{(random_scores >= grad - 1e-12).mean():.1%} of {n_random} draws"
    )
    codes, unknown = usable_iso_codes(getattr(trace, "iso_codes", None))
    if unknown:
        notes.append(unknown)
    if len(tasks) < 2:  # one task: the one grouping there is, nothing to compare it with
        notes.append("typology and family baselines need at least 2 tasks: not computed")
        return rows
    if not all(t in codes for t in tasks):
        notes.append("typology and family baselines need ISO codes for every task: not computed")
        return rows
    if distance not in DISTANCES:
        raise InvalidInputError(f"distance {distance!r}; allowed: {', '.join(DISTANCES)}")
    iso = [str(codes[t]).lower() for t in tasks]
    kinds = sorted({distance, "genetic"})
    mats = typological_distances(list(dict.fromkeys(iso)), kinds, cache=cache)
    d = mats[distance].loc[iso, iso].to_numpy().copy()
    scale = np.nanmax(d) or 1.0
    typ_aff = _centred(1.0 - d / scale)  # similarity in [0, 1], centred like the gradients
    typ_labels, _, _ = best_partition(typ_aff, k, max_size=max_size, seed=seed)
    rows += _scheme_rows(f"typology ({distance})", typ_labels, tasks, typ_aff, A)
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    gen = mats["genetic"].loc[iso, iso].to_numpy().copy()
    np.fill_diagonal(gen, 0.0)
    # Cut by undoing the tree's last k - 1 merges: exactly k groups even where distances tie
    # (different families are all at genetic distance 1, so a height cut can give fewer).
    from analyses._clustering import _cut

    tree = linkage(squareform(gen, checks=False), "average")
    fam = _cut(tree, len(tasks), k)
    rows += _scheme_rows("family (genetic tree)", _renumber(fam), tasks, None, A)
    return rows


def planted_affinity(
    clusters: Sequence[int], *, within: float = 0.6, across: float = 0.0, noise: float = 0.1,
    seed: int = 0,
) -> np.ndarray:  # fmt: skip
    """A symmetric test affinity: ``within`` for tasks of one cluster, ``across`` otherwise,
    plus symmetric Gaussian noise of sd ``noise`` (diagonal 1)."""
    c = np.asarray(clusters)
    rng = np.random.default_rng(seed)
    A = np.where(c[:, None] == c[None, :], within, across) + noise * rng.normal(size=(len(c),) * 2)
    A = (A + A.T) / 2
    np.fill_diagonal(A, 1.0)
    return A


__all__ = [
    "AFFINITIES", "Affinity", "EXACT_MAX", "Grouping", "best_partition",
    "exact_partition", "group_tasks", "heuristic_partition", "lookahead_affinity",
    "partition_score", "planted_affinity", "task_affinity",
]  # fmt: skip
