"""Recursive feature pyramid (DetectoRS, Qiao et al. 2021; the report's "3-stage RFP"): the FPN outputs of one step
are fed back into the backbone stages of the next, through an ASPP module, and consecutive steps' FPN outputs are
fused with a learned sigmoid weight.

Step 1 is the plain backbone + FPN. Each further step t runs its own copy of the backbone (DetectoRS unrolls the
backbone with separate weights per step; the copies start as the step-1 backbone, as DetectoRS loads the same
ImageNet weights into each). In step t, stage s >= 2 (stride 8 and coarser) adds ``rfp_conv(ASPP(P_s))`` of step
t-1's FPN map at its stride to its first block's residual sum, before the block's last ReLU; ``rfp_conv`` is a 1x1
conv, zero-initialised. The FPN (shared by all steps) then gives P^t, and the output is
``w * P^t + (1 - w) * P^(t-1)`` per level with ``w = sigmoid(conv1x1(P^t))``, that conv zero-initialised (w = 0.5).
At initialisation every step therefore reproduces step 1 exactly: an RFP model starts as its plain FPN model.

The feedback enters the residual blocks of the tiny backbone, the torchvision ResNets / ResNeXts, timm's ResNet
family (SE-ResNeXt, ``senet154``: before the block's last activation) and timm's legacy SENets
(``legacy_senet154``, ``legacy_seresnext*``).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet

from longtail_seg.models.deformable import stage_blocks


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling as DetectoRS uses it: one branch per dilation (1: a 1x1 conv, d > 1: a 3x3
    conv with dilation d) plus a 1x1 conv on the globally average-pooled input, each followed by ReLU, concatenated:
    ``branch_channels * (len(dilations) + 1)`` output channels at the input's size."""

    def __init__(self, in_channels: int, branch_channels: int, dilations: Sequence[int] = (1, 3, 6)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, branch_channels, 1 if d == 1 else 3, padding=0 if d == 1 else d, dilation=d)
            for d in dilations
        )
        self.pooled = nn.Conv2d(in_channels, branch_channels, 1)
        self.out_channels = branch_channels * (len(dilations) + 1)
        for conv in [*self.branches, self.pooled]:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, out_channels, H, W]."""
        outputs = [F.relu(branch(x)) for branch in self.branches]
        pooled = F.relu(self.pooled(x.mean(dim=(2, 3), keepdim=True)))
        outputs.append(pooled.expand(-1, -1, x.shape[2], x.shape[3]))
        return torch.cat(outputs, dim=1)


def stem_and_stages(body: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """A backbone body as (stem modules in order, residual stages fine to coarse): the tiny ResNet (``stem`` and
    ``stages``), torchvision's ResNet body (``IntermediateLayerGetter``: conv1, bn1, relu, maxpool, layer1..4) or a
    timm body (its ``features_only`` wrapper, ``model``, holds the same sequence: conv1.. / layer0, layer1..4)."""
    if isinstance(getattr(body, "stem", None), nn.Module) and isinstance(getattr(body, "stages", None), nn.ModuleList):
        return [body.stem], list(body.stages)
    if isinstance(getattr(body, "model", None), nn.ModuleDict):
        body = body.model
    names = list(body._modules)
    if "layer1" in names:
        first = names.index("layer1")
        return [body._modules[n] for n in names[:first]], [body._modules[n] for n in names[first:]]
    raise TypeError(f"{type(body).__name__} has no stem + layer1..4 sequence (tiny, torchvision or timm ResNet-style "
                    "backbones): its stages cannot be found for model.rfp")


def feeds_back(block: nn.Module) -> bool:
    """Whether ``block_with_feedback`` takes this block."""
    from timm.models import resnet as timm_resnet
    from timm.models import senet as timm_senet

    return isinstance(block, (resnet.BasicBlock, resnet.Bottleneck, timm_resnet.BasicBlock, timm_resnet.Bottleneck,
                              timm_senet.Bottleneck))


def block_with_feedback(block: nn.Module, x: torch.Tensor, feedback: torch.Tensor) -> torch.Tensor:
    """A residual block with ``feedback`` added to its residual sum before the last activation (DetectoRS'
    ``rfp_forward``); equals ``block(x)`` for zero feedback. Blocks: torchvision's ``BasicBlock`` / ``Bottleneck``,
    timm's ResNet ``BasicBlock`` / ``Bottleneck`` and timm's legacy SENet bottlenecks."""
    if isinstance(block, (resnet.BasicBlock, resnet.Bottleneck)):
        return _torchvision_block_with_feedback(block, x, feedback)
    from timm.models import resnet as timm_resnet
    from timm.models import senet as timm_senet

    if isinstance(block, (timm_resnet.BasicBlock, timm_resnet.Bottleneck)):
        # the residual sum is the input of the block's own last activation (act2 / act3, used once)
        last = block.act2 if isinstance(block, timm_resnet.BasicBlock) else block.act3
        handle = last.register_forward_pre_hook(lambda module, args: (args[0] + feedback,))
        try:
            return block(x)
        finally:
            handle.remove()
    if isinstance(block, timm_senet.Bottleneck):
        shortcut = x if block.downsample is None else block.downsample(x)
        out = block.relu(block.bn1(block.conv1(x)))
        out = block.relu(block.bn2(block.conv2(out)))
        out = block.se_module(block.bn3(block.conv3(out)))
        return block.relu(out + shortcut + feedback)
    raise TypeError(f"the recursive feature pyramid feeds ResNet-style residual blocks (torchvision, timm ResNet, "
                    f"timm legacy SENet bottlenecks), not {type(block).__name__}")


def _torchvision_block_with_feedback(block: nn.Module, x: torch.Tensor, feedback: torch.Tensor) -> torch.Tensor:
    """``block_with_feedback`` of a torchvision ``BasicBlock`` / ``Bottleneck``."""
    identity = x if block.downsample is None else block.downsample(x)
    out = block.relu(block.bn1(block.conv1(x)))
    if isinstance(block, resnet.Bottleneck):
        out = block.relu(block.bn2(block.conv2(out)))
        out = block.bn3(block.conv3(out))
    else:
        out = block.bn2(block.conv2(out))
    return block.relu(out + identity + feedback)


class RecursiveFeaturePyramid(nn.Module):
    """Backbone + FPN unrolled over ``steps`` (module docstring); ``steps = 1`` is the plain ``fpn(body(x))``.
    Same interface as torchvision's ``BackboneWithFPN``: ``.body``, ``.fpn``, ``.out_channels`` and an OrderedDict of
    FPN maps from ``forward``."""

    def __init__(self, body: nn.Module, fpn: nn.Module, stage_channels: Sequence[int], out_channels: int,
                 steps: int = 2, aspp_channels: int = 64, aspp_dilations: Sequence[int] = (1, 3, 6)) -> None:
        super().__init__()
        if steps < 1:
            raise ValueError(f"model.rfp.steps must be >= 1, got {steps}")
        _, stages = stem_and_stages(body)
        for stage in stages[1:] if steps > 1 else []:
            if not feeds_back(stage_blocks(stage)[0]):
                raise ValueError(f"model.rfp.steps {steps}: the feedback enters ResNet-style residual blocks "
                                 "(torchvision, timm ResNet, timm legacy SENet bottlenecks), not "
                                 f"{type(stage_blocks(stage)[0]).__name__}; set rfp.steps: 1 for this backbone")
        if len(stages) != len(stage_channels):
            raise ValueError(f"{len(stage_channels)} stage channels for a body with {len(stages)} stages")
        self.body, self.fpn, self.out_channels, self.steps = body, fpn, out_channels, steps
        self.rfp_bodies = nn.ModuleList(copy.deepcopy(body) for _ in range(steps - 1))
        self.aspp = ASPP(out_channels, aspp_channels, aspp_dilations)
        self.rfp_convs = nn.ModuleList(
            nn.ModuleList(nn.Conv2d(self.aspp.out_channels, channels, 1) for channels in stage_channels[1:])
            for _ in range(steps - 1)
        )
        self.rfp_weight = nn.Conv2d(out_channels, 1, 1)
        for conv in [*(c for step in self.rfp_convs for c in step), self.rfp_weight]:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """FPN maps "0".."k-1" (strides 4, 8, ...) and "pool" after the last step's fusion."""
        features = self.fpn(self.body(x))
        for body, convs in zip(self.rfp_bodies, self.rfp_convs):
            names = list(features)
            feedback = [self.aspp(features[name]) for name in names[1:len(convs) + 1]]
            new = self.fpn(self._body_with_feedback(body, convs, x, feedback))
            fused: OrderedDict[str, torch.Tensor] = OrderedDict()
            for name in names:
                weight = torch.sigmoid(self.rfp_weight(new[name]))
                fused[name] = weight * new[name] + (1 - weight) * features[name]
            features = fused
        return features

    @staticmethod
    def _body_with_feedback(body: nn.Module, convs: nn.ModuleList, x: torch.Tensor,
                            feedback: list[torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        """The stage outputs "0".."k-1" of ``body``, stage i >= 1 getting ``convs[i - 1](feedback[i - 1])`` in its
        first block."""
        stem, stages = stem_and_stages(body)
        for module in stem:
            x = module(x)
        outputs: OrderedDict[str, torch.Tensor] = OrderedDict()
        for index, stage in enumerate(stages):
            if index == 0:
                x = stage(x)
            else:
                blocks = stage_blocks(stage)
                x = block_with_feedback(blocks[0], x, convs[index - 1](feedback[index - 1]))
                for block in blocks[1:]:
                    x = block(x)
            outputs[str(index)] = x
        return outputs
