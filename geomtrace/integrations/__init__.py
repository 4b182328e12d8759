"""Integrations with training frameworks, each an optional pip extra.

- :mod:`geomtrace.integrations.hf`: ``GeomtraceTrainer`` (a Hugging Face ``Trainer``) and
  ``TaskCollator`` (``pip install 'geomtrace[hf]'``);
- :mod:`geomtrace.integrations.lightning`: ``GeometryMixin`` for a ``LightningModule``
  (``pip install 'geomtrace[lightning]'``);
- :mod:`geomtrace.integrations.tensorboard`: ``TensorBoardSink`` (scalars and cosine heatmaps
  per traced step) and ``export_trace`` (``pip install 'geomtrace[tensorboard]'``).

Importing this package imports none of the frameworks: the names below load their module on
first access (PEP 562), and a missing framework raises ``MissingExtraError`` (a
``GeomtraceError``) naming the extra to install.
"""

from importlib import import_module

_EXPORTS = {
    "MissingExtraError": "geomtrace.integrations._extras",
    "GeomtraceTrainer": "geomtrace.integrations.hf",
    "TaskCollator": "geomtrace.integrations.hf",
    "GeometryMixin": "geomtrace.integrations.lightning",
    "TensorBoardSink": "geomtrace.integrations.tensorboard",
    "export_trace": "geomtrace.integrations.tensorboard",
    "snapshot_scalars": "geomtrace.integrations._scalars",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'geomtrace.integrations' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
