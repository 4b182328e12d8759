"""Gradient similarity against typological similarity, with step-0 baselines and controls."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from analyses._covariates import covariate_distances
from analyses._inputs import Window, is_trace, select_window_mask, tasks_with_nan
from analyses._language_level import (
    detectable_effect,
    disattenuated,
    language_interval,
    matrix_reliability,
    rank_correlation,
    value_rank_correlation,
)
from analyses._measures import similarity
from analyses._spatial import language_proximity, spatial_mantel
from analyses._stats import mantel, partial_mantel
from analyses._typology import DISTANCES, _kinds, typological_distances
from analyses._uncertainty import (
    CORRELATION_RANGE,
    LEVEL,
    N_BOOTSTRAP,
    correlation_rows,
    interval,
    partial_from_r,
    rank_rows,
    upper,
)
from geomtrace import InvalidInputError

log = logging.getLogger(__name__)

CORRELATION_COLUMNS = [
    "group", "measure", "distance", "control", "n_languages", "rho", "ci_low", "ci_high",
    "p_value", "rho_step0", "p_value_step0", "partial_rho", "partial_ci_low", "partial_ci_high",
    "partial_p_value", "partial_rho_step0", "partial_p_value_step0", "test", "p_mantel",
    "partial_p_mantel", "matrix_reliability", "noise_removed_measure",
    "rho_disattenuated", "lang_ci_low", "lang_ci_high", "partial_disattenuated",
    "partial_lang_ci_low", "partial_lang_ci_high", "detectable", "partial_detectable",
    "n_permutations", "n_bootstrap", "excluded", "note",
]  # fmt: skip


def task_iso_codes(
    source: Any, iso_codes: Mapping[str, str | None] | None
) -> dict[str, str | None]:
    if iso_codes is not None:
        return dict(iso_codes)
    if is_trace(source):
        return dict(getattr(source, "iso_codes", {}) or {})
    return {}


def typology_correlation(
    source: Any,
    group: str | None = None,
    *,
    measure: str = "raw",
    distances: str | Sequence[str] | None = None,
    covariates: str | Mapping[str, pd.DataFrame] | None = "auto",
    iso_codes: Mapping[str, str | None] | None = None,
    window: Window | None = None,
    tasks: Sequence[str] | None = None,
    steps: Sequence[int] | None = None,
    n_permutations: int = 9999,
    n_bootstrap: int = N_BOOTSTRAP,
    block: int | None = None,
    seed: int = 0,
    level: float = LEVEL,
    method: str = "spearman",
    test: str = "spatial",
    cache: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Mantel correlation of gradient similarity with each typological similarity.

    x = step-averaged gradient similarity phi_ij (``measure``: raw, corrected or centred; see
    :mod:`analyses._measures`) over ``window`` (default: after step 0);
    y = typological similarity = -distance_ij (so rho > 0 means typologically closer languages
    have more aligned gradients). For every distance in ``distances`` (default: all of
    :data:`~analyses.DISTANCES`) and every covariate distance (built-ins from trace meta:
    ``char_overlap``, ``script``; or ``{name: [K, K] DataFrame}`` over tasks):

    - rho, p_value: Mantel correlation (Spearman over pairs, two-sided) with the p-value of
      the test named in ``test``: ``spatial`` (default) draws the null from Moran spectral
      surrogates of the similarity that keep its autocorrelation over the languages'
      geography and genealogy (:func:`analyses.spatial_mantel`; for y = geographic the
      genealogy only, for y = genetic the geography only), which holds its level when
      languages are not exchangeable; ``mantel`` permutes languages (exchangeable: rejects
      54-96% of unrelated pairs of traits that follow geography or genealogy; kept as
      p_mantel / partial_p_mantel for reference; analyses/README.md has the tables); ci_low,
      ci_high: the ``level`` basic interval of rho over ``n_bootstrap`` circular block
      bootstrap replicates of the snapshots. Question answered: "how much would THIS RUN's
      matrix move with other snapshots?" (not a claim about languages);
    - matrix_reliability: the split-half reliability of the matrix's pair values (even vs odd
      snapshots, Spearman-Brown), of the noise-corrected matrix when the trace has split
      halves (``noise_removed_measure`` says which: the corrected matrix is freed of each
      task's attenuation, which a whole-matrix correction cannot undo when reliabilities
      differ); rho_disattenuated = r(X, rank Y) / sqrt(matrix_reliability) of that matrix:
      Pearson in the similarity values, ranks of the typology (NaN
      below :data:`~analyses._language_level.MATRIX_RELIABILITY_FLOOR`), with lang_ci_low,
      lang_ci_high from the language jackknife (Fisher z, t_{n-1}). Question
      answered: "what is the relation in languages like these, with the noise removed?"
      (:mod:`analyses._language_level`); partial_disattenuated and partial_lang_ci_* likewise;
    - rho_step0, p_value_step0: the same with the step-0 (untrained) cosine matrix: what the
      initialisation and the data alone already give;
    - partial_rho, partial_p_value (+ ``_step0``): partial Mantel controlling for ``control``
      (one row per control; the covariates are also correlated as distances themselves), with
      its interval (partial_ci_low, partial_ci_high) from the same replicates.
    Tasks without an ISO code, or with NaN similarity (absent from the window), are excluded
    and listed in ``excluded``. Needs >= 4 languages. Columns: see ``CORRELATION_COLUMNS``.
    """
    if test not in TESTS:  # before any work
        raise InvalidInputError(f"test={test!r}; allowed: {', '.join(TESTS)}")
    full = similarity(source, group, measure, tasks=tasks, steps=steps)
    codes = task_iso_codes(source, iso_codes)
    sides = _similarity_side(
        source, group, full, codes, measure=measure, window=window, tasks=tasks, steps=steps,
        n_bootstrap=n_bootstrap, block=block, seed=seed, method=method,
    )  # fmt: skip
    labels, notes = sides.labels, sides.notes
    task_codes = [str(codes[t]).lower() for t in labels]
    ys = _typology_similarities(task_codes, labels, distances, cache)
    controls = _controls(source, covariates, full.tasks, labels, notes)
    ys.update(controls)
    spatial_weights, test_name = _spatial_design(test, task_codes, cache, notes)
    settings = {"n_permutations": n_permutations, "seed": seed, "method": method}
    constants = {
        "group": full.group, "measure": measure, "test": test_name,
        "n_permutations": n_permutations, "n_bootstrap": n_bootstrap,
        "excluded": "; ".join(sides.excluded),
    }  # fmt: skip
    rows = []
    for kind, y in ys.items():
        rows += _distance_rows(
            kind, y, sides, controls, spatial_weights(kind), settings, level, constants
        )
    return pd.DataFrame(rows, columns=CORRELATION_COLUMNS)


