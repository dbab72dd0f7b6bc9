"""The U-Net engine on real ONNX Runtime sessions of random-weight models (no torch, no bundled model needed).

Measured when written (333x700 synthetic frame, whole-frame inference as reference):
random U-Net (base 4 channels, 4 poolings) tiles 256/overlap 64: argmax agreement 0.995,
largest jump of the error between neighbouring pixels 0.43 vs 4.3 with overlap 0 (a seam);
tiles 128/32: agreement 0.980. The shallow model (receptive radius 2 px): agreement 0.9995+,
and exact away from tile edges.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading

import numpy as np
import onnxruntime as ort
import pytest

import kernels

pytest.importorskip("onnx")

from inspectd import config as config_module  # noqa: E402
from inspectd.analysis.analyzer import Analyzer, engine_settings  # noqa: E402
from inspectd.analysis.engines import ENGINES, SegmentationEngine, create_engine, tiling  # noqa: E402
from inspectd.analysis.engines import unet_contract as contract  # noqa: E402
from inspectd.analysis.engines.onnx_session import choose_providers  # noqa: E402
from inspectd.analysis.engines.tensorrt_runtime import tensorrt_status  # noqa: E402
from inspectd.analysis.engines.unet import UnetEngine, bundled_model_path  # noqa: E402
from inspectd.analysis.preprocess import enhance  # noqa: E402
from inspectd.config import PreprocessConfig, SegmentConfig, UnetConfig  # noqa: E402
from inspectd.data import synth  # noqa: E402
from inspectd.errors import EngineError, KernelResourceError  # noqa: E402
from inspectd.types import Frame  # noqa: E402
from tests.unet.random_unet import (  # noqa: E402
    LOCAL_RADIUS_PX,
    build_guided,
    build_local,
    build_shrinking,
    build_unet,
    save,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return {
        "unet": save(build_unet(base_channels=4, seed=1), folder / "unet.onnx"),
        "local": save(build_local(seed=2), folder / "local.onnx"),
    }


@pytest.fixture(scope="module")
def frame_333x700():
    return enhance(synth.generate(333, 700, seed=5).image, PreprocessConfig())


def _engine(model, backend="cpu", **unet_kwargs) -> UnetEngine:
    cfg = SegmentConfig(engine="unet", backend=backend, unet=UnetConfig(model=model, **unet_kwargs))
    engine = create_engine(cfg)
    assert isinstance(engine, UnetEngine)
    return engine


def _whole_frame_logits(model_path, enhanced):
    """Reference: the whole (reflect-padded) frame through ONNX Runtime in one call."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    plan = tiling.plan_tiles(*enhanced.shape, 4096, 0, multiple=contract.INPUT_MULTIPLE)
    logits = session.run(None, {"image": contract.normalise(tiling.pad_frame(enhanced, plan))})[0][0]
    return logits[:, :enhanced.shape[0], :enhanced.shape[1]]


# --------------------------------------------------------------------------- interface


def test_unet_is_registered_and_honours_the_engine_interface(models):
    assert ENGINES["unet"] is UnetEngine
    engine = _engine(models["unet"])
    assert isinstance(engine, SegmentationEngine)
    assert engine.backend == "unloaded"
    engine.load()
    engine.load()
    engine.warm_up()
    assert engine.name == "unet"
    assert engine.backend == "cpu"
    assert engine.model_hash == hashlib.sha256(models["unet"].read_bytes()).hexdigest()
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (48, 64), dtype=np.uint8)
    for image in (frame, frame.astype(np.uint16) * 257):
        mask = engine.segment(image)
        assert mask.dtype == np.uint8 and mask.shape == image.shape
        assert set(np.unique(mask).tolist()) <= {0, 1, 2}
    # uint16 x257 normalises to the same network input as uint8
    assert np.array_equal(engine.segment(frame), engine.segment(frame.astype(np.uint16) * 257))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_tiles_normalised_into_the_batch_equal_the_normalised_frame_cut(dtype):
    """The engine normalises each tile (a strided view of the padded frame) straight into its
    batch: the same float32 values as normalising the frame and cutting the tile out."""
    rng = np.random.default_rng(7)
    frame = rng.integers(0, np.iinfo(dtype).max, (333, 700), dtype=dtype, endpoint=True)
    plan = tiling.plan_tiles(*frame.shape, 256, 32, multiple=contract.INPUT_MULTIPLE)
    padded = tiling.pad_frame(frame, plan)
    whole = contract.normalise(padded)[0, 0]
    batch = np.full((plan.n_tiles, 1, *plan.tile_hw), np.nan, np.float32)
    for slot, tile in enumerate(tiling.extract_tiles(padded, plan)):
        assert not tile.flags.c_contiguous or plan.n_tiles == 1
        contract.normalise_into(tile, batch[slot, 0])
    for slot, want in enumerate(tiling.extract_tiles(whole, plan)):
        assert np.array_equal(batch[slot, 0], want), slot


