"""Every permutation test of a run in one table, with its multiplicity adjustments.

Within each table of tests (typology, layers, clustering, quality) Holm's step-down
adjustment (``p_holm``, family-wise error at :data:`ALPHA`); across the declared primary
tests (:data:`PRIMARY_TESTS`) Holm again (``p_primary``); over every other test counted once,
the Benjamini-Hochberg q (``q_fdr``). Formulas: ``analyses._uncertainty``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from analyses._uncertainty import benjamini_hochberg, holm

#: Significance level of the "survives Holm" marks.
ALPHA = 0.05

TESTS_COLUMNS = [
    "table", "test", "value", "ci_low", "ci_high", "p_value", "n_tests", "p_holm",
    "survives_holm", "role", "p_primary", "q_fdr",
]  # fmt: skip

#: The declared primary tests (issue 22): the paper's findings that one run can test, fixed
#: before any result is seen, with Holm's family-wise control across them (``p_primary``).
#: Every other test is exploratory: Benjamini-Hochberg q over all of them, each test counted
#: once (``q_fdr``). (table, test name as in ``frames["tests"]``.)
PRIMARY_TESTS = (
    ("typology", "all genetic | char_overlap: partial rho"),
    ("typology", "all geographic | char_overlap: partial rho"),
    ("quality", "chrf: rho"),
)


def tests_table(
    frames: Mapping[str, pd.DataFrame], n_permutations: int
) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Every permutation test of the run, per table, with Holm's adjustment within the table.

    Returns the typology, layers (and layers_script: the partials given script of every
    group), clustering and quality frames of ``frames`` with ``p_holm`` (and
    ``partial_p_holm``) columns added, plus ``"tests"``: one row per test; and the notes
    on tables whose ``n_permutations`` are too few for any test to survive Holm.
    """
    rows = []
    adjusted_frames: dict[str, pd.DataFrame] = {}
    notes: list[str] = []

    def family(table: str, entries: list[tuple[str, float, float, float, float]]) -> np.ndarray:
        p = np.array([e[4] for e in entries], dtype=float)
        adjusted = holm(p)
        m = int(np.isfinite(p).sum())
        for (name, value, lo, hi, pv), ph in zip(entries, adjusted, strict=True):
            if np.isfinite(pv):
                rows.append((table, name, value, lo, hi, pv, m, ph, bool(ph < ALPHA), "", np.nan,
                             np.nan))  # fmt: skip
        return adjusted

    for name in ("typology", "layers"):
        frame = frames.get(name)
        if frame is None:
            continue
        # The raw rho of a distance is repeated on each control row: test it once.
        raw = frame.drop_duplicates(subset=["group", "distance"])
        entries = [
            (f"{r.group} {r.distance}: rho", r.rho, r.ci_low, r.ci_high, r.p_value)
            for r in raw.itertuples()
        ] + [
            (f"{r.group} {r.distance} | {r.control}: partial rho", r.partial_rho,
             r.partial_ci_low, r.partial_ci_high, r.partial_p_value)
            for r in frame.itertuples() if isinstance(r.control, str)
        ]  # fmt: skip
        adjusted = family(name, entries)
        n_raw = len(raw)
        raw_holm = pd.Series(adjusted[:n_raw], index=raw.index)
        key = raw.set_index(["group", "distance"]).index
        lookup = dict(zip(key, raw_holm, strict=True))
        frame = frame.copy()
        frame["p_holm"] = [
            lookup[(g, d)] for g, d in zip(frame["group"], frame["distance"], strict=True)
        ]
        partial = np.full(len(frame), np.nan)
        controlled = [i for i, c in enumerate(frame["control"]) if isinstance(c, str)]
        partial[controlled] = adjusted[n_raw:]
        frame["partial_p_holm"] = partial
        adjusted_frames[name] = frame
    if "layers_script" in frames:
        adjusted_frames["layers_script"] = _script_partials(frames["layers_script"], family)
    for name in ("clustering", "layer_clustering"):
        frame = frames.get(name)
        if frame is None:
            continue
        tested = frame[frame["p_value"].notna()]
        entries = [
            (f"{r.group} {r.level} {r.statistic}", r.value, r.ci_low, r.ci_high, r.p_value)
            for r in tested.itertuples()
        ]
        adjusted = family(name, entries)
        frame = frame.copy()
        frame["p_holm"] = np.nan
        frame.loc[tested.index, "p_holm"] = adjusted
        adjusted_frames[name] = frame
    if "quality" in frames:
        adjusted_frames["quality"] = _quality_family(frames["quality"], family)
    tests = _roles(pd.DataFrame(rows, columns=TESTS_COLUMNS))
    adjusted_frames["tests"] = tests
    # A permutation p is at least 1 / (P + 1): with m tests, Holm's smallest adjusted p is
    # m / (P + 1), so a table with more tests than that cannot have a survivor at all.
    floor = 1.0 / (n_permutations + 1)
    for table, m in tests.groupby("table")["n_tests"].first().items():
        if m * floor > ALPHA:
            need = int(np.ceil(m / ALPHA))
            notes.append(
                f"the {table} table holds {m} tests: with {n_permutations} "
                f"permutations no test can survive Holm's correction at {ALPHA} (smallest "
                f"adjusted p {m * floor:.2f}); use at least {need} permutations"
            )

    return adjusted_frames, notes


