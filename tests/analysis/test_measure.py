"""measure(): known answers on drawn masks (discs, squares, ellipses, specks, known porosity)."""

from __future__ import annotations

import dataclasses
import json
import math

import cv2
import numpy as np
import pytest

from inspectd.analysis.measure import measure, shannon_entropy_bits
from inspectd.config import RULE_METRICS
from inspectd.types import MELTED, PORE, UNMELTED, Region


def _disc_mask(shape, centres, radius, value):
    mask = np.zeros(shape, np.uint8)
    for x, y in centres:
        cv2.circle(mask, (x, y), radius, int(value), -1)
    return mask


def _grey(shape, value=128):
    return np.full(shape, value, np.uint8)


def test_every_rule_metric_is_produced_and_json_safe():
    rng = np.random.default_rng(3)
    mask = rng.integers(0, 3, (64, 80), dtype=np.uint8)
    result = measure(mask, rng.integers(0, 256, (64, 80), dtype=np.uint8), um_per_px=0.5, min_region_area_px=5)
    missing = set(RULE_METRICS) - set(result.metrics)
    assert not missing
    assert all(isinstance(v, float) and math.isfinite(v) for v in result.metrics.values())
    json.dumps(result.metrics, allow_nan=False)


@pytest.mark.parametrize("radius", [6, 12, 25])
def test_discs_area_diameter_circularity_solidity_count(radius):
    centres = [(60, 60), (180, 60), (60, 180), (180, 180)]
    mask = _disc_mask((240, 240), centres, radius, UNMELTED)
    result = measure(mask, _grey(mask.shape), um_per_px=1.0, min_region_area_px=10)

    assert result.metrics["unmelted_count"] == 4.0
    assert result.metrics["pore_count"] == 0.0
    assert len(result.regions) == 4
    drawn_area = int(np.count_nonzero(mask)) / 4
    for region in result.regions:
        assert region.class_name == "unmelted"
        assert region.area_px == drawn_area
        assert abs(region.area_px - math.pi * radius**2) / (math.pi * radius**2) < 0.06
        assert region.equivalent_diameter_px == pytest.approx(2 * radius, abs=1.0)
        assert region.circularity > 0.95
        assert region.solidity > 0.9
        assert region.aspect_ratio == pytest.approx(1.0, abs=0.05)
        assert region.bbox_width_px == region.bbox_height_px == 2 * radius + 1
    centroids = sorted((round(r.centroid_x), round(r.centroid_y)) for r in result.regions)
    assert centroids == sorted(centres)
    assert result.metrics["unmelted_mean_eq_diameter_um"] == pytest.approx(2 * radius, abs=1.0)
    assert result.metrics["unmelted_max_eq_diameter_um"] >= result.metrics["unmelted_mean_eq_diameter_um"]
    assert result.metrics["unmelted_mean_circularity"] > 0.95


def test_micrometre_scaling():
    mask = _disc_mask((120, 120), [(60, 60)], 20, PORE)
    at_1 = measure(mask, _grey(mask.shape), um_per_px=1.0, min_region_area_px=1)
    at_half = measure(mask, _grey(mask.shape), um_per_px=0.5, min_region_area_px=1)
    r1, rh = at_1.regions[0], at_half.regions[0]
    assert rh.area_px == r1.area_px
    assert rh.area_um2 == pytest.approx(r1.area_px * 0.25)
    assert rh.equivalent_diameter_um == pytest.approx(r1.equivalent_diameter_px * 0.5)
    assert rh.perimeter_um == pytest.approx(r1.perimeter_px * 0.5)
    assert at_half.metrics["pore_area_um2"] == pytest.approx(np.count_nonzero(mask) * 0.25)
    assert at_half.metrics["image_area_um2"] == pytest.approx(120 * 120 * 0.25)
    assert at_half.metrics["pore_max_eq_diameter_um"] == pytest.approx(at_1.metrics["pore_max_eq_diameter_um"] / 2)
    # fractions do not depend on the scale
    assert at_half.metrics["porosity_pct"] == at_1.metrics["porosity_pct"]


