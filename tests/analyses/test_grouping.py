"""Grouping tasks by gradient affinity: planted clusters, exact vs heuristic, lookahead."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import geomtrace as gt
from analyses import (
    exact_partition,
    group_tasks,
    heuristic_partition,
    lookahead_affinity,
    partition_score,
    planted_affinity,
)
from geomtrace import InvalidInputError


def _brute_force(A, k, max_size=None):
    K = len(A)
    best = -np.inf
    for labels in itertools.product(range(k), repeat=K):
        sizes = np.bincount(labels, minlength=k)
        if (sizes == 0).any() or (max_size and sizes.max() > max_size):
            continue
        best = max(best, partition_score(A, labels))
    return best


def test_exact_search_is_optimal_and_the_heuristic_agrees_on_small_k():
    rng = np.random.default_rng(0)
    for trial in range(6):
        A = rng.normal(size=(7, 7))  # asymmetric on purpose (lookahead affinities are)
        for k, max_size in ((2, None), (3, None), (3, 3)):
            labels, score = exact_partition(A, k, max_size=max_size)
            assert score == pytest.approx(_brute_force(A, k, max_size))
            assert len(set(labels)) == k
            if max_size:
                assert np.bincount(labels).max() <= max_size
            _, heuristic = heuristic_partition(A, k, max_size=max_size, seed=trial)
            assert heuristic == pytest.approx(score)


def test_planted_clusters_are_recovered():
    clusters = np.repeat([0, 1, 2], 4)  # 12 tasks in 3 planted clusters
    A = planted_affinity(clusters, within=0.5, across=0.1, noise=0.15, seed=3)
    labels, _ = exact_partition(A - 0.2, 3)  # centred (as group_tasks does): above-average pairs
    assert len(set(zip(labels, clusters, strict=True))) == 3  # the same partition
    big = np.repeat(np.arange(4), 5)  # 20 tasks: beyond exact search
    labels, _ = heuristic_partition(planted_affinity(big, noise=0.15, seed=4) - 0.15, 4)
    assert len(set(zip(labels, big, strict=True))) == 4
    with pytest.raises(InvalidInputError, match="no partition fits"):
        exact_partition(A, 2, max_size=5)
    with pytest.raises(InvalidInputError, match="k=0"):
        exact_partition(A, 0)


def _planted_trace(path, clusters, seed=0, snapshots=12):
    rng = np.random.default_rng(seed)
    K, dim = len(clusters), 64
    centers = rng.normal(size=(max(clusters) + 1, dim))
    tasks = [f"task{i}" for i in range(K)]
    with gt.TraceWriter(path, tasks, [("body", dim, ["w"])], config={"lr": 0.01}) as w:
        for step in range(0, 10 * snapshots + 1, 10):
            g = centers[clusters] + 0.8 * rng.normal(size=(K, dim))
            w.write_snapshot(step, (g @ g.T)[None], {t: 2.0 for t in tasks})
    return tasks


def test_group_tasks_on_a_trace_with_stability_and_baselines(tmp_path):
    clusters = np.repeat([0, 1, 2], 3)
    tasks = _planted_trace(tmp_path, clusters)
    grouping = group_tasks(gt.open_trace(tmp_path), 3, n_bootstrap=40, n_random=50)
    assert grouping.method == "exact"
    expected = [[t for t, c in zip(tasks, clusters, strict=True) if c == g] for g in range(3)]
    assert sorted(grouping.groups()) == sorted(expected)
    assert grouping.stability > 0.9  # the planted pairs stay together under the bootstrap
    assert grouping.together.shape == (9, 9)
    totals = grouping.schemes[grouping.schemes["group"] == -1].set_index("scheme")
    assert totals.loc["random", "gradient_score"] < totals.loc["gradient", "gradient_score"]
    assert any("ISO codes" in n for n in grouping.notes)  # no typology baseline without codes
    look = group_tasks(gt.open_trace(tmp_path), 3, affinity="lookahead", n_bootstrap=0)
    assert sorted(look.groups()) == sorted(expected)


def test_lookahead_matches_a_real_step_to_first_order(tmp_path):
    """Z(i -> j) = lr g_i.g_j / L_j against 1 - L_j(theta - lr g_i) / L_j(theta)."""
    torch.manual_seed(0)
    K, n, d = 4, 32, 6
    model = torch.nn.Linear(d, 1)
    data = [(torch.randn(n, d), torch.randn(n, 1) + k) for k in range(K)]

    def loss(k):
        x, y = data[k]
        return torch.nn.functional.mse_loss(model(x), y)

    params = list(model.parameters())
    grads = [
        torch.cat([g.flatten() for g in torch.autograd.grad(loss(k), params)]) for k in range(K)
    ]
    G = torch.stack(grads) @ torch.stack(grads).T
    L = torch.stack([loss(k) for k in range(K)]).detach()
    lr = 1e-3
    tasks = [f"t{k}" for k in range(K)]
    with gt.TraceWriter(tmp_path, tasks, [("all_params", 7, ["w", "b"])], config={"lr": lr}) as w:
        w.write_snapshot(1, G.detach().numpy()[None], dict(zip(tasks, L.tolist(), strict=True)))
    Z = lookahead_affinity(gt.open_trace(tmp_path)).matrix
    real = np.zeros((K, K))
    for i in range(K):
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            offset = 0
            for p in params:
                p -= lr * grads[i][offset : offset + p.numel()].view_as(p)
                offset += p.numel()
            after = torch.stack([loss(k) for k in range(K)])
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
        real[i] = (1 - after / L).numpy()
    # First order: the difference is O(lr^2 |g|^2 / L), far below the effect itself.
    assert np.abs(Z - real).max() < 0.02 * np.abs(real).max()
    assert not np.allclose(Z, Z.T)  # asymmetric: L_i != L_j
    with pytest.raises(InvalidInputError, match="learning rate"):
        lookahead_affinity(gt.open_trace(tmp_path), lr=-1.0)
