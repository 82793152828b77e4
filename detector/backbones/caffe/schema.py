"""The Caffe protobuf messages sppdet reads, declared here (no protoc, no Caffe install): only the
fields the converter needs, with caffe.proto's field numbers (BVLC/caffe, src/caffe/proto), so
real files parse. Everything else in a file is skipped as an unknown field.

Two roots:

* ``NetParameter``: a net definition (prototxt, protobuf text format) in any of Caffe's three
  layer formats: V2 ``layer`` (field 100, ``LayerParameter`` with string types), V1 ``layers``
  (field 2, ``V1LayerParameter`` with enum types) and V0, a V1 entry whose ``layer`` (field 1,
  ``V0LayerParameter``) holds the layer. The SPP_net release's 2014 prototxts are V0 with nested
  ``conv_param``/``pool_param``/``lrn_param``/``inner_product_param``/``concat_param`` blocks
  from the authors' modified Caffe, whose caffe.proto was never published; those five fields
  carry numbers of our own (``FORK_FIELDS``) and are read from text only.
* ``NetWeights``: a trained net (caffemodel, binary): only each layer's name and blobs, so the
  layer parameters of a file (whatever Caffe version or fork wrote them) are never decoded.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

FILE_NAME = "sppdet_caffe.proto"
PACKAGE = "sppdet_caffe"

# The modified Caffe of SPP_net nests these blocks inside a V0 layer; text-only, numbered here.
FORK_FIELDS = {
    "conv_param": (2001, "ConvolutionParameter"),
    "pool_param": (2002, "PoolingParameter"),
    "lrn_param": (2003, "LRNParameter"),
    "inner_product_param": (2004, "InnerProductParameter"),
    "concat_param": (2005, "ConcatParameter"),
}

# V1LayerParameter.LayerType: every value, since text naming an undeclared value fails to parse.
V1_LAYER_TYPES = {
    "NONE": 0, "ABSVAL": 35, "ACCURACY": 1, "ARGMAX": 30, "BNLL": 2, "CONCAT": 3,
    "CONTRASTIVE_LOSS": 37, "CONVOLUTION": 4, "DATA": 5, "DECONVOLUTION": 39, "DROPOUT": 6,
    "DUMMY_DATA": 32, "EUCLIDEAN_LOSS": 7, "ELTWISE": 25, "EXP": 38, "FLATTEN": 8,
    "HDF5_DATA": 9, "HDF5_OUTPUT": 10, "HINGE_LOSS": 28, "IM2COL": 11, "IMAGE_DATA": 12,
    "INFOGAIN_LOSS": 13, "INNER_PRODUCT": 14, "LRN": 15, "MEMORY_DATA": 29,
    "MULTINOMIAL_LOGISTIC_LOSS": 16, "MVN": 34, "POOLING": 17, "POWER": 26, "RELU": 18,
    "SIGMOID": 19, "SIGMOID_CROSS_ENTROPY_LOSS": 27, "SILENCE": 36, "SOFTMAX": 20,
    "SOFTMAX_LOSS": 21, "SPLIT": 22, "SLICE": 33, "TANH": 23, "WINDOW_DATA": 24, "THRESHOLD": 31,
}  # fmt: skip

POOL_METHODS = {"MAX": 0, "AVE": 1, "STOCHASTIC": 2}
ROUND_MODES = {"CEIL": 0, "FLOOR": 1}
NORM_REGIONS = {"ACROSS_CHANNELS": 0, "WITHIN_CHANNEL": 1}

_F = descriptor_pb2.FieldDescriptorProto
_TYPES = {
    "string": _F.TYPE_STRING,
    "bool": _F.TYPE_BOOL,
    "int32": _F.TYPE_INT32,
    "uint32": _F.TYPE_UINT32,
    "int64": _F.TYPE_INT64,
    "float": _F.TYPE_FLOAT,
    "double": _F.TYPE_DOUBLE,
}

# name -> fields (name, number, type, label, default); a capitalised type is a message or enum.
Field = tuple[str, int, str, str, str | None]
_MESSAGES: dict[str, list[Field]] = {
    "BlobShape": [("dim", 1, "int64", "repeated", None)],
    "BlobProto": [
        ("num", 1, "int32", "optional", None),
        ("channels", 2, "int32", "optional", None),
        ("height", 3, "int32", "optional", None),
        ("width", 4, "int32", "optional", None),
        ("data", 5, "float", "repeated", None),
        ("shape", 7, "BlobShape", "optional", None),
        ("double_data", 8, "double", "repeated", None),
    ],
    "ConvolutionParameter": [
        ("num_output", 1, "uint32", "optional", None),
        ("bias_term", 2, "bool", "optional", "true"),
        ("pad", 3, "uint32", "repeated", None),
        ("kernel_size", 4, "uint32", "repeated", None),
        ("group", 5, "uint32", "optional", "1"),
        ("stride", 6, "uint32", "repeated", None),
        ("pad_h", 9, "uint32", "optional", None),
        ("pad_w", 10, "uint32", "optional", None),
        ("kernel_h", 11, "uint32", "optional", None),
        ("kernel_w", 12, "uint32", "optional", None),
        ("stride_h", 13, "uint32", "optional", None),
        ("stride_w", 14, "uint32", "optional", None),
        ("dilation", 18, "uint32", "repeated", None),
    ],
    "PoolingParameter": [
        ("pool", 1, "PoolingParameter.PoolMethod", "optional", "MAX"),
        ("kernel_size", 2, "uint32", "optional", None),
        ("stride", 3, "uint32", "optional", "1"),
        ("pad", 4, "uint32", "optional", None),
        ("kernel_h", 5, "uint32", "optional", None),
        ("kernel_w", 6, "uint32", "optional", None),
        ("stride_h", 7, "uint32", "optional", None),
        ("stride_w", 8, "uint32", "optional", None),
        ("pad_h", 9, "uint32", "optional", None),
        ("pad_w", 10, "uint32", "optional", None),
        ("global_pooling", 12, "bool", "optional", None),
        ("round_mode", 13, "PoolingParameter.RoundMode", "optional", "CEIL"),
    ],
    "LRNParameter": [
        ("local_size", 1, "uint32", "optional", "5"),
        ("alpha", 2, "float", "optional", "1"),
        ("beta", 3, "float", "optional", "0.75"),
        ("norm_region", 4, "LRNParameter.NormRegion", "optional", "ACROSS_CHANNELS"),
        ("k", 5, "float", "optional", "1"),
    ],
    "InnerProductParameter": [
        ("num_output", 1, "uint32", "optional", None),
        ("bias_term", 2, "bool", "optional", "true"),
        ("axis", 5, "int32", "optional", "1"),
        ("transpose", 6, "bool", "optional", None),
    ],
    "ConcatParameter": [
        ("concat_dim", 1, "uint32", "optional", "1"),
        ("axis", 2, "int32", "optional", "1"),
    ],
    "FlattenParameter": [
        ("axis", 1, "int32", "optional", "1"),
        ("end_axis", 2, "int32", "optional", "-1"),
    ],
    "ReLUParameter": [("negative_slope", 1, "float", "optional", None)],
    "InputParameter": [("shape", 1, "BlobShape", "repeated", None)],
    "LayerParameter": [
        ("name", 1, "string", "optional", None),
        ("type", 2, "string", "optional", None),
        ("bottom", 3, "string", "repeated", None),
        ("top", 4, "string", "repeated", None),
        ("blobs", 7, "BlobProto", "repeated", None),
        ("concat_param", 104, "ConcatParameter", "optional", None),
        ("convolution_param", 106, "ConvolutionParameter", "optional", None),
        ("inner_product_param", 117, "InnerProductParameter", "optional", None),
        ("lrn_param", 118, "LRNParameter", "optional", None),
        ("pooling_param", 121, "PoolingParameter", "optional", None),
        ("relu_param", 123, "ReLUParameter", "optional", None),
        ("flatten_param", 135, "FlattenParameter", "optional", None),
        ("input_param", 143, "InputParameter", "optional", None),
    ],
    "V1LayerParameter": [
        ("layer", 1, "V0LayerParameter", "optional", None),
        ("bottom", 2, "string", "repeated", None),
        ("top", 3, "string", "repeated", None),
        ("name", 4, "string", "optional", None),
        ("type", 5, "V1LayerParameter.LayerType", "optional", None),
        ("blobs", 6, "BlobProto", "repeated", None),
        ("concat_param", 9, "ConcatParameter", "optional", None),
        ("convolution_param", 10, "ConvolutionParameter", "optional", None),
        ("inner_product_param", 17, "InnerProductParameter", "optional", None),
        ("lrn_param", 18, "LRNParameter", "optional", None),
        ("pooling_param", 19, "PoolingParameter", "optional", None),
        ("relu_param", 30, "ReLUParameter", "optional", None),
    ],
    "V0LayerParameter": [
        ("name", 1, "string", "optional", None),
        ("type", 2, "string", "optional", None),
        ("num_output", 3, "uint32", "optional", None),
        ("biasterm", 4, "bool", "optional", "true"),
        ("pad", 7, "uint32", "optional", None),
        ("kernelsize", 8, "uint32", "optional", None),
        ("group", 9, "uint32", "optional", "1"),
        ("stride", 10, "uint32", "optional", "1"),
        ("pool", 11, "V0LayerParameter.PoolMethod", "optional", "MAX"),
        ("local_size", 13, "uint32", "optional", "5"),
        ("alpha", 14, "float", "optional", "1"),
        ("beta", 15, "float", "optional", "0.75"),
        ("k", 22, "float", "optional", "1"),
        ("blobs", 50, "BlobProto", "repeated", None),
        ("concat_dim", 65, "uint32", "optional", "1"),
    ]
    + [(name, number, kind, "optional", None) for name, (number, kind) in FORK_FIELDS.items()],
    "NetParameter": [
        ("name", 1, "string", "optional", None),
        ("layers", 2, "V1LayerParameter", "repeated", None),
        ("input", 3, "string", "repeated", None),
        ("input_dim", 4, "int32", "repeated", None),
        ("input_shape", 8, "BlobShape", "repeated", None),
        ("layer", 100, "LayerParameter", "repeated", None),
    ],
    # The caffemodel side: names and blobs only.
    "WeightsV0Layer": [
        ("name", 1, "string", "optional", None),
        ("blobs", 50, "BlobProto", "repeated", None),
    ],
    "WeightsV1Layer": [
        ("layer", 1, "WeightsV0Layer", "optional", None),
        ("name", 4, "string", "optional", None),
        ("blobs", 6, "BlobProto", "repeated", None),
    ],
    "WeightsLayer": [
        ("name", 1, "string", "optional", None),
        ("blobs", 7, "BlobProto", "repeated", None),
    ],
    "NetWeights": [
        ("name", 1, "string", "optional", None),
        ("layers", 2, "WeightsV1Layer", "repeated", None),
        ("layer", 100, "WeightsLayer", "repeated", None),
    ],
}
_ENUMS: dict[str, dict[str, int]] = {
    "PoolingParameter.PoolMethod": POOL_METHODS,
    "PoolingParameter.RoundMode": ROUND_MODES,
    "LRNParameter.NormRegion": NORM_REGIONS,
    "V1LayerParameter.LayerType": V1_LAYER_TYPES,
    "V0LayerParameter.PoolMethod": POOL_METHODS,
}
_PACKED = {("BlobShape", "dim"), ("BlobProto", "data"), ("BlobProto", "double_data")}


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(name=FILE_NAME, package=PACKAGE, syntax="proto2")
    messages = {}
    for name in _MESSAGES:
        messages[name] = file.message_type.add(name=name)
    for full, values in _ENUMS.items():
        owner, enum_name = full.split(".")
        enum = messages[owner].enum_type.add(name=enum_name)
        for value_name, number in values.items():
            enum.value.add(name=value_name, number=number)
    for name, fields in _MESSAGES.items():
        for field_name, number, kind, label, default in fields:
            field = messages[name].field.add(name=field_name, number=number)
            field.label = _F.LABEL_REPEATED if label == "repeated" else _F.LABEL_OPTIONAL
            if kind in _TYPES:
                field.type = _TYPES[kind]
            else:
                field.type = _F.TYPE_ENUM if kind in _ENUMS else _F.TYPE_MESSAGE
                field.type_name = f".{PACKAGE}.{kind}"
            if default is not None:
                field.default_value = default
            if (name, field_name) in _PACKED:
                field.options.packed = True
    return file


def _message_classes() -> dict[str, type[Message]]:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file_descriptor())
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))
        for name in _MESSAGES
    }


MESSAGES = _message_classes()
NetParameter = MESSAGES["NetParameter"]
NetWeights = MESSAGES["NetWeights"]
BlobProto = MESSAGES["BlobProto"]
