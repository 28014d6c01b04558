"""Double-Head R-CNN's box head (Wu et al. 2020, "Rethinking Classification and Localization for Object Detection"):
an fc head for classification and a conv head for box regression, on the same 7 x 7 RoI features.

The fc head is Mask R-CNN's two-fc head (torchvision's ``TwoMLPHead``), so every box classifier takes its features
as before. The conv head is one residual block that widens the RoI features to ``conv_channels`` (3 x 3 and 1 x 1
convs beside a 1 x 1 projection, as the paper's first block), then ``conv_blocks`` ResNet bottleneck blocks
(torchvision's ``Bottleneck``, width ``conv_channels / 4``), then average pooling: a ``conv_channels`` vector per
RoI for the box regressor. The head returns both, as ``DoubleHeadFeatures``; ``split_box_features`` reads either
kind of head's output.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.resnet import Bottleneck


class DoubleHeadFeatures(NamedTuple):
    """The double head's two outputs per RoI: fc features [R, D] for the classifier, conv features [R, C] for the
    box regressor."""

    classification: torch.Tensor
    regression: torch.Tensor


class WideningResBlock(nn.Module):
    """The conv head's first residual block: relu(bn(1x1(relu(bn(3x3(x))))) + bn(1x1 projection of x)), taking
    ``in_channels`` to ``out_channels`` at the same size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.projection = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                        nn.BatchNorm2d(out_channels))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[R, in, H, W] -> [R, out, H, W]."""
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + self.projection(x))


class DoubleHead(nn.Module):
    """fc head (classification) and conv head (regression) over the same pooled RoI features [R, C, S, S]."""

    def __init__(self, in_channels: int, resolution: int, fc_dim: int, conv_channels: int, conv_blocks: int) -> None:
        """``in_channels`` x ``resolution``^2 RoI features; ``fc_dim`` wide fc features; a conv head of one widening
        block and ``conv_blocks`` bottlenecks, ``conv_channels`` wide (a multiple of 4)."""
        super().__init__()
        if conv_channels % Bottleneck.expansion:
            raise ValueError(f"model.double_head.conv_channels must be a multiple of {Bottleneck.expansion} (the "
                             f"bottleneck width is a quarter of it), got {conv_channels}")
        self.fc_head = TwoMLPHead(in_channels * resolution * resolution, fc_dim)
        blocks = [Bottleneck(conv_channels, conv_channels // Bottleneck.expansion) for _ in range(conv_blocks)]
        self.conv_head = nn.Sequential(WideningResBlock(in_channels, conv_channels), *blocks)
        self.out_channels = conv_channels

    def forward(self, x: torch.Tensor) -> DoubleHeadFeatures:
        """Pooled RoI features [R, C, S, S] -> (fc features [R, fc_dim], conv features [R, conv_channels])."""
        return DoubleHeadFeatures(self.fc_head(x), self.conv_head(x).mean(dim=(2, 3)))


def split_box_features(features: torch.Tensor | DoubleHeadFeatures) -> tuple[torch.Tensor, torch.Tensor]:
    """(classifier features, regressor features) of a box head's output: one tensor serves both (the fc head)."""
    if isinstance(features, DoubleHeadFeatures):
        return features.classification, features.regression
    return features, features
