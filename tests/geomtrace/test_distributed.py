"""Data parallelism over 2 real processes (gloo on CPU, loopback only) against one process.

The global batch of every task has 8 rows; rank r trains on rows [4r, 4r + 4) with a mean loss,
so the mean over ranks of the rank gradients is exactly the single-process gradient of the
global batch. Traces (Gram matrices, losses) and the parameters after 3 optimiser steps must
match the single-process run to 1e-5, for: the Tracer with a DDP-wrapped model, the Tracer with
plain data parallelism (no wrapper), MultiTask + GradVac, and sketch mode.

This file is also the worker: ``python test_distributed.py RANK WORLD PORT OUT SCENARIO...``.
"""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import geomtrace as gt
from geomtrace import _distributed
from geomtrace._sketch import TaskSketches

TASKS = ["es", "fr", "ru"]
STEPS = 3
TRACED = [0, 2]
SCENARIOS = ["ddp", "plain", "multitask", "multitask_ddp", "sketch"]


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4)
    )


def global_batch(step: int, task_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """8 rows per task and step; each task has its own input shift and labelling rule."""
    g = torch.Generator().manual_seed(100 * step + task_index)
    x = torch.randn(8, 6, generator=g) + task_index
    y = (x[:, task_index % 6] > task_index).long() + 2 * (x[:, 0] > 0).long()
    return x, y


def local_batch(step, task_index, rank, world):
    x, y = global_batch(step, task_index)
    rows = slice(rank * 8 // world, (rank + 1) * 8 // world)
    return x[rows], y[rows]


def loss_fn(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def run(scenario: str, out: Path, rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]:
    """Train STEPS steps of ``scenario``; return the final parameters (by name)."""
    model = make_model()
    wrapped = model
    if scenario in ("ddp", "sketch", "multitask_ddp") and world > 1:
        wrapped = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sketch = 32 if scenario == "sketch" else None
    tracer = gt.Tracer(wrapped, TASKS, groups="all_layer", every=TRACED, out=out, sketch=sketch)
    mt = None
    if scenario.startswith("multitask"):
        from geomtrace._aggregators import GradVac
        from geomtrace._multitask import MultiTask

        mt = MultiTask(wrapped, TASKS, GradVac(beta=0.5, seed=3), groups="all_layer", tracer=tracer)
    for step in range(STEPS):
        with (mt or tracer).step(step) as s:
            for i, task in enumerate(TASKS):
                s.backward(task, loss_fn(wrapped, local_batch(step, i, rank, world)))
        if scenario == "plain" and world > 1 and not s.traced:
            # Plain data parallelism: the user averages .grad on untraced steps, as DDP would.
            _distributed.all_reduce_grads(list(model.parameters()), _distributed.resolve_group())
        opt.step()
        opt.zero_grad()
    tracer.close()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def fail_run(out: Path, rank: int, world: int) -> None:
    """Rank 1 raises in the middle of traced step 2: rank 0 must not write step 2."""
    model = make_model()
    wrapped = nn.parallel.DistributedDataParallel(model)
    tracer = gt.Tracer(wrapped, TASKS, groups="all_layer", every=TRACED, out=out)
    for step in range(STEPS):
        with tracer.step(step) as s:
            for i, task in enumerate(TASKS):
                if step == 2 and rank == 1 and i == 1:
                    raise RuntimeError("rank 1 fails")
                s.backward(task, loss_fn(wrapped, local_batch(step, i, rank, world)))
        model.zero_grad()


def worker(rank: int, world: int, port: int, out: Path, scenarios: list[str]) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=20),
    )
    try:
        for scenario in scenarios:
            if scenario == "fail":
                fail_run(out / scenario, rank, world)
                continue
            params = run(scenario, out / scenario, rank, world)
            torch.save(params, out / f"{scenario}_params_rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out: Path, scenarios: list[str], world: int = 2, timeout: float = 120):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(r), str(world), str(port), str(out), *scenarios],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(world)
    ]
    results = []
    for p in procs:
        try:
            output, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            output, _ = p.communicate()
        results.append((p.returncode, output))
    return results


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    """One launch of 2 ranks runs every scenario, then the failure scenario (which ends both
    processes with an error: rank 1 raises, rank 0's next collective sees the dead peer)."""
    out = tmp_path_factory.mktemp("dist")
    results = launch(out, [*SCENARIOS, "fail"])
    for rank, (_, output) in enumerate(results):
        for scenario in SCENARIOS:  # every regular scenario finished on every rank
            assert (out / f"{scenario}_params_rank{rank}.pt").exists(), output[-3000:]
    return out, results


def assert_traces_equal(a: Path, b: Path) -> None:
    ta, tb = gt.open_trace(a), gt.open_trace(b)
    assert ta.steps.tolist() == tb.steps.tolist() == TRACED
    assert ta.groups == tb.groups == ["0", "2", "4"]
    for group in ta.groups:
        np.testing.assert_allclose(ta.gram(group), tb.gram(group), rtol=1e-5, atol=1e-7)
    la = ta.losses().sort_values(["step", "task"]).reset_index(drop=True)
    lb = tb.losses().sort_values(["step", "task"]).reset_index(drop=True)
    assert la[["step", "task"]].equals(lb[["step", "task"]])
    np.testing.assert_allclose(la["loss"], lb["loss"], rtol=1e-6)
    for name in ta.array_names():
        np.testing.assert_allclose(ta.array(name), tb.array(name), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_two_ranks_match_one_process_on_the_global_batch(two_process_runs, scenario, tmp_path):
    two_process_runs, _ = two_process_runs
    single = run(scenario, tmp_path / "single")
    assert_traces_equal(two_process_runs / scenario, tmp_path / "single")
    for rank in (0, 1):
        params = torch.load(two_process_runs / f"{scenario}_params_rank{rank}.pt")
        for name, value in single.items():
            torch.testing.assert_close(params[name], value, rtol=1e-5, atol=1e-6)
    # The training really moved (otherwise equality would be vacuous).
    assert not torch.allclose(single["4.weight"], make_model()[4].weight, atol=1e-3)


@pytest.mark.slow
def test_only_rank_zero_writes(two_process_runs):
    two_process_runs, _ = two_process_runs
    # Rank 1 was given the same `out`; it wrote nothing, so the one trace is rank 0's and it
    # records the world size (and, for sketch mode, the sketch dimension).
    for scenario in SCENARIOS:
        assert (two_process_runs / scenario / "trace.sqlite").exists()
        assert gt.open_trace(two_process_runs / scenario).meta("world_size") == 2
    assert gt.open_trace(two_process_runs / "sketch").meta("sketch") == 32
    assert gt.open_trace(two_process_runs / "ddp").meta("sketch") is None


@pytest.mark.slow
def test_a_failing_rank_leaves_the_last_committed_snapshot(two_process_runs):
    out, results = two_process_runs
    (code0, output0), (code1, output1) = results
    assert code1 != 0 and "rank 1 fails" in output1
    assert code0 != 0 and "rank 1 fails" not in output0  # rank 0 failed in its collective
    trace = gt.open_trace(out / "fail")
    assert trace.steps.tolist() == [0]  # step 2 was interrupted: not written
    assert np.isfinite(trace.gram("0")[0]).all()


def test_sharding_covers_every_column_once():
    offsets = [(0, 5), (5, 6), (6, 17)]
    spans = [_distributed.Sharding.make(offsets, 17, 4, r) for r in range(4)]
    assert {s.shard_size for s in spans} == {5} and spans[0].padded == 20
    for k, (a, b) in enumerate(offsets):
        covered = []
        for s in spans:
            lo, hi = s.local[k]
            covered.extend(range(s.start + lo, s.start + hi))
        assert covered == list(range(a, b))


def test_no_process_group_means_single_process_capture():
    model = make_model()
    tracer = gt.Tracer(model, TASKS)
    assert tracer.capture.process_group is None and tracer.capture.sharding is None
    assert isinstance(gt.Tracer(model, TASKS, sketch=8).capture, TaskSketches)


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]), sys.argv[5:])
