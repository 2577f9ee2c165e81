"""tools/replay.py: a DDS configuration that cannot be applied is one `error:` line, not a
traceback or a replay that silently runs without it."""

from __future__ import annotations

import importlib.util
import signal
from pathlib import Path

import pytest

from perception.deploy.transport import loopback_config


def _replay_main():
    path = Path(__file__).parents[2] / "tools" / "replay.py"
    spec = importlib.util.spec_from_file_location("replay_tool", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_a_participant_on_the_domain_before_the_replay_is_an_error(tmp_path, monkeypatch, capsys):
    pytest.importorskip("cyclonedds")
    from cyclonedds.domain import DomainParticipant

    from perception.deploy import transport

    # a domain no transport of this process has configured (those would be reused, no error)
    domain = next(d for d in range(232, 0, -1) if d not in transport._DOMAINS)
    monkeypatch.setenv("CYCLONEDDS_URI", loopback_config())
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # leave pytest's handlers alone
    main = _replay_main()
    first = DomainParticipant(domain)  # created from CYCLONEDDS_URI, not the replay's config
    try:
        code = main([str(tmp_path / "bag"), "--domain-id", str(domain)])
    finally:
        first.__del__()
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: DDS domain {domain}: cannot apply the loopback configuration")
    assert err.count("\n") == 1
