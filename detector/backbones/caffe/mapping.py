"""Which layers of a Caffe net are an sppdet trunk and its fc6/fc7, and how fc6's input is laid out.

``match_trunk`` follows the net from its first convolution along the chain of blobs and checks
each layer against the registered trunk's modules (``expected_layers``, read off the modules
themselves): kind, kernel, stride, padding, groups, outputs, pooling rounding and LRN settings.
The first layer that differs is named in a one-line error.

``match_head`` finds fc6 (the net's first InnerProduct) and fc7 (the next one, reading fc6
through its ReLU), and the pyramid fc6 reads: Caffe's SPP is max pooling layers on conv5, each
flattened, concatenated along channels; or one pooling layer (AlexNet's pool5). Each level's
size is its pooling output on conv5 at the net's declared input size (Caffe's rules: convolution
sizes round down, pooling sizes up). A Caffe flatten of [C, n, n] is channel-major, index
``c*n*n + y*n + x``, which is sppdet's layout within a level; only the level order may differ,
and ``sppdet_fc6`` reorders fc6's input columns to sppdet's (levels from coarse to fine). An
fc-only net (SPP_net's fine-tuned fc layers, whose input is the 12,800-d pooled vector) does not
say its pyramid: the caller gives it (``--pyramid``). The SPP_net code pools that vector with
``spm_pool_caffe_mex``: levels in ``spm_divs`` order, then channel-major with bins y-major
(``d*n*n + y*n + x``), the same layout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from torch import nn

from sppdet.detector.backbones.caffe.prototxt import (
    CaffeLayer,
    CaffeNet,
    Concat,
    Conv,
    Flatten,
    InnerProduct,
    Lrn,
    Padding,
    Pair,
    Pool,
    Relu,
)
from sppdet.detector.backbones.registry import backbone_spec
from sppdet.detector.backbones.trunk import build_trunk
from sppdet.detector.backbones.zf5 import WithinChannelLRN
from sppdet.detector.core.errors import SppdetError
from sppdet.detector.spp.bins import check_pyramid

Expected = Conv | Pool | Lrn | Relu
_PASS_THROUGH = ("dropout", "split")  # identity at test time


@dataclass(frozen=True)
class TrunkMatch:
    convs: tuple[tuple[str, CaffeLayer], ...]  # (trunk module name, Caffe layer) per convolution
    last: int  # index in net.layers of the trunk's last layer (relu5)
    conv5_size: Pair | None  # conv5 at the net's declared input size, when declared


@dataclass(frozen=True)
class HeadMatch:
    fc6: CaffeLayer
    fc7: CaffeLayer
    levels: tuple[int, ...] | None  # the pyramid fc6 reads, in Caffe's order; None: not said


def expected_layers(arch: str) -> list[tuple[str, Expected]]:
    """(module name, the Caffe layer it computes) for each module of ARCH's trunk."""
    found: list[tuple[str, Expected]] = []
    for name, module in build_trunk(arch).features.named_children():
        found.append((name, _as_caffe(module, arch)))
    return found


def _as_caffe(module: nn.Module, arch: str) -> Expected:
    if isinstance(module, nn.Conv2d):
        return Conv(
            module.out_channels,
            _pair(module.kernel_size),
            _pair(module.stride),
            _pair(module.padding),
            _pair(module.dilation),
            module.groups,
            module.bias is not None,
        )
    if isinstance(module, nn.ReLU):
        return Relu(0.0)
    if isinstance(module, nn.MaxPool2d) and _pair(module.dilation) == (1, 1):
        return Pool(
            "MAX",
            _pair(module.kernel_size),
            _pair(module.stride or module.kernel_size),
            _pair(module.padding),
            module.ceil_mode,
            False,
        )
    if isinstance(module, WithinChannelLRN):
        return Lrn("WITHIN_CHANNEL", module.size, module.alpha, module.beta, 1.0)
    if isinstance(module, nn.LocalResponseNorm):
        return Lrn("ACROSS_CHANNELS", module.size, module.alpha, module.beta, module.k)
    raise ValueError(f"{arch}: {type(module).__name__} has no Caffe counterpart here")


