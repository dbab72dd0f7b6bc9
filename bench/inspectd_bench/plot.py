"""The latency distribution per engine as a PNG, drawn with OpenCV (matplotlib is not a dependency).

One cumulative distribution per series (x: capture-to-publish latency in ms on a log axis,
so 100 ms and 3 s fit on one plot; y: share of frames at or below it), a dot at each p50 /
p95 / p99, and a legend with the p50. Step curves, not histograms: with tens of frames a
histogram's bins say more about the binning than about the latencies.

Example:
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "latency.png"
    >>> plot_latency_cdf({"classical": [90.0, 100.0, 130.0], "peer": [1700.0, 1750.0]}, path, "test")
    >>> cv2.imread(str(path)).shape  # 560 px of plot + 22 px of legend per series
    (604, 1000, 3)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

logger = logging.getLogger(__name__)

WIDTH_PX, PLOT_HEIGHT_PX, LEGEND_ROW_PX = 1000, 560, 22
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 80, 30, 60, 70
# BGR, distinguishable and print-safe.
COLOURS = ((180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148), (75, 86, 140),
           (194, 119, 227), (127, 127, 127))
_TICKS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def plot_latency_cdf(series: Mapping[str, Sequence[float]], path: Path, title: str) -> None:
    """Write the plot of `series` (name -> latencies in ms) to `path` (PNG)."""
    height_px = PLOT_HEIGHT_PX + LEGEND_ROW_PX * len(series)
    canvas = np.full((height_px, WIDTH_PX, 3), 255, np.uint8)
    values = [v for latencies in series.values() for v in latencies if v > 0]
    low = 10 ** math.floor(math.log10(min(values))) if values else 1.0
    high = 10 ** math.ceil(math.log10(max(values))) if values else 10.0
    if high <= low:
        high = low * 10
    x0, x1 = MARGIN_LEFT, WIDTH_PX - MARGIN_RIGHT
    y0, y1 = PLOT_HEIGHT_PX - MARGIN_BOTTOM, MARGIN_TOP

    def to_x(ms: float) -> int:
        return int(round(x0 + (math.log10(ms) - math.log10(low)) / (math.log10(high) - math.log10(low)) * (x1 - x0)))

    def to_y(share: float) -> int:
        return int(round(y0 + share * (y1 - y0)))

    _axes(canvas, low, high, to_x, to_y, (x0, x1, y0, y1))
    cv2.putText(canvas, title, (x0, 24), _FONT, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    for index, (name, latencies) in enumerate(series.items()):
        colour = COLOURS[index % len(COLOURS)]
        ordered = np.sort(np.asarray([v for v in latencies if v > 0], np.float64))
        if ordered.size == 0:
            continue
        points = [(to_x(ordered[0]), to_y(0.0))]
        for rank, ms in enumerate(ordered, start=1):
            points.append((to_x(ms), points[-1][1]))
            points.append((to_x(ms), to_y(rank / ordered.size)))
        cv2.polylines(canvas, [np.asarray(points, np.int32)], False, colour, 2, cv2.LINE_AA)
        for pct in (50, 95, 99):
            ms = float(np.percentile(ordered, pct))
            cv2.circle(canvas, (to_x(ms), to_y(pct / 100.0)), 4, colour, -1, cv2.LINE_AA)
        label = f"{name}: p50 {np.percentile(ordered, 50):.0f} ms (n={ordered.size})"
        # Below the plot, one row per series: a legend inside would cover some curve.
        legend_x, legend_y = x0, PLOT_HEIGHT_PX + LEGEND_ROW_PX * index + 4
        cv2.line(canvas, (legend_x, legend_y - 5), (legend_x + 30, legend_y - 5), colour, 3)
        cv2.putText(canvas, label, (legend_x + 38, legend_y), _FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), canvas):
        msg = f"could not write {path}"
        raise OSError(msg)


def _axes(canvas: np.ndarray, low: float, high: float, to_x, to_y, box: tuple[int, int, int, int]) -> None:
    x0, x1, y0, y1 = box
    grey, black = (220, 220, 220), (0, 0, 0)
    for tick in _TICKS_MS:
        if low <= tick <= high:
            x = to_x(tick)
            cv2.line(canvas, (x, y0), (x, y1), grey, 1)
            text = f"{tick / 1000:g} s" if tick >= 1000 else f"{tick} ms"
            cv2.putText(canvas, text, (x - 18, y0 + 20), _FONT, 0.42, black, 1, cv2.LINE_AA)
    for share in (0.0, 0.25, 0.5, 0.75, 0.95, 1.0):
        y = to_y(share)
        cv2.line(canvas, (x0, y), (x1, y), grey, 1)
        cv2.putText(canvas, f"{share:.2f}", (x0 - 45, y + 5), _FONT, 0.42, black, 1, cv2.LINE_AA)
    cv2.rectangle(canvas, (x0, y1), (x1, y0), black, 1)
    cv2.putText(canvas, "capture-to-publish latency (log scale)", (x0 + (x1 - x0) // 2 - 150, y0 + 50), _FONT,
                0.5, black, 1, cv2.LINE_AA)
    cv2.putText(canvas, "share of frames", (8, y1 - 16), _FONT, 0.45, black, 1, cv2.LINE_AA)
