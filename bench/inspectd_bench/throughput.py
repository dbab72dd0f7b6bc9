"""`inspectd bench` / `python bench/throughput.py`: can this station keep up, and how does it compare?

For each engine (classical, unet) on each backend available here (and each U-Net working
scale asked for), the real daemon pipeline (`station.BenchStation`) is run on N generated
frames of the camera's size:
1. `latency` run, one frame in flight: capture-to-publish p50 / p95 / p99 and the mean
   time of every stage (queue, decode, preprocess, segment, measure, verdict, journal);
2. `throughput` runs, one per `--workers` count: saturated frames/s (the best is `fps`),
   CPU % and peak RSS;
3. with `--rate FPS`, an `offered` run at that rate through a drop-oldest camera buffer:
   dropped frames and whether the station keeps up;
4. accuracy on a held-out generated set (`accuracy.py`).
Then the seed-style peer (`peer.py`) on the same frames, ratios inspectd / peer, the targets
(classical >= 30 frames/s and p50 <= 50 ms with one frame in flight; U-Net at full resolution
>= 15x the peer's frames/s, accuracy held), and the outputs: a table on
stdout, the JSON file, a latency plot (PNG) and a section appended to `bench/RESULTS.md`.

Interface (kept exactly):
    python bench/throughput.py --frames N --size WxH [--rate FPS] [--engines classical,unet] --json FILE

Example (small and quick; the peer network shrunk 16x):
    >>> import tempfile  # doctest: +SKIP
    >>> out = Path(tempfile.mkdtemp())  # doctest: +SKIP
    >>> main(["--frames", "3", "--size", "256x192", "--engines", "classical", "--json", str(out / "b.json"),
    ...       "--peer-width-divisor", "16", "--cache-dir", str(out), "--no-append"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np

from inspectd import config as config_module
from inspectd.analysis.analyzer import Analyzer, choose_threading_layer, engine_settings
from inspectd.config import Config
from inspectd.data import synth
from inspectd.errors import ConfigError, InspectdError
from inspectd.metric_values import finite_or_none
from inspectd_bench import accuracy, report
from inspectd_bench.machine import describe_machine, load_average, one_line
from inspectd_bench.peer import (
    SEED_PUBLISHED_TEST_IOU,
    PeerUnavailableError,
    ensure_peer_model,
    run_peer,
)
from inspectd_bench.plot import plot_latency_cdf
from inspectd_bench.station import BenchStation, RunMode

logger = logging.getLogger(__name__)

SCHEMA = "inspectd-bench-throughput/1"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SIZE = "2560x1920"  # the seed camera's frame
DEFAULT_FRAMES = 30
DEFAULT_ENGINES = "classical,unet"
DEFAULT_WORKERS = "1,2"
# The U-Net's working scales: the first is the `unet` entry, the others are compared beside it.
DEFAULT_UNET_SCALES = "1.0,0.5"
FRAME_SEED = 77_000
# The speed targets a 2-core station is held to (2560x1920 frames).
CLASSICAL_MIN_FPS = 30.0
CLASSICAL_MAX_P50_MS = 50.0
UNET_MIN_RATIO_TO_SEED = 15.0
# The accuracy targets a U-Net scale must hold for its speed to count.
UNET_MIN_IOU_UNMELTED = 0.90
EXIT_OK, EXIT_USAGE = 0, 2


def in_checkout() -> bool:
    """True when running from a source checkout (bench/ beside the package)."""
    return (REPO_ROOT / "bench").is_dir() and (REPO_ROOT / "pyproject.toml").is_file()


def default_cache_dir() -> Path:
    if in_checkout():
        return REPO_ROOT / "bench" / "results"
    return Path.home() / ".cache" / "inspectd-bench"


def default_results_md() -> Path | None:
    return REPO_ROOT / "bench" / "RESULTS.md" if in_checkout() else None


def parse_size(text: str) -> tuple[int, int]:
    """'2560x1920' -> (2560, 1920), width first.

    >>> parse_size("2560x1920")
    (2560, 1920)
    """
    width, sep, height = text.lower().partition("x")
    try:
        size = (int(width), int(height))
    except ValueError:
        size = (0, 0)
    if not sep or min(size) < 16:
        msg = f"--size must be WxH with both at least 16 px, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return size


def parse_list(text: str, kind: type = str) -> list:
    """'1, 2' -> [1, 2] with `kind=int`; empty items dropped.

    >>> parse_list("classical, unet")
    ['classical', 'unet']
    """
    return [kind(item.strip()) for item in text.split(",") if item.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `inspectd bench` and `bench/throughput.py` (one definition for both)."""
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help="frames per run (default %(default)s)")
    parser.add_argument("--size", type=parse_size, default=parse_size(DEFAULT_SIZE),
                        help=f"frame size WxH (default {DEFAULT_SIZE}, the seed camera's frame)")
    parser.add_argument("--rate", type=float, default=None,
                        help="offered frame rate, frames/s: feed a free-running camera buffer at that rate and "
                             "report drops and whether the station keeps up")
    parser.add_argument("--engines", default=DEFAULT_ENGINES, help="engines to run (default %(default)s)")
    parser.add_argument("--json", required=True, type=Path, help="write the results here")
    parser.add_argument("--workers", default=DEFAULT_WORKERS,
                        help="pipeline.workers values for the throughput runs (default %(default)s)")
    parser.add_argument("--backends", default="all",
                        help="backends to run each engine on: all (every one available here) or a list of "
                             "cpu,cuda,tensorrt (default %(default)s)")
    parser.add_argument("--unet-scales", default=DEFAULT_UNET_SCALES,
                        help="U-Net working scales (segment.unet.scale); the first is the `unet` entry, the "
                             "others are compared beside it (default %(default)s)")
    parser.add_argument("--model", type=Path, default=None,
                        help="U-Net ONNX model (default: the config's, else the bundled one)")
    parser.add_argument("--config", default=None, help="base YAML config (preprocess, rules, engine settings)")
    parser.add_argument("--warmup-frames", type=int, default=2, help="frames per run not counted (default %(default)s)")
    parser.add_argument("--distinct-frames", type=int, default=8,
                        help="distinct synthetic frames generated and cycled (default %(default)s)")
    parser.add_argument("--peer-frames", type=int, default=None,
                        help="frames for the seed-style peer (default: --frames, at most 10)")
    parser.add_argument("--peer-width-divisor", type=int, default=1,
                        help="divide the peer network's channel widths (1 = the seed's 41 M parameters; "
                             "larger only for quick smoke runs)")
    parser.add_argument("--no-peer", action="store_true", help="skip the seed-style peer")
    parser.add_argument("--skimage-frames", type=int, default=1,
                        help="frames for timing scikit-image's equalize_adapthist (0 = skip; default %(default)s)")
    parser.add_argument("--accuracy-frames", type=int, default=6,
                        help="held-out generated frames for the accuracy columns (0 = skip; default %(default)s)")
    parser.add_argument("--accuracy-size", type=parse_size, default=None,
                        help="size of the held-out frames (default: --size)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where the exported peer network is cached (default: bench/results in a checkout)")
    parser.add_argument("--plot", type=Path, default=None,
                        help="latency plot PNG (default: beside the JSON, <stem>_latency.png)")
    parser.add_argument("--results-md", type=Path, default=None,
                        help="Markdown file to append the section to (default: bench/RESULTS.md in a checkout)")
    parser.add_argument("--no-append", action="store_true", help="do not append to the Markdown results file")
    return parser


