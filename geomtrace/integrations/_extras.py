"""Optional dependencies of the integrations, each behind a pip extra.

``import geomtrace.integrations`` imports none of them; each integration module imports its
framework on first use through :func:`require`, which turns a missing package into a
:class:`MissingExtraError` that names the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from geomtrace import GeomtraceError

# module to import -> (pip extra, distribution the extra installs)
EXTRAS: dict[str, tuple[str, str]] = {
    "transformers": ("hf", "transformers"),
    "accelerate": ("hf", "accelerate"),
    "lightning": ("lightning", "lightning"),
    "tensorboard": ("tensorboard", "tensorboard"),
}


class MissingExtraError(GeomtraceError, ImportError):
    """An integration's framework is not installed; the message names the pip extra."""


def require(module: str) -> ModuleType:
    """Import ``module`` (a key of ``EXTRAS``) or raise :class:`MissingExtraError`."""
    extra, dist = EXTRAS[module]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"this integration needs {dist!r}, which is not importable ({exc}); "
            f"install it with: pip install 'geomtrace[{extra}]'"
        ) from exc
