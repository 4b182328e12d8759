"""FSDP2 (fully_shard) over 2 real processes (gloo on CPU, loopback only) against one process.

Every Linear layer and the root are wrapped with ``fully_shard``; the layers have odd output
sizes (15, 5), so the dim-0 shards are uneven (8 + 7 rows, 3 + 2 rows). The global batch of
every task has 8 rows; rank r trains on rows [4r, 4r + 4) with a mean loss, so FSDP's averaged
shards are the single-process gradient of the global batch. Traces (Gram matrices, losses,
MultiTask weights, GradVac targets) and the gathered parameters after STEPS SGD steps must
match the single-process run on the plain model to 1e-5.

This file is also the worker: ``python test_fsdp.py RANK WORLD PORT OUT SCENARIO...``.
"""

from __future__ import annotations

import datetime
import json
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

TASKS = ["es", "fr", "ru"]
STEPS = 4
TRACED = [0, 2, 3]
GRANULARITIES = ["whole_model", "all_layer", "all_matrix"]
#: the sketched two-pass path (geomtrace._fsdp_sketch): scenario -> (aggregator, sketch dim)
SKETCHED = {
    "mt_identity": ("gradvac", "identity"),
    "mt_identity_shard1": ("pcgrad", "identity"),  # the 6-column weight sharded on dim 1
    "mt_sketch": ("pcgrad", 64),
    "mt_sketch_gradvac": ("gradvac", 32),
    "mt_sketch_nan": ("gradvac", 64),  # task "fr" has a NaN loss at traced step 2
    "tracer_sketch": (None, 64),
    "tracer_sketch_no_reshard": (None, 16),
    "tracer_sketch_bf16": (None, 64),  # bf16 parameters and reduce-scatter
}
SKETCH_SEED = 7
SCENARIOS = [
    *(f"tracer_{g}" for g in GRANULARITIES),
    "pcgrad",
    "gradvac",
    "no_reshard",
    "bf16",
    *SKETCHED,
]
#: group names of each granularity on the model (the same with and without fully_shard)
GROUPS = {
    "whole_model": ["whole_model"],
    "all_layer": ["0", "2", "4"],
    "all_matrix": ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"],
}


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 15), nn.Tanh(), nn.Linear(15, 5), nn.Tanh(), nn.Linear(5, 4))


def shard(model: nn.Module, **options) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    for layer in (model[0], model[2], model[4]):
        fully_shard(layer, **options)
    fully_shard(model, **options)
    return model


def global_batch(step: int, task_index: int) -> tuple[torch.Tensor, torch.Tensor]:
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
    return nn.functional.cross_entropy(model(x).float(), y)


def spec(scenario: str) -> tuple[str, str | None, dict]:
    """(groups, aggregator, fully_shard options) of a scenario."""
    if scenario in SKETCHED:
        options = {"reshard_after_forward": False} if "no_reshard" in scenario else {}
        if "bf16" in scenario:
            from torch.distributed.fsdp import MixedPrecisionPolicy

            options["mp_policy"] = MixedPrecisionPolicy(
                param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16
            )
        if "shard1" in scenario:
            from torch.distributed.tensor import Shard

            # FSDP shards dim 1 only evenly: the (15, 6) weight; the others stay on dim 0.
            options["shard_placement_fn"] = lambda p: Shard(
                1 if p.dim() == 2 and p.shape[1] % 2 == 0 else 0
            )
        return "all_layer", SKETCHED[scenario][0], options
    if scenario.startswith("tracer_"):
        return scenario.removeprefix("tracer_"), None, {}
    if scenario in ("pcgrad", "gradvac"):
        return "all_layer", scenario, {}
    if scenario == "no_reshard":
        return "all_layer", None, {"reshard_after_forward": False}
    if scenario == "bf16":
        from torch.distributed.fsdp import MixedPrecisionPolicy

        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16)
        return "all_layer", None, {"mp_policy": policy}
    raise ValueError(scenario)


