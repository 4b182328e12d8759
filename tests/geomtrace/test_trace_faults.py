"""Faults of the trace on disk: non-finite values, one writer per directory, self-contained and
read-only traces, damaged content, a full disk. Real SQLite files, real processes, real mounts
(where the test may mount; otherwise the variant says why it is skipped)."""

import contextlib
import os
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import geomtrace as gt
from geomtrace import InvalidInputError, StorageError, TraceError
from geomtrace._format import SCHEMA_VERSION
from geomtrace._writer import CHECKPOINT_EVERY

TASKS = ["es", "fr", "ja"]
GROUPS = [("encoder", 10, ["enc.w"]), ("decoder", 6, ["dec.w"])]
ROOT = os.geteuid() == 0


def _gram(step, groups=2, tasks=3):
    a = np.random.default_rng(step).normal(size=(groups, tasks, 5))
    return a @ a.transpose(0, 2, 1)


def _write(path, steps=(0, 10, 20), **kwargs):
    with gt.TraceWriter(path, TASKS, GROUPS, **kwargs) as w:
        for step in steps:
            w.write_snapshot(step, _gram(step), {"es": 1.0, "fr": 2.0, "ja": 3.0})
        w.write_quality(steps[-1], "es", "chrf", 10.0)
    return path / "trace.sqlite"


@contextlib.contextmanager
def _mounted(kind, source=None, size="2m"):
    """A tmpfs of ``size`` or a read-only bind mount of ``source``; skips where not allowed."""
    if not ROOT or shutil.which("mount") is None:
        pytest.skip("mounting needs root and mount(8) (a container without them)")
    import tempfile

    target = tempfile.mkdtemp(prefix="geomtrace-mnt-")
    if kind == "tmpfs":
        cmds = [["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", target]]
    else:
        cmds = [
            ["mount", "--bind", str(source), target],
            ["mount", "-o", "remount,ro,bind", target],
        ]
    for i, cmd in enumerate(cmds):
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            if i:
                subprocess.run(["umount", target])
            os.rmdir(target)
            pytest.skip(f"cannot mount here ({done.stderr.strip()})")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", target], check=True)
        os.rmdir(target)


# -- item 1: non-finite values ------------------------------------------------------------------


def test_nonfinite_quality_and_losses_read_back_as_nan_distinct_from_missing(tmp_path, caplog):
    with gt.TraceWriter(tmp_path, TASKS, GROUPS) as w:
        w.write_snapshot(0, _gram(0), {"es": float("nan"), "fr": float("inf")})  # ja: no loss
        w.write_snapshot(5, _gram(5), {"es": float("nan"), "fr": 1.0, "ja": 2.0})
        w.write_quality(5, "es", "chrf", float("nan"))
        w.write_quality(5, "fr", "chrf", float("-inf"))
        w.write_quality(5, "ja", "chrf", 3.5)
    warnings = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()
                or "is nan" in r.getMessage()]  # fmt: skip
    assert sum("'es': loss is nan" in m for m in warnings) == 1  # once per task, not per step
    trace = gt.open_trace(tmp_path)
    losses = trace.losses().set_index(["step", "task"]).loss
    assert np.isnan(losses[(0, "es")]) and losses[(0, "fr")] == np.inf
    assert (0, "ja") not in losses.index  # missing is no row; NaN is a row holding NaN
    q = trace.quality().set_index("task").value
    assert np.isnan(q["es"]) and q["fr"] == -np.inf and q["ja"] == 3.5


def test_tracer_record_quality_nan(tmp_path):
    from torch import nn

    tracer = gt.Tracer(nn.Linear(2, 1), ["a", "b"], out=tmp_path)
    tracer.record_quality(0, "a", "chrf", float("nan"))
    tracer.close()
    assert np.isnan(gt.open_trace(tmp_path).quality().value[0])


V1_QUALITY = """CREATE TABLE quality(step INTEGER NOT NULL, task_idx INTEGER NOT NULL,
    metric TEXT NOT NULL, value REAL NOT NULL, PRIMARY KEY(step, task_idx, metric))"""


