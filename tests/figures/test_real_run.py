"""``geomtrace plot``, ``report`` and ``reproduce`` on short real recipe runs (real corpus,
real training, real lang2vec)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli import main

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
FILES = ["f1_similarity_heatmap", "f2_typology", "f3_quality", "f4_layers", "f5_time"]


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    from geomtrace.recipe import run

    root = tmp_path_factory.mktemp("real")
    return run(dict(TINY, out=str(root), name="tiny-sum"))


@pytest.mark.slow
def test_plot_and_report_on_a_real_run(real_run, tmp_path, capsys):
    out = tmp_path / "figs"
    assert (
        main(
            [
                "plot",
                str(real_run),
                "--out",
                str(out),
                "--format",
                "png,svg",
                "--permutations",
                "99",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    printed = [Path(line) for line in captured.out.split()]
    assert printed == [out / f"{name}.{ext}" for name in FILES for ext in ("png", "svg")]
    for path in printed:
        assert path.stat().st_size > 10_000
    # one run: F6 is skipped, and says what it needs
    assert "skipped f6: F6 (optimizers) needs several runs with different methods" in captured.err

    report = tmp_path / "report.html"
    assert main(["report", str(real_run), "--out", str(report), "--permutations", "99"]) == 0
    page = report.read_text(encoding="utf-8")
    assert page.count('<img src="data:image/png;base64,') == 5
    for code in ("es (spa)", "ru (rus)", "tr (tur)"):
        assert code in page
    assert "chrf" in page and "x2en" in page


@pytest.mark.slow
def test_plot_cli_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["plot", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "is empty: it holds no trace.sqlite" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "no trace at" in capsys.readouterr().err


@pytest.mark.slow
def test_reproduce_end_to_end_tiny(tmp_path):
    from figures import reproduce

    result = reproduce(
        tmp_path, quick=True, n_permutations=49, overrides=dict(TINY, langs=TINY["langs"][:5])
    )
    assert [p.name for p in result.runs] == ["sum", "pcgrad-all_layer", "gradvac-all_layer"]
    names = sorted(p.relative_to(tmp_path / "figures").as_posix() for p in result.figures)
    expected = sorted(
        [
            f"{run}/{name}.png"
            for run in ("sum", "pcgrad-all_layer", "gradvac-all_layer")
            for name in FILES
        ]
        + ["f6_optimizers.png"]
    )
    assert names == expected
    results = json.loads(result.results.read_text())
    assert results["mode"] == "quick"
    assert [r["run"] for r in results["across_runs"]["chrf_mean"]] == [
        "pcgrad (all_layer)",
        "gradvac (all_layer)",
    ]
    assert set(results["runs"]) == {"sum", "pcgrad-all_layer", "gradvac-all_layer"}
    assert results["across_runs"]["gradvac_target_last"][0]["run"] == "gradvac (all_layer)"
    page = result.report.read_text(encoding="utf-8")
    assert page.count("<img ") == 16
    # rerunning reuses the finished runs (no retraining)
    again = reproduce(
        tmp_path, quick=True, n_permutations=49, overrides=dict(TINY, langs=TINY["langs"][:5])
    )
    assert again.timings["train"] < 5
