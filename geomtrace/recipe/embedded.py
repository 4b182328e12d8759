"""The embedded recipe: the gettext corpus + the byte-level Transformer, as a :class:`Recipe`.

Data per language: the train split of :mod:`geomtrace.recipe.corpus`, pairs whose two sides
are both at most ``max_bytes`` UTF-8 bytes, encoded once into padded int64 tensors sorted by
length. Each step draws ``batch_per_lang`` rows per language (or rows ∝ n_l^(1/T) with
``sampling_temperature`` T > 0) from length windows (:func:`sample_indices`): with
``bucket="independent"`` (default) each half of each language's sub-batch samples the rows
around its own random quantile of length, so a sub-batch carries little padding while no
length component is shared by the tasks of a step (``"shared"``, the old sampler, drew one
quantile per step for every language: a step-common component that inflated every
cross-language cosine). Untraced steps compute all losses in a few length-sorted forwards
(:func:`fused_losses`), so independent windows cost no extra padding there either.

Loss: token-level cross-entropy with label smoothing, mean over the target bytes of the
sub-batch. Evaluation: greedy decoding of the test split (batched over all languages at once,
:func:`geomtrace.recipe.model.greedy_decode`) scored with sacrebleu's chrF, and the held-out
cross-entropy (no smoothing) on the same split.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geomtrace import InvalidInputError
from geomtrace.recipe.config import BUCKETS, RecipeConfig
from geomtrace.recipe.corpus import (
    Corpus,
    Pair,
    build_corpus,
    char_profile,
    probe_strings,
    select_short,
)
from geomtrace.recipe.languages import LANGUAGES, iso_codes_for, normalize_locale
from geomtrace.recipe.model import BOS, EOS, FIRST_TAG, PAD, ByteTransformer, decode_bytes

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]  # (src [B, S], tgt [B, T]) int64, PAD-padded


@dataclass
class Encoded:
    """One language's pairs as padded tensors, rows sorted by length."""

    src: torch.Tensor  # [N, S]
    tgt: torch.Tensor  # [N, T]
    src_len: torch.Tensor  # [N]
    tgt_len: torch.Tensor  # [N]
    refs: list[str]  # target-side text, row-aligned (for chrF)


def resolve_languages(codes: Sequence[str]) -> list[str]:
    """Table locale keys for user codes (``pt-BR`` -> ``pt_BR``); unknown codes raise an error
    that lists the available ones; duplicates are an error."""
    out = [normalize_locale(c) for c in codes]
    dupes = sorted({c for c in out if out.count(c) > 1})
    if dupes:
        raise InvalidInputError(f"language(s) listed twice: {', '.join(dupes)}")
    return out


def select_pairs(pairs: Sequence[Pair], max_bytes: int) -> list[Pair]:
    """The pairs whose two sides are at most ``max_bytes`` UTF-8 bytes."""
    return select_short(pairs, max_bytes)


def encode_pairs(pairs: Sequence[Pair], tag: int, direction: str) -> Encoded:
    """Token ids of ``pairs`` for ``direction`` (see :mod:`geomtrace.recipe.model`)."""
    srcs, tgts, refs = [], [], []
    for p in pairs:
        source, target = (p.x, p.en) if direction == "x2en" else (p.en, p.x)
        start = BOS if direction == "x2en" else tag
        srcs.append([tag, *source.encode("utf-8"), EOS])
        tgts.append([start, *target.encode("utf-8"), EOS])
        refs.append(target)
    order = sorted(range(len(pairs)), key=lambda i: (len(srcs[i]) + len(tgts[i]), i))
    srcs = [srcs[i] for i in order]
    tgts = [tgts[i] for i in order]
    refs = [refs[i] for i in order]
    return Encoded(_pad(srcs), _pad(tgts), _lengths(srcs), _lengths(tgts), refs)


