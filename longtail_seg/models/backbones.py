"""Backbones with FPN: torchvision ResNets (optionally ImageNet-pretrained) and a tiny ResNet for the demo."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.ops import misc as misc_nn_ops

from longtail_seg.models.config import BACKBONES, num_feature_levels

# Backbone name -> torchvision weights enum used when ``pretrained_backbone: true``.
PRETRAINED_WEIGHTS: dict[str, Callable[[], object]] = {
    "resnet18": lambda: resnet.ResNet18_Weights.IMAGENET1K_V1,
    "resnet50": lambda: resnet.ResNet50_Weights.IMAGENET1K_V2,
    "resnet101": lambda: resnet.ResNet101_Weights.IMAGENET1K_V2,
    "resnext101_32x8d": lambda: resnet.ResNeXt101_32X8D_Weights.IMAGENET1K_V2,
}


class TinyResNet(nn.Module):
    """A ResNet small enough to train Mask R-CNN from scratch on 2 CPU cores.

    Stem: 3x3 conv (stride 2) to ``stem_channels`` + max-pool (stride 4 in total); then one
    BasicBlock per stage, stride 1 for the first and 2 for the others. With the default
    (24; 48, 96, 192) the stages sit at strides 4, 8 and 16.
    """

    def __init__(self, stem_channels: int = 24, stage_channels: tuple[int, ...] = (48, 96, 192)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem_channels, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages = []
        in_channels = stem_channels
        for index, out_channels in enumerate(stage_channels):
            stride = 1 if index == 0 else 2
            stages.append(_basic_block(in_channels, out_channels, stride))
            in_channels = out_channels
        self.stages = nn.ModuleList(stages)
        self.stage_channels = tuple(stage_channels)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """Feature maps of every stage, keyed "0", "1", ... (fine to coarse)."""
        x = self.stem(x)
        features: OrderedDict[str, torch.Tensor] = OrderedDict()
        for index, stage in enumerate(self.stages):
            x = stage(x)
            features[str(index)] = x
        return features


def _basic_block(in_channels: int, out_channels: int, stride: int) -> resnet.BasicBlock:
    """A torchvision BasicBlock with a projection shortcut when the shape changes."""
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
        )
    return resnet.BasicBlock(in_channels, out_channels, stride=stride, downsample=downsample)


class TinyResNetFPN(nn.Module):
    """TinyResNet + torchvision FeaturePyramidNetwork (+ max-pool level), BackboneWithFPN-compatible."""

    def __init__(self, body: TinyResNet, fpn_channels: int) -> None:
        super().__init__()
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

        self.body = body
        self.fpn = FeaturePyramidNetwork(list(body.stage_channels), fpn_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = fpn_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """FPN maps "0".."k-1" (strides 4, 8, ...) and "pool"."""
        return self.fpn(self.body(x))


def build_backbone(
    name: str,
    fpn_channels: int = 256,
    pretrained: bool = False,
    trainable_layers: int | None = None,
    norm: str | None = None,
    tiny_stem_channels: int = 24,
    tiny_stage_channels: tuple[int, ...] = (48, 96, 192),
) -> nn.Module:
    """Backbone + FPN with ``.out_channels``; returns an OrderedDict of feature maps.

    ``norm``: "bn" (trainable BatchNorm, the default from scratch) or "frozen_bn" (the default with
    pretrained weights, as in torchvision). ``trainable_layers`` (0-5, ResNets only) defaults to 3
    when pretrained and 5 (everything) from scratch.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown model.backbone {name!r}; choose one of {list(BACKBONES)}")
    if name == "tiny":
        if pretrained:
            raise ValueError("model.backbone 'tiny' has no pretrained weights; set pretrained_backbone: false")
        return TinyResNetFPN(TinyResNet(tiny_stem_channels, tuple(tiny_stage_channels)), fpn_channels)
    norm = norm or ("frozen_bn" if pretrained else "bn")
    norm_layers = {"bn": nn.BatchNorm2d, "frozen_bn": misc_nn_ops.FrozenBatchNorm2d}
    if norm not in norm_layers:
        raise ValueError(f"unknown model.norm {norm!r}; choose 'bn' or 'frozen_bn'")
    if trainable_layers is None:
        trainable_layers = 3 if pretrained else 5
    weights = PRETRAINED_WEIGHTS[name]() if pretrained else None
    backbone: BackboneWithFPN = resnet_fpn_backbone(
        backbone_name=name, weights=weights, norm_layer=norm_layers[norm], trainable_layers=trainable_layers
    )
    if fpn_channels != backbone.out_channels:
        backbone = _resnet_fpn_with_channels(backbone, fpn_channels)
    return backbone


def _resnet_fpn_with_channels(backbone: BackboneWithFPN, fpn_channels: int) -> BackboneWithFPN:
    """Rebuild the FPN of a torchvision ResNet-FPN with ``fpn_channels`` outputs (torchvision fixes 256)."""
    from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

    in_channels = [inner[0].in_channels for inner in backbone.fpn.inner_blocks]
    backbone.fpn = FeaturePyramidNetwork(in_channels, fpn_channels, extra_blocks=LastLevelMaxPool())
    backbone.out_channels = fpn_channels
    return backbone


def feature_strides(name: str, tiny_stage_channels: tuple[int, ...] = (48, 96, 192)) -> list[int]:
    """Stride of each FPN level, fine to coarse (the first is 4 for every backbone here)."""
    return [4 * 2**level for level in range(num_feature_levels(name, tiny_stage_channels))]
