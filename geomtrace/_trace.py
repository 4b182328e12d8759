"""The trace on disk: one SQLite file per run, and its reader.

``RUN_DIR/trace.sqlite`` is SQLite in WAL mode: each snapshot is one transaction, so a writer
killed at any moment (even SIGKILL) leaves a file that opens and holds every snapshot committed
before the kill, and readers can open it while a training process is still writing.

Schema (version 1; ``PRAGMA user_version`` holds the version, ``PRAGMA application_id`` marks
the file as a geomtrace trace):

- ``meta(key, value)``: JSON values: config, library versions, creation time, user keys.
- ``tasks(idx, name, iso639_3)`` and ``groups(idx, name, numel, param_names)`` (JSON list),
  ``idx`` being the row/column index in every matrix and the model order of groups.
- ``snapshots(id, step, wall_time, source)``: ``source`` is ``train`` (gradients of the
  training batches) or ``probe`` (of the fixed probe batches).
- ``losses(snapshot_id, task_idx, loss)``; ``grams(snapshot_id, group_idx, shape, data)``;
  ``arrays(snapshot_id, name, shape, data)`` for extra per-snapshot arrays (aggregator weights,
  GradVac targets); ``quality(step, task_idx, metric, value)``.

Arrays are little-endian float32 blobs with a JSON shape; there is no pickle anywhere. This
module needs numpy and the standard library only (no torch), so analyses can read traces
without the training stack.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sqlite3
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from geomtrace._errors import InvalidInputError, TraceError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
APPLICATION_ID = 0x67747263  # "gtrc"
TRACE_FILENAME = "trace.sqlite"
#: the group name that means the whole model (the sum over the groups) in the reader
ALL_GROUPS = "all"
_DTYPE = "<f4"

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
                     value REAL NOT NULL, PRIMARY KEY(step, task_idx, metric));
"""


def trace_path(run: str | os.PathLike) -> Path:
    """``RUN_DIR/trace.sqlite`` for a run directory; a path to the file itself is kept."""
    path = Path(run)
    return path if path.suffix == ".sqlite" or path.is_file() else path / TRACE_FILENAME


def _to_blob(array: Any) -> tuple[str, bytes]:
    if hasattr(array, "detach"):  # a torch tensor: only small K x K arrays come here
        array = array.detach().float().cpu().numpy()
    array = np.ascontiguousarray(array, dtype=_DTYPE)
    return json.dumps(list(array.shape)), array.tobytes()


def _from_blob(shape: str, data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=_DTYPE).reshape(json.loads(shape)).astype(np.float64)


