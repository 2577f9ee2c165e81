"""The synchronisation rule on its own: a table of cases, no threads, no clocks."""

from __future__ import annotations

import pytest

from perception.deploy.sync import cloud_ready, lagging_cameras

MS = 1_000_000
DELAY, WAIT = 120 * MS, 50 * MS
CLOUD = 1_000 * MS


@pytest.mark.parametrize(
    ("latest", "clock", "ready", "why"),
    [
        ([CLOUD, CLOUD + 5 * MS], CLOUD, True, "every camera has an image at or after the cloud"),
        ([CLOUD - 30 * MS, CLOUD], CLOUD, False, "camera 0 is live and lags: wait"),
        ([CLOUD - 30 * MS, CLOUD], CLOUD + WAIT, False, "the wait is not over at exactly WAIT"),
        ([CLOUD - 30 * MS, CLOUD], CLOUD + WAIT + 1, True, "the wait is over"),
        ([CLOUD - DELAY - 1, CLOUD], CLOUD, True, "camera 0 is dead: never waited for"),
        ([CLOUD - DELAY, CLOUD], CLOUD, False, "at exactly the delay a camera is still live"),
        ([None, None], CLOUD, True, "no camera has sent anything"),
        ([], CLOUD, True, "a LiDAR-only node"),
    ],
)
def test_cloud_ready(latest, clock, ready, why):
    got = cloud_ready(CLOUD, latest, clock, max_camera_delay_ns=DELAY, camera_wait_ns=WAIT)
    assert got is ready, why


def test_lagging_cameras_names_the_live_late_ones():
    latest = [CLOUD - 10 * MS, None, CLOUD + MS, CLOUD - DELAY - MS, CLOUD - DELAY]
    assert lagging_cameras(CLOUD, latest, max_camera_delay_ns=DELAY) == [0, 4]