def _pair(value: int | Sequence[int]) -> Pair:
    values = (value, value) if isinstance(value, int) else tuple(value)
    return (int(values[0]), int(values[1]))


def describe(layer: Expected | CaffeLayer) -> str:
    """A layer in words, for messages: 'a 7x7 convolution, stride 2, pad 1, 96 outputs'."""
    if isinstance(layer, CaffeLayer):
        if layer.params is None or isinstance(layer.params, (Padding, Concat, Flatten)):
            return f"a {layer.type_name} layer"
        if isinstance(layer.params, InnerProduct):
            return f"an inner product with {layer.params.num_output} outputs"
        return describe(layer.params)
    if isinstance(layer, Conv):
        text = f"a {_kernel(layer.kernel)} convolution, stride {_size(layer.stride)}, pad "
        text += f"{_size(layer.pad)}, {layer.num_output} outputs"
        text += f", {layer.group} groups" if layer.group != 1 else ""
        text += f", dilation {_size(layer.dilation)}" if layer.dilation != (1, 1) else ""
        return text + ("" if layer.bias else ", no bias")
    if isinstance(layer, Pool):
        text = f"{_kernel(layer.kernel)} {layer.method.lower()} pooling"
        text += f", stride {_size(layer.stride)}"
        text += f", pad {_size(layer.pad)}" if layer.pad != (0, 0) else ""
        return text + ("" if layer.ceil else ", rounding down")
    if isinstance(layer, Lrn):
        region = "across channels" if layer.region == "ACROSS_CHANNELS" else "within a channel"
        text = f"LRN {region}, size {layer.size}, alpha {layer.alpha:.6g}, beta {layer.beta:.6g}"
        return text + (f", k {layer.k:.6g}" if layer.k != 1 else "")
    return "a ReLU" if layer.negative_slope == 0 else f"a leaky ReLU ({layer.negative_slope:g})"


def _kernel(pair: Pair) -> str:
    return f"{pair[0]}x{pair[1]}"


def _size(pair: Pair) -> str:
    return f"{pair[0]}x{pair[1]}" if pair[0] != pair[1] else str(pair[0])


def _same(found: object, want: Expected) -> bool:
    """Whether a Caffe layer's settings are the module's (LRN floats to float32 precision)."""
    if isinstance(found, Lrn) and isinstance(want, Lrn):
        floats = ((found.alpha, want.alpha), (found.beta, want.beta), (found.k, want.k))
        close = all(math.isclose(a, b, rel_tol=1e-6) for a, b in floats)
        return close and (found.region, found.size) == (want.region, want.size)
    return found == want


