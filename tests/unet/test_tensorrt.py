"""TensorRT: the clean not-installed paths (here), the calibration data, and a GPU-only build-and-run test.

The TensorRT runner and builder are untested on a GPU in this repository's CI: the last
test runs only where tensorrt, cupy/pycuda and a CUDA device exist (marker `gpu`).
"""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from inspectd import cli
from inspectd.analysis.engines import unet_contract as contract
from inspectd.analysis.engines.tensorrt_runtime import require_tensorrt, tensorrt_status
from inspectd.analysis.preprocess import enhance
from inspectd.config import PreprocessConfig, SegmentConfig, UnetConfig
from inspectd.data import synth
from inspectd.errors import EngineError
from inspectd.training.tensorrt_build import BuildOptions, build_engine_plan, calibration_batches

TENSORRT_USABLE, TENSORRT_REASON = tensorrt_status()
needs_no_tensorrt = pytest.mark.skipif(TENSORRT_USABLE, reason="TensorRT is usable here")


def test_importing_the_engines_pulls_in_no_gpu_runtime():
    code = ("import sys, inspectd.analysis.engines.registry, inspectd.training.tensorrt_build, inspectd.reports.evaluate, "
            "inspectd.commands.evaluate, inspectd.commands.build_engine; "
            "from inspectd.analysis.engines import ENGINES; assert 'unet' in ENGINES; "
            "print(sorted(m for m in ('tensorrt', 'cupy', 'pycuda', 'torch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@needs_no_tensorrt
def test_status_and_require_say_it_in_one_line():
    assert not TENSORRT_USABLE
    assert "\n" not in TENSORRT_REASON
    with pytest.raises(EngineError) as excinfo:
        require_tensorrt()
    message = str(excinfo.value)
    assert message.startswith("tensorrt is not installed") and "\n" not in message
    assert "pip install" in message


@needs_no_tensorrt
def test_build_engine_without_tensorrt_exits_2_with_one_line(tmp_path, capsys):
    code = cli.main(["build-engine", "--onnx", str(tmp_path / "model.onnx"), "--fp16", "--out",
                     str(tmp_path / "unet.plan")])
    assert code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("inspectd build-engine: tensorrt is not installed")
    assert not (tmp_path / "unet.plan").exists()


def test_build_engine_int8_without_calibration_images_is_a_usage_error(tmp_path, capsys):
    code = cli.main(["build-engine", "--int8", "--out", str(tmp_path / "unet.plan")])
    assert code == 2
    assert "--int8 needs --calib DIR" in capsys.readouterr().err


@pytest.mark.parametrize(("options", "problem"), [
    (BuildOptions(tile_px=500), "tile_px must be a positive multiple of 32"),
    (BuildOptions(min_tile_px=1024), "larger than tile_px"),
    (BuildOptions(max_batch=0), "max_batch"),
    (BuildOptions(int8=True), "--calib"),
])
def test_bad_build_options_are_refused_before_tensorrt_is_needed(tmp_path, options, problem):
    with pytest.raises(EngineError, match=problem):
        build_engine_plan(tmp_path / "model.onnx", tmp_path / "unet.plan", options)


def test_calibration_batches_are_full_and_normalised_like_inference(tmp_path):
    sample = synth.generate(100, 150, seed=21)
    assert cv2.imwrite(str(tmp_path / "a.png"), sample.image)
    assert cv2.imwrite(str(tmp_path / "a_mask.png"), sample.mask)  # masks are not calibration images
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    batches = calibration_batches(tmp_path, 64, 4, PreprocessConfig())
    # 100x150 -> fixed 64 px tiles on a 112x160 padded frame: 2 rows x 3 columns = 6 tiles -> 2 full batches
    assert [b.shape for b in batches] == [(4, 1, 64, 64), (4, 1, 64, 64)]
    assert all(b.dtype == np.float32 for b in batches)
    expected_first = contract.normalise(enhance(sample.image, PreprocessConfig(), backend="cpu"))[0, 0, :64, :64]
    assert np.allclose(batches[0][0, 0], expected_first)
    assert np.array_equal(batches[1][2], batches[0][0])  # the last batch is filled by repeating tiles


def test_calibration_without_readable_images_is_an_engine_error(tmp_path):
    (tmp_path / "notes.txt").write_text("no images")
    with pytest.raises(EngineError, match="no calibration image"):
        calibration_batches(tmp_path, 64, 4, PreprocessConfig())


def _plan_and_onnx_engines(tmp_path, model):
    """The same model as a TensorRT plan (warmed up) and on ONNX Runtime's CPU provider, 128 px tiles."""
    from inspectd.analysis.engines.unet import UnetEngine

    plan = build_engine_plan(model, tmp_path / "model.plan", BuildOptions(fp16=False, tile_px=128, min_tile_px=64,
                                                                          max_batch=2))
    unet = {"model": model, "engine_plan": plan, "tile_px": 128, "overlap_px": 32}
    on_gpu = UnetEngine(SegmentConfig(engine="unet", backend="tensorrt", unet=UnetConfig(**unet)))
    on_cpu = UnetEngine(SegmentConfig(engine="unet", backend="cpu", unet=UnetConfig(**unet)))
    on_gpu.warm_up()
    assert on_gpu.backend == "tensorrt"
    return on_gpu, on_cpu


@pytest.mark.gpu
@pytest.mark.skipif(not TENSORRT_USABLE, reason=f"needs TensorRT on a GPU: {TENSORRT_REASON}")
def test_tensorrt_plan_matches_onnx_runtime(tmp_path):  # pragma: no cover - GPU only
    pytest.importorskip("onnx")
    import kernels
    from tests.unet.random_unet import build_unet, save

    on_gpu, on_cpu = _plan_and_onnx_engines(tmp_path, save(build_unet(base_channels=4, seed=7),
                                                           tmp_path / "random.onnx"))
    frame = enhance(synth.generate(300, 420, seed=8).image, PreprocessConfig())
    assert np.allclose(on_gpu.blended_logits(frame), on_cpu.blended_logits(frame), atol=1e-2)
    assert np.mean(on_gpu.segment(frame) == on_cpu.segment(frame)) > 0.999
    # The device flow: the frame goes up once, the plan reads the tiles where the kernel wrote them.
    assert np.mean(on_gpu.segment_device(kernels.to_device(frame)) == on_gpu.segment(frame)) > 0.999


@pytest.mark.gpu
@pytest.mark.skipif(not TENSORRT_USABLE, reason=f"needs TensorRT on a GPU: {TENSORRT_REASON}")
def test_tensorrt_device_flow_of_a_guided_model(tmp_path):  # pragma: no cover - GPU only
    pytest.importorskip("onnx")
    import kernels
    from tests.unet.random_unet import build_guided, save

    on_gpu, on_cpu = _plan_and_onnx_engines(tmp_path, save(build_guided(stride=4, seed=9), tmp_path / "guided.onnx"))
    frame = enhance(synth.generate(300, 420, seed=10).image, PreprocessConfig())
    assert np.mean(on_gpu.segment_device(kernels.to_device(frame)) == on_cpu.segment(frame)) > 0.999
