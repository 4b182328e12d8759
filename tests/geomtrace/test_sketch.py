"""Sketch mode: the documented error bound on planted gradients, unbiasedness, exactness of the
copy-free path, and the trace's bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import geomtrace as gt
from geomtrace import InvalidInputError
from geomtrace._sketch import CountSketch, TaskSketches


def planted_directions(K: int, P: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """K dense directions in R^P whose cosines span about [-0.9, 0.9]: a 4-dimensional latent
    mix of shared directions plus each task's own noise."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(K, 4))
    X = latent @ rng.normal(size=(4, P)) + 0.4 * rng.normal(size=(K, P))
    X *= rng.uniform(0.2, 5.0, size=(K, 1))  # unequal norms: cosines must not care
    norms = np.linalg.norm(X, axis=1)
    return X, X @ X.T / np.outer(norms, norms)


def traced_cosines(directions: np.ndarray, sketch: int | None, seed: int = 0, tmp=None):
    """Trace one step whose task losses <c_i, theta> have gradients exactly c_i."""
    K, P = directions.shape
    model = nn.Linear(P, 1, bias=False)
    tasks = [f"t{i}" for i in range(K)]
    c = torch.from_numpy(directions).float()
    tracer = gt.Tracer(model, tasks, sketch=sketch, seed=seed, out=tmp)
    with tracer.step(0) as s:
        for i, task in enumerate(tasks):
            s.backward(task, (c[i] * model.weight[0]).sum())
    tracer.close()
    return gt.cosine_from_gram(tracer.last_gram.double().numpy())[0], model


@pytest.mark.parametrize("d", [64, 256, 1024])
def test_cosine_error_within_three_over_sqrt_d_for_99_percent_of_pairs(d):
    X, cos = planted_directions(K=40, P=20_000, seed=1)
    est, _ = traced_cosines(X, sketch=d)
    iu = np.triu_indices(len(X), 1)
    err = np.abs(est[iu] - cos[iu])
    assert cos[iu].min() < -0.7 and cos[iu].max() > 0.7  # the planted range is wide
    assert np.mean(err <= 3 / np.sqrt(d)) >= 0.99
    np.testing.assert_allclose(np.diag(est), 1.0, atol=1e-6)


def test_error_shrinks_like_one_over_sqrt_d():
    X, cos = planted_directions(K=30, P=20_000, seed=2)
    iu = np.triu_indices(len(X), 1)
    rms = []
    for d in (64, 256, 1024):
        errs = [traced_cosines(X, sketch=d, seed=s)[0][iu] - cos[iu] for s in range(3)]
        rms.append(np.sqrt(np.mean(np.square(errs))))
    # Each 4x in d should halve the error: allow 1.6x..2.5x per step.
    ratios = np.array(rms[:-1]) / np.array(rms[1:])
    assert np.all(ratios > 1.6) and np.all(ratios < 2.5), (rms, ratios)
    # and the delta-method scale (1 - cos^2)/sqrt(d) predicts the size within a factor 1.5.
    for d, r in zip((64, 256, 1024), rms, strict=True):
        predicted = np.sqrt(np.mean(np.square(1 - cos[iu] ** 2))) / np.sqrt(d)
        assert predicted / 1.5 < r < predicted * 1.5


def test_dot_estimate_is_unbiased_with_the_documented_variance_bound():
    rng = np.random.default_rng(5)
    P, d = 500, 16
    x, z = rng.normal(size=P), rng.normal(size=P) + 0.5 * rng.normal(size=P)
    xt, zt = torch.from_numpy(x).float(), torch.from_numpy(z).float()
    estimates = []
    for seed in range(400):
        cs = CountSketch([(0, P)], d, seed=seed)
        sx, sz = torch.zeros(d), torch.zeros(d)
        cs.accumulate(sx, 0, 0, xt)
        cs.accumulate(sz, 0, 0, zt)
        estimates.append(float(sx @ sz))
    estimates = np.array(estimates)
    exact_var = (x @ x * (z @ z) + (x @ z) ** 2 - 2 * np.sum(x**2 * z**2)) / d
    se = np.sqrt(exact_var / len(estimates))
    assert abs(estimates.mean() - x @ z) < 4 * se
    assert 0.7 * exact_var < estimates.var() < 1.3 * exact_var
    assert exact_var <= 2 * (x @ x) * (z @ z) / d


