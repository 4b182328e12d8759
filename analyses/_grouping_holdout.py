"""A grouping scored out of sample: chosen on one part of the data, scored on another.

``group_tasks`` maximises the within-group affinity of one matrix; scoring that partition on
the same matrix ("random partitions reach its score in 0 of 100 draws") is tautological: the
search picked the partition that scores highest there, noise included. Here the partition is
chosen on one estimate of the affinity and scored on an *independent* one:

- within a run: the window's snapshots in two interleaved halves (positions 0, 2, 4, ... and
  1, 3, 5, ...; every snapshot is taken on fresh rows, so the halves' sampling noise is
  independent, and interleaving spreads both over the same stretch of training); the
  partition of each half is scored on the other (two folds);
- across runs (``other=``, e.g. the same recipe at another seed): the partition of each run's
  step-averaged matrix is scored on the other's (two folds).

Per fold, with A the scored part's centred affinity (``group_tasks``'s objective) and P the
fitted partition:

    score      = score_A(P)                   (sum over groups of ordered within-group A_ij)
    random     = score_A(R) for ``n_random`` uniformly random partitions R with P's sizes
    p_value    = (1 + #{score_A(R) >= score_A(P)}) / (1 + n_random)   (one-sided)
    ceiling    = max over partitions (same k, max_size) of score_A   (the in-sample optimum)
    retained   = (score - mean random) / (ceiling - mean random)

``p_value`` tests "P captures more of A's structure than a random partition of its sizes". It
is valid (at most its level) whenever P is independent of A's noise, which the split gives;
tests/analyses/test_grouping_holdout.py checks its level on planted data without structure and
its power with planted clusters. With few tasks the p-value cannot be small: 6 tasks in two
groups of 3 have 10 distinct partitions, so a random one equals any given one with
probability 1/10. ``retained`` is the share of the achievable above-chance
structure that carries over (1: the fitted partition is the scored data's optimum; 0: no
better than random).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from analyses._clustering import adjusted_rand_index
from analyses._grouping import (
    _centred,
    _check,
    best_partition,
    partition_score,
    random_partition_scores,
)
from analyses._inputs import Window
from analyses._similarity import windowed
from geomtrace import InvalidInputError

HOLDOUT_COLUMNS = [
    "fit_on", "scored_on", "k", "n_tasks", "score", "random_mean", "random_sd", "p_value",
    "ceiling", "retained", "n_random", "fold_agreement", "groups",
]  # fmt: skip


def _fold(fit: np.ndarray, scored: np.ndarray, k, max_size, n_random, rng, seed) -> tuple:
    """Fit the partition on ``fit``'s centred matrix, score it on ``scored``'s."""
    labels, _, _ = best_partition(_centred(fit), k, max_size=max_size, seed=seed)
    A = _centred(scored)
    score = partition_score(A, labels)
    sizes = np.bincount(labels, minlength=k)
    null = random_partition_scores(A, sizes[sizes > 0], n_random, rng)
    _, ceiling, _ = best_partition(A, k, max_size=max_size, seed=seed)
    mean = float(null.mean())
    with np.errstate(invalid="ignore", divide="ignore"):
        retained = (score - mean) / (ceiling - mean) if ceiling > mean else np.nan
    p = (1 + int(np.sum(null >= score - 1e-12))) / (1 + n_random)
    return (
        labels,
        score,
        mean,
        float(null.std(ddof=1)) if n_random > 1 else np.nan,
        p,
        ceiling,
        retained,
    )


def _complete(matrices: Sequence[np.ndarray], tasks: list[str]) -> list[int]:
    """Tasks with a finite affinity to every other task in every matrix."""
    keep = []
    for i in range(len(tasks)):
        if all(np.isfinite(np.delete(m[i], i)).all() for m in matrices):
            keep.append(i)
    return keep


def grouping_holdout(
    trace: Any,
    k: int,
    *,
    other: Any = None,
    group: str | None = None,
    measure: str = "raw",
    max_size: int | None = None,
    window: Window | None = None,
    n_random: int = 999,
    seed: int = 0,
) -> pd.DataFrame:
    """The grouping of ``k`` groups chosen on one part of the data and scored on the other
    (module docstring): two folds, one row each, columns :data:`HOLDOUT_COLUMNS`.

    ``other``: another run over the same tasks (e.g. another seed) to score on; without it the
    window's snapshots are split in two interleaved halves (needs >= 2 snapshots; with few
    snapshots per half each half's matrix is noisy, which lowers ``retained``, not the level).
    ``fold_agreement``: adjusted Rand index between the two folds' partitions.
    """
    if isinstance(n_random, bool) or not isinstance(n_random, int) or n_random < 1:
        raise InvalidInputError(f"n_random={n_random!r}: give a positive number of partitions")
    with contextlib.ExitStack() as stack:
        trace, other = (_opened(x, stack) for x in (trace, other))
        return _holdout(trace, k, other, group, measure, max_size, window, n_random, seed)


def _opened(source: Any, stack: contextlib.ExitStack) -> Any:
    """A run directory opened as a trace (closed with ``stack``); anything else as is."""
    if isinstance(source, (str, os.PathLike)):
        # imported here: analyses._analyse_run imports most of the package
        from analyses._analyse_run import open_run

        return stack.enter_context(open_run(source))
    return source


def _holdout(trace, k, other, group, measure, max_size, window, n_random, seed) -> pd.DataFrame:
    sim = windowed(trace, group, measure, window=window)
    tasks = list(sim.tasks)
    if other is None:
        if len(sim) < 2:
            raise InvalidInputError(
                f"an out-of-sample grouping within one run needs >= 2 snapshots in the window, "
                f"got {len(sim)} (steps {sim.steps.tolist()}); trace more often or pass other="
            )
        index = np.arange(len(sim))
        parts = [sim.matrix(index[0::2]), sim.matrix(index[1::2])]
        names = [f"snapshots at steps {' '.join(map(str, sim.steps[half].tolist()))}"
                 for half in (slice(0, None, 2), slice(1, None, 2))]  # fmt: skip
    else:
        second = windowed(other, group, measure, window=window)
        if sorted(second.tasks) != sorted(tasks):
            raise InvalidInputError(
                f"the two runs have different tasks ({tasks} vs {list(second.tasks)}): an "
                "out-of-sample score needs the same tasks in both"
            )
        order = [list(second.tasks).index(t) for t in tasks]
        parts = [sim.matrix(), second.matrix()[np.ix_(order, order)]]
        names = ["this run", "other run"]
    keep = _complete(parts, tasks)
    tasks = [tasks[i] for i in keep]
    parts = [p[np.ix_(keep, keep)] for p in parts]
    _check(len(tasks), k, max_size)
    rng = np.random.default_rng(seed)
    rows, fitted = [], []
    for fit, scored in ((0, 1), (1, 0)):
        labels, score, mean, sd, p, ceiling, retained = _fold(
            parts[fit], parts[scored], k, max_size, n_random, rng, seed
        )
        fitted.append(labels)
        groups = " | ".join(
            " ".join(t for t, x in zip(tasks, labels, strict=True) if x == g)
            for g in sorted(set(labels.tolist()))
        )
        rows.append([names[fit], names[scored], k, len(tasks), score, mean, sd, p, ceiling,
                     retained, n_random, np.nan, groups])  # fmt: skip
    agreement = adjusted_rand_index(fitted[0], fitted[1]) if len(tasks) > 1 else np.nan
    for row in rows:
        row[HOLDOUT_COLUMNS.index("fold_agreement")] = agreement
    return pd.DataFrame(rows, columns=HOLDOUT_COLUMNS)


def holdout_lines(frame: pd.DataFrame) -> list[str]:
    """The out-of-sample score as text (``geomtrace group``, the grouping experiment)."""
    if frame is None or frame.empty:
        return []
    lines = ["out of sample (chosen on one part, scored on the other; centred affinity):"]
    for row in frame.itertuples():
        lines.append(
            f"  fit on {row.fit_on}, scored on {row.scored_on}: {row.score:+.3f} vs random "
            f"{row.random_mean:+.3f} (sd {row.random_sd:.3f}), p = {row.p_value:.3f} "
            f"({row.n_random} partitions); retains {row.retained:.0%} of the scored part's "
            "best above-chance score"
        )
    lines.append(f"  the two folds' groupings agree at ARI {frame['fold_agreement'].iloc[0]:+.2f}")
    return lines


def holdout_or_note(trace, kind, k, group, measure, max_size, window, n_random, seed, notes):
    """``grouping_holdout`` for ``group_tasks``: the frame of a cosine grouping, or an empty
    frame and a note in ``notes`` (another affinity, or too few snapshots)."""
    if kind != "cosine":
        notes.append(f"out-of-sample score: computed for the cosine affinity only, not {kind}")
        return pd.DataFrame()
    try:
        return grouping_holdout(
            trace, k, group=group, measure=measure, max_size=max_size, window=window,
            n_random=max(n_random, 999), seed=seed,
        )  # fmt: skip
    except InvalidInputError as err:
        notes.append(f"out-of-sample score not computed: {err}")
        return pd.DataFrame()
