"""Trace per-task gradients of a data-parallel (DDP or FSDP2) training run launched with torchrun.

    torchrun --standalone --nproc_per_node 2 examples/torchrun_trace.py --out runs/ddp
    torchrun --standalone --nproc_per_node 2 examples/torchrun_trace.py --fsdp --out runs/fsdp
    torchrun --standalone --nproc_per_node 2 examples/torchrun_trace.py --fsdp --gradvac --out x
    geomtrace inspect runs/ddp        # or: geomtrace.open_trace("runs/ddp")

Every rank trains on its own share of each task's batch; the Tracer makes each task's gradient
the mean over ranks (as DDP does for the summed gradient) and rank 0 writes the trace. Uses the
gloo backend on CPU, NCCL when every rank has a GPU. ``--sketch D`` traces CountSketches of
dimension D instead of full gradients. ``--fsdp`` shards the model with FSDP2 (``fully_shard`` on
every Linear and on the root) instead of DDP: each task's backward is reduce-scattered by FSDP and
the Gram matrices come from the shards. ``--gradvac`` trains with MultiTask(GradVac) instead of
a plain summed update (the tracer records its Gram matrices and weights).
"""

from __future__ import annotations

import argparse
import logging
import os

import torch
import torch.distributed as dist
from torch import nn

import geomtrace as gt

TASKS = ["es", "fr", "ru", "ja"]


def task_batch(step: int, task_index: int, rank: int, world: int, rows: int = 32):
    """This rank's share of task ``task_index``'s global batch at ``step`` (synthetic tasks:
    each has its own input distribution and its own labelling rule)."""
    g = torch.Generator().manual_seed(1000 * step + task_index)
    x = torch.randn(rows, 16, generator=g) + 0.5 * task_index
    y = ((x[:, task_index] > 0).long() + 2 * (x[:, -1] > task_index * 0.2).long()) % 4
    share = slice(rank * rows // world, (rank + 1) * rows // world)
    return x[share], y[share]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/ddp")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--sketch", type=int, default=None)
    parser.add_argument("--fsdp", action="store_true", help="fully_shard instead of DDP")
    parser.add_argument("--gradvac", action="store_true", help="MultiTask(GradVac) updates")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)

    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")  # env:// from torchrun
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)

    torch.manual_seed(0)  # same initial weights everywhere (DDP also broadcasts rank 0's)
    model = nn.Sequential(
        nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4)
    )
    model = model.to(device)
    if args.fsdp:
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        fully_shard(model)  # the root too: every parameter is then a sharded DTensor
    else:
        model = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    # Create the Tracer after init_process_group: it picks up the group, and only rank 0 writes.
    with gt.Tracer(
        model,
        TASKS,
        groups="all_layer",
        every=args.every,
        out=args.out,
        overwrite=True,
        sketch=args.sketch,
        config={"world_size": world, "steps": args.steps, "fsdp": args.fsdp},
    ) as tracer:
        owner = tracer
        if args.gradvac:
            owner = gt.MultiTask(model, TASKS, gt.GradVac(beta=1e-2), "all_layer", tracer=tracer)
        for step in range(args.steps + 1):
            with owner.step(step) as s:  # DDP: no_sync + geomtrace's reduction; FSDP: its own
                for i, task in enumerate(TASKS):
                    x, y = task_batch(step, i, rank, world)
                    loss = nn.functional.cross_entropy(model(x.to(device)), y.to(device))
                    s.backward(task, loss)
            optimizer.step()
            optimizer.zero_grad()
    if rank == 0:
        trace = gt.open_trace(args.out)
        logging.info(
            "wrote %d snapshots of %d groups to %s", len(trace.steps), len(trace.groups), args.out
        )
        logging.info("final cosines, last layer:\n%s", trace.cosine(trace.groups[-1])[-1].round(3))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
