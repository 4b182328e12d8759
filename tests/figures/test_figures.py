"""Each figure drawn from ``analyses.RunResults`` of synthetic traces (tests/figures/conftest.py)."""

from __future__ import annotations

import ast
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

import analyses
import geomtrace as gt
from figures import (
    FIGURES,
    draw_comparison,
    draw_run,
    layer_typology,
    parse_formats,
    save_figures,
)

from .conftest import FAMILY, GROUPS, REG_GROUPS, STEPS, TASKS


def png_size(path) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def all_texts(fig) -> str:
    return "\n".join(t.get_text() for t in fig.findobj(lambda o: hasattr(o, "get_text")))


def errorbars(ax) -> list[ErrorbarContainer]:
    return [c for c in ax.containers if isinstance(c, ErrorbarContainer)]


def test_language_run_draws_every_figure_and_saves_them(drawn, tmp_path):
    figs = drawn("sum")
    assert list(figs) == ["f7", "f1", "f2", "f3", "f4", "f5"]
    assert all(isinstance(f, Figure) for f in figs.values()), figs
    paths = save_figures(figs, tmp_path, prefix="sum/")
    names = sorted(p.relative_to(tmp_path).as_posix() for p in paths)
    assert names == sorted(f"sum/{FIGURES[k]}.png" for k in figs)
    svg = save_figures({"f1": figs["f1"]}, tmp_path, formats="svg", dpi=80)
    assert [p.name for p in svg] == ["f1_similarity_heatmap.svg"]
    for p in paths:
        if p.suffix == ".png":
            w, h = png_size(p)
            assert w > 300 and h > 200
    # NotApplicable entries are not files
    assert save_figures({"f2": analyses.NotApplicable("no")}, tmp_path / "x") == []


def test_f1_orders_by_the_tree_and_groups_families(analysed, drawn):
    result, fig = analysed("sum"), drawn("sum")["f1"]
    heat = next(ax for ax in fig.axes if ax.get_xlabel() == "language")
    cols = [t.get_text() for t in heat.get_xticklabels()]
    assert cols == [t.get_text() for t in heat.get_yticklabels()] == result.tree.leaves
    fam = [FAMILY[t] for t in cols]  # the planted families: three contiguous blocks
    assert sum(a != b for a, b in zip(fam, fam[1:], strict=False)) == 2
    mesh = heat.collections[0].get_array().reshape(len(cols), len(cols))
    expected = result.frames["similarity_matrix"].loc[cols, cols].to_numpy()
    off = ~np.eye(len(cols), dtype=bool)
    np.testing.assert_allclose(np.asarray(mesh)[off], expected[off])
    text = all_texts(fig)
    assert {"Indo-European", "Uralic", "Turkic", "Latn", "Cyrl"} <= set(text.split("\n"))
    assert "mean over 10 snapshots, steps 10–100 (step 0 left out)" in " ".join(text.split())


def test_f1_title_fits_at_small_k(drawn):
    fig = drawn("regression")["f1"]
    fig.draw_without_rendering()
    width = fig.bbox.width
    for text in fig.texts:
        if text.get_text().startswith("Gradient similarity between tasks"):
            box = text.get_window_extent()
            assert 0 <= box.x0 and box.x1 <= width, (box, width)
            break
    else:
        raise AssertionError("no F1 title")


def test_f2_boxes_show_interval_p_and_holm(analysed, drawn):
    result, fig = analysed("sum"), drawn("sum")["f2"]
    corr = result.frames["typology"]
    row = corr[(corr["distance"] == "genetic") & (corr["control"] == "char_overlap")].iloc[0]
    panel = next(ax for ax in fig.axes if ax.get_title(loc="left").startswith("genetic"))
    box = panel.get_title(loc="left").split("\n")
    # the run's rho with its (spatial) test, then the noise-removed value with its language
    # interval: the snapshot interval of rho is not drawn (it covers no truth about languages)
    assert box[1] == (
        f"ρ = {row['rho']:+.2f}, spatial p={row['p_value']:.3f}, Holm p={row['p_holm']:.3f}"
    )
    assert box[2].strip() == (
        f"noise-removed {row['rho_disattenuated']:+.2f} [{row['lang_ci_low']:+.2f}, "
        f"{row['lang_ci_high']:+.2f}] (languages)"
    )
    assert box[3].startswith(
        f"partial | character overlap: ρ = {row['partial_rho']:+.2f}, "
        f"p={row['partial_p_value']:.3f}"
    )
    assert box[4].strip().startswith(f"noise-removed {row['partial_disattenuated']:+.2f} [")
    assert box[5].startswith(f"step 0: ρ = {row['rho_step0']:+.2f}")
    # 36 pairs: 36 step-0 crosses, then 9 within- and 27 across-family points
    assert [len(c.get_offsets()) for c in panel.collections] == [36, 9, 27]
    assert row["rho"] > 0.5 and abs(row["rho_step0"]) < row["rho"]  # planted


