"""Obvious, slow reference implementations used as a second oracle beside OpenCV.

Each function follows the published algorithm step by step in plain numpy/Python, with
no attempt at speed, so a reader can check it against OpenCV's source by eye. The CLAHE
reference reproduces OpenCV's float32 arithmetic (``clahe.cpp``) so it should agree with
``cv2.createCLAHE(...).apply`` exactly; the numba kernels may differ by one grey level
because they use fixed-point interpolation.
"""

from __future__ import annotations

import numpy as np


def border_reflect_101(index: int, length: int) -> int:
    """Map an out-of-range index like OpenCV's ``borderInterpolate(BORDER_REFLECT_101)``."""
    if length == 1:
        return 0
    while index < 0 or index >= length:
        if index < 0:
            index = -index
        else:
            index = 2 * (length - 1) - index
    return index


def pad_reflect_101(img: np.ndarray, pad_bottom: int, pad_right: int) -> np.ndarray:
    """Pad the bottom and right edges, reflecting without repeating the edge pixel."""
    height, width = img.shape
    rows = [border_reflect_101(y, height) for y in range(height + pad_bottom)]
    cols = [border_reflect_101(x, width) for x in range(width + pad_right)]
    return img[np.ix_(rows, cols)]


def clahe(img: np.ndarray, clip_limit: float = 2.0, tile_grid: tuple[int, int] = (8, 8)) -> np.ndarray:
    """CLAHE exactly as OpenCV's CPU path computes it (8- or 16-bit, one channel)."""
    tiles_y, tiles_x = tile_grid
    height, width = img.shape
    hist_size = 256 if img.dtype == np.uint8 else 65536
    max_value = hist_size - 1

    if width % tiles_x == 0 and height % tiles_y == 0:
        ext = img
    else:
        # OpenCV pads both axes whenever either does not divide, by grid - (size % grid),
        # so an axis that divides evenly still gains one whole extra tile's worth of rows.
        ext = pad_reflect_101(img, tiles_y - height % tiles_y, tiles_x - width % tiles_x)
    tile_h = ext.shape[0] // tiles_y
    tile_w = ext.shape[1] // tiles_x
    tile_area = tile_h * tile_w
    lut_scale = np.float32(max_value) / np.float32(tile_area)

    clip = 0
    if clip_limit > 0.0:
        clip = max(int(clip_limit * tile_area / hist_size), 1)

    luts = np.zeros((tiles_y, tiles_x, hist_size), dtype=img.dtype)
    for ty in range(tiles_y):
        for tx in range(tiles_x):
            tile = ext[ty * tile_h:(ty + 1) * tile_h, tx * tile_w:(tx + 1) * tile_w]
            hist = np.bincount(tile.ravel(), minlength=hist_size).astype(np.int64)
            if clip > 0:
                clipped = int(np.sum(np.maximum(hist - clip, 0)))
                hist = np.minimum(hist, clip)
                batch = clipped // hist_size
                residual = clipped - batch * hist_size
                hist += batch
                if residual:
                    step = max(hist_size // residual, 1)
                    i = 0
                    while i < hist_size and residual > 0:
                        hist[i] += 1
                        i += step
                        residual -= 1
            cdf = np.cumsum(hist).astype(np.float32)
            values = np.rint(cdf * lut_scale)
            luts[ty, tx] = np.clip(values, 0, max_value).astype(img.dtype)

    out = np.empty_like(img)
    inv_tw = np.float32(1.0) / np.float32(tile_w)
    inv_th = np.float32(1.0) / np.float32(tile_h)
    half = np.float32(0.5)
    one = np.float32(1.0)
    txf = np.arange(width, dtype=np.float32) * inv_tw - half
    tx1 = np.floor(txf).astype(np.int64)
    xa = (txf - tx1.astype(np.float32)).astype(np.float32)
    xa1 = (one - xa).astype(np.float32)
    tx2 = np.minimum(tx1 + 1, tiles_x - 1)
    tx1 = np.maximum(tx1, 0)
    for y in range(height):
        tyf = np.float32(y) * inv_th - half
        ty1 = int(np.floor(tyf))
        ya = np.float32(tyf - np.float32(ty1))
        ya1 = np.float32(one - ya)
        ty2 = min(ty1 + 1, tiles_y - 1)
        ty1 = max(ty1, 0)
        v = img[y].astype(np.int64)
        l11 = luts[ty1, tx1, v].astype(np.float32)
        l12 = luts[ty1, tx2, v].astype(np.float32)
        l21 = luts[ty2, tx1, v].astype(np.float32)
        l22 = luts[ty2, tx2, v].astype(np.float32)
        res = (l11 * xa1 + l12 * xa) * ya1 + (l21 * xa1 + l22 * xa) * ya
        out[y] = np.clip(np.rint(res), 0, max_value).astype(img.dtype)
    return out


def otsu_threshold(img: np.ndarray) -> int:
    """Otsu's threshold: the first grey level maximising the between-class variance."""
    hist_size = 256 if img.dtype == np.uint8 else 65536
    hist = np.bincount(img.ravel(), minlength=hist_size)
    scale = 1.0 / img.size
    mu = sum(i * float(hist[i]) for i in range(hist_size)) * scale
    eps = float(np.finfo(np.float32).eps)
    mu1 = q1 = 0.0
    best_sigma = 0.0
    best = 0
    for i in range(hist_size):
        p_i = hist[i] * scale
        mu1 *= q1
        q1 += p_i
        q2 = 1.0 - q1
        if min(q1, q2) < eps or max(q1, q2) > 1.0 - eps:
            continue
        mu1 = (mu1 + i * p_i) / q1
        mu2 = (mu - q1 * mu1) / q2
        sigma = q1 * q2 * (mu1 - mu2) * (mu1 - mu2)
        if sigma > best_sigma:
            best_sigma = sigma
            best = i
    return best


def threshold(img: np.ndarray, value: float) -> np.ndarray:
    """1 where the pixel is strictly above ``value``, else 0."""
    return (img > value).astype(np.uint8)


def adaptive_threshold(img: np.ndarray, block_size: int, offset: float) -> np.ndarray:
    """1 where the pixel exceeds its block's mean (edges replicated) minus offset.

    Like OpenCV's ADAPTIVE_THRESH_MEAN_C, the mean is first rounded to a whole grey level
    (here half up), as OpenCV stores it in an image of the input type.
    """
    radius = block_size // 2
    padded = np.pad(img.astype(np.float64), radius, mode="edge")
    height, width = img.shape
    out = np.zeros((height, width), dtype=np.uint8)
    for y in range(height):
        for x in range(width):
            window = padded[y:y + block_size, x:x + block_size]
            mean = int(np.floor(window.mean() + 0.5))
            out[y, x] = img[y, x] > mean - offset
    return out


def regions(mask: np.ndarray, um_per_px: float, min_region_area_px: int) -> list[dict]:
    """The region table of ``inspectd.analysis.measure``, one region at a time from its own pixels.

    Regions are the 8-connected components of the unmelted (1) then the pore (2) class,
    numbered as ``cv2.connectedComponents`` numbers them; area, bbox, centroid and second
    moments come from the region's pixel coordinates (numpy); perimeter and hull from the
    outer contour traced on the region alone (its bbox crop) with OpenCV's Teh-Chin
    approximation, since that contour is the definition.
    """
    import cv2  # here, not at the top: the references above are OpenCV-free

    table: list[dict] = []
    for class_index, class_name in ((1, "unmelted"), (2, "pore")):
        class_mask = (mask == class_index).astype(np.uint8)
        n_labels, labels = cv2.connectedComponents(class_mask, connectivity=8, ltype=cv2.CV_32S)
        for label in range(1, n_labels):
            ys, xs = np.nonzero(labels == label)
            area = int(ys.size)
            if area < min_region_area_px:
                continue
            x0, y0 = int(xs.min()), int(ys.min())
            width, height = int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1
            crop = (labels[y0:y0 + height, x0:x0 + width] == label).astype(np.uint8)
            contours, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_TC89_L1)
            contour = max(contours, key=len)
            perimeter = float(cv2.arcLength(contour, True))
            hull = cv2.convexHull(contour)
            hull_pixels = cv2.contourArea(hull) + cv2.arcLength(hull, True) / 2.0 + 1.0
            dx, dy = xs - xs.mean(), ys - ys.mean()
            # pixels as unit squares: each adds 1/12 to the variance along each axis
            covariance = np.array([[(dx * dx).mean() + 1 / 12, (dx * dy).mean()],
                                   [(dx * dy).mean(), (dy * dy).mean() + 1 / 12]])
            minor, major = np.linalg.eigvalsh(covariance)
            diameter = float(np.sqrt(4.0 * area / np.pi))
            table.append({
                "label": len(table) + 1,
                "class_name": class_name,
                "area_px": area,
                "area_um2": area * um_per_px**2,
                "bbox_x": x0,
                "bbox_y": y0,
                "bbox_width_px": width,
                "bbox_height_px": height,
                "aspect_ratio": float(np.sqrt(major / max(minor, 1e-12))),
                "equivalent_diameter_px": diameter,
                "equivalent_diameter_um": diameter * um_per_px,
                "perimeter_px": perimeter,
                "perimeter_um": perimeter * um_per_px,
                "circularity": min(1.0, 4.0 * np.pi * area / perimeter**2) if perimeter > 0 else 1.0,
                "solidity": min(1.0, area / hull_pixels),
                "centroid_x": float(xs.mean()),
                "centroid_y": float(ys.mean()),
            })
    return table


