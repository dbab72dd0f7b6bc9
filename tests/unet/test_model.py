"""The U-Net itself: shapes, the parameter budget, the cost count, the architecture record."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from inspectd.analysis.engines import unet_contract as contract  # noqa: E402
from inspectd.training.model import (  # noqa: E402
    DEFAULT_WIDTHS,
    UNet,
    build_model,
    count_parameters,
    multiply_accumulates,
)


def test_default_model_is_edge_sized() -> None:
    model = UNet()
    assert model.widths == DEFAULT_WIDTHS
    assert 0.5e6 <= count_parameters(model) <= 4e6
    assert model.output_stride == 4
    gflops = 2 * multiply_accumulates(model, 512, 512) / 1e9
    assert 0.3 < gflops < 20.0


@pytest.mark.parametrize(("batch", "height", "width"), [(1, 48, 80), (2, 96, 32), (1, 16, 16)])
def test_logits_have_the_contract_shape(batch: int, height: int, width: int) -> None:
    model = UNet(widths=(4, 8, 16, 32, 64), output_stride=1).eval()
    with torch.no_grad():
        logits = model(torch.randn(batch, 1, height, width))
    assert logits.shape == (batch, contract.N_CLASSES, height, width)
    assert contract.INPUT_MULTIPLE % model.downsampling == 0


def test_skip_connections_reach_full_resolution() -> None:
    # One changed input pixel changes its own output pixel's logits (a bottleneck-only net
    # would smear it over a 16x16 block); far pixels stay nearly unchanged (locality).
    torch.manual_seed(0)
    model = UNet(widths=(4, 8, 16, 32, 64), output_stride=1).eval()
    image = torch.randn(1, 1, 64, 64)
    poked = image.clone()
    poked[0, 0, 30, 30] += 5.0
    with torch.no_grad():
        change = (model(poked) - model(image)).abs().sum(1)[0]
    assert change[30, 30] > change[30, 33] > 0
    assert change[30, 30] > 10 * change[0:8, 0:8].max()


def test_multiply_accumulates_counts_convolutions() -> None:
    # Conv 1->2 3x3 on 4x4 (padded): 16 px * 2 out * 9 taps = 288.
    assert multiply_accumulates(torch.nn.Conv2d(1, 2, 3, padding=1), 4, 4) == 288
    model = UNet(widths=(4, 8, 16))
    assert multiply_accumulates(model, 64, 64) * 4 == pytest.approx(multiply_accumulates(model, 128, 128))


def test_architecture_round_trip() -> None:
    model = UNet(widths=(4, 8, 16))
    rebuilt = build_model(model.architecture())
    assert rebuilt.widths == (4, 8, 16)
    assert count_parameters(rebuilt) == count_parameters(model)


@pytest.mark.parametrize("widths", [(8,), (0, 8), (4, 8, 16, 32, 64, 128, 256)])
def test_bad_widths_are_refused(widths: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        UNet(widths=widths)


def test_unknown_architecture_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown U-Net architecture"):
        build_model({"name": "resnet50-unet"})
