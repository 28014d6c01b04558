"""Backbones: the torchvision ResNeXts, ImageNet weights from a local state dict (and every way such a file can
be wrong), frozen stages for any body, and the options combined in a detector that trains and predicts."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import resnet
from torchvision.ops.misc import FrozenBatchNorm2d

from longtail_seg.models import backbones
from longtail_seg.models.backbones import (
    BodyWithFPN,
    TinyResNet,
    build_backbone,
    feature_strides,
    freeze_stages,
)
from longtail_seg.models.deformable import DeformableConv2d
from longtail_seg.models.detector import build_detector, load_detector, save_checkpoint
from longtail_seg.models.rfp import RecursiveFeaturePyramid
from tests.engine.fake_data import TEST_MODEL_CFG, FakeDetectionDataset, collate


def test_resnext50_feeds_the_fpn_at_strides_4_to_32():
    backbone = build_backbone("resnext50_32x4d", fpn_channels=16).eval()
    assert isinstance(backbone, BodyWithFPN) and backbone.body.layer2[0].conv2.groups == 32
    out = backbone(torch.randn(1, 3, 64, 96))
    assert [tuple(v.shape) for v in out.values()] == [(1, 16, 16, 24), (1, 16, 8, 12), (1, 16, 4, 6),
                                                     (1, 16, 2, 3), (1, 16, 1, 2)]
    assert feature_strides("resnext50_32x4d") == [4, 8, 16, 32, 64]


def _saved_resnet18(tmp_path, transform=None, name="resnet18.pth"):
    torch.manual_seed(3)
    state = resnet.resnet18().state_dict()  # the ImageNet classification model's keys, fc included
    state = transform(state) if transform else state
    path = tmp_path / name
    torch.save(state, path)
    return path, state


def test_local_weights_load_into_the_body_with_imagenet_defaults(tmp_path):
    path, state = _saved_resnet18(tmp_path)
    backbone = build_backbone("resnet18", fpn_channels=8, weights_path=path)
    body = backbone.body.state_dict()
    for key in ("conv1.weight", "layer3.1.conv2.weight", "layer4.0.downsample.1.running_var", "bn1.bias"):
        torch.testing.assert_close(body[key], state[key], rtol=0, atol=0)
    # with ImageNet weights: frozen BatchNorm and 3 trainable stages, as for pretrained_backbone: true
    assert isinstance(backbone.body.bn1, FrozenBatchNorm2d)
    assert not backbone.body.layer1[0].conv1.weight.requires_grad and backbone.body.layer2[0].conv1.weight.requires_grad


def test_local_weights_accept_wrapped_prefixed_and_safetensors_files(tmp_path):
    from safetensors.torch import save_file

    path, state = _saved_resnet18(tmp_path)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 90}, wrapped)
    safetensors = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(safetensors))
    for file in (wrapped, safetensors):
        body = build_backbone("resnet18", fpn_channels=8, weights_path=file, norm="bn").body
        torch.testing.assert_close(body.state_dict()["layer2.0.bn1.weight"], state["layer2.0.bn1.weight"])
        assert body.state_dict()["layer2.0.bn1.num_batches_tracked"] == state["layer2.0.bn1.num_batches_tracked"]


def _drop(key):
    return lambda state: {k: v for k, v in state.items() if k != key}


def _module_types_and_frozen_parameters(model: torch.nn.Module) -> tuple[dict, dict]:
    return ({name: type(module) for name, module in model.named_modules()},
            {name: parameter.requires_grad for name, parameter in model.named_parameters()})


@pytest.mark.parametrize(("options", "norm_layer"), [
    ({}, FrozenBatchNorm2d),  # ImageNet start: frozen BatchNorm, 3 trainable layers, as training had them
    ({"norm": "bn", "trainable_backbone_layers": 2}, torch.nn.BatchNorm2d),  # what the config asked for, kept
])
def test_a_reloaded_detector_has_the_norm_layers_and_frozen_stages_it_trained_with(tmp_path, options, norm_layer):
    weights, _ = _saved_resnet18(tmp_path)
    cfg = dict(TEST_MODEL_CFG, backbone="resnet18", fpn_channels=8, backbone_weights=str(weights), **options)
    trained = build_detector(cfg, num_classes=3)
    checkpoint = tmp_path / "model_final.pth"
    save_checkpoint(checkpoint, trained, trained.model_cfg, [1, 2, 3])
    weights.unlink()  # the rebuild reads no ImageNet weights
    reloaded, _ = load_detector(checkpoint)
    assert isinstance(reloaded.backbone.body.bn1, norm_layer)
    assert _module_types_and_frozen_parameters(reloaded) == _module_types_and_frozen_parameters(trained)
    torch.testing.assert_close(reloaded.state_dict(), trained.state_dict(), rtol=0, atol=0)
    # and once more from the reloaded model's own checkpoint (what a retrained model_final.pth holds)
    save_checkpoint(checkpoint, reloaded, reloaded.model_cfg, [1, 2, 3])
    again, _ = load_detector(checkpoint)
    assert _module_types_and_frozen_parameters(again) == _module_types_and_frozen_parameters(trained)


def test_a_detector_trained_from_scratch_reloads_with_trainable_batch_norm(tmp_path):
    trained = build_detector(dict(TEST_MODEL_CFG, backbone="resnet18", fpn_channels=8), num_classes=3)
    checkpoint = tmp_path / "model_final.pth"
    save_checkpoint(checkpoint, trained, trained.model_cfg, [1, 2, 3])
    reloaded, _ = load_detector(checkpoint)
    assert isinstance(reloaded.backbone.body.bn1, torch.nn.BatchNorm2d)
    assert _module_types_and_frozen_parameters(reloaded) == _module_types_and_frozen_parameters(trained)


@pytest.mark.parametrize("transform, message", [
    (_drop("layer2.0.conv1.weight"), r"1 missing keys \(e.g. \['layer2.0.conv1.weight'\]\)"),
    (lambda s: {**s, "extra.weight": torch.zeros(2)}, r"1 unexpected keys \(e.g. \['extra.weight'\]\)"),
    (lambda s: {**s, "conv1.weight": torch.zeros(64, 3, 3, 3)},
     r"1 with another shape \(e.g. \['conv1.weight: file \[64, 3, 3, 3\] vs model \[64, 3, 7, 7\]'\]\)"),
])
def test_a_state_dict_that_does_not_fit_fails_naming_file_and_keys(tmp_path, transform, message):
    path, _ = _saved_resnet18(tmp_path, transform)
    with pytest.raises(ValueError, match=rf"model.backbone_weights: {path} does not fit backbone 'resnet18': "
                                         rf"{message}"):
        build_backbone("resnet18", fpn_channels=8, weights_path=path)


def test_a_missing_or_foreign_file_fails_with_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.backbone_weights: .*nope.pth does not exist"):
        build_backbone("resnet18", weights_path=tmp_path / "nope.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="holds no state dict"):
        build_backbone("resnet18", weights_path=tmp_path / "list.pth")
    (tmp_path / "cut.pth").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(Exception, match="cannot read this backbone state dict"):
        build_backbone("resnet18", weights_path=tmp_path / "cut.pth")
    with pytest.raises(ValueError, match="choose one source of ImageNet weights"):
        build_backbone("resnet18", pretrained=True, weights_path=tmp_path / "nope.pth")


@pytest.mark.parametrize("name", ["resnet18", "timm:test_resnet"])
def test_a_failed_download_says_to_use_a_local_state_dict(monkeypatch, name):
    """torchvision's and timm's real loading paths raise OSError without network (URLError; the hub's
    LocalEntryNotFoundError): the message names the key and the local-file alternative."""
    from urllib.error import URLError

    def offline(*args, **kwargs):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(backbones, "TimmBody" if name.startswith("timm:") else "resnet_fpn_backbone", offline)
    with pytest.raises(OSError, match=rf"model.pretrained_backbone: the ImageNet weights of '{name}' could not be "
                                      r"downloaded \(URLError: .*set model.backbone_weights: PATH"):
        build_backbone(name, pretrained=True)
    with pytest.raises(URLError):  # not a download: the error as it is
        build_backbone(name, pretrained=False)


def test_frozen_stages_for_any_body():
    body = TinyResNet(8, (8, 8, 8))
    stages = list(body.stages)
    freeze_stages(body, stages, 2)  # the last two of [stem, stage 2, 3, 4]
    assert [all(p.requires_grad for p in s.parameters()) for s in stages] == [False, True, True]
    assert not any(p.requires_grad for p in body.stem.parameters())
    body = TinyResNet(8, (8, 8, 8))
    freeze_stages(body, list(body.stages), 4)
    assert all(p.requires_grad for p in body.parameters())
    freeze_stages(body, list(body.stages), 0)
    assert not any(p.requires_grad for p in body.parameters())


def _batch(n: int = 2, size: int = 64):
    return collate([FakeDetectionDataset(num_images=n, size=size)[i] for i in range(n)])


def test_detector_with_every_option_trains_predicts_and_reloads_without_the_weights_file(tmp_path):
    """Tiny backbone + modulated DCN in stages 3-4 + a 3-step RFP, from a local backbone state dict: one training
    step changes the offsets, inference runs, and the checkpoint rebuilds without the weights file."""
    torch.manual_seed(0)
    body_path = tmp_path / "tiny_body.pth"
    torch.save(TinyResNet(8, (16, 24, 32)).state_dict(), body_path)
    cfg = dict(TEST_MODEL_CFG, backbone_weights=str(body_path), dcn={"stages": [3, 4], "modulated": True},
               rfp={"steps": 3, "aspp_channels": 4})
    model = build_detector(cfg, num_classes=3)
    assert isinstance(model.backbone, RecursiveFeaturePyramid)
    offset = model.backbone.rfp_bodies[1].stages[2].conv2.offset
    assert isinstance(model.backbone.body.stages[1].conv2, DeformableConv2d)
    model.train()
    images, targets = _batch()
    losses = model(images, targets)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    sum(losses.values()).backward()
    optimizer.step()
    assert offset.weight.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2 and all(d["boxes"].shape[1] == 4 for d in detections)
    checkpoint = tmp_path / "model_final.pth"
    save_checkpoint(checkpoint, model, cfg, [1, 2, 3])
    body_path.unlink()
    reloaded, meta = load_detector(checkpoint)
    assert meta["model_cfg"]["rfp"]["steps"] == 3
    torch.testing.assert_close(reloaded.backbone.rfp_bodies[1].stages[2].conv2.offset.weight, offset.weight)
