"""``sppdet convert-caffe``: released Caffe nets -> an sppdet backbone checkpoint.

Each (prototxt, caffemodel) pair holds the conv trunk, fc6/fc7, or both (the SPP_net release
keeps the trunk and the fine-tuned fc layers in separate nets); a later pair's part replaces an
earlier one's. The checkpoint (``backbones.checkpoint``) holds the trunk's weights, fc6/fc7 with
fc6's input columns in sppdet's pyramid order (``mapping.sppdet_fc6``), that pyramid, and the
preprocessing Caffe nets expect: BGR, 0-255, the mean subtracted (``mean.read_mean``). ``--arch
zf5`` converts into the ``zf5`` trunk, ``--arch alexnet`` into ``caffe-alexnet`` (torchvision's
AlexNet is another network). The same inputs give the same bytes under the same file name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sppdet.cache.fingerprint import file_hash
from sppdet.detector.backbones.caffe.caffemodel import CaffeWeights, read_caffemodel
from sppdet.detector.backbones.caffe.mapping import (
    HeadMatch,
    TrunkMatch,
    match_head,
    match_trunk,
    sppdet_fc6,
)
from sppdet.detector.backbones.caffe.mean import read_mean
from sppdet.detector.backbones.caffe.prototxt import CaffeLayer, Conv, InnerProduct, read_prototxt
from sppdet.detector.backbones.checkpoint import save_backbone_checkpoint
from sppdet.detector.backbones.preprocessing import Preprocessing
from sppdet.detector.backbones.registry import backbone_spec
from sppdet.detector.backbones.trunk import build_trunk
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.spp.bins import pyramid_dim

CAFFE_ARCHS = {"zf5": "zf5", "alexnet": "caffe-alexnet"}  # --arch -> registered trunk
CAFFE_CHANNEL_ORDER = "BGR"
CAFFE_PIXEL_RANGE = 255.0


@dataclass(frozen=True)
class NetFiles:
    prototxt: Path
    caffemodel: Path

    def describe(self) -> str:
        return f"{self.prototxt.name} + {self.caffemodel.name}"


@dataclass(frozen=True)
class Conversion:
    """What ``convert_caffe`` wrote."""

    out: Path
    arch: str  # the registered trunk: --backbone for the stages that read the checkpoint
    trunk_from: NetFiles
    head_from: NetFiles | None
    caffe_levels: tuple[int, ...] | None  # the pyramid as fc6's Caffe input lists it
    pyramid: tuple[int, ...] | None  # the checkpoint's head pyramid (sppdet's order)
    fc_dim: int | None
    preprocessing: Preprocessing
    mean_from: str


@dataclass(frozen=True)
class _Head:
    files: NetFiles
    state: dict[str, torch.Tensor]
    caffe_levels: tuple[int, ...]
    pyramid: tuple[int, ...]


def backbone_name(arch: str) -> str:
    """The registered trunk ``--arch`` ARCH converts into."""
    if arch in CAFFE_ARCHS:
        return CAFFE_ARCHS[arch]
    if arch in CAFFE_ARCHS.values():
        return arch
    raise SppdetError(f"--arch {arch}: convert-caffe reads {' or '.join(CAFFE_ARCHS)} nets")


def convert_caffe(
    nets: Sequence[NetFiles],
    arch: str,
    out: str | Path,
    mean: str | None = None,
    pyramid: Sequence[int] | None = None,
) -> Conversion:
    """Convert the Caffe NETS of ARCH into the backbone checkpoint OUT (module doc).

    MEAN is ``--mean`` (``mean.read_mean``); PYRAMID the levels, in its order, of the pooled
    vector an fc-only net's fc6 reads (a net with its pooling layers says it itself).
    """
    name = backbone_name(arch)
    spec = backbone_spec(name)
    if not nets:
        raise SppdetError("convert-caffe: give at least one --prototxt and --caffemodel pair")
    given = tuple(int(n) for n in pyramid) if pyramid else None
    mean_values, mean_from = read_mean(mean, name)
    trunk_state: tuple[NetFiles, dict[str, torch.Tensor]] | None = None
    head: _Head | None = None
    for files in nets:
        net = read_prototxt(files.prototxt)
        trunk = match_trunk(net, name)
        fc = match_head(net, trunk, name)
        if trunk is None and fc is None:
            raise SppdetError(
                f"{files.prototxt}: neither a {spec.title} conv trunk nor fc6/fc7 ; pass the "
                "prototxt of the net whose weights you convert"
            )
        weights = read_caffemodel(files.caffemodel)
        if trunk is not None:
            trunk_state = (files, _trunk_weights(trunk, weights, name, files))
        if fc is not None:
            head = _head_weights(fc, weights, spec.channels, given, files)
    if trunk_state is None:
        raise SppdetError(
            f"{nets[-1].prototxt}: no conv trunk in the nets given ; add the --prototxt and "
            "--caffemodel pair of the conv layers"
        )
    if given is not None and head is None:
        raise SppdetError("--pyramid: no fc6 was converted, so it is not used ; leave it out")
    model = build_trunk(name)
    model.features.load_state_dict(trunk_state[1], strict=True)
    pre = Preprocessing(mean_values, (1.0, 1.0, 1.0), CAFFE_CHANNEL_ORDER, CAFFE_PIXEL_RANGE)
    out = Path(out)
    save_backbone_checkpoint(
        out,
        name,
        model,
        pre,
        head=head.state if head else None,
        head_pyramid=head.pyramid if head else None,
        source=_source(name, trunk_state[0], head, mean_from),
    )
    return Conversion(
        out,
        name,
        trunk_state[0],
        head.files if head else None,
        head.caffe_levels if head else None,
        head.pyramid if head else None,
        int(head.state["fc6.weight"].shape[0]) if head else None,
        pre,
        mean_from,
    )


def _trunk_weights(
    trunk: TrunkMatch, weights: CaffeWeights, arch: str, files: NetFiles
) -> dict[str, torch.Tensor]:
    """The trunk's state dict from the blobs of its convolutions (weights, bias: matching the
    trunk made sure each has a bias term, as the trunk's convolutions do)."""
    modules = dict(build_trunk(arch).features.named_children())
    state = {}
    for module_name, layer in trunk.convs:
        conv = layer.params
        assert isinstance(conv, Conv) and conv.bias
        shape = tuple(modules[module_name].weight.shape)
        blobs = _blobs(weights, layer.name, 2, files)
        state[f"{module_name}.weight"] = _fit(blobs[0], shape, layer.name, "weights", weights)
        state[f"{module_name}.bias"] = _fit(blobs[1], shape[:1], layer.name, "bias", weights)
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}