@dataclass(frozen=True)
class Variant:
    """One engine configuration to benchmark."""

    key: str
    engine: str
    backend: str
    scale: float | None

    def config(self, base: Config, model: Path | None) -> Config:
        cfg = copy.deepcopy(base)
        cfg.segment.engine = self.engine
        cfg.segment.backend = config_module.Backend(self.backend)
        if self.scale is not None:
            cfg.segment.unet.scale = self.scale
        if model is not None:
            cfg.segment.unet.model = model
        cfg.metrics.enabled = False
        return cfg


def available_backends(engine: str) -> dict[str, str | None]:
    """backend -> None when usable here, else the reason it is not."""
    backends: dict[str, str | None] = {"cpu": None}
    if engine == "classical":
        from kernels import cuda_device

        ok, reason = cuda_device.cuda_usable()
        backends["cuda"] = None if ok and not cuda_device.is_simulator() else f"no CUDA kernels: {reason}"
    else:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
        backends["cuda"] = None if "CUDAExecutionProvider" in providers else "ONNX Runtime has no CUDA provider"
        backends["tensorrt"] = (None if "TensorrtExecutionProvider" in providers
                                else "ONNX Runtime has no TensorRT provider")
    return backends


def plan_variants(engines: list[str], backends_arg: str, scales: list[float]) -> tuple[list[Variant], list[dict]]:
    """The variants to run, and the ones asked for (or implied by `all`) that cannot run here."""
    variants, skipped = [], []
    for engine in engines:
        usable = available_backends(engine)
        wanted = [b for b, reason in usable.items() if reason is None] if backends_arg == "all" else parse_list(
            backends_arg)
        if backends_arg == "all":
            skipped += [{"engine": engine, "backend": b, "reason": r} for b, r in usable.items() if r is not None]
        for backend in wanted:
            if usable.get(backend, "unknown backend") is not None:
                skipped.append({"engine": engine, "backend": backend, "reason": usable.get(backend, "unknown backend")})
                continue
            engine_scales = scales if engine == "unet" else [None]
            for index, scale in enumerate(engine_scales):
                key = engine + ("" if backend == "cpu" else f"@{backend}") + (f"@scale{scale:g}" if index else "")
                variants.append(Variant(key, engine, backend, scale))
    return variants, skipped


