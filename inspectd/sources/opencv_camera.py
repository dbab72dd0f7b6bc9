"""OpenCV `VideoCapture` source: a device index, a V4L2 path, a video file or an RTSP URL.

Frames are converted to 2-D grey (the pipeline's input). Free-run or triggered, fps cap,
reconnect with backoff and frame-timeout handling come from `CameraSource` (trigger.py).

What a failed read means depends on the target:
* a live device or stream (index, `/dev/video*`, `rtsp://` ...): a failed read counts as a
  frame timeout; `lost_after_timeouts` of them in a row close and reopen the capture with
  backoff. Network streams get FFmpeg open/read timeouts of `frame_timeout_s`.
* a video file: the end of the file either ends the source (`at_end="end"`, the default:
  state ENDED, `finished` once drained, pending triggers answered NO_INSPECTION `ended`)
  or rewinds it (`at_end="loop"`, counted in `rewinds`; frame numbers keep increasing).
  Files are paced by `fps_cap` rather than skipped. A file that does not exist (yet) is
  retried with backoff like an absent camera.

Example::

    >>> import cv2, numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "clip.avi")
    >>> out = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (32, 24))
    >>> for i in range(3): _ = out.write(np.full((24, 32, 3), 40 * i, np.uint8))
    >>> out.release()
    >>> src = OpenCVCameraSource(OpenCVSourceConfig(id="line1-cam", device=path, buffer_size=8))
    >>> src.start()
    >>> [src.get(timeout_s=5).frame_number for _ in range(3)]
    [0, 1, 2]
    >>> src.get(timeout_s=5) is None, src.state.value
    (True, 'ENDED')
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import Field

from inspectd.errors import SourceConnectionError
from inspectd.sources.base import Severity, SourceContext
from inspectd.sources.camera import CameraSource, CameraSourceFields, EndOfStream, Grab

logger = logging.getLogger(__name__)

_BACKENDS = {
    "any": cv2.CAP_ANY,
    "v4l2": cv2.CAP_V4L2,
    "ffmpeg": cv2.CAP_FFMPEG,
    "gstreamer": cv2.CAP_GSTREAMER,
}


def is_live_target(device: int | str) -> bool:
    """True for a camera or network stream, False for a video file.

    >>> is_live_target(0), is_live_target("/dev/video2"), is_live_target("rtsp://cam/1")
    (True, True, True)
    >>> is_live_target("/data/run7.avi")
    False
    """
    if isinstance(device, int) or str(device).isdigit():
        return True
    text = str(device)
    return text.startswith("/dev/") or ("://" in text and not text.startswith("file://"))


def to_grey(frame: np.ndarray) -> np.ndarray:
    """2-D grey from whatever VideoCapture returned (BGR, BGRA, single channel).

    >>> to_grey(np.zeros((4, 5, 3), np.uint8)).shape
    (4, 5)
    """
    if frame.ndim == 2:
        return frame
    channels = frame.shape[2]
    if channels == 1:
        return np.ascontiguousarray(frame[:, :, 0])
    code = cv2.COLOR_BGRA2GRAY if channels == 4 else cv2.COLOR_BGR2GRAY
    return cv2.cvtColor(frame, code)


class OpenCVSourceConfig(CameraSourceFields):
    """cv2.VideoCapture: device index, V4L2 path, video file or RTSP URL."""

    kind: Literal["opencv"] = "opencv"
    device: int | str = Field(0, description="Device index, /dev/videoN, file path or rtsp:// URL.")
    backend: Literal["any", "v4l2", "ffmpeg", "gstreamer"] = Field("any", description="VideoCapture API.")
    at_end: Literal["end", "loop"] = Field("end", description="For files: stop or loop at the end.")
    width: int | None = Field(None, ge=1, le=65_535, description="Requested frame width.")
    height: int | None = Field(None, ge=1, le=65_535, description="Requested frame height.")
    camera_fps: float | None = Field(None, gt=0.0, le=10_000.0, description="Frame rate requested from the device.")


class OpenCVCameraSource(CameraSource):
    """Frames from `cv2.VideoCapture(device)`; see the module docstring for failure handling.

    Settings beyond `CameraSource`'s (`OpenCVSourceConfig`): `device` (index, path or URL),
    `backend` (any | v4l2 | ffmpeg | gstreamer), `at_end` (end | loop, files only), `width`,
    `height`, `camera_fps` (requested from the device; `fps_cap` is what we hand on).
    """

    KEY = "opencv"
    config_class = OpenCVSourceConfig

    def __init__(
        self,
        settings: OpenCVSourceConfig,
        context: SourceContext | None = None,
        *,
        start_wait_s: float = 5.0,
    ) -> None:
        super().__init__(settings, context, camera_id=str(settings.device), start_wait_s=start_wait_s)
        device = settings.device
        self.device: int | str = int(device) if isinstance(device, str) and device.isdigit() else device
        self.backend = settings.backend
        self.at_end = settings.at_end
        self.width = settings.width
        self.height = settings.height
        self.camera_fps = settings.camera_fps
        self._live = is_live_target(self.device)
        self._capture: cv2.VideoCapture | None = None
        self._frames_this_pass = 0
        self._count("rewinds", 0)

    @property
    def live(self) -> bool:
        return self._live

    def _open(self) -> None:
        api = _BACKENDS[self.backend]
        capture = None
        if isinstance(self.device, str) and not self.device.startswith("/dev/"):
            # Files and network streams go through FFmpeg, which honours these timeouts.
            timeout_ms = int(self.frame_timeout_s * 1000)
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                timeout_ms,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                timeout_ms,
            ]
            capture = cv2.VideoCapture(self.device, api, params)
            if not capture.isOpened():  # a backend that refuses those params: plain open
                capture.release()
                capture = None
        if capture is None:
            capture = cv2.VideoCapture(self.device, api)
        if not capture.isOpened():
            capture.release()
            msg = f"cannot open video capture {self.device!r} (backend {self.backend})"
            raise SourceConnectionError(msg)
        for prop, value in (
            (cv2.CAP_PROP_FRAME_WIDTH, self.width),
            (cv2.CAP_PROP_FRAME_HEIGHT, self.height),
            (cv2.CAP_PROP_FPS, self.camera_fps),
        ):
            if value is not None and not capture.set(prop, float(value)):
                logger.warning(
                    "source %s: device refused property %s=%s", self.source_id, prop, value
                )
        self._capture = capture
        self._frames_this_pass = 0

    def _close(self, lost: bool) -> None:
        capture, self._capture = self._capture, None
        if capture is not None:
            capture.release()

    def _read(self, timeout_s: float) -> Grab | None:
        capture = self._capture
        if capture is None:
            msg = "capture is not open"
            raise SourceConnectionError(msg)
        ok, frame = capture.read()
        if not ok or frame is None:
            if self._live:
                return None  # counted as a frame timeout by the loop
            return self._end_of_file(capture)
        return self._grab(capture, frame)

    def _idle(self) -> None:
        # Keep the driver's queue fresh while waiting for a trigger, so the frame read
        # for a trigger is taken after it, not minutes before.
        if self._capture is not None:
            self._capture.grab()

    def _end_of_file(self, capture: cv2.VideoCapture) -> Grab:
        if self.at_end == "loop" and self._frames_this_pass > 0:
            capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            self._frames_this_pass = 0
            self._count("rewinds")
            self._emit("rewound", Severity.INFO, device=str(self.device))
            ok, frame = capture.read()
            if ok and frame is not None:
                return self._grab(capture, frame)
        msg = f"{self.device}: end of video after {self._frames_this_pass} frames"
        raise EndOfStream(msg)

    def _grab(self, capture: cv2.VideoCapture, frame: np.ndarray) -> Grab:
        self._frames_this_pass += 1
        metadata: dict[str, Any] = {"device": str(self.device), "backend": capture.getBackendName()}
        if not self._live:
            metadata["file_frame_index"] = self._frames_this_pass - 1
        return Grab(
            pixels=to_grey(frame),
            capture_time=datetime.now(timezone.utc),
            metadata=metadata,
        )
