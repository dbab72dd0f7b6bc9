"""The U-Net engine's GPU-resident path (`segment_device`, `kernels.gpu_tiles`) against the host path.

Runs on a real GPU, or on the CPU under numba's simulator (the CI job `make test-gpu-sim`):
    NUMBA_ENABLE_CUDASIM=1 .venv/bin/pytest -q -m gpu tests/unet/test_engine_device.py
Skips the whole module otherwise. On the simulator the device path must give the host
path's tiles, blends and masks bit for bit; on a GPU, fused multiply-adds may move a pixel
at a near-tie, so there the masks must agree on all but 0.1 % of the pixels.
"""

from __future__ import annotations

import numpy as np
import pytest

from kernels import cuda_device, gpu_config

pytestmark = pytest.mark.gpu

_USABLE, _REASON = cuda_device.cuda_usable()
if not _USABLE:
    pytest.skip(f"needs a CUDA GPU or NUMBA_ENABLE_CUDASIM=1: {_REASON}", allow_module_level=True)

pytest.importorskip("onnx")

from numba import cuda  # noqa: E402  (only once a GPU or the simulator is known to be there)

import kernels  # noqa: E402
from inspectd.analysis.analyzer import Analyzer  # noqa: E402
from inspectd.analysis.engines import create_engine, tiling  # noqa: E402
from inspectd.analysis.engines import unet_contract as contract  # noqa: E402
from inspectd.analysis.engines.unet import UnetEngine  # noqa: E402
from inspectd.analysis.preprocess import enhance  # noqa: E402
from inspectd.config import Config, PreprocessConfig, SegmentConfig, UnetConfig  # noqa: E402
from inspectd.data import synth  # noqa: E402
from inspectd.errors import EngineError  # noqa: E402
from inspectd.types import Frame  # noqa: E402
from kernels.gpu_tiles import gpu_blend_add, gpu_blend_argmax, gpu_blend_mean, gpu_normalised_tiles  # noqa: E402
from tests.unet.random_unet import build_guided, build_unet, save  # noqa: E402

EXACT = cuda_device.is_simulator()


@pytest.fixture(autouse=True)
def small_launches(monkeypatch):
    """Tiny blocks: many blocks and grid-stride row loops on small images (and a fast simulator)."""
    monkeypatch.setattr(gpu_config, "THREADS_PER_BLOCK", 32)
    monkeypatch.setattr(gpu_config, "HIST_PIXELS_PER_BLOCK", 256)
    monkeypatch.setattr(gpu_config, "PIXEL_BLOCK", (8, 2))
    monkeypatch.setattr(gpu_config, "ROWS_PER_THREAD", 2)


def _assert_masks_match(device_mask: np.ndarray, host_mask: np.ndarray) -> None:
    assert device_mask.shape == host_mask.shape and device_mask.dtype == np.uint8
    if EXACT:
        assert np.array_equal(device_mask, host_mask)
    else:
        assert np.mean(device_mask == host_mask) >= 0.999


@pytest.mark.parametrize(("height", "width", "tile_px", "dtype"), [
    (40, 70, 32, np.uint8),   # several tiles, reflected bottom/right padding
    (13, 9, 32, np.uint16),   # padding wider than the frame: repeated reflection
    (1, 20, 32, np.uint8),    # one pixel high: numpy repeats the edge
])
def test_device_tiles_are_the_host_tiles(height, width, tile_px, dtype) -> None:
    rng = np.random.default_rng(height * width)
    frame = rng.integers(0, np.iinfo(dtype).max + 1, (height, width)).astype(dtype)
    plan = tiling.plan_tiles(height, width, tile_px, 8, multiple=8)
    host = [t.copy() for t in tiling.extract_tiles(contract.normalise(tiling.pad_frame(frame, plan))[0, 0], plan)]
    out = cuda.device_array((plan.n_tiles, 1, *plan.tile_hw), np.float32)
    table = cuda.to_device(np.ascontiguousarray(contract.normalise_table(np.dtype(dtype))))
    gpu_normalised_tiles(cuda.to_device(frame), table, np.array(plan.origins), out)
    assert np.array_equal(out.copy_to_host()[:, 0], np.stack(host))


def test_device_blend_is_the_host_blend() -> None:
    plan = tiling.plan_tiles(50, 75, 32, 8, multiple=8)
    rng = np.random.default_rng(3)
    outputs = rng.standard_normal((plan.n_tiles, 3, *plan.tile_hw)).astype(np.float32)
    blender = tiling.TileBlender(plan, 3)
    total = cuda.to_device(np.zeros((3, *plan.padded_hw), np.float32))
    weight_sum = cuda.to_device(np.zeros(plan.padded_hw, np.float32))
    for (y, x), tile_out in zip(plan.origins, outputs, strict=True):
        blender.add(tile_out, y, x)
        gpu_blend_add(total, weight_sum, cuda.to_device(tile_out), (y, x), plan.overlap_px,
                      tiling.feather_sides(plan, y, x))
    assert np.array_equal(weight_sum.copy_to_host(), blender.weight_sum)
    assert np.array_equal(gpu_blend_argmax(total, plan.frame_hw).copy_to_host(), blender.argmax())
    gpu_blend_mean(total, weight_sum)
    # Within float32 rounding, not bit for bit: on a real GPU the compiler fuses the
    # accumulation's multiply and add (one rounding instead of NumPy's two), a few ulp apart
    # (seen on an H200); the simulator and NumPy round the same way.
    np.testing.assert_allclose(total.copy_to_host(), blender.blended(), rtol=2e-6, atol=1e-6)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("device-models")
    return {
        "guided": save(build_guided(stride=4, seed=7), folder / "guided.onnx"),
        "logits": save(build_unet(base_channels=2, levels=2, seed=8), folder / "logits.onnx"),
    }


