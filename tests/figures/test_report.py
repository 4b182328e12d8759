"""The HTML report: self-contained, every figure present, and rendered by a real browser."""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from cli import main
from figures import write_report

PERMS = 99


@pytest.fixture(scope="module")
def report(synthetic_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    runs = [synthetic_runs[m] for m in ("sum", "pcgrad", "gradvac")]
    return write_report(runs, out, n_permutations=PERMS)


def test_report_is_self_contained_with_every_figure(report):
    page = report.read_text(encoding="utf-8")
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3 * 5 + 1  # F1-F5 per run, F6 once
    for data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    # offline: no external resource of any kind
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "<script" not in page and "<link" not in page
    for title in ("F1. Gradient-similarity heatmap", "F2. Gradient similarity vs typological",
                  "F3. Similarity vs quality", "F4. Similarity per parameter group",
                  "F5. Similarity over training", "F6. Baseline vs PCGrad vs GradVac"):  # fmt: skip
        assert title in page
    assert page.count("<b>Paper.</b>") == 16 and page.count("<b>Here.</b>") == 16
    # the numbers behind F2 are in a table: the genetic row's rho appears as printed
    assert "genetic" in page and "partial_rho" in page
    assert "run config" in page and "gradvac (all_layer)" in page


def test_report_cli_and_missing_quality(synthetic_runs, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert (
        main(
            ["report", str(synthetic_runs["noquality"]), "--out", str(out), "--permutations", "19"]
        )
        == 0
    )
    assert capsys.readouterr().out.strip() == str(out)
    page = out.read_text(encoding="utf-8")
    assert page.count("<img ") == 4  # F1, F2, F4, F5; F3 and F6 say why not
    assert "Not drawn:</b> the trace has no quality measurements" in page
    assert "F6 (optimizers) needs several runs with different methods" in page


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
    assert check["n"] == 16
    assert check["rendered"] == 16 and min(check["widths"]) > 300, check
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
