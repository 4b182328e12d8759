"""Benchmark: Gram-based vectorised PCGrad/GradVac against torchjd 0.18 and a LibMTL-style loop.

    python benchmarks/aggregators.py            # full run (~2 min on 2 idle CPU cores)
    python benchmarks/aggregators.py --quick    # K=8 only, fewer repeats (~30 s)

Part 1, weights only (54 groups, K tasks): geomtrace's ``GradVac.weights`` / ``PCGrad.weights``
on a [54, K, K] float32 Gram batch, against torchjd's ``GradVacWeighting`` /
``PCGradWeighting`` called once per group, and against a LibMTL-style GradVac that works on the
flattened [K, P] gradients with a Python loop over tasks, visited tasks and groups (written here
after the published algorithm's shape: one cosine per (i, j, group) from gradient slices, a
Python ``if`` per visit). Since that baseline also computes the dot products and the combined
gradient, geomtrace's "gram + weights + combine" on the same [K, P] buffer is printed beside it.

Part 2, full training step (a ~3.9M-parameter torch.nn.Transformer, one sub-batch per task,
``all_matrix`` groups = 68 parameter tensors): the plain step (each task's forward and
``loss.backward()``, i.e. the summed-loss step) against ``MultiTask`` with Sum / GradVac, with
torchjd's GradVacWeighting plugged into MultiTask per group, and with the LibMTL-style loop
(per-task backward, gradients copied into [K, P], loop, result written to ``.grad``).
The optimizer update is left out: it is the same for all.

Every number is the median wall time of repeated runs in this process; ratios are against the
plain step measured in the same process, interleaved with the others.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torchjd.aggregation import GradVacWeighting, PCGradWeighting

from geomtrace import Aggregator, GradVac, MultiTask, PCGrad, Sum, TaskGradients, resolve_groups

VOCAB = 256


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ----------------------------------------------------------------------------------------------
# Baselines
# ----------------------------------------------------------------------------------------------


def libmtl_style_gradvac(
    grads: torch.Tensor,
    bounds: list[tuple[int, int]],
    targets: torch.Tensor,
    beta: float,
    rng: random.Random,
    only_tasks: int | None = None,
) -> torch.Tensor:
    """GradVac the way LibMTL-style trainers run it: on flattened gradients [K, P], a Python
    loop over task i, over the other tasks j in shuffled order, over groups k; cosines from
    gradient slices, a Python ``if`` on each (a host sync per visit). ``targets`` [K, K, G] is
    updated in place. Returns the combined gradient [P]. ``only_tasks``: run the outer loop
    for the first tasks only (to time a fraction and extrapolate when the full loop is slow)."""
    num_tasks = grads.shape[0]
    modified = grads.clone()
    for i in range(num_tasks if only_tasks is None else only_tasks):
        others = [j for j in range(num_tasks) if j != i]
        rng.shuffle(others)
        for j in others:
            for k, (a, b) in enumerate(bounds):
                g_i, g_j = modified[i, a:b], grads[j, a:b]
                norm_i, norm_j = g_i.norm(), g_j.norm()
                phi = (g_i @ g_j) / (norm_i * norm_j + 1e-8)
                target = targets[i, j, k]
                if phi < target:
                    scale = (
                        norm_i
                        * (target * (1 - phi**2).sqrt() - phi * (1 - target**2).sqrt())
                        / (norm_j * (1 - target**2).sqrt() + 1e-8)
                    )
                    g_i.add_(scale * g_j)
                targets[i, j, k] = (1 - beta) * target + beta * phi
    return modified.sum(0)


class TorchjdPerGroup(Aggregator):
    """torchjd 0.18's Gramian weighting applied group by group (one stateful weighting each)."""

    name = "torchjd"

    def __init__(self, make: Callable[[], nn.Module]) -> None:
        self.make = make
        self.per_group: list[nn.Module] = []

    def weights(self, gram: torch.Tensor, order: torch.Tensor | None = None) -> torch.Tensor:
        if not self.per_group:
            self.per_group = [self.make() for _ in range(gram.shape[0])]
        return torch.stack([w(gram[g]) for g, w in enumerate(self.per_group)])


# ----------------------------------------------------------------------------------------------
# Part 1: weights
# ----------------------------------------------------------------------------------------------


