"""Designing the next run from this run's noise: snapshot rows and languages (issue 22).

Two questions a null result raises, answered from the run's own measurements:

- **Snapshot rows.** With N rows per task per snapshot and window reliability R, the signal per
  row is s = R / (N (1 - R)) (Spearman-Brown: reliability grows as N s / (1 + N s)), so a
  target reliability R* needs N* = R* / (s (1 - R*)) rows. Per group; N is the run's
  ``snapshot_rows`` (recipe runs) or, when unknown, N* is stated as a multiple of the
  current rows.
- **Languages.** The noise-removed typology relation's language-jackknife interval gives its
  Fisher-z standard error se_n (``analyses._language_level.detectable_effect``). A language
  sample of n' instead of n has se_n' = se_n sqrt((n - 3) / (n' - 3)) (the z standard error of
  a correlation over n' units scales as 1 / sqrt(n' - 3); for a pairwise statistic this is a
  first-order guide, not a law), and the smallest |rho| detected with ``power`` at two-sided
  1 - ``level`` is tanh((t_{n'-1}((1 + level)/2) + t_{n'-1}(power)) se_n'). The languages
  needed for ``effect`` is the smallest n' (up to 400) whose detectable effect is <= it.

Both are projections from one run: they assume the noise per row and the spread between
languages stay what this run measured.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import t as student_t

from analyses._language_level import detectable_effect, interval_se
from geomtrace import InvalidInputError

ROW_COLUMNS = ["group", "reliability", "rows", "signal_per_row", "rows_for_r80", "rows_for_r90"]
LANGUAGE_COLUMNS = [
    "group", "distance", "control", "n_languages", "noise_removed", "detectable",
    "detectable_24", "detectable_48", "languages_for_effect",
]  # fmt: skip
#: Largest language sample the projection searches.
MAX_LANGUAGES = 400


def rows_for(reliability: float, rows: float, target: float) -> float:
    """Rows per task per snapshot for reliability ``target``, from ``reliability`` at ``rows``
    (Spearman-Brown); NaN when the reliability is not in (0, 1)."""
    if not (0 < reliability < 1) or not (0 < target < 1) or rows <= 0:
        return float("nan")
    signal = reliability / (rows * (1 - reliability))
    return target / (signal * (1 - target))


def projected_detectable(
    low: float, high: float, n: int, n_new: int, level: float = 0.95, power: float = 0.8
) -> float:
    """The detectable |rho| at ``n_new`` languages from a language interval at ``n`` (module
    docstring)."""
    se = interval_se(low, high, n, level)
    if n_new < 4 or n < 4 or not np.isfinite(se):
        return float("nan")
    se_new = se * math.sqrt((n - 3) / (n_new - 3))
    df = n_new - 1
    return float(np.tanh((student_t.ppf((1 + level) / 2, df) + student_t.ppf(power, df)) * se_new))


def languages_for(
    low: float, high: float, n: int, effect: float, level: float = 0.95, power: float = 0.8
) -> float:
    """The smallest language sample whose projected detectable |rho| is <= ``effect``; NaN
    beyond :data:`MAX_LANGUAGES` or without an interval."""
    for n_new in range(4, MAX_LANGUAGES + 1):
        d = projected_detectable(low, high, n, n_new, level, power)
        if np.isfinite(d) and d <= effect:
            return float(n_new)
    return float("nan")


def design(result: Any, effect: float = 0.3, *, power: float = 0.8) -> dict[str, pd.DataFrame]:
    """The run's design tables: ``rows`` (per group, ``ROW_COLUMNS``) and ``languages`` (the
    typology relations given the control, ``LANGUAGE_COLUMNS``), from an
    :class:`analyses.RunResults`."""
    if not (isinstance(effect, int | float) and 0 < effect < 1):
        raise InvalidInputError(f"effect={effect!r}: a correlation in (0, 1)")
    if not 0 < power < 1:
        raise InvalidInputError(f"power={power!r}: a probability in (0, 1)")
    level = float(result.settings.get("level", 0.95))
    out: dict[str, pd.DataFrame] = {}
    sim = result.frames.get("similarity")
    rows_now = result.config.get("snapshot_rows") if result.config else None
    known = isinstance(rows_now, int) and rows_now > 0
    if sim is not None and sim["reliability"].notna().any():
        n = float(rows_now) if known else 1.0
        out["rows"] = pd.DataFrame(
            [
                (r.group, r.reliability, rows_now if known else np.nan,
                 r.reliability / (n * (1 - r.reliability)) if 0 < r.reliability < 1 else np.nan,
                 rows_for(r.reliability, n, 0.8), rows_for(r.reliability, n, 0.9))
                for r in sim.itertuples()
            ],
            columns=ROW_COLUMNS,
        )  # fmt: skip
        out["rows"].attrs["unit"] = "rows" if known else "x the current rows"
    layers = result.frames.get("layers", result.frames.get("typology"))
    if layers is not None and "partial_lang_ci_low" in layers:
        rows = []
        # The partial relation given the control where the run has one, else the relation.
        controlled = any(isinstance(c, str) for c in layers["control"])
        for r in layers.drop_duplicates(["group", "distance"]).itertuples():
            if controlled and not isinstance(r.control, str):
                continue
            if controlled:
                lo, hi, value = (
                    r.partial_lang_ci_low,
                    r.partial_lang_ci_high,
                    r.partial_disattenuated,
                )
            else:
                lo, hi, value = r.lang_ci_low, r.lang_ci_high, r.rho_disattenuated
            n = int(r.n_languages)
            rows.append(
                (r.group, r.distance, r.control if controlled else None, n, value,
                 detectable_effect(lo, hi, n, level, power),
                 projected_detectable(lo, hi, n, 24, level, power),
                 projected_detectable(lo, hi, n, 48, level, power),
                 languages_for(lo, hi, n, effect, level, power))
            )  # fmt: skip
        out["languages"] = pd.DataFrame(rows, columns=LANGUAGE_COLUMNS)
    return out


def design_text(result: Any, effect: float = 0.3, *, power: float = 0.8) -> str:
    """``geomtrace design``: the design tables as text."""
    from analyses._text import _f, _plain, _table

    tables = design(result, effect, power=power)
    d = result.description
    out = [
        f"design from run {result.run or result.label}: what this run's noise implies for the "
        f"next one (projections; analyses/_design.py states the formulas)"
    ]
    rows = tables.get("rows")
    if rows is not None:
        unit = rows.attrs.get("unit", "rows")
        out += ["", f"== snapshot rows per {d.task_noun} for a target reliability ({unit})"]
        out.append(
            _table(
                [[r.group, _plain(r.reliability), "–" if not np.isfinite(r.rows) else str(int(r.rows)),
                  _f(r.rows_for_r80, 0), _f(r.rows_for_r90, 0)] for r in rows.itertuples()],
                ["group", "reliability", "rows now", "for 0.8", "for 0.9"],
            )
        )  # fmt: skip
    else:
        out += ["", "== snapshot rows: no split halves in this trace, so no reliability to "
                "project from (Tracer(..., halves=True))"]  # fmt: skip
    langs = tables.get("languages")
    if langs is not None and len(langs):
        what = "partial |rho| given the control" if langs["control"].notna().any() else "|rho|"
        out += ["", f"== {d.tasks_noun} needed: the smallest noise-removed {what} detected "
                f"with {power:.0%} power at alpha 0.05 ({d.task_noun} jackknife)"]  # fmt: skip
        out.append(
            _table(
                [[r.group, r.distance, str(r.n_languages), _f(r.noise_removed, 2),
                  _plain(r.detectable), _plain(r.detectable_24), _plain(r.detectable_48),
                  "–" if not np.isfinite(r.languages_for_effect)
                  else str(int(r.languages_for_effect))] for r in langs.itertuples()],
                ["group", "distance", "n", "noise-removed", "detectable now", "at 24", "at 48",
                 f"n for |rho| {effect:g}"],
            )
        )  # fmt: skip
    else:
        out += ["", f"== {d.tasks_noun} needed: no typology table (it needs ISO codes and "
                "split halves)"]  # fmt: skip
    return "\n".join(out)
