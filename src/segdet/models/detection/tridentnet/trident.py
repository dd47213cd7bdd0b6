"""Trident blocks (Li, Chen, Wang, Zhang, "Scale-Aware Trident Networks for Object Detection", ICCV 2019,
sec. 4.1, fig. 2): one ResNet stage run as ``B`` parallel branches that share every weight and differ
only in the dilation of their ``3x3`` convolutions (1, 2, 3), so that each branch has its own receptive
field (its own object scales) at no cost in parameters.

A branch runs the torchvision block as it is, except that its ``3x3`` convolutions (a bottleneck's
``conv2``; both convolutions of a basic block) use dilation ``d`` with padding ``d``: the same weights,
the same output size, a receptive field grown by ``(d - 1)`` taps a side. BatchNorm is applied per
branch (each branch's own batch statistics in training), as Detectron2's ``TridentBottleneckBlock``.

The stage's blocks before the ``trident_blocks`` last ones run once; the branches split at the first
trident block and stay separate (paper: conv4 stage of ResNet, all its blocks by default). The stage
returns the branches stacked along the batch, branch-major: ``[B N, C, H, W]`` for ``N`` images.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

DILATIONS = (1, 2, 3)


def dilated(conv: nn.Module, x: Tensor, dilation: int) -> Tensor:
    """``conv`` (a ``3x3`` convolution of dilation 1, possibly replaced by a faster module sharing its
    parameters) at ``dilation``, padding ``dilation``: the same output size."""
    if dilation == 1:
        return conv(x)
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, dilation, dilation, conv.groups)


def trident_block(block: nn.Module, x: Tensor, dilation: int) -> Tensor:
    """torchvision's ``Bottleneck`` / ``BasicBlock`` forward with its ``3x3`` convolutions at ``dilation``."""
    identity = block.downsample(x) if block.downsample is not None else x
    if isinstance(block, Bottleneck):
        out = block.relu(block.bn1(block.conv1(x)))
        out = block.relu(block.bn2(dilated(block.conv2, out, dilation)))
        out = block.bn3(block.conv3(out))
    elif isinstance(block, BasicBlock):
        out = block.relu(block.bn1(dilated(block.conv1, x, dilation)))
        out = block.bn2(dilated(block.conv2, out, dilation))
    else:
        raise TypeError(f"trident blocks need torchvision ResNet blocks, got {type(block).__name__}")
    return block.relu(out + identity)


class TridentStage(nn.Sequential):
    """A ResNet stage (its blocks, under the same names) run as trident branches; module docstring.

    Args:
        blocks: the stage (e.g. ``layer3``, the conv4 stage).
        dilations: one per branch (1, 2, 3).
        trident_blocks: how many of the last blocks are trident (``None``: all).
        test_branch: in evaluation, run only this branch (the paper's "TridentNet Fast": the middle
            branch, index 1, approximates all three); ``None``: all branches.
    """

    def __init__(
        self,
        blocks: nn.Sequential,
        dilations: Sequence[int] = DILATIONS,
        trident_blocks: int | None = None,
        test_branch: int | None = None,
    ) -> None:
        super().__init__(*blocks)
        count = len(blocks) if trident_blocks is None else trident_blocks
        if not 1 <= count <= len(blocks):
            raise ValueError(f"trident_blocks must be in [1, {len(blocks)}], got {trident_blocks}")
        if not dilations or min(dilations) < 1:
            raise ValueError(f"dilations must be positive, got {list(dilations)}")
        if test_branch is not None and not 0 <= test_branch < len(dilations):
            raise ValueError(f"test_branch must be in [0, {len(dilations) - 1}] or None, got {test_branch}")
        for block in list(blocks)[len(blocks) - count :]:
            convs = [block.conv2] if isinstance(block, Bottleneck) else [block.conv1, block.conv2]
            if any(conv.dilation != (1, 1) for conv in convs):
                raise ValueError("trident blocks start from undilated 3x3 convolutions (output stride 16)")
        self.first_trident = len(blocks) - count
        self.dilations = tuple(int(d) for d in dilations)
        self.test_branch = test_branch

    def active_dilations(self) -> tuple[int, ...]:
        """The dilations of the branches run now: all in training, ``test_branch``'s alone if set."""
        if self.training or self.test_branch is None:
            return self.dilations
        return (self.dilations[self.test_branch],)

    def forward(self, x: Tensor) -> Tensor:
        blocks = list(self)
        for block in blocks[: self.first_trident]:
            x = block(x)
        dilations = self.active_dilations()
        branches = [x] * len(dilations)
        for block in blocks[self.first_trident :]:
            branches = [trident_block(block, b, d) for b, d in zip(branches, dilations, strict=True)]
        return torch.cat(branches) if len(branches) > 1 else branches[0]
