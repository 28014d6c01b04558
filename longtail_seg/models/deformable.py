"""Deformable convolution (DCNv1, or DCNv2 with modulated offsets) in chosen backbone stages: each residual block's
3x3 ``conv2`` becomes a ``DeformableConv2d`` that starts out computing exactly the plain conv, so a pretrained
backbone starts unchanged.

Start-up state: the offset (and mask) conv is zero-initialised, so every offset is 0 and bilinear sampling hits the
grid points themselves, outside the image reading 0 as the plain conv's zero padding does. DCNv2 takes the mask as
``sigmoid(m)``, 0.5 at m = 0, which would halve a pretrained conv's output; here the mask is ``2 * sigmoid(m)``
(range (0, 2)), exactly 1 at m = 0, so the modulated conv also starts as the plain one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.ops import DeformConv2d, deform_conv2d


class DeformableConv2d(DeformConv2d):
    """``torchvision.ops.DeformConv2d`` that predicts its own sampling offsets (and, ``modulated``, a mask) with a
    zero-initialised conv over its input of the same kernel, stride, padding and dilation. Its ``weight`` / ``bias``
    keys are those of the ``nn.Conv2d`` it replaces; the offset conv adds ``offset.weight`` / ``offset.bias``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], stride: int = 1,
                 padding: int = 0, dilation: int = 1, groups: int = 1, bias: bool = False,
                 modulated: bool = False, offset_groups: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.modulated = modulated
        self.offset_groups = offset_groups
        points = offset_groups * self.kernel_size[0] * self.kernel_size[1]
        self.num_offsets = 2 * points
        self.offset = nn.Conv2d(in_channels, self.num_offsets + (points if modulated else 0), self.kernel_size,
                                self.stride, self.padding, self.dilation, bias=True)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, modulated: bool = False) -> DeformableConv2d:
        """The deformable version of ``conv``: its weights copied, same device, dtype and ``requires_grad`` (a frozen
        stage's conv stays frozen, its offsets too)."""
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"deformable conv needs numeric zero padding, got padding={conv.padding!r}, "
                             f"padding_mode={conv.padding_mode!r}")
        dcn = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                  conv.groups, conv.bias is not None, modulated=modulated)
        dcn.to(device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            dcn.weight.copy_(conv.weight)
            if conv.bias is not None:
                dcn.bias.copy_(conv.bias)
        dcn.requires_grad_(conv.weight.requires_grad)
        return dcn

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """The deformable conv of ``x`` at offsets (and mask) predicted from ``x``."""
        predicted = self.offset(x)
        offset, mask = predicted[:, :self.num_offsets], None
        if self.modulated:
            mask = 2.0 * torch.sigmoid(predicted[:, self.num_offsets:])
        return deform_conv2d(x, offset, self.weight, self.bias, stride=self.stride, padding=self.padding,
                             dilation=self.dilation, mask=mask)

    def extra_repr(self) -> str:  # noqa: D102
        return super().extra_repr() + f", modulated={self.modulated}"


def stage_blocks(stage: nn.Module) -> list[nn.Module]:
    """The residual blocks of a stage: the children of an ``nn.Sequential``, else the stage itself (one block)."""
    return list(stage) if isinstance(stage, nn.Sequential) else [stage]


def make_stages_deformable(stages: Sequence[nn.Module], stage_numbers: Sequence[int],
                           modulated: bool = False) -> int:
    """Replace the 3x3 ``conv2`` of every block of the stages numbered ``stage_numbers`` (2 = stride 4, the first
    stage in ``stages``; ResNet's C2..C5) by a ``DeformableConv2d``; returns how many were replaced. A stage with no
    such conv raises naming ``model.dcn.stages``."""
    replaced = 0
    for number in stage_numbers:
        if not 2 <= number < 2 + len(stages):
            raise ValueError(f"model.dcn.stages: stage {number} does not exist; this backbone has stages "
                             f"{list(range(2, 2 + len(stages)))}")
        count = 0
        for block in stage_blocks(stages[number - 2]):
            conv = getattr(block, "conv2", None)
            if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3):
                block.conv2 = DeformableConv2d.from_conv(conv, modulated)
                count += 1
        if count == 0:
            raise ValueError(f"model.dcn.stages: stage {number} has no residual block with a 3x3 `conv2` to make "
                             "deformable (supported: torchvision / timm ResNet-style blocks and the tiny backbone)")
        replaced += count
    return replaced
