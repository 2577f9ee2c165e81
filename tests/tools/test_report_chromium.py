"""The report as a browser shows it: headless Chromium renders report.html, with nothing on
its console, to a screenshot that is not blank, and its DOM holds every embedded image.

Chromium missing skips these tests, unless REQUIRE_CHROMIUM=1 (set by .ci/run, which installs
Debian's chromium when it is missing): then it is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import cv2
import numpy as np
import pytest

from tests.perception.evaluation.test_report import (  # noqa: F401 (fixtures)
    fake_training_run,
    nusc,
    oracle_eval,
    report_data,
    sample_with_oracle,
)

pytestmark = pytest.mark.slow

# Chromium's log line for a page's console message (errors included, e.g. an uncaught
# exception): `[pid:tid:time:INFO:CONSOLE:1] "message", source: URL (line)`.
CONSOLE = re.compile(r"^\[[^\]]*:CONSOLE[:(]\d+\)?\] (.*)$", re.MULTILINE)


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("REQUIRE_CHROMIUM") == "1":
        pytest.fail("REQUIRE_CHROMIUM=1 but no chromium on PATH (apt-get install chromium)")
    pytest.skip("chromium not installed (apt-get install chromium)")


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
         "--v=0", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )  # fmt: skip


def _console(done: subprocess.CompletedProcess) -> list[str]:
    return CONSOLE.findall(done.stderr)


def test_console_check_sees_a_broken_page(tmp_path):
    """The console check can fail: a page with a script error shows up on it."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><p>x</p><script>not_defined_anywhere();</script>")
    messages = _console(_run(["--dump-dom", page.as_uri()]))
    assert any("not_defined_anywhere" in m for m in messages), messages


def test_chromium_renders_the_report(oracle_eval, sample_with_oracle, tmp_path):  # noqa: F811
    from perception.evaluation.report import write_report

    training = fake_training_run(tmp_path / "work")
    data = report_data(oracle_eval, sample_with_oracle, training)
    page = write_report(tmp_path / "report.html", data)
    shot = tmp_path / "shot.png"
    done = _run([f"--screenshot={shot}", "--window-size=1280,2000", page.resolve().as_uri()])
    assert shot.is_file(), done.stderr[-2000:]
    assert _console(done) == []
    image = cv2.imread(str(shot), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[:2] == (2000, 1280)
    # Not blank: a real spread of values (text, tables, plots, pictures), many colours and a
    # good share of pixels that are not the white background.
    assert image.std() > 20
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 100
    assert (image < 200).any(-1).mean() > 0.01

    done = _run(["--dump-dom", page.resolve().as_uri()])
    assert _console(done) == []
    images = re.findall(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+"', done.stdout)
    assert len(images) == page.read_text().count("data:image/png;base64,") == 7
    for section in ("summary", "pr-curves", "distance", "bev", "cameras", "robustness", "run",
                    "training", "config"):  # fmt: skip
        assert f'id="{section}"' in done.stdout, section