def test_f3_draws_each_tasks_interval(analysed, drawn):
    result, fig = analysed("sum"), drawn("sum")["f3"]
    tq = result.frames["task_quality"]
    ax = fig.axes[0]
    assert ax.get_ylabel() == "chrF (higher is better)"
    assert fig.axes[1].get_ylabel() == "held-out loss (nats/byte) (lower is better)"
    (bars,) = errorbars(ax)
    segments = bars.lines[2][0].get_segments()
    np.testing.assert_allclose([s[0][0] for s in segments], tq["ci_low"])
    np.testing.assert_allclose([s[1][0] for s in segments], tq["ci_high"])
    points = ax.collections[-1].get_offsets()
    np.testing.assert_allclose(points, tq[["mean_similarity", "chrf"]].to_numpy())
    rows = result.frames["quality"].query("metric == 'heldout_loss'")
    q = rows.iloc[0]
    box = fig.axes[1].get_title(loc="left").split("\n")
    # one partial line per control (character overlap and script)
    for r in rows.itertuples():
        assert any(line.startswith(f"partial | {r.control}: ") for line in box), r.control
    # the task-jackknife interval (calibrated), not the snapshot interval of rho
    assert box[2] == (
        f"Spearman ρ = {q['rho']:+.2f} [{q['lang_ci_low']:+.2f}, {q['lang_ci_high']:+.2f}] "
        "(languages)"
    )


def test_f4_intervals_reliability_and_corrected_mean_with_halves(analysed, drawn):
    result, fig = analysed("halves"), drawn("halves")["f4"]
    top, bottom = fig.axes[:2]
    summary = result.frames["similarity"].set_index("group").loc[[g for g, _ in GROUPS]]
    raw, corrected = errorbars(top)
    np.testing.assert_allclose(raw.lines[0].get_ydata(), summary["mean_cosine"])
    np.testing.assert_allclose(corrected.lines[0].get_ydata(), summary["mean_corrected"])
    low = [s[0][1] for s in raw.lines[2][0].get_segments()]
    np.testing.assert_allclose(low, summary["ci_low"])
    heights = [p.get_height() for p in bottom.patches if p.get_width() == pytest.approx(0.6)]
    np.testing.assert_allclose(heights, summary["reliability"])
    assert bottom.get_ylabel() == "reliability\n(signal fraction)"
    dots = bottom.collections[0].get_offsets()
    assert len(dots) == len(GROUPS) * len(TASKS)
    lines = {line.get_label(): line for line in top.get_lines()}
    within = np.asarray(lines["within-family pairs"].get_ydata())
    across = np.asarray(lines["across-family pairs"].get_ydata())
    assert (within > across).all()  # planted family term
    assert not analysed("halves").warnings  # reliable enough: no warning


def test_f4_of_a_non_language_run_names_tasks_and_no_other_part(drawn):
    fig = drawn("regression")["f4"]
    assert len(fig.axes) == 1  # no halves: no reliability panel
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [g for g, _ in REG_GROUPS]
    assert ax.get_ylabel() == "mean gradient cosine\nover task pairs"
    assert "other" not in [t.get_text() for t in ax.texts]
    assert len(errorbars(ax)) == 1


def test_f5_draws_the_corrected_mean_and_reliability_beside_the_raw_mean():
    """Issue 22: the raw mean's fall is read against reliability (right axis) and the
    noise-corrected mean (dashed)."""
    from figures import similarity_over_time

    steps = [0, 10, 20, 30]
    traj = pd.DataFrame({"step": steps, "kind": "all", "mean_cosine": [0.8, 0.5, 0.4, 0.3]})
    rel = pd.DataFrame(
        {"step": steps, "reliability": [0.95, 0.6, 0.5, 0.4],
         "mean_corrected": [0.8, 0.75, 0.7, 0.72]}
    )  # fmt: skip
    fig = similarity_over_time(traj, reliability=rel)
    left = fig.axes[0]
    dashed = next(ln for ln in left.get_lines() if ln.get_label().endswith("noise-corrected mean"))
    np.testing.assert_allclose(dashed.get_ydata(), rel["mean_corrected"])
    twin = next(ax for ax in fig.axes[1:] if ax.get_ylabel().startswith("reliability"))
    np.testing.assert_allclose(twin.get_lines()[0].get_ydata(), rel["reliability"])
    assert twin.get_ylim() == (0, 1.02)


