"""`inspectd analyze` / `synth` / `validate-config` end to end, on real files in tmp folders."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from inspectd import cli
from inspectd.data import synth

ALWAYS_PASS = """
rules:
  - metric: porosity_pct
    op: "<="
    limit: 100
"""
ALWAYS_FAIL = """
rules:
  - metric: porosity_pct
    op: "<"
    limit: 0
"""


@pytest.fixture(scope="module")
def synth_images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("synth")
    return synth.write_dataset(folder, 2, 256, 320, seed=3)


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


def _analyze(*argv: str) -> int:
    return cli.main(["analyze", "--quiet", *argv])


def test_analyze_writes_the_four_files_per_image(tmp_path, synth_images) -> None:
    out = tmp_path / "out"
    code = _analyze(*map(str, synth_images), "--out", str(out), "--config", _config(tmp_path, ALWAYS_PASS))
    assert code == 0
    for image in synth_images:
        stem = image.stem
        record = json.loads((out / f"{stem}.json").read_text())
        assert record["verdict"] == "PASS"
        for name in ("melted_fraction_pct", "unmelted_fraction_pct", "porosity_pct"):
            assert 0.0 <= record[name] <= 100.0
        assert abs(record["melted_fraction_pct"] + record["unmelted_fraction_pct"] + record["porosity_pct"] - 100) < 1e-6
        assert record["source"] == str(image)
        assert record["engine"]["name"] == "classical"
        assert set(record["timings_ms"]) >= {"preprocess", "segment", "measure", "verdict"}
        assert record["versions"]["inspectd"]
        mask = cv2.imread(str(out / f"{stem}_mask.png"), cv2.IMREAD_UNCHANGED)
        assert mask.dtype == np.uint8 and mask.shape == (256, 320)
        assert set(np.unique(mask)) <= {0, 1, 2}
        # the JSON fractions are the mask's fractions
        assert record["porosity_pct"] == pytest.approx(100.0 * np.mean(mask == 2), abs=1e-6)
        overlay = cv2.imread(str(out / f"{stem}_overlay.png"), cv2.IMREAD_UNCHANGED)
        assert overlay.shape == (256, 320, 3)
        header = (out / f"{stem}_regions.csv").read_text().splitlines()[0].split(",")
        assert {"class_name", "area_px", "area_um2", "circularity", "solidity", "equivalent_diameter_um"} <= set(header)


def test_exit_code_one_when_a_rule_fails(tmp_path, synth_images) -> None:
    out = tmp_path / "out"
    assert _analyze(str(synth_images[0]), "--out", str(out), "--config", _config(tmp_path, ALWAYS_FAIL)) == 1
    record = json.loads((out / f"{synth_images[0].stem}.json").read_text())
    assert record["verdict"] == "FAIL"
    assert record["failed_rules"] == [{"metric": "porosity_pct", "op": "<", "limit": 0.0,
                                       "value": record["porosity_pct"]}]


def _bad_inputs(folder: Path, good_png: Path) -> dict[str, Path]:
    png = good_png.read_bytes()
    ok, jpeg = cv2.imencode(".jpg", cv2.imread(str(good_png), cv2.IMREAD_GRAYSCALE))
    assert ok
    tiff_path = folder / "whole.tif"
    tifffile.imwrite(tiff_path, np.zeros((64, 64), np.uint8) + 7)
    ihdr = b"IHDR" + (20000).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    idat = b"IDAT" + zlib.compress(b"\x00" * 1000)
    bomb = (b"\x89PNG\r\n\x1a\n" + len(ihdr[4:]).to_bytes(4, "big") + ihdr + zlib.crc32(ihdr).to_bytes(4, "big")
            + len(idat[4:]).to_bytes(4, "big") + idat + zlib.crc32(idat).to_bytes(4, "big"))
    files = {
        "empty.png": b"",
        "truncated_png.png": png[: len(png) // 2],
        "truncated_jpeg.jpg": jpeg.tobytes()[: len(jpeg) // 2],
        "truncated_tiff.tif": tiff_path.read_bytes()[:300],
        "text.png": b"this is not an image, it is a note\n",
        "bomb.png": bomb,
    }
    paths = {}
    for name, content in files.items():
        paths[name] = folder / name
        paths[name].write_bytes(content)
    paths["one_pixel.png"] = folder / "one_pixel.png"
    cv2.imwrite(str(paths["one_pixel.png"]), np.zeros((1, 1), np.uint8))
    return paths


def test_bad_inputs_give_error_verdicts_and_exit_three_without_traceback(tmp_path, synth_images) -> None:
    bad = _bad_inputs(tmp_path, synth_images[0])
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "inspectd.cli", "analyze", *map(str, bad.values()), "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    for path in bad.values():
        record = json.loads((out / f"{path.stem}.json").read_text())
        assert record["verdict"] == "ERROR"
        assert len(record["reason"]) > 5
        assert not (out / f"{path.stem}_mask.png").exists()
        assert path.stem in proc.stdout  # listed in the table
    bomb = json.loads((out / "bomb.json").read_text())
    assert "20000" in bomb["reason"]


def test_error_outranks_fail_in_the_exit_code(tmp_path, synth_images) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    code = _analyze(str(synth_images[0]), str(bad), "--out", str(tmp_path / "o"),
                    "--config", _config(tmp_path, ALWAYS_FAIL))
    assert code == 3


def test_sixteen_bit_tiff_is_analysed_at_sixteen_bits(tmp_path) -> None:
    sample = synth.generate(200, 240, seed=5, params=synth.SynthParams(bit_depth=16))
    path = tmp_path / "deep.tif"
    tifffile.imwrite(path, sample.image)
    out = tmp_path / "out"
    assert _analyze(str(path), "--out", str(out), "--config", _config(tmp_path, ALWAYS_PASS)) == 0
    record = json.loads((out / "deep.json").read_text())
    assert record["image"]["bit_depth"] > 8
    assert record["verdict"] == "PASS"


def test_multi_page_tiff_gives_one_result_per_field_and_sample_statistics(tmp_path, capsys) -> None:
    pages = [synth.generate(128, 160, seed=s).image for s in (1, 2, 3)]
    path = tmp_path / "stack.tif"
    with tifffile.TiffWriter(path) as writer:
        for page in pages:
            writer.write(page, photometric="minisblack")
    out = tmp_path / "out"
    code = cli.main(["analyze", str(path), "--out", str(out), "--sample", "lotA",
                     "--config", _config(tmp_path, ALWAYS_PASS)])
    assert code == 0
    fractions = [json.loads((out / f"stack_field{k}.json").read_text())["porosity_pct"] for k in range(3)]
    summary = json.loads((out / "lotA_sample.json").read_text())
    porosity = summary["statistics"]["porosity_pct"]
    assert summary["fields_analysed"] == 3
    assert porosity["mean"] == pytest.approx(np.mean(fractions))
    assert porosity["sd"] == pytest.approx(np.std(fractions, ddof=1))
    assert porosity["ci95_half_width"] == pytest.approx(4.302653 * np.std(fractions, ddof=1) / np.sqrt(3), rel=1e-4)
    assert "lotA" in capsys.readouterr().out


def test_invalid_config_exits_two_with_the_key_path(tmp_path, synth_images, capsys) -> None:
    bad_cfg = _config(tmp_path, "preprocess:\n  clahe:\n    clip_limit: -2\n")
    assert _analyze(str(synth_images[0]), "--config", bad_cfg, "--out", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert "preprocess.clahe.clip_limit" in err and "line 3" in err
    assert not (tmp_path / "o").exists()


def test_unknown_engine_exits_two(tmp_path, synth_images, capsys) -> None:
    assert _analyze(str(synth_images[0]), "--engine", "nonsense", "--out", str(tmp_path / "o")) == 2
    assert "classical" in capsys.readouterr().err


def test_validate_config(tmp_path, capsys) -> None:
    assert cli.main(["validate-config", _config(tmp_path, ALWAYS_PASS)]) == 0
    assert cli.main(["validate-config", _config(tmp_path, "um_per_px: -1\n")]) == 2
    assert "um_per_px" in capsys.readouterr().err


def test_version_and_help(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert "inspectd" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["analyze", "--help"])
    assert "Exit code" in capsys.readouterr().out


def test_synth_command_writes_images_masks_and_sidecars(tmp_path) -> None:
    out = tmp_path / "gen"
    assert cli.main(["synth", "--n", "2", "--size", "96x64", "--seed", "4", "--out", str(out)]) == 0
    images = sorted(p for p in out.glob("synth_*.png") if not p.stem.endswith("_mask"))
    assert len(images) == 2
    image = cv2.imread(str(images[0]), cv2.IMREAD_UNCHANGED)
    assert image.shape == (64, 96)
    assert json.loads(images[0].with_suffix(".json").read_text())["porosity_pct"] >= 0


def test_real_tile_is_analysed(tmp_path, real_tile_path) -> None:
    out = tmp_path / "out"
    code = _analyze(str(real_tile_path), "--out", str(out), "--config", _config(tmp_path, ALWAYS_PASS))
    assert code == 0
    record = json.loads((out / f"{real_tile_path.stem}.json").read_text())
    # the real tile shows bright unmelted particles, a grey matrix and a few dark pores
    assert 5.0 < record["unmelted_fraction_pct"] < 90.0
    assert 0.0 < record["porosity_pct"] < 20.0


def test_result_json_carries_confidence_and_the_out_of_distribution_flag(tmp_path, synth_images, capsys) -> None:
    noise_path = tmp_path / "noise.png"
    cv2.imwrite(str(noise_path), np.random.default_rng(0).integers(0, 256, (256, 320), dtype=np.uint8))
    unreadable = tmp_path / "unreadable.png"
    unreadable.write_bytes(b"not a picture")
    out = tmp_path / "out"
    code = cli.main(["analyze", str(synth_images[0]), str(noise_path), str(unreadable), "--out", str(out),
                     "--config", _config(tmp_path, ALWAYS_PASS)])
    assert code == 3
    good = json.loads((out / f"{synth_images[0].stem}.json").read_text())
    assert good["verdict"] == "PASS" and good["out_of_distribution"] is False and good["warnings"] == []
    assert isinstance(good["confidence"], float) and 0.0 <= good["confidence"] <= 1.0
    assert good["ood"]["distance"] <= 1.0 and good["ood"]["reasons"] == []
    noise = json.loads((out / "noise.json").read_text())
    assert noise["verdict"] == "ERROR" and noise["out_of_distribution"] is True
    assert 0.0 <= noise["confidence"] <= 1.0
    assert noise["reason"].startswith("out of distribution for the classical engine")
    assert noise["ood"]["distance"] > 1.0 and noise["ood"]["reasons"]
    assert not (out / "noise_regions.csv").exists()  # an ERROR has no measurements ...
    assert (out / "noise_mask.png").exists() and (out / "noise_overlay.png").exists()  # ... but can be reviewed
    never_analysed = json.loads((out / "unreadable.json").read_text())
    assert never_analysed["confidence"] is None and never_analysed["out_of_distribution"] is None
    table = capsys.readouterr().out
    assert "conf" in table and "1 out of distribution" in table


def test_warn_action_keeps_the_verdict_and_writes_the_warning(tmp_path) -> None:
    inverted = tmp_path / "inverted.png"
    cv2.imwrite(str(inverted), 255 - synth.generate(256, 320, seed=8).image)
    out = tmp_path / "out"
    config_text = ALWAYS_PASS + "trust:\n  ood:\n    action: warn\n"
    assert _analyze(str(inverted), "--out", str(out), "--config", _config(tmp_path, config_text)) == 0
    record = json.loads((out / "inverted.json").read_text())
    assert record["verdict"] == "PASS" and record["out_of_distribution"] is True
    assert record["warnings"][0].startswith("warning: out of distribution")
    assert (out / "inverted_mask.png").exists()


def _validate_config_process(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inspectd.cli", "validate-config", str(path)],
                          capture_output=True, text=True, timeout=300)


FOLDER_SOURCE = "sources:\n  - kind: folder\n    path: /srv/inbox\n"


@pytest.mark.parametrize(("content", "expected"), [
    pytest.param(FOLDER_SOURCE + "    part_id_pattern: '(?P<part>(a+)+)'\n", "sources.0.part_id_pattern",
                 id="backtracking-pattern"),
    pytest.param(FOLDER_SOURCE + "    part_id_pattern: '^(?P<part>[A-Z'\n", "not a valid regular expression",
                 id="invalid-pattern"),
    pytest.param("control:\n  bind: not-an-endpoint\n", "control.bind", id="control-bind"),
    pytest.param("publish:\n  bind: ['tcp://host:notaport']\n", "publish.bind.0", id="publish-bind"),
    pytest.param("publish:\n  heartbeat_interval_s: 1e-6\n", "publish.heartbeat_interval_s", id="heartbeat"),
    pytest.param("pipeline:\n  shutdown_grace_s: .inf\n", "pipeline.shutdown_grace_s", id="inf-grace"),
    pytest.param("rules:\n  - {metric: porosity_pct, op: '<=', limit: .nan}\n", "rules.0.limit", id="nan-limit"),
    pytest.param("station: a\nstation: b\n", "duplicate key 'station'", id="duplicate-key"),
    pytest.param(FOLDER_SOURCE + "  - kind: folder\n    path: /srv/other\n", "sources.1.id", id="duplicate-id"),
    pytest.param("segment:\n  engine: nope\n", "segment.engine", id="unknown-engine"),
])
def test_validate_config_refuses_in_one_line_with_exit_two(tmp_path, content: str, expected: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(content)
    proc = _validate_config_process(path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and expected in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"inspectd: config error: {path}")


@pytest.mark.parametrize(("content", "expected"), [
    pytest.param(bytes(range(256)) * 64, "not UTF-8 text", id="binary"),
    pytest.param(b"station: s\x00\n", "control character U+0000", id="nul"),
    pytest.param(b"a: " + b"[" * 10_000 + b"]" * 10_000 + b"\n", "nest", id="deep-flow"),
    pytest.param(b"a: " + b"[" * 500 + b"]" * 500 + b"\n", "nested more than 32 levels", id="deep-500"),
    pytest.param(("l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))).encode(),
        "its aliases expand it beyond", id="billion-laughs"),
    pytest.param(b"#" * (11 << 20), "larger than 256 KiB", id="11-MB"),
])
def test_validate_config_on_hostile_files_exits_two_without_a_traceback(tmp_path, content: bytes,
                                                                       expected: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    proc = _validate_config_process(path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and expected in proc.stderr, proc.stderr[-2000:]


def test_shipped_config_stays_valid(capsys) -> None:
    from tests.conftest import REPO_ROOT

    assert cli.main(["validate-config", str(REPO_ROOT / "config.yaml")]) == 0
    assert capsys.readouterr().out.strip().endswith("config.yaml: valid")


def test_an_unexpected_error_is_one_line_with_exit_one(monkeypatch, capsys) -> None:
    from inspectd.commands import validate_config

    def broken(_path: object) -> None:
        msg = "boom\nsecond line"
        raise RuntimeError(msg)

    monkeypatch.setattr(validate_config.config, "load", broken)
    assert cli.main(["validate-config", "x.yaml"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RuntimeError: boom second line" in err and "Traceback" not in err
