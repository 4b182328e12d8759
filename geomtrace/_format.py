"""The trace's on-disk format: what the writer and the reader of a trace agree on.

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

The writer is :mod:`geomtrace._writer`, the reader :mod:`geomtrace._reader`, the array and
metadata encoding :mod:`geomtrace._codec`, the run directory's lock :mod:`geomtrace._lock`.
This module needs the standard library only.
"""

from __future__ import annotations

import numbers
import os
from pathlib import Path
from typing import Any

from geomtrace._errors import InvalidInputError

SCHEMA_VERSION = 2
#: schema versions this reader reads (1: quality values NOT NULL; 2: NULL quality = NaN)
READABLE_VERSIONS = (1, 2)
APPLICATION_ID = 0x67747263  # "gtrc"
TRACE_FILENAME = "trace.sqlite"
#: the group name that means the whole model (the sum over the groups) in the reader
ALL_GROUPS = "all"
#: the tables every readable trace has
TABLES = ("meta", "tasks", "groups", "snapshots", "losses", "grams", "arrays", "quality")

SCHEMA = """
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
