"""Hierarchical clustering of tasks by gradient similarity, and agreement with families."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analyses._inputs import as_square, check_finite_offdiag
from analyses._stats import p_value, permutations
from analyses._uncertainty import LEVEL, interval
from geomtrace import InvalidInputError

AGREEMENT_COLUMNS = [
    "statistic", "value", "ci_low", "ci_high", "p_value", "null_mean", "n_tasks", "n_families",
    "n_clusters", "n_permutations", "note",
]  # fmt: skip


@dataclass(frozen=True)
class ClusterTree:
    """Average-linkage clustering of tasks on d_ij = 1 - phi_ij.

    tasks: labels in matrix order; linkage: scipy linkage matrix [K-1, 4]; leaves: tasks in
    dendrogram order; cophenetic_correlation: Pearson r between d_ij and the cophenetic
    distances (how faithfully the tree keeps the distances; 1 = perfectly).
    """

    tasks: list[str]
    linkage: np.ndarray
    leaves: list[str]
    cophenetic_correlation: float

    def cut(self, n_clusters: int) -> dict[str, int]:
        """Cluster label (1..n) per task, cutting the tree into at most ``n_clusters``."""
        from scipy.cluster.hierarchy import fcluster

        labels = fcluster(self.linkage, t=n_clusters, criterion="maxclust")
        return dict(zip(self.tasks, labels.tolist(), strict=True))


def _distance(similarity, tasks) -> tuple[np.ndarray, list[str]]:
    sim, labels = as_square(similarity, tasks, what="similarity")
    check_finite_offdiag(sim, labels, "similarity")
    if len(labels) < 3:
        raise InvalidInputError(f"clustering needs at least 3 tasks, got {len(labels)}")
    d = 1.0 - (sim + sim.T) / 2
    np.fill_diagonal(d, 0.0)
    return np.clip(d, 0.0, 2.0), labels


def cluster_tasks(similarity, tasks: Sequence[str] | None = None) -> ClusterTree:
    """Average-linkage (UPGMA) clustering on 1 - cosine; see :class:`ClusterTree`."""
    from scipy.cluster.hierarchy import cophenet, leaves_list, linkage
    from scipy.spatial.distance import squareform

    d, labels = _distance(similarity, tasks)
    condensed = squareform(d, checks=False)
    Z = linkage(condensed, method="average")
    with warnings.catch_warnings():
        # All distances equal: the correlation is undefined and comes back NaN.
        warnings.simplefilter("ignore", RuntimeWarning)
        coph, _ = cophenet(Z, condensed)
    return ClusterTree(labels, Z, [labels[i] for i in leaves_list(Z)], float(coph))


def _ari_index_terms(a: np.ndarray, b_perm: np.ndarray) -> np.ndarray:
    """sum_ij C(n_ij, 2) for fixed labels a [n] and a batch of labellings b [P, n]."""
    na, nb = a.max() + 1, b_perm.max() + 1
    A = np.eye(na)[a]  # [n, na]
    B = np.eye(nb)[b_perm]  # [P, n, nb]
    table = np.einsum("na,pnb->pab", A, B)
    return (table * (table - 1) / 2).sum(axis=(1, 2))


def adjusted_rand_index(a: Sequence, b: Sequence) -> float:
    """Hubert & Arabie's adjusted Rand index between two labellings of the same items."""
    a = np.unique(np.asarray(a), return_inverse=True)[1]
    b = np.unique(np.asarray(b), return_inverse=True)[1]
    return float(_ari(a, b[None])[0])


def _ari(a: np.ndarray, b_perm: np.ndarray) -> np.ndarray:
    # ARI = (I - E) / (M - E) with I = sum C(n_ij,2), E = sum C(a_i,2) sum C(b_j,2) / C(n,2),
    # M = (sum C(a_i,2) + sum C(b_j,2)) / 2; only I changes when b's labels are permuted.
    n = len(a)
    comb = lambda c: (c * (c - 1) / 2).sum()  # noqa: E731
    sa = comb(np.bincount(a).astype(float))
    sb = comb(np.bincount(b_perm[0]).astype(float))
    expected = sa * sb / (n * (n - 1) / 2)
    maximum = (sa + sb) / 2
    index = _ari_index_terms(a, b_perm)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(maximum != expected, (index - expected) / (maximum - expected), np.nan)


