"""figures: the Gradient Vaccine figures, drawn from ``analyses.RunResults`` (matplotlib, Agg).

figures/ only draws: every number comes from ``analyses`` (``analyse_run``, ``compare_runs``,
``across_seeds``). One module per figure, one shared style (``figures._style``):

- F1 ``similarity_heatmap``: clustered similarity matrix with family/script strips;
- F2 ``typology_scatter``: gradient vs typological similarity, one panel per distance;
- F3 ``quality_scatter``: a task's mean similarity vs its quality, with intervals;
- F4 ``layer_profile``: similarity per parameter group with intervals and reliability;
- F5 ``similarity_over_time``: similarity over steps, settling step with its interval;
- F6 ``optimizer_comparison``: sum vs PCGrad vs GradVac across seeds;
- F7 ``layer_typology``: the layer x distance table of (partial) rho, the report's lead.
- ``headline_table(results)``: the headline numbers of a reproduction's results.json as the
  markdown table figures/README.md quotes (``figures._record``).
- ``grouping_comparison`` (beyond the paper): one model per group vs the all-language model,
  per language and grouping scheme (``grouping_figure(experiment)``, ``grouping_markdown``).

``draw_run(result)`` draws every figure a run supports (a ``NotApplicable`` with its reason
for the others), ``draw_comparison(comparison)`` draws F6, ``save_figures`` writes them and
``write_report`` writes the self-contained HTML report; ``check_output_file`` and
``check_output_dir`` refuse an output path that cannot be written, before any work. Names are
imported lazily so ``import figures`` does not import matplotlib.
"""

from importlib import import_module

_EXPORTS = {
    "similarity_heatmap": "figures._heatmap",
    "typology_scatter": "figures._typology",
    "quality_scatter": "figures._quality",
    "layer_profile": "figures._layers",
    "similarity_over_time": "figures._time",
    "optimizer_comparison": "figures._optimizers",
    "layer_typology": "figures._layer_typology",
    "FIGURES": "figures._draw",
    "draw_run": "figures._draw",
    "draw_comparison": "figures._draw",
    "save_figures": "figures._draw",
    "parse_formats": "figures._style",
    "check_output_file": "figures._files",
    "check_output_dir": "figures._files",
    "write_report": "figures._report",
    "grouping_comparison": "figures._grouping",
    "grouping_figure": "figures._grouping",
    "grouping_markdown": "figures._grouping",
    "headline_table": "figures._record",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'figures' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
