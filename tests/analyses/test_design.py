"""Designing the next run from this run's noise: Spearman-Brown rows, detectable effects."""

from __future__ import annotations

import numpy as np
import pytest

import analyses
from analyses._design import languages_for, projected_detectable, rows_for
from analyses._language_level import detectable_effect, language_interval
from geomtrace import InvalidInputError


def test_rows_for_by_hand():
    # R = 0.5 at 100 rows: s = 0.5 / (100 * 0.5) = 0.01 per row; R* = 0.8 needs 0.8 / (0.01 *
    # 0.2) = 400 rows, R* = 0.9 needs 900.
    assert rows_for(0.5, 100, 0.8) == pytest.approx(400)
    assert rows_for(0.5, 100, 0.9) == pytest.approx(900)
    assert rows_for(0.8, 640, 0.8) == pytest.approx(640)  # already there
    assert np.isnan(rows_for(1.0, 100, 0.8)) and np.isnan(rows_for(0.0, 100, 0.8))


def test_projection_is_the_detectable_effect_at_the_same_size_and_shrinks_with_more():
    rng = np.random.default_rng(0)
    loo = np.tanh(0.3 + 0.08 * rng.normal(size=16))
    low, high = language_interval(0.3, loo)
    now = detectable_effect(low, high, 16)
    assert projected_detectable(low, high, 16, 16) == pytest.approx(now)
    at = [projected_detectable(low, high, 16, n) for n in (24, 48, 96)]
    assert now > at[0] > at[1] > at[2] > 0
    need = languages_for(low, high, 16, effect=at[1])
    assert 24 < need <= 48 and projected_detectable(low, high, 16, int(need)) <= at[1]
    assert np.isnan(languages_for(np.nan, high, 16, 0.3))


def test_design_on_an_analysed_run(tmp_path, typology_cache):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import planted_traces as pt

    sc = pt.Scenario("design", "8 languages", n_languages=8, n_snapshots=10, dim=32,
                     reliability=0.6)  # fmt: skip
    run = pt.simulate(sc, 0, tmp_path, noise_free=False)
    result = analyses.analyse_run(
        run.run, parts=("similarity", "typology", "layers"), n_permutations=19, n_bootstrap=20,
        cache=typology_cache,
    )  # fmt: skip
    tables = analyses.design(result, effect=0.4)
    rows = tables["rows"]
    assert rows.attrs["unit"] == "x the current rows"  # not a recipe run: rows unknown
    whole = rows.set_index("group").loc["all"]
    assert whole["rows_for_r80"] == pytest.approx(rows_for(whole["reliability"], 1.0, 0.8))
    langs = tables["languages"]
    # no control distance in this trace (no character profiles): the relation itself
    assert langs["control"].isna().all() and (langs["n_languages"] == 8).all()
    assert set(langs["group"]) == {"all", "encoder.0", "decoder.0"}
    text = analyses.design_text(result, effect=0.4)
    assert "for 0.8" in text and "n for |rho| 0.4" in text
    with pytest.raises(InvalidInputError, match="effect"):
        analyses.design(result, effect=1.5)


def test_design_command(tmp_path, capsys):
    import sys
    from pathlib import Path

    import cli

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import planted_traces as pt

    sc = pt.Scenario("design", "6 languages", n_languages=6, n_snapshots=8, dim=16,
                     reliability=0.7)  # fmt: skip
    run = pt.simulate(sc, 1, tmp_path, noise_free=False)
    assert cli.main(["design", str(run.run), "--effect", "0.5", "--permutations", "9"]) == 0
    out = capsys.readouterr().out
    assert "== snapshot rows per language" in out and "n for |rho| 0.5" in out
    assert cli.main(["design", str(run.run), "--effect", "2"]) == 2
    assert "--effect 2.0: a correlation in (0, 1)" in capsys.readouterr().err
