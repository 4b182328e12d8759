"""Integrations with training frameworks, each an optional pip extra.

- :mod:`geomtrace.integrations.hf`: ``GeomtraceMixin`` (per-task backward passes for any
  Hugging Face ``Trainer`` subclass: ``Seq2SeqTrainer``, TRL's ``SFTTrainer``),
  ``GeomtraceTrainer`` (the ready-made ``Trainer``), ``with_geometry`` and ``TaskCollator``
  (``pip install 'geomtrace[hf]'``);
- :mod:`geomtrace.integrations.lightning`: ``GeometryMixin`` for a ``LightningModule``
  (``pip install 'geomtrace[lightning]'``);
- :mod:`geomtrace.integrations.tensorboard`: ``TensorBoardSink`` (scalars and cosine heatmaps
  per traced step) and ``export_trace`` (``pip install 'geomtrace[tensorboard]'``).

Importing this package imports none of the frameworks: the names below load their module on
first access (PEP 562), and a missing framework raises ``MissingExtraError`` (a
``GeomtraceError``) naming the extra to install.
"""

from geomtrace import lazy_exports

_EXPORTS = {
    "MissingExtraError": "geomtrace.integrations._extras",
    "GeomtraceMixin": "geomtrace.integrations.hf",
    "GeomtraceTrainer": "geomtrace.integrations.hf",
    "with_geometry": "geomtrace.integrations.hf",
    "TaskCollator": "geomtrace.integrations.hf",
    "GeometryMixin": "geomtrace.integrations.lightning",
    "TensorBoardSink": "geomtrace.integrations.tensorboard",
    "export_trace": "geomtrace.integrations.tensorboard",
    "snapshot_scalars": "geomtrace.integrations._scalars",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
