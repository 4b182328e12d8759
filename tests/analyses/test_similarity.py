import numpy as np
import pandas as pd
import pytest
from scipy import stats

import analyses
import geomtrace as gt
from analyses import (
    ALIGNMENT_COLUMNS,
    SUMMARY_COLUMNS,
    similarity_matrix,
    similarity_summary,
    task_alignment,
)
from geomtrace import InvalidInputError

# Three snapshots (steps 0, 10, 20) of 3 tasks, hand-made cosines.
C0 = np.array([[1, 0.9, 0.9], [0.9, 1, 0.9], [0.9, 0.9, 1]])
C1 = np.array([[1, 0.5, -0.1], [0.5, 1, 0.2], [-0.1, 0.2, 1]])
C2 = np.array([[1, 0.3, -0.3], [0.3, 1, np.nan], [-0.3, np.nan, 1]])
STACK = np.stack([C0, C1, C2])
TASKS = ["a", "b", "c"]


def test_summary_by_hand():
    row = similarity_summary(STACK, tasks=TASKS, steps=[0, 10, 20]).iloc[0]
    # Window after step 0: pair values 0.5, -0.1, 0.2 (step 10) and 0.3, -0.3 (step 20; b-c NaN).
    # The step-averaged matrix: a-b 0.4, a-c -0.2, b-c 0.2 (step 10 only); each pair counts once.
    assert row["mean_cosine"] == pytest.approx((0.4 - 0.2 + 0.2) / 3)
    step_means = np.array([0.6 / 3, 0.0 / 2])
    assert row["std_over_steps"] == pytest.approx(step_means.std())
    assert row["conflict_rate"] == pytest.approx(2 / 5)
    assert (row["n_steps"], row["step_first"], row["step_last"]) == (2, 10, 20)
    assert (row["n_pairs"], row["n_missing"]) == (3, 1)
    assert list(similarity_summary(STACK, tasks=TASKS).columns) == SUMMARY_COLUMNS
    whole = similarity_summary(STACK, tasks=TASKS, steps=[0, 10, 20], window=(0, 10)).iloc[0]
    assert whole["mean_cosine"] == pytest.approx((2.7 + 0.6) / 6)


def test_task_alignment_by_hand():
    frame = task_alignment(STACK, tasks=TASKS, steps=[0, 10, 20]).set_index("task")
    assert list(frame.reset_index().columns) == ["task", "group", *ALIGNMENT_COLUMNS[2:]]
    a_steps = np.array([(0.5 - 0.1) / 2, (0.3 - 0.3) / 2])
    # a's alignment: mean of the step-averaged a-b (0.4) and a-c (-0.2).
    assert frame.loc["a", "mean_alignment"] == pytest.approx((0.4 - 0.2) / 2)
    assert frame.loc["a", "std_over_steps"] == pytest.approx(a_steps.std())
    assert frame.loc["a", "conflict_rate"] == pytest.approx(2 / 4)
    # c: step-averaged a-c -0.2 and b-c 0.2 (b-c missing at step 20).
    assert frame.loc["c", "mean_alignment"] == pytest.approx(0.0)
    assert frame.loc["c", "conflict_rate"] == pytest.approx(2 / 3)
    assert frame.loc["c", "n_steps"] == 2


def test_similarity_matrix_skips_nan_snapshots():
    m = similarity_matrix(STACK, tasks=TASKS, steps=[0, 10, 20])
    assert isinstance(m, pd.DataFrame) and list(m.index) == TASKS
    assert m.loc["a", "b"] == pytest.approx(0.4)
    assert m.loc["b", "c"] == pytest.approx(0.2)  # only step 10 has b-c
    assert similarity_matrix(C1, tasks=TASKS).equals(pd.DataFrame(C1, index=TASKS, columns=TASKS))
    never = STACK.copy()
    never[1:, 1, 2] = never[1:, 2, 1] = np.nan
    assert np.isnan(similarity_matrix(never, tasks=TASKS).loc["b", "c"])


def test_window_errors_are_explicit():
    with pytest.raises(InvalidInputError, match="window=\\(0, None\\)"):
        similarity_summary(C0[None], tasks=TASKS)  # a single snapshot at step 0
    with pytest.raises(InvalidInputError, match="no snapshot in step window"):
        similarity_summary(STACK, tasks=TASKS, window=(100, None))
    with pytest.raises(InvalidInputError, match="task names"):
        similarity_summary(STACK, tasks=["a", "b"])
    with pytest.raises(InvalidInputError, match="shape"):
        similarity_summary(np.zeros((2, 3, 4)))


