"""Backbones with FPN: torchvision ResNets / ResNeXts and timm CNNs (SENet-154, SE-ResNeXt; optionally
ImageNet-pretrained, or loaded from a local state dict), a tiny ResNet for the demo; deformable convs in chosen
stages (``models/deformable.py``) and the recursive feature pyramid (``models/rfp.py``) as options."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.ops import misc as misc_nn_ops
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from longtail_seg.io_utils import load_torch_file
from longtail_seg.models.config import BACKBONES, num_feature_levels
from longtail_seg.models.deformable import make_stages_deformable
from longtail_seg.models.rfp import RecursiveFeaturePyramid, stem_and_stages
from longtail_seg.models.timm_backbones import TIMM_PREFIX, TimmBody

# Backbone name -> torchvision weights enum used when ``pretrained_backbone: true``.
PRETRAINED_WEIGHTS: dict[str, Callable[[], object]] = {
    "resnet18": lambda: resnet.ResNet18_Weights.IMAGENET1K_V1,
    "resnet50": lambda: resnet.ResNet50_Weights.IMAGENET1K_V2,
    "resnet101": lambda: resnet.ResNet101_Weights.IMAGENET1K_V2,
    "resnext50_32x4d": lambda: resnet.ResNeXt50_32X4D_Weights.IMAGENET1K_V2,
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


class BodyWithFPN(nn.Module):
    """A body returning an OrderedDict of stage maps + an FPN over them; ``BackboneWithFPN``'s interface
    (``.body``, ``.fpn``, ``.out_channels``)."""

    def __init__(self, body: nn.Module, fpn: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.body, self.fpn, self.out_channels = body, fpn, out_channels

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
    weights_path: str | os.PathLike | None = None,
    dcn_stages: Sequence[int] = (),
    dcn_modulated: bool = False,
    rfp_steps: int = 1,
    rfp_aspp_channels: int = 64,
    rfp_aspp_dilations: Sequence[int] = (1, 3, 6),
) -> nn.Module:
    """Backbone + FPN with ``.out_channels``; returns an OrderedDict of feature maps.

    ``name``: "tiny", a torchvision ResNet / ResNeXt, or "timm:<model>". ``norm``: "bn" (trainable BatchNorm, the
    default from scratch) or "frozen_bn" (the default with ImageNet weights, ``pretrained`` or ``weights_path``, as
    in torchvision). ``trainable_layers`` (0-5; not the tiny backbone) defaults to 3 with ImageNet weights and 5
    (everything) from scratch. ``weights_path``: a local state dict of the backbone's classification model, loaded
    before the options below. ``dcn_stages``: the stages (2-5 = strides 4-32) whose 3x3 convs become deformable.
    ``rfp_steps`` > 1: the recursive feature pyramid (``models/rfp.py``).
    """
    if name not in BACKBONES and not name.startswith(TIMM_PREFIX):
        raise ValueError(f"unknown model.backbone {name!r}; choose one of {list(BACKBONES)} or timm:<name>")
    if pretrained and weights_path is not None:
        raise ValueError("model.pretrained_backbone and model.backbone_weights both set: choose one source of "
                         "ImageNet weights")
    if name == "tiny":
        if pretrained:
            raise ValueError("model.backbone 'tiny' has no pretrained weights; set pretrained_backbone: false")
        body: nn.Module = TinyResNet(tiny_stem_channels, tuple(tiny_stage_channels))
        channels = list(body.stage_channels)
        fpn = None
    else:
        body, channels, fpn = _pretrainable_body(name, fpn_channels, pretrained, weights_path is not None,
                                                 trainable_layers, norm)
    if weights_path is not None:
        load_backbone_weights(body, weights_path, name)
    if dcn_stages:
        make_stages_deformable(body_stages(body), dcn_stages, dcn_modulated)
    if fpn is None:
        fpn = FeaturePyramidNetwork(channels, fpn_channels, extra_blocks=LastLevelMaxPool())
    if rfp_steps > 1:
        return RecursiveFeaturePyramid(body, fpn, channels, fpn_channels, rfp_steps, rfp_aspp_channels,
                                       rfp_aspp_dilations)
    return BodyWithFPN(body, fpn, fpn_channels)


def build_backbone_from_cfg(cfg: Mapping[str, Any]) -> nn.Module:
    """``build_backbone`` with the settings of a resolved ``model:`` config."""
    return build_backbone(
        cfg["backbone"],
        fpn_channels=cfg["fpn_channels"],
        pretrained=cfg["pretrained_backbone"],
        trainable_layers=cfg["trainable_backbone_layers"],
        norm=cfg["norm"],
        tiny_stem_channels=cfg["tiny_stem_channels"],
        tiny_stage_channels=tuple(cfg["tiny_stage_channels"]),
        weights_path=cfg["backbone_weights"],
        dcn_stages=tuple(cfg["dcn"]["stages"]),
        dcn_modulated=cfg["dcn"]["modulated"],
        rfp_steps=cfg["rfp"]["steps"],
        rfp_aspp_channels=cfg["rfp"]["aspp_channels"],
        rfp_aspp_dilations=tuple(cfg["rfp"]["aspp_dilations"]),
    )


def _pretrainable_body(name: str, fpn_channels: int, pretrained: bool, local_weights: bool,
                       trainable_layers: int | None, norm: str | None) -> tuple[nn.Module, list[int], nn.Module | None]:
    """(body, its stage channels, torchvision's FPN or None) of a torchvision or timm backbone, with its norm and
    frozen stages; the defaults are those of a backbone that starts from ImageNet weights when it does."""
    norm, trainable_layers = norm_and_trainable_layers(pretrained or local_weights, norm, trainable_layers)
    norm_layers = {"bn": nn.BatchNorm2d, "frozen_bn": misc_nn_ops.FrozenBatchNorm2d}
    if norm not in norm_layers:
        raise ValueError(f"unknown model.norm {norm!r}; choose 'bn' or 'frozen_bn'")
    try:
        if name.startswith(TIMM_PREFIX):
            body = TimmBody(name[len(TIMM_PREFIX):], pretrained=pretrained)
            if norm == "frozen_bn":
                body.freeze_batch_norm()
            freeze_stages(body, body.stages(), trainable_layers)
            return body, body.channels, None
        weights = PRETRAINED_WEIGHTS[name]() if pretrained else None
        backbone: BackboneWithFPN = resnet_fpn_backbone(
            backbone_name=name, weights=weights, norm_layer=norm_layers[norm], trainable_layers=trainable_layers
        )
    except OSError as error:  # a download without network (URLError, the hub's "cannot find the requested files")
        if not pretrained:
            raise
        raise OSError(f"model.pretrained_backbone: the ImageNet weights of {name!r} could not be downloaded "
                      f"({type(error).__name__}: {str(error)[:200]}); without network access, save that model's "
                      "state dict elsewhere (torch.save(model.state_dict(), PATH)), copy it here and set "
                      "model.backbone_weights: PATH with pretrained_backbone: false") from error
    channels = [inner[0].in_channels for inner in backbone.fpn.inner_blocks]
    # torchvision fixes 256 FPN channels: another width gets a new FPN
    return backbone.body, channels, backbone.fpn if fpn_channels == backbone.out_channels else None


def norm_and_trainable_layers(imagenet: bool, norm: str | None, trainable_layers: int | None) -> tuple[str, int]:
    """(norm, trainable layers) of a torchvision / timm body: the given ones, else those of a body that starts from
    ImageNet weights (frozen BatchNorm, the last 3 layers trained, as in torchvision) or from scratch (BatchNorm, all
    5)."""
    norm = norm or ("frozen_bn" if imagenet else "bn")
    return norm, (3 if imagenet else 5) if trainable_layers is None else trainable_layers


def rebuild_cfg(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The model config that rebuilds a trained model around its own weights: no ImageNet weights downloaded or read
    again, but the norm layers and frozen stages that starting from them gave it (``FrozenBatchNorm2d`` stays
    ``FrozenBatchNorm2d``, and a retrained or fine-tuned model freezes what training froze)."""
    imagenet = bool(model_cfg.get("pretrained_backbone")) or model_cfg.get("backbone_weights") is not None
    rebuilt = dict(model_cfg, pretrained_backbone=False, backbone_weights=None)
    if imagenet and model_cfg.get("backbone") != "tiny":  # the tiny body has neither option
        norm, layers = norm_and_trainable_layers(True, model_cfg.get("norm"),
                                                 model_cfg.get("trainable_backbone_layers"))
        rebuilt.update(norm=norm, trainable_backbone_layers=layers)
    return rebuilt


def body_stages(body: nn.Module) -> list[nn.Module]:
    """The residual stages of a body, fine to coarse (stage 2 = stride 4 first)."""
    return body.stages() if isinstance(body, TimmBody) else stem_and_stages(body)[1]


def freeze_stages(body: nn.Module, stages: Sequence[nn.Module], trainable_layers: int) -> None:
    """torchvision's ``trainable_layers`` for any body: the last ``trainable_layers`` of [stem, stage 2, ..., stage 5]
    keep learning (5: everything; the stem is whatever is not in a stage), the rest stops requiring gradients."""
    if trainable_layers >= len(stages) + 1:
        return
    trained = {id(p) for stage in stages[len(stages) - trainable_layers:] for p in stage.parameters()}
    for parameter in body.parameters():
        if id(parameter) not in trained:
            parameter.requires_grad_(False)


def load_backbone_weights(body: nn.Module, path: str | os.PathLike, name: str) -> None:
    """Load ``model.backbone_weights``: a state dict of the backbone's classification model (a ``torch.save`` file,
    or ``.safetensors``; optionally under "state_dict" / "model", keys optionally prefixed "module."), e.g.
    ``torchvision.models.resnet50().state_dict()`` or ``timm.create_model(name).state_dict()``. Its classifier head is
    skipped; a missing key, any other extra key or a shape mismatch raises naming the file and the keys."""
    target = body.model if isinstance(body, TimmBody) else body
    if not os.path.exists(path):
        raise FileNotFoundError(f"model.backbone_weights: {path} does not exist; save the ImageNet state dict of "
                                f"{name!r} there (torch.save(model.state_dict(), PATH)) or set it to null")
    state = _read_state_dict(path)
    expected = target.state_dict()
    head = body.classification_only_keys() if isinstance(body, TimmBody) else {"fc.weight", "fc.bias"}
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected and k not in head and not k.endswith("num_batches_tracked")]
    mismatched = [f"{k}: file {list(state[k].shape)} vs model {list(expected[k].shape)}" for k in expected
                  if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    found = (("missing keys", missing), ("unexpected keys", unexpected), ("with another shape", mismatched))
    problems = [f"{len(keys)} {what} (e.g. {keys[:4]})" for what, keys in found if keys]
    if problems:
        raise ValueError(f"model.backbone_weights: {path} does not fit backbone {name!r}: {'; '.join(problems)}. "
                         "Save the state dict of the same architecture (torchvision.models.<name>(weights=...) or "
                         "timm.create_model(name, pretrained=True)) with torch.save(model.state_dict(), PATH)")
    target.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)


def _read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a state-dict file (unwrapped from "state_dict" / "model", "module." prefixes removed)."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        state = load_torch_file(path, "backbone state dict", "save it again with torch.save(model.state_dict(), PATH)")
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"model.backbone_weights: {path} holds no state dict (a mapping of names to tensors); save "
                         "one with torch.save(model.state_dict(), PATH)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def feature_strides(name: str, tiny_stage_channels: tuple[int, ...] = (48, 96, 192)) -> list[int]:
    """Stride of each FPN level, fine to coarse (the first is 4 for every backbone here)."""
    return [4 * 2**level for level in range(num_feature_levels(name, tiny_stage_channels))]
