"""Otsu's global threshold, numba CPU kernels.

Returns the same integer as ``cv2.threshold(img, 0, maxval, THRESH_BINARY | THRESH_OTSU)``
for uint8 and uint16 images: the histogram is exact (integer counts, one chunk of the
image per thread), and the variance scan repeats OpenCV's float64 arithmetic in the same
order, including its FLT_EPSILON guard and strict ``>`` tie-break (first maximum wins).
The scan is compiled without fastmath on purpose: reassociation could move the maximum.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from kernels._threads import threads_for
from kernels._validate import check_image
from kernels.backend import resolve_backend
from kernels.config import OTSU_MIN_CHUNK_PIXELS

# OpenCV's FLT_EPSILON guard excludes splits where one class is (numerically) empty.
_FLT_EPSILON = float(np.finfo(np.float32).eps)


@njit(inline="always")
def _count_words_u8(words, hist):
    """Count 8 pixels per 64-bit load into 8 interleaved 256-bin lanes of ``hist``.

    One load per 8 pixels instead of 8, and each byte position has its own lane, so equal
    neighbouring pixels (flat regions) never wait on the same counter's store.
    """
    for i in range(words.shape[0]):
        word = words[i]
        hist[word & 0xFF] += 1
        hist[256 + ((word >> 8) & 0xFF)] += 1
        hist[512 + ((word >> 16) & 0xFF)] += 1
        hist[768 + ((word >> 24) & 0xFF)] += 1
        hist[1024 + ((word >> 32) & 0xFF)] += 1
        hist[1280 + ((word >> 40) & 0xFF)] += 1
        hist[1536 + ((word >> 48) & 0xFF)] += 1
        hist[1792 + (word >> 56)] += 1


@njit(parallel=True, nogil=True, cache=True)
def _histogram_u8(flat, n_chunks):
    """256-bin histogram (int64) of a contiguous uint8 buffer, chunks in parallel.

    Memory: one 8 KiB int32 partial histogram per chunk.
    """
    n_pixels = flat.shape[0]
    n_words = n_pixels // 8
    words = flat[:n_words * 8].view(np.uint64)
    partial = np.empty((n_chunks, 8 * 256), dtype=np.int32)
    for chunk in prange(n_chunks):
        lanes = partial[chunk]
        lanes[:] = 0
        _count_words_u8(words[chunk * n_words // n_chunks:(chunk + 1) * n_words // n_chunks], lanes)
    hist = np.zeros(256, dtype=np.int64)
    for chunk in range(n_chunks):
        lanes = partial[chunk]
        for lane in range(8):
            for i in range(256):
                hist[i] += lanes[lane * 256 + i]
    for i in range(n_words * 8, n_pixels):
        hist[flat[i]] += 1
    return hist


@njit(parallel=True, nogil=True, cache=True)
def _histogram_u16(flat, n_chunks):
    """65536-bin histogram (int64) of a contiguous uint16 buffer, chunks in parallel.

    One lane per chunk: with 65536 bins equal neighbours rarely share a counter, and more
    lanes would cost 256 KiB each. Partials are merged in parallel over bins.
    """
    n_pixels = flat.shape[0]
    partial = np.empty((n_chunks, 65536), dtype=np.int32)
    for chunk in prange(n_chunks):
        counts = partial[chunk]
        counts[:] = 0
        pixels = flat[chunk * n_pixels // n_chunks:(chunk + 1) * n_pixels // n_chunks]
        for i in range(pixels.shape[0]):
            counts[pixels[i]] += 1
    hist = np.zeros(65536, dtype=np.int64)
    n_blocks = 64
    for block in prange(n_blocks):
        merged = hist[block * 1024:(block + 1) * 1024]
        for chunk in range(n_chunks):
            counts = partial[chunk, block * 1024:(block + 1) * 1024]
            for i in range(1024):
                merged[i] += counts[i]
    return hist


@njit(nogil=True, cache=True)
def _otsu_from_histogram(hist, n_pixels):
    """OpenCV's getThreshVal_Otsu scan over an integer histogram."""
    hist_size = hist.shape[0]
    scale = 1.0 / n_pixels
    mu = 0.0
    for i in range(hist_size):
        mu += i * np.float64(hist[i])
    mu *= scale
    mu1 = 0.0
    q1 = 0.0
    max_sigma = 0.0
    max_val = 0
    for i in range(hist_size):
        p_i = hist[i] * scale
        mu1 *= q1
        q1 += p_i
        q2 = 1.0 - q1
        if min(q1, q2) < _FLT_EPSILON or max(q1, q2) > 1.0 - _FLT_EPSILON:
            continue
        mu1 = (mu1 + i * p_i) / q1
        mu2 = (mu - q1 * mu1) / q2
        sigma = q1 * q2 * (mu1 - mu2) * (mu1 - mu2)
        if sigma > max_sigma:
            max_sigma = sigma
            max_val = i
    return max_val


