"""The HTML report in a real browser: headless Chromium renders its tables and embedded
figures (DOM and screenshot checked). Skips, saying why, where no Chromium is installed
(CI installs Debian's `chromium`: see .ci/run)."""

from __future__ import annotations

import shutil
import subprocess
import textwrap

import numpy as np
import pytest

from l2lbench.cli import main

BROWSER = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium here (apt-get install chromium)")

SUITE = """
ruleset = "tuned"
seeds = 2
optimizers = ["sgd", "adam"]

[defaults]
steps = 10
batch_size = 16
eval_every = 5

[[tasks]]
dataset = { kind = "synthetic", n_train = 120, n_test = 40, size = 8 }
learner = { kind = "mlp", hidden = [8] }

[[tasks]]
dataset = { kind = "synthetic", n_train = 120, n_test = 40, size = 8, seed = 1 }
learner = { kind = "mlp", hidden = [8] }

[tuning]
trials = 3
seeds = 1
"""


def _browser(*args: str) -> subprocess.CompletedProcess:
    command = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_html_report_renders_tables_and_embedded_figures_in_chromium(tmp_path, capsys):
    suite = tmp_path / "two.toml"
    suite.write_text(textwrap.dedent(SUITE))
    results = tmp_path / "r"
    assert main(["run", "--suite", str(suite), "--results", str(results), "--workers", "1"]) == 0
    out = tmp_path / "report"
    assert main(["report", "--suite", str(suite), "--results", str(results), "--format", "html", "--out", str(out)]) == 0
    capsys.readouterr()
    page = out / "report.html"
    text = page.read_text()
    assert 'src="plots/' not in text and text.count('src="data:image/png;base64,') >= 5  # one file to mail
    # Moved away from its plots folder, the page still shows everything.
    alone = tmp_path / "mailed.html"
    alone.write_text(text)
    shutil.rmtree(out / "plots")

    dom = _browser("--virtual-time-budget=5000", "--dump-dom", alone.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = next(line for line in dom.stdout.splitlines() if "<body" in line)
    tables = int(body.split('data-tables="')[1].split('"')[0])
    figures = int(body.split('data-figures="')[1].split('"')[0])
    rendered = int(body.split('data-figures-rendered="')[1].split('"')[0])
    assert tables >= 8 and figures >= 5 and rendered == figures
    assert dom.stdout.count('<table class="sortable">') == tables

    shot = tmp_path / "shot.png"
    run = _browser("--window-size=1400,3000", f"--screenshot={shot}", alone.as_uri())
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    from matplotlib.image import imread

    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (3000, 1400)
    ink = (pixels < 0.9).any(axis=2).mean()  # text, table rules and figures, not a blank page
    spread = pixels.max(axis=2) - pixels.min(axis=2)
    colour = (spread > 0.3).mean()  # the curves' saturated colours: the figures were drawn
    assert ink > 0.02 and colour > 0.0005, (ink, colour)
    assert np.isfinite(pixels).all()
