import numpy as np
import pytest
from scipy.stats import spearmanr

import analyses
from analyses._uncertainty import correlation_rows, partial_from_r, spearman_rows
from geomtrace import InvalidInputError


def test_holm_by_hand():
    # Sorted 0.01, 0.03, 0.04: 3 x 0.01 = 0.03, 2 x 0.03 = 0.06, 1 x 0.04 -> max(0.06, 0.04).
    assert analyses.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    out = analyses.holm([0.5, np.nan, 0.2])  # NaN is not a test: m = 2
    assert out[0] == pytest.approx(0.5) and np.isnan(out[1]) and out[2] == pytest.approx(0.4)
    assert analyses.holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])


def test_benjamini_hochberg_by_hand():
    # Sorted 0.01, 0.03, 0.04, 0.5 (m = 4): 4 x 0.01 / 1 = 0.04, 4 x 0.03 / 2 = 0.06,
    # 4 x 0.04 / 3 = 0.0533, 4 x 0.5 / 4 = 0.5; running minimum from the top: 0.04, 0.0533,
    # 0.0533, 0.5.
    got = analyses.benjamini_hochberg([0.04, 0.5, 0.01, 0.03, np.nan])
    assert got[:4] == pytest.approx([4 * 0.04 / 3, 0.5, 0.04, 4 * 0.04 / 3])
    assert np.isnan(got[4])
    assert (got[:4] <= analyses.holm([0.04, 0.5, 0.01, 0.03]) + 1e-12).all()  # never stricter


def test_block_bootstrap_draws_runs_of_consecutive_snapshots():
    idx = analyses.block_bootstrap(20, 50, seed=3)
    assert idx.shape == (50, 20) and idx.min() >= 0 and idx.max() <= 19
    # Default block length round(20 ** (1/3)) = 3: each row is runs of 3 consecutive indices,
    # wrapping from the last snapshot to the first (circular blocks).
    runs = idx[:, :18].reshape(50, 6, 3)
    assert (np.diff(runs, axis=2) % 20 == 1).all()
    # Every snapshot is drawn at the same rate (a moving block without wrapping draws the
    # first and last at 1/L the rate of the middle ones).
    counts = np.bincount(analyses.block_bootstrap(20, 4000, seed=1).ravel(), minlength=20)
    assert counts.min() / counts.max() > 0.9
    assert np.array_equal(idx, analyses.block_bootstrap(20, 50, seed=3))
    assert analyses.block_bootstrap(5, 4, block=1, seed=0).shape == (4, 5)
    with pytest.raises(InvalidInputError, match="block"):
        analyses.block_bootstrap(5, 4, block=9)
    with pytest.raises(InvalidInputError, match="n_bootstrap"):
        analyses.block_bootstrap(5, 0)


def test_block_length_follows_the_autocorrelation():
    from analyses._uncertainty import default_block

    rng = np.random.default_rng(0)
    white = rng.normal(size=60)
    ar = np.zeros(60)
    for t in range(1, 60):
        ar[t] = 0.9 * ar[t - 1] + rng.normal()
    assert default_block(60, white) <= 3 < default_block(60, ar)
    assert default_block(60, ar) >= 5  # (sqrt(6) 0.9 / 0.19)^(2/3) 60^(1/3) ~ 20, capped at 30
    assert default_block(60) == round(60 ** (1 / 3))


def test_interval_and_row_correlations():
    values = np.arange(1001, dtype=float)
    assert analyses.interval(values) == pytest.approx((25.0, 975.0))
    # Basic interval: reflected about the estimate, clipped to the bounds.
    assert analyses.interval(values, estimate=600.0) == pytest.approx((225.0, 1175.0))
    assert analyses.interval(values / 1000, estimate=0.9, bounds=(-1, 1)) == pytest.approx(
        (0.825, 1.0)
    )
    assert all(np.isnan(analyses.interval(np.array([1.0, np.nan]))))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 30)), rng.normal(size=30)
    expected = [spearmanr(row, y).statistic for row in x]
    assert spearman_rows(x, y) == pytest.approx(expected)
    assert correlation_rows(x, y, "pearson") == pytest.approx([np.corrcoef(r, y)[0, 1] for r in x])
    assert partial_from_r(0.5, 0.0, 0.0) == pytest.approx(0.5)
    assert partial_from_r(0.5, 0.5, 0.5) == pytest.approx((0.5 - 0.25) / 0.75)


def test_fast_tree_cut_equals_scipy_maxclust():
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    from analyses import adjusted_rand_index
    from analyses._clustering import _cut

    rng = np.random.default_rng(1)
    for _ in range(20):
        x = rng.normal(size=(12, 5))
        d = np.linalg.norm(x[:, None] - x[None], axis=2)
        Z = linkage(squareform(d, checks=False), "average")
        for n in (2, 3, 5):
            ours = _cut(Z, 12, n)
            theirs = fcluster(Z, t=n, criterion="maxclust")
            assert adjusted_rand_index(ours, theirs) == pytest.approx(1.0)


def test_detectable_effect_by_hand():
    """The smallest |rho| detectable with 80% power from a language interval: its Fisher-z
    standard error times (t_.975 + t_.80) over n - 1 degrees of freedom, back on rho's scale."""
    from scipy.stats import t

    from analyses._language_level import detectable_effect, language_interval

    rng = np.random.default_rng(0)
    loo = np.tanh(0.3 + 0.05 * rng.normal(size=16))
    low, high = language_interval(0.3, loo)
    se = np.std(np.arctanh(loo)) * np.sqrt(15)  # jackknife se: sqrt((n-1)/n sum dev^2)
    expected = np.tanh((t.ppf(0.975, 15) + t.ppf(0.8, 15)) * se)
    assert detectable_effect(low, high, 16) == pytest.approx(expected, rel=1e-9)
    # wider interval, larger detectable effect; undefined interval, NaN
    assert detectable_effect(low - 0.1, high + 0.1, 16) > expected
    assert np.isnan(detectable_effect(np.nan, 0.5, 16)) and np.isnan(detectable_effect(0.1, 0.5, 2))


def test_block_length_follows_the_fluctuations_not_the_drift():
    """A steady fall over training is not dependence between snapshots: the block length
    comes from the residuals of the series' line (a drifting iid series gets blocks of 1),
    while an AR(1) series keeps long blocks."""
    from analyses._uncertainty import default_block

    rng = np.random.default_rng(1)
    t = np.arange(10)
    falling = 0.8 - 0.05 * t + 0.01 * rng.normal(size=10)
    assert default_block(10, falling) == 1
    ar = np.zeros(40)
    for k in range(1, 40):
        ar[k] = 0.9 * ar[k - 1] + rng.normal()
    assert default_block(40, ar) >= 4
