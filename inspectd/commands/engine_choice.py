"""`--engine` / `--model` on top of a loaded config, the same for `analyze` and `regrade`.

Why one place: both commands promise that `--model` runs that U-Net file and implies
`--engine unet`, and that asking for another engine with it is a usage error; two copies of
that rule would drift.
"""

from __future__ import annotations

from pathlib import Path

from inspectd.config import Config


def apply_engine_options(cfg: Config, engine: str | None, model: str | None) -> str | None:
    """Set `segment.engine` (and `segment.unet.model`) from the flags; the usage error, if any.

    >>> from inspectd import config
    >>> cfg = config.load(None)
    >>> apply_engine_options(cfg, None, "my.onnx"), cfg.segment.engine, cfg.segment.unet.model.name
    (None, 'unet', 'my.onnx')
    >>> apply_engine_options(cfg, "classical", "my.onnx")
    '--model is a U-Net model; it cannot run with --engine classical'
    """
    if engine:
        cfg.segment.engine = engine
    if model:
        if engine not in (None, "unet"):
            return f"--model is a U-Net model; it cannot run with --engine {engine}"
        cfg.segment.engine = "unet"
        cfg.segment.unet.model = Path(model)
    return None
