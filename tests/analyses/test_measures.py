"""Noise, reliability and the corrected similarity on planted gradients.

Each task i has a true gradient s_i with planted cosines (two clusters: 0.6 within, 0.1
across). A snapshot observes two independent halves a_i = s_i + n_a, b_i = s_i + n_b with
Gaussian noise so strong that the full gradient g_i = a_i + b_i is 80% noise (reliability
|2 s_i|^2 / E|g_i|^2 = 0.2), as measured on the default recipe's 12-row batches. The raw
cosine is then attenuated towards 0 by about the reliability; the corrected one is not.
"""

from __future__ import annotations

import numpy as np
import pytest

import geomtrace as gt
from analyses import (
    analyse_run,
    centred_gram,
    reliability_table,
    similarity,
    similarity_matrix,
    similarity_summary,
)
from geomtrace import InvalidInputError

K, DIM = 6, 400
RELIABILITY = 0.25  # above the corrected measure's reliability floor (0.2)


def planted_cosines() -> np.ndarray:
    cluster = np.array([0, 0, 0, 1, 1, 1])
    cos = np.where(cluster[:, None] == cluster[None, :], 0.6, 0.1)
    np.fill_diagonal(cos, 1.0)
    return cos


def write_noisy_trace(run, *, seed: int, snapshots: int = 30, halves: bool = True) -> None:
    rng = np.random.default_rng(seed)
    # Signals with exactly the planted Gram: Cholesky factor times orthonormal directions.
    basis, _ = np.linalg.qr(rng.normal(size=(DIM, K)))
    signal = np.linalg.cholesky(planted_cosines()) @ basis.T  # unit norms, planted cosines
    # |2 s|^2 = 4; noise of g = n_a + n_b has power 2 sigma^2 DIM; r = 4 / (4 + 2 sigma^2 DIM).
    sigma = np.sqrt((4 / RELIABILITY - 4) / (2 * DIM))
    tasks = [f"t{i}" for i in range(K)]
    with gt.TraceWriter(run, tasks, [("layer", DIM, ["w"])]) as w:
        for step in range(0, 10 * (snapshots + 1), 10):
            a = signal + sigma * rng.normal(size=(K, DIM))
            b = signal + sigma * rng.normal(size=(K, DIM))
            g = a + b
            arrays = None
            if halves:
                split = np.stack([(a * a).sum(1), (b * b).sum(1), (a * b).sum(1)], axis=1)
                arrays = {"split_half": split[None]}  # [G, K, 3]
            w.write_snapshot(step, (g @ g.T)[None], arrays=arrays)


def mean_offdiag(m: np.ndarray) -> float:
    return float(m[np.triu_indices(K, 1)].mean())


def test_raw_is_attenuated_corrected_recovers_the_planted_cosines(tmp_path):
    write_noisy_trace(tmp_path, seed=0)
    trace = gt.open_trace(tmp_path)
    raw = similarity_matrix(trace, "layer").to_numpy()
    corrected = similarity_matrix(trace, "layer", measure="corrected").to_numpy()
    planted = planted_cosines()
    iu = np.triu_indices(K, 1)
    # Raw: about reliability x planted (0.6 -> ~0.12); corrected: the planted values.
    assert mean_offdiag(raw) == pytest.approx(RELIABILITY * mean_offdiag(planted), abs=0.03)
    assert np.abs(corrected[iu] - planted[iu]).max() < 0.15
    assert mean_offdiag(corrected) == pytest.approx(mean_offdiag(planted), abs=0.05)
    rel = reliability_table(trace, "layer")
    assert rel["reliability"].to_numpy() == pytest.approx(np.full(K, RELIABILITY), abs=0.07)
    assert rel["reliability"].mean() == pytest.approx(RELIABILITY, abs=0.02)
    summary = similarity_summary(trace, "layer", n_bootstrap=200).iloc[0]
    assert summary["reliability"] == pytest.approx(RELIABILITY, abs=0.03)
    assert summary["mean_corrected"] == pytest.approx(mean_offdiag(planted), abs=0.05)


