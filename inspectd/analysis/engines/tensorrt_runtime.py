"""Run a serialised TensorRT engine (`inspectd build-engine` output) on batches of U-Net tiles.

UNTESTED ON A GPU: written against the TensorRT 10 Python API (named I/O tensors:
`set_input_shape`, `set_tensor_address`, `execute_async_v3`) and checked only for clean
import and the not-installed paths on a machine without CUDA. `tests/unet/test_tensorrt.py`
holds a GPU test (marker `gpu`) that compares it with ONNX Runtime where TensorRT exists.

Why it looks like this:
- `tensorrt`, `cupy` and `pycuda` are imported lazily, inside functions: importing
  `inspectd` never needs them, and a machine without them gets one clear line from
  `tensorrt_status()` instead of a traceback.
- Device buffers come from cupy when it is installed, else from pycuda (its primary context,
  pushed around each call, so any thread may use it). Host buffers are pinned (page-locked)
  so the copies are real asynchronous DMA on the worker's stream.
- One execution context, one CUDA stream and one set of buffers per worker thread
  (`threading.local`): TensorRT contexts are not thread-safe, the engine is.
- Buffers are sized once for the profile's largest batch of tiles; a call copies in,
  enqueues, copies out and synchronises only its own stream.
- `run_device` skips all of that for tiles already on the GPU (`unet_device`): it binds the
  caller's device arrays and enqueues on the caller's numba stream.

Example (on a machine without TensorRT):
    >>> ok, reason = tensorrt_status()
    >>> ok or reason.startswith(("tensorrt is not installed", "TensorRT"))  # one line either way
    True
"""

from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inspectd.analysis.engines import unet_contract as contract
from inspectd.analysis.engines.runtime import OpenedRuntime, UnetRuntime
from inspectd.errors import EngineError

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'inspectd[gpu]' (tensorrt + cupy-cuda12x or pycuda) on a machine with an NVIDIA GPU"

# cudaMemcpyKind values of the CUDA runtime API (cupy's memcpyAsync takes the raw enum).
_HOST_TO_DEVICE = 1
_DEVICE_TO_HOST = 2


def _import(name: str) -> Any | None:
    try:
        return importlib.import_module(name)
    except (ImportError, OSError):  # OSError: the package is there but a CUDA library is not
        return None


def tensorrt_status() -> tuple[bool, str]:
    """(usable, reason): tensorrt importable, cupy or pycuda importable, a CUDA device present.

    The reason is one line, fit for a log or an error message.
    """
    if _import("tensorrt") is None:
        return False, f"tensorrt is not installed; {INSTALL_HINT}"
    try:
        memory = device_memory()
    except EngineError as exc:
        return False, str(exc)
    return True, f"TensorRT with {memory.name} device buffers"


def require_tensorrt() -> Any:
    """The `tensorrt` module, or an `EngineError` with one line saying it is not installed."""
    trt = _import("tensorrt")
    if trt is None:
        msg = f"tensorrt is not installed; {INSTALL_HINT}"
        raise EngineError(msg)
    return trt


# ----------------------------------------------------------------------------- device memory


