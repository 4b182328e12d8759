"""Benchmark: how close MultiTask(gram="sketch", sketch=d) comes to the exact MultiTask.

    python benchmarks/sketch_aggregation.py                      # recipe "quick", GradVac
    python benchmarks/sketch_aggregation.py --steps 8 --dims 256 1024 4096 16384

On the embedded recipe's model and batches (one process: the sketched path is linear, so two
ranks give the same numbers; ``tests/geomtrace/test_distributed.py`` checks that):

1. Weight error along the exact trajectory. Each step, the exact MultiTask's task gradients
   (its [K, P] buffer) are also sketched with d = each of ``--dims``; a separate aggregator per
   d (its own GradVac targets) turns the sketched Gram into weights. Printed: the max |w~ - w|
   over groups and tasks, and the relative update error |sum_i (w~_i - w_i) g_i| / |sum_i w_i g_i|
   (the only error of the sketched path: the combination itself uses the exact gradients),
   averaged over steps.
2. Final-parameter difference. Separate runs with gram="sketch", sketch=d from the same initial
   model and batches; printed |theta_d - theta_exact| / |theta_exact - theta_0| after
   ``--steps`` SGD steps.

Expected: errors fall roughly as 1 / sqrt(d) (the Gram entries' standard deviation is at most
sqrt(2 / d) |g_i| |g_j|).
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import torch

import geomtrace as gt
import geomtrace.recipe as recipe_api


def aggregator(name: str) -> gt.Aggregator:
    return {"gradvac": lambda: gt.GradVac(beta=1e-2, seed=0), "pcgrad": lambda: gt.PCGrad(seed=0)}[
        name
    ]()


def flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def train(rec, model, steps: int, agg: str, groups: str, dim=None, hook=None) -> torch.Tensor:
    options = {} if dim is None else {"gram": "sketch", "sketch": dim, "seed": 0}
    mt = gt.MultiTask(model, rec.tasks, aggregator(agg), groups=groups, **options)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(0)
    for step in range(steps):
        batches = rec.sample(step, generator)
        with mt.step(step) as s:
            for task in rec.tasks:
                s.backward(task, rec.loss(model, task, batches[task]))
        if hook is not None:
            hook(mt, s)
        opt.step()
        opt.zero_grad()
    return flat_params(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 256, 1024, 4096])
    parser.add_argument("--aggregator", default="gradvac", choices=["gradvac", "pcgrad"])
    parser.add_argument("--groups", default="enc_dec")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = recipe_api.preset(args.preset)
    config.dropout = 0.0  # the runs must see the same function
    rec, _ = recipe_api.make_recipe(config)
    start = copy.deepcopy(rec.model.state_dict())
    theta0 = flat_params(rec.model)

    sketchers = {}
    aggs = {d: aggregator(args.aggregator) for d in args.dims}
    errors = {d: {"w": [], "update": []} for d in args.dims}

    def compare(mt, s):
        rows = mt.capture.buffer[: len(rec.tasks)]
        offsets = mt.capture.offsets
        exact = [s.weights[k] @ rows[:, a:b] for k, (a, b) in enumerate(offsets)]
        norm = torch.cat(exact).norm()
        for d in args.dims:
            sketch = sketchers.setdefault(d, gt.CountSketch(offsets, d, seed=0))
            y = torch.stack(
                [sketch.sketch_rows(k, rows[:, a:b]) for k, (a, b) in enumerate(offsets)]
            )
            w = aggs[d].weights(y @ y.transpose(1, 2))
            diff = torch.cat(
                [(w[k] - s.weights[k]) @ rows[:, a:b] for k, (a, b) in enumerate(offsets)]
            )
            errors[d]["w"].append((w - s.weights).abs().max().item())
            errors[d]["update"].append((diff.norm() / norm).item())

    t0 = time.perf_counter()
    theta_exact = train(rec, rec.model, args.steps, args.aggregator, args.groups, hook=compare)
    moved = (theta_exact - theta0).norm().item()
    p = theta0.numel()
    print(
        f"recipe {args.preset!r}: K = {len(rec.tasks)} tasks, P = {p:,}, groups {args.groups!r}, "
        f"{args.aggregator}, {args.steps} SGD steps (exact run {time.perf_counter() - t0:.0f} s)"
    )
    print(f"{'d':>7} {'max|w~-w|':>10} {'upd err':>9} {'x sqrt(d)':>9} {'param diff':>11}")
    for d in args.dims:
        rec.model.load_state_dict(start)
        theta = train(rec, rec.model, args.steps, args.aggregator, args.groups, dim=d)
        w_err = max(errors[d]["w"])
        upd = sum(errors[d]["update"]) / len(errors[d]["update"])
        rel = (theta - theta_exact).norm().item() / moved
        print(f"{d:>7} {w_err:>10.4f} {upd:>9.4f} {upd * math.sqrt(d):>9.3f} {rel:>11.5f}")
    print("(upd err: mean over steps of |sum (w~ - w) g| / |sum w g|; param diff: relative to")
    print(" |theta_exact - theta_0|, after the last step)")


if __name__ == "__main__":
    main()