@pytest.mark.parametrize(("height", "width"), [(1, 1), (16, 16), (17, 900), (333, 700), (700, 333)])
def test_any_frame_size_gives_a_mask_of_that_size(models, height, width):
    engine = _engine(models["unet"], tile_px=128, overlap_px=32)
    image = np.random.default_rng(height * width).integers(0, 256, (height, width), dtype=np.uint8)
    mask = engine.segment(image)
    assert mask.shape == (height, width) and mask.dtype == np.uint8


# --------------------------------------------------------------------------- tiling against whole-frame inference


def test_frame_that_fits_in_one_tile_equals_whole_frame_inference(models, frame_333x700):
    frame = frame_333x700[:300, :500]
    engine = _engine(models["unet"], tile_px=512, overlap_px=64)
    whole = _whole_frame_logits(models["unet"], frame)
    assert np.array_equal(engine.segment(frame), np.argmax(whole, axis=0).astype(np.uint8))
    assert np.allclose(engine.blended_logits(frame), whole, atol=1e-5)


def _interior_mask(plan: tiling.TilePlan, margin_px: int) -> np.ndarray:
    """Pixels that every covering tile sees farther than `margin_px` from its inner edges."""
    exact = np.ones(plan.padded_hw, bool)
    tile_h, tile_w = plan.tile_hw
    padded_h, padded_w = plan.padded_hw
    for y, x in plan.origins:
        inner = np.ones(plan.tile_hw, bool)
        if y > 0:
            inner[:margin_px] = False
        if y + tile_h < padded_h:
            inner[-margin_px:] = False
        if x > 0:
            inner[:, :margin_px] = False
        if x + tile_w < padded_w:
            inner[:, -margin_px:] = False
        exact[y:y + tile_h, x:x + tile_w] &= inner
    return exact[:plan.frame_hw[0], :plan.frame_hw[1]]


def test_tiles_of_odd_frames_blend_to_whole_frame_inference_on_a_local_model(models, frame_333x700):
    """With a small receptive field, blending is exact wherever no tile edge is within reach."""
    engine = _engine(models["local"], tile_px=128, overlap_px=32)
    whole = _whole_frame_logits(models["local"], frame_333x700)
    blended = engine.blended_logits(frame_333x700)
    plan = tiling.plan_tiles(333, 700, 128, 32, multiple=contract.INPUT_MULTIPLE)
    assert plan.n_tiles > 6
    interior = _interior_mask(plan, LOCAL_RADIUS_PX)
    assert interior.mean() > 0.9
    assert np.allclose(blended[:, interior], whole[:, interior], atol=1e-4)
    agreement = np.mean(engine.segment(frame_333x700) == np.argmax(whole, axis=0))
    assert agreement >= 0.999


def test_tiled_unet_agrees_with_whole_frame_and_blending_leaves_no_seams(models, frame_333x700):
    whole = _whole_frame_logits(models["unet"], frame_333x700)

    def error_jump(overlap_px):
        engine = _engine(models["unet"], tile_px=256, overlap_px=overlap_px)
        blended = engine.blended_logits(frame_333x700)
        error = blended - whole
        jump = max(np.abs(np.diff(error, axis=1)).max(), np.abs(np.diff(error, axis=2)).max())
        return jump, np.mean(np.argmax(blended, axis=0) == np.argmax(whole, axis=0))

    blended_jump, blended_agreement = error_jump(64)
    cut_jump, cut_agreement = error_jump(0)
    assert blended_agreement >= 0.98
    assert blended_agreement > cut_agreement
    # A hard cut between tiles is a step in the error; the feathered overlap smooths it out.
    assert blended_jump < 0.25 * cut_jump


def test_batching_tiles_does_not_change_the_result(models, frame_333x700, monkeypatch):
    import inspectd.analysis.engines.unet as unet_module

    batched = _engine(models["unet"], tile_px=128, overlap_px=32).blended_logits(frame_333x700)
    monkeypatch.setattr(unet_module, "TILES_PER_RUN", 1)
    single = _engine(models["unet"], tile_px=128, overlap_px=32).blended_logits(frame_333x700)
    assert np.allclose(batched, single, atol=1e-4)