class _CupyMemory:
    """Device buffers and streams from cupy (the current device of each thread: device 0)."""

    name = "cupy"

    def __init__(self, cupy: Any) -> None:
        self.cp = cupy
        if self.cp.cuda.runtime.getDeviceCount() < 1:
            msg = "TensorRT: no CUDA device is visible"
            raise EngineError(msg)

    def enter(self) -> None:
        """Nothing to do: cupy uses the runtime API's per-thread current device."""

    def leave(self) -> None:
        """Nothing to undo."""

    def new_stream(self) -> Any:
        return self.cp.cuda.Stream(non_blocking=True)

    def stream_handle(self, stream: Any) -> int:
        return int(stream.ptr)

    def alloc_device(self, nbytes: int) -> tuple[Any, int]:
        holder = self.cp.cuda.alloc(nbytes)
        return holder, int(holder.ptr)

    def alloc_pinned(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        count = int(np.prod(shape))
        pinned = self.cp.cuda.alloc_pinned_memory(count * np.dtype(dtype).itemsize)
        return np.frombuffer(pinned, dtype=dtype, count=count).reshape(shape)

    def to_device(self, device_ptr: int, host: np.ndarray, stream: Any) -> None:
        self.cp.cuda.runtime.memcpyAsync(device_ptr, host.ctypes.data, host.nbytes, _HOST_TO_DEVICE, stream.ptr)

    def to_host(self, host: np.ndarray, device_ptr: int, stream: Any) -> None:
        self.cp.cuda.runtime.memcpyAsync(host.ctypes.data, device_ptr, host.nbytes, _DEVICE_TO_HOST, stream.ptr)

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()


class _PycudaMemory:
    """Device buffers and streams from pycuda, in device 0's primary context (the one TensorRT uses)."""

    name = "pycuda"

    def __init__(self, driver: Any) -> None:
        self.cuda = driver
        self.cuda.init()
        if self.cuda.Device.count() < 1:
            msg = "TensorRT: no CUDA device is visible"
            raise EngineError(msg)
        self.context = self.cuda.Device(0).retain_primary_context()

    def enter(self) -> None:
        self.context.push()

    def leave(self) -> None:
        self.cuda.Context.pop()

    def new_stream(self) -> Any:
        return self.cuda.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def alloc_device(self, nbytes: int) -> tuple[Any, int]:
        holder = self.cuda.mem_alloc(nbytes)
        return holder, int(holder)

    def alloc_pinned(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return self.cuda.pagelocked_empty(shape, dtype)

    def to_device(self, device_ptr: int, host: np.ndarray, stream: Any) -> None:
        self.cuda.memcpy_htod_async(device_ptr, host, stream)

    def to_host(self, host: np.ndarray, device_ptr: int, stream: Any) -> None:
        self.cuda.memcpy_dtoh_async(host, device_ptr, stream)

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()


_memory_lock = threading.Lock()
_memory: Any = None


def device_memory() -> _CupyMemory | _PycudaMemory:
    """The process-wide device-memory provider: cupy if importable, else pycuda, else `EngineError`."""
    global _memory
    with _memory_lock:
        if _memory is None:
            cupy = _import("cupy")
            if cupy is not None:
                try:
                    _memory = _CupyMemory(cupy)
                except EngineError:
                    raise
                except Exception as exc:  # cupy raises CUDARuntimeError without a driver
                    msg = f"TensorRT: cupy cannot reach a CUDA device ({type(exc).__name__}: {exc})"
                    raise EngineError(msg) from exc
                return _memory
            driver = _import("pycuda.driver")
            if driver is None:
                msg = f"TensorRT needs cupy or pycuda for device buffers and neither is installed; {INSTALL_HINT}"
                raise EngineError(msg)
            try:
                _memory = _PycudaMemory(driver)
            except EngineError:
                raise
            except Exception as exc:  # pycuda.driver.Error without a driver
                msg = f"TensorRT: pycuda cannot reach a CUDA device ({type(exc).__name__}: {exc})"
                raise EngineError(msg) from exc
        return _memory


# ----------------------------------------------------------------------------- runner


@dataclass
class _WorkerState:
    """One worker thread's execution context, stream and buffers (sized for `max_batch` tiles)."""

    context: Any
    stream: Any
    tile_hw: tuple[int, int]
    host_in: np.ndarray
    host_out: np.ndarray
    device_in: tuple[Any, int]
    device_out: tuple[Any, int]


class TensorRTRunner:
    """Batches of normalised tiles `[N,1,h,w]` float32 -> logits `[N,3,h,w]` float32 on TensorRT.

    Construction deserialises the plan and checks its I/O against the model contract;
    `EngineError` (one line) when TensorRT, a CUDA device or the plan is missing or wrong.
    """

    backend = "tensorrt"

    def __init__(self, plan_path: Path) -> None:
        trt = require_tensorrt()
        self.trt = trt
        self.memory = device_memory()
        self.plan_path = plan_path
        if not plan_path.is_file():
            msg = f"TensorRT engine plan {plan_path} does not exist (build one with `inspectd build-engine`)"
            raise EngineError(msg)
        self._trt_logger = trt.Logger(trt.Logger.WARNING)
        self.memory.enter()
        try:
            self._runtime = trt.Runtime(self._trt_logger)  # kept: the engine must not outlive it
            self.engine = self._runtime.deserialize_cuda_engine(plan_path.read_bytes())
        finally:
            self.memory.leave()
        if self.engine is None:
            msg = (f"TensorRT could not deserialise {plan_path} (built by another TensorRT version or for another "
                   "GPU? rebuild it with `inspectd build-engine` on this machine)")
            raise EngineError(msg)
        self._check_io()
        min_shape, _, max_shape = (tuple(s) for s in self.engine.get_tensor_profile_shape(contract.INPUT_NAME, 0))
        self.max_batch = int(max_shape[0])
        self.min_tile_hw = (int(min_shape[2]), int(min_shape[3]))
        self.max_tile_hw = (int(max_shape[2]), int(max_shape[3]))
        self._input_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(contract.INPUT_NAME)))
        self._output_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output_name)))
        self._local = threading.local()
        logger.info("TensorRT plan %s: batch up to %d, tiles %s..%s, %s device buffers", plan_path.name,
                    self.max_batch, self.min_tile_hw, self.max_tile_hw, self.memory.name)

    def _check_io(self) -> None:
        trt = self.trt
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        output_name = next((name for name in contract.OUTPUT_NAMES if name in outputs), None)
        if inputs != [contract.INPUT_NAME] or output_name is None:
            msg = (f"TensorRT plan {self.plan_path} breaks the model contract: inputs {inputs}, outputs {outputs}; "
                   f"expected input '{contract.INPUT_NAME}' and output '{contract.OUTPUT_NAME}' or "
                   f"'{contract.AFFINE_OUTPUT_NAME}'")
            raise EngineError(msg)
        self.output_name = output_name

    def tile_side_px(self, wanted_px: int) -> int:
        """The square tile side to use: `wanted_px` clipped to the plan's profile (a multiple of 32)."""
        largest = min(self.max_tile_hw)
        smallest = max(self.min_tile_hw)
        side = min(wanted_px, largest) // contract.INPUT_MULTIPLE * contract.INPUT_MULTIPLE
        if side < smallest:
            msg = (f"TensorRT plan {self.plan_path} accepts tiles {self.min_tile_hw}..{self.max_tile_hw}, "
                   f"which has no multiple of {contract.INPUT_MULTIPLE} <= tile_px {wanted_px}")
            raise EngineError(msg)
        return side

    def _state(self, tile_hw: tuple[int, int]) -> _WorkerState:
        state: _WorkerState | None = getattr(self._local, "state", None)
        if state is not None and state.tile_hw == tile_hw:
            return state
        context = self.engine.create_execution_context()
        if context is None:
            msg = "TensorRT could not create an execution context (out of GPU memory?)"
            raise EngineError(msg)
        in_shape = (self.max_batch, 1, *tile_hw)
        if not context.set_input_shape(contract.INPUT_NAME, in_shape):
            msg = f"TensorRT rejected input shape {in_shape} (outside the plan's profile)"
            raise EngineError(msg)
        out_shape = tuple(context.get_tensor_shape(self.output_name))  # [N, 3, h, w] or [N, 6, h/s, w/s]
        host_in = self.memory.alloc_pinned(in_shape, self._input_dtype)
        host_out = self.memory.alloc_pinned(out_shape, self._output_dtype)
        state = _WorkerState(
            context=context,
            stream=self.memory.new_stream(),
            tile_hw=tile_hw,
            host_in=host_in,
            host_out=host_out,
            device_in=self.memory.alloc_device(host_in.nbytes),
            device_out=self.memory.alloc_device(host_out.nbytes),
        )
        self._local.state = state
        logger.debug("TensorRT worker %s: context, stream and %d-tile buffers of %s", threading.current_thread().name,
                     self.max_batch, tile_hw)
        return state

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The model's output for up to `max_batch` tiles (float32 `[N,1,h,w]` -> `[N,3,h,w]` or `[N,6,h/s,w/s]`)."""
        n_tiles = batch.shape[0]
        self.memory.enter()
        try:
            state = self._shaped_state(tuple(batch.shape))
            host_in = state.host_in[:n_tiles]
            host_out = state.host_out[:n_tiles]
            np.copyto(host_in, batch, casting="same_kind")
            self.memory.to_device(state.device_in[1], host_in, state.stream)
            self._execute(state, state.device_in[1], state.device_out[1], self.memory.stream_handle(state.stream))
            self.memory.to_host(host_out, state.device_out[1], state.stream)
            self.memory.synchronize(state.stream)
        finally:
            self.memory.leave()
        return host_out.astype(np.float32, copy=True)

    def run_device(self, batch: object, out: object) -> None:
        """Tiles from a float32 CUDA device array `batch` [N,1,h,w] -> output written into device `out`.

        No copies: the plan reads and writes the arrays where they are, enqueued on this
        thread's numba stream (`kernels.cuda_device.thread_stream`), behind the kernel that
        wrote the tiles and ahead of the ones that blend the output; nothing synchronises.
        """
        from kernels import cuda_device

        if self._input_dtype != np.float32 or self._output_dtype != np.float32:
            msg = (f"TensorRT plan {self.plan_path.name} has {self._input_dtype} -> {self._output_dtype} I/O; "
                   "device input needs float32 -> float32 (rebuild it with `inspectd build-engine`)")
            raise EngineError(msg)
        self.memory.enter()
        try:
            state = self._shaped_state(tuple(batch.shape))
            self._execute(state, cuda_device.device_pointer(batch), cuda_device.device_pointer(out),
                          int(cuda_device.thread_stream()))
        finally:
            self.memory.leave()

    def _shaped_state(self, batch_shape: tuple[int, ...]) -> _WorkerState:
        """This thread's context, its input shape set to `batch_shape` [N,1,h,w] (inside `memory.enter()`)."""
        n_tiles, _, tile_h, tile_w = batch_shape
        if n_tiles > self.max_batch:
            msg = f"TensorRT plan takes at most {self.max_batch} tiles per call, got {n_tiles}"
            raise EngineError(msg)
        state = self._state((tile_h, tile_w))
        if not state.context.set_input_shape(contract.INPUT_NAME, (n_tiles, 1, tile_h, tile_w)):
            msg = f"TensorRT rejected input shape {(n_tiles, 1, tile_h, tile_w)} (outside the plan's profile)"
            raise EngineError(msg)
        return state

    def _execute(self, state: _WorkerState, input_ptr: int, output_ptr: int, stream_handle: int) -> None:
        state.context.set_tensor_address(contract.INPUT_NAME, input_ptr)
        state.context.set_tensor_address(self.output_name, output_ptr)
        if not state.context.execute_async_v3(stream_handle):
            msg = "TensorRT execute_async_v3 failed"
            raise EngineError(msg)

    def describe(self) -> str:
        return f"TensorRT plan {self.plan_path.name} ({self.memory.name} buffers, batch <= {self.max_batch})"


class TensorRTRuntime(UnetRuntime):
    """A serialised TensorRT plan (`segment.unet.engine_plan`), first choice when one is configured.

    `auto` with a plan that cannot be used here: one warning line, then the next runtime.
    `tensorrt` with such a plan: an `EngineError`. Without a plan it passes (ONNX Runtime's
    TensorRT provider serves `tensorrt` then).
    """

    KEY = "tensorrt"
    PREFERENCE = 10

    @classmethod
    def open(cls, engine: Any, requested_backend: str) -> OpenedRuntime | None:
        if requested_backend not in ("auto", "tensorrt") or engine.cfg.engine_plan is None:
            return None
        usable, reason = tensorrt_status()
        if not usable:
            if requested_backend == "tensorrt":
                msg = f"backend tensorrt: {reason}"
                raise EngineError(msg)
            logger.warning("segment.unet.engine_plan is set but %s; the U-Net runs on ONNX Runtime instead", reason)
            return None
        plan = Path(engine.cfg.engine_plan)
        runner = TensorRTRunner(plan)
        side = runner.tile_side_px(engine.cfg.tile_px)
        return OpenedRuntime(runner, plan, (side, side))
