"""`inspectd export`: ONNX with dynamic batch/H/W, parity with torch, the model card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

import onnxruntime as ort  # noqa: E402

from inspectd import cli  # noqa: E402
from inspectd.analysis.engines import create_engine  # noqa: E402
from inspectd.analysis.engines import unet_contract as contract  # noqa: E402
from inspectd.analysis.engines.unet import file_sha256  # noqa: E402
from inspectd.config import SegmentConfig, UnetConfig  # noqa: E402
from inspectd.data.synth import write_dataset  # noqa: E402
from inspectd.errors import EngineError  # noqa: E402
from inspectd.training.export import export_checkpoint, export_onnx, verify_onnx  # noqa: E402
from inspectd.training.model import UNet  # noqa: E402
from inspectd.training.train import TrainSettings, train  # noqa: E402


def _randomised(widths=(4, 8, 16, 32, 64), seed: int = 0, output_stride: int = 1) -> UNet:
    """A model whose BatchNorms hold non-trivial statistics, so folding them is exercised."""
    torch.manual_seed(seed)
    model = UNet(widths=widths, output_stride=output_stride)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ckpt")
    write_dataset(root / "images", n=4, height=64, width=64, seed=2, masks_dir=root / "masks")
    train(TrainSettings(root / "images", root / "masks", root / "run", epochs=1, batch_size=2,
                        tile_px=32, tiles_per_epoch=4, val_fraction=0.25, widths=(4, 8, 16, 32, 64), output_stride=1),
          progress=False)
    return root / "run" / "best.pt"


@pytest.mark.parametrize("shape", [(1, 1, 48, 80), (2, 1, 80, 144), (1, 1, 112, 32)])
def test_onnx_runtime_matches_torch_on_non_square_input(tmp_path: Path, shape) -> None:
    model = _randomised()
    path = tmp_path / "model.onnx"
    export_onnx(model, path)
    assert verify_onnx(model, path, shape=shape, seed=3) < 1e-4
    # and by hand, on a different random input
    inputs = np.random.default_rng(9).standard_normal(shape, dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(inputs)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (actual,) = session.run([contract.OUTPUT_NAME], {contract.INPUT_NAME: inputs})
    assert actual.shape == (shape[0], contract.N_CLASSES, shape[2], shape[3])
    assert np.max(np.abs(actual - expected)) < 1e-4


def test_export_has_contract_names_and_dynamic_axes(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    export_onnx(_randomised(), path)
    graph = onnx.load(str(path)).graph
    (graph_input,), (graph_output,) = graph.input, graph.output
    assert (graph_input.name, graph_output.name) == (contract.INPUT_NAME, contract.OUTPUT_NAME)
    in_dims = graph_input.type.tensor_type.shape.dim
    out_dims = graph_output.type.tensor_type.shape.dim
    assert [d.dim_param != "" for d in in_dims] == [True, False, True, True]
    assert in_dims[1].dim_value == 1
    assert [d.dim_param != "" for d in out_dims] == [True, False, True, True]
    assert out_dims[1].dim_value == contract.N_CLASSES
    assert onnx.load(str(path)).opset_import[0].version >= 17
    assert not any(node.op_type == "BatchNormalization" for node in graph.node)  # folded


def test_verify_refuses_an_onnx_file_that_differs(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    export_onnx(_randomised(seed=1), path)
    with pytest.raises(EngineError, match="differ by up to"):
        verify_onnx(_randomised(seed=2), path)


def test_export_checkpoint_writes_a_card_whose_sha256_matches(tiny_checkpoint: Path, tmp_path: Path) -> None:
    heldout = {"engines": {"unet@1": {"iou_unmelted": 0.5}}}
    result = export_checkpoint(tiny_checkpoint, tmp_path / "m.onnx", heldout_metrics=heldout,
                               training_command="make-believe data + inspectd train")
    card = json.loads((tmp_path / "m.json").read_text())
    assert result.card_path == tmp_path / "m.json"
    assert card["file"]["sha256"] == file_sha256(tmp_path / "m.onnx") == result.sha256
    assert card["file"]["bytes"] == (tmp_path / "m.onnx").stat().st_size
    arch = card["architecture"]
    assert arch["widths"] == [4, 8, 16, 32, 64] and arch["parameters"] > 0
    assert arch["gflops_per_512x512"] == pytest.approx(2 * arch["gmacs_per_512x512"], rel=1e-3)
    assert card["contract"]["input"]["name"] == contract.INPUT_NAME
    assert card["contract"]["output"]["classes"] == {"0": "melted", "1": "unmelted", "2": "pore"}
    assert card["training"]["command"] == "make-believe data + inspectd train"
    assert card["training"]["train_command"] is None  # trained through the API, not the CLI
    assert card["training"]["data"]["n_train_images"] == 3
    assert card["validation"]["val_iou_mean"] is not None
    assert card["heldout"] == heldout
    assert card["export_check"]["max_abs_diff"] < 1e-4


def test_card_envelope_comes_from_the_training_images_and_the_engine_uses_it(tiny_checkpoint: Path,
                                                                             tmp_path: Path) -> None:
    from inspectd.analysis import ood

    result = export_checkpoint(tiny_checkpoint, tmp_path / "m.onnx")
    envelope = ood.load_envelope(result.card_path)  # the card's section, checked
    assert envelope["n_frames"] == 4  # the checkpoint's training folder: 4 frames of 64x64
    assert set(envelope["features"]) == set(ood.FEATURES)
    engine = create_engine(SegmentConfig(engine="unet", backend="cpu", unet=UnetConfig(model=tmp_path / "m.onnx")))
    assert engine.envelope_path == result.card_path
    images = tiny_checkpoint.parents[1] / "images"
    code = cli.main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "x.onnx"),
                     "--envelope-images", str(sorted(images.glob("*.png"))[0]), "--envelope-images", str(images)])
    assert code == 0
    assert json.loads((tmp_path / "x.json").read_text())["envelope"]["n_frames"] == 5


def test_export_is_deterministic(tiny_checkpoint: Path, tmp_path: Path) -> None:
    first = export_checkpoint(tiny_checkpoint, tmp_path / "a.onnx", write_card=False)
    second = export_checkpoint(tiny_checkpoint, tmp_path / "b.onnx", write_card=False)
    assert first.sha256 == second.sha256 and first.card_path is None


def test_cli_export(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    metrics = tmp_path / "heldout.json"
    metrics.write_text('{"images": 2}')
    code = cli.main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "x.onnx"),
                     "--metrics", str(metrics), "--card", str(tmp_path / "card.json")])
    assert code == 0
    assert "max |diff|" in capsys.readouterr().out
    assert json.loads((tmp_path / "card.json").read_text())["heldout"] == {"images": 2}


def test_cli_export_of_a_file_that_is_not_a_checkpoint(tmp_path: Path, capsys) -> None:
    bogus = tmp_path / "bogus.pt"
    torch.save({"weights": 1}, bogus)
    code = cli.main(["export", "--checkpoint", str(bogus), "--out", str(tmp_path / "x.onnx")])
    assert code == 2
    assert "not an inspectd U-Net checkpoint" in capsys.readouterr().err


# --------------------------------------------------------------------------- guided U-Net (output_stride > 1)


def test_guided_export_returns_the_coarse_pairs_and_matches_torch(tmp_path: Path) -> None:
    model = _randomised(widths=(8, 16, 32, 64), output_stride=4)
    path = tmp_path / "guided.onnx"
    export_onnx(model, path)
    assert not model.training  # the exporter restores the wrapper's mode onto the model
    assert verify_onnx(model, path) < 1e-4
    (graph_output,) = onnx.load(str(path)).graph.output
    assert graph_output.name == contract.AFFINE_OUTPUT_NAME
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (pairs,) = session.run(None, {contract.INPUT_NAME: np.zeros((2, 1, 96, 160), np.float32)})
    assert pairs.shape == (2, 2 * contract.N_CLASSES, 24, 40)


def test_engine_on_a_guided_export_gives_the_argmax_of_the_torch_logits(tmp_path: Path) -> None:
    """The whole chain: torch full-resolution logits == ONNX pairs + tiles + kernels.guided_argmax."""
    model = _randomised(widths=(8, 16, 32, 64), output_stride=4, seed=4)
    path = tmp_path / "guided.onnx"
    export_onnx(model, path)
    frame = np.random.default_rng(5).integers(0, 256, (200, 330), dtype=np.uint8)
    frame = np.asarray(torch.nn.functional.avg_pool2d(torch.from_numpy(frame[None].astype(np.float32)), 5, 1, 2)[0]
                       ).astype(np.uint8)  # some spatial structure
    padded = np.pad(frame, ((0, 224 - 200), (0, 352 - 330)), mode="reflect")
    with torch.no_grad():
        logits = model(torch.from_numpy(contract.normalise(padded)))[0, :, :200, :330].numpy()
    expected = logits.argmax(0)
    whole = create_engine(SegmentConfig(engine="unet", backend="cpu", unet=UnetConfig(model=path, tile_px=512)))
    assert whole.segment(frame).shape == frame.shape
    assert whole.output_stride == 4
    assert np.mean(whole.segment(frame) == expected) > 0.9999
    tiled = create_engine(SegmentConfig(engine="unet", backend="cpu",
                                        unet=UnetConfig(model=path, tile_px=128, overlap_px=32)))
    assert np.mean(tiled.segment(frame) == expected) > 0.97


def test_guided_card_records_the_affine_output(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_dataset(root / "images", n=4, height=64, width=64, seed=3, masks_dir=root / "masks")
    train(TrainSettings(root / "images", root / "masks", root / "run", epochs=1, batch_size=2, tile_px=32,
                        tiles_per_epoch=4, val_fraction=0.25, widths=(4, 8), output_stride=4), progress=False)
    result = export_checkpoint(root / "run" / "best.pt", tmp_path / "g.onnx")
    assert result.card["architecture"]["output_stride"] == 4
    assert result.card["architecture"]["summary"].startswith("guided U-Net")
    assert result.card["contract"]["output"]["name"] == contract.AFFINE_OUTPUT_NAME
    assert result.card["contract"]["output"]["shape"] == ["N", 6, "H/4", "W/4"]