def match_trunk(net: CaffeNet, arch: str) -> TrunkMatch | None:
    """NET's layers that compute ARCH's trunk, or None when NET has no convolution."""
    layers = net.layers
    start = next((i for i, x in enumerate(layers) if x.kind in ("conv", "padding")), None)
    if start is None:
        return None
    spec = backbone_spec(arch)
    expected = expected_layers(arch)
    current = layers[start].bottoms[0] if layers[start].bottoms else ""
    shape = net.inputs.get(current, ())
    size: Pair | None = (shape[2], shape[3]) if len(shape) == 4 else None
    convs: list[tuple[str, CaffeLayer]] = []
    pending_pad, k, previous = 0, 0, layers[start].name
    for i in range(start, len(layers)):
        layer = layers[i]
        if layer.bottoms != (current,):
            if current in layer.bottoms:
                raise SppdetError(
                    f"{net.path}: layer '{layer.name}' joins the trunk's blob '{current}' with "
                    f"others, which {spec.title} does not ; pass the {spec.title} prototxt"
                )
            continue  # another branch, or another part of the net
        if layer.kind == "padding" and isinstance(layer.params, Padding):
            pending_pad += layer.params.pad  # V0: folded into the next convolution
        elif layer.kind not in _PASS_THROUGH:
            name, want = expected[k]
            found = layer.params
            twice_padded = isinstance(found, Conv) and pending_pad > 0 and found.pad != (0, 0)
            if isinstance(found, Conv) and pending_pad:
                found = replace(found, pad=(pending_pad, pending_pad))
            pending_pad = 0
            if twice_padded or not _same(found, want):
                if twice_padded:
                    what = "a twice-padded convolution"
                else:
                    what = describe(found if isinstance(found, Expected) else layer)
                raise SppdetError(
                    f"{net.path}: layer '{layer.name}' is {what}, where {spec.title} has "
                    f"{describe(want)} ({name}) ; pass the {spec.title} prototxt or the --arch "
                    "it describes"
                )
            if isinstance(found, Conv):
                convs.append((name, layer))
            size = _output_size(size, found)
            k += 1
            if k == len(expected):
                return TrunkMatch(tuple(convs), i, size)
        current, previous = layer.tops[0], layer.name
    name, want = expected[k]
    raise SppdetError(
        f"{net.path}: the trunk stops after layer '{previous}', where {spec.title} goes on with "
        f"{describe(want)} ({name}) ; pass the prototxt of the whole conv trunk"
    )


def _output_size(size: Pair | None, layer: Expected) -> Pair | None:
    """The map size after LAYER with Caffe's rounding."""
    if size is None:
        return None
    if isinstance(layer, Conv):
        rows, cols = (
            (a + 2 * p - (d * (k - 1) + 1)) // s + 1
            for a, k, s, p, d in zip(
                size, layer.kernel, layer.stride, layer.pad, layer.dilation, strict=True
            )
        )
        return (rows, cols)
    if isinstance(layer, Pool):
        return pool_output_size(size, layer)
    return size


