"""Each figure on synthetic traces with planted structure (tests/figures/conftest.py)."""

from __future__ import annotations

import struct

import numpy as np
import pandas as pd
import pytest

import analyses
import geomtrace as gt
from figures import (
    collect_run,
    layer_profile,
    optimizer_comparison,
    quality_scatter,
    similarity_heatmap,
    similarity_over_time,
    typology_scatter,
)
from figures._plot import compare_runs, figure_f6
from figures._style import parse_formats, save

from .conftest import FAMILY, GROUPS, STEPS, TASKS

PERMS = 99


def png_size(path) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def check_saved(fig, tmp_path, name, lo_kb=15, hi_kb=1500):
    paths = save(fig, tmp_path / name, ["png", "svg"])
    assert [p.suffix for p in paths] == [".png", ".svg"]
    for p in paths:
        assert p.exists()
    kb = paths[0].stat().st_size / 1024
    assert lo_kb < kb < hi_kb, f"{name}.png is {kb:.0f} KB"
    w, h = png_size(paths[0])
    assert w > 300 and h > 200
    return paths


@pytest.fixture(scope="module")
def sum_data(synthetic_runs):
    return collect_run(synthetic_runs["sum"], n_permutations=PERMS)


def all_texts(fig) -> str:
    texts = [t.get_text() for t in fig.findobj(lambda o: hasattr(o, "get_text"))]
    return "\n".join(texts)


def test_f1_heatmap_orders_by_tree_and_groups_families(sum_data, tmp_path):
    sim = sum_data.frames["similarity_matrix"]
    fig = similarity_heatmap(
        sim, sum_data.tree, families=sum_data.families, scripts=sum_data.scripts,
        title="Gradient similarity test title",
    )  # fmt: skip
    heat = next(ax for ax in fig.axes if ax.get_xlabel() == "language (task)")
    cols = [t.get_text() for t in heat.get_xticklabels()]
    rows = [t.get_text() for t in heat.get_yticklabels()]
    assert cols == rows == sum_data.tree.leaves
    # the planted families come out as three contiguous blocks of the leaf order
    fam = [FAMILY[t] for t in cols]
    assert sum(a != b for a, b in zip(fam, fam[1:], strict=False)) == 2
    # the drawn values are the matrix in leaf order, diagonal masked
    mesh = heat.collections[0].get_array().reshape(len(cols), len(cols))
    expected = sim.loc[cols, cols].to_numpy()
    off = ~np.eye(len(cols), dtype=bool)
    np.testing.assert_allclose(np.asarray(mesh)[off], expected[off])
    assert np.ma.getmaskarray(mesh)[~off].all()
    text = all_texts(fig)
    assert "Gradient similarity test title" in text
    assert "gradient cosine (mean over steps)" in text
    assert {"Indo-European", "Uralic", "Turkic", "Latn", "Cyrl"} <= set(text.split("\n"))
    check_saved(fig, tmp_path, "f1")


def test_f1_refuses_a_tree_of_other_tasks(sum_data):
    sim = sum_data.frames["similarity_matrix"].iloc[:4, :4]
    with pytest.raises(gt.InvalidInputError, match="tree's tasks"):
        similarity_heatmap(sim, sum_data.tree)


def test_f2_typology_panels_and_numbers(sum_data, tmp_path):
    corr = sum_data.frames["typology"]
    fig = typology_scatter(
        sum_data.frames["similarity_matrix"], sum_data.distances, corr,
        similarity_step0=sum_data.similarity_step0, families=sum_data.families,
    )  # fmt: skip
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == list(analyses.DISTANCES)
    assert panels[0].get_ylabel() == "gradient cosine (mean over steps)"
    assert panels[3].get_xlabel() == "geographic distance (km)"
    # each panel: 36 pairs, split 9 within-family + 27 across, plus 36 step-0 crosses
    counts = [len(c.get_offsets()) for c in panels[0].collections]
    assert counts == [36, 9, 27]
    row = corr[(corr["distance"] == "genetic") & (corr["control"] == "char_overlap")].iloc[0]
    legend = [t.get_text() for t in panels[5].get_legend().get_texts()]
    assert legend[0].startswith(f"ρ = {row['rho']:+.2f}, Mantel p=")
    assert (
        legend[1]
        == f"partial | char_overlap: ρ = {row['partial_rho']:+.2f}, p={row['partial_p_value']:.3f}"
    )
    assert legend[2].startswith(f"step 0: ρ = {row['rho_step0']:+.2f}")
    # planted: families only after training, so genetic rho is high and step-0 rho is not
    assert row["rho"] > 0.5 and abs(row["rho_step0"]) < row["rho"]
    check_saved(fig, tmp_path, "f2")


