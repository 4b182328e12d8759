"""Synthetic traces with planted structure, written with the real TraceWriter.

Nine languages in three Glottolog families (Indo-European: es fr it; Uralic: fi hu et;
Turkic: tr az kk). Each task's gradient in group k at step s is
    g_i = a_k * z_shared + b(s) * z_family(i) + z_own(i)      (random Gaussian z's, dim 48)
so within-family cosines exceed across-family ones, the family term grows over training
(b(0) = 0: no family structure at step 0), and decoder groups are more alike (larger a_k,
the shared-English-target effect of X->En). chrF is planted to increase with a task's mean
alignment. With ``halves=True`` each gradient is written as two independent halves
(signal / 2 + noise each), stored as the trace array ``split_half`` (a.a, b.b, a.b), as
``Tracer(halves=True)`` does.

``write_regression_trace``: a non-language multi-task run (six regression heads "reg0".."reg5",
no ISO codes, quality metric "mse") through the same writer.
"""

from __future__ import annotations

import numpy as np
import pytest

import analyses
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


def planted_grams(steps, seed: int = 0, dim: int = 48, halves: bool = False):
    """[S, G, K, K] Gram matrices of the model above; with ``halves`` also the [S, G, K, 3]
    split-half products (a.a, b.b, a.b) of g = a + b, a and b = g_signal / 2 + noise."""
    rng = np.random.default_rng(seed)
    K = len(TASKS)
    families = sorted(set(FAMILY.values()))
    out = np.zeros((len(steps), len(GROUPS), K, K))
    split = np.zeros((len(steps), len(GROUPS), K, 3))
    for s, step in enumerate(steps):
        b = 1.5 * (1 - np.exp(-step / 30))  # family term: 0 at init, settles by ~step 60
        for k, (name, _) in enumerate(GROUPS):
            shared = rng.normal(size=dim)
            fam = {f: rng.normal(size=dim) for f in families}
            g = np.stack(
                [SHARED[name] * shared + b * fam[FAMILY[t]] + rng.normal(size=dim) for t in TASKS]
            )
            if halves:
                ha = g / 2 + 0.6 * rng.normal(size=g.shape)
                hb = g / 2 + 0.6 * rng.normal(size=g.shape)
                g = ha + hb
                split[s, k] = np.stack(
                    [(ha * ha).sum(1), (hb * hb).sum(1), (ha * hb).sum(1)], axis=1
                )
            out[s, k] = g @ g.T
        # step 0 keeps only the shared and own terms, like an untrained model
    return (out, split) if halves else out


def write_trace(run_dir, *, method: str = "sum", granularity: str = "all_layer", seed: int = 0,
                quality: bool = True, direction: str = "x2en", chrf_shift: float = 0.0,
                halves: bool = False, steps=STEPS, metric: str = "chrf"):  # fmt: skip
    """Write a synthetic run; returns its directory."""
    grams = planted_grams(steps, seed=seed, halves=halves)
    if halves:
        grams, split = grams
    config = {"method": method, "granularity": granularity, "steps": steps[-1], "seed": seed}
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
        for s, step in enumerate(steps):
            arrays = {"split_half": split[s]} if halves else None
            if method != "sum":
                arrays = dict(arrays or {}, weights=np.ones((G, K)))
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
            cos_all = grams[1:].sum(axis=1) if len(steps) > 1 else grams.sum(axis=1)
            d = np.sqrt(np.einsum("sii->si", cos_all))
            cos_all = cos_all / (d[:, :, None] * d[:, None, :])
            align = (cos_all.sum(axis=2) - 1).mean(axis=0) / (K - 1)
            for i, t in enumerate(TASKS):
                w.write_quality(
                    steps[-1], t, metric, float(20 + 40 * align[i] + chrf_shift + i % 2)
                )
                w.write_quality(steps[-1], t, "heldout_loss", float(3 - align[i]))
    return run_dir


REG_TASKS = [f"reg{i}" for i in range(6)]
REG_GROUPS = [("trunk.0", 300), ("trunk.1", 300), ("heads", 60)]


def write_regression_trace(run_dir, *, seed: int = 0, steps=STEPS):
    """Six regression heads on a shared MLP trunk: tasks reg0..reg5 (two related triples), no
    ISO codes, quality metric "mse" (lower is better), written with the real TraceWriter."""
    rng = np.random.default_rng(seed)
    K, G, dim = len(REG_TASKS), len(REG_GROUPS), 32
    with TraceWriter(run_dir, REG_TASKS, [(n, s, [f"{n}.weight"]) for n, s in REG_GROUPS],
                     config={"model": "mlp", "heads": K}) as w:  # fmt: skip
        w.set_meta("method", "sum")
        for step in steps:
            grams = np.zeros((G, K, K))
            for k in range(G):
                shared, pair = rng.normal(size=dim), [rng.normal(size=dim) for _ in range(2)]
                g = np.stack([0.5 * shared + pair[i % 2] + rng.normal(size=dim) for i in range(K)])
                grams[k] = g @ g.T
            w.write_snapshot(step, grams, {t: 1.0 / (1 + step) for t in REG_TASKS})
        for i, t in enumerate(REG_TASKS):
            w.write_quality(steps[-1], t, "mse", 0.1 + 0.02 * i)
    return run_dir


@pytest.fixture(scope="session")
def synthetic_runs(tmp_path_factory):
    """Synthetic runs by name: sum, pcgrad, gradvac (languages, three methods), noquality,
    halves (split halves recorded), regression (non-language tasks, metric mse), chrfpp
    (quality metric "chrF++")."""
    root = tmp_path_factory.mktemp("synthetic")
    return {
        "sum": write_trace(root / "sum"),
        "pcgrad": write_trace(root / "pcgrad", method="pcgrad", seed=1, chrf_shift=1.0),
        "gradvac": write_trace(root / "gradvac", method="gradvac", seed=2, chrf_shift=2.0),
        "noquality": write_trace(root / "noquality", quality=False),
        "halves": write_trace(root / "halves", halves=True),
        "regression": write_regression_trace(root / "regression"),
        "chrfpp": write_trace(root / "chrfpp", metric="chrF++"),
    }


PERMS, BOOT = 99, 50


@pytest.fixture(scope="session")
def analysed(synthetic_runs):
    """Analyse a synthetic run once per session: ``analysed(name, **kwargs)``."""
    cache: dict = {}

    def get(name: str, **kwargs):
        key = (name, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = analyses.analyse_run(
                synthetic_runs[name], n_permutations=PERMS, n_bootstrap=BOOT, **kwargs
            )
        return cache[key]

    return get


@pytest.fixture(scope="session")
def drawn(analysed):
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            from figures import draw_run

            cache[name] = draw_run(analysed(name))
        return cache[name]

    return get
