"""The one step class and the capture protocol: what Tracer and MultiTask share, input checks,
non-finite tasks, warnings once, visiting orders a user can pass and read."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

import geomtrace as gt
from geomtrace import InvalidInputError


def test_both_owners_return_the_one_step_class_and_captures_implement_the_protocol():
    model = nn.Linear(3, 2)
    tracer = gt.Tracer(model, ["a", "b"])
    mt = gt.MultiTask(model, ["a", "b"], gt.Sum())
    assert type(tracer.step(0)) is gt.Step and type(mt.step(0)) is gt.Step
    assert isinstance(tracer.capture, gt.Capture) and isinstance(mt.capture, gt.Capture)
    sketch = gt.Tracer(model, ["a", "b"], sketch=8).capture
    assert isinstance(sketch, gt.TaskSketches) and isinstance(sketch, gt.Capture)
    assert gt.TaskGradients.can_combine and not gt.TaskSketches.can_combine


def test_a_recording_tracer_builds_no_capture_of_its_own():
    model = nn.Linear(3, 2)
    tracer = gt.Tracer(model, ["a", "b"])
    mt = gt.MultiTask(model, ["a", "b"], gt.Sum(), tracer=tracer)
    assert tracer._capture is mt.capture


def test_capture_to_and_follow_move_the_buffers():
    model = nn.Linear(3, 2)
    tracer = gt.Tracer(model, ["a"])
    with tracer.step(0) as s:
        s.backward("a", model(torch.ones(1, 3)).sum())
    capture = tracer.capture
    assert capture.buffer.device.type == "cpu"
    capture.to("meta")
    assert capture.device.type == "meta" and capture._buffer is None  # freed, lazily reallocated
    tracer.follow()
    assert capture.device.type == "cpu"
    mt = gt.MultiTask(model, ["a"], gt.Sum())
    assert mt.follow() is mt and mt.capture.device.type == "cpu"


def test_schedule_and_step_numbers_accept_integral_numbers_and_refuse_strings():
    model = nn.Linear(2, 1)
    five = gt.Tracer(model, ["a"], every=np.int64(5))
    assert [s for s in range(11) if five.should_trace(s)] == [0, 5, 10]
    listed = gt.Tracer(model, ["a"], every=[np.int32(2), 4])
    assert [s for s in range(6) if listed.should_trace(s)] == [2, 4]
    for bad in ("10", b"10", 2.0, ["1", "2"], [1.5]):
        with pytest.raises(InvalidInputError, match="every"):
            gt.Tracer(model, ["a"], every=bad)
    with pytest.raises(InvalidInputError, match="step must be an integer.*'abc'"):
        five.step("abc")
    with pytest.raises(InvalidInputError, match="step must be an integer"):
        gt.MultiTask(model, ["a"], gt.Sum()).step(1.5)
    assert five.step(np.int64(5)).traced


def test_config_is_validated_before_any_file_is_created(tmp_path):
    model = nn.Linear(2, 1)
    with pytest.raises(InvalidInputError, match="config is not JSON-serialisable"):
        gt.Tracer(model, ["a"], out=tmp_path / "run", config={"f": object()})
    assert not (tmp_path / "run").exists()
    gt.Tracer(model, ["a"], out=tmp_path / "run", config={"f": 1}).close()  # the retry works
    assert gt.open_trace(tmp_path / "run").config == {"f": 1}


def test_complex_parameters_are_refused():
    model = nn.Linear(2, 1)
    model.phase = nn.Parameter(torch.zeros(2, dtype=torch.complex64))
    with pytest.raises(InvalidInputError, match="'phase' is complex"):
        gt.Tracer(model, ["a"])
    with pytest.raises(InvalidInputError, match="complex"):
        gt.MultiTask(model, ["a"], gt.Sum())


class Heads(nn.Module):
    """A shared trunk and one head per task: each task's gradient is zero on the others' heads."""

    def __init__(self, tasks) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Linear(4, 4)
        self.heads = nn.ModuleDict({t: nn.Linear(4, 1) for t in tasks})

    def loss(self, task, x):
        return self.heads[task](torch.tanh(self.trunk(x))).pow(2).mean()


def test_zero_gradients_are_reported_once_per_task_and_group_with_a_summary(caplog, tmp_path):
    tasks = ["a", "b", "c"]
    model = Heads(tasks)
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))

    def loss(task):  # task c skips the trunk: a zero gradient in a shared group
        return model.heads[task](x).pow(2).mean() if task == "c" else model.loss(task, x)

    with caplog.at_level(logging.INFO, logger="geomtrace"):
        with gt.Tracer(model, tasks, groups="all_layer", out=tmp_path) as tracer:
            for step in range(5):
                with tracer.step(step) as s:
                    for t in tasks:
                        s.backward(t, loss(t))
    # every (snapshot, head, other task) and (snapshot, trunk, c)
    assert tracer.zero_norm_warnings == 5 * (3 * 2 + 1)
    # per-task heads are expected: one line for all of them, no warning per task
    specific = [r.getMessage() for r in caplog.records if "task-specific" in r.getMessage()]
    assert len(specific) == 1 and "'heads.b' <- 'b'" in specific[0]
    assert caplog.text.count("has a zero gradient") == 1  # c in the trunk, once
    summary = [r.getMessage() for r in caplog.records if "over the run" in r.getMessage()]
    assert len(summary) == 1 and "'c' in 'trunk' x5" in summary[0] and "heads" not in summary[0]


def nan_task_run(tmp_path, loss_scale: float, caplog=None):
    tasks = ["a", "b", "c"]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    tracer = gt.Tracer(model, tasks, out=tmp_path)
    mt = gt.MultiTask(model, tasks, gt.GradVac(beta=0.5, seed=0), tracer=tracer)
    g = torch.Generator().manual_seed(1)
    xs = {t: torch.randn(2, 3, generator=g) for t in tasks}
    for step in range(2):
        model.zero_grad()
        with mt.step(step) as s:
            for t in tasks:
                loss = model(xs[t]).pow(2).mean()
                s.backward(t, loss * loss_scale if t == "b" else loss)
    tracer.close()
    return model, mt, s


def test_a_nan_task_is_left_out_of_the_combination_recorded_and_warned_once(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="geomtrace"):
        model, mt, s = nan_task_run(tmp_path / "nan", float("nan"))
    grads = [p.grad for p in model.parameters()]
    assert all(torch.isfinite(g).all() for g in grads)
    assert s.weights[0, 1] == 0 and torch.isnan(s.gram[0, 1]).all()
    trace = gt.open_trace(tmp_path / "nan")
    np.testing.assert_array_equal(trace.array("nonfinite"), [[0, 1, 0], [0, 1, 0]])
    assert caplog.text.count("non-finite") == 1
    # The combination equals a run where the task is absent (its loss scaled by 0 would still
    # count as present): compare with a run that never calls backward for it.
    tasks = ["a", "b", "c"]
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    mt_ref = gt.MultiTask(ref, tasks, gt.GradVac(beta=0.5, seed=0))
    g = torch.Generator().manual_seed(1)
    xs = {t: torch.randn(2, 3, generator=g) for t in tasks}
    for _ in range(2):
        ref.zero_grad()
        with mt_ref.step(0) as r:
            for t in ("a", "c"):
                r.backward(t, ref(xs[t]).pow(2).mean())
    for got, want in zip(grads, [p.grad for p in ref.parameters()], strict=True):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(s.weights, r.weights)


def test_an_infinite_gradient_is_left_out_too(tmp_path):
    model, _, s = nan_task_run(tmp_path, float("inf"))
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert s.weights[0, 1] == 0
    assert gt.open_trace(tmp_path).array("nonfinite")[:, 1].tolist() == [1, 1]


def test_every_snapshot_records_the_nonfinite_array(tmp_path):
    model = nn.Linear(2, 1)
    with gt.Tracer(model, ["a", "b"], out=tmp_path) as tracer:
        with tracer.step(0) as s:
            s.backward("a", model(torch.ones(1, 2)).sum())
            s.backward("b", model(torch.ones(1, 2)).sum())
    np.testing.assert_array_equal(gt.open_trace(tmp_path).array("nonfinite"), [[0, 0]])


@pytest.mark.parametrize("make", [gt.PCGrad, gt.GradVac])
def test_visiting_orders_are_the_documented_draws_and_can_be_passed(make):
    G, K, seed = 2, 4, 7
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(G, K, 6, generator=torch.Generator().manual_seed(0))
    gram = A @ A.transpose(1, 2)
    agg = make(seed=seed)
    assert agg.last_order is None
    for _ in range(3):
        agg.weights(gram)
        torch.testing.assert_close(agg.last_order, gt.random_order(G, K, gen))
    explicit = gt.random_order(G, K, torch.Generator().manual_seed(99))
    replay = make(seed=seed)
    w = replay.weights(gram, order=explicit)
    assert torch.equal(replay.last_order, explicit)
    fresh = make(seed=seed)  # an explicit order does not advance the generator
    replay.weights(gram)
    fresh.weights(gram)
    torch.testing.assert_close(replay.last_order, fresh.last_order)
    assert w.shape == (G, K)


def test_captures_says_which_steps_need_per_task_backward():
    model = nn.Linear(2, 1)
    tracer = gt.Tracer(model, ["a"], every=10, window=3)
    assert [s for s in range(12) if tracer.captures(s)] == [0, 10]  # no window open yet
    with tracer.step(0) as s:
        s.backward("a", model(torch.ones(1, 2)).sum())
    assert [s for s in range(5) if tracer.captures(s)] == [0, 1, 2]


def test_a_recording_tracer_has_no_steps_of_its_own():
    """Issue 19, defect 5: a Tracer step nested in its MultiTask's step reset the shared
    capture and silently dropped a task's gradient (weights [0, 1, 1], .grad None)."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    tasks = ["a", "b", "c"]
    tracer = gt.Tracer(model, tasks)
    mt = gt.MultiTask(model, tasks, gt.Sum(), tracer=tracer)
    x = torch.ones(1, 3)
    with pytest.raises(InvalidInputError, match=r"tracer.step\(0\): this tracer records for "
                       r"MultiTask.*use `with mt.step"):  # fmt: skip
        with mt.step(0) as s:
            s.backward("a", model(x).sum())
            with tracer.step(0) as inner:
                inner.backward("b", model(x).sum())
    with pytest.raises(InvalidInputError, match="records for MultiTask"):
        tracer.step(1)  # not nested either: the capture belongs to the MultiTask
    with pytest.raises(InvalidInputError, match="already records for MultiTask"):
        gt.MultiTask(model, tasks, gt.Sum(), tracer=tracer)
    # The MultiTask's own steps are unaffected: every task gets its weight.
    model.zero_grad()
    with mt.step(2) as s:
        for t in tasks:
            s.backward(t, model(x * (tasks.index(t) + 1)).sum())
    torch.testing.assert_close(s.weights, torch.ones(1, 3))
    assert model.weight.grad is not None


