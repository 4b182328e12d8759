"""Benchmark: bytes in the collectives of one step, counted on 2 real gloo ranks.

    python benchmarks/communication.py                     # K = 8, 24, 100; d = 256
    python benchmarks/communication.py --tasks 8 --sketch 1024 --width 512

For each K, one step of every mode on a stack of square linear layers (``--width``, 3 layers,
groups ``all_layer``: G = 3), counted with ``gt.CollectiveBytes`` (every collective that goes
through torch's dispatcher, FSDP's included; size = the full payload of the collective):

- data parallelism (no wrapper): ``plain`` (K task backward passes, one all-reduce of .grad),
  ``exact`` (MultiTask(Sum), exact Gram: reduce-scatter of every task row, all-gather of the
  update), ``sketch`` (MultiTask(Sum, gram="sketch", sketch=d));
- FSDP2 (every layer and the root ``fully_shard``-ed): ``fsdp_plain`` (K task backward passes
  accumulated into .grad), ``fsdp_traced`` (a traced Tracer step), ``fsdp_multitask``.

Each count is printed next to the formula it should equal (P parameters, P' = W ceil(P/W)):

    plain 4 P | exact 4 (K P' + P' + G K^2 + K) | sketch 4 (P + G K d + K)
    FSDP: the forwards' all-gathers are the same in every mode; the reduce-scatters are
    K x (one per task backward) in fsdp_plain and fsdp_traced alike (FSDP reduces every
    backward), plus 4 (G K^2 + K) for the traced step's Gram all-reduce and 8 K for its losses.

Ratios are against ``plain`` (data parallelism) and ``fsdp_plain`` (FSDP). Results also go to
``--json`` if given. This is a measurement, not a test (``tests/geomtrace`` checks the formulas
on a smaller model).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys

import torch
from torch import nn

WORLD = 2
MODES = ("plain", "exact", "sketch", "fsdp_joint", "fsdp_plain", "fsdp_traced", "fsdp_multitask")
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
        if mode in ("exact", "sketch", "fsdp_multitask"):
            options = {"gram": "sketch", "sketch": dim} if mode == "sketch" else {}
            owner = gt.MultiTask(model, names, gt.Sum(), groups="all_layer", **options)
        elif mode == "fsdp_traced":
            owner = gt.Tracer(model, names, groups="all_layer")
        # A first untimed step builds FSDP's lazy state (its first forward all-gathers more).
        for warm in (True, False):
            with gt.CollectiveBytes() as counter:
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
            if not warm:
                out[mode] = counter.total
                out[mode + "_ring"] = round(
                    sum(n * RING.get(op, (WORLD - 1) / WORLD) for op, n in counter.bytes.items())
                )
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
    padded = WORLD * -(-p // WORLD)
    return {
        "plain": 4 * p,
        "exact": 4 * (k * padded + padded + g * k * k + k),
        "sketch": 4 * (p + g * k * d + k),
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
    print(
        f"{'K':>4} {'mode':<15} {'payload':>13} {'formula':>13} {'ring/rank':>13} "
        f"{'/ plain':>8} {'/ joint':>8} {'/ fsdp_plain':>12}"
    )
    for k, counts in results.items():
        expect = formulas(k, p, g, d)
        for mode in MODES:
            formula = f"{expect[mode]:>13,}" if mode in expect else f"{'':>13}"
            ring = counts[mode + "_ring"]
            if mode.startswith("fsdp"):
                ratios = f"{'':>8} {ring / counts['fsdp_joint_ring']:>8.2f} "
                ratios += f"{ring / counts['fsdp_plain_ring']:>12.3f}"
            else:
                ratios = f"{ring / counts['plain_ring']:>8.2f}"
            print(f"{k:>4} {mode:<15} {counts[mode]:>13,} {formula} {ring:>13,} {ratios}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"P": p, "G": g, "d": d, "world": WORLD, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
