"""Models with per-task heads (issue 19): task-specific groups said once, clusters in the JSON."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import geomtrace as gt
from analyses._flat_clusters import flat_clusters, silhouette
from analyses._task_specific import task_specific_groups
from cli import main

ROOT = Path(__file__).resolve().parents[2]


def _heads_trace(path, steps=(0, 10, 20)):
    """Three tasks; 'trunk' shared, 'head.a' only a's gradient, 'odd' zero for c once only."""
    rng = np.random.default_rng(0)
    tasks = ["a", "b", "c"]
    groups = [("trunk", 8, ["t"]), ("head.a", 2, ["h"]), ("odd", 4, ["o"])]
    with gt.TraceWriter(path, tasks, groups) as w:
        for n, step in enumerate(steps):
            trunk = rng.normal(size=(3, 8))
            head = np.zeros((3, 2))
            head[0] = rng.normal(size=2)
            odd = rng.normal(size=(3, 4))
            if n == 0:
                odd[2] = 0.0  # one zero gradient, not a per-task head
            w.write_snapshot(step, np.stack([g @ g.T for g in (trunk, head, odd)]), None)
    return tasks


def test_task_specific_groups_are_found_from_exact_zeros(tmp_path):
    _heads_trace(tmp_path)
    frame = task_specific_groups(gt.open_trace(tmp_path))
    assert frame.to_dict("records") == [{"group": "head.a", "task": "a", "n_snapshots": 3}]


def test_analyze_leaves_task_specific_groups_out_and_says_so_once(tmp_path, capsys):
    from analyses import analyse_run

    _heads_trace(tmp_path)
    result = analyse_run(tmp_path, n_permutations=19, n_bootstrap=20)
    assert list(result.frames["similarity"]["group"]) == ["all", "trunk", "odd"]
    assert result.settings["groups"] == ["all", "trunk", "odd"]
    assert sum("task-specific" in n for n in result.notes) == 1
    kept = analyse_run(tmp_path, n_permutations=19, n_bootstrap=20, keep_task_specific=True)
    assert list(kept.frames["similarity"]["group"]) == ["all", "trunk", "head.a", "odd"]
    assert main(["analyze", str(tmp_path), "--permutations", "19", "--bootstrap", "20"]) == 0
    out = capsys.readouterr()
    lines = [ln for ln in (out.out + out.err).splitlines() if "task-specific" in ln]
    assert len(lines) == 1 and "head.a (a)" in lines[0]
    assert "\nhead.a " not in out.out  # no row of dashes for the head


def test_silhouette_and_flat_clusters_on_planted_blocks():
    from analyses import cluster_tasks

    # two blocks of three: cos 0.8 within, -0.2 across
    blocks = np.repeat([0, 1], 3)
    sim = np.where(blocks[:, None] == blocks[None, :], 0.8, -0.2)
    np.fill_diagonal(sim, 1.0)
    tasks = [f"t{i}" for i in range(6)]
    flat = flat_clusters(cluster_tasks(sim, tasks), sim)
    assert sorted(map(sorted, flat["clusters"])) == [["t0", "t1", "t2"], ["t3", "t4", "t5"]]
    # a = 0.2 (distance within), b = 1.2 (across): s = (1.2 - 0.2) / 1.2 for every task
    assert flat["silhouette"] == pytest.approx(1.0 / 1.2)
    d = 1.0 - sim
    # t3, t4: a = 0.2 and the nearest other cluster is t5 at 0.2, so s = 0; t5 alone: s = 0
    assert silhouette(d, np.array([0, 0, 0, 1, 1, 2])) == pytest.approx(3 * (1.0 / 1.2) / 6)
    # no structure (every pair alike): one cluster, no silhouette
    flat = flat_clusters(cluster_tasks(np.full((4, 4), 0.5), tasks[:4]), np.full((4, 4), 0.5))
    assert flat["n_clusters"] == 1 and flat["silhouette"] is None


