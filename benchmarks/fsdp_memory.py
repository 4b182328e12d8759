"""Benchmark: peak memory per rank of one FSDP2 step, by path, on 2 real gloo ranks (CPU).

    python benchmarks/fsdp_memory.py                    # width 1024, 4 layers, K = 8, d = 256
    python benchmarks/fsdp_memory.py --tasks 24 --rows 64

Each rank builds a stack of ``--layers`` square Linear layers (each and the root
``fully_shard``-ed; P parameters), runs one uncounted step of the mode, then measures one step:
the peak resident set size during the step (``VmHWM`` after resetting it through
``/proc/self/clear_refs``) minus the resident size just before it, with
``MALLOC_MMAP_THRESHOLD_=65536`` so every large tensor is its own mapping and freeing it
returns the memory (RSS then follows live tensor bytes, plus a little noise). Modes:

- ``fsdp_joint``: one forward/backward of every task's rows (the plain FSDP step);
- ``fsdp_plain``: K per-task forward/backward passes accumulated into ``.grad``;
- ``fsdp_multitask``: the exact ``MultiTask(Sum)`` (FSDP reduce-scatters every task);
- ``fsdp_traced_sketch``: a traced ``Tracer(sketch=d)`` step (``geomtrace._fsdp_sketch``);
- ``fsdp_multitask_sketch``: ``MultiTask(Sum, gram="sketch", sketch=d)`` (two passes).

Printed: the extra peak in floats and in units of P, next to the analytic extra memory of
docs/scaling.md (fp32 everywhere here: the sketched path holds the unsharded parameters (P),
the update buffer (P) and one task's gradient in flight (P); the exact MultiTask its [K, P/W]
buffer) and the activations the step keeps (``--rows`` rows per task of width floats per layer
input: the two-pass MultiTask retains all K tasks' graphs). This is a measurement on one
machine, not a test.
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
MODES = (
    "fsdp_plain",
    "fsdp_joint",
    "fsdp_multitask",
    "fsdp_traced_sketch",
    "fsdp_multitask_sketch",
)
#: analytic extra floats of each mode beyond its activations (docs/scaling.md), in units of P
BOUND = {
    "fsdp_joint": "0",
    "fsdp_plain": "0",
    "fsdp_multitask": "K/W",
    "fsdp_traced_sketch": "3 (less the unit plain FSDP holds at a time)",
    "fsdp_multitask_sketch": "3 + acts (idem)",
}


def status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def measure(mode: str, width: int, layers: int, tasks: int, rows: int, dim: int, rank: int):
    from torch.distributed.fsdp import fully_shard

    import geomtrace as gt

    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    names = [f"t{i}" for i in range(tasks)]
    owner = None
    if mode == "fsdp_multitask":
        owner = gt.MultiTask(model, names, gt.Sum(), groups="all_layer")
    elif mode == "fsdp_multitask_sketch":
        owner = gt.MultiTask(model, names, gt.Sum(), groups="all_layer", gram="sketch", sketch=dim)
    elif mode == "fsdp_traced_sketch":
        owner = gt.Tracer(model, names, groups="all_layer", sketch=dim)
    g = torch.Generator().manual_seed(rank)
    batches = [torch.randn(rows, width, generator=g) for _ in names]

    def loss(x):
        return model(x).square().mean()

    out = {}
    # The baseline: the built model before any step; the uncounted first step allocates FSDP's
    # lazy state and the mode's persistent buffers (the exact capture's [K, S] buffer), which
    # the counted step's peak then includes.
    before = status_kb("VmRSS")
    for counted in (False, True):
        model.zero_grad(set_to_none=True)
        reset_peak()
        if mode == "fsdp_joint":
            (tasks * loss(torch.cat(batches))).backward()
        elif owner is None:
            for x in batches:
                loss(x).backward()
        else:
            with owner.step(0) as s:
                for task, x in zip(names, batches, strict=True):
                    s.backward(task, loss(x))
        if counted:
            out = {"extra_bytes": (status_kb("VmHWM") - before) * 1024}
    out["P"] = sum(p.numel() for p in model.parameters())
    return out


def worker(rank: int, port: int, args) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        result = measure(
            args.mode, args.width, args.layers, args.tasks, args.rows, args.sketch, rank
        )
        print(json.dumps({"rank": rank, **result}))
    finally:
        torch.distributed.destroy_process_group()


def run_mode(mode: str, args) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    argv = [sys.executable, __file__, "--mode", mode]
    for name in ("width", "layers", "tasks", "rows", "sketch"):
        argv += [f"--{name}", str(getattr(args, name))]
    procs = [
        subprocess.Popen([*argv, "--worker", str(r), str(port)], env=env, stdout=subprocess.PIPE)
        for r in range(WORLD)
    ]
    outputs = [p.communicate()[0].decode() for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a worker failed in mode {mode}")
    return [json.loads(o.strip().splitlines()[-1]) for o in outputs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--sketch", type=int, default=256)
    parser.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker", type=int, nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker[0], args.worker[1], args)
        return
    acts = args.tasks * args.rows * args.width * args.layers  # layer inputs kept, all tasks
    print(
        f"{args.layers} x Linear({args.width}, {args.width}), K = {args.tasks}, "
        f"{args.rows} rows per task, d = {args.sketch}, W = {WORLD} gloo ranks; extra peak RSS "
        f"per rank during one step (max over ranks); acts = K rows width layers = {acts:,} floats"
    )
    print("(over the built model's RSS; '- plain': minus fsdp_plain's, the path's own cost)")
    print(f"{'mode':<24} {'extra floats':>14} {'/ P':>7} {'- plain, / P':>13}  analytic (/ P)")
    plain = None
    for mode in MODES:
        results = run_mode(mode, args)
        p = results[0]["P"]
        extra = max(r["extra_bytes"] for r in results) / 4
        if mode == "fsdp_plain":
            plain = extra
        own = f"{(extra - plain) / p:>13.2f}" if plain is not None else f"{'':>13}"
        print(f"{mode:<24} {extra:>14,.0f} {extra / p:>7.2f} {own}  {BOUND[mode]}")


if __name__ == "__main__":
    main()
