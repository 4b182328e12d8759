import json

import numpy as np
import pytest

import cli
import geomtrace as gt
from analyses import PRIMARY_TESTS, NotApplicable, analyse_run


def test_results_on_a_planted_trace(tmp_path, planted_trace, planted_families):
    tasks = planted_trace(tmp_path / "run")
    trace = gt.open_trace(tmp_path / "run")
    result = analyse_run(trace, n_permutations=499, n_bootstrap=200, seed=0)
    # A sum run without halves: only the reliability and optimizer parts do not apply.
    assert set(result.not_applicable) == {"reliability", "gradvac_targets", "gradvac_tracking"}
    assert isinstance(result.frame("reliability"), NotApplicable)
    assert "halves" in str(result.frame("reliability"))
    assert any("reliability unknown" in w for w in result.warnings)
    assert result.group == "all" and result.tasks == tasks
    assert result.description.task_noun == "language"
    assert result.description.metrics == ["chrf", "heldout_loss"]

    sim = result.frames["similarity"].set_index("group")
    assert list(sim.index) == ["all", "encoder.0", "decoder.0"]
    assert (sim["n_steps"] == 10).all()  # steps 10..100: step 0 left out by default

    fam = result.frames["families"].set_index("task")
    assert {t: fam.loc[t, "family"] for t in tasks} == {
        f"{c}-en": f for c, f in planted_families.items()
    }

    # Script beside family and genus (a named confound), and genus within the largest script.
    assert result.frames["clustering"]["level"].tolist() == (
        ["family"] * 3 + ["genus"] * 3 + ["script"] * 3 + ["genus within Latn"] * 3
    )
    within = result.frames["clustering"].query("level == 'genus within Latn'")
    assert (within["n_tasks"] == 10).all()  # the 10 Latin-script planted languages
    # the same levels per group in the layer table's agreement (no cophenetic row there)
    per_group = result.frames["layer_clustering"].query("group == 'encoder.0'")
    assert per_group["level"].tolist() == (
        ["family"] * 2 + ["genus"] * 2 + ["script"] * 2 + ["genus within Latn"] * 2
    )
    # Every statistic has its interval, and it contains the point estimate.
    for name in ("clustering", "typology", "quality"):
        frame = result.frames[name]
        value = frame["value"] if "value" in frame else frame["rho"]
        ok = value.notna() & frame["ci_low"].notna()
        assert ok.any()
        assert (
            (frame["ci_low"][ok] <= value[ok] + 1e-9) & (value[ok] <= frame["ci_high"][ok] + 1e-9)
        ).all()
    genus = result.frames["clustering"].query("level == 'genus'").set_index("statistic")
    # Italic, Germanic, Finnic, Uralic (hun: depth 1), Common Turkic, South/Central Dravidian.
    assert genus.loc["ari", "n_families"] == 7
    clustering = result.frames["clustering"].query("level == 'family'").set_index("statistic")
    assert clustering.loc["ari", "value"] == pytest.approx(1.0)
    assert clustering.loc["ari", "p_value"] == pytest.approx(1 / 500)
    assert clustering.loc["nn_same_family", "value"] == 1.0

    typ = result.frames["typology"]
    genetic = typ[(typ.distance == "genetic") & (typ.control == "char_overlap")].iloc[0]
    assert genetic["rho"] > 0.5 and genetic["p_mantel"] < 0.01
    # The reported p comes from geography-preserving surrogates: the planted families are
    # also geographic clusters (12 languages), so part of the evidence the exchangeable
    # Mantel counts is shared autocorrelation, and the calibrated p is larger.
    assert genetic["test"] == "spatial" and genetic["p_value"] > genetic["p_mantel"]
    assert abs(genetic["rho_step0"]) < 0.3  # no structure planted at step 0
    assert set(typ["control"]) == {"char_overlap", "script"}
    assert set(typ["distance"]) == {
        "syntactic", "phonological", "inventory", "geographic", "featural", "genetic",
        "char_overlap", "script",
    }  # fmt: skip

    # One quality row per (metric, control), the raw rho repeated on each, tested once.
    frame = result.frames["quality"]
    assert list(zip(frame["metric"], frame["control"], strict=True)) == [
        ("chrf", "char_overlap"), ("chrf", "script"),
        ("heldout_loss", "char_overlap"), ("heldout_loss", "script"),
    ]  # fmt: skip
    quality = frame.drop_duplicates("metric").set_index("metric")
    assert quality.loc["chrf", "rho"] == pytest.approx(-quality.loc["heldout_loss", "rho"])
    assert frame.groupby("metric")["rho"].nunique().eq(1).all()
    quality_tests = result.frames["tests"].query("table == 'quality'")["test"]
    assert sorted(quality_tests) == sorted(
        [f"{m}: rho" for m in ("chrf", "heldout_loss")]
        + [f"{m} | {c}: partial rho" for m in ("chrf", "heldout_loss")
           for c in ("char_overlap", "script")]
    )  # fmt: skip

    settle = result.frames["family_settling"].set_index("kind")
    assert settle.loc["within", "final_value"] > 0.5
    assert settle.loc["within", "settle_step"] == 10  # jumps at the first trained snapshot
    assert settle.loc["within", "settle_ci_low"] <= 10 <= settle.loc["within", "settle_ci_high"]
    assert abs(settle.loc["across", "final_value"]) < 0.1

    # The layer table: one row per (group, distance) with the character-overlap control.
    layers = result.frames["layers"]
    assert set(layers["group"]) == {"all", "encoder.0", "decoder.0"}
    assert (layers["control"] == "char_overlap").all()
    assert len(layers) == 3 * 6
    # ... and script as the second control of every group's partials, in its own frame
    by_script = result.frames["layers_script"]
    assert (by_script["control"] == "script").all() and len(by_script) == 3 * 6
    assert list(by_script["partial_rho"]) != list(layers["partial_rho"])
    # Tests are counted per table and Holm-adjusted p-values are never below the raw ones.
    tests = result.frames["tests"]
    assert set(tests["table"]) >= {"typology", "layers", "clustering", "quality"}
    assert (tests["p_holm"] >= tests["p_value"] - 1e-12).all()
    n = tests.groupby("table")["n_tests"].first()
    assert (tests.groupby("table").size() == n).all()
    script_tests = tests[tests["table"] == "layers_script"]
    assert len(script_tests) == 3 * 6
    # the whole model's rows repeat the typology table's: counted once, there
    assert (script_tests[script_tests["test"].str.startswith("all ")]["role"] == "repeat").all()
    # Declared primaries (Holm across them), the layer table's repeats of the typology rows,
    # and a false-discovery q for every other test, each counted once.
    primary = tests[tests["role"] == "primary"]
    assert set(primary["test"]) == {t for table, t in PRIMARY_TESTS}
    assert (primary["p_primary"] >= primary["p_value"] - 1e-12).all()
    repeats = tests[tests["role"] == "repeat"]
    assert len(repeats) and set(repeats["table"]) == {"layers", "layers_script"}
    assert set(repeats["test"]) <= set(tests.loc[tests["table"] == "typology", "test"])
    explore = tests[tests["role"] == "exploratory"]
    assert (
        explore["q_fdr"].notna().all()
        and tests.loc[~(tests["role"] == "exploratory"), "q_fdr"].isna().all()
    )
    assert "== primary tests" in result.to_text().split("== similarity")[0]

    payload = json.loads(json.dumps(result.to_dict()))
    assert payload["results"]["similarity_matrix"]["tasks"] == tasks
    assert payload["headline"]["mean_similarity"] == pytest.approx(
        result.frames["similarity"].iloc[0]["mean_cosine"]
    )
    text = result.to_text()
    assert "== clustering" in text and "== typology" in text and "== where the language" in text
    # Same seed: identical numbers.
    again = analyse_run(trace, n_permutations=499, n_bootstrap=200, seed=0)
    assert json.dumps(again.to_dict()) == json.dumps(result.to_dict())