def library_versions() -> dict[str, str]:
    """Versions of Python and of the libraries that shape a trace, for the run's metadata."""
    versions = {"python": platform.python_version()}
    for dist in ("geomtrace", "torch", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


class TraceWriter:
    """Creates a trace and appends snapshots, one transaction each.

    Args:
        run_dir: the run directory (created if needed); the file is ``run_dir/trace.sqlite``.
        tasks: task names, in matrix order.
        groups: ``ParameterGroup`` objects or ``(name, numel, param_names)`` tuples, model order.
        iso_codes: optional ``{task: ISO 639-3 code}`` for tasks that are languages.
        config: the run's configuration (JSON-serialisable), stored under meta ``config``.
        overwrite: replace an existing trace instead of refusing.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        tasks: Sequence[str],
        groups: Sequence[Any],
        iso_codes: Mapping[str, str | None] | None = None,
        config: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> None:
        self.path = trace_path(run_dir)
        self.tasks = list(tasks)
        self._task_index = {t: i for i, t in enumerate(self.tasks)}
        group_rows = [_group_row(g) for g in groups]
        self.groups = [name for name, _, _ in group_rows]
        unknown = set(iso_codes or {}) - set(self.tasks)
        if unknown:
            raise InvalidInputError(f"iso_codes names unknown tasks: {sorted(unknown)}")
        if self.path.exists():
            if not overwrite:
                raise InvalidInputError(
                    f"a trace already exists at {self.path}; pass overwrite=True (CLI: --force) "
                    "to replace it, or choose another run directory"
                )
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # WAL: readers never block the writer and a crash keeps every committed transaction.
        # synchronous=NORMAL survives a killed process (not a power cut) at a fraction of FULL's cost.
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        with self._transaction() as c:
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
            meta = {
                "schema_version": SCHEMA_VERSION,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "versions": library_versions(),
                "config": dict(config or {}),
            }
            c.executemany(
                "INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()]
            )

    def _transaction(self):
        return _Transaction(self._conn)

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable value under ``key`` (replacing any earlier value)."""
        try:
            encoded = json.dumps(value)
        except TypeError as err:
            raise InvalidInputError(f"meta {key!r} is not JSON-serialisable: {err}") from None
        with self._transaction() as c:
            c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, encoded))

    def write_snapshot(
        self,
        step: int,
        gram: Any,
        losses: Mapping[str, float] | None = None,
        arrays: Mapping[str, Any] | None = None,
        source: str = "train",
    ) -> None:
        """Append one snapshot: the [G, K, K] Gram matrices of all groups at ``step``.

        A snapshot already stored for ``step`` (e.g. a resumed run) is replaced.
        """
        if hasattr(gram, "detach"):
            gram = gram.detach().float().cpu().numpy()
        gram = np.asarray(gram)
        expected = (len(self.groups), len(self.tasks), len(self.tasks))
        if gram.shape != expected:
            raise InvalidInputError(
                f"gram has shape {gram.shape}, expected {expected} (groups, tasks, tasks)"
            )
        losses = dict(losses or {})
        unknown = set(losses) - set(self.tasks)
        if unknown:
            raise InvalidInputError(f"losses for unknown tasks {sorted(unknown)}")
        with self._transaction() as c:
            c.execute("DELETE FROM snapshots WHERE step = ?", (int(step),))
            cur = c.execute(
                "INSERT INTO snapshots(step, wall_time, source) VALUES (?, ?, ?)",
                (int(step), time.time(), source),
            )
            sid = cur.lastrowid
            c.executemany(
                "INSERT INTO grams VALUES (?, ?, ?, ?)",
                [(sid, k, *_to_blob(gram[k])) for k in range(len(self.groups))],
            )
            c.executemany(
                "INSERT INTO losses VALUES (?, ?, ?)",
                [(sid, self._task_index[t], float(v)) for t, v in losses.items()],
            )
            c.executemany(
                "INSERT INTO arrays VALUES (?, ?, ?, ?)",
                [(sid, name, *_to_blob(a)) for name, a in (arrays or {}).items()],
            )

    def write_quality(self, step: int, task: str, metric: str, value: float) -> None:
        """Store one quality number (e.g. metric ``chrf``) of ``task`` measured at ``step``."""
        if task not in self._task_index:
            raise InvalidInputError(f"unknown task {task!r}; tasks are {self.tasks}")
        with self._transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO quality VALUES (?, ?, ?, ?)",
                (int(step), self._task_index[task], metric, float(value)),
            )

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on error) on an autocommit connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, *exc) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


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


