"""Writing a trace: :class:`TraceWriter` creates ``RUN_DIR/trace.sqlite`` and appends
snapshots, one transaction each (the format: :mod:`geomtrace._format`).

SQLite in WAL mode while it is written: a writer killed at any moment (even SIGKILL) leaves a
file that holds every snapshot committed before the kill, and readers can open it meanwhile.
On close the WAL is checkpointed into the main file, so a finished trace is one
self-contained file. A storage failure (disk full) raises :class:`StorageError` saying which
snapshots are kept. See ``docs/reliability.md``.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import platform
import sqlite3
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from geomtrace._codec import encode_meta, to_blob
from geomtrace._errors import InvalidInputError, StorageError
from geomtrace._format import (
    APPLICATION_ID,
    SCHEMA,
    SCHEMA_VERSION,
    check_group_name,
    check_step,
    trace_path,
)
from geomtrace._lock import GUARD, RunLock

log = logging.getLogger(__name__)

#: a PASSIVE WAL checkpoint after every this many snapshots, so that ``trace.sqlite`` alone
#: (without its ``-wal``) of a killed run still holds all but the last few snapshots
CHECKPOINT_EVERY = 10


def library_versions() -> dict[str, str]:
    """Versions of Python and of the libraries that shape a trace, for the run's metadata."""
    versions = {"python": platform.python_version()}
    for dist in ("geomtrace", "torch", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


#: open TraceWriters of this process by the real path of their file; weak, so that a writer
#: nobody can close any more (its Tracer garbage-collected) does not block its directory
_LIVE_WRITERS: weakref.WeakValueDictionary[str, TraceWriter] = weakref.WeakValueDictionary()


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` (sqlite3 or OS) means the file system is full."""
    code = getattr(err, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL or getattr(err, "errno", None) == errno.ENOSPC:
        return True
    text = str(err).lower()
    return "disk is full" in text or "no space left" in text or "storagefull" in text


class TraceWriter:
    """Creates a trace and appends snapshots, one transaction each.

    Args:
        run_dir: the run directory (created if needed); the file is ``run_dir/trace.sqlite``.
        tasks: task names, in matrix order.
        groups: ``ParameterGroup`` objects or ``(name, numel, param_names)`` tuples, model order.
        iso_codes: optional ``{task: ISO 639-3 code}`` for tasks that are languages.
        config: the run's configuration (JSON-serialisable), stored under meta ``config``.
        overwrite: replace an existing trace instead of refusing (never one whose writer is
            still alive: the directory is locked, see :class:`RunLock`).
        checkpoint_every: a PASSIVE WAL checkpoint every this many snapshots (0: only SQLite's
            automatic one at ~4 MB of WAL), bounding what ``trace.sqlite`` alone lacks after a
            kill.

    A write that fails for lack of space (or any other storage error) raises
    :class:`StorageError` naming the file and the last step already in the trace; the
    snapshots committed before stay readable.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        tasks: Sequence[str],
        groups: Sequence[Any],
        iso_codes: Mapping[str, str | None] | None = None,
        config: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        checkpoint_every: int = CHECKPOINT_EVERY,
    ) -> None:
        self.path = trace_path(run_dir)
        self.tasks = list(tasks)
        self._task_index = {t: i for i, t in enumerate(self.tasks)}
        group_rows = [_group_row(g) for g in groups]
        self.groups = [name for name, _, _ in group_rows]
        for name in self.groups:
            check_group_name(name)
        unknown = set(iso_codes or {}) - set(self.tasks)
        if unknown:
            raise InvalidInputError(f"iso_codes names unknown tasks: {sorted(unknown)}")
        if (
            isinstance(checkpoint_every, bool)
            or not isinstance(checkpoint_every, int)
            or (checkpoint_every < 0)
        ):
            raise InvalidInputError(
                f"checkpoint_every={checkpoint_every!r}: must be an integer >= 0 (0 = off)"
            )
        self.checkpoint_every = checkpoint_every
        meta = {
            "schema_version": SCHEMA_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": library_versions(),
            "config": dict(config or {}),
        }
        # Encoded before any file exists, so a bad config leaves nothing behind to block a retry.
        encoded_meta = [(k, encode_meta(k, v)) for k, v in meta.items()]
        #: the steps committed so far (what a failed write reports as kept)
        self.steps_written: list[int] = []
        self._warned_nonfinite: set[tuple[str, str]] = set()
        self._conn: sqlite3.Connection | None = None
        self._lock = RunLock(self.path.parent).acquire()
        try:
            self._claim()
            self._create(overwrite, iso_codes, group_rows, encoded_meta)
        except BaseException:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._lock.release()
            raise

    def _claim(self) -> None:
        """Refuse a trace that an open writer of this process is writing, even with
        ``overwrite=True``. The run lock is re-entrant in its thread (the recipe runner holds
        it while its writer takes it again), so without this a second Tracer on the same
        directory (a notebook cell run twice) unlinked the first one's live trace and the
        first tracer went on writing into the deleted file: its snapshots were lost silently.
        """
        key = os.path.realpath(self.path)
        with GUARD:
            live = _LIVE_WRITERS.get(key)
            if live is not None and live._conn is not None:
                raise InvalidInputError(
                    f"the trace {self.path} is being written by a live writer in this process "
                    "(a Tracer or TraceWriter not closed yet): close() it first, or choose "
                    "another run directory; overwrite=True does not replace a live trace"
                )
            _LIVE_WRITERS[key] = self

    def _create(self, overwrite, iso_codes, group_rows, encoded_meta) -> None:
        if self.path.exists():
            if not overwrite:
                raise InvalidInputError(
                    f"a trace already exists at {self.path}; pass overwrite=True (CLI: --force) "
                    "to replace it, or choose another run directory"
                )
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        try:
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            # WAL: readers never block the writer and a crash keeps every committed
            # transaction. synchronous=NORMAL survives a killed process (not a power cut) at a
            # fraction of FULL's cost.
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.OperationalError as err:
            raise self._storage_error("a new trace", err) from err

        def create(c: sqlite3.Connection) -> None:
            for statement in _statements(SCHEMA):
                c.execute(statement)
            c.execute(f"PRAGMA application_id={APPLICATION_ID}")
            c.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            c.executemany(
                "INSERT INTO tasks VALUES (?, ?, ?)",
                [(i, t, (iso_codes or {}).get(t)) for i, t in enumerate(self.tasks)],
            )
            c.executemany(
                "INSERT INTO groups VALUES (?, ?, ?, ?)",
                [(i, n, int(s), json.dumps(list(p))) for i, (n, s, p) in enumerate(group_rows)],
            )
            c.executemany("INSERT INTO meta VALUES (?, ?)", encoded_meta)

        self._write("the trace's schema", create)
        self._checkpoint("PASSIVE")  # trace.sqlite alone is a valid (empty) trace from here on

    def _transaction(self):
        return _Transaction(self._conn)

    def _write(self, what: str, body: Callable[[sqlite3.Connection], None]) -> None:
        """Run ``body`` in one transaction; storage failures become :class:`StorageError`."""
        if self._conn is None:
            raise InvalidInputError(f"the trace writer of {self.path} is closed")
        try:
            with self._transaction() as c:
                body(c)
        except sqlite3.OperationalError as err:
            raise self._storage_error(what, err) from err

    def _storage_error(self, what: str, err: BaseException) -> StorageError:
        reason = "disk full" if is_disk_full(err) else "write failed"
        if self.steps_written:
            kept = (
                f"snapshots up to step {max(self.steps_written)} "
                f"({len(set(self.steps_written))} snapshots) are in the trace"
            )
        else:
            kept = "no snapshot is in the trace yet"
        return StorageError(f"{reason}: cannot write {what} to {self.path} ({err}); {kept}")

    def _checkpoint(self, mode: str) -> bool:
        """Copy committed WAL pages into the main file; False when readers or space stop it."""
        try:
            busy, _, _ = self._conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.OperationalError as err:
            # Not data loss: the commits are in the -wal file, which SQLite reads with the trace.
            log.warning("%s: WAL checkpoint failed (%s): keep %s-wal with it", self.path, err,
                        self.path.name)  # fmt: skip
            return False
        return not busy

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable value under ``key`` (replacing any earlier value)."""
        encoded = encode_meta(key, value)
        self._write(
            f"meta {key!r}",
            lambda c: c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, encoded)),
        )

    def write_snapshot(
        self,
        step: int,
        gram: Any,
        losses: Mapping[str, float] | None = None,
        arrays: Mapping[str, Any] | None = None,
        source: str = "train",
    ) -> None:
        """Append one snapshot: the [G, K, K] Gram matrices of all groups at ``step``.

        A snapshot already stored for ``step`` (e.g. a resumed run) is replaced. A non-finite
        loss is stored as such (NaN reads back as NaN, distinct from a task without a loss) and
        logged once per task: a diverged run keeps its record instead of crashing.
        """
        if hasattr(gram, "detach"):
            gram = gram.detach().float().cpu().numpy()
        gram = np.asarray(gram)
        expected = (len(self.groups), len(self.tasks), len(self.tasks))
        if gram.shape != expected:
            raise InvalidInputError(
                f"gram has shape {gram.shape}, expected {expected} (groups, tasks, tasks)"
            )
        step = check_step(step)
        losses = {t: float(v) for t, v in (losses or {}).items()}
        unknown = set(losses) - set(self.tasks)
        if unknown:
            raise InvalidInputError(f"losses for unknown tasks {sorted(unknown)}")
        for task, value in losses.items():
            self._warn_nonfinite(task, "loss", value, step)
        blobs = [(k, *to_blob(gram[k])) for k in range(len(self.groups))]
        extra = [(name, *to_blob(a)) for name, a in (arrays or {}).items()]

        def insert(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM snapshots WHERE step = ?", (step,))
            cur = c.execute(
                "INSERT INTO snapshots(step, wall_time, source) VALUES (?, ?, ?)",
                (step, time.time(), source),
            )
            sid = cur.lastrowid
            c.executemany("INSERT INTO grams VALUES (?, ?, ?, ?)", [(sid, *b) for b in blobs])
            c.executemany(
                "INSERT INTO losses VALUES (?, ?, ?)",
                [(sid, self._task_index[t], v) for t, v in losses.items()],
            )
            c.executemany("INSERT INTO arrays VALUES (?, ?, ?, ?)", [(sid, *a) for a in extra])

        self._write(f"the snapshot of step {step}", insert)
        self.steps_written.append(step)
        if self.checkpoint_every and len(self.steps_written) % self.checkpoint_every == 0:
            self._checkpoint("PASSIVE")

    def write_quality(self, step: int, task: str, metric: str, value: float) -> None:
        """Store one quality number (e.g. metric ``chrf``) of ``task`` measured at ``step``.

        NaN (e.g. the chrF of a diverged model) is stored and reads back as NaN.
        """
        if task not in self._task_index:
            raise InvalidInputError(f"unknown task {task!r}; tasks are {self.tasks}")
        step = check_step(step)
        value = float(value)
        self._warn_nonfinite(task, f"quality {metric!r}", value, step)
        row = (step, self._task_index[task], metric, value)
        self._write(
            f"quality {metric!r} of task {task!r}",
            lambda c: c.execute("INSERT OR REPLACE INTO quality VALUES (?, ?, ?, ?)", row),
        )

    def _warn_nonfinite(self, task: str, what: str, value: float, step: int) -> None:
        if math.isfinite(value) or (task, what) in self._warned_nonfinite:
            return
        self._warned_nonfinite.add((task, what))
        log.warning(
            "task %r: %s is %s at step %d (diverged?); recorded as %s in the trace "
            "(warned once per task)", task, what, value, step, value,
        )  # fmt: skip

    def close(self) -> None:
        """Finish the file: checkpoint the WAL into ``trace.sqlite`` and, when no reader has it
        open, switch it to a rollback journal so that the file alone is the whole trace (and
        opens on read-only media). Releases the run directory's lock."""
        if self._conn is None:
            return
        conn = self._conn
        try:
            if self._checkpoint("TRUNCATE"):
                try:
                    conn.execute("PRAGMA journal_mode=DELETE").fetchone()
                except sqlite3.OperationalError as err:
                    # A reader still has the file open: it stays in WAL mode, complete in the
                    # main file (the -wal was just truncated).
                    log.debug("%s stays in WAL mode (%s)", self.path, err)
            else:
                log.info(
                    "%s: a reader kept the WAL from being checkpointed: keep %s-wal with the "
                    "trace until it is opened again", self.path, self.path.name,
                )  # fmt: skip
        finally:
            self._conn = None
            conn.close()
            self._lock.release()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on error) on an autocommit connection.

    A failed ``COMMIT`` (disk full) is rolled back too, so the connection stays usable; SQLite
    may already have rolled back on its own, hence the ``in_transaction`` checks.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
                return
            except sqlite3.Error:
                self._rollback()
                raise
        self._rollback()

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error as err:
                log.debug("rollback failed: %s", err)


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _group_row(group: Any) -> tuple[str, int, list[str]]:
    if hasattr(group, "param_names"):
        return group.name, group.numel, list(group.param_names)
    name, numel, param_names = group
    return name, int(numel), list(param_names)
