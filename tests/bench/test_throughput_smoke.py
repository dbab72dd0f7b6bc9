"""CI smoke run of the station benchmark: tiny N, small frames, both engines, a narrow peer.

Checks that `bench/throughput.py` runs end to end on the real pipeline (journal, ZeroMQ
publisher, subscriber) and that its JSON has every field; never how fast anything is (a
shared 2-core machine). The U-Net uses the bundled model when present, else a small random
one (`tests/unet/random_unet.py`, needs onnx). The peer network is shrunk 16x
(`--peer-width-divisor 16`) and exported with torch in a subprocess; without torch the
peer section must say why it did not run.
"""

from __future__ import annotations

import doctest
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from inspectd_bench import (
    accuracy,
    machine,
    memory_source,
    peer,
    plot,
    report,
    resources,
    station,
    throughput,
)

from inspectd import cli
from inspectd.analysis.engines.unet import bundled_model_path

REPO_ROOT = Path(__file__).resolve().parents[2]
HAS_ONNX = importlib.util.find_spec("onnx") is not None
HAS_TORCH = importlib.util.find_spec("torch") is not None
FRAMES = 3
RATE_FPS = 20.0
LATENCY_KEYS = {"p50", "p95", "p99"}
PIPELINE_STAGES = {"queue", "decode", "preprocess", "segment", "measure", "verdict", "journal"}


def _unet_model(tmp_path: Path) -> Path | None:
    if bundled_model_path().is_file():
        return bundled_model_path()
    if not HAS_ONNX:
        return None
    from tests.unet.random_unet import build_unet, save

    return save(build_unet(base_channels=4), tmp_path / "random_unet.onnx")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> tuple[dict, Path, list[str]]:
    tmp_path = tmp_path_factory.mktemp("bench")
    model = _unet_model(tmp_path)
    engines = "classical,unet" if model is not None else "classical"
    json_path = tmp_path / "bench.json"
    results_md = tmp_path / "RESULTS.md"
    argv = ["--frames", str(FRAMES), "--size", "256x192", "--rate", str(RATE_FPS), "--engines", engines,
            "--json", str(json_path), "--workers", "1,2", "--warmup-frames", "1", "--distinct-frames", "2",
            "--peer-frames", "2", "--peer-width-divisor", "16", "--skimage-frames", "1",
            "--accuracy-frames", "1", "--cache-dir", str(tmp_path / "cache"),
            "--results-md", str(results_md), "--no-append"]
    if model is not None:
        argv += ["--model", str(model), "--unet-scales", "1.0,0.5"]
    done = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "throughput.py"), *argv], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not results_md.exists(), "--no-append must leave the Markdown file alone"
    assert "fps x seed" in done.stdout
    return json.loads(json_path.read_text()), tmp_path, engines.split(",")


def test_every_engine_has_every_field(smoke_run):
    document, _tmp, engines = smoke_run
    assert document["schema"] == throughput.SCHEMA
    expected = set(engines) | ({"unet@scale0.5"} if "unet" in engines else set())
    assert set(document["engines"]) == expected
    for key, entry in document["engines"].items():
        assert entry["available"] is True, key
        assert entry["fps"] > 0
        assert LATENCY_KEYS <= set(entry["latency_ms"]) and LATENCY_KEYS <= set(entry["latency_ms_saturated"])
        assert all(math.isfinite(entry["latency_ms"][k]) for k in LATENCY_KEYS)
        assert PIPELINE_STAGES <= set(entry["stages_ms"]), entry["stages_ms"]
        assert entry["cpu_pct"] >= 0 and entry["peak_rss_mb"] > 0
        assert "others_cpu_pct_of_machine_max" in entry and len(entry["load_average"]["start"]) == 3
        assert entry["fps_workers"] in (1, 2)
        assert {run["mode"] for run in entry["runs"]} == {"latency", "throughput", "offered"}
        assert sorted(run["workers"] for run in entry["runs"] if run["mode"] == "throughput") == [1, 2]
        for run in entry["runs"]:
            # every frame not dropped was journaled, published and seen by the real subscriber
            assert run["published"] + run["dropped"] == FRAMES
            assert run["received_by_subscriber"] == run["published"]
            assert "ERROR" not in run["verdicts"]
        offered = entry["offered"]
        assert offered["offered_fps"] == RATE_FPS and isinstance(offered["keeps_up"], bool)
        assert offered["dropped"] >= 0 and "headroom_pct" in offered
        assert set(entry["accuracy"]["iou"]) == {"melted", "unmelted", "pore"}
        assert 0.0 <= entry["accuracy"]["iou"]["unmelted"] <= 1.0
        assert set(entry["ratios"]) == {"fps_vs_seed", "latency_p50_vs_seed"}
        assert len(entry["latencies_ms"]) == FRAMES
    if "unet" in engines:
        assert document["engines"]["unet"]["scale"] == 1.0
        assert document["engines"]["unet@scale0.5"]["scale"] == 0.5
        assert document["engines"]["unet"]["model_sha256"]