def bench_weights(num_tasks: int, num_groups: int, numel: int, repeats: int, libmtl: bool) -> None:
    gen = torch.Generator().manual_seed(num_tasks)
    # Group sizes spread over three orders of magnitude, like a Transformer's parameter tensors.
    sizes = torch.logspace(2, 5, num_groups)
    sizes = (sizes / sizes.sum() * numel).long().clamp(min=16)
    bounds, start = [], 0
    for s in sizes.tolist():
        bounds.append((start, start + s))
        start += s
    shared = torch.randn(start, generator=gen)
    grads = 0.5 * shared + torch.randn(num_tasks, start, generator=gen)
    grads[1::3] *= -1  # every third task conflicts with the shared direction
    grams = torch.stack([grads[:, a:b] @ grads[:, a:b].T for a, b in bounds])

    ours_gv, ours_pc = GradVac(beta=1e-2), PCGrad()
    t_ours_gv = timed(lambda: ours_gv.weights(grams), repeats * 5)
    t_ours_pc = timed(lambda: ours_pc.weights(grams), repeats * 5)
    tj_gv = TorchjdPerGroup(lambda: GradVacWeighting(beta=1e-2))
    tj_pc = TorchjdPerGroup(PCGradWeighting)
    t_tj_gv = timed(lambda: tj_gv.weights(grams), repeats)
    t_tj_pc = timed(lambda: tj_pc.weights(grams), repeats)

    # Same work as the LibMTL-style loop: dots, weights and the combined gradient from [K, P].
    groups = [_FakeGroup(b - a) for a, b in bounds]
    capture = TaskGradients(groups, num_tasks, device="cpu")
    capture.reset()
    for t in range(num_tasks):  # one "parameter" per group: its slice of the task's row
        capture.add(t, [grads[t, a:b] for a, b in bounds])
    full_gv = GradVac(beta=1e-2)
    t_ours_full = timed(lambda: capture.combine(full_gv.weights(capture.gram())), repeats)

    print(
        f"\n[weights] {num_groups} groups x K={num_tasks} tasks (P={start / 1e6:.1f}M for the gradient-based rows)"
    )
    print(f"  {'':44s} {'ms':>9s} {'vs ours':>9s}")
    print(f"  {'geomtrace GradVac.weights (vectorised)':44s} {t_ours_gv * 1e3:9.2f} {1:9.1f}x")
    print(
        f"  {'torchjd GradVacWeighting, per group':44s} {t_tj_gv * 1e3:9.2f} {t_tj_gv / t_ours_gv:9.1f}x"
    )
    print(
        f"  {'geomtrace PCGrad.weights (vectorised)':44s} {t_ours_pc * 1e3:9.2f} {t_ours_pc / t_ours_gv:9.1f}x"
    )
    print(
        f"  {'torchjd PCGradWeighting, per group':44s} {t_tj_pc * 1e3:9.2f} {t_tj_pc / t_ours_gv:9.1f}x"
    )
    print(
        f"  {'geomtrace gram+GradVac+combine on [K, P]':44s} {t_ours_full * 1e3:9.2f} {t_ours_full / t_ours_gv:9.1f}x"
    )
    if libmtl:
        targets = torch.zeros(num_tasks, num_tasks, num_groups)
        rng = random.Random(0)
        # The loop's cost is linear in the outer tasks: beyond K=8, time 4 of them and scale.
        part = None if num_tasks <= 8 else 4
        t_lib = timed(
            lambda: libmtl_style_gradvac(grads, bounds, targets, 1e-2, rng, only_tasks=part),
            1,
            warmup=0,
        )
        label = "LibMTL-style GradVac loop on [K, P]"
        if part is not None:
            t_lib *= num_tasks / part
            label += f" (x{num_tasks}/{part})"
        print(
            f"  {label:44s} {t_lib * 1e3:9.2f} {t_lib / t_ours_gv:9.1f}x"
            f"   ({t_lib / t_ours_full:.0f}x geomtrace gram+GradVac+combine)"
        )


class _FakeGroup:
    """Just what TaskGradients needs from a ParameterGroup: the flat layout."""

    def __init__(self, numel: int) -> None:
        self.numel = numel
        self.params = [torch.empty(numel)]


# ----------------------------------------------------------------------------------------------
# Part 2: full training step
# ----------------------------------------------------------------------------------------------


