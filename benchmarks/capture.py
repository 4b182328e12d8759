"""Cost of tracing: median traced step / median untraced step, in one process run.

Model: a byte-level encoder-decoder Transformer (torch.nn.Transformer, ~3.9M parameters);
K tasks, one sub-batch per task (its own forward and backward), AdamW step included in both.
Baseline: the same loop with ``Tracer.step`` on a step the schedule does not trace (which is
plain ``loss.backward()``). Groups: ``all_matrix`` (the finest granularity, the most Gram matmuls).
Traced and untraced steps are interleaved so that drift in machine load hits both alike.

Also measured, in the same run: ``halves=True`` (each task's sub-batch fed as two micro-batches,
alternating halves a, b) against the plain Tracer and the untraced step with the same two
micro-batches, and ``window=4`` (every step of a 4-step window captures; the last writes the
snapshot) against the untraced and plain traced steps.

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


def measure(num_tasks: int, repeats: int, rows: int, length: int) -> dict[str, float]:
    """Median step times (s) of every mode, interleaved in one process run."""
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
    half = rows // 2
    plain = gt.Tracer(model, tasks, groups="all_matrix", every=2)  # even steps traced
    halves = gt.Tracer(model, tasks, groups="all_matrix", every=2, halves=True)
    window = gt.Tracer(model, tasks, groups="all_matrix", every=8, window=4)  # 8i..8i+3

    def one_step(tracer, step, micro):
        start = time.perf_counter()
        with tracer.step(step) as s:
            for task, (src, tgt) in batches.items():
                if micro == 1:
                    s.backward(task, model.loss(src, tgt))
                else:  # two micro-batches per task (the halves' default rule alternates them)
                    s.backward(task, model.loss(src[:half], tgt[:half]) * 0.5)
                    s.backward(task, model.loss(src[half:], tgt[half:]) * 0.5)
        optimizer.step()
        optimizer.zero_grad()
        return time.perf_counter() - start

    for tracer, micro in ((plain, 1), (plain, 2), (halves, 2)):  # warm-up: allocations
        one_step(tracer, 0, micro), one_step(tracer, 1, micro)
    for step in range(8):
        one_step(window, step, 1)
    times: dict[str, list[float]] = {k: [] for k in MODES}
    for i in range(repeats):
        times["untraced"].append(one_step(plain, 2 * i + 3, 1))
        times["traced"].append(one_step(plain, 2 * i + 2, 1))
        times["untraced_2mb"].append(one_step(plain, 2 * i + 3, 2))
        times["traced_2mb"].append(one_step(plain, 2 * i + 2, 2))
        times["halves"].append(one_step(halves, 2 * i + 2, 2))
        # A whole window (steps t..t+3 captured, the last one writes the snapshot): its median
        # is over every captured step, the closing one included.
        start = 8 * (i + 1)
        times["window"] += [one_step(window, start + k, 1) for k in range(4)]
    medians = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"  params {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M, "
        f"{len(plain.groups)} groups, K={num_tasks}: "
        + ", ".join(f"{k} {v:.3f} s" for k, v in medians.items())
    )
    return medians


MODES = ("untraced", "traced", "untraced_2mb", "traced_2mb", "halves", "window")


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
        t = measure(k, args.repeats, args.rows, args.length)
        print(
            f"K={k:3d}  traced/untraced = {t['traced'] / t['untraced']:.3f} (goal <= 1.15)"
            f"  | 2 micro-batches per task: traced/untraced = "
            f"{t['traced_2mb'] / t['untraced_2mb']:.3f}, halves=True traced/untraced = "
            f"{t['halves'] / t['untraced_2mb']:.3f}, halves/plain traced = "
            f"{t['halves'] / t['traced_2mb']:.3f}"
            f"  | window=4: captured step/untraced = {t['window'] / t['untraced']:.3f}, "
            f"window step/plain traced = {t['window'] / t['traced']:.3f}"
        )


if __name__ == "__main__":
    main()
