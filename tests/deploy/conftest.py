"""DDS tests stay on this machine: every test gets the loopback Cyclone config (through
CYCLONEDDS_URI, which child processes inherit) and a domain id of its own, so parallel runs
and other users of the machine do not see each other's samples."""

from __future__ import annotations

import itertools
import os

import pytest

from perception.deploy.transport import loopback_config

# Domain ids 0..232 are valid; offset by pid so concurrent pytest processes rarely collide.
_DOMAIN_IDS = itertools.count(100 + os.getpid() % 60)


@pytest.fixture
def dds_domain(monkeypatch) -> int:
    """A fresh DDS domain id with CYCLONEDDS_URI set to the loopback-only config."""
    pytest.importorskip("cyclonedds")
    monkeypatch.setenv("CYCLONEDDS_URI", loopback_config())
    return next(_DOMAIN_IDS) % 233
