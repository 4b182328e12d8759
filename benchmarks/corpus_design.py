"""Corpus design (issue 21 item 2): data per language, probe strings, and snapshot reliability
of fresh eval-mode rows on the Django corpus and on every text domain.

Two parts:

``--counts``: for candidate language sets and length caps, the train/test pairs per language
(the recipe's domains, split and cap) and the number of train strings translated in every
language of the set (the probe pool): pure counting, seconds.

``--measure``: one training trajectory of the embedded recipe per corpus (``--set`` any config
key; default 8 languages, 200 steps) and, at steps 0, every, 2*every, ..., a snapshot-only
batch of ``8 * BLOCK`` fresh rows per language (``embedded.fresh_rows``: distinct rows, the
recipe's own sampler; eval mode, as ``snapshot_rows`` takes them), cut into 8 blocks whose
gradients are kept, so that one batch gives the split-half reliability of several designs:
N = 2 m BLOCK rows, halves a = blocks 0..m-1, b = blocks m..2m-1 (m = 1, 2, 4), and
r_i = 4 a_i.b_i / |a_i + b_i|^2 per language (whole model), the statistic of
``Trace.reliability``. Spearman-Brown then says how r grows with N: with s the signal-to-noise
ratio of one row, r(N) = N s / (1 + N s), so s = r / (N (1 - r)) from any design, and the rows
that give r = 0.8 are N = 4 / s. The CPU seconds of the training steps and of the snapshot rows
(``time.process_time``, one thread: the machine is shared, so process time is the better
guide to an idle machine) give the cost per snapshot row relative to a training step.

    python benchmarks/corpus_design.py --counts
    python benchmarks/corpus_design.py --measure --set 'domains=["django"]' --json a.json
    python benchmarks/corpus_design.py --measure --set 'domains=["django","wagtail",...]'

Results (seed 0): benchmarks/corpus_design_counts.txt, corpus_design_django.json and
corpus_design_all.json; what they decided: geomtrace/recipe/README.md ("A bigger corpus").
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from geomtrace.recipe.config import RecipeConfig
from geomtrace.recipe.corpus import TEXT_DOMAINS, Corpus, build_corpus, probe_strings, select_short

BLOCK = 48  # rows per block: designs of 96, 192 and 384 rows
LANGS = ["fr", "de", "ru", "fi", "tr", "he", "ja", "zh_Hans"]

#: candidate language sets for --counts
SETS = {
    "default24": [
        "es", "fr", "it", "pt", "de", "nl", "sv", "ru", "uk", "bg", "pl", "cs",
        "fi", "hu", "et", "tr", "az", "kk", "ar", "he", "hi", "mr", "zh_Hans", "ja",
    ],
    "measured8": LANGS,
    "wide16": [
        "es", "fr", "it", "de", "nl", "ru", "uk", "pl", "fi", "hu", "et", "tr",
        "he", "ja", "ko", "zh_Hans",
    ],
    "wide20": [
        "es", "fr", "it", "pt_BR", "de", "nl", "sv", "ru", "uk", "pl", "fi", "hu", "et",
        "tr", "he", "ar", "id", "ja", "ko", "zh_Hans",
    ],
}  # fmt: skip


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--counts", action="store_true", help="data table of candidate sets")
    p.add_argument("--measure", action="store_true", help="train and measure reliability")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", default="", help="write the measurement as JSON here")
    return p.parse_args()


def counts_table() -> None:
    """Per candidate set and cap: min/median test pairs, languages below 200, probe pool."""
    every = sorted({lg for s in SETS.values() for lg in s})
    for domains in (["django"], list(TEXT_DOMAINS)):
        corpus = build_corpus(every, domains)
        print(f"domains {domains}")
        for cap in (40, 48, 60):
            counts = corpus.counts(cap)
            for name, langs in SETS.items():
                tests = [counts[lg]["test"] for lg in langs]
                trains = [counts[lg]["train"] for lg in langs]
                short = Corpus(
                    {lg: select_short(corpus.pairs[lg], cap) for lg in langs}, corpus.skipped
                )
                shared = len(probe_strings(short, "train", size=10**6))
                low = [f"{lg}:{counts[lg]['test']}" for lg in langs if counts[lg]["test"] < 200]
                print(
                    f"  cap {cap:3d} {name:10s} K={len(langs):2d} train min {min(trains):5d} "
                    f"test min {min(tests):4d} median {statistics.median(tests):5.0f} "
                    f"probe pool {shared:5d}  below 200: {' '.join(low) or '-'}"
                )


def _flat_grad(model, loss) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat(
        [
            torch.zeros(p.numel()) if g is None else g.reshape(-1)
            for p, g in zip(params, grads, strict=True)
        ]
    )


def measure(config: RecipeConfig) -> dict:
    from geomtrace.recipe.embedded import encode_pairs, fresh_rows, make_recipe, token_losses
    from geomtrace.recipe.model import FIRST_TAG, PAD
    from geomtrace.recipe.training import make_optimizer

    torch.set_num_threads(1)
    torch.manual_seed(config.seed)
    recipe, counts = make_recipe(config)
    model, tasks = recipe.model, list(recipe.tasks)
    corpus = build_corpus(tasks, config.domains)
    tags = {lg: FIRST_TAG + i for i, lg in enumerate(tasks)}
    train = {
        lg: encode_pairs(
            select_short(corpus.split(lg, "train"), config.max_bytes), tags[lg], config.direction
        )
        for lg in tasks
    }
    sizes = [train[lg].src.shape[0] for lg in tasks]
    optimizer, scheduler = make_optimizer(model, config)
    generator = torch.Generator().manual_seed(config.seed)
    snap_gen = torch.Generator().manual_seed(config.seed + 1)
    cpu = {"train_step": [], "snapshot_row": []}
    snapshots = []
    for step in range(config.steps + 1):
        if step % config.every == 0:
            tic = time.process_time()
            model.eval()
            blocks = np.zeros((len(tasks), 8, 8))
            picks = fresh_rows(sizes, 8 * BLOCK, snap_gen)
            for i, lg in enumerate(tasks):
                enc, idx = train[lg], picks[i]
                vecs = []
                for b in range(8):
                    rows = idx[b * BLOCK : (b + 1) * BLOCK]
                    src = enc.src[rows][:, : int(enc.src_len[rows].max())]
                    tgt = enc.tgt[rows][:, : int(enc.tgt_len[rows].max())]
                    loss = token_losses(model, src, tgt, config.label_smoothing).sum()
                    vecs.append(_flat_grad(model, loss / (tgt[:, 1:] != PAD).sum()))
                x = torch.stack(vecs).double()
                blocks[i] = (x @ x.T).numpy()
            model.train()
            cpu["snapshot_row"].append((time.process_time() - tic) / (8 * BLOCK * len(tasks)))
            snapshots.append({"step": step, "blocks": blocks})
        if step == config.steps:
            break
        tic = time.process_time()
        batches = recipe.sample(step, generator)
        losses = recipe.joint_loss(model, batches)
        torch.stack([losses[t] for t in tasks]).sum().backward()
        if config.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        cpu["train_step"].append(time.process_time() - tic)
        if step % 50 == 0:
            print(
                f"step {step} loss {float(sum(v.detach() for v in losses.values())) / len(tasks):.3f}",
                flush=True,
            )
    designs = {}
    for m in (1, 2, 4):
        a = np.zeros(8)
        a[:m] = 1
        b = np.zeros(8)
        b[m : 2 * m] = 1
        per_step = []
        for snap in snapshots:
            G = snap["blocks"]
            ab = np.einsum("p,q,kpq->k", a, b, G)
            gg = np.einsum("p,q,kpq->k", a + b, a + b, G)
            per_step.append(4 * ab / gg)
        rel = np.array(per_step)  # [S, K]
        after0 = rel[1:]
        n = 2 * m * BLOCK
        med = float(np.median(after0.mean(axis=1)))
        late = float(np.median(after0[len(after0) // 2 :].mean(axis=1)))
        s = med / (n * (1 - med))
        designs[n] = {
            "rows": n,
            "reliability_median": med,
            "reliability_late": late,
            "per_step_mean": [float(v) for v in rel.mean(axis=1)],
            "per_language": dict(zip(tasks, map(float, after0.mean(axis=0)), strict=True)),
            "signal_per_row": s,
            "rows_for_0.8": 4 / s if s > 0 else float("inf"),
        }
    step_cpu = statistics.median(cpu["train_step"])
    row_cpu = statistics.median(cpu["snapshot_row"][1:] or cpu["snapshot_row"])
    return {
        "config": {
            k: v
            for k, v in config.to_dict().items()
            if k in ("langs", "domains", "max_bytes", "steps", "every", "batch_per_lang", "seed")
        },
        "train_pairs": {lg: counts[lg]["train"] for lg in tasks},
        "test_pairs": {lg: counts[lg]["test"] for lg in tasks},
        "cpu_seconds_per_train_step": step_cpu,
        "cpu_seconds_per_snapshot_row_per_language": row_cpu,
        "snapshot_row_in_train_steps": row_cpu / step_cpu,
        "designs": designs,
    }


def main() -> None:
    args = parse_args()
    if args.counts:
        counts_table()
    if args.measure:
        import tomllib

        values = {"langs": LANGS, "steps": 200, "every": 50, "threads": 1}
        for item in args.overrides:
            key, _, raw = item.partition("=")
            try:
                values[key] = tomllib.loads(f"v = {raw}")["v"]
            except tomllib.TOMLDecodeError:
                values[key] = raw
        config = RecipeConfig.from_dict(values).validate()
        result = measure(config)
        for n, d in result["designs"].items():
            print(
                f"rows {n:4d}: reliability median {d['reliability_median']:.3f} late "
                f"{d['reliability_late']:.3f}; signal/row {d['signal_per_row']:.4f} -> "
                f"{d['rows_for_0.8']:.0f} rows for 0.8"
            )
        print(
            f"cpu: train step {result['cpu_seconds_per_train_step']:.3f} s, snapshot row per "
            f"language {result['cpu_seconds_per_snapshot_row_per_language'] * 1e3:.2f} ms "
            f"({result['snapshot_row_in_train_steps']:.4f} train steps)"
        )
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
