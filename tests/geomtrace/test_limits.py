"""Values beyond what the machine or the file can hold are refused up front, naming the bound
(issue 19, defect 10, library part): step numbers beyond SQLite's 64-bit INTEGER, capture
buffers larger than the device's memory, schedules that answer with an array."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import geomtrace as gt
from geomtrace import InvalidInputError

TASKS = ["a", "b"]


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(3, 2)


def backward_all(stepper, m, step):
    with stepper.step(step) as s:
        for i, task in enumerate(TASKS):
            s.backward(task, m(torch.ones(1, 3) * (i + 1)).sum())
    return s


@pytest.mark.parametrize("step", [2**70, -(2**63) - 1, 2**63])
def test_step_numbers_beyond_64_bits_are_refused(tmp_path, step):
    """tracer.step(2**70) used to enter and then fail with a raw OverflowError when the
    snapshot was written (SQLite INTEGER is 64-bit)."""
    m = model()
    tracer = gt.Tracer(m, TASKS, out=tmp_path)
    mt = gt.MultiTask(m, TASKS, gt.Sum())
    for stepper in (tracer, mt):
        with pytest.raises(InvalidInputError, match=rf"step {step} .*signed 64-bit"):
            stepper.step(step)
    with pytest.raises(InvalidInputError, match="signed 64-bit"):
        tracer.record(step, torch.eye(2)[None])
    with pytest.raises(InvalidInputError, match="signed 64-bit"):
        tracer.record_quality(step, "a", "chrf", 1.0)
    backward_all(tracer, m, 2**63 - 1)  # the largest step that fits is fine
    tracer.close()
    assert gt.open_trace(tmp_path).steps.tolist() == [2**63 - 1]


def test_sketch_larger_than_the_machine_is_refused_at_construction():
    """MultiTask(gram='sketch', sketch=2**40) was accepted, then failed in the allocator."""
    m = model()
    with pytest.raises(InvalidInputError, match=r"sketch=1099511627776 needs .* TiB .* more than "
                       r"the .* of memory of cpu"):  # fmt: skip
        gt.MultiTask(m, TASKS, gt.Sum(), gram="sketch", sketch=2**40)
    with pytest.raises(InvalidInputError, match=r"sketch=1099511627776 needs .*more than"):
        gt.Tracer(m, TASKS, sketch=2**40)
    # A sketch that fits works as before.
    mt = gt.MultiTask(m, TASKS, gt.Sum(), gram="sketch", sketch=64)
    assert backward_all(mt, m, 0).gram.shape == (1, 2, 2)


def test_exact_capture_larger_than_the_machine_is_refused_at_construction():
    """K task gradients of P floats each: K x P x 4 bytes must fit in the device's memory."""
    big = nn.Embedding(10_000_000, 1)  # P = 1e7
    tasks = [f"t{i}" for i in range(100_000)]  # K P 4 bytes = 4 TB
    with pytest.raises(InvalidInputError, match=r"100000 task gradients .* need 3\.6 TiB"):
        gt.Tracer(big, tasks)
    with pytest.raises(InvalidInputError, match=r"need 3\.6 TiB"):
        gt.MultiTask(big, tasks, gt.Sum())


def test_schedule_callables_must_answer_true_or_false():
    """every= returning a numpy array used to raise numpy's 'truth value of an array is
    ambiguous' from inside the step."""
    m = model()
    for answer in (np.array([True, False]), None, "yes", 0.5):
        tracer = gt.Tracer(m, TASKS, every=lambda step, answer=answer: answer)
        with pytest.raises(InvalidInputError, match=r"every\(0\) returned .*True or False"):
            tracer.step(0)
    for answer, traced in (
        (np.bool_(True), True),
        (np.array(False), False),
        (torch.tensor(True), True),
        (1, True),
        (0, False),
    ):
        tracer = gt.Tracer(m, TASKS, every=lambda step, answer=answer: answer)
        assert tracer.step(0).traced is traced
    listed = gt.Tracer(m, TASKS, every=np.arange(0, 10, 5))
    assert [s for s in range(10) if listed.should_trace(s)] == [0, 5]
