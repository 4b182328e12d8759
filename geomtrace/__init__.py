"""geomtrace: the geometry of per-task gradients in multi-task and multilingual training.

Public names are imported lazily (PEP 562), so ``import geomtrace`` is fast and reading a trace
(``geomtrace.open_trace``) does not import torch. Everything outside this package (analyses,
figures, the CLI, examples, benchmarks, the recipe) uses only these names and the documented
public submodules ``geomtrace.integrations`` and ``geomtrace.recipe``; the ``geomtrace._*``
modules are private (checked by ``tests/test_layers.py``).

- Recording and optimising: ``Tracer``, ``MultiTask``, the ``Step`` they return, aggregators
  (``Aggregator``, ``Sum``, ``Mean``, ``PCGrad``, ``GradVac``, ``random_order``).
- Capture protocol: ``Capture`` and its implementations ``TaskGradients`` (exact),
  ``TaskSketches`` (``CountSketch``) and ``SketchedGram`` (``MultiTask(gram="sketch")``).
- Measuring communication: ``CollectiveBytes`` (bytes per collective, in the dispatcher).
- Groups: ``resolve_groups``, ``ParameterGroup``, ``GRANULARITIES``; ``ALL_GROUPS`` (``"all"``,
  the whole model in the reader).
- Traces: ``open_trace``, ``Trace``, ``TraceWriter``, ``trace_path``, ``TRACE_FILENAME``,
  ``cosine_from_gram``.
- Reliability and the noise-corrected similarity (the one home of these estimators):
  ``split_half_reliability``, ``corrected_cosine`` (one snapshot), ``window_reliability``,
  ``window_corrected_cosine`` (a window: ratio of scaled means, bounded), ``scaled_products``,
  ``snapshot_scale``, ``reliability_of_means``, ``corrected_of_means``, ``denoised_gram``, ``RELIABILITY_FLOOR``.
- Summaries of similarity matrices: ``nanmean``, ``pair_values``, ``mean_pair_similarity``,
  ``conflict_rate``, ``whole_model_sum``.
- Errors: ``GeomtraceError``, ``InvalidInputError``, ``TraceError``.
- Packaging helper: ``lazy_exports`` (for the lazy ``__init__`` of the project's packages).
"""

from geomtrace._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "GeomtraceError": "geomtrace._errors",
    "InvalidInputError": "geomtrace._errors",
    "TraceError": "geomtrace._errors",
    "StorageError": "geomtrace._errors",
    "ParameterGroup": "geomtrace._groups",
    "resolve_groups": "geomtrace._groups",
    "GRANULARITIES": "geomtrace._groups",
    "Capture": "geomtrace._capture",
    "TaskGradients": "geomtrace._capture",
    "Step": "geomtrace._step",
    "Tracer": "geomtrace._tracer",
    "HALVES_RULES": "geomtrace._halves",
    "Halves": "geomtrace._halves",
    "TraceWriter": "geomtrace._writer",
    "RunLock": "geomtrace._lock",
    "LOCK_FILENAME": "geomtrace._lock",
    "is_disk_full": "geomtrace._writer",
    "Trace": "geomtrace._reader",
    "open_trace": "geomtrace._reader",
    "trace_path": "geomtrace._format",
    "TRACE_FILENAME": "geomtrace._format",
    "ALL_GROUPS": "geomtrace._format",
    "cosine_from_gram": "geomtrace._gram",
    "split_half_reliability": "geomtrace._reliability",
    "corrected_cosine": "geomtrace._reliability",
    "window_reliability": "geomtrace._reliability",
    "window_corrected_cosine": "geomtrace._reliability",
    "scaled_products": "geomtrace._reliability",
    "snapshot_scale": "geomtrace._reliability",
    "reliability_of_means": "geomtrace._reliability",
    "corrected_of_means": "geomtrace._reliability",
    "denoised_gram": "geomtrace._reliability",
    "RELIABILITY_FLOOR": "geomtrace._reliability",
    "nanmean": "geomtrace._summaries",
    "pair_values": "geomtrace._summaries",
    "mean_pair_similarity": "geomtrace._summaries",
    "conflict_rate": "geomtrace._summaries",
    "whole_model_sum": "geomtrace._summaries",
    "ordered_pair_values": "geomtrace._summaries",
    "Aggregator": "geomtrace._aggregators",
    "Sum": "geomtrace._aggregators",
    "Mean": "geomtrace._aggregators",
    "PCGrad": "geomtrace._aggregators",
    "GradVac": "geomtrace._aggregators",
    "random_order": "geomtrace._aggregators",
    "MultiTask": "geomtrace._multitask",
    "CountSketch": "geomtrace._sketch",
    "TaskSketches": "geomtrace._sketch",
    "SketchedGram": "geomtrace._sketch",
    "CollectiveBytes": "geomtrace._distributed",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted([*__all__, "lazy_exports", "__version__"])