def test_hashes_are_buckets_and_signs_and_handle_huge_columns():
    cs = CountSketch([(0, 10), (10, 30)], dim=7, seed=0, chunk=4)
    b, s = cs.hashes(1, 0, 20, "cpu")
    assert b.min() >= 0 and b.max() < 7 and set(s.tolist()) <= {-1.0, 1.0}
    big, signs = cs.hashes(0, 2**31 + 3, 2**31 + 2000, "cpu")
    assert big.min() >= 0 and big.max() < 7
    counts = torch.bincount(big, minlength=7).float()
    assert counts.min() > 0.7 * counts.mean()  # roughly uniform buckets
    assert abs(signs.mean()) < 0.1
    # Neither chunking nor the hash-code cache changes the sketch: compare with the definition
    # y[h(j)] += s(j) x_j, written out from the hashes, for an offset slice of a group.
    values = torch.randn(12)
    buckets, signs = cs.hashes(1, 5, 17, "cpu")
    expected = torch.zeros(7).index_add_(0, buckets, 0.5 * signs * values)
    for chunk, cache in [(4, True), (4, False), (1000, False)]:
        got = torch.zeros(7)
        CountSketch([(0, 10), (10, 30)], dim=7, seed=0, chunk=chunk, cache=cache).accumulate(
            got, 1, 5, values, alpha=0.5
        )
        torch.testing.assert_close(got, expected)


def test_copy_free_path_equals_sketching_autograd_gradients(tiny_seq2seq, task_batches):
    """Tracer: S(grad after) - S(grad before) per backward. Reference: TaskSketches.add of the
    task gradients from torch.autograd.grad. Also .grad equals the plain summed backward, with
    a non-zero .grad left from before the step."""
    model, tasks = tiny_seq2seq, list(task_batches)
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.25)
    tracer = gt.Tracer(model, tasks, groups="all_layer", sketch=128, seed=7)
    with tracer.step(0) as s:
        for task, (src, tgt) in task_batches.items():
            s.backward(task, model.loss(src, tgt))
    got = tracer.last_gram
    grads_after = [p.grad.clone() for p in model.parameters()]

    ref = TaskSketches(tracer.groups, len(tasks), 128, seed=7)
    ref.reset()
    summed = [torch.full_like(p, 0.25) for p in ref.params]
    for i, (src, tgt) in enumerate(task_batches.values()):
        g = torch.autograd.grad(model.loss(src, tgt), ref.params)
        ref.add(i, g)
        summed = [a + b for a, b in zip(summed, g, strict=True)]
    # Differences of fp32 sketches of a .grad that starts at 0.25 everywhere: absolute error
    # ~ eps * |S(.grad)|, tiny against the Gram's scale.
    expected = ref.gram()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())
    for p_after, expected in zip(grads_after, summed, strict=True):
        torch.testing.assert_close(p_after, expected, rtol=1e-5, atol=1e-6)
    assert tracer.capture.sketches.shape == (len(tracer.groups), len(tasks), 128)


def test_same_seed_same_trace_other_seed_other_projection():
    X, _ = planted_directions(K=5, P=3000, seed=3)
    a, _ = traced_cosines(X, sketch=32, seed=1)
    b, _ = traced_cosines(X, sketch=32, seed=1)
    c, _ = traced_cosines(X, sketch=32, seed=2)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_trace_records_the_sketch_dimension(tmp_path):
    X, cos = planted_directions(K=4, P=4000, seed=4)
    traced_cosines(X, sketch=256, seed=9, tmp=tmp_path)
    trace = gt.open_trace(tmp_path)
    assert trace.meta("sketch") == 256 and trace.meta("sketch_seed") == 9
    assert np.abs(trace.cosine("whole_model")[0] - cos).max() < 3 / np.sqrt(256)


def test_absent_task_is_nan_in_sketch_mode():
    X, _ = planted_directions(K=3, P=100, seed=0)
    model = nn.Linear(100, 1, bias=False)
    tracer = gt.Tracer(model, ["a", "b", "c"], sketch=16)
    c = torch.from_numpy(X).float()
    with tracer.step(0) as s:
        s.backward("a", (c[0] * model.weight[0]).sum())
        s.backward("c", (c[2] * model.weight[0]).sum())
    gram = tracer.last_gram[0]
    assert torch.isnan(gram[1]).all() and torch.isnan(gram[:, 1]).all()
    assert torch.isfinite(gram[[0, 2]][:, [0, 2]]).all()


def test_sketch_cannot_combine_and_rejects_bad_dimensions():
    model = nn.Linear(4, 1)
    tracer = gt.Tracer(model, ["a", "b"], sketch=8)
    with pytest.raises(InvalidInputError, match="full gradients"):
        tracer.capture.combine(torch.ones(1, 2))
    for bad in (0, -3, 2.5, True, "64"):
        with pytest.raises(InvalidInputError, match="sketch="):
            gt.Tracer(model, ["a", "b"], sketch=bad)


def test_probe_mode_works_with_sketches():
    X, cos = planted_directions(K=3, P=2000, seed=6)
    model = nn.Linear(2000, 1, bias=False)
    c = torch.from_numpy(X).float()
    tracer = gt.Tracer(
        model,
        ["a", "b", "c"],
        sketch=512,
        probe={"a": 0, "b": 1, "c": 2},
        probe_loss=lambda m, task, i: (c[i] * m.weight[0]).sum(),
    )
    with tracer.step(0) as s:
        s.backward("a", model.weight.sum())
    est = gt.cosine_from_gram(tracer.last_gram.double().numpy())[0]
    assert np.abs(est - cos).max() < 3 / np.sqrt(512)
