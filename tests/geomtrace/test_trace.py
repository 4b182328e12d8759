"""The trace on disk: round trip, concurrent reading, crash safety, bad files."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import geomtrace as gt
from geomtrace import InvalidInputError, TraceError

TASKS = ["es", "fr", "ja"]
GROUPS = [("encoder", 10, ["enc.w", "enc.b"]), ("decoder", 6, ["dec.w"])]


def _gram(step):
    rng = np.random.default_rng(step)
    A = rng.normal(size=(2, 3, 4))
    return A @ A.transpose(0, 2, 1)


def _write(path, steps=(0, 10, 20)):
    with gt.TraceWriter(
        path, TASKS, GROUPS, iso_codes={"es": "spa", "ja": "jpn"}, config={"lr": 0.1}
    ) as w:
        for step in steps:
            w.write_snapshot(
                step,
                _gram(step),
                {"es": 1.0 + step, "fr": 2.0},
                arrays={"weights": np.ones((2, 3)) * step},
            )
        w.write_quality(20, "ja", "chrf", 31.5)
        w.set_meta("scripts", {"es": "Latn", "fr": "Latn", "ja": "Jpan"})


def test_round_trip(tmp_path):
    _write(tmp_path)
    trace = gt.open_trace(tmp_path)
    assert trace.tasks == TASKS
    assert trace.iso_codes == {"es": "spa", "fr": None, "ja": "jpn"}
    assert trace.groups == ["encoder", "decoder"]
    assert trace.group_sizes == {"encoder": 10, "decoder": 6}
    assert trace.group_params["encoder"] == ["enc.w", "enc.b"]
    assert trace.steps.tolist() == [0, 10, 20]
    assert trace.config == {"lr": 0.1}
    assert trace.meta("scripts")["ja"] == "Jpan"
    assert trace.meta("versions")["torch"]
    expected = np.stack([_gram(s)[1] for s in (0, 10, 20)])
    np.testing.assert_allclose(trace.gram("decoder"), expected.astype(np.float32), rtol=0)
    d = np.sqrt(np.diagonal(expected, axis1=1, axis2=2))
    np.testing.assert_allclose(
        trace.cosine("decoder"), expected / (d[:, :, None] * d[:, None, :]), rtol=1e-6
    )
    assert trace.array("weights").shape == (3, 2, 3)
    assert trace.array("weights")[2, 0, 0] == 20
    assert trace.array("weights", group="decoder").shape == (3, 3)
    losses = trace.losses()
    assert list(losses.columns) == ["step", "task", "loss"] and len(losses) == 6
    assert losses.query("step == 10 and task == 'es'").loss.item() == 11.0
    assert trace.quality().to_dict("records") == [
        {"step": 20, "task": "ja", "metric": "chrf", "value": 31.5}
    ]
    frame = trace.frame()
    assert list(frame.columns) == ["step", "group", "task_a", "task_b", "dot", "cosine"]
    assert len(frame) == 3 * 2 * 9
    row = frame.query("step == 10 and group == 'encoder' and task_a == 'fr' and task_b == 'ja'")
    assert row["dot"].item() == pytest.approx(_gram(10)[0, 1, 2], rel=1e-6)
    with pytest.raises(TraceError, match="no array 'targets'"):
        trace.array("targets")
    with pytest.raises(InvalidInputError, match="unknown group 'mlp'"):
        trace.gram("mlp")


def test_readable_while_the_writer_is_open_and_refresh_sees_new_snapshots(tmp_path):
    w = gt.TraceWriter(tmp_path, TASKS, GROUPS)
    w.write_snapshot(0, _gram(0))
    trace = gt.open_trace(tmp_path)
    assert trace.steps.tolist() == [0]
    w.write_snapshot(5, _gram(5))
    assert trace.steps.tolist() == [0]  # a consistent view until refreshed
    trace.refresh()
    assert trace.steps.tolist() == [0, 5]
    assert trace.gram("encoder").shape == (2, 3, 3)
    w.close()


def test_same_step_is_replaced(tmp_path):
    with gt.TraceWriter(tmp_path, TASKS, GROUPS) as w:
        w.write_snapshot(3, _gram(0))
        w.write_snapshot(3, _gram(1))
    trace = gt.open_trace(tmp_path)
    assert trace.steps.tolist() == [3]
    np.testing.assert_allclose(trace.gram("encoder")[0], _gram(1)[0], rtol=1e-6)


def test_bad_files_get_clear_errors(tmp_path):
    with pytest.raises(TraceError, match="no trace at"):
        gt.open_trace(tmp_path / "nowhere")
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(TraceError, match="not a geomtrace trace"):
        gt.open_trace(junk)
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t(x)").connection.commit()
    with pytest.raises(TraceError, match="not a geomtrace trace"):
        gt.open_trace(other)
    _write(tmp_path / "new")
    con = sqlite3.connect(tmp_path / "new" / "trace.sqlite")
    con.execute("PRAGMA user_version=99")
    con.close()
    with pytest.raises(TraceError, match="schema version 99.*upgrade"):
        gt.open_trace(tmp_path / "new")


def test_existing_trace_is_not_overwritten_without_asking(tmp_path):
    _write(tmp_path)
    with pytest.raises(InvalidInputError, match="already exists"):
        gt.TraceWriter(tmp_path, TASKS, GROUPS)
    gt.TraceWriter(tmp_path, ["a"], [("g", 1, ["p"])], overwrite=True).close()
    assert gt.open_trace(tmp_path).tasks == ["a"]


def test_writer_rejects_bad_shapes_and_tasks(tmp_path):
    with gt.TraceWriter(tmp_path, TASKS, GROUPS) as w:
        with pytest.raises(InvalidInputError, match=r"shape \(3, 3\).*\(2, 3, 3\)"):
            w.write_snapshot(0, np.eye(3))
        with pytest.raises(InvalidInputError, match="unknown tasks"):
            w.write_snapshot(0, _gram(0), {"de": 1.0})
        with pytest.raises(InvalidInputError, match="unknown task 'de'"):
            w.write_quality(0, "de", "chrf", 1.0)
        with pytest.raises(InvalidInputError, match="JSON"):
            w.set_meta("x", object())


WRITER = textwrap.dedent(
    """
    import sys, numpy as np, torch
    from torch import nn
    import geomtrace as gt
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 8))
    tasks = [f"t{i}" for i in range(6)]
    tracer = gt.Tracer(model, tasks, groups="all_matrix", out=sys.argv[1])
    step = 0
    while True:
        with tracer.step(step) as s:
            for i, task in enumerate(tasks):
                x = torch.randn(16, 64)
                s.backward(task, model(x).pow(2).mean() * (i + 1))
        print(step, flush=True)  # printed only after the snapshot's transaction committed
        step += 1
    """
)


@pytest.mark.parametrize("kill_after", [3, 17, 40])
def test_sigkilled_writer_leaves_every_committed_snapshot(tmp_path, kill_after):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    committed = -1
    deadline = time.time() + 120
    while committed < kill_after and time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        committed = int(line)
    proc.send_signal(signal.SIGKILL)  # mid-run: very likely inside a later step or transaction
    proc.wait()
    assert committed == kill_after, "the writer did not get far enough"
    trace = gt.open_trace(tmp_path)
    assert trace.steps[: committed + 1].tolist() == list(range(committed + 1))
    for group in trace.groups:
        gram = trace.gram(group)
        assert gram.shape == (len(trace.steps), 6, 6) and np.isfinite(gram).all()
    cos = trace.cosine("0.weight")
    np.testing.assert_allclose(np.diagonal(cos, axis1=1, axis2=2), 1.0, rtol=1e-5)
    assert json.loads(json.dumps(trace.meta("versions")))["numpy"]
