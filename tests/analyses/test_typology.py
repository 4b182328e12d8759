import importlib
import os
import sys

import numpy as np
import pytest

import analyses
import geomtrace as gt
from analyses import (
    DISTANCES,
    MACROLANGUAGE_FALLBACK,
    cache_dir,
    language_families,
    task_families,
    typological_distance,
    typological_distances,
)
from analyses._typology import genetic_distance, great_circle_km
from geomtrace import InvalidInputError

LANGS = ["spa", "por", "deu", "jpn", "fra", "rus", "eus", "fin"]


@pytest.fixture(scope="module")
def matrices():
    return typological_distances(LANGS)


def test_every_distance_is_symmetric_with_zero_diagonal(matrices):
    assert list(matrices) == list(DISTANCES)
    for kind, m in matrices.items():
        assert list(m.index) == LANGS and list(m.columns) == LANGS
        a = m.to_numpy()
        assert np.allclose(a, a.T), kind
        assert np.all(np.diag(a) == 0), kind
        off = a[~np.eye(len(LANGS), dtype=bool)]
        assert np.all(off >= 0) and np.all(np.isfinite(off)), kind


def test_well_known_pairs_are_ordered(matrices):
    g, geo = matrices["genetic"], matrices["geographic"]
    assert g.loc["spa", "por"] < g.loc["spa", "deu"] < g.loc["spa", "jpn"]
    assert geo.loc["fra", "deu"] < geo.loc["fra", "jpn"]
    syn = matrices["syntactic"]
    assert syn.loc["spa", "por"] < syn.loc["spa", "jpn"]


def test_genetic_distance_is_one_minus_shared_over_depth(matrices):
    fam = language_families(["spa", "por", "deu", "eus"]).set_index("language")
    spa, por = fam.loc["spa", "path"].split(" > "), fam.loc["por", "path"].split(" > ")
    assert por == spa[: len(por)]  # Portuguese's path is a prefix of Spanish's here
    expected = 1 - len(por) / max(len(spa), len(por))
    assert matrices["genetic"].loc["spa", "por"] == pytest.approx(expected)
    assert matrices["genetic"].loc["spa", "deu"] == pytest.approx(1 - 1 / len(spa))
    assert matrices["genetic"].loc["spa", "jpn"] == 1.0
    # Basque has no Glottolog path: its own family, at distance 1 from everyone.
    assert fam.loc["eus", "depth"] == 0 and fam.loc["eus", "family"] == "eus"
    assert (matrices["genetic"].loc["eus"].drop("eus") == 1).all()
    assert genetic_distance([["A", "B"], ["A", "C", "D"], []]).tolist() == [
        [0.0, 1 - 1 / 3, 1.0],
        [1 - 1 / 3, 0.0, 1.0],
        [1.0, 1.0, 0.0],
    ]


def test_families_and_genera(planted_families):
    fam = language_families(list(planted_families)).set_index("language")
    assert fam["family"].to_dict() == planted_families
    assert fam.loc["spa", "genus"] == "Italic"
    assert fam.loc["deu", "genus"] == "Germanic"
    assert task_families({"a": "spa", "b": None, "c": "jpn"}) == {
        "a": "Indo-European",
        "c": "Japonic",
    }
    assert task_families({"a": "spa"}, level="genus") == {"a": "Italic"}


def test_geographic_distances_are_plausible_kilometres(matrices):
    geo = matrices["geographic"]
    # Paris-Berlin is ~880 km, Paris-Tokyo ~9700 km; URIEL points are language centroids.
    assert 400 < geo.loc["fra", "deu"] < 1500
    assert 8500 < geo.loc["fra", "jpn"] < 11000
    fam = language_families(["fra", "jpn"]).set_index("language")
    assert fam.loc["fra", "latitude"] == pytest.approx(48, abs=2)
    assert fam.loc["jpn", "longitude"] == pytest.approx(135, abs=3)
    # Haversine by hand: a quarter of the equator.
    d = great_circle_km(np.array([[0.0, 0.0], [0.0, 90.0]]))
    assert d[0, 1] == pytest.approx(np.pi / 2 * 6371.0088)


def import_lang2vec(monkeypatch):
    """lang2vec's module, even where its bin/lang2vec.py script shadows the package."""
    monkeypatch.setattr(
        sys,
        "path",
        [p for p in sys.path if not os.path.exists(os.path.join(p or ".", "lang2vec.py"))],
    )
    for name in ("lang2vec", "lang2vec.lang2vec"):
        if (
            name in sys.modules
            and not hasattr(sys.modules[name], "__path__")
            and name == "lang2vec"
        ):
            monkeypatch.delitem(sys.modules, name)
    return importlib.import_module("lang2vec.lang2vec")


@pytest.mark.slow
def test_cosine_distances_match_lang2vec_features(monkeypatch):
    l2v = import_lang2vec(monkeypatch)

    feats = l2v.get_features(["fra", "jpn", "rus"], "syntax_knn+phonology_knn+inventory_knn")
    v = np.array([feats[c] for c in ("fra", "jpn", "rus")], dtype=float)
    cos = 1 - (v @ v.T) / np.outer(np.linalg.norm(v, axis=1), np.linalg.norm(v, axis=1))
    ours = typological_distance(["fra", "jpn", "rus"], "featural").to_numpy()
    assert np.allclose(ours, cos - np.diag(np.diag(cos)), atol=1e-12)
    syn = l2v.get_features(["fra", "jpn"], "syntax_knn")
    a, b = (np.array(syn[c], dtype=float) for c in ("fra", "jpn"))
    expected = 1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    assert typological_distance(["fra", "jpn"], "syntactic").loc["fra", "jpn"] == pytest.approx(
        expected
    )


