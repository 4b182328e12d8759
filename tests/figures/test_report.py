"""The HTML report: self-contained, leads with F7, shows warnings, and for any multi-task run
describes the run from its own metadata; rendered by a real browser when one is installed."""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

import analyses
from figures import write_report

from .test_figures import fake_comparison


@pytest.fixture(scope="module")
def results(analysed):
    return {name: analysed(name) for name in ("sum", "regression")}


@pytest.fixture(scope="module")
def report(results, drawn, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    seeds = pd.DataFrame(
        [("sum", "typology", "all genetic: rho", 2, 0.7, 0.05, 0.65, 0.75, 2, 0, 1)],
        columns=["method", "table", "test", "n_seeds", "mean", "sd", "min", "max",
                 "n_positive", "n_negative", "n_significant"],
    )  # fmt: skip
    figures = {results["sum"].label: drawn("sum")}
    return write_report(
        [results["sum"]], out, comparison=fake_comparison(), seeds=seeds, figures=figures
    )


def text_of(page: str) -> str:
    """The page's visible text (tags, styles and data URIs removed)."""
    page = re.sub(r"<style>.*?</style>", "", page, flags=re.S)
    page = re.sub(r'src="data:[^"]*"', "", page)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def test_report_is_self_contained_and_leads_with_f7(report):
    page = report.read_text(encoding="utf-8")
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 6 + 1  # F7, F1-F5, F6
    for data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "<script" not in page and "<link" not in page
    heads = [m.group(1) for m in re.finditer(r"<h3 [^>]*>(F\d)\.", page)]
    assert heads == ["F7", "F1", "F2", "F3", "F4", "F5", "F6"]
    assert page.index("Layer x distance table") < page.index("F1. Gradient-similarity")
    assert "partial_p_holm" in page and "Across seeds" in page and "n_significant" in page
    assert "gradvac (all_layer)" in page and "better for" not in page  # F6 legend is in the image


def test_report_shows_the_warnings_as_a_banner(report, results):
    page = report.read_text(encoding="utf-8")
    banner = page[page.index('<div class="warning">') :]
    assert "How far these numbers can be trusted" in banner
    assert html.escape(results["sum"].warnings[0]) in banner
    assert page.index('<div class="warning">') < page.index("<nav>")


def test_report_headline_numbers_are_the_results_headline(report, results):
    page = report.read_text(encoding="utf-8")
    h = results["sum"].headline()
    line = re.search(r'<p class="headline">(.*?)</p>', page, re.S).group(1)
    assert f'<b class="value">{h["mean_similarity"]:.3f}</b>' in line
    assert f'<span class="ci">{h["ci_low"]:.3f}, {h["ci_high"]:.3f}</span>' in line
    assert f"over {h['n_snapshots']} snapshots" in line


def test_report_of_a_non_language_run(results, drawn, tmp_path):
    result = results["regression"]
    out = write_report([result], tmp_path / "r.html", figures={result.label: drawn("regression")})
    page = out.read_text(encoding="utf-8")
    visible = text_of(page).lower()
    assert "language" not in visible and "chrf" not in visible, [
        m.start() for m in re.finditer("language|chrf", visible)
    ]
    assert "nats/byte" not in visible and "gettext" not in visible
    assert page.count("<img ") == 4  # F1, F3, F4, F5
    assert visible.count("not drawn: typological distances need iso 639-3 codes") == 2  # F2, F7
    assert "this run: 6 tasks (reg0, reg1, reg2, reg3, reg4, reg5)" in visible
    assert "quality metrics: mse" in visible and "lower is better" in visible
    h = result.headline()
    assert f'<b class="value">{h["mean_similarity"]:.3f}</b>' in page
    assert "⚠" in page  # reliability unknown


def test_report_of_runs_that_cannot_draw_anything(tmp_path):
    import geomtrace as gt

    grams = np.random.default_rng(0).normal(size=(2, 4, 8))
    with gt.TraceWriter(tmp_path / "s0", list("abcd"), [("x", 8, ["x"]), ("y", 8, ["y"])]) as w:
        w.write_snapshot(0, grams @ grams.transpose(0, 2, 1), {})
    result = analyses.analyse_run(tmp_path / "s0", n_permutations=19, n_bootstrap=10)
    page = write_report([result], tmp_path / "s0.html").read_text(encoding="utf-8")
    assert "<img " not in page
    assert page.count("Not drawn:") == 6
    assert page.count("Not drawn:</b> no snapshot in the step window") == 3  # F1, F3, F4
    assert "Not drawn:</b> the trace has 1 snapshot" in page  # F5
    assert "No mean similarity: no snapshot in the step window" in page


def find_chromium() -> str | None:
    for name in (
        os.environ.get("GEOMTRACE_CHROMIUM"),
        "chromium",
        "chromium-browser",
        "google-chrome",
        "chrome",
    ):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


_PROBE_HEAD = """<script>window.__errors=[];
window.addEventListener('error',function(e){window.__errors.push(String(e.message||(e.target&&(e.target.src||'').slice(0,40))||'error'));},true);
var __ce=console.error;console.error=function(){window.__errors.push(Array.prototype.join.call(arguments,' '));__ce.apply(console,arguments);};
</script>"""
_PROBE_TAIL = """<script>window.addEventListener('load',function(){
var imgs=Array.prototype.slice.call(document.images);
var out={n:imgs.length,rendered:imgs.filter(function(i){return i.complete&&i.naturalWidth>0;}).length,
widths:imgs.map(function(i){return i.naturalWidth;}),errors:window.__errors};
var pre=document.createElement('pre');pre.id='render-check';pre.textContent=JSON.stringify(out);
document.body.appendChild(pre);});</script>"""


def chromium(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    exe = find_chromium()
    base = [
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
    ]  # fmt: skip
    return subprocess.run(base + args, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(
    find_chromium() is None,
    reason="Chromium not found (apt-get install chromium, or set GEOMTRACE_CHROMIUM)",
)
def test_report_renders_in_chromium(report, tmp_path):
    # A probe copy: the report itself has no script; the copy records image sizes and errors.
    page = report.read_text(encoding="utf-8")
    probe = tmp_path / "probe.html"
    probe.write_text(
        page.replace("<head>", "<head>" + _PROBE_HEAD, 1).replace(
            "</body>", _PROBE_TAIL + "</body>", 1
        ),
        encoding="utf-8",
    )
    done = chromium(["--virtual-time-budget=15000", "--dump-dom", probe.as_uri()], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<pre id="render-check">(.*?)</pre>', done.stdout, re.S)
    assert found, "the probe script did not run: " + done.stdout[-500:]
    check = json.loads(html.unescape(found.group(1)))
    assert check["n"] == 7
    assert check["rendered"] == 7 and min(check["widths"]) > 300, check
    assert check["errors"] == []
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console

    shot = tmp_path / "shot.png"
    done = chromium(["--window-size=1200,2400", f"--screenshot={shot}", report.as_uri()], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.exists() and shot.stat().st_size > 20_000
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[:2] == (2400, 1200)
    assert np.std(pixels[..., :3]) > 0.05  # not a blank page: text and figures drawn
