"""The trace on disk: one SQLite file per run, and its reader.

``RUN_DIR/trace.sqlite`` is SQLite in WAL mode while it is written: each snapshot is one
transaction, so a writer killed at any moment (even SIGKILL) leaves a file that opens and holds
every snapshot committed before the kill, and readers can open it while a training process is
still writing. On close the writer checkpoints the WAL into the main file and, when no reader
has it open, switches it to a rollback journal: a finished ``trace.sqlite`` is self-contained
(copy it alone, read it from read-only media). See ``docs/reliability.md``.

Schema (``PRAGMA user_version`` holds the version, ``PRAGMA application_id`` marks the file as
a geomtrace trace). Version 2, written now; version 1 (quality values NOT NULL) is still read:

- ``meta(key, value)``: JSON values: config, library versions, creation time, user keys.
- ``tasks(idx, name, iso639_3)`` and ``groups(idx, name, numel, param_names)`` (JSON list),
  ``idx`` being the row/column index in every matrix and the model order of groups.
- ``snapshots(id, step, wall_time, source)``: ``source`` is ``train`` (gradients of the
  training batches) or ``probe`` (of the fixed probe batches).
- ``losses(snapshot_id, task_idx, loss)``: a NaN loss is stored as NULL and read back as NaN
  (a task without a loss has no row at all); infinities are stored as such.
- ``grams(snapshot_id, group_idx, shape, data)``; ``arrays(snapshot_id, name, shape, data)``
  for extra per-snapshot arrays (aggregator weights, GradVac targets).
- ``quality(step, task_idx, metric, value)``: ``value`` NULL (version 2) is a NaN measurement,
  e.g. the chrF of a diverged model.

Arrays are little-endian float32 blobs with a JSON shape; there is no pickle anywhere. This
module needs numpy and the standard library only (no torch), so analyses can read traces
without the training stack.

The reader trusts nothing in the file: a damaged or hand-edited trace (a blob of the wrong
length, a non-JSON shape, a dropped table, a Gram matrix no real gradients can have) raises
:class:`TraceError` naming the table, group and step, never a raw numpy/SQLite/JSON error.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import numbers
import os
import platform
import re
import sqlite3
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from geomtrace._errors import InvalidInputError, StorageError, TraceError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
#: schema versions this reader reads (1: quality values NOT NULL; 2: NULL quality = NaN)
READABLE_VERSIONS = (1, 2)
APPLICATION_ID = 0x67747263  # "gtrc"
TRACE_FILENAME = "trace.sqlite"
#: the group name that means the whole model (the sum over the groups) in the reader
ALL_GROUPS = "all"
#: the lock file of a run directory (see :class:`RunLock`); removed when its owner finishes
LOCK_FILENAME = ".lock"
#: a PASSIVE WAL checkpoint after every this many snapshots, so that ``trace.sqlite`` alone
#: (without its ``-wal``) of a killed run still holds all but the last few snapshots
CHECKPOINT_EVERY = 10
_DTYPE = "<f4"
_SQLITE_MAGIC = b"SQLite format 3\x00"
_TABLES = ("meta", "tasks", "groups", "snapshots", "losses", "grams", "arrays", "quality")
#: relative slack of the checks of a stored Gram matrix, relative to sqrt(G_ii G_jj): the
#: Cauchy-Schwarz bound |G_ij| <= sqrt(G_ii G_jj) and the symmetry |G_ij - G_ji|, and of the
#: split-half identity a.a + b.b + 2 a.b = G_ii. Float32 accumulation over P = 5e7 columns
#: overshoots |cos| = 1 by ~1e-6 (measured; TF32 rounds the inputs, so their Gram is still a
#: Gram); damaged blobs (byte swaps, flipped bits, hand edits) exceed it by orders of magnitude
_GRAM_TOLERANCE = 1e-3

_SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE tasks(idx INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, iso639_3 TEXT);
CREATE TABLE groups(idx INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
                    numel INTEGER NOT NULL, param_names TEXT NOT NULL);
CREATE TABLE snapshots(id INTEGER PRIMARY KEY, step INTEGER NOT NULL UNIQUE,
                       wall_time REAL NOT NULL, source TEXT NOT NULL);
CREATE TABLE losses(snapshot_id INTEGER NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
                    task_idx INTEGER NOT NULL, loss REAL,
                    PRIMARY KEY(snapshot_id, task_idx));
CREATE TABLE grams(snapshot_id INTEGER NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
                   group_idx INTEGER NOT NULL, shape TEXT NOT NULL, data BLOB NOT NULL,
                   PRIMARY KEY(snapshot_id, group_idx));
CREATE TABLE arrays(snapshot_id INTEGER NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
                    name TEXT NOT NULL, shape TEXT NOT NULL, data BLOB NOT NULL,
                    PRIMARY KEY(snapshot_id, name));
CREATE TABLE quality(step INTEGER NOT NULL, task_idx INTEGER NOT NULL, metric TEXT NOT NULL,
                     value REAL, PRIMARY KEY(step, task_idx, metric));
"""