def test_known_porosity_and_fractions_sum_to_100():
    mask = np.zeros((200, 250), np.uint8)
    mask[10:30, 10:60] = PORE  # 1000 px
    mask[100:150, 100:200] = UNMELTED  # 5000 px
    result = measure(mask, _grey(mask.shape), um_per_px=1.0, min_region_area_px=30)
    total = 200 * 250
    assert result.metrics["porosity_pct"] == pytest.approx(100 * 1000 / total)
    assert result.metrics["unmelted_fraction_pct"] == pytest.approx(100 * 5000 / total)
    assert result.metrics["melted_fraction_pct"] == pytest.approx(100 * 44000 / total)
    fractions = ("melted_fraction_pct", "unmelted_fraction_pct", "porosity_pct")
    assert sum(result.metrics[k] for k in fractions) == pytest.approx(100.0)


def test_rectangles_and_ellipse_aspect_ratio():
    mask = np.zeros((200, 300), np.uint8)
    mask[20:40, 20:100] = UNMELTED  # 80 x 20
    mask[100:160, 30:60] = UNMELTED  # 30 x 60
    cv2.ellipse(mask, (200, 120), (50, 12), 35, 0, 360, PORE, -1)  # tilted, axes 101 x 25
    result = measure(mask, _grey(mask.shape), um_per_px=1.0, min_region_area_px=30)
    by_area = {r.area_px: r for r in result.regions}
    assert by_area[1600].aspect_ratio == pytest.approx(4.0, rel=0.01)
    assert by_area[1800].aspect_ratio == pytest.approx(2.0, rel=0.01)
    assert by_area[1800].solidity == pytest.approx(1.0)
    ellipse = next(r for r in result.regions if r.class_name == "pore")
    # the ratio of the drawn axes, not of the tilted bounding box
    assert ellipse.aspect_ratio == pytest.approx(101 / 25, rel=0.05)
    bbox_ratio = max(ellipse.bbox_width_px, ellipse.bbox_height_px) / min(ellipse.bbox_width_px, ellipse.bbox_height_px)
    assert bbox_ratio < 2.0
    assert ellipse.circularity < 0.7


def test_concave_region_has_low_solidity():
    mask = np.zeros((120, 120), np.uint8)
    mask[10:110, 10:110] = UNMELTED
    mask[30:90, 30:110] = MELTED  # a "C"
    region = measure(mask, _grey(mask.shape), um_per_px=1.0, min_region_area_px=1).regions[0]
    assert 0.45 < region.solidity < 0.6


def test_small_specks_are_ignored_in_counts_but_not_in_fractions():
    mask = np.zeros((100, 100), np.uint8)
    for i in range(5):  # five 7-pixel specks, as the seed's region table counted
        mask[10 + 15 * i, 10:17] = PORE
    cv2.circle(mask, (70, 70), 8, PORE, -1)
    result = measure(mask, _grey(mask.shape), um_per_px=1.0, min_region_area_px=30)
    assert result.metrics["pore_count"] == 1.0
    assert result.metrics["pore_small_regions_ignored"] == 5.0
    assert [r.area_px for r in result.regions] == [int(np.count_nonzero(mask)) - 35]
    assert result.metrics["porosity_pct"] == pytest.approx(100 * np.count_nonzero(mask) / mask.size)
    # with a lower limit the specks count
    assert measure(mask, _grey(mask.shape), um_per_px=1.0, min_region_area_px=7).metrics["pore_count"] == 6.0


def test_touching_diagonally_is_one_region_8_connectivity():
    mask = np.zeros((20, 20), np.uint8)
    mask[2:8, 2:8] = UNMELTED
    mask[8:14, 8:14] = UNMELTED  # touches only at a corner
    assert measure(mask, _grey(mask.shape), um_per_px=1.0, min_region_area_px=1).metrics["unmelted_count"] == 1.0


def test_region_labels_run_unmelted_then_pores():
    mask = np.zeros((60, 60), np.uint8)
    mask[5:15, 5:15] = PORE
    mask[30:40, 30:40] = UNMELTED
    mask[45:55, 5:15] = UNMELTED
    regions = measure(mask, _grey(mask.shape), um_per_px=1.0, min_region_area_px=1).regions
    assert [(r.label, r.class_name) for r in regions] == [(1, "unmelted"), (2, "unmelted"), (3, "pore")]


