import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analyses import QUALITY_CORRELATION_COLUMNS, quality_correlation, task_quality
from geomtrace import InvalidInputError

TASKS = [f"t{i}" for i in range(8)]


def stack(seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for level in (0.0, 1.0, 1.0):  # step 0 has no structure
        strength = level * np.linspace(0, 1, 8)
        m = np.outer(strength, strength) + 0.3 * rng.normal(size=(8, 8))
        m = (m + m.T) / 2
        np.fill_diagonal(m, 1.0)
        out.append(np.clip(m, -1, 1))
    return np.stack(out)


def test_task_quality_and_planted_correlation():
    cos = stack()
    mean_sim = np.array([np.delete(cos[1:].mean(0)[i], i).mean() for i in range(8)])
    chrf = {t: 20 + 40 * s for t, s in zip(TASKS, mean_sim, strict=True)}
    loss = {t: 3 - s for t, s in zip(TASKS, mean_sim, strict=True)}
    quality = {"chrf": chrf, "heldout_loss": loss}
    table = task_quality(cos, tasks=TASKS, steps=[0, 10, 20], quality=quality)
    assert list(table.columns) == [
        "group",
        "task",
        "mean_similarity",
        "mean_similarity_step0",
        "chrf",
        "heldout_loss",
    ]
    assert table["mean_similarity"].to_numpy() == pytest.approx(
        [np.mean([np.delete(cos[s, i], i).mean() for s in (1, 2)]) for i in range(8)]
    )
    assert table["mean_similarity_step0"].to_numpy() == pytest.approx(
        [np.delete(cos[0, i], i).mean() for i in range(8)]
    )
    frame = quality_correlation(
        cos, tasks=TASKS, steps=[0, 10, 20], quality=quality, n_permutations=999
    ).set_index("metric")
    assert list(frame.reset_index().columns) == [
        "metric",
        *[c for c in QUALITY_CORRELATION_COLUMNS if c != "metric"],
    ]
    expected = stats.spearmanr(table["mean_similarity"], table["chrf"]).statistic
    assert frame.loc["chrf", "rho"] == pytest.approx(expected)
    assert frame.loc["chrf", "p_value"] < 0.01
    assert frame.loc["heldout_loss", "rho"] == pytest.approx(-expected)
    assert frame.loc["chrf", "n_tasks"] == 8
    assert np.isfinite(frame.loc["chrf", "rho_step0"])
    assert "no control" in frame.loc["chrf", "note"] and np.isnan(frame.loc["chrf", "partial_rho"])
    given = quality_correlation(
        cos, tasks=TASKS, steps=[0, 10, 20], quality=quality, metrics=["chrf"],
        control=dict(zip(TASKS, np.arange(8.0), strict=True)), n_permutations=99,
    )  # fmt: skip
    assert given["control"].iloc[0] == "given" and np.isfinite(given["partial_rho"].iloc[0])


def test_latest_quality_step_wins_and_missing_values_are_excluded():
    cos = stack(1)
    q = pd.DataFrame(
        [(0, t, "chrf", 0.0) for t in TASKS]
        + [(50, t, "chrf", float(i)) for i, t in enumerate(TASKS[:-1])],
        columns=["step", "task", "metric", "value"],
    )
    table = task_quality(cos, tasks=TASKS, steps=[0, 10, 20], quality=q).set_index("task")
    assert table.loc["t3", "chrf"] == 3.0 and table.loc["t7", "chrf"] == 0.0  # t7 only at step 0
    frame = quality_correlation(cos, tasks=TASKS, steps=[0, 10, 20], quality=q, n_permutations=9)
    assert frame["n_tasks"].iloc[0] == 8
    few = {"chrf": {"t0": 1.0, "t1": 2.0, "t2": 3.0}}
    frame = quality_correlation(cos, tasks=TASKS, steps=[0, 10, 20], quality=few, n_permutations=9)
    assert np.isnan(frame["rho"].iloc[0]) and "need >= 4" in frame["note"].iloc[0]
    assert frame["excluded"].iloc[0].count("missing value") == 5
    with pytest.raises(InvalidInputError, match="no quality metric"):
        quality_correlation(cos, tasks=TASKS, steps=[0, 10, 20], quality=few, metrics=["bleu"])
    with pytest.raises(InvalidInputError, match="no quality measurements"):
        quality_correlation(cos, tasks=TASKS, steps=[0, 10, 20], quality={})
