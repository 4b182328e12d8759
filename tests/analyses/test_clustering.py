import numpy as np
import pandas as pd
import pytest

from analyses import AGREEMENT_COLUMNS, adjusted_rand_index, cluster_tasks, family_agreement
from geomtrace import InvalidInputError


def planted_similarity(sizes=(4, 3, 3, 2), within=0.6, noise=0.1, seed=0):
    rng = np.random.default_rng(seed)
    fam = np.repeat(np.arange(len(sizes)), sizes)
    sim = within * (fam[:, None] == fam[None]) + rng.normal(scale=noise, size=(len(fam),) * 2)
    sim = (sim + sim.T) / 2
    np.fill_diagonal(sim, 1.0)
    tasks = [f"t{i}" for i in range(len(fam))]
    return pd.DataFrame(sim, index=tasks, columns=tasks), {
        t: f"F{f}" for t, f in zip(tasks, fam, strict=True)
    }


def test_adjusted_rand_index_by_hand():
    assert adjusted_rand_index([0, 0, 1, 1], [5, 5, 7, 7]) == pytest.approx(1.0)
    # Contingency [[2, 1], [0, 1]]: index 1, sums C(3,2)+C(1,2)=3 and C(2,2)*2=2, C(4,2)=6.
    expected = (1 - 3 * 2 / 6) / ((3 + 2) / 2 - 3 * 2 / 6)
    assert adjusted_rand_index([0, 0, 0, 1], [0, 0, 1, 1]) == pytest.approx(expected)


def test_clustering_recovers_planted_families():
    sim, families = planted_similarity()
    tree = cluster_tasks(sim)
    assert tree.linkage.shape == (11, 4)
    assert sorted(tree.leaves) == sorted(sim.index)
    assert tree.cophenetic_correlation > 0.9
    cut = tree.cut(4)
    groups = {}
    for t, c in cut.items():
        groups.setdefault(c, set()).add(families[t])
    assert all(len(v) == 1 for v in groups.values()) and len(groups) == 4

    frame = family_agreement(sim, families, n_permutations=999, seed=0)
    assert list(frame.columns) == AGREEMENT_COLUMNS
    rows = frame.set_index("statistic")
    assert rows.loc["ari", "value"] == pytest.approx(1.0)
    assert rows.loc["ari", "p_value"] == pytest.approx(1 / 1000)
    assert rows.loc["ari", "n_families"] == 4 and rows.loc["ari", "n_clusters"] == 4
    assert abs(rows.loc["ari", "null_mean"]) < 0.05
    assert rows.loc["nn_same_family", "value"] == 1.0
    assert rows.loc["nn_same_family", "p_value"] < 0.01
    # Expected same-family rate under permutation: sum n_f (n_f - 1) / (K (K - 1)).
    sizes = np.array([4, 3, 3, 2])
    expected = (sizes * (sizes - 1)).sum() / (12 * 11)
    assert rows.loc["nn_same_family", "null_mean"] == pytest.approx(expected, abs=0.02)
    assert np.isnan(rows.loc["cophenetic_correlation", "p_value"])


def test_no_structure_gives_no_significance():
    sim, families = planted_similarity(within=0.0, noise=0.3, seed=4)
    rows = family_agreement(sim, families, n_permutations=999, seed=1).set_index("statistic")
    assert rows.loc["ari", "p_value"] > 0.05
    assert rows.loc["nn_same_family", "p_value"] > 0.05


def test_same_seed_same_frame_and_degenerate_families():
    sim, families = planted_similarity(within=0.2, noise=0.3, seed=2)
    a = family_agreement(sim, families, n_permutations=199, seed=3)
    b = family_agreement(sim, families, n_permutations=199, seed=3)
    pd.testing.assert_frame_equal(a, b)
    one = family_agreement(sim, dict.fromkeys(sim.index, "X"), n_permutations=9).set_index(
        "statistic"
    )
    assert np.isnan(one.loc["ari", "value"]) and "one family" in one.loc["ari", "note"]
    own = family_agreement(sim, {t: t for t in sim.index}, n_permutations=9).set_index("statistic")
    assert np.isnan(own.loc["ari", "value"]) and "own family" in own.loc["ari", "note"]


def test_clustering_errors():
    sim, families = planted_similarity()
    with pytest.raises(InvalidInputError, match="no family given"):
        family_agreement(sim, {"t0": "F0"})
    bad = sim.copy()
    bad.iloc[0, 1] = bad.iloc[1, 0] = np.nan
    with pytest.raises(InvalidInputError, match="t0-t1"):
        cluster_tasks(bad)
    with pytest.raises(InvalidInputError, match="at least 3"):
        cluster_tasks(np.eye(2))
    with pytest.raises(InvalidInputError, match="at least 4 tasks"):
        family_agreement(np.eye(3), ["A", "A", "B"])
