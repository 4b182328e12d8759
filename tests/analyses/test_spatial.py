"""Moran spectral surrogates and the spatial Mantel test: exactness, level, power, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import analyses
from geomtrace import InvalidInputError

K = 24


@pytest.fixture(scope="module")
def geography() -> np.ndarray:
    """[K, K] km between 24 points in four clusters of a 4000 km square (planar, seeded)."""
    rng = np.random.default_rng(7)
    centres = np.array([[0, 0], [3000, 500], [1500, 3500], [4000, 4000]], dtype=float)
    points = centres[np.arange(K) % 4] + rng.normal(scale=500, size=(K, 2))
    return np.linalg.norm(points[:, None] - points[None], axis=-1)


@pytest.fixture(scope="module")
def cosine() -> np.ndarray:
    rng = np.random.default_rng(3)
    g = rng.normal(size=(K, 10)) + 1.0
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    return g @ g.T


def centred(m):
    j = np.eye(len(m)) - 1.0 / len(m)
    return j @ m @ j


def test_moran_basis_is_orthonormal_with_the_constant_first(geography):
    basis = analyses.moran_basis(analyses.proximity(geography), bin_size=3)
    q = basis.vectors
    np.testing.assert_allclose(q.T @ q, np.eye(K), atol=1e-10)
    np.testing.assert_allclose(q[:, 0], 1 / np.sqrt(K))
    assert np.all(np.diff(basis.values) <= 1e-12)  # smooth (high Moran's I) first
    # Bins of 3 over the K - 1 = 23 contrasts: 7 bins, the remainder (2) joins the last one.
    assert basis.bins[0] == (0, 3) and basis.bins[-1] == (18, 23) and len(basis.bins) == 7


@pytest.mark.parametrize("bin_size", [1, 2])
def test_surrogates_keep_spectrum_main_effects_and_moran_power(geography, cosine, bin_size):
    w = analyses.proximity(geography)
    s = analyses.spatial_surrogates(cosine, w, n_surrogates=20, seed=1, bin_size=bin_size)
    assert s.shape == (20, K, K)
    np.testing.assert_allclose(s, np.swapaxes(s, 1, 2), atol=1e-12)
    c = centred(cosine)
    values = np.linalg.eigvalsh(c)
    basis = analyses.moran_basis(w, bin_size=bin_size)
    power = np.diagonal(basis.vectors.T @ c @ basis.vectors)
    for x_star in s:
        c_star = centred(x_star)
        # The centred part is an orthogonal conjugate of J x J: same spectrum, PSD like it.
        np.testing.assert_allclose(np.linalg.eigvalsh(c_star), values, atol=1e-10)
        assert np.linalg.eigvalsh(c_star).min() > -1e-10
        # The languages' main effects are kept as observed.
        np.testing.assert_allclose(x_star - c_star, cosine - c, atol=1e-12)
        # Power per Moran eigenvector (singleton) or per bin (pair) is preserved.
        p_star = np.diagonal(basis.vectors.T @ c_star @ basis.vectors)
        for lo, hi in basis.bins:
            np.testing.assert_allclose(p_star[1 + lo : 1 + hi].sum(), power[1 + lo : 1 + hi].sum())
        if bin_size == 1:
            np.testing.assert_allclose(p_star, power, atol=1e-10)
    assert not np.allclose(s[0], s[1])  # the surrogates differ
    again = analyses.spatial_surrogates(cosine, w, n_surrogates=20, seed=1, bin_size=bin_size)
    np.testing.assert_array_equal(s, again)  # seeded


def test_statistics_match_the_plain_and_partial_mantel(geography, cosine):
    rng = np.random.default_rng(0)
    y = -np.abs(rng.normal(size=(K, 1)) - rng.normal(size=(1, K)))
    y = (y + y.T) / 2
    w = analyses.proximity(geography)
    for method in ("spearman", "pearson"):
        plain = analyses.spatial_mantel(cosine, y, weights=w, n_surrogates=99, method=method)
        ref = analyses.mantel(cosine, y, n_permutations=9, method=method)
        assert plain.statistic == pytest.approx(ref.statistic, abs=1e-12)
        assert 0 < plain.p_value <= 1 and plain.n == K and plain.n_permutations == 99
        part = analyses.spatial_mantel(
            cosine, y, weights=w, control=-geography, n_surrogates=99, method=method
        )
        ref = analyses.partial_mantel(cosine, y, -geography, n_permutations=9, method=method)
        assert part.statistic == pytest.approx(ref.statistic, abs=1e-12)
    frames = [pd.DataFrame(m, index=list("abcdefghijklmnopqrstuvwx")) for m in (cosine, y)]
    frames = [f.set_axis(f.index, axis=1) for f in frames]
    res = analyses.spatial_mantel(*frames, weights=w, n_surrogates=99, seed=4)
    assert res == analyses.spatial_mantel(cosine, y, weights=w, n_surrogates=99, seed=4)


def test_fitted_proximity_recovers_the_process_range(geography):
    cands = analyses.proximity_candidates(geography, ranges_km=(300, 1000, 3000))
    rng = np.random.default_rng(2)
    cov = analyses.null_covariances(geography, ranges_km=(3000,))["geographic 3000 km"]
    a = np.linalg.cholesky(cov) @ rng.normal(size=(K, 200))
    w, beta = analyses.fitted_proximity(a @ a.T / 200, cands)
    assert max(beta, key=beta.get) == "geographic 3000 km"
    assert sum(beta.values()) == pytest.approx(1.0)
    np.testing.assert_allclose(w, sum(beta[n] * cands[n] for n in cands))


def test_level_holds_under_a_geographic_null_where_the_permutation_test_fails(geography):
    df = analyses.spatial_null_level(
        geography, control=-geography, scenarios=["geographic 1000 km"], n_reps=100,
        n_surrogates=99, seed=11,
    )  # fmt: skip
    rate = df.set_index("test")["rate"]
    assert rate["mantel"] > 0.3 and rate["partial_mantel"] > 0.1  # the problem is real here
    assert rate["spatial_mantel"] <= 0.08
    assert rate["spatial_partial_mantel"] <= 0.08
    assert list(df.columns) == analyses.LEVEL_COLUMNS


def test_power_for_a_strong_planted_relation(geography):
    df = analyses.spatial_null_level(
        geography, scenarios=["geographic 1000 km"], effect=1.0, n_reps=30, n_surrogates=99,
        seed=12,
    )  # fmt: skip
    assert df.set_index("test")["rate"]["spatial_mantel"] > 0.5


def test_input_errors(geography, cosine):
    w = analyses.proximity(geography)
    y = -geography
    with pytest.raises(InvalidInputError, match="method 'kendall'"):
        analyses.spatial_mantel(cosine, y, weights=w, method="kendall")
    with pytest.raises(InvalidInputError, match="alternative 'up'"):
        analyses.spatial_mantel(cosine, y, weights=w, alternative="up")
    with pytest.raises(InvalidInputError, match="n_surrogates must be an integer >= 1, got 0"):
        analyses.spatial_mantel(cosine, y, weights=w, n_surrogates=0)
    with pytest.raises(InvalidInputError, match="weights are 5x5, x is 24x24"):
        analyses.spatial_mantel(cosine, y, weights=np.eye(5))
    bad = cosine.copy()
    bad[3, 3] = np.nan
    with pytest.raises(InvalidInputError, match=r"non-finite diagonal at positions \[3\]"):
        analyses.spatial_mantel(bad, y, weights=w)
    asym = cosine.copy()
    asym[0, 1] += 1
    with pytest.raises(InvalidInputError, match="x is not symmetric"):
        analyses.spatial_mantel(asym, y, weights=w)
    with pytest.raises(InvalidInputError, match="control has shape"):
        analyses.spatial_mantel(cosine, y, weights=w, control=np.eye(5))
    with pytest.raises(
        InvalidInputError, match=r"bin_size must be an integer in \[1, 23\], got 30"
    ):
        analyses.moran_basis(w, bin_size=30)
    with pytest.raises(InvalidInputError, match="range_km must be a positive number of km, got -1"):
        analyses.proximity(geography, range_km=-1)
    with pytest.raises(InvalidInputError, match="candidate proximity 'g' must be finite"):
        analyses.fitted_proximity(cosine, {"g": np.eye(3)})
    with pytest.raises(InvalidInputError, match="proximity kinds"):
        analyses.language_proximity(["fra", "deu"], kinds=["syntactic"])
    with pytest.raises(InvalidInputError, match=r"unknown scenarios \['mars'\]"):
        analyses.spatial_null_level(geography, scenarios=["mars"], n_reps=1)
    with pytest.raises(InvalidInputError, match="effect must be in"):
        analyses.simulate_pair(np.eye(K), np.random.default_rng(0), effect=2.0)


def test_language_proximity_from_lang2vec():
    codes = ["fra", "spa", "deu", "fin"]
    cands = analyses.language_proximity(codes, ranges_km=(1000,))
    assert list(cands) == ["geographic 1000 km", "genetic"]
    for frame in cands.values():
        assert list(frame.index) == codes and frame.shape == (4, 4)
        np.testing.assert_allclose(np.diagonal(frame.to_numpy()), 1.0)
        np.testing.assert_allclose(frame.to_numpy(), frame.to_numpy().T)
    geo, gen = cands["geographic 1000 km"], cands["genetic"]
    assert geo.loc["fra", "spa"] > geo.loc["fra", "fin"]  # Paris-Madrid < Paris-Helsinki
    assert gen.loc["fra", "spa"] > gen.loc["fra", "deu"] > gen.loc["fra", "fin"] == 0.0


def _field(geography, rng, n=1, range_km=1000.0):
    """[n, K] Gaussian fields over the points with covariance exp(-d / range)."""
    cov = np.exp(-geography / range_km)
    return (np.linalg.cholesky(cov + 1e-9 * np.eye(K)) @ rng.normal(size=(K, n))).T


def test_spatial_correlation_matches_the_permutation_statistic(geography):
    rng = np.random.default_rng(5)
    x, y, z = _field(geography, rng, 3)
    w = analyses.proximity(geography)
    for control in (None, z):
        got = analyses.spatial_correlation(x, y, control, weights=w, n_surrogates=49, seed=1)
        plain = analyses.permutation_correlation(x, y, control, n_permutations=49, seed=1)
        assert got.statistic == pytest.approx(plain.statistic, abs=1e-12)
        assert 0 < got.p_value <= 1 and got.n == K and got.n_permutations == 49
    # a mapping of candidates is fitted to x's outer product; same statistic
    cands = analyses.proximity_candidates(geography)
    fitted = analyses.spatial_correlation(x, y, weights=cands, n_surrogates=49)
    bare = analyses.permutation_correlation(x, y, n_permutations=9)
    assert fitted.statistic == pytest.approx(bare.statistic, abs=1e-12)


def test_spatial_correlation_surrogates_keep_the_moran_power(geography):
    """x* = Q O Q^T x with random signs: same mean, norm and power per Moran eigenvector."""
    rng = np.random.default_rng(6)
    x = _field(geography, rng)[0]
    basis = analyses.moran_basis(analyses.proximity(geography))
    from analyses._spatial import _rotations

    m = _rotations(basis, 30, np.random.default_rng(0))
    star = m @ (basis.vectors.T @ x)
    np.testing.assert_allclose(star.mean(1), x.mean(), atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(star, axis=1), np.linalg.norm(x), rtol=1e-12)
    np.testing.assert_allclose(
        np.abs(star @ basis.vectors), np.abs(x @ basis.vectors)[None].repeat(30, 0), atol=1e-10
    )


def test_spatial_correlation_holds_its_level_where_permutations_fail(geography):
    """Two independent fields over the same geography: permuting rejects far above 5%, the
    surrogates keeping x's autocorrelation near it (150 seeded repetitions)."""
    rng = np.random.default_rng(8)
    cands = analyses.proximity_candidates(geography)
    spatial = plain = 0
    reps = 150
    for rep in range(reps):
        x, y = _field(geography, rng, 2, range_km=1500.0)
        kw = {"seed": rep}
        test = analyses.spatial_correlation(x, y, weights=cands, n_surrogates=99, **kw)
        spatial += test.p_value <= 0.05
        plain += analyses.permutation_correlation(x, y, n_permutations=99, **kw).p_value <= 0.05
    assert plain / reps > 0.15
    assert spatial / reps <= 0.09


def test_spatial_correlation_input_errors(geography):
    w = analyses.proximity(geography)
    x = np.arange(K, dtype=float)
    with pytest.raises(InvalidInputError, match="equal length"):
        analyses.spatial_correlation(x, x[:-1], weights=w)
    with pytest.raises(InvalidInputError, match="NaN"):
        analyses.spatial_correlation(np.where(x > 3, x, np.nan), x, weights=w)
    with pytest.raises(InvalidInputError, match="at least 4"):
        analyses.spatial_correlation(x[:3], x[:3], weights=w[:3, :3])
    with pytest.raises(InvalidInputError, match="one row per"):
        analyses.spatial_correlation(x[:5], x[:5], weights=w)
    with pytest.raises(InvalidInputError, match="n_surrogates"):
        analyses.spatial_correlation(x, x, weights=w, n_surrogates=0)