def minimum_error_threshold(img: np.ndarray) -> int:
    """Robust Kittler-Illingworth, one threshold at a time: J(t) minimised strictly between the
    means of Otsu's two classes, variances floored at 1/12, Otsu where no interior minimum."""
    hist_size = 256 if img.dtype == np.uint8 else 65536
    hist = np.bincount(img.ravel(), minlength=hist_size).astype(np.float64)
    otsu = otsu_threshold(img)
    if np.count_nonzero(hist) < 3:
        return otsu
    p = hist / hist.sum()
    levels = np.arange(hist_size, dtype=np.float64)

    def moments(t: int) -> tuple[float, float, float, float, float, float]:
        w0, w1 = p[:t + 1].sum(), p[t + 1:].sum()
        m0 = (p[:t + 1] * levels[:t + 1]).sum() / w0 if w0 > 0 else float("nan")
        m1 = (p[t + 1:] * levels[t + 1:]).sum() / w1 if w1 > 0 else float("nan")
        v0 = (p[:t + 1] * (levels[:t + 1] - m0) ** 2).sum() / w0 if w0 > 0 else float("nan")
        v1 = (p[t + 1:] * (levels[t + 1:] - m1) ** 2).sum() / w1 if w1 > 0 else float("nan")
        return w0, w1, m0, m1, max(v0, 1 / 12), max(v1, 1 / 12)

    _, _, mean0, mean1, _, _ = moments(otsu)
    low, high = int(np.ceil(mean0)), int(np.floor(mean1))
    if high - low < 2:
        return otsu
    criteria = {}
    for t in range(low, high + 1):
        w0, w1, _, _, v0, v1 = moments(t)
        if w0 > 0 and w1 > 0:
            criteria[t] = w0 * np.log(v0) + w1 * np.log(v1) - 2 * (w0 * np.log(w0) + w1 * np.log(w1))
    # Thresholds inside a run of empty bins tie exactly; take the first (rounding decides otherwise).
    best = min(criteria.values())
    best_t = min(t for t, value in criteria.items() if value <= best + 1e-9 * abs(best))
    return otsu if best_t in (low, high) else best_t


