"""Fine-tuning from the Review page: `inspectd train --init` in the background, scores, then a confirmed swap.

Why it is built this way:
- The job runs the same commands a person would type (`inspectd train --init ...`, then
  `inspectd evaluate` twice), as child processes under `nice` with one core fewer than the
  machine has: the inspection line keeps its CPU and its priority, a crash of the training
  cannot take the daemon or the UI with it, and the result is what the CLI gives.
- One run at a time; it reads a copy of the labelled set (`LabelledSet.snapshot`), so
  fields saved meanwhile wait for the next run.
- Progress is read from the training's own output (the per-epoch bar and the epoch lines).
- Scores are IoU per class (`inspectd.reports.evaluate`, pooled over the pixels) of the model the
  station runs now ("before") and of the new one ("after"), on the held-out fields only:
  fields neither model was trained on. With masks without pores, evaluate compares
  unmelted against the rest (its "binary" mode) and the page says so.
- The new model runs only when a person confirms: under the daemon the swap is at once,
  without a restart (`Daemon.swap_model`); under `inspectd ui` there is no line to swap, so
  the page names the model file and the config key that makes the station run it.

Files: `<state dir>/ui/finetune/<run>/` holds `run.json` (what the page shows), `data/` (the
copy of the labelled set), `model/` (`inspectd train --out`: model.onnx, its card
model.json, the int8 twin, checkpoints, curve.png), `score-before/`, `score-after/`
(`inspectd evaluate --out`) and `config.yaml` / `score-*.yaml` (the configs they ran with).
Runs are kept: a model a config points at must not disappear.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from inspectd.analysis.engines.unet import BUNDLED_MODELS_DIR, file_sha256
from inspectd.config import Config
from inspectd.data.labelled_set import HELDOUT, TRAIN, LabelledSet
from inspectd.errors import InspectdError
from inspectd.types import CLASS_NAMES
from inspectd.web.context import WebContext

logger = logging.getLogger(__name__)

AREA = "finetune"
RUNS_DIR = "finetune"
LABELS_DIR = "labels"
LOG_LINES = 200
# Share of the progress bar: training epochs, then export (calibration, ONNX, int8), then scoring.
TRAIN_END, EXPORT_END = 0.85, 0.9
BAR_LINE = re.compile(r"epoch (\d+)/(\d+):\s+(\d+)%\|")
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+): train loss")
RUNNING_STATES = frozenset({"running"})


class FineTuneError(InspectdError):
    """A fine-tuning request refused; `status` is the HTTP status the API answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class FineTuneOptions:
    """How the job runs; set by whoever builds the server, never by a request.

    `extra_train_args` go after the defaults of `inspectd train --init` (later options win),
    e.g. `("--epochs", "4")` for a quicker run.
    """

    nice: int = 19
    extra_train_args: tuple[str, ...] = ()
    python: str = sys.executable


