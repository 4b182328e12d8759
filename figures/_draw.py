"""Every figure a run supports, every figure of a comparison, and saving them.

``draw_run`` maps ``analyses.RunResults`` to figures F1-F5 and F7 (a NotApplicable, with its
reason, for each figure the run cannot support); ``draw_comparison`` draws F6 from
``analyses.compare_runs``; ``save_figures`` writes them under their file names.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import analyses
from figures._style import DPI, parse_formats, save

log = logging.getLogger(__name__)

#: Figure key -> file name (without extension).
FIGURES: dict[str, str] = {
    "f1": "f1_similarity_heatmap",
    "f2": "f2_typology",
    "f3": "f3_quality",
    "f4": "f4_layers",
    "f5": "f5_time",
    "f6": "f6_optimizers",
    "f7": "f7_layer_typology",
}
#: Per-run figures in the order the report shows them (F7 leads).
RUN_FIGURES = ("f7", "f1", "f2", "f3", "f4", "f5")


def _builders() -> dict[str, Any]:
    from figures import _heatmap, _layer_typology, _layers, _quality, _time, _typology

    return {
        "f1": _heatmap.figure,
        "f2": _typology.figure,
        "f3": _quality.figure,
        "f4": _layers.figure,
        "f5": _time.figure,
        "f7": _layer_typology.figure,
    }


def draw_run(result: analyses.RunResults) -> dict[str, Any]:
    """Figures of one analysed run: {"f1".."f5", "f7": Figure or analyses.NotApplicable}.

    Keys in the report's order (F7 first). A figure the run cannot support is a
    ``NotApplicable`` whose ``reason`` says why; nothing is caught: an exception is a bug or
    a real input error.
    """
    builders = _builders()
    return {key: builders[key](result) for key in RUN_FIGURES}


def draw_comparison(comparison: Any) -> Any:
    """F6 from ``analyses.compare_runs(results)`` (a NotApplicable is returned as it is)."""
    from figures._optimizers import figure

    return figure(comparison)


def save_figures(
    figures: Mapping[str, Any],
    out_dir: str | os.PathLike,
    *,
    formats: str | Sequence[str] = ("png",),
    dpi: int | None = None,
    prefix: str = "",
) -> list[Path]:
    """Write every Figure of ``figures`` ({key: Figure or NotApplicable}) to
    ``out_dir/<prefix><file name>.<format>`` (file names in :data:`FIGURES`; a ``prefix``
    with ``/`` writes into a sub-folder); NotApplicable entries are left out. Returns the
    paths written, in the order of ``figures`` then ``formats``."""
    formats = parse_formats(formats)
    paths: list[Path] = []
    for key, fig in figures.items():
        if isinstance(fig, analyses.NotApplicable) or fig is None:
            log.debug("not drawn %s: %s", key, fig)
            continue
        name = FIGURES.get(key, key)
        paths += save(fig, Path(out_dir) / f"{prefix}{name}", formats, dpi=dpi or DPI)
    return paths
