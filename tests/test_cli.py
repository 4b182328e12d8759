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
    payload = json.loads(out.read_text())
    assert sorted(payload["groups"]) == [["head0", "head1", "head2"], ["head3", "head4", "head5"]]
    assert main(["group", str(tmp_path), "--k", "9"]) == 2
    assert "between 1 and 6" in capsys.readouterr().err