def test_absent_classes_give_zeros_not_nan():
    mask = np.zeros((50, 50), np.uint8)
    result = measure(mask, _grey(mask.shape), um_per_px=1.0, min_region_area_px=30)
    for name in ("unmelted", "pore"):
        assert result.metrics[f"{name}_count"] == 0.0
        assert result.metrics[f"{name}_mean_eq_diameter_um"] == 0.0
        assert result.metrics[f"{name}_max_eq_diameter_um"] == 0.0
        assert result.metrics[f"{name}_mean_circularity"] == 0.0
        assert result.metrics[f"{name}_entropy_bits"] == 0.0
        assert result.metrics[f"{name}_variance"] == 0.0
    assert result.metrics["melted_fraction_pct"] == 100.0
    assert result.regions == ()


def test_entropy_constant_is_zero_uniform_256_levels_is_eight_bits():
    mask = np.zeros((64, 64), np.uint8)
    constant = measure(mask, _grey(mask.shape, 77), um_per_px=1.0, min_region_area_px=1).metrics
    assert constant["entropy_bits"] == 0.0
    assert constant["variance"] == 0.0
    ramp = np.arange(64 * 64, dtype=np.int64).reshape(64, 64) % 256  # every level 16 times
    uniform = measure(mask, ramp.astype(np.uint8), um_per_px=1.0, min_region_area_px=1).metrics
    assert uniform["entropy_bits"] == pytest.approx(8.0)
    assert uniform["melted_entropy_bits"] == pytest.approx(8.0)
    assert shannon_entropy_bits(np.array([1, 1, 0, 0])) == pytest.approx(1.0)


def test_texture_per_class_and_variance_is_normalised():
    mask = np.zeros((40, 40), np.uint8)
    mask[:, 20:] = UNMELTED
    image = np.zeros((40, 40), np.uint8)
    image[:, :20] = 100  # melted: constant
    image[:, 20:] = np.where(np.arange(40)[:, None] % 2 == 0, 0, 255)  # unmelted: two levels
    metrics = measure(mask, image, um_per_px=1.0, min_region_area_px=1).metrics
    assert metrics["melted_entropy_bits"] == 0.0
    assert metrics["melted_variance"] == pytest.approx(0.0, abs=1e-15)
    assert metrics["unmelted_entropy_bits"] == pytest.approx(1.0)
    assert metrics["unmelted_variance"] == pytest.approx(0.25)  # values 0 and 1, half each
    assert metrics["pore_entropy_bits"] == 0.0


def test_uint16_texture_matches_uint8_scaled_by_257():
    rng = np.random.default_rng(5)
    image8 = rng.integers(0, 256, (50, 60), dtype=np.uint8)
    mask = rng.integers(0, 3, (50, 60), dtype=np.uint8)
    m8 = measure(mask, image8, um_per_px=1.0, min_region_area_px=1).metrics
    m16 = measure(mask, image8.astype(np.uint16) * 257, um_per_px=1.0, min_region_area_px=1).metrics
    for key in ("entropy_bits", "variance", "melted_entropy_bits", "unmelted_variance", "pore_variance"):
        assert m16[key] == pytest.approx(m8[key], rel=1e-9, abs=1e-12)
    assert m16 == pytest.approx(m8)


def test_many_regions_are_measured_together():
    rng = np.random.default_rng(11)
    mask = np.zeros((600, 800), np.uint8)
    xs, ys = np.meshgrid(np.arange(12, 800, 25), np.arange(12, 600, 25))
    for x, y in zip(xs.ravel(), ys.ravel(), strict=True):
        cv2.circle(mask, (int(x), int(y)), int(rng.integers(4, 9)), int(rng.integers(1, 3)), -1)
    result = measure(mask, _grey(mask.shape), um_per_px=1.0, min_region_area_px=30)
    assert len(result.regions) == xs.size
    assert result.metrics["unmelted_count"] + result.metrics["pore_count"] == xs.size


