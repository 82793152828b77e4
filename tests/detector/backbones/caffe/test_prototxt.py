"""Tests of ``sppdet.detector.backbones.caffe.prototxt``: the layer formats read into the same
records; inputs; one-line errors for files that are not net definitions."""

from __future__ import annotations

from pathlib import Path

import pytest

from sppdet.detector.backbones.caffe.prototxt import (
    Concat,
    Conv,
    Flatten,
    InnerProduct,
    Lrn,
    Padding,
    Pool,
    Relu,
    read_prototxt,
)
from sppdet.detector.core.errors import SppdetError
from tests.detector.backbones.caffe.shared import (
    alexnet_net,
    net_message,
    random_blobs,
    write_net,
    zf5_net,
)

# SPP_net's 2014 style: V0 layers with nested *_param blocks, fillers, learning-rate factors.
SPP_NET_STYLE = """
input: "data"
input_dim: 1
input_dim: 3
input_dim: 224
input_dim: 224
# ---- layer 1
layers {
 layer {
   name: "conv1"
   type: "conv"
   conv_param{
\t   num_output: 96
          kernel_size: 7
          pad: 1
          stride: 2
          weight_filler { type: "gaussian" std: 0.01 }
          bias_filler { type: "constant" value: 0 }
   }
   blobs_lr: 1.
   blobs_lr: 2.0
   weight_decay: 1.
 }
 bottom: "data"
 top: "conv1"
}
layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }
layers {
  layer {
    name: "norm1"
    type: "lrn"
    lrn_param{ local_size: 3 alpha: 0.00005 beta: 0.75 norm_region: WITHIN_CHANNEL }
  }
  bottom: "conv1"
  top: "norm1"
}
layers {
 layer { name: "pool1" type: "pool" pool_param{ kernel_size: 3 stride: 2 pool: MAX } }
 bottom: "norm1"
 top: "pool1"
}
layers { layer { name: "flat" type: "flatten" } bottom: "pool1" top: "flat" }
layers {
 layer { name: "cat" type: "concat" concat_param{ concat_dim: 1 } }
 bottom: "flat"
 top: "cat"
}
layers {
 layer { name: "fc6" type: "inner_product" inner_product_param{ num_output: 4096 } }
 bottom: "cat"
 top: "fc6"
}
layers { layer { name: "drop6" type: "dropout" dropout_param{ dropout_ratio: 0.5 } }
 bottom: "fc6" top: "fc6" }
"""


def records(path: Path) -> list[tuple]:
    return [(x.kind, x.name, x.bottoms, x.tops, x.params) for x in read_prototxt(path).layers]


def test_spp_net_v0_style_reads(tmp_path: Path) -> None:
    path = tmp_path / "spp_net_style.prototxt"
    path.write_text(SPP_NET_STYLE)
    net = read_prototxt(path)
    assert net.version == "V0" and net.inputs == {"data": (1, 3, 224, 224)}
    params = [layer.params for layer in net.layers]
    assert params[0] == Conv(96, (7, 7), (2, 2), (1, 1), (1, 1), 1, True)
    assert params[1] == Relu(0.0)
    assert isinstance(params[2], Lrn) and params[2].region == "WITHIN_CHANNEL"
    assert params[3] == Pool("MAX", (3, 3), (2, 2), (0, 0), True, False)
    assert params[4:] == [Flatten(1, -1), Concat(1), InnerProduct(4096, True, 1, False), None]
    assert [layer.kind for layer in net.layers][-1] == "dropout"


@pytest.mark.parametrize(
    ("layers", "versions"),
    [(zf5_net((6, 3, 2, 1), 8), ("V0", "V1", "V2")), (alexnet_net(8), ("V0-flat", "V1", "V2"))],
    ids=["zf5", "alexnet"],
)
def test_layer_formats_read_alike(tmp_path: Path, layers, versions) -> None:
    found = []
    for version in versions:
        text = net_message(layers, version, (1, 3, 224, 224))
        path = tmp_path / f"{version}.prototxt"
        path.write_text(str(text))
        found.append(records(path))
        assert read_prototxt(path).inputs == {"data": (1, 3, 224, 224)}
    assert found[0] == found[1] == found[2]
    assert [r[0] for r in found[0]].count("conv") == 5


def test_inputs_from_an_input_layer(tmp_path: Path) -> None:
    path = tmp_path / "deploy.prototxt"
    path.write_text(
        'layer { name: "data" type: "Input" top: "data" '
        "input_param { shape: { dim: 10 dim: 3 dim: 227 dim: 227 } } }\n"
        'layer { name: "pad" type: "Pooling" bottom: "data" top: "p" '
        "pooling_param { pool: AVE kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 pad_w: 1 } }"
    )
    net = read_prototxt(path)
    assert net.inputs == {"data": (10, 3, 227, 227)}
    assert net.layers[1].params == Pool("AVE", (2, 3), (1, 2), (0, 1), True, False)


def test_v0_padding_layer(tmp_path: Path) -> None:
    path = tmp_path / "v0.prototxt"
    path.write_text(
        'layers { layer { name: "pad2" type: "padding" pad: 2 } bottom: "a" top: "b" }\n'
        'layers { layer { name: "conv2" type: "conv" num_output: 4 kernelsize: 5 } '
        'bottom: "b" top: "c" }'
    )
    params = [layer.params for layer in read_prototxt(path).layers]
    assert params == [Padding(2), Conv(4, (5, 5), (1, 1), (0, 0), (1, 1), 1, True)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"layers { layer { name: 'x' type: 'conv' }", "not a Caffe prototxt"),
        (b"conv1 = nn.Conv2d(3, 96, 7)", "not a Caffe prototxt"),
        (b'layer { name: "a" type: "ReLU" }\nlayers { name: "b" }', "mixes V2 `layer` and V1"),
        (b'name: "empty"\ninput: "data"', "no layers"),
        (b"\x08\xff\xfe\x81binary", "binary data, not a text prototxt"),
    ],
)
def test_bad_prototxts_are_one_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.prototxt"
    path.write_bytes(content)
    with pytest.raises(SppdetError, match=message) as err:
        read_prototxt(path)
    assert "\n" not in str(err.value) and str(err.value).startswith(str(path))


def test_missing_prototxt(tmp_path: Path) -> None:
    with pytest.raises(SppdetError, match="prototxt not found"):
        read_prototxt(tmp_path / "none.prototxt")


def test_the_written_caffemodel_is_not_a_prototxt(tmp_path: Path) -> None:
    layers = zf5_net((1, 2, 3, 6), 8)
    _, caffemodel = write_net(tmp_path, "zf5", layers, random_blobs(layers, 0), "V1")
    with pytest.raises(SppdetError, match="binary data|not a Caffe prototxt"):
        read_prototxt(caffemodel)