def grey_histogram(img):
    """Exact pixel count per grey level (int64; 256 bins for uint8, 65536 for uint16).

    The same parallel counting as ``otsu_threshold``; the minimum-error threshold and the
    preprocess's enhanced-frame check read it instead of counting the frame their own way.

    >>> import numpy as np, kernels
    >>> kernels.grey_histogram(np.array([[0, 3, 3]], dtype=np.uint8))[:4].tolist()
    [1, 0, 0, 2]
    """
    return checked_histogram(check_image(img, "grey_histogram"))


@njit(parallel=True, nogil=True, cache=True)
def _class_histogram(classes, grey, n_classes, n_levels, n_chunks):
    """[n_classes, n_levels] counts of (class, grey level) pairs of two equal-length buffers.

    One partial histogram per chunk of pixels, in parallel; a class value >= n_classes lands
    in one extra row that is dropped, so the counting loop has no branch. Partials are merged
    in parallel over classes. Memory: (n_classes + 1) x n_levels int32 per chunk (1 MiB for
    three classes of a uint16 frame).
    """
    n_pixels = classes.shape[0]
    partial = np.empty((n_chunks, n_classes + 1, n_levels), dtype=np.int32)
    for chunk in prange(n_chunks):
        counts = partial[chunk]
        counts[:] = 0
        for i in range(chunk * n_pixels // n_chunks, (chunk + 1) * n_pixels // n_chunks):
            counts[min(np.int64(classes[i]), n_classes), grey[i]] += 1
    hist = np.zeros((n_classes, n_levels), dtype=np.int64)
    for c in prange(n_classes):
        for chunk in range(n_chunks):
            for level in range(n_levels):
                hist[c, level] += partial[chunk, c, level]
    return hist


@njit(nogil=True, cache=True)
def _class_histogram_u8(classes, grey, n_classes):
    """`_class_histogram` of a uint8 image: four interleaved partial histograms, one thread.

    Neighbouring pixels mostly share their (class, level) pair, and a counter bumped by
    consecutive pixels waits each time for its previous increment; pixels i, i+1, i+2, i+3
    counting into four copies do not. Each copy has a row for every possible class value
    (256 x 256 int32, 1 MiB for the four), so the index is ``class << 8 | level`` with no
    clamp. ~1.8 ms on a 2560x1920 frame on one core, where ``cv2.calcHist`` takes ~3.2 ms
    (and 1.7 ms on two). `_class_histogram_u8_chunks` runs it on numba's threads.
    """
    n_pixels = classes.shape[0]
    lanes = np.zeros((4, 65536), dtype=np.int32)
    quads = n_pixels // 4 * 4
    for i in range(0, quads, 4):
        lanes[0, (np.int64(classes[i]) << 8) | grey[i]] += 1
        lanes[1, (np.int64(classes[i + 1]) << 8) | grey[i + 1]] += 1
        lanes[2, (np.int64(classes[i + 2]) << 8) | grey[i + 2]] += 1
        lanes[3, (np.int64(classes[i + 3]) << 8) | grey[i + 3]] += 1
    for i in range(quads, n_pixels):
        lanes[0, (np.int64(classes[i]) << 8) | grey[i]] += 1
    hist = np.zeros((n_classes, 256), dtype=np.int64)
    for c in range(n_classes):
        for level in range(256):
            index = (c << 8) | level
            hist[c, level] = lanes[0, index] + lanes[1, index] + lanes[2, index] + lanes[3, index]
    return hist


@njit(parallel=True, nogil=True, cache=True)
def _class_histogram_u8_chunks(classes, grey, n_classes, n_chunks):
    """`_class_histogram_u8` of consecutive chunks of the pixels in parallel, summed.

    Each chunk calls the one-thread kernel, compiled on its own: the same counting loop
    written inside the ``prange`` body compiled ~2.8x slower (the parallel body is
    outlined and loses the loop's optimisations). Two chunks: ~1.1 ms on a 2560x1920 frame
    where one thread takes ~1.8 (~0.2 ms more CPU, zeroing each chunk's lanes).
    """
    n_pixels = classes.shape[0]
    partial = np.empty((n_chunks, n_classes, 256), dtype=np.int64)
    for chunk in prange(n_chunks):
        start = chunk * n_pixels // n_chunks
        stop = (chunk + 1) * n_pixels // n_chunks
        partial[chunk] = _class_histogram_u8(classes[start:stop], grey[start:stop], n_classes)
    return partial.sum(axis=0)


def class_grey_histogram(classes, img, n_classes):
    """Pixel count per (class, grey level): int64 [n_classes, 256] for uint8, [n_classes, 65536] for uint16.

    ``classes``: a uint8 class-index mask of ``img``'s shape; pixels whose class is
    ``n_classes`` or more are not counted. The same counts as ``cv2.calcHist([classes, img],
    [0, 1], None, [n_classes, levels], [0, n_classes, 0, levels])``. On a 2560x1920 frame:
    uint16 ~2.8 ms in parallel where calcHist takes ~22 ms (65536 bins); uint8 ~1.1 ms on two
    threads (~1.8 ms on one) where calcHist takes ~3.2 ms of CPU (`_class_histogram_u8`).

    >>> import numpy as np, kernels.otsu as ko
    >>> mask = np.array([[0, 1, 1, 7]], np.uint8); img = np.array([[5, 5, 9, 9]], np.uint8)
    >>> h = ko.class_grey_histogram(mask, img, 2)
    >>> h.shape, int(h[0, 5]), int(h[1, 5]), int(h[1, 9]), int(h.sum())
    ((2, 256), 1, 1, 1, 3)
    """
    img = check_image(img, "class_grey_histogram")
    if not isinstance(classes, np.ndarray) or classes.dtype != np.uint8 or classes.shape != img.shape:
        got = f"{classes.dtype} {classes.shape}" if isinstance(classes, np.ndarray) else type(classes).__name__
        msg = f"class_grey_histogram: classes must be a uint8 mask of shape {img.shape}, got {got}"
        raise ValueError(msg)
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or not 1 <= n_classes <= 255:
        msg = f"class_grey_histogram: n_classes must be an integer in 1..255, got {n_classes!r}"
        raise ValueError(msg)
    flat_classes = np.ascontiguousarray(classes).reshape(-1)
    flat = img.reshape(-1)
    with threads_for(flat.size) as threads:
        n_chunks = max(1, min(threads, flat.size // OTSU_MIN_CHUNK_PIXELS))
        if img.dtype == np.uint8:
            return _class_histogram_u8_chunks(flat_classes, flat, np.int64(n_classes), n_chunks)
        return _class_histogram(flat_classes, flat, np.int64(n_classes), 65536, n_chunks)


def otsu_from_histogram(hist):
    """``otsu_threshold`` of the image a ``grey_histogram`` counted, without counting it again.

    For a caller that needs the histogram for more than one threshold (the classical engine
    takes Otsu's and the minimum-error threshold of the same frame).

    >>> import numpy as np, kernels
    >>> img = np.array([[10, 10, 200, 200]], dtype=np.uint8)
    >>> otsu_from_histogram(kernels.grey_histogram(img)) == kernels.otsu_threshold(img)
    True
    """
    counts = np.ascontiguousarray(hist, dtype=np.int64)
    if counts.ndim != 1 or counts.size not in (256, 65536):
        msg = f"otsu_from_histogram: expected 256 or 65536 counts (a grey_histogram), got shape {counts.shape}"
        raise ValueError(msg)
    return int(_otsu_from_histogram(counts, max(int(counts.sum()), 1)))


def checked_histogram(img):
    """``grey_histogram`` of an image ``check_image`` already returned (no second check)."""
    flat = img.reshape(-1)
    with threads_for(flat.size) as threads:
        # One chunk per thread, none smaller than OTSU_MIN_CHUNK_PIXELS.
        n_chunks = max(1, min(threads, flat.size // OTSU_MIN_CHUNK_PIXELS))
        if img.dtype == np.uint8:
            return _histogram_u8(flat, n_chunks)
        return _histogram_u16(flat, n_chunks)


def otsu_threshold(img, backend="auto"):
    """Otsu's threshold of a 2-D uint8 or uint16 image, as an int.

    Identical to the threshold OpenCV returns for
    ``cv2.threshold(img, 0, maxval, cv2.THRESH_BINARY | cv2.THRESH_OTSU)``; pixels strictly
    above it are the bright class (``kernels.threshold(img, t)``).

    >>> import numpy as np, kernels
    >>> img = np.array([[10, 10, 200, 200]], dtype=np.uint8)
    >>> kernels.otsu_threshold(img)
    10
    """
    resolve_backend(backend, "otsu_threshold")
    img = check_image(img, "otsu_threshold")
    return int(_otsu_from_histogram(checked_histogram(img), img.size))
