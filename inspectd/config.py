"""The configuration model: one strict pydantic tree, loaded from YAML.

Every field has a default and a description, so `config.yaml` at the top of the
repository documents the same keys this module enforces. A validation failure becomes
one `ConfigError` naming the key path, the YAML line, the value and the reason.

Example:
    >>> cfg = parse("station: s1\\num_per_px: 0.8\\n")
    >>> cfg.um_per_px
    0.8
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from inspectd.errors import ConfigError

# Metrics a rule may name: every key `measure.measure()` puts into `Measurements.metrics`.
RULE_METRICS = (
    "melted_fraction_pct",
    "unmelted_fraction_pct",
    "porosity_pct",
    "unmelted_count",
    "pore_count",
    "unmelted_mean_eq_diameter_um",
    "unmelted_max_eq_diameter_um",
    "pore_mean_eq_diameter_um",
    "pore_max_eq_diameter_um",
    "unmelted_mean_circularity",
    "pore_mean_circularity",
    "entropy_bits",
    "variance",
    "melted_entropy_bits",
    "unmelted_entropy_bits",
    "pore_entropy_bits",
    "melted_variance",
    "unmelted_variance",
    "pore_variance",
)


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are refused, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class LogLevel(str, enum.Enum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


class InputConfig(StrictModel):
    max_pixels: int = Field(
        100_000_000,
        ge=1,
        description="Largest width*height accepted, checked on the file header BEFORE decoding "
        "(decompression-bomb guard).",
    )
    max_file_bytes: int = Field(
        1_000_000_000, ge=1, description="Largest input file size accepted, in bytes."
    )


class DenoiseMethod(str, enum.Enum):
    NONE = "none"
    GAUSSIAN = "gaussian"
    MEDIAN = "median"


class ClaheConfig(StrictModel):
    enabled: bool = Field(True, description="Apply CLAHE (contrast-limited adaptive histogram equalisation).")
    clip_limit: float = Field(2.0, ge=0.0, le=1000.0, description="OpenCV-style clip limit; 0 disables clipping.")
    tile_grid: tuple[int, int] = Field(
        (8, 8), description="Tiles as (rows, cols), numpy order (OpenCV's tileGridSize is (cols, rows))."
    )
    skip_if_enhanced: bool = Field(
        True,
        description="Leave a frame that is already contrast-enhanced as it is (its grey levels already fill the "
        "range as a CLAHE output does: histogram entropy >= 7.2 bits and 1st-99th percentile spanning >= 75 % of "
        "the levels). A second CLAHE with tiles smaller than the particles flattens them into the matrix.",
    )

    @model_validator(mode="after")
    def _verify_tile_grid(self) -> ClaheConfig:
        if min(self.tile_grid) < 1 or max(self.tile_grid) > 64:
            msg = f"tile_grid entries must be in 1..64, got {list(self.tile_grid)}"
            raise ValueError(msg)
        return self


class PreprocessConfig(StrictModel):
    denoise: DenoiseMethod = Field(DenoiseMethod.NONE, description="Optional denoise before CLAHE.")
    denoise_ksize: int = Field(3, ge=3, le=31, description="Odd kernel size of the denoise filter, pixels.")
    clahe: ClaheConfig = Field(default_factory=ClaheConfig)

    @model_validator(mode="after")
    def _verify_odd_kernel(self) -> PreprocessConfig:
        if self.denoise_ksize % 2 == 0:
            msg = f"denoise_ksize must be odd, got {self.denoise_ksize}"
            raise ValueError(msg)
        return self


class ThresholdMethod(str, enum.Enum):
    MINIMUM_ERROR = "minimum_error"  # Kittler-Illingworth: two populations of their own spread
    OTSU = "otsu"
    OTSU_UPPER = "otsu_upper"  # Otsu again over the pixels above the first Otsu threshold
    FIXED = "fixed"
    ADAPTIVE = "adaptive"


class SlicImplementation(str, enum.Enum):
    SKIMAGE = "skimage"
    FAST_SLIC = "fast_slic"


class SlicConfig(StrictModel):
    enabled: bool = Field(False, description="Vote the class of each SLIC superpixel by majority.")
    implementation: SlicImplementation = Field(
        SlicImplementation.SKIMAGE, description="skimage (always there) or fast_slic (built by `make venv`; about 25x faster)."
    )
    n_segments: int = Field(1000, ge=2, le=100_000, description="Approximate number of superpixels.")
    compactness: float = Field(10.0, gt=0.0, description="SLIC compactness (higher = squarer superpixels).")


class ClassicalConfig(StrictModel):
    """The seed's traditional path: threshold + morphology (+ optional SLIC vote)."""

    threshold: ThresholdMethod = Field(
        ThresholdMethod.MINIMUM_ERROR,
        description="How unmelted (bright) pixels are split off: minimum_error (Kittler-Illingworth: a narrow bright "
        "particle population beside a broad matrix one, each with its own spread) | otsu | otsu_upper (Otsu again "
        "above the first Otsu threshold) | fixed | adaptive.",
    )
    fixed_threshold: int = Field(
        128, ge=0, le=65535, description="Grey level for threshold: fixed, in the frame's own levels (x257 for 16-bit)."
    )
    adaptive_block_size: int = Field(51, ge=3, description="Odd window size for threshold: adaptive, pixels.")
    adaptive_offset: float = Field(
        -20.0, description="Subtracted from the local mean for threshold: adaptive, in the frame's own grey levels."
    )
    smooth_sigma_px: float = Field(
        0.5, ge=0.0, le=50.0, description="Gaussian sigma applied before thresholding (against single-pixel noise; "
        "raise it for a coarse grain inside particles)."
    )
    pore_level: float = Field(
        0.2, gt=0.0, lt=1.0,
        description="Pores are pixels darker than this fraction of the Otsu threshold (near-black).",
    )
    pore_min_solidity: float = Field(
        0.6, ge=0.0, le=1.0, description="Dark regions less solid than this are cracks, not pores (kept as melted)."
    )
    open_radius_px: int = Field(0, ge=0, le=50, description="Morphological opening radius (removes bright specks; "
                                "0 keeps structures a few pixels wide, which real labels mark).")
    close_radius_px: int = Field(0, ge=0, le=50, description="Morphological closing radius (fills gaps).")
    slic: SlicConfig = Field(default_factory=SlicConfig)

    @model_validator(mode="after")
    def _verify_block_size(self) -> ClassicalConfig:
        if self.adaptive_block_size % 2 == 0:
            msg = f"adaptive_block_size must be odd, got {self.adaptive_block_size}"
            raise ValueError(msg)
        return self


