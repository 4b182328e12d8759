import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analyses import mantel, partial_mantel, permutation_correlation
from analyses._stats import _partial, p_value, permutations
from geomtrace import InvalidInputError


def sym(m):
    m = (m + m.T) / 2
    np.fill_diagonal(m, 0.0)
    return m


def planted(n=15, noise=0.3, seed=0):
    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(n, 2))
    dist = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    sim = sym(-dist + rng.normal(scale=noise, size=(n, n)))
    return sim, dist


def test_mantel_recovers_planted_relation():
    sim, dist = planted()
    r = mantel(sim, -dist, n_permutations=999, seed=1)
    assert r.statistic > 0.8
    assert r.p_value == pytest.approx(1 / 1000)  # no permutation reaches the observed r
    assert (r.n, r.n_permutations, r.method, r.alternative) == (15, 999, "spearman", "two-sided")


def test_mantel_default_uses_9999_permutations():
    sim, dist = planted()
    r = mantel(sim, -dist)
    assert r.n_permutations == 9999
    assert r.p_value == pytest.approx(1 / 10000)


def test_mantel_statistic_is_spearman_of_upper_triangles():
    sim, dist = planted(n=8, noise=1.0)
    iu = np.triu_indices(8, 1)
    expected = stats.spearmanr(sim[iu], dist[iu]).statistic
    assert mantel(sim, dist, n_permutations=9).statistic == pytest.approx(expected, abs=1e-12)
    pearson = stats.pearsonr(sim[iu], dist[iu]).statistic
    r = mantel(sim, dist, n_permutations=9, method="pearson")
    assert r.statistic == pytest.approx(pearson, abs=1e-12)


def test_mantel_null_matches_a_naive_loop():
    sim, dist = planted(n=6, noise=2.0, seed=3)
    P, seed = 200, 7
    r = mantel(sim, dist, n_permutations=P, seed=seed)
    iu = np.triu_indices(6, 1)
    null = []
    for p in permutations(6, P, seed):
        null.append(stats.spearmanr(sim[np.ix_(p, p)][iu], dist[iu]).statistic)
    null = np.array(null)
    hits = np.sum(np.abs(null) >= abs(r.statistic) - 1e-12)
    assert r.p_value == pytest.approx((1 + hits) / (1 + P))


def test_mantel_p_values_roughly_uniform_without_relation():
    _, dist = planted(n=10)
    rng = np.random.default_rng(123)
    ps = []
    for seed in range(60):
        noise = sym(rng.normal(size=(10, 10)))
        ps.append(mantel(noise, dist, n_permutations=199, seed=seed).p_value)
    ps = np.array(ps)
    assert stats.kstest(ps, "uniform").pvalue > 0.01
    assert np.mean(ps < 0.05) < 0.2
    assert 0.3 < np.median(ps) < 0.7


def test_same_seed_same_result_and_seed_matters():
    sim, dist = planted(n=9, noise=3.0, seed=5)
    a = mantel(sim, dist, n_permutations=499, seed=11)
    b = mantel(sim, dist, n_permutations=499, seed=11)
    c = mantel(sim, dist, n_permutations=499, seed=12)
    assert a == b
    assert a.statistic == c.statistic
    assert np.array_equal(permutations(9, 50, 11), permutations(9, 50, 11))
    assert not np.array_equal(permutations(9, 50, 11), permutations(9, 50, 12))


def test_partial_mantel_removes_a_planted_confound():
    # x and y both follow z; given z they are independent.
    rng = np.random.default_rng(0)
    n = 20
    z = sym(rng.normal(size=(n, n)))
    x = sym(z + 0.3 * rng.normal(size=(n, n)))
    y = sym(z + 0.3 * rng.normal(size=(n, n)))
    assert mantel(x, y, n_permutations=999).p_value < 0.01
    partial = partial_mantel(x, y, z, n_permutations=999)
    assert abs(partial.statistic) < 0.15
    assert partial.p_value > 0.05


