"""Confound distances between tasks, from the trace's corpus metadata.

Gradient cosine at step 0 (an untrained model) already tracks how much two languages' text
shares bytes: a prototype measured rho = .81 with byte overlap. Typology correlates with
script and character overlap too, so every typology correlation is also reported controlled
for these distances (partial Mantel).

- ``script``: 0 when the two languages' corpora use the same ISO 15924 script, else 1
  (trace meta ``scripts``: {task: "Latn"}).
- ``char_overlap``: 1 - sum_c min(p_a(c), p_b(c)) with p the character profile normalised to
  sum 1 (trace meta ``char_profiles``: {task: {char: frequency}}); the total-variation
  distance between the two character distributions: 0 = identical, 1 = no common character.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from analyses._inputs import is_trace
from geomtrace import InvalidInputError

COVARIATES = ("char_overlap", "script")


def script_distance(scripts: Mapping[str, str], tasks: Sequence[str]) -> pd.DataFrame:
    """[K, K] 0/1 matrix: 1 where the two tasks' scripts differ."""
    missing = [t for t in tasks if not scripts.get(t)]
    if missing:
        raise InvalidInputError(f"no script recorded for tasks {missing}")
    s = np.array([scripts[t] for t in tasks])
    return pd.DataFrame((s[:, None] != s[None, :]).astype(float), index=tasks, columns=tasks)


def char_overlap_distance(
    profiles: Mapping[str, Mapping[str, float]], tasks: Sequence[str]
) -> pd.DataFrame:
    """[K, K] total-variation distance 1 - sum_c min(p_a(c), p_b(c)) of normalised profiles."""
    missing = [t for t in tasks if not profiles.get(t)]
    if missing:
        raise InvalidInputError(f"no character profile recorded for tasks {missing}")
    chars = sorted({c for t in tasks for c in profiles[t]})
    col = {c: i for i, c in enumerate(chars)}
    P = np.zeros((len(tasks), len(chars)))
    for k, t in enumerate(tasks):
        for c, v in profiles[t].items():
            P[k, col[c]] = float(v)
    if (P < 0).any():
        raise InvalidInputError("character profiles must be non-negative frequencies")
    P /= P.sum(axis=1, keepdims=True)
    overlap = np.minimum(P[:, None, :], P[None, :, :]).sum(axis=2)
    d = np.clip(1.0 - overlap, 0.0, 1.0)
    np.fill_diagonal(d, 0.0)
    return pd.DataFrame(d, index=tasks, columns=tasks)


def covariate_distances(
    source: Any, tasks: Sequence[str] | None = None
) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """The built-in covariates available from a trace's meta (or a meta mapping).

    Returns ``({name: [K, K] DataFrame}, {name: reason it is unavailable})``.
    """
    if is_trace(source):
        tasks = list(source.tasks) if tasks is None else list(tasks)
        scripts, profiles = source.meta("scripts"), source.meta("char_profiles")
    else:
        scripts, profiles = source.get("scripts"), source.get("char_profiles")
        if tasks is None:
            raise InvalidInputError("covariate_distances from a meta mapping needs tasks")
    found, skipped = {}, {}
    for name, value, build in (
        ("char_overlap", profiles, char_overlap_distance),
        ("script", scripts, script_distance),
    ):
        key = "char_profiles" if name == "char_overlap" else "scripts"
        what = "character profile" if name == "char_overlap" else "script"
        if not value:
            skipped[name] = f"the run recorded no {what}s (trace meta {key!r})"
            continue
        missing = [t for t in tasks if not value.get(t)]
        if missing:
            skipped[name] = f"no {what} recorded for {missing}"
            continue
        found[name] = build(value, tasks)
    return found, skipped


def task_covariates(
    source: Any, tasks: Sequence[str]
) -> tuple[dict[str, pd.Series], dict[str, str]]:
    """Per-task versions of the covariate distances: how much a task shares with the others.

    For a covariate distance d (:func:`covariate_distances`) over K tasks, task i's value is
    c_i = 1 - (1 / (K - 1)) sum_{j != i} d_ij: its mean character overlap with the others for
    ``char_overlap``, the share of the other tasks written in its script for ``script``. A
    task's mean gradient similarity with the others can be high for either reason, so a
    correlation of that mean with the task's quality is also reported controlled for each
    (``quality_correlation``). Returns ``({name: Series over tasks}, {name: reason it is
    unavailable})``; fewer than 2 tasks give no covariate.
    """
    tasks = list(tasks)
    if len(tasks) < 2:
        return {}, {name: f"{len(tasks)} task: nothing to share with" for name in COVARIATES}
    found, skipped = covariate_distances(source, tasks)
    out = {}
    for name, d in found.items():
        m = d.loc[tasks, tasks].to_numpy(dtype=float)
        out[name] = pd.Series(1.0 - m.sum(axis=1) / (len(tasks) - 1), index=tasks)
    return out, skipped
