"""The reference architectures: torchvision's and Pytorch_Retinaface's layouts and sizes."""

from __future__ import annotations

import torch

from analyzer.zoo import prior_boxes, resnet18, resnet34, resnet50, retinaface_mnet, retinaface_resnet50


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resnet_parameter_counts_match_torchvision() -> None:
    # torchvision's published counts for resnet18/34/50.
    assert _params(resnet18()) == 11_689_512
    assert _params(resnet34()) == 21_797_672
    assert _params(resnet50()) == 25_557_032


def test_resnet_keys_are_torchvisions() -> None:
    keys = set(resnet50().state_dict())
    assert {"conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight", "layer4.2.conv3.weight", "fc.bias"} <= keys
    assert "layer1.0.downsample.0.weight" not in set(resnet34().state_dict())


def test_retinaface_layout() -> None:
    keys = set(retinaface_mnet().state_dict())
    assert {
        "body.stage1.0.0.weight", "fpn.output1.0.weight", "fpn.merge2.1.running_mean",
        "ssh1.conv3X3.0.weight", "ssh3.conv7x7_3.1.bias", "ClassHead.0.conv1x1.weight",
        "BboxHead.2.conv1x1.bias", "LandmarkHead.1.conv1x1.weight",
    } <= keys
    assert not any(k.startswith("body.fc") for k in keys)
    r50 = set(retinaface_resnet50().state_dict())
    assert "body.layer2.1.conv2.weight" in r50 and "body.layer4.2.conv3.weight" in r50 and "body.fc.weight" not in r50


def test_retinaface_outputs_two_anchors_per_location() -> None:
    model = retinaface_mnet(phase="train").eval()
    with torch.no_grad():
        boxes, classes, landmarks = model(torch.randn(1, 3, 128, 128))
    positions = 16 * 16 + 8 * 8 + 4 * 4
    assert boxes.shape == (1, positions * 2, 4)
    assert classes.shape == (1, positions * 2, 2)
    assert landmarks.shape == (1, positions * 2, 10)
    assert prior_boxes((128, 128)).shape == (positions * 2, 4)


def test_priors_at_512_are_10752() -> None:
    assert prior_boxes((512, 512)).shape == (10752, 4)
