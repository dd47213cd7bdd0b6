"""ONNX graphs compute an aspect-keeping resize's size as PyTorch does
(:mod:`segdet.engine.export.onnx_sizes`).

Reference: the detection transform itself in PyTorch (float64 Python arithmetic, as torchvision's
``GeneralizedRCNNTransform``). Tolerance: none; sizes are integers and must be equal for every image
size of the sweep. Without the rewrite the graph is a pixel short at some sides (shown below), so the
test can fail.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.export import Dim

from segdet.engine.export import load_exported, onnx_sizes, program
from segdet.models.detection.image_list import sizes_tensor
from segdet.models.detection.transform import DetectionTransform

NEEDS_ONNX = "onnxruntime (segdet[export], in [dev]) is not installed"

# image sides of the sweep: every height from 33 to 160 against four widths (square, wider, taller, long)
SIDES = [(h, w) for h in range(33, 161) for w in (h, h + 31, max(32, h - 29), 3 * h)]


class ResizedSizes(nn.Module):
    """An image -> ``(h, w)`` after the transform's resize (min 256, max 512) and its padded batch's
    ``(H, W)``: the size arithmetic of every detector with an aspect-keeping resize."""

    def __init__(self) -> None:
        super().__init__()
        self.transform = DetectionTransform(min_size=256, max_size=512).eval()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, _ = self.transform(images)
        padded = torch.tensor(batch.tensors.shape[-2:])
        return sizes_tensor(batch.image_sizes, images.device)[0], padded


def _onnx_sizes(path) -> dict[tuple[int, int], tuple[list[int], list[int]]]:
    """The exported graph's sizes over :data:`SIDES`."""
    example = torch.rand(1, 3, 64, 80)
    sides = ({2: Dim("h", min=32, max=8192), 3: Dim("w", min=32, max=8192)},)
    traced = program.trace(ResizedSizes().eval(), example, sides)
    program.write(traced, path, ["sizes", "padded"], lambda run: [])
    run = load_exported(path)
    return {s: tuple(t.tolist() for t in run(torch.zeros(1, 3, *s))) for s in SIDES}


def _pytorch_sizes() -> dict[tuple[int, int], tuple[list[int], list[int]]]:
    graph = ResizedSizes().eval()
    return {s: tuple(t.tolist() for t in graph(torch.zeros(1, 3, *s))) for s in SIDES}


def test_onnx_resize_sizes_equal_pytorchs(tmp_path, monkeypatch):
    """Every size of the sweep: the resized and padded sizes equal PyTorch's. Without the float64
    rewrite (float32, as ``torch.onnx`` writes it) the same graph is a pixel short for ~5 % of the
    sizes, among them 97 px (``97 * (256 / 97)`` is 255.99998 in float32)."""
    pytest.importorskip("onnxruntime", reason=NEEDS_ONNX)
    expected = _pytorch_sizes()
    assert expected[(97, 97)] == ([256, 256], [256, 256])
    assert _onnx_sizes(tmp_path / "float64.onnx") == expected

    monkeypatch.setattr(onnx_sizes, "promote_size_arithmetic", lambda model: 0)
    float32 = _onnx_sizes(tmp_path / "float32.onnx")
    wrong = [s for s in SIDES if float32[s] != expected[s]]
    assert (97, 97) in wrong and float32[(97, 97)][0] == [255, 255], float32[(97, 97)]
    assert 0.02 < len(wrong) / len(SIDES) < 0.2, len(wrong)


