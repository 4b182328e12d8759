"""Cost of tracing: median traced step / median untraced step, in one process run.

Model: a byte-level encoder-decoder Transformer (torch.nn.Transformer, ~3.9M parameters);
K tasks, one sub-batch per task (its own forward and backward), AdamW step included in both.
Baseline: the same loop with ``Tracer.step`` on a step the schedule does not trace (which is
plain ``loss.backward()``). Groups: ``all_matrix`` (the finest granularity, the most Gram matmuls).
Traced and untraced steps are interleaved so that drift in machine load hits both alike.

    python benchmarks/capture.py            # K = 8 and 24
    python benchmarks/capture.py --tasks 8 --repeats 5 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import geomtrace as gt


class ByteTransformer(nn.Module):
    def __init__(self, d_model=256, layers=2, ff=1024, vocab=260):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.transformer = nn.Transformer(
            d_model, 4, layers, layers, ff, dropout=0.0, batch_first=True
        )
        self.out = nn.Linear(d_model, vocab)

    def loss(self, src, tgt):
        logits = self.out(self.transformer(self.embed(src), self.embed(tgt[:, :-1])))
        return nn.functional.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten())


def measure(num_tasks: int, repeats: int, rows: int, length: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = ByteTransformer()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tasks = [f"lang{i}" for i in range(num_tasks)]
    g = torch.Generator().manual_seed(0)
    batches = {
        t: (
            torch.randint(0, 260, (rows, length), generator=g),
            torch.randint(0, 260, (rows, length), generator=g),
        )
        for t in tasks
    }
    tracer = gt.Tracer(model, tasks, groups="all_matrix", every=2)  # even steps traced

    def one_step(step):
        start = time.perf_counter()
        with tracer.step(step) as s:
            for task, (src, tgt) in batches.items():
                s.backward(task, model.loss(src, tgt))
        optimizer.step()
        optimizer.zero_grad()
        return time.perf_counter() - start

    one_step(0), one_step(1)  # warm-up: allocator, buffer allocation
    traced, plain = [], []
    for i in range(repeats):
        traced.append(one_step(2 * i + 2))
        plain.append(one_step(2 * i + 3))
    print(
        f"  params {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M, "
        f"{len(tracer.groups)} groups, K={num_tasks}: traced {statistics.median(traced):.3f} s, "
        f"untraced {statistics.median(plain):.3f} s"
    )
    return statistics.median(traced), statistics.median(plain)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, nargs="+", default=[8, 24])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rows", type=int, default=8, help="rows per task sub-batch")
    parser.add_argument("--length", type=int, default=32, help="bytes per row")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"capture overhead, torch {torch.__version__}, {args.threads} threads")
    for k in args.tasks:
        traced, plain = measure(k, args.repeats, args.rows, args.length)
        print(f"K={k:3d}  traced/untraced = {traced / plain:.3f}  (goal <= 1.15)")


if __name__ == "__main__":
    main()