def test_intervals_cover_the_planted_value_at_about_their_rate(tmp_path):
    """Over 30 seeded repetitions, the 95% interval of the corrected mean similarity covers
    the planted value in at least 85% of them (nominal 95%; the moving-block bootstrap of 30
    snapshots is known to undercover slightly)."""
    target = mean_offdiag(planted_cosines())
    covered = []
    for seed in range(30):
        run = tmp_path / f"r{seed}"
        write_noisy_trace(run, seed=seed, snapshots=30)
        row = similarity_summary(gt.open_trace(run), "layer", n_bootstrap=200, seed=seed).iloc[0]
        covered.append(row["corrected_ci_low"] <= target <= row["corrected_ci_high"])
        # The raw interval sits far below the planted value: attenuation, not noise.
        assert row["ci_high"] < target
    assert np.mean(covered) >= 0.85


def test_corrected_needs_halves_and_centring_removes_the_common_component(tmp_path):
    write_noisy_trace(tmp_path / "nohalves", seed=1, halves=False)
    trace = gt.open_trace(tmp_path / "nohalves")
    with pytest.raises(InvalidInputError, match="halves=True"):
        similarity_matrix(trace, "layer", measure="corrected")
    with pytest.raises(InvalidInputError, match="halves=True"):
        analyse_run(trace, measure="corrected")
    # Centring by hand: G_c = J G J with J = I - 11^T / K.
    rng = np.random.default_rng(0)
    common = rng.normal(size=20)
    g = rng.normal(size=(4, 20)) + 3 * common  # a large step-common component
    G = g @ g.T
    J = np.eye(4) - np.full((4, 4), 0.25)
    assert np.allclose(centred_gram(G[None])[0], J @ G @ J)
    centred = g - g.mean(0)
    assert np.allclose(centred_gram(G[None])[0], centred @ centred.T)
    sim = similarity(trace, "layer", "centred")
    m = sim.matrix()
    # Centred cosines of K tasks average about -1/(K-1): the levels move, the pairs compare.
    assert mean_offdiag(m) == pytest.approx(-1 / (K - 1), abs=0.1)


def test_centred_with_halves_is_not_fooled_by_unequal_noise(tmp_path):
    """Every true cosine 0.6, reliabilities ~0.6 (tasks 0-3) vs ~0.15 (tasks 4-7): centring the
    raw Gram pushes noisy pairs down and reliable pairs up (issue 18: +0.14 vs -0.21); the
    denoised centred measure gives every pair the same expected value, -1/(K-1)."""
    import analyses
    import geomtrace as gt

    rng = np.random.default_rng(3)
    K, P, S = 8, 400, 40
    corr = np.full((K, K), 0.6) + 0.4 * np.eye(K)
    signal = np.linalg.cholesky(corr) @ np.linalg.qr(rng.normal(size=(P, K)))[0].T  # |s_i| = 1
    # Half noise sd per coordinate: r = 4|s|^2 / (4|s|^2 + 2 P sd^2).
    sd = np.array([np.sqrt((4 / r - 4) / (2 * P)) for r in [0.6] * 4 + [0.15] * 4])
    tasks = [f"t{i}" for i in range(K)]
    writer = gt.TraceWriter(tmp_path / "run", tasks, [("g", P, ["w"])], overwrite=True)
    for s in range(1, S + 1):
        a = signal + sd[:, None] * rng.normal(size=(K, P))
        b = signal + sd[:, None] * rng.normal(size=(K, P))
        g = a + b
        split = np.stack([(a * a).sum(1), (b * b).sum(1), (a * b).sum(1)], 1)
        writer.write_snapshot(s, (g @ g.T)[None], arrays={"split_half": split[None]})
    writer.close()
    trace = gt.open_trace(tmp_path / "run")
    centred = analyses.similarity(trace, "g", "centred").matrix()
    iu = np.triu_indices(K, 1)
    reliable = [(i, j) for i, j in zip(*iu, strict=True) if j < 4]
    noisy = [(i, j) for i, j in zip(*iu, strict=True) if i >= 4]
    mean = lambda pairs: np.mean([centred[i, j] for i, j in pairs])  # noqa: E731
    assert abs(mean(reliable) - mean(noisy)) < 0.08
    np.testing.assert_allclose([mean(reliable), mean(noisy)], -1 / (K - 1), atol=0.08)
    # The raw centred measure (what a trace without halves gets) shows the artefact.
    raw_centred = gt.nanmean(gt.cosine_from_gram(analyses.centred_gram(trace.gram("g"))))
    gap = np.mean([raw_centred[i, j] for i, j in reliable]) - np.mean(
        [raw_centred[i, j] for i, j in noisy]
    )
    assert gap > 0.2
