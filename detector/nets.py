"""Backbones: ZF-5 defined in code, AlexNet and VGG-16 conv trunks from torchvision, their fc6/fc7
weights, the input preprocessing each set of weights expects, and the backbone checkpoint format.

A trunk is the convolutional part up to the last conv layer's ReLU (conv5 / conv5_3): no final
pooling, since SPP replaces it. Its ``features`` Sequential is what the cell mapping reads
(``sppdet.detector.spp.module_layers``).

``--weights``:
  * ``random``: deterministic initialisation (seed 0), for smoke runs and ``pretrain``.
  * ``imagenet``: torchvision's weights API (AlexNet_Weights / VGG16_Weights.IMAGENET1K_V1); needs
    the file in torch's hub cache or a network connection. ZF-5 has no torchvision weights.
  * ``PATH``: a backbone checkpoint (format below) or a torchvision state dict of the whole
    classifier (``features.*``/``classifier.*`` keys, e.g. ``alexnet-owt-7be5be79.pth`` fetched on
    another machine), loaded with ``torch.load(weights_only=True)``.

Checkpoint format (``save_backbone_checkpoint``), a dict saved with ``torch.save``::

    format        "sppdet-backbone"
    version       1
    arch          "zf5" | "alexnet" | "vgg16"
    trunk         state dict of Trunk.features (zf5: conv1.weight ...; torchvision trunks keep
                  torchvision's indices: 0.weight, 3.weight, ...)
    head          None or {"fc6.weight", "fc6.bias", "fc7.weight", "fc7.bias"}
    head_pyramid  None or the pyramid levels fc6 was trained on, e.g. [1, 2, 3, 6]
    preprocessing {"mean": [3 floats], "std": [3 floats], "channel_order": "RGB"|"BGR",
                   "pixel_range": 255.0 | 1.0}   (mean/std in the network's channel order and
                  pixel range: x = (pixel - mean) / std)
    source        free text: what made it

Only tensors, numbers, strings, lists and dicts, so ``weights_only=True`` loads it.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from sppdet.cache.atomic import atomic_output
from sppdet.cache.fingerprint import file_hash
from sppdet.detector.config import PRECISIONS
from sppdet.detector.errors import SppdetError

ARCHS = ("zf5", "alexnet", "vgg16")
CHECKPOINT_FORMAT = "sppdet-backbone"
CHECKPOINT_VERSION = 1
FC_WIDTH = 4096
RANDOM_SEED = 0
LRN_ALPHA = 5e-5  # released ZF-5: within-channel LRN, local size 3
LRN_BETA = 0.75
LRN_SIZE = 3

# Pretrained fc6 of torchvision's classifiers reads a fixed 6x6 (AlexNet) / 7x7 (VGG-16) map:
# a single-level pyramid {6} / {7} reproduces that input, so fc6 can be reused as is.
TORCHVISION_PYRAMID = {"alexnet": (6,), "vgg16": (7,)}
_TORCHVISION_FC = {
    "alexnet": ("classifier.1", "classifier.4"),
    "vgg16": ("classifier.0", "classifier.3"),
}
_TRUNK_DEPTH = {"alexnet": 12, "vgg16": 30}  # modules of `features` up to the last conv's ReLU


# --------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class Preprocessing:
    """How pixels become network input: x = (pixel [in pixel_range] - mean) / std, per channel,
    with channels in ``channel_order`` (mean and std are listed in that order)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: str  # "RGB" | "BGR"
    pixel_range: float  # 255.0: pixels 0..255; 1.0: pixels 0..1

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "channel_order": self.channel_order,
            "pixel_range": float(self.pixel_range),
        }

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], where: str = "checkpoint") -> Preprocessing:
        try:
            mean = tuple(float(v) for v in obj["mean"])
            std = tuple(float(v) for v in obj["std"])
            order = str(obj["channel_order"]).upper()
            pixel_range = float(obj["pixel_range"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SppdetError(f"{where}: malformed preprocessing record ({exc!r})") from None
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise SppdetError(f"{where}: preprocessing needs 3 means and 3 positive stds")
        if order not in ("RGB", "BGR") or pixel_range not in (1.0, 255.0):
            raise SppdetError(
                f"{where}: preprocessing channel_order must be RGB or BGR and pixel_range 1 or "
                f"255, got {order!r} and {pixel_range}"
            )
        return cls(mean, std, order, pixel_range)  # type: ignore[arg-type]

    def __call__(self, image: np.ndarray | torch.Tensor, device: torch.device | str = "cpu"):
        """uint8 RGB [H, W, 3] (numpy or tensor) -> float32 network input [1, 3, H, W]."""
        x = torch.as_tensor(image).to(device, non_blocking=True)
        x = x.permute(2, 0, 1).to(torch.float32)
        if self.channel_order == "BGR":
            x = x.flip(0)
        if self.pixel_range == 1.0:
            x = x / 255.0
        mean = torch.tensor(self.mean, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(3, 1, 1)
        return ((x - mean) / std)[None]


# The released ZF-5 model: BGR, 0-255, scalar mean 128 (paper Appendix A for VOC), no scaling.
ZF5_PREPROCESSING = Preprocessing((128.0, 128.0, 128.0), (1.0, 1.0, 1.0), "BGR", 255.0)
# torchvision's ImageNet classifiers: RGB in 0-1, per-channel mean and std.
TORCHVISION_PREPROCESSING = Preprocessing((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "RGB", 1.0)


# ----------------------------------------------------------------------------------- layers


class WithinChannelLRN(nn.Module):
    """Caffe's WITHIN_CHANNEL LRN as in the released ZF-5: x * (1 + alpha/9 * sum_3x3 x^2)^-beta.

    Caffe averages x^2 over the 3x3 window with zero padding and always divides by 9, which is
    avg_pool2d with count_include_pad=True.
    """

    def __init__(self, size: int = LRN_SIZE, alpha: float = LRN_ALPHA, beta: float = LRN_BETA):
        super().__init__()
        self.size, self.alpha, self.beta = size, alpha, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean_sq = F.avg_pool2d(x * x, self.size, 1, self.size // 2, count_include_pad=True)
        return x * (1.0 + self.alpha * mean_sq).pow(-self.beta)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}"


def zf5_features() -> nn.Sequential:
    """ZF-5 conv1..relu5 (SPEC.md). Caffe pools in ceil mode: 224 -> 110 -> 55 -> 26 -> 13."""
    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(3, 96, 7, stride=2, padding=1)),
                ("relu1", nn.ReLU(inplace=True)),
                ("norm1", WithinChannelLRN()),
                ("pool1", nn.MaxPool2d(3, stride=2, ceil_mode=True)),
                ("conv2", nn.Conv2d(96, 256, 5, stride=2, padding=0)),
                ("relu2", nn.ReLU(inplace=True)),
                ("norm2", WithinChannelLRN()),
                ("pool2", nn.MaxPool2d(3, stride=2, ceil_mode=True)),
                ("conv3", nn.Conv2d(256, 384, 3, padding=1)),
                ("relu3", nn.ReLU(inplace=True)),
                ("conv4", nn.Conv2d(384, 384, 3, padding=1)),
                ("relu4", nn.ReLU(inplace=True)),
                ("conv5", nn.Conv2d(384, 256, 3, padding=1)),
                ("relu5", nn.ReLU(inplace=True)),
            ]
        )
    )