@dataclass
class _Sides:
    """The similarity side of every test of :func:`typology_correlation`, over the languages
    kept (``labels``): the window's matrix ``x`` and the step-0 one ``x0`` (None without a
    baseline), the bootstrap replicates' pair values ``x_boot`` (ranks for Spearman) with the
    bootstrap's degrees of freedom ``df``, and the noise-removed statistics' matrix ``dis_x``
    (measure ``dis_measure``), its half-window matrices ``dis_even``/``dis_odd`` (None when
    unusable) and its split-half reliability ``rel``; ``excluded`` tasks and run ``notes``."""

    labels: list[str]
    x: pd.DataFrame
    x0: pd.DataFrame | None
    x_boot: np.ndarray
    df: int
    dis_measure: str
    dis_x: np.ndarray
    dis_even: np.ndarray | None
    dis_odd: np.ndarray | None
    rel: float
    excluded: list[str]
    notes: list[str]


def _similarity_side(
    source: Any,
    group: str | None,
    full,
    codes: Mapping[str, str | None],
    *,
    measure: str,
    window: Window | None,
    tasks: Sequence[str] | None,
    steps: Sequence[int] | None,
    n_bootstrap: int,
    block: int | None,
    seed: int,
    method: str,
) -> _Sides:
    """The similarity side (:class:`_Sides`) of ``full`` (``group``'s ``Similarity`` under
    ``measure``) over the ``window``: languages without an ISO code in ``codes`` or with a
    missing similarity are excluded (at least 4 must remain), the step-0 baseline is dropped
    when it lacks a kept language, and the half-window matrices (even / odd snapshots) give
    the matrix's own split-half reliability, of the noise-corrected matrix when the trace has
    split halves (:func:`_noise_removed_matrices`)."""
    windowed = full.select(select_window_mask(full.steps, window))
    sim = windowed.matrix()
    index = windowed.bootstrap_index(n_bootstrap, block=block, seed=seed)
    replicates = np.stack([windowed.matrix(row) for row in index])
    df = windowed.bootstrap_df(block)
    # Half-window matrices (even / odd snapshots): the matrix's own split-half reliability,
    # for the disattenuated rho.
    n_snap = len(windowed)
    halves_ok = n_snap >= 4
    if halves_ok:
        even = windowed.matrix(np.arange(0, n_snap, 2))
        odd = windowed.matrix(np.arange(1, n_snap, 2))
    at0 = full.steps == 0
    sim0 = full.select(at0).matrix() if at0.any() else None
    all_tasks = full.tasks
    excluded = [f"{t} (no ISO code)" for t in all_tasks if not codes.get(t)]
    keep = [k for k, t in enumerate(all_tasks) if codes.get(t)]
    labels = [all_tasks[k] for k in keep]
    sub = sim[np.ix_(keep, keep)]
    drop = tasks_with_nan(sub, labels)
    excluded += [f"{t} (missing similarity)" for t in drop]
    notes = []
    if sim0 is not None:
        drop0 = tasks_with_nan(sim0[np.ix_(keep, keep)], labels)
        if set(drop0) - set(drop):
            notes.append(f"step-0 baseline lacks {sorted(set(drop0) - set(drop))}: no baseline")
            sim0 = None
    keep = [k for k in keep if all_tasks[k] not in drop]
    labels = [all_tasks[k] for k in keep]
    if len(labels) < 4:
        raise InvalidInputError(
            f"typology correlation needs at least 4 languages with ISO codes and similarities, "
            f"got {len(labels)} ({labels}); excluded: {excluded}"
        )
    x = pd.DataFrame(sim[np.ix_(keep, keep)], index=labels, columns=labels)
    x0 = (
        None
        if sim0 is None
        else pd.DataFrame(sim0[np.ix_(keep, keep)], index=labels, columns=labels)
    )
    if sim0 is None and not notes:
        notes.append("no step-0 snapshot: no baseline")
    if not halves_ok:
        notes.append(f"{n_snap} snapshots in the window: no split-half matrix reliability (need 4)")
    sub_even = even[np.ix_(keep, keep)] if halves_ok else None
    sub_odd = odd[np.ix_(keep, keep)] if halves_ok else None
    dis_measure, dis_x, dis_even, dis_odd = measure, sim[np.ix_(keep, keep)], sub_even, sub_odd
    if measure != "corrected" and windowed.signal is not None and halves_ok:
        dis_measure, dis_x, dis_even, dis_odd = _noise_removed_matrices(
            source, group, keep, n_snap, dis_x, window=window, tasks=tasks, steps=steps,
            notes=notes,
        )  # fmt: skip
    usable = halves_ok and dis_even is not None
    rel = matrix_reliability(dis_even, dis_odd) if usable else float("nan")
    # Ranks of the replicates' pair values, once for every distance (Spearman = Pearson of
    # ranks); NaN rows (a replicate with a missing pair) stay NaN.
    x_boot = rank_rows(upper(replicates[:, keep][:, :, keep])) if method == "spearman" else (
        upper(replicates[:, keep][:, :, keep])
    )  # fmt: skip
    return _Sides(
        labels, x, x0, x_boot, df, dis_measure, dis_x, dis_even, dis_odd, rel, excluded, notes
    )