def test_trace_groups_and_whole_model(tmp_path):
    rng = np.random.default_rng(0)
    tasks = ["x", "y", "z", "w"]
    w = gt.TraceWriter(tmp_path, tasks, [("enc", 5, ["e"]), ("dec", 7, ["d"])])
    grads = {}
    for step in (0, 5, 10):
        ge, gd = rng.normal(size=(4, 5)), rng.normal(size=(4, 7))
        grads[step] = np.concatenate([ge, gd], axis=1)
        w.write_snapshot(step, np.stack([ge @ ge.T, gd @ gd.T]))
    w.close()
    trace = gt.open_trace(tmp_path)
    frame = similarity_summary(trace)
    assert list(frame["group"]) == ["all", "enc", "dec"]
    assert list(frame["position"]) == [-1, 0, 1]
    assert list(frame["part"]) == ["whole", "encoder", "decoder"]
    # "all" is the cosine of the concatenated gradients (float32 storage: 1e-6).
    full = np.stack([g / np.linalg.norm(g, axis=1, keepdims=True) for g in (grads[5], grads[10])])
    cos = full @ full.transpose(0, 2, 1)
    iu = np.triu_indices(4, 1)
    assert frame.iloc[0]["mean_cosine"] == pytest.approx(cos[:, iu[0], iu[1]].mean(), abs=1e-6)
    m = similarity_matrix(trace, "all")
    assert np.allclose(m.to_numpy(), cos.mean(0), atol=1e-6)
    with pytest.raises(InvalidInputError, match="unknown group"):
        similarity_summary(trace, "mlp")


def test_group_difference_is_paired_and_matches_the_summaries(tmp_path):
    """decoder - encoder on the same bootstrap replicates: the point is the difference of the
    two summaries' means, under either measure; an unknown group is refused."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import planted_traces as pt

    sc = pt.Scenario("pair", "two groups", n_languages=8, n_snapshots=12, dim=32)
    run = pt.simulate(sc, 0, tmp_path, noise_free=False)
    trace = gt.open_trace(run.run)
    got = analyses.group_difference(trace, "encoder.0", "decoder.0", n_bootstrap=200)
    summary = analyses.similarity_summary(trace, ["encoder.0", "decoder.0"], n_bootstrap=200)
    means = summary.set_index("group")["mean_corrected"]
    assert got["difference"] == pytest.approx(means["decoder.0"] - means["encoder.0"])
    assert got["ci_low"] <= got["difference"] <= got["ci_high"]
    assert list(got) == analyses.DIFFERENCE_COLUMNS and got["n_steps"] == 12
    raw = analyses.group_difference(trace, "encoder.0", "decoder.0", measure="raw")
    raw_means = summary.set_index("group")["mean_cosine"]
    assert raw["difference"] == pytest.approx(raw_means["decoder.0"] - raw_means["encoder.0"])
    with pytest.raises(gt.InvalidInputError, match="group"):
        analyses.group_difference(trace, "encoder.0", "nope")


def test_training_change_by_hand_and_its_paired_interval():
    # STACK: step 0 mean pair 0.9; window matrix (steps 10, 20) mean (0.4 - 0.2 + 0.2) / 3
    got = analyses.training_change(STACK, steps=[0, 10, 20], measure="raw")
    assert list(got) == analyses.TRAINING_CHANGE_COLUMNS
    assert got["mean_step0"] == pytest.approx(0.9)
    assert got["mean_trained"] == pytest.approx(0.4 / 3)
    assert got["change"] == pytest.approx(0.4 / 3 - 0.9)
    # 3 tasks: leaving one out keeps one pair; the jackknife is over those three changes
    loo = np.array([0.2 - 0.9, -0.2 - 0.9, 0.4 - 0.9])  # pairs b-c, a-c, a-b left
    se = np.sqrt(2 / 3 * ((loo - loo.mean()) ** 2).sum())
    half = stats.t.ppf(0.975, 2) * se
    assert got["lang_ci_low"] == pytest.approx(got["change"] - half)
    assert got["lang_ci_high"] == pytest.approx(got["change"] + half)
    assert got["n_steps"] == 2 and got["n_tasks"] == 3
    # no step 0: the trained mean only
    later = analyses.training_change(STACK[1:], steps=[10, 20], measure="raw")
    assert np.isnan(later["change"]) and later["mean_trained"] == pytest.approx(0.4 / 3)


def test_training_change_interval_covers_a_planted_change():
    """Snapshots of a stable trained geometry plus fresh noise: the paired (task jackknife)
    interval of the change from step 0 covers the noise-free change in most repetitions, and
    the change is centred on it."""
    rng = np.random.default_rng(0)
    K, S = 6, 12
    truth_matrix = np.full((K, K), 0.3)
    np.fill_diagonal(truth_matrix, 1.0)
    start = np.eye(K) + 0.8 * (1 - np.eye(K))
    hits, centre = [], []
    for _ in range(60):
        noise = rng.normal(scale=0.1, size=(S, K, K))
        noise = (noise + noise.transpose(0, 2, 1)) / 2
        snaps = truth_matrix + noise
        for s in snaps:
            np.fill_diagonal(s, 1.0)
        stack = np.concatenate([start[None], snaps])
        got = analyses.training_change(stack, steps=range(0, 10 * (S + 1), 10), measure="raw")
        hits.append(got["lang_ci_low"] <= 0.3 - 0.8 <= got["lang_ci_high"])
        centre.append(got["change"])
    assert np.mean(hits) >= 0.85
    assert np.mean(centre) == pytest.approx(-0.5, abs=0.01)
