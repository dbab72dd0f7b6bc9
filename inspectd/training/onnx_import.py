"""An inspectd U-Net ONNX file -> a trainable torch `UNet` with the same weights (fine-tuning).

Why from the ONNX file and not a checkpoint: the ONNX file is what a user has: the bundled
model, or the `model.onnx` an earlier `inspectd train` wrote. Fine-tuning from it needs
no extra file in the package and works for any model this project exported.

How: the exporter names every Conv node after the torch module it came from
(`/encoder.1/encoder.1.0/encoder.1.0.0/Conv` is module `encoder.1.0.0`) and folds each
BatchNorm into the conv before it. So the architecture is read off the weight shapes
(widths from the encoder convs, output stride from the stem's kernel), every conv gets its
folded weight, and each BatchNorm after a conv becomes the identity plus the folded bias:
weight 1, bias b, running mean 0, running variance 1 - eps, so BN(x) = x + b exactly.
Fine-tuning keeps those BatchNorms in eval mode (`freeze_batch_norm`): a few labelled
fields give batches far too small for batch statistics, and the folded weights assume none.

Example:
    >>> import tempfile; from pathlib import Path; import torch
    >>> from inspectd.training.model import UNet
    >>> from inspectd.training.export import export_onnx
    >>> source = UNet(widths=(4, 8, 16), output_stride=4).eval()
    >>> path = Path(tempfile.mkdtemp()) / "m.onnx"; export_onnx(source, path)
    >>> model = model_from_onnx(path).eval()
    >>> x = torch.randn(1, 1, 64, 96)
    >>> bool(torch.allclose(model(x), source(x), atol=1e-4))
    True
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from inspectd.analysis.engines import unet_contract as contract
from inspectd.errors import ConfigError
from inspectd.training.model import UNet

logger = logging.getLogger(__name__)

# "/encoder.1/encoder.1.0/encoder.1.0.0/Conv" -> "encoder.1.0.0"; "/head/Conv" -> "head".
_CONV_NODE = re.compile(r"^/(?:.*/)?(?P<module>[A-Za-z_][\w.]*)/Conv(?:_\d+)?$")


def model_from_onnx(path: str | Path) -> UNet:
    """A `UNet` (training mode) carrying the weights of an inspectd U-Net ONNX file; ConfigError if it is not one."""
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    try:
        graph = onnx.load(str(path)).graph
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types for a bad file
        msg = f"{path}: cannot read it as an ONNX model ({type(exc).__name__}: {exc})"
        raise ConfigError(msg) from exc
    weights = {init.name: numpy_helper.to_array(init).copy() for init in graph.initializer}
    # The exporter shares equal constants (e.g. the zero biases of an untrained net) through
    # Identity nodes: resolve those to the initializer they pass on.
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in weights:
            weights[node.output[0]] = weights[node.input[0]]
    convs = _conv_weights(graph, weights, path)
    model = UNet(widths=_widths(convs, path), output_stride=_output_stride(convs))
    _load_folded(model, convs, path)
    return model


def freeze_batch_norm(model: nn.Module) -> None:
    """Put every BatchNorm in eval mode (running statistics used and kept); call after `model.train()`."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()


def _conv_weights(graph, weights: dict[str, np.ndarray], path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{torch module name: (weight, bias)} of every Conv node."""
    convs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        match = _CONV_NODE.match(node.name)
        if match is None or len(node.input) < 3 or node.input[1] not in weights or node.input[2] not in weights:
            msg = (f"{path}: Conv node {node.name!r} does not name its torch module or lacks a folded bias; "
                   "only U-Nets exported by inspectd (inspectd export / inspectd train) can be fine-tuned")
            raise ConfigError(msg)
        module = match.group("module").removeprefix("model.")
        convs[module] = (weights[node.input[1]], weights[node.input[2]])
    if "head" not in convs:
        msg = f"{path}: no head convolution; not an inspectd U-Net"
        raise ConfigError(msg)
    return convs


def _widths(convs: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> tuple[int, ...]:
    widths = []
    level = 0
    while any(name.startswith(f"encoder.{level}.") for name in convs):
        last = max(name for name in convs if name.startswith(f"encoder.{level}."))
        widths.append(int(convs[last][0].shape[0]))
        level += 1
    if len(widths) < 2:
        msg = f"{path}: found {len(widths)} encoder level(s); not an inspectd U-Net"
        raise ConfigError(msg)
    return tuple(widths)


def _output_stride(convs: dict[str, tuple[np.ndarray, np.ndarray]]) -> int:
    stem = convs.get("stem.0")
    return 1 if stem is None else int(stem[0].shape[-1])


def _load_folded(model: UNet, convs: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    modules = dict(model.named_modules())
    expected = {name for name, module in modules.items() if isinstance(module, nn.Conv2d)}
    if set(convs) != expected:
        missing, extra = sorted(expected - set(convs)), sorted(set(convs) - expected)
        msg = f"{path}: layers do not match an inspectd U-Net (missing {missing[:3]}, unexpected {extra[:3]})"
        raise ConfigError(msg)
    with torch.no_grad():
        for name, (weight, bias) in convs.items():
            conv = modules[name]
            if tuple(conv.weight.shape) != weight.shape:
                msg = f"{path}: {name} weight is {list(weight.shape)}, the architecture wants {list(conv.weight.shape)}"
                raise ConfigError(msg)
            conv.weight.copy_(torch.from_numpy(weight))
            if conv.bias is not None:
                conv.bias.copy_(torch.from_numpy(bias))
                continue
            norm = modules[_next_sibling(name)]
            norm.weight.fill_(1.0)
            norm.bias.copy_(torch.from_numpy(bias))
            norm.running_mean.zero_()
            norm.running_var.fill_(1.0 - norm.eps)
    if model.head.out_channels != contract.output_channels(
            contract.OUTPUT_NAME if model.output_stride == 1 else contract.AFFINE_OUTPUT_NAME):
        msg = f"{path}: head has {model.head.out_channels} channels; not a 3-class inspectd U-Net"
        raise ConfigError(msg)


def _next_sibling(name: str) -> str:
    """`encoder.1.0.0` (the conv of a conv+BN+ReLU block) -> `encoder.1.0.1` (its BatchNorm)."""
    parent, _, index = name.rpartition(".")
    return f"{parent}.{int(index) + 1}"
