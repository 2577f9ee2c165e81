"""The node's LiDAR-camera synchronisation rule as a pure function: no threads, no clocks, no
node state, so it is tested on its own over a table of cases (tests/deploy/test_sync.py).

A cloud waits at the node's entry for the cameras. A camera is *live* for the cloud when its
latest image is at most `max_camera_delay_ns` older than the cloud; a live camera whose latest
image is still before the cloud's stamp is *lagging* (its image of the cloud's instant is
probably on its way). The cloud goes to the model when no live camera lags, or when the sensor
clock (the newest stamp the node has seen on any topic) has passed the cloud's stamp by
`camera_wait_ns`. Dead cameras (nothing within the delay) are never waited for: they are masked
in the batch. A newer cloud ends the wait of the one before (the node forces it).
"""

from __future__ import annotations

from collections.abc import Sequence


def lagging_cameras(
    cloud_stamp_ns: int, latest_image_ns: Sequence[int | None], *, max_camera_delay_ns: int
) -> list[int]:
    """Indices of the live cameras whose latest image (`None`: none yet) is before the cloud."""
    return [
        c
        for c, latest in enumerate(latest_image_ns)
        if latest is not None
        and cloud_stamp_ns - latest <= max_camera_delay_ns
        and latest < cloud_stamp_ns
    ]


def cloud_ready(
    cloud_stamp_ns: int,
    latest_image_ns: Sequence[int | None],
    sensor_clock_ns: int,
    *,
    max_camera_delay_ns: int,
    camera_wait_ns: int,
) -> bool:
    """Whether the waiting cloud goes to the model now (see the module docstring)."""
    if not lagging_cameras(
        cloud_stamp_ns, latest_image_ns, max_camera_delay_ns=max_camera_delay_ns
    ):
        return True
    return sensor_clock_ns > cloud_stamp_ns + camera_wait_ns
