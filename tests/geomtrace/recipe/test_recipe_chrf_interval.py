"""chrF with a bootstrap interval over test strings (embedded.chrf_interval)."""

import numpy as np
import pytest
import sacrebleu

from geomtrace.recipe.embedded import chrf_interval

REFS = [
    "Save and continue editing", "Delete the selected items", "Add another row",
    "Change password", "This field is required.", "Enter a valid email address.",
    "Log out", "View on site", "Filter by date", "Select all", "Clear selection",
    "Page not found", "Server error", "Show all", "History", "Recent actions",
]  # fmt: skip
HYPS = [
    "Save and continue edit", "Delete selected items", "Add an other row",
    "Change the password", "This field is needed.", "Enter valid email address",
    "Logout", "See on site", "Filter on date", "Select everything", "Clear the selection",
    "Page is not found", "Error of server", "Show everything", "Story", "Last actions",
]  # fmt: skip


def test_point_value_is_sacrebleu_corpus_chrf():
    out = chrf_interval(HYPS, REFS)
    assert out["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score, abs=1e-9)
    assert out["n"] == len(REFS)
    assert out["low"] < out["chrf"] < out["high"]
    assert chrf_interval(HYPS, REFS) == out  # seeded: the same interval every time
    assert chrf_interval(HYPS, REFS, seed=1) != out


def test_perfect_output_has_a_zero_width_interval_at_100():
    out = chrf_interval(REFS, REFS)
    assert out["chrf"] == pytest.approx(100.0)
    assert out["low"] == pytest.approx(100.0) and out["high"] == pytest.approx(100.0)


def test_interval_narrows_like_one_over_root_n():
    """Four copies of the test set: the same chrF, an interval about half as wide."""
    one = chrf_interval(HYPS, REFS, n_bootstrap=4000)
    four = chrf_interval(HYPS * 4, REFS * 4, n_bootstrap=4000)
    assert four["chrf"] == pytest.approx(one["chrf"])
    ratio = (four["high"] - four["low"]) / (one["high"] - one["low"])
    assert 0.4 < ratio < 0.6


def test_replicates_match_a_resampling_by_hand():
    """The replicate distribution equals chrF recomputed on resampled string lists."""
    rng = np.random.default_rng(3)
    by_hand = []
    for _ in range(300):
        idx = rng.integers(0, len(REFS), len(REFS))
        by_hand.append(
            sacrebleu.corpus_chrf([HYPS[i] for i in idx], [[REFS[i] for i in idx]]).score
        )
    lo, hi = np.quantile(by_hand, [0.025, 0.975])
    out = chrf_interval(HYPS, REFS, n_bootstrap=2000)
    assert abs(out["low"] - lo) < 4 and abs(out["high"] - hi) < 4
