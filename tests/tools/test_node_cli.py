"""tools/node.py: a micro checkpoint run in-process on a tiny-world bag publishes, records,
serves the live view and summarizes; usage errors exit with 2."""

from __future__ import annotations

import contextlib
import io
import json
import re

import pytest

from perception.deploy.bag import read_bag, write_nuscenes_bag
from tests.deploy.node_helpers import SCENE, node_raw, save_micro_checkpoint
from tools.node import main as run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_usage_errors_exit_with_2(tmp_path):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert run_cli(["--config", "x.yaml", "--transport", "inprocess"]) == 2
        assert run_cli(["--config", "x.yaml", "--bag", str(tmp_path / "none")]) == 2
    assert "needs --bag" in err.getvalue() and "bag not found" in err.getvalue()


def test_int8_without_its_graph_is_refused_before_the_node_starts(tiny_world, tmp_path, capsys):
    """`--precision int8` with no quantized graph beside the checkpoint: exit 2, the message
    names the missing file and how to make it; never a float model labelled INT8."""
    config, work = save_micro_checkpoint(node_raw(tiny_world), tmp_path / "ckpt")
    bag = tmp_path / "bag"
    bag.mkdir()
    code = run_cli(["--config", str(config), "--checkpoint", str(work), "--transport",
                    "inprocess", "--bag", str(bag), "--precision", "int8"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert f"{work / 'onnx' / 'bev_decoder_head_int8.onnx'}: not found" in err
    assert "tools/quantize.py" in err
    assert run_cli(["--config", str(config), "--process-every", "0"]) == 2
    assert "--process-every must be >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_inprocess_run_records_and_summarizes(tiny_world, tmp_path):
    config, work = save_micro_checkpoint(node_raw(tiny_world), tmp_path / "ckpt")
    bag = tmp_path / "bag"
    write_nuscenes_bag(tiny_world, SCENE, bag)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run_cli(["--config", str(config), "--checkpoint", str(work), "--transport",
                        "inprocess", "--bag", str(bag), "--rate", "2", "--record",
                        str(tmp_path / "rec"), "--summary", str(tmp_path / "summary.json"),
                        "--threads", "1", "--foxglove", "0"])  # fmt: skip
    assert code == 0, out.getvalue()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["processed"] > 0
    assert summary["received"]["/lidar/top"] == 40  # every sweep of the scene arrived
    # processed or dropped as stale, none lost otherwise
    assert summary["processed"] + summary["dropped"].get("stale", 0) == 40
    assert "receive_to_publish" in summary["latency_ms"]
    topics = {t for t, *_ in read_bag(tmp_path / "rec")}
    assert {"/lidar/top", "/perception/objects", "/perception/diagnostics"} <= topics
    assert list((tmp_path / "rec").glob("*.mcap"))
    assert "processed" in out.getvalue()
    # the live view (a free port, loopback) got every message the recorder wrote
    recorded = re.search(r"recorded (\d+) messages", out.getvalue())
    forwarded = re.search(
        r"live view: forwarded (\d+) messages .*, 0 not forwarded", out.getvalue()
    )
    assert recorded and forwarded and forwarded.group(1) == recorded.group(1), out.getvalue()
    assert "connect to ws://127.0.0.1:" in out.getvalue()


def test_a_dds_configuration_that_cannot_be_applied_is_one_line(
    tiny_world, tmp_path, monkeypatch, capsys
):
    pytest.importorskip("cyclonedds")
    from cyclonedds.domain import DomainParticipant

    from perception.deploy import transport
    from perception.deploy.transport import loopback_config

    config, _ = save_micro_checkpoint(node_raw(tiny_world), tmp_path / "ckpt")
    # a domain no transport of this process has configured (those would be reused, no error)
    domain = next(d for d in range(232, 0, -1) if d not in transport._DOMAINS)
    monkeypatch.setenv("CYCLONEDDS_URI", loopback_config())
    first = DomainParticipant(domain)  # made from CYCLONEDDS_URI, not the node's configuration
    try:
        # --duration: should the transport come up after all, the node stops instead of hanging
        code = run_cli(["--config", str(config), "--domain-id", str(domain), "--threads", "1",
                        "--duration", "2"])  # fmt: skip
    finally:
        first.__del__()
    assert code == 2
    err = capsys.readouterr().err
    assert f"error: DDS domain {domain}: cannot apply the loopback configuration" in err
    assert "Traceback" not in err
