"""Split halves, reliability, corrected cosines and windows: exact values on explicit vectors and
a planted-signal test (signal + independent noise with known signal fraction and cosines)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

import geomtrace as gt
from geomtrace import InvalidInputError


def linear(P: int, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(P, 1, bias=False).double()


def dot_loss(model: nn.Linear, c) -> torch.Tensor:
    """A loss whose gradient with respect to the weight is exactly ``c``."""
    return (torch.as_tensor(c, dtype=torch.float64) * model.weight[0]).sum()


# -- exact split-half products ---------------------------------------------------------------


def test_split_half_products_equal_a_hand_computation(tmp_path):
    """Two micro-batches per task (rule 'micro_batches': 0 then 1): a = first, b = second."""
    model = nn.Linear(3, 1).double()  # groups: weight [3], bias [1]
    x = {"p": np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 2.0]]), "q": np.array([[3.0, 0.0, 1.0]] * 2)}
    x["q"][1] = [-1.0, 1.0, 1.5]
    tracer = gt.Tracer(model, ["p", "q"], {"w": "weight", "b": "bias"}, out=tmp_path, halves=True)
    with tracer.step(0) as s:
        for task in ("p", "q"):
            for row in x[task]:
                s.backward(task, model(torch.from_numpy(row)).sum() * 2.0)
    tracer.close()
    # d(2 (w.x + b))/dw = 2x, /db = 2
    a = {t: 2 * x[t][0] for t in x}
    b = {t: 2 * x[t][1] for t in x}
    trace = gt.open_trace(tmp_path)
    assert trace.has_halves and trace.meta("halves_rule") == "micro_batches"
    split_w = trace.split_half("w")[0]
    for i, t in enumerate(("p", "q")):
        np.testing.assert_allclose(split_w[i], [a[t] @ a[t], b[t] @ b[t], a[t] @ b[t]], rtol=1e-6)
    np.testing.assert_allclose(trace.split_half("b")[0], [[4, 4, 4], [4, 4, 4]], rtol=1e-6)
    np.testing.assert_allclose(
        trace.split_half("all"), trace.split_half("w") + trace.split_half("b"), rtol=1e-12
    )
    g = np.stack([a[t] + b[t] for t in ("p", "q")])  # the full gradient is a + b
    np.testing.assert_allclose(trace.gram("w")[0], g @ g.T, rtol=1e-6)
    np.testing.assert_allclose(trace.gram("all"), trace.gram("w") + trace.gram("b"), rtol=1e-12)
    aa, bb, ab = split_w[0]
    assert trace.reliability("w")[0, 0] == pytest.approx(4 * ab / (aa + bb + 2 * ab), rel=1e-9)


def test_halves_leave_grad_and_gram_unchanged(tiny_seq2seq, task_batches):
    model = tiny_seq2seq
    runs = []
    for halves in (False, True):
        model.zero_grad()
        tracer = gt.Tracer(model, list(task_batches), groups="enc_dec", halves=halves)
        with tracer.step(0) as s:
            for task, (src, tgt) in task_batches.items():
                for rows in (slice(0, 1), slice(1, 3)):
                    s.backward(task, model.loss(src[rows], tgt[rows]))
        runs.append((tracer.last_gram.clone(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=1e-6, atol=1e-7)
    for g0, g1 in zip(runs[0][1], runs[1][1], strict=True):
        torch.testing.assert_close(g0, g1, rtol=0, atol=0)


def test_alternating_and_explicit_halves(tmp_path):
    model = linear(2)
    m = [np.array([1.0, 0.0]), np.array([0.0, 2.0]), np.array([3.0, 1.0])]
    with gt.Tracer(model, ["t", "u"], out=tmp_path, halves=True) as tracer:
        with tracer.step(0) as s:
            for c in m:  # alternates 0, 1, 0: a = m0 + m2, b = m1
                s.backward("t", dot_loss(model, c))
            s.backward("u", dot_loss(model, m[0]), half=1)  # explicit halves win
            s.backward("u", dot_loss(model, m[1]), half=1)
            s.backward("u", dot_loss(model, m[2]), half=0)
    split = gt.open_trace(tmp_path).split_half("whole_model")[0]
    a, b = m[0] + m[2], m[1]
    np.testing.assert_allclose(split[0], [a @ a, b @ b, a @ b], rtol=1e-6)
    a, b = m[2], m[0] + m[1]
    np.testing.assert_allclose(split[1], [a @ a, b @ b, a @ b], rtol=1e-6)


def test_a_task_missing_a_half_is_nan_and_warned_once(tmp_path, caplog):
    model = linear(2)
    with caplog.at_level(logging.WARNING, logger="geomtrace"):
        with gt.Tracer(model, ["t", "u"], out=tmp_path, halves=True) as tracer:
            for step in range(3):
                with tracer.step(step) as s:
                    s.backward("t", dot_loss(model, [1.0, 2.0]))  # one micro-batch: no b
                    s.backward("u", dot_loss(model, [1.0, 0.0]))
                    s.backward("u", dot_loss(model, [0.0, 1.0]))
    split = gt.open_trace(tmp_path).split_half("whole_model")
    assert np.isnan(split[:, 0]).all() and np.isfinite(split[:, 1]).all()
    assert caplog.text.count("one of its two halves") == 1


def test_corrected_cosine_needs_halves_and_refusals(tmp_path):
    model = linear(2)
    with gt.Tracer(model, ["t"], out=tmp_path) as tracer:
        with tracer.step(0) as s:
            s.backward("t", dot_loss(model, [1.0, 2.0]))
    trace = gt.open_trace(tmp_path)
    assert not trace.has_halves
    with pytest.raises(InvalidInputError, match="halves=True"):
        trace.cosine("whole_model", corrected=True)
    with pytest.raises(InvalidInputError, match="halves=True"):
        trace.reliability("all")
    tasks = ["t"]
    with pytest.raises(InvalidInputError, match="halves=True is not supported with sketch="):
        gt.Tracer(model, tasks, halves=True, sketch=8)
    with pytest.raises(InvalidInputError, match="probe="):
        gt.Tracer(model, tasks, halves=True, probe={"t": 0}, probe_loss=lambda m, t, b: None)
    with pytest.raises(InvalidInputError, match="halves_rule"):
        gt.Tracer(model, tasks, halves=True, halves_rule="coin")
    with pytest.raises(InvalidInputError, match="window >= 2"):
        gt.Tracer(model, tasks, halves=True, halves_rule="step_parity")
    with pytest.raises(InvalidInputError, match="needs halves=True"):
        gt.Tracer(model, tasks, halves_rule="micro_batches")
    tracer = gt.Tracer(model, tasks)
    with tracer.step(0) as s:
        with pytest.raises(InvalidInputError, match="halves=True"):
            s.backward("t", dot_loss(model, [1.0, 0.0]), half=0)
        with pytest.raises(InvalidInputError, match="half must be 0, 1"):
            s.backward("t", dot_loss(model, [1.0, 0.0]), half=2)


def test_reliability_functions_by_hand():
    split = np.array([[4.0, 2.0, 1.0], [1.0, 1.0, -0.5], [np.nan, 1.0, 1.0]])
    r = gt.split_half_reliability(split)
    np.testing.assert_allclose(r[:2], [4 / 8, -2 / 1])
    assert np.isnan(r[2])
    gram = np.array([[8.0, 1.0, 2.0], [1.0, 1.0, 0.0], [2.0, 0.0, 3.0]])
    cos = gt.corrected_cosine(gram, split)
    assert cos[0, 0] == 1.0 and np.isnan(cos[1, 1]) and np.isnan(cos[0, 1])  # ab_1 < 0
    assert np.isnan(cos[0, 2])
    split[1, 2] = 0.25
    split[2, 0] = 2.0  # task 2: aa = 2, bb = 1, ab = 1 -> R = 4 / 5
    # One snapshot: c = mean(8, 1, 3) = 4 cancels in the ratio of means.
    cos = gt.window_corrected_cosine(gram[None], split[None])
    assert cos[0, 1] == pytest.approx(1.0 / np.sqrt(4 * 1.0 * 4 * 0.25))
    assert cos[1, 2] == pytest.approx(np.clip(0.0 / np.sqrt(4 * 0.25 * 4 * 1.0), -1, 1))
    np.testing.assert_allclose(
        gt.window_reliability(gram[None], split[None]), [4 / 8, 1.0 / 1.0, 4 / 3]
    )


# -- the planted test ------------------------------------------------------------------------

K, P, SNAPSHOTS, R_TRUE = 4, 200, 150, 0.2
# |s|^2 = 1 per half; noise n ~ N(0, sigma^2 I_P) per half: r = 4 / (4 + 2 P sigma^2) = 0.2
SIGMA = np.sqrt((4 / R_TRUE - 4) / (2 * P))
PLANTED = np.array(
    [[1.0, 0.6, 0.3, -0.2], [0.6, 1.0, 0.4, 0.0], [0.3, 0.4, 1.0, 0.5], [-0.2, 0.0, 0.5, 1.0]]
)


def planted_run(tmp_path, seed: int) -> gt.Trace:
    """Each task's two halves are s_i + noise with unit |s_i| and cos(s_i, s_j) = PLANTED_ij:
    its full gradient's signal fraction is R_TRUE."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(P, P)))
    signal = np.pad(np.linalg.cholesky(PLANTED), ((0, 0), (0, P - K))) @ q.T  # rows: s_i
    model = linear(P)
    tasks = [f"t{i}" for i in range(K)]
    run = tmp_path / f"seed{seed}"
    with gt.Tracer(model, tasks, out=run, halves=True) as tracer:
        for step in range(SNAPSHOTS):
            noise = rng.normal(scale=SIGMA, size=(K, 2, P))
            with tracer.step(step) as s:
                for i, task in enumerate(tasks):
                    for h in (0, 1):
                        s.backward(task, dot_loss(model, signal[i] + noise[i, h]))
            model.zero_grad()
    return gt.open_trace(run)


