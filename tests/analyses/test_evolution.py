import numpy as np
import pytest

import geomtrace as gt
from analyses import (
    FAMILY_TRAJECTORY_COLUMNS,
    GROUP_TRAJECTORY_COLUMNS,
    PAIR_TRAJECTORY_COLUMNS,
    SETTLING_COLUMNS,
    family_trajectories,
    group_trajectories,
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
