"""Synthetic traces with planted structure, written with the real TraceWriter.

Nine languages in three Glottolog families (Indo-European: es fr it; Uralic: fi hu et;
Turkic: tr az kk). Each task's gradient in group k at step s is
    g_i = a_k * z_shared + b(s) * z_family(i) + z_own(i)      (random Gaussian z's, dim 48)
so within-family cosines exceed across-family ones, the family term grows over training
(b(0) = 0: no family structure at step 0), and decoder groups are more alike (larger a_k,
the shared-English-target effect of X->En). chrF is planted to increase with a task's mean
alignment.
"""

from __future__ import annotations

import numpy as np
import pytest

from geomtrace import TraceWriter

TASKS = ["es", "fr", "it", "fi", "hu", "et", "tr", "az", "kk"]
ISO = {
    "es": "spa", "fr": "fra", "it": "ita", "fi": "fin", "hu": "hun", "et": "est",
    "tr": "tur", "az": "aze", "kk": "kaz",
}  # fmt: skip
FAMILY = {
    t: f
    for f, ts in {"ie": "es fr it", "ur": "fi hu et", "tk": "tr az kk"}.items()
    for t in ts.split()
}
SCRIPTS = {t: ("Cyrl" if t == "kk" else "Latn") for t in TASKS}
GROUPS = [
    ("embed", 1000),
    ("encoder.0", 500),
    ("encoder.1", 500),
    ("decoder.0", 500),
    ("decoder.1", 500),
]
SHARED = {"embed": 0.3, "encoder.0": 0.4, "encoder.1": 0.5, "decoder.0": 1.0, "decoder.1": 1.2}
STEPS = list(range(0, 101, 10))


def planted_grams(steps, seed: int = 0, dim: int = 48) -> np.ndarray:
    """[S, G, K, K] Gram matrices of the model above."""
    rng = np.random.default_rng(seed)
    K = len(TASKS)
    families = sorted(set(FAMILY.values()))
    out = np.zeros((len(steps), len(GROUPS), K, K))
    for s, step in enumerate(steps):
        b = 1.5 * (1 - np.exp(-step / 30))  # family term: 0 at init, settles by ~step 60
        for k, (name, _) in enumerate(GROUPS):
            shared = rng.normal(size=dim)
            fam = {f: rng.normal(size=dim) for f in families}
            g = np.stack(
                [SHARED[name] * shared + b * fam[FAMILY[t]] + rng.normal(size=dim) for t in TASKS]
            )
            out[s, k] = g @ g.T
        # step 0 keeps only the shared and own terms, like an untrained model
    return out


def write_trace(run_dir, *, method: str = "sum", granularity: str = "all_layer", seed: int = 0,
                quality: bool = True, direction: str = "x2en", chrf_shift: float = 0.0):  # fmt: skip
    """Write a synthetic run; returns its directory."""
    grams = planted_grams(STEPS, seed=seed)
    config = {"method": method, "granularity": granularity, "steps": STEPS[-1], "seed": seed}
    rng = np.random.default_rng(seed + 100)
    with TraceWriter(run_dir, TASKS, [(n, s, [f"{n}.weight"]) for n, s in GROUPS],
                     iso_codes=ISO, config=config) as w:  # fmt: skip
        w.set_meta("method", method)
        w.set_meta("granularity", granularity)
        w.set_meta("direction", direction)
        w.set_meta("scripts", SCRIPTS)
        w.set_meta(
            "char_profiles",
            {t: {c: float(rng.random()) for c in "abcdefghij" + t} for t in TASKS},
        )
        K, G = len(TASKS), len(GROUPS)
        target = np.zeros((G, K, K))
        for s, step in enumerate(STEPS):
            arrays = None
            if method != "sum":
                arrays = {"weights": np.ones((G, K))}
                if method == "gradvac":
                    cos = grams[s] / np.sqrt(
                        np.einsum("gii->gi", grams[s])[:, :, None]
                        * np.einsum("gii->gi", grams[s])[:, None, :]
                    )
                    target = 0.9 * target + 0.1 * cos  # EMA of the observed cosine, beta = 0.1
                    arrays["gradvac_target"] = target.copy()
            losses = {t: float(5 * np.exp(-step / 50) + 0.1 * i) for i, t in enumerate(TASKS)}
            w.write_snapshot(step, grams[s], losses, arrays=arrays)
        if quality:
            cos_all = grams[1:].sum(axis=1)
            d = np.sqrt(np.einsum("sii->si", cos_all))
            cos_all = cos_all / (d[:, :, None] * d[:, None, :])
            align = (cos_all.sum(axis=2) - 1).mean(axis=0) / (K - 1)
            for i, t in enumerate(TASKS):
                w.write_quality(
                    STEPS[-1], t, "chrf", float(20 + 40 * align[i] + chrf_shift + i % 2)
                )
                w.write_quality(STEPS[-1], t, "heldout_loss", float(3 - align[i]))
    return run_dir


@pytest.fixture(scope="session")
def synthetic_runs(tmp_path_factory):
    """{"sum": dir, "pcgrad": dir, "gradvac": dir, "noquality": dir} of synthetic runs."""
    root = tmp_path_factory.mktemp("synthetic")
    return {
        "sum": write_trace(root / "sum"),
        "pcgrad": write_trace(root / "pcgrad", method="pcgrad", seed=1, chrf_shift=1.0),
        "gradvac": write_trace(root / "gradvac", method="gradvac", seed=2, chrf_shift=2.0),
        "noquality": write_trace(root / "noquality", quality=False),
    }
