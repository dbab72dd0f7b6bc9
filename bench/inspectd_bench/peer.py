"""The seed-style pipeline, timed as the benchmark's peer.

What the seed did with a 2560x1920 frame, step by step (each step a stage row):
1. `clahe`: OpenCV CLAHE (clip 2.0, 8x8 tiles) on the whole frame;
2. `split_resize`: split 2x2, each 1280x960 part resized to 256x256 (`cv2.resize`, its
   default bilinear) and turned into the network's input (grey to 3 channels, ImageNet
   normalisation);
3. `infer`: a ResNet50-encoder U-Net (40.9 M parameters, `resnet_unet.py`) through ONNX
   Runtime on the CPU, the four parts in one batch (kinder to the peer than one call each);
4. `resize_back`: each part's mask (logit > 0) resized back to 1280x960 (nearest) and stitched;
5. `contours`: `cv2.findContours(RETR_TREE)` on the stitched mask, plus the unmelted area %.

and, timed apart on the same frames, `clahe_skimage`: scikit-image's `equalize_adapthist`
(the seed's other CLAHE) on the whole frame, so the table shows what the peer would cost
with it (`fps_with_skimage_clahe`).

The peer runs frame after frame in one thread, as the seed's script did; ONNX Runtime uses
one intra-op thread per core (inspectd's U-Net gets the same). Its weights are random: its
masks are meaningless and only its timing is used; its accuracy is the seed's published
test IoU (`SEED_PUBLISHED_TEST_IOU`), measured by the seed on its own real data.

Example (a tiny network, so it runs in seconds):
    >>> import tempfile, numpy as np  # doctest: +SKIP
    >>> model = ensure_peer_model(Path(tempfile.mkdtemp()), width_divisor=16)  # doctest: +SKIP
    >>> peer = SeedPeer(model.path)  # doctest: +SKIP
    >>> peer.process(np.zeros((192, 256), np.uint8)).mask.shape  # doctest: +SKIP
    (192, 256)
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from inspectd_bench.resources import ProcessMeter, usable_cores
from inspectd_bench.station import latency_summary

logger = logging.getLogger(__name__)

SEED_PUBLISHED_TEST_IOU = 0.768
PEER_INPUT_PX = 256
CLAHE_CLIP_LIMIT = 2.0
CLAHE_TILES = (8, 8)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
STAGES = ("clahe", "split_resize", "infer", "resize_back", "contours")
EXPORT_TIMEOUT_S = 600.0
# In the cached file's name: bump it whenever `resnet_unet.py` changes, so no stale export is timed.
PEER_NETWORK_VERSION = 2


class PeerUnavailableError(RuntimeError):
    """The peer's network could not be built (torch or onnx missing, export failed)."""


@dataclass(frozen=True)
class PeerModel:
    path: Path
    card: dict[str, Any]


@dataclass(frozen=True)
class PeerFrame:
    mask: np.ndarray
    n_contours: int
    unmelted_pct: float
    stages_ms: dict[str, float]


def peer_model_path(cache_dir: Path, width_divisor: int) -> Path:
    """Where the exported peer network is cached.

    >>> peer_model_path(Path("/c"), 1).name
    'seed_peer_resnet50_unet_v2_div1.onnx'
    """
    return Path(cache_dir) / f"seed_peer_resnet50_unet_v{PEER_NETWORK_VERSION}_div{width_divisor}.onnx"


def ensure_peer_model(cache_dir: Path, width_divisor: int = 1) -> PeerModel:
    """The cached ONNX file of the peer network, exported (in a subprocess, with torch) if absent."""
    path = peer_model_path(cache_dir, width_divisor)
    card_path = Path(f"{path}.json")
    if path.is_file() and card_path.is_file():
        return PeerModel(path, json.loads(card_path.read_text()))
    command = [sys.executable, "-m", "inspectd_bench.peer_export", "--out", str(path),
               "--width-divisor", str(width_divisor)]
    logger.info("exporting the seed-style ResNet50 U-Net (width divisor %d) to %s", width_divisor, path)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=EXPORT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        msg = f"could not run the peer export: {exc}"
        raise PeerUnavailableError(msg) from exc
    if done.returncode != 0 or not path.is_file():
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        msg = f"the peer network could not be exported (needs torch and onnx, the [train] extra): {last}"
        raise PeerUnavailableError(msg)
    return PeerModel(path, json.loads(card_path.read_text()))


