"""Aggregators: parity with a plain reference on explicit gradient vectors and with torchjd 0.18,
plus the properties that the paper states (PCGrad's cosine-0 target, GradVac's law of sines).

How torchjd is fed the same visiting orders: torchjd's PCGradWeighting / GradVacWeighting draw
one permutation per task i with ``torch.randperm`` from the global RNG, in a fixed sequence
(PCGrad: ``randperm(K)`` with i skipped; GradVac: ``randperm(K-1)`` indexing the other tasks in
increasing order). We seed the global RNG, replay exactly that sequence of calls to read off the
orders torchjd will use, reseed, and call torchjd once per group, then give the same orders to
our vectorised aggregators. Nothing in torchjd is patched; if the replay were wrong, the parity
tests would fail.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchjd.aggregation import GradVacWeighting, PCGradWeighting

from geomtrace._aggregators import (
    GradVac,
    Mean,
    PCGrad,
    Sum,
    gradvac_coefficients,
    pcgrad_coefficients,
    random_order,
)
from geomtrace._errors import InvalidInputError

F64 = torch.float64


# ----------------------------------------------------------------------------------------------
# Plain reference: explicit flattened gradient vectors, loops, exactly as PAPER.md states it.
# ----------------------------------------------------------------------------------------------


def ref_pcgrad(grads: list[torch.Tensor], order: list[list[int]]) -> torch.Tensor:
    """sum_i g_i' with g_i' <- g_i' - (g_i'.g_j / |g_j|^2) g_j whenever g_i'.g_j < 0."""
    update = torch.zeros_like(grads[0])
    for i, g_i in enumerate(grads):
        g = g_i.clone()
        for j in order[i]:
            dot = float(g @ grads[j])
            if dot < 0:
                g = g - dot / float(grads[j] @ grads[j]) * grads[j]
        update += g
    return update


def ref_gradvac(
    grads: list[torch.Tensor], order: list[list[int]], phi_hat: list[list[float]], beta: float
) -> torch.Tensor:
    """sum_i g_i' with the GradVac correction; updates phi_hat (a K x K nested list) in place."""
    update = torch.zeros_like(grads[0])
    for i, g_i in enumerate(grads):
        g = g_i.clone()
        for j in order[i]:
            norm_i, norm_j = math.sqrt(float(g @ g)), math.sqrt(float(grads[j] @ grads[j]))
            phi = float(g @ grads[j]) / (norm_i * norm_j)
            target = phi_hat[i][j]
            if phi < target:
                scale = (
                    norm_i
                    * (target * math.sqrt(1 - phi**2) - phi * math.sqrt(1 - target**2))
                    / (norm_j * math.sqrt(1 - target**2))
                )
                g = g + scale * grads[j]
            phi_hat[i][j] = (1 - beta) * target + beta * phi
        update += g
    return update


# ----------------------------------------------------------------------------------------------
# Test data: random gradients with planted conflicts, and real per-task gradients of a model.
# ----------------------------------------------------------------------------------------------


def conflicting_gradients(num_groups: int, num_tasks: int, dim: int, seed: int) -> torch.Tensor:
    """[G, K, P] float64 gradients, unit scale; tasks 1 and 3 strongly oppose tasks 0 and 2."""
    gen = torch.Generator().manual_seed(seed)
    grads = torch.randn(num_groups, num_tasks, dim, generator=gen, dtype=F64)
    grads[:, 1] = -0.9 * grads[:, 0] + 0.3 * grads[:, 1]
    if num_tasks > 3:
        grads[:, 3] = -0.7 * grads[:, 2] + 0.2 * grads[:, 3]
    # A shared component makes other pairs positively aligned: a mixture of signs.
    grads[:, 4:] += 0.8 * grads[:, :1]
    return grads / grads.norm(dim=-1, keepdim=True).mean()