@pytest.mark.parametrize("seed", [0, 1])
def test_planted_reliability_and_corrected_cosine_are_recovered(tmp_path, seed):
    """Tolerances from the estimators' standard errors over S = 150 snapshots (sigma^2 = 0.04,
    P = 200): per snapshot sd(a.b) = sqrt(2 sigma^2 + P sigma^4) = 0.63, so the mean 4ab (4)
    has sd 0.21 and the ratio-of-means reliability sd ~0.01 (tolerance 0.04, 4 sd); sd(g_i.g_j)
    = sqrt(16 sigma^2 + 4 P sigma^4) = 1.39, so mean(G_ij) / 4 has sd 0.028 (tolerance 0.12 on
    the corrected cosine: 4 sd plus the error of the denominator). The raw cosine is
    attenuated to ~R_TRUE x PLANTED."""
    trace = planted_run(tmp_path, seed)
    gram, split = trace.gram("all"), trace.split_half("all")
    mean_gram, mean_split = gram.mean(0), split.mean(0)
    reliability = (
        4 * mean_split[:, 2] / (mean_split[:, 0] + mean_split[:, 1] + 2 * mean_split[:, 2])
    )
    np.testing.assert_allclose(reliability, R_TRUE, atol=0.04)
    # The per-snapshot estimates are noisy but centred on R_TRUE too.
    np.testing.assert_allclose(np.mean(trace.reliability("all"), 0), R_TRUE, atol=0.05)
    # R_TRUE sits at the default floor (0.2): estimates straddle it, so ask for a lower floor.
    corrected = gt.window_corrected_cosine(gram, split, floor=0.1)
    off = ~np.eye(K, dtype=bool)
    np.testing.assert_allclose(corrected[off], PLANTED[off], atol=0.12)
    raw = gt.cosine_from_gram(mean_gram)
    np.testing.assert_allclose(raw[off], R_TRUE * PLANTED[off], atol=0.04)
    strong = np.abs(PLANTED[off]) >= 0.3
    assert (np.abs(raw[off][strong]) < 0.5 * np.abs(PLANTED[off][strong])).all()  # attenuated
    per_snapshot = trace.cosine("all", corrected=True)
    assert per_snapshot.shape == (SNAPSHOTS, K, K)
    assert np.isnan(per_snapshot).any()  # single-snapshot a.b <= 0 happens: hence means