def test_f5_counts_every_snapshot_and_draws_the_settle_step(analysed, drawn):
    result, fig = analysed("sum"), drawn("sum")["f5"]
    left, right = fig.axes[:2]
    within = next(line for line in left.get_lines() if line.get_label().startswith("within"))
    np.testing.assert_allclose(within.get_xdata(), STEPS)
    text = " ".join(all_texts(fig).split())  # titles are wrapped
    assert f"{len(STEPS)} snapshots, steps 0–100 (step 0: untrained model)" in text
    settle = result.frames["family_settling"].set_index("kind").loc["within"]
    label = next(line.get_label() for line in left.get_lines() if "settles" in line.get_label())
    # the settle step without its (not yet calibrated) pair-bootstrap interval
    assert label == f"within: settles at step {settle['settle_step']:.0f} (exploratory)"
    assert not errorbars(left)
    named = [line.get_label() for line in right.get_lines() if "–" in line.get_label()]
    assert 2 <= len(named) <= 4


def test_f7_cells_are_the_layer_table(analysed, drawn):
    result, fig = analysed("sum"), drawn("sum")["f7"]
    layers = result.frames["layers"]
    raw, partial, ari = fig.axes[:3]
    assert raw.get_title() == "noise-removed ρ"
    assert partial.get_title() == "noise-removed partial ρ | character overlap"
    rows = [t.get_text() for t in raw.get_yticklabels()]
    assert rows == ["whole model", *[g for g, _ in GROUPS]]
    kinds = [t.get_text() for t in raw.get_xticklabels()]
    assert kinds == list(analyses.DISTANCES)
    cell = layers[(layers["group"] == "decoder.1") & (layers["distance"] == "syntactic")].iloc[0]
    texts = {(round(t.get_position()[1] - 0.5), round(t.get_position()[0] - 0.5)): t.get_text()
             for t in partial.texts}  # fmt: skip
    assert texts[(5, 0)].split("\n") == [
        f"{cell['partial_disattenuated']:+.2f}",
        f"[{cell['partial_lang_ci_low']:+.2f}, {cell['partial_lang_ci_high']:+.2f}]",
    ]
    # script beside family and genus, and genus within the largest script (named confound)
    assert [t.get_text() for t in ari.get_xticklabels()] == [
        "family ARI",
        "genus ARI",
        "script ARI",
        "genus within Latn ARI",
    ]
    assert "[95% language-jackknife interval]" in " ".join(all_texts(fig).split())


def test_f7_marks_holm_survivors():
    layers = pd.DataFrame(
        {
            "group": ["all", "all", "enc", "enc"], "position": [-1, -1, 0, 0],
            "distance": ["syntactic", "genetic"] * 2, "control": ["char_overlap"] * 4,
            "rho": [0.5, 0.1, 0.4, 0.0], "ci_low": [0.3, -0.1, 0.2, -0.2],
            "ci_high": [0.7, 0.3, 0.6, 0.2], "p_holm": [0.01, 0.9, 0.2, 1.0],
            "partial_rho": [0.45, 0.05, 0.3, 0.0], "partial_ci_low": [0.2, -0.1, 0.1, -0.2],
            "partial_ci_high": [0.6, 0.2, 0.5, 0.2], "partial_p_holm": [0.03, 1.0, 0.04, 1.0],
        }
    )  # fmt: skip
    fig = layer_typology(layers, warnings=["low reliability: test"])
    raw, partial = fig.axes[:2]
    marked = sorted(t.get_text().split("\n")[0] for t in partial.texts if "✓" in t.get_text())
    assert marked == ["+0.30 ✓", "+0.45 ✓"]
    assert [t.get_text().split("\n")[0] for t in raw.texts if "✓" in t.get_text()] == ["+0.50 ✓"]
    assert "⚠ low reliability: test" in all_texts(fig)


def test_warning_footnote_when_reliability_is_unknown(analysed, drawn):
    warning = analysed("sum").warnings[0]
    assert warning.startswith("reliability unknown")
    for key, fig in drawn("sum").items():
        assert "⚠ reliability unknown" in all_texts(fig), key
    assert "⚠" not in all_texts(drawn("halves")["f1"])


