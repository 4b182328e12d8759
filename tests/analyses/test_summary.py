import json

import numpy as np
import pytest

import cli
import geomtrace as gt
from analyses import PARTS, summary


def test_summary_on_a_planted_trace(tmp_path, planted_trace, planted_families):
    tasks = planted_trace(tmp_path / "run")
    trace = gt.open_trace(tmp_path / "run")
    result = summary(trace, n_permutations=499, seed=0)
    assert result.skipped == {}
    assert set(result.frames) == set(PARTS)
    assert result.group == "all" and result.tasks == tasks

    sim = result.frames["similarity"].set_index("group")
    assert list(sim.index) == ["all", "encoder.0", "decoder.0"]
    assert (sim["n_steps"] == 10).all()  # steps 10..100: step 0 left out by default

    fam = result.frames["families"].set_index("task")
    assert {t: fam.loc[t, "family"] for t in tasks} == {
        f"{c}-en": f for c, f in planted_families.items()
    }

    assert result.frames["clustering"]["level"].tolist() == ["family"] * 3 + ["genus"] * 3
    genus = result.frames["clustering"].query("level == 'genus'").set_index("statistic")
    # Italic, Germanic, Finnic, Uralic (hun: depth 1), Common Turkic, South/Central Dravidian.
    assert genus.loc["ari", "n_families"] == 7
    clustering = result.frames["clustering"].query("level == 'family'").set_index("statistic")
    assert clustering.loc["ari", "value"] == pytest.approx(1.0)
    assert clustering.loc["ari", "p_value"] == pytest.approx(1 / 500)
    assert clustering.loc["nn_same_family", "value"] == 1.0

    typ = result.frames["typology"]
    genetic = typ[(typ.distance == "genetic") & (typ.control == "char_overlap")].iloc[0]
    assert genetic["rho"] > 0.5 and genetic["p_value"] < 0.01
    assert abs(genetic["rho_step0"]) < 0.3  # no structure planted at step 0
    assert set(typ["control"]) == {"char_overlap", "script"}
    assert set(typ["distance"]) == {
        "syntactic", "phonological", "inventory", "geographic", "featural", "genetic",
        "char_overlap", "script",
    }  # fmt: skip

    quality = result.frames["quality"].set_index("metric")
    assert set(quality.index) == {"chrf", "heldout_loss"}
    assert quality.loc["chrf", "rho"] == pytest.approx(-quality.loc["heldout_loss", "rho"])
    assert quality.loc["chrf", "control"] == "char_overlap"

    settle = result.frames["family_settling"].set_index("kind")
    assert settle.loc["within", "final_value"] > 0.5
    assert settle.loc["within", "settle_step"] == 10  # jumps at the first trained snapshot
    assert abs(settle.loc["across", "final_value"]) < 0.1

    payload = json.loads(json.dumps(result.to_dict()))
    assert payload["results"]["similarity_matrix"]["tasks"] == tasks
    assert payload["skipped"] == {}
    text = result.to_text()
    assert "== clustering" in text and "== typology" in text and "== skipped" not in text
    # Same seed: identical numbers.
    again = summary(trace, n_permutations=499, seed=0)
    assert json.dumps(again.to_dict()) == json.dumps(result.to_dict())


def test_summary_degrades_with_reasons(tmp_path, planted_trace):
    planted_trace(tmp_path / "bare", iso=False, quality=False, meta=False)
    result = summary(gt.open_trace(tmp_path / "bare"), n_permutations=99)
    for part in ("families", "clustering", "typology", "family_trajectories", "family_settling"):
        assert "ISO 639-3" in result.skipped[part]
    assert "quality" in result.skipped["quality"] and "task_quality" in result.skipped
    assert {"similarity", "task_alignment", "similarity_matrix", "group_trajectories"} <= set(
        result.frames
    )
    assert "== skipped" in result.to_text()

    planted_trace(tmp_path / "step0", steps=(0,), meta=False)
    only0 = summary(gt.open_trace(tmp_path / "step0"), n_permutations=99)
    assert "after step 0" in only0.skipped["similarity"]
    assert "group_trajectories" in only0.frames  # step 0 is still a trajectory point


def test_summary_excludes_a_task_that_was_never_traced(tmp_path, planted_trace):
    planted_trace(tmp_path / "run", absent="hun-en")
    result = summary(gt.open_trace(tmp_path / "run"), n_permutations=99)
    assert result.skipped == {}
    assert np.isnan(result.frames["similarity_matrix"].loc["hun-en", "fin-en"])
    clustering = result.frames["clustering"]
    assert (clustering["n_tasks"] == 11).all()
    assert all("left out (missing similarity): hun-en" in n for n in clustering["note"])
    typ = result.frames["typology"]
    assert (typ["n_languages"] == 11).all()
    assert (typ["excluded"] == "hun-en (missing similarity)").all()
    sim = result.frames["similarity"].set_index("group")
    assert sim.loc["all", "n_missing"] == 10 * 11  # 11 pairs with hun-en at 10 snapshots
    quality = result.frames["quality"].set_index("metric")
    assert quality.loc["chrf", "n_tasks"] == 11
    assert quality.loc["chrf", "excluded"] == "hun-en (missing value)"


def test_cli_typology(capsys):
    assert (
        cli.main(["typology", "fra", "deu", "rus", "jpn", "--distance", "genetic", "--json"]) == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["languages"] == ["fra", "deu", "rus", "jpn"]
    g = np.array(out["distances"]["genetic"])
    assert g.shape == (4, 4) and np.all(np.diag(g) == 0) and g[0, 3] == 1.0
    assert [f["family"] for f in out["families"]] == ["Indo-European"] * 3 + ["Japonic"]
    assert cli.main(["typology", "fra", "deu", "--distance", "geographic"]) == 0
    text = capsys.readouterr().out
    assert "geographic distance (km)" in text and "Indo-European" in text
    assert cli.main(["typology", "fra", "frx"]) == 2
    assert "unknown ISO 639-3" in capsys.readouterr().err


def test_cli_analyze(tmp_path, planted_trace, capsys):
    planted_trace(tmp_path / "run")
    out_json = tmp_path / "res.json"
    code = cli.main(
        [
            "analyze",
            str(tmp_path / "run"),
            "--group",
            "decoder.0",
            "--json",
            str(out_json),
            "--permutations",
            "99",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "group decoder.0" in text and "== typology" in text
    payload = json.loads(out_json.read_text())
    assert payload["group"] == "decoder.0" and payload["settings"]["n_permutations"] == 99
    assert payload["results"]["task_alignment"][0]["group"] == "decoder.0"
    assert cli.main(["analyze", str(tmp_path / "missing")]) == 2
    assert "no trace" in capsys.readouterr().err
    assert cli.main(["analyze", str(tmp_path / "run"), "--group", "mlp"]) == 2
    assert "unknown group 'mlp'" in capsys.readouterr().err
