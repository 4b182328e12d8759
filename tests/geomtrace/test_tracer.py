"""Capture and Gram: exact values against closed forms, planted structure, feeding modes."""

import logging

import numpy as np
import pytest
import torch
from torch import nn

import geomtrace as gt
from geomtrace import InvalidInputError


def _least_squares_tasks(K=4, n=7, d=5, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(n, d)), rng.normal(size=n)) for _ in range(K)]


def test_gram_is_exact_for_least_squares_per_task(tmp_path):
    """L_i = 1/(2n) |X_i w + b - y_i|^2  =>  grad_w = X_i^T r_i / n,  grad_b = mean(r_i)."""
    torch.manual_seed(0)
    model = nn.Linear(5, 1).double()
    data = _least_squares_tasks()
    tasks = ["t0", "t1", "t2", "t3"]
    tracer = gt.Tracer(model, tasks, groups={"w": r"weight", "b": r"bias"}, out=tmp_path)
    with tracer.step(0) as s:
        for task, (X, y) in zip(tasks, data, strict=True):
            r = model(torch.from_numpy(X)).squeeze(1) - torch.from_numpy(y)
            s.backward(task, 0.5 * (r**2).mean())
    w = model.weight.detach().numpy()[0]
    b = model.bias.detach().item()
    residuals = [X @ w + b - y for X, y in data]
    grad_w = np.stack([X.T @ r / len(r) for (X, _), r in zip(data, residuals, strict=True)])
    grad_b = np.array([[r.mean()] for r in residuals])
    tracer.close()
    trace = gt.open_trace(tmp_path)
    np.testing.assert_allclose(trace.gram("w")[0], grad_w @ grad_w.T, rtol=1e-6)
    np.testing.assert_allclose(trace.gram("b")[0], grad_b @ grad_b.T, rtol=1e-6)
    cos = (
        grad_w @ grad_w.T / np.outer(np.linalg.norm(grad_w, axis=1), np.linalg.norm(grad_w, axis=1))
    )
    np.testing.assert_allclose(trace.cosine("w")[0], cos, rtol=1e-6, atol=1e-7)


def _planted_cosines(K, seed):
    """A random valid cosine matrix (unit-diagonal, positive definite)."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(K, K + 2))
    C = A @ A.T
    d = np.sqrt(np.diag(C))
    return C / np.outer(d, d)


def test_planted_cosine_structure_is_recovered(tmp_path):
    """Task i's loss is <c_i, theta> with c_i = rows of chol(C) embedded by a random orthogonal
    map into the parameter space: its gradient is exactly c_i, so cos(g_i, g_j) = C_ij."""
    K, P = 6, 40
    C = _planted_cosines(K, seed=3)
    L = np.linalg.cholesky(C)
    Q, _ = np.linalg.qr(np.random.default_rng(4).normal(size=(P, P)))
    scales = np.linspace(0.5, 3.0, K)[:, None]  # norms differ: cosines must not depend on them
    directions = torch.from_numpy(scales * (np.pad(L, ((0, 0), (0, P - K))) @ Q.T))
    model = nn.Linear(P, 1, bias=False).double()
    tasks = [f"task{i}" for i in range(K)]
    with gt.Tracer(model, tasks, every=[0, 2], out=tmp_path) as tracer:
        for step in range(3):
            with tracer.step(step) as s:
                for i, task in enumerate(tasks):
                    s.backward(task, (directions[i] * model.weight[0]).sum())
    trace = gt.open_trace(tmp_path)
    assert trace.steps.tolist() == [0, 2]
    np.testing.assert_allclose(trace.cosine("whole_model"), np.stack([C, C]), atol=1e-6)
    np.testing.assert_allclose(
        np.sqrt(np.diagonal(trace.gram("whole_model")[0])), scales[:, 0], rtol=1e-6
    )


def _own_batch_gram(model, batches, groups="all_layer"):
    tracer = gt.Tracer(model, list(batches), groups=groups)
    model.zero_grad()
    with tracer.step(0) as s:
        for task, (src, tgt) in batches.items():
            s.backward(task, model.loss(src, tgt, reduction="sum"))
    return tracer.last_gram.clone(), [p.grad.clone() for p in model.parameters()]


def test_shared_forward_mode_gives_the_same_gram(tiny_seq2seq, task_batches):
    """Mode (a): one forward per task. Mode (b): one forward of the concatenated batch, one
    loss per task's rows. Rows do not interact, so the per-task gradients are identical."""
    model = tiny_seq2seq
    gram_a, grads_a = _own_batch_gram(model, task_batches)
    tracer = gt.Tracer(model, list(task_batches), groups="all_layer")
    model.zero_grad()
    src = torch.cat([b[0] for b in task_batches.values()])
    tgt = torch.cat([b[1] for b in task_batches.values()])
    logits = model(src, tgt[:, :-1])
    per_token = nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), tgt[:, 1:].reshape(-1), reduction="none"
    ).view(len(src), -1)
    with tracer.step(0) as s:
        s.backward_shared(
            {task: per_token[3 * i : 3 * i + 3].sum() for i, task in enumerate(task_batches)}
        )
    torch.testing.assert_close(tracer.last_gram, gram_a, rtol=1e-5, atol=1e-6)
    for p, g in zip(model.parameters(), grads_a, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-6)


