"""Which tasks group together: a flat cut of the similarity tree, chosen by silhouette.

The average-linkage tree (:func:`analyses.cluster_tasks`, distances d_ij = 1 - phi_ij) orders
every merge; a reader also wants the answer to "which tasks cluster together". For each cut of
the tree into k = 2 .. K-1 clusters, the mean silhouette (Rousseeuw 1987)

    s(i) = (b_i - a_i) / max(a_i, b_i),  a_i = mean d_ij over i's own cluster (j != i),
                                          b_i = min over other clusters C of mean_{j in C} d_ij

(s(i) = 0 for a task alone in its cluster) says how much closer tasks are to their own cluster
than to the nearest other one. The cut with the highest mean silhouette is reported; when no
cut reaches a positive mean silhouette the tasks form one cluster (no structure to report).
This describes the matrix; it is not a test (the agreement with families is, where known).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def silhouette(distance: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette of ``labels`` ([K] ints) under the distance matrix ``distance`` [K, K]."""
    d = np.asarray(distance, dtype=np.float64)
    labels = np.asarray(labels)
    scores = np.zeros(len(labels))
    for i, label in enumerate(labels):
        own = (labels == label) & (np.arange(len(labels)) != i)
        if not own.any():
            continue  # a singleton: s(i) = 0 by convention
        a = d[i, own].mean()
        b = min(d[i, labels == other].mean() for other in set(labels.tolist()) - {label})
        top = max(a, b)
        scores[i] = (b - a) / top if top > 0 else 0.0
    return float(scores.mean())


def flat_clusters(tree: Any, similarity: np.ndarray) -> dict[str, Any]:
    """The silhouette-best flat cut of ``tree`` (a ``ClusterTree`` over ``similarity``'s tasks).

    Returns ``{"n_clusters", "silhouette", "clusters", "criterion"}`` with ``clusters`` a list
    of task lists, largest first (tasks in the tree's leaf order within each).
    """
    tasks = list(tree.tasks)
    sim = np.asarray(similarity, dtype=np.float64)
    distance = np.clip(1.0 - (sim + sim.T) / 2, 0.0, 2.0)
    np.fill_diagonal(distance, 0.0)
    best_k, best_score = 1, 0.0
    for k in range(2, len(tasks)):
        labels = np.array([tree.cut(k)[t] for t in tasks])
        if len(set(labels.tolist())) < 2:
            continue
        score = silhouette(distance, labels)
        if score > best_score + 1e-12:
            best_k, best_score = k, score
    labels = tree.cut(best_k) if best_k > 1 else dict.fromkeys(tasks, 1)
    order = {t: n for n, t in enumerate(tree.leaves)}
    groups: dict[int, list[str]] = {}
    for t in sorted(tasks, key=order.__getitem__):
        groups.setdefault(labels[t], []).append(t)
    clusters = sorted(groups.values(), key=lambda g: (-len(g), order[g[0]]))
    return {
        "n_clusters": len(clusters),
        "silhouette": best_score if best_k > 1 else None,
        "clusters": clusters,
        "criterion": "cut of the average-linkage tree with the highest mean silhouette "
        "(k = 2 .. K-1); one cluster when no cut has a positive mean silhouette",
    }


def tree_dict(tree: Any, similarity: np.ndarray) -> dict[str, Any]:
    """JSON-ready tree: tasks, leaf order, scipy linkage rows, cophenetic r, flat clusters."""
    coph = float(tree.cophenetic_correlation)
    return {
        "tasks": list(tree.tasks),
        "leaves": list(tree.leaves),
        "linkage": np.asarray(tree.linkage, dtype=np.float64).round(6).tolist(),
        "cophenetic_correlation": coph if np.isfinite(coph) else None,
        "flat": flat_clusters(tree, similarity),
    }


__all__ = ["flat_clusters", "silhouette", "tree_dict"]
