"""`inspectd demo`: the daemon on a demo folder fed with generated micrographs.

What `make demo` runs on a fresh machine: it starts `inspectd run` on `demo/inbox`, runs
`inspectd subscribe` beside it (its lines are the verdicts as they arrive), drops generated
micrographs into the inbox (good ones, one porous, one truncated on purpose), waits for
every verdict and stops both with SIGTERM. The daemon serves its web UI meanwhile, so the
frames it showed stay for `inspectd ui --state-dir demo/state` afterwards. No camera, no model download, no config file of
the user's: it writes its own, with the bundled U-Net as the engine.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2

from inspectd.clients.control import ControlError, request
from inspectd.data import synth

# The demo's frames: the v3 generator's default look (large grainy particles with dark
# outlines in a busy lamellar matrix), raw as a camera delivers them; the bundled U-Net
# segments them (the classical engine reads brightness only, and in this look the matrix's
# bright lamellae are as bright as the particles).
DEMO_LOOK = synth.RealisticParams(enhance=False)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("demo")
    parser.add_argument("--dir", default="demo", help="working folder, emptied first (default: %(default)s)")
    parser.add_argument("--n", type=int, default=6, help="good samples to generate (default: %(default)s)")
    parser.add_argument("--size", default="1280x960", help="frame size WxH (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    return parser


def run(args: argparse.Namespace) -> int:
    width, height = (int(v) for v in args.size.lower().split("x"))
    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    samples = write_demo_samples(root / "samples", n_good=args.n, width=width, height=height)
    inbox = root / "inbox"
    inbox.mkdir(parents=True)
    publish, control = _free_endpoint(), _free_endpoint()
    config_path = root / "config.yaml"
    config_path.write_text("metrics:\n  port: 0\nsegment:\n  engine: unet\n"
                           "sources:\n  - kind: folder\n    path: inbox\n    stable_s: 0.2\n")
    log_path = root / "daemon.log"
    print(f"starting the daemon on {inbox}/ (log: {log_path}), publishing on {publish}")
    with log_path.open("wb") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "inspectd.cli", "run", "--config", "config.yaml", "--state-dir", "state",
             "--publish", publish, "--control", control, "--http", "127.0.0.1:0"],  # the UI keeps its frames
            cwd=root, stdout=log, stderr=subprocess.STDOUT)
        subscriber = None
        try:
            if not _wait_ready(daemon, control, args.timeout):
                print(f"the daemon did not become ready; see {log_path}", file=sys.stderr)
                return 1
            subscriber = subprocess.Popen([sys.executable, "-m", "inspectd.cli", "subscribe", "--endpoint", publish,
                                           "--control", control, "--from-seq", "1", "--count", str(len(samples))])
            print(f"ready; dropping {len(samples)} micrograph(s) into the inbox. Verdicts as they arrive:\n")
            for sample in samples:
                _drop(sample, inbox)
            subscriber.wait(timeout=args.timeout)
            status = request(control, {"cmd": "status"})
        finally:
            if subscriber is not None and subscriber.poll() is None:
                subscriber.terminate()
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=60)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(status["counts"].items()))
    print(f"\n{status['processed']} file(s) inspected: {counts}. The daemon stopped with exit code {daemon.returncode}.")
    print(f"Inspected files: {root}/state/done/; refused ones with their reason: {root}/state/quarantine/")
    print(f"Overlays and region tables: .venv/bin/inspectd analyze {root}/samples/*.png --engine unet --out {root}/results")
    print(f"In the web UI (Live, Trends, Analyse, Review): .venv/bin/inspectd ui --state-dir {root}/state, "
          f"then open http://127.0.0.1:8080/")
    return 0 if daemon.returncode == 0 else 1


def write_demo_samples(folder: Path, *, n_good: int, width: int, height: int) -> list[Path]:
    """Good frames (8-22 % unmelted, 2 % pores: PASS), one with 12 % pores (FAIL) and one
    truncated file (ERROR): raw camera-like frames of the realistic v3 generator, with their
    true masks in `truth/`."""
    folder.mkdir(parents=True, exist_ok=True)
    truth = folder.parent / "truth"
    truth.mkdir(parents=True, exist_ok=True)
    looks = [(f"synth_{index:04d}", dataclasses.replace(DEMO_LOOK, particle_fraction=0.08 + 0.14 * index / max(1, n_good - 1)),
              7 + index) for index in range(n_good)]
    looks.append(("porous_0001", dataclasses.replace(DEMO_LOOK, particle_fraction=0.15, pore_fraction=0.12), 99))
    paths = []
    for stem, look, seed in looks:
        sample = synth.generate_v3(height, width, seed, look)
        paths.append(folder / f"{stem}.png")
        cv2.imwrite(str(paths[-1]), sample.image)
        cv2.imwrite(str(truth / f"{stem}.png"), sample.mask)
    truncated_path = folder / "truncated_0002.png"
    truncated_path.write_bytes(paths[-1].read_bytes()[: paths[-1].stat().st_size // 3])
    return [*paths, truncated_path]


def _drop(sample: Path, inbox: Path) -> None:
    # The way a careful writer delivers: a hidden temp name, then an atomic rename.
    temp = inbox / f".{sample.name}.part"
    shutil.copyfile(sample, temp)
    temp.rename(inbox / sample.name)


def _wait_ready(daemon: subprocess.Popen, control: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and daemon.poll() is None:
        try:
            if request(control, {"cmd": "status"}, timeout_ms=500).get("ready"):
                return True
        except ControlError:
            pass
        time.sleep(0.2)
    return False


def _free_endpoint() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"
