"""BiFPN (EfficientDet, Tan et al. 2020): the fast normalised fusion by hand, one layer against the paper's
equations written out level by level, the inputs and outputs of the neck. RetinaNet on a BiFPN:
``tests/models/detection/retinanet/test_retinanet_bifpn.py``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segdet.models.necks import BiFPN, BiFPNLayer, fast_normalized_fusion

# Level sizes of a 100 x 130 input at strides 8 .. 128 ("same" padding: ceil).
SIZES = [(13, 17), (7, 9), (4, 5), (2, 3), (1, 2)]


def _randomise(module: nn.Module, seed: int) -> None:
    """Random convolution weights, fusion weights in [-0.5, 1.5] (some negative: ReLU'd away) and
    BatchNorm statistics, in eval mode: a wrongly wired input cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            if not t.is_floating_point():
                continue
            if "weights" in name:
                t.copy_(torch.rand(t.shape, generator=g) * 2 - 0.5)
            elif t.dim() == 1:
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.2)
    module.eval()


def test_fast_normalized_fusion_by_hand():
    """``Σ ReLU(w_i) I_i / (1e-4 + Σ ReLU(w_j))``: weights (1, 3) on inputs 2 and 10 give 32 / 4.0001;
    a negative weight drops its input: (-1, 2) gives 20 / 2.0001. Tolerance 1e-6."""
    a, b = torch.full((1, 2, 3, 3), 2.0), torch.full((1, 2, 3, 3), 10.0)
    got = fast_normalized_fusion([a, b], torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(got, torch.full_like(a, 32 / 4.0001), atol=1e-6, rtol=0)
    got = fast_normalized_fusion([a, b], torch.tensor([-1.0, 2.0]))
    torch.testing.assert_close(got, torch.full_like(a, 20 / 2.0001), atol=1e-6, rtol=0)


def test_a_layer_is_the_papers_equations():
    """Reference: the paper's top-down and bottom-up nodes written out for P3 .. P7 (fig. 2d and the
    equations of sec. 3.3: nearest upsampling, 3x3 / 2 "same" max-pool, swish then the separable
    convolution + BatchNorm), with the layer's own weights. Tolerance 1e-5."""
    layer = BiFPNLayer(8, 5, nn.BatchNorm2d)
    _randomise(layer, 0)
    g = torch.Generator().manual_seed(1)
    p3, p4, p5, p6, p7 = (torch.randn(2, 8, h, w, generator=g) for h, w in SIZES)

    def fuse(inputs, w):
        w = F.relu(w)
        return sum(wi * x for wi, x in zip(w, inputs, strict=True)) / (w.sum() + 1e-4)

    def node(conv, inputs, w):
        return conv(F.silu(fuse(inputs, w)))

    def up(x, like):
        return F.interpolate(x, size=like.shape[-2:], mode="nearest")

    def down(x):
        return F.max_pool2d(x, 3, stride=2, padding=1)

    td_w, td_c = layer.top_down_weights, layer.top_down_convs  # nodes of P6, P5, P4, P3
    bu_w, bu_c = layer.bottom_up_weights, layer.bottom_up_convs  # nodes of P4, P5, P6, P7
    with torch.no_grad():
        p6_td = node(td_c[0], [p6, up(p7, p6)], td_w[0])
        p5_td = node(td_c[1], [p5, up(p6_td, p5)], td_w[1])
        p4_td = node(td_c[2], [p4, up(p5_td, p4)], td_w[2])
        p3_out = node(td_c[3], [p3, up(p4_td, p3)], td_w[3])
        p4_out = node(bu_c[0], [p4, p4_td, down(p3_out)], bu_w[0])
        p5_out = node(bu_c[1], [p5, p5_td, down(p4_out)], bu_w[1])
        p6_out = node(bu_c[2], [p6, p6_td, down(p5_out)], bu_w[2])
        p7_out = node(bu_c[3], [p7, down(p6_out)], bu_w[3])
        got = layer([p3, p4, p5, p6, p7])
    for ours, expected in zip(got, [p3_out, p4_out, p5_out, p6_out, p7_out], strict=True):
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_neck_levels_names_and_inputs():
    """``C3 .. C5`` of a 100 x 130 input -> the five levels at strides 8 .. 128, named as the FPN's; a
    level already ``d`` wide enters unchanged (no 1x1 convolution), the others through one; the first
    layer's inputs ``P6`` and ``P7`` are ``maxpool(L(C5))`` and ``maxpool(P6)`` (exact); its bottom-up node
    of a level entering through a convolution (C5, not C4 already 16 wide) takes it through a second
    one, ``L'``, the others take the same inputs."""
    neck = BiFPN([8, 16, 24], 16, num_layers=2)
    assert isinstance(neck.laterals[1], nn.Identity) and not isinstance(neck.laterals[0], nn.Identity)
    features = {str(i): torch.randn(1, c, *SIZES[i]) for i, c in enumerate([8, 16, 24])}
    seen = []
    neck.layers[0].register_forward_hook(lambda module, args, output: seen.extend(args))
    out = neck(features)
    assert list(out) == ["0", "1", "2", "p6", "p7"]
    p6 = F.max_pool2d(neck.extra_lateral(features["2"]), 3, stride=2, padding=1)
    assert torch.equal(seen[0][3], p6) and torch.equal(seen[0][4], F.max_pool2d(p6, 3, stride=2, padding=1))
    assert torch.equal(seen[0][1], features["1"])
    assert list(neck.bottom_up_laterals) == ["2"]
    assert torch.equal(seen[1][2], neck.bottom_up_laterals["2"](features["2"]))
    assert all(torch.equal(seen[1][i], seen[0][i]) for i in (0, 1, 3, 4))
    assert not BiFPN([8, 16, 24], 16, separate_bottom_up_inputs=False).bottom_up_laterals
    assert [tuple(v.shape) for v in out.values()] == [(1, 16, h, w) for h, w in SIZES]
    with pytest.raises(ValueError, match="3 inputs"):
        neck({"0": features["0"]})
