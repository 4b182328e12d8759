"""The out-of-sample grouping score: its level without structure, its power with clusters."""

import numpy as np
import pytest

import geomtrace as gt
from analyses import grouping_holdout
from benchmarks.grouping_holdout_calibration import planted_cosines as _cosines
from geomtrace import InvalidInputError


def test_level_without_structure_is_at_most_nominal():
    # Exchangeable tasks, independent noise per snapshot: the partition fitted on one half of
    # the snapshots is independent of the other half's noise, so p is (super-)uniform.
    rng = np.random.default_rng(0)
    p = []
    for rep in range(120):
        cos = _cosines(rng, np.zeros(9, dtype=int), strength=0.0)
        frame = grouping_holdout(cos, 3, window=(0, None), n_random=199, seed=rep)
        p.append(frame["p_value"].iloc[0])
    p = np.array(p)
    rejected = float(np.mean(p <= 0.05))
    # nominal 5%; 120 reps: binomial sd 2%, so > 11% would be a real excess
    assert rejected <= 0.11, rejected
    assert 0.35 < p.mean() < 0.65


def test_planted_clusters_are_found_out_of_sample():
    rng = np.random.default_rng(1)
    clusters = np.repeat([0, 1, 2], 4)
    cos = _cosines(rng, clusters, strength=0.6)
    tasks = [f"t{i}" for i in range(12)]
    frame = grouping_holdout(cos, 3, window=(0, None), n_random=499)
    assert len(frame) == 2 and (frame["p_value"] <= 1 / 500 + 1e-12).all()
    assert (frame["retained"] > 0.8).all() and (frame["fold_agreement"] == 1.0).all()
    # the fitted groups are the planted clusters
    groups = sorted(sorted(g.split()) for g in frame["groups"].iloc[0].split(" | "))
    assert groups == sorted(sorted(f"{i}" for i in range(c * 4, c * 4 + 4)) for c in range(3))
    assert tasks  # task names of an array input are "0".."K-1"


def test_scored_on_another_run_and_errors_name_the_problem(tmp_path):
    rng = np.random.default_rng(2)
    clusters = np.repeat([0, 1], 3)
    tasks = [f"head{i}" for i in range(6)]  # a multi-task run: no ISO codes
    for name in ("a", "b"):
        cos = _cosines(rng, clusters, snapshots=4, strength=0.8)
        with gt.TraceWriter(tmp_path / name, tasks, [("body", 8, ["w"])]) as w:
            for step, c in zip((10, 20, 30, 40), cos, strict=True):
                w.write_snapshot(step, c[None], {t: 1.0 for t in tasks})
    with gt.open_trace(tmp_path / "a") as a, gt.open_trace(tmp_path / "b") as b:
        frame = grouping_holdout(a, 2, other=b, n_random=99)
        assert list(frame["fit_on"]) == ["this run", "other run"]
        # 6 tasks in 3 + 3 have 10 distinct partitions: a random one is the planted one with
        # probability 1/10, so p cannot go below ~0.1 here (the resolution of a small K)
        assert (frame["p_value"] <= 0.15).all() and (frame["retained"] == 1.0).all()
        assert frame["groups"].iloc[0] == "head0 head1 head2 | head3 head4 head5"
        within = grouping_holdout(a, 2, n_random=99)
        assert within["fit_on"].iloc[0] == "snapshots at steps 10 30"
        with pytest.raises(InvalidInputError, match="needs >= 2 snapshots in the window"):
            grouping_holdout(a, 2, window=(40, 40))
        with pytest.raises(InvalidInputError, match="n_random=0"):
            grouping_holdout(a, 2, n_random=0)
        with pytest.raises(InvalidInputError, match="between 1 and 6"):
            grouping_holdout(a, 7)
