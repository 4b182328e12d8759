"""Summary numbers of one snapshot, per parameter group (pure numpy; used by TensorBoard).

For group k with cosine matrix C = cos(G_k) over the K tasks, and the off-diagonal pairs
P = {(i, j): i != j, C_ij finite} (absent tasks and zero gradients give NaN and are left out):

- ``mean_cosine``   = mean_{(i,j) in P} C_ij
- ``conflict_rate`` = |{(i,j) in P: C_ij < 0}| / |P|  (the fraction of conflicting pairs)
- ``gradvac_target_mean`` = the mean of GradVac's EMA targets phi_ij over the ordered pairs
  i != j (targets are directed), when the snapshot stores them (array ``gradvac_target``, [G, K, K]).

Both are ``gt.mean_pair_similarity`` and ``gt.conflict_rate`` over the unordered pairs i < j
(C is symmetric), the definitions every command uses. A group with no finite pair gets no
entry (rather than a NaN scalar).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from geomtrace import (
    InvalidInputError,
    conflict_rate,
    cosine_from_gram,
    mean_pair_similarity,
    nanmean,
    ordered_pair_values,
)


def snapshot_scalars(
    gram: np.ndarray,
    groups: Sequence[str],
    targets: np.ndarray | None = None,
) -> dict[tuple[str, str], float]:
    """``{(group, name): value}`` for ``gram`` [G, K, K] (and GradVac ``targets`` [G, K, K])."""
    gram = np.asarray(gram, dtype=np.float64)
    if gram.ndim != 3 or gram.shape[1] != gram.shape[2] or gram.shape[0] != len(groups):
        raise InvalidInputError(f"gram must be [G={len(groups)}, K, K], got shape {gram.shape}")
    cosine = cosine_from_gram(gram)
    out: dict[tuple[str, str], float] = {}
    for k, group in enumerate(groups):
        mean = mean_pair_similarity(cosine[k])
        if np.isfinite(mean):
            out[group, "mean_cosine"] = mean
            out[group, "conflict_rate"] = conflict_rate(cosine[k])
        if targets is not None:
            # GradVac's targets are directed (phi_ij is updated while visiting task i, after
            # earlier projections): the mean is over ordered pairs i != j, not i < j.
            phi = np.asarray(targets, dtype=np.float64)[k]
            phi = nanmean(ordered_pair_values(phi), axis=-1)
            if np.isfinite(phi):
                out[group, "gradvac_target_mean"] = float(phi)
    return out
