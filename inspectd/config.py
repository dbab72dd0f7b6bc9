"""The configuration model: one strict pydantic tree, loaded from YAML.

Every field has a default and a description, so `config.yaml` at the top of the
repository documents the same keys this module enforces. A validation failure becomes
one `ConfigError` naming the key path, the YAML line, the value and the reason.

Everything `inspectd run` can know from the file alone is checked here, so that
`inspectd validate-config` (which calls the same `load`) and a start-up agree: numbers are
finite and inside sane ranges, ZeroMQ endpoints are parsed, regular expressions are compiled
and checked for runaway backtracking, source ids and bound addresses are unique. The file is
read with limits (size, nesting, alias expansion, duplicate keys), since it is YAML that a
person, a deployment tool or an attacker with write access to /etc may have produced.

Example:
    >>> cfg = parse("station: s1\\num_per_px: 0.8\\n")
    >>> cfg.um_per_px
    0.8
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from inspectd.errors import ConfigError
from inspectd.regex_safety import check_regex

logger = logging.getLogger(__name__)

SectionT = TypeVar("SectionT", bound=BaseModel)

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
    """Base of every config section: unknown keys are refused, values are checked on assignment.

    No float anywhere may be infinite or NaN: `.inf` seconds of grace never ends a shutdown,
    and a rule `limit: .nan` is false whatever the measurement (every comparison with NaN is).
    A path may not hold a NUL character, which no file system accepts.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _verify_path_has_no_nul(cls, value: Any) -> Any:
        if isinstance(value, Path) and "\x00" in str(value):
            msg = "a path cannot contain a NUL character"
            raise ValueError(msg)
        return value


def _verify_endpoint(endpoint: str) -> str:
    """A ZeroMQ endpoint the daemon can bind: tcp://HOST:PORT, ipc://PATH or inproc://NAME.

    Checked here rather than at bind time so that a typo is a config error (exit 2, and
    `validate-config` says so) instead of a start-up failure that systemd would retry.
    HOST is `*`, an IP address ([...] for IPv6), a host name or an interface name; PORT is
    1-65535, or `*` / 0 for any free port.

    >>> _verify_endpoint("tcp://127.0.0.1:5556")
    'tcp://127.0.0.1:5556'
    >>> _verify_endpoint("tcp://host:notaport")
    Traceback (most recent call last):
    ...
    ValueError: the port must be 1-65535, or * / 0 for any free port
    """
    transport, separator, address = endpoint.partition("://")
    if not separator:
        msg = "not a ZeroMQ endpoint: use tcp://HOST:PORT, ipc://PATH or inproc://NAME"
        raise ValueError(msg)
    if transport == "tcp":
        host, colon, port = address.rpartition(":")
        if not colon or not host:
            msg = "a tcp endpoint is tcp://HOST:PORT"
            raise ValueError(msg)
        if port not in ("*", "0") and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            msg = "the port must be 1-65535, or * / 0 for any free port"
            raise ValueError(msg)
        _verify_host(host.removeprefix("[").removesuffix("]") if host.startswith("[") else host)
    elif transport == "ipc":
        # sockaddr_un holds 107 bytes and a NUL: a longer path cannot be bound at all.
        if not address or "\x00" in address or len(address.encode("utf-8", "surrogateescape")) > 107:
            msg = "an ipc endpoint is ipc://PATH with a path of 1-107 bytes"
            raise ValueError(msg)
    elif transport == "inproc":
        if not address:
            msg = "an inproc endpoint needs a name"
            raise ValueError(msg)
    else:
        msg = f"transport {transport!r} is not one the daemon binds (tcp, ipc, inproc)"
        raise ValueError(msg)
    return endpoint


_HOST_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})")


def _verify_host(host: str) -> str:
    """`*`, an IP address, or a host / interface name (letters, digits, `.`, `-`, `_`)."""
    if host == "*":
        return host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        all_digits = host.replace(".", "").isdigit()  # 999.1.1.1 is a bad address, not a name
        if all_digits or not _HOST_NAME.fullmatch(host):
            msg = f"{host!r} is not an IP address, host name or interface name"
            raise ValueError(msg) from None
    return host


