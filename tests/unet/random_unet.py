"""Random-weight ONNX models that honour the U-Net contract, built with the `onnx` helper API.

Why: the engine, tiling and evaluation tests must run without torch and without the bundled
model, on real ONNX Runtime sessions. `build_unet` draws a U-Net-shaped network (encoder,
bottleneck, decoder with skip connections, 1x1 output conv) with dynamic N/H/W, input
`image` [N,1,H,W] and output `logits` [N,3,H,W]; `build_local` a shallow fully-convolutional
net with a small receptive field (`LOCAL_RADIUS_PX`), for which tiled inference must equal
whole-frame inference away from tile edges.

Example:
    >>> import onnxruntime as ort, numpy as np
    >>> session = ort.InferenceSession(build_unet(base_channels=4).SerializeToString())
    >>> session.run(None, {"image": np.zeros((2, 1, 32, 48), np.float32)})[0].shape
    (2, 3, 32, 48)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
# Receptive-field radius of `build_local`: two 3x3 convolutions.
LOCAL_RADIUS_PX = 2


class _GraphBuilder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.count = 0

    def _name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}_{self.count}"

    def _weight(self, shape: tuple[int, ...], fan_in: int) -> str:
        name = self._name("w")
        values = self.rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape).astype(np.float32)
        self.initializers.append(numpy_helper.from_array(values, name))
        return name

    def _bias(self, n: int) -> str:
        name = self._name("b")
        self.initializers.append(numpy_helper.from_array(self.rng.normal(0.0, 0.1, n).astype(np.float32), name))
        return name

    def conv(self, x: str, c_in: int, c_out: int, k: int = 3, relu: bool = True, out: str | None = None,
             stride: int = 1) -> str:
        """k x k conv; stride 1 keeps the size (padded), a stride > 1 (unpadded) divides it."""
        w = self._weight((c_out, c_in, k, k), c_in * k * k)
        y = out or self._name("conv")
        pad = k // 2 if stride == 1 else 0
        self.nodes.append(helper.make_node("Conv", [x, w, self._bias(c_out)], [y], kernel_shape=[k, k],
                                           pads=[pad, pad, pad, pad], strides=[stride, stride]))
        if not relu:
            return y
        r = self._name("relu")
        self.nodes.append(helper.make_node("Relu", [y], [r]))
        return r

    def pool(self, x: str) -> str:
        y = self._name("pool")
        self.nodes.append(helper.make_node("MaxPool", [x], [y], kernel_shape=[2, 2], strides=[2, 2]))
        return y

    def up(self, x: str, c_in: int, c_out: int) -> str:
        w = self._weight((c_in, c_out, 2, 2), c_in * 4)
        y = self._name("up")
        self.nodes.append(helper.make_node("ConvTranspose", [x, w, self._bias(c_out)], [y], kernel_shape=[2, 2],
                                           strides=[2, 2]))
        return y

    def concat(self, a: str, b: str) -> str:
        y = self._name("cat")
        self.nodes.append(helper.make_node("Concat", [a, b], [y], axis=1))
        return y

    def model(self, input_name: str, output_name: str, n_out: int | str,
              output_hw: tuple[str, str] = ("H", "W")) -> onnx.ModelProto:
        x = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", 1, "H", "W"])
        y = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", n_out, *output_hw])
        graph = helper.make_graph(self.nodes, "random_unet", [x], [y], self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def build_unet(base_channels: int = 8, levels: int = 4, seed: int = 0, *, input_name: str = "image",
               output_name: str = "logits", n_classes: int = 3, declare_classes: bool = True) -> onnx.ModelProto:
    """A random U-Net: `levels` poolings (input sides must be multiples of 2**levels).

    `declare_classes=False` leaves the output's class dimension symbolic in the declaration
    (ONNX Runtime's shape inference still derives it from the last convolution).
    """
    g = _GraphBuilder(seed)
    channels = [base_channels * 2**i for i in range(levels + 1)]
    x = g.conv(g.conv(input_name, 1, channels[0]), channels[0], channels[0])
    skips = [x]
    for level in range(1, levels + 1):
        x = g.conv(g.conv(g.pool(x), channels[level - 1], channels[level]), channels[level], channels[level])
        skips.append(x)
    for level in range(levels - 1, -1, -1):
        x = g.up(x, channels[level + 1], channels[level])
        x = g.concat(x, skips[level])
        x = g.conv(g.conv(x, 2 * channels[level], channels[level]), channels[level], channels[level])
    g.conv(x, channels[0], n_classes, k=1, relu=False, out=output_name)
    return g.model(input_name, output_name, n_classes if declare_classes else "C")


def build_local(seed: int = 0) -> onnx.ModelProto:
    """Two 3x3 convs + a 1x1 head: every output pixel sees only `LOCAL_RADIUS_PX` around it."""
    g = _GraphBuilder(seed)
    x = g.conv(g.conv("image", 1, 8), 8, 8)
    g.conv(x, 8, 3, k=1, relu=False, out="logits")
    return g.model("image", "logits", 3)


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def parameter_count(model: onnx.ModelProto) -> int:
    return int(sum(np.prod(init.dims) for init in model.graph.initializer))


def build_shrinking(seed: int = 0) -> onnx.ModelProto:
    """Declares `logits` [N,3,H,W] but returns [N,3,H/2,W/2]: only running it shows the breach."""
    g = _GraphBuilder(seed)
    x = g.conv("image", 1, 3, k=1, relu=False)
    g.nodes.append(helper.make_node("MaxPool", [x], ["logits"], kernel_shape=[2, 2], strides=[2, 2]))
    return g.model("image", "logits", 3)


def build_guided(stride: int = 4, seed: int = 0, *, n_out: int = 6) -> onnx.ModelProto:
    """A random guided U-Net head: stride-`stride` conv stem, 3x3 conv, 1x1 to `n_out` coarse maps `affine`.

    The contract's guided output is [N, 6, H/stride, W/stride]; `n_out` != 6 breaks it.
    """
    g = _GraphBuilder(seed)
    x = g.conv(g.conv("image", 1, 8, k=stride, stride=stride), 8, 8)
    g.conv(x, 8, n_out, k=1, relu=False, out="affine")
    return g.model("image", "affine", n_out, output_hw=("h", "w"))