def _head_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


@pytest.mark.parametrize("owner", ["tracer", "multitask"])
@pytest.mark.parametrize("change", ["unfrozen", "replaced", "frozen"])
def test_trainable_parameters_changed_after_construction_are_refused_at_the_step(owner, change):
    """Issue 19, defect 4: a parameter frozen when the Tracer was built and unfrozen later got
    no .grad on traced steps (it did on untraced ones), silently; so did a head replaced after
    construction; a parameter frozen after construction gave a raw RuntimeError. The groups
    (the trace's columns) are fixed at construction, so the step refuses, naming the
    parameters and the fix."""
    model = _head_model()
    tasks = ["a", "b"]
    if change == "unfrozen":
        model[2].weight.requires_grad_(False)
    stepper = (
        gt.Tracer(model, tasks, every=1)
        if owner == "tracer"
        else gt.MultiTask(model, tasks, gt.Sum())
    )
    x = torch.ones(2, 3)
    with stepper.step(0) as s:  # unchanged: fine
        for t in tasks:
            s.backward(t, model(x).sum())
    if change == "unfrozen":
        model[2].weight.requires_grad_(True)
        message = r"trainable but not traced: '2.weight' \(unfrozen"
    elif change == "replaced":
        model[2] = nn.Linear(4, 2)
        message = r"not traced: '2.weight', '2.bias' .*no longer trainable: '2.weight', '2.bias'"
    else:
        model[0].bias.requires_grad_(False)
        message = r"traced but no longer trainable: '0.bias' \(frozen"
    model.zero_grad()
    with pytest.raises(InvalidInputError, match=message + r".*build a new"):
        with stepper.step(1) as s:
            for t in tasks:
                s.backward(t, model(x).sum())
    # The refusal happened on entering the step: nothing was computed, no .grad was set.
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("kind", ["tracer", "multitask", "sketch"])
def test_a_loss_from_another_model_is_refused_by_task(tmp_path, kind):
    """Issue 19, defect 13: a loss that reaches none of the traced parameters (computed by
    another model) was accepted, recording a task with no gradient anywhere."""
    import geomtrace as gt

    torch.manual_seed(0)
    model, other = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    x = torch.randn(4, 3)
    if kind == "tracer":
        owner = gt.Tracer(model, ["a", "b"], every=1, out=tmp_path / "run")
    elif kind == "multitask":
        owner = gt.MultiTask(model, ["a", "b"], gt.Sum())
    else:
        owner = gt.MultiTask(model, ["a", "b"], gt.Sum(), gram="sketch", sketch=16)
    with pytest.raises(gt.InvalidInputError, match="task 'b'.*another model"):
        with owner.step(0) as s:
            s.backward("a", model(x).sum())
            s.backward("b", other(x).sum())
    if kind == "tracer":
        owner.close()
        assert list(gt.open_trace(tmp_path / "run").steps) == []  # the step wrote nothing
