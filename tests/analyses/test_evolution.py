import numpy as np
import pytest

import geomtrace as gt
from analyses import (
    FAMILY_GROUP_COLUMNS,
    FAMILY_TRAJECTORY_COLUMNS,
    GROUP_TRAJECTORY_COLUMNS,
    PAIR_SPREAD_COLUMNS,
    PAIR_TRAJECTORY_COLUMNS,
    SETTLING_COLUMNS,
    family_means_by_group,
    family_trajectories,
    group_trajectories,
    pair_spread,
    pair_trajectories,
    settling,
    settling_step,
)
from geomtrace import InvalidInputError


def test_settling_step_by_hand():
    steps = [0, 10, 20, 30, 40, 50]
    values = [0.0, 0.5, 0.28, 0.31, 0.3, 0.29]
    # final = mean of the last ceil(0.2 * 6) = 2 values = 0.295; band +-0.05 -> [0.245, 0.345].
    step, final = settling_step(steps, values, tol=0.05)
    assert final == pytest.approx(0.295)
    assert step == 20
    assert settling_step(steps, values, tol=0.3)[0] == 0
    # Still moving: the last value is outside the band around the final mean.
    assert settling_step([0, 1, 2, 3], [0, 0, 0, 1.0], tol=0.1, final_fraction=0.5)[0] is None
    assert settling_step([0, 1], [np.nan, np.nan]) == (None, pytest.approx(np.nan, nan_ok=True))
    with pytest.raises(InvalidInputError):
        settling_step([0], [1.0], final_fraction=0)


def planted_stack():
    # 4 tasks, families A A B B; within-family cosine ramps 0 -> 0.6 by step 20, across 0.
    steps = np.array([0, 10, 20, 30, 40])
    within = np.array([0.0, 0.4, 0.6, 0.6, 0.6])
    cos = np.zeros((5, 4, 4))
    for s in range(5):
        cos[s] = np.eye(4)
        cos[s, 0, 1] = cos[s, 1, 0] = cos[s, 2, 3] = cos[s, 3, 2] = within[s]
    return cos, steps


def test_family_and_pair_trajectories():
    cos, steps = planted_stack()
    fam = family_trajectories(cos, ["A", "A", "B", "B"], tasks=list("abcd"), steps=steps)
    assert list(fam.columns) == FAMILY_TRAJECTORY_COLUMNS
    within = fam[fam.kind == "within"]
    assert within["mean_cosine"].tolist() == pytest.approx([0.0, 0.4, 0.6, 0.6, 0.6])
    assert (fam[fam.kind == "across"]["mean_cosine"] == 0).all()
    assert within["n_pairs"].iloc[0] == 2 and fam[fam.kind == "across"]["n_pairs"].iloc[0] == 4
    settle = settling(fam, tol=0.05)
    assert list(settle.columns) == ["group", "kind", *SETTLING_COLUMNS]
    settle = settle.set_index("kind")
    assert settle.loc["within", "settle_step"] == 20
    assert settle.loc["across", "settle_step"] == 0
    pairs = pair_trajectories(cos, tasks=list("abcd"), steps=steps, families=["A", "A", "B", "B"])
    assert list(pairs.columns) == PAIR_TRAJECTORY_COLUMNS
    assert len(pairs) == 5 * 6
    ab = pairs[(pairs.task_a == "a") & (pairs.task_b == "b")]
    assert ab["cosine"].tolist() == pytest.approx([0.0, 0.4, 0.6, 0.6, 0.6])
    assert ab["same_family"].tolist() == [True] * 5
    unknown = family_trajectories(
        cos, {"a": "A", "b": "A", "c": "B"}, tasks=list("abcd"), steps=steps
    )
    assert unknown[unknown.kind == "across"]["n_pairs"].iloc[0] == 2  # d has no family


