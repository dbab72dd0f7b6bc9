"""ONNX Runtime sessions for the U-Net: options from config, execution providers, contract check.

Why a module of its own: the session is where a bad model file shows up, and that must
happen at start-up with one clear `EngineError`, never on the first frame. It is also the
one place that decides CPU vs CUDA vs ONNX Runtime's TensorRT provider, and says so once.

Providers by `segment.backend` (what ONNX Runtime offers is `onnxruntime.get_available_providers()`):
- `cpu`: CPU only.
- `auto`: CUDA when the CUDA provider is offered (and really starts: ONNX Runtime falls back
  to the CPU silently when the driver is missing, so the session's own provider list is
  read back), else CPU.
- `cuda`: the CUDA provider, or an `EngineError`.
- `tensorrt` (only without a serialised plan; with one, `tensorrt_runtime` runs it): ONNX
  Runtime's TensorRT provider (fp16), or an `EngineError`.

Example:
    >>> choose_providers("auto", ["CPUExecutionProvider"]).backend
    'cpu'
    >>> choose_providers("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"]).providers
    ('CUDAExecutionProvider', 'CPUExecutionProvider')
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from inspectd.analysis.engines import unet_contract as contract
from inspectd.analysis.engines.runtime import OpenedRuntime, UnetRuntime
from inspectd.config import GraphOptimization
from inspectd.errors import EngineError

if TYPE_CHECKING:
    from inspectd.analysis.engines.unet import UnetConfig, UnetEngine

logger = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"

_BACKEND_OF_PROVIDER = {TENSORRT_PROVIDER: "tensorrt", CUDA_PROVIDER: "cuda", CPU_PROVIDER: "cpu"}
_GRAPH_LEVELS = {
    GraphOptimization.DISABLE: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    GraphOptimization.BASIC: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    GraphOptimization.EXTENDED: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    GraphOptimization.ALL: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
# ONNX Runtime's TensorRT provider: fp16 kernels; engines are built at warm-up, not cached.
_TENSORRT_PROVIDER_OPTIONS = {"trt_fp16_enable": True}


@dataclass(frozen=True)
class ProviderChoice:
    """Providers to ask ONNX Runtime for, best first, and the backend that means."""

    providers: tuple[str, ...]
    backend: str


@dataclass(frozen=True)
class ModelIO:
    """What the model's declared shapes allow: a batch size cap and a fixed tile, if any."""

    max_batch: int | None  # None: dynamic batch
    fixed_hw: tuple[int, int] | None  # None: dynamic height and width
    output_name: str = contract.OUTPUT_NAME  # `logits`, or `affine` for a guided U-Net


def choose_providers(requested: str, available: Sequence[str]) -> ProviderChoice:
    """Providers for `segment.backend` = `requested` given what ONNX Runtime offers.

    Example:
        >>> try:
        ...     choose_providers("cuda", ["CPUExecutionProvider"])
        ... except EngineError as exc:
        ...     print(str(exc).split(" (")[0])
        backend cuda: ONNX Runtime here has no CUDAExecutionProvider
    """
    if requested == "cpu":
        return ProviderChoice((CPU_PROVIDER,), "cpu")
    if requested == "auto":
        if CUDA_PROVIDER in available:
            return ProviderChoice((CUDA_PROVIDER, CPU_PROVIDER), "cuda")
        return ProviderChoice((CPU_PROVIDER,), "cpu")
    if requested == "cuda":
        if CUDA_PROVIDER not in available:
            msg = (f"backend cuda: ONNX Runtime here has no {CUDA_PROVIDER} (available: {', '.join(available)}); "
                   "install onnxruntime-gpu on a machine with an NVIDIA GPU, or set segment.backend: auto")
            raise EngineError(msg)
        return ProviderChoice((CUDA_PROVIDER, CPU_PROVIDER), "cuda")
    if requested == "tensorrt":
        if TENSORRT_PROVIDER not in available:
            msg = (f"backend tensorrt: no segment.unet.engine_plan is configured and ONNX Runtime here has no "
                   f"{TENSORRT_PROVIDER}; build a plan with `inspectd build-engine` or set segment.backend: auto")
            raise EngineError(msg)
        return ProviderChoice((TENSORRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER), "tensorrt")
    msg = f"unknown backend {requested!r}; expected auto, cpu, cuda or tensorrt"
    raise EngineError(msg)


