"""Benchmark: bytes in the collectives of one step, counted on 2 real gloo ranks.

    python benchmarks/communication.py                     # K = 8, 24, 100; d = 256
    python benchmarks/communication.py --tasks 8 --sketch 1024 --width 512

For each K, one step of every mode on a stack of square linear layers (``--width``, 3 layers,
groups ``all_layer``: G = 3), counted with ``gt.CollectiveBytes`` (every collective that goes
through torch's dispatcher, FSDP's included; size = the full payload of the collective):

- data parallelism (no wrapper): ``plain`` (K task backward passes, one all-reduce of .grad),
  ``exact`` (MultiTask(Sum), exact Gram: reduce-scatter of every task row, all-gather of the
  update), ``sketch`` (MultiTask(Sum, gram="sketch", sketch=d)), ``sketch_fp16`` (the same
  with ``sketch_dtype="float16"``: the sketches travel as scaled float16);
- FSDP2 (every layer and the root ``fully_shard``-ed): ``fsdp_joint`` (one forward/backward of
  all tasks' rows: the plain FSDP step), ``fsdp_plain`` (K task backward passes accumulated
  into .grad), ``fsdp_traced`` (a traced Tracer step, exact), ``fsdp_multitask`` (exact),
  ``fsdp_traced_sketch`` (``Tracer(sketch=d)``) and ``fsdp_multitask_sketch``
  (``MultiTask(gram="sketch", sketch=d)``): the sketched path of ``geomtrace._fsdp_sketch``
  (parameters all-gathered once per step, one reduce-scatter of the update, sketches).

Each count is printed next to the formula it should equal (P parameters, P' = W ceil(P/W)):

    plain 4 P | exact 4 (K P' + P' + G K^2 + K) | sketch 4 (P + G K d + K)
    sketch_fp16 4 (P + G K + K) + 2 G K d
    fsdp_*_sketch 4 (P + P + G K d + K) (+ 8 K for a traced step's losses)
    FSDP exact: the reduce-scatters are K x (one per task backward) in fsdp_plain and
    fsdp_traced alike (FSDP reduces every backward), plus 4 (G K^2 + K) for the Gram
    all-reduce and 8 K for the losses; every task's forward and backward all-gather again.

Compute and memory: ``bwd`` is the number of task backward passes per step (the sketched
MultiTask differentiates every task twice); ``time`` the median seconds of REPEATS steps over
the baseline's (plain or fsdp_plain; 2 processes on a shared CPU: indicative only); ``memory``
the extra floats per rank, analytic (``acts``: the retained graphs of the K task forwards).

Ratios are against ``plain`` (data parallelism) and ``fsdp_plain`` (FSDP). Results also go to
``--json`` if given. This is a measurement, not a test (``tests/geomtrace`` checks the formulas
on a smaller model).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import time

import torch
from torch import nn

WORLD = 2
MODES = (
    "plain",
    "exact",
    "sketch",
    "sketch_fp16",
    "fsdp_joint",
    "fsdp_plain",
    "fsdp_traced",
    "fsdp_multitask",
    "fsdp_traced_sketch",
    "fsdp_multitask_sketch",
)
#: task backward passes per step (compute), by mode: K = one per task, 2K = two passes
BACKWARDS = {"fsdp_joint": "1 joint", "fsdp_multitask_sketch": "2K"}
REPEATS = 3
#: bytes one rank sends per byte of payload in a ring algorithm, by c10d op
RING = {"allreduce_": 2 * (WORLD - 1) / WORLD}


def build(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
        nn.Linear(width, width),
    )  # fmt: skip


def batch(task: int, rank: int, width: int):
    g = torch.Generator().manual_seed(1000 * task + rank)
    return torch.randn(4, width, generator=g) + 0.1 * task, torch.randn(4, width, generator=g)


def loss_fn(model, b):
    x, y = b
    return nn.functional.mse_loss(model(x), y)


def count(tasks: int, width: int, dim: int, rank: int) -> dict[str, int]:
    from torch.distributed.fsdp import fully_shard

    import geomtrace as gt

    names = [f"t{i}" for i in range(tasks)]
    out = {}
    for mode in MODES:
        model = build(width)
        if mode.startswith("fsdp"):
            for layer in (model[0], model[2], model[4]):
                fully_shard(layer)
            fully_shard(model)
        owner = None
        if mode in ("exact", "sketch", "sketch_fp16", "fsdp_multitask", "fsdp_multitask_sketch"):
            options = {}
            if "sketch" in mode:
                options = {"gram": "sketch", "sketch": dim}
            if mode == "sketch_fp16":
                options["sketch_dtype"] = "float16"
            owner = gt.MultiTask(model, names, gt.Sum(), groups="all_layer", **options)
        elif mode in ("fsdp_traced", "fsdp_traced_sketch"):
            options = {"sketch": dim} if mode == "fsdp_traced_sketch" else {}
            owner = gt.Tracer(model, names, groups="all_layer", **options)
        # A first uncounted step builds FSDP's lazy state (its first forward all-gathers more);
        # then one counted step and REPEATS timed ones (compute: median seconds per step).
        seconds = []
        for repeat in range(REPEATS + 2):
            warm, counted = repeat == 0, repeat == 1
            start = time.perf_counter()
            with gt.CollectiveBytes() if counted else contextlib.nullcontext() as counter:
                if mode == "fsdp_joint":  # one forward/backward of all tasks' rows
                    parts = [batch(i, rank, width) for i in range(tasks)]
                    x = torch.cat([b[0] for b in parts])
                    y = torch.cat([b[1] for b in parts])
                    (tasks * loss_fn(model, (x, y))).backward()
                elif owner is None:
                    for i in range(tasks):
                        loss_fn(model, batch(i, rank, width)).backward()
                    if mode == "plain":
                        grads = [p.grad for p in model.parameters()]
                        flat = torch.cat([g.reshape(-1) for g in grads])
                        torch.distributed.all_reduce(flat)
                else:
                    with owner.step(0) as s:
                        for i, task in enumerate(names):
                            s.backward(task, loss_fn(model, batch(i, rank, width)))
            model.zero_grad()
            if not (warm or counted):
                seconds.append(time.perf_counter() - start)
            if counted:
                out[mode] = counter.total
                out[mode + "_ring"] = round(
                    sum(n * RING.get(op, (WORLD - 1) / WORLD) for op, n in counter.bytes.items())
                )
        out[mode + "_seconds"] = sorted(seconds)[len(seconds) // 2]
    return out


def worker(rank: int, port: int, tasks: list[int], width: int, dim: int) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        results = {k: count(k, width, dim, rank) for k in tasks}
        if rank == 0:
            print(json.dumps(results))
    finally:
        torch.distributed.destroy_process_group()


def formulas(k: int, p: int, g: int, d: int) -> dict[str, int]:
    """Counted payload bytes per step (fp32, even widths: FSDP pads nothing)."""
    padded = WORLD * -(-p // WORLD)
    sketched_fsdp = 4 * (p + p + g * k * d + k)  # one all-gather, one reduce-scatter, sketches
    return {
        "plain": 4 * p,
        "exact": 4 * (k * padded + padded + g * k * k + k),
        "sketch": 4 * (p + g * k * d + k),
        "sketch_fp16": 4 * (p + g * k + k) + 2 * g * k * d,
        "fsdp_multitask_sketch": sketched_fsdp,
        "fsdp_traced_sketch": sketched_fsdp + 8 * k,  # + the traced losses' all-reduce
    }


#: extra memory per rank over a plain step of the same mode family, in floats (analytic;
#: "acts": the retained graphs of the K tasks' forwards, as a joint forward would hold)
MEMORY = {
    "plain": "0",
    "exact": "K P + P",
    "sketch": "K P + P + G K d",
    "sketch_fp16": "K P + P + G K d",
    "fsdp_joint": "0",
    "fsdp_plain": "0",
    "fsdp_traced": "K P / W",
    "fsdp_multitask": "K P / W",
    "fsdp_traced_sketch": "3 P + G K d",  # unsharded params, update buffer, a task's grad
    "fsdp_multitask_sketch": "3 P + G K d + acts",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[8, 24, 100])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--sketch", type=int, default=256)
    parser.add_argument("--json", default=None)
    parser.add_argument("--worker", type=int, nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker[0], args.worker[1], args.tasks, args.width, args.sketch)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, __file__, "--width", str(args.width), "--sketch", str(args.sketch)]
    argv += ["--tasks", *map(str, args.tasks)]
    procs = [
        subprocess.Popen([*argv, "--worker", str(r), str(port)], env=env, stdout=subprocess.PIPE)
        for r in range(WORLD)
    ]
    outputs = [p.communicate()[0].decode() for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit("a worker failed")
    results = {int(k): v for k, v in json.loads(outputs[0].strip().splitlines()[-1]).items()}
    p = sum(q.numel() for q in build(args.width).parameters())
    g, d = 3, args.sketch
    print(f"P = {p:,} parameters, G = {g} groups, d = {d}, W = {WORLD} ranks; bytes per step")
    print("(payload: the full size of each collective; ring: bytes one rank sends; ratios of")
    print(" ring bytes, against plain for data parallelism and fsdp_joint / fsdp_plain for FSDP)")
    print(" compute: task backward passes per step and median time per step / fsdp_plain's;")
    print(" memory: extra floats per rank, analytic, see docs/scaling.md)")
    print(
        f"{'K':>4} {'mode':<22} {'payload':>12} {'formula':>12} {'ring/rank':>12} "
        f"{'/ plain':>7} {'/ joint':>7} {'/ fsdp_plain':>12} {'bwd':>7} {'time':>6}  memory"
    )
    for k, counts in results.items():
        expect = formulas(k, p, g, d)
        for mode in MODES:
            formula = f"{expect[mode]:>12,}" if mode in expect else f"{'':>12}"
            ring = counts[mode + "_ring"]
            if mode.startswith("fsdp"):
                ratios = f"{'':>7} {ring / counts['fsdp_joint_ring']:>7.3f} "
                ratios += f"{ring / counts['fsdp_plain_ring']:>12.3f}"
                time_ratio = counts[mode + "_seconds"] / counts["fsdp_plain_seconds"]
            else:
                ratios = f"{ring / counts['plain_ring']:>7.3f} {'':>7} {'':>12}"
                time_ratio = counts[mode + "_seconds"] / counts["plain_seconds"]
            bwd = BACKWARDS.get(mode, "K")
            print(
                f"{k:>4} {mode:<22} {counts[mode]:>12,} {formula} {ring:>12,} {ratios} "
                f"{bwd:>7} {time_ratio:>6.2f}  {MEMORY[mode]}"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"P": p, "G": g, "d": d, "world": WORLD, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
