"""`inspectd regrade INPUT... --out DIR`: re-grade an archive of micrographs on Ray.

Ray, pyarrow and the job modules are imported inside `run`, never when the command line is
built, so `inspectd --help` stays fast and works without the [cluster] extra.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

from inspectd import config
from inspectd.commands.engine_choice import apply_engine_options
from inspectd.errors import ConfigError, EngineError, KernelResourceError
from inspectd.escaping import printable

EXIT_DONE, EXIT_FAILED, EXIT_USAGE, EXIT_UNREADABLE = 0, 1, 2, 3
INSTALL_HINT = "inspectd regrade needs Ray: pip install 'inspectd[cluster]'"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "regrade",
        description="Runs the same analysis as `inspectd analyze` over folders, glob patterns and manifests "
                    "(CSV or Parquet with path and optional part / part_id and lot columns) and writes DIR/frames/ "
                    "and DIR/regions/ (Parquet); a re-run skips what is done. With --journal also DIR/diff.json, "
                    "diff.md and diff.html: the frames and lots whose verdict flips. Exit code: 0 done (whatever "
                    "the verdicts), 2 usage or config error, 3 any input unreadable.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="folder, glob pattern, manifest (.csv, .parquet) or file")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder (on a cluster: a path every node can write)")
    parser.add_argument("--config", default=None, metavar="FILE", help="YAML config (default: built-in defaults)")
    parser.add_argument("--engine", default=None, choices=("classical", "unet"),
                        help="segmentation engine (default from config)")
    parser.add_argument("--model", default=None, metavar="PATH",
                        help="U-Net ONNX model to run (as segment.unet.model; implies --engine unet)")
    parser.add_argument("--journal", action="append", default=[], metavar="FILE",
                        help="a station's journal.sqlite3 to compare with (repeat for several stations)")
    parser.add_argument("--address", default=None, metavar="ray://HOST:PORT|auto",
                        help="the Ray cluster to run on (default: a local Ray started for this run)")
    parser.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                        help="analysis workers, one CPU each (default: every CPU of the machine or cluster)")
    parser.add_argument("--overlays", default=None, metavar="DIR",
                        help="also write each field's mask and overlay PNG there")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        msg = f"must be at least 1, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def ray_missing() -> bool:
    """Whether Ray or pyarrow (the [cluster] extra) is absent; looked up without importing them."""
    for name in ("ray", "pyarrow"):
        try:
            if importlib.util.find_spec(name) is None:
                return True
        except ImportError:
            return True
    return False


def run(args: argparse.Namespace) -> int:
    if ray_missing():
        print(INSTALL_HINT, file=sys.stderr)
        return EXIT_USAGE
    from inspectd.analysis.analyzer import Analyzer
    from inspectd.regrade import diff, job, store
    from inspectd.regrade.inputs import InputError, collect_inputs
    from inspectd.regrade.keys import run_key_of

    cfg = config.load(args.config)
    usage_error = apply_engine_options(cfg, args.engine, args.model)
    if usage_error:
        print(f"inspectd regrade: {usage_error}", file=sys.stderr)
        return EXIT_USAGE
    _absolute_paths(cfg)  # the workers of a cluster do not run in this folder
    try:
        inputs = collect_inputs(args.inputs)
        originals = diff.original_verdicts(args.journal) if args.journal else None
    except (InputError, diff.JournalReadError) as exc:
        print(f"inspectd regrade: {printable(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    try:
        # The driver builds the analyzer once too: it checks the config and model before any worker
        # starts, and names the re-grade (config hash, model hash) every worker must reproduce.
        run_key = run_key_of(Analyzer(cfg))
    except (EngineError, KernelResourceError, ConfigError) as exc:
        print(f"inspectd regrade: cannot start: {exc}", file=sys.stderr)
        return EXIT_USAGE

    out_dir = Path(args.out).resolve()
    store.repair(out_dir, run_key)
    rows, skipped = job.pending_inputs(inputs, store.done_inputs(out_dir, run_key))
    verbose = bool(args.log_level) and args.log_level in ("DEBUG", "INFO")
    try:
        outcome = job.run_job(rows, config_json=cfg.model_dump(mode="json"), out_dir=out_dir, run_key=run_key,
                              address=args.address, workers=args.workers,
                              overlays_dir=None if args.overlays is None else Path(args.overlays).resolve(),
                              verbose=verbose, show_progress=False if args.quiet else None)
    except job.JobFailedError as exc:
        print(f"inspectd regrade: the job stopped: {printable(str(exc))}; what was written is kept, and the same "
              "command resumes (--log-level INFO shows Ray's logs)", file=sys.stderr)
        return EXIT_FAILED
    store.repair(out_dir, run_key)  # a retried or interrupted batch may have left an input twice
    _write_run_description(out_dir, run_key, cfg)

    paths = [item.path for item in inputs]
    frames = store.read_frames(out_dir, run_key, paths)
    if originals is not None:
        description = {"config_hash": run_key.config_hash, "model_hash": run_key.model_hash,
                       "engine": cfg.segment.engine}
        report = diff.build_diff(frames, originals, journals=args.journal, regrade=description)
        diff.write_reports(report, out_dir)
    unreadable = sorted({row["path"] for row in frames if row["unreadable"]})
    if not args.quiet:
        _print_summary(frames, len(inputs), skipped + outcome.skipped, outcome, unreadable, out_dir, run_key)
    return EXIT_UNREADABLE if unreadable else EXIT_DONE


def _absolute_paths(cfg: config.Config) -> None:
    """Model, plan and envelope paths read from this folder, as `inspectd analyze` reads them."""
    engine_section = getattr(cfg.segment, cfg.segment.engine, None)
    for owner, name in ((engine_section, "model"), (engine_section, "engine_plan"), (cfg.trust.ood, "envelope")):
        value = getattr(owner, name, None)
        if isinstance(value, Path) and not value.is_absolute():
            setattr(owner, name, value.resolve())


def _write_run_description(out_dir: Path, run_key: object, cfg: config.Config) -> None:
    """`DIR/runs/<config hash>-<model hash>.json`: the config and versions behind a partition."""
    from inspectd.durable_files import write_atomically
    from inspectd.reports.report import software_versions

    description = {"config_hash": run_key.config_hash, "model_hash": run_key.model_hash,
                   "engine": cfg.segment.engine, "config": cfg.model_dump(mode="json"),
                   "versions": software_versions()}
    name = f"{run_key.config_hash[:16]}-{run_key.model_partition[:16]}.json"
    write_atomically(out_dir / "runs" / name, (json.dumps(description, indent=2) + "\n").encode("utf-8"))


def _print_summary(frames: list[dict], n_inputs: int, skipped: int, outcome: object, unreadable: list[str],
                   out_dir: Path, run_key: object) -> None:
    from collections import Counter

    counts = Counter(row["verdict"] for row in frames)
    rate = f" in {outcome.seconds:.1f} s ({outcome.files / outcome.seconds:.2f} files/s, {outcome.workers} workers)" \
        if outcome.seconds > 0 else ""
    print(f"{n_inputs} file(s): {outcome.files} analysed{rate}, {skipped} already done; "
          f"{len(frames)} field(s): " + ", ".join(f"{k} {counts.get(k, 0)}" for k in ("PASS", "FAIL", "ERROR"))
          + f"  -> {printable(str(out_dir))}/ ({run_key.describe()})")
    for path in unreadable[:20]:
        reason = next(row["reason"] for row in frames if row["path"] == path)
        print(f"  unreadable: {printable(path)}: {printable(reason)}")
    if len(unreadable) > 20:
        print(f"  ... and {len(unreadable) - 20} more (the frames table's `unreadable` column)")