def test_cache_is_keyed_by_language_set_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOMTRACE_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    first = typological_distances(["fra", "deu", "jpn"])
    files = sorted(os.listdir(tmp_path / "c"))
    assert len(files) == 1 and files[0].startswith("typology-")
    # Same set in another order: same cache file, rows in the order asked.
    again = typological_distances(["jpn", "fra", "deu"])
    assert sorted(os.listdir(tmp_path / "c")) == files
    for kind in DISTANCES:
        assert np.array_equal(
            again[kind].loc[["fra", "deu", "jpn"], ["fra", "deu", "jpn"]].to_numpy(),
            first[kind].to_numpy(),
        )
    typological_distances(["fra", "deu"])
    assert len(os.listdir(tmp_path / "c")) == 2
    # A corrupt cache file is ignored and rewritten.
    (tmp_path / "c" / files[0]).write_bytes(b"not an npz")
    assert np.array_equal(typological_distances(["fra", "deu", "jpn"])["genetic"], first["genetic"])
    assert cache_dir(tmp_path / "x") == tmp_path / "x"


def test_unknown_codes_are_named_with_suggestions():
    with pytest.raises(InvalidInputError) as err:
        typological_distances(["fra", "fr", "deuu"])
    msg = str(err.value)
    assert "'fr'" in msg and "'deuu'" in msg and "fra" in msg and "deu" in msg
    assert "'fra'" not in msg.split("fr' (did")[0]  # fra itself is not reported
    with pytest.raises(InvalidInputError, match="duplicate"):
        typological_distances(["fra", "fra"])
    with pytest.raises(InvalidInputError, match="unknown distance"):
        typological_distances(["fra", "deu"], "lexical")
    with pytest.raises(InvalidInputError, match="list of ISO"):
        typological_distances("fra")
    assert list(typological_distances(["FRA", "deu"], "genetic")["genetic"].index) == ["fra", "deu"]


def test_estonian_falls_back_to_its_macrolanguage_for_genetic_data_only():
    # URIEL has no Glottolog path for ekk (Standard Estonian); est (Estonian) has Uralic > Finnic.
    assert MACROLANGUAGE_FALLBACK["ekk"] == "est"
    fam = language_families(["ekk", "fin", "spa", "arb", "azj", "cmn"]).set_index("language")
    assert fam.loc["ekk", "family"] == "Uralic" and fam.loc["ekk", "genus"] == "Finnic"
    assert fam.loc["ekk", "source_code"] == "est"
    assert fam.loc["ekk", "note"] == "no URIEL genetic data for ekk: used macrolanguage est"
    for code in ("fin", "spa", "arb", "azj", "cmn"):  # their own data: no fallback
        assert fam.loc[code, "source_code"] == code and fam.loc[code, "note"] == ""
    d = typological_distances(["ekk", "fin", "spa", "est"])
    g = d["genetic"]
    assert g.loc["ekk", "fin"] < g.loc["ekk", "spa"]
    # ekk reads est's path (Uralic, Finnic); fin's is (Uralic, Finnic, Nuclear Finnish).
    assert g.loc["ekk", "fin"] == pytest.approx(1 - 2 / 3)
    assert g.loc["ekk", "spa"] == 1.0
    assert g.loc["ekk", "est"] == 0.0
    assert g.attrs["fallbacks"] == {"ekk": "est"}
    # ekk has its own syntax/geo vectors: those are not replaced.
    for kind in ("syntactic", "geographic", "featural"):
        assert d[kind].attrs["fallbacks"] == {}
    assert d["syntactic"].loc["ekk", "est"] > 0


def test_noise_removed_statistics_use_the_corrected_matrix(tmp_path, typology_cache):
    """With split halves the disattenuated relation comes from the noise-corrected matrix
    whatever the reported measure (raw disattenuation fails with unequal reliabilities), and
    is left out when a language's corrected similarity is not estimable."""
    import sys
    from dataclasses import replace
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import planted_traces as pt

    sc = pt.Scenario("noise", "8 languages", n_languages=8, n_snapshots=10, dim=32, reliability=0.6)
    run = pt.simulate(sc, 0, tmp_path / "a", noise_free=False)
    trace = gt.open_trace(run.run)
    kw = {"distances": ["genetic"], "n_permutations": 19, "n_bootstrap": 20,
          "cache": typology_cache, "covariates": None}  # fmt: skip
    raw = analyses.typology_correlation(trace, "all", measure="raw", **kw).iloc[0]
    corrected = analyses.typology_correlation(trace, "all", measure="corrected", **kw).iloc[0]
    assert raw["noise_removed_measure"] == corrected["noise_removed_measure"] == "corrected"
    for column in ("matrix_reliability", "rho_disattenuated", "lang_ci_low", "lang_ci_high"):
        assert raw[column] == pytest.approx(corrected[column])
    assert raw["rho"] != pytest.approx(corrected["rho"])  # the reported rho is the measure's
    low = replace(sc, reliability=(0.02, 0.9))
    noisy = pt.simulate(low, 1, tmp_path / "b", noise_free=False)
    row = analyses.typology_correlation(gt.open_trace(noisy.run), "all", **kw).iloc[0]
    assert row["noise_removed_measure"] == "not estimable"
    assert np.isnan(row["rho_disattenuated"]) and "not estimable" in row["note"]