def _engine(model, **unet_kwargs) -> UnetEngine:
    engine = create_engine(SegmentConfig(engine="unet", backend="cpu", unet=UnetConfig(model=model, **unet_kwargs)))
    engine.load()
    return engine


@pytest.mark.parametrize("model", ["guided", "logits"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_segment_device_gives_the_host_mask(models, model, dtype) -> None:
    engine = _engine(models[model], tile_px=64, overlap_px=16)
    frame = synth.generate(72, 100, seed=11).image
    if dtype == np.uint16:
        frame = frame.astype(np.uint16) * 257
    assert engine.takes_device_frames
    _assert_masks_match(engine.segment_device(kernels.to_device(frame)), engine.segment(frame))


@pytest.mark.parametrize("model", ["guided", "logits"])
def test_segment_device_assessed_gives_the_host_mask_and_confidence(models, model) -> None:
    engine = _engine(models[model], tile_px=64, overlap_px=16)
    frame = synth.generate(72, 100, seed=11).image
    device = engine.segment_device_assessed(kernels.to_device(frame))
    host = engine.segment_assessed(frame)
    _assert_masks_match(device.mask, host.mask)
    assert device.confidence == pytest.approx(host.confidence, abs=1e-6 if EXACT else 1e-3)


def test_segment_device_downscaled_segments_a_host_copy(models) -> None:
    engine = _engine(models["guided"], tile_px=64, overlap_px=16, scale=0.5)
    frame = synth.generate(64, 96, seed=12).image
    assert not engine.takes_device_frames
    assert np.array_equal(engine.segment_device(kernels.to_device(frame)), engine.segment(frame))


def test_segment_device_refuses_a_colour_frame(models) -> None:
    engine = _engine(models["guided"])
    with pytest.raises(EngineError, match="2-D uint8 or uint16"):
        engine.segment_device(cuda.to_device(np.zeros((8, 8, 3), np.uint8)))


def test_the_analyzer_device_flow_matches_the_host_flow(models) -> None:
    """Upload once, CLAHE and U-Net on the device, mask and enhanced frame back: same verdict."""
    cfg = Config.model_validate({
        "preprocess": {"clahe": {"tile_grid": [2, 2]}},
        "segment": {"engine": "unet", "backend": "cpu",
                    "unet": {"model": str(models["guided"]), "tile_px": 64, "overlap_px": 16}},
        "trust": {"ood": {"action": "warn"}},  # a 64x80 frame under a 2x2 CLAHE grid may be flagged; keep its numbers
    })
    host_flow = Analyzer(cfg)
    device_flow = Analyzer(cfg, device_frames=True)
    assert device_flow.device_frames and not host_flow.device_frames
    sample = synth.generate(64, 80, seed=13)
    host = host_flow.analyze(Frame(sample.image, "synthetic"))
    device = device_flow.analyze(Frame(sample.image, "synthetic"))
    assert device.verdict.result == host.verdict.result
    assert device.assessment.confidence == pytest.approx(host.assessment.confidence, abs=0.05)
    assert np.abs(device.enhanced.astype(int) - host.enhanced.astype(int)).max() <= 1  # the CLAHE contract
    assert np.mean(device.mask == host.mask) >= 0.99  # the CLAHE may differ by a grey level
    if EXACT:  # from the same enhanced frame, the same mask
        assert np.array_equal(device.mask, host_flow.engine.segment(device.enhanced))


def test_enhance_on_device_keeps_denoise_on_the_host_and_clahe_within_one_level() -> None:
    from inspectd.analysis.preprocess import enhance_on_device

    cfg = PreprocessConfig.model_validate({"denoise": "median", "denoise_ksize": 3, "clahe": {"tile_grid": [2, 2]}})
    frame = synth.generate(48, 64, seed=14).image
    on_device = enhance_on_device(frame, cfg)
    assert cuda_device.is_device_array(on_device)
    assert np.abs(kernels.to_host(on_device).astype(int) - enhance(frame, cfg, backend="cpu").astype(int)).max() <= 1


def test_an_engine_without_a_device_path_segments_a_host_copy() -> None:
    engine = create_engine(SegmentConfig(engine="classical", backend="cpu"))
    frame = enhance(synth.generate(64, 64, seed=15).image, PreprocessConfig(), backend="cpu")
    assert not engine.takes_device_frames
    assert np.array_equal(engine.segment_device(cuda.to_device(frame)), engine.segment(frame))
    assert engine.segment_device_assessed(cuda.to_device(frame)).confidence == engine.segment_assessed(frame).confidence
