"""The recursive feature pyramid: one step is the plain FPN, more steps start equal to it (copied backbones,
zero-initialised feedback and fusion), keep the FPN's shapes, pass gradients to every part once the feedback is
non-zero, and add exactly the parameters counted by hand."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.models import resnet
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from longtail_seg.models.backbones import TinyResNet, build_backbone
from longtail_seg.models.deformable import DeformableConv2d
from longtail_seg.models.rfp import ASPP, RecursiveFeaturePyramid, block_with_feedback, stem_and_stages

CHANNELS = (8, 16, 16)


def _tiny(steps: int, seed: int = 0, fpn_channels: int = 8) -> RecursiveFeaturePyramid:
    torch.manual_seed(seed)
    body = TinyResNet(8, CHANNELS)
    fpn = FeaturePyramidNetwork(list(CHANNELS), fpn_channels, extra_blocks=LastLevelMaxPool())
    return RecursiveFeaturePyramid(body, fpn, CHANNELS, fpn_channels, steps, aspp_channels=4, aspp_dilations=(1, 3))


def _perturb_feedback(model: RecursiveFeaturePyramid) -> None:
    torch.manual_seed(1)
    with torch.no_grad():
        for conv in [c for step in model.rfp_convs for c in step] + [model.rfp_weight]:
            conv.weight.normal_(0, 0.3)


def test_aspp_branches_by_hand():
    torch.manual_seed(0)
    aspp = ASPP(3, 2, dilations=(1, 2))
    assert aspp.out_channels == 6
    assert [b.kernel_size for b in aspp.branches] == [(1, 1), (3, 3)] and aspp.branches[1].dilation == (2, 2)
    x = torch.randn(2, 3, 7, 5)
    out = aspp(x)
    assert out.shape == (2, 6, 7, 5)
    torch.testing.assert_close(out[:, :2], torch.relu(aspp.branches[0](x)))
    torch.testing.assert_close(out[:, 2:4], torch.relu(nn.functional.conv2d(x, aspp.branches[1].weight,
                                                                             aspp.branches[1].bias, padding=2,
                                                                             dilation=2)))
    pooled = torch.relu(aspp.pooled.weight[:, :, 0, 0] @ x.mean(dim=(2, 3)).T + aspp.pooled.bias[:, None]).T
    torch.testing.assert_close(out[:, 4:], pooled[:, :, None, None].expand(-1, -1, 7, 5))


@pytest.mark.parametrize("block", [resnet.BasicBlock(8, 8), resnet.Bottleneck(
    8, 4, stride=2, downsample=nn.Sequential(nn.Conv2d(8, 16, 1, stride=2), nn.BatchNorm2d(16)))])
def test_feedback_enters_the_residual_sum_before_the_last_relu(block):
    torch.manual_seed(0)
    block.eval()
    x = torch.randn(2, 8, 8, 8)
    out = block(x)
    torch.testing.assert_close(block_with_feedback(block, x, torch.zeros_like(out)), out, rtol=0, atol=0)
    captured = {}
    last_norm = block.bn3 if isinstance(block, resnet.Bottleneck) else block.bn2
    last_norm.register_forward_hook(lambda m, i, o: captured.update(residual=o))
    feedback = torch.randn_like(out)
    result = block_with_feedback(block, x, feedback)
    identity = x if block.downsample is None else block.downsample(x)
    torch.testing.assert_close(result, torch.relu(captured["residual"] + identity + feedback))


def test_one_step_is_the_plain_fpn():
    model = _tiny(steps=1)
    assert len(model.rfp_bodies) == 0 and len(model.rfp_convs) == 0
    x = torch.randn(2, 3, 48, 40)
    plain = model.fpn(model.body(x))
    for name, value in model(x).items():
        torch.testing.assert_close(value, plain[name], rtol=0, atol=0)


@pytest.mark.parametrize("steps", [2, 3])
@pytest.mark.parametrize("training", [False, True])
def test_more_steps_start_as_the_plain_fpn_with_its_shapes(steps, training):
    model = _tiny(steps).train(training)
    x = torch.randn(2, 3, 70, 58)  # odd sizes: every stage's feedback still matches its map
    plain = model.fpn(model.body(x))
    out = model(x)
    assert list(out) == ["0", "1", "2", "pool"]
    for name, value in plain.items():
        assert out[name].shape == value.shape
        torch.testing.assert_close(out[name], value, rtol=0, atol=1e-6)


@pytest.mark.parametrize("steps", [2, 3])
def test_gradient_flows_to_every_part(steps):
    model = _tiny(steps)
    x = torch.randn(2, 3, 48, 40)
    sum(v.square().sum() for v in model(x).values()).backward()
    # at initialisation the feedback convs learn first (everything behind them is multiplied by their zero weights)
    assert all(c.weight.grad.abs().sum() > 0 for step in model.rfp_convs for c in step)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.aspp.parameters())
    model.zero_grad()
    _perturb_feedback(model)
    out = model(x)
    plain = model.fpn(model.body(x))
    assert not torch.allclose(out["1"], plain["1"])
    sum(v.square().sum() for v in out.values()).backward()
    for part in (model.body, model.fpn, model.aspp, model.rfp_weight, *model.rfp_bodies, *model.rfp_convs):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters()), part


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_parameter_count_by_hand(steps):
    model = _tiny(steps, fpn_channels=8)
    body, fpn = _count(model.body), _count(model.fpn)
    aspp = (8 * 4 + 4) + (8 * 4 * 9 + 4) + (8 * 4 + 4)  # 1x1, 3x3 dilated, image pooling
    feedback = sum(12 * c + c for c in CHANNELS[1:])  # 1x1 convs from 3 x 4 ASPP channels to stages 3 and 4
    fusion = 8 + 1
    assert _count(model) == body + fpn + aspp + fusion + (steps - 1) * (body + feedback)


def test_resnet_rfp_with_deformable_convs_through_build_backbone():
    """ResNet-18 with three steps and deformable convs: every step's body carries them, the feedback enters the
    first block of layer2-4, and the whole starts equal to the plain backbone."""
    torch.manual_seed(0)
    rfp = build_backbone("resnet18", fpn_channels=16, dcn_stages=(3, 4, 5), rfp_steps=3, rfp_aspp_channels=8)
    assert isinstance(rfp, RecursiveFeaturePyramid) and len(rfp.rfp_bodies) == 2
    assert [c.out_channels for c in rfp.rfp_convs[1]] == [128, 256, 512] and rfp.aspp.out_channels == 32
    assert isinstance(rfp.rfp_bodies[1].layer3[0].conv2, DeformableConv2d)
    rfp.eval()
    x = torch.randn(1, 3, 64, 64)
    plain = rfp.fpn(rfp.body(x))
    for name, value in rfp(x).items():
        torch.testing.assert_close(value, plain[name], rtol=0, atol=1e-5)
    frozen = build_backbone("resnet18", fpn_channels=16, trainable_layers=2, norm="frozen_bn", rfp_steps=2)
    copy_stem, copy_stages = stem_and_stages(frozen.rfp_bodies[0])
    assert not any(p.requires_grad for p in copy_stages[1].parameters())  # layer2 frozen in every step's body
    assert all(p.requires_grad for p in copy_stages[3].parameters())


def _timm_blocks() -> list[nn.Module]:
    from timm.models import resnet as timm_resnet
    from timm.models import senet as timm_senet

    down = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2), nn.BatchNorm2d(16))
    return [timm_resnet.BasicBlock(8, 8), timm_resnet.Bottleneck(8, 4, stride=2, downsample=down),
            timm_senet.SEResNeXtBottleneck(8, 4, groups=2, reduction=2, stride=2, base_width=32,
                                           downsample=copy.deepcopy(down))]


@pytest.mark.parametrize("index", [0, 1, 2], ids=["timm_basic", "timm_bottleneck", "legacy_senet_bottleneck"])
def test_feedback_enters_timm_blocks_before_the_last_activation(index):
    torch.manual_seed(0)
    block = _timm_blocks()[index].eval()
    with torch.no_grad():  # timm zero-initialises the last BatchNorm of its ResNet blocks
        for module in block.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 8, 8, 8)
    out = block(x)
    torch.testing.assert_close(block_with_feedback(block, x, torch.zeros_like(out)), out, rtol=0, atol=0)
    captured = {}
    if index < 2:  # the residual sum: the last activation's input, seen before the feedback's hook adds to it
        last = block.act2 if index == 0 else block.act3
        last.register_forward_pre_hook(lambda m, args: captured.update(value=args[0].clone()))
    else:
        block.se_module.register_forward_hook(lambda m, i, o: captured.update(value=o))
    feedback = torch.randn_like(out)
    result = block_with_feedback(block, x, feedback)
    if index < 2:
        torch.testing.assert_close(result, torch.relu(captured["value"] + feedback))
    else:  # the SE output + shortcut + feedback
        torch.testing.assert_close(result, torch.relu(captured["value"] + block.downsample(x) + feedback))
    assert not torch.equal(result, out)
    assert block(x).equal(out)  # the hook is gone


def test_timm_rfp_starts_as_the_plain_fpn_and_learns():
    torch.manual_seed(0)
    rfp = build_backbone("timm:test_resnet", fpn_channels=8, rfp_steps=2, rfp_aspp_channels=4)
    with torch.no_grad():  # timm's zero-initialised last BatchNorms would hide most of each block
        for module in rfp.body.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
    rfp.rfp_bodies[0].load_state_dict(rfp.body.state_dict())  # step 2 starts as step 1
    assert [c.out_channels for c in rfp.rfp_convs[0]] == rfp.body.channels[1:]
    x = torch.randn(2, 3, 64, 64)
    rfp.eval()
    plain = rfp.fpn(rfp.body(x))
    out = rfp(x)
    for name, value in plain.items():
        torch.testing.assert_close(out[name], value, rtol=0, atol=1e-6)
    _perturb_feedback(rfp)
    rfp.train()
    sum(v.square().sum() for v in rfp(x).values()).backward()
    assert all(c.weight.grad.abs().sum() > 0 for c in rfp.rfp_convs[0])
    assert rfp.aspp.pooled.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name, stem", [("legacy_senet154", ["layer0", "pool0"]),
                                        ("seresnext50_32x4d", ["conv1", "bn1", "act1", "maxpool"])])
def test_timm_se_backbones_split_into_stem_and_feedable_stages(name, stem):
    """SENet-154 (legacy) and SE-ResNeXt-50 (timm's ResNet) as their features_only wrappers hold them (built on the
    meta device: no weights)."""
    import timm

    from longtail_seg.models.rfp import feeds_back

    with torch.device("meta"):
        wrapper = timm.create_model(name, features_only=True, out_indices=(1, 2, 3, 4))
    stem_modules, stages = stem_and_stages(wrapper)
    assert [wrapper[n] for n in stem] == stem_modules and [wrapper[f"layer{i}"] for i in (1, 2, 3, 4)] == stages
    assert all(feeds_back(stage[0]) for stage in stages)


def test_blocks_without_a_feedback_path_fail_naming_the_key():
    with pytest.raises(TypeError, match="feeds ResNet-style residual blocks"):
        block_with_feedback(nn.Conv2d(3, 3, 1), torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2))
    with pytest.raises(TypeError, match="its stages cannot be found for model.rfp"):
        stem_and_stages(nn.Sequential(nn.Conv2d(3, 3, 1)))
    body = TinyResNet(8, CHANNELS)
    body.stages[1] = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1))
    with pytest.raises(ValueError, match="model.rfp.steps 2: the feedback enters ResNet-style residual blocks"):
        RecursiveFeaturePyramid(body, nn.Identity(), CHANNELS, 8, steps=2)
    with pytest.raises(ValueError, match="model.rfp.steps must be >= 1"):
        RecursiveFeaturePyramid(TinyResNet(8, CHANNELS), nn.Identity(), CHANNELS, 8, steps=0)
    assert copy.deepcopy(_tiny(2)).steps == 2
