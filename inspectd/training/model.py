"""The coating U-Net in plain torch: encoder / bottleneck / decoder with skip connections.

Why this shape: the daemon runs it with ONNX Runtime on two CPU cores over 2560x1920
frames, so the cost per pixel decides the frame rate. The finest level carries few
channels and most parameters sit at the coarse levels, where a multiply costs 1/16-1/256
as much; each decoder level first narrows the coarse features with a 1x1 conv at low
resolution (cheap), then upsamples bilinearly, merges the encoder's skip and runs one 3x3
conv: half the multiplies of the textbook double-conv decoder, for the same skip
connections. Every conv is followed by BatchNorm + ReLU (folded into the conv on ONNX
export); a 1x1 conv gives the head.

`widths` has one entry per resolution level: `widths[0]` at the finest level, the last one
the bottleneck. `output_stride` x 2**(levels - 1) must divide the contract's input multiple
(`inspectd.analysis.engines.unet_contract.INPUT_MULTIPLE`, 32): the default, 4 levels at stride 4, does.

`output_stride` 1 is the v1 layout: the finest level at full resolution, skips
concatenated, logits out. `output_stride` > 1 (the default and the bundled v2 and v3 models: 4)
makes it a guided U-Net. Why: on two CPU cores v1's thin full-resolution layers were
memory-bound and took most of the time while adding little that a per-pixel model cannot. A `stride`x`stride` strided conv (stem) reads every
full-resolution pixel once, nothing is resized away, and the whole U-Net runs at
1/stride; its head gives, per class c, a coarse affine pair (a_c, b_c), and the logit of
a full-resolution pixel is `a_c + b_c * image` with (a, b) bilinearly upsampled
(`guided_logits`; the guide is the normalised input). Small dark pores keep their
full-resolution outline because the guide carries it. Training sees those full-resolution
logits; the ONNX file holds only the coarse pairs (`affine`, `[N, 2*3, H/s, W/s]`) and the
engine applies the guide in one fused pass (`kernels.guided_argmax`).

Example:
    >>> import torch
    >>> model = UNet(widths=(4, 8, 16, 32, 64), output_stride=1).eval()
    >>> model(torch.zeros(1, 1, 32, 48)).shape
    torch.Size([1, 3, 32, 48])
    >>> guided = UNet(widths=(4, 8), output_stride=4).eval()
    >>> guided.affine(torch.zeros(1, 1, 32, 48)).shape, guided(torch.zeros(1, 1, 32, 48)).shape
    (torch.Size([1, 6, 8, 12]), torch.Size([1, 3, 32, 48]))
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from inspectd.analysis.engines.unet_contract import INPUT_MULTIPLE, N_CLASSES

logger = logging.getLogger(__name__)

ARCHITECTURE_NAME = "lean-unet"
# The lean default shape (bundled v2 and the first v3): a stride-4 guided U-Net, 16 channels at
# 1/4 up to 192 at 1/32. The bundled v3 model is wider (24, 48, 96, 192: scripts/
# train_bundled_model.sh); fine-tuning takes the widths of the model it starts from.
# (v1: widths 8, 16, 32, 64, 256 at output stride 1, logits at full resolution.)
DEFAULT_WIDTHS: tuple[int, ...] = (16, 32, 64, 192)
DEFAULT_OUTPUT_STRIDE = 4
OUTPUT_STRIDES = (1, 2, 4, 8)


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """Grey image `[N, 1, H, W]` -> class logits `[N, 3, H, W]` (H, W multiples of 2**(levels-1))."""

    def __init__(
        self,
        widths: Sequence[int] = DEFAULT_WIDTHS,
        in_channels: int = 1,
        n_classes: int = N_CLASSES,
        output_stride: int = DEFAULT_OUTPUT_STRIDE,
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2 or min(widths) < 1:
            msg = f"widths needs at least two positive entries (levels), got {list(widths)}"
            raise ValueError(msg)
        if output_stride not in OUTPUT_STRIDES:
            msg = f"output_stride must be one of {list(OUTPUT_STRIDES)}, got {output_stride}"
            raise ValueError(msg)
        downsampling = output_stride * 2 ** (len(widths) - 1)
        if INPUT_MULTIPLE % downsampling:
            msg = (f"output stride {output_stride} and {len(widths)} levels ({len(widths) - 1} pools) downsample "
                   f"{downsampling}x, which does not divide the contract's input multiple {INPUT_MULTIPLE}")
            raise ValueError(msg)
        self.widths = widths
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.output_stride = output_stride
        # Guided: the strided stem is level 0's first conv, so level 0 keeps one 3x3 conv.
        self.stem = (
            nn.Sequential(
                nn.Conv2d(in_channels, widths[0], output_stride, stride=output_stride, bias=False),
                nn.BatchNorm2d(widths[0]),
                nn.ReLU(inplace=True),
            )
            if output_stride > 1 else nn.Identity()
        )
        self.encoder = nn.ModuleList(
            nn.Sequential(_conv_bn_relu(widths[0], widths[0]))
            if level == 0 and output_stride > 1
            else nn.Sequential(
                _conv_bn_relu(in_channels if level == 0 else widths[level - 1], widths[level]),
                _conv_bn_relu(widths[level], widths[level]),
            )
            for level in range(len(widths))
        )
        # narrow[level]: coarse features of level+1 -> widths[level] channels, before upsampling.
        self.narrow = nn.ModuleList(
            _conv_bn_relu(widths[level + 1], widths[level], kernel_size=1)
            for level in range(len(widths) - 1)
        )
        # Guided nets add the skip instead of concatenating it (LinkNet style): half the
        # decoder's multiplies and no concat copy, at the 1/stride resolution where it all runs.
        skip_factor = 1 if output_stride > 1 else 2
        self.decoder = nn.ModuleList(
            _conv_bn_relu(skip_factor * widths[level], widths[level]) for level in range(len(widths) - 1)
        )
        self.head = nn.Conv2d(widths[0], n_classes * (2 if output_stride > 1 else 1), kernel_size=1)

    @property
    def downsampling(self) -> int:
        """H and W must be multiples of this."""
        return self.output_stride * 2 ** (len(self.widths) - 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Full-resolution class logits `[N, 3, H, W]` (what training scores)."""
        if self.output_stride == 1:
            return self._coarse(image)
        return guided_logits(self._coarse(image), image, self.output_stride)

    def affine(self, image: torch.Tensor) -> torch.Tensor:
        """Guided nets: the coarse per-class pairs `[N, 2*3, H/s, W/s]` (what the ONNX file returns)."""
        if self.output_stride == 1:
            msg = "affine() is for guided nets (output_stride > 1); this one returns logits directly"
            raise ValueError(msg)
        return self._coarse(image)

    def _coarse(self, image: torch.Tensor) -> torch.Tensor:
        skips = []
        features = self.stem(image)
        for level, block in enumerate(self.encoder):
            if level:
                features = F.max_pool2d(features, 2)
            features = block(features)
            skips.append(features)
        features = skips.pop()  # the bottleneck
        for level in reversed(range(len(self.decoder))):
            coarse = self.narrow[level](features)
            upsampled = F.interpolate(coarse, scale_factor=2.0, mode="bilinear", align_corners=False)
            if self.output_stride > 1:
                merged = upsampled + skips[level]
            else:
                merged = torch.cat([upsampled, skips[level]], dim=1)
            features = self.decoder[level](merged)
        return self.head(features)

    def architecture(self) -> dict[str, Any]:
        """What `build_model` needs to rebuild this net (stored in checkpoints and the card)."""
        return {
            "name": ARCHITECTURE_NAME,
            "widths": list(self.widths),
            "in_channels": self.in_channels,
            "n_classes": self.n_classes,
            "output_stride": self.output_stride,
        }