def _noise_removed_matrices(
    source: Any,
    group: str | None,
    keep: list[int],
    n_snap: int,
    raw_x: np.ndarray,
    *,
    window: Window | None,
    tasks: Sequence[str] | None,
    steps: Sequence[int] | None,
    notes: list[str],
) -> tuple[str, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(measure, matrix, even half, odd half) of the noise-removed statistics for a trace with
    split halves: the noise-corrected matrix over the kept languages, or "not estimable"
    (with a note; ``raw_x`` kept, no halves) when a language's corrected similarity is not."""
    # The noise-removed statistics start from the noise-corrected matrix when the trace has
    # split halves (each pair's cosine freed of the per-task attenuation sqrt(R_i R_j), which
    # a split-half correction of the whole matrix cannot undo when reliabilities differ:
    # the calibration harness measured 73-93% coverage on the raw measure with heterogeneous
    # reliabilities, 94-100% on the corrected one), else from the measure's own matrix.
    corrected = similarity(source, group, "corrected", tasks=tasks, steps=steps)
    corrected = corrected.select(select_window_mask(corrected.steps, window))
    cx = corrected.matrix()[np.ix_(keep, keep)]
    ce = corrected.matrix(np.arange(0, n_snap, 2))[np.ix_(keep, keep)]
    co = corrected.matrix(np.arange(1, n_snap, 2))[np.ix_(keep, keep)]
    if all(np.isfinite(m).all() for m in (cx, ce, co)):
        return "corrected", cx, ce, co
    # Raw-matrix disattenuation is what fails with unequal reliabilities (harness:
    # 40-90% with per-task reliability 0.1-0.9): report nothing rather than that.
    notes.append("no noise-removed statistics: some language's corrected similarity is "
                 "not estimable (reliability below the floor); measure='corrected' "
                 "leaves those languages out")  # fmt: skip
    return "not estimable", raw_x, None, None


def _typology_similarities(
    task_codes: list[str], labels: list[str], distances: str | Sequence[str] | None, cache
) -> dict[str, pd.DataFrame]:
    """{kind: typological similarity = -distance over the tasks ``labels``} for every kind of
    ``distances`` (default: all), from the tasks' ISO codes ``task_codes``."""
    unique = list(dict.fromkeys(task_codes))
    kinds = _kinds(distances)
    typ = typological_distances(unique, kinds, cache=cache)
    ys: dict[str, pd.DataFrame] = {}
    for kind, frame in typ.items():
        m = frame.loc[task_codes, task_codes].to_numpy()
        ys[kind] = pd.DataFrame(-m, index=labels, columns=labels)
    return ys


def _controls(
    source: Any,
    covariates: str | Mapping[str, pd.DataFrame] | None,
    all_tasks: list[str],
    labels: list[str],
    notes: list[str],
) -> dict[str, pd.DataFrame]:
    """{name: control similarity = -distance over ``labels``}: the built-in covariates of a
    trace (``"auto"``; a note for each one that does not apply) or the given frames; refuses
    a frame that is not over the tasks or a name that clashes with a typology distance."""
    if isinstance(covariates, str):
        if covariates != "auto":
            raise InvalidInputError(f"covariates={covariates!r}; allowed: 'auto', a mapping, None")
        found, skipped = covariate_distances(source, all_tasks) if is_trace(source) else ({}, {})
        notes += [f"no {k} control: {v}" for k, v in skipped.items()]
    else:
        found = dict(covariates or {})
    controls: dict[str, pd.DataFrame] = {}
    for name, frame in found.items():
        if not isinstance(frame, pd.DataFrame):
            raise InvalidInputError(f"covariate {name!r} must be a [K, K] DataFrame over tasks")
        missing = [t for t in labels if t not in frame.index]
        if missing:
            raise InvalidInputError(f"covariate {name!r} lacks tasks {missing}")
        controls[name] = -frame.loc[labels, labels]
    for name in controls:
        if name in DISTANCES:
            raise InvalidInputError(f"covariate name {name!r} clashes with a typology distance")
    return controls


def _reported_test(xm, ym, zm, weights, settings: Mapping[str, Any]):
    """The reported test: spatial surrogates where the design holds (``weights``), else
    Mantel; partial given ``zm`` when it is not None."""
    if weights is None:
        if zm is None:
            return mantel(xm, ym, **settings)
        return partial_mantel(xm, ym, zm, **settings)
    return spatial_mantel(
        xm, ym, weights=weights, control=zm, n_surrogates=settings["n_permutations"],
        seed=settings["seed"], method=settings["method"],
    )  # fmt: skip


def _distance_rows(
    kind: str,
    y: pd.DataFrame,
    sides: _Sides,
    controls: Mapping[str, pd.DataFrame],
    weights,
    settings: Mapping[str, Any],
    level: float,
    constants: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """The rows of one distance ``kind`` (similarity ``y``): its rho with the reported test
    and the exchangeable Mantel p, bootstrap interval, step-0 rho and noise-removed rho with
    its language interval, then per control (every other control; None without one) the
    partial statistics (:func:`_partial_stats`)."""
    method = settings["method"]
    x, x0, labels = sides.x, sides.x0, sides.labels
    y_up = upper(y.to_numpy())
    y_rank = rank_rows(y_up[None])[0] if method == "spearman" else y_up
    r_boot = correlation_rows(sides.x_boot, y_rank, "pearson")
    row_note = list(sides.notes)
    if np.ptp(y.to_numpy()[np.triu_indices(len(labels), 1)]) == 0:
        row_note.append(f"{kind} is constant over these languages")
    r = _reported_test(x, y, None, weights, settings)
    # The exchangeable Mantel p, kept for reference (the same test when no spatial design).
    r_plain = r if weights is None else mantel(x, y, **settings)
    r0 = _reported_test(x0, y, None, weights, settings) if x0 is not None else None
    ctrl = [c for c in controls if c != kind] or [None]
    lo, hi = interval(r_boot, level, estimate=r.statistic, bounds=CORRELATION_RANGE, df=sides.df)
    y_mat = y.to_numpy()
    # Disattenuation on the Pearson scale of the similarity values (module docstring of
    # analyses._language_level): r(X, rank Y) and its replicates.
    x_up_values = upper(sides.dis_x)
    v_xy = float(value_rank_correlation(x_up_values[None], y_up)[0])
    dis = disattenuated(v_xy, sides.rel)
    dis_lo, dis_hi = language_interval(
        float(dis), _leave_one_out(sides.dis_x, y_mat, None, sides.dis_even, sides.dis_odd), level
    )
    rows = []
    for c in ctrl:
        pr = _reported_test(x, y, controls[c], weights, settings) if c else None
        pr_plain = pr if weights is None else (
            partial_mantel(x, y, controls[c], **settings) if c else None
        )  # fmt: skip
        pr0 = (
            _reported_test(x0, y, controls[c], weights, settings) if c and x0 is not None else None
        )
        p_lo = p_hi = pdis = pdis_lo = pdis_hi = np.nan
        if c:
            p_lo, p_hi, pdis, pdis_lo, pdis_hi = _partial_stats(
                controls[c].to_numpy(), sides, y_mat, y_up, y_rank, r_boot, pr.statistic,
                v_xy, method, level,
            )  # fmt: skip
        rows.append(
            {
                "group": constants["group"],
                "measure": constants["measure"],
                "distance": kind,
                "control": c,
                "n_languages": len(labels),
                "rho": r.statistic,
                "ci_low": lo,
                "ci_high": hi,
                "p_value": r.p_value,
                "rho_step0": r0.statistic if r0 else np.nan,
                "p_value_step0": r0.p_value if r0 else np.nan,
                "partial_rho": pr.statistic if pr else np.nan,
                "partial_ci_low": p_lo,
                "partial_ci_high": p_hi,
                "partial_p_value": pr.p_value if pr else np.nan,
                "partial_rho_step0": pr0.statistic if pr0 else np.nan,
                "partial_p_value_step0": pr0.p_value if pr0 else np.nan,
                "test": constants["test"],
                "p_mantel": r_plain.p_value,
                "partial_p_mantel": pr_plain.p_value if pr_plain else np.nan,
                "matrix_reliability": sides.rel,
                "noise_removed_measure": sides.dis_measure,
                "rho_disattenuated": float(dis),
                "lang_ci_low": dis_lo,
                "lang_ci_high": dis_hi,
                "partial_disattenuated": pdis,
                "partial_lang_ci_low": pdis_lo,
                "partial_lang_ci_high": pdis_hi,
                # the smallest noise-removed relation this run could detect (80% power)
                "detectable": detectable_effect(dis_lo, dis_hi, len(labels), level),
                "partial_detectable": detectable_effect(pdis_lo, pdis_hi, len(labels), level),
                "n_permutations": constants["n_permutations"],
                "n_bootstrap": constants["n_bootstrap"],
                "excluded": constants["excluded"],
                "note": "; ".join(row_note + ([] if c else ["no control distance available"])),
            }
        )
    return rows


def _partial_stats(
    z_mat: np.ndarray,
    sides: _Sides,
    y_mat: np.ndarray,
    y_up: np.ndarray,
    y_rank: np.ndarray,
    r_boot: np.ndarray,
    partial_rho: float,
    v_xy: float,
    method: str,
    level: float,
) -> tuple[float, float, float, float, float]:
    """Given the control ``z_mat``: the partial rho's bootstrap interval (from the replicates'
    rho ``r_boot`` and their correlation with the control), the partial noise-removed
    relation and its language interval."""
    z_up = upper(z_mat)
    z_rank = rank_rows(z_up[None])[0] if method == "spearman" else z_up
    ryz = float(correlation_rows(y_rank[None], z_rank, "pearson")[0])
    rxz = correlation_rows(sides.x_boot, z_rank, "pearson")
    partial = partial_from_r(r_boot, rxz, ryz)
    p_lo, p_hi = interval(
        partial, level, estimate=partial_rho, bounds=CORRELATION_RANGE, df=sides.df
    )
    x_up_values = upper(sides.dis_x)
    v_xz = float(value_rank_correlation(x_up_values[None], z_up)[0])
    v_yz = float(rank_correlation(y_up[None], z_up)[0])
    pdis = float(disattenuated(v_xy, sides.rel, v_xz, v_yz))
    pdis_lo, pdis_hi = language_interval(
        pdis, _leave_one_out(sides.dis_x, y_mat, z_mat, sides.dis_even, sides.dis_odd), level
    )
    return p_lo, p_hi, pdis, pdis_lo, pdis_hi


def _leave_one_out(x, y, z, even, odd) -> np.ndarray:
    """The disattenuated (partial) r with each language left out, with all its pairs: [n].

    r(X, rank Y) on the remaining pairs (as in :func:`typology_correlation`); the matrix
    reliability recomputed from the half-window matrices of the remaining languages (NaN
    without them).
    """
    n = len(x)
    out = np.full(n, np.nan)
    if even is None or n < 5:
        return out
    for left in range(n):
        k = np.ix_(np.delete(np.arange(n), left), np.delete(np.arange(n), left))
        xu, yu = upper(x[k])[None], upper(y[k])
        rxy = float(value_rank_correlation(xu, yu)[0])
        rel = matrix_reliability(even[k], odd[k])
        if z is None:
            out[left] = disattenuated(rxy, rel)
        else:
            zu = upper(z[k])
            rxz = float(value_rank_correlation(xu, zu)[0])
            ryz = float(rank_correlation(yu[None], zu)[0])
            out[left] = disattenuated(rxy, rel, rxz, ryz)
    return out


#: Tests typology_correlation can report as ``p_value``.
TESTS = ("spatial", "mantel")


def _spatial_design(test: str, codes: Sequence[str], cache, notes: list[str]):
    """(kind -> candidate proximities for :func:`spatial_mantel`, or None; the test's name).

    The proximity candidates exclude the kind being tested (y = geographic: genealogy only;
    y = genetic: geography only): with both, the proximity fitted to x absorbs y itself and
    the test loses its power (analyses/README.md, "Tests under spatial and genealogical
    autocorrelation"). Languages without lang2vec geography fall back to the Mantel test with
    a note (its measured level under autocorrelation is in the same section).
    """
    if test == "mantel":
        notes.append(
            "p: Mantel permutation test (assumes exchangeable languages; measured level 54-96% "
            "at alpha 0.05 when both matrices follow geography or genealogy)"
        )
        return (lambda kind: None), "mantel"
    try:
        candidates = language_proximity(codes, cache=cache)
    except InvalidInputError as err:
        notes.append(
            f"p: Mantel permutation test, no spatial design ({err}); it assumes exchangeable "
            "languages (measured level 54-96% at alpha 0.05 under autocorrelation)"
        )
        return (lambda kind: None), "mantel"
    arrays = {name: frame.to_numpy() for name, frame in candidates.items()}

    def weights(kind: str) -> dict[str, np.ndarray]:
        if kind == "geographic":
            return {n: w for n, w in arrays.items() if n == "genetic"}
        if kind == "genetic":
            return {n: w for n, w in arrays.items() if n.startswith("geographic")}
        return arrays

    return weights, "spatial"
