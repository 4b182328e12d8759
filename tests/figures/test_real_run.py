"""Every figure and the report on a short real recipe run (real corpus, real training, real
lang2vec), through the public API: ``analyses.analyse_run`` -> ``draw_run`` ->
``save_figures`` / ``write_report``."""

from __future__ import annotations

import pytest
from matplotlib.figure import Figure

import analyses
from figures import FIGURES, draw_run, save_figures, write_report

TINY = {
    "langs": ["es", "fr", "de", "ru", "fi", "tr"],
    "steps": 10,
    "every": 5,
    "batch_per_lang": 4,
    "d_model": 32,
    "nhead": 2,
    "d_ff": 64,
    "enc_layers": 1,
    "dec_layers": 1,
    "threads": 1,
}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    from geomtrace.recipe import run  # the test trains; figures/ never imports the recipe

    root = tmp_path_factory.mktemp("real")
    return run(dict(TINY, out=str(root), name="tiny-sum"))


@pytest.mark.slow
def test_figures_and_report_on_a_real_run(real_run, tmp_path):
    result = analyses.analyse_run(real_run, n_permutations=99, n_bootstrap=50)
    figs = draw_run(result)
    drawn = sorted(k for k, f in figs.items() if isinstance(f, Figure))
    assert drawn == ["f1", "f2", "f3", "f4", "f5", "f7"], {
        k: str(f) for k, f in figs.items() if not isinstance(f, Figure)
    }
    paths = save_figures(figs, tmp_path / "figs")
    assert sorted(p.name for p in paths) == sorted(f"{FIGURES[k]}.png" for k in drawn)
    for path in paths:
        assert path.stat().st_size > 10_000
    report = write_report([result], tmp_path / "report.html", figures={result.label: figs})
    page = report.read_text(encoding="utf-8")
    assert page.count('<img src="data:image/png;base64,') == 6
    for task in ("es", "ru", "tr"):
        assert task in page
    assert "chrF" in page and "x2en" in page
