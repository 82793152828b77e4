"""VGG-16's conv trunk as torchvision builds it: ``features[:30]``, conv1_1..relu5_3 without
pool5, thirteen 3x3 convolutions and four 2x2 poolings, stride 16. ``--weights imagenet`` takes
``VGG16_Weights.IMAGENET1K_V1``, whose classifier's two 4096-wide layers become fc6/fc7 for a
single-level 7x7 pyramid, the map fc6 was trained on."""

from __future__ import annotations

from sppdet.detector.backbones.preprocessing import TORCHVISION_PREPROCESSING
from sppdet.detector.backbones.registry import BackboneSpec, Layer, TorchvisionSource

CLASSIFIER = TorchvisionSource(
    model="vgg16",
    weights="VGG16_Weights.IMAGENET1K_V1",
    root="features",
    children=tuple(str(i) for i in range(30)),  # conv1_1 .. relu5_3; 30 is pool5
    fc6="classifier.0",
    fc7="classifier.3",
    head_pyramid=(7,),
)

CONV: Layer = (3, 1, 1)
POOL: Layer = (2, 2, 0)

SPEC = BackboneSpec(
    name="vgg16",
    title="VGG-16",
    description="VGG-16 conv1_1-conv5_3",
    build_features=CLASSIFIER.random_trunk,
    layers=(CONV, CONV, POOL)  # conv1_x, pool1
    + (CONV, CONV, POOL)  # conv2_x, pool2
    + (CONV, CONV, CONV, POOL)  # conv3_x, pool3
    + (CONV, CONV, CONV, POOL)  # conv4_x, pool4
    + (CONV, CONV, CONV),  # conv5_x
    channels=512,
    preprocessing=TORCHVISION_PREPROCESSING,
    input_size=224,
    torchvision=CLASSIFIER,
)
