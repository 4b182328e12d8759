"""What a Gram matrix is: cosines from it, and the checks a stored one must pass.

G = [g_i . g_j] (K x K) of K task gradients is symmetric positive semi-definite: G_ii >= 0,
G_ij = G_ji and, by Cauchy-Schwarz, |G_ij| <= sqrt(G_ii G_jj). A stored matrix (or a task's
split-half products) that breaks these beyond float32 rounding cannot come from gradients;
the reader refuses it with :class:`TraceError` naming the group, step and tasks. This module
needs numpy only (no torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from geomtrace._errors import TraceError

#: relative slack of the checks of a stored Gram matrix, relative to sqrt(G_ii G_jj): the
#: Cauchy-Schwarz bound |G_ij| <= sqrt(G_ii G_jj) and the symmetry |G_ij - G_ji|, and of the
#: split-half identity a.a + b.b + 2 a.b = G_ii. Float32 accumulation over P = 5e7 columns
#: overshoots |cos| = 1 by ~1e-6 (measured; TF32 rounds the inputs, so their Gram is still a
#: Gram); damaged blobs (byte swaps, flipped bits, hand edits) exceed it by orders of magnitude
GRAM_TOLERANCE = 1e-3


def cosine_from_gram(gram: np.ndarray) -> np.ndarray:
    """cos_ij = G_ij / sqrt(G_ii G_jj) over the last two axes, clipped to [-1, 1]; NaN where
    a norm is 0 or not finite (an absent task, or the overflowed gradient of a diverged one)."""
    gram = np.asarray(gram, dtype=np.float64)
    norms = np.sqrt(np.clip(np.diagonal(gram, axis1=-2, axis2=-1), 0, None))
    with np.errstate(over="ignore", invalid="ignore"):
        denom = norms[..., :, None] * norms[..., None, :]
        ok = np.isfinite(denom) & (denom > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(ok, gram / np.where(ok, denom, 1.0), np.nan)
    # Within [-1, 1]: rounding of (nearly) parallel gradients can overshoot by ~1e-6 (the
    # reader refuses Gram matrices that overshoot beyond float32 rounding); NaN stays NaN.
    return np.clip(cos, -1.0, 1.0)


def check_gram(
    gram: np.ndarray, what: str, where: Any, steps: Sequence[int], tasks: Sequence[str]
) -> np.ndarray:
    """Refuse Gram matrices no gradients can have, and return them symmetrised.

    Refused: a negative squared norm, or, between two present tasks (finite diagonal), a
    non-finite entry, an asymmetry |G_ij - G_ji| > tol sqrt(G_ii G_jj) or
    |G_ij| > (1 + tol) sqrt(G_ii G_jj) (tol = ``GRAM_TOLERANCE``). What passes is
    returned as (G + G^T) / 2: exactly symmetric, also for traces written before the
    captures symmetrised (float32 matmuls left them a few ulps apart)."""
    diag = np.diagonal(gram, axis1=-2, axis2=-1)
    present = np.isfinite(diag)
    negative = present & (diag < 0)
    if negative.any():
        s, i = np.argwhere(negative)[0]
        raise TraceError(
            f"{where}: {what} at step {steps[s]}: task {tasks[i]!r} has a "
            f"negative squared norm {diag[s, i]:.3g}; the Gram blob is damaged"
        )
    pair = present[..., :, None] & present[..., None, :]
    with np.errstate(invalid="ignore", over="ignore"):
        bound = np.sqrt(np.where(pair, diag[..., :, None] * diag[..., None, :], 0.0))
        skew = np.abs(gram - np.swapaxes(gram, -1, -2))
        asymmetric = pair & ~(skew <= bound * GRAM_TOLERANCE)
        bad = pair & ~(np.abs(gram) <= bound * (1 + GRAM_TOLERANCE))
    if asymmetric.any():
        s, i, j = np.argwhere(asymmetric)[0]
        a, b = tasks[i], tasks[j]
        raise TraceError(
            f"{where}: {what} at step {steps[s]}: G[{a!r}, {b!r}] = "
            f"{gram[s, i, j]:.4g} and G[{b!r}, {a!r}] = {gram[s, j, i]:.4g} differ by more "
            f"than float32 rounding (a Gram matrix is symmetric); the Gram blob is damaged "
            "(not symmetric)"
        )
    if bad.any():
        s, i, j = np.argwhere(bad)[0]
        with np.errstate(divide="ignore", invalid="ignore"):
            cosine = gram[s, i, j] / bound[s, i, j]
        raise TraceError(
            f"{where}: {what} at step {steps[s]}: G[{tasks[i]!r}, "
            f"{tasks[j]!r}] = {gram[s, i, j]:.4g} is impossible for squared norms "
            f"{diag[s, i]:.4g} and {diag[s, j]:.4g} (cosine {cosine:.4g}: |cosine| > 1 "
            f"beyond float32 rounding, or not finite); the Gram blob is damaged"
        )
    return 0.5 * (gram + np.swapaxes(gram, -1, -2))


def check_split_half(
    split: np.ndarray,
    gram: np.ndarray,
    group: str,
    where: Any,
    steps: Sequence[int],
    tasks: Sequence[str],
) -> None:
    """Refuse split-half products no halves can have: per snapshot and task with a finite
    |g|^2 = G_ii and finite products, a.a < 0 or b.b < 0, |a.b| > sqrt(a.a b.b), or
    a.a + b.b + 2 a.b != G_ii (g = a + b), each beyond float32 rounding (``GRAM_TOLERANCE``
    of aa + bb + 2 |ab| + G_ii). Without it, products of 1e30 gave a reliability of 1.0."""
    aa, bb, ab = split[..., 0], split[..., 1], split[..., 2]
    diag = np.diagonal(gram, axis1=-2, axis2=-1)
    with np.errstate(invalid="ignore", over="ignore"):
        rows = np.isfinite(split).all(axis=-1) & np.isfinite(diag)
        slack = GRAM_TOLERANCE * (np.abs(aa) + np.abs(bb) + 2 * np.abs(ab) + np.abs(diag))
        negative = rows & ((aa < -slack) | (bb < -slack))
        bound = np.sqrt(np.clip(aa, 0, None) * np.clip(bb, 0, None))
        impossible = rows & ~(np.abs(ab) <= bound + slack)
        inconsistent = rows & ~(np.abs(aa + bb + 2 * ab - diag) <= slack)
    for bad, why in (
        (negative, "a negative squared norm of a half"),
        (impossible, "|a.b| > sqrt(a.a b.b)"),
        (inconsistent, "a.a + b.b + 2 a.b differs from |g|^2 = G_ii (g = a + b)"),
    ):
        if bad.any():
            s, i = np.argwhere(bad)[0]
            raise TraceError(
                f"{where}: split_half of group {group!r} at step {steps[s]}: task "
                f"{tasks[i]!r} has (a.a, b.b, a.b) = ({aa[s, i]:.4g}, {bb[s, i]:.4g}, "
                f"{ab[s, i]:.4g}) with |g|^2 = {diag[s, i]:.4g}: {why}; the array is damaged"
            )
