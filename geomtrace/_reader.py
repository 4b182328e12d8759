"""Reading a trace: :func:`open_trace` and :class:`Trace` (the format: :mod:`geomtrace._format`).

A reader can open a trace while a training process still writes it (``refresh()`` sees new
snapshots). It trusts nothing in the file: a damaged or hand-edited trace (a blob of the wrong
length, a non-JSON shape, a dropped table, a Gram matrix no real gradients can have) raises
:class:`TraceError` naming the table, group and step, never a raw numpy/SQLite/JSON error.
This module needs numpy and the standard library only (pandas for the frames), so analyses
can read traces without the training stack.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Sequence
from typing import Any

import numpy as np

from geomtrace._codec import decode_meta, from_blob, is_int, shown
from geomtrace._connect import connect_read_only
from geomtrace._errors import InvalidInputError, TraceError
from geomtrace._format import (
    ALL_GROUPS,
    APPLICATION_ID,
    READABLE_VERSIONS,
    TABLES,
    trace_path,
)
from geomtrace._gram import check_gram, check_split_half, cosine_from_gram
from geomtrace._halves import Halves


def open_trace(run: str | os.PathLike) -> Trace:
    """Open a trace for reading: a run directory or the path of its ``trace.sqlite``."""
    return Trace(run)


class Trace:
    """Read access to a trace; a consistent view of the snapshots present when opened.

    ``refresh()`` picks up snapshots written since (the file can be read while training writes).
    Matrices come back as float64 numpy arrays indexed [snapshot, task, task] in ``tasks`` order.
    Opens read-only (``mode=ro``); on a read-only medium where SQLite cannot open the WAL's
    shared memory, as ``immutable`` (what is in the -wal file then is not seen).
    """

    def __init__(self, run: str | os.PathLike) -> None:
        self.path = trace_path(run)
        self._conn = connect_read_only(self.path)
        try:
            self._read_header()
            self.refresh()
        except BaseException:
            self._conn.close()
            raise

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
        missing = [t for t in TABLES if t not in tables]
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
            if idx != position or not isinstance(name, str) or not is_int(numel) or numel < 0:
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
                    f"{path}: group {name!r}: param_names {shown(names)} is not a JSON list of "
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
            if not (is_int(sid) and is_int(step) and isinstance(wall, int | float)
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
            meta[key] = decode_meta(key, value, self.path)
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
            sid: from_blob(blob_shape, data, f"{self.path}: {what} at step {self._step_of[sid]}")
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

    def gram(self, group: str) -> np.ndarray:
        """Gram matrices G[s] = [g_i . g_j] of ``group`` at every snapshot: [S, K, K].

        ``group="all"``: the whole model, the sum of the groups' Gram matrices (exact: the
        groups are disjoint blocks of the parameters). Checked on the way out: a damaged blob
        raises :class:`TraceError` (see ``geomtrace._gram.check_gram``) instead of giving
        cosines outside [-1, 1].
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
        return check_gram(gram, f"group {group!r}", self.path, self.steps, self.tasks)

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
            if not (is_int(step) and isinstance(metric, str)) or not (
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
    def halves(self) -> Halves:
        """The split halves the trace was written with (``Tracer(halves=True)``), read back
        from its meta; a trace older than that meta: from its ``split_half`` array."""
        return Halves.from_meta(self.meta, lambda: "split_half" in self.array_names())

    @property
    def has_halves(self) -> bool:
        """Whether the snapshots carry split-half products (traced with ``halves=True``)."""
        return self.halves.enabled

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
        check_split_half(split, self.gram(group), group, self.path, self.steps, self.tasks)
        return split

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