def test_schema_version_2_and_version_1_traces_still_read(tmp_path):
    path = _write(tmp_path / "new")
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    con.close()
    # A version-1 file: the old quality table (NOT NULL) and user_version 1.
    old = tmp_path / "old" / "trace.sqlite"
    old.parent.mkdir()
    shutil.copy(path, old)
    con = sqlite3.connect(old)
    con.execute("DROP TABLE quality")
    con.execute(V1_QUALITY)
    con.execute("INSERT INTO quality VALUES (20, 0, 'chrf', 12.0)")
    con.execute("PRAGMA user_version=1")
    con.commit()
    con.close()
    trace = gt.open_trace(old)
    assert trace.schema_version == 1 and trace.steps.tolist() == [0, 10, 20]
    assert trace.quality().value.tolist() == [12.0]


# -- item 2: one writer per run directory ----------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys, time, numpy as np
    import geomtrace as gt
    w = gt.TraceWriter(sys.argv[1], ["a", "b"], [("g", 1, ["p"])])
    w.write_snapshot(0, np.eye(2)[None])
    print("ready", flush=True)
    time.sleep(float(sys.argv[2]))
    w.close()
    """
)


def _holder(path, seconds=60):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_a_live_writer_owns_its_directory_even_against_overwrite(tmp_path):
    proc = _holder(tmp_path)
    try:
        for overwrite in (False, True):
            with pytest.raises(
                InvalidInputError, match=rf"in use by another run \(pid {proc.pid}\)"
            ):
                gt.TraceWriter(tmp_path, TASKS, GROUPS, overwrite=overwrite)
        assert gt.open_trace(tmp_path).steps.tolist() == [0]  # the owner's trace is intact
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # The kernel dropped the dead owner's lock: the stale lock file blocks nothing.
    assert (tmp_path / ".lock").exists()
    gt.TraceWriter(tmp_path, TASKS, GROUPS, overwrite=True).close()
    assert not (tmp_path / ".lock").exists()  # a finished writer removes its lock file


def test_another_thread_cannot_write_the_same_directory(tmp_path):
    errors = []
    with gt.TraceWriter(tmp_path, TASKS, GROUPS):

        def second():
            try:
                gt.TraceWriter(tmp_path, TASKS, GROUPS, overwrite=True)
            except InvalidInputError as err:
                errors.append(str(err))

        thread = threading.Thread(target=second)
        thread.start()
        thread.join()
    assert len(errors) == 1 and "another writer in this process" in errors[0]
    assert str(os.getpid()) in errors[0]


def test_a_live_trace_is_not_replaced_in_the_same_thread(tmp_path):
    """Issue 19, defect 3: the run lock is re-entrant in its thread (the recipe runner holds it
    and its TraceWriter takes it again), so a second Tracer with overwrite=True on the
    directory of a live one (a notebook cell run twice) used to unlink its trace: the first
    tracer's snapshots were gone without an error. The second writer is now refused while the
    first is open; once it is closed (or garbage-collected), overwrite=True replaces it."""
    import gc

    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    tasks = ["a", "b"]
    x = torch.ones(2, 3)

    def steps(tracer, first, n=3):
        for step in range(first, first + n):
            with tracer.step(step) as s:
                for i, t in enumerate(tasks):
                    s.backward(t, model(x * (i + 1)).pow(2).mean())

    tr1 = gt.Tracer(model, tasks, out=tmp_path)
    steps(tr1, 0)
    for overwrite in (True, False):
        with pytest.raises(InvalidInputError, match=r"is being written by a live writer in this "
                           r"process.*close\(\) it first"):  # fmt: skip
            gt.Tracer(model, tasks, out=tmp_path, overwrite=overwrite)
    steps(tr1, 3)
    tr1.close()
    assert gt.open_trace(tmp_path).steps.tolist() == [0, 1, 2, 3, 4, 5]
    tr2 = gt.Tracer(model, tasks, out=tmp_path, overwrite=True)
    steps(tr2, 10, n=1)
    del tr2  # never closed: once it is garbage, its directory can be replaced again
    gc.collect()
    with gt.TraceWriter(tmp_path, tasks, [("weight", 6, ["weight"])], overwrite=True):
        pass
    assert gt.open_trace(tmp_path).steps.tolist() == []


# -- item 5: self-contained and read-only traces ------------------------------------------------


def test_closed_trace_is_one_self_contained_file(tmp_path):
    path = _write(tmp_path / "run")
    assert sorted(p.name for p in path.parent.iterdir()) == ["trace.sqlite"]
    copy = tmp_path / "copy.sqlite"
    shutil.copy(path, copy)
    assert gt.open_trace(copy).steps.tolist() == [0, 10, 20]


def test_closed_while_a_reader_is_open_the_main_file_is_still_complete(tmp_path):
    w = gt.TraceWriter(tmp_path / "run", TASKS, GROUPS)
    for step in range(3):
        w.write_snapshot(step, _gram(step))
    reader = gt.open_trace(tmp_path / "run")
    w.close()  # cannot leave WAL mode while the reader has the file: checkpoints it instead
    copy = tmp_path / "copy.sqlite"
    shutil.copy(tmp_path / "run" / "trace.sqlite", copy)
    reader.close()
    assert gt.open_trace(copy).steps.tolist() == [0, 1, 2]


KILLED = textwrap.dedent(
    """
    import sys, numpy as np
    import geomtrace as gt
    w = gt.TraceWriter(sys.argv[1], ["a", "b", "c"], [("g", 1, ["p"])])
    step = 0
    while True:
        a = np.random.default_rng(step).normal(size=(1, 3, 4))
        w.write_snapshot(step, a @ a.transpose(0, 2, 1))
        print(step, flush=True)
        step += 1
    """
)


def test_killed_run_main_file_alone_keeps_all_but_the_last_checkpoint_interval(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True
    )
    committed = -1
    while committed < 2 * CHECKPOINT_EVERY + 4:
        committed = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    shutil.copy(tmp_path / "run" / "trace.sqlite", tmp_path / "alone.sqlite")  # no -wal
    alone = gt.open_trace(tmp_path / "alone.sqlite").steps
    full = gt.open_trace(tmp_path / "run").steps  # with its -wal: every committed snapshot
    assert full[: committed + 1].tolist() == list(range(committed + 1))
    # the periodic checkpoint: at most CHECKPOINT_EVERY + the snapshots after the kill point lag
    assert len(alone) >= 2 * CHECKPOINT_EVERY
    assert alone.tolist() == list(range(len(alone)))


def test_traces_open_from_a_read_only_mount(tmp_path):
    src = tmp_path / "src"
    _write(src / "closed")
    # A WAL-mode file whose -wal/-shm are gone (e.g. an older writer, or a copied directory).
    wal = _write(src / "wal")
    con = sqlite3.connect(wal)
    assert con.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    con.close()
    # A run killed mid-write: -wal and -shm next to the file.
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED, str(src / "killed")], stdout=subprocess.PIPE, text=True
    )
    while int(proc.stdout.readline()) < 3:
        pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with _mounted("ro-bind", src) as ro:
        with pytest.raises(OSError):
            open(os.path.join(ro, "closed", "probe"), "w")
        for name, steps in (("closed", [0, 10, 20]), ("wal", [0, 10, 20])):
            trace = gt.open_trace(os.path.join(ro, name))
            assert trace.steps.tolist() == steps
            assert trace.gram("encoder").shape == (3, 3, 3)
            trace.close()
        killed = gt.open_trace(os.path.join(ro, "killed"))
        assert killed.steps.tolist()[:4] == [0, 1, 2, 3]
        killed.close()


@pytest.mark.skipif(ROOT, reason="root reads and writes through chmod: the read-only mount test "
                    "covers read-only media as root")  # fmt: skip
def test_traces_open_from_a_directory_without_write_permission(tmp_path):
    _write(tmp_path / "run")
    wal = _write(tmp_path / "wal")
    sqlite3.connect(wal).execute("PRAGMA journal_mode=WAL").connection.close()
    for d in ("run", "wal"):
        os.chmod(tmp_path / d, 0o555)
    try:
        assert gt.open_trace(tmp_path / "run").steps.tolist() == [0, 10, 20]
        assert gt.open_trace(tmp_path / "wal").steps.tolist() == [0, 10, 20]
        os.chmod(tmp_path / "run", 0o755)
        os.chmod(tmp_path / "run" / "trace.sqlite", 0)
        with pytest.raises(TraceError, match="permission denied"):
            gt.open_trace(tmp_path / "run")
    finally:
        for d in ("run", "wal"):
            os.chmod(tmp_path / d, 0o755)
        os.chmod(tmp_path / "run" / "trace.sqlite", 0o644)


def test_unreadable_files_say_why(tmp_path):
    (tmp_path / "dir.sqlite").mkdir()
    with pytest.raises(TraceError, match="is a directory"):
        gt.open_trace(tmp_path / "dir.sqlite")
    (tmp_path / "empty.sqlite").write_bytes(b"")
    with pytest.raises(TraceError, match="is empty"):
        gt.open_trace(tmp_path / "empty.sqlite")
    (tmp_path / "text.sqlite").write_text("step,cosine\n0,0.5\n")
    with pytest.raises(TraceError, match="not an SQLite database"):
        gt.open_trace(tmp_path / "text.sqlite")


# -- item 6: damaged content --------------------------------------------------------------------


def _damaged(tmp_path, *statements):
    path = _write(tmp_path / "run")
    con = sqlite3.connect(path)
    for statement in statements:
        con.execute(statement)
    con.commit()
    con.close()
    return gt.open_trace(path)


def _byteswap(blob: bytes) -> bytes:
    n = len(blob) // 4
    return struct.pack(f">{n}f", *struct.unpack(f"<{n}f", blob))


@pytest.mark.parametrize(
    "statements, message",
    [
        (["UPDATE grams SET data = substr(data, 1, 20) WHERE group_idx = 1"],
         r"group 'decoder' at step 0: blob of 20 bytes, expected 36"),
        (["UPDATE grams SET data = randomblob(9) WHERE snapshot_id = 2 AND group_idx = 0"],
         r"group 'encoder' at step 10: blob of 9 bytes"),
        (["UPDATE grams SET shape = '[2, 2]', data = randomblob(16) WHERE snapshot_id = 3"],
         r"group 'encoder' at step 20 has shape \[2, 2\], expected \[3, 3\]"),
        (["UPDATE grams SET shape = 'three by three' WHERE snapshot_id = 1 AND group_idx = 0"],
         r"group 'encoder' at step 0: shape 'three by three' is not a JSON list"),
        (["DELETE FROM grams WHERE snapshot_id = 2 AND group_idx = 0"],
         r"group 'encoder' is missing from 1 snapshot\(s\) \(first: step 10\)"),
    ],
)  # fmt: skip
def test_damaged_grams_name_group_and_step(tmp_path, statements, message):
    trace = _damaged(tmp_path, *statements)
    with pytest.raises(TraceError, match=message):
        for group in trace.groups:
            trace.cosine(group)


def test_byteswapped_gram_is_caught_not_printed(tmp_path):
    path = _write(tmp_path / "run")
    con = sqlite3.connect(path)
    (blob,) = con.execute(
        "SELECT data FROM grams WHERE snapshot_id = 2 AND group_idx = 0"
    ).fetchone()
    con.execute(
        "UPDATE grams SET data = ? WHERE snapshot_id = 2 AND group_idx = 0", (_byteswap(blob),)
    )
    con.commit()
    con.close()
    trace = gt.open_trace(path)
    assert np.isfinite(trace.cosine("decoder")).all()  # the other group is fine
    with pytest.raises(TraceError, match=r"group 'encoder' at step 10: .*(impossible|negative)"):
        trace.cosine("encoder")


@pytest.mark.parametrize(
    "statement, message",
    [
        ("UPDATE meta SET value = '{not json' WHERE key = 'config'", r"meta 'config' is not valid JSON"),
        ("UPDATE groups SET param_names = 'enc.w' WHERE idx = 0",
         r"group 'encoder': param_names 'enc.w' is not a JSON list"),
        ("DROP TABLE grams", r"marked as a geomtrace trace but lacks table\(s\) grams"),
        ("DROP TABLE tasks", r"lacks table\(s\) tasks"),
        ("DELETE FROM tasks", r"table tasks is empty"),
        ("UPDATE snapshots SET step = 'ten' WHERE id = 2", r"table snapshots: row .*'ten'"),
    ],
)  # fmt: skip
def test_damaged_tables_name_the_table(tmp_path, statement, message):
    with pytest.raises(TraceError, match=message):
        _damaged(tmp_path, statement)


def test_damaged_rows_in_losses_and_quality(tmp_path):
    trace = _damaged(
        tmp_path,
        "UPDATE losses SET loss = x'00ff' WHERE task_idx = 1",
        "UPDATE quality SET value = 'very good'",
    )
    with pytest.raises(TraceError, match=r"table losses: the loss of task 'fr' at step 0"):
        trace.losses()
    with pytest.raises(TraceError, match=r"table quality: .*'very good'"):
        trace.quality()


def test_inf_gram_of_a_diverged_task_reads_as_nan_cosines(tmp_path):
    gram = _gram(0)
    gram[:, 1, :] = gram[:, :, 1] = np.inf  # an overflowed gradient: not damage, divergence
    with gt.TraceWriter(tmp_path, TASKS, GROUPS) as w:
        w.write_snapshot(0, gram)
    cos = gt.open_trace(tmp_path).cosine("encoder")[0]
    assert np.isnan(cos[1]).all() and np.isnan(cos[:, 1]).all()
    assert np.isfinite(cos[np.ix_([0, 2], [0, 2])]).all()


# -- issue 19, defect 7: damaged values the reader used to accept --------------------------------


def _halves_for(gram, rng):
    """Consistent split-half products (a.a, b.b, a.b) per group and task for ``gram``:
    a = half of g plus noise, b = g - a."""
    G, K, _ = gram.shape
    split = np.empty((G, K, 3))
    for k in range(G):
        for i in range(K):
            g = np.zeros(4)
            g[0] = np.sqrt(gram[k, i, i])
            a = g / 2 + 0.1 * rng.normal(size=4)
            b = g - a
            split[k, i] = a @ a, b @ b, a @ b
    return split


def test_an_asymmetric_gram_is_refused_naming_group_step_and_tasks(tmp_path):
    gram = _gram(0)
    gram[0, 0, 1] = -gram[0, 1, 0]  # cosines -0.94 / +0.94 for one pair, before the fix
    with gt.TraceWriter(tmp_path, TASKS, GROUPS) as w:
        w.write_snapshot(0, gram)
    trace = gt.open_trace(tmp_path)
    assert np.isfinite(trace.cosine("decoder")).all()  # the other group is fine
    with pytest.raises(TraceError, match=r"group 'encoder' at step 0: G\['es', 'fr'\] .* "
                       r"G\['fr', 'es'\] .*not symmetric"):  # fmt: skip
        trace.gram("encoder")
    with pytest.raises(TraceError, match="not symmetric"):
        trace.cosine("all")


def test_float32_rounding_asymmetry_reads_back_exactly_symmetric(tmp_path):
    """A trace written before Gram matrices were symmetrised (ulps apart) still reads, and
    reads exactly symmetric."""
    gram = _gram(0)
    gram[:, 0, 1] *= 1 + 3e-7
    with gt.TraceWriter(tmp_path, TASKS, GROUPS) as w:
        w.write_snapshot(0, gram)
    read = gt.open_trace(tmp_path).gram("encoder")
    assert read[0, 0, 1] != gram[0, 1, 0] or read[0, 1, 0] != gram[0, 0, 1]  # it was asymmetric
    assert np.array_equal(read, read.swapaxes(1, 2))


def test_cosines_are_within_minus_one_one_or_refused(tmp_path):
    """docs/reliability.md promises cosines in [-1, 1]: 1.005 (beyond float32 rounding) is
    refused; 1 + 1e-6 (rounding of parallel gradients) reads back as exactly 1."""
    damaged = np.array([[[1.0, 1.005, 0.0], [1.005, 1.0, 0.0], [0.0, 0.0, 1.0]]] * 2)
    rounded = np.array([[[4.0, 4.000004, 0.0], [4.000004, 4.0, 0.0], [0.0, 0.0, 1.0]]] * 2)
    with gt.TraceWriter(tmp_path / "damaged", TASKS, GROUPS) as w:
        w.write_snapshot(0, damaged)
    with pytest.raises(TraceError, match=r"G\['es', 'fr'\] = 1.005 .*cosine 1.005"):
        gt.open_trace(tmp_path / "damaged").cosine("encoder")
    with gt.TraceWriter(tmp_path / "rounded", TASKS, GROUPS) as w:
        w.write_snapshot(0, rounded)
    cos = gt.open_trace(tmp_path / "rounded").cosine("encoder")
    assert cos[0, 0, 1] == 1.0 and cos[0, 1, 0] == 1.0
    assert (np.abs(cos) <= 1.0).all()
    assert (np.abs(gt.cosine_from_gram(rounded)) <= 1.0).all()


def test_split_half_products_inconsistent_with_the_gram_are_refused(tmp_path):
    """Split halves must add up to the task's gradient: a.a + b.b + 2 a.b = |g|^2 = G_ii.
    Products of 1e30 used to give a reliability of 1.0."""
    rng = np.random.default_rng(0)
    grams = [_gram(step) for step in (0, 10)]
    with gt.TraceWriter(tmp_path / "ok", TASKS, GROUPS) as w:
        for step, gram in zip((0, 10), grams, strict=True):
            w.write_snapshot(step, gram, arrays={"split_half": _halves_for(gram, rng)})
    trace = gt.open_trace(tmp_path / "ok")
    r = trace.reliability("encoder")
    assert r.shape == (2, 3) and np.isfinite(r).all() and (r < 1).all()
    assert np.isfinite(trace.reliability("all")).all()
    with gt.TraceWriter(tmp_path / "bad", TASKS, GROUPS) as w:
        for step, gram in zip((0, 10), grams, strict=True):
            split = _halves_for(gram, rng)
            if step == 10:
                split[1, 2] = 1e30
            w.write_snapshot(step, gram, arrays={"split_half": split})
    trace = gt.open_trace(tmp_path / "bad")
    assert np.isfinite(trace.reliability("encoder")).all()  # the other group is fine
    with pytest.raises(TraceError, match=r"split_half of group 'decoder' at step 10: task 'ja'"):
        trace.reliability("decoder")
    with pytest.raises(TraceError, match=r"split_half .* step 10: task 'ja'"):
        trace.split_half("all")
    with gt.TraceWriter(tmp_path / "negative", TASKS, GROUPS) as w:
        split = _halves_for(grams[0], rng)
        split[0, 0, 0] = -1.0
        w.write_snapshot(0, grams[0], arrays={"split_half": split})
    with pytest.raises(TraceError, match=r"task 'es' .*negative"):
        gt.open_trace(tmp_path / "negative").split_half("encoder")


# -- issue 19, defect 8: hostile nesting ----------------------------------------------------------

DEEP = "[" * 100_000


@pytest.mark.parametrize(
    "statement, params, message",
    [
        ("UPDATE grams SET shape = ? WHERE snapshot_id = 2 AND group_idx = 0", (DEEP,),
         r"group 'encoder' at step 10: shape '\[\[\[.* is not a JSON list of sizes"),
        ("UPDATE meta SET value = ? WHERE key = 'config'", (DEEP,),
         r"meta 'config' is not valid JSON .*nested deeper than"),
        ("UPDATE meta SET value = ? WHERE key = 'config'", ("[" * 200 + "]" * 200,),
         r"meta 'config' is nested deeper than 100 levels"),
        ("UPDATE groups SET param_names = ? WHERE idx = 1", (DEEP,),
         r"group 'decoder': param_names '\[\[\[.* is not a JSON list"),
        ("INSERT INTO arrays VALUES (1, 'weights', ?, x'00000000')", (DEEP,),
         r"array 'weights' at step 0: shape '\[\[\[.* is not a JSON list"),
    ],
)  # fmt: skip
def test_hostile_nesting_in_a_trace_is_a_trace_error(tmp_path, statement, params, message):
    """100,000 nested '[' in grams.shape, meta.config, param_names or an array's shape raised
    RecursionError in inspect, analyze and group; now a TraceError naming the file and what is
    damaged (and the CLI exits 2 with that line)."""
    from cli import main

    path = _write(tmp_path / "run")
    con = sqlite3.connect(path)
    con.execute(statement, params)
    con.commit()
    con.close()
    with pytest.raises(TraceError, match=message) as caught:
        trace = gt.open_trace(path)
        trace.config  # noqa: B018 - reading it is the test
        for group in trace.groups:
            trace.cosine(group)
        trace.array("weights")
    assert str(path) in str(caught.value)
    # inspect reads the Gram matrices, the groups and the metadata (not the extra arrays)
    assert main(["inspect", str(path.parent)]) == (0 if "arrays" in statement else 2)


# -- item 7: a full disk ------------------------------------------------------------------------


def test_disk_full_on_a_real_small_tmpfs(tmp_path):
    big = [(f"g{k}", 1, [f"p{k}"]) for k in range(200)]  # 200 groups x 8 x 8: 51 kB a snapshot
    with _mounted("tmpfs", size="2m") as mnt:
        w = gt.TraceWriter(mnt, [f"t{i}" for i in range(8)], big)
        written = -1
        with pytest.raises(StorageError) as info:
            for step in range(1000):
                a = np.random.default_rng(step).normal(size=(200, 8, 3))
                w.write_snapshot(step, a @ a.transpose(0, 2, 1))
                written = step
        w.close()
        message = str(info.value)
        assert message.startswith("disk full") and mnt in message
        assert (
            f"snapshots up to step {written} ({written + 1} snapshots) are in the trace" in message
        )
        assert written > 5
        trace = gt.open_trace(mnt)
        assert trace.steps.tolist() == list(range(written + 1))
        assert trace.gram("g0").shape == (written + 1, 8, 8)
        trace.close()


def test_disk_full_injected_keeps_the_writer_consistent(tmp_path, monkeypatch):
    w = gt.TraceWriter(tmp_path, TASKS, GROUPS)
    for step in range(3):
        w.write_snapshot(step, _gram(step))
    real = type(w)._transaction

    def full(self):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(type(w), "_transaction", full)
    with pytest.raises(StorageError, match=r"disk full: .*step 3.*snapshots up to step 2 \(3 "):
        w.write_snapshot(3, _gram(3))
    with pytest.raises(StorageError, match="quality 'chrf'"):
        w.write_quality(3, "es", "chrf", 1.0)
    monkeypatch.setattr(type(w), "_transaction", real)
    w.write_snapshot(4, _gram(4))  # space freed: the writer goes on
    w.close()
    assert gt.open_trace(tmp_path).steps.tolist() == [0, 1, 2, 4]


def test_bad_config_leaves_no_file_behind(tmp_path):
    with pytest.raises(InvalidInputError, match="not JSON-serialisable"):
        gt.TraceWriter(tmp_path / "run", TASKS, GROUPS, config={"f": object()})
    assert not (tmp_path / "run").exists()
    gt.TraceWriter(tmp_path / "run", TASKS, GROUPS).close()  # the retry is not blocked


def test_waiting_reader_sees_new_snapshots_after_checkpoints(tmp_path):
    # Periodic checkpoints must not disturb a reader that refreshes while the writer goes on.
    w = gt.TraceWriter(tmp_path, TASKS, GROUPS, checkpoint_every=2)
    reader = None
    for step in range(7):
        w.write_snapshot(step, _gram(step))
        if step == 1:
            reader = gt.open_trace(tmp_path)
        time.sleep(0.001)
    reader.refresh()
    assert reader.steps.tolist() == list(range(7))
    w.close()
    reader.close()
