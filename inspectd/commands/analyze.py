"""`inspectd analyze IMAGE...`: measure micrographs, write per-field files, print a table."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from inspectd import config
from inspectd.analysis import fieldstats
from inspectd.analysis.analyzer import Analyzer, FrameResult
from inspectd.analysis.decode import decode_file
from inspectd.analysis.verdict import error_verdict
from inspectd.commands.engine_choice import apply_engine_options
from inspectd.errors import ConfigError, EngineError, ImageDecodeError, KernelResourceError
from inspectd.escaping import printable
from inspectd.reports.report import HEADLINE_METRICS, field_stem, result_record, write_field_outputs
from inspectd.types import Frame, VerdictResult

EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_ERROR = 0, 1, 2, 3


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "analyze",
        description="Exit code: 0 all PASS, 1 any FAIL, 2 usage/config error, 3 any ERROR.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="PNG, TIFF (8/16-bit, multi-page), BMP or JPEG")
    parser.add_argument("--out", default="inspectd-results", help="output folder (default: %(default)s)")
    parser.add_argument("--config", default=None, help="YAML config (default: built-in defaults)")
    parser.add_argument("--engine", default=None, help="segmentation engine, e.g. classical or unet (default from config)")
    parser.add_argument("--model", default=None, metavar="PATH",
                        help="U-Net ONNX model to run (as segment.unet.model; implies --engine unet), e.g. the "
                             "model.onnx of inspectd train")
    parser.add_argument("--sample", default=None, metavar="NAME",
                        help="treat all fields as one sample NAME: mean, SD and 95%% CI per fraction (ASTM E2109)")
    parser.add_argument("--quiet", action="store_true", help="print no table")
    return parser


def run(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    usage_error = apply_engine_options(cfg, args.engine, args.model)
    if usage_error:
        print(f"inspectd analyze: {usage_error}", file=sys.stderr)
        return EXIT_USAGE
    paths = [Path(p) for p in args.images]
    clashes = [stem for stem, count in Counter(p.stem for p in paths).items() if count > 1]
    if clashes:
        print(f"inspectd analyze: several inputs share the file stem(s) {', '.join(printable(s) for s in sorted(clashes))}; "
              "their output files would overwrite each other", file=sys.stderr)
        return EXIT_USAGE
    try:
        analyzer = Analyzer(cfg)
        analyzer.warm_up()
    except (EngineError, KernelResourceError, ConfigError) as exc:
        print(f"inspectd analyze: cannot start: {exc}", file=sys.stderr)
        return EXIT_USAGE

    out_dir = Path(args.out)
    engine = analyzer.engine
    records: list[dict] = []
    for path in tqdm(paths, desc="analyze", unit="file", disable=len(paths) < 2 or None, file=sys.stderr):
        for result, stem in _analyse_file(analyzer, path, cfg):
            record = result_record(result, cfg, engine_name=engine.name, backend=engine.backend,
                                   model_hash=engine.model_hash)
            write_field_outputs(result, record, out_dir, stem)
            records.append(record)

    if args.sample:
        summary = _sample_summary(args.sample, records)
        (out_dir / f"{args.sample}_sample.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if not args.quiet:
        _print_table(records, out_dir)
        if args.sample:
            _print_sample(summary)
    return _exit_code(records)


def _analyse_file(analyzer: Analyzer, path: Path, cfg: config.Config) -> list[tuple[FrameResult, str]]:
    try:
        frames = decode_file(path, max_pixels=cfg.input.max_pixels, max_file_bytes=cfg.input.max_file_bytes)
    except ImageDecodeError as exc:
        failed = Frame(pixels=None, source=str(path))
        return [(FrameResult(failed, error_verdict(exc.reason)), path.stem)]
    return [(analyzer.analyze(frame), field_stem(path.stem, frame.field_index, len(frames))) for frame in frames]


def _sample_summary(name: str, records: list[dict]) -> dict:
    analysed = [r for r in records if r["verdict"] != VerdictResult.ERROR.value]
    stats = fieldstats.summarize_fields([r["metrics"] for r in analysed], names=HEADLINE_METRICS)
    return {
        "sample": name,
        "fields": len(records),
        "fields_analysed": len(analysed),
        "fields_error": len(records) - len(analysed),
        "verdicts": dict(Counter(r["verdict"] for r in records)),
        "statistics": {metric: stat.to_dict() for metric, stat in stats.items()},
        "sources": [{"source": r["source"], "field_index": r["field_index"], "verdict": r["verdict"]} for r in records],
    }


def _print_table(records: list[dict], out_dir: Path) -> None:
    header = (f"{'file':<32} {'field':>5} {'verdict':<7} {'melted%':>8} {'unmelt%':>8} {'pore%':>7} {'regions':>7} "
              f"{'conf':>5} {'ood':>3} {'ms':>7}  reason")
    print(header)
    print("-" * len(header))
    for r in records:
        name = printable(Path(r["source"]).name)
        ms = sum(r["timings_ms"].values())
        cells = [_fmt(r.get(m)) for m in HEADLINE_METRICS]
        reason = r["reason"] or "; ".join(f"{f['metric']} {f['op']} {f['limit']} (got {_fmt(f['value'])})"
                                          for f in r["failed_rules"])
        reason = "; ".join([reason, *r["warnings"]]) if reason else "; ".join(r["warnings"])
        confidence = "-" if r["confidence"] is None else f"{r['confidence']:.2f}"
        ood_mark = {True: "!", False: "", None: "-"}[r["out_of_distribution"]]
        print(f"{name[:32]:<32} {r['field_index']:>5} {r['verdict']:<7} {cells[0]:>8} {cells[1]:>8} {cells[2]:>7} "
              f"{r['regions_count']:>7} {confidence:>5} {ood_mark:>3} {ms:>7.1f}  {printable(reason)}")
    counts = Counter(r["verdict"] for r in records)
    flagged = sum(r["out_of_distribution"] is True for r in records)
    print(f"\n{len(records)} field(s): " + ", ".join(f"{k} {counts.get(k, 0)}" for k in ("PASS", "FAIL", "ERROR"))
          + (f"; {flagged} out of distribution (ood !)" if flagged else "") + f"  -> {out_dir}/")


def _print_sample(summary: dict) -> None:
    print(f"\nsample {summary['sample']}: {summary['fields_analysed']} field(s) analysed")
    for metric, stat in summary["statistics"].items():
        ci = "n/a" if stat["ci95_half_width"] is None else f"±{stat['ci95_half_width']:.2f}"
        print(f"  {metric:<24} mean {stat['mean']:.2f}  sd {stat['sd']:.2f}  95% CI {ci}")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _exit_code(records: list[dict]) -> int:
    verdicts = {r["verdict"] for r in records}
    if VerdictResult.ERROR.value in verdicts:
        return EXIT_ERROR
    if VerdictResult.FAIL.value in verdicts:
        return EXIT_FAIL
    return EXIT_PASS
