"""One estimator per quantity: the trace reader, the geomtrace functions and the analyses give
the same reliability, corrected similarity, mean pair similarity and NaN-aware mean."""

from __future__ import annotations

import numpy as np
import pytest

import analyses
import geomtrace as gt


def shrinking_trace(tmp_path, seed=0, K=5, S=8, P=60):
    """Gradients that shrink 10x per snapshot, with split halves (issue 18's sign-change case)."""
    rng = np.random.default_rng(seed)
    tasks = [f"t{i}" for i in range(K)]
    base = rng.normal(size=(K, P)) + 0.8 * rng.normal(size=P)  # a shared direction
    run = tmp_path / f"shrink{seed}"
    writer = gt.TraceWriter(run, tasks, [("g", P, ["w"])], overwrite=True)
    for s in range(S):
        scale = 10.0 ** (-s)
        a = scale * (base + 2.0 * rng.normal(size=(K, P)))
        b = scale * (base + 2.0 * rng.normal(size=(K, P)))
        g = a + b
        split = np.stack([(a * a).sum(1), (b * b).sum(1), (a * b).sum(1)], axis=1)
        writer.write_snapshot(s, (g @ g.T)[None], arrays={"split_half": split[None]})
    writer.close()
    return gt.open_trace(run)


def test_trace_window_cosine_is_what_analyses_prints(tmp_path):
    trace = shrinking_trace(tmp_path)
    by_trace = trace.window_cosine("g", corrected=True)
    by_function = gt.window_corrected_cosine(trace.gram("g")[1:], trace.split_half("g")[1:])
    by_analyses = analyses.similarity(trace, "g", "corrected").select(trace.steps > 0).matrix()
    np.testing.assert_array_equal(by_trace, by_function)
    np.testing.assert_allclose(by_trace, by_analyses, rtol=0, atol=0)
    np.testing.assert_allclose(
        trace.window_reliability("g"),
        analyses.similarity(trace, "g", "corrected").select(trace.steps > 0).reliability(),
    )
    raw = analyses.similarity(trace, "g", "raw").select(trace.steps > 0).matrix()
    np.testing.assert_allclose(trace.window_cosine("g"), raw)


def test_scale_keeps_late_snapshots_from_being_drowned(tmp_path):
    """Without the per-snapshot scale, the first snapshot (10^7 x larger) would be the whole
    average; with it, every snapshot weighs the same: the window estimate equals the
    estimate on snapshots rescaled to a common norm."""
    trace = shrinking_trace(tmp_path, seed=1)
    gram, split = trace.gram("g"), trace.split_half("g")
    c = np.array([np.mean(np.diagonal(G)) for G in gram])
    rescaled = gt.window_corrected_cosine(gram / c[:, None, None], split / c[:, None, None])
    np.testing.assert_allclose(gt.window_corrected_cosine(gram, split), rescaled, atol=1e-12)


def test_corrected_is_bounded_and_not_estimable_below_the_floor():
    # Task 1: a.b tiny relative to |g|^2 (R = 0.02): not estimable; tasks 0, 2: a ratio > 1.
    gram = np.array([[[4.0, 0.1, 3.9], [0.1, 100.0, 0.0], [3.9, 0.0, 4.0]]])
    split = np.array([[[1.0, 1.0, 0.9], [49.0, 49.0, 0.5], [1.0, 1.0, 0.9]]])
    out = gt.window_corrected_cosine(gram, split)
    assert np.isnan(out[1]).all() and np.isnan(out[:, 1]).all()
    assert out[0, 2] == 1.0  # 3.9 / 3.6 clipped
    assert out[0, 0] == 1.0
    assert gt.window_reliability(gram, split)[1] == pytest.approx(2.0 / 100.0)


def test_summaries_by_hand():
    m = np.array([[1.0, 0.5, np.nan], [0.5, 1.0, -0.25], [np.nan, -0.25, 1.0]])
    assert gt.mean_pair_similarity(m) == pytest.approx(0.125)
    assert gt.conflict_rate(m) == pytest.approx(0.5)
    np.testing.assert_allclose(gt.mean_pair_similarity(np.stack([m, m])), [0.125, 0.125])
    np.testing.assert_allclose(gt.nanmean(np.array([[1.0, np.nan], [3.0, np.nan]])), [2, np.nan])
    assert analyses.mean_pair_similarity is gt.mean_pair_similarity