def test_non_language_run_draws_what_it_supports(analysed, drawn):
    result = analysed("regression")
    assert result.description.task_noun == "task"
    figs = drawn("regression")
    assert sorted(k for k, f in figs.items() if isinstance(f, Figure)) == ["f1", "f3", "f4", "f5"]
    for key in ("f2", "f7"):
        assert isinstance(figs[key], analyses.NotApplicable)
        assert "ISO 639-3" in figs[key].reason
    for key, fig in figs.items():
        if isinstance(fig, Figure):
            text = all_texts(fig).lower()
            assert "language" not in text and "chrf" not in text and "nats/byte" not in text, key
    (ax,) = figs["f3"].axes
    assert ax.get_ylabel() == "mse (lower is better)"
    assert ax.get_xlabel().startswith("mean gradient cosine with the other tasks")


def test_chrf_plus_plus_metric_renders(analysed, tmp_path):
    result = analysed("chrfpp", parts=("similarity", "quality"))
    assert result.settings["metric"] == "chrF++"
    fig = draw_run(result)["f3"]
    assert fig.axes[0].get_ylabel() == "chrF++ (higher is better)"
    assert fig.axes[0].get_title(loc="left").startswith("chrF++\nn = 9 languages")
    assert save_figures({"f3": fig}, tmp_path)[0].stat().st_size > 10_000


def test_one_task_and_step0_only_runs_say_what_they_cannot_draw(tmp_path):
    with gt.TraceWriter(tmp_path / "k1", ["only"], [("a", 10, ["a.w"]), ("b", 10, ["b.w"])]) as w:
        for step in (0, 10, 20):
            w.write_snapshot(step, np.ones((2, 1, 1)), {"only": 1.0})
        w.write_quality(20, "only", "mse", 0.5)
    grams = np.random.default_rng(0).normal(size=(2, 4, 8))
    with gt.TraceWriter(tmp_path / "s0", list("abcd"), [("x", 8, ["x"]), ("y", 8, ["y"])]) as w:
        w.write_snapshot(0, grams @ grams.transpose(0, 2, 1), {})
    for name in ("k1", "s0"):
        result = analyses.analyse_run(tmp_path / name, n_permutations=19, n_bootstrap=10)
        figs = draw_run(result)
        assert set(figs) == {"f1", "f2", "f3", "f4", "f5", "f7"}
        for key, fig in figs.items():
            assert isinstance(fig, analyses.NotApplicable), (name, key)
            assert fig.reason, (name, key)
    assert "no snapshot in the step window" in figs["f1"].reason
    assert "1 snapshot" in figs["f5"].reason


def fake_comparison(methods=("sum", "pcgrad (all_layer)", "gradvac (all_layer)"), seeds=(0, 1)):
    """The shape of ``analyses.compare_runs`` (its documented fields) with planted numbers."""
    rng = np.random.default_rng(0)
    names = dict(zip(methods, ["sum", "pcgrad", "gradvac"], strict=True))
    others = list(methods[1:])
    per_task = pd.DataFrame(
        [(m, t, 0.5 * i + rng.normal(0, 0.1), 0.5 * i - 0.4, 0.5 * i + 0.4, len(seeds))
         for i, m in enumerate(others, 1) for t in TASKS],
        columns=["method", "task", "mean_delta", "ci_low", "ci_high", "n_seeds"],
    )  # fmt: skip
    per_method = pd.DataFrame(
        [(m, 0.5 * i, 0.5 * i - 0.2, 0.5 * i + 0.2, len(seeds), len(TASKS), 5 + i)
         for i, m in enumerate(others, 1)],
        columns=["method", "mean_delta", "ci_low", "ci_high", "n_seeds", "n_tasks", "n_better"],
    )  # fmt: skip
    final_pairs = pd.DataFrame(
        [(m, s, a, b, rng.normal(0.1, 0.1)) for m in methods for s in seeds
         for i, a in enumerate(TASKS) for b in TASKS[i + 1:]],
        columns=["method", "seed", "task_a", "task_b", "cosine"],
    )  # fmt: skip
    targets = pd.DataFrame(
        [(methods[-1], s, step, g, 0.2 * (1 - np.exp(-step / 30)), 36)
         for s in seeds for step in STEPS for g, _ in GROUPS],
        columns=["method", "seed", "step", "group", "mean_target", "n_pairs"],
    )  # fmt: skip
    return SimpleNamespace(
        baseline=methods[0], methods=names, metric="chrf", higher_is_better=True,
        deltas=pd.DataFrame(), per_task=per_task, per_method=per_method,
        final_pairs=final_pairs, targets=targets,
    )  # fmt: skip


