"""`--precision int8|mixed`: the decoder and head run as the checkpoint's quantized ONNX graph
(`perception.deploy.quantize.use_precision`) in the model, the node and the test tool. The
float graph through the same backend gives the model's own maps; a graph that does not belong
to the checkpoint, or is missing, is refused by name before anything runs; the node with an
INT8 graph gives what offline inference with the same graph gives."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import Subset

from perception.config import parse_config
from perception.datasets.pipeline import build_dataset
from perception.deploy.bag import write_nuscenes_bag
from perception.deploy.node import NodeOptions, PerceptionNode, load_node_model, replay_into_node
from perception.deploy.transport import InProcessTransport
from perception.evaluation.inference import run_inference
from perception.models.builder import build_model
from tests.deploy.node_helpers import SCENE, node_raw, save_micro_checkpoint

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from perception.deploy.export import DECODER_HEAD_FILE  # noqa: E402
from perception.deploy.quantize import (  # noqa: E402
    GRAPH_FILES,
    REPORT_FILE,
    DecoderHeadGraph,
    QuantizationError,
    use_precision,
)
from tools.export import main as export_cli  # noqa: E402
from tools.quantize import main as quantize_cli  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def quantized(indexed_world_copy, tmp_path_factory):
    """A micro fused checkpoint on the tiny world (one camera frame), exported and quantized
    (INT8 and mixed, calibrated on 3 training samples): (raw config, work dir, onnx dir)."""
    world = indexed_world_copy("precision", max_sweeps=3, max_clip_frames=1)
    raw = node_raw(world, clip_frames=1)
    base = tmp_path_factory.mktemp("precision")
    config_path, work = save_micro_checkpoint(raw, base)
    onnx_dir = work / "onnx"  # the default --onnx-dir
    argv = ["--checkpoint", str(work), "--config", str(config_path), "--out", str(onnx_dir)]
    assert export_cli([*argv, "--no-stream"]) == 0
    argv = [str(onnx_dir), "--checkpoint", str(work), "--config", str(config_path),
            "--samples", "3", "--held-out", "1", "--keep-float", "1"]  # fmt: skip
    assert quantize_cli(argv) == 0
    return raw, work, onnx_dir


def _model(raw, work):
    config = parse_config(raw)
    return config, load_node_model(config, work)


def _batch(config):
    from tests.perception.models.helpers import synthetic_batch

    return synthetic_batch(config, batch_size=1, seed=3)


def test_the_float_graph_as_decode_backend_gives_the_models_maps(quantized):
    raw, work, onnx_dir = quantized
    config, model = _model(raw, work)
    fused, _ = model.fused_features(_batch(config))
    graph = DecoderHeadGraph(onnx_dir / DECODER_HEAD_FILE, len(model.head.task_heads), "float32")
    with torch.no_grad():
        expected = model.decode(fused)
        model.decode_backend = graph
        got = model.decode(fused)
    for a, b in zip(expected, got):
        for field in ("heatmap", "offset", "height", "size", "rotation", "velocity", "direction"):
            x, y = getattr(a, field), getattr(b, field)
            assert x.shape == y.shape
            np.testing.assert_allclose(y.numpy(), x.numpy(), atol=1e-4 * max(1.0, x.abs().max()))


@pytest.mark.parametrize("precision", ["int8", "mixed"])
def test_use_precision_sets_the_quantized_backend(quantized, precision):
    raw, work, onnx_dir = quantized
    config, model = _model(raw, work)
    assert model.precision == "float32"
    graph = use_precision(model, config, precision, checkpoint=work)
    assert model.decode_backend is graph and model.precision == precision
    assert graph.path == onnx_dir / GRAPH_FILES[precision]
    batch = _batch(config)
    with torch.no_grad():
        quantized_outputs = model.decode(model.fused_features(batch)[0])
        detections = model(batch)
    assert len(detections) == 1
    model.decode_backend = None  # the float model differs from the INT8 graph, but not much
    with torch.no_grad():
        float_outputs = model.decode(model.fused_features(batch)[0])
    for a, b in zip(float_outputs, quantized_outputs):
        scale = a.heatmap.abs().max()
        error = (a.heatmap - b.heatmap).abs().max() / scale
        assert 0 < error < 0.05  # quantized (not the float graph), and close to it
    assert use_precision(model, config, "float32", checkpoint=work) is None
    assert model.decode_backend is None


def test_training_with_a_graph_backend_is_refused(quantized):
    raw, work, _ = quantized
    config, model = _model(raw, work)
    use_precision(model, config, "int8", checkpoint=work)
    model.train()
    with pytest.raises(RuntimeError, match="int8 decode backend is set: it has no gradient"):
        model(_batch(config))


def test_a_graph_of_other_weights_is_refused(quantized, tmp_path):
    raw, work, onnx_dir = quantized
    config, model = _model(raw, work)
    other = tmp_path / "onnx"
    shutil.copytree(onnx_dir, other)
    report = json.loads((other / REPORT_FILE).read_text())
    report["model_sha256"] = "0" * 64
    (other / REPORT_FILE).write_text(json.dumps(report))
    with pytest.raises(QuantizationError, match="quantized from other weights"):
        use_precision(model, config, "int8", checkpoint=work, onnx_dir=other)
    del report["model_sha256"]
    (other / REPORT_FILE).write_text(json.dumps(report))
    with pytest.raises(QuantizationError, match="no 'model_sha256'"):
        use_precision(model, config, "int8", checkpoint=work, onnx_dir=other)
    (other / REPORT_FILE).unlink()
    with pytest.raises(QuantizationError, match=r"quantize.json: not found \(make it: "):
        use_precision(model, config, "int8", checkpoint=work, onnx_dir=other)
    assert model.decode_backend is None  # nothing half-set


def test_the_command_lines_offer_every_precision():
    from perception.cli import PRECISION_CHOICES
    from perception.deploy.quantize import PRECISIONS

    assert PRECISION_CHOICES == PRECISIONS  # the CLIs' list (no torch import) is the rule's


def test_fold_bn_keeps_the_maps_at_float32_and_beside_an_int8_graph(quantized):
    """`--fold-bn` (the same rule in the node, the test tool and the node benchmark): the
    folded model's maps are the model's up to float rounding, and an INT8 graph still loads
    (it is checked against the checkpoint's weights, not the folded ones)."""
    import argparse

    from perception.cli import add_precision_options

    raw, work, _ = quantized
    config, plain = _model(raw, work)
    _, folded = _model(raw, work)
    use_precision(folded, config, "float32", checkpoint=work, fold_bn=True)
    assert folded.folded_batchnorms > 20 and folded.precision == "float32"
    batch = _batch(config)
    with torch.no_grad():
        want, got = plain.stage_features(batch), folded.stage_features(batch)
    for name in ("lidar_bev", "decoded"):
        a, b = getattr(want, name), getattr(got, name)
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * float(a.abs().max()))
    _, int8 = _model(raw, work)
    use_precision(int8, config, "int8", checkpoint=work, fold_bn=True)
    assert int8.precision == "int8" and int8.folded_batchnorms == folded.folded_batchnorms
    parser = argparse.ArgumentParser()
    add_precision_options(parser)
    assert parser.parse_args(["--fold-bn"]).fold_bn and not parser.parse_args([]).fold_bn