def test_group_trajectories_in_model_order(tmp_path):
    rng = np.random.default_rng(0)
    groups = [("embed", 4, ["e"]), ("encoder.0", 4, ["a"]), ("decoder.0", 4, ["b"])]
    w = gt.TraceWriter(tmp_path, ["x", "y", "z"], groups)
    for step in (0, 10):
        g = rng.normal(size=(3, 3, 4))
        w.write_snapshot(step, np.einsum("gkp,glp->gkl", g, g))
    w.close()
    trace = gt.open_trace(tmp_path)
    frame = group_trajectories(trace)
    assert list(frame.columns) == GROUP_TRAJECTORY_COLUMNS
    assert frame.drop_duplicates("group")[["group", "position", "part"]].values.tolist() == [
        ["all", -1, "whole"], ["embed", 0, "embedding"], ["encoder.0", 1, "encoder"],
        ["decoder.0", 2, "decoder"],
    ]  # fmt: skip
    cos = trace.cosine("embed")
    iu = np.triu_indices(3, 1)
    got = frame[frame.group == "embed"]["mean_cosine"].to_numpy()
    assert got == pytest.approx(cos[:, iu[0], iu[1]].mean(axis=1))
    assert settling(frame, by=("group",))["group"].tolist() == [
        "all",
        "embed",
        "encoder.0",
        "decoder.0",
    ]


def unit_gram(xy: float, xz: float, yz: float) -> np.ndarray:
    """A Gram matrix with unit norms, so its cosines are its entries."""
    return np.array([[1.0, xy, xz], [xy, 1.0, yz], [xz, yz, 1.0]])


def test_family_means_by_group_by_hand(tmp_path):
    # x, y in family A, z in B: within = cos_xy, across = (cos_xz + cos_yz) / 2. Dyadic
    # values: exact in the trace's float32 Gram matrices.
    cos = {
        "encoder.0": {0: (0.875,) * 3, 10: (0.5, 0.125, -0.375), 20: (0.75, 0.375, 0.125)},
        "decoder.0": {0: (0.875,) * 3, 10: (0.25, 0.0, 0.5), 20: (0.5, -0.25, 0.0)},
    }
    groups = [("encoder.0", 4, ["e"]), ("decoder.0", 4, ["d"])]
    with gt.TraceWriter(tmp_path, ["x", "y", "z"], groups) as w:
        for step in (0, 10, 20):
            w.write_snapshot(step, np.stack([unit_gram(*cos[g][step]) for g, _, _ in groups]))
    trace = gt.open_trace(tmp_path)
    families = {"x": "A", "y": "A", "z": "B"}
    frame = family_means_by_group(trace, families, ["all", "encoder.0", "decoder.0"])
    assert list(frame.columns) == FAMILY_GROUP_COLUMNS
    got = {(g, k): v for g, k, v in frame[["group", "kind", "mean_cosine"]].values}
    # Window after step 0. encoder: within (0.5 + 0.75) / 2, across (-0.125 + 0.25) / 2.
    assert got["encoder.0", "within"] == 0.625
    assert got["encoder.0", "across"] == 0.0625
    # decoder: within (0.25 + 0.5) / 2, across (0.25 + -0.125) / 2.
    assert got["decoder.0", "within"] == 0.375
    assert got["decoder.0", "across"] == 0.0625
    # all: the Gram sum has norms sqrt(2), so cos = mean of the two groups' entries:
    # step 10 (0.375, 0.0625, 0.0625), step 20 (0.625, 0.0625, 0.0625).
    assert got["all", "within"] == pytest.approx(0.5, abs=1e-12)
    assert got["all", "across"] == pytest.approx(0.0625, abs=1e-12)
    assert frame[["group", "position", "part"]].drop_duplicates().values.tolist() == [
        ["all", -1, "whole"], ["encoder.0", 0, "encoder"], ["decoder.0", 1, "decoder"],
    ]  # fmt: skip
    assert set(frame["n_snapshots"]) == {2}
    # Window including step 0, default groups (trace.groups, model order).
    with0 = family_means_by_group(trace, families, window=(0, None))
    assert with0["group"].tolist() == ["encoder.0"] * 2 + ["decoder.0"] * 2
    enc = with0[with0.group == "encoder.0"].set_index("kind")["mean_cosine"]
    assert enc["within"] == pytest.approx((0.875 + 0.5 + 0.75) / 3, abs=1e-12)
    assert enc["across"] == pytest.approx((0.875 - 0.125 + 0.25) / 3, abs=1e-12)
    with pytest.raises(InvalidInputError, match="needs a trace"):
        family_means_by_group(np.zeros((2, 3, 3)), families)


