"""Fuzz the trace reader: a real small trace, damaged a few hundred seeded ways.

Every case must either read (tasks, groups, the Gram and cosine of every group, arrays,
losses, quality, the tidy frame) with cosines in [-1, 1] or NaN, or raise ``TraceError``:
never a raw SQLite, JSON, numpy or pandas error, never a non-finite or out-of-range cosine.
"""

import os
import sqlite3

import numpy as np
import pytest

import geomtrace as gt
from geomtrace import TraceError

TASKS = ["es", "fr", "ja"]
GROUPS = [("encoder", 10, ["enc.w", "enc.b"]), ("decoder", 6, ["dec.w"])]
TABLES = ["meta", "tasks", "groups", "snapshots", "losses", "grams", "arrays", "quality"]
CASES = int(os.environ.get("GEOMTRACE_FUZZ_CASES", 300))  # more for a long local run


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """The bytes of a finished trace: 4 snapshots, an absent task at one step, a NaN loss."""
    run = tmp_path_factory.mktemp("pristine")
    rng = np.random.default_rng(0)
    with gt.TraceWriter(run, TASKS, GROUPS, config={"lr": 0.1}) as w:
        for step in (0, 5, 10, 15):
            a = rng.normal(size=(2, 3, 8))
            gram = a @ a.transpose(0, 2, 1)
            if step == 10:
                gram[:, 2, :] = gram[:, :, 2] = np.nan  # "ja" absent at this step
            w.write_snapshot(
                step,
                gram,
                {"es": 1.0, "fr": float("nan"), "ja": 2.0},
                arrays={"weights": np.ones((2, 3)) * step},
            )
        w.write_quality(15, "es", "chrf", 12.5)
        w.write_quality(15, "fr", "chrf", float("nan"))
        w.set_meta("scripts", {"es": "Latn"})
    return (run / "trace.sqlite").read_bytes()


def read_everything(path) -> None:
    trace = gt.open_trace(path)
    try:
        assert all(isinstance(t, str) for t in trace.tasks)
        for group in trace.groups:
            gram = trace.gram(group)
            assert gram.shape == (len(trace.steps), len(trace.tasks), len(trace.tasks))
            cos = trace.cosine(group)
            finite = cos[np.isfinite(cos)]
            assert not np.isinf(cos).any()
            assert (np.abs(finite) <= 1 + 2e-2).all(), finite[np.abs(finite) > 1 + 2e-2]
        for name in trace.array_names():
            trace.array(name)
        losses = trace.losses()
        assert losses.loss.dtype == np.float64
        quality = trace.quality()
        assert quality.value.dtype == np.float64
        assert isinstance(trace.config, dict)
        trace.meta("scripts")
        trace.frame()
    finally:
        trace.close()


def _damage(data: bytes, path, rng) -> str:
    kind = rng.choice(["truncate", "flip", "rows", "table", "blob", "text"])
    if kind == "truncate":
        path.write_bytes(data[: int(rng.integers(0, len(data)))])
    elif kind == "flip":
        buf = bytearray(data)
        for _ in range(int(rng.integers(1, 9))):
            buf[int(rng.integers(0, len(buf)))] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(buf))
    else:
        path.write_bytes(data)
        con = sqlite3.connect(path)
        table = TABLES[int(rng.integers(0, len(TABLES)))]
        if kind == "rows":
            con.execute(
                f"DELETE FROM {table} WHERE rowid IN "
                f"(SELECT rowid FROM {table} ORDER BY random() LIMIT {int(rng.integers(1, 4))})"
            )
        elif kind == "table":
            con.execute(f"DROP TABLE {table}")
        elif kind == "blob":
            target = ["grams", "arrays"][int(rng.integers(0, 2))]
            how = int(rng.integers(0, 5))
            value = [
                "substr(data, 1, 20)",  # wrong length
                "randomblob(9)",  # 9 bytes
                "randomblob(length(data))",  # right length, random floats
                "'[3, 3, 3]'",  # another shape (as the shape column)
                "'not json'",  # non-JSON shape
            ][how]
            column = "shape" if how >= 3 else "data"
            con.execute(
                f"UPDATE {target} SET {column} = {value} WHERE rowid = "
                f"(SELECT rowid FROM {target} ORDER BY random() LIMIT 1)"
            )
        else:  # non-JSON or mistyped text and numbers
            con.execute(
                [
                    "UPDATE meta SET value = '{broken' WHERE key = 'config'",
                    "UPDATE groups SET param_names = 'x' WHERE idx = 0",
                    "UPDATE groups SET numel = 'many' WHERE idx = 1",
                    "UPDATE tasks SET name = 7 WHERE idx = 1",
                    "UPDATE snapshots SET step = 'ten' WHERE step = 10",
                    "UPDATE losses SET loss = x'00' WHERE task_idx = 0",
                    "UPDATE quality SET value = 'high'",
                    "UPDATE tasks SET idx = 5 WHERE idx = 2",
                ][int(rng.integers(0, 8))]
            )
        con.commit()
        con.close()
    return kind


def test_damaged_traces_read_or_raise_trace_error(pristine, tmp_path):
    read_everything_ok = 0
    kinds: dict[str, int] = {}
    for case in range(CASES):
        rng = np.random.default_rng(case)
        path = tmp_path / f"case{case}.sqlite"
        kind = _damage(pristine, path, rng)
        try:
            read_everything(path)
            read_everything_ok += 1
        except TraceError:
            kinds[kind] = kinds.get(kind, 0) + 1
        except Exception as err:  # the point of the test: name the case that escaped
            raise AssertionError(
                f"case {case} ({kind}) raised {type(err).__name__}: {err}"
            ) from err
        finally:
            path.unlink()
    # the damage is real: most cases are refused, and each kind is refused at least once
    assert set(kinds) == {"truncate", "flip", "rows", "table", "blob", "text"}, kinds
    assert 0 < read_everything_ok < CASES


def test_pristine_trace_reads(pristine, tmp_path):
    path = tmp_path / "trace.sqlite"
    path.write_bytes(pristine)
    read_everything(path)
    trace = gt.open_trace(path)
    assert np.isnan(trace.cosine("encoder")[2, 2]).all()  # absent: NaN, not an error
    assert np.isnan(trace.losses().set_index(["step", "task"]).loss[(0, "fr")])