def test_python_api_heads_trace_logs_one_line_about_task_specific_groups(tmp_path, caplog):
    from examples.multi_head_regression import TrunkWithHeads

    tasks = [f"head{i}" for i in range(6)]
    torch.manual_seed(0)
    model = TrunkWithHeads(6, 8)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    with caplog.at_level(logging.INFO, logger="geomtrace"):
        with gt.Tracer(model, tasks, groups="all_layer", out=tmp_path) as tracer:
            for step in range(4):
                with tracer.step(step) as s:
                    for i, t in enumerate(tasks):
                        s.backward(t, model(x, i).pow(2).mean())
    messages = [r.getMessage() for r in caplog.records]
    assert sum("task-specific" in m for m in messages) == 1, messages
    assert not any("zero gradient" in m or "over the run" in m for m in messages), messages
    assert tracer.zero_norm_warnings == 4 * 6 * 5  # still counted: (snapshot, head, task)


@pytest.fixture
def on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # examples/ is a folder, not an installed package


def test_a_six_head_model_goes_through_every_command(tmp_path, capsys, caplog, on_path):
    recipe = "examples.multi_head_regression:make_recipe"
    quick = ["--permutations", "19", "--bootstrap", "20"]
    logging.getLogger("geomtrace").setLevel(logging.INFO)
    outputs = {}

    def run(name, argv):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            assert main(argv) == 0, argv
        out = capsys.readouterr()
        outputs[name] = out.out + out.err + "\n".join(r.getMessage() for r in caplog.records)

    run("trace", ["trace", "--recipe", recipe, "--steps", "20", "--every", "5", "--groups",
                  "all_layer", "--runs-dir", str(tmp_path), "--name", "heads", "--set",
                  "snapshot_rows=48"])  # fmt: skip
    runs = tmp_path / "heads"
    run("inspect", ["inspect", str(runs)])
    run("analyze", ["analyze", str(runs), "--json", str(tmp_path / "a.json"), *quick])
    run("report", ["report", str(runs), "--out", str(tmp_path / "r.html"), *quick])
    run("plot", ["plot", str(runs), "--out", str(tmp_path / "figs"), *quick])
    run("group", ["group", str(runs), "--k", "3", "--bootstrap", "20"])
    for name, text in outputs.items():
        lines = [ln for ln in text.splitlines() if "task-specific" in ln]
        assert len(lines) <= 1, (name, lines)
        assert "zero gradient" not in text and "language" not in text.lower(), (name, text)
    assert "  heads.0 " not in outputs["inspect"] and "  trunk.0 " in outputs["inspect"]
    payload = json.loads((tmp_path / "a.json").read_text())
    flat = payload["clustering_tree"]["flat"]
    # paired heads (same target direction, same initial head) cluster together
    assert sorted(map(sorted, flat["clusters"])) == [
        ["head0", "head1"],
        ["head2", "head3"],
        ["head4", "head5"],
    ]
    assert "flat clusters (3" in outputs["analyze"]
    specific = payload["results"]["task_specific_groups"]
    assert [(r["group"], r["task"]) for r in specific] == [
        (f"heads.{i}", f"head{i}") for i in range(6)
    ]
    import html
    import re

    page = html.unescape(re.sub(r"<[^>]+>|data:[^\"']+", " ", (tmp_path / "r.html").read_text()))
    assert "language" not in page.lower() and page.count("task-specific group") == 1
    assert "{head0 head1}" in page or "{head1 head0}" in page
    assert {"f1_similarity_heatmap.png", "f4_layers.png"} <= {
        p.name for p in (tmp_path / "figs").iterdir()
    }


def test_a_task_without_gradient_anywhere_is_not_a_head(tmp_path):
    # c's gradient is zero in both groups (a zero loss): a fault to warn about, not a head
    rng = np.random.default_rng(1)
    with gt.TraceWriter(tmp_path, ["a", "b", "c"], [("g1", 4, ["x"]), ("g2", 4, ["y"])]) as w:
        for step in (0, 10):
            x, y = rng.normal(size=(3, 4)), np.zeros((3, 4))
            x[2] = 0.0
            y[0] = rng.normal(size=4)
            w.write_snapshot(step, np.stack([x @ x.T, y @ y.T]), None)
    assert task_specific_groups(gt.open_trace(tmp_path)).empty
