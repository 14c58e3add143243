"""RetinaFace with MobileNet-0.25 and ResNet-50 backbones, in the module layout of the
widely used Pytorch_Retinaface implementation: `body.*`, `fpn.*`, `ssh1..3.*`,
`ClassHead.N.conv1x1`, `BboxHead.N.conv1x1`, `LandmarkHead.N.conv1x1`, 2 anchors per
location at strides 8/16/32. Also the prior boxes and a multibox loss, so that the
classic crash of a pruned head can be reproduced exactly.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from .resnet import resnet50

__all__ = [
    "RetinaFace",
    "retinaface_mnet",
    "retinaface_resnet50",
    "prior_boxes",
    "multibox_loss",
    "HEAD_WIDTHS",
    "ANCHORS_PER_LOCATION",
]

ANCHORS_PER_LOCATION = 2
#: Values each head predicts per anchor.
HEAD_WIDTHS = {"ClassHead": 2, "BboxHead": 4, "LandmarkHead": 10}
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCES = (0.1, 0.2)


def conv_bn(inp: int, oup: int, stride: int = 1, leaky: float = 0.0) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup), nn.LeakyReLU(leaky, inplace=True)
    )


def conv_bn_no_relu(inp: int, oup: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup))


def conv_bn1x1(inp: int, oup: int, stride: int = 1, leaky: float = 0.0) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, 1, stride, 0, bias=False), nn.BatchNorm2d(oup), nn.LeakyReLU(leaky, inplace=True)
    )


def conv_dw(inp: int, oup: int, stride: int, leaky: float = 0.1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.LeakyReLU(leaky, inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(leaky, inplace=True),
    )


class MobileNetV1(nn.Module):
    """MobileNet at width 0.25, as RetinaFace's light backbone."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            conv_bn(3, 8, 2, leaky=0.1),
            conv_dw(8, 16, 1),
            conv_dw(16, 32, 2),
            conv_dw(32, 32, 1),
            conv_dw(32, 64, 2),
            conv_dw(64, 64, 1),
        )
        self.stage2 = nn.Sequential(conv_dw(64, 128, 2), *[conv_dw(128, 128, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(conv_dw(128, 256, 2), conv_dw(256, 256, 1))
        self.avg = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(256, 1000)


class IntermediateLayers(nn.ModuleDict):
    """The backbone's children up to the last returned one; forward returns their outputs."""

    def __init__(self, backbone: nn.Module, return_layers: dict[str, int]) -> None:
        children = OrderedDict()
        remaining = set(return_layers)
        for name, child in backbone.named_children():
            if not remaining:
                break
            children[name] = child
            remaining.discard(name)
        super().__init__(children)
        self.return_layers = dict(return_layers)

    def forward(self, x: torch.Tensor) -> OrderedDict[int, torch.Tensor]:
        out: OrderedDict[int, torch.Tensor] = OrderedDict()
        for name, module in self.items():
            x = module(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out


class FPN(nn.Module):
    def __init__(self, in_channels_list: list[int], out_channels: int) -> None:
        super().__init__()
        leaky = 0.1 if out_channels <= 64 else 0.0
        self.output1 = conv_bn1x1(in_channels_list[0], out_channels, leaky=leaky)
        self.output2 = conv_bn1x1(in_channels_list[1], out_channels, leaky=leaky)
        self.output3 = conv_bn1x1(in_channels_list[2], out_channels, leaky=leaky)
        self.merge1 = conv_bn(out_channels, out_channels, leaky=leaky)
        self.merge2 = conv_bn(out_channels, out_channels, leaky=leaky)

    def forward(self, features: OrderedDict[int, torch.Tensor]) -> list[torch.Tensor]:
        inputs = list(features.values())
        output1 = self.output1(inputs[0])
        output2 = self.output2(inputs[1])
        output3 = self.output3(inputs[2])
        up3 = F.interpolate(output3, size=[output2.size(2), output2.size(3)], mode="nearest")
        output2 = self.merge2(output2 + up3)
        up2 = F.interpolate(output2, size=[output1.size(2), output1.size(3)], mode="nearest")
        output1 = self.merge1(output1 + up2)
        return [output1, output2, output3]


class SSH(nn.Module):
    def __init__(self, in_channel: int, out_channel: int) -> None:
        super().__init__()
        assert out_channel % 4 == 0, "SSH needs out_channel divisible by 4"
        leaky = 0.1 if out_channel <= 64 else 0.0
        self.conv3X3 = conv_bn_no_relu(in_channel, out_channel // 2)
        self.conv5X5_1 = conv_bn(in_channel, out_channel // 4, leaky=leaky)
        self.conv5X5_2 = conv_bn_no_relu(out_channel // 4, out_channel // 4)
        self.conv7X7_2 = conv_bn(out_channel // 4, out_channel // 4, leaky=leaky)
        self.conv7x7_3 = conv_bn_no_relu(out_channel // 4, out_channel // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv3x3 = self.conv3X3(x)
        conv5x5_1 = self.conv5X5_1(x)
        conv5x5 = self.conv5X5_2(conv5x5_1)
        conv7x7 = self.conv7x7_3(self.conv7X7_2(conv5x5_1))
        return F.relu(torch.cat([conv3x3, conv5x5, conv7x7], dim=1))


class _Head(nn.Module):
    width = 0

    def __init__(self, inchannels: int, num_anchors: int = ANCHORS_PER_LOCATION) -> None:
        super().__init__()
        self.num_anchors = num_anchors
        self.conv1x1 = nn.Conv2d(inchannels, num_anchors * self.width, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1).contiguous()
        return out.view(out.shape[0], -1, self.width)


class ClassHead(_Head):
    width = HEAD_WIDTHS["ClassHead"]


class BboxHead(_Head):
    width = HEAD_WIDTHS["BboxHead"]


class LandmarkHead(_Head):
    width = HEAD_WIDTHS["LandmarkHead"]


class RetinaFace(nn.Module):
    def __init__(self, backbone: nn.Module, return_layers: dict[str, int], in_channel: int, out_channel: int, phase: str = "test") -> None:
        super().__init__()
        self.phase = phase
        self.body = IntermediateLayers(backbone, return_layers)
        self.fpn = FPN([in_channel * 2, in_channel * 4, in_channel * 8], out_channel)
        self.ssh1 = SSH(out_channel, out_channel)
        self.ssh2 = SSH(out_channel, out_channel)
        self.ssh3 = SSH(out_channel, out_channel)
        self.ClassHead = nn.ModuleList(ClassHead(out_channel) for _ in range(3))
        self.BboxHead = nn.ModuleList(BboxHead(out_channel) for _ in range(3))
        self.LandmarkHead = nn.ModuleList(LandmarkHead(out_channel) for _ in range(3))

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fpn = self.fpn(self.body(inputs))
        features = [self.ssh1(fpn[0]), self.ssh2(fpn[1]), self.ssh3(fpn[2])]
        boxes = torch.cat([head(f) for head, f in zip(self.BboxHead, features)], dim=1)
        classes = torch.cat([head(f) for head, f in zip(self.ClassHead, features)], dim=1)
        landmarks = torch.cat([head(f) for head, f in zip(self.LandmarkHead, features)], dim=1)
        if self.phase == "train":
            return boxes, classes, landmarks
        return boxes, F.softmax(classes, dim=-1), landmarks


def retinaface_mnet(phase: str = "test") -> RetinaFace:
    return RetinaFace(MobileNetV1(), {"stage1": 1, "stage2": 2, "stage3": 3}, in_channel=32, out_channel=64, phase=phase)


def retinaface_resnet50(phase: str = "test") -> RetinaFace:
    return RetinaFace(resnet50(), {"layer2": 1, "layer3": 2, "layer4": 3}, in_channel=256, out_channel=256, phase=phase)


def prior_boxes(image_size: tuple[int, int]) -> torch.Tensor:
    """Anchors (cx, cy, w, h), relative to the image, in the order the heads emit them."""
    height, width = image_size
    anchors: list[float] = []
    for step, min_sizes in zip(STEPS, MIN_SIZES):
        rows, cols = math.ceil(height / step), math.ceil(width / step)
        for i, j in itertools.product(range(rows), range(cols)):
            for size in min_sizes:
                anchors += [(j + 0.5) * step / width, (i + 0.5) * step / height, size / width, size / height]
    return torch.tensor(anchors).view(-1, 4)


def multibox_loss(
    predictions: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    priors: torch.Tensor,
    targets: list[torch.Tensor],
    threshold: float = 0.35,
    negpos_ratio: int = 7,
) -> torch.Tensor:
    """Box regression + classification loss of RetinaFace training (landmarks left out).

    `targets[i]` holds (x1, y1, x2, y2, label) rows relative to the image. The positive
    mask has one entry per prior and is expanded over the box predictions, which is where
    a pruned BboxHead fails with `Target sizes: [N, P/2, 4]. Tensor sizes: [N, P, 1]`.
    """
    loc_data, conf_data, _ = predictions
    num, num_priors = loc_data.size(0), priors.size(0)
    loc_t = torch.zeros(num, num_priors, 4)
    conf_t = torch.zeros(num, num_priors, dtype=torch.long)
    for idx, truths in enumerate(targets):
        loc_t[idx], conf_t[idx] = _match(truths[:, :4], truths[:, 4].long(), priors, threshold)
    pos = conf_t > 0
    pos_idx = pos.unsqueeze(pos.dim()).expand_as(loc_data)
    loss_l = F.smooth_l1_loss(loc_data[pos_idx].view(-1, 4), loc_t[pos_idx].view(-1, 4), reduction="sum")
    batch_conf = conf_data.reshape(-1, 2)
    loss_c = (torch.logsumexp(batch_conf, 1) - batch_conf.gather(1, conf_t.view(-1, 1).clamp(max=1)).squeeze(1)).view(num, -1)
    loss_c[pos] = 0
    rank = loss_c.sort(1, descending=True)[1].sort(1)[1]
    num_neg = torch.clamp(negpos_ratio * pos.long().sum(1, keepdim=True), max=num_priors - 1)
    neg = rank < num_neg
    chosen = (pos | neg).unsqueeze(2).expand_as(conf_data)
    loss_c = F.cross_entropy(conf_data[chosen].view(-1, 2), conf_t[pos | neg].clamp(max=1), reduction="sum")
    n = max(int(pos.sum()), 1)
    return (loss_l + loss_c) / n


def _match(truths: torch.Tensor, labels: torch.Tensor, priors: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    corners = torch.cat([priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2], 1)
    overlaps = _iou(truths, corners)
    best_truth_overlap, best_truth_idx = overlaps.max(0)
    best_prior_idx = overlaps.argmax(1)
    best_truth_overlap[best_prior_idx] = 2.0  # every face keeps its best anchor
    best_truth_idx[best_prior_idx] = torch.arange(truths.size(0))
    matched = truths[best_truth_idx]
    conf = labels[best_truth_idx].clone()
    conf[best_truth_overlap < threshold] = 0
    centers = ((matched[:, :2] + matched[:, 2:]) / 2 - priors[:, :2]) / (VARIANCES[0] * priors[:, 2:])
    sizes = torch.log(((matched[:, 2:] - matched[:, :2]) / priors[:, 2:]).clamp(min=1e-6)) / VARIANCES[1]
    return torch.cat([centers, sizes], 1), conf


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    top_left = torch.max(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(2)
    area_a = (a[:, 2:] - a[:, :2]).prod(1)[:, None]
    area_b = (b[:, 2:] - b[:, :2]).prod(1)[None, :]
    return inter / (area_a + area_b - inter)