def _verify_http_host(host: str) -> str:
    if host == "*":  # ZeroMQ's wildcard; an HTTP server would look the name "*" up and fail at start
        msg = "'*' is not an address to listen on: use 0.0.0.0 (or ::) for every address"
        raise ValueError(msg)
    return _verify_host(host)


def _verify_part_id_pattern(pattern: str) -> str:
    check_regex(pattern, required_groups=("part",))
    return pattern


ZmqEndpoint = Annotated[str, AfterValidator(_verify_endpoint)]
# A regular expression matched against every file name: compiled and checked for runaway
# backtracking here, so a pattern that could stall the folder source never starts.
PartIdPattern = Annotated[str, AfterValidator(_verify_part_id_pattern)]


class LogLevel(str, enum.Enum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


class InputConfig(StrictModel):
    max_pixels: int = Field(
        100_000_000,
        ge=1,
        le=1 << 36,
        description="Largest width*height accepted, checked on the file header BEFORE decoding "
        "(decompression-bomb guard).",
    )
    max_file_bytes: int = Field(
        1_000_000_000, ge=1, le=1 << 40, description="Largest input file size accepted, in bytes."
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
    compactness: float = Field(10.0, gt=0.0, le=10_000.0, description="SLIC compactness (higher = squarer superpixels).")


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


class SegmentFields(StrictModel):
    """`segment:` without the engines' sections: `SegmentConfig` adds one per engine (`segment_config_class`)."""

    engine: str = Field("classical", description="Segmentation engine: classical | unet (or an engine plugin's key).")
    backend: Backend = Field(Backend.AUTO, description="Where engines and kernels run: auto | cpu | cuda | tensorrt.")


class OodAction(str, enum.Enum):
    ERROR = "error"
    WARN = "warn"


class OodConfig(StrictModel):
    """Frames unlike those the engine was built for (`inspectd.analysis.ood`): what they become."""

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
        30, ge=1, le=1 << 36, description="Regions smaller than this are left out of the region table and counts (noise)."
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


# The source sections (`kind: folder | opencv | aravis`) are declared by the source plugins
# (`inspectd.sources.registry`); `Config.sources` is their union, `_source_union`.


# ---- daemon: pipeline, outputs, service -----------------------------------------------


class PipelineConfig(StrictModel):
    workers: int = Field(1, ge=1, le=64, description="Analysis threads (numba kernels and ONNX release the GIL).")
    queue_size: int = Field(4, ge=1, le=1000, description="Frames waiting between acquisition and analysis.")
    stall_after_s: float = Field(60.0, ge=1.0, le=86_400.0, description="No progress this long with work pending = stalled: "
                                 "the systemd watchdog ping stops.")
    shutdown_grace_s: float = Field(10.0, ge=0.0, le=600.0, description="On SIGTERM, time to finish frames in flight "
                                    "(keep it below the unit's TimeoutStopSec).")


class PublishConfig(StrictModel):
    bind: list[ZmqEndpoint] = Field(["tcp://127.0.0.1:5556"], min_length=1, max_length=16,
                                    description="PUB endpoints for verdicts.")
    heartbeat_interval_s: float = Field(1.0, ge=0.1, le=60.0, description="heartbeat.<station> period, seconds.")
    sndhwm: int = Field(10_000, ge=1, le=10_000_000, description="Messages queued per subscriber before PUB drops (replay fills gaps).")


class ControlConfig(StrictModel):
    bind: ZmqEndpoint = Field("tcp://127.0.0.1:5557", description="REQ/REP control endpoint: status, reload, replay.")


class JournalConfig(StrictModel):
    retention_days: float | None = Field(90.0, gt=0.0, le=36_500.0, description="Verdicts older than this are pruned (null = keep).")
    retention_rows: int | None = Field(1_000_000, ge=1, le=10**12, description="At most this many verdicts kept (null = no cap).")
    lock_timeout_s: float = Field(30.0, ge=0.01, le=3600.0, description="How long a journal write waits for another process's "
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
    host: Annotated[str, AfterValidator(_verify_http_host)] = Field(
        "127.0.0.1", description="Listen address (loopback by default).")
    port: int = Field(9108, ge=0, le=65535, description="Listen port (0 = any free port).")


def parse_http_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 as `[::1]:8080`) -> (host, port); the one spelling of `--http` and `http.listen`.

    >>> parse_http_listen("127.0.0.1:8080"), parse_http_listen("[::1]:0")
    (('127.0.0.1', 8080), ('::1', 0))
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        msg = f"{text!r} is not HOST:PORT (for example 127.0.0.1:8080; IPv6 as [::1]:8080)"
        raise ValueError(msg)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return _verify_http_host(host), int(port_text)


def is_loopback_host(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, `localhost`).

    >>> is_loopback_host("127.0.0.1"), is_loopback_host("localhost"), is_loopback_host("0.0.0.0")
    (True, True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # an interface or host name: it may be reachable from the network
        return False


def _verify_http_listen(text: str) -> str:
    parse_http_listen(text)
    return text


HttpListen = Annotated[str, AfterValidator(_verify_http_listen)]


class HttpConfig(StrictModel):
    """The station web UI (`inspectd run --http`, `inspectd ui`)."""

    listen: HttpListen | None = Field(None, description="HOST:PORT of the web UI (null = no web UI). Any "
                                      "address other than loopback needs a token.")
    token: str | None = Field(None, min_length=16, max_length=256, pattern=r"^[!-~]+$",
                              description="Access token (at least 16 printable characters): every request but "
                                          "/healthz then needs it (header or login cookie).")
    token_file: Path | None = Field(None, description="File holding the access token (first line), instead of "
                                    "`token`: keeps the secret out of the config file.")
    overlay_cache_mb: int = Field(256, ge=1, le=1_000_000, description="Disk space for the UI's overlay images "
                                  "under the state dir; the oldest are removed beyond it.")
    live_frames: int = Field(50, ge=1, le=10_000, description="Latest frames per source the Live page keeps.")
    shift_starts: list[Annotated[str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]] = Field(
        default_factory=lambda: ["06:00", "14:00", "22:00"], min_length=1, max_length=24,
        description="Local start times (HH:MM) of the shifts: the Live page counts verdicts since the latest one.")

    @model_validator(mode="after")
    def _verify_token_for_network(self) -> HttpConfig:
        if self.token is not None and self.token_file is not None:
            msg = "set http.token or http.token_file, not both"
            raise ValueError(msg)
        if self.listen is not None:
            verify_http_token_for(self.listen, self.token is not None or self.token_file is not None)
        return self


def verify_http_token_for(listen: str, has_token: bool) -> None:
    """A web UI reachable from the network must not be open to anyone on it."""
    host, _ = parse_http_listen(listen)
    if not has_token and not is_loopback_host(host):
        msg = (f"the web UI would listen on {listen}, which other machines can reach, without a token: "
               f"set http.token or http.token_file (or listen on 127.0.0.1)")
        raise ValueError(msg)


# ---- the sections plugins declare ------------------------------------------------------


class _PluginTypes:
    """The config types built from the plugin registries, resolved when first needed.

    `Config` names them as `_plugin_types.SourceConfig` / `.SegmentConfig`. While this module
    is still being imported they raise NameError, so pydantic leaves `Config` incomplete;
    the first time `Config` is used, pydantic completes it, these names resolve, and only
    then are the source and engine plugins imported. So importing `inspectd.config` stays
    cheap (no OpenCV, numba or ONNX Runtime), and a plugin may import this module.
    """

    ready = False

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if not _PluginTypes.ready:
            raise NameError(name)
        if name == "SourceConfig":
            return _source_union()
        if name == "SegmentConfig":
            return segment_config_class()
        raise AttributeError(name)


_plugin_types = _PluginTypes()

# Names this module still answers for, declared by a plugin now: name -> (module, attribute).
_DECLARED_BY_PLUGINS = {
    "ClassicalConfig": ("inspectd.analysis.engines.classical", "ClassicalConfig"),
    "UnetConfig": ("inspectd.analysis.engines.unet", "UnetConfig"),
    "FolderSourceConfig": ("inspectd.sources.folder", "FolderSourceConfig"),
    "CameraSourceFields": ("inspectd.sources.camera", "CameraSourceFields"),
    "OpenCVSourceConfig": ("inspectd.sources.opencv_camera", "OpenCVSourceConfig"),
    "AravisSourceConfig": ("inspectd.sources.aravis_camera", "AravisSourceConfig"),
}


def __getattr__(name: str) -> Any:
    """`SegmentConfig`, `SourceConfig` and the plugins' own sections, built or imported on first use."""
    if name == "SegmentConfig":
        return segment_config_class()
    if name == "SourceConfig":
        return _source_union()
    if name in _DECLARED_BY_PLUGINS:
        import importlib

        module, attribute = _DECLARED_BY_PLUGINS[name]
        return getattr(importlib.import_module(module), attribute)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


@functools.cache
def segment_config_class() -> type[SegmentFields]:
    """`segment:`: `engine`, `backend` and one section per engine plugin that declares a config.

    The section is named after the engine's KEY (`segment.classical`, `segment.unet`) and
    holds the engine's `config_class`, all defaults when the file leaves it out.

    >>> sorted(segment_config_class().model_fields)
    ['backend', 'classical', 'engine', 'unet']
    """
    from inspectd.analysis.engines.registry import ENGINES

    sections: dict[str, Any] = {}
    for key, engine_cls in ENGINES.items():
        section = engine_cls.config_class
        if section is None:
            continue
        if key in SegmentFields.model_fields or not key.isidentifier():
            logger.error("engine %r cannot have a config section segment.%s; its settings are ignored", key, key)
            continue
        sections[key] = (section, Field(default_factory=section, description=f"Settings of the {key} engine."))
    return create_model("SegmentConfig", __base__=SegmentFields, __module__=__name__,
                        __doc__="Segmentation: which engine, where it runs, and each engine's settings.", **sections)


@functools.cache
def _source_union() -> Any:
    """The `sources:` entry: the source plugins' config sections, told apart by `kind`."""
    from inspectd.sources.registry import SOURCES

    sections = tuple(cls.config_class for cls in SOURCES.values() if cls.config_class is not None)
    if len(sections) == 1:
        return sections[0]
    return Annotated[Union[sections], Field(discriminator="kind")]  # noqa: UP007


def source_kinds() -> tuple[str, ...]:
    """The `kind:` values a `sources:` entry may have here."""
    from inspectd.sources.registry import SOURCES

    return tuple(key for key, cls in SOURCES.items() if cls.config_class is not None)


class Config(StrictModel):
    station: str = Field("station-1", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
                         description="Station name, used in message topics and reports.")
    um_per_px: float = Field(1.0, gt=0.0, le=1000.0, description="Micrometres per pixel of the microscope set-up.")
    log_level: LogLevel = Field(LogLevel.INFO, description="Log level of structured log lines.")
    input: InputConfig = Field(default_factory=InputConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    segment: _plugin_types.SegmentConfig = Field(default_factory=lambda: segment_config_class()())
    measure: MeasureConfig = Field(default_factory=MeasureConfig)
    trust: TrustConfig = Field(default_factory=TrustConfig)
    rules: list[Rule] = Field(default_factory=_default_rules, description="All must hold for PASS.")
    state_dir: Path = Field(Path("inspectd-state"), description="Journal, done/ and quarantine/ live here.")
    sources: list[_plugin_types.SourceConfig] = Field(default_factory=list,
                                                      description="Frame sources of `inspectd run`.")
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)
    journal: JournalConfig = Field(default_factory=JournalConfig)
    curve: CurveConfig = Field(default_factory=CurveConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)

    @model_validator(mode="after")
    def _verify_daemon_wiring(self) -> Config:
        verify_unique_source_ids(self)
        verify_distinct_listen_addresses(self)
        return self


def verify_unique_source_ids(cfg: Config) -> None:
    """Verdicts, status and metrics name a source by its id: two sources with one id cannot be told apart.

    Several folder sources left at the default id `folder` are the usual way to get here.
    """
    seen: dict[str, int] = {}
    for index, source in enumerate(cfg.sources):
        if source.id in seen:
            msg = (f"sources.{index}.id: {source.id!r} is already the id of sources.{seen[source.id]}; "
                   "give each source its own id")
            raise ValueError(msg)
        seen[source.id] = index


def verify_distinct_listen_addresses(cfg: Config) -> None:
    """No two sockets the daemon binds may ask for the same address.

    The second bind would fail at start-up with "address in use", which looks like a
    condition that clears (exit 1, systemd retries for ever) but never does. Ports `*` / 0
    (any free port) never clash; `*` or 0.0.0.0 clashes with every host on the same port.
    """
    wanted: list[tuple[str, str]] = [(f"publish.bind.{i}", e) for i, e in enumerate(cfg.publish.bind)]
    wanted.append(("control.bind", cfg.control.bind))
    wanted += [(f"sources.{i}.trigger_endpoint", s.trigger_endpoint) for i, s in enumerate(cfg.sources)
               if getattr(s, "mode", None) == "triggered"]
    if cfg.metrics.enabled and cfg.metrics.port:
        wanted.append(("metrics", f"tcp://{cfg.metrics.host}:{cfg.metrics.port}"))
    if cfg.http.listen is not None:
        http_host, http_port = parse_http_listen(cfg.http.listen)
        if http_port:
            bracketed = f"[{http_host}]" if ":" in http_host else http_host
            wanted.append(("http.listen", f"tcp://{bracketed}:{http_port}"))
    taken: list[tuple[str, str, str]] = []  # (key, transport, address)
    for key, endpoint in wanted:
        transport, _, address = endpoint.partition("://")
        for other_key, other_transport, other_address in taken:
            if transport == other_transport and _same_address(transport, address, other_address):
                msg = f"{key} {endpoint!r} asks for the address {other_key} binds already"
                raise ValueError(msg)
        taken.append((key, transport, address))


def _same_address(transport: str, address: str, other: str) -> bool:
    if transport != "tcp":
        return address == other
    host, _, port = address.rpartition(":")
    other_host, _, other_port = other.rpartition(":")
    if port in ("*", "0") or port != other_port:
        return False
    wildcard = {"*", "0.0.0.0", "[::]", "::"}  # noqa: S104 - names of the wildcard address, not a bind
    return host == other_host or host in wildcard or other_host in wildcard


def parse_object(raw: Any, *, yaml_text: str | None = None, origin: str = "<config>") -> Config:
    """Validate an already-parsed mapping; `yaml_text` lets errors point at a line.

    This is the one gate every config goes through (a file, `inspectd run`'s flags, a
    reload), so `validate-config` and a start-up refuse exactly the same configs.
    """
    return _validated(raw, lambda: compose_yaml(yaml_text), origin)


def _validated(raw: Any, root: Callable[[], yaml.Node | None], origin: str) -> Config:
    """`parse_object`; `root` gives the YAML node tree for line numbers, only when a message needs one."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        msg = f"{origin}: the top level must be a mapping of keys, got {type(raw).__name__}"
        raise ConfigError(msg)
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, root(), origin)) from exc
    _verify_engine_known(cfg, root, origin)
    return cfg


def validate_section(section: type[SectionT], raw: dict[str, Any], *, origin: str) -> SectionT:
    """Validate one section on its own (a source built in code rather than from a file).

    The same rules as in a file, and a `ConfigError` worded as `parse_object` words it:
    origin, key path, value, reason.

    >>> validate_section(InputConfig, {"max_file_bytes": 0}, origin="input")
    Traceback (most recent call last):
    ...
    inspectd.errors.ConfigError: input: max_file_bytes = 0: Input should be greater than or equal to 1
    """
    try:
        return section.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, None, origin)) from exc


def parse(text: str, *, origin: str = "<config>") -> Config:
    """Parse and validate YAML text."""
    raw, root = _load_yaml(text, origin=origin, kind="YAML")
    return _validated(raw, lambda: root, origin)


def load(path: str | Path | None) -> Config:
    """Load a config file; `None` gives the built-in defaults.

    `inspectd validate-config` and `inspectd run` both call this: what it accepts, a
    start-up accepts as far as the file can tell.
    """
    if path is None:
        return Config()
    return parse(read_text(path, "config file"), origin=str(path))


def _verify_engine_known(cfg: Config, root: Callable[[], yaml.Node | None], origin: str) -> None:
    """`segment.engine` names an engine of this installation, or says why its plugin is not usable."""
    from inspectd.analysis.engines.registry import ENGINES, REGISTRY

    name = cfg.segment.engine
    if name in ENGINES:
        return
    where = _yaml_line(root(), ("segment", "engine"))
    at = f" (line {where})" if where else ""
    failure = REGISTRY.unavailable(name)
    why = f" ({failure})" if failure is not None else ""
    msg = f"{origin}{at}: segment.engine = {name!r}: not an engine of this installation{why}; available: " + (
        ", ".join(ENGINES) or "(none)")
    raise ConfigError(msg)


# ---- reading settings files safely ----------------------------------------------------

MAX_SETTINGS_BYTES = 256 << 10
"""Largest settings file read (config, register map, node map): 25 times the shipped,
fully commented config.yaml. It bounds the time to read one (about a second for 256 KiB of
the tiniest tokens) and, since aliases may not expand a document beyond it either, the
memory of what is built."""

MAX_NESTING = 32
"""Deepest nesting of mappings and sequences; the deepest real key is 5 levels down, and the
YAML composer recurses once per level."""


# Events come from libyaml where PyYAML was built with it (its pure-Python scanner takes
# about 3 s for 256 KiB of tiny tokens, four times libyaml's); the nodes are composed here, in Python, so
# that the limits below apply either way.
try:
    from yaml.cyaml import CParser as _LibyamlParser
except ImportError:  # PyYAML built without libyaml
    _LibyamlParser = None
_EVENT_SOURCE = (_LibyamlParser,) if _LibyamlParser is not None else (
    yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser)


class _SettingsLoader(yaml.composer.Composer, *_EVENT_SOURCE, yaml.constructor.SafeConstructor,
                      yaml.resolver.Resolver):
    """PyYAML's safe loader with the limits a settings file needs.

    * Aliases: the document with every alias written out in full must stay within
      MAX_SETTINGS_BYTES, so a "billion laughs" file of a few hundred bytes (anchors
      referring to anchors, in sequences, mappings or merge keys) is refused while it is
      read, before anything is expanded. An alias inside its own anchor (a cycle) is refused.
    * Depth: at most MAX_NESTING levels.
    * Keys: a key twice in one mapping is refused with both lines. YAML requires unique keys
      and PyYAML would silently keep the last, so a second `rules:` lower down would win
      unseen. Merge keys (`<<: *defaults`) still override as YAML defines.
    * A scalar Python cannot build (an int of 5000 digits, the date 2026-13-45) is an error
      at its line instead of a ValueError.
    """

    def __init__(self, stream: str) -> None:
        if _LibyamlParser is not None:
            _LibyamlParser.__init__(self, stream)
        else:
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        self._depth = 0
        self._expanded: dict[int, int] = {}  # id(node) -> its size with aliases written out

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = super().compose_node(parent, index)
            if id(node) not in self._expanded:
                raise yaml.composer.ComposerError(
                    None, None, f"the alias *{event.anchor} is inside its own anchor", event.start_mark)
            return node
        self._depth += 1
        if self._depth > MAX_NESTING:
            raise yaml.composer.ComposerError(
                None, None, f"nested more than {MAX_NESTING} levels deep", self.peek_event().start_mark)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        size = self._expanded_size(node)
        if size > MAX_SETTINGS_BYTES:
            raise yaml.composer.ComposerError(
                None, None, f"its aliases expand it beyond {MAX_SETTINGS_BYTES // 1024} KiB", node.start_mark)
        self._expanded[id(node)] = size
        return node

    def _expanded_size(self, node: yaml.Node) -> int:
        if isinstance(node, yaml.ScalarNode):
            return max(1, len(node.value))
        children = [part for pair in node.value for part in pair] if isinstance(node, yaml.MappingNode) else node.value
        return 2 + sum(self._expanded[id(child)] for child in children)

    def compose_mapping_node(self, anchor: str | None) -> yaml.MappingNode:
        node = super().compose_mapping_node(anchor)
        first_seen: dict[tuple[str, str], yaml.Node] = {}
        for key, _value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            earlier = first_seen.setdefault((key.tag, key.value), key)
            if earlier is not key:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {_short(key.value)} (first at line {earlier.start_mark.line + 1})",
                    key.start_mark)
        return node

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:  # noqa: FBT001, FBT002 - PyYAML's signature
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as exc:
            shown = _short(node.value) if isinstance(node, yaml.ScalarNode) else "this value"
            raise yaml.constructor.ConstructorError(None, None, f"cannot read {shown}: {exc}", node.start_mark) from exc


def read_text(path: str | Path, what: str) -> str:
    """A settings file's text (config, register map, node map), or ConfigError naming it.

    At most MAX_SETTINGS_BYTES are read (a config pointed at a log file or /dev/zero is
    refused, not read to the end), and the bytes must be UTF-8 text.
    """
    try:
        with Path(path).open("rb") as file:
            raw = file.read(MAX_SETTINGS_BYTES + 1)
    except OSError as exc:
        msg = f"{path}: cannot read {what}: {exc.strerror or exc}"
        raise ConfigError(msg) from exc
    if len(raw) > MAX_SETTINGS_BYTES:
        msg = f"{path}: the {what} is larger than {MAX_SETTINGS_BYTES // 1024} KiB; is it the right file?"
        raise ConfigError(msg)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        msg = (f"{path} (line {line}): the {what} is not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
               "is it a binary file?")
        raise ConfigError(msg) from None


def parse_yaml(text: str, *, origin: str, kind: str = "YAML") -> Any:
    """YAML (of which JSON is a subset) to Python objects with `_SettingsLoader`'s limits, or ConfigError.

    Every error is one line naming the origin and the line, whatever the input.

    Example:
        >>> parse_yaml("a: &x [1, 2]\\nb: *x\\n", origin="m.yaml")
        {'a': [1, 2], 'b': [1, 2]}
        >>> parse_yaml("a: 1\\na: 2\\n", origin="m.yaml")
        Traceback (most recent call last):
        ...
        inspectd.errors.ConfigError: m.yaml (line 2, column 1): not valid YAML: duplicate key 'a' (first at line 1)
    """
    return _load_yaml(text, origin=origin, kind=kind)[0]


def _load_yaml(text: str, *, origin: str, kind: str) -> tuple[Any, yaml.Node | None]:
    """`parse_yaml`, also giving the node tree (kept for line numbers: a second parse costs as much)."""
    if len(text) > MAX_SETTINGS_BYTES:
        msg = f"{origin}: larger than {MAX_SETTINGS_BYTES // 1024} KiB; is it the right file?"
        raise ConfigError(msg)
    control = yaml.reader.Reader.NON_PRINTABLE.search(text)
    if control:
        line = text.count("\n", 0, control.start()) + 1
        msg = (f"{origin} (line {line}): not {kind} text: it holds the control character "
               f"U+{ord(control.group()):04X}; is it a binary file?")
        raise ConfigError(msg)
    loader = _SettingsLoader(text)
    try:
        root = loader.get_single_node()
        return (None if root is None else loader.construct_document(root)), root
    except yaml.YAMLError as exc:
        msg = f"{origin}{_yaml_error_position(exc)}: not valid {kind}: {_yaml_error_text(exc)}"
        raise ConfigError(msg) from exc
    finally:
        loader.dispose()


def compose_yaml(text: str | None) -> yaml.Node | None:
    """The node tree of `text` (for line numbers in messages), read with the same limits; None if it cannot be."""
    if not text:
        return None
    loader = _SettingsLoader(text)
    try:
        return loader.get_single_node()
    except (yaml.YAMLError, ValueError):
        return None
    finally:
        loader.dispose()


def _yaml_error_position(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""


def _yaml_error_text(exc: yaml.YAMLError) -> str:
    """PyYAML's message without its source excerpt and caret: one line."""
    if isinstance(exc, yaml.MarkedYAMLError):
        text = exc.problem or exc.context or "invalid"
        if exc.problem and exc.context:
            context_line = f" at line {exc.context_mark.line + 1}" if exc.context_mark is not None else ""
            text += f" ({exc.context}{context_line})"
    else:
        text = str(exc)
    return " ".join(text.split())


def _short(value: Any, limit: int = 60) -> str:
    """repr of a value, cut to `limit` characters: a message must stay one readable line."""
    shown = repr(value)
    return shown if len(shown) <= limit else f"{shown[:limit - 5]}...{shown[-2:]}"


MAX_ERRORS_SHOWN = 10


def _describe(exc: ValidationError, root: yaml.Node | None, origin: str) -> str:
    """One line per error (the first MAX_ERRORS_SHOWN): origin, YAML line, key path, value, reason."""
    lines = []
    errors = exc.errors()
    for err in errors[:MAX_ERRORS_SHOWN]:
        loc = _without_union_tags(err["loc"])
        reason = " ".join(str(err["msg"]).removeprefix("Value error, ").split())
        key_path = ".".join(str(part) if str(part).isprintable() else repr(part) for part in loc)
        if not key_path:  # a check across sections names the key itself: "sources.1.id: ..."
            named = re.match(r"([A-Za-z_]\w*(?:\.\w+)*)[ :]", reason)
            loc = tuple(int(p) if p.isdigit() else p for p in named.group(1).split(".")) if named else ()
        where = _yaml_line(root, loc)
        at = f" (line {where})" if where else ""
        shown = "" if err["type"] == "missing" or not key_path else f" = {_short(err.get('input'))}"
        if err["type"] == "union_tag_invalid" and loc and loc[0] == "sources":
            reason += _unusable_source_kind(err.get("ctx", {}).get("tag"))
        lines.append(f"{origin}{at}: {key_path + shown + ': ' if key_path else ''}{reason}")
    if len(errors) > MAX_ERRORS_SHOWN:
        lines.append(f"{origin}: ... and {len(errors) - MAX_ERRORS_SHOWN} more")
    return "\n".join(lines)


def _unusable_source_kind(kind: Any) -> str:
    """Why a `kind:` no plugin offers here is missing: its plugin's import failure, if it has one."""
    from inspectd.sources.registry import REGISTRY

    failure = REGISTRY.unavailable(kind) if isinstance(kind, str) else None
    return f"; {kind!r} is not usable here: {failure}" if failure is not None else ""


def _without_union_tags(loc: tuple) -> tuple:
    """pydantic puts the discriminator value into the path (sources.0.folder.path); drop it."""
    tags = set(source_kinds())
    return tuple(part for i, part in enumerate(loc) if not (part in tags and i > 0 and isinstance(loc[i - 1], int)))


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


_PluginTypes.ready = True  # from here on, the first use of Config imports the plugins