def guided_logits(affine: torch.Tensor, guide: torch.Tensor, stride: int) -> torch.Tensor:
    """Full-resolution logits `a_c + b_c * guide` from coarse pairs upsampled bilinearly.

    `kernels.guided_argmax` computes the argmax of exactly this (half-pixel centres, edge
    clamping: `align_corners=False`), without materialising the logits.

    >>> pairs = torch.zeros(1, 6, 1, 1); pairs[0, 5] = 1.0  # pore logit = 1 * guide
    >>> guided_logits(pairs, torch.full((1, 1, 2, 2), 3.0), 2)[0, :, 0, 0].tolist()
    [0.0, 0.0, 3.0]
    """
    upsampled = F.interpolate(affine, scale_factor=float(stride), mode="bilinear", align_corners=False)
    n_classes = affine.shape[1] // 2
    return upsampled[:, :n_classes] + upsampled[:, n_classes:] * guide


def build_model(architecture: dict[str, Any] | None = None) -> UNet:
    """A fresh `UNet` from an `architecture()` dict (None = the lean default shape).

    >>> build_model({"name": "lean-unet", "widths": [4, 8, 16]}).widths
    (4, 8, 16)
    """
    architecture = dict(architecture or {})
    name = architecture.pop("name", ARCHITECTURE_NAME)
    if name != ARCHITECTURE_NAME:
        msg = f"unknown U-Net architecture {name!r}; this version builds {ARCHITECTURE_NAME!r}"
        raise ValueError(msg)
    return UNet(
        widths=architecture.get("widths", DEFAULT_WIDTHS),
        in_channels=int(architecture.get("in_channels", 1)),
        n_classes=int(architecture.get("n_classes", N_CLASSES)),
        # A checkpoint that names its widths but no stride predates guided nets: stride 1.
        output_stride=int(architecture.get("output_stride", 1 if "widths" in architecture else DEFAULT_OUTPUT_STRIDE)),
    )


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters.

    >>> count_parameters(nn.Conv2d(1, 2, 3))
    20
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def multiply_accumulates(model: nn.Module, height_px: int = 512, width_px: int = 512) -> int:
    """Conv multiply-accumulates of one forward pass on a `[1, C, H, W]` input (GFLOPs ~ 2x this / 1e9).

    Counted from the convolutions' output sizes with forward hooks; BatchNorm, ReLU,
    pooling and interpolation are a few percent on top and left out, as is usual.

    >>> multiply_accumulates(nn.Conv2d(1, 2, 3, padding=1), 4, 4)
    288
    """
    total = 0

    def count(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        kernel_h, kernel_w = module.kernel_size
        total += output.numel() * (module.in_channels // module.groups) * kernel_h * kernel_w

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d)]
    in_channels = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_channels, height_px, width_px))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return total
