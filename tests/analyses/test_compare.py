import numpy as np
import pytest

import analyses
from analyses import NotApplicable, across_seeds, compare_runs, higher_is_better, t_interval


def test_t_interval_and_metric_direction():
    lo, hi = t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / np.sqrt(3)  # t_{0.975, 2} * sd / sqrt(n)
    assert (lo, hi) == pytest.approx((2 - half, 2 + half))
    assert all(np.isnan(t_interval([1.0])))
    assert higher_is_better("chrf") and higher_is_better("accuracy")
    assert not higher_is_better("heldout_loss") and not higher_is_better("mse")


def _runs(tmp_path, write):
    runs = []
    for s in (0, 1):
        write(tmp_path / f"sum{s}", seed=s)
        runs.append(tmp_path / f"sum{s}")
    for s in (0, 1):
        write(tmp_path / f"gv{s}", seed=s, method="gradvac", chrf_shift=2.0 + s)
        runs.append(tmp_path / f"gv{s}")
    return analyses.analyse_runs(runs, n_permutations=49, n_bootstrap=20)


def test_compare_runs_and_seeds(tmp_path, planted_trace):
    results = _runs(tmp_path, planted_trace)
    comparison = compare_runs(results)
    assert comparison.baseline == "sum (baseline)" and comparison.metric == "chrf"
    assert list(comparison.methods) == ["sum (baseline)", "GradVac (all_layer)"]
    # chrF = 30 + task index + shift: each seed-matched delta is that seed's shift (2, 3).
    d = comparison.deltas
    assert set(d["seed"]) == {0, 1} and len(d) == 2 * 12
    assert d.groupby("seed")["delta"].mean().to_dict() == pytest.approx({0: 2.0, 1: 3.0})
    per_method = comparison.per_method.iloc[0]
    seed_means = d.groupby("seed")["delta"].mean()
    assert per_method["mean_delta"] == pytest.approx(seed_means.mean())
    assert (per_method["ci_low"], per_method["ci_high"]) == pytest.approx(t_interval(seed_means))
    # the planted baselines have the same chrF at both seeds: no seed noise to borrow
    assert per_method["n_baseline_seeds"] == 2 and np.isnan(per_method["ref_ci_low"])
    seeds = across_seeds(results)
    row = seeds[(seeds["method"] == "sum (baseline)") & (seeds["table"] == "similarity")].iloc[0]
    assert row["n_seeds"] == 2
    values = [r.headline()["mean_similarity"] for r in results[:2]]
    assert row["mean"] == pytest.approx(np.mean(values))
    assert isinstance(compare_runs(results[:2]), NotApplicable)
    assert "baseline" in str(compare_runs(results[2:]))


def test_baseline_seed_interval_by_hand():
    from analyses._compare import baseline_seed_interval

    # one method seed, baseline task means 12.0, 12.4, 12.7 (sd 0.3512), difference +0.6
    lo, hi, p, detectable = baseline_seed_interval(0.6, 1, [12.0, 12.4, 12.7])
    se = np.std([12.0, 12.4, 12.7], ddof=1) * np.sqrt(2.0)
    t = 4.302652729911275  # t_{0.975, 2}
    assert (lo, hi) == pytest.approx((0.6 - t * se, 0.6 + t * se))
    from scipy import stats

    assert p == pytest.approx(2 * stats.t.sf(0.6 / se, 2))
    assert detectable == pytest.approx((t + 1.0606601717798212) * se)  # + t_{0.8, 2}
    # two method seeds: the standard error shrinks by sqrt(2)
    lo2, hi2, _, detectable2 = baseline_seed_interval(0.6, 2, [12.0, 12.4, 12.7])
    assert hi2 - lo2 == pytest.approx((hi - lo) / np.sqrt(2))
    assert detectable2 == pytest.approx(detectable / np.sqrt(2))
    assert all(np.isnan(baseline_seed_interval(0.6, 1, [12.0])))  # one baseline seed