class SeedPeer:
    """The seed-style pipeline on one ONNX Runtime session (see the module docstring)."""

    def __init__(self, model_path: Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or usable_cores()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.clahe = cv2.createCLAHE(clipLimit=CLAHE_CLIP_LIMIT, tileGridSize=CLAHE_TILES)

    def process(self, frame: np.ndarray) -> PeerFrame:
        """One frame through the five stages; returns the stitched mask and the stage times."""
        stages: dict[str, float] = {}
        grey = frame if frame.dtype == np.uint8 else (frame >> 8).astype(np.uint8)

        start = time.perf_counter()
        enhanced = self.clahe.apply(grey)
        stages["clahe"] = _ms_since(start)

        start = time.perf_counter()
        parts, boxes = split_2x2(enhanced)
        small = [cv2.resize(part, (PEER_INPUT_PX, PEER_INPUT_PX)) for part in parts]
        batch = to_network_input(np.stack(small))
        stages["split_resize"] = _ms_since(start)

        start = time.perf_counter()
        logits = self.session.run(None, {self.input_name: batch})[0]
        stages["infer"] = _ms_since(start)

        start = time.perf_counter()
        mask = np.zeros(grey.shape, np.uint8)
        for part_logit, (y0, y1, x0, x1) in zip(logits[:, 0], boxes, strict=True):
            part_mask = (part_logit > 0).astype(np.uint8) * 255
            mask[y0:y1, x0:x1] = cv2.resize(part_mask, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
        stages["resize_back"] = _ms_since(start)

        start = time.perf_counter()
        contours, _hierarchy = cv2.findContours(mask, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
        unmelted_pct = 100.0 * float(np.count_nonzero(mask)) / mask.size
        stages["contours"] = _ms_since(start)
        return PeerFrame(mask, len(contours), unmelted_pct, stages)


def split_2x2(image: np.ndarray) -> tuple[list[np.ndarray], list[tuple[int, int, int, int]]]:
    """The four quarters of an image and their (y0, y1, x0, x1) boxes, row by row.

    >>> parts, boxes = split_2x2(np.zeros((5, 8), np.uint8))
    >>> [p.shape for p in parts], boxes[3]
    ([(2, 4), (2, 4), (3, 4), (3, 4)], (2, 5, 4, 8))
    """
    height, width = image.shape[:2]
    mid_y, mid_x = height // 2, width // 2
    boxes = [(0, mid_y, 0, mid_x), (0, mid_y, mid_x, width), (mid_y, height, 0, mid_x), (mid_y, height, mid_x, width)]
    return [image[y0:y1, x0:x1] for y0, y1, x0, x1 in boxes], boxes


def to_network_input(parts: np.ndarray) -> np.ndarray:
    """uint8 `[N, H, W]` grey -> float32 `[N, 3, H, W]`, ImageNet-normalised RGB (grey repeated).

    >>> to_network_input(np.zeros((2, 4, 4), np.uint8)).shape
    (2, 3, 4, 4)
    """
    scaled = parts.astype(np.float32)[:, None, :, :] * np.float32(1.0 / 255.0)
    return (scaled - IMAGENET_MEAN[None, :, None, None]) / IMAGENET_STD[None, :, None, None]


def skimage_clahe_ms(frames: Sequence[np.ndarray]) -> float:
    """Mean ms of scikit-image's `equalize_adapthist` (defaults: kernel 1/8 of the frame, clip 0.01)."""
    from skimage.exposure import equalize_adapthist

    times = []
    for frame in frames:
        start = time.perf_counter()
        equalize_adapthist(frame)
        times.append(_ms_since(start))
    return round(float(np.mean(times)), 3)


def run_peer(model: PeerModel, frames: Sequence[np.ndarray], n_frames: int, *, warmup_frames: int = 1,
             skimage_frames: int = 1) -> dict[str, Any]:
    """Time the peer over `n_frames` (after `warmup_frames`), frame after frame; JSON-ready result."""
    peer = SeedPeer(model.path)
    for index in range(warmup_frames):
        peer.process(frames[index % len(frames)])
    latencies, stage_rows = [], []
    meter = ProcessMeter()
    meter.start()
    started = time.perf_counter()
    for index in range(n_frames):
        frame = frames[(warmup_frames + index) % len(frames)]
        captured = time.perf_counter()
        result = peer.process(frame)
        latencies.append(_ms_since(captured))
        stage_rows.append(result.stages_ms)
    wall_s = time.perf_counter() - started
    usage = meter.stop().as_dict()
    stages = {name: round(float(np.mean([row[name] for row in stage_rows])), 3) for name in STAGES}
    fps = n_frames / wall_s if wall_s > 0 else 0.0
    skimage_ms = skimage_clahe_ms(frames[:max(1, skimage_frames)]) if skimage_frames > 0 else None
    fps_skimage = None
    if skimage_ms is not None:
        per_frame_ms = 1000.0 / fps - stages["clahe"] + skimage_ms
        fps_skimage = round(1000.0 / per_frame_ms, 3)
    card = model.card
    height, width = frames[0].shape[:2]
    return {
        "pipeline": "OpenCV CLAHE (clip 2, 8x8) on the whole frame -> split 2x2 -> each part resized to "
                    f"{PEER_INPUT_PX}x{PEER_INPUT_PX} -> ResNet50-encoder U-Net on ONNX Runtime (CPU, the 4 parts "
                    "in one batch) -> masks resized back -> findContours(RETR_TREE)",
        "model": {"parameters": card.get("parameters"), "gmac_per_256px_input": card.get("gmac_per_256px_input"),
                  "width_divisor": card.get("width_divisor"), "weights": card.get("weights"),
                  "onnx": str(model.path)},
        "untrained": True,
        "note": "the peer's weights are random (no weights are downloaded): only its timing is meaningful; "
                f"its accuracy is the seed's published test IoU {SEED_PUBLISHED_TEST_IOU} (the seed's own "
                "real, binary-labelled data), not measured here",
        "frames": n_frames,
        # What share of the frame's pixels per axis the network sees (each half resized to 256).
        "working_scale_xy": [round(2 * PEER_INPUT_PX / width, 3), round(2 * PEER_INPUT_PX / height, 3)],
        "fps": round(fps, 3),
        "latency_ms": latency_summary(latencies),
        "stages_ms": stages,
        "clahe_skimage_ms": skimage_ms,
        "fps_with_skimage_clahe": fps_skimage,
        **usage,
        "published_test_iou": SEED_PUBLISHED_TEST_IOU,
        "latencies_ms": [round(v, 3) for v in latencies],
    }


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)
