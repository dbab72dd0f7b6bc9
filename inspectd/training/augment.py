"""Training-tile augmentation, numpy + OpenCV, driven by one seeded `numpy.random.Generator`.

Why these: a micrograph has no "up", so flips and 90-degree turns are free data; polished
sections and splats are never rigid, so a smooth elastic (grid) distortion; the daemon may
run the net at a reduced working scale (`segment.unet.scale`), so tiles are also drawn
downscaled (INTER_AREA, as the engine resizes); lamellae run at any angle, so tiles are
also turned by arbitrary angles; cameras, illumination and CLAHE leave
brightness, contrast, blur and noise uncertain, so those vary too.

Order: geometry on (image, mask) together — the same crop, the same resize, the same
rotation, the same remap map, the same flip/turn — then photometry on the image alone. The image is the ENHANCED
frame scaled to 0..1 (grey / max_level, as `inspectd.analysis.engines.unet_contract.normalise` does before
centring), so the photometric ranges mean the same for 8- and 16-bit data. Masks never
interpolate: downscaling takes the class with the largest area share of each output pixel,
remapping takes the nearest source pixel.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> image = rng.random((300, 400), dtype=np.float32)
    >>> mask = (image > 0.5).astype(np.uint8)
    >>> tile, tile_mask = random_tile(image, mask, 128, rng, AugmentSettings())
    >>> tile.shape, tile_mask.shape, tile.dtype.name, tile_mask.dtype.name
    ((128, 128), (128, 128), 'float32', 'uint8')
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from inspectd.analysis.engines.unet_contract import N_LABELS
from inspectd.data.labelled import LabelledImage
from inspectd.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AugmentSettings:
    """How strong each augmentation is; `AugmentSettings.none()` turns all off.

    - `scale_range`: tiles are drawn at a scale in this range (log-uniform); 1.0 = as is.
    - `rotation_probability`: turn by a uniform angle in [0, 90) degrees (with the 90-degree
      turns, any angle), after the scale step so the resize stays INTER_AREA.
    - `elastic_probability`, `elastic_displacement_px`, `elastic_grid_px`: a smooth random
      displacement field with control points every `elastic_grid_px`, each moved by up to
      about `elastic_displacement_px` (sd), interpolated bicubically.
    - `brightness`: +- offset, `contrast`: factor in 1 +- this, `gamma_range`, all on 0..1 data.
    - `blur_probability`, `blur_sigma_px` (max); `noise_sd` (max Gaussian sd, 0..1 units).
    """

    flips: bool = True
    rotations: bool = True
    scale_range: tuple[float, float] = (0.5, 1.0)
    rotation_probability: float = 0.5
    elastic_probability: float = 0.5
    elastic_displacement_px: float = 3.0
    elastic_grid_px: int = 48
    brightness: float = 0.08
    contrast: float = 0.2
    gamma_range: tuple[float, float] = (0.8, 1.25)
    blur_probability: float = 0.2
    blur_sigma_px: float = 1.0
    noise_sd: float = 0.03

    def __post_init__(self) -> None:
        low, high = self.scale_range
        if not 0.05 <= low <= high <= 1.0:
            msg = f"scale_range must satisfy 0.05 <= low <= high <= 1, got {self.scale_range}"
            raise ValueError(msg)

    @classmethod
    def none(cls) -> AugmentSettings:
        """No augmentation at all: a plain random crop (used for tests and ablations)."""
        return cls(flips=False, rotations=False, scale_range=(1.0, 1.0), rotation_probability=0.0,
                   elastic_probability=0.0,
                   brightness=0.0, contrast=0.0, gamma_range=(1.0, 1.0), blur_probability=0.0,
                   noise_sd=0.0)


def random_tile(
    image: np.ndarray,
    mask: np.ndarray,
    tile_px: int,
    rng: np.random.Generator,
    settings: AugmentSettings,
) -> tuple[np.ndarray, np.ndarray]:
    """One augmented `tile_px` square (float32 image 0..1, uint8 class mask) from a frame.

    `image` is float32 0..1 (the enhanced frame / max level), `mask` uint8 class indices,
    both H x W. Frames smaller than the crop are reflect-padded first.
    """
    if settings.rotation_probability > 0 and rng.random() < settings.rotation_probability:
        # Crop a square that still covers the tile after turning, turn it, keep the middle.
        crop_px = int(math.ceil(tile_px * math.sqrt(2.0))) + 2
        crop_image, crop_mask = random_crop(image, mask, crop_px, rng, settings.scale_range)
        crop_image, crop_mask = rotate(crop_image, crop_mask, rng.uniform(0.0, 90.0), tile_px)
    else:
        crop_image, crop_mask = random_crop(image, mask, tile_px, rng, settings.scale_range)
    crop_image, crop_mask = elastic(crop_image, crop_mask, rng, settings)
    crop_image, crop_mask = flip_rotate(crop_image, crop_mask, rng, settings)
    return photometric(crop_image, rng, settings), crop_mask


def random_crop(
    image: np.ndarray,
    mask: np.ndarray,
    tile_px: int,
    rng: np.random.Generator,
    scale_range: tuple[float, float] = (1.0, 1.0),
) -> tuple[np.ndarray, np.ndarray]:
    """A random square of `tile_px / scale` source pixels, resized to `tile_px` (scale <= 1).

    >>> img = np.zeros((40, 40), np.float32); m = np.zeros((40, 40), np.uint8)
    >>> [a.shape for a in random_crop(img, m, 32, np.random.default_rng(1), (0.5, 1.0))]
    [(32, 32), (32, 32)]
    """
    low, high = scale_range
    scale = math.exp(rng.uniform(math.log(low), math.log(high))) if low < high else low
    # Never ask for more source than the frame has (a small frame caps the downscale).
    scale = max(scale, tile_px / max(min(image.shape), tile_px))
    source_px = min(int(round(tile_px / scale)), max(min(image.shape), tile_px))
    image, mask = _pad_to(image, mask, source_px)
    top = int(rng.integers(0, image.shape[0] - source_px + 1))
    left = int(rng.integers(0, image.shape[1] - source_px + 1))
    crop_image = image[top:top + source_px, left:left + source_px]
    crop_mask = mask[top:top + source_px, left:left + source_px]
    if source_px == tile_px:
        return np.ascontiguousarray(crop_image), np.ascontiguousarray(crop_mask)
    return (cv2.resize(crop_image, (tile_px, tile_px), interpolation=cv2.INTER_AREA),
            downscale_mask(crop_mask, tile_px, tile_px))


def rotate(
    image: np.ndarray, mask: np.ndarray, angle_deg: float, out_px: int
) -> tuple[np.ndarray, np.ndarray]:
    """Turn both about their centre by `angle_deg` and keep the central `out_px` square.

    >>> m = np.zeros((9, 9), np.uint8); m[4, 6] = 1
    >>> _, turned = rotate(m.astype(np.float32), m, 90.0, 9)
    >>> [int(v) for v in np.argwhere(turned == 1)[0]]
    [2, 4]
    """
    height, width = image.shape
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2.0, (height - 1) / 2.0), angle_deg, 1.0)
    # Shift so that the output's centre is the source's centre.
    matrix[:, 2] += [(out_px - width) / 2.0, (out_px - height) / 2.0]
    size = (out_px, out_px)
    turned = cv2.warpAffine(image, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    turned_mask = cv2.warpAffine(mask, matrix, size, flags=cv2.INTER_NEAREST,
                                 borderMode=cv2.BORDER_REFLECT_101)
    return turned, turned_mask


def downscale_mask(mask: np.ndarray, height_px: int, width_px: int) -> np.ndarray:
    """Resize a class mask down: each output pixel takes the class covering most of its area.

    >>> m = np.zeros((4, 4), np.uint8); m[:, 1:] = 2
    >>> downscale_mask(m, 2, 2).tolist()
    [[0, 2], [0, 2]]
    """
    shares = [
        cv2.resize((mask == c).astype(np.float32), (width_px, height_px), interpolation=cv2.INTER_AREA)
        for c in range(N_LABELS)
    ]
    return np.argmax(np.stack(shares), axis=0).astype(np.uint8)


def elastic(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, settings: AugmentSettings
) -> tuple[np.ndarray, np.ndarray]:
    """With `elastic_probability`, warp both by one smooth random displacement field."""
    if settings.elastic_probability <= 0 or rng.random() >= settings.elastic_probability:
        return image, mask
    height, width = image.shape
    map_x, map_y = displacement_maps(height, width, rng, settings.elastic_displacement_px,
                                     settings.elastic_grid_px)
    warped = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    warped_mask = cv2.remap(mask, map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT_101)
    return warped, warped_mask


def displacement_maps(
    height: int, width: int, rng: np.random.Generator, displacement_px: float, grid_px: int
) -> tuple[np.ndarray, np.ndarray]:
    """cv2.remap maps (float32): identity plus a bicubically interpolated random grid offset."""
    grid_h = max(2, int(math.ceil(height / grid_px)) + 1)
    grid_w = max(2, int(math.ceil(width / grid_px)) + 1)
    offsets = rng.normal(0.0, displacement_px, size=(2, grid_h, grid_w)).astype(np.float32)
    dx = cv2.resize(offsets[0], (width, height), interpolation=cv2.INTER_CUBIC)
    dy = cv2.resize(offsets[1], (width, height), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    return xx + dx, yy + dy


def flip_rotate(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, settings: AugmentSettings
) -> tuple[np.ndarray, np.ndarray]:
    """A random one of the 8 square symmetries (as allowed), applied to both arrays.

    >>> a = np.arange(4).reshape(2, 2)
    >>> s = AugmentSettings(scale_range=(1.0, 1.0))
    >>> x, y = flip_rotate(a, a.copy(), np.random.default_rng(3), s)
    >>> bool((x == y).all())
    True
    """
    turns = int(rng.integers(0, 4)) if settings.rotations else 0
    flip = bool(rng.integers(0, 2)) if settings.flips else False
    if turns:
        image, mask = np.rot90(image, turns), np.rot90(mask, turns)
    if flip:
        image, mask = image[:, ::-1], mask[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def photometric(image: np.ndarray, rng: np.random.Generator, settings: AugmentSettings) -> np.ndarray:
    """Brightness, contrast, gamma, blur, noise on a 0..1 float32 image; clipped to 0..1."""
    out = image.astype(np.float32, copy=True)
    if settings.contrast > 0 or settings.brightness > 0:
        contrast = 1.0 + rng.uniform(-settings.contrast, settings.contrast)
        offset = rng.uniform(-settings.brightness, settings.brightness)
        out = (out - 0.5) * np.float32(contrast) + np.float32(0.5 + offset)
        np.clip(out, 0.0, 1.0, out=out)
    low, high = settings.gamma_range
    if high > low:
        gamma = math.exp(rng.uniform(math.log(low), math.log(high)))
        out = cv2.pow(out, gamma)
    if settings.blur_probability > 0 and rng.random() < settings.blur_probability:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.3, settings.blur_sigma_px))
    if settings.noise_sd > 0:
        noise_sd = rng.uniform(0.0, settings.noise_sd)
        out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(noise_sd)
    return np.clip(out, 0.0, 1.0, out=out)


def _pad_to(image: np.ndarray, mask: np.ndarray, size_px: int) -> tuple[np.ndarray, np.ndarray]:
    pad_h = max(0, size_px - image.shape[0])
    pad_w = max(0, size_px - image.shape[1])
    if not pad_h and not pad_w:
        return image, mask
    # Reflect (not replicate): a flat border band would be a texture the frames never have.
    widths = ((0, pad_h), (0, pad_w))
    return np.pad(image, widths, mode="reflect"), np.pad(mask, widths, mode="reflect")


class TileSampler:
    """Augmented training tiles drawn from a fixed list of images, reproducibly per epoch.

    Each epoch draws `tiles_per_epoch` tiles; image i is picked with probability
    proportional to its area (times its `weights` entry, if given), so big frames give more tiles. The generator for epoch e is
    seeded with (seed, e), so an epoch's tiles do not depend on how earlier ones were used.

    >>> img = LabelledImage("a", np.zeros((64, 64), np.float32), np.zeros((64, 64), np.uint8))
    >>> sampler = TileSampler([img], tile_px=32, settings=AugmentSettings.none(), seed=0)
    >>> [(t.shape, m.shape, i) for t, m, i in sampler.epoch(0, 2)]
    [((32, 32), (32, 32), 'a'), ((32, 32), (32, 32), 'a')]
    """

    def __init__(self, images: list[LabelledImage], tile_px: int, settings: AugmentSettings,
                 seed: int, weights: list[float] | None = None) -> None:
        if not images:
            msg = "no training images to draw tiles from"
            raise ConfigError(msg)
        self.images = images
        self.tile_px = tile_px
        self.settings = settings
        self.seed = seed
        areas = np.array([im.mask.size for im in images], np.float64)
        if weights is not None:  # oversampling: e.g. a few real fields among many synthetic ones
            areas *= np.asarray(weights, np.float64)
        self._weights = areas / areas.sum()

    @property
    def sample_ids(self) -> list[str]:
        return [image.sample_id for image in self.images]

    def epoch(self, epoch: int, tiles_per_epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray, str]]:
        """Yield (image tile float32 0..1, mask tile uint8, source sample id)."""
        rng = np.random.default_rng([self.seed, epoch, 0x711E])
        for _ in range(tiles_per_epoch):
            image = self.images[int(rng.choice(len(self.images), p=self._weights))]
            tile, tile_mask = random_tile(image.scaled, image.mask, self.tile_px, rng, self.settings)
            yield tile, tile_mask, image.sample_id