def test_missing_graphs_and_missing_checkpoint_are_refused(quantized, tmp_path):
    raw, work, _ = quantized
    config, model = _model(raw, work)
    with pytest.raises(QuantizationError, match="bev_decoder_head_int8.onnx: not found"):
        use_precision(model, config, "int8", checkpoint=work, onnx_dir=tmp_path)
    with pytest.raises(QuantizationError, match="needs the checkpoint its graph was made from"):
        use_precision(model, config, "int8", checkpoint=None)
    with pytest.raises(QuantizationError, match="precision 'int4'"):
        use_precision(model, config, "int4", checkpoint=work)


def test_a_graph_of_another_config_is_refused(quantized):
    raw, work, _ = quantized
    other = {**raw, "model": {**raw["model"], "fuser_channels": 8}}
    config = parse_config(other)
    model = build_model(config).eval()
    with pytest.raises(QuantizationError, match=r"input 'fused_bev' is .*16.*fused map is \[B, 8"):
        use_precision(model, config, "int8", checkpoint=work)


def test_node_with_int8_gives_offline_int8_detections(quantized, tmp_path):
    """The node parity rule (tests/deploy/test_node_parity.py) with the INT8 decoder head: a
    bag replayed into the node (sequential, clip mode, keyframes) gives for each keyframe the
    detections of offline inference with the same graph; the diagnostics name the precision."""
    raw, work, _ = quantized
    config = parse_config(raw)
    dataset = build_dataset(config, "mini_val", train=False)
    indices = [i for i, r in enumerate(dataset.records) if r["scene_name"] == SCENE][:2]
    key_stamps = {int(dataset.records[i]["timestamp"]) * 1000: i for i in indices}
    offline_model = load_node_model(config, work)
    use_precision(offline_model, config, "int8", checkpoint=work)
    offline = run_inference(offline_model, Subset(dataset, indices), progress=False).detections()

    bag = tmp_path / "scene"
    write_nuscenes_bag(config.data.root, SCENE, bag)
    model = load_node_model(config, work)
    use_precision(model, config, "int8", checkpoint=work)
    jobs = {}
    options = NodeOptions(
        temporal="clip", pipelined=False, wall_timeout=False, process=key_stamps.__contains__
    )
    transport = InProcessTransport()
    node = PerceptionNode(
        model, config, transport, options, on_result=lambda j: jobs.__setitem__(j.stamp_ns, j)
    )
    with node:
        replay_into_node(bag, node, transport)
    assert set(jobs) == set(key_stamps)
    assert node.stats.summary()["precision"] == "int8"
    for stamp, index in key_stamps.items():
        ours, theirs = jobs[stamp].detections, offline[dataset.records[index]["token"]]
        assert len(ours) == len(theirs) > 0
        assert torch.equal(ours.labels, theirs.labels)
        np.testing.assert_allclose(
            ours.boxes.tensor.double().numpy(), theirs.boxes.tensor.numpy(), atol=1e-4
        )
