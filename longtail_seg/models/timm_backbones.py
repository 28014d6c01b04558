"""Backbones from timm (``model.backbone: timm:<name>``): SENet-154 (``timm:legacy_senet154``, or timm's
re-implementation ``timm:senet154``), SE-ResNeXt (``timm:seresnext50_32x4d``, ...) and any timm CNN with feature maps
at strides 4, 8, 16 and 32, taken with ``features_only=True`` to feed the FPN; ImageNet weights through timm's own
loading path, frozen BatchNorm and frozen stages as for the torchvision ResNets."""

from __future__ import annotations

import difflib
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

TIMM_PREFIX = "timm:"
FPN_STRIDES = (4, 8, 16, 32)


def import_timm() -> Any:
    """The ``timm`` module, or an ImportError that says how to install it."""
    try:
        import timm
    except ImportError as error:  # pragma: no cover - timm is a dependency of the package
        raise ImportError("model.backbone 'timm:...' needs the timm package: pip install timm (or pip install -e .)"
                          ) from error
    return timm


class TimmBody(nn.Module):
    """A timm model with ``features_only=True`` at strides 4-32: ``forward`` gives an OrderedDict "0".."3" (strides
    4, 8, 16, 32) as the torchvision ResNet bodies do; ``channels`` and ``stages()`` (the stage modules, fine to
    coarse) describe it for the FPN, deformable convs and frozen stages."""

    def __init__(self, name: str, pretrained: bool = False) -> None:
        super().__init__()
        timm = import_timm()
        if not timm.is_model(name):
            close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
            raise ValueError(f"model.backbone: timm {timm.__version__} has no model {name!r} (close: {close}); "
                             "list the names with python -c \"import timm; print(timm.list_models('*senet*'))\"")
        self.name = name
        self.model = timm.create_model(name, pretrained=pretrained, features_only=True,
                                       out_indices=_stride_indices(timm, name))
        self.channels = list(self.model.feature_info.channels())

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """Feature maps "0".."3" at strides 4, 8, 16, 32."""
        return OrderedDict((str(index), feature) for index, feature in enumerate(self.model(x)))

    def stages(self) -> list[nn.Module]:
        """The modules whose outputs are the four feature maps (e.g. ``layer1``..``layer4``), fine to coarse."""
        modules = dict(self.model.named_modules())
        found = []
        for name in self.model.feature_info.module_name():
            for candidate in (name, name.replace(".", "_"), f"model.{name}"):
                if candidate in modules:
                    found.append(modules[candidate])
                    break
            else:
                raise ValueError(f"timm model {self.name!r}: feature module {name!r} not found in its features_only "
                                 "wrapper; frozen stages and deformable convs need a stage module per feature map")
        return found

    def classification_only_keys(self) -> set[str]:
        """The state-dict keys of the full timm model that ``features_only`` drops (its classifier head): keys an
        ImageNet state dict may hold beyond this body's."""
        timm = import_timm()
        with torch.device("meta"):
            full = timm.create_model(self.name)
        return set(full.state_dict()) - set(self.model.state_dict())

    def freeze_batch_norm(self) -> None:
        """Every BatchNorm (and timm's BatchNormAct) becomes its frozen version (stored statistics, no parameters)."""
        from timm.layers import freeze_batch_norm_2d

        self.model = freeze_batch_norm_2d(self.model)


def _stride_indices(timm: Any, name: str) -> list[int]:
    """The ``out_indices`` of the model's feature maps at strides 4, 8, 16 and 32 (found on the meta device: no
    weights allocated)."""
    with torch.device("meta"):
        probe = timm.create_model(name, features_only=True)
    reductions = list(probe.feature_info.reduction())
    if not set(FPN_STRIDES) <= set(reductions):
        raise ValueError(f"model.backbone: timm model {name!r} has feature maps at strides {reductions}; the FPN "
                         f"needs one at each of {list(FPN_STRIDES)} (ResNet-like CNNs such as seresnext50_32x4d)")
    # the deepest map at each stride, where a model has two at one stride
    return [max(i for i, r in enumerate(reductions) if r == stride) for stride in FPN_STRIDES]
