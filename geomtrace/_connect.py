"""Opening a trace file read-only, with a clear error for every file that is not a trace.

A missing path, a directory, an empty file, a file that is not SQLite or that the user may
not read raise :class:`TraceError` saying so. On a read-only medium, where SQLite cannot
create the WAL's shared memory, the file is opened as ``immutable`` (what is in its -wal file
then is not seen, and a warning says so).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import urllib.parse
from pathlib import Path

from geomtrace._errors import TraceError
from geomtrace._format import TRACE_FILENAME

log = logging.getLogger(__name__)

#: the first 16 bytes of every SQLite database file
SQLITE_MAGIC = b"SQLite format 3\x00"


def _directory_writable(directory: Path) -> bool:
    """False on a read-only mount or without write permission (root passes chmod, not ro)."""
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return False
    except (OSError, AttributeError):
        pass
    return os.access(directory, os.W_OK)


def connect_read_only(path: Path) -> sqlite3.Connection:
    """A read-only SQLite connection to the trace file ``path`` (see the module docstring)."""
    if not path.exists():
        raise TraceError(
            f"no trace at {path}: expected a run directory holding {TRACE_FILENAME} "
            "(written by geomtrace trace or gt.Tracer(out=...))"
        )
    if path.is_dir():
        raise TraceError(f"{path} is a directory, not a geomtrace trace file")
    try:
        with path.open("rb") as f:
            head = f.read(len(SQLITE_MAGIC))
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
    if head and head != SQLITE_MAGIC:
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
