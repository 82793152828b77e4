"""AlexNet as Caffe runs it: the CaffeNet of R-CNN's release (``ilsvrc_2012_train_iter_310k``,
``finetune_voc_2007_trainval_iter_70k``), conv1..relu5 without pool5, stride 16.

It is not torchvision's ``alexnet`` (64-192-384-256-256 channels, no groups, no normalisation):
conv2, conv4 and conv5 are split in two groups (the original two-GPU layout), each of the first
two convolutions is followed by max pooling and then cross-channel LRN (size 5, alpha 1e-4,
beta 0.75), conv1 has no padding and pooling rounds up as Caffe's does. A registered trunk of
its own, rather than a flag on ``alexnet``, because both its modules and its cell geometry
differ, and the registry is where those are declared. Its weights come from
``sppdet convert-caffe --arch alexnet``.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from sppdet.detector.backbones.preprocessing import Preprocessing
from sppdet.detector.backbones.registry import BackboneSpec, kaiming_init_

LRN_SIZE = 5  # CaffeNet's norm1/norm2: across channels
LRN_ALPHA = 1e-4
LRN_BETA = 0.75
LRN_K = 1.0
GROUPS = 2  # conv2, conv4, conv5

# Per-channel mean of Caffe's ILSVRC 2012 mean image (python/caffe/imagenet/ilsvrc_2012_mean.npy)
# over its central 227 x 227 crop, the part R-CNN subtracts from each warped window; BGR, 0-255.
ILSVRC_2012_MEAN_BGR = (102.98075, 115.94631, 122.77114)
CAFFE_ALEXNET_PREPROCESSING = Preprocessing(ILSVRC_2012_MEAN_BGR, (1.0, 1.0, 1.0), "BGR", 255.0)


def caffe_alexnet_features() -> nn.Sequential:
    """conv1..relu5 of CaffeNet: 227 -> 55 -> 27 -> 27 -> 13 -> 13."""

    def lrn() -> nn.LocalResponseNorm:
        return nn.LocalResponseNorm(LRN_SIZE, alpha=LRN_ALPHA, beta=LRN_BETA, k=LRN_K)

    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(3, 96, 11, stride=4)),
                ("relu1", nn.ReLU(inplace=True)),
                ("pool1", nn.MaxPool2d(3, stride=2, ceil_mode=True)),
                ("norm1", lrn()),
                ("conv2", nn.Conv2d(96, 256, 5, padding=2, groups=GROUPS)),
                ("relu2", nn.ReLU(inplace=True)),
                ("pool2", nn.MaxPool2d(3, stride=2, ceil_mode=True)),
                ("norm2", lrn()),
                ("conv3", nn.Conv2d(256, 384, 3, padding=1)),
                ("relu3", nn.ReLU(inplace=True)),
                ("conv4", nn.Conv2d(384, 384, 3, padding=1, groups=GROUPS)),
                ("relu4", nn.ReLU(inplace=True)),
                ("conv5", nn.Conv2d(384, 256, 3, padding=1, groups=GROUPS)),
                ("relu5", nn.ReLU(inplace=True)),
            ]
        )
    )


def random_caffe_alexnet_features() -> nn.Sequential:
    """Kaiming-normal convolutions and zero biases, drawn from the global generator."""
    return kaiming_init_(caffe_alexnet_features())


SPEC = BackboneSpec(
    name="caffe-alexnet",
    title="AlexNet (Caffe)",
    description="Caffe's AlexNet conv1-conv5, R-CNN's: grouped, with LRN; from convert-caffe",
    build_features=random_caffe_alexnet_features,
    # conv1, pool1, conv2, pool2, conv3, conv4, conv5 as in caffe_alexnet_features
    layers=((11, 4, 0), (3, 2, 0), (5, 1, 2), (3, 2, 0), (3, 1, 1), (3, 1, 1), (3, 1, 1)),
    channels=256,
    preprocessing=CAFFE_ALEXNET_PREPROCESSING,
    input_size=227,  # R-CNN's warp size
)