def test_f3_quality_points_are_the_analysis_values(sum_data, tmp_path):
    tq = sum_data.frames["task_quality"]
    fig = quality_scatter(tq, sum_data.frames["quality"], families=sum_data.families)
    chrf_ax, loss_ax = fig.axes[:2]
    assert chrf_ax.get_xlabel() == "mean gradient cosine with the other languages"
    assert chrf_ax.get_ylabel() == "chrF (test split, greedy decoding)"
    points = np.concatenate([c.get_offsets() for c in chrf_ax.collections])
    np.testing.assert_allclose(points, tq[["mean_similarity", "chrf"]].to_numpy())
    labels = [t.get_text() for t in chrf_ax.texts]
    assert labels == list(tq["task"])
    rho = sum_data.frames["quality"].set_index("metric").loc["heldout_loss", "rho"]
    assert rho == pytest.approx(-1.0)  # planted: loss = 3 - alignment
    legend = [t.get_text() for t in loss_ax.get_legend().get_texts()]
    assert legend[1].startswith(f"Spearman ρ = {rho:+.2f}, p=")
    check_saved(fig, tmp_path, "f3")


def test_f3_without_quality_names_what_is_missing(synthetic_runs):
    data = collect_run(synthetic_runs["noquality"], n_permutations=PERMS)
    assert "no quality" in data.skipped["f3"]
    tq = analyses.task_quality(
        data.trace, quality=pd.DataFrame(columns=["step", "task", "metric", "value"])
    )
    with pytest.raises(gt.InvalidInputError, match=r"chrf.*quality rows"):
        quality_scatter(tq)


def test_f4_layers_in_model_order_with_family_means(sum_data, tmp_path):
    fig = layer_profile(sum_data.frames["similarity"], sum_data.by_family)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [g for g, _ in GROUPS]
    assert ax.get_xlabel() == "parameter group (model order)"
    lines = {line.get_label(): line for line in ax.get_lines()}
    within = lines["within-family pairs"].get_ydata()
    across = lines["across-family pairs"].get_ydata()
    assert (np.asarray(within) > np.asarray(across)).all()  # planted family term
    assert within[-1] > within[0]  # planted: decoder groups more alike
    check_saved(fig, tmp_path, "f4")


def test_family_means_by_group_by_hand(synthetic_runs):
    trace = gt.open_trace(synthetic_runs["sum"])
    frame = analyses.family_means_by_group(trace, FAMILY, ["decoder.1"])
    cos = trace.cosine("decoder.1")[1:]  # snapshots after step 0
    fam = np.array([FAMILY[t] for t in TASKS])
    iu = np.triu_indices(len(TASKS), 1)
    same = fam[iu[0]] == fam[iu[1]]
    pairs = cos[:, iu[0], iu[1]]
    want = {"within": pairs[:, same].mean(1).mean(), "across": pairs[:, ~same].mean(1).mean()}
    got = frame.set_index("kind")["mean_cosine"]
    assert got["within"] == pytest.approx(want["within"], abs=1e-12)
    assert got["across"] == pytest.approx(want["across"], abs=1e-12)
    assert list(frame["position"]) == [4, 4]


def test_f5_time_and_spread(sum_data, tmp_path):
    traj = sum_data.frames["family_trajectories"]
    fig = similarity_over_time(
        traj, sum_data.spread, sum_data.pairs, settling=sum_data.frames["family_settling"]
    )
    left, right = fig.axes[:2]
    assert left.get_xlabel() == right.get_xlabel() == "training step"
    assert left.get_ylabel() == "gradient cosine"
    within = next(line for line in left.get_lines() if line.get_label().startswith("within"))
    np.testing.assert_allclose(within.get_xdata(), STEPS)
    assert within.get_ydata()[-1] > within.get_ydata()[0] + 0.2  # planted growth
    names = [line.get_label() for line in right.get_lines() if "–" in line.get_label()]
    assert 2 <= len(names) <= 4
    check_saved(fig, tmp_path, "f5")


def test_pair_spread_by_hand(sum_data):
    pairs = analyses.pair_trajectories(sum_data.trace, "all", families=FAMILY)
    spread = analyses.pair_spread(pairs).set_index(["step", "kind"])
    at = pairs[(pairs["step"] == 50) & (pairs["same_family"] == True)]["cosine"]  # noqa: E712
    assert spread.loc[(50, "within"), "q25"] == pytest.approx(np.quantile(at, 0.25))
    assert spread.loc[(50, "within"), "q75"] == pytest.approx(np.quantile(at, 0.75))
    assert len(spread) == 2 * len(STEPS)


def test_f5_needs_two_snapshots():
    one = pd.DataFrame({"step": [0], "kind": ["within"], "mean_cosine": [0.1], "n_pairs": [3]})
    with pytest.raises(gt.InvalidInputError, match="at least 2 snapshots"):
        similarity_over_time(one)


