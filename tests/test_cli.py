import json

import numpy as np
import pytest

import geomtrace as gt
from cli import main


def _trace(path):
    with gt.TraceWriter(
        path, ["es", "fr", "ja"], [("enc", 4, ["a"]), ("dec", 2, ["b"])], iso_codes={"es": "spa"}
    ) as w:
        for step in (0, 5):
            gram = np.stack([np.array([[1.0, 0.5, -0.5], [0.5, 1.0, 0.0], [-0.5, 0.0, 1.0]])] * 2)
            w.write_snapshot(step, gram * (step + 1), {"es": 1.0})


def test_inspect_prints_tasks_groups_and_mean_cosine(tmp_path, capsys):
    _trace(tmp_path)
    assert main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "es (spa), fr, ja" in out and "snapshots  2, steps 0..5" in out
    # Step 5 only (step 0 is the untrained baseline): (0.5 - 0.5 + 0) / 3 pairs.
    assert "mean similarity +0.000" in out
    assert main(["inspect", str(tmp_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    enc = summary["groups"][1]
    assert (enc["group"], enc["numel"], enc["params"]) == ("enc", 4, 1)
    assert enc["mean_similarity"] == pytest.approx(0.0, abs=1e-7)
    assert summary["groups"][0]["group"] == "all" and summary["groups"][0]["numel"] == 6
    assert summary["steps"] == [0, 5]
    # One JSON convention: --json FILE writes the file, --json / --json - print.
    assert main(["inspect", str(tmp_path), "--json", str(tmp_path / "i.json")]) == 0
    assert json.loads((tmp_path / "i.json").read_text()) == summary


def test_user_errors_exit_2_with_one_line_and_no_traceback(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("geomtrace: error: no trace at") and "Traceback" not in err


def test_help_explains_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "inspect" in capsys.readouterr().out


def test_group_command_prints_groups_and_writes_json(tmp_path, capsys):
    rng = np.random.default_rng(0)
    clusters = np.repeat([0, 1], 3)
    centers = rng.normal(size=(2, 32))
    tasks = [f"head{i}" for i in range(6)]  # a multi-task run: no ISO codes
    with gt.TraceWriter(tmp_path, tasks, [("body", 32, ["w"])], config={"lr": 0.1}) as w:
        for step in range(0, 101, 10):
            g = centers[clusters] + 0.5 * rng.normal(size=(6, 32))
            w.write_snapshot(step, (g @ g.T)[None], {t: 1.0 for t in tasks})
    out = tmp_path / "g.json"
    assert main(["group", str(tmp_path), "--k", "2", "--bootstrap", "20", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "group 1: head0 head1 head2" in text and "exact search" in text
    # scored out of sample too: chosen on half the snapshots, scored on the other half
    assert "fit on snapshots at steps 10 30 50 70 90, scored on snapshots at steps 20 40" in text
    assert "in sample (on the matrix the grouping maximised" in text
    payload = json.loads(out.read_text())
    assert [r["retained"] for r in payload["holdout"]] == [1.0, 1.0]
    assert sorted(payload["groups"]) == [["head0", "head1", "head2"], ["head3", "head4", "head5"]]
    assert main(["group", str(tmp_path), "--k", "9"]) == 2
    assert "between 1 and 6" in capsys.readouterr().err


def _regression_run(path):
    """A multi-task run that is not translation: six regression heads, metric mse, no ISO."""
    rng = np.random.default_rng(1)
    tasks = [f"reg{i}" for i in range(6)]
    groups = [("trunk.0", 16, ["t0"]), ("trunk.1", 16, ["t1"]), ("heads", 12, ["h"])]
    centers = rng.normal(size=(3, 2, 16))
    with gt.TraceWriter(path, tasks, groups, config={"method": "sum", "seed": 0}) as w:
        for step in range(0, 61, 10):
            grams = []
            for g, (_, size, _) in enumerate(groups):
                c = centers[g % 3, np.arange(6) % 2, :size]
                x = c + rng.normal(size=(6, size))
                grams.append(x @ x.T)
            w.write_snapshot(step, np.stack(grams), {t: 1.0 / (1 + step) for t in tasks})
        for i, t in enumerate(tasks):
            w.write_quality(60, t, "mse", 0.5 + 0.1 * i)
    return tasks


def test_a_regression_run_goes_through_every_command_with_the_same_numbers(tmp_path, capsys):
    from analyses import analyse_run

    run = tmp_path / "regression"
    _regression_run(run)
    assert main(["inspect", str(run), "--json", str(tmp_path / "inspect.json")]) == 0
    inspected = json.loads((tmp_path / "inspect.json").read_text())
    assert main(["analyze", str(run), "--json", str(tmp_path / "analyze.json"),
                 "--permutations", "99", "--bootstrap", "50"]) == 0  # fmt: skip
    analyzed = json.loads((tmp_path / "analyze.json").read_text())
    capsys.readouterr()
    assert main(["plot", str(run), "--out", str(tmp_path / "figs"), "--permutations", "99",
                 "--bootstrap", "50"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    drawn = {p.name for p in (tmp_path / "figs").iterdir()}
    assert {"f1_similarity_heatmap.png", "f3_quality.png", "f4_layers.png", "f5_time.png"} <= drawn
    assert "f2_typology.png" not in drawn and "f7_layer_typology.png" not in drawn
    assert "not drawn f2" in captured.err
    report = tmp_path / "report.html"
    assert main(["report", str(run), "--out", str(report), "--permutations", "99",
                 "--bootstrap", "50"]) == 0  # fmt: skip
    import html
    import re

    text = html.unescape(re.sub(r"<[^>]+>|data:[^\"']+", " ", report.read_text()))
    assert "language" not in text.lower() and "chrf" not in text.lower()
    # One number, one definition: the whole-model mean similarity everywhere.
    mean = inspected["groups"][0]["mean_similarity"]
    assert analyzed["headline"]["mean_similarity"] == pytest.approx(mean)
    summary = analyse_run(run, parts=["similarity", "quality"]).summary_text()  # `trace` prints it
    assert f"{mean:+.2f}" in summary and f"{mean:.3f}" in text
    assert analyzed["description"]["task_noun"] == "task" and "mse" in summary


def test_output_paths_and_counts_are_checked_before_any_work(tmp_path, capsys):
    _trace(tmp_path / "run")
    (tmp_path / "file").write_text("x")
    cases = [
        (["analyze", str(tmp_path / "run"), "--permutations", "0"], "--permutations 0"),
        (["analyze", str(tmp_path / "run"), "--json", str(tmp_path)], "is a directory"),
        (["plot", str(tmp_path / "run"), "--out", str(tmp_path / "file")], "not a directory"),
        (["plot", str(tmp_path / "run"), "--out", str(tmp_path / "p"), "--dpi", "0"], "--dpi 0"),
        (["report", str(tmp_path / "run"), "--out", str(tmp_path)], "is a directory"),
        (["reproduce", "--out", str(tmp_path / "file")], "not a directory"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)


def test_trace_help_names_the_current_default_languages(capsys):
    # the help once listed the previous default's 24 languages after the default changed
    from geomtrace.recipe import DEFAULT_LANGUAGES, RecipeConfig

    with pytest.raises(SystemExit):
        main(["trace", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "default: " + " ".join(DEFAULT_LANGUAGES) in help_text
    assert list(DEFAULT_LANGUAGES) == RecipeConfig().langs
