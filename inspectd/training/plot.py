"""The training curve as a PNG, drawn with OpenCV (matplotlib is not a dependency).

Two panels side by side: loss per epoch (training, validation) and validation IoU per
epoch (mean over classes, unmelted, pore), with the best epoch marked.

Example:
    >>> import tempfile, pathlib
    >>> history = [{"epoch": 1, "train_loss": 1.0, "val_loss": 0.9, "val_iou_mean": 0.4,
    ...             "val_iou_unmelted": 0.5, "val_iou_pore": 0.2},
    ...            {"epoch": 2, "train_loss": 0.6, "val_loss": 0.7, "val_iou_mean": 0.6,
    ...             "val_iou_unmelted": 0.7, "val_iou_pore": 0.4}]
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "curve.png"
    >>> draw_training_curve(history, path, best_epoch=2).shape
    (420, 960, 3)
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from inspectd.metric_values import is_finite_number

logger = logging.getLogger(__name__)

_PANEL_W, _PANEL_H = 480, 420
_MARGIN_L, _MARGIN_R, _MARGIN_T, _MARGIN_B = 60, 20, 40, 50
_FONT = cv2.FONT_HERSHEY_SIMPLEX
# BGR
_SERIES_STYLE = {
    "train_loss": ((200, 90, 30), "train loss"),
    "val_loss": ((40, 40, 220), "val loss"),
    "val_iou_mean": ((40, 40, 40), "val IoU mean"),
    "val_iou_unmelted": ((30, 150, 30), "val IoU unmelted"),
    "val_iou_pore": ((180, 60, 180), "val IoU pore"),
}


def draw_training_curve(history: list[dict], path: str | Path, best_epoch: int | None = None) -> np.ndarray:
    """Draw loss and IoU per epoch into `path` (PNG); returns the BGR image."""
    epochs = [int(row["epoch"]) for row in history]
    loss_panel = _panel("loss", epochs, history, ("train_loss", "val_loss"), None, best_epoch)
    iou_panel = _panel("validation IoU", epochs, history,
                       ("val_iou_mean", "val_iou_unmelted", "val_iou_pore"), (0.0, 1.0), best_epoch)
    canvas = np.hstack([loss_panel, iou_panel])
    if not cv2.imwrite(str(path), canvas):
        msg = f"could not write the training curve to {path}"
        raise OSError(msg)
    return canvas


def _panel(title: str, epochs: list[int], history: list[dict], keys: tuple[str, ...],
           y_range: tuple[float, float] | None, best_epoch: int | None) -> np.ndarray:
    panel = np.full((_PANEL_H, _PANEL_W, 3), 255, np.uint8)
    x0, x1 = _MARGIN_L, _PANEL_W - _MARGIN_R
    y0, y1 = _PANEL_H - _MARGIN_B, _MARGIN_T  # y0 bottom, y1 top (pixel rows)
    values = [float(row[k]) for row in history for k in keys if is_finite_number(row.get(k))]
    if y_range is None:
        low, high = (min(values), max(values)) if values else (0.0, 1.0)
        low = min(0.0, low)
        high = high * 1.05 if high > 0 else 1.0
    else:
        low, high = y_range
    first, last = (min(epochs), max(epochs)) if epochs else (0, 1)
    span_x = max(1, last - first)
    span_y = (high - low) or 1.0

    def to_px(epoch: float, value: float) -> tuple[int, int]:
        return (int(round(x0 + (epoch - first) / span_x * (x1 - x0))),
                int(round(y0 - (value - low) / span_y * (y0 - y1))))

    cv2.rectangle(panel, (x0, y1), (x1, y0), (0, 0, 0), 1)
    for i in range(5):
        value = low + span_y * i / 4
        _, y = to_px(first, value)
        cv2.line(panel, (x0, y), (x1, y), (225, 225, 225), 1)
        cv2.putText(panel, f"{value:.2f}", (4, y + 4), _FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for epoch in sorted({first, last, (first + last) // 2}):
        x, _ = to_px(epoch, low)
        cv2.putText(panel, str(epoch), (x - 6, y0 + 18), _FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(panel, "epoch", ((x0 + x1) // 2 - 20, y0 + 38), _FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(panel, title, (x0, y1 - 14), _FONT, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    if best_epoch is not None and first <= best_epoch <= last:
        x, _ = to_px(best_epoch, low)
        cv2.line(panel, (x, y1), (x, y0), (0, 170, 255), 1)
    for row_index, key in enumerate(keys):
        colour, label = _SERIES_STYLE[key]
        points = [to_px(e, float(row[key])) for e, row in zip(epochs, history, strict=True)
                  if is_finite_number(row.get(key))]
        if len(points) > 1:
            cv2.polylines(panel, [np.array(points, np.int32)], False, colour, 2, cv2.LINE_AA)
        for point in points:
            cv2.circle(panel, point, 2, colour, -1, cv2.LINE_AA)
        legend_y = y1 + 16 + 16 * row_index
        cv2.line(panel, (x1 - 150, legend_y - 4), (x1 - 130, legend_y - 4), colour, 2)
        cv2.putText(panel, label, (x1 - 125, legend_y), _FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return panel