def family_agreement(
    similarity,
    families: Mapping[str, str] | Sequence[str],
    tasks: Sequence[str] | None = None,
    *,
    n_permutations: int = 9999,
    seed: int = 0,
    replicates: np.ndarray | None = None,
    level: float = LEVEL,
    df: int | None = None,
) -> pd.DataFrame:
    """Does the similarity structure recover the language families?

    - ``ari``: adjusted Rand index between the families and the average-linkage tree cut into
      as many clusters as there are families among the tasks.
    - ``nn_same_family``: fraction of tasks whose most similar other task (highest cosine) is
      in the same family.
    - ``cophenetic_correlation``: the tree's fit (no p-value: it is not a test of families).
    Null (one-sided, "greater"): family labels permuted over the tasks (the tree and the
    nearest neighbours stay fixed), ``n_permutations`` times from ``seed``.
    ``replicates`` ([B, K, K] bootstrap matrices over the same tasks, e.g.
    ``Similarity.replicates``): ci_low, ci_high = the ``level`` basic bootstrap interval of the
    statistic recomputed (tree, cut, nearest neighbours) on each replicate, reflected about
    the estimate (basic interval, ``analyses._uncertainty``; widened for the bootstrap's ``df``,
    ``Similarity.bootstrap_df``, when given); NaN without.
    Columns: statistic, value, ci_low, ci_high, p_value, null_mean, n_tasks, n_families,
    n_clusters, n_permutations, note. Needs at least 4 tasks.
    """
    _, labels = as_square(similarity, tasks, what="similarity")
    if len(labels) < 4:
        raise InvalidInputError(
            f"family agreement needs at least 4 tasks, got {len(labels)} ({labels}): with 3 "
            "there are too few distinct relabellings for a permutation p-value"
        )
    tree = cluster_tasks(similarity, tasks)
    if isinstance(families, Mapping):
        missing = [t for t in labels if t not in families]
        if missing:
            raise InvalidInputError(f"no family given for tasks {missing}")
        fam = [str(families[t]) for t in labels]
    else:
        fam = [str(f) for f in families]
        if len(fam) != len(labels):
            raise InvalidInputError(f"{len(fam)} families for {len(labels)} tasks")
    f = np.unique(fam, return_inverse=True)[1]
    n_fam = int(f.max() + 1)
    K = len(labels)
    perms = permutations(K, n_permutations, seed)
    f_perm = f[perms]  # [P, K]
    rows = []

    n_clusters, note = n_fam, ""
    if n_fam in (1, K):
        ari, p, null_mean, n_clusters = np.nan, np.nan, np.nan, n_fam
        note = (
            "ARI undefined: every task in one family"
            if n_fam == 1
            else ("ARI undefined: every task in its own family")
        )
    else:
        cut = tree.cut(n_fam)
        clusters = np.unique([cut[t] for t in labels], return_inverse=True)[1]
        n_clusters = int(clusters.max() + 1)
        ari = float(_ari(clusters, f[None])[0])
        null = _ari(clusters, f_perm)
        p, null_mean = p_value(null, ari, "greater"), float(np.nanmean(null))
    boot_ari, boot_nn, boot_coph = _replicate_statistics(replicates, labels, f, n_fam)
    rows.append(
        ("ari", ari, *interval(boot_ari, level, estimate=ari, bounds=(-1.0, 1.0), df=df), p, null_mean, K, n_fam, n_clusters,
         n_permutations, note)
    )  # fmt: skip

    d, _ = _distance(similarity, tasks)
    np.fill_diagonal(d, np.inf)
    nn = np.argmin(d, axis=1)  # most similar other task (ties: first in task order)
    observed = float(np.mean(f == f[nn]))
    null = np.mean(f_perm == f_perm[:, nn], axis=1)
    note = "" if n_fam < K else "no two tasks share a family"
    rows.append(
        (
            "nn_same_family", observed,
            *interval(boot_nn, level, estimate=observed, bounds=(0.0, 1.0), df=df),
            p_value(null, observed, "greater"), float(null.mean()), K, n_fam, np.nan,
            n_permutations, note,
        )
    )  # fmt: skip
    rows.append(
        (
            "cophenetic_correlation", tree.cophenetic_correlation,
            *interval(boot_coph, level, estimate=tree.cophenetic_correlation, bounds=(-1.0, 1.0),
                      df=df),
            np.nan, np.nan, K, n_fam, np.nan, 0, "fit of the tree to 1 - cosine; not a test",
        )
    )  # fmt: skip
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)


def _replicate_statistics(
    replicates: np.ndarray | None, labels: list[str], f: np.ndarray, n_fam: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ARI and same-family nearest neighbour on each bootstrap matrix (cophenetic r: NaN).

    The same tree as :func:`cluster_tasks` (average linkage on 1 - cosine), cut into
    ``n_fam`` clusters by undoing its last merges (what ``fcluster(..., "maxclust")`` does
    for a monotone linkage), without scipy's per-call validation: a thousand replicates cost
    a fraction of a second instead of seconds.
    """
    if replicates is None:
        return np.array([]), np.array([]), np.array([])
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    replicates = np.asarray(replicates, dtype=np.float64)
    K = len(labels)
    if replicates.ndim != 3 or replicates.shape[1:] != (K, K):
        raise InvalidInputError(
            f"replicates must be [B, {K}, {K}] matrices over the same tasks, got {replicates.shape}"
        )
    off = ~np.eye(K, dtype=bool)
    aris, nns = [], []
    for m in replicates:
        if not np.isfinite(m[off]).all():
            aris.append(np.nan)
            nns.append(np.nan)
            continue
        d = np.clip(1.0 - (m + m.T) / 2, 0.0, 2.0)
        np.fill_diagonal(d, 0.0)
        if n_fam in (1, K):
            aris.append(np.nan)
        else:
            Z = linkage(squareform(d, checks=False), method="average")
            clusters = _cut(Z, K, n_fam)
            aris.append(float(_ari(clusters, f[None])[0]))
        np.fill_diagonal(d, np.inf)
        nns.append(float(np.mean(f == f[np.argmin(d, axis=1)])))
    return np.array(aris), np.array(nns), np.full(len(replicates), np.nan)


def _cut(Z: np.ndarray, K: int, n_clusters: int) -> np.ndarray:
    """Cluster index per leaf after the first K - n_clusters merges of linkage ``Z``."""
    parent = list(range(2 * K - 1))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for step in range(K - n_clusters):
        a, b = int(Z[step, 0]), int(Z[step, 1])
        parent[find(a)] = K + step
        parent[find(b)] = K + step
    roots = [find(i) for i in range(K)]
    return np.unique(roots, return_inverse=True)[1]
