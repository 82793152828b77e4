"""AlexNet's conv trunk as torchvision builds it (the one-weird-trick variant: 64-192-384-256-256
channels): ``features[:12]``, conv1..relu5 without pool5, stride 16. ``--weights imagenet`` takes
``AlexNet_Weights.IMAGENET1K_V1``, whose classifier's two 4096-wide layers become fc6/fc7 for a
single-level 6x6 pyramid, the map fc6 was trained on."""

from __future__ import annotations

from sppdet.detector.backbones.preprocessing import TORCHVISION_PREPROCESSING
from sppdet.detector.backbones.registry import BackboneSpec, TorchvisionSource

CLASSIFIER = TorchvisionSource(
    model="alexnet",
    weights="AlexNet_Weights.IMAGENET1K_V1",
    root="features",
    children=tuple(str(i) for i in range(12)),  # conv1 .. relu5; 12 is pool5, which SPP replaces
    fc6="classifier.1",
    fc7="classifier.4",
    head_pyramid=(6,),
)

SPEC = BackboneSpec(
    name="alexnet",
    title="AlexNet",
    description="AlexNet conv1-conv5",
    build_features=CLASSIFIER.random_trunk,
    # conv1, pool1, conv2, pool2, conv3, conv4, conv5
    layers=((11, 4, 2), (3, 2, 0), (5, 1, 2), (3, 2, 0), (3, 1, 1), (3, 1, 1), (3, 1, 1)),
    channels=256,
    preprocessing=TORCHVISION_PREPROCESSING,
    input_size=227,  # R-CNN's warp size for AlexNet
    torchvision=CLASSIFIER,
)
