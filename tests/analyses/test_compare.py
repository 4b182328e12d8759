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
    seeds = across_seeds(results)
    row = seeds[(seeds["method"] == "sum (baseline)") & (seeds["table"] == "similarity")].iloc[0]
    assert row["n_seeds"] == 2
    values = [r.headline()["mean_similarity"] for r in results[:2]]
    assert row["mean"] == pytest.approx(np.mean(values))
    assert isinstance(compare_runs(results[:2]), NotApplicable)
    assert "baseline" in str(compare_runs(results[2:]))