def _head_weights(
    head: HeadMatch,
    weights: CaffeWeights,
    channels: int,
    given: tuple[int, ...] | None,
    files: NetFiles,
) -> _Head:
    """fc6/fc7 as ``heads.FcHead`` names them, fc6's input in sppdet's pyramid order."""
    levels = head.levels
    if levels is None and given is None:
        raise SppdetError(
            f"{files.prototxt}: fc6 '{head.fc6.name}' reads a net input, which does not say its "
            "pyramid ; pass --pyramid with the levels in the order of its pooled vector "
            "(SPP_net: spm_divs in spp_config.m)"
        )
    if levels is not None and given is not None and levels != given:
        raise SppdetError(
            f"--pyramid {','.join(map(str, given))}: {files.prototxt} pools "
            f"{','.join(map(str, levels))} for fc6 ; leave --pyramid out"
        )
    caffe_levels = levels if levels is not None else given
    assert caffe_levels is not None
    width = pyramid_dim(caffe_levels, channels)
    stored = _blobs(weights, head.fc6.name, 1, files)[0]
    params = head.fc6.params
    assert isinstance(params, InnerProduct)
    reads = stored.shape[-2] if params.transpose and stored.ndim > 1 else stored.shape[-1]
    if reads != width:
        fix = "pass the caffemodel of this prototxt" if levels else "pass the --pyramid it pools"
        raise SppdetError(
            f"{weights.path}: fc6 '{head.fc6.name}' reads {reads} values, pyramid "
            f"{','.join(map(str, caffe_levels))} of {channels} channels makes {width} ; {fix}"
        )
    fc6 = _fc(head.fc6, weights, width, files)
    fc7 = _fc(head.fc7, weights, fc6[0].shape[0], files)
    fc6_weight, order = sppdet_fc6(fc6[0], caffe_levels, channels)
    state = {
        "fc6.weight": fc6_weight,
        "fc6.bias": fc6[1],
        "fc7.weight": fc7[0],
        "fc7.bias": fc7[1],
    }
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    return _Head(files, tensors, tuple(caffe_levels), order)


def _fc(
    layer: CaffeLayer, weights: CaffeWeights, inputs: int, files: NetFiles
) -> tuple[np.ndarray, np.ndarray]:
    """(weight [outputs, INPUTS], bias) of an InnerProduct layer."""
    params, name = layer.params, layer.name
    assert isinstance(params, InnerProduct)
    outputs = params.num_output
    blobs = _blobs(weights, name, 2 if params.bias else 1, files)
    stored = (inputs, outputs) if params.transpose else (outputs, inputs)
    weight = _fit(blobs[0], stored, name, "weights", weights)
    weight = weight.T if params.transpose else weight
    bias = (
        _fit(blobs[1], (outputs,), name, "bias", weights)
        if params.bias
        else np.zeros(outputs, np.float32)
    )
    return weight, bias


def _blobs(weights: CaffeWeights, layer: str, needed: int, files: NetFiles) -> list[np.ndarray]:
    blobs = weights.layer(layer)
    if len(blobs) < needed:
        raise SppdetError(
            f"{weights.path}: layer '{layer}' has {len(blobs)} of its {needed} blobs ; pass the "
            f"caffemodel trained with {files.prototxt.name}"
        )
    return blobs


def _fit(
    blob: np.ndarray, shape: tuple[int, ...], layer: str, what: str, weights: CaffeWeights
) -> np.ndarray:
    """BLOB as SHAPE; legacy 4-D blobs carry leading 1s ([1, 1, out, in], [1, 1, 1, out])."""
    array = blob
    while array.ndim > len(shape) and array.shape[0] == 1:
        array = array[0]
    if array.shape != shape:
        found, needed = "x".join(map(str, blob.shape)), "x".join(map(str, shape))
        raise SppdetError(
            f"{weights.path}: layer '{layer}' {what} are {found}, the net needs {needed} ; pass "
            "the caffemodel of this prototxt"
        )
    return array


def _source(arch: str, trunk: NetFiles, head: _Head | None, mean_from: str) -> str:
    """The checkpoint's ``source`` text: the input files by name and hash, no machine paths."""

    def files(f: NetFiles) -> str:
        return f"{f.describe()} (sha256 {file_hash(f.caffemodel)})"

    text = f"convert-caffe {arch}: trunk from {files(trunk)}"
    if head is not None:
        levels = ",".join(map(str, head.caffe_levels))
        text += f"; fc6/fc7 from {files(head.files)}, Caffe pyramid order {levels}"
    return f"{text}; BGR 0-255 minus {mean_from}"