def session_options(unet_cfg: UnetConfig) -> ort.SessionOptions:
    """Threads and graph optimisation from config; one inter-op thread (the graph is a chain).

    Intra-op threads do not spin while waiting for work: with two pipeline workers the
    spinning threads of one worker's inference took the cores the other worker's
    measurement needed (U-Net, 2560x1920, 2 cores: 6.1 -> 7.3 frames/s without spinning).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = unet_cfg.intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = _GRAPH_LEVELS[unet_cfg.graph_optimization]
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def create_session(model_path: Path, unet_cfg: UnetConfig,
                   requested_backend: str) -> tuple[ort.InferenceSession, str, ModelIO]:
    """A checked session for the model at `model_path`, the backend it really runs on, its I/O limits.

    Raises `EngineError` when the file is missing or not ONNX, when its inputs/outputs break
    `inspectd.analysis.engines.unet_contract`, or when an explicitly requested provider does not start.

    Example:
        >>> from inspectd.config import UnetConfig
        >>> try:
        ...     create_session(Path("/nonexistent.onnx"), UnetConfig(), "cpu")
        ... except EngineError as exc:
        ...     print(str(exc))
        U-Net model /nonexistent.onnx does not exist
    """
    if not model_path.is_file():
        msg = f"U-Net model {model_path} does not exist"
        raise EngineError(msg)
    choice = choose_providers(requested_backend, ort.get_available_providers())
    providers: list[Any] = [
        (name, _TENSORRT_PROVIDER_OPTIONS) if name == TENSORRT_PROVIDER else name for name in choice.providers
    ]
    try:
        session = ort.InferenceSession(str(model_path), session_options(unet_cfg), providers=providers)
    except Exception as exc:  # onnxruntime raises its own Exception subclasses (InvalidProtobuf, Fail, ...)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        msg = f"U-Net model {model_path} cannot be loaded by ONNX Runtime (not a valid ONNX model?): {reason}"
        raise EngineError(msg) from exc
    active = session.get_providers()
    backend = next((_BACKEND_OF_PROVIDER[p] for p in active if p in _BACKEND_OF_PROVIDER), "cpu")
    if requested_backend in ("cuda", "tensorrt") and backend != requested_backend:
        msg = (f"backend {requested_backend}: ONNX Runtime offers {choice.providers[0]} but it did not start "
               f"(session providers: {', '.join(active)}); check the NVIDIA driver and CUDA libraries")
        raise EngineError(msg)
    model_io = check_contract(session, model_path)
    logger.info("U-Net %s on ONNX Runtime %s: providers %s, intra-op threads %s, graph optimisation %s",
                model_path.name, ort.__version__, ", ".join(active),
                unet_cfg.intra_op_threads or "one per core", unet_cfg.graph_optimization.value)
    return session, backend, model_io


def check_contract(session: ort.InferenceSession, model_path: Path) -> ModelIO:
    """Raise `EngineError` unless the model takes `image` [N,1,H,W] float and gives `logits` [N,3,H,W]
    or (guided U-Net) `affine` [N,6,H/s,W/s]."""
    inputs = session.get_inputs()
    outputs = {out.name: out for out in session.get_outputs()}
    problems = []
    if [i.name for i in inputs] != [contract.INPUT_NAME]:
        problems.append(f"inputs are {[i.name for i in inputs]}, expected ['{contract.INPUT_NAME}']")
    output_name = next((name for name in contract.OUTPUT_NAMES if name in outputs), None)
    if output_name is None:
        problems.append(f"outputs are {list(outputs)}, expected '{contract.OUTPUT_NAME}' or "
                        f"'{contract.AFFINE_OUTPUT_NAME}' among them")
    if problems:
        msg = f"U-Net model {model_path} breaks the model contract: {'; '.join(problems)}"
        raise EngineError(msg)
    image, logits = inputs[0], outputs[output_name]
    channels = contract.output_channels(output_name)
    if image.type != "tensor(float)" or logits.type != "tensor(float)":
        problems.append(f"types are {image.type} -> {logits.type}, expected tensor(float) -> tensor(float)")
    if len(image.shape) != 4 or _fixed(image.shape[1]) not in (None, 1):
        problems.append(f"input '{image.name}' has shape {image.shape}, expected [N, 1, H, W]")
    if len(logits.shape) != 4 or _fixed(logits.shape[1]) not in (None, channels):
        problems.append(f"output '{logits.name}' has shape {logits.shape}, expected [N, {channels}, H, W]")
    if problems:
        msg = f"U-Net model {model_path} breaks the model contract: {'; '.join(problems)}"
        raise EngineError(msg)
    fixed_h, fixed_w = _fixed(image.shape[2]), _fixed(image.shape[3])
    fixed_hw = None
    if fixed_h is not None or fixed_w is not None:
        if fixed_h is None or fixed_w is None or fixed_h % contract.INPUT_MULTIPLE or fixed_w % contract.INPUT_MULTIPLE:
            msg = (f"U-Net model {model_path} has input shape {image.shape}: height and width must both be dynamic "
                   f"or both fixed multiples of {contract.INPUT_MULTIPLE}")
            raise EngineError(msg)
        fixed_hw = (fixed_h, fixed_w)
    return ModelIO(max_batch=_fixed(image.shape[0]), fixed_hw=fixed_hw, output_name=output_name)


def _fixed(dim: object) -> int | None:
    """A declared dimension as an int, or None when it is symbolic/unknown."""
    return dim if isinstance(dim, int) and dim > 0 else None


class OnnxRuntimeRunner:
    """Batches of normalised tiles `[N,1,h,w]` float32 -> the model's output through ONNX Runtime.

    `InferenceSession.run` is thread-safe, so one runner serves every pipeline worker.

    Example:
        >>> from inspectd.analysis.engines.unet import UnetConfig
        >>> try:
        ...     OnnxRuntimeRunner(Path("/nonexistent.onnx"), UnetConfig(), "auto")
        ... except EngineError as exc:
        ...     print(str(exc))
        U-Net model /nonexistent.onnx does not exist
    """

    def __init__(self, model_path: Path, unet_cfg: UnetConfig, requested_backend: str) -> None:
        self.model_path = model_path
        self.session, self.backend, self.model_io = create_session(model_path, unet_cfg, requested_backend)
        self.max_batch = self.model_io.max_batch
        self.fixed_hw = self.model_io.fixed_hw
        self.output_name = self.model_io.output_name

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {contract.INPUT_NAME: batch})[0]

    def run_device(self, batch: object, out: object) -> None:
        """Tiles from a float32 CUDA device array `batch` [N,1,h,w] -> the output written into device `out`.

        On the CUDA and TensorRT providers both are bound in place (ONNX Runtime I/O binding on
        the device's addresses): no host round trip. The tiles' producer (this thread's stream)
        is synchronised first, as ONNX Runtime runs on its own stream, and `run_with_iobinding`
        returns once the provider has written `out`. On the CPU provider the tiles pass through
        host memory.
        """
        from kernels import cuda_device

        if self.backend == "cpu":
            host_out = np.empty(tuple(out.shape), np.float32)
            self.run_bound(cuda_device.to_host(batch), host_out)
            out.copy_to_device(host_out, stream=cuda_device.thread_stream())
            return
        cuda_device.thread_stream().synchronize()
        self._bind_and_run("cuda", tuple(batch.shape), cuda_device.device_pointer(batch),
                           tuple(out.shape), cuda_device.device_pointer(out))

    def run_bound(self, batch: np.ndarray, out: np.ndarray) -> None:
        """`run`, but writing into the caller's float32 array `out` (ONNX Runtime I/O binding on host memory)."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if out.dtype != np.float32 or not out.flags.c_contiguous:
            msg = f"run_bound needs a C-contiguous float32 output array, got {out.dtype}"
            raise EngineError(msg)
        self._bind_and_run("cpu", batch.shape, batch.ctypes.data, out.shape, out.ctypes.data)

    def _bind_and_run(self, device: str, in_shape: tuple[int, ...], in_ptr: int,
                      out_shape: tuple[int, ...], out_ptr: int) -> None:
        binding = self.session.io_binding()
        binding.bind_input(contract.INPUT_NAME, device, 0, np.float32, list(in_shape), in_ptr)
        binding.bind_output(self.output_name, device, 0, np.float32, list(out_shape), out_ptr)
        self.session.run_with_iobinding(binding)

    def describe(self) -> str:
        return f"ONNX Runtime on {', '.join(self.session.get_providers())}"


class OnnxRuntime(UnetRuntime):
    """ONNX Runtime on the provider `segment.backend` asks for (`choose_providers`): the fallback
    of every backend, so it is tried last and always answers (or raises `EngineError`)."""

    KEY = "onnxruntime"
    PREFERENCE = 1000

    @classmethod
    def open(cls, engine: UnetEngine, requested_backend: str) -> OpenedRuntime:
        if engine.cfg.model is not None:
            model_path = Path(engine.cfg.model)
        else:
            backend = choose_providers(requested_backend, ort.get_available_providers()).backend
            model_path = engine.bundled_onnx_path(backend)
        runner = OnnxRuntimeRunner(model_path, engine.cfg, requested_backend)
        return OpenedRuntime(runner, model_path, runner.fixed_hw)