def test_f6_optimizers(synthetic_runs, tmp_path):
    runs = [
        collect_run(synthetic_runs[m], n_permutations=PERMS) for m in ("sum", "pcgrad", "gradvac")
    ]
    comparison = compare_runs(runs)
    assert list(comparison.methods) == ["sum", "pcgrad (all_layer)", "gradvac (all_layer)"]
    # chrF difference by hand from the traces' quality rows
    q = {m: gt.open_trace(synthetic_runs[m]).quality() for m in ("sum", "gradvac")}
    chrf = {m: q[m][q[m].metric == "chrf"].set_index("task")["value"] for m in q}
    delta = comparison.chrf_delta[comparison.chrf_delta["run"] == "gradvac (all_layer)"]
    np.testing.assert_allclose(
        delta.set_index("task")["delta"].loc[TASKS], (chrf["gradvac"] - chrf["sum"]).loc[TASKS]
    )
    # GradVac targets: mean over i != j of the stored EMA
    target = gt.open_trace(synthetic_runs["gradvac"]).array("gradvac_target")
    off = ~np.eye(len(TASKS), dtype=bool)
    t = analyses.gradvac_target_trajectories(runs[2].trace)
    assert len(t) == len(STEPS) * len(GROUPS)
    assert t["mean_target"].iloc[-1] == pytest.approx(target[-1, -1][off].mean(), rel=1e-6)
    assert analyses.gradvac_target_trajectories(runs[1].trace).empty
    fig = figure_f6(comparison)
    ax_q, ax_c, ax_t = fig.axes[:3]
    assert ax_q.get_ylabel() == "chrF − chrF of sum"
    assert [t.get_text() for t in ax_c.get_xticklabels()] == list(comparison.methods)
    assert ax_t.get_title() == "GradVac targets over steps"
    check_saved(fig, tmp_path, "f6")


def test_f6_refuses_a_single_run_or_no_baseline(synthetic_runs):
    sum_run = collect_run(synthetic_runs["sum"], n_permutations=PERMS)
    with pytest.raises(gt.InvalidInputError, match="several runs with different methods"):
        compare_runs([sum_run])
    gv = collect_run(synthetic_runs["gradvac"], n_permutations=PERMS)
    pc = collect_run(synthetic_runs["pcgrad"], n_permutations=PERMS)
    with pytest.raises(gt.InvalidInputError, match="baseline run with method 'sum'"):
        compare_runs([gv, pc])
    with pytest.raises(gt.InvalidInputError, match="F6"):
        optimizer_comparison(
            pd.DataFrame(), pd.DataFrame(), None, methods={"sum": "sum"}, baseline="sum"
        )
    noq = collect_run(synthetic_runs["noquality"], n_permutations=PERMS)
    with pytest.raises(gt.InvalidInputError, match="no 'chrf' quality"):
        analyses.quality_difference({"noq": noq.trace, "gv": gv.trace}, "noq")


def test_empty_run_dir_and_bad_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(gt.TraceError, match="empty"):
        collect_run(tmp_path / "empty")
    with pytest.raises(gt.TraceError, match="no trace"):
        collect_run(tmp_path / "missing")
    with pytest.raises(gt.InvalidInputError, match="allowed: png, pdf, svg"):
        parse_formats("png,jpg")
    assert parse_formats("PNG, pdf,png") == ["png", "pdf"]


def test_complete_tasks_drops_the_task_with_nan():
    m = pd.DataFrame(np.ones((4, 4)), index=list("abcd"), columns=list("abcd"))
    m.loc["c", ["a", "b", "d"]] = np.nan
    m.loc[["a", "b", "d"], "c"] = np.nan
    assert analyses.complete_tasks(m) == ["a", "b", "d"]


def test_tasks_without_iso_codes_still_get_f1_f3_f4_f5(tmp_path):
    from figures import plot_runs

    from .conftest import planted_grams

    grams = planted_grams(STEPS)
    with gt.TraceWriter(tmp_path / "run", TASKS, [(n, s, [n]) for n, s in GROUPS]) as w:
        for s, step in enumerate(STEPS):
            w.write_snapshot(step, grams[s], {t: 1.0 for t in TASKS})
        for i, t in enumerate(TASKS):
            w.write_quality(STEPS[-1], t, "chrf", 10.0 + i)
    result = plot_runs([tmp_path / "run"], tmp_path / "out", n_permutations=PERMS)
    assert sorted(p.name for p in result.paths) == [
        "f1_similarity_heatmap.png", "f3_quality.png", "f4_layers.png", "f5_time.png",
    ]  # fmt: skip
    assert "no ISO 639-3 codes" in result.skipped["run/f2"]
    assert "several runs" in result.skipped["f6"]


def test_strip_colours_differ_between_families_and_scripts():
    from figures._style import CATEGORICAL, categorical_colors

    families = categorical_colors(["a", "b", "c", "d"])
    assert list(families.values()) == CATEGORICAL[:4]
    scripts = categorical_colors(["x", "y", "z", "w"], exclude=families.values())
    assert not set(scripts.values()) & set(families.values())