def pool_output_size(size: Pair, pool: Pool) -> Pair:
    """Caffe's pooling output size: rounded up (or down), and a last window that would start
    in the padding is dropped."""
    if pool.global_pooling:
        return (1, 1)
    out = []
    for a, k, s, p in zip(size, pool.kernel, pool.stride, pool.pad, strict=True):
        span = a + 2 * p - k
        n = (-(-span // s) if pool.ceil else span // s) + 1
        if p > 0 and (n - 1) * s >= a + p:
            n -= 1
        out.append(n)
    return (out[0], out[1])


def _sources(net: CaffeNet) -> list[tuple[int | None, ...]]:
    """For each layer, the index of the layer that last wrote each of its bottoms (None for a
    net input), following Caffe's in-place layers."""
    writer: dict[str, int] = {}
    sources = []
    for i, layer in enumerate(net.layers):
        sources.append(tuple(writer.get(b) for b in layer.bottoms))
        for top in layer.tops:
            writer[top] = i
    return sources


def match_head(net: CaffeNet, trunk: TrunkMatch | None, arch: str) -> HeadMatch | None:
    """NET's fc6 and fc7 and the pyramid fc6 reads, or None when NET has no InnerProduct."""
    layers = net.layers
    fcs = [i for i, layer in enumerate(layers) if layer.kind == "fc"]
    if not fcs:
        return None
    sources = _sources(net)
    fc6 = fcs[0]
    levels = _pyramid(net, fc6, sources, trunk, arch)
    for j in fcs[1:]:
        relus, t = 0, sources[j][0] if len(sources[j]) == 1 else None
        while t is not None and t != fc6 and layers[t].kind in ("relu", "dropout"):
            relu = layers[t].params
            if isinstance(relu, Relu):
                if relu.negative_slope != 0:
                    break
                relus += 1
            t = sources[t][0]
        if t == fc6 and relus:
            return HeadMatch(layers[fc6], layers[j], levels)
        if t == fc6:
            raise SppdetError(
                f"{net.path}: '{layers[j].name}' reads fc6 '{layers[fc6].name}' without a ReLU "
                "between them, unlike sppdet's head ; pass the prototxt with fc6's ReLU"
            )
    raise SppdetError(
        f"{net.path}: fc6 '{layers[fc6].name}' has no fc7 reading it through a ReLU ; sppdet "
        "takes fc6 and fc7 together, pass the prototxt that has both"
    )


def _pyramid(
    net: CaffeNet,
    fc6: int,
    sources: list[tuple[int | None, ...]],
    trunk: TrunkMatch | None,
    arch: str,
) -> tuple[int, ...] | None:
    """The pyramid levels fc6 reads, in Caffe's order (None: fc6 reads a net input)."""
    layers = net.layers
    layer = layers[fc6]
    params = layer.params
    assert isinstance(params, InnerProduct)
    if params.axis != 1:
        raise SppdetError(f"{net.path}: fc6 '{layer.name}' has axis {params.axis} ; set axis: 1")
    if len(sources[fc6]) != 1:
        raise SppdetError(f"{net.path}: fc6 '{layer.name}' reads {len(sources[fc6])} blobs")
    source = sources[fc6][0]
    if source is None:
        return None
    branches = [source]
    if layers[source].kind == "concat":
        concat = layers[source].params
        if not isinstance(concat, Concat) or concat.axis != 1:
            raise _unmappable(net, layer, f"'{layers[source].name}' concatenates along axis 2+")
        branches = list(sources[source])
    pools = []
    for branch in branches:
        if branch is not None and layers[branch].kind == "flatten":
            flatten = layers[branch].params
            if not isinstance(flatten, Flatten) or (flatten.axis, flatten.end_axis) != (1, -1):
                raise _unmappable(net, layer, f"'{layers[branch].name}' flattens other axes")
            branch = sources[branch][0]
        if branch is None or layers[branch].kind != "pool":
            made = "a net input" if branch is None else describe(layers[branch])
            raise _unmappable(net, layer, f"a branch of its input comes from {made}")
        pools.append(branch)
    levels = []
    for p in pools:
        pool = layers[p].params
        assert isinstance(pool, Pool)
        if pool.method != "MAX":
            raise _unmappable(net, layer, f"'{layers[p].name}' pools by {pool.method.lower()}")
        if trunk is None or sources[p][0] != trunk.last:
            raise _unmappable(net, layer, f"'{layers[p].name}' does not pool the conv trunk")
        if trunk.conv5_size is None:
            side = backbone_spec(arch).input_size
            raise SppdetError(
                f"{net.path}: no input size declared, so the sizes of the pyramid's pooling "
                f"levels are unknown ; add input_dim lines (1, 3, {side}, {side}) to the prototxt"
            )
        rows, cols = pool_output_size(trunk.conv5_size, pool)
        if rows != cols:
            raise _unmappable(net, layer, f"'{layers[p].name}' makes {rows}x{cols} bins")
        levels.append(rows)
    try:
        return check_pyramid(levels)
    except ValueError:
        raise _unmappable(net, layer, f"its levels {levels} repeat a size") from None


def _unmappable(net: CaffeNet, fc6: CaffeLayer, why: str) -> SppdetError:
    return SppdetError(
        f"{net.path}: cannot map the pyramid fc6 '{fc6.name}' reads: {why} ; sppdet maps max "
        "pooling of conv5, one level or several flattened and concatenated"
    )


def sppdet_fc6(
    weight: np.ndarray, caffe_levels: Sequence[int], channels: int
) -> tuple[np.ndarray, tuple[int, ...]]:
    """fc6 weights [out, C*sum(n^2)] for Caffe's level order -> (weights for sppdet's order,
    that order: the levels sorted from coarse to fine). Within a level both are channel-major
    (c*n*n + y*n + x), so whole level blocks of columns move."""
    levels = check_pyramid(caffe_levels)
    starts = np.cumsum([0] + [channels * n * n for n in levels])
    order = tuple(sorted(levels))
    blocks = [np.arange(starts[levels.index(n)], starts[levels.index(n) + 1]) for n in order]
    return weight[:, np.concatenate(blocks)], order
