"""Snapshot designs on the default recipe: reliability, cost, drift (issue 11 items 2 and 4).

One training run of the default recipe (24 languages, X->En, 400 steps, seed 0) measures every
design on the *same* trajectory at the snapshot steps t = 0, 20, ..., 380 (``every``), so the
designs differ only in how a snapshot's gradient is taken:

- ``a``: today's snapshot, the step's 12-row training batch (halves: rows 0-5 and 6-11, one
  forward, two backward passes);
- ``w4``, ``w8``, ``w20``: windows, each task's training gradients summed over steps
  t..t+m-1 (halves: even and odd steps of the window); ``w20`` with ``every=20`` uses every
  step's gradient;
- ``p80``, ``p160``: the fixed multi-way-parallel probe strings (eval mode, the same English
  content in every language), halves = two disjoint interleaved blocks of the length-sorted
  strings (only 179 strings of at
  most 40 bytes are translated in all 24 languages: 320 is not available);
- ``x48``, ``x96``, ``x192``: a fresh batch of uniform training rows per language drawn only
  for the snapshot (eval mode), halves = two disjoint blocks.

The gradient capture is this script's own (each half a "pseudo-task", 2K rows of a Gram): it
needs nothing from the Tracer, and the statistics are those of ``Trace.reliability`` and
``Trace.cosine(corrected=True)``:

- reliability of task i: r_i = 4 a_i.b_i / |a_i + b_i|^2 (the signal fraction of the
  snapshot gradient g = a + b; Spearman-Brown of the split-half products); per snapshot the
  mean over tasks; the table gives the median over snapshots after step 0 and over steps >= 200;
- mean cross-language cosine: raw, mean over snapshots after step 0 of the mean off-diagonal
  cos(g_i, g_j); corrected, per pair the ratio of means over those snapshots of
  g_i.g_j / sqrt(4 a_i.b_i 4 a_j.b_j), each snapshot's products divided by its mean |g|^2 so
  that early, large gradients do not dominate;
- drift (windows): sum_i f_i.s_i / sum_i a_i.b_i, f and s the first and second half of the
  window (1: the window's two halves share their signal as much as even and odd steps do;
  below 1: the gradient changed within the window); and |theta_{t+m} - theta_t| /
  |theta_{t+20} - theta_t|;
- cost: the wall time of a whole 400-step run with that design, estimated from this process's
  own timings of each piece (median joint untraced step, per-task steps with and without the
  half split, the snapshot-only forwards and backwards): the run's measured pieces, same load.

Results (seed 0; the table and what it decided are in geomtrace/recipe/README.md):
benchmarks/snapshot_design.json (+ .log) and benchmarks/snapshot_design_shared.json.

    python benchmarks/snapshot_design.py --json benchmarks/snapshot_design.json
    python benchmarks/snapshot_design.py --set bucket=shared --designs a,w4,w8 --json shared.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from geomtrace.recipe.config import RecipeConfig
from geomtrace.recipe.embedded import make_probe, make_recipe, split_half_losses
from geomtrace.recipe.training import make_optimizer

GROUPS = {  # name -> parameter-name predicate
    "all": lambda n: True,
    "embedding": lambda n: n.startswith(("embed", "pos")),
    "encoder": lambda n: n.startswith("encoder."),
    "encoder.layers.0": lambda n: n.startswith("encoder.layers.0."),
    "decoder": lambda n: n.startswith("decoder."),
}
PROBE_BLOCK = 40  # probe strings per block: p80 = 40 + 40, p160 = 80 + 80
EXTRA_BLOCK = 24  # rows per block of the snapshot-only batch: x48, x96, x192


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--designs", default="a,w4,w8,w20,p80,p160,x48,x96,x192")
    p.add_argument("--json", default="", help="write the table as JSON here")
    return p.parse_args()


class Slots:
    """Per-task flat gradients [S, K, P], parameters ordered so that each group is a column
    range (the embedding, encoder, decoder groups are contiguous)."""

    def __init__(self, model, num_slots: int, num_tasks: int) -> None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        order = sorted(range(len(named)), key=lambda i: _group_rank(named[i][0]))
        self.params = [named[i][1] for i in order]
        names = [named[i][0] for i in order]
        sizes = [p.numel() for p in self.params]
        bounds = np.cumsum([0, *sizes])
        self.ranges = {}
        for group, keep in GROUPS.items():
            cols = [i for i, n in enumerate(names) if keep(n)]
            lo, hi = int(bounds[cols[0]]), int(bounds[cols[-1] + 1])
            assert all(keep(names[i]) for i in range(cols[0], cols[-1] + 1)), group
            self.ranges[group] = (lo, hi)
        self.buf = torch.zeros(num_slots, num_tasks, int(bounds[-1]))

    def add(self, slot: int, task: int, grads) -> None:
        row = self.buf[slot, task]
        offset = 0
        for p, g in zip(self.params, grads, strict=True):
            n = p.numel()
            if g is not None:
                row[offset : offset + n] += g.reshape(-1)
            offset += n

    def gram(self, slots: list[int]) -> dict[str, np.ndarray]:
        """{group: [S, K, S, K]} products of the listed slots."""
        s, k = len(slots), self.buf.shape[1]
        x = self.buf[slots].reshape(s * k, -1)
        out = {}
        for group, (lo, hi) in self.ranges.items():
            part = x[:, lo:hi]
            out[group] = (part @ part.T).double().numpy().reshape(s, k, s, k)
        return out


def _group_rank(name: str) -> tuple[int, str]:
    if name.startswith(("embed", "pos")):
        return (0, "")
    if name.startswith("encoder.layers.0."):
        return (1, "")
    if name.startswith("encoder."):
        return (2, "")
    return (3, "") if name.startswith("decoder.") else (4, "")


def combine(gram: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """[K, K] products (sum_p u_p slot_p)_i . (sum_q v_q slot_q)_j."""
    return np.einsum("p,q,piqj->ij", u, v, gram)


def design_stats(gram: np.ndarray, ca, cb, cf=None, cs=None) -> dict:
    """Per snapshot: reliability per task, the Gram of g = a + b, a.b, and drift products."""
    ca, cb = np.asarray(ca, float), np.asarray(cb, float)
    ab = np.diagonal(combine(gram, ca, cb)).copy()
    g = combine(gram, ca + cb, ca + cb)
    out = {"ab": ab, "g": g, "rel": 4 * ab / np.diagonal(g)}
    if cf is not None:
        out["fs"] = np.diagonal(combine(gram, np.asarray(cf, float), np.asarray(cs, float)))
    return out


def summarize(per_step: dict[int, dict[str, dict]], groups) -> dict:
    steps = sorted(per_step)
    later = [s for s in steps if s > 0] or steps
    late = [s for s in steps if s >= 200] or later[-1:]
    out = {}
    for group in groups:
        rel = {s: float(np.mean(per_step[s][group]["rel"])) for s in steps}
        entry = {
            "reliability_median": statistics.median(rel[s] for s in later),
            "reliability_late_median": statistics.median(rel[s] for s in late),
            "reliability_step0": rel[steps[0]],
            "reliability_by_step": {str(s): round(rel[s], 4) for s in steps},
        }
        k = per_step[steps[0]][group]["g"].shape[0]
        off = ~np.eye(k, dtype=bool)
        raw = []
        num = np.zeros((k, k))
        sig = np.zeros(k)
        for s in later:
            g = per_step[s][group]["g"]
            d = np.sqrt(np.diagonal(g))
            raw.append(float(np.mean((g / np.outer(d, d))[off])))
            scale = float(np.mean(np.diagonal(g)))
            num += g / scale
            sig += 4 * per_step[s][group]["ab"] / scale
        good = sig > 0  # a task whose summed split-half product is <= 0 has no estimate
        pairs = off & np.outer(good, good)
        corrected = num / np.sqrt(np.outer(np.abs(sig), np.abs(sig)))
        entry["cosine_raw"] = float(np.mean(raw))
        entry["cosine_corrected"] = float(np.mean(corrected[pairs])) if pairs.any() else None
        entry["tasks_without_signal"] = int((~good).sum())
        if "fs" in per_step[steps[0]][group]:
            ratios = [
                float(per_step[s][group]["fs"].sum() / per_step[s][group]["ab"].sum())
                for s in later
            ]
            entry["drift_fs_over_ab_median"] = statistics.median(ratios)
        out[group] = entry
    return out


def main() -> None:
    args = parse_args()
    import tomllib

    values = {}
    for item in args.overrides:
        key, _, raw = item.partition("=")
        try:
            values[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            values[key] = raw
    config = RecipeConfig.from_dict({"threads": 1, **values}).validate()
    designs = args.designs.split(",")
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    wall0 = time.perf_counter()
    recipe, _ = make_recipe(config)
    model = recipe.model
    tasks = list(recipe.tasks)
    k = len(tasks)
    smoothing = config.label_smoothing
    steps, every = config.steps, config.every
    want_probe = any(d.startswith("p") for d in designs)
    want_extra = any(d.startswith("x") for d in designs)
    short = 8 if "w8" in designs else 4 if "w4" in designs else 1
    short = min(short, every)

    def window_of(t0: int) -> int:
        # w20 on every other snapshot only: the others leave joint steps to time
        return 20 if "w20" in designs and every == 20 and t0 % 40 == 0 else short

    probe_blocks = []
    if want_probe:
        from geomtrace.recipe.corpus import build_corpus
        from geomtrace.recipe.model import FIRST_TAG

        corpus = build_corpus(
            tasks,
            config.domains,
            dev_fraction=config.dev_fraction,
            test_fraction=config.test_fraction,
        )
        tags = {lg: FIRST_TAG + i for i, lg in enumerate(tasks)}
        probe = make_probe(corpus, tasks, tags, config.direction, config.max_bytes, 4 * PROBE_BLOCK)
        for b in range(4):
            probe_blocks.append({})
            for lg in tasks:
                src, tgt = probe[lg]
                # probe rows are sorted by length: interleaved blocks have matched lengths
                # (contiguous blocks would pit short strings against long ones)
                rows = torch.arange(b, 4 * PROBE_BLOCK, 4)
                probe_blocks[b][lg] = _trimmed(src[rows], tgt[rows])

    # slots: 0,1 = step t's halves; 2..8 = steps t+1..t+7; 9..12 = w20's (even/odd x first/
    # second ten steps); 13..16 probe blocks; 17..24 snapshot-only blocks
    slots = Slots(model, 25, k)
    optimizer, scheduler = make_optimizer(model, config)
    extra_gen = torch.Generator().manual_seed(config.seed + 1)
    generator = torch.Generator().manual_seed(config.seed)
    times = {"joint": [], "task_halves": [], "task": [], "probe": [], "extra": [], "gram": []}
    per_design: dict[str, dict[int, dict]] = {d: {} for d in designs}
    theta: dict[int, torch.Tensor] = {}
    param_change: dict[str, list[float]] = {d: [] for d in designs if d.startswith("w")}
    model.train()

    def flat_params() -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in slots.params]).clone()

    train_rows = _train_rows(recipe, config) if want_extra else None

    for step in range(steps):
        t0 = step - step % every  # the snapshot this step belongs to
        offset = step - t0
        window = window_of(t0)
        in_window = offset < window and t0 + window <= steps
        if offset == 0 and in_window:
            slots.buf.zero_()
            theta[t0] = flat_params()
        batches = recipe.sample(step, generator)
        if offset == 0 and in_window:
            # snapshot-only measurements at theta_t (eval mode, no .grad)
            if want_probe:
                tic = time.perf_counter()
                model.eval()
                for b, block in enumerate(probe_blocks):
                    for i, lg in enumerate(tasks):
                        loss = _sum_loss(model, block[lg], smoothing)
                        grads = torch.autograd.grad(loss, slots.params, allow_unused=True)
                        slots.add(13 + b, i, grads)
                model.train()
                times["probe"].append(time.perf_counter() - tic)
            if want_extra:
                tic = time.perf_counter()
                model.eval()
                for i, lg in enumerate(tasks):
                    enc = train_rows[lg]
                    n = enc.src.shape[0]
                    idx = torch.randint(n, (8 * EXTRA_BLOCK,), generator=extra_gen)
                    for b in range(8):
                        rows = idx[b * EXTRA_BLOCK : (b + 1) * EXTRA_BLOCK]
                        loss = _sum_loss(model, _trimmed(enc.src[rows], enc.tgt[rows]), smoothing)
                        grads = torch.autograd.grad(loss, slots.params, allow_unused=True)
                        slots.add(17 + b, i, grads)
                model.train()
                times["extra"].append(time.perf_counter() - tic)
        tic = time.perf_counter()
        if in_window:
            for i, lg in enumerate(tasks):
                if offset == 0:
                    la, lb = split_half_losses(model, batches[lg], smoothing)
                    ga = torch.autograd.grad(la, slots.params, retain_graph=True, allow_unused=True)
                    gb = torch.autograd.grad(lb, slots.params, allow_unused=True)
                    slots.add(0, i, ga)
                    slots.add(1, i, gb)
                    grads = [x if y is None else x + y for x, y in zip(ga, gb, strict=True)]
                    parts = [ga, gb]  # w20: step t is an even step of its window
                else:
                    loss = recipe.loss(model, lg, batches[lg])
                    grads = torch.autograd.grad(loss, slots.params, allow_unused=True)
                    if offset < 8:
                        slots.add(1 + offset, i, grads)
                    parts = [grads]
                if window == 20:
                    q = 9 + (offset % 2) + 2 * (offset >= 10)
                    for g in parts:
                        slots.add(q, i, g)
                for p, g in zip(slots.params, grads, strict=True):
                    if g is not None:
                        p.grad = g.clone() if p.grad is None else p.grad.add_(g)
            times["task_halves" if offset == 0 else "task"].append(time.perf_counter() - tic)
        else:
            losses = recipe.joint_loss(model, batches)
            torch.stack([losses[t] for t in tasks]).sum().backward()
            times["joint"].append(time.perf_counter() - tic)
        if config.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if in_window and offset + 1 in (4, 8, 20):
            theta[(t0, offset + 1)] = flat_params()
        if in_window and offset == window - 1:
            tic = time.perf_counter()
            _snapshot(slots, t0, designs, per_design, window)
            times["gram"].append(time.perf_counter() - tic)
        if step % 50 == 0:
            print(f"step {step} ({time.perf_counter() - wall0:.0f} s)", flush=True)
    # parameter change: |theta_{t+m} - theta_t| / |theta_{t+20} - theta_t|
    for t0 in sorted(x for x in theta if isinstance(x, int)):
        nxt = theta.get(t0 + every)
        if nxt is None:
            continue
        full = float((nxt - theta[t0]).norm())
        for d, m in (("w4", 4), ("w8", 8), ("w20", 20)):
            if d in param_change and (t0, m) in theta:
                param_change[d].append(float((theta[(t0, m)] - theta[t0]).norm()) / full)
    wall = time.perf_counter() - wall0
    report(config, designs, per_design, times, param_change, wall, args.json)


def _snapshot(slots: Slots, t0: int, designs, per_design, window: int) -> None:
    grams = {}
    train_slots = list(range(9))
    grams["train"] = slots.gram(train_slots)
    if "w20" in designs and window == 20:
        grams["w20"] = slots.gram([9, 10, 11, 12])
    if any(d.startswith("p") for d in designs):
        grams["probe"] = slots.gram([13, 14, 15, 16])
    if any(d.startswith("x") for d in designs):
        grams["extra"] = slots.gram(list(range(17, 25)))

    def vec(n, idx):
        v = np.zeros(n)
        v[list(idx)] = 1.0
        return v

    # train slots: 0 = step t half a, 1 = step t half b, 1 + j = step t + j (j = 1..7)
    step_slots = {0: [0, 1], **{j: [1 + j] for j in range(1, 8)}}

    def steps_vec(js):
        return vec(9, [s for j in js for s in step_slots[j]])

    specs = {
        "a": ("train", vec(9, [0]), vec(9, [1]), None, None),
        "w4": ("train", steps_vec([0, 2]), steps_vec([1, 3]), steps_vec([0, 1]), steps_vec([2, 3])),
        "w8": (
            "train",
            steps_vec([0, 2, 4, 6]),
            steps_vec([1, 3, 5, 7]),
            steps_vec([0, 1, 2, 3]),
            steps_vec([4, 5, 6, 7]),
        ),  # fmt: skip
        # w20 slots: 0 even/first ten, 1 odd/first, 2 even/second, 3 odd/second
        "w20": ("w20", vec(4, [0, 2]), vec(4, [1, 3]), vec(4, [0, 1]), vec(4, [2, 3])),
        "p80": ("probe", vec(4, [0]), vec(4, [1]), None, None),
        "p160": ("probe", vec(4, [0, 1]), vec(4, [2, 3]), None, None),
        "x48": ("extra", vec(8, [0]), vec(8, [1]), None, None),
        "x96": ("extra", vec(8, [0, 1]), vec(8, [2, 3]), None, None),
        "x192": ("extra", vec(8, [0, 1, 2, 3]), vec(8, [4, 5, 6, 7]), None, None),
    }
    for d in designs:
        source, ca, cb, cf, cs = specs[d]
        if source not in grams:
            continue
        per_design[d][t0] = {
            group: design_stats(g, ca, cb, cf, cs) for group, g in grams[source].items()
        }


def _trimmed(src: torch.Tensor, tgt: torch.Tensor):
    from geomtrace.recipe.model import PAD

    return src[:, : int((src != PAD).sum(1).max())], tgt[:, : int((tgt != PAD).sum(1).max())]


def _sum_loss(model, batch, smoothing: float) -> torch.Tensor:
    """Token-loss sum (halves of one snapshot share a scale; reliability and cosines are
    invariant to a task's common scale)."""
    from geomtrace.recipe.embedded import token_losses

    src, tgt = batch
    return token_losses(model, src, tgt, smoothing).sum()


def _train_rows(recipe, config):
    """The encoded training rows per language (rebuilt the way make_recipe builds them)."""
    from geomtrace.recipe.corpus import build_corpus
    from geomtrace.recipe.embedded import encode_pairs, select_pairs
    from geomtrace.recipe.model import FIRST_TAG

    tasks = list(recipe.tasks)
    corpus = build_corpus(
        tasks,
        config.domains,
        dev_fraction=config.dev_fraction,
        test_fraction=config.test_fraction,
    )
    return {
        lg: encode_pairs(
            select_pairs(corpus.split(lg, "train"), config.max_bytes),
            FIRST_TAG + i,
            config.direction,
        )  # fmt: skip
        for i, lg in enumerate(tasks)
    }


def _fmt(value, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}.{digits}f}"


