"""Summary numbers of one snapshot, per parameter group (pure numpy; used by TensorBoard).

For group k with cosine matrix C = cos(G_k) over the K tasks, and the off-diagonal pairs
P = {(i, j): i != j, C_ij finite} (absent tasks and zero gradients give NaN and are left out):

- ``mean_cosine``   = mean_{(i,j) in P} C_ij
- ``conflict_rate`` = |{(i,j) in P: C_ij < 0}| / |P|  (the fraction of conflicting pairs)
- ``gradvac_target_mean`` = the mean of GradVac's EMA targets phi_ij over the same kind of
  pairs, when the snapshot stores them (array ``gradvac_target``, [G, K, K]).

C is symmetric, so means over ordered pairs equal means over unordered ones. A group with no
finite pair gets no entry (rather than a NaN scalar).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from geomtrace import InvalidInputError, cosine_from_gram


def _off_diagonal(matrix: np.ndarray) -> np.ndarray:
    """The finite off-diagonal entries of a K x K matrix."""
    k = matrix.shape[-1]
    values = matrix[~np.eye(k, dtype=bool)]
    return values[np.isfinite(values)]


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
        pairs = _off_diagonal(cosine[k])
        if pairs.size:
            out[group, "mean_cosine"] = float(pairs.mean())
            out[group, "conflict_rate"] = float((pairs < 0).mean())
        if targets is not None:
            phi = _off_diagonal(np.asarray(targets, dtype=np.float64)[k])
            if phi.size:
                out[group, "gradvac_target_mean"] = float(phi.mean())
    return out