def gathered(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full parameters by name (all-gathered from the shards under FSDP: collective)."""
    out = {}
    for name, p in model.named_parameters():
        value = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[name] = value.detach().clone()
    return out


def run(scenario: str, out: Path, rank: int = 0, world: int = 1) -> dict:
    """Train STEPS steps; return the final (gathered) parameters and the last Gram's dtype."""
    groups, aggregator, options = spec(scenario)
    model = make_model()
    if world > 1:
        shard(model, **options)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    # Sketched scenarios: the same sketch (dimension, seed) in both runs, except the identity,
    # whose one-process reference is the exact MultiTask.
    dim = SKETCHED.get(scenario, (None, None))[1]
    exact = dim is None or (dim == "identity" and world == 1)
    traced_dim = None if dim == "identity" else dim
    tracer = gt.Tracer(
        model, TASKS, groups=groups, every=TRACED, out=out, sketch=traced_dim, seed=SKETCH_SEED
    )
    owner = tracer
    if aggregator is not None:
        agg = gt.PCGrad(seed=2) if aggregator == "pcgrad" else gt.GradVac(beta=0.5, seed=3)
        sketched = {} if exact else {"gram": "sketch", "sketch": dim, "seed": SKETCH_SEED}
        owner = gt.MultiTask(model, TASKS, agg, groups=groups, tracer=tracer, **sketched)
    for step in range(STEPS):
        with owner.step(step) as s:
            for i, task in enumerate(TASKS):
                loss = loss_fn(model, local_batch(step, i, rank, world))
                if scenario == "mt_sketch_nan" and step == 2 and task == "fr":
                    loss = loss * float("nan")
                s.backward(task, loss)
        opt.step()
        opt.zero_grad()
    tracer.close()
    return {"params": gathered(model), "gram_dtype": str(tracer.last_gram.dtype)}


def fail_run(out: Path, rank: int, world: int) -> None:
    """Rank 1 raises in the middle of traced step 2: rank 0 must not write step 2."""
    model = shard(make_model())
    tracer = gt.Tracer(model, TASKS, groups="all_layer", every=TRACED, out=out)
    for step in range(STEPS):
        with tracer.step(step) as s:
            for i, task in enumerate(TASKS):
                if step == 2 and rank == 1 and i == 1:
                    raise RuntimeError("rank 1 fails")
                s.backward(task, loss_fn(model, local_batch(step, i, rank, world)))
        model.zero_grad()


def refusals() -> dict[str, str]:
    """The message of every refused combination (checked on both ranks)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    def message(fn) -> str:
        try:
            fn()
        except gt.InvalidInputError as err:
            return str(err)
        return "accepted"

    model = shard(make_model())
    probe = {"es": local_batch(0, 0, 0, 2)}
    out = {
        "sketch_dim": message(
            lambda: gt.MultiTask(model, TASKS, gt.Sum(), gram="sketch", sketch=0)
        ),
        "tracer_identity": message(lambda: gt.Tracer(model, TASKS, sketch="identity")),
        "probe": message(
            lambda: gt.Tracer(model, TASKS, probe=probe, probe_loss=lambda m, t, b: loss_fn(m, b))
        ),
        "process_group": message(lambda: gt.Tracer(model, TASKS, process_group=None)),
        "tracer_mismatch": message(
            lambda: gt.MultiTask(
                model, TASKS, gt.Sum(), gram="sketch", sketch=8, tracer=gt.Tracer(model, TASKS)
            )
        ),
    }
    partly = make_model()
    fully_shard(partly[0])  # the other layers stay plain tensors
    out["unsharded"] = message(lambda: gt.Tracer(partly, TASKS))
    hsdp = make_model()
    fully_shard(hsdp, mesh=init_device_mesh("cpu", (1, 2), mesh_dim_names=("replicate", "shard")))
    out["hsdp"] = message(lambda: gt.Tracer(hsdp, TASKS))

    def no_sync_step():
        tracer = gt.Tracer(model, TASKS)
        model.set_requires_gradient_sync(False)
        try:
            with tracer.step(0) as s:
                s.backward("es", loss_fn(model, local_batch(0, 0, 0, 2)))
        finally:
            model.set_requires_gradient_sync(True)

    out["no_sync"] = message(no_sync_step)

    def no_sync_sketched_step():
        mt = gt.MultiTask(model, TASKS, gt.Sum(), gram="sketch", sketch=8)
        model.set_requires_gradient_sync(False)
        try:
            with mt.step(0) as s:
                s.backward("es", loss_fn(model, local_batch(0, 0, 0, 2)))
        finally:
            model.set_requires_gradient_sync(True)

    out["no_sync_sketch"] = message(no_sync_sketched_step)

    # A sketched step that raises after a backward reshards the parameters it kept unsharded.
    from torch.distributed.tensor import DTensor

    mt = gt.MultiTask(model, TASKS, gt.Sum(), gram="sketch", sketch=8)
    try:
        with mt.step(0) as s:
            s.backward("es", loss_fn(model, local_batch(0, 0, 0, 2)))
            raise RuntimeError("interrupted")
    except RuntimeError:
        pass
    out["abort_resharded"] = str(all(isinstance(p, DTensor) for p in model.parameters()))
    return out


#: sketch dimension of the traffic count
TRAFFIC_DIM = 64


def traffic(rank: int, world: int) -> dict[str, dict[str, dict[str, int]]]:
    """Calls and bytes by collective of one step (after a first, uncounted one): a joint FSDP
    step (one forward/backward of every task's rows), the exact MultiTask, the sketched
    MultiTask and a traced sketched Tracer step."""
    out = {}
    for mode in ("joint", "exact_mt", "sketch_mt", "sketch_tracer"):
        model = shard(make_model())
        owner = None
        if mode == "exact_mt":
            owner = gt.MultiTask(model, TASKS, gt.Sum(), groups="all_layer")
        elif mode == "sketch_mt":
            owner = gt.MultiTask(
                model, TASKS, gt.Sum(), groups="all_layer", gram="sketch", sketch=TRAFFIC_DIM
            )
        elif mode == "sketch_tracer":
            owner = gt.Tracer(model, TASKS, groups="all_layer", sketch=TRAFFIC_DIM)
        for _warm_then_counted in range(2):  # the first step builds FSDP's lazy state
            with gt.CollectiveBytes() as counter:
                batches = [local_batch(0, i, rank, world) for i in range(len(TASKS))]
                if owner is None:
                    x = torch.cat([b[0] for b in batches])
                    y = torch.cat([b[1] for b in batches])
                    loss_fn(model, (x, y)).backward()
                else:
                    with owner.step(0) as s:
                        for task, b in zip(TASKS, batches, strict=True):
                            s.backward(task, loss_fn(model, b))
            model.zero_grad()
        out[mode] = {"calls": counter.calls, "bytes": counter.bytes}
    return out


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
            elif scenario == "traffic":
                (out / f"traffic_rank{rank}.json").write_text(json.dumps(traffic(rank, world)))
            elif scenario == "refusals":
                (out / f"refusals_rank{rank}.json").write_text(json.dumps(refusals()))
            else:
                result = run(scenario, out / scenario, rank, world)
                torch.save(result, out / f"{scenario}_rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out: Path, scenarios: list[str], world: int = 2, timeout: float = 150):
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
def fsdp_runs(tmp_path_factory):
    """One launch of 2 ranks runs every scenario, the refusals, then the failure scenario
    (which ends both processes with an error)."""
    out = tmp_path_factory.mktemp("fsdp")
    results = launch(out, [*SCENARIOS, "traffic", "refusals", "fail"])
    for rank, (_, output) in enumerate(results):
        for scenario in SCENARIOS:
            assert (out / f"{scenario}_rank{rank}.pt").exists(), output[-3000:]
    return out, results


def assert_traces_close(a: Path, b: Path, groups: list[str], rtol: float, atol: float) -> None:
    ta, tb = gt.open_trace(a), gt.open_trace(b)
    assert ta.steps.tolist() == tb.steps.tolist() == TRACED
    assert ta.groups == tb.groups == groups
    # The groups keep their unsharded parameter names and sizes: interchangeable traces.
    assert ta.group_sizes == tb.group_sizes
    for group in groups:
        np.testing.assert_allclose(ta.gram(group), tb.gram(group), rtol=rtol, atol=atol)
    la = ta.losses().sort_values(["step", "task"]).reset_index(drop=True)
    lb = tb.losses().sort_values(["step", "task"]).reset_index(drop=True)
    assert la[["step", "task"]].equals(lb[["step", "task"]])
    np.testing.assert_allclose(la["loss"], lb["loss"], rtol=max(rtol, 1e-6))
    assert sorted(ta.array_names()) == sorted(tb.array_names())
    for name in ta.array_names():
        np.testing.assert_allclose(ta.array(name), tb.array(name), rtol=rtol, atol=atol)


@pytest.mark.slow
@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if "bf16" not in s])
def test_fully_shard_matches_one_process_on_the_global_batch(fsdp_runs, scenario, tmp_path):
    out, _ = fsdp_runs
    groups, aggregator, _ = spec(scenario)
    single = run(scenario, tmp_path / "single")
    assert_traces_close(out / scenario, tmp_path / "single", GROUPS[groups], 1e-5, 1e-7)
    names = gt.open_trace(out / scenario).array_names()
    if aggregator is not None:
        assert "weights" in names
    if aggregator == "gradvac":
        assert "gradvac_target" in names  # compared above: the EMA targets agree
    for rank in (0, 1):
        params = torch.load(out / f"{scenario}_rank{rank}.pt")["params"]
        assert params.keys() == single["params"].keys()
        for name, value in single["params"].items():
            torch.testing.assert_close(params[name], value, rtol=1e-5, atol=1e-6)
    # The training really moved (otherwise equality would be vacuous).
    assert not torch.allclose(single["params"]["4.weight"], make_model()[4].weight, atol=1e-3)


@pytest.mark.slow
def test_sketched_step_costs_one_all_gather_and_one_reduce_scatter(fsdp_runs):
    """Counted on both ranks: the sketched MultiTask and traced Tracer steps all-gather each
    FSDP unit once and reduce-scatter once (the exact MultiTask: once per task backward), plus
    one all-reduce of the G K d sketches and K flags (the Tracer: and 2 K loss floats)."""
    out, _ = fsdp_runs
    G, K, d, W = 3, len(TASKS), TRAFFIC_DIM, 2
    # FSDP pads every parameter's dim 0 to W ceil(rows / W): what one gather or scatter moves.
    padded = sum(
        W * -(-p.shape[0] // W) * (p.numel() // p.shape[0]) for p in make_model().parameters()
    )
    for rank in (0, 1):
        counts = json.loads((out / f"traffic_rank{rank}.json").read_text())
        joint, exact = counts["joint"], counts["exact_mt"]
        assert (
            exact["calls"]["_reduce_scatter_base_"] == K * joint["calls"]["_reduce_scatter_base_"]
        )
        for mode, losses in (("sketch_mt", 0), ("sketch_tracer", 2 * K)):
            calls, sizes = counts[mode]["calls"], counts[mode]["bytes"]
            assert calls["_allgather_base_"] == 3  # the three sharded Linear layers, once
            assert sizes["_allgather_base_"] == 4 * padded
            assert calls["_reduce_scatter_base_"] == 1
            assert sizes["_reduce_scatter_base_"] == 4 * padded
            assert sizes["allreduce_"] == 4 * (G * K * d + K + losses)
            # gathers and the scatter: below a joint step's (which gathers twice)
            moved = sizes["_allgather_base_"] + sizes["_reduce_scatter_base_"]
            assert moved < sum(joint["bytes"].values())


@pytest.mark.slow
def test_sketched_weights_are_estimates_not_the_exact_ones(fsdp_runs):
    """The sketched runs equal the one-process sketched runs (above); here: their weights
    really came from the sketch (at step 0, same parameters, they differ from the exact
    GradVac run's; d = 32 on groups of 24 to 105 columns is coarse on purpose), while the
    identity sketch's equal them."""
    out, _ = fsdp_runs
    exact = gt.open_trace(out / "gradvac").array("weights")
    sketched = gt.open_trace(out / "mt_sketch_gradvac").array("weights")
    identity = gt.open_trace(out / "mt_identity").array("weights")
    np.testing.assert_allclose(identity, exact, rtol=1e-5, atol=1e-6)
    gap = np.abs(sketched[0] - exact[0]).max()
    assert np.isfinite(sketched).all() and gap > 1e-3, gap


@pytest.mark.slow
def test_a_nan_task_is_left_out_of_the_sketched_update(fsdp_runs):
    """A NaN loss (every rank) at traced step 2: the task is flagged non-finite, its Gram
    rows are NaN, the update and the parameters stay finite (and equal the one-process run,
    checked above)."""
    out, _ = fsdp_runs
    trace = gt.open_trace(out / "mt_sketch_nan")
    flags = trace.array("nonfinite")
    assert flags[1].tolist() == [False, True, False] and not flags[0].any()
    assert np.isnan(trace.gram("0")[1][1]).all()
    weights = trace.array("weights")[1]
    assert (weights[:, 1] == 0).all()
    params = torch.load(out / "mt_sketch_nan_rank0.pt")["params"]
    assert all(torch.isfinite(v).all() for v in params.values())


@pytest.mark.slow
def test_aggregators_really_changed_the_update(fsdp_runs):
    out, _ = fsdp_runs
    plain = torch.load(out / "tracer_all_layer_rank0.pt")["params"]
    for scenario in ("pcgrad", "gradvac"):
        params = torch.load(out / f"{scenario}_rank0.pt")["params"]
        assert not torch.allclose(params["0.weight"], plain["0.weight"], atol=1e-4), scenario


@pytest.mark.slow
def test_mixed_precision_gives_fp32_grams_close_to_fp32(fsdp_runs, tmp_path):
    out, _ = fsdp_runs
    result = torch.load(out / "bf16_rank0.pt")
    assert result["gram_dtype"] == "torch.float32"
    run("tracer_all_layer", tmp_path / "fp32")
    # bf16 parameters and reduce: ~3 significant digits per gradient entry.
    assert_traces_close(out / "bf16", tmp_path / "fp32", GROUPS["all_layer"], 5e-2, 1e-3)


@pytest.mark.slow
def test_sketched_path_under_mixed_precision_stays_close_to_fp32(fsdp_runs, tmp_path):
    """bf16 unsharded parameters and a bf16 reduce-scatter (as FSDP's own): fp32 sketched
    Grams within 5e-2 of the one-process fp32 sketched run, parameters within 2e-2."""
    out, _ = fsdp_runs
    result = torch.load(out / "tracer_sketch_bf16_rank0.pt")
    assert result["gram_dtype"] == "torch.float32"
    single = run("tracer_sketch_bf16", tmp_path / "fp32")  # one process: plain fp32
    assert_traces_close(
        out / "tracer_sketch_bf16", tmp_path / "fp32", GROUPS["all_layer"], 5e-2, 1e-3
    )
    for name, value in single["params"].items():
        torch.testing.assert_close(result["params"][name], value, rtol=2e-2, atol=2e-3)


@pytest.mark.slow
def test_only_rank_zero_writes_and_world_size_is_recorded(fsdp_runs):
    out, _ = fsdp_runs
    for scenario in SCENARIOS:
        assert gt.open_trace(out / scenario).meta("world_size") == 2


@pytest.mark.slow
def test_unsupported_options_are_refused_by_name(fsdp_runs):
    out, _ = fsdp_runs
    expected = {
        "sketch_dim": "sketch=0",
        "tracer_identity": "sketch='identity'",
        "tracer_mismatch": "sketch=8",
        "no_sync_sketch": "set_requires_gradient_sync(False)",
        "abort_resharded": "True",
        "probe": "probe=",
        "process_group": "process_group=None",
        "unsharded": "not managed by fully_shard",
        "hsdp": "HSDP",
        "no_sync": "set_requires_gradient_sync(False)",
    }
    for rank in (0, 1):
        messages = json.loads((out / f"refusals_rank{rank}.json").read_text())
        for key, needle in expected.items():
            assert needle in messages[key], (key, messages[key])


@pytest.mark.slow
def test_a_failing_rank_leaves_the_last_committed_snapshot(fsdp_runs):
    out, results = fsdp_runs
    (code0, output0), (code1, output1) = results
    assert code1 != 0 and "rank 1 fails" in output1
    assert code0 != 0 and "rank 1 fails" not in output0  # rank 0 failed in its collective
    trace = gt.open_trace(out / "fail")
    assert trace.steps.tolist() == [0]  # step 2 was interrupted: not written
    assert np.isfinite(trace.gram("0")[0]).all()


def test_a_plain_model_is_not_fully_sharded():
    from geomtrace import _fsdp

    assert not _fsdp.is_fully_sharded(make_model())
    assert gt.Tracer(make_model(), TASKS).fsdp is None


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]), sys.argv[5:])
    # As tests/geomtrace/test_distributed.py: skip the interpreter's teardown, which can abort
    # in gloo's threads on a loaded machine after every scenario has finished.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