class Trace:
    """Read access to a trace; a consistent view of the snapshots present when opened.

    ``refresh()`` picks up snapshots written since (the file can be read while training writes).
    Matrices come back as float64 numpy arrays indexed [snapshot, task, task] in ``tasks`` order.
    """

    def __init__(self, run: str | os.PathLike) -> None:
        self.path = trace_path(run)
        if not self.path.exists():
            raise TraceError(
                f"no trace at {self.path}: expected a run directory holding {TRACE_FILENAME} "
                "(written by geomtrace trace or gt.Tracer(out=...))"
            )
        try:
            self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            app_id = self._conn.execute("PRAGMA application_id").fetchone()[0]
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as err:
            raise TraceError(f"{self.path} is not a geomtrace trace ({err})") from None
        if app_id != APPLICATION_ID:
            raise TraceError(f"{self.path} is an SQLite file but not a geomtrace trace")
        if version > SCHEMA_VERSION:
            raise TraceError(
                f"{self.path} was written with trace schema version {version}; this geomtrace "
                f"reads versions up to {SCHEMA_VERSION}: upgrade geomtrace to read it"
            )
        if version < 1:
            raise TraceError(f"{self.path} has unsupported trace schema version {version}")
        rows = self._conn.execute("SELECT name, iso639_3 FROM tasks ORDER BY idx").fetchall()
        self.tasks: list[str] = [name for name, _ in rows]
        self.iso_codes: dict[str, str | None] = dict(rows)
        rows = self._conn.execute(
            "SELECT name, numel, param_names FROM groups ORDER BY idx"
        ).fetchall()
        self.groups: list[str] = [name for name, _, _ in rows]
        self.group_sizes: dict[str, int] = {name: numel for name, numel, _ in rows}
        self.group_params: dict[str, list[str]] = {n: json.loads(p) for n, _, p in rows}
        self.refresh()

    def refresh(self) -> None:
        """Re-read the list of snapshots (and metadata) from the file."""
        rows = self._conn.execute(
            "SELECT id, step, wall_time, source FROM snapshots ORDER BY step"
        ).fetchall()
        self._snapshot_ids = [r[0] for r in rows]
        self.steps = np.array([r[1] for r in rows], dtype=np.int64)
        self.wall_times = np.array([r[2] for r in rows], dtype=np.float64)
        self.sources = [r[3] for r in rows]
        self._meta = {
            k: json.loads(v) for k, v in self._conn.execute("SELECT key, value FROM meta")
        }

    @property
    def config(self) -> dict[str, Any]:
        return self._meta.get("config", {})

    def meta(self, key: str, default: Any = None) -> Any:
        """A value stored with ``set_meta`` (or ``default``)."""
        return self._meta.get(key, default)

    def _group_index(self, group: str) -> int:
        if group not in self.group_sizes:
            raise InvalidInputError(f"unknown group {group!r}; the trace has {self.groups}")
        return self.groups.index(group)

    def _stack(self, rows: list[tuple[int, str, bytes]], what: str) -> np.ndarray:
        by_id = {sid: _from_blob(shape, data) for sid, shape, data in rows}
        missing = [s for s in self._snapshot_ids if s not in by_id]
        if missing:
            raise TraceError(f"{what} is missing from {len(missing)} snapshot(s) of {self.path}")
        if not by_id:
            return np.zeros((0,))
        return np.stack([by_id[s] for s in self._snapshot_ids])

    def gram(self, group: str) -> np.ndarray:
        """Gram matrices G[s] = [g_i . g_j] of ``group`` at every snapshot: [S, K, K].

        ``group="all"``: the whole model, the sum of the groups' Gram matrices (exact: the
        groups are disjoint blocks of the parameters).
        """
        if group == ALL_GROUPS and ALL_GROUPS not in self.group_sizes:
            return self._sum_over_groups(self.gram)
        k = self._group_index(group)
        rows = self._conn.execute(
            "SELECT snapshot_id, shape, data FROM grams WHERE group_idx = ?", (k,)
        ).fetchall()
        if not self._snapshot_ids:
            return np.zeros((0, len(self.tasks), len(self.tasks)))
        return self._stack(rows, f"group {group!r}")

    def cosine(self, group: str, corrected: bool = False) -> np.ndarray:
        """Cosines G_ij / sqrt(G_ii G_jj) of ``group``: [S, K, K]; NaN where a norm is 0.

        ``corrected=True``: per snapshot, the cosine corrected for sampling noise,
        G_ij / sqrt(4 ab_i 4 ab_j) from the split halves (``halves=True`` traces only; see
        :meth:`reliability`). For an average over snapshots prefer a ratio of means
        (``geomtrace.corrected_cosine_from_means``): single-snapshot a.b can be <= 0.
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
            return self.array(name)[:, self._group_index(group)]
        rows = self._conn.execute(
            "SELECT snapshot_id, shape, data FROM arrays WHERE name = ?", (name,)
        ).fetchall()
        if not rows:
            names = [r[0] for r in self._conn.execute("SELECT DISTINCT name FROM arrays")]
            raise TraceError(f"the trace has no array {name!r}; it has {sorted(names)}")
        return self._stack(rows, f"array {name!r}")

    def array_names(self) -> list[str]:
        return sorted(r[0] for r in self._conn.execute("SELECT DISTINCT name FROM arrays"))

    def losses(self):
        """Per-task training (or probe) loss at each snapshot: columns step, task, loss."""
        import pandas as pd

        rows = self._conn.execute(
            "SELECT s.step, t.name, l.loss FROM losses l JOIN snapshots s ON s.id = l.snapshot_id "
            "JOIN tasks t ON t.idx = l.task_idx ORDER BY s.step, t.idx"
        ).fetchall()
        return pd.DataFrame(rows, columns=["step", "task", "loss"])

    def quality(self):
        """Quality measurements: columns step, task, metric, value."""
        import pandas as pd

        rows = self._conn.execute(
            "SELECT q.step, t.name, q.metric, q.value FROM quality q "
            "JOIN tasks t ON t.idx = q.task_idx ORDER BY q.step, q.metric, t.idx"
        ).fetchall()
        return pd.DataFrame(rows, columns=["step", "task", "metric", "value"])

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
        parts = [read(g) for g in self.groups]
        return np.sum(np.stack(parts), axis=0)

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
        return self.array("split_half", group=group)

    def reliability(self, group: str) -> np.ndarray:
        """Reliability (signal fraction) of each task's full snapshot gradient: [S, K].

        r = 4 ab / (aa + bb + 2 ab) from the split halves (see ``geomtrace._reliability``);
        NaN where a half is missing. Over snapshots, a ratio of means (mean 4ab / mean |g|^2)
        is more robust than the mean of r.
        """
        from geomtrace._reliability import split_half_reliability

        return split_half_reliability(self.split_half(group))


def cosine_from_gram(gram: np.ndarray) -> np.ndarray:
    """cos_ij = G_ij / sqrt(G_ii G_jj) over the last two axes; NaN where a norm is 0."""
    gram = np.asarray(gram, dtype=np.float64)
    norms = np.sqrt(np.clip(np.diagonal(gram, axis1=-2, axis2=-1), 0, None))
    denom = norms[..., :, None] * norms[..., None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, gram / np.where(denom > 0, denom, 1.0), np.nan)
