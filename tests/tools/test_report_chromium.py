"""The report as a browser shows it: headless Chromium renders report.html to a screenshot
that is not blank, and its DOM holds every embedded image."""

from __future__ import annotations

import re
import shutil
import subprocess

import cv2
import numpy as np
import pytest

from tests.perception.evaluation.test_report import (  # noqa: F401 (fixtures)
    nusc,
    oracle_eval,
    report_data,
    sample_with_oracle,
)

pytestmark = pytest.mark.slow


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("chromium not installed (apt-get install chromium)")


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_chromium_renders_the_report(oracle_eval, sample_with_oracle, tmp_path):  # noqa: F811
    from perception.evaluation.report import write_report

    chromium = _chromium()
    assert chromium
    page = write_report(tmp_path / "report.html", report_data(oracle_eval, sample_with_oracle))
    shot = tmp_path / "shot.png"
    done = _run([f"--screenshot={shot}", "--window-size=1280,2000", page.resolve().as_uri()])
    assert shot.is_file(), done.stderr[-2000:]
    image = cv2.imread(str(shot), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[:2] == (2000, 1280)
    # Not blank: a real spread of values (text, tables, plots, pictures), many colours and a
    # good share of pixels that are not the white background.
    assert image.std() > 20
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 100
    assert (image < 200).any(-1).mean() > 0.01

    dom = _run(["--dump-dom", page.resolve().as_uri()]).stdout
    images = re.findall(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+"', dom)
    assert len(images) == page.read_text().count("data:image/png;base64,") == 6
    for section in ("summary", "pr-curves", "distance", "bev", "cameras", "robustness"):
        assert f'id="{section}"' in dom, section