@pytest.mark.parametrize(
    ("mask", "image", "kwargs"),
    [
        (np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8), {}),
        (np.zeros((4, 4), np.int32), np.zeros((4, 4), np.uint8), {}),
        (np.full((4, 4), 3, np.uint8), np.zeros((4, 4), np.uint8), {}),
        (np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.float32), {}),
        (np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8), {"um_per_px": 0.0}),
        (np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8), {"min_region_area_px": 0}),
    ],
)
def test_bad_inputs_raise_value_error(mask, image, kwargs):
    args = {"um_per_px": 1.0, "min_region_area_px": 1, **kwargs}
    with pytest.raises(ValueError):
        measure(mask, image, **args)


# ------------------------------------------------- the whole-frame region table vs one region at a time


def _random_masks():
    """Masks that stress region bookkeeping: specks, blobs on the border, rings with islands."""
    rng = np.random.default_rng(21)
    for shape in ((1, 40), (40, 1), (3, 3), (57, 83), (120, 90)):
        yield rng.integers(0, 3, shape, dtype=np.uint8)  # mostly specks, many on the border
        yield cv2.medianBlur(rng.integers(0, 3, shape, dtype=np.uint8), 3) if min(shape) > 1 else \
            np.zeros(shape, np.uint8)
        blobs = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 3)
        yield np.digitize(blobs, np.quantile(blobs, [0.5, 0.8])).astype(np.uint8)
    nested = np.zeros((90, 90), np.uint8)
    for cls in (UNMELTED, PORE):  # a ring, an island of the same class in its hole, a speck in that
        offset = 0 if cls == UNMELTED else 45
        cv2.circle(nested, (22 + offset, 22 + offset), 20, int(cls), 3)
        cv2.circle(nested, (22 + offset, 22 + offset), 9, int(cls), -1)
        cv2.circle(nested, (22 + offset, 22 + offset), 4, MELTED, -1)
        nested[22 + offset, 22 + offset] = cls
    yield nested
    yield nested.T.copy()


def test_region_table_equals_the_one_region_at_a_time_reference():
    from tests import naive

    for mask in _random_masks():
        for min_area in (1, 4, 30):
            got = measure(mask, _grey(mask.shape), um_per_px=0.7, min_region_area_px=min_area).regions
            want = naive.regions(mask, um_per_px=0.7, min_region_area_px=min_area)
            assert len(got) == len(want)
            for region, expected in zip(got, want, strict=True):
                for field, value in expected.items():
                    actual = getattr(region, field)
                    assert type(actual) is type(value), field
                    if isinstance(value, float):
                        assert actual == pytest.approx(value, rel=1e-9, abs=1e-12), (field, region, expected)
                    else:
                        assert actual == value, (field, region, expected)


def test_region_inside_a_hole_of_its_own_class_is_measured_like_a_lone_one():
    ring = np.zeros((80, 80), np.uint8)
    cv2.circle(ring, (40, 40), 30, PORE, 4)
    island = np.zeros_like(ring)
    cv2.circle(island, (40, 40), 10, PORE, -1)
    together = measure(np.maximum(ring, island), _grey(ring.shape), um_per_px=1.0, min_region_area_px=1)
    alone = measure(island, _grey(ring.shape), um_per_px=1.0, min_region_area_px=1).regions[0]
    assert together.metrics["pore_count"] == 2.0
    inner = next(r for r in together.regions if r.area_px == alone.area_px)
    assert (inner.perimeter_px, inner.solidity, inner.bbox_x) == (alone.perimeter_px, alone.solidity, alone.bbox_x)


def test_every_label_gets_the_contour_its_bbox_crop_would_give():
    import inspectd.analysis.measure as measure_module

    for mask in _random_masks():
        class_mask = (mask == UNMELTED).view(np.uint8)
        n_labels, labels = cv2.connectedComponents(class_mask, connectivity=8, ltype=cv2.CV_32S)
        if n_labels == 1:
            continue
        components = measure_module._component_stats(labels, n_labels, *measure_module._row_runs(class_mask))
        wanted = np.arange(1, n_labels)
        traced = measure_module._outer_contours(class_mask, labels, wanted, components)
        for label, contour in zip(wanted.tolist(), traced, strict=True):
            assert np.array_equal(contour, measure_module._crop_contour(labels, label, components))


