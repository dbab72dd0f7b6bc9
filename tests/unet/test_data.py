"""Training data without torch: pairing by stem, mask conventions, the split, augmentation."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from inspectd.analysis.engines import unet_contract as contract
from inspectd.data.labelled import (
    LabelledDataError,
    MaskConvention,
    detect_convention,
    detect_set_convention,
    find_pairs,
    load_pairs,
    split_ids,
    to_class_index,
)
from inspectd.data.synth import write_dataset
from inspectd.errors import ConfigError
from inspectd.training.augment import (
    AugmentSettings,
    TileSampler,
    downscale_mask,
    flip_rotate,
    random_tile,
    rotate,
)
from inspectd.types import MELTED, PORE, UNMELTED

GEOMETRY_ONLY = AugmentSettings(brightness=0.0, contrast=0.0, gamma_range=(1.0, 1.0),
                                blur_probability=0.0, noise_sd=0.0, elastic_probability=1.0,
                                rotation_probability=1.0, scale_range=(0.5, 1.0))


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("synth")
    write_dataset(root / "images", n=6, height=64, width=80, seed=3, vary=True, masks_dir=root / "masks")
    return root / "images", root / "masks"


@pytest.mark.parametrize(
    ("values", "convention"),
    [
        ({0, 1, 2}, MaskConvention.CLASS_INDEX),
        ({0, 2}, MaskConvention.CLASS_INDEX),
        ({0, 1}, MaskConvention.BINARY_0_1),
        ({1}, MaskConvention.BINARY_0_1),
        ({0, 255}, MaskConvention.BINARY_0_255),
        ({255}, MaskConvention.BINARY_0_255),
    ],
)
def test_detect_convention(values: set[int], convention: MaskConvention) -> None:
    assert detect_convention(values) is convention


@pytest.mark.parametrize("values", [{0, 128, 255}, {0, 3}, {1, 255}])
def test_detect_convention_refuses_other_values(values: set[int]) -> None:
    with pytest.raises(ConfigError, match="expected class indices"):
        detect_convention(values)


@pytest.mark.parametrize(
    ("encode", "expected"),
    [
        (lambda m: m, MaskConvention.CLASS_INDEX),
        (lambda m: (m == UNMELTED).astype(np.uint8), MaskConvention.BINARY_0_1),
        (lambda m: np.where(m == UNMELTED, 255, 0).astype(np.uint8), MaskConvention.BINARY_0_255),
    ],
    ids=["class-index", "binary-0-1", "binary-0-255"],
)
def test_load_pairs_detects_the_convention_from_files(synth_set, tmp_path: Path, encode, expected) -> None:
    images_dir, masks_dir = synth_set
    for mask_path in sorted(masks_dir.glob("*.png")):
        mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(tmp_path / mask_path.name), encode(mask))
    images, convention = load_pairs(find_pairs(images_dir, tmp_path))
    assert convention is expected
    for image in images:
        truth = cv2.imread(str(masks_dir / f"{image.sample_id}.png"), cv2.IMREAD_UNCHANGED)
        if expected is MaskConvention.CLASS_INDEX:
            np.testing.assert_array_equal(image.mask, truth)
        else:  # binary labels know unmelted only: everything else is "not unmelted" (melted or pore)
            np.testing.assert_array_equal(image.mask, np.where(truth == UNMELTED, UNMELTED, contract.NOT_UNMELTED))
        assert image.scaled.dtype == np.float32 and 0.0 <= image.scaled.min() <= image.scaled.max() <= 1.0


def test_to_class_index_binary_255() -> None:
    mask = np.array([[0, 255], [255, 0]], np.uint8)
    assert to_class_index(mask, MaskConvention.BINARY_0_255).tolist() == [[0, 1], [1, 0]]


def test_find_pairs_by_stem_and_beside_layout(tmp_path: Path) -> None:
    # inspectd synth without --masks-dir writes <stem>_mask.png beside <stem>.png
    write_dataset(tmp_path, n=3, height=32, width=32, seed=1)
    (tmp_path / "synth_0002_mask.png").unlink()  # an image without a mask is skipped
    pairs = find_pairs(tmp_path, tmp_path)
    assert [(p.sample_id, p.mask_path.name) for p in pairs] == [
        ("synth_0000", "synth_0000_mask.png"), ("synth_0001", "synth_0001_mask.png")]


def test_find_pairs_without_any_mask_is_a_config_error(tmp_path: Path) -> None:
    write_dataset(tmp_path / "images", n=1, height=32, width=32, seed=1, masks_dir=tmp_path / "m")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no image"):
        find_pairs(tmp_path / "images", tmp_path / "empty")


def test_find_pairs_takes_lossless_masks_only_and_refuses_ambiguity(tmp_path: Path) -> None:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    grey = np.full((8, 8), 100, np.uint8)
    for name in ("a.png", "b.png", "c_mask.png", "D.png"):
        cv2.imwrite(str(images / name), grey)
    cv2.imwrite(str(masks / "a.jpg"), np.zeros((8, 8), np.uint8))  # a JPEG blurs class values: not a mask
    cv2.imwrite(str(masks / "b.png"), np.zeros((8, 8), np.uint8))
    cv2.imwrite(str(masks / "c_mask_mask.png"), np.zeros((8, 8), np.uint8))  # `*_mask` is never an image
    cv2.imwrite(str(masks / "d.PNG"), np.zeros((8, 8), np.uint8))  # names compared without case
    assert [(p.sample_id, p.mask_path.name) for p in find_pairs(images, masks)] == [("D", "d.PNG"), ("b", "b.png")]
    cv2.imwrite(str(masks / "b.tif"), np.zeros((8, 8), np.uint8))
    with pytest.raises(LabelledDataError, match="image b.png has 2 masks"):
        find_pairs(images, masks)
    cv2.imwrite(str(images / "b.tif"), grey)
    with pytest.raises(LabelledDataError, match="two images with the stem 'b'"):
        find_pairs(images, masks)
    with pytest.raises(LabelledDataError, match="--masks .* is not a folder"):
        find_pairs(images, tmp_path / "missing")


def test_one_detector_serves_training_and_evaluation(tmp_path: Path) -> None:
    write_dataset(tmp_path, n=2, height=32, width=32, seed=3)
    pairs = find_pairs(tmp_path, tmp_path)
    cv2.imwrite(str(pairs[1].mask_path), np.array([[0, 1], [2, 0]], np.uint8))
    assert detect_set_convention(pairs) is MaskConvention.CLASS_INDEX
    cv2.imwrite(str(pairs[0].mask_path), np.array([[0, 255], [255, 0]], np.uint8))
    assert detect_set_convention(pairs) is MaskConvention.MIXED
    cv2.imwrite(str(pairs[1].mask_path), np.array([[0, 1], [0, 1]], np.uint8))
    with pytest.raises(LabelledDataError, match="mix binary"):
        detect_set_convention(pairs)


def test_split_is_by_source_image_before_augmentation(synth_set) -> None:
    images_dir, masks_dir = synth_set
    images, _ = load_pairs(find_pairs(images_dir, masks_dir))
    ids = [image.sample_id for image in images]
    train_ids, val_ids = split_ids(ids, 0.34, seed=5)
    assert set(train_ids).isdisjoint(val_ids)
    assert sorted(train_ids + val_ids) == sorted(ids) and len(val_ids) == 2
    assert split_ids(ids, 0.34, seed=5) == (train_ids, val_ids)  # seeded
    # Every augmented tile of an epoch comes from a training image, never a validation one.
    sampler = TileSampler([i for i in images if i.sample_id in train_ids], 32, AugmentSettings(), seed=0)
    drawn = {sample_id for epoch in range(3) for _, _, sample_id in sampler.epoch(epoch, 40)}
    assert drawn <= set(train_ids) and drawn.isdisjoint(val_ids)
    assert len(drawn) >= 2


def test_split_needs_two_images_and_a_sane_fraction() -> None:
    with pytest.raises(ConfigError):
        split_ids(["only"], 0.2, seed=0)
    with pytest.raises(ConfigError):
        split_ids(["a", "b"], 0.0, seed=0)


def test_sampler_is_reproducible(synth_set) -> None:
    images, _ = load_pairs(find_pairs(*synth_set))
    first = list(TileSampler(images, 32, AugmentSettings(), seed=4).epoch(2, 5))
    again = list(TileSampler(images, 32, AugmentSettings(), seed=4).epoch(2, 5))
    for (a, am, ai), (b, bm, bi) in zip(first, again, strict=True):
        assert ai == bi
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(am, bm)


def test_flip_rotate_moves_a_marked_pixel_identically() -> None:
    for seed in range(16):
        image = np.zeros((12, 12), np.float32)
        mask = np.zeros((12, 12), np.uint8)
        image[2, 7] = 1.0
        mask[2, 7] = PORE
        turned, turned_mask = flip_rotate(image, mask, np.random.default_rng(seed), AugmentSettings())
        assert np.argwhere(turned == 1.0).tolist() == np.argwhere(turned_mask == PORE).tolist()


def test_rotate_moves_a_marked_pixel_identically() -> None:
    image = np.zeros((21, 21), np.float32)
    mask = np.zeros((21, 21), np.uint8)
    image[10, 15] = 1.0
    mask[10, 15] = UNMELTED
    turned, turned_mask = rotate(image, mask, 90.0, 21)
    assert np.unravel_index(np.argmax(turned), turned.shape) == (5, 10)
    assert np.argwhere(turned_mask == UNMELTED).tolist() == [[5, 10]]


def test_augmented_tiles_keep_image_and_mask_aligned() -> None:
    # Image = its own mask (blobs of three grey levels): after crop, downscale, rotation and
    # elastic warp, thresholding the image must give back the mask except on blob edges.
    rng = np.random.default_rng(0)
    mask = np.zeros((300, 360), np.uint8)
    for _ in range(40):
        centre = (int(rng.integers(0, 360)), int(rng.integers(0, 300)))
        cv2.circle(mask, centre, int(rng.integers(6, 20)), int(rng.integers(1, 3)), -1)
    image = mask.astype(np.float32) / 2.0  # 0, 0.5, 1.0
    for seed in range(8):
        tile, tile_mask = random_tile(image, mask, 96, np.random.default_rng(seed), GEOMETRY_ONLY)
        assert tile.shape == tile_mask.shape == (96, 96)
        recovered = np.rint(tile * 2.0).astype(np.uint8)
        edges = cv2.morphologyEx(tile_mask, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
        agreement = np.mean(recovered[~edges] == tile_mask[~edges])
        assert agreement > 0.99, (seed, agreement)


def test_photometric_changes_the_image_not_the_mask() -> None:
    rng = np.random.default_rng(1)
    image = rng.random((64, 64), dtype=np.float32)
    mask = (image > 0.5).astype(np.uint8)
    plain = random_tile(image, mask, 64, np.random.default_rng(7), AugmentSettings.none())
    noisy = random_tile(image, mask, 64, np.random.default_rng(7),
                        AugmentSettings(flips=False, rotations=False, scale_range=(1.0, 1.0),
                                        rotation_probability=0.0, elastic_probability=0.0))
    np.testing.assert_array_equal(plain[1], noisy[1])
    assert not np.allclose(plain[0], noisy[0])
    assert 0.0 <= noisy[0].min() and noisy[0].max() <= 1.0


def test_downscale_mask_takes_the_majority_class() -> None:
    mask = np.zeros((8, 8), np.uint8)
    mask[:, 4:] = UNMELTED
    mask[0:3, 0:3] = PORE  # 9 of the top-left 16 px
    assert downscale_mask(mask, 2, 2).tolist() == [[PORE, UNMELTED], [MELTED, UNMELTED]]


@pytest.mark.parametrize("command", ["train", "export"])
def test_commands_without_torch_say_how_to_install_it(command: str, monkeypatch, capsys) -> None:
    import builtins

    from inspectd import cli

    real_import = builtins.__import__

    def import_without_torch(name, *args, **kwargs):  # as on a machine without the [train] extra
        if name == "torch" or name.startswith("torch."):
            msg = f"No module named {name!r}"
            raise ImportError(msg)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", import_without_torch)
    argv = {"train": ["train", "--images", "i", "--masks", "m", "--out", "o"],
            "export": ["export", "--checkpoint", "c.pt", "--out", "m.onnx"]}[command]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "needs torch" in err and "pip install torch==2.13.0" in err


def test_class_index_and_binary_255_masks_train_together(synth_set, tmp_path: Path) -> None:
    """Synthetic class-index masks beside a user's binary labels: each mask read by its own values."""
    images_dir, masks_dir = synth_set
    paths = sorted(masks_dir.glob("*.png"))
    for index, mask_path in enumerate(paths):
        mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(tmp_path / mask_path.name), np.where(mask == UNMELTED, 255, 0).astype(np.uint8) if index == 0
                    else mask)
    images, convention = load_pairs(find_pairs(images_dir, tmp_path))
    assert convention is MaskConvention.MIXED
    labels = {image.sample_id: set(np.unique(image.mask).tolist()) for image in images}
    assert labels[paths[0].stem] <= {UNMELTED, contract.NOT_UNMELTED}
    assert all(values <= {MELTED, UNMELTED, PORE} for stem, values in labels.items() if stem != paths[0].stem)


def test_binary_255_beside_other_values_is_refused(synth_set, tmp_path: Path) -> None:
    images_dir, masks_dir = synth_set
    for mask_path in sorted(masks_dir.glob("*.png")):
        mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
        mask[0, 0], mask[0, 1] = 255, 7
        cv2.imwrite(str(tmp_path / mask_path.name), mask)
    with pytest.raises(ConfigError, match="holds 255 beside"):
        load_pairs(find_pairs(images_dir, tmp_path))