def test_a_side_read_as_a_float_too_stays_float32_there(tmp_path):
    """One side read twice: as a float (a box scale, float32 in PyTorch too: ``256 / h`` as a tensor)
    and in a size (``floor(h * (256 / h))``). The size gets its own float64 computation (a cast to
    DOUBLE) and is PyTorch's; the float output keeps its float32 one."""
    pytest.importorskip("onnxruntime", reason=NEEDS_ONNX)
    import onnx

    class ScaleAndSize(nn.Module):
        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = images.shape[-2]
            ratio = torch.scalar_tensor(256 / h)
            size = torch.scalar_tensor(torch.sym_int(h * (256 / h)), dtype=torch.int64)
            return ratio, size

    sides = ({2: Dim("h", min=32, max=8192), 3: Dim("w", min=32, max=8192)},)
    traced = program.trace(ScaleAndSize().eval(), torch.rand(1, 3, 64, 64), sides)
    program.write(traced, tmp_path / "m.onnx", ["ratio", "size"], lambda run: [])
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    casts = [n for n in graph.node if n.op_type == "Cast"]
    to = sorted(next(a.i for a in n.attribute if a.name == "to") for n in casts)
    assert onnx.TensorProto.DOUBLE in to and onnx.TensorProto.FLOAT in to, to
    ratio, size = load_exported(tmp_path / "m.onnx")(torch.zeros(1, 3, 97, 40))
    assert ratio.dtype == torch.float32 and float(ratio) == pytest.approx(256 / 97)
    assert int(size) == 256


def test_sizes_get_their_own_float64_computation():
    """Hand-built graphs: ``floor(h * (256 / h))`` cast back to int64 is computed in float64 (a cast to
    DOUBLE, the constant a float64 copy) and the float32 nodes, read by nothing else, are gone; with
    ``256 / h`` also read inside an ``If`` branch (by name, not as the node's input) the size is
    float64 all the same and the branch keeps its float32 value."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    def graph(read_in_branch: bool):
        nodes = [
            helper.make_node("Cast", ["h"], ["hf"], to=TensorProto.FLOAT),
            helper.make_node("Div", ["c256", "hf"], ["scale"]),
            helper.make_node("Mul", ["hf", "scale"], ["side"]),
            helper.make_node("Cast", ["side"], ["size"], to=TensorProto.INT64),
        ]
        outputs = [helper.make_tensor_value_info("size", TensorProto.INT64, [])]
        if read_in_branch:
            branch = helper.make_graph(
                [helper.make_node("Identity", ["scale"], ["out"])],
                "branch",
                [],
                [helper.make_tensor_value_info("out", TensorProto.FLOAT, [])],
            )
            nodes.append(helper.make_node("If", ["flag"], ["picked"], then_branch=branch, else_branch=branch))
            outputs.append(helper.make_tensor_value_info("picked", TensorProto.FLOAT, []))
        inputs = [
            helper.make_tensor_value_info("h", TensorProto.INT64, []),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
        ]
        constant = numpy_helper.from_array(np.array(256, dtype=np.float32), "c256")
        return helper.make_model(helper.make_graph(nodes, "sizes", inputs, outputs, [constant]))

    plain, branched = graph(False), graph(True)
    assert onnx_sizes.promote_size_arithmetic(plain) == 3  # the cast to float, Div, Mul
    ops = [(n.op_type, list(n.input), list(n.output)) for n in plain.graph.node]
    assert ops == [
        ("Cast", ["h"], ["hf_float64"]),
        ("Div", ["c256_float64", "hf_float64"], ["scale_float64"]),
        ("Mul", ["hf_float64", "scale_float64"], ["side_float64"]),
        ("Cast", ["side_float64"], ["size"]),
    ]
    assert plain.graph.node[0].attribute[0].i == TensorProto.DOUBLE
    assert [i.name for i in plain.graph.initializer] == ["c256_float64"]
    assert onnx_sizes.promote_size_arithmetic(branched) == 3
    kept = {n.output[0]: n for n in branched.graph.node}
    assert {"hf", "scale", "side_float64", "picked"} <= set(kept) and "side" not in kept
    assert kept["hf"].attribute[0].i == TensorProto.FLOAT and kept["size"].input[0] == "side_float64"
    onnx.checker.check_model(plain)
    onnx.checker.check_model(branched)