# ------------------------------------------------- the numba region table vs the former OpenCV passes


def _assert_regions_equal_opencv(mask, um_per_px, min_area):
    """Every field exact, solidity within 1e-12 (its hull length is summed in another order)."""
    import inspectd.analysis.measure as measure_module

    result = measure(mask, _grey(mask.shape), um_per_px=um_per_px, min_region_area_px=min_area)
    want, ignored = measure_module._opencv_region_rows(mask, um_per_px, min_area)
    assert len(result.regions) == len(want)
    for region, expected in zip(result.regions, want, strict=True):
        assert set(expected) == {f.name for f in dataclasses.fields(Region)}
        for field, value in expected.items():
            actual = getattr(region, field)
            assert type(actual) is type(value), field
            if field == "solidity":
                assert actual == pytest.approx(value, rel=1e-12), (field, region, expected)
            else:
                assert actual == value, (field, region, expected)
    for name, count in ignored.items():
        assert result.metrics[f"{name}_small_regions_ignored"] == float(count)
    return result


@pytest.mark.parametrize(("generator", "seed"), [("v2", 1), ("v2", 2), ("v3", 1), ("v3", 4)])
def test_region_table_equals_the_opencv_passes_on_synthetic_frames(generator, seed):
    from inspectd.data import synth

    make = synth.generate if generator == "v2" else synth.generate_v3
    mask = make(600, 800, seed=seed).mask
    for min_area in (1, 30):
        result = _assert_regions_equal_opencv(mask, 0.7, min_area)
        assert len(result.regions) > 50


def test_region_table_equals_the_opencv_passes_on_a_full_size_frame():
    from inspectd.data import synth

    mask = synth.generate(1920, 2560, seed=7).mask
    result = _assert_regions_equal_opencv(mask, 0.5, 30)
    assert len(result.regions) > 500


def test_region_table_equals_the_opencv_passes_on_random_masks():
    for mask in _random_masks():
        for min_area in (1, 4, 30):
            _assert_regions_equal_opencv(mask, 0.7, min_area)


def test_measure_keeps_no_threads_between_calls():
    import threading

    import inspectd.analysis.measure as measure_module

    mask = np.zeros((300, 300), np.uint8)
    mask[10:100, 10:100] = UNMELTED
    before = {t.ident for t in threading.enumerate()}
    measure(mask, _grey(mask.shape), um_per_px=1.0, min_region_area_px=1)
    started = [t.name for t in threading.enumerate() if t.ident not in before]
    assert not [name for name in started if name.startswith("measure")]
    assert not hasattr(measure_module, "_pool")