def test_micro_batches_sum_to_the_full_batch(tiny_seq2seq, task_batches):
    model = tiny_seq2seq
    gram_full, _ = _own_batch_gram(model, task_batches)
    tracer = gt.Tracer(model, list(task_batches), groups="all_layer")
    with tracer.step(0) as s:
        for task, (src, tgt) in task_batches.items():
            for rows in (slice(0, 1), slice(1, 3)):
                s.backward(task, model.loss(src[rows], tgt[rows], reduction="sum"))
    torch.testing.assert_close(tracer.last_gram, gram_full, rtol=1e-5, atol=1e-6)


def test_grad_equals_plain_summed_loss_backward_on_traced_and_untraced_steps(
    tiny_seq2seq, task_batches
):
    model = tiny_seq2seq
    model.zero_grad()
    sum(model.loss(src, tgt) for src, tgt in task_batches.values()).backward()
    expected = [p.grad.clone() for p in model.parameters()]
    tracer = gt.Tracer(model, list(task_batches), groups="all_matrix", every=2)
    for step in (0, 1):  # traced, then untraced
        model.zero_grad()
        with tracer.step(step) as s:
            assert s.traced == (step == 0)
            for task, (src, tgt) in task_batches.items():
                s.backward(task, model.loss(src, tgt))
        for p, g in zip(model.parameters(), expected, strict=True):
            torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)


def test_untraced_steps_allocate_no_gradient_copies(tiny_seq2seq, task_batches):
    tracer = gt.Tracer(tiny_seq2seq, list(task_batches), every=100)
    with tracer.step(1) as s:
        for task, (src, tgt) in task_batches.items():
            s.backward(task, tiny_seq2seq.loss(src, tgt))
    assert tracer.capture._buffer is None
    assert tracer.last_gram is None


def test_absent_task_is_nan_never_zero(tiny_seq2seq, task_batches, tmp_path):
    tasks = list(task_batches)
    with gt.Tracer(tiny_seq2seq, tasks, out=tmp_path) as tracer:
        with tracer.step(0) as s:
            for task in tasks[:-1]:
                s.backward(task, tiny_seq2seq.loss(*task_batches[task]))
    trace = gt.open_trace(tmp_path)
    gram = trace.gram("whole_model")[0]
    assert np.isnan(gram[-1]).all() and np.isnan(gram[:, -1]).all()
    assert np.isfinite(gram[:-1, :-1]).all()
    assert set(trace.losses().task) == set(tasks[:-1])


def test_zero_gradient_task_gives_nan_cosines_and_a_counted_warning(caplog, tmp_path):
    model = nn.Linear(3, 1)
    with gt.Tracer(model, ["a", "b"], out=tmp_path) as tracer:
        with caplog.at_level(logging.WARNING, logger="geomtrace"):
            with tracer.step(0) as s:
                s.backward("a", model(torch.ones(1, 3)).sum())
                s.backward("b", 0.0 * model(torch.ones(1, 3)).sum())
    assert tracer.zero_norm_warnings == 1
    assert "'b'" in caplog.text
    cos = gt.open_trace(tmp_path).cosine("whole_model")[0]
    assert cos[0, 0] == pytest.approx(1.0) and np.isnan(cos[0, 1]) and np.isnan(cos[1, 1])


def test_probe_mode_measures_fixed_batches_and_leaves_grad_alone(
    tiny_seq2seq, task_batches, tmp_path
):
    model = tiny_seq2seq
    expected_gram, _ = _own_batch_gram(model, task_batches, groups="whole_model")
    tracer = gt.Tracer(
        model,
        list(task_batches),
        probe=task_batches,
        probe_loss=lambda m, task, batch: m.loss(*batch, reduction="sum"),
        out=tmp_path,
    )
    model.zero_grad()
    g = torch.Generator().manual_seed(9)
    other = (torch.randint(0, 11, (2, 5), generator=g), torch.randint(0, 11, (2, 6), generator=g))
    with tracer.step(0) as s:
        s.backward("es", model.loss(*other))
    plain = [p.grad.clone() if p.grad is not None else None for p in model.parameters()]
    model.zero_grad()
    model.loss(*other).backward()
    for got, want in zip(plain, model.parameters(), strict=True):
        torch.testing.assert_close(got, want.grad)
    torch.testing.assert_close(tracer.last_gram, expected_gram, rtol=1e-5, atol=1e-6)
    tracer.close()
    trace = gt.open_trace(tmp_path)
    assert trace.sources == ["probe"]
    assert len(trace.losses()) == 4
    assert model.training


