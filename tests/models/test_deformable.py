"""Deformable convs start as the plain conv they replace (zero offsets; modulated: mask 1), follow their offsets and
mask exactly (hand-computed shifts and scales), pass gradients to the offset conv, and replace the 3x3 conv of every
block of the chosen stages of the tiny backbone and ResNet-50."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet

from longtail_seg.models.backbones import TinyResNet, body_stages, build_backbone
from longtail_seg.models.deformable import DeformableConv2d, make_stages_deformable


def _conv(groups: int = 1, stride: int = 1, bias: bool = False, dilation: int = 1) -> nn.Conv2d:
    torch.manual_seed(0)
    return nn.Conv2d(8, 12, 3, stride=stride, padding=dilation, dilation=dilation, groups=groups, bias=bias)


@pytest.mark.parametrize("modulated", [False, True])
@pytest.mark.parametrize("groups, stride, bias, dilation", [(1, 1, False, 1), (4, 2, True, 1), (2, 1, False, 2)])
def test_zero_offsets_compute_the_plain_conv(modulated, groups, stride, bias, dilation):
    conv = _conv(groups, stride, bias, dilation)
    dcn = DeformableConv2d.from_conv(conv, modulated=modulated)
    x = torch.randn(2, 8, 11, 9)
    torch.testing.assert_close(dcn(x), conv(x), rtol=0, atol=1e-5)
    assert set(dcn.state_dict()) == set(conv.state_dict()) | {"offset.weight", "offset.bias"}
    assert dcn.offset.out_channels == 9 * (3 if modulated else 2)


def test_offsets_shift_the_sampling_points():
    """Every dx = +1 samples one pixel to the right: output column j reads input columns j, j+1, j+2 (zero beyond
    the image), the plain 3x3 conv over the input padded by 0 columns on the left and 2 on the right; dy = -1 with
    dx = 0 likewise reads rows i-2, i-1, i."""
    conv = _conv()
    dcn = DeformableConv2d.from_conv(conv)
    with torch.no_grad():
        dcn.offset.bias[1:18:2] = 1.0  # channels (2k, 2k+1) = (dy, dx) of kernel point k
    x = torch.randn(1, 8, 7, 6)
    torch.testing.assert_close(dcn(x), F.conv2d(F.pad(x, (0, 2, 1, 1)), conv.weight), rtol=0, atol=1e-5)
    with torch.no_grad():
        dcn.offset.bias.zero_()
        dcn.offset.bias[0:18:2] = -1.0
    torch.testing.assert_close(dcn(x), F.conv2d(F.pad(x, (1, 1, 2, 0)), conv.weight), rtol=0, atol=1e-5)


def test_the_modulation_mask_scales_each_sample():
    """Mask logits -log 3 give 2 * sigmoid = 0.5: half the plain conv (no bias); a very negative logit on the centre
    point alone removes that point from the kernel."""
    conv = _conv()
    dcn = DeformableConv2d.from_conv(conv, modulated=True)
    x = torch.randn(1, 8, 7, 6)
    with torch.no_grad():
        dcn.offset.bias[18:] = -math.log(3.0)
    torch.testing.assert_close(dcn(x), 0.5 * conv(x), rtol=0, atol=1e-5)
    with torch.no_grad():
        dcn.offset.bias[18:] = 0.0
        dcn.offset.bias[18 + 4] = -1e4  # kernel point 4 = the centre of the 3x3
    weight = conv.weight.detach().clone()
    weight[:, :, 1, 1] = 0
    torch.testing.assert_close(dcn(x), F.conv2d(x, weight, padding=1), rtol=0, atol=1e-5)


@pytest.mark.parametrize("modulated", [False, True])
def test_gradient_reaches_the_offset_conv(modulated):
    dcn = DeformableConv2d.from_conv(_conv(), modulated=modulated)
    x = torch.randn(2, 8, 9, 9)
    (dcn(x) ** 2).sum().backward()
    assert dcn.offset.weight.grad is not None and dcn.offset.weight.grad[:18].abs().sum() > 0
    if modulated:
        assert dcn.offset.weight.grad[18:].abs().sum() > 0
    assert dcn.weight.grad.abs().sum() > 0


def test_a_frozen_conv_stays_frozen():
    conv = _conv()
    conv.requires_grad_(False)
    dcn = DeformableConv2d.from_conv(conv, modulated=True)
    assert not any(p.requires_grad for p in dcn.parameters())


@pytest.mark.parametrize("modulated", [False, True])
def test_tiny_backbone_stages_start_unchanged(modulated):
    torch.manual_seed(0)
    body = TinyResNet(8, (8, 16, 16)).eval()
    plain = copy.deepcopy(body)
    assert make_stages_deformable(body_stages(body), [2, 3, 4], modulated) == 3
    assert all(isinstance(stage.conv2, DeformableConv2d) for stage in body.stages)
    assert isinstance(body.stages[0].conv1, nn.Conv2d) and not isinstance(body.stages[0].conv1, DeformableConv2d)
    x = torch.randn(2, 3, 40, 36)
    for name, value in plain(x).items():
        torch.testing.assert_close(body(x)[name], value, rtol=0, atol=1e-5)


def test_resnet50_stages_3_to_5_start_unchanged_and_learn_offsets():
    torch.manual_seed(0)
    plain = build_backbone("resnet50", fpn_channels=16).eval()
    dcn = copy.deepcopy(plain)
    assert make_stages_deformable(body_stages(dcn.body), [3, 4, 5], modulated=True) == 4 + 6 + 3
    assert not isinstance(dcn.body.layer1[0].conv2, DeformableConv2d)
    assert all(isinstance(block.conv2, DeformableConv2d) for block in dcn.body.layer3)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, out = plain(x), dcn(x)
    for name, value in expected.items():  # float32 sums in another order: 1e-5 of the maps' scale (~100 here)
        assert (out[name] - value).abs().max() <= 1e-5 * value.abs().max(), name
    block = dcn.body.layer4[0]  # the gradient through one block (the whole backward is slow on CPU)
    block(torch.randn(1, 1024, 4, 4)).square().sum().backward()
    assert block.conv2.offset.weight.grad.abs().sum() > 0


def test_resnext_grouped_conv_and_frozen_stages():
    """ResNeXt's grouped 3x3 conv keeps its groups; a stage frozen by trainable_backbone_layers keeps its offsets
    frozen, a trained stage learns them."""
    backbone = build_backbone("resnext50_32x4d", fpn_channels=16, trainable_layers=3, norm="frozen_bn",
                              dcn_stages=(2, 5))
    first, last = backbone.body.layer1[0].conv2, backbone.body.layer4[0].conv2
    assert isinstance(first, DeformableConv2d) and first.groups == 32
    assert not any(p.requires_grad for p in first.parameters())
    assert all(p.requires_grad for p in last.parameters())
    out = backbone.eval()(torch.randn(1, 3, 64, 64))
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]


def test_a_stage_without_a_3x3_conv2_or_out_of_range_fails_naming_the_key():
    with pytest.raises(ValueError, match=r"model.dcn.stages: stage 6 does not exist; this backbone has stages "
                                         r"\[2, 3, 4, 5\]"):
        make_stages_deformable([nn.Identity()] * 4, [6])
    with pytest.raises(ValueError, match="model.dcn.stages: stage 2 has no residual block with a 3x3 `conv2`"):
        make_stages_deformable([nn.Sequential(nn.Conv2d(3, 3, 3))], [2])
    block = resnet.Bottleneck(16, 4)
    block.conv2 = nn.Conv2d(4, 4, 1)
    with pytest.raises(ValueError, match="stage 2 has no residual block"):
        make_stages_deformable([block], [2])