def _script_partials(frame: pd.DataFrame, family) -> pd.DataFrame:
    """The layers_script table: only its partials (its raw rho rows are the layer table's,
    tested there), Holm within it (``family`` records each test)."""
    entries = [
        (f"{r.group} {r.distance} | {r.control}: partial rho", r.partial_rho, r.partial_ci_low,
         r.partial_ci_high, r.partial_p_value)
        for r in frame.itertuples()
    ]  # fmt: skip
    frame = frame.copy()
    frame["partial_p_holm"] = family("layers_script", entries)
    return frame


def _quality_family(quality: pd.DataFrame, family) -> pd.DataFrame:
    """The quality table's tests: each metric's raw rho once (it is repeated on each control
    row, as in the typology table) and every partial; Holm within the table."""
    raw = quality.drop_duplicates(subset=["metric"])
    entries = [
        (f"{r.metric}: rho", r.rho, r.ci_low, r.ci_high, r.p_value) for r in raw.itertuples()
    ] + [
        (f"{r.metric} | {r.control}: partial rho", r.partial_rho, r.partial_ci_low,
         r.partial_ci_high, r.partial_p_value)
        for r in quality.itertuples()
    ]  # fmt: skip
    adjusted = family("quality", entries)
    lookup = dict(zip(raw["metric"], adjusted[: len(raw)], strict=True))
    quality = quality.copy()
    quality["p_holm"] = quality["metric"].map(lookup)
    quality["partial_p_holm"] = adjusted[len(raw) :]
    return quality


def _roles(tests: pd.DataFrame) -> pd.DataFrame:
    """Mark the declared primary tests (:data:`PRIMARY_TESTS`) with Holm across them
    (``p_primary``) and give every other test a Benjamini-Hochberg q over the run's exploratory
    tests (``q_fdr``), each test counted once: the layer table repeats the typology table's
    whole-model rows, which keep their typology-table entry."""
    tests = tests.copy()
    key = list(zip(tests["table"], tests["test"], strict=True))
    primary = np.array([k in PRIMARY_TESTS for k in key], dtype=bool)
    tests["role"] = np.where(primary, "primary", "exploratory")
    tests.loc[primary, "p_primary"] = holm(tests.loc[primary, "p_value"].to_numpy())
    typology_names = set(tests.loc[tests["table"] == "typology", "test"])
    repeat = tests["table"].isin(["layers", "layers_script"]) & tests["test"].isin(typology_names)
    tests.loc[repeat, "role"] = "repeat"
    explore = tests["role"] == "exploratory"
    tests.loc[explore, "q_fdr"] = benjamini_hochberg(tests.loc[explore, "p_value"].to_numpy())
    return tests


__all__ = ["ALPHA", "PRIMARY_TESTS", "TESTS_COLUMNS", "tests_table"]