#: step numbers are stored as SQLite INTEGER: signed 64-bit
STEP_RANGE = (-(2**63), 2**63 - 1)


def check_step(step: Any) -> int:
    """An integral step number (int, numpy integer) that fits a signed 64-bit SQLite INTEGER;
    strings, floats, booleans and larger numbers are refused."""
    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
        raise InvalidInputError(f"step must be an integer step number, got {step!r}")
    step = int(step)
    if not STEP_RANGE[0] <= step <= STEP_RANGE[1]:
        raise InvalidInputError(
            f"step {step} does not fit the trace's step numbers (a signed 64-bit integer, "
            f"at most {STEP_RANGE[1]})"
        )
    return step


def check_group_name(name: str, source: str = "") -> None:
    """Refuse the reserved group name ``"all"`` (the whole model, the sum over the groups, in
    the reader and every command): a group of that name would shadow it."""
    if name == ALL_GROUPS:
        raise InvalidInputError(
            f"group name {ALL_GROUPS!r} is reserved for the whole model (the sum over the "
            f"groups){source}: give the group another name"
        )


def trace_path(run: str | os.PathLike) -> Path:
    """``RUN_DIR/trace.sqlite`` for a run directory; a path to the file itself is kept."""
    path = Path(run)
    return path if path.suffix == ".sqlite" or path.is_file() else path / TRACE_FILENAME


def _to_blob(array: Any) -> tuple[str, bytes]:
    if hasattr(array, "detach"):  # a torch tensor: only small K x K arrays come here
        array = array.detach().float().cpu().numpy()
    array = np.ascontiguousarray(array, dtype=_DTYPE)
    return json.dumps(list(array.shape)), array.tobytes()


#: a stored shape: a flat JSON list of sizes (checked by pattern before parsing, so a hostile
#: value such as 100,000 nested '[' never reaches the recursive JSON decoder)
_SHAPE = re.compile(r"\[\s*(?:\d{1,18}\s*(?:,\s*\d{1,18}\s*){0,31})?\]")
#: the deepest nesting accepted in a JSON metadata value (configs are a few levels deep)
MAX_META_DEPTH = 100


def _shown(value: Any, limit: int = 40) -> str:
    """``repr`` of a stored value for an error message, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _json_depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value (a scalar is 0), without recursion."""
    depth, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            depth = max(depth, level + 1)
            stack.extend((x, level + 1) for x in item)
    return depth


def _from_blob(shape: Any, data: Any, what: str = "array") -> np.ndarray:
    """Decode one stored array, checking everything a damaged file can get wrong.

    ``what`` names the array in the error (e.g. "group 'encoder' at step 10").
    """
    dims = None
    if isinstance(shape, str) and _SHAPE.fullmatch(shape):
        dims = json.loads(shape)
    if not isinstance(dims, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims
    ):
        raise TraceError(f"{what}: shape {_shown(shape)} is not a JSON list of sizes")
    if not isinstance(data, bytes):
        raise TraceError(f"{what}: data is {type(data).__name__}, not a blob of float32")
    expected = 4 * math.prod(dims)
    if len(data) != expected:
        raise TraceError(
            f"{what}: blob of {len(data)} bytes, expected {expected} for shape {dims} (float32)"
        )
    with np.errstate(invalid="ignore"):  # signalling NaNs (damaged bytes) stay NaN quietly
        return np.frombuffer(data, dtype=_DTYPE).reshape(dims).astype(np.float64)