def model_gradients(num_tasks: int, seed: int) -> list[torch.Tensor]:
    """Real per-task gradients of a small MLP, one [K, P_k] float64 matrix per parameter.

    Each task is a regression with its own inputs and its own target map; tasks with odd index
    have the negated targets of task 0's map, so their gradients genuinely conflict.
    """
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 3)
    )
    model = model.to(F64)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=F64) * 0.5)
    base = torch.randn(6, 3, generator=gen, dtype=F64)
    per_task = []
    for t in range(num_tasks):
        x = torch.randn(32, 6, generator=gen, dtype=F64)
        own = torch.randn(6, 3, generator=gen, dtype=F64)
        y = (x @ (-base if t % 2 else base)) + 0.3 * x @ own
        loss = ((model(x) - y) ** 2).mean()
        per_task.append(torch.autograd.grad(loss, list(model.parameters())))
    return [torch.stack([g[k].reshape(-1) for g in per_task]) for k in range(len(per_task[0]))]


def gram_of(grads: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    if isinstance(grads, torch.Tensor):
        return grads @ grads.transpose(1, 2)
    return torch.stack([g @ g.T for g in grads])


def update_of(
    weights: torch.Tensor, grads: torch.Tensor | list[torch.Tensor]
) -> list[torch.Tensor]:
    return [weights[k] @ grads[k] for k in range(weights.shape[0])]


def torchjd_pcgrad_orders(seed: int, num_groups: int, num_tasks: int) -> torch.Tensor:
    """The orders torchjd's PCGradWeighting visits after torch.manual_seed(seed), group by group."""
    torch.manual_seed(seed)
    orders = []
    for _ in range(num_groups):
        rows = []
        for i in range(num_tasks):
            rows.append([int(j) for j in torch.randperm(num_tasks) if j != i])
        orders.append(rows)
    return torch.tensor(orders)


def torchjd_gradvac_orders(seed: int, num_groups: int, num_tasks: int) -> torch.Tensor:
    """The orders torchjd's GradVacWeighting visits after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    orders = []
    for _ in range(num_groups):
        rows = []
        for i in range(num_tasks):
            others = [j for j in range(num_tasks) if j != i]
            rows.append([others[p] for p in torch.randperm(num_tasks - 1).tolist()])
        orders.append(rows)
    return torch.tensor(orders)


def assert_updates_close(ours: list[torch.Tensor], ref: list[torch.Tensor]) -> None:
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6 * float(b.norm()) + 1e-12)


# ----------------------------------------------------------------------------------------------
# Parity
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["random", "model"])
def test_pcgrad_matches_reference(source):
    if source == "random":
        grads = conflicting_gradients(num_groups=4, num_tasks=6, dim=30, seed=0)
    else:
        grads = model_gradients(num_tasks=5, seed=0)
    num_groups, num_tasks = len(grads), grads[0].shape[0]
    order = random_order(num_groups, num_tasks, torch.Generator().manual_seed(3))
    weights = PCGrad().weights(gram_of(grads), order=order)
    ref = [ref_pcgrad(list(grads[k]), order[k].tolist()) for k in range(num_groups)]
    assert_updates_close(update_of(weights, grads), ref)
    # The planted conflicts are real: some projections happened.
    assert not torch.allclose(weights, torch.ones_like(weights))


# The reference has no eps: with eps > 0 they agree only on unit-scale gradients.
@pytest.mark.parametrize(("source", "eps"), [("random", 0.0), ("random", 1e-8), ("model", 0.0)])
def test_gradvac_matches_reference_over_successive_calls(source, eps):
    beta = 0.3
    agg = GradVac(beta=beta, eps=eps)
    phi_hat = None
    changed = 0
    for call in range(4):
        if source == "random":
            grads = conflicting_gradients(num_groups=3, num_tasks=6, dim=25, seed=10 + call)
        else:
            grads = model_gradients(num_tasks=5, seed=10 + call)
        num_groups, num_tasks = len(grads), grads[0].shape[0]
        if phi_hat is None:
            phi_hat = [[[0.0] * num_tasks for _ in range(num_tasks)] for _ in range(num_groups)]
        order = random_order(num_groups, num_tasks, torch.Generator().manual_seed(call))
        weights = agg.weights(gram_of(grads), order=order)
        ref = [
            ref_gradvac(list(grads[k]), order[k].tolist(), phi_hat[k], beta)
            for k in range(num_groups)
        ]
        assert_updates_close(update_of(weights, grads), ref)
        torch.testing.assert_close(
            agg.targets, torch.tensor(phi_hat, dtype=F64), rtol=1e-6, atol=1e-7
        )
        changed += int(not torch.allclose(weights, torch.ones_like(weights)))
    assert changed == 4


@pytest.mark.parametrize("source", ["random", "model"])
def test_pcgrad_matches_torchjd(source):
    grads = (
        conflicting_gradients(num_groups=5, num_tasks=7, dim=40, seed=1)
        if source == "random"
        else model_gradients(num_tasks=6, seed=1)
    )
    gram = gram_of(grads)
    num_groups, num_tasks = gram.shape[:2]
    with torch.random.fork_rng():
        order = torchjd_pcgrad_orders(5, num_groups, num_tasks)
        torch.manual_seed(5)
        expected = torch.stack([PCGradWeighting()(gram[k]) for k in range(num_groups)])
    ours = PCGrad().weights(gram, order=order)
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-9)
    assert not torch.allclose(ours, torch.ones_like(ours))


@pytest.mark.parametrize("source", ["random", "model"])
@pytest.mark.parametrize("beta", [0.5, 0.05])
def test_gradvac_matches_torchjd_over_successive_calls(source, beta):
    ours_agg = GradVac(beta=beta, eps=1e-8)
    theirs: list[GradVacWeighting] = []
    for call in range(5):
        grads = (
            conflicting_gradients(num_groups=4, num_tasks=6, dim=30, seed=20 + call)
            if source == "random"
            else model_gradients(num_tasks=5, seed=20 + call)
        )
        gram = gram_of(grads)
        num_groups, num_tasks = gram.shape[:2]
        if not theirs:
            theirs = [GradVacWeighting(beta=beta, eps=1e-8) for _ in range(num_groups)]
        with torch.random.fork_rng():
            order = torchjd_gradvac_orders(100 + call, num_groups, num_tasks)
            torch.manual_seed(100 + call)
            expected = torch.stack([theirs[k](gram[k]) for k in range(num_groups)])
        ours = ours_agg.weights(gram, order=order)
        torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(
            ours_agg.targets, torch.stack([w._phi_t for w in theirs]), rtol=1e-6, atol=1e-9
        )
    assert ours_agg.targets.abs().max() > 0.01  # the EMA really evolved


# ----------------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------------


def test_pcgrad_and_gradvac_leave_non_conflicting_gradients_untouched():
    gen = torch.Generator().manual_seed(0)
    grads = torch.rand(3, 5, 20, generator=gen, dtype=F64)  # positive entries: all dots > 0
    gram = gram_of(grads)
    assert torch.equal(PCGrad().weights(gram), torch.ones(3, 5, dtype=F64))
    # GradVac with targets 0 is the same; and it moves its targets towards the observed cosines.
    gradvac = GradVac(beta=0.5)
    assert torch.equal(gradvac.weights(gram), torch.ones(3, 5, dtype=F64))
    cos = (
        gram
        / gram.diagonal(dim1=1, dim2=2).sqrt().unsqueeze(-1)
        / gram.diagonal(dim1=1, dim2=2).sqrt().unsqueeze(1)
    )
    off = ~torch.eye(5, dtype=torch.bool).expand(3, 5, 5)
    torch.testing.assert_close(gradvac.targets[off], 0.5 * cos[off], rtol=1e-6, atol=1e-6)


def test_gradvac_with_frozen_zero_targets_is_pcgrad():
    gram = gram_of(conflicting_gradients(num_groups=4, num_tasks=8, dim=30, seed=4))
    gradvac, pcgrad = GradVac(beta=0.0, eps=0.0, seed=7), PCGrad(seed=7)
    for _ in range(3):  # same seed: same orders, call after call
        torch.testing.assert_close(
            gradvac.weights(gram), pcgrad.weights(gram), rtol=1e-12, atol=1e-12
        )
    assert torch.equal(gradvac.targets, torch.zeros_like(gram))


def test_gradvac_correction_reaches_the_target_cosine():
    # Two tasks with cosine -0.6 and a target of 0.4: after the correction cos(g_0', g_1) = 0.4.
    g0 = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    g1 = 2.5 * torch.tensor([-0.6, 0.8, 0.0], dtype=F64)
    grads = torch.stack([g0, g1]).unsqueeze(0)
    targets = torch.full((1, 2, 2), 0.4, dtype=F64)
    order = torch.tensor([[[1], [0]]])
    coef, new_targets = gradvac_coefficients(gram_of(grads), order, targets, beta=0.1, eps=0.0)
    modified = coef[0] @ grads[0]
    for i, j in [(0, 1), (1, 0)]:
        cos = float(modified[i] @ grads[0, j] / (modified[i].norm() * grads[0, j].norm()))
        assert cos == pytest.approx(0.4, abs=1e-12)
    # The EMA moved with the cosine observed *before* the correction: 0.9 * 0.4 + 0.1 * (-0.6).
    torch.testing.assert_close(new_targets[0, 0, 1], torch.tensor(0.3, dtype=F64))
    # With K = 5 the cosine equals the target right after each correction, in every round.
    grads = conflicting_gradients(num_groups=1, num_tasks=5, dim=12, seed=2)
    gram = gram_of(grads)
    order = random_order(1, 5, torch.Generator().manual_seed(0))
    targets = torch.full((1, 5, 5), 0.3, dtype=F64)
    for rounds in range(1, 5):
        coef, _ = gradvac_coefficients(gram, order[:, :, :rounds].contiguous(), targets, 0.0, 0.0)
        # Truncated orders are fine for this check: round r only reads order[..., r].
        modified = coef[0] @ grads[0]
        for i in range(5):
            j = int(order[0, i, rounds - 1])
            cos = float(modified[i] @ grads[0, j] / (modified[i].norm() * grads[0, j].norm()))
            assert cos >= 0.3 - 1e-9  # == 0.3 when corrected, > 0.3 when it was already above


def test_pcgrad_projection_makes_conflicting_pair_orthogonal():
    grads = torch.tensor([[[1.0, 0.0], [-1.0, 1.0]]], dtype=F64)
    coef = pcgrad_coefficients(gram_of(grads), torch.tensor([[[1], [0]]]))
    modified = coef[0] @ grads[0]
    torch.testing.assert_close(modified, torch.tensor([[0.5, 0.5], [0.0, 1.0]], dtype=F64))
    torch.testing.assert_close(
        PCGrad().weights(gram_of(grads)), torch.tensor([[2.0, 1.5]], dtype=F64)
    )


@pytest.mark.parametrize(
    "make", [lambda: PCGrad(), lambda: GradVac(beta=0.5), lambda: Sum(), lambda: Mean()]
)
def test_absent_tasks_are_zero_weight_and_skipped(make):
    # Task 2 absent (NaN row/column, as TaskGradients.gram reports it). The other tasks must get
    # exactly the weights of the same aggregator run without task 2, with task 2 removed from
    # the visiting orders.
    grads = conflicting_gradients(num_groups=3, num_tasks=5, dim=20, seed=6)
    gram = gram_of(grads)
    keep = [0, 1, 3, 4]
    nan_gram = gram.clone()
    nan_gram[:, 2, :] = float("nan")
    nan_gram[:, :, 2] = float("nan")
    order = random_order(3, 5, torch.Generator().manual_seed(1))
    remap = {old: new for new, old in enumerate(keep)}
    small_order = torch.tensor(
        [[[remap[j] for j in order[g, i].tolist() if j != 2] for i in keep] for g in range(3)]
    )
    agg_full, agg_small = make(), make()
    for _ in range(2):
        w = agg_full.weights(nan_gram, order=order)
        w_small = agg_small.weights(gram[:, keep][:, :, keep], order=small_order)
        assert torch.isfinite(w).all()
        assert torch.equal(w[:, 2], torch.zeros(3, dtype=F64))
        torch.testing.assert_close(w[:, keep], w_small, rtol=1e-12, atol=1e-12)
    if isinstance(agg_full, GradVac):
        t = agg_full.targets
        assert torch.equal(t[:, 2, :], torch.zeros(3, 5, dtype=F64))
        assert torch.equal(t[:, :, 2], torch.zeros(3, 5, dtype=F64))
        torch.testing.assert_close(
            t[:, keep][:, :, keep], agg_small.targets, rtol=1e-12, atol=1e-12
        )


@pytest.mark.parametrize("make", [lambda: PCGrad(), lambda: GradVac(beta=0.5)])
def test_zero_norm_task_gradients_give_finite_weights(make):
    grads = conflicting_gradients(num_groups=2, num_tasks=4, dim=10, seed=8)
    grads[0, 1] = 0.0  # task 1 has no gradient in group 0
    grads[1] = 0.0  # no task has a gradient in group 1
    gram = gram_of(grads).to(torch.float32)
    agg = make()
    for _ in range(3):
        w = agg.weights(gram)
        assert torch.isfinite(w).all()
        # A zero gradient is never a correction direction: its column is its own weight, 1.
        assert w[0, 1] == 1.0
        assert torch.equal(w[1], torch.ones(4))
    if isinstance(agg, GradVac):
        assert torch.isfinite(agg.targets).all()
        assert torch.equal(agg.targets[1], torch.zeros(4, 4))


def test_gradvac_state_dict_round_trip_continues_bit_identically():
    grams = [gram_of(conflicting_gradients(3, 6, 20, seed=30 + t)).float() for t in range(6)]
    run = GradVac(beta=0.2, seed=11)
    for gram in grams[:3]:
        run.weights(gram)
    state = run.state_dict()
    expected = [run.weights(gram) for gram in grams[3:]]
    resumed = GradVac(beta=0.9, eps=1e-3, seed=0)
    resumed.load_state_dict(state)
    assert (resumed.beta, resumed.eps, resumed.seed) == (0.2, 1e-8, 11)
    for gram, w in zip(grams[3:], expected, strict=True):
        assert torch.equal(resumed.weights(gram), w)
    assert torch.equal(resumed.targets, run.targets)
    # PCGrad's only state is its generator: same story.
    a = PCGrad(seed=3)
    a.weights(grams[0])
    b = PCGrad(seed=99)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.weights(grams[1]), b.weights(grams[1]))


def test_gradvac_shape_change_is_an_error_naming_both_shapes():
    agg = GradVac()
    agg.weights(gram_of(conflicting_gradients(3, 5, 10, seed=0)))
    with pytest.raises(InvalidInputError, match=r"\[3, 5, 5\].*\[3, 6, 6\]"):
        agg.weights(gram_of(conflicting_gradients(3, 6, 10, seed=0)))
    with pytest.raises(InvalidInputError, match=r"\[3, 5, 5\].*\[2, 5, 5\]"):
        agg.weights(gram_of(conflicting_gradients(2, 5, 10, seed=0)))
    agg.reset()
    assert agg.weights(gram_of(conflicting_gradients(2, 5, 10, seed=0))).shape == (2, 5)


def test_same_seed_same_weights_and_orders_are_random_permutations():
    gram = gram_of(conflicting_gradients(6, 8, 20, seed=5))
    for cls in (PCGrad, GradVac):
        a, b, c = cls(seed=1), cls(seed=1), cls(seed=2)
        wa = [a.weights(gram) for _ in range(3)]
        wb = [b.weights(gram) for _ in range(3)]
        wc = [c.weights(gram) for _ in range(3)]
        assert all(torch.equal(x, y) for x, y in zip(wa, wb, strict=True))
        assert not all(torch.equal(x, y) for x, y in zip(wa, wc, strict=True))
    order = random_order(500, 4, torch.Generator().manual_seed(0))
    others = torch.tensor([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])
    assert torch.equal(order.sort(dim=-1).values, others.expand(500, 4, 3))
    # First visited task roughly uniform over the 3 others (500 draws per task: ~167 each).
    for i in range(4):
        counts = torch.bincount(order[:, i, 0], minlength=4)
        assert counts[i] == 0 and counts.max() - counts[counts > 0].min() < 60


def test_weights_keep_the_grams_dtype_and_device():
    grads = conflicting_gradients(2, 4, 10, seed=0)
    for dtype in (torch.float32, F64):
        gram = gram_of(grads).to(dtype)
        for agg in (Sum(), Mean(), PCGrad(), GradVac()):
            w = agg.weights(gram)
            assert w.dtype == dtype and w.device == gram.device and w.shape == (2, 4)


def test_sum_and_mean_weights():
    gram = gram_of(conflicting_gradients(2, 4, 10, seed=0))
    gram[1, 3, :] = float("nan")
    gram[1, :, 3] = float("nan")
    assert torch.equal(Sum().weights(gram), torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, 0]], dtype=F64))
    torch.testing.assert_close(
        Mean().weights(gram), torch.tensor([[0.25] * 4, [1 / 3, 1 / 3, 1 / 3, 0]], dtype=F64)
    )


def test_single_task_is_identity():
    gram = torch.tensor([[[4.0]], [[0.0]]])
    for agg in (PCGrad(), GradVac()):
        assert torch.equal(agg.weights(gram), torch.ones(2, 1))


def test_bad_inputs_are_clear_errors():
    gram = gram_of(conflicting_gradients(2, 4, 10, seed=0))
    with pytest.raises(InvalidInputError, match=r"\[G, K, K\].*\(2, 4\)"):
        PCGrad().weights(gram[:, 0])
    with pytest.raises(InvalidInputError, match=r"\[2, 4, 3\].*\[2, 4, 4\]"):
        PCGrad().weights(gram, order=torch.zeros(2, 4, 4, dtype=torch.long))
    bad = random_order(2, 4, torch.Generator().manual_seed(0))
    bad[0, 0, 0] = 0  # task 0 visiting itself
    with pytest.raises(InvalidInputError, match="permutation of the tasks other than i"):
        GradVac().weights(gram, order=bad)
    with pytest.raises(InvalidInputError, match="integer"):
        PCGrad().weights(gram, order=bad.double())
    with pytest.raises(InvalidInputError, match="beta"):
        GradVac(beta=1.5)
    with pytest.raises(InvalidInputError, match="eps"):
        GradVac(eps=-1.0)
    with pytest.raises(InvalidInputError, match="seed"):
        PCGrad(seed=1.5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_weights_match_cpu():
    gram = gram_of(conflicting_gradients(5, 8, 30, seed=0))
    order = random_order(5, 8, torch.Generator().manual_seed(0))
    for make in (PCGrad, lambda: GradVac(beta=0.3)):
        cpu, gpu = make(), make()
        for _ in range(3):
            w_cpu = cpu.weights(gram, order=order)
            w_gpu = gpu.weights(gram.cuda(), order=order)
            assert w_gpu.device.type == "cuda"
            torch.testing.assert_close(w_gpu.cpu(), w_cpu, rtol=1e-9, atol=1e-12)
        # Without an order the CPU generator draws the same orders for either device.
        torch.testing.assert_close(
            gpu.weights(gram.cuda()).cpu(), cpu.weights(gram), rtol=1e-9, atol=1e-12
        )