# -- windows ---------------------------------------------------------------------------------


def window_batches(step: int, tasks) -> dict:
    g = torch.Generator().manual_seed(100 + step)
    return {t: torch.randn(3, 4, generator=g, dtype=torch.float64) + i for i, t in enumerate(tasks)}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(4, 5).double()
        self.b = nn.Linear(5, 1).double()

    def loss(self, x):
        return self.b(torch.tanh(self.a(x))).pow(2).mean()


def task_grads(model, x) -> np.ndarray:
    grads = torch.autograd.grad(model.loss(x), list(model.parameters()))
    return torch.cat([g.reshape(-1) for g in grads]).numpy()


@pytest.mark.parametrize("lr", [0.0, 0.05])
def test_window_sums_the_task_gradients_of_its_steps(tmp_path, lr):
    """lr=0: the window's Gram is that of the summed per-step gradients, exactly. lr>0: the
    parameters drift along the window; the snapshot sums the gradients at the parameters each
    step actually had (replayed here by a plain loop), which differ from the frozen ones."""
    tasks = ["x", "y", "z"]
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    expected, frozen, grads_ok = {}, [], True
    with gt.Tracer(model, tasks, every=5, window=3, out=tmp_path) as tracer:
        for step in range(8):
            batches = window_batches(step, tasks)
            per_step = np.stack([task_grads(model, batches[t]) for t in tasks])
            if step % 5 < 3:
                expected.setdefault(step - step % 5, []).append(per_step)
            if step == 0:  # the window's batches at the first step's parameters
                frozen = [
                    np.stack([task_grads(model, window_batches(k, tasks)[t]) for t in tasks])
                    for k in range(3)
                ]
            model.zero_grad()
            with tracer.step(step) as s:
                assert s.traced == (step % 5 < 3)
                for t in tasks:
                    s.backward(t, model.loss(batches[t]))
            summed = per_step.sum(0)
            got = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).numpy()
            grads_ok &= np.allclose(got, summed, rtol=1e-10, atol=1e-12)  # .grad: plain sum
            opt.step()
    assert grads_ok
    trace = gt.open_trace(tmp_path)
    assert trace.steps.tolist() == [0, 5]
    assert trace.meta("window") == 3
    np.testing.assert_array_equal(trace.array("window_steps")[:, 0], [3, 3])
    for n, start in enumerate((0, 5)):
        g = np.sum(expected[start], axis=0)
        np.testing.assert_allclose(trace.gram("all")[n], g @ g.T, rtol=1e-5)
    g0 = np.sum(frozen, axis=0)
    drift = np.abs(trace.gram("all")[0] - g0 @ g0.T).max() / np.abs(g0 @ g0.T).max()
    assert (drift == pytest.approx(0, abs=1e-6)) if lr == 0 else drift > 1e-3