def library_versions() -> dict[str, str]:
    """Versions of Python and of the libraries that shape a trace, for the run's metadata."""
    versions = {"python": platform.python_version()}
    for dist in ("geomtrace", "torch", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


class _Held:
    """A lock this process holds: the open lock file and how often this thread re-entered."""

    def __init__(self, fd: int | None, thread: int) -> None:
        self.fd = fd
        self.thread = thread
        self.count = 1


_HELD: dict[str, _Held] = {}
_HELD_GUARD = threading.Lock()
#: open TraceWriters of this process by the real path of their file; weak, so that a writer
#: nobody can close any more (its Tracer garbage-collected) does not block its directory
_LIVE_WRITERS: weakref.WeakValueDictionary[str, TraceWriter] = weakref.WeakValueDictionary()


class RunLock:
    """Exclusive ownership of a run directory for the life of one run.

    ``RUN_DIR/.lock`` is ``flock``-ed (exclusive, non-blocking) and holds the owner's pid. A
    second writer, in another process or another thread, is refused with an error naming the
    directory and the owner's pid, instead of unlinking or interleaving the owner's files; the
    kernel drops the lock when the owner dies (even by SIGKILL), so a stale lock file never
    blocks a later run. Re-entrant in the owning thread: the recipe runner holds the lock for
    the whole run and the :class:`TraceWriter` it creates takes it again.

    The lock file is unlinked on release; an acquirer that locked a file unlinked meanwhile
    notices (the inode changed) and retries. Where ``fcntl`` is missing (Windows), the lock is
    a no-op. On network file systems the guarantee is only as good as their ``flock``.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILENAME
        self._key: str | None = None

    def acquire(self) -> RunLock:
        key = os.path.realpath(self.directory)
        with _HELD_GUARD:
            held = _HELD.get(key)
            if held is not None:
                if held.thread != threading.get_ident():
                    raise InvalidInputError(
                        f"run directory {str(self.directory)!r} is in use by another writer in "
                        f"this process (pid {os.getpid()}, another thread): one writer per run "
                        "directory; choose another name or wait for it to finish"
                    )
                held.count += 1
                self._key = key
                return self
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise StorageError(
                    f"cannot create run directory {str(self.directory)!r}: {err.strerror or err}"
                ) from err
            _HELD[key] = _Held(self._lock_file(), threading.get_ident())
            self._key = key
        return self

    def _lock_file(self) -> int | None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            log.debug("no fcntl: run directory %s is not locked", self.directory)
            return None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise StorageError(
                    f"cannot create the lock file {str(self.path)!r}: {err.strerror or err}"
                ) from err
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise InvalidInputError(
                    f"run directory {str(self.directory)!r} is in use by another run "
                    f"(pid {owner}): one writer per run directory; wait for it to finish or "
                    "choose another --name/--out (--force does not take over a live run)"
                ) from None
            try:
                current = os.stat(self.path)
                mine = os.fstat(fd)
                same = (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino)
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                return fd
            os.close(fd)  # its owner unlinked it between our open and flock: lock the new one

    def release(self) -> None:
        if self._key is None:
            return
        with _HELD_GUARD:
            held = _HELD[self._key]
            held.count -= 1
            if held.count == 0:
                del _HELD[self._key]
                if held.fd is not None:
                    try:
                        self.path.unlink()  # while still locked: see the class docstring
                    except OSError:
                        pass
                    os.close(held.fd)
        self._key = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


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
        encoded_meta = [(k, _encode_meta(k, v)) for k, v in meta.items()]
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
        with _HELD_GUARD:
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
            for statement in _statements(_SCHEMA):
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
        encoded = _encode_meta(key, value)
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
        blobs = [(k, *_to_blob(gram[k])) for k in range(len(self.groups))]
        extra = [(name, *_to_blob(a)) for name, a in (arrays or {}).items()]

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


def _encode_meta(key: str, value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as err:
        raise InvalidInputError(f"meta {key!r} is not JSON-serialisable: {err}") from None


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


def open_trace(run: str | os.PathLike) -> Trace:
    """Open a trace for reading: a run directory or the path of its ``trace.sqlite``."""
    return Trace(run)


def _directory_writable(directory: Path) -> bool:
    """False on a read-only mount or without write permission (root passes chmod, not ro)."""
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return False
    except (OSError, AttributeError):
        pass
    return os.access(directory, os.W_OK)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Trace:
    """Read access to a trace; a consistent view of the snapshots present when opened.

    ``refresh()`` picks up snapshots written since (the file can be read while training writes).
    Matrices come back as float64 numpy arrays indexed [snapshot, task, task] in ``tasks`` order.
    Opens read-only (``mode=ro``); on a read-only medium where SQLite cannot open the WAL's
    shared memory, as ``immutable`` (what is in the -wal file then is not seen).
    """

    def __init__(self, run: str | os.PathLike) -> None:
        self.path = trace_path(run)
        self._conn = self._connect()
        try:
            self._read_header()
            self.refresh()
        except BaseException:
            self._conn.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        path = self.path
        if not path.exists():
            raise TraceError(
                f"no trace at {path}: expected a run directory holding {TRACE_FILENAME} "
                "(written by geomtrace trace or gt.Tracer(out=...))"
            )
        if path.is_dir():
            raise TraceError(f"{path} is a directory, not a geomtrace trace file")
        try:
            with path.open("rb") as f:
                head = f.read(len(_SQLITE_MAGIC))
        except PermissionError:
            st = path.stat()
            raise TraceError(
                f"cannot read {path}: permission denied (mode {st.st_mode & 0o777:o}, owner uid "
                f"{st.st_uid}); ask its owner, or copy the file"
            ) from None
        except OSError as err:
            raise TraceError(f"cannot read {path}: {err.strerror or err}") from None
        wal = Path(f"{path}-wal")
        if not head and not (wal.exists() and wal.stat().st_size > 0):
            raise TraceError(
                f"{path} is empty, not a geomtrace trace (was its writer killed before its "
                "first commit?)"
            )
        if head and head != _SQLITE_MAGIC:
            raise TraceError(
                f"{path} is not a geomtrace trace (not an SQLite database: it starts with {head!r})"
            )
        uri = "file:" + urllib.parse.quote(str(path.absolute()))
        try:
            conn = sqlite3.connect(f"{uri}?mode=ro", uri=True)
            try:
                conn.execute("PRAGMA schema_version").fetchone()  # the file is opened here
            except sqlite3.DatabaseError:
                conn.close()
                raise
            return conn
        except sqlite3.OperationalError as err:
            if _directory_writable(path.parent):
                raise TraceError(f"cannot open {path} as a trace ({err})") from None
            first = err
        except sqlite3.DatabaseError as err:
            raise TraceError(f"{path} is not a geomtrace trace ({err})") from None
        # A WAL-mode file on a read-only medium: SQLite cannot create its -shm. Immutable mode
        # reads the main file alone (the writer checkpointed it on close).
        if wal.exists() and wal.stat().st_size > 0:
            log.warning(
                "%s is on a read-only medium and its -wal file cannot be read there (%s): "
                "snapshots committed after the last checkpoint are not seen; copy the run "
                "directory to writable storage to read them", path, first,
            )  # fmt: skip
        else:
            log.info("%s is on a read-only medium: opened as immutable", path)
        try:
            conn = sqlite3.connect(f"{uri}?immutable=1", uri=True)
            conn.execute("PRAGMA schema_version").fetchone()
            return conn
        except sqlite3.DatabaseError as err:
            raise TraceError(
                f"cannot open {path} from a read-only directory ({first}; as immutable: {err})"
            ) from None

    def _query(self, sql: str, params: Sequence[Any] = (), what: str = "the trace") -> list:
        """``fetchall`` whose SQLite errors (damaged pages, missing columns) name ``what``."""
        try:
            return self._conn.execute(sql, params).fetchall()
        except (sqlite3.DatabaseError, UnicodeDecodeError) as err:  # text of damaged pages
            raise TraceError(
                f"{self.path}: cannot read {what} ({err}); the file is damaged"
            ) from None

    def _read_header(self) -> None:
        path = self.path
        try:
            app_id = self._conn.execute("PRAGMA application_id").fetchone()[0]
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as err:
            raise TraceError(f"{path} is not a geomtrace trace ({err})") from None
        if app_id != APPLICATION_ID:
            raise TraceError(f"{path} is an SQLite file but not a geomtrace trace")
        if version > max(READABLE_VERSIONS):
            raise TraceError(
                f"{path} was written with trace schema version {version}; this geomtrace "
                f"reads versions up to {max(READABLE_VERSIONS)}: upgrade geomtrace to read it"
            )
        if version not in READABLE_VERSIONS:
            raise TraceError(f"{path} has unsupported trace schema version {version}")
        self.schema_version: int = version
        tables = {
            r[0]
            for r in self._query(
                "SELECT name FROM sqlite_master WHERE type = 'table'", what="the list of tables"
            )
        }
        missing = [t for t in _TABLES if t not in tables]
        if missing:
            raise TraceError(
                f"{path} is marked as a geomtrace trace but lacks table(s) {', '.join(missing)}: "
                "the file is damaged"
            )
        rows = self._query("SELECT idx, name, iso639_3 FROM tasks ORDER BY idx", what="table tasks")
        if not rows:
            raise TraceError(f"{path}: table tasks is empty; the file is damaged")
        for position, (idx, name, iso) in enumerate(rows):
            if (
                idx != position
                or not isinstance(name, str)
                or not (iso is None or isinstance(iso, str))
            ):
                raise TraceError(
                    f"{path}: table tasks, row {position}: ({idx!r}, {name!r}, {iso!r}) is not "
                    "(index, name, ISO code); the file is damaged"
                )
        self.tasks: list[str] = [name for _, name, _ in rows]
        self.iso_codes: dict[str, str | None] = {name: iso for _, name, iso in rows}
        rows = self._query(
            "SELECT idx, name, numel, param_names FROM groups ORDER BY idx", what="table groups"
        )
        params: dict[str, list[str]] = {}
        for position, (idx, name, numel, names) in enumerate(rows):
            if idx != position or not isinstance(name, str) or not _is_int(numel) or numel < 0:
                raise TraceError(
                    f"{path}: table groups, row {position}: ({idx!r}, {name!r}, {numel!r}) is not "
                    "(index, name, size); the file is damaged"
                )
            try:
                decoded = json.loads(names) if isinstance(names, str) else None
            except (ValueError, RecursionError):  # RecursionError: hostile nesting
                decoded = None
            if not isinstance(decoded, list) or not all(isinstance(n, str) for n in decoded):
                raise TraceError(
                    f"{path}: group {name!r}: param_names {_shown(names)} is not a JSON list of "
                    "parameter names; the file is damaged"
                )
            params[name] = decoded
        self.groups: list[str] = [row[1] for row in rows]
        self.group_sizes: dict[str, int] = {row[1]: row[2] for row in rows}
        self.group_params: dict[str, list[str]] = params

    def refresh(self) -> None:
        """Re-read the list of snapshots (and metadata) from the file."""
        rows = self._query(
            "SELECT id, step, wall_time, source FROM snapshots ORDER BY step",
            what="table snapshots",
        )
        for sid, step, wall, source in rows:
            if not (_is_int(sid) and _is_int(step) and isinstance(wall, int | float)
                    and isinstance(source, str)):  # fmt: skip
                raise TraceError(
                    f"{self.path}: table snapshots: row ({sid!r}, {step!r}, {wall!r}, "
                    f"{source!r}) is not (id, step, time, source); the file is damaged"
                )
        self._snapshot_ids = [r[0] for r in rows]
        self._step_of = {r[0]: r[1] for r in rows}
        self.steps = np.array([r[1] for r in rows], dtype=np.int64)
        self.wall_times = np.array([r[2] for r in rows], dtype=np.float64)
        self.sources = [r[3] for r in rows]
        meta = {}
        for key, value in self._query("SELECT key, value FROM meta", what="table meta"):
            try:
                meta[key] = json.loads(value)
            except (TypeError, ValueError):
                raise TraceError(
                    f"{self.path}: meta {key!r} is not valid JSON ({str(value)[:40]!r}); "
                    "the file is damaged"
                ) from None
            except RecursionError:
                raise TraceError(
                    f"{self.path}: meta {key!r} is not valid JSON ({str(value)[:40]!r}...: "
                    "nested deeper than Python's JSON decoder can follow); the file is damaged"
                ) from None
            if _json_depth(meta[key]) > MAX_META_DEPTH:
                # Parsable, but printing or copying it (inspect, analyze) would recurse as deep.
                raise TraceError(
                    f"{self.path}: meta {key!r} is nested deeper than {MAX_META_DEPTH} levels "
                    f"({str(value)[:40]!r}...); the file is damaged"
                )
        self._meta = meta

    @property
    def config(self) -> dict[str, Any]:
        config = self._meta.get("config", {})
        if not isinstance(config, dict):
            raise TraceError(f"{self.path}: meta 'config' is not a JSON object: {config!r}")
        return config

    def meta(self, key: str, default: Any = None) -> Any:
        """A value stored with ``set_meta`` (or ``default``)."""
        return self._meta.get(key, default)

    def _group_index(self, group: str) -> int:
        if group not in self.group_sizes:
            raise InvalidInputError(f"unknown group {group!r}; the trace has {self.groups}")
        return self.groups.index(group)

    def _stack(
        self,
        rows: list[tuple[int, str, bytes]],
        what: str,
        shape: tuple[int, ...] | None = None,
    ) -> np.ndarray:
        """Stack one stored array per snapshot (in step order), all of one shape.

        ``shape``: the shape every snapshot's array must have (e.g. (K, K) for a Gram).
        Rows of snapshots no longer listed (a replaced step) are ignored.
        """
        by_id = {
            sid: _from_blob(blob_shape, data, f"{self.path}: {what} at step {self._step_of[sid]}")
            for sid, blob_shape, data in rows
            if sid in self._step_of
        }
        missing = [s for s in self._snapshot_ids if s not in by_id]
        if missing:
            raise TraceError(
                f"{self.path}: {what} is missing from {len(missing)} snapshot(s) (first: step "
                f"{self._step_of[missing[0]]}); the file is damaged or incomplete"
            )
        if not by_id:
            return np.zeros((0,))
        arrays = [by_id[s] for s in self._snapshot_ids]
        first = arrays[0].shape if shape is None else shape
        for sid, array in zip(self._snapshot_ids, arrays, strict=True):
            if array.shape != first:
                raise TraceError(
                    f"{self.path}: {what} at step {self._step_of[sid]} has shape "
                    f"{list(array.shape)}, expected {list(first)}; the file is damaged"
                )
        return np.stack(arrays)

    def _check_gram(self, gram: np.ndarray, what: str) -> np.ndarray:
        """Refuse Gram matrices no gradients can have, and return them symmetrised.

        Refused: a negative squared norm, or, between two present tasks (finite diagonal), a
        non-finite entry, an asymmetry |G_ij - G_ji| > tol sqrt(G_ii G_jj) or
        |G_ij| > (1 + tol) sqrt(G_ii G_jj) (tol = ``_GRAM_TOLERANCE``). What passes is
        returned as (G + G^T) / 2: exactly symmetric, also for traces written before the
        captures symmetrised (float32 matmuls left them a few ulps apart)."""
        diag = np.diagonal(gram, axis1=-2, axis2=-1)
        present = np.isfinite(diag)
        negative = present & (diag < 0)
        if negative.any():
            s, i = np.argwhere(negative)[0]
            raise TraceError(
                f"{self.path}: {what} at step {self.steps[s]}: task {self.tasks[i]!r} has a "
                f"negative squared norm {diag[s, i]:.3g}; the Gram blob is damaged"
            )
        pair = present[..., :, None] & present[..., None, :]
        with np.errstate(invalid="ignore", over="ignore"):
            bound = np.sqrt(np.where(pair, diag[..., :, None] * diag[..., None, :], 0.0))
            skew = np.abs(gram - np.swapaxes(gram, -1, -2))
            asymmetric = pair & ~(skew <= bound * _GRAM_TOLERANCE)
            bad = pair & ~(np.abs(gram) <= bound * (1 + _GRAM_TOLERANCE))
        if asymmetric.any():
            s, i, j = np.argwhere(asymmetric)[0]
            a, b = self.tasks[i], self.tasks[j]
            raise TraceError(
                f"{self.path}: {what} at step {self.steps[s]}: G[{a!r}, {b!r}] = "
                f"{gram[s, i, j]:.4g} and G[{b!r}, {a!r}] = {gram[s, j, i]:.4g} differ by more "
                f"than float32 rounding (a Gram matrix is symmetric); the Gram blob is damaged "
                "(not symmetric)"
            )
        if bad.any():
            s, i, j = np.argwhere(bad)[0]
            with np.errstate(divide="ignore", invalid="ignore"):
                cosine = gram[s, i, j] / bound[s, i, j]
            raise TraceError(
                f"{self.path}: {what} at step {self.steps[s]}: G[{self.tasks[i]!r}, "
                f"{self.tasks[j]!r}] = {gram[s, i, j]:.4g} is impossible for squared norms "
                f"{diag[s, i]:.4g} and {diag[s, j]:.4g} (cosine {cosine:.4g}: |cosine| > 1 "
                f"beyond float32 rounding, or not finite); the Gram blob is damaged"
            )
        return 0.5 * (gram + np.swapaxes(gram, -1, -2))

    def gram(self, group: str) -> np.ndarray:
        """Gram matrices G[s] = [g_i . g_j] of ``group`` at every snapshot: [S, K, K].

        ``group="all"``: the whole model, the sum of the groups' Gram matrices (exact: the
        groups are disjoint blocks of the parameters). Checked on the way out: a damaged blob
        raises :class:`TraceError` (see ``_check_gram``) instead of giving cosines outside
        [-1, 1].
        """
        if group == ALL_GROUPS and ALL_GROUPS not in self.group_sizes:
            return self._sum_over_groups(self.gram)
        k = self._group_index(group)
        K = len(self.tasks)
        rows = self._query(
            "SELECT snapshot_id, shape, data FROM grams WHERE group_idx = ?",
            (k,),
            what=f"table grams (group {group!r})",
        )
        if not self._snapshot_ids:
            return np.zeros((0, K, K))
        gram = self._stack(rows, f"group {group!r}", shape=(K, K))
        return self._check_gram(gram, f"group {group!r}")

    def cosine(self, group: str, corrected: bool = False) -> np.ndarray:
        """Cosines G_ij / sqrt(G_ii G_jj) of ``group``: [S, K, K]; NaN where a norm is 0.

        ``corrected=True``: per snapshot, the cosine corrected for sampling noise,
        G_ij / sqrt(4 ab_i 4 ab_j) from the split halves (``halves=True`` traces only; see
        :meth:`reliability`). Over a window of snapshots use :meth:`window_cosine` (a ratio of
        scaled means, the number ``analyze`` prints): single-snapshot a.b can be <= 0.
        """
        if corrected:
            from geomtrace._reliability import corrected_cosine

            return corrected_cosine(self.gram(group), self.split_half(group))
        return cosine_from_gram(self.gram(group))

    def array(self, name: str, group: str | None = None) -> np.ndarray:
        """An extra per-snapshot array stacked over snapshots (e.g. ``weights`` -> [S, G, K]).

        With ``group``, the slice of that group along the array's first (group) axis: [S, ...].
        """
        if group is not None:
            array = self.array(name)
            k = self._group_index(group)
            if array.ndim < 2 or array.shape[1] != len(self.groups):
                raise TraceError(
                    f"{self.path}: array {name!r} has shape {list(array.shape[1:])} per "
                    f"snapshot, not one row per group ({len(self.groups)})"
                )
            return array[:, k]
        rows = self._query(
            "SELECT snapshot_id, shape, data FROM arrays WHERE name = ?",
            (name,),
            what=f"table arrays (array {name!r})",
        )
        if not rows:
            raise TraceError(f"the trace has no array {name!r}; it has {self.array_names()}")
        return self._stack(rows, f"array {name!r}")

    def array_names(self) -> list[str]:
        rows = self._query("SELECT DISTINCT name FROM arrays", what="table arrays")
        return sorted(str(r[0]) for r in rows)

    def losses(self):
        """Per-task training (or probe) loss at each snapshot: columns step, task, loss.

        A NaN loss (stored as NULL) reads back as NaN; a task without a loss has no row.
        """
        import pandas as pd

        rows = self._query(
            "SELECT s.step, t.name, l.loss FROM losses l JOIN snapshots s ON s.id = l.snapshot_id "
            "JOIN tasks t ON t.idx = l.task_idx ORDER BY s.step, t.idx",
            what="table losses",
        )
        for step, task, loss in rows:
            if not (loss is None or isinstance(loss, int | float)):
                raise TraceError(
                    f"{self.path}: table losses: the loss of task {task!r} at step {step} is "
                    f"{loss!r}, not a number; the file is damaged"
                )
        frame = pd.DataFrame(rows, columns=["step", "task", "loss"])
        frame["loss"] = frame["loss"].astype(np.float64)  # NULL -> NaN, also when all NULL
        return frame

    def quality(self):
        """Quality measurements: columns step, task, metric, value (NULL reads back as NaN)."""
        import pandas as pd

        rows = self._query(
            "SELECT q.step, t.name, q.metric, q.value FROM quality q "
            "JOIN tasks t ON t.idx = q.task_idx ORDER BY q.step, q.metric, t.idx",
            what="table quality",
        )
        for step, task, metric, value in rows:
            if not (_is_int(step) and isinstance(metric, str)) or not (
                value is None or isinstance(value, int | float)
            ):
                raise TraceError(
                    f"{self.path}: table quality: row ({step!r}, {task!r}, {metric!r}, "
                    f"{value!r}) is not (step, task, metric, number); the file is damaged"
                )
        frame = pd.DataFrame(rows, columns=["step", "task", "metric", "value"])
        frame["value"] = frame["value"].astype(np.float64)
        return frame

    def frame(self):
        """Tidy frame of every snapshot, group and ordered task pair (diagonal included).

        Columns: step, group, task_a, task_b, dot, cosine.
        """
        import pandas as pd

        K, S = len(self.tasks), len(self.steps)
        parts = []
        for group in self.groups:
            gram = self.gram(group)
            parts.append(
                pd.DataFrame(
                    {
                        "step": np.repeat(self.steps, K * K),
                        "group": group,
                        "task_a": np.tile(np.repeat(self.tasks, K), S),
                        "task_b": np.tile(np.tile(self.tasks, K), S),
                        "dot": gram.reshape(-1),
                        "cosine": cosine_from_gram(gram).reshape(-1),
                    }
                )
            )
        if not parts:
            return pd.DataFrame(columns=["step", "group", "task_a", "task_b", "dot", "cosine"])
        return pd.concat(parts, ignore_index=True)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Trace:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Trace({str(self.path)!r}: {len(self.tasks)} tasks, {len(self.groups)} groups, "
            f"{len(self.steps)} snapshots)"
        )

    # -- split halves, reliability, the whole model ------------------------------------------
    def _sum_over_groups(self, read) -> np.ndarray:
        """Sum of ``read(group)`` over the groups (NaN propagates: absent stays absent)."""
        from geomtrace._summaries import whole_model_sum

        return whole_model_sum([read(g) for g in self.groups])

    @property
    def has_halves(self) -> bool:
        """Whether the snapshots carry split-half products (traced with ``halves=True``)."""
        return "split_half" in self.array_names()

    def split_half(self, group: str) -> np.ndarray:
        """Split-half products (a.a, b.b, a.b) per snapshot and task: [S, K, 3].

        ``group="all"``: summed over the groups (exact, as for :meth:`gram`). Raises
        ``InvalidInputError`` for a trace without halves.
        """
        if not self.has_halves:
            raise InvalidInputError(
                f"{self.path} has no split halves: trace with gt.Tracer(..., halves=True) to "
                "measure reliability and corrected cosines"
            )
        if group == ALL_GROUPS and ALL_GROUPS not in self.group_sizes:
            return self._sum_over_groups(self.split_half)
        split = self.array("split_half", group=group)
        if split.ndim != 3 or split.shape[1:] != (len(self.tasks), 3):
            raise TraceError(
                f"{self.path}: split_half of group {group!r} has shape {list(split.shape[1:])} "
                f"per snapshot, expected [{len(self.tasks)}, 3]; the file is damaged"
            )
        self._check_split_half(split, self.gram(group), group)
        return split

    def _check_split_half(self, split: np.ndarray, gram: np.ndarray, group: str) -> None:
        """Refuse split-half products no halves can have: per snapshot and task with a finite
        |g|^2 = G_ii and finite products, a.a < 0 or b.b < 0, |a.b| > sqrt(a.a b.b), or
        a.a + b.b + 2 a.b != G_ii (g = a + b), each beyond float32 rounding (``_GRAM_TOLERANCE``
        of aa + bb + 2 |ab| + G_ii). Without it, products of 1e30 gave a reliability of 1.0."""
        aa, bb, ab = split[..., 0], split[..., 1], split[..., 2]
        diag = np.diagonal(gram, axis1=-2, axis2=-1)
        with np.errstate(invalid="ignore", over="ignore"):
            rows = np.isfinite(split).all(axis=-1) & np.isfinite(diag)
            slack = _GRAM_TOLERANCE * (np.abs(aa) + np.abs(bb) + 2 * np.abs(ab) + np.abs(diag))
            negative = rows & ((aa < -slack) | (bb < -slack))
            bound = np.sqrt(np.clip(aa, 0, None) * np.clip(bb, 0, None))
            impossible = rows & ~(np.abs(ab) <= bound + slack)
            inconsistent = rows & ~(np.abs(aa + bb + 2 * ab - diag) <= slack)
        for bad, why in (
            (negative, "a negative squared norm of a half"),
            (impossible, "|a.b| > sqrt(a.a b.b)"),
            (inconsistent, "a.a + b.b + 2 a.b differs from |g|^2 = G_ii (g = a + b)"),
        ):
            if bad.any():
                s, i = np.argwhere(bad)[0]
                raise TraceError(
                    f"{self.path}: split_half of group {group!r} at step {self.steps[s]}: task "
                    f"{self.tasks[i]!r} has (a.a, b.b, a.b) = ({aa[s, i]:.4g}, {bb[s, i]:.4g}, "
                    f"{ab[s, i]:.4g}) with |g|^2 = {diag[s, i]:.4g}: {why}; the array is damaged"
                )

    def reliability(self, group: str) -> np.ndarray:
        """Reliability (signal fraction) of each task's full snapshot gradient: [S, K].

        r = 4 ab / (aa + bb + 2 ab) from the split halves (see ``geomtrace._reliability``);
        NaN where a half is missing. Over snapshots, a ratio of means (mean 4ab / mean |g|^2)
        is more robust than the mean of r.
        """
        from geomtrace._reliability import split_half_reliability

        return split_half_reliability(self.split_half(group))

    def _window(self, steps: Sequence[int] | None) -> np.ndarray:
        """Boolean mask of the snapshots at ``steps`` (default: every snapshot after step 0)."""
        have = np.asarray(self.steps, dtype=np.int64)
        if steps is None:
            mask = have > 0 if (have > 0).any() else np.ones(len(have), dtype=bool)
        else:
            wanted = [int(s) for s in steps]
            missing = sorted(set(wanted) - set(have.tolist()))
            if missing:
                raise InvalidInputError(
                    f"steps {missing} are not in the trace (it has {have.tolist()})"
                )
            mask = np.isin(have, wanted)
        return mask

    def window_reliability(self, group: str, steps: Sequence[int] | None = None) -> np.ndarray:
        """R_i over a window of snapshots (default: after step 0): [K], a ratio of scaled means
        (``geomtrace.window_reliability``; the number ``analyze`` prints)."""
        from geomtrace._reliability import window_reliability

        mask = self._window(steps)
        return window_reliability(self.gram(group)[mask], self.split_half(group)[mask])

    def window_cosine(
        self, group: str, steps: Sequence[int] | None = None, corrected: bool = False
    ) -> np.ndarray:
        """The similarity matrix over a window of snapshots (default: after step 0): [K, K].

        ``corrected=False``: the NaN-aware mean of the snapshots' cosines; ``True``: the
        noise-corrected similarity ``geomtrace.window_corrected_cosine`` (ratio of scaled
        means, clipped to [-1, 1], NaN below the reliability floor). Both are the numbers
        ``analyze`` prints for ``measure="raw"`` / ``"corrected"``.
        """
        mask = self._window(steps)
        if corrected:
            from geomtrace._reliability import window_corrected_cosine

            return window_corrected_cosine(self.gram(group)[mask], self.split_half(group)[mask])
        from geomtrace._summaries import nanmean

        out = nanmean(cosine_from_gram(self.gram(group)[mask]))
        return out


def cosine_from_gram(gram: np.ndarray) -> np.ndarray:
    """cos_ij = G_ij / sqrt(G_ii G_jj) over the last two axes, clipped to [-1, 1]; NaN where
    a norm is 0 or not finite (an absent task, or the overflowed gradient of a diverged one)."""
    gram = np.asarray(gram, dtype=np.float64)
    norms = np.sqrt(np.clip(np.diagonal(gram, axis1=-2, axis2=-1), 0, None))
    with np.errstate(over="ignore", invalid="ignore"):
        denom = norms[..., :, None] * norms[..., None, :]
        ok = np.isfinite(denom) & (denom > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(ok, gram / np.where(ok, denom, 1.0), np.nan)
    # Within [-1, 1]: rounding of (nearly) parallel gradients can overshoot by ~1e-6 (the
    # reader refuses Gram matrices that overshoot beyond float32 rounding); NaN stays NaN.
    return np.clip(cos, -1.0, 1.0)
