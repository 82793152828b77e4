"""ResNet-50 cut after ``layer3``, as torchvision builds it: conv1, bn1, relu, maxpool and the
bottleneck stages layer1..layer3 (3, 4 and 6 blocks), stride 16, 1,024 channels; layer4, the
average pooling and ``fc`` are dropped, since SPP pools the stride-16 map instead.

Geometry: torchvision's bottleneck (ResNet v1.5) carries a stage's stride in the 3x3 convolution
of its first block, and the stride-2 1x1 ``downsample`` convolution runs on the shortcut beside
the main path, so it adds no layer to the declared list. Every layer is centre-padded (padding
(kernel - 1) / 2), so cell j's receptive field is centred on pixel 16 j: offset 0.

``--weights imagenet`` takes ``ResNet50_Weights.IMAGENET1K_V1`` (torchvision's preprocessing).
The classifier has no fc6/fc7, only one 1000-way layer after global pooling, so the fc6/fc7 head
starts from scratch. The trunk keeps torchvision's module names, so a checkpoint's trunk state and
a torchvision state dict share their keys (``conv1.weight``, ``layer3.5.bn3.running_var``...).
BatchNorm runs on its running statistics in eval mode, as for feature extraction.
"""

from __future__ import annotations

from sppdet.detector.backbones.preprocessing import TORCHVISION_PREPROCESSING
from sppdet.detector.backbones.registry import BackboneSpec, Layer, TorchvisionSource

CLASSIFIER = TorchvisionSource(
    model="resnet50",
    weights="ResNet50_Weights.IMAGENET1K_V1",
    root="",
    children=("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"),
)

STEM: tuple[Layer, ...] = ((7, 2, 3), (3, 2, 1))  # conv1, maxpool
STAGES = ((3, 1), (4, 2), (6, 2))  # (bottleneck blocks, stride) of layer1, layer2, layer3


def bottleneck_stage(blocks: int, stride: int) -> tuple[Layer, ...]:
    """Main path of a stage: 1x1, 3x3, 1x1 per block; the first block's 3x3 carries the stride."""
    first = ((1, 1, 0), (3, stride, 1), (1, 1, 0))
    rest = ((1, 1, 0), (3, 1, 1), (1, 1, 0))
    return first + rest * (blocks - 1)


SPEC = BackboneSpec(
    name="resnet50",
    title="ResNet-50",
    description="ResNet-50 conv1-layer3",
    build_features=CLASSIFIER.random_trunk,
    layers=STEM + sum((bottleneck_stage(*stage) for stage in STAGES), ()),
    channels=1024,
    preprocessing=TORCHVISION_PREPROCESSING,
    input_size=224,
    torchvision=CLASSIFIER,
)
