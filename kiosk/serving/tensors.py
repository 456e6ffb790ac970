"""numpy arrays <-> TensorProto, always through ``tensor_content`` (raw little-endian bytes).

The original kiosk sent ``float_val`` lists, which cost a Python float object per pixel;
``tensor_content`` is one memory copy. Decoding still accepts the typed ``*_val`` fields so that
any TensorFlow Serving reply (or an old client's request) is understood.
"""

from __future__ import annotations

from typing import cast

import numpy as np

from kiosk.serving.protos import tfserving_pb2 as pb

_DTYPES: dict[pb.DataType, np.dtype] = {
    pb.DT_FLOAT: np.dtype("<f4"),
    pb.DT_DOUBLE: np.dtype("<f8"),
    pb.DT_HALF: np.dtype("<f2"),
    pb.DT_INT8: np.dtype("i1"),
    pb.DT_INT16: np.dtype("<i2"),
    pb.DT_INT32: np.dtype("<i4"),
    pb.DT_INT64: np.dtype("<i8"),
    pb.DT_UINT8: np.dtype("u1"),
    pb.DT_UINT16: np.dtype("<u2"),
    pb.DT_UINT32: np.dtype("<u4"),
    pb.DT_UINT64: np.dtype("<u8"),
    pb.DT_BOOL: np.dtype("?"),
}
_DATA_TYPES: dict[str, pb.DataType] = {
    dtype.str.lstrip("<|"): code for code, dtype in _DTYPES.items()
}

# The repeated field that carries each dtype when tensor_content is empty.
_VALUE_FIELDS: dict[int, str] = {
    pb.DT_FLOAT: "float_val",
    pb.DT_DOUBLE: "double_val",
    pb.DT_HALF: "half_val",
    pb.DT_INT8: "int_val",
    pb.DT_INT16: "int_val",
    pb.DT_INT32: "int_val",
    pb.DT_UINT8: "int_val",
    pb.DT_UINT16: "int_val",
    pb.DT_INT64: "int64_val",
    pb.DT_UINT32: "uint32_val",
    pb.DT_UINT64: "uint64_val",
    pb.DT_BOOL: "bool_val",
}


class UnsupportedTensor(ValueError):
    """A dtype Kiosk does not carry (strings, complex, resources)."""


def data_type(dtype: np.dtype | type) -> pb.DataType:
    """The TensorFlow DataType code of a numpy dtype."""
    key = np.dtype(dtype).str.lstrip("<>|=")
    try:
        return _DATA_TYPES[key]
    except KeyError:
        raise UnsupportedTensor(
            f"numpy dtype {np.dtype(dtype)} has no TensorFlow tensor type"
        ) from None


def numpy_dtype(code: int) -> np.dtype:
    """The numpy dtype of a TensorFlow DataType code."""
    try:
        return _DTYPES[cast(pb.DataType, code)]  # a DataType is its int code
    except KeyError:
        name = pb.DataType.Name(code) if code in pb.DataType.values() else str(code)
        raise UnsupportedTensor(f"tensor type {name} is not supported") from None


def to_tensor_proto(array: np.ndarray, out: pb.TensorProto | None = None) -> pb.TensorProto:
    """Encode ``array`` as a TensorProto with ``tensor_content``; fills ``out`` when given."""
    array = np.asarray(array)
    code = data_type(array.dtype)
    little = array.astype(_DTYPES[code], copy=False)
    proto = out if out is not None else pb.TensorProto()
    proto.dtype = code
    proto.tensor_shape.dim.extend(pb.TensorShapeProto.Dim(size=int(n)) for n in array.shape)
    proto.tensor_content = np.ascontiguousarray(little).tobytes()
    return proto


def shape_of(proto: pb.TensorShapeProto) -> tuple[int, ...]:
    return tuple(int(d.size) for d in proto.dim)


def to_ndarray(proto: pb.TensorProto) -> np.ndarray:
    """Decode a TensorProto from either ``tensor_content`` or its typed value field."""
    dtype = numpy_dtype(proto.dtype)
    shape = shape_of(proto.tensor_shape)
    content = proto.tensor_content  # read once: each read of a bytes field is a copy
    if content:
        array = np.frombuffer(content, dtype=dtype)
    else:
        values = getattr(proto, _VALUE_FIELDS[proto.dtype])
        if proto.dtype == pb.DT_HALF:
            array = np.asarray(values, dtype=np.uint16).view(np.float16)
        else:
            array = np.asarray(values, dtype=dtype)
        count = int(np.prod(shape)) if shape else 1
        if array.size == 1 and count != 1:
            array = np.full(count, array[0], dtype=dtype)  # TF's splat encoding
    if array.size != (int(np.prod(shape)) if shape else 1):
        raise ValueError(f"tensor holds {array.size} values but its shape is {list(shape)}")
    return array.reshape(shape).astype(dtype.newbyteorder("="), copy=False)
