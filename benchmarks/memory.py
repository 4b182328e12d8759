"""Benchmark: peak extra memory of a traced step over the untraced step (exact and sketch mode).

    python benchmarks/memory.py                 # P ~ 8.4M parameters, K = 4 tasks, d = 1024
    python benchmarks/memory.py --params 2048 --tasks 8 --sketch 4096

Baseline: the *untraced* step of the same Tracer (each task's forward and ``loss.backward()``,
``.grad`` starting at None), measured in the same process just before. Each mode runs in a fresh
subprocess so peaks do not mix:

- CPU: peak resident set size (``ru_maxrss``) with ``MALLOC_MMAP_THRESHOLD_=65536`` so every
  large tensor is its own mmap and freeing it returns the memory (RSS then follows live tensor
  bytes; pages and Python objects add a little noise);
- CUDA (when available): ``torch.cuda.max_memory_allocated`` (exact tensor bytes).

The extra peak is printed in floats and as a ratio to its bound: exact mode <= (K + 1) P
(the [K, P] buffer plus one task's gradient from ``torch.autograd.grad``), sketch mode
<= K d G + P (sketches plus hashing scratch; the copy-free path allocates no gradient copy).
The model is a stack of square linear layers with a tiny batch, so activations are negligible
next to P and the step's memory is parameters and gradients.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
from torch import nn


def build(width: int, layers: int, tasks: int):
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
    batches = [torch.randn(2, width) for _ in range(tasks)]
    return model, batches


def peak_bytes(device: str) -> int:
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def one_mode(mode: str, width: int, layers: int, tasks: int, sketch: int, device: str) -> dict:
    import geomtrace as gt

    model, batches = build(width, layers, tasks)
    model.to(device)
    batches = [b.to(device) for b in batches]
    names = [f"t{i}" for i in range(tasks)]
    traced_step = 100
    tracer = gt.Tracer(
        model,
        names,
        groups="all_layer",
        every=[traced_step],
        sketch=sketch if mode == "sketch" else None,
    )
    P = sum(p.numel() for p in model.parameters())

    def step(n: int) -> float:
        start = time.perf_counter()
        with tracer.step(n) as s:
            for name, x in zip(names, batches, strict=True):
                s.backward(name, model(x).square().mean())
        if device == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        model.zero_grad(set_to_none=True)
        return elapsed

    for n in range(1, 3):  # warm-up: allocator pools, lazy inits
        step(n)
    untraced_time = min(step(n) for n in range(3, 6))
    base = peak_bytes(device)
    traced_time = step(traced_step) if mode != "untraced" else step(6)
    extra = max(0, peak_bytes(device) - base) / 4  # in float32s
    assert mode == "untraced" or tracer.last_gram is not None
    return {
        "mode": mode,
        "P": P,
        "G": len(tracer.groups),
        "extra_floats": extra,
        "untraced_s": untraced_time,
        "traced_s": traced_time,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--params", type=int, default=2048, help="layer width (P ~ width^2 x layers)"
    )
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--sketch", type=int, default=1024)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        torch.set_num_threads(1)
        result = one_mode(
            args.child, args.params, args.layers, args.tasks, args.sketch, args.device
        )
        print(json.dumps(result))
        return
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    results = {}
    for mode in ("untraced", "exact", "sketch"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", mode, *sys.argv[1:]],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    P, G, K, d = results["exact"]["P"], results["exact"]["G"], args.tasks, args.sketch
    print(f"device={args.device}  P={P:,} parameters  K={K} tasks  G={G} groups  sketch d={d}")
    print("peak extra memory over the untraced step, in float32s (measured in the same process):")
    bounds = {"untraced": None, "exact": (K + 1) * P, "sketch": K * d * G + P}
    for mode, r in results.items():
        extra, bound = r["extra_floats"], bounds[mode]
        line = f"  {mode:9s} extra = {extra:14,.0f} = {extra / P:6.3f} P"
        if bound is not None:
            line += f"   bound {bound:14,.0f}   extra/bound = {extra / bound:.3f}"
        line += f"   time traced/untraced = {r['traced_s'] / r['untraced_s']:.2f}"
        print(line)


if __name__ == "__main__":
    main()
