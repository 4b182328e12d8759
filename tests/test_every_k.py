"""Every task count from 1 to 12 goes through trace, analyze, report and group (issue 19).

The embedded recipe at toy size (one layer each side, d_model 16, 4 steps, snapshots at steps
0, 2 and 4) for K = 1 .. 12 languages, seeded. What each command can do depends on K (no
pairs at K = 1, no Mantel test below 4 languages): it must say so and exit 0, never raise.
"""

import json

import pytest

from cli import main

LANGS = ["es", "fr", "de", "ru", "ja", "it", "pt", "nl", "sv", "pl", "fi", "tr"]
TOY = [
    "--steps", "4", "--every", "2", "--seed", "0", "--groups", "enc_dec",
    "--set", "d_model=16", "--set", "nhead=2", "--set", "d_ff=32", "--set", "enc_layers=1",
    "--set", "dec_layers=1", "--set", "snapshot_rows=4", "--set", "eval_batch=64",
    "--set", "max_bytes=24",
]  # fmt: skip
QUICK = ["--permutations", "19", "--bootstrap", "20"]


# Every K from 1 to 12, including 5, 6, 7, 9, 10 and 11 where the float32 Gram B @ B.T was not
# bit-symmetric before issue 19's defect 1 was fixed (symmetrised where the Gram is formed).
@pytest.mark.slow
@pytest.mark.parametrize("k", range(1, 13))
def test_trace_analyze_report_group_for_every_task_count(k, tmp_path, capsys):
    run = tmp_path / f"k{k}"
    argv = ["trace", "--langs", ",".join(LANGS[:k]), "--runs-dir", str(tmp_path)]
    assert main([*argv, "--name", f"k{k}", *TOY]) == 0
    capsys.readouterr()
    assert main(["analyze", str(run), "--json", str(tmp_path / "a.json"), *QUICK]) == 0, (
        capsys.readouterr().err
    )
    result = json.loads((tmp_path / "a.json").read_text())
    assert result["tasks"] == LANGS[:k] and result["description"]["n_snapshots"] == 3
    if k >= 3:  # a tree needs three tasks; its flat clusters cover every task once
        flat = result["clustering_tree"]["flat"]["clusters"]
        assert sorted(t for c in flat for t in c) == sorted(LANGS[:k])
    else:
        assert result["clustering_tree"] is None and "clustering" in result["not_applicable"]
    if k >= 4:
        assert "typology" in result["results"]
    else:
        assert "typology" in result["not_applicable"]
    assert main(["report", str(run), "--out", str(tmp_path / "r.html"), *QUICK]) == 0
    assert (tmp_path / "r.html").stat().st_size > 1000
    groups = min(k, 2)
    out = tmp_path / "g.json"
    assert (
        main(["group", str(run), "--k", str(groups), "--bootstrap", "5", "--json", str(out)]) == 0
    )
    grouping = json.loads(out.read_text())
    assert sorted(t for g in grouping["groups"] for t in g) == sorted(LANGS[:k])
    assert len(grouping["groups"]) == groups