def test_a_call_takes_at_most_the_batch_pixels_and_the_result_is_the_same(models, frame_333x700, monkeypatch):
    """Large tiles go fewer per network call (at least one): 333x700 in 128 px tiles with 32 px overlap is 28
    tiles, 4 per call, or 2 per call with a budget of two tiles' pixels; the blended output is the same."""
    import inspectd.analysis.engines.unet as unet_module

    def batch_sizes(engine: UnetEngine) -> tuple[list[int], np.ndarray]:
        engine.load()
        runner, sizes = engine._runner, []
        real_run = runner.run

        def recording_run(batch):
            sizes.append(len(batch))
            return real_run(batch)

        monkeypatch.setattr(runner, "run", recording_run)
        return sizes, engine.blended_logits(frame_333x700)

    default_sizes, default_logits = batch_sizes(_engine(models["unet"], tile_px=128, overlap_px=32))
    monkeypatch.setattr(unet_module, "BATCH_PIXELS", 2 * 128 * 128 + 1)
    budget_sizes, budget_logits = batch_sizes(_engine(models["unet"], tile_px=128, overlap_px=32))
    monkeypatch.setattr(unet_module, "BATCH_PIXELS", 1)
    one_sizes, _ = batch_sizes(_engine(models["unet"], tile_px=128, overlap_px=32))
    assert default_sizes == [4] * 7 and budget_sizes == [2] * 14 and one_sizes == [1] * 28
    assert np.allclose(default_logits, budget_logits, atol=1e-4)


def test_scale_below_one_keeps_the_frame_size_and_most_of_the_mask(models, frame_333x700):
    full = _engine(models["local"], tile_px=256, overlap_px=32).segment(frame_333x700)
    half = _engine(models["local"], tile_px=256, overlap_px=32, scale=0.5).segment(frame_333x700)
    assert half.shape == full.shape and half.dtype == np.uint8
    # Measured 0.84 for this random 2-px model, whose output follows pixel-level noise.
    assert np.mean(half == full) > 0.7


def test_concurrent_segment_calls_give_the_same_masks(models, frame_333x700):
    engine = _engine(models["unet"], tile_px=128, overlap_px=32)
    expected = engine.segment(frame_333x700)
    results: list[np.ndarray] = []

    def work():
        results.append(engine.segment(frame_333x700))

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3
    assert all(np.array_equal(r, expected) for r in results)


# --------------------------------------------------------------------------- bad models fail at load


def _refused_at_load(model_path, match):
    engine = _engine(model_path)
    with pytest.raises(EngineError, match=match) as excinfo:
        engine.load()
    assert "\n" not in str(excinfo.value)
    return str(excinfo.value)


def test_missing_model_file_is_an_engine_error_at_load(tmp_path):
    _refused_at_load(tmp_path / "nope.onnx", "does not exist")


def test_file_that_is_not_onnx_is_an_engine_error_at_load(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"this is not a protobuf" * 10)
    _refused_at_load(path, "cannot be loaded by ONNX Runtime")


def test_wrong_input_name_is_an_engine_error_at_load(tmp_path):
    path = save(build_unet(base_channels=2, levels=1, input_name="x"), tmp_path / "x.onnx")
    assert "expected ['image']" in _refused_at_load(path, "breaks the model contract")


def test_wrong_output_name_is_an_engine_error_at_load(tmp_path):
    path = save(build_unet(base_channels=2, levels=1, output_name="out"), tmp_path / "out.onnx")
    _refused_at_load(path, "expected 'logits'")


def test_declared_wrong_class_count_is_an_engine_error_at_load(tmp_path):
    path = save(build_unet(base_channels=2, levels=1, n_classes=2), tmp_path / "two.onnx")
    _refused_at_load(path, r"expected \[N, 3, H, W\]")


def test_inferred_wrong_class_count_is_an_engine_error_at_load(tmp_path):
    path = save(build_unet(base_channels=2, levels=1, n_classes=2, declare_classes=False), tmp_path / "sym.onnx")
    _refused_at_load(path, r"expected \[N, 3, H, W\]")


def test_output_of_the_wrong_size_is_caught_by_the_load_probe(tmp_path):
    path = save(build_shrinking(), tmp_path / "shrinking.onnx")
    _refused_at_load(path, r"returned 'logits' of shape \[1, 3, 16, 16\] for a \[1, 1, 32, 32\] input")