def _pad(rows: list[list[int]]) -> torch.Tensor:
    width = max((len(r) for r in rows), default=1)
    out = torch.full((len(rows), width), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def _row(row: torch.Tensor, width: int) -> torch.Tensor:
    """``row`` cut or PAD-extended to ``width``."""
    return F.pad(row[:width], (0, max(0, width - row.shape[0])), value=PAD)


def _lengths(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor([len(r) for r in rows], dtype=torch.long)


def _trim(
    src: torch.Tensor, tgt: torch.Tensor, src_len: torch.Tensor, tgt_len: torch.Tensor
) -> Batch:
    return src[:, : int(src_len.max())], tgt[:, : int(tgt_len.max())]


def token_losses(
    model: nn.Module, src: torch.Tensor, tgt: torch.Tensor, label_smoothing: float
) -> torch.Tensor:
    """Per-token cross-entropy [B, T-1] (0 at padding) of predicting tgt[1:] from tgt[:-1]."""
    logits = model(src, tgt[:, :-1])
    gold = tgt[:, 1:]
    return F.cross_entropy(
        logits.transpose(1, 2), gold, ignore_index=PAD, label_smoothing=label_smoothing,
        reduction="none",
    )  # fmt: skip


def rows_per_language(sizes: Sequence[int], batch: int, temperature: float) -> list[int]:
    """Rows per step per language: ``batch`` each when ``temperature`` is 0, otherwise
    K·batch rows shared as p_l ∝ n_l^(1/T) (at least 1 row each)."""
    if temperature <= 0:
        return [batch] * len(sizes)
    weights = torch.tensor(sizes, dtype=torch.float64) ** (1.0 / temperature)
    share = weights / weights.sum() * batch * len(sizes)
    return [max(1, int(round(float(s)))) for s in share]


#: rows per forward of an eval-mode snapshot batch's halves (sorted by length)
SNAPSHOT_CHUNK_ROWS = 24

#: rows per forward of the fused loss when sub-batches have different lengths (sorted by length)
JOINT_CHUNK_ROWS = 96


def bucket_window(n: int, rows: int) -> int:
    """Width of a length window: a language's rows are sorted by length, a window is
    ``max(4 * rows, n // 8)`` consecutive rows (all of them when the language has fewer)."""
    return min(n, max(4 * rows, n // 8))


def half_sizes(rows: int) -> tuple[int, int]:
    """Rows of the two halves of a sub-batch of ``rows`` rows: the first ``rows // 2`` rows are
    half 0, the rest half 1 (a split by rows, the same at every step)."""
    return rows // 2, rows - rows // 2


def sample_indices(
    sizes: Sequence[int], rows: Sequence[int], mode: str, generator: torch.Generator
) -> list[torch.Tensor]:
    """Row indices of one step's sub-batches (rows of each language sorted by length).

    ``mode``:

    - ``"independent"`` (default): each half of each language's sub-batch (see
      :func:`half_sizes`) comes from its own length window, at its own quantile u ~ U(0, 1):
      no two languages, and no two halves, share a window, so no length component is common
      to the tasks of a step (the shared window inflated every cross-language cosine) and the
      two halves are independent draws (split-half products then measure signal, not the
      window the halves shared);
    - ``"shared"``: the pre-issue-11 sampler, one u per step for every language (each at its
      own u-quantile of length): less padding, but a length component common to all tasks;
    - ``"none"``: uniform rows, no windows.

    Draws: shared, one ``rand(())`` then per language ``randint(window, (b,))`` (exactly the
    old sampler's stream); independent, one ``rand(K, 2)`` then per language and half a
    ``randint``; none, per language one ``randint(n, (b,))``.
    """
    if mode == "shared":
        u = float(torch.rand((), generator=generator))
        out = []
        for n, b in zip(sizes, rows, strict=True):
            window = bucket_window(n, b)
            start = min(max(0, int(u * n) - window // 2), n - window)
            out.append(start + torch.randint(window, (b,), generator=generator))
        return out
    if mode == "none":
        return [
            torch.randint(n, (b,), generator=generator) for n, b in zip(sizes, rows, strict=True)
        ]
    if mode != "independent":
        raise InvalidInputError(f"bucket={mode!r}; allowed: {', '.join(BUCKETS)}")
    u = torch.rand(len(sizes), 2, generator=generator, dtype=torch.float64).tolist()
    out = []
    for (n, b), quantiles in zip(zip(sizes, rows, strict=True), u, strict=True):
        window = bucket_window(n, b)
        parts = []
        for q, h in zip(quantiles, half_sizes(b), strict=True):
            if h == 0:
                continue
            start = min(max(0, int(q * n) - window // 2), n - window)
            parts.append(start + torch.randint(window, (h,), generator=generator))
        out.append(torch.cat(parts))
    return out


def fresh_rows(sizes: Sequence[int], size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Per language, ``min(size, n)`` distinct row indices of its ``n`` rows: the first
    ``size`` of a uniform random permutation (one ``randperm(n)`` per language, in order).
    A language with fewer than ``size`` rows gives all of them (logged once per call)."""
    short = [(k, n) for k, n in enumerate(sizes) if n < size]
    if short:
        log.warning(
            "snapshot batch of %d rows per language: %d language(s) have fewer training rows "
            "(%s); their snapshots use every row they have",
            size, len(short), ", ".join(f"#{k}: {n}" for k, n in short),
        )  # fmt: skip
    return [torch.randperm(n, generator=generator)[:size] for n in sizes]


def fused_losses(
    model: nn.Module, batches: Mapping[str, Batch], smoothing: float, chunk_rows: int = 0
) -> dict[str, torch.Tensor]:
    """Every task's mean-token loss from few forwards: all sub-batches' rows, sorted by length
    and cut into forwards of ``chunk_rows`` rows, each padded to its own longest row (0: one
    forward over everything, padded to the longest). Row order and padding change nothing but
    speed: each task's loss is its token-loss sum over its token count."""
    order = list(batches)
    task_of = torch.cat(
        [torch.full((batches[t][0].shape[0],), i, dtype=torch.long) for i, t in enumerate(order)]
    )
    width_s = max(batches[t][0].shape[1] for t in order)
    width_t = max(batches[t][1].shape[1] for t in order)
    src = torch.cat(
        [F.pad(batches[t][0], (0, width_s - batches[t][0].shape[1]), value=PAD) for t in order]
    )
    tgt = torch.cat(
        [F.pad(batches[t][1], (0, width_t - batches[t][1].shape[1]), value=PAD) for t in order]
    )
    tokens = (tgt[:, 1:] != PAD).sum(1)
    k = len(order)
    count = torch.zeros(k, dtype=tokens.dtype, device=tokens.device).index_add_(
        0, task_of.to(tokens.device), tokens
    )
    if chunk_rows <= 0 or src.shape[0] <= chunk_rows:
        chunks = [torch.arange(src.shape[0])]
    else:
        src_len = (src != PAD).sum(1)
        # stable sort: a deterministic order for equal lengths
        by_len = torch.sort(src_len.cpu() + tokens.cpu(), stable=True).indices
        chunks = list(torch.split(by_len, chunk_rows))
    total = None
    for rows in chunks:
        rows = rows.to(src.device)
        s = src[rows]
        t = tgt[rows]
        s = s[:, : int((s != PAD).sum(1).max())]
        t = t[:, : int((t != PAD).sum(1).max())]
        tok = token_losses(model, s, t, smoothing).sum(1)
        part = torch.zeros(k, dtype=tok.dtype, device=tok.device).index_add(
            0, task_of.to(src.device)[rows], tok
        )
        total = part if total is None else total + part
    means = total / count.to(total.dtype)
    return {t: means[i] for i, t in enumerate(order)}


def split_half_losses(
    model: nn.Module, batch: Batch, smoothing: float, chunk_rows: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two halves' losses of a sub-batch: (sum of half 0's token losses, sum of half 1's),
    each over the token count of the *whole* sub-batch, so that loss_0 + loss_1 is the
    sub-batch's mean-token loss and the half gradients sum to its gradient. Halves are the row
    blocks of :func:`half_sizes`.

    In training mode: one forward (not two), which keeps the dropout masks, hence ``.grad``,
    the same as without halves. In eval mode with ``chunk_rows`` > 0 (large snapshot batches):
    each half's rows sorted by length and run in forwards of ``chunk_rows`` rows, each padded
    to its own longest row (no dropout: the same losses, less padding)."""
    src, tgt = batch
    count = (tgt[:, 1:] != PAD).sum()
    h = half_sizes(src.shape[0])[0]
    if model.training or chunk_rows <= 0:
        tok = token_losses(model, src, tgt, smoothing)
        return tok[:h].sum() / count, tok[h:].sum() / count
    sums = []
    for lo, hi in ((0, h), (h, src.shape[0])):
        length = (src[lo:hi] != PAD).sum(1) + (tgt[lo:hi] != PAD).sum(1)
        order = lo + torch.sort(length.cpu(), stable=True).indices.to(src.device)
        total = src.new_zeros((), dtype=torch.float32)
        for rows in torch.split(order, chunk_rows):
            s, t = _trim(src[rows], tgt[rows], (src[rows] != PAD).sum(1), (tgt[rows] != PAD).sum(1))
            total = total + token_losses(model, s, t, smoothing).sum()
        sums.append(total / count)
    return sums[0], sums[1]


def make_recipe(config: RecipeConfig) -> tuple:
    """Build the embedded recipe; returns ``(Recipe, corpus_counts)``. See the module doc."""
    from geomtrace.recipe.training import Recipe

    langs = resolve_languages(config.langs)
    corpus = build_corpus(
        langs, config.domains, dev_fraction=config.dev_fraction, test_fraction=config.test_fraction
    )
    direction = config.direction
    tags = {lang: FIRST_TAG + i for i, lang in enumerate(langs)}
    train, test, counts = _encoded_splits(corpus, langs, tags, config)
    max_len = config.max_bytes + 2
    model = ByteTransformer(
        len(langs), config.d_model, config.nhead, config.enc_layers, config.dec_layers,
        config.d_ff, config.dropout, max_len=max_len,
    )  # fmt: skip
    rows = dict(zip(langs, rows_per_language(
        [len(train[lg].refs) for lg in langs], config.batch_per_lang, config.sampling_temperature
    ), strict=True))  # fmt: skip
    sample, snapshot_sample = _samplers(train, langs, [rows[lg] for lg in langs], config.bucket)
    loss, joint_loss, half_losses = _losses(config.label_smoothing, config.bucket)

    def evaluate(model: nn.Module) -> dict[str, dict[str, float]]:
        # the intervals go to the trace meta "chrf_intervals" (written after evaluation), not
        # to the quality rows: every quality metric is a quality the analyses correlate
        intervals: dict[str, dict[str, float]] = {}
        out = evaluate_model(
            model, test, direction, tags, config.eval_batch, max_len - 1, intervals=intervals
        )
        meta["chrf_intervals"] = intervals
        return out

    probe = None
    if config.probe:
        probe = make_probe(corpus, langs, tags, direction, config.max_bytes, config.probe_size)

    iso_codes, problems = iso_codes_for(langs)
    meta = _corpus_meta(corpus, langs, config, counts, problems)
    recipe = Recipe(
        model=model, tasks=langs, sample=sample, loss=loss, iso_codes=iso_codes, probe=probe,
        evaluate=evaluate, joint_loss=joint_loss, half_losses=half_losses,
        snapshot_sample=snapshot_sample, meta=meta,
        describe=_describe(langs, counts, problems, config.max_bytes),
    )  # fmt: skip
    return recipe, counts


def _encoded_splits(
    corpus: Corpus, langs: Sequence[str], tags: Mapping[str, int], config: RecipeConfig
) -> tuple[dict[str, Encoded], dict[str, Encoded], dict[str, dict[str, int]]]:
    """Every language's train and test pairs of at most ``config.max_bytes`` bytes, encoded
    for ``config.direction``, and their counts (with the catalog counts); refuses a language
    left without train or test pairs."""
    train: dict[str, Encoded] = {}
    test: dict[str, Encoded] = {}
    counts: dict[str, dict[str, int]] = {}
    for lang in langs:
        tr = select_pairs(corpus.split(lang, "train"), config.max_bytes)
        te = select_pairs(corpus.split(lang, "test"), config.max_bytes)
        if not tr or not te:
            raise InvalidInputError(
                f"language {lang!r} has {len(tr)} train and {len(te)} test pairs of at most "
                f"{config.max_bytes} bytes: raise max_bytes or drop the language"
            )
        train[lang] = encode_pairs(tr, tags[lang], config.direction)
        test[lang] = encode_pairs(te, tags[lang], config.direction)
        counts[lang] = {"train": len(tr), "test": len(te)} | {
            f"catalog_{k}": v for k, v in corpus.counts()[lang].items()
        }
    return train, test, counts


def _samplers(
    train: Mapping[str, Encoded], langs: Sequence[str], row_counts: list[int], bucket: str
) -> tuple[Callable, Callable]:
    """The recipe's ``sample(step, generator)``: ``row_counts`` rows per language drawn with
    the ``bucket`` length windows (``sample_indices``), and its ``snapshot_sample(step,
    generator, size)``: ``size`` fresh uniform rows per language (``fresh_rows``)."""
    sizes = [train[lg].src.shape[0] for lg in langs]

    def sample(step: int, generator: torch.Generator) -> dict[str, Batch]:
        picks = sample_indices(sizes, row_counts, bucket, generator)
        out = {}
        for lang, idx in zip(langs, picks, strict=True):
            enc = train[lang]
            out[lang] = _trim(enc.src[idx], enc.tgt[idx], enc.src_len[idx], enc.tgt_len[idx])
        return out

    def snapshot_sample(step: int, generator: torch.Generator, size: int) -> dict[str, Batch]:
        # fresh uniform rows (no windows, no row twice): the two halves are disjoint draws of
        # the language's data, so no string's gradient counts in both (a repeated row would
        # add its own |g|^2 to a.b and read as signal)
        return {
            lang: _trim(enc.src[idx], enc.tgt[idx], enc.src_len[idx], enc.tgt_len[idx])
            for lang, enc, idx in zip(
                langs, (train[lg] for lg in langs), fresh_rows(sizes, size, generator),
                strict=True,
            )
        }  # fmt: skip

    return sample, snapshot_sample


def _losses(smoothing: float, bucket: str) -> tuple[Callable, Callable, Callable]:
    """The recipe's ``loss`` (a sub-batch's mean token loss with label ``smoothing``), its
    ``joint_loss`` (every task's loss from fused forwards, one for ``bucket="shared"``) and
    its ``half_losses`` (the two row halves' shares of the loss, ``split_half_losses``)."""

    def loss(model: nn.Module, task: str, batch: Batch) -> torch.Tensor:
        src, tgt = batch
        tok = token_losses(model, src, tgt, smoothing)
        return tok.sum() / (tgt[:, 1:] != PAD).sum()

    def joint_loss(model: nn.Module, batches: Mapping[str, Batch]) -> dict[str, torch.Tensor]:
        # sum_l mean_l is exactly the sum of the per-task losses, so gradients match.
        if bucket == "shared":
            # every sub-batch comes from the same length window: one forward, little padding
            # (kept as it was, so old configs reproduce their traces bit for bit)
            return fused_losses(model, batches, smoothing, chunk_rows=0)
        return fused_losses(model, batches, smoothing, chunk_rows=JOINT_CHUNK_ROWS)

    def half_losses(model: nn.Module, task: str, batch: Batch) -> tuple[torch.Tensor, ...]:
        return split_half_losses(model, batch, smoothing, chunk_rows=SNAPSHOT_CHUNK_ROWS)

    return loss, joint_loss, half_losses


def _corpus_meta(
    corpus: Corpus,
    langs: Sequence[str],
    config: RecipeConfig,
    counts: Mapping[str, Mapping[str, int]],
    problems: Mapping[str, str],
) -> dict[str, Any]:
    """The trace meta of the embedded recipe: scripts, character profiles, the languages'
    codes and names, URIEL problems, and where the corpus's pairs came from."""
    return {
        "scripts": {lg: LANGUAGES[lg].script for lg in langs},
        "char_profiles": {
            lg: char_profile(p.x for p in select_pairs(corpus.split(lg, "train"), config.max_bytes))
            for lg in langs
        },
        "languages": {
            lg: {
                "bcp47": LANGUAGES[lg].bcp47,
                "iso639_3": LANGUAGES[lg].iso639_3,
                "name": LANGUAGES[lg].name,
                "family": LANGUAGES[lg].family,
                "note": LANGUAGES[lg].note,
            }
            for lg in langs
        },  # fmt: skip
        "iso_problems": problems,
        "corpus_counts": counts,
        # where each language's pairs (at most max_bytes) came from: {lang: {domain: {split: n}}}
        "corpus_domain_counts": {
            lg: c for lg, c in corpus.domain_counts(config.max_bytes).items() if lg in langs
        },
        "corpus_skipped": {lg: dict(corpus.skipped[lg]) for lg in langs},
        "domains": list(config.domains),
    }


def _describe(
    langs: Sequence[str],
    counts: Mapping[str, Mapping[str, int]],
    problems: Mapping[str, str],
    max_bytes: int,
) -> list[str]:
    """The run summary's lines: the corpus's size ranges, and the languages without
    typology."""
    describe = [
        f"corpus: {len(langs)} languages, train pairs {min(c['train'] for c in counts.values())}"
        f"-{max(c['train'] for c in counts.values())}, test pairs "
        f"{min(c['test'] for c in counts.values())}-{max(c['test'] for c in counts.values())} "
        f"(<= {max_bytes} bytes)"
    ]
    if problems:
        describe.append(
            "not in URIEL (no typology): "
            + ", ".join(f"{t} ({why})" for t, why in problems.items())
        )
    return describe


def make_probe(
    corpus: Corpus, langs: Sequence[str], tags: Mapping[str, int], direction: str,
    max_bytes: int, size: int,
) -> dict[str, Batch]:  # fmt: skip
    """The multi-way-parallel probe batches: the same English strings in every language."""
    short = Corpus(
        {lg: select_pairs(corpus.pairs[lg], max_bytes) for lg in langs},
        corpus.skipped, corpus.dev_fraction, corpus.test_fraction,
    )  # fmt: skip
    english = probe_strings(short, "train", size)
    if not english:
        raise InvalidInputError(
            "no English string is translated in every selected language: cannot build a "
            "multi-way-parallel probe set (drop --probe or choose other languages)"
        )
    out = {}
    for lg in langs:
        by_en = {p.en: p for p in short.pairs[lg]}
        enc = encode_pairs([by_en[e] for e in english], tags[lg], direction)
        # rows come sorted by length; put the even-ranked rows first and the odd-ranked second,
        # so the two row halves of split-half capture (half_sizes) have matched lengths
        n = enc.src.shape[0]
        order = torch.cat([torch.arange(0, n, 2), torch.arange(1, n, 2)])
        out[lg] = _trim(enc.src[order], enc.tgt[order], enc.src_len[order], enc.tgt_len[order])
    return out


#: bootstrap replicates of each language's chrF interval (resampled test strings)
CHRF_BOOTSTRAP = 1000


def chrf_interval(
    hyps: Sequence[str], refs: Sequence[str], n_bootstrap: int = CHRF_BOOTSTRAP,
    level: float = 0.95, seed: int = 0,
) -> dict[str, float]:  # fmt: skip
    """Corpus chrF (sacrebleu) of ``hyps`` against ``refs`` and its percentile bootstrap
    interval over the test strings.

    chrF is a function of statistics summed over strings (character n-gram matches and
    counts, sacrebleu's per-string statistics), so a replicate draws n strings with
    replacement (counts w ~ Multinomial(n, 1/n)), sums w_j stats_j and scores the sums:
    no decoding is repeated. The interval is the (1 - level)/2 and (1 + level)/2 quantiles
    of the replicates: it says how much the score moves with the choice of test strings
    (not with the seed of training). Returns ``{"chrf", "low", "high", "n"}``.
    """
    import numpy as np
    from sacrebleu.metrics import CHRF

    metric = CHRF()
    # sacrebleu's per-string statistics and its score from summed statistics (the pair its
    # own significance tests use); corpus_chrf(hyps, [refs]) is the score of the plain sum
    stats = np.asarray(metric._extract_corpus_statistics(list(hyps), [list(refs)]), dtype=np.int64)
    n = stats.shape[0]
    score = float(metric._compute_score_from_stats(stats.sum(0).tolist()).score)
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=n_bootstrap)  # [B, n]
    sums = weights @ stats  # [B, d]
    boot = np.array([metric._compute_score_from_stats(row.tolist()).score for row in sums])
    low, high = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return {"chrf": score, "low": float(low), "high": float(high), "n": int(n)}


@torch.no_grad()
def evaluate_model(
    model: nn.Module, test: Mapping[str, Encoded], direction: str, tags: Mapping[str, int],
    batch_size: int, max_new: int, intervals: dict[str, dict[str, float]] | None = None,
) -> dict[str, dict[str, float]]:  # fmt: skip
    """chrF of greedy decoding and held-out cross-entropy per language (model in eval mode).

    ``intervals``: when given, filled with each language's :func:`chrf_interval`."""
    import sacrebleu

    from geomtrace.recipe.model import greedy_decode

    device = next(model.parameters()).device
    langs = list(test)
    # All languages' test rows in one list, sorted by source length so batches pad little.
    rows = [(lg, i) for lg in langs for i in range(test[lg].src.shape[0])]
    rows.sort(key=lambda r: int(test[r[0]].src_len[r[1]]))
    hyps: dict[str, list[str | None]] = {lg: [None] * test[lg].src.shape[0] for lg in langs}
    loss_sum = dict.fromkeys(langs, 0.0)
    tok_count = dict.fromkeys(langs, 0)
    for b0 in range(0, len(rows), batch_size):
        chunk = rows[b0 : b0 + batch_size]
        s_w = max(int(test[lg].src_len[i]) for lg, i in chunk)
        t_w = max(int(test[lg].tgt_len[i]) for lg, i in chunk)
        src = torch.stack([_row(test[lg].src[i], s_w) for lg, i in chunk]).to(device)
        tgt = torch.stack([_row(test[lg].tgt[i], t_w) for lg, i in chunk]).to(device)
        tok = token_losses(model, src, tgt, 0.0)
        per_row = tok.sum(1).cpu().tolist()
        n_tok = (tgt[:, 1:] != PAD).sum(1).cpu().tolist()
        out = greedy_decode(model, src, tgt[:, 0], max_new).cpu().tolist()
        for (lg, i), ids, ls, nt in zip(chunk, out, per_row, n_tok, strict=True):
            hyps[lg][i] = decode_bytes(ids)
            loss_sum[lg] += ls
            tok_count[lg] += nt
    result = {}
    for lg in langs:
        chrf = sacrebleu.corpus_chrf(hyps[lg], [test[lg].refs]).score
        result[lg] = {"chrf": float(chrf), "heldout_loss": loss_sum[lg] / max(1, tok_count[lg])}
        if intervals is not None:
            intervals[lg] = chrf_interval(hyps[lg], test[lg].refs)
    return result
