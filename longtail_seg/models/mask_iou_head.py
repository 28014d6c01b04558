"""Mask Scoring R-CNN's MaskIoU head (Huang et al. 2019): predicts the IoU of each RoI's predicted mask with its
ground truth, so a mask's score can say how good the mask is, not only how sure the class is.

Input: the RoI's pooled mask-branch features (the mask head's input, 14 x 14 here) concatenated with its predicted
mask probabilities for its class, max-pooled from 28 x 28 to 14 x 14. Four 3 x 3 convs (the last with stride 2),
two fc layers and one output per class (C + 1, background included): the IoU prediction of the RoI's class is read.

Training (positive RoIs of the last stage only): the target is the IoU, at mask resolution (M x M), of the
predicted mask binarised at 0.5 and the ground-truth mask cropped to the RoI and binarised at 0.5; the loss is the
mean squared error. The predicted mask enters as a constant (the IoU loss does not train the mask predictor).
Inference: mask score = classification score x predicted IoU (clamped to [0, 1]). With HTC the head learns on the
last stage's mask and, at inference, scores the mask the detection carries (the mean of the stages').
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MASK_THRESHOLD = 0.5  # predicted and ground-truth masks are binarised here for the IoU target


class MaskIoUHead(nn.Module):
    """Predicted mask IoU per RoI for its class, from pooled mask features [R, C, S, S] and own-class mask
    probabilities [R, 1, 2S, 2S]."""

    def __init__(self, in_channels: int, roi_size: int, conv_channels: int, fc_dim: int, num_classes: int) -> None:
        """``in_channels`` x ``roi_size``^2 pooled features; ``conv_channels`` wide convs, ``fc_dim`` wide fcs,
        ``num_classes`` foreground classes."""
        super().__init__()
        convs = []
        for index in range(4):
            stride = 2 if index == 3 else 1
            convs += [nn.Conv2d(in_channels + 1 if index == 0 else conv_channels, conv_channels, 3, stride, 1),
                      nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*convs)
        out_size = (roi_size + 1) // 2
        self.fcs = nn.Sequential(nn.Linear(conv_channels * out_size * out_size, fc_dim), nn.ReLU(inplace=True),
                                 nn.Linear(fc_dim, fc_dim), nn.ReLU(inplace=True))
        self.iou = nn.Linear(fc_dim, num_classes + 1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, features: torch.Tensor, mask_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Predicted IoU [R] of each RoI's mask (``mask_probs`` of its class ``labels``, detached)."""
        pooled_mask = self.pool(mask_probs.detach().to(features.dtype))
        x = self.convs(torch.cat((features, pooled_mask), dim=1))
        ious = self.iou(self.fcs(x.flatten(start_dim=1)))
        return ious[torch.arange(len(labels), device=ious.device), labels]


def mask_iou_targets(mask_probs: torch.Tensor, gt_masks: torch.Tensor) -> torch.Tensor:
    """IoU [R] of each predicted mask [R, M, M] (probabilities) with its ground truth in the RoI [R, M, M], both
    binarised at ``MASK_THRESHOLD``; 0 where both are empty."""
    predicted = mask_probs > MASK_THRESHOLD
    truth = gt_masks > MASK_THRESHOLD
    intersection = (predicted & truth).flatten(start_dim=1).sum(dim=1).float()
    union = (predicted | truth).flatten(start_dim=1).sum(dim=1).float()
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.zeros_like(union))


def mask_iou_loss(predicted: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the predicted IoUs on the positive RoIs (``labels > 0``); 0 (with a gradient path)
    when there are none."""
    positive = labels > 0
    if not bool(positive.any()):
        return predicted.sum() * 0.0
    return F.mse_loss(predicted[positive], targets[positive].to(predicted.dtype))


def mask_scores(class_scores: torch.Tensor, predicted_ious: torch.Tensor) -> torch.Tensor:
    """Mask Scoring R-CNN's mask score: the classification score times the predicted mask IoU in [0, 1]."""
    return class_scores * predicted_ious.clamp(0.0, 1.0).to(class_scores.dtype)