class Trunk(nn.Module):
    """The convolutional trunk of a backbone: image batch [B, 3, H, W] -> conv5 [B, C, h, w]."""

    def __init__(self, arch: str, features: nn.Sequential, out_channels: int) -> None:
        super().__init__()
        self.arch = arch
        self.features = features
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _torchvision_model(arch: str) -> nn.Module:
    return torchvision.models.alexnet() if arch == "alexnet" else torchvision.models.vgg16()


def build_trunk(arch: str, seed: int = RANDOM_SEED) -> Trunk:
    """A trunk with deterministic random weights (Kaiming normal convolutions, zero biases)."""
    check_arch(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if arch == "zf5":
            features, channels = zf5_features(), 256
            for layer in features:
                if isinstance(layer, nn.Conv2d):
                    nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                    nn.init.zeros_(layer.bias)
        else:
            full = _torchvision_model(arch).features
            features = nn.Sequential(*list(full.children())[: _TRUNK_DEPTH[arch]])
            channels = 256 if arch == "alexnet" else 512
    return Trunk(arch, features, channels)


@cache
def trunk_spec(arch: str) -> tuple[int, tuple[tuple[int, int, int], ...]]:
    """(conv5 channels, (kernel, stride, padding) of each conv/pool layer) of ARCH's trunk."""
    from sppdet.detector.spp import module_layers

    trunk = build_trunk(arch)
    return trunk.out_channels, tuple(module_layers(trunk.features))


def check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise SppdetError(f"unknown backbone {arch!r}: choose one of {', '.join(ARCHS)}")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SppdetError("--device cuda: no CUDA device is available; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise SppdetError(f"unknown --device {name!r}: choose auto, cpu or cuda")
    return torch.device(name)


_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def to_device(trunk: Trunk, device: torch.device) -> Trunk:
    """TRUNK on DEVICE for inference: eval mode, channels-last on a GPU (faster cuDNN kernels;
    inputs follow with ``device_input``)."""
    trunk = trunk.to(device).eval()
    return trunk.to(memory_format=torch.channels_last) if device.type == "cuda" else trunk


def device_input(x: torch.Tensor) -> torch.Tensor:
    """An input batch in the memory format ``to_device`` gave the trunk."""
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x


def autocast(device: torch.device, precision: str) -> Any:
    """The mixed-precision context of PRECISION on DEVICE: ``fp32`` runs in float32; ``bf16`` and
    ``fp16`` autocast the convolutions and matrix products (bf16 uses AMX/AVX-512 on recent CPUs;
    fp16 suits GPUs). Callers report how far the scores move: see ``sppdet bench``."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_AUTOCAST_DTYPES[precision])


def check_precision(precision: str) -> str:
    """PRECISION if it is one of PRECISIONS, else a one-line user error."""
    if precision not in PRECISIONS:
        raise SppdetError(f"--precision {precision!r}: choose {', '.join(PRECISIONS)}")
    return precision


# --------------------------------------------------------------------------------- backbone


@dataclass
class Backbone:
    """A trunk with the preprocessing its weights expect and, when known, pretrained fc6/fc7.

    ``head`` holds fc6/fc7 weights {"fc6.weight", "fc6.bias", "fc7.weight", "fc7.bias"} (the
    attribute names of ``sppdet.detector.heads.FcHead``) for pooled inputs of ``head_pyramid``.
    ``weights_id`` names the weights for fingerprints: ``random:seed0``,
    ``imagenet:AlexNet_Weights.IMAGENET1K_V1`` or ``file:<sha256 prefix>``.
    """

    arch: str
    trunk: Trunk
    preprocessing: Preprocessing
    weights_id: str
    head: dict[str, torch.Tensor] | None = None
    head_pyramid: tuple[int, ...] | None = None
    source: str = ""

    @property
    def channels(self) -> int:
        return self.trunk.out_channels

    def head_state(self, pyramid: Sequence[int]) -> dict[str, torch.Tensor]:
        """Pretrained weights usable by a head fed with PYRAMID: fc6 and fc7 when the pyramid is
        the one fc6 was trained on, fc7 alone otherwise (fc6's input size differs), or nothing."""
        if self.head is None:
            return {}
        if self.head_pyramid is not None and tuple(pyramid) == tuple(self.head_pyramid):
            return {k: v.clone() for k, v in self.head.items()}
        return {k: v.clone() for k, v in self.head.items() if k.startswith("fc7.")}


def weights_kind(weights: str) -> str:
    return weights if weights in ("imagenet", "random") else "file"


def _imagenet_enum(arch: str):
    if arch == "zf5":
        raise SppdetError(
            "--weights imagenet: torchvision has no ZF-5 weights; train them with `sppdet "
            "pretrain`, pass --weights PATH, or use --backbone alexnet|vgg16"
        )
    enum = (
        torchvision.models.AlexNet_Weights
        if arch == "alexnet"
        else torchvision.models.VGG16_Weights
    )
    return enum.IMAGENET1K_V1


def describe_weights(arch: str, weights: str) -> tuple[str, Preprocessing]:
    """(weights_id, preprocessing) of ARCH with WEIGHTS, without building the network.

    For a file this reads the checkpoint (to learn its preprocessing) and hashes its bytes.
    """
    check_arch(arch)
    kind = weights_kind(weights)
    if kind == "random":
        pre = ZF5_PREPROCESSING if arch == "zf5" else TORCHVISION_PREPROCESSING
        return f"random:seed{RANDOM_SEED}", pre
    if kind == "imagenet":
        return f"imagenet:{_imagenet_enum(arch)!r}", TORCHVISION_PREPROCESSING
    record = read_checkpoint(weights, arch)
    return f"file:{file_hash(weights)}", record["preprocessing"]


def load_backbone(arch: str, weights: str = "random") -> Backbone:
    """The backbone ARCH with WEIGHTS = ``random`` | ``imagenet`` | PATH (see module doc)."""
    check_arch(arch)
    kind = weights_kind(weights)
    trunk = build_trunk(arch)
    if kind == "random":
        weights_id, pre = describe_weights(arch, weights)
        return Backbone(arch, trunk, pre, weights_id, source="random initialisation")
    if kind == "imagenet":
        enum = _imagenet_enum(arch)
        state = _download_imagenet(enum)
        record = _from_torchvision_state(state, arch, f"torchvision {enum!r}")
        weights_id = f"imagenet:{enum!r}"
    else:
        record = read_checkpoint(weights, arch)
        weights_id = f"file:{file_hash(weights)}"
    _load_trunk_state(trunk, record["trunk"], str(weights))
    head = record.get("head")
    pyramid = record.get("head_pyramid")
    return Backbone(
        arch,
        trunk,
        record["preprocessing"],
        weights_id,
        head=dict(head) if head else None,
        head_pyramid=tuple(int(n) for n in pyramid) if pyramid else None,
        source=str(record.get("source", "")),
    )


def _download_imagenet(enum: Any) -> dict[str, torch.Tensor]:
    try:
        return enum.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # offline, proxy refusal, truncated download, bad hash
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        raise SppdetError(
            f"--weights imagenet: cannot fetch {enum.url} ({reason}); this machine looks "
            f"offline: copy that file into {hub} or pass --weights PATH to it"
        ) from None


def _load_trunk_state(trunk: Trunk, state: Mapping[str, torch.Tensor], where: str) -> None:
    try:
        trunk.features.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:2]) or str(exc)
        raise SppdetError(
            f"{where}: trunk weights do not fit {trunk.arch} ({detail[:200]}); pass the "
            "--backbone these weights were made for"
        ) from None


def _from_torchvision_state(state: Mapping[str, Any], arch: str, where: str) -> dict[str, Any]:
    """A torchvision classifier state dict -> checkpoint record (trunk, fc6/fc7, pyramid)."""
    if arch not in _TORCHVISION_FC:
        raise SppdetError(f"{where}: a torchvision state dict cannot hold {arch} weights")
    trunk = {
        k[len("features.") :]: v
        for k, v in state.items()
        if k.startswith("features.") and int(k.split(".")[1]) < _TRUNK_DEPTH[arch]
    }
    fc6, fc7 = _TORCHVISION_FC[arch]
    head = {}
    for name, prefix in (("fc6", fc6), ("fc7", fc7)):
        for part in ("weight", "bias"):
            if f"{prefix}.{part}" in state:
                head[f"{name}.{part}"] = state[f"{prefix}.{part}"]
    return {
        "arch": arch,
        "trunk": trunk,
        "head": head if len(head) == 4 else None,
        "head_pyramid": list(TORCHVISION_PYRAMID[arch]) if len(head) == 4 else None,
        "preprocessing": TORCHVISION_PREPROCESSING,
        "source": where,
    }


def read_checkpoint(path: str | Path, arch: str | None = None) -> dict[str, Any]:
    """Load and validate a weights file: a backbone checkpoint or a torchvision state dict.

    Returns the checkpoint record with ``preprocessing`` as a Preprocessing. ARCH, when given,
    must match the checkpoint's (a torchvision state dict takes it from ARCH).
    """
    path = Path(path)
    if not path.is_file():
        raise SppdetError(
            f"{path}: weights file not found; pass --weights imagenet, random or an existing "
            "checkpoint"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated zip, foreign formats
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise SppdetError(
            f"{path}: not a readable weights checkpoint ({reason}); rewrite it with "
            "save_backbone_checkpoint or pass a torchvision state dict"
        ) from None
    if not isinstance(obj, dict):
        raise SppdetError(f"{path}: expected a checkpoint dict, found {type(obj).__name__}")
    if obj.get("format") != CHECKPOINT_FORMAT:
        if any(str(k).startswith("features.") for k in obj):
            if arch is None:
                raise SppdetError(f"{path}: a torchvision state dict; say its --backbone")
            return _from_torchvision_state(obj, arch, str(path))
        raise SppdetError(
            f"{path}: neither an sppdet backbone checkpoint nor a torchvision state dict"
        )
    version = obj.get("version")
    if version != CHECKPOINT_VERSION:
        raise SppdetError(
            f"{path}: backbone checkpoint version {version!r} is not supported (this sppdet "
            f"reads version {CHECKPOINT_VERSION}); upgrade sppdet or re-save the checkpoint"
        )
    found = obj.get("arch")
    if found not in ARCHS:
        raise SppdetError(f"{path}: checkpoint names unknown architecture {found!r}")
    if arch is not None and found != arch:
        raise SppdetError(
            f"{path}: checkpoint holds {found} weights, not {arch}; pass --backbone {found}"
        )
    if not isinstance(obj.get("trunk"), dict):
        raise SppdetError(f"{path}: checkpoint has no trunk state")
    record = dict(obj)
    record["preprocessing"] = Preprocessing.from_dict(obj.get("preprocessing") or {}, str(path))
    return record


def save_backbone_checkpoint(
    path: str | Path,
    arch: str,
    trunk: nn.Module,
    preprocessing: Preprocessing,
    head: nn.Module | Mapping[str, torch.Tensor] | None = None,
    head_pyramid: Sequence[int] | None = None,
    source: str = "",
) -> Path:
    """Write a version-1 backbone checkpoint (module doc) atomically; returns PATH.

    TRUNK is a Trunk (or its ``features``); HEAD a module with ``fc6``/``fc7`` Linear layers (for
    example ``heads.FcHead``) or their state dict, saved with HEAD_PYRAMID, the pyramid of the
    pooled input fc6 was trained on.
    """
    check_arch(arch)
    features = trunk.features if isinstance(trunk, Trunk) else trunk
    head_state = None
    if head is not None:
        state = head.state_dict() if isinstance(head, nn.Module) else dict(head)
        keys = [f"{layer}.{part}" for layer in ("fc6", "fc7") for part in ("weight", "bias")]
        missing = [k for k in keys if k not in state]
        if missing:
            raise ValueError(f"head lacks {missing}")
        if head_pyramid is None:
            raise ValueError("a head needs the pyramid its fc6 was trained on")
        head_state = {k: state[k].detach().cpu().clone() for k in keys}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "arch": arch,
        "trunk": {k: v.detach().cpu().clone() for k, v in features.state_dict().items()},
        "head": head_state,
        "head_pyramid": [int(n) for n in head_pyramid] if head_state is not None else None,
        "preprocessing": preprocessing.to_dict(),
        "source": source,
    }
    path = Path(path)
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    return path
