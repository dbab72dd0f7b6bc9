"""Export the seed's ResNet50 U-Net (random, seeded weights) to ONNX; run as a subprocess.

Why a subprocess: torch would otherwise stay loaded (hundreds of MB, its own thread pool)
in the process whose CPU and peak memory the benchmark measures. `peer.ensure_peer_model`
runs `python -m inspectd_bench.peer_export --out FILE [--width-divisor D]`, which
writes FILE and a `FILE.json` sidecar (parameters, GFLOPs per 256x256 input, exporter).

The legacy TorchScript exporter (`dynamo=False`) is used as in `inspectd.training.export`: it
needs no onnxscript and folds BatchNorm into the convolutions. Batch is dynamic, so the
four 256x256 parts of a frame go in one call.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
import warnings
from contextlib import redirect_stdout
from pathlib import Path

import torch

from inspectd_bench.resnet_unet import DECODER_WIDTHS, ResNet50UNet, count_parameters

OPSET = 17
INPUT_NAME, OUTPUT_NAME = "image", "logit"
PEER_INPUT_PX = 256
SEED = 0


def multiply_accumulates(model: torch.nn.Module, side_px: int) -> int:
    """MACs of one `side_px` x `side_px` input, counted over Conv2d layers (they dominate)."""
    total = 0

    def hook(module: torch.nn.Conv2d, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        kernel = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        total += int(output.numel()) * kernel

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, 3, side_px, side_px))
    for handle in handles:
        handle.remove()
    return total


def export(out: Path, width_divisor: int) -> dict:
    torch.manual_seed(SEED)
    model = ResNet50UNet(width_divisor=width_divisor).eval()
    started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, 3, PEER_INPUT_PX, PEER_INPUT_PX), str(tmp),
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}},
                          opset_version=OPSET, dynamo=False)
    tmp.replace(out)
    card = {
        "architecture": "U-Net on a ResNet50 (v1.5) encoder, built in plain torch",
        "weights": f"random (torch.manual_seed({SEED})), untrained: for timing only",
        "width_divisor": width_divisor,
        "decoder_widths": [max(2, w // width_divisor) for w in DECODER_WIDTHS],
        "parameters": count_parameters(model),
        "gmac_per_256px_input": round(multiply_accumulates(model, PEER_INPUT_PX) / 1e9, 3),
        "input": {"name": INPUT_NAME, "shape": ["N", 3, PEER_INPUT_PX, PEER_INPUT_PX]},
        "output": {"name": OUTPUT_NAME, "shape": ["N", 1, PEER_INPUT_PX, PEER_INPUT_PX]},
        "torch": torch.__version__,
        "opset": OPSET,
        "export_s": round(time.perf_counter() - started, 2),
    }
    Path(f"{out}.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export the benchmark's seed-style ResNet50 U-Net to ONNX.")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--width-divisor", type=int, default=1)
    args = parser.parse_args(argv)
    card = export(args.out, args.width_divisor)
    print(json.dumps(card))
    return 0


if __name__ == "__main__":
    sys.exit(main())
