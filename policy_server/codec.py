"""Wire codecs: msgpack with numpy arrays, and json_numpy, neither of which ever unpickles.

msgpack arrays travel as maps `{"__ndarray__": True, "data": bytes, "dtype": str, "shape": [...]}`
(openpi's convention). We write the map keys as bytes, as openpi does, so openpi's own client
decodes our replies; we accept keys as bytes or str. json_numpy (OpenVLA's REST format) encodes
arrays as `{"__numpy__": base64, "dtype": str, "shape": [...]}`.

Decoding is written for hostile input: a dtype allow-list (numbers and bool only, never object,
void or structured dtypes), `len(data) == prod(shape) * itemsize`, a maximum array size, limits
on message size, container length and nesting depth, and msgpack extension types refused.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import threading
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

ALLOWED_DTYPES: frozenset[np.dtype] = frozenset(
    np.dtype(name)
    for name in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                 "float16", "float32", "float64")
)
_NDARRAY_KEYS = (b"__ndarray__", "__ndarray__")
_NPGENERIC_KEYS = (b"__npgeneric__", "__npgeneric__")


class CodecError(ValueError):
    """The bytes are not a valid, acceptable message (the sender's fault: answer 400)."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what a decoder accepts; the defaults fit a few camera images per message."""

    max_message_bytes: int = 16 << 20
    max_array_bytes: int = 16 << 20
    max_ndim: int = 8
    max_str_bytes: int = 1 << 20
    max_container_len: int = 4096  # entries in one list or map
    max_depth: int = 32  # nesting of lists and maps
    max_dtype_chars: int = 16


DEFAULT_LIMITS = Limits()


# ----------------------------------------------------------------------------------------- dtype


def _parse_dtype(descr: Any, limits: Limits) -> np.dtype:
    if isinstance(descr, bytes):
        try:
            descr = descr.decode("ascii")
        except UnicodeDecodeError as err:
            raise CodecError("array dtype is not ASCII") from err
    if not isinstance(descr, str) or not descr or len(descr) > limits.max_dtype_chars:
        raise CodecError(f"array dtype must be a short string, got {type(descr).__name__}")
    try:
        dtype = np.dtype(descr)
    except (TypeError, ValueError, SyntaxError) as err:
        raise CodecError(f"unknown array dtype {descr!r}") from err
    if dtype.newbyteorder("=") not in ALLOWED_DTYPES or dtype.fields is not None or dtype.subdtype is not None:
        raise CodecError(f"array dtype {descr!r} is not allowed (numbers and bool only)")
    return dtype


def _check_dtype_for_encoding(array: np.ndarray | np.generic) -> None:
    if array.dtype.newbyteorder("=") not in ALLOWED_DTYPES:
        raise TypeError(f"cannot encode arrays of dtype {array.dtype} (numbers and bool only)")


def _parse_shape(shape: Any, limits: Limits) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)) or len(shape) > limits.max_ndim:
        raise CodecError(f"array shape must be a list of at most {limits.max_ndim} integers")
    if not all(type(n) is int and n >= 0 for n in shape):  # `type is int`: no bools, no floats
        raise CodecError(f"array shape must hold non-negative integers, got {shape!r}")
    return tuple(shape)


def _array_from_buffer(data: Any, dtype: np.dtype, shape: tuple[int, ...], limits: Limits) -> np.ndarray:
    if not isinstance(data, (bytes, bytearray)):
        raise CodecError(f"array data must be bytes, got {type(data).__name__}")
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    if expected > limits.max_array_bytes:
        raise CodecError(f"array of {expected} bytes exceeds the limit of {limits.max_array_bytes}")
    if len(data) != expected:
        raise CodecError(f"array data has {len(data)} bytes, shape {list(shape)} of {dtype} needs {expected}")
    array = np.frombuffer(data, dtype=dtype).reshape(shape)  # read-only view, no copy
    if not dtype.isnative:
        array = array.astype(dtype.newbyteorder("="))
    return array


def _field(obj: dict, name: str) -> Any:
    if name in obj:
        return obj[name]
    key = name.encode()
    if key in obj:
        return obj[key]
    raise CodecError(f"array map has no {name!r}")


# --------------------------------------------------------------------------------------- msgpack


def _msgpack_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        _check_dtype_for_encoding(obj)
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        _check_dtype_for_encoding(obj)
        return obj.item()  # a plain number is what every msgpack reader understands
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot encode {type(obj).__name__}")


# A fresh `msgpack.packb` allocates and regrows its buffer on every call (about 0.3 ms for an image
# here); a reused Packer takes about 20 us. Packers are not thread-safe, hence one per thread.
_packers = threading.local()