def region_components(mask: np.ndarray, classes: tuple[int, ...], connectivity: int = 8) -> list[dict]:
    """Connected regions of each listed mask value, found by flood fill one pixel at a time.

    The plain definition ``kernels.region_table`` must meet: a region is a set of pixels of
    one value joined through their 8 (or 4) neighbours. Regions are listed class by class
    in ``classes`` order and, within a class, in ``cv2.connectedComponents``' label order:
    by the first 2x2 block (rows in pairs, then columns in pairs) that holds one of their
    pixels for 8-connectivity, by their first pixel in raster order for 4-connectivity.
    Sums are Python integers (exact); the moments are taken about the bbox's top-left
    pixel. For 8-connectivity each region also gets OpenCV's perimeter (``arcLength`` of
    the Teh-Chin outer contour traced on the region alone) and its convex hull's area and
    length, as the definition of those numbers.
    """
    import cv2  # here, not at the top: the references above are OpenCV-free

    height, width = mask.shape
    if connectivity == 8:
        steps = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
        block = 2
    else:
        steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
        block = 1
    blocks_per_row = (width + block - 1) // block
    seen = np.zeros(mask.shape, dtype=bool)
    table: list[dict] = []
    for class_index, value in enumerate(classes):
        found = []
        for y0 in range(height):
            for x0 in range(width):
                if seen[y0, x0] or mask[y0, x0] != value:
                    continue
                seen[y0, x0] = True
                pixels = [(y0, x0)]
                stack = [(y0, x0)]
                while stack:
                    y, x = stack.pop()
                    for dy, dx in steps:
                        ny, nx = y + dy, x + dx
                        if 0 <= ny < height and 0 <= nx < width and not seen[ny, nx] and mask[ny, nx] == value:
                            seen[ny, nx] = True
                            pixels.append((ny, nx))
                            stack.append((ny, nx))
                found.append(pixels)
        regions = []
        for pixels in found:
            ys = [int(p[0]) for p in pixels]
            xs = [int(p[1]) for p in pixels]
            area = len(pixels)
            left, top = min(xs), min(ys)
            dx = [x - left for x in xs]
            dy = [y - top for y in ys]
            m10, m01 = sum(dx), sum(dy)
            region = {
                "class_index": class_index,
                "class_value": value,
                "area_px": area,
                "bbox_x": left,
                "bbox_y": top,
                "bbox_width_px": max(xs) - left + 1,
                "bbox_height_px": max(ys) - top + 1,
                "moments": (area, m10, m01, sum(d * d for d in dx), sum(d * d for d in dy),
                            sum(a * b for a, b in zip(dx, dy, strict=True))),
                # (sum about the corner + corner * area) / area: one rounding, as the kernel forms it
                "centroid_x": (float(m10) + float(left) * float(area)) / float(area),
                "centroid_y": (float(m01) + float(top) * float(area)) / float(area),
                "order_key": min((y // block) * blocks_per_row + x // block for y, x in pixels),
            }
            if connectivity == 8:
                crop = np.zeros((region["bbox_height_px"], region["bbox_width_px"]), np.uint8)
                crop[dy, dx] = 1
                contours, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_TC89_L1)
                contour = max(contours, key=len)
                hull = cv2.convexHull(contour)
                region["perimeter_px"] = float(cv2.arcLength(contour, True))
                region["hull_area_px"] = float(cv2.contourArea(hull))
                region["hull_perimeter_px"] = float(cv2.arcLength(hull, True))
            regions.append(region)
        table.extend(sorted(regions, key=lambda r: r["order_key"]))
    return table
