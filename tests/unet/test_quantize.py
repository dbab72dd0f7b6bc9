"""`inspectd quantize`: static int8 quantisation of a real (random-weight) guided U-Net, checked against fp32."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

onnx = pytest.importorskip("onnx")  # onnxruntime.quantization writes the file with it

from inspectd import cli  # noqa: E402
from inspectd.analysis.engines import create_engine  # noqa: E402
from inspectd.analysis.engines import unet_contract as contract  # noqa: E402
from inspectd.config import SegmentConfig, UnetConfig  # noqa: E402
from inspectd.data import synth  # noqa: E402
from inspectd.errors import EngineError  # noqa: E402
from inspectd.training import quantize  # noqa: E402
from tests.unet.random_unet import build_guided, save  # noqa: E402


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory):
    return save(build_guided(stride=4, seed=11), tmp_path_factory.mktemp("model") / "guided.onnx")


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calib")
    synth.write_dataset(folder, n=3, height=160, width=224, seed=21)
    return folder


def test_int8_file_holds_qdq_nodes_runs_in_the_engine_and_agrees_with_fp32(fp32_model, calib_dir, tmp_path) -> None:
    out = tmp_path / "guided.int8.onnx"
    result = quantize.quantize_model(fp32_model, calib_dir, out, n_tiles=8, tile_px=64)
    assert result.path == out and result.sha256 == quantize.file_sha256(out)
    assert result.agreement >= quantize.MIN_AGREEMENT
    assert result.record["calibration"] == {"images_dir": str(calib_dir), "images": 3, "tiles": 8, "tile_px": 64,
                                            "seed": 0}
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].name == contract.AFFINE_OUTPUT_NAME
    frame = synth.generate(160, 224, seed=99).image
    engine = create_engine(SegmentConfig(engine="unet", backend="cpu", unet=UnetConfig(model=out)))
    reference = create_engine(SegmentConfig(engine="unet", backend="cpu", unet=UnetConfig(model=fp32_model)))
    assert engine.segment(frame).shape == frame.shape
    assert np.mean(engine.segment(frame) == reference.segment(frame)) > 0.9


def test_same_inputs_give_the_same_file(fp32_model, calib_dir, tmp_path) -> None:
    first = quantize.quantize_model(fp32_model, calib_dir, tmp_path / "a.onnx", n_tiles=4, tile_px=64, seed=3)
    second = quantize.quantize_model(fp32_model, calib_dir, tmp_path / "b.onnx", n_tiles=4, tile_px=64, seed=3)
    assert first.sha256 == second.sha256


def test_a_model_that_disagrees_too_much_is_refused_and_not_left_behind(fp32_model, calib_dir, tmp_path,
                                                                        monkeypatch) -> None:
    monkeypatch.setattr(quantize, "MIN_AGREEMENT", 1.01)  # nothing can agree on more than every pixel
    out = tmp_path / "refused.onnx"
    with pytest.raises(EngineError, match="agrees with guided.onnx on only"):
        quantize.quantize_model(fp32_model, calib_dir, out, n_tiles=4, tile_px=64)
    assert not out.exists()


@pytest.mark.parametrize(("folder", "match"), [("missing", "does not exist"), ("empty", "holds no images"),
                                               ("unreadable", "no calibration image could be read")])
def test_calibration_folder_problems_are_clear(fp32_model, tmp_path, folder, match) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "unreadable").mkdir()
    (tmp_path / "unreadable" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(EngineError, match=match):
        quantize.quantize_model(fp32_model, tmp_path / folder, tmp_path / "x.onnx")


def test_cli_adds_the_int8_section_to_the_card(fp32_model, calib_dir, tmp_path, capsys) -> None:
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"name": "guided"}))
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"engines": {"unet@1": {"iou_unmelted": 0.5}}}))
    code = cli.main(["quantize", "--onnx", str(fp32_model), "--calib", str(calib_dir), "--out",
                     str(tmp_path / "m.int8.onnx"), "--tiles", "4", "--tile", "64", "--card", str(card),
                     "--metrics", str(metrics)])
    assert code == 0
    assert "agree with the fp32 model" in capsys.readouterr().out
    written = json.loads(card.read_text())
    assert written["name"] == "guided"
    assert written["int8"]["file"]["name"] == "m.int8.onnx"
    assert written["int8"]["heldout"] == {"engines": {"unet@1": {"iou_unmelted": 0.5}}}


def test_cli_on_a_file_that_is_not_onnx(calib_dir, tmp_path, capsys) -> None:
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not a model")
    code = cli.main(["quantize", "--onnx", str(bogus), "--calib", str(calib_dir), "--out", str(tmp_path / "x.onnx")])
    assert code == 3
    assert "could not quantise" in capsys.readouterr().err


@pytest.mark.parametrize(("in_scale", "in_zero", "out_scale"), [(0.07468504, 124, 0.03844143), (0.0453, 127, 0.0453),
                                                                 (0.012, 0, 0.2), (0.2, 255, 0.0011)])
def test_lookup_requantize_gives_the_same_codes_for_every_input_code(in_scale, in_zero, out_scale) -> None:
    """DequantizeLinear -> Relu -> QuantizeLinear and its QLinearLeakyRelu (alpha 0) lookup agree on all 256 codes."""
    from onnx import TensorProto, helper

    scalars = [helper.make_tensor("s_in", TensorProto.FLOAT, [], [in_scale]),
               helper.make_tensor("z_in", TensorProto.UINT8, [], [in_zero]),
               helper.make_tensor("s_out", TensorProto.FLOAT, [], [out_scale]),
               helper.make_tensor("z_out", TensorProto.UINT8, [], [0])]
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["x", "s_in", "z_in"], ["xf"]),
         helper.make_node("Relu", ["xf"], ["r"], name="relu"),
         helper.make_node("QuantizeLinear", ["r", "s_out", "z_out"], ["y"])],
        "requantize", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 2, 16, 8])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 2, 16, 8])], scalars)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    codes = {"x": np.arange(256, dtype=np.uint8).reshape(1, 2, 16, 8)}

    def run(proto) -> np.ndarray:
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, codes)[0]

    expected = run(model)
    assert quantize.lookup_requantize(model) == 1
    assert [n.op_type for n in model.graph.node] == ["QLinearLeakyRelu"]
    np.testing.assert_array_equal(run(model), expected)
    assert quantize.lookup_requantize(model) == 0


def test_bundled_int8_file_holds_lookups_not_float_requantisations() -> None:
    from inspectd.analysis.engines.unet import bundled_model_path

    model = onnx.load(str(bundled_model_path("int8")))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QLinearLeakyRelu") == 11
    assert quantize.lookup_requantize(model) == 0
