"""Output paths named by the user (``--out``, ``--json``), checked before any work: the last
stage of the pipeline (files, figures, the report) refuses a place it cannot write while the
analyses that would fill it have not started.

Errors are :class:`geomtrace.InvalidInputError` naming the flag; the command line prints them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from geomtrace import InvalidInputError


def check_output_file(path: str | None, flag: str) -> None:
    """Refuse an output file that cannot be written, before any work is done.

    Its folder must exist (an output file does not create folders) and take a new file: a
    probe file is created and removed there, which catches read-only media, permissions and
    pseudo file systems (/proc) that ``os.access`` reports writable.
    """
    if path in (None, "-"):
        return
    target = Path(path)
    if target.is_dir():
        raise InvalidInputError(f"{flag} {path!r} is a directory; give a file name")
    parent = target.parent if str(target.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise InvalidInputError(f"{flag} {path!r}: {str(parent)!r} is not a directory")
    if not parent.exists():
        raise InvalidInputError(
            f"{flag} {path!r}: the folder {str(parent)!r} does not exist; create it first"
        )
    if target.exists() and not target.is_file():
        return  # a device or pipe (/dev/stdout): its write errors are reported when written
    _probe(parent, f"{flag} {path!r}: cannot write in {str(parent)!r}")


def check_output_dir(path: str, flag: str) -> None:
    """Refuse an output directory that is a file or cannot be created, before any work: it is
    created now (with its parents) and a probe file written in it."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise InvalidInputError(f"{flag} {path!r} exists and is not a directory")
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InvalidInputError(f"{flag} {path!r}: {str(existing)!r} is not a directory")
    _probe(target, f"{flag} {path!r}: cannot create or write it", create=True)


def _probe(folder: Path, refusal: str, create: bool = False) -> None:
    """Create ``folder`` (with ``create``) and write and delete a probe file in it; an
    OSError becomes an InvalidInputError ``refusal (reason)``."""
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".geomtrace-probe-"):
            pass
    except OSError as err:
        raise InvalidInputError(f"{refusal} ({err.strerror or err})") from None