def test_seed_section(smoke_run):
    document, _tmp, _engines = smoke_run
    seed = document["seed"]
    assert seed["published_test_iou"] == peer.SEED_PUBLISHED_TEST_IOU
    assert seed["untrained"] is True
    if not HAS_TORCH:
        assert seed["available"] is False and "torch" in seed["reason"]
        return
    assert seed["available"] is True
    assert seed["fps"] > 0 and LATENCY_KEYS <= set(seed["latency_ms"])
    assert set(seed["stages_ms"]) == set(peer.STAGES)
    assert seed["clahe_skimage_ms"] > 0 and seed["fps_with_skimage_clahe"] > 0
    assert seed["model"]["width_divisor"] == 16 and seed["model"]["parameters"] > 0
    for entry in document["engines"].values():
        assert entry["ratios"]["fps_vs_seed"] > 0


def test_machine_targets_and_plot(smoke_run):
    document, tmp_path, engines = smoke_run
    info = document["machine"]
    assert info["cpu"]["model"] and info["cpu"]["cores_usable"] >= 1
    assert "numpy" in info["versions"] and info["date_utc"]
    assert len(document["load_average"]["start"]) == 3
    names = [target["name"] for target in document["targets"]]
    assert any(name.startswith("classical >=") for name in names)
    assert any(name.startswith("classical p50 latency <=") for name in names)
    assert all(isinstance(target["met"], bool) for target in document["targets"])
    assert document["accuracy_set"]["seed"] == accuracy.HELDOUT_SEED
    picture = cv2.imread(document["plot_path"])
    assert picture is not None and picture.shape[1] == plot.WIDTH_PX
    assert Path(document["plot_path"]).parent == tmp_path


def test_markdown_section_appends_only(tmp_path, smoke_run):
    document, _tmp, _engines = smoke_run
    results_md = tmp_path / "RESULTS.md"
    kernels_text = "# Benchmarks\n\n## Kernels\n\nkernel numbers\n"
    results_md.write_text(kernels_text)
    report.append_section(results_md, report.markdown_section(document))
    first = results_md.read_text()
    assert first.startswith(kernels_text) and first.count(report.SECTION_HEADING + "\n") == 1
    assert "| pipeline |" in first and document["machine"]["cpu"]["model"] in first
    # another helper appends a section after ours; our next run goes into our section, before theirs
    results_md.write_text(first + "\n## GPU\n\ngpu numbers\n")
    report.append_section(results_md, "### second run\n")
    text = results_md.read_text()
    assert text.index("### second run") < text.index("## GPU") and text.endswith("gpu numbers\n")
    assert text.startswith(first.rstrip("\n"))


def test_cli_has_bench():
    parser = cli.build_parser()
    args = parser.parse_args(["bench", "--json", "x.json", "--frames", "2", "--size", "320x240"])
    assert args.frames == 2 and args.size == (320, 240) and args.handler.__module__ == "inspectd.commands.bench"


def test_bad_arguments_exit_2(tmp_path):
    code = throughput.main(["--frames", "1", "--size", "64x64", "--engines", "deep", "--json", str(tmp_path / "x.json"),
                            "--no-append"])
    assert code == throughput.EXIT_USAGE


@pytest.mark.parametrize("module", [accuracy, machine, memory_source, peer, plot, report, resources, station,
                                    throughput])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
