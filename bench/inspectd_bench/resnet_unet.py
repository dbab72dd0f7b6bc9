"""The seed's segmentation network, rebuilt in plain torch: a U-Net on a ResNet50 encoder.

Why it is here: the benchmark's peer pipeline (`inspectd_bench.peer`) must cost what
the seed's network cost, and torchvision (and any weight download) is off the table. So
this is the ResNet50 v1.5 layout (stride in the 3x3 conv of each bottleneck; stages of
3, 4, 6, 3 bottlenecks, 256 to 2048 channels) with a U-Net decoder: per level, upsample x2
(nearest), concatenate the encoder's skip, two 3x3 conv + BatchNorm + ReLU; a 3x3 head
gives one logit (unmelted vs rest, the seed's binary labels). The decoder widths
(448, 256, 64, 32, 16) put the whole net at 40.9 M parameters (23.5 M of them the encoder),
the "about 41 M" the seed reported: the full-resolution levels keep the narrow widths of the
common segmentation_models default (64, 32, 16), and the extra parameters sit at 1/16 and
1/8 resolution where they cost little. Of the 41 M layouts tried this is the cheapest
(14.4 GMAC per 256x256 input; (448, 256, 128, 64, 32), 41.4 M, costs 19.1), so the peer is
not slowed down in inspectd's favour. Change the layout = bump `peer.PEER_NETWORK_VERSION`.

Weights are random (seeded): only the timing is used, never the masks' accuracy.
`width_divisor` divides every channel count, so a CI smoke run can use a tiny but
same-shaped network. Importing this module imports torch; only the peer does that.

Example:
    >>> import torch
    >>> model = ResNet50UNet(width_divisor=16).eval()
    >>> model(torch.zeros(1, 3, 64, 64)).shape
    torch.Size([1, 1, 64, 64])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# (bottlenecks, inner width, stride) of ResNet50's four stages; outputs are 4x the inner width.
RESNET50_STAGES: tuple[tuple[int, int, int], ...] = ((3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2))
BOTTLENECK_EXPANSION = 4
STEM_WIDTH = 64
DECODER_WIDTHS: tuple[int, ...] = (448, 256, 64, 32, 16)


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride) -> 1x1 expand x4, plus the (projected) identity."""

    def __init__(self, in_channels: int, width: int, stride: int) -> None:
        super().__init__()
        out_channels = width * BOTTLENECK_EXPANSION
        self.reduce = _conv_bn(in_channels, width, 1)
        self.spatial = _conv_bn(width, width, 3, stride)
        self.expand = _conv_bn(width, out_channels, 1)
        self.project = None
        if stride != 1 or in_channels != out_channels:
            self.project = _conv_bn(in_channels, out_channels, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.project is None else self.project(x)
        out = F.relu(self.reduce(x))
        out = F.relu(self.spatial(out))
        return F.relu(self.expand(out) + identity)


class ResNet50Encoder(nn.Module):
    """Returns the five skip features: /2 (stem), /4, /8, /16, /32 of the input size."""

    def __init__(self, in_channels: int = 3, width_divisor: int = 1) -> None:
        super().__init__()
        stem = max(1, STEM_WIDTH // width_divisor)
        self.stem = _conv_bn(in_channels, stem, 7, stride=2)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stages = []
        channels = stem
        self.out_channels = [stem]
        for blocks, width, stride in RESNET50_STAGES:
            width = max(1, width // width_divisor)
            layers = []
            for index in range(blocks):
                layers.append(Bottleneck(channels, width, stride if index == 0 else 1))
                channels = width * BOTTLENECK_EXPANSION
            stages.append(nn.Sequential(*layers))
            self.out_channels.append(channels)
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu(self.stem(x))
        features = [x]
        x = self.pool(x)
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class DecoderBlock(nn.Module):
    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(in_channels + skip_channels, out_channels, 3)
        self.conv2 = _conv_bn(out_channels, out_channels, 3)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return F.relu(self.conv2(F.relu(self.conv1(x))))


class ResNet50UNet(nn.Module):
    """RGB `[N, 3, H, W]` (H, W multiples of 32) -> one logit per pixel `[N, 1, H, W]`."""

    def __init__(self, width_divisor: int = 1, in_channels: int = 3) -> None:
        super().__init__()
        if width_divisor < 1:
            msg = f"width_divisor must be >= 1, got {width_divisor}"
            raise ValueError(msg)
        self.encoder = ResNet50Encoder(in_channels, width_divisor)
        widths = [max(2, w // width_divisor) for w in DECODER_WIDTHS]
        skips = self.encoder.out_channels[-2::-1] + [0]  # /16, /8, /4, /2 features, then none
        blocks = []
        channels = self.encoder.out_channels[-1]
        for skip_channels, width in zip(skips, widths, strict=True):
            blocks.append(DecoderBlock(channels, skip_channels, width))
            channels = width
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(channels, 1, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        skips: list[torch.Tensor | None] = [*features[-2::-1], None]
        y = features[-1]
        for block, skip in zip(self.decoder, skips, strict=True):
            y = block(y, skip)
        return self.head(y)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters.

    >>> count_parameters(nn.Linear(3, 2))
    8
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
