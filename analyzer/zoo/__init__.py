"""Reference architectures shipped with the tool (no torchvision needed).

Factories for `--arch analyzer.zoo:NAME`: resnet18, resnet34, resnet50,
retinaface_mnet, retinaface_resnet50.
"""

from .resnet import ResNet, resnet18, resnet34, resnet50
from .retinaface import RetinaFace, multibox_loss, prior_boxes, retinaface_mnet, retinaface_resnet50

__all__ = [
    "ResNet",
    "RetinaFace",
    "resnet18",
    "resnet34",
    "resnet50",
    "retinaface_mnet",
    "retinaface_resnet50",
    "prior_boxes",
    "multibox_loss",
]