def test_window_closed_early_records_the_steps_it_summed_and_a_raising_step_drops_it(tmp_path):
    tasks = ["x", "y"]
    model = Net()
    with gt.Tracer(model, tasks, every=10, window=4, out=tmp_path) as tracer:
        for step in range(3):  # window 0..3 opened at step 0; step 1 raises
            try:
                with tracer.step(step) as s:
                    for t in tasks:
                        s.backward(t, model.loss(window_batches(step, tasks)[t]))
                    if step == 1:
                        raise RuntimeError("simulated crash")
            except RuntimeError:
                pass
        for step in range(10, 12):  # a new window, closed by close() after 2 steps
            with tracer.step(step) as s:
                for t in tasks:
                    s.backward(t, model.loss(window_batches(step, tasks)[t]))
    trace = gt.open_trace(tmp_path)
    assert trace.steps.tolist() == [10]
    assert trace.array("window_steps")[0, 0] == 2


def test_window_halves_by_step_parity(tmp_path):
    model = linear(3)
    c = [np.array([1.0, 0.0, 2.0]), np.array([0.0, 1.0, 1.0]), np.array([2.0, 2.0, 0.0])]
    with gt.Tracer(model, ["t"], every=10, window=3, halves=True, out=tmp_path) as tracer:
        assert tracer.halves_rule == "step_parity"
        for step in range(3):
            with tracer.step(step) as s:
                s.backward("t", dot_loss(model, c[step]))
    trace = gt.open_trace(tmp_path)
    assert trace.meta("halves_rule") == "step_parity"
    a, b = c[0] + c[2], c[1]  # even steps of the window -> a, odd -> b
    np.testing.assert_allclose(trace.split_half("all")[0, 0], [a @ a, b @ b, a @ b], rtol=1e-6)


def test_window_refusals():
    model = linear(2)
    with pytest.raises(InvalidInputError, match="overlap"):
        gt.Tracer(model, ["t"], every=2, window=4)
    with pytest.raises(InvalidInputError, match="window"):
        gt.Tracer(model, ["t"], window=0)
    with pytest.raises(InvalidInputError, match="sketch="):
        gt.Tracer(model, ["t"], window=2, every=2, sketch=8)
    with pytest.raises(InvalidInputError, match="every step"):
        gt.MultiTask(model, ["t"], gt.Sum(), tracer=gt.Tracer(model, ["t"], every=2, window=2))


# -- MultiTask with a halves tracer ------------------------------------------------------------