def generate_frames(width: int, height: int, n: int) -> list[np.ndarray]:
    """`n` distinct synthetic frames, the camera's stand-in: v3 (realistic) with its default
    look, raw as a camera delivers them (seeded)."""
    camera_like = synth.RealisticParams(enhance=False)
    return [synth.generate_v3(height, width, seed=FRAME_SEED + index, params=camera_like).image for index in range(n)]


def run_variant(variant: Variant, cfg: Config, frames: list[np.ndarray], args: argparse.Namespace,
                pairs: list | None) -> dict[str, Any]:
    """All runs of one engine configuration; JSON-ready."""
    started = time.perf_counter()
    load_start = load_average()
    analyzers: dict[int, Analyzer] = {}

    def analyzer_for(workers: int) -> Analyzer:
        """The analyzer a daemon with `pipeline.workers: workers` builds: a U-Net shares the cores
        among the workers (`engine_settings`), so each worker count gets its own where that differs."""
        station_cfg = cfg.model_copy(update={"pipeline": cfg.pipeline.model_copy(update={"workers": workers})})
        for built in analyzers.values():
            if engine_settings(built.cfg) == engine_settings(station_cfg):
                return built
        analyzers[workers] = Analyzer(station_cfg)
        analyzers[workers].warm_up()
        return analyzers[workers]

    try:
        analyzer = analyzer_for(1)
    except InspectdError as exc:
        logger.warning("%s not run: %s", variant.key, exc)
        return {"engine": variant.engine, "backend": variant.backend, "available": False, "reason": str(exc)}
    engine = analyzer.engine
    entry: dict[str, Any] = {
        "engine": variant.engine, "backend": engine.backend, "backend_requested": variant.backend,
        "kernel_backend": analyzer.kernel_backend, "scale": variant.scale if variant.engine == "unet" else None,
        "model": str(getattr(engine, "model_path", None) or "") or None, "model_sha256": engine.model_hash,
        "available": True,
    }
    if variant.engine == "unet":
        entry["tile_px"] = cfg.segment.unet.tile_px
        entry["overlap_px"] = cfg.segment.unet.overlap_px
    print(f"[bench] {variant.key}: latency run ({args.frames} frames, one in flight)", file=sys.stderr, flush=True)
    runs = []
    with BenchStation(cfg, analyzer, RunMode.LATENCY, workers=1) as station:
        latency_run = station.run(frames, args.frames, warmup_frames=args.warmup_frames)
    runs.append(latency_run)
    throughput_runs = []
    for workers in args.workers_list:
        print(f"[bench] {variant.key}: throughput run, {workers} worker(s)", file=sys.stderr, flush=True)
        with BenchStation(cfg, analyzer_for(workers), RunMode.THROUGHPUT, workers=workers) as station:
            throughput_runs.append(station.run(frames, args.frames, warmup_frames=args.warmup_frames))
    runs += throughput_runs
    best = max(throughput_runs, key=lambda run: run.fps)
    offered = None
    if args.rate:
        print(f"[bench] {variant.key}: offered {args.rate:g} frames/s, {best.workers} worker(s)", file=sys.stderr,
              flush=True)
        with BenchStation(cfg, analyzer_for(best.workers), RunMode.OFFERED, workers=best.workers) as station:
            offered_run = station.run(frames, args.frames, warmup_frames=args.warmup_frames, rate_fps=args.rate)
        runs.append(offered_run)
        offered = {**offered_run.as_dict(), "headroom_pct": round(100.0 * (best.fps / args.rate - 1.0), 1)}
    entry.update({
        "fps": round(best.fps, 3),
        "fps_workers": best.workers,
        "latency_ms": latency_run.latency_ms,
        "latency_ms_saturated": best.latency_ms,
        "stages_ms": latency_run.stages_ms,
        "stages_ms_saturated": best.stages_ms,
        "cpu_pct": best.usage["cpu_pct"],
        "cpu_pct_of_machine": best.usage["cpu_pct_of_machine"],
        "peak_rss_mb": max(run.usage["peak_rss_mb"] for run in runs),
        "peak_rss_scope": best.usage["peak_rss_scope"],
        "offered": offered,
        "runs": [run.as_dict() for run in runs],
        "latencies_ms": latency_run.latencies_ms,
    })
    if pairs:
        print(f"[bench] {variant.key}: accuracy on {len(pairs)} held-out frames", file=sys.stderr, flush=True)
        entry["accuracy"] = accuracy.score_engine(engine, pairs, cfg)
    else:
        entry["accuracy"] = None
    entry["bench_s"] = round(time.perf_counter() - started, 1)
    entry["load_average"] = {"start": load_start, "end": load_average()}
    # The largest share of the machine other processes took during any timed run of this engine.
    others = [run.usage.get("others_cpu_pct_of_machine") for run in runs]
    entry["others_cpu_pct_of_machine_max"] = max((v for v in others if v is not None), default=None)
    return entry


