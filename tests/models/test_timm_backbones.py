"""timm backbones feed the FPN at strides 4-32 with their own channels, take frozen BatchNorm, frozen stages,
deformable convs and a local ImageNet state dict as the torchvision ResNets do; SENet-154 builds and runs."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from longtail_seg.models.backbones import BodyWithFPN, build_backbone
from longtail_seg.models.deformable import DeformableConv2d
from longtail_seg.models.detector import build_detector
from longtail_seg.models.timm_backbones import TimmBody
from tests.engine.fake_data import TEST_MODEL_CFG, FakeDetectionDataset, collate

SIZES_64 = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
# SENet-154 has 115,088,984 parameters (115.1 M, as published) with its 2048 x 1000 + 1000 ImageNet classifier
SENET154_BODY_PARAMS = 115_088_984 - (2048 * 1000 + 1000)


def test_se_resnext_feeds_the_fpn_with_its_feature_channels():
    torch.manual_seed(0)
    backbone = build_backbone("timm:seresnext26d_32x4d", fpn_channels=16)
    assert isinstance(backbone, BodyWithFPN) and isinstance(backbone.body, TimmBody)
    assert backbone.body.channels == [256, 512, 1024, 2048]
    assert [block[0].in_channels for block in backbone.fpn.inner_blocks] == [256, 512, 1024, 2048]
    assert backbone.body.model.layer2[0].conv2.groups == 32 and hasattr(backbone.body.model.layer2[0], "se")
    out = backbone.eval()(torch.randn(1, 3, 64, 64))
    assert list(out) == ["0", "1", "2", "3", "pool"]
    assert [tuple(v.shape[-2:]) for v in out.values()] == SIZES_64 and all(v.shape[1] == 16 for v in out.values())


def test_frozen_bn_and_frozen_stages_as_for_torchvision():
    backbone = build_backbone("timm:test_resnet", fpn_channels=8, trainable_layers=2, norm="frozen_bn")
    model = backbone.body.model
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    trains = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trains == {"layer3", "layer4"}
    everything = build_backbone("timm:test_resnet", fpn_channels=8)  # from scratch: trainable bn, all 5 layers
    assert any(isinstance(m, nn.BatchNorm2d) for m in everything.body.modules())
    assert all(p.requires_grad for p in everything.body.parameters())
    stem_only_frozen = build_backbone("timm:test_resnet", fpn_channels=8, trainable_layers=4)
    frozen = {name.split(".")[1] for name, p in stem_only_frozen.body.named_parameters() if not p.requires_grad}
    assert frozen and not frozen & {"layer1", "layer2", "layer3", "layer4"}


def test_deformable_stages_start_unchanged():
    torch.manual_seed(0)
    plain = build_backbone("timm:test_resnet", fpn_channels=8).eval()
    with torch.no_grad():  # timm zero-initialises each block's last BatchNorm, which would hide conv2 entirely
        for module in plain.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
    dcn = build_backbone("timm:test_resnet", fpn_channels=8, dcn_stages=(3, 4, 5), dcn_modulated=True)
    missing, unexpected = dcn.load_state_dict(plain.state_dict(), strict=False)  # the offset convs stay zero
    assert unexpected == [] and missing and all(".conv2.offset." in key for key in missing)
    dcn.eval()
    blocks = [b for stage in dcn.body.stages()[1:] for b in stage]
    assert blocks and all(isinstance(b.conv2, DeformableConv2d) for b in blocks)
    x = torch.randn(2, 3, 64, 64)
    expected = plain(x)
    for name, value in dcn(x).items():  # float32 sums in another order: 1e-5 of the maps' scale
        assert (value - expected[name]).abs().max() <= 1e-5 * expected[name].abs().max(), name
    with torch.no_grad():
        blocks[0].conv2.offset.bias.fill_(0.5)
    assert not torch.allclose(dcn(x)["1"], expected["1"], atol=1e-3)


def test_a_local_timm_state_dict_loads_with_its_head_skipped(tmp_path):
    torch.manual_seed(5)
    full = timm.create_model("test_resnet")
    path = tmp_path / "test_resnet.pth"
    torch.save(full.state_dict(), path)
    assert any(k.startswith(full.pretrained_cfg["classifier"]) for k in full.state_dict())
    backbone = build_backbone("timm:test_resnet", fpn_channels=8, weights_path=path)
    torch.testing.assert_close(backbone.body.model.layer4[0].conv1.weight, full.layer4[0].conv1.weight)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.body.modules())  # ImageNet weights: frozen BN
    torch.save({k: v for k, v in full.state_dict().items() if not k.startswith("layer1.")}, path)
    with pytest.raises(ValueError, match=r"does not fit backbone 'timm:test_resnet': \d+ missing keys \(e.g. "
                                         r"\['layer1.0"):
        build_backbone("timm:test_resnet", fpn_channels=8, weights_path=path)


def test_unknown_or_unsuitable_timm_models_fail_naming_the_key():
    with pytest.raises(ValueError, match=r"model.backbone: timm .* has no model 'seresnext50_32x4' \(close: "
                                         r"\['seresnext50_32x4d'"):
        build_backbone("timm:seresnext50_32x4")
    with pytest.raises(ValueError, match=r"'test_vit' has feature maps at strides \[.*\]; the FPN needs one at each "
                                         r"of \[4, 8, 16, 32\]"):
        build_backbone("timm:test_vit")


def test_a_timm_detector_trains_one_step():
    torch.manual_seed(0)
    model = build_detector(dict(TEST_MODEL_CFG, backbone="timm:test_resnet", anchor_sizes=None,
                                dcn={"stages": [4, 5], "modulated": False}), num_classes=3).train()
    with torch.no_grad():  # timm zero-initialises each block's last BatchNorm: nothing reaches conv2 until it moves
        for module in model.backbone.body.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.fill_(1.0)
    images, targets = collate([FakeDetectionDataset(num_images=2, size=64)[i] for i in range(2)])
    losses = model(images, targets)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert model.backbone.body.model.layer4[0].conv2.offset.weight.grad.abs().sum() > 0


def test_senet154_builds_and_runs_one_forward():
    """SENet-154 (the report's backbone, ~115 M parameters with its head) at 64 x 64."""
    torch.manual_seed(0)
    backbone = build_backbone("timm:legacy_senet154", fpn_channels=16).eval()
    assert backbone.body.channels == [256, 512, 1024, 2048]
    assert sum(p.numel() for p in backbone.body.parameters()) == SENET154_BODY_PARAMS
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 64, 64))
    assert [tuple(v.shape[-2:]) for v in out.values()] == SIZES_64
