"""Shared fixtures: a private typology cache and synthetic traces with planted structure."""

from __future__ import annotations

import numpy as np
import pytest

import geomtrace as gt

# Languages from four top-level Glottolog families (checked in test_typology).
PLANTED = {
    "spa": "Indo-European", "por": "Indo-European", "fra": "Indo-European", "deu": "Indo-European",
    "fin": "Uralic", "est": "Uralic", "hun": "Uralic",
    "tur": "Turkic", "aze": "Turkic", "uzb": "Turkic",
    "tam": "Dravidian", "tel": "Dravidian",
}  # fmt: skip
SCRIPTS = {"tam": "Taml", "tel": "Telu"}


@pytest.fixture(autouse=True, scope="session")
def typology_cache(tmp_path_factory):
    """Tests never touch the user's cache: GEOMTRACE_CACHE_DIR points to a session tmp dir."""
    path = tmp_path_factory.mktemp("geomtrace-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("GEOMTRACE_CACHE_DIR", str(path))
    yield path
    mp.undo()


def planted_gradients(rng, fam: np.ndarray, strength: float, dim: int, centers: np.ndarray):
    """Per-task gradients = strength * family centre + N(0, 1) noise: [K, dim]."""
    return strength * centers[fam] + rng.normal(size=(len(fam), dim))


def write_planted_trace(
    run,
    *,
    seed: int = 0,
    iso: bool = True,
    quality: bool = True,
    meta: bool = True,
    steps=tuple(range(0, 101, 10)),
    dim: int = 64,
    absent: str | None = None,
    method: str = "sum",
    chrf_shift: float = 0.0,
):
    """A trace whose gradients cluster by language family after step 0 (none at step 0).

    Two groups (encoder.0, decoder.0). Quality: chrF increasing with the task's family
    strength ordering is *not* planted (chrF = 30 + task index). Meta: scripts (Latn except
    Tamil/Telugu) and character profiles derived from a per-family alphabet. ``absent``: a task
    whose gradient is missing (NaN) at every snapshot.
    """
    rng = np.random.default_rng(seed)
    langs = list(PLANTED)
    tasks = [f"{c}-en" for c in langs]
    fam = np.unique([PLANTED[c] for c in langs], return_inverse=True)[1]
    groups = [("encoder.0", dim, ["enc.w"]), ("decoder.0", dim, ["dec.w"])]
    writer = gt.TraceWriter(
        run, tasks, groups, iso_codes={t: t[:3] for t in tasks} if iso else None, overwrite=True,
        config={"method": method, "seed": seed, "granularity": "all_layer"},
    )  # fmt: skip
    writer.set_meta("method", method)
    centers = rng.normal(size=(2, fam.max() + 1, dim))
    for s in steps:
        grams = []
        for g in range(2):
            G = planted_gradients(rng, fam, 0.0 if s == 0 else 1.5, dim, centers[g])
            grams.append(G @ G.T)
        gram = np.stack(grams)
        if absent is not None:  # a task never traced: NaN rows and columns, as the Tracer writes
            k = tasks.index(absent)
            gram[:, k, :] = gram[:, :, k] = np.nan
        writer.write_snapshot(s, gram, losses={t: 1.0 for t in tasks})
    if quality:
        for k, t in enumerate(tasks):
            writer.write_quality(steps[-1], t, "chrf", 30.0 + k + chrf_shift)
            writer.write_quality(steps[-1], t, "heldout_loss", 3.0 - 0.1 * k)
    if meta:
        writer.set_meta("scripts", {t: SCRIPTS.get(t[:3], "Latn") for t in tasks})
        alphabet = [chr(ord("a") + i) for i in range(26)]
        profiles = {}
        for k, t in enumerate(tasks):
            weights = np.ones(26)
            weights[fam[k] * 5 : fam[k] * 5 + 5] += 10  # family-specific frequent letters
            profiles[t] = {
                c: float(w / weights.sum()) for c, w in zip(alphabet, weights, strict=True)
            }
        writer.set_meta("char_profiles", profiles)
    writer.close()
    return tasks


@pytest.fixture
def planted_families():
    """{iso: top-level family} of the planted languages."""
    return dict(PLANTED)


@pytest.fixture
def planted_trace():
    """The function writing a planted trace (see ``write_planted_trace``)."""
    return write_planted_trace