def run_seed_peer(frames: list[np.ndarray], args: argparse.Namespace) -> dict[str, Any]:
    base = {"published_test_iou": SEED_PUBLISHED_TEST_IOU, "untrained": True}
    if args.no_peer:
        return {**base, "available": False, "reason": "skipped (--no-peer)"}
    cache_dir = args.cache_dir or default_cache_dir()
    try:
        print(f"[bench] seed-style peer: model (cache {cache_dir})", file=sys.stderr, flush=True)
        model = ensure_peer_model(cache_dir, args.peer_width_divisor)
        n = args.peer_frames if args.peer_frames is not None else min(args.frames, 10)
        print(f"[bench] seed-style peer: {n} frames", file=sys.stderr, flush=True)
        result = run_peer(model, frames, max(1, n), warmup_frames=1, skimage_frames=args.skimage_frames)
    except PeerUnavailableError as exc:
        logger.warning("seed-style peer not run: %s", exc)
        return {**base, "available": False, "reason": str(exc)}
    return {**base, "available": True, **result}


def add_ratios_and_targets(document: dict[str, Any]) -> None:
    seed = document["seed"]
    seed_fps = seed.get("fps") if seed.get("available") else None
    seed_p50 = seed["latency_ms"]["p50"] if seed.get("available") else None
    targets = []
    classical_iou = next((e.get("accuracy") or {} for e in document["engines"].values()
                          if e.get("engine") == "classical" and e.get("available", True)), {}).get("iou", {})
    for key, entry in document["engines"].items():
        if not entry.get("available", True):
            continue
        entry["ratios"] = {
            "fps_vs_seed": round(entry["fps"] / seed_fps, 3) if seed_fps else None,
            "latency_p50_vs_seed": round(entry["latency_ms"]["p50"] / seed_p50, 3) if seed_p50 else None,
        }
        if entry["engine"] == "classical" and entry["backend"] == "cpu":
            targets.append({"name": f"{key} >= {CLASSICAL_MIN_FPS:g} frames/s", "met": entry["fps"] >= CLASSICAL_MIN_FPS,
                            "detail": f"{entry['fps']:.2f} frames/s with {entry['fps_workers']} worker(s)"})
            p50 = entry["latency_ms"]["p50"]
            targets.append({"name": f"{key} p50 latency <= {CLASSICAL_MAX_P50_MS:g} ms with one frame in flight",
                            "met": p50 <= CLASSICAL_MAX_P50_MS, "detail": f"{p50:.1f} ms"})
        if entry["engine"] == "unet" and entry["backend"] == "cpu" and seed_fps:
            ratio = entry["ratios"]["fps_vs_seed"]
            iou = (entry.get("accuracy") or {}).get("iou", {})
            accurate = unet_accuracy_holds(iou, classical_iou)
            targets.append({
                "name": f"{key} (scale {entry['scale']:g}) >= {UNET_MIN_RATIO_TO_SEED:g}x the seed-style peer's "
                        f"frames/s, holding IoU unmelted >= {UNET_MIN_IOU_UNMELTED:g} and every class above classical",
                "met": ratio >= UNET_MIN_RATIO_TO_SEED and bool(accurate),
                "detail": f"{entry['fps']:.2f} vs {seed_fps:.2f} frames/s = {ratio:.2f}x; held-out IoU unmelted "
                          f"{report.fmt(iou.get('unmelted'), 3)}, pore {report.fmt(iou.get('pore'), 3)}"
                          + {True: "", False: "; accuracy targets NOT held",
                             None: "; accuracy not measured"}[accurate],
            })
    document["targets"] = targets


