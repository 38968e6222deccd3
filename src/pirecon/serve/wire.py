"""msgpack with numpy arrays, byte for byte the format of openpi_client's `msgpack_numpy`.

    array   -> {b"__ndarray__": True, b"data": raw C-order bytes, b"dtype": dtype.str, b"shape": shape}
    numpy scalar (np.float32(1.0), ...) -> {b"__npgeneric__": True, b"data": the Python value, b"dtype": dtype.str}

The marker keys are msgpack *bin* (bytes) keys, every other key is whatever the sender used
(str for openpi clients). Object, structured (void) and complex dtypes are refused when packing,
as openpi does; unpacking refuses object and structured dtypes and checks that the byte count
matches the shape, so a malformed message is an `InputError` naming the problem, never a crash
or an array that reads past its buffer.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

from pirecon.errors import InputError

_ARRAY = b"__ndarray__"
_SCALAR = b"__npgeneric__"
_UNPACKABLE_KINDS = ("V", "O", "c")  # structured, object, complex: refused when packing (as openpi)
_UNREADABLE_KINDS = ("V", "O")  # never built from bytes off the wire


def _pack_default(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in _UNPACKABLE_KINDS:
        raise TypeError(f"cannot send numpy dtype {obj.dtype} over msgpack (object, structured and complex "
                        f"dtypes are not supported)")
    if isinstance(obj, np.ndarray):
        return {_ARRAY: True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {_SCALAR: True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send a {type(obj).__name__} over msgpack; send numpy arrays, numbers, strings, "
                    f"lists and dicts")


def _dtype(spec: Any, what: str) -> np.dtype:
    if isinstance(spec, bytes):
        spec = spec.decode("ascii", "replace")
    if not isinstance(spec, str):
        raise InputError(f"{what}: dtype {spec!r} is not a numpy dtype string such as '<f4' or '|u1'")
    try:
        dtype = np.dtype(spec)
    except (TypeError, ValueError):
        raise InputError(f"{what}: dtype {spec!r} is not a numpy dtype string such as '<f4' or '|u1'") from None
    if dtype.kind in _UNREADABLE_KINDS:
        raise InputError(f"{what}: dtype {spec!r} (object or structured) cannot be received")
    return dtype


def _object_hook(obj: dict) -> Any:
    if _ARRAY in obj:
        dtype = _dtype(obj.get(b"dtype"), "an encoded numpy array")
        shape, data = obj.get(b"shape"), obj.get(b"data")
        if not isinstance(shape, (list, tuple)) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise InputError(f"an encoded numpy array has shape {shape!r}; expected a list of non-negative integers")
        if not isinstance(data, bytes):
            raise InputError(f"an encoded numpy array has data of type {type(data).__name__}; expected bytes")
        expected = math.prod(shape) * dtype.itemsize
        if len(data) != expected:
            raise InputError(f"an encoded numpy array of shape {tuple(shape)} and dtype {dtype.str} needs {expected} "
                             f"bytes of data, got {len(data)}")
        return np.ndarray(buffer=data, dtype=dtype, shape=tuple(shape))  # read-only view of the message
    if _SCALAR in obj:
        dtype = _dtype(obj.get(b"dtype"), "an encoded numpy scalar")
        try:
            return dtype.type(obj.get(b"data"))
        except (TypeError, ValueError, OverflowError) as exc:
            raise InputError(
                f"an encoded numpy scalar of dtype {dtype.str} holds {obj.get(b'data')!r}: {exc}") from None
    return obj


def packb(obj: Any) -> bytes:
    """Python/numpy values -> msgpack bytes (openpi_client.msgpack_numpy.packb's format)."""
    return msgpack.packb(obj, default=_pack_default, use_bin_type=True)


def unpackb(data: bytes) -> Any:
    """msgpack bytes -> Python/numpy values; anything that is not a valid message raises InputError."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputError(f"expected a binary msgpack message, got {type(data).__name__}")
    try:
        return msgpack.unpackb(data, object_hook=_object_hook, raw=False)
    except InputError:
        raise
    except Exception as exc:  # msgpack raises ValueError, ExtraData, FormatError, StackError, UnicodeDecodeError ...
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise InputError(f"the message is not valid msgpack ({detail})") from None
