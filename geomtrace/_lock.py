"""The run directory's lock: one writer per run directory, across processes and threads.

See :class:`RunLock`. This module needs the standard library only.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from geomtrace._errors import InvalidInputError, StorageError

log = logging.getLogger(__name__)

#: the lock file of a run directory (see :class:`RunLock`); removed when its owner finishes
LOCK_FILENAME = ".lock"


class _Held:
    """A lock this process holds: the open lock file and how often this thread re-entered."""

    def __init__(self, fd: int | None, thread: int) -> None:
        self.fd = fd
        self.thread = thread
        self.count = 1


_HELD: dict[str, _Held] = {}
#: the guard of this process's registries of held locks (``_HELD``) and of live trace
#: writers (``geomtrace._writer``): both are checked and updated under it
GUARD = threading.Lock()


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
        with GUARD:
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
        with GUARD:
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