def unet_accuracy_holds(iou: dict[str, float | None], classical_iou: dict[str, float | None]) -> bool | None:
    """The accuracy targets on the benchmark's held-out frames; None when either side was not measured.

    >>> unet_accuracy_holds({"melted": .9, "unmelted": .92, "pore": .8}, {"melted": .8, "unmelted": .4, "pore": .7})
    True
    >>> unet_accuracy_holds({"melted": .9, "unmelted": .85, "pore": .8}, {"melted": .8, "unmelted": .4, "pore": .7})
    False
    """
    classes = ("melted", "unmelted", "pore")
    if any(iou.get(c) is None or classical_iou.get(c) is None for c in classes):
        return None
    return iou["unmelted"] >= UNET_MIN_IOU_UNMELTED and all(iou[c] > classical_iou[c] for c in classes)


def run_benchmark(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Everything but the printing and the files; returns the JSON document (`command` is recorded)."""
    choose_threading_layer()
    base_cfg = config_module.load(args.config)
    width, height = args.size
    engines = parse_list(args.engines)
    unknown = [e for e in engines if e not in ("classical", "unet")]
    if unknown or not engines:
        msg = f"--engines must list classical and/or unet, got {args.engines!r}"
        raise ConfigError(msg)
    args.workers_list = sorted(set(parse_list(args.workers, int)))
    if not args.workers_list or min(args.workers_list) < 1:
        msg = f"--workers must list positive integers, got {args.workers!r}"
        raise ConfigError(msg)
    if args.frames < 1:
        msg = f"--frames must be >= 1, got {args.frames}"
        raise ConfigError(msg)
    scales = parse_list(args.unet_scales, float)
    if not scales or not all(0.0 < s <= 1.0 for s in scales):
        msg = f"--unet-scales must be in (0, 1], got {args.unet_scales!r}"
        raise ConfigError(msg)
    variants, skipped = plan_variants(engines, args.backends, scales)
    load_start = load_average()
    machine = describe_machine()
    print(f"[bench] {one_line(machine)}; load average {load_start}", file=sys.stderr, flush=True)
    print(f"[bench] generating {min(args.distinct_frames, args.frames + args.warmup_frames)} frames of "
          f"{width}x{height}", file=sys.stderr, flush=True)
    frames = generate_frames(width, height, max(1, min(args.distinct_frames, args.frames + args.warmup_frames)))
    acc_width, acc_height = args.accuracy_size or args.size
    with tempfile.TemporaryDirectory(prefix="inspectd-bench-heldout-") as heldout_dir:
        pairs = None
        if args.accuracy_frames > 0:
            print(f"[bench] writing {args.accuracy_frames} held-out frames of {acc_width}x{acc_height}",
                  file=sys.stderr, flush=True)
            pairs = accuracy.write_heldout_set(Path(heldout_dir), args.accuracy_frames, acc_width, acc_height)
        engines_out = {}
        for variant in variants:
            engines_out[variant.key] = run_variant(variant, variant.config(base_cfg, args.model), frames, args, pairs)
    seed = run_seed_peer(frames, args)
    try:
        threading_layer = numba.threading_layer()
    except ValueError:  # no parallel kernel ran (a classical-free run on a GPU, say)
        threading_layer = None
    document: dict[str, Any] = {
        "schema": SCHEMA,
        "date_utc": machine["date_utc"],
        "command": command,
        "machine": machine,
        "machine_line": one_line(machine),
        "load_average": {"start": load_start, "end": load_average()},
        "settings": {
            "frames": args.frames, "size": f"{width}x{height}", "rate_fps": args.rate, "engines": engines,
            "workers": args.workers_list, "backends": args.backends, "unet_scales": scales,
            "warmup_frames": args.warmup_frames, "distinct_frames": len(frames), "frame_seed": FRAME_SEED,
            "queue_size": base_cfg.pipeline.queue_size, "camera_buffer_frames": 4, "config": args.config,
            "peer_width_divisor": args.peer_width_divisor, "numba_threading_layer": threading_layer,
            "unet_model": _unet_model_record(engines_out),
        },
        "skipped_backends": skipped,
        "engines": engines_out,
        "seed": seed,
        "accuracy_set": accuracy.heldout_description(args.accuracy_frames, acc_width, acc_height),
    }
    add_ratios_and_targets(document)
    return document


def _unet_model_record(engines_out: dict[str, Any]) -> dict[str, Any] | None:
    for entry in engines_out.values():
        if entry.get("engine") == "unet" and entry.get("available"):
            return {"path": entry["model"], "sha256": entry["model_sha256"],
                    "tile_px": entry.get("tile_px"), "overlap_px": entry.get("overlap_px")}
    return None


def write_outputs(document: dict[str, Any], args: argparse.Namespace) -> None:
    json_path = Path(args.json)
    plot_path = args.plot or json_path.with_name(f"{json_path.stem}_latency.png")
    document["json_path"] = str(json_path)
    document["plot_path"] = str(plot_path)
    series = {key: entry["latencies_ms"] for key, entry in document["engines"].items() if entry.get("available", True)}
    if document["seed"].get("available"):
        series["seed-style peer"] = document["seed"]["latencies_ms"]
    plot_latency_cdf(series, plot_path, f"capture to publish, one frame in flight, {document['settings']['size']}, "
                                        f"{document['machine_line']}")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(_finite(document), indent=2) + "\n", encoding="utf-8")
    results_md = args.results_md or default_results_md()
    if not args.no_append and results_md is not None:
        report.append_section(results_md, report.markdown_section(document))
        document["results_md"] = str(results_md)


def print_report(document: dict[str, Any]) -> None:
    settings = document["settings"]
    print(f"inspectd bench: {settings['frames']} frames of {settings['size']} per run; {document['machine_line']}; "
          f"load average {document['load_average']['start']} -> {document['load_average']['end']}")
    header, rows = report.summary_rows(document)
    print(report.text_table(header, rows))
    print()
    stage_header, stage_body = report.stage_rows(document)
    print(report.text_table(stage_header, stage_body))
    print()
    seed = document["seed"]
    if seed.get("available"):
        print(f"seed-style peer: {seed['model']['parameters'] / 1e6:.1f} M parameters, UNTRAINED weights (timing "
              f"only); accuracy shown is the seed's published test IoU {seed['published_test_iou']}.")
    for line in report.findings(document):
        print(line[2:] if line.startswith("- ") else line)
    print(f"-> {document['json_path']}, {document['plot_path']}"
          + (f", appended to {document['results_md']}" if document.get("results_md") else ""))


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="bench/throughput.py", description=__doc__.split("\n\n")[0]))
    args = parser.parse_args(argv)
    return run(args, shlex.join(["bench/throughput.py", *(argv if argv is not None else sys.argv[1:])]))


def run(args: argparse.Namespace, command: str) -> int:
    """Run, write the files, print the tables; the exit code (`command` is how it was invoked)."""
    try:
        document = run_benchmark(args, command)
    except ConfigError as exc:
        print(f"inspectd bench: {exc}", file=sys.stderr)
        return EXIT_USAGE
    write_outputs(document, args)
    print_report(document)
    return EXIT_OK


def _finite(value: Any) -> Any:
    """NaN/inf -> None, so the JSON is strict."""
    if isinstance(value, float):
        return finite_or_none(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