def test_partial_mantel_keeps_a_real_effect_and_matches_formula():
    rng = np.random.default_rng(1)
    n = 16
    z = sym(rng.normal(size=(n, n)))
    y = sym(rng.normal(size=(n, n)))
    x = sym(z + y + 0.5 * rng.normal(size=(n, n)))
    r = partial_mantel(x, y, z, n_permutations=999)
    iu = np.triu_indices(n, 1)
    rho = lambda a, b: stats.spearmanr(a[iu], b[iu]).statistic  # noqa: E731
    expected = (rho(x, y) - rho(x, z) * rho(y, z)) / np.sqrt(
        (1 - rho(x, z) ** 2) * (1 - rho(y, z) ** 2)
    )
    assert r.statistic == pytest.approx(expected, abs=1e-12)
    assert r.statistic > 0.5 and r.p_value < 0.01


def test_labelled_frames_and_input_errors():
    sim, dist = planted(n=5)
    labels = list("abcde")
    f1 = pd.DataFrame(sim, index=labels, columns=labels)
    f2 = pd.DataFrame(dist, index=labels, columns=labels)
    assert (
        mantel(f1, f2, n_permutations=9).statistic == mantel(sim, dist, n_permutations=9).statistic
    )
    with pytest.raises(InvalidInputError, match="labelled"):
        mantel(f1, f2.loc[labels[::-1], labels[::-1]], n_permutations=9)
    with pytest.raises(InvalidInputError, match="at least 4"):
        mantel(sim[:3, :3], dist[:3, :3])
    bad = sim.copy()
    bad[0, 2] = bad[2, 0] = np.nan
    with pytest.raises(InvalidInputError, match="a-c"):
        mantel(pd.DataFrame(bad, index=labels, columns=labels), f2)
    asym = sim.copy()
    asym[0, 1] += 1
    with pytest.raises(InvalidInputError, match="not symmetric"):
        mantel(asym, dist)
    with pytest.raises(InvalidInputError, match="method"):
        mantel(sim, dist, method="kendall")
    with pytest.raises(InvalidInputError, match="alternative"):
        mantel(sim, dist, alternative="both", n_permutations=9)


def test_constant_matrix_gives_nan_not_a_number():
    sim, _ = planted(n=6)
    const = np.ones((6, 6))
    r = mantel(sim, const, n_permutations=9)
    assert np.isnan(r.statistic) and np.isnan(r.p_value)


def test_p_value_conventions():
    null = np.array([0.1, -0.5, 0.3, 0.9])
    assert p_value(null, 0.9, "greater") == pytest.approx(2 / 5)
    assert p_value(null, 0.5, "two-sided") == pytest.approx(3 / 5)
    assert p_value(null, -0.5, "less") == pytest.approx(2 / 5)
    assert np.isnan(p_value(null, np.nan, "greater"))


def test_permutation_correlation_matches_scipy_and_partial_formula():
    rng = np.random.default_rng(2)
    x = rng.normal(size=12)
    y = x + rng.normal(scale=0.5, size=12)
    z = rng.normal(size=12)
    r = permutation_correlation(x, y, n_permutations=999)
    assert r.statistic == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert r.p_value < 0.01
    rxy, rxz, ryz = (stats.spearmanr(a, b).statistic for a, b in ((x, y), (x, z), (y, z)))
    pr = permutation_correlation(x, y, z, n_permutations=99)
    assert pr.statistic == pytest.approx(_partial(rxy, rxz, ryz), abs=1e-12)
    with pytest.raises(InvalidInputError, match="NaN"):
        permutation_correlation([1.0, np.nan, 2, 3], [1.0, 2, 3, 4])
    with pytest.raises(InvalidInputError, match="at least 4"):
        permutation_correlation([1.0, 2, 3], [1.0, 2, 3])