class Backend(str, enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"
    TENSORRT = "tensorrt"


class GraphOptimization(str, enum.Enum):
    DISABLE = "disable"
    BASIC = "basic"
    EXTENDED = "extended"
    ALL = "all"


class ModelPrecision(str, enum.Enum):
    AUTO = "auto"
    FP32 = "fp32"
    INT8 = "int8"


class UnetConfig(StrictModel):
    """The U-Net engine: ONNX Runtime on the CPU (CUDA provider when present), TensorRT on a GPU."""

    model: Path | None = Field(
        None, description="ONNX model; null = the bundled inspectd/models/unet-coating-v3 (see precision)."
    )
    precision: ModelPrecision = Field(
        ModelPrecision.AUTO,
        description="Which bundled file runs when model is null: int8 (same held-out IoU; half the time of "
        "fp32 on a CPU with VNNI, AMX-INT8 or Arm dotprod, no faster without), fp32, or auto (int8 on such a "
        "CPU, fp32 on other CPUs and on a GPU). A given model runs as is.",
    )
    engine_plan: Path | None = Field(
        None, description="Serialised TensorRT engine (inspectd build-engine) used when backend is tensorrt."
    )
    tile_px: int = Field(1024, ge=64, le=4096, description="Square inference tile, pixels (a multiple of 32).")
    overlap_px: int = Field(64, ge=0, le=1024, description="Overlap between tiles, blended linearly, pixels.")
    scale: float = Field(
        1.0, gt=0.0, le=1.0, description="Internal working scale (1.0 = full resolution; the mask is resized back)."
    )
    intra_op_threads: int = Field(0, ge=0, le=256, description="ONNX Runtime intra-op threads (0 = one per core).")
    graph_optimization: GraphOptimization = Field(GraphOptimization.ALL, description="ONNX Runtime graph optimisation.")

    @model_validator(mode="after")
    def _verify_tiles(self) -> UnetConfig:
        if self.tile_px % 32:  # inspectd.unet.contract.INPUT_MULTIPLE (not imported: config stays light)
            msg = f"tile_px must be a multiple of 32, got {self.tile_px}"
            raise ValueError(msg)
        if self.overlap_px * 2 >= self.tile_px:
            msg = f"overlap_px ({self.overlap_px}) must be less than half of tile_px ({self.tile_px})"
            raise ValueError(msg)
        return self


class SegmentConfig(StrictModel):
    engine: str = Field("classical", description="Segmentation engine: classical | unet.")
    backend: Backend = Field(Backend.AUTO, description="Where engines and kernels run: auto | cpu | cuda | tensorrt.")
    classical: ClassicalConfig = Field(default_factory=ClassicalConfig)
    unet: UnetConfig = Field(default_factory=UnetConfig)


class OodAction(str, enum.Enum):
    ERROR = "error"
    WARN = "warn"


class OodConfig(StrictModel):
    """Frames unlike those the engine was built for (`inspectd.ood`): what they become."""

    action: OodAction = Field(
        OodAction.ERROR,
        description="What a frame outside the engine's training envelope becomes: error = an ERROR verdict whose "
        "reason names the statistics outside it (never a silent PASS); warn = its PASS/FAIL stands, flagged "
        "out_of_distribution, with a warning in the reason and the result file.",
    )
    envelope: Path | None = Field(
        None,
        description="Envelope JSON (or a model card with an `envelope` section) to compare frames with; null = the "
        "engine's own: inspectd/models/classical-envelope.json for classical, the model card's envelope for unet "
        "(a model without one falls back to the classical envelope, with a warning at start-up).",
    )


class TrustConfig(StrictModel):
    """How far a verdict can be trusted: every analysis carries `confidence` and `out_of_distribution`."""

    ood: OodConfig = Field(default_factory=OodConfig)


class MeasureConfig(StrictModel):
    min_region_area_px: int = Field(
        30, ge=1, description="Regions smaller than this are left out of the region table and counts (noise)."
    )


class RuleOp(str, enum.Enum):
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="


class Rule(StrictModel):
    metric: Literal[RULE_METRICS] = Field(description="A measured metric, e.g. porosity_pct.")  # type: ignore[valid-type]
    op: RuleOp = Field(description="The comparison that must hold for PASS.")
    limit: float = Field(description="Limit in the metric's unit.")


def _default_rules() -> list[Rule]:
    return [
        Rule(metric="porosity_pct", op=RuleOp.LE, limit=5.0),
        Rule(metric="unmelted_fraction_pct", op=RuleOp.LE, limit=25.0),
    ]


# ---- daemon: sources ------------------------------------------------------------------


class FolderSourceConfig(StrictModel):
    """A watched folder (inotify, or polling for network shares); never drops, it waits."""

    kind: Literal["folder"] = "folder"
    id: str = Field("folder", pattern=r"^[A-Za-z0-9_.-]+$", description="Source id in verdicts and status.")
    path: Path = Field(description="Folder to watch.")
    move_done: bool = Field(True, description="Move processed files to <state_dir>/done (false: leave in place).")
    include: list[str] = Field(
        ["*.png", "*.tif", "*.tiff", "*.jpg", "*.jpeg", "*.bmp"], description="Glob patterns taken (case-insensitive)."
    )
    exclude: list[str] = Field(default_factory=list, description="Glob patterns never taken (hidden, *.part, *.tmp always are).")
    recursive: bool = Field(False, description="Watch sub-folders too.")
    polling: bool = Field(False, description="Poll instead of inotify (network shares).")
    poll_interval_s: float = Field(1.0, gt=0.0, description="Polling period, seconds.")
    stable_s: float = Field(0.5, ge=0.0, description="Size and mtime must stay unchanged this long before a file is taken.")
    max_open_wait_s: float = Field(30.0, ge=0.0, description="A file written without a close event is taken after this long.")
    rescan_interval_s: float = Field(10.0, gt=0.0, description="Full rescan period (inotify drops events under bursts).")
    part_id_pattern: str | None = Field(
        None, description="Regex with a (?P<part>...) group applied to the file name; null = the file stem."
    )
    buffer_size: int = Field(8, ge=1, le=10_000, description="Files read ahead of the pipeline.")


class CameraSourceFields(StrictModel):
    id: str = Field("camera", pattern=r"^[A-Za-z0-9_.-]+$", description="Source id in verdicts and status.")
    mode: Literal["free_run", "triggered"] = Field("free_run", description="free_run (fps-capped) or triggered.")
    fps_cap: float | None = Field(None, gt=0.0, description="Most frames per second handed on in free-run.")
    frame_timeout_s: float = Field(2.0, gt=0.0, description="Longest wait for one frame.")
    lost_after_timeouts: int = Field(3, ge=1, description="Frame timeouts in a row that count as camera lost.")
    trigger_retries: int = Field(1, ge=0, le=10, description="Triggered: trigger again this many times when no complete "
                                 "frame came; frame_timeout_s is shared out evenly between the tries.")
    trigger_endpoint: str = Field("tcp://127.0.0.1:5560", description="ZeroMQ REP endpoint for trigger messages.")
    max_pending_triggers: int = Field(64, ge=1, description="Triggers queued beyond this are refused.")
    reconnect_initial_s: float = Field(0.5, gt=0.0, description="First reconnect back-off, seconds.")
    reconnect_max_s: float = Field(30.0, gt=0.0, description="Longest reconnect back-off, seconds.")
    buffer_size: int = Field(4, ge=1, le=1000, description="Frames queued; free-run drops the OLDEST beyond it.")


class OpenCVSourceConfig(CameraSourceFields):
    """cv2.VideoCapture: device index, V4L2 path, video file or RTSP URL."""

    kind: Literal["opencv"] = "opencv"
    device: int | str = Field(0, description="Device index, /dev/videoN, file path or rtsp:// URL.")
    backend: Literal["any", "v4l2", "ffmpeg", "gstreamer"] = Field("any", description="VideoCapture API.")
    at_end: Literal["end", "loop"] = Field("end", description="For files: stop or loop at the end.")
    width: int | None = Field(None, ge=1, description="Requested frame width.")
    height: int | None = Field(None, ge=1, description="Requested frame height.")
    camera_fps: float | None = Field(None, gt=0.0, description="Frame rate requested from the device.")


class AravisSourceConfig(CameraSourceFields):
    """GenICam / GigE Vision through Aravis (apt: gir1.2-aravis-0.8; pip: PyGObject)."""

    kind: Literal["aravis"] = "aravis"
    camera_id: str | None = Field(None, description="Device id or IP address; null = the first camera found.")
    pixel_format: Literal["Mono8", "Mono10", "Mono12", "Mono14", "Mono16"] = Field("Mono8", description="Pixel format.")
    exposure_us: float | None = Field(None, gt=0.0, description="Exposure time, microseconds (null = camera's).")
    gain_db: float | None = Field(None, description="Gain, dB (null = camera's).")
    packet_size: int | None = Field(None, ge=576, description="GigE packet size (null = negotiate).")
    n_buffers: int = Field(8, ge=2, description="Stream buffers.")


SourceConfig = Annotated[
    Union[FolderSourceConfig, OpenCVSourceConfig, AravisSourceConfig],  # noqa: UP007
    Field(discriminator="kind"),
]


# ---- daemon: pipeline, outputs, service -----------------------------------------------


class PipelineConfig(StrictModel):
    workers: int = Field(1, ge=1, le=64, description="Analysis threads (numba kernels and ONNX release the GIL).")
    queue_size: int = Field(4, ge=1, le=1000, description="Frames waiting between acquisition and analysis.")
    stall_after_s: float = Field(60.0, gt=0.0, description="No progress this long with work pending = stalled: "
                                 "the systemd watchdog ping stops.")
    shutdown_grace_s: float = Field(10.0, ge=0.0, description="On SIGTERM, time to finish frames in flight.")


class PublishConfig(StrictModel):
    bind: list[str] = Field(["tcp://127.0.0.1:5556"], min_length=1, description="PUB endpoints for verdicts.")
    heartbeat_interval_s: float = Field(1.0, gt=0.0, le=60.0, description="heartbeat.<station> period, seconds.")
    sndhwm: int = Field(10_000, ge=1, description="Messages queued per subscriber before PUB drops (replay fills gaps).")


class ControlConfig(StrictModel):
    bind: str = Field("tcp://127.0.0.1:5557", description="REQ/REP control endpoint: status, reload, replay.")


class JournalConfig(StrictModel):
    retention_days: float | None = Field(90.0, gt=0.0, description="Verdicts older than this are pruned (null = keep).")
    retention_rows: int | None = Field(1_000_000, ge=1, description="At most this many verdicts kept (null = no cap).")
    lock_timeout_s: float = Field(30.0, gt=0.0, description="How long a journal write waits for another process's "
                                  "lock (a backup, an sqlite3 shell) before it fails; the verdict is then held back "
                                  "and retried, and the failure reported on error.<station>.")


class CurveConfig(StrictModel):
    enabled: bool = Field(False, description="Encrypt and authenticate the PUB and control sockets with CurveZMQ.")
    server_secret_key_file: Path | None = Field(None, description="Server key pair (zmq.auth secret-key file).")
    allowed_clients_dir: Path | None = Field(None, description="Folder of allowed clients' public key files.")

    @model_validator(mode="after")
    def _verify_files(self) -> CurveConfig:
        if self.enabled and (self.server_secret_key_file is None or self.allowed_clients_dir is None):
            msg = "curve.enabled needs server_secret_key_file and allowed_clients_dir"
            raise ValueError(msg)
        return self


class MetricsConfig(StrictModel):
    enabled: bool = Field(True, description="Serve Prometheus metrics over HTTP.")
    host: str = Field("127.0.0.1", description="Listen address (loopback by default).")
    port: int = Field(9108, ge=0, le=65535, description="Listen port (0 = any free port).")


class Config(StrictModel):
    station: str = Field("station-1", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
                         description="Station name, used in message topics and reports.")
    um_per_px: float = Field(1.0, gt=0.0, le=1000.0, description="Micrometres per pixel of the microscope set-up.")
    log_level: LogLevel = Field(LogLevel.INFO, description="Log level of structured log lines.")
    input: InputConfig = Field(default_factory=InputConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    segment: SegmentConfig = Field(default_factory=SegmentConfig)
    measure: MeasureConfig = Field(default_factory=MeasureConfig)
    trust: TrustConfig = Field(default_factory=TrustConfig)
    rules: list[Rule] = Field(default_factory=_default_rules, description="All must hold for PASS.")
    state_dir: Path = Field(Path("inspectd-state"), description="Journal, done/ and quarantine/ live here.")
    sources: list[SourceConfig] = Field(default_factory=list, description="Frame sources of `inspectd run`.")
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)
    journal: JournalConfig = Field(default_factory=JournalConfig)
    curve: CurveConfig = Field(default_factory=CurveConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)


def parse_object(raw: Any, *, yaml_text: str | None = None, origin: str = "<config>") -> Config:
    """Validate an already-parsed mapping; `yaml_text` lets errors point at a line."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        msg = f"{origin}: the top level must be a mapping of keys, got {type(raw).__name__}"
        raise ConfigError(msg)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, yaml_text, origin)) from exc


def parse(text: str, *, origin: str = "<config>") -> Config:
    """Parse and validate YAML text."""
    return parse_object(parse_yaml(text, origin=origin), yaml_text=text, origin=origin)


def load(path: str | Path | None) -> Config:
    """Load a config file; `None` gives the built-in defaults."""
    if path is None:
        return Config()
    return parse(read_text(path, "config file"), origin=str(path))


def read_text(path: str | Path, what: str) -> str:
    """A settings file's text (config, register map, node map), or ConfigError naming it."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        msg = f"{path}: cannot read {what}: {exc.strerror or exc}"
        raise ConfigError(msg) from exc


def parse_yaml(text: str, *, origin: str, kind: str = "YAML") -> Any:
    """YAML (of which JSON is a subset) to Python objects, or ConfigError naming the origin."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        msg = f"{origin}: not valid {kind}: {exc}"
        raise ConfigError(msg) from exc


def _describe(exc: ValidationError, yaml_text: str | None, origin: str) -> str:
    lines = []
    root = _compose(yaml_text)
    for err in exc.errors():
        loc = _without_union_tags(err["loc"])
        key_path = ".".join(str(part) for part in loc) or "<top>"
        where = _yaml_line(root, loc)
        at = f" (line {where})" if where else ""
        shown = "" if err["type"] == "missing" else f" = {err.get('input')!r}"
        lines.append(f"{origin}{at}: {key_path}{shown}: {err['msg']}")
    return "\n".join(lines)


def _without_union_tags(loc: tuple) -> tuple:
    """pydantic puts the discriminator value into the path (sources.0.folder.path); drop it."""
    tags = {"folder", "opencv", "aravis"}
    return tuple(part for i, part in enumerate(loc) if not (part in tags and i > 0 and isinstance(loc[i - 1], int)))


def _compose(yaml_text: str | None) -> yaml.Node | None:
    if not yaml_text:
        return None
    try:
        return yaml.compose(yaml_text)
    except yaml.YAMLError:
        return None


def _yaml_line(node: yaml.Node | None, loc: tuple) -> int | None:
    """1-based line of the deepest node of `loc` that exists in the YAML document."""
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            entry = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if entry is None:
                break
            line = entry[0].start_mark.line + 1
            node = entry[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line