def test_measure_from_two_threads_at_once_gives_serial_results():
    import threading

    from inspectd.data import synth

    masks = [synth.generate(300, 400, seed=s).mask for s in range(3)]
    expected = [measure(m, _grey(m.shape), um_per_px=1.0, min_region_area_px=5) for m in masks]
    failures = []
    start = threading.Barrier(2)

    def worker(order):
        start.wait()
        for _ in range(5):
            for i in order:
                if measure(masks[i], _grey(masks[i].shape), um_per_px=1.0, min_region_area_px=5) != expected[i]:
                    failures.append(i)

    threads = [threading.Thread(target=worker, args=(order,)) for order in ([0, 1, 2], [2, 1, 0])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_regions_built_by_field_name_equal_the_constructors():
    import inspectd.analysis.measure as measure_module

    mask = _disc_mask((80, 80), [(30, 30)], 9, PORE)
    mask[60:70, 5:40] = UNMELTED
    for region in measure(mask, _grey(mask.shape), um_per_px=0.5, min_region_area_px=1).regions:
        fields = dataclasses.asdict(region)
        rebuilt = Region(**fields)
        assert rebuilt == region
        assert hash(rebuilt) == hash(region)
        assert repr(rebuilt) == repr(region)
        assert measure_module._new_region(fields.items()) == rebuilt
        assert list(vars(region)) == list(vars(rebuilt))  # same attribute order as the constructor's
        with pytest.raises(dataclasses.FrozenInstanceError):
            region.area_px = 0  # type: ignore[misc]


def test_regions_are_made_when_read_and_behave_as_their_tuple():
    """`measure` leaves its `Region` objects unmade until read (the daemon reads only metrics);
    read, they are the same plain-typed regions in any way a caller looks at them."""
    import pickle

    import inspectd.analysis.measure as measure_module

    mask = _disc_mask((80, 80), [(30, 30), (60, 20)], 7, PORE)
    mask[60:70, 5:40] = UNMELTED
    result = measure(mask, _grey(mask.shape), um_per_px=0.5, min_region_area_px=1)
    regions = result.regions
    assert isinstance(regions, measure_module.TableRegions)
    assert len(regions) == 3
    assert regions._regions is None  # counting made no Region
    as_tuple = tuple(regions)
    assert [r.class_name for r in as_tuple] == ["unmelted", "pore", "pore"]
    assert all(type(value) in (int, float, str) for r in as_tuple for value in vars(r).values())
    assert regions == as_tuple and as_tuple == regions and regions != list(as_tuple)
    assert regions[1] is as_tuple[1] and regions[1:] == as_tuple[1:] and regions[-1] in regions
    assert hash(regions) == hash(as_tuple) and repr(regions) == repr(as_tuple)
    again = measure(mask, _grey(mask.shape), um_per_px=0.5, min_region_area_px=1)
    assert again == result  # Measurements compare through their regions
    restored = pickle.loads(pickle.dumps(result))
    assert restored == result and type(restored.regions) is tuple
    assert measure(np.zeros((8, 8), np.uint8), _grey((8, 8)), um_per_px=1.0, min_region_area_px=1).regions == ()


def test_regions_read_by_threads_at_once_are_the_same():
    from concurrent.futures import ThreadPoolExecutor

    from inspectd.data import synth

    mask = synth.generate_v3(300, 400, seed=4).mask
    want = tuple(measure(mask, _grey(mask.shape), um_per_px=0.5, min_region_area_px=1).regions)
    for _ in range(5):
        fresh = measure(mask, _grey(mask.shape), um_per_px=0.5, min_region_area_px=1).regions
        with ThreadPoolExecutor(max_workers=4) as pool:
            seen = list(pool.map(lambda regions: (len(regions), tuple(regions), regions[-1]), [fresh] * 8))
        assert all(n == len(want) and regions == want and last == want[-1] for n, regions, last in seen)


@pytest.mark.parametrize(("generator", "seed"), [("v2", 3), ("v3", 2)])
def test_region_summaries_from_columns_equal_those_from_the_regions(generator, seed):
    """`measure` reads the per-class means from its columns; the `Region` objects give the same numbers."""
    import inspectd.analysis.measure as measure_module
    from inspectd.data import synth

    make = synth.generate if generator == "v2" else synth.generate_v3
    mask = make(600, 800, seed=seed).mask
    for min_area in (1, 30):
        result = measure(mask, _grey(mask.shape), um_per_px=0.7, min_region_area_px=min_area)
        for name in ("unmelted", "pore"):
            regions = [r for r in result.regions if r.class_name == name]
            ignored = int(result.metrics[f"{name}_small_regions_ignored"])
            want = measure_module._region_summary(name, regions, ignored)
            assert {key: result.metrics[key] for key in want} == want
            assert len(regions) > 10


def test_uint16_class_histogram_equals_calchist():
    """uint16 frames are counted by a numba kernel; the former `cv2.calcHist` gives the same counts."""
    import inspectd.analysis.measure as measure_module
    from inspectd.data import synth

    sample = synth.generate_v3(300, 400, seed=5)
    enhanced = sample.image.astype(np.uint16) * 257 + 100
    got = measure_module._class_grey_histogram(sample.mask, enhanced)
    want = measure_module._opencv_class_grey_histogram(sample.mask, enhanced)
    assert got.dtype == want.dtype and np.array_equal(got, want)
    bad = sample.mask.copy()
    bad[0, 0] = 3
    with pytest.raises(ValueError, match="outside"):
        measure(bad, enhanced, um_per_px=1.0, min_region_area_px=1)