def packb(obj: Any) -> bytes:
    """Serialise `obj` (dicts, lists, str, bytes, numbers, numpy arrays) to msgpack bytes."""
    packer = getattr(_packers, "packer", None)
    if packer is None:
        packer = _packers.packer = msgpack.Packer(default=_msgpack_default, use_bin_type=True, autoreset=True)
    try:
        return packer.pack(obj)
    except BaseException:
        _packers.packer = None  # a failed pack may leave a partial buffer behind
        raise


def _reject_ext(code: int, data: bytes) -> Any:
    raise CodecError(f"msgpack extension type {code} is not accepted")


def _make_object_hook(limits: Limits):
    def hook(obj: dict) -> Any:
        if any(k in obj for k in _NDARRAY_KEYS):
            if len(obj) != 4:
                raise CodecError("array map must have exactly __ndarray__, data, dtype, shape")
            dtype = _parse_dtype(_field(obj, "dtype"), limits)
            shape = _parse_shape(_field(obj, "shape"), limits)
            return _array_from_buffer(_field(obj, "data"), dtype, shape, limits)
        if any(k in obj for k in _NPGENERIC_KEYS):  # openpi's numpy scalars
            dtype = _parse_dtype(_field(obj, "dtype"), limits)
            value = _field(obj, "data")
            if type(value) not in (bool, int, float):
                raise CodecError("numpy scalar data must be a number")
            try:
                return dtype.type(value)
            except (OverflowError, ValueError) as err:
                raise CodecError(f"numpy scalar {value!r} does not fit {dtype}") from err
        return obj

    return hook


_hooks: dict[Limits, Any] = {}


def unpackb(data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Decode one msgpack message; raises CodecError for anything malformed or out of bounds."""
    if len(data) > limits.max_message_bytes:
        raise CodecError(f"message of {len(data)} bytes exceeds the limit of {limits.max_message_bytes}")
    hook = _hooks.get(limits) or _hooks.setdefault(limits, _make_object_hook(limits))
    try:
        obj = msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True, max_bin_len=limits.max_array_bytes,
            max_str_len=limits.max_str_bytes, max_array_len=limits.max_container_len,
            max_map_len=limits.max_container_len, max_ext_len=0, ext_hook=_reject_ext,
            object_hook=hook,
        )
    except CodecError:
        raise
    except msgpack.StackError as err:
        raise CodecError("msgpack message is nested too deeply") from err
    except (ValueError, TypeError, OverflowError, RecursionError, msgpack.UnpackException) as err:
        # ValueError covers truncated input, trailing bytes, invalid UTF-8 and declared lengths over the limits.
        raise CodecError(f"malformed msgpack: {err}") from err
    check_depth(obj, limits.max_depth)
    return obj


def check_depth(obj: Any, max_depth: int) -> None:
    """Raise CodecError when lists/maps nest deeper than `max_depth` (iterative: no recursion limit)."""
    stack = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            raise CodecError(f"message nests deeper than {max_depth} levels")
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


# ------------------------------------------------------------------------------------ json_numpy


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        _check_dtype_for_encoding(obj)
        return {"__numpy__": base64.b64encode(obj.tobytes()).decode("ascii"), "dtype": obj.dtype.str,
                "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        _check_dtype_for_encoding(obj)
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def json_dumps(obj: Any) -> bytes:
    """JSON with numpy arrays in json_numpy's form; non-finite floats are refused (not valid JSON)."""
    return json.dumps(obj, default=_json_default, allow_nan=False, separators=(",", ":")).encode()


def _reject_constant(name: str) -> Any:
    raise CodecError(f"JSON constant {name} is not accepted")


def json_loads(data: bytes | str, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Decode JSON whose `{"__numpy__": ...}` maps become arrays (json_numpy); raises CodecError."""
    if len(data) > limits.max_message_bytes:
        raise CodecError(f"message of {len(data)} bytes exceeds the limit of {limits.max_message_bytes}")

    def hook(obj: dict) -> Any:
        if "__numpy__" not in obj:
            return obj
        if set(obj) != {"__numpy__", "dtype", "shape"}:
            raise CodecError("json_numpy map must have exactly __numpy__, dtype, shape")
        dtype = _parse_dtype(obj["dtype"], limits)
        shape = _parse_shape(obj["shape"], limits)
        encoded = obj["__numpy__"]
        if not isinstance(encoded, str):
            raise CodecError("json_numpy __numpy__ must be a base64 string")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as err:
            raise CodecError("json_numpy __numpy__ is not valid base64") from err
        array = _array_from_buffer(raw, dtype, shape, limits)
        return array if shape else array.reshape(())[()]  # json_numpy: empty shape means a scalar

    try:
        obj = json.loads(data, object_hook=hook, parse_constant=_reject_constant)
    except CodecError:
        raise
    except RecursionError as err:
        raise CodecError("JSON message is nested too deeply") from err
    except (ValueError, TypeError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CodecError(f"malformed JSON: {err}") from err
    check_depth(obj, limits.max_depth)
    return obj