def test_schedules():
    model = nn.Linear(2, 1)
    assert [s for s in range(7) if gt.Tracer(model, ["a"], every=3).should_trace(s)] == [0, 3, 6]
    assert [s for s in range(7) if gt.Tracer(model, ["a"], every=[1, 5]).should_trace(s)] == [1, 5]
    odd = gt.Tracer(model, ["a"], every=lambda s: s % 2 == 1)
    assert [s for s in range(5) if odd.should_trace(s)] == [1, 3]
    for bad in (0, -2, True, "often"):
        with pytest.raises(InvalidInputError, match="every"):
            gt.Tracer(model, ["a"], every=bad)


def test_bad_inputs_name_the_bad_value():
    model = nn.Linear(2, 1)
    with pytest.raises(InvalidInputError, match="'es' appears twice"):
        gt.Tracer(model, ["es", "fr", "es"])
    with pytest.raises(InvalidInputError, match="empty"):
        gt.Tracer(model, [])
    tracer = gt.Tracer(model, ["es", "fr"])
    loss = model(torch.ones(1, 2)).sum()
    step = tracer.step(0)
    with pytest.raises(InvalidInputError, match="outside a step"):
        step.backward("es", loss)
    with tracer.step(0) as s:
        with pytest.raises(InvalidInputError, match=r"unknown task 'de'.*\['es', 'fr'\]"):
            s.backward("de", loss)
        with pytest.raises(InvalidInputError, match="'fr' does not require grad"):
            s.backward("fr", loss.detach())
        with pytest.raises(InvalidInputError, match="scalar"):
            s.backward("fr", model(torch.ones(3, 2)))
        with pytest.raises(InvalidInputError, match="inside step"):
            with tracer.step(1):
                pass
    with pytest.raises(InvalidInputError, match="probe"):
        gt.Tracer(model, ["es"], probe={"es": 1})
    with pytest.raises(InvalidInputError, match="'xx'"):
        gt.Tracer(model, ["es"], probe={"xx": 1}, probe_loss=lambda m, t, b: None)


def test_interrupted_step_writes_nothing(tmp_path):
    model = nn.Linear(2, 1)
    with gt.Tracer(model, ["a"], out=tmp_path) as tracer:
        with pytest.raises(RuntimeError):
            with tracer.step(0) as s:
                s.backward("a", model(torch.ones(1, 2)).sum())
                raise RuntimeError("simulated crash inside the step")
        with tracer.step(1) as s:
            s.backward("a", model(torch.ones(1, 2)).sum())
    assert gt.open_trace(tmp_path).steps.tolist() == [1]


def test_half_precision_gradients_give_fp32_gram():
    model = nn.Linear(4, 1).to(torch.bfloat16)
    tracer = gt.Tracer(model, ["a", "b"])
    with tracer.step(0) as s:
        s.backward("a", model(torch.ones(2, 4, dtype=torch.bfloat16)).sum())
        s.backward("b", model(-torch.ones(2, 4, dtype=torch.bfloat16)).sum())
    assert tracer.last_gram.dtype == torch.float32
    # grad_w = +-2 * ones(4), grad_b = +-2 : |g|^2 = 20, g_a . g_b = -16 + 4 = -12
    torch.testing.assert_close(tracer.last_gram[0], torch.tensor([[20.0, -12.0], [-12.0, 20.0]]))


def test_listeners_receive_every_recorded_snapshot(tiny_seq2seq, task_batches):
    seen = []
    tracer = gt.Tracer(tiny_seq2seq, list(task_batches), groups="enc_dec", every=2)
    tracer.add_listener(
        lambda step, gram, losses, arrays, source: seen.append((step, gram, losses))
    )
    for step in range(3):
        with tracer.step(step) as s:
            for task, batch in task_batches.items():
                s.backward(task, tiny_seq2seq.loss(*batch))
    assert [step for step, _, _ in seen] == [0, 2]
    np.testing.assert_array_equal(seen[-1][1], tracer.last_gram.numpy())
    assert set(seen[-1][2]) == set(task_batches)
    with pytest.raises(InvalidInputError, match="callable"):
        tracer.add_listener("print")


def test_a_task_absent_after_a_present_step_leaves_no_stale_gradient(tiny_seq2seq, task_batches):
    """Rows are overwritten, not zeroed, between steps: a task missing at the next traced step
    must read as absent (NaN) in the Gram and as zero in any combination."""
    tasks = list(task_batches)
    tracer = gt.Tracer(tiny_seq2seq, tasks)
    for step, present in enumerate([tasks, tasks[:2]]):
        with tracer.step(step) as s:
            for task in present:
                s.backward(task, tiny_seq2seq.loss(*task_batches[task]))
    gram = tracer.last_gram
    assert torch.isnan(gram[0, 2:]).all() and torch.isfinite(gram[0, :2, :2]).all()
    combined = tracer.capture.combine(torch.ones(1, 4))
    expected = tracer.capture.combine(torch.tensor([[1.0, 1.0, 0.0, 0.0]]))
    for got, want in zip(combined, expected, strict=True):
        torch.testing.assert_close(got, want)
    assert tracer.capture.buffer[2:].abs().sum() == 0