def test_results_say_what_does_not_apply(tmp_path, planted_trace):
    planted_trace(tmp_path / "bare", iso=False, quality=False, meta=False)
    result = analyse_run(gt.open_trace(tmp_path / "bare"), n_permutations=99, n_bootstrap=50)
    assert result.description.task_noun == "task"
    for part in ("typology", "layers", "family_trajectories"):
        assert "ISO 639-3" in result.not_applicable[part]
    # Clustering needs no labels: the tree is there, only the family agreement is not.
    assert result.tree is not None and len(result.tree.tasks) == 12
    assert "family labels" in result.not_applicable["clustering"]
    assert "quality" in result.not_applicable["quality"]
    assert {"similarity", "task_alignment", "similarity_matrix", "group_trajectories"} <= set(
        result.frames
    )
    assert "== not applicable" in result.to_text()

    planted_trace(tmp_path / "step0", steps=(0,), meta=False)
    only0 = analyse_run(gt.open_trace(tmp_path / "step0"), n_permutations=99, n_bootstrap=50)
    assert "after step 0" in only0.not_applicable["similarity"]
    assert "1 snapshot" in only0.not_applicable["group_trajectories"]


def test_results_exclude_a_task_that_was_never_traced(tmp_path, planted_trace):
    planted_trace(tmp_path / "run", absent="hun-en")
    result = analyse_run(gt.open_trace(tmp_path / "run"), n_permutations=99, n_bootstrap=50)
    assert np.isnan(result.frames["similarity_matrix"].loc["hun-en", "fin-en"])
    clustering = result.frames["clustering"]
    whole = ~clustering["level"].str.startswith("genus within")
    assert (clustering["n_tasks"][whole] == 11).all()
    assert (clustering["n_tasks"][~whole] == 9).all()  # the Latin-script ones, hun-en left out
    assert all("left out (missing similarity or family): hun-en" in n for n in clustering["note"])
    typ = result.frames["typology"]
    assert (typ["n_languages"] == 11).all()
    assert (typ["excluded"] == "hun-en (missing similarity)").all()
    sim = result.frames["similarity"].set_index("group")
    assert sim.loc["all", "n_missing"] == 10 * 11  # 11 pairs with hun-en at 10 snapshots
    assert result.settings["complete_tasks"] == [t for t in result.tasks if t != "hun-en"]
    quality = result.frames["quality"]
    chrf = quality[quality["metric"] == "chrf"]
    assert len(chrf) >= 1  # one row per control
    assert (chrf["n_tasks"] == 11).all()
    assert (chrf["excluded"] == "hun-en (missing value)").all()


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