def report(config, designs, per_design, times, param_change, wall, path) -> None:
    med = {k: statistics.median(v) if v else 0.0 for k, v in times.items()}
    steps, every = config.steps, config.every
    n_snap = len(range(0, steps, every)) + 1  # + the final model's snapshot
    joint, task, task_h = med["joint"], med["task"], med["task_halves"]
    base = (steps + 1) * joint  # every step joint; what each design adds on top:
    cost = {
        "a": base + n_snap * (task_h - joint),
        "w4": base + n_snap * (task_h - joint + 3 * (task - joint)),
        "w8": base + n_snap * (task_h - joint + 7 * (task - joint)),
        "w20": base + n_snap * (task_h - joint + 19 * (task - joint)),  # every step per task
        "p80": base + n_snap * med["probe"] / 2,
        "p160": base + n_snap * med["probe"],
        "x48": base + n_snap * med["extra"] / 4,
        "x96": base + n_snap * med["extra"] / 2,
        "x192": base + n_snap * med["extra"],
    }
    rows = {}
    for d in designs:
        if not per_design[d]:
            continue
        stats = summarize(per_design[d], list(GROUPS))
        row = {
            "groups": stats,
            "est_train_seconds": round(cost[d], 1),
            "cost_vs_a": round(cost[d] / cost["a"], 3),
        }
        if d in param_change and param_change[d]:
            row["param_change_window_over_every_median"] = statistics.median(param_change[d])
        rows[d] = row
    print(
        f"\nbucket={config.bucket} seed={config.seed} steps={steps} every={every} "
        f"threads={config.threads}; wall {wall:.0f} s; medians: joint step {joint:.3f} s, "
        f"per-task step {task:.3f} s, with halves {task_h:.3f} s, probe 160 {med['probe']:.2f} "
        f"s, snapshot-only 192 rows {med['extra']:.2f} s, Grams {med['gram']:.2f} s"
    )
    head = (
        f"{'design':<6} {'cost':>5} {'est s':>6} {'rel all':>7} {'late':>5} {'emb':>5} "
        f"{'enc':>5} {'enc.0':>5} {'dec':>5} {'cos raw':>7} {'cos cor':>7} {'drift':>5} "
        f"{'dθ':>5}"
    )
    print(head)
    for d, row in rows.items():
        g = row["groups"]
        drift = g["all"].get("drift_fs_over_ab_median")
        dtheta = row.get("param_change_window_over_every_median")
        print(
            f"{d:<6} {row['cost_vs_a']:5.2f} {row['est_train_seconds']:6.0f} "
            f"{g['all']['reliability_median']:7.3f} {g['all']['reliability_late_median']:5.2f} "
            f"{g['embedding']['reliability_median']:5.2f} "
            f"{g['encoder']['reliability_median']:5.2f} "
            f"{g['encoder.layers.0']['reliability_median']:5.2f} "
            f"{g['decoder']['reliability_median']:5.2f} {g['all']['cosine_raw']:7.3f} "
            f"{_fmt(g['all']['cosine_corrected'], 7, 3)} "
            f"{'' if drift is None else f'{drift:5.2f}':>5} "
            f"{'' if dtheta is None else f'{dtheta:5.2f}':>5}"
        )
    if path:
        payload = {
            "config": config.to_dict(),
            "wall_seconds": wall,
            "median_seconds": med,
            "snapshots": n_snap,
            "designs": rows,
        }
        with open(path, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=1)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