def test_pair_spread_by_hand():
    # a, b in family A; c, d in B. Step 1: d absent (NaN row and column).
    m0 = np.array(
        [[1.0, 0.2, 0.0, 0.4], [0.2, 1.0, 0.1, -0.2], [0.0, 0.1, 1.0, 0.6], [0.4, -0.2, 0.6, 1.0]]
    )
    m1 = np.array(
        [[1.0, 0.5, 0.3, np.nan], [0.5, 1.0, -0.1, np.nan], [0.3, -0.1, 1.0, np.nan],
         [np.nan] * 4]
    )  # fmt: skip
    families = {"a": "A", "b": "A", "c": "B", "d": "B"}
    pairs = pair_trajectories(np.stack([m0, m1]), families=families, tasks=list("abcd"))
    spread = pair_spread(pairs)
    assert list(spread.columns) == PAIR_SPREAD_COLUMNS
    got = spread.set_index(["step", "kind"])
    # step 0 within: {0.2, 0.6} -> q25 = 0.2 + 0.25 * 0.4, q75 = 0.2 + 0.75 * 0.4.
    assert got.loc[(0, "within"), ["q25", "q75", "n_pairs"]].tolist() == pytest.approx(
        [0.3, 0.5, 2]
    )
    # step 0 across: sorted {-0.2, 0.0, 0.1, 0.4}; positions 0.75 and 2.25.
    assert got.loc[(0, "across"), ["q25", "q75", "n_pairs"]].tolist() == pytest.approx(
        [-0.05, 0.175, 4]
    )
    # step 1: NaN pairs skipped; within {0.5}, across {0.3, -0.1}.
    assert got.loc[(1, "within"), ["q25", "q75", "n_pairs"]].tolist() == pytest.approx(
        [0.5, 0.5, 1]
    )
    assert got.loc[(1, "across"), ["q25", "q75", "n_pairs"]].tolist() == pytest.approx(
        [0.0, 0.2, 2]
    )
    # Without families every pair is kind "all".
    unknown = pair_spread(pair_trajectories(m0, tasks=list("abcd")))
    assert unknown[["kind", "n_pairs"]].values.tolist() == [["all", 6]]
    assert unknown["q25"].iloc[0] == pytest.approx(np.quantile([0.2, 0, 0.4, 0.1, -0.2, 0.6], 0.25))
    with pytest.raises(InvalidInputError, match="pair_trajectories frame"):
        pair_spread(pairs.drop(columns="same_family"))


def test_reliability_trajectory_by_hand(tmp_path):
    """Two snapshots of 3 tasks with halves a, b: reliability 4 a.b / |a + b|^2 per task,
    raw and noise-corrected mean pair cosine, computed by hand."""
    from analyses import RELIABILITY_TRAJECTORY_COLUMNS, reliability_trajectory

    rng = np.random.default_rng(0)
    tasks = ["x", "y", "z"]
    writer = gt.TraceWriter(tmp_path / "r", tasks, [("g", 4, ["g.w"])])
    expected = []
    for step in (0, 10):
        signal_part = rng.normal(size=(3, 32)) / 2
        a = signal_part + 0.3 * rng.normal(size=(3, 32))
        b = signal_part + 0.3 * rng.normal(size=(3, 32))
        g = a + b
        split = np.stack([(a * a).sum(1), (b * b).sum(1), (a * b).sum(1)], axis=1)
        writer.write_snapshot(step, (g @ g.T)[None], arrays={"split_half": split[None]})
        gram = g @ g.T
        cos = gram / np.sqrt(np.outer(np.diag(gram), np.diag(gram)))
        signal = 4 * split[:, 2]
        rel = signal / np.diag(gram)
        assert (signal > 0).all()
        corrected = np.clip(gram / np.sqrt(np.outer(signal, signal)), -1, 1)
        iu = np.triu_indices(3, 1)
        finite = np.isfinite(corrected[iu])
        expected.append((rel.mean(), cos[iu].mean(), corrected[iu][finite].mean()))
    writer.close()
    trace = gt.open_trace(tmp_path / "r")
    got = reliability_trajectory(trace, "g")
    assert list(got.columns) == RELIABILITY_TRAJECTORY_COLUMNS and list(got.step) == [0, 10]
    np.testing.assert_allclose(
        got[["reliability", "mean_cosine", "mean_corrected"]].to_numpy(), expected, rtol=1e-5
    )