def test_f6_draws_per_task_intervals_method_means_and_targets():
    comparison = fake_comparison()
    fig = draw_comparison(comparison)
    ax_q, ax_c, ax_t = fig.axes[:3]
    bars = errorbars(ax_q)
    assert len(bars) == 2
    part = comparison.per_task[comparison.per_task["method"] == "gradvac (all_layer)"]
    np.testing.assert_allclose(bars[1].lines[0].get_ydata(), part["mean_delta"])
    low = [s[0][1] for s in bars[1].lines[2][0].get_segments()]
    np.testing.assert_allclose(low, part["ci_low"])
    legend = [t.get_text() for t in ax_q.get_legend().get_texts()]
    assert legend[1] == "gradvac (all_layer): mean +1.00 [+0.80, +1.20], better for 7/9"
    assert ax_q.get_ylabel().startswith("chrF − chrF of sum\n(higher is better")
    assert [t.get_text() for t in ax_c.get_xticklabels()] == list(comparison.methods)
    assert len(ax_t.get_lines()) == 2 * len(GROUPS) + 1  # one per seed and group, plus 0
    assert "2 seeds per method" in all_texts(fig)
    na = analyses.NotApplicable("F6 needs a baseline run")
    assert draw_comparison(na) is na


def test_f6_lower_is_better_metric_is_labelled():
    comparison = fake_comparison()
    comparison.metric, comparison.higher_is_better = "mse", False
    ax_q = draw_comparison(comparison).axes[0]
    assert ax_q.get_ylabel().startswith("mse − mse of sum\n(lower is better")


def test_parse_formats():
    with pytest.raises(gt.InvalidInputError, match="allowed: png, pdf, svg"):
        parse_formats("png,jpg")
    assert parse_formats("PNG, pdf,png") == ["png", "pdf"]


def test_figures_only_use_public_names_and_never_the_recipe():
    root = Path(__file__).resolve().parents[2] / "figures"
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                parts = name.split(".")
                assert not (parts[0] == "geomtrace" and len(parts) > 1), (path.name, name)
                assert not (parts[0] == "analyses" and any(p.startswith("_") for p in parts)), (
                    path.name,
                    name,
                )


def test_f6_from_analyses_compare_runs(analysed, tmp_path):
    parts = ("similarity", "quality", "evolution", "optimizer")
    results = [analysed(m, parts=parts) for m in ("sum", "pcgrad", "gradvac")]
    comparison = analyses.compare_runs(results)
    assert not isinstance(comparison, analyses.NotApplicable), comparison
    fig = draw_comparison(comparison)
    ax_q, ax_c, ax_t = fig.axes[:3]
    assert len(errorbars(ax_q)) == 2
    assert [t.get_text() for t in ax_c.get_xticklabels()] == list(comparison.methods)
    gradvac = comparison.targets
    assert len(ax_t.get_lines()) == gradvac.groupby(["seed", "group"]).ngroups + 1
    assert "1 seed per method" in all_texts(fig)  # one seed: no interval, and it says so
    na = analyses.compare_runs(results[:1])
    assert isinstance(draw_comparison(na), analyses.NotApplicable)
    assert save_figures({"f6": fig}, tmp_path)[0].name == "f6_optimizers.png"


def test_f6_legend_shows_the_baseline_seed_interval_of_a_one_seed_method():
    from figures import optimizer_comparison

    per_task = pd.DataFrame({"method": ["GradVac"] * 2, "task": ["es", "fr"],
                             "mean_delta": [0.5, 0.7], "ci_low": [np.nan] * 2,
                             "ci_high": [np.nan] * 2, "n_seeds": [1, 1]})  # fmt: skip
    per_method = pd.DataFrame({"method": ["GradVac"], "mean_delta": [0.6], "ci_low": [np.nan],
                               "ci_high": [np.nan], "n_seeds": [1], "n_tasks": [2],
                               "n_better": [2], "ref_ci_low": [-0.41], "ref_ci_high": [1.61]})  # fmt: skip
    pairs = pd.DataFrame({"method": ["GradVac"], "seed": [0], "task_a": ["es"], "task_b": ["fr"],
                          "cosine": [0.5]})  # fmt: skip
    fig = optimizer_comparison(per_task, per_method, pairs, None,
                               methods={"sum": "sum", "GradVac": "gradvac"}, baseline="sum",
                               metric="chrf")  # fmt: skip
    text = " ".join(all_texts(fig).split())
    assert "mean +0.60, [-0.41, +1.61] with the baseline seeds' noise" in text