def test_bad_model_refuses_the_analyzer_at_start_up(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\x00" * 64)
    cfg = config_module.parse_object({"segment": {"engine": "unet", "unet": {"model": str(path)}}})
    with pytest.raises(EngineError):
        Analyzer(cfg)


def test_missing_bundled_model_is_a_clear_engine_error():
    if bundled_model_path().is_file():
        pytest.skip("the bundled model is present")
    with pytest.raises(EngineError, match="bundled U-Net model .* is missing .*; set segment.unet.model"):
        create_engine(SegmentConfig(engine="unet")).load()


# --------------------------------------------------------------------------- backend choice and fallback


def test_backend_auto_and_cpu_run_on_the_cpu_here(models):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("ONNX Runtime offers CUDA here")
    for backend in ("auto", "cpu"):
        engine = _engine(models["local"], backend=backend)
        engine.load()
        assert engine.backend == "cpu"


def test_backend_cuda_without_the_cuda_provider_is_one_clear_line(models):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("ONNX Runtime offers CUDA here")
    with pytest.raises(EngineError, match="backend cuda: ONNX Runtime here has no CUDAExecutionProvider") as excinfo:
        _engine(models["local"], backend="cuda").load()
    assert "\n" not in str(excinfo.value)


def test_backend_tensorrt_without_tensorrt_is_one_clear_line(models, tmp_path):
    if tensorrt_status()[0]:
        pytest.skip("TensorRT is usable here")
    plan = tmp_path / "unet.plan"
    plan.write_bytes(b"not used")
    with pytest.raises(EngineError, match="backend tensorrt: tensorrt is not installed") as excinfo:
        _engine(models["local"], backend="tensorrt", engine_plan=plan).load()
    assert "\n" not in str(excinfo.value)


def test_backend_tensorrt_without_a_plan_or_provider_is_one_clear_line(models):
    if "TensorrtExecutionProvider" in ort.get_available_providers():
        pytest.skip("ONNX Runtime offers TensorRT here")
    with pytest.raises(EngineError, match="backend tensorrt: no segment.unet.engine_plan") as excinfo:
        _engine(models["local"], backend="tensorrt").load()
    assert "\n" not in str(excinfo.value)


def test_backend_auto_with_a_plan_but_no_tensorrt_falls_back_with_one_warning(models, tmp_path, caplog):
    if tensorrt_status()[0]:
        pytest.skip("TensorRT is usable here")
    plan = tmp_path / "unet.plan"
    plan.write_bytes(b"not used")
    engine = _engine(models["local"], backend="auto", engine_plan=plan)
    with caplog.at_level(logging.WARNING):
        engine.load()
    assert engine.backend in ("cpu", "cuda")
    assert engine.model_hash == hashlib.sha256(models["local"].read_bytes()).hexdigest()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "tensorrt" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    assert "ONNX Runtime instead" in warnings[0].getMessage()


def test_provider_choice_table():
    cpu_only = ["CPUExecutionProvider"]
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("auto", cpu_only).backend == "cpu"
    assert choose_providers("auto", gpu).backend == "cuda"
    assert choose_providers("cpu", gpu).providers == ("CPUExecutionProvider",)
    assert choose_providers("cuda", gpu).providers[0] == "CUDAExecutionProvider"
    assert choose_providers("tensorrt", gpu).providers[0] == "TensorrtExecutionProvider"
    for backend in ("cuda", "tensorrt"):
        with pytest.raises(EngineError):
            choose_providers(backend, cpu_only)


# --------------------------------------------------------------------------- through the analysis pipeline


def test_analyzer_with_the_unet_engine_records_engine_backend_and_model_hash(models):
    from inspectd.reports.report import result_record

    cfg = config_module.parse_object({"segment": {"engine": "unet", "backend": "cpu",
                                                  "unet": {"model": str(models["unet"]), "tile_px": 128,
                                                           "overlap_px": 16}}})
    analyzer = Analyzer(cfg)
    analyzer.engine.warm_up()
    sample = synth.generate(200, 260, seed=9)
    result = analyzer.analyze(Frame(sample.image, "synthetic"))
    assert result.mask is not None and result.mask.shape == (200, 260)
    record = result_record(result, cfg, engine_name=analyzer.engine.name, backend=analyzer.engine.backend,
                           model_hash=analyzer.engine.model_hash)
    assert record["engine"] == {"name": "unet", "backend": "cpu",
                                "model_hash": hashlib.sha256(models["unet"].read_bytes()).hexdigest()}


@pytest.mark.parametrize(("workers", "configured", "expected"), [
    (1, 0, 0),  # one worker: ONNX Runtime's default, every core per inference
    (2, 0, "cores // 2"),  # several: the cores shared out among them
    (64, 0, 1),  # never below one thread
    (2, 3, 3),  # an explicit count is kept
])
def test_the_unets_inference_threads_are_shared_among_the_analysis_workers(models, workers, configured, expected):
    cores = len(os.sched_getaffinity(0))
    want = max(1, cores // 2) if expected == "cores // 2" else expected
    cfg = config_module.parse_object({
        "pipeline": {"workers": workers},
        "segment": {"engine": "unet", "backend": "cpu",
                    "unet": {"model": str(models["unet"]), "intra_op_threads": configured}},
    })
    assert engine_settings(cfg).unet.intra_op_threads == want
    assert cfg.segment.unet.intra_op_threads == configured  # the config itself is left as written
    analyzer = Analyzer(cfg)
    analyzer.engine.load()
    assert analyzer.engine._runner.session.get_session_options().intra_op_num_threads == want


def test_engine_settings_leave_a_classical_station_as_configured():
    cfg = config_module.parse_object({"pipeline": {"workers": 2}})
    assert engine_settings(cfg) == cfg.segment


# --------------------------------------------------------------------------- guided U-Net (output `affine`)


def test_guided_model_output_stride_is_read_from_the_probe(tmp_path) -> None:
    for stride in (2, 4, 8):
        engine = _engine(save(build_guided(stride=stride, seed=stride), tmp_path / f"g{stride}.onnx"))
        engine.load()
        assert engine.output_stride == stride


def test_guided_tiles_agree_with_whole_frame_pairs_through_the_kernel(tmp_path, frame_333x700) -> None:
    path = save(build_guided(stride=4, seed=3), tmp_path / "guided.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    plan = tiling.plan_tiles(333, 700, 4096, 0, multiple=contract.INPUT_MULTIPLE)
    pairs = session.run(None, {"image": contract.normalise(tiling.pad_frame(frame_333x700, plan))})[0][0]
    whole = kernels.guided_argmax(pairs, frame_333x700, 4)
    one_tile = _engine(path, tile_px=1024, overlap_px=64)
    assert np.array_equal(one_tile.segment(frame_333x700), whole)
    assert np.allclose(one_tile.blended_logits(frame_333x700), pairs[:, :84, :175], atol=1e-5)
    tiled = _engine(path, tile_px=128, overlap_px=32)
    mask = tiled.segment(frame_333x700)
    assert mask.shape == (333, 700) and mask.dtype == np.uint8
    assert np.mean(mask == whole) > 0.99  # receptive field 3 coarse px: only tile borders differ


def test_guided_output_with_the_wrong_channel_count_is_refused_at_load(tmp_path) -> None:
    path = save(build_guided(stride=4, n_out=4), tmp_path / "bad.onnx")
    _refused_at_load(path, r"output 'affine' has shape \['N', 4, 'h', 'w'\], expected \[N, 6, H, W\]")


# --------------------------------------------------------------------------- device frames (GPU flow)


def test_io_bound_run_writes_the_same_output_as_run(tmp_path) -> None:
    """The GPU flow binds tile and output buffers by address; on the CPU provider the same binding runs on host memory."""
    engine = _engine(save(build_guided(stride=4, seed=4), tmp_path / "guided.onnx"))
    engine.load()
    runner = engine._runner
    batch = np.random.default_rng(1).standard_normal((3, 1, 64, 96)).astype(np.float32)
    out = np.full((3, 6, 16, 24), np.nan, np.float32)
    runner.run_bound(batch, out)
    assert np.array_equal(out, runner.run(batch))
    with pytest.raises(EngineError, match="float32"):
        runner.run_bound(batch, np.empty((3, 6, 16, 24), np.float64))


def test_analyzer_keeps_frames_on_the_host_without_a_gpu_engine(models) -> None:
    cfg = config_module.parse_object({"segment": {"engine": "unet", "backend": "auto",
                                                  "unet": {"model": str(models["local"])}}})
    analyzer = Analyzer(cfg)
    assert analyzer.engine.takes_device_frames  # the engine could, but it runs on the CPU here
    assert analyzer.device_frames is (analyzer.engine.backend != "cpu" and kernels.cuda_usable()[0])


def test_forcing_the_device_flow_without_a_gpu_fails_at_start_up_naming_cuda(models) -> None:
    if kernels.cuda_usable()[0]:
        pytest.skip("a GPU or the simulator is usable here")
    cfg = config_module.parse_object({"segment": {"engine": "unet", "backend": "cpu",
                                                  "unet": {"model": str(models["local"])}}})
    with pytest.raises(KernelResourceError, match="device frame flow.*CUDA GPU"):
        Analyzer(cfg, device_frames=True)
