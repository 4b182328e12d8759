"""The GPU path: no host-device synchronisation in traced and GradVac steps, fp32 Gram matrices
from bf16/fp16 gradients, and agreement with the CPU.

Skipped without a CUDA device (CI and the development machine have none). The models are plain
MLPs on purpose: some CUDA kernels synchronise by themselves (e.g. embedding backward sizes its
segments on the host), and these tests are about geomtrace's own code, not torch's kernels.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

import geomtrace as gt

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine or in CI)"
)

TASKS = ["es", "fr", "ru", "ja"]


def make_model(device, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(12, 32), nn.GELU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 5)
    )
    return model.to(device=device, dtype=dtype)


def batches(device, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    out = {}
    for i, task in enumerate(TASKS):
        x = torch.randn(16, 12, generator=g) + 0.3 * i
        y = torch.randint(0, 5, (16,), generator=g)
        out[task] = (x.to(device=device, dtype=dtype), y.to(device))
    return out


def loss_fn(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x).float(), y)


@contextlib.contextmanager
def no_host_sync():
    """Any synchronising CUDA call inside raises (torch's sync debug mode)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_traced_step_makes_no_host_sync_before_record():
    model, data = make_model("cuda"), batches("cuda")
    tracer = gt.Tracer(model, TASKS, groups="all_layer", every=2)
    for step in (0, 1):  # warm-up: buffer allocation, cuBLAS handles, a traced and untraced step
        with tracer.step(step) as s:
            for task, batch in data.items():
                s.backward(task, loss_fn(model, batch))
    model.zero_grad()
    with tracer.step(2) as s:
        assert s.traced
        with no_host_sync():
            for task, batch in data.items():
                s.backward(task, loss_fn(model, batch))
            gram = tracer.capture.gram()  # the Gram matrices stay on the device
            tracer.capture.combine(torch.ones(len(tracer.groups), len(TASKS), device="cuda"))
        # leaving the step records: the one intended transfer, [G, K, K] to the host
    assert gram.device.type == "cuda"
    torch.testing.assert_close(tracer.last_gram, gram)


def test_gram_with_an_absent_task_makes_no_host_sync():
    model, data = make_model("cuda"), batches("cuda")
    tracer = gt.Tracer(model, TASKS, every=1)
    with tracer.step(0) as s:
        for task, batch in data.items():
            s.backward(task, loss_fn(model, batch))
    with tracer.step(1) as s:
        with no_host_sync():
            for task in TASKS[:2]:
                s.backward(task, loss_fn(model, data[task]))
            gram = tracer.capture.gram()
    assert torch.isnan(gram[0, 3]).all().item() and torch.isfinite(gram[0, :2, :2]).all().item()


def test_sketched_step_makes_no_host_sync():
    model, data = make_model("cuda"), batches("cuda")
    tracer = gt.Tracer(model, TASKS, groups="all_layer", every=1, sketch=64)
    with tracer.step(0) as s:
        for task, batch in data.items():
            s.backward(task, loss_fn(model, batch))
    model.zero_grad()
    with tracer.step(1) as s:
        with no_host_sync():
            for task, batch in data.items():
                s.backward(task, loss_fn(model, batch))
            tracer.capture.gram()


def test_gradvac_step_makes_no_host_sync():
    from geomtrace._aggregators import GradVac
    from geomtrace._multitask import MultiTask

    model, data = make_model("cuda"), batches("cuda")
    mt = MultiTask(model, TASKS, GradVac(beta=0.1), groups="all_layer")
    with mt.step(0) as s:  # warm-up
        for task, batch in data.items():
            s.backward(task, loss_fn(model, batch))
    model.zero_grad()
    with no_host_sync():  # covers the exit too: gram, GradVac weights, combine, .grad update
        with mt.step(1) as s:
            for task, batch in data.items():
                s.backward(task, loss_fn(model, batch))
    assert s.weights.device.type == "cuda" and s.weights.shape == (3, len(TASKS))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_gradients_give_fp32_grams_close_to_fp32(dtype):
    data = batches("cuda")
    reference = make_model("cuda")
    tracer = gt.Tracer(reference, TASKS, groups="all_layer")
    with tracer.step(0) as s:
        for task, batch in data.items():
            s.backward(task, loss_fn(reference, batch))
    expected = tracer.last_gram

    # (a) autocast over fp32 parameters; (b) parameters stored in the low dtype.
    for low_params in (False, True):
        model = make_model("cuda", dtype if low_params else torch.float32)
        tracer = gt.Tracer(model, TASKS, groups="all_layer")
        with tracer.step(0) as s:
            for task, (x, y) in data.items():
                with torch.autocast("cuda", dtype=dtype):
                    loss = loss_fn(model, (x.to(dtype) if low_params else x, y))
                s.backward(task, loss)
        gram = tracer.last_gram
        assert gram.dtype == torch.float32
        if low_params:
            assert next(model.parameters()).grad.dtype == dtype
        cos = gt.cosine_from_gram(gram.double().cpu().numpy())
        cos_ref = gt.cosine_from_gram(expected.double().cpu().numpy())
        assert abs(cos - cos_ref).max() < 5e-2
        torch.testing.assert_close(gram, expected, rtol=0.1, atol=1e-4)


@pytest.mark.parametrize("sketch", [None, 256])
def test_cuda_matches_cpu(sketch):
    grams = {}
    grads = {}
    for device in ("cpu", "cuda"):
        model, data = make_model(device), batches(device)
        tracer = gt.Tracer(model, TASKS, groups="all_layer", sketch=sketch, seed=3)
        with tracer.step(0) as s:
            for task, batch in data.items():
                s.backward(task, loss_fn(model, batch))
        grams[device] = tracer.last_gram.cpu()
        grads[device] = [p.grad.cpu() for p in model.parameters()]
    torch.testing.assert_close(grams["cuda"], grams["cpu"], rtol=1e-4, atol=1e-6)
    for a, b in zip(grads["cuda"], grads["cpu"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
