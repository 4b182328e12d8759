"""geomtrace: the geometry of per-task gradients in multi-task and multilingual training.

Public names are imported lazily (PEP 562), so ``import geomtrace`` is fast and reading a trace
(``geomtrace.open_trace``) does not import torch.
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
    "TaskGradients": "geomtrace._capture",
    "Tracer": "geomtrace._tracer",
    "TraceWriter": "geomtrace._trace",
    "Trace": "geomtrace._trace",
    "open_trace": "geomtrace._trace",
    "cosine_from_gram": "geomtrace._trace",
    "Aggregator": "geomtrace._aggregators",
    "Sum": "geomtrace._aggregators",
    "Mean": "geomtrace._aggregators",
    "PCGrad": "geomtrace._aggregators",
    "GradVac": "geomtrace._aggregators",
    "MultiTask": "geomtrace._multitask",
    "CountSketch": "geomtrace._sketch",
    "TaskSketches": "geomtrace._sketch",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