def test_multitask_with_a_halves_tracer_records_split_halves_and_sees_the_full_gram(tmp_path):
    tasks = ["x", "y"]
    runs = []
    for halves in (False, True):
        model = Net()
        tracer = gt.Tracer(model, tasks, every=2, halves=halves, out=tmp_path / str(halves))
        mt = gt.MultiTask(model, tasks, gt.PCGrad(seed=1), tracer=tracer)
        assert tracer.capture is mt.capture  # handed over: no second buffer
        for step in range(3):
            model.zero_grad()
            with mt.step(step) as s:
                for t in tasks:
                    x = window_batches(step, tasks)[t]
                    s.backward(t, model.loss(x[:1]))
                    s.backward(t, model.loss(x[1:]))
        tracer.close()
        runs.append(
            (gt.open_trace(tmp_path / str(halves)), [p.grad.clone() for p in model.parameters()])
        )
    (plain, grads_plain), (split, grads_split) = runs
    assert split.has_halves and not plain.has_halves
    np.testing.assert_allclose(split.gram("all"), plain.gram("all"), rtol=1e-6)
    np.testing.assert_allclose(split.array("weights"), plain.array("weights"), rtol=1e-6)
    for a, b in zip(grads_plain, grads_split, strict=True):
        torch.testing.assert_close(a, b)
    s = split.split_half("all")  # a + b = g: aa + bb + 2ab = |g|^2
    np.testing.assert_allclose(
        s[..., 0] + s[..., 1] + 2 * s[..., 2],
        np.diagonal(split.gram("all"), axis1=1, axis2=2),
        rtol=1e-5,
    )


# -- halves as one value: validated once, written to the meta and read back --------------------


def test_halves_value_validates_once_and_round_trips_through_the_meta(tmp_path):
    from geomtrace._halves import Halves

    assert Halves.choose(False, None, 1) == Halves() and not Halves().enabled
    assert Halves.choose(True, None, 1) == Halves(True, "micro_batches")
    assert Halves.choose(True, None, 3) == Halves(True, "step_parity")
    for enabled, rule, window, message in (
        (False, "micro_batches", 1, "needs halves=True"),
        (True, "odd", 1, "use one of"),
        (True, "step_parity", 1, "window >= 2"),
    ):
        with pytest.raises(InvalidInputError, match=message):
            Halves.choose(enabled, rule, window)
    model = linear(3)
    with gt.Tracer(model, ["t", "u"], out=tmp_path, halves=True) as tracer:
        with tracer.step(0) as s:
            for task in ("t", "u"):
                for c in ([1.0, 0.0, 2.0], [0.5, 1.0, 0.0]):
                    s.backward(task, dot_loss(model, c))
    assert tracer.split_halves == Halves(True, "micro_batches")
    trace = gt.open_trace(tmp_path)
    assert trace.halves == tracer.split_halves and trace.has_halves
    assert trace.meta("halves") is True and trace.meta("halves_rule") == "micro_batches"


def test_a_trace_without_halves_says_so_in_its_meta(tmp_path):
    from geomtrace._halves import Halves

    model = linear(3)
    with gt.Tracer(model, ["t", "u"], out=tmp_path) as tracer:
        with tracer.step(0) as s:
            for task in ("t", "u"):
                s.backward(task, dot_loss(model, [1.0, 0.0, 2.0]))
    trace = gt.open_trace(tmp_path)
    assert trace.meta("halves") is False and trace.meta("halves_rule") is None
    assert trace.halves == Halves() and not trace.has_halves


def test_a_trace_without_the_halves_meta_reads_halves_from_its_arrays(tmp_path):
    """Traces written before the meta was read back: ``split_half`` arrays say it."""
    import sqlite3

    from geomtrace._halves import Halves

    model = linear(3)
    for name, halves in (("with", True), ("without", False)):
        with gt.Tracer(model, ["t", "u"], out=tmp_path / name, halves=halves) as tracer:
            with tracer.step(0) as s:
                for task in ("t", "u"):
                    for c in ([1.0, 0.0, 2.0], [0.5, 1.0, 0.0]):
                        s.backward(task, dot_loss(model, c))
        con = sqlite3.connect(tmp_path / name / "trace.sqlite")
        con.execute("DELETE FROM meta WHERE key IN ('halves', 'halves_rule')")
        con.commit()
        con.close()
        trace = gt.open_trace(tmp_path / name)
        assert trace.meta("halves") is None
        assert trace.halves == (Halves(True, None) if halves else Halves())
        assert trace.has_halves is halves
    assert gt.open_trace(tmp_path / "with").split_half("all").shape == (1, 2, 3)