class SmallTranslator(nn.Module):
    """Byte-level encoder-decoder: torch.nn.Transformer(d=256, 4 heads, 2+2 layers, ff=1024)."""

    def __init__(self, d_model: int = 256) -> None:
        super().__init__()
        self.src_embed = nn.Embedding(VOCAB, d_model)
        self.tgt_embed = nn.Embedding(VOCAB, d_model)
        self.transformer = nn.Transformer(
            d_model,
            4,
            num_encoder_layers=2,
            num_decoder_layers=2,
            dim_feedforward=1024,
            dropout=0.0,
            batch_first=True,
        )
        self.out = nn.Linear(d_model, VOCAB)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
        return self.out(self.transformer(self.src_embed(src), self.tgt_embed(tgt), tgt_mask=mask))


def make_batches(
    num_tasks: int, batch: int, length: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for t in range(num_tasks):
        # Each task its own byte range on the source side: different "languages".
        src = torch.randint(32 + 4 * t, 96 + 4 * t, (batch, length), generator=gen)
        tgt = torch.randint(32, 128, (batch, length), generator=gen)
        out.append((src, tgt))
    return out


def task_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    src, tgt = batch
    logits = model(src, tgt[:, :-1])
    return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tgt[:, 1:].reshape(-1))


def bench_step(num_tasks: int, repeats: int, batch: int, length: int, libmtl: bool) -> None:
    torch.manual_seed(0)
    model = SmallTranslator()
    numel = sum(p.numel() for p in model.parameters())
    batches = make_batches(num_tasks, batch, length)
    tasks = [f"t{i}" for i in range(num_tasks)]

    def plain() -> None:
        model.zero_grad(set_to_none=True)
        for b in batches:
            task_loss(model, b).backward()

    def with_mt(mt: MultiTask) -> Callable[[], None]:
        def run() -> None:
            model.zero_grad(set_to_none=True)
            with mt.step(0) as s:
                for task, b in zip(tasks, batches, strict=True):
                    s.backward(task, task_loss(model, b))

        return run

    mt_sum = MultiTask(model, tasks, Sum(), groups="all_matrix")
    mt_gv = MultiTask(model, tasks, GradVac(beta=1e-2), groups="all_matrix")
    variants: dict[str, Callable[[], None]] = {
        "plain summed-loss step (baseline)": plain,
        "MultiTask(Sum), all_matrix": with_mt(mt_sum),
        "MultiTask(GradVac), all_matrix": with_mt(mt_gv),
    }
    if libmtl:
        mt_tj = MultiTask(
            model, tasks, TorchjdPerGroup(lambda: GradVacWeighting(beta=1e-2)), groups="all_matrix"
        )
        variants["MultiTask + torchjd GradVacWeighting/group"] = with_mt(mt_tj)
        groups = resolve_groups(model, "all_matrix")
        params = [p for g in groups for p in g.params]
        bounds, start = [], 0
        for g in groups:
            bounds.append((start, start + g.numel))
            start += g.numel
        flat = torch.zeros(num_tasks, start)
        targets = torch.zeros(num_tasks, num_tasks, len(groups))
        rng = random.Random(0)

        def libmtl_step() -> None:
            for t, b in enumerate(batches):
                model.zero_grad(set_to_none=True)
                task_loss(model, b).backward()
                flat[t] = torch.cat([p.grad.reshape(-1) for p in params])
            combined = libmtl_style_gradvac(flat, bounds, targets, 1e-2, rng)
            for p, g in zip(params, combined.split([p.numel() for p in params]), strict=True):
                p.grad = g.view_as(p).clone()

        variants["LibMTL-style GradVac loop, all_matrix"] = libmtl_step

    # Interleave the variants so that load drift on a shared machine hits all of them alike.
    for fn in variants.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            if name.startswith("LibMTL") and len(times[name]) >= 1:
                continue  # slow: one timed run is enough
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["plain summed-loss step (baseline)"])
    print(
        f"\n[step] K={num_tasks}, {numel / 1e6:.2f}M params, {len(mt_gv.groups)} all_matrix groups, "
        f"sub-batch {batch}x{length} tokens per task, median of {repeats}"
    )
    print(f"  {'':44s} {'s':>8s} {'vs plain':>9s}")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"  {name:44s} {t:8.3f} {t / base:8.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="K=8 only, fewer repeats (~30 s)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    task_counts = [8] if args.quick else [8, 24]
    for k in task_counts:
        bench_weights(
            k, num_groups=54, numel=1_000_000, repeats=3 if args.quick else 5, libmtl=True
        )
    for k in task_counts:
        bench_step(k, repeats=3, batch=16, length=32, libmtl=k == 8)


if __name__ == "__main__":
    main()