class FineTuner:
    """The one fine-tuning job of a server: start, progress, scores, activation; see the module docstring."""

    def __init__(self, context: WebContext, options: FineTuneOptions | None = None) -> None:
        self.context = context
        self.options = options or FineTuneOptions()
        self.root = context.ui_dir / RUNS_DIR
        self.labels = LabelledSet(context.ui_dir / LABELS_DIR)
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._cancelled = threading.Event()
        self._log: deque[str] = deque(maxlen=LOG_LINES)
        self._run = self._last_run()

    # ---- what the page asks -------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The current (or last) run as the page shows it, plus what the station runs now."""
        with self._lock:
            run = dict(self._run) if self._run else {"state": "idle"}
            run["log_tail"] = list(self._log) if self._log else run.get("log_tail", [])
        counts = {TRAIN: 0, HELDOUT: 0}
        for field in self.labels.fields():
            counts[HELDOUT if field.held_out else TRAIN] += 1
        run["labelled"] = counts
        run["mode"] = "offline" if self.context.offline else "daemon"
        run["active"] = self.active_model()
        return run

    def start(self) -> dict[str, Any]:
        """Start a run; FineTuneError 409 while one runs, 400 without training and held-out fields."""
        with self._lock:
            if self._run and self._run.get("state") in RUNNING_STATES:
                msg = "a fine-tuning run is already going on; wait for it or cancel it"
                raise FineTuneError(msg, 409)
            counts = {TRAIN: 0, HELDOUT: 0}
            for field in self.labels.fields():
                counts[HELDOUT if field.held_out else TRAIN] += 1
            if counts[TRAIN] < 1 or counts[HELDOUT] < 1:
                msg = (f"fine-tuning needs at least one training field and one held-out field to score it on "
                       f"(now {counts[TRAIN]} training, {counts[HELDOUT]} held out): label more fields or move "
                       "one with its held-out switch")
                raise FineTuneError(msg)
            run_id = time.strftime("%Y%m%d-%H%M%S")
            run_dir = self.root / run_id
            suffix = 1
            while run_dir.exists():
                suffix += 1
                run_dir = self.root / f"{run_id}-{suffix}"
            run_dir.mkdir(parents=True)
            active = self.active_model()
            self._cancelled.clear()
            self._log.clear()
            self._run = {"run": run_dir.name, "state": "running", "phase": "preparing", "progress": 0.0,
                         "message": "copying the labelled set", "started_at": _now(), "finished_at": None,
                         "init_model": active["init"], "before": active, "scores": None, "model": None,
                         "activation": None}
            self._save_run()
            self._thread = threading.Thread(target=self._job, args=(run_dir,), name="finetune", daemon=True)
            self._thread.start()
            return dict(self._run)

    def cancel(self) -> dict[str, Any]:
        with self._lock:
            if not self._run or self._run.get("state") not in RUNNING_STATES:
                msg = "no fine-tuning run is going on"
                raise FineTuneError(msg, 409)
            self._cancelled.set()
            process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
        return self.status()

    def activate(self) -> dict[str, Any]:
        """Make the finished run's model the station's: a hot swap under the daemon (blocking:
        it loads and warms the model, so call it off the event loop). Offline: FineTuneError 409
        saying how to activate it."""
        with self._lock:
            run = dict(self._run) if self._run else {}
        if run.get("state") not in ("done", "activated") or not run.get("model"):
            msg = "no finished fine-tuning run to activate"
            raise FineTuneError(msg, 409)
        daemon = self.context.daemon
        if daemon is None:
            raise FineTuneError(run["model"]["activate_hint"], 409)
        swapped = daemon.swap_model(run["model"]["path"])
        with self._lock:
            self._run["state"] = "activated"
            self._run["activation"] = {"at": _now(), **swapped,
                                       "note": "runs until the daemon restarts; "
                                               + run["model"]["keep_hint"]}
            self._save_run()
        return self.status()

    def close(self) -> None:
        """Stop a running job (the server is going away): its child process is terminated."""
        self._cancelled.set()
        with self._lock:
            process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
        if self._thread is not None:
            self._thread.join(timeout=10.0)

    # ---- the model the station runs now ---------------------------------------------------

    def active_model(self) -> dict[str, Any]:
        """What the station segments with now: engine, model file (None: the bundled one chosen by
        precision) and its hash, and the `--init` a fine-tuning starts from."""
        segment = self.context.config.segment
        daemon = self.context.daemon
        engine = daemon.analyzer.engine if daemon is not None and daemon.analyzer is not None else None
        name = engine.name if engine is not None else segment.engine
        path: Path | None = None
        if name == "unet":
            running = getattr(engine, "model_path", None) if engine is not None else None
            if running is not None and Path(running).suffix == ".onnx":
                path = Path(running)
            elif segment.unet.model is not None:
                path = Path(segment.unet.model)
        init = "bundled"
        if path is not None and path.resolve().parent != BUNDLED_MODELS_DIR.resolve():
            fp32 = path.with_name(path.name.removesuffix(".int8.onnx") + ".onnx")
            init = str(fp32 if path.name.endswith(".int8.onnx") and fp32.is_file() else path)
        return {"engine": name, "model": None if path is None else str(path),
                "model_hash": None if engine is None else engine.model_hash, "init": init}

    # ---- the job ------------------------------------------------------------------------

    def _job(self, run_dir: Path) -> None:
        try:
            self._run_job(run_dir)
        except Exception as exc:  # noqa: BLE001 - a failed job is a state on the page, never a dead thread
            cancelled = self._cancelled.is_set()
            if not cancelled:
                logger.exception("fine-tuning run %s failed", run_dir.name)
            self._update(state="cancelled" if cancelled else "failed", finished_at=_now(),
                         message="cancelled" if cancelled else str(exc))
        finally:
            with self._lock:
                self._process = None
                if self._run is not None:
                    self._run["log_tail"] = list(self._log)
                    self._save_run()

    def _run_job(self, run_dir: Path) -> None:
        cfg = self.context.config
        data = run_dir / "data"
        counts = self.labels.snapshot(data)
        before = self._run["before"]
        self._update(fields=counts, phase="training", message=f"training on {counts[TRAIN]} field(s)")
        station_yaml = run_dir / "config.yaml"
        _write_yaml(station_yaml, {"preprocess": cfg.preprocess.model_dump(mode="json")})
        out = run_dir / "model"
        train_args = ["train", "--init", before["init"], "--images", str(data / TRAIN / "images"),
                      "--masks", str(data / TRAIN / "masks"), "--out", str(out), "--config", str(station_yaml),
                      *self.options.extra_train_args]
        self._child(train_args, self._training_progress)
        model_path = out / "model.onnx"
        if not model_path.is_file():
            msg = f"the training finished without writing {model_path}"
            raise FineTuneError(msg)

        scores = {}
        for index, (label, engine, model) in enumerate((("before", before["engine"], before["model"]),
                                                         ("after", "unet", str(model_path)))):
            self._update(phase="scoring", progress=EXPORT_END + index * (1 - EXPORT_END) / 2,
                         message=f"scoring the {'current' if label == 'before' else 'new'} model on "
                                 f"{counts[HELDOUT]} held-out field(s)")
            score_yaml = run_dir / f"score-{label}.yaml"
            _write_yaml(score_yaml, _scoring_config(cfg, engine, model))
            self._child(["evaluate", "--images", str(data / HELDOUT / "images"), "--masks",
                         str(data / HELDOUT / "masks"), "--engines", engine, "--config", str(score_yaml),
                         "--out", str(run_dir / f"score-{label}"), "--no-overlays"], None)
            scores[label] = _read_scores(run_dir / f"score-{label}" / "metrics.json", engine)
        resolved = model_path.resolve()
        model = {
            "path": str(resolved),
            "card": str(resolved.with_suffix(".json")),
            "sha256": file_sha256(resolved),
            "curve": str(out / "curve.png"),
            "activate_hint": (f"The web UI runs without the daemon here, so nothing is swapped. To inspect with the "
                              f"new model, set segment.engine: unet and segment.unet.model: {resolved} in the "
                              f"station's config, then restart inspectd run."),
            "keep_hint": f"to keep it after a restart, set segment.unet.model: {resolved} in the config",
        }
        self._update(state="done", phase="done", progress=1.0, finished_at=_now(), model=model,
                     scores=_compare(scores["before"], scores["after"]),
                     message="finished: compare the scores, then make the new model active or leave it")

    def _child(self, arguments: list[str], on_line: Any) -> None:
        """Run `inspectd ARGUMENTS` niced, with one core fewer than the machine; raise when it fails."""
        if self._cancelled.is_set():
            msg = "cancelled"
            raise FineTuneError(msg)
        command = [self.options.python, "-m", "inspectd.cli", *arguments]
        nice = shutil.which("nice")
        if nice is not None and self.options.nice:
            command = [nice, "-n", str(self.options.nice), *command]
        threads = str(max(1, (os.cpu_count() or 2) - 1))
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
        self._say("$ inspectd " + " ".join(arguments))
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env)
        with self._lock:
            self._process = process
        if self._cancelled.is_set():  # a cancel or close that came while the child started saw no process
            process.terminate()
        assert process.stdout is not None
        pending = b""
        while chunk := process.stdout.read1(4096):
            pending += chunk
            *lines, pending = re.split(rb"[\r\n]", pending)
            for raw in lines:
                line = raw.decode("utf-8", "replace").strip()
                if line:
                    self._say(line)
                    if on_line is not None:
                        on_line(line)
        code = process.wait()
        if self._cancelled.is_set():
            msg = "cancelled"
            raise FineTuneError(msg)
        if code != 0:
            last = next((line for line in reversed(self._log) if not line.startswith("$ ")), "no output")
            msg = f"inspectd {arguments[0]} failed (exit {code}): {last}"
            raise FineTuneError(msg)

    def _training_progress(self, line: str) -> None:
        if line.startswith("best epoch") and "validation IoU" in line:
            self._update(training_summary=line)  # the training's own verdict on its validation split
        elif match := BAR_LINE.search(line):
            epoch, epochs, percent = (int(g) for g in match.groups())
            done = (epoch - 1 + percent / 100.0) / max(epochs, 1)
            self._update(progress=round(TRAIN_END * done, 4), message=f"training: epoch {epoch} of {epochs}")
        elif match := EPOCH_LINE.search(line):
            epoch, epochs = (int(g) for g in match.groups())
            if epoch >= epochs:
                self._update(progress=TRAIN_END, phase="exporting",
                             message="calibrating and exporting the model (ONNX, int8 twin)")
            else:
                self._update(progress=round(TRAIN_END * epoch / max(epochs, 1), 4),
                             message=f"training: epoch {epoch} of {epochs} done")

    # ---- bookkeeping ----------------------------------------------------------------------

    def _say(self, line: str) -> None:
        with self._lock:
            self._log.append(line[:300])

    def _update(self, **changes: Any) -> None:
        with self._lock:
            if self._run is None:
                return
            if "progress" in changes:  # the bar never goes back
                changes["progress"] = max(float(changes["progress"]), float(self._run.get("progress") or 0.0))
            self._run.update(changes)
            self._save_run()

    def _save_run(self) -> None:
        """run.json of the current run, written atomically (called with the lock held)."""
        if not self._run:
            return
        path = self.root / self._run["run"] / "run.json"
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(self._run, indent=1, default=str) + "\n", encoding="utf-8")
        os.replace(temporary, path)

    def _last_run(self) -> dict[str, Any] | None:
        """The newest run.json (a run that was going on when the server stopped is 'interrupted')."""
        if not self.root.is_dir():
            return None
        for folder in sorted((p for p in self.root.iterdir() if p.is_dir()), key=lambda p: p.name, reverse=True):
            try:
                run = json.loads((folder / "run.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if run.get("state") in RUNNING_STATES:
                run.update(state="interrupted", message="the server stopped during this run; start it again")
            return run
        return None


def _scoring_config(cfg: Config, engine: str, model: str | None) -> dict[str, Any]:
    """The station's preprocess and engine settings for `inspectd evaluate`, on the CPU (the GPU
    belongs to the line), with `model` as the U-Net file (None: the bundled one)."""
    segment = cfg.segment.model_dump(mode="json")
    segment.update(engine=engine, backend="cpu")
    segment["unet"].update(model=model, engine_plan=None)
    return {"preprocess": cfg.preprocess.model_dump(mode="json"), "input": cfg.input.model_dump(mode="json"),
            "segment": segment}


def _read_scores(metrics_path: Path, engine: str) -> dict[str, Any]:
    document = json.loads(metrics_path.read_text(encoding="utf-8"))
    summary = document["engines"][engine]
    return {"label_mode": document["label_mode"], "label_mode_note": document.get("label_mode_note"),
            "n_images": document["n_images"], "model_hash": summary.get("model_hash"),
            "iou": {name: values["pooled"]["iou"] for name, values in summary["classes"].items()},
            "pixel_accuracy": summary["pixel_accuracy"]["pooled"]}


def _compare(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Rows class | before | after | change for the page (IoU, pooled over the held-out pixels)."""
    rows = []
    for name in after["iou"]:
        old, new = before["iou"].get(name), after["iou"].get(name)
        rows.append({"class": name, "before": old, "after": new,
                     "change": None if old is None or new is None else new - old})
    rows.append({"class": "pixel accuracy", "before": before["pixel_accuracy"], "after": after["pixel_accuracy"],
                 "change": after["pixel_accuracy"] - before["pixel_accuracy"]})
    return {"metric": "IoU", "label_mode": after["label_mode"], "label_mode_note": after["label_mode_note"],
            "n_images": after["n_images"], "rows": rows, "before_hash": before["model_hash"],
            "after_hash": after["model_hash"], "classes": list(CLASS_NAMES.values())}


def _write_yaml(path: Path, document: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# ---- routes ---------------------------------------------------------------------------------


def tuner(context: WebContext) -> FineTuner:
    """The server's FineTuner (a test or the daemon may have put one with its own options first)."""
    found = context.areas.get(AREA)
    if found is None:
        found = context.areas[AREA] = FineTuner(context)
    return found


def routes(context: WebContext) -> list[BaseRoute]:
    """`GET /api/finetune` status; `POST /api/finetune` start; `POST /api/finetune/cancel`;
    `POST /api/finetune/activate` (daemon: hot swap; offline: 409 with how to activate)."""
    job = tuner(context)

    async def status(_request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(job.status))

    async def start(_request: Request) -> Response:
        return await _answer(job.start, 202)

    async def cancel(_request: Request) -> Response:
        return await _answer(job.cancel)

    async def activate(_request: Request) -> Response:
        return await _answer(job.activate)

    return [
        Route("/api/finetune", status, methods=["GET"]),
        Route("/api/finetune", start, methods=["POST"]),
        Route("/api/finetune/cancel", cancel, methods=["POST"]),
        Route("/api/finetune/activate", activate, methods=["POST"]),
    ]


async def _answer(action: Any, ok_status: int = 200) -> Response:
    try:
        return JSONResponse(await run_in_threadpool(action), status_code=ok_status)
    except FineTuneError as exc:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)
    except InspectdError as exc:  # the model would not load: nothing was swapped
        return JSONResponse({"error": f"the new model was not activated: {exc}"}, status_code=409)
