"""GenICam / GigE Vision (and USB3 Vision) cameras through Aravis 0.8 (PyGObject).

Only buffers whose status is SUCCESS are inspected. Incomplete ones (missing packets,
timeouts, size mismatch ...) go straight back to the stream, counted in
`incomplete_buffers` and `buffer_<status>` and reported as throttled `buffer_incomplete`
status events. A camera that vanishes is noticed by frame timeouts (free-run), by a
failing software trigger, or by Aravis' `control-lost` signal (GigE heartbeat), and is
reopened with backoff by `CameraSource` (trigger.py), which also provides free-run with an
fps cap (also written to the camera's AcquisitionFrameRate) and triggered mode (software
trigger, one frame per ZeroMQ trigger).

`camera_id` is what `arv-tool-0.8` / `Aravis.get_device_id` lists ("Vendor-Model-Serial"),
or the camera's IP address; None takes the first camera found. The device list is
refreshed (about 1 s of discovery) before every open, so a camera that came back on a new
process or after a power cycle is found again.

PyGObject is imported lazily: this module imports without it, and constructing the
source without it raises `SourceConnectionError` with the install line. Set-up on Debian 12:
    apt-get install -y aravis-tools gir1.2-aravis-0.8 libgirepository1.0-dev libcairo2-dev pkg-config
    pip install 'PyGObject<3.51'     # newer PyGObject needs a newer GLib than Debian 12's

Example (needs a camera; the simulator is `arv-fake-gv-camera-0.8 -i 127.0.0.1`)::

    src = AravisCameraSource.from_settings(id="line1-cam", camera_id="Aravis-Fake-GV01", fps_cap=5)
    src.start()
    item = src.get(timeout_s=5)      # item.pixels: (512, 512) uint8
    src.stop()
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any, Literal

import numpy as np
from pydantic import Field

from inspectd.errors import ConfigError, SourceConnectionError
from inspectd.sources.base import Severity, SourceContext
from inspectd.sources.camera import CameraSource, CameraSourceFields, Grab

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "apt-get install -y gir1.2-aravis-0.8 libgirepository1.0-dev libcairo2-dev pkg-config "
    "&& pip install 'PyGObject<3.51'"
)

# Pixel formats we hand on as-is: name -> (numpy dtype, significant bits). Packed and
# colour formats are refused at connect time rather than decoded wrongly.
MONO_FORMATS = {
    "Mono8": (np.uint8, 8),
    "Mono10": (np.dtype("<u2"), 10),
    "Mono12": (np.dtype("<u2"), 12),
    "Mono14": (np.dtype("<u2"), 14),
    "Mono16": (np.dtype("<u2"), 16),
}

# Stream counters copied into stats() as stream_<name>, summed over reconnections.
STREAM_COUNTERS = (
    "n_completed_buffers",
    "n_failures",
    "n_underruns",
    "n_timeouts",
    "n_aborted",
    "n_missing_frames",
    "n_size_mismatch_errors",
    "n_missing_packets",
    "n_resend_requests",
    "n_resent_packets",
)

_POP_SLICE_S = 0.25  # wait for buffers in slices so a control-lost signal is seen quickly


def load_aravis() -> tuple[Any, Any]:
    """(Aravis, GLib) from PyGObject, or SourceConnectionError naming what to install."""
    try:
        import gi

        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis, GLib
    except (ImportError, ValueError) as exc:
        msg = f"the aravis source needs PyGObject and the Aravis 0.8 typelib ({exc}); install: {INSTALL_HINT}"
        raise SourceConnectionError(msg) from exc
    return Aravis, GLib


def list_cameras() -> list[str]:
    """Device ids of every GenICam camera Aravis can see now (about 1 s of discovery)."""
    aravis, _ = load_aravis()
    aravis.update_device_list()
    return [aravis.get_device_id(i) for i in range(aravis.get_n_devices())]


class AravisSourceConfig(CameraSourceFields):
    """GenICam / GigE Vision through Aravis (apt: gir1.2-aravis-0.8; pip: PyGObject)."""

    kind: Literal["aravis"] = "aravis"
    camera_id: str | None = Field(None, description="Device id or IP address; null = the first camera found.")
    pixel_format: Literal["Mono8", "Mono10", "Mono12", "Mono14", "Mono16"] = Field("Mono8", description="Pixel format.")
    exposure_us: float | None = Field(None, gt=0.0, le=1e9, description="Exposure time, microseconds (null = camera's).")
    gain_db: float | None = Field(None, ge=-1000.0, le=1000.0, description="Gain, dB (null = camera's).")
    packet_size: int | None = Field(None, ge=576, le=65_535, description="GigE packet size (null = negotiate).")
    n_buffers: int = Field(8, ge=2, le=1024, description="Stream buffers.")


class AravisCameraSource(CameraSource):
    """A GenICam camera through Aravis; see the module docstring.

    Settings beyond `CameraSource`'s (`AravisSourceConfig`): `camera_id` (device id or IP;
    None = first found), `pixel_format` (Mono8 | Mono10 | Mono12 | Mono14 | Mono16),
    `exposure_us`, `gain_db`, `packet_size` (GigE; None = negotiate with the camera),
    `n_buffers` (stream buffers).
    """

    KEY = "aravis"
    config_class = AravisSourceConfig

    def __init__(
        self,
        settings: AravisSourceConfig,
        context: SourceContext | None = None,
        *,
        start_wait_s: float = 5.0,
    ) -> None:
        self._aravis, self._glib = load_aravis()
        super().__init__(settings, context, camera_id=settings.camera_id or "aravis:first",
                         start_wait_s=start_wait_s)
        self.requested_camera_id = settings.camera_id
        self.pixel_format = settings.pixel_format
        self.exposure_us = settings.exposure_us
        self.gain_db = settings.gain_db
        self.packet_size = settings.packet_size
        self.n_buffers = settings.n_buffers
        self._camera: Any = None
        self._stream: Any = None
        self._device: Any = None
        self._lost_handler: int | None = None
        self._generation = 0
        self._lost_reason: str | None = None
        self._lost_lock = threading.Lock()
        self._stream_totals = dict.fromkeys(STREAM_COUNTERS, 0)
        self._stream_current = dict.fromkeys(STREAM_COUNTERS, 0)
        self._stream_polled = 0.0
        for name in ("incomplete_buffers", "stale_buffers"):
            self._count(name, 0)
        # PFNC code -> name, e.g. 0x01080001 -> "Mono8" (Aravis.PIXEL_FORMAT_MONO_8)
        self._format_names = {
            getattr(self._aravis, "PIXEL_FORMAT_" + name.upper().replace("MONO", "MONO_")): name
            for name in MONO_FORMATS
        }

    # ---- connection ----------------------------------------------------------------------

    def _open(self) -> None:
        aravis, glib = self._aravis, self._glib
        try:
            aravis.update_device_list()
            device_id = self.requested_camera_id
            if device_id is None:
                if aravis.get_n_devices() == 0:
                    msg = "no GenICam camera found"
                    raise SourceConnectionError(msg)
                device_id = aravis.get_device_id(0)
            camera = aravis.Camera.new(device_id)
        except glib.Error as exc:
            msg = f"cannot open camera {self.requested_camera_id or '(first found)'}: {exc.message}"
            raise SourceConnectionError(msg) from exc
        self.camera_id = device_id
        with self._lost_lock:
            self._generation += 1
            self._lost_reason = None
            generation = self._generation
        self._camera = camera
        try:
            self._configure(camera, generation)
        except Exception:
            self._close(lost=False)
            raise

    def _configure(self, camera: Any, generation: int) -> None:
        aravis, glib = self._aravis, self._glib
        try:
            if camera.is_gv_device():
                self._device = camera.get_device()
                self._lost_handler = self._device.connect(
                    "control-lost", self._on_control_lost, generation
                )
                if self.packet_size is not None:
                    camera.gv_set_packet_size(self.packet_size)
                else:
                    camera.gv_auto_packet_size()
            if camera.get_pixel_format_as_string() != self.pixel_format:
                available = list(camera.dup_available_pixel_formats_as_strings() or [])
                if self.pixel_format not in available:
                    msg = f"camera {self.camera_id} has no pixel format {self.pixel_format} (it offers {available})"
                    raise ConfigError(msg)
                camera.set_pixel_format_from_string(self.pixel_format)
            if self.exposure_us is not None:
                camera.set_exposure_time(float(self.exposure_us))
            if self.gain_db is not None:
                camera.set_gain(float(self.gain_db))
            camera.set_acquisition_mode(aravis.AcquisitionMode.CONTINUOUS)
            if self.mode == "triggered":
                if not camera.is_software_trigger_supported():
                    msg = f"camera {self.camera_id} does not support software triggers"
                    raise ConfigError(msg)
                camera.set_trigger("Software")
            else:
                camera.clear_triggers()
                self._apply_frame_rate(camera)
            payload_bytes = camera.get_payload()
            stream = camera.create_stream(None, None)
            if stream is None:
                msg = f"camera {self.camera_id}: could not create a stream"
                raise SourceConnectionError(msg)
            for _ in range(self.n_buffers):
                stream.push_buffer(aravis.Buffer.new_allocate(payload_bytes))
            self._stream = stream
            self._stream_current = dict.fromkeys(STREAM_COUNTERS, 0)
            camera.start_acquisition()
        except glib.Error as exc:
            msg = f"camera {self.camera_id}: set-up failed: {exc.message}"
            raise SourceConnectionError(msg) from exc

    def _apply_frame_rate(self, camera: Any) -> None:
        if self.fps_cap is None or not camera.is_frame_rate_available():
            return
        low, high = camera.get_frame_rate_bounds()
        rate = min(max(self.fps_cap, low), high)
        camera.set_frame_rate(rate)

    def _on_control_lost(self, _device: Any, generation: int) -> None:
        # Called from Aravis' heartbeat thread: only record it, the loop acts on it.
        with self._lost_lock:
            if generation == self._generation:
                self._lost_reason = "control lost (GigE Vision heartbeat failed)"

    def _lost(self) -> str | None:
        with self._lost_lock:
            return self._lost_reason

    def _close(self, lost: bool) -> None:
        camera, stream, device = self._camera, self._stream, self._device
        self._camera = self._stream = self._device = None
        if stream is not None:
            self._poll_stream_counters(stream, force=True)
            for name in STREAM_COUNTERS:
                self._stream_totals[name] += self._stream_current[name]
            self._stream_current = dict.fromkeys(STREAM_COUNTERS, 0)
        if device is not None and self._lost_handler is not None:
            try:
                device.disconnect(self._lost_handler)
            except Exception:
                logger.debug("source %s: control-lost handler already gone", self.source_id)
        self._lost_handler = None
        if not lost:
            if camera is not None:
                try:
                    camera.stop_acquisition()
                except self._glib.Error as exc:
                    logger.info(
                        "source %s: stop_acquisition failed: %s", self.source_id, exc.message
                    )
            return  # the last references go here: stream and device finalize at once
        # Finalizing a vanished GigE device waits on GVCP retries for its last register
        # writes (measured: 2.5 s for the stream, 5 s to leave control). Aravis releases the
        # GIL meanwhile, so let a helper thread drop them while the loop reconnects.
        doomed = [stream, device, camera]
        del stream, device, camera
        threading.Thread(
            target=doomed.clear, name=f"aravis-release-{self.source_id}", daemon=True
        ).start()

    # ---- frames --------------------------------------------------------------------------

    def _read(self, timeout_s: float, *, give_up_on_incomplete: bool = False) -> Grab | None:
        """The next complete frame within `timeout_s`, else None. `give_up_on_incomplete`:
        return None at the first incomplete one (after a trigger no other frame follows it)."""
        stream = self._stream
        if stream is None:
            msg = "camera is not open"
            raise SourceConnectionError(msg)
        deadline = time.monotonic() + timeout_s
        while True:
            self._poll_stream_counters(stream)
            lost = self._lost()
            if lost:
                raise SourceConnectionError(lost)
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                return None
            buffer = stream.timeout_pop_buffer(int(min(remaining_s, _POP_SLICE_S) * 1e6))
            if buffer is None:
                continue
            try:
                grab = self._inspectable(buffer)
            finally:
                stream.push_buffer(buffer)
            if grab is not None or give_up_on_incomplete:
                return grab

    def _trigger_and_read(self, timeout_s: float) -> Grab | None:
        stream, camera = self._stream, self._camera
        if stream is None or camera is None:
            msg = "camera is not open"
            raise SourceConnectionError(msg)
        lost = self._lost()
        if lost:
            raise SourceConnectionError(lost)
        # A frame still queued from an earlier (timed-out) trigger must not answer this one.
        while (stale := stream.try_pop_buffer()) is not None:
            self._count("stale_buffers")
            stream.push_buffer(stale)
        try:
            camera.software_trigger()
        except self._glib.Error as exc:
            msg = f"software trigger failed: {exc.message}"
            raise SourceConnectionError(msg) from exc
        return self._read(timeout_s, give_up_on_incomplete=True)

    def _inspectable(self, buffer: Any) -> Grab | None:
        """The buffer as a Grab if its status is SUCCESS; otherwise counted and None."""
        status = buffer.get_status()
        if status != self._aravis.BufferStatus.SUCCESS:
            name = status.value_nick.replace("-", "_")
            self._count("incomplete_buffers")
            self._count(f"buffer_{name}")
            self._saw_incomplete_frame(name)
            self._emit_throttled(
                "buffer_incomplete", Severity.WARNING, status=name, frame_id=buffer.get_frame_id()
            )
            return None
        width, height = buffer.get_image_width(), buffer.get_image_height()
        format_name = self._format_name(buffer.get_image_pixel_format())
        dtype, bit_depth = MONO_FORMATS[format_name]
        count = width * height
        pixels = np.frombuffer(buffer.get_data(), dtype=dtype, count=count).reshape(height, width)
        pixels = pixels.astype(np.uint16) if bit_depth > 8 else pixels.copy()
        system_ns = buffer.get_system_timestamp()
        capture_time = (
            datetime.fromtimestamp(system_ns / 1e9, timezone.utc)
            if system_ns > 0
            else datetime.now(timezone.utc)
        )
        return Grab(
            pixels=pixels,
            capture_time=capture_time,
            metadata={
                "camera_frame_id": int(buffer.get_frame_id()),
                "camera_timestamp_ns": int(buffer.get_timestamp()),
                "pixel_format": format_name,
                "bit_depth": bit_depth,
            },
        )

    def _format_name(self, pixel_format: int) -> str:
        name = self._format_names.get(pixel_format)
        if name is not None:
            return name
        msg = f"camera {self.camera_id} sent pixel format 0x{pixel_format:08x}; only {sorted(MONO_FORMATS)} are supported"
        raise ConfigError(msg)

    # ---- counters ------------------------------------------------------------------------

    def _poll_stream_counters(self, stream: Any, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._stream_polled < 1.0:
            return
        self._stream_polled = now
        current = {}
        for name in STREAM_COUNTERS:
            try:
                current[name] = int(stream.get_info_uint64_by_name(name))
            except Exception:  # a USB3 stream lacks the GigE packet counters
                current[name] = 0
        self._stream_current = current

    def _backend_stats(self) -> dict[str, Any]:
        current = self._stream_current
        return {
            f"stream_{name}": self._stream_totals[name] + current.get(name, 0)
            for name in STREAM_COUNTERS
        }
