"""SLIC superpixel vote: each superpixel takes the majority class of its pixels.

Why: a threshold decides pixel by pixel, so particle edges come out ragged and single grainy
pixels flip class; superpixels follow grey-level edges, and a majority vote inside each one
snaps the mask to those edges. Two implementations:

* `skimage`: `skimage.segmentation.slic`, always installed (slow: seconds on 2560x1920).
* `fast_slic`: the optional `fast-slic` package (the `[slic]` extra), imported only when
  chosen; choosing it without the package installed raises `EngineError` with the hint.

Both see the image as grey levels on a 0..255 scale (uint16 is divided by 257), so one
`compactness` value means the same for 8- and 16-bit frames and for both implementations
(skimage rescales its input to [0, 1]; the compactness handed to it is divided by the grey
range to undo that, else every `compactness` >= 1 gives a plain square grid).

Example:
    >>> import numpy as np
    >>> image = np.zeros((40, 40), np.uint8); image[:, 20:] = 200
    >>> mask = (image > 100).astype(np.uint8); mask[5, 30] = 0
    >>> voted = slic_vote(image, mask, n_segments=8, compactness=10.0)
    >>> int(voted[5, 30]), voted.dtype.name
    (1, 'uint8')
"""

from __future__ import annotations

import logging

import numpy as np

from inspectd.errors import EngineError

logger = logging.getLogger(__name__)

N_CLASSES = 3
_FAST_SLIC_HINT = ("pip install cython wheel && pip install --no-build-isolation fast-slic  "
                   "(its sdist needs cython at build time; `make venv` does this)")


def superpixels(image: np.ndarray, *, n_segments: int, compactness: float, implementation: str = "skimage") -> np.ndarray:
    """Superpixel labels (int, 0..n-1) of a 2-D uint8/uint16 grey image.

    Example:
        >>> import numpy as np
        >>> labels = superpixels(np.zeros((32, 32), np.uint8), n_segments=4, compactness=10.0)
        >>> labels.shape, int(labels.min())
        ((32, 32), 0)
    """
    grey = image.astype(np.float32)
    if image.dtype == np.uint16:
        grey /= 257.0
    if implementation == "fast_slic":
        return _fast_slic(grey, n_segments, compactness)
    if implementation != "skimage":
        msg = f"unknown SLIC implementation {implementation!r}; expected skimage or fast_slic"
        raise EngineError(msg)
    from skimage.segmentation import slic

    # skimage rescales the image to [0, 1] before weighing colour against distance; divide
    # the compactness by the grey range so it keeps its 0..255 meaning (fast_slic, SLIC paper).
    grey_range = float(grey.max() - grey.min())
    return slic(grey, n_segments=n_segments, compactness=compactness / max(grey_range, 1.0),
                channel_axis=None, start_label=0, convert2lab=False)


def vote(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Replace every pixel's class by its superpixel's majority class (ties: lower class index).

    Example:
        >>> import numpy as np
        >>> vote(np.array([[0, 0, 0, 1]]), np.array([[1, 1, 0, 2]], np.uint8)).tolist()
        [[1, 1, 1, 2]]
    """
    flat_labels = labels.ravel().astype(np.int64)
    n_labels = int(flat_labels.max()) + 1 if flat_labels.size else 0
    counts = np.bincount(flat_labels * N_CLASSES + mask.ravel(), minlength=n_labels * N_CLASSES)
    winner = counts.reshape(n_labels, N_CLASSES).argmax(axis=1).astype(np.uint8)
    return winner[labels]


def slic_vote(
    image: np.ndarray, mask: np.ndarray, *, n_segments: int, compactness: float, implementation: str = "skimage"
) -> np.ndarray:
    """Superpixels of `image`, then the majority vote of `mask` inside each."""
    labels = superpixels(image, n_segments=n_segments, compactness=compactness, implementation=implementation)
    return vote(labels, mask)


def require_implementation(implementation: str) -> None:
    """Fail early (at engine load) when the chosen implementation cannot be imported."""
    if implementation == "fast_slic":
        _import_fast_slic()


def _import_fast_slic() -> type:
    """fast_slic's AVX2 build where the CPU has AVX2 (about 2x its portable one), else portable."""
    try:
        from fast_slic import Slic
    except ImportError as exc:
        msg = f"segment.classical.slic.implementation is fast_slic, but fast_slic is not installed: {_FAST_SLIC_HINT}"
        raise EngineError(msg) from exc
    if _cpu_has_avx2():
        from fast_slic.avx2 import SlicAvx2

        return SlicAvx2
    return Slic


def _cpu_has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            return any(line.startswith("flags") and " avx2" in line for line in cpuinfo)
    except OSError:
        return False


def _fast_slic(grey: np.ndarray, n_segments: int, compactness: float) -> np.ndarray:
    slic_cls = _import_fast_slic()
    rgb = np.ascontiguousarray(np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2))
    labels = slic_cls(num_components=n_segments, compactness=compactness).iterate(rgb)
    return np.asarray(labels, dtype=np.int64)
