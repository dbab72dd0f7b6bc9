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
from typing import Any, Literal

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
    OTSU = "otsu"
    FIXED = "fixed"
    ADAPTIVE = "adaptive"


class SlicImplementation(str, enum.Enum):
    SKIMAGE = "skimage"
    FAST_SLIC = "fast_slic"


class SlicConfig(StrictModel):
    enabled: bool = Field(False, description="Vote the class of each SLIC superpixel by majority.")
    implementation: SlicImplementation = Field(
        SlicImplementation.SKIMAGE, description="skimage (always there) or fast_slic (the [slic] extra)."
    )
    n_segments: int = Field(1000, ge=2, le=100_000, description="Approximate number of superpixels.")
    compactness: float = Field(10.0, gt=0.0, description="SLIC compactness (higher = squarer superpixels).")


class ClassicalConfig(StrictModel):
    """The seed's traditional path: threshold + morphology (+ optional SLIC vote)."""

    threshold: ThresholdMethod = Field(ThresholdMethod.OTSU, description="How unmelted (bright) pixels are split off.")
    fixed_threshold: int = Field(128, ge=0, le=65535, description="Grey level for threshold: fixed.")
    adaptive_block_size: int = Field(51, ge=3, description="Odd window size for threshold: adaptive, pixels.")
    adaptive_offset: float = Field(0.0, description="Subtracted from the local mean for threshold: adaptive.")
    smooth_sigma_px: float = Field(
        2.0, ge=0.0, le=50.0, description="Gaussian sigma applied before thresholding so grainy interiors stay whole."
    )
    pore_level: float = Field(
        0.25, gt=0.0, lt=1.0,
        description="Pores are pixels darker than this fraction of the Otsu threshold (near-black).",
    )
    pore_min_solidity: float = Field(
        0.6, ge=0.0, le=1.0, description="Dark regions less solid than this are cracks, not pores (kept as melted)."
    )
    open_radius_px: int = Field(2, ge=0, le=50, description="Morphological opening radius (removes specks).")
    close_radius_px: int = Field(2, ge=0, le=50, description="Morphological closing radius (fills gaps).")
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


class SegmentConfig(StrictModel):
    engine: str = Field("classical", description="Segmentation engine: classical | unet.")
    backend: Backend = Field(Backend.AUTO, description="Where engines and kernels run: auto | cpu | cuda | tensorrt.")
    classical: ClassicalConfig = Field(default_factory=ClassicalConfig)


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


class Config(StrictModel):
    station: str = Field("station-1", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
                         description="Station name, used in message topics and reports.")
    um_per_px: float = Field(1.0, gt=0.0, le=1000.0, description="Micrometres per pixel of the microscope set-up.")
    log_level: LogLevel = Field(LogLevel.INFO, description="Log level of structured log lines.")
    input: InputConfig = Field(default_factory=InputConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    segment: SegmentConfig = Field(default_factory=SegmentConfig)
    measure: MeasureConfig = Field(default_factory=MeasureConfig)
    rules: list[Rule] = Field(default_factory=_default_rules, description="All must hold for PASS.")


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
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        msg = f"{origin}: not valid YAML: {exc}"
        raise ConfigError(msg) from exc
    return parse_object(raw, yaml_text=text, origin=origin)


def load(path: str | Path | None) -> Config:
    """Load a config file; `None` gives the built-in defaults."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        msg = f"{path}: cannot read config file: {exc.strerror or exc}"
        raise ConfigError(msg) from exc
    return parse(text, origin=str(path))


def _describe(exc: ValidationError, yaml_text: str | None, origin: str) -> str:
    lines = []
    for err in exc.errors():
        key_path = ".".join(str(part) for part in err["loc"]) or "<top>"
        where = _yaml_line(yaml_text, err["loc"]) if yaml_text else None
        at = f" (line {where})" if where else ""
        value = err.get("input")
        shown = "" if err["type"] == "missing" else f" = {value!r}"
        lines.append(f"{origin}{at}: {key_path}{shown}: {err['msg']}")
    return "\n".join(lines)


def _yaml_line(yaml_text: str, loc: tuple) -> int | None:
    """1-based line of the deepest node of `loc` that exists in the YAML text."""
    try:
        node = yaml.compose(yaml_text)
    except yaml.YAMLError:
        return None
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if k.value == str(part)), None)
            key = next((k for k, v in node.value if k.value == str(part)), None)
            if match is None:
                break
            line = key.start_mark.line + 1
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line
