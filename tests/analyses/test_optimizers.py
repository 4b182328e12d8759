import numpy as np
import pytest

import geomtrace as gt
from analyses import GRADVAC_TARGET_COLUMNS, gradvac_target_trajectories
from geomtrace import InvalidInputError


def symmetric(d01: float, d02: float, d12: float, diagonal: float = 9.0) -> np.ndarray:
    return np.array([[diagonal, d01, d02], [d01, diagonal, d12], [d02, d12, diagonal]])


def test_gradvac_target_trajectories_by_hand(tmp_path):
    groups = [("encoder.0", 4, ["e"]), ("decoder.0", 4, ["d"])]
    targets = {
        0: [symmetric(0.0, 0.0, 0.0), symmetric(0.0, 0.0, 0.0)],
        # mean over the 6 ordered pairs i != j (the diagonal 9 is never used):
        # (0.1 + 0.2 + 0.3) * 2 / 6 = 0.2; with pair 0-2 unset (NaN): (0.4 + 0.0) * 2 / 4 = 0.2.
        50: [symmetric(0.1, 0.2, 0.3), symmetric(0.4, np.nan, 0.0)],
    }
    with gt.TraceWriter(tmp_path / "gv", ["x", "y", "z"], groups) as w:
        for step, t in targets.items():
            w.write_snapshot(
                step, np.stack([np.eye(3)] * 2), arrays={"gradvac_target": np.stack(t)}
            )
    frame = gradvac_target_trajectories(gt.open_trace(tmp_path / "gv"))
    assert list(frame.columns) == GRADVAC_TARGET_COLUMNS
    assert frame[["step", "group", "n_pairs"]].values.tolist() == [
        [0, "encoder.0", 6], [0, "decoder.0", 6], [50, "encoder.0", 6], [50, "decoder.0", 4],
    ]  # fmt: skip
    np.testing.assert_allclose(frame["mean_target"], [0.0, 0.0, 0.2, 0.2], atol=1e-12)

    with gt.TraceWriter(tmp_path / "sum", ["x", "y", "z"], groups) as w:
        w.write_snapshot(0, np.stack([np.eye(3)] * 2))
    empty = gradvac_target_trajectories(gt.open_trace(tmp_path / "sum"))
    assert empty.empty and list(empty.columns) == GRADVAC_TARGET_COLUMNS
    with pytest.raises(InvalidInputError, match="needs a trace"):
        gradvac_target_trajectories(np.zeros((1, 2, 3, 3)))
