"""figures: the Gradient Vaccine figures, redrawn from analysis results (matplotlib, Agg).

One module per figure, one shared style (``figures._style``):

- F1 ``similarity_heatmap``: clustered similarity matrix with family/script strips;
- F2 ``typology_scatter``: gradient vs typological similarity, one panel per distance;
- F3 ``quality_scatter``: a language's mean similarity vs its chrF;
- F4 ``layer_profile``: similarity per parameter group, within vs across family;
- F5 ``similarity_over_time``: similarity over steps (families, named pairs);
- F6 ``optimizer_comparison``: sum vs PCGrad vs GradVac.

``plot_runs`` draws every figure a set of runs supports, ``write_report`` writes the
self-contained HTML report and ``reproduce`` runs the whole pipeline on the embedded recipe.
Names are imported lazily so ``import figures`` does not import matplotlib.
"""

from geomtrace._lazy import lazy_exports

_EXPORTS = {
    "similarity_heatmap": "figures._heatmap",
    "typology_scatter": "figures._typology",
    "quality_scatter": "figures._quality",
    "layer_profile": "figures._layers",
    "similarity_over_time": "figures._time",
    "optimizer_comparison": "figures._optimizers",
    "collect_run": "figures._data",
    "RunData": "figures._data",
    "FIGURES": "figures._data",
    "plot_runs": "figures._plot",
    "build_figures": "figures._plot",
    "compare_runs": "figures._plot",
    "write_report": "figures._report",
    "reproduce": "figures._reproduce",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
