"""The project's exception hierarchy.

Every error a *user* can cause (bad argument, bad file, unknown language) is a
:class:`GeomtraceError`; the CLI prints its message and exits non-zero without a traceback.
Anything else is a bug and keeps its traceback.
"""


class GeomtraceError(Exception):
    """Base class of all user-facing geomtrace errors."""


class InvalidInputError(GeomtraceError, ValueError):
    """A bad argument or value; the message names the bad value and what is allowed."""


class TraceError(GeomtraceError):
    """A trace that is missing, not a trace, or of an unsupported schema version."""


class StorageError(GeomtraceError):
    """A run's files could not be written (disk full, I/O error, read-only medium).

    The message names the path, the reason and what was kept (e.g. the snapshots already in
    the trace), so a user knows whether the run's work survived.
    """
