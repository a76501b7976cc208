"""Reading pickles from untrusted folders (LiveTalking avatars' coords.pkl and mask_coords.pkl).

`pickle.load` runs whatever callable a file names. This unpickler resolves no
global except the four numpy entry points that rebuild plain numeric arrays
and scalars, each wrapped so it can only do that; everything else (os.system,
builtins.eval, any class) is refused before it is called. The result is then
checked to hold only lists, tuples, ints, floats and numeric numpy values.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

MAX_PICKLE_BYTES = 16 * 1024 * 1024
NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float
_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMERIC = ("numpy.core.numeric", "numpy._core.numeric")


class UnsafePickle(Exception):
    """The pickle names something other than numbers, lists, tuples or numeric numpy values."""


class _ArrayType:
    """Stands in for numpy.ndarray: only usable as _reconstruct's first argument, never callable."""


_ARRAY_TYPE = _ArrayType()


def _numeric_dtype(dtype: Any) -> np.dtype:
    if not isinstance(dtype, np.dtype) or dtype.hasobject or dtype.kind not in NUMERIC_KINDS:
        raise UnsafePickle(f"refusing numpy dtype {dtype!r}: only numeric arrays are accepted")
    return dtype


def _dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    if not isinstance(spec, str):
        raise UnsafePickle(f"refusing numpy dtype spec {spec!r}")
    dtype = np.dtype(spec, align, copy)
    if dtype.hasobject:
        raise UnsafePickle(f"refusing object dtype {spec!r}")
    return dtype


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
    if subtype is not _ARRAY_TYPE or shape != (0,) or typecode not in (b"b", "b"):
        raise UnsafePickle("refusing a numpy array reconstruction with unusual arguments")
    return np.ndarray.__new__(np.ndarray, (0,), "b")


def _scalar(dtype: Any, data: Any = None) -> np.generic:
    _numeric_dtype(dtype)
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise UnsafePickle("refusing a numpy scalar without its raw bytes")
    return np.frombuffer(data, dtype)[0]


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    _numeric_dtype(dtype)
    if not isinstance(buffer, (bytes, bytearray, pickle.PickleBuffer)):
        raise UnsafePickle("refusing a numpy buffer that is not raw bytes")
    return np.frombuffer(buffer, dtype).reshape(shape, order="F" if order == "F" else "C").copy()


def _latin1_bytes(text: Any, encoding: str = "latin1") -> bytes:
    """Protocols 0-2 spell bytes as _codecs.encode(text, "latin1")."""
    if not isinstance(text, str) or encoding != "latin1":
        raise UnsafePickle("refusing _codecs.encode with unusual arguments")
    return text.encode("latin1")


_ALLOWED: dict[tuple[str, str], Any] = {("numpy", "ndarray"): _ARRAY_TYPE, ("numpy", "dtype"): _dtype,
                                        ("_codecs", "encode"): _latin1_bytes}
_ALLOWED.update({(module, "_reconstruct"): _reconstruct for module in _MULTIARRAY})
_ALLOWED.update({(module, "scalar"): _scalar for module in _MULTIARRAY})
_ALLOWED.update({(module, "_frombuffer"): _frombuffer for module in _NUMERIC})


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose only globals are the wrapped numpy rebuilders above."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickle(f"refusing to load {module}.{name}: only numbers, lists, tuples and "
                               f"numeric numpy arrays are accepted") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickle("refusing a pickle with persistent ids")


def check_plain(value: Any, depth: int = 0) -> Any:
    """Raise UnsafePickle unless value is built only from lists, tuples, numbers and numeric arrays."""
    if depth > 8:
        raise UnsafePickle("refusing a pickle nested more than 8 levels deep")
    if isinstance(value, (list, tuple)):
        for item in value:
            check_plain(item, depth + 1)
    elif isinstance(value, np.ndarray):
        _numeric_dtype(value.dtype)
    elif isinstance(value, np.generic):
        _numeric_dtype(value.dtype)
    elif not isinstance(value, (bool, int, float)):
        raise UnsafePickle(f"refusing a pickle holding a {type(value).__name__}")
    return value


def loads(data: bytes) -> Any:
    """Unpickle untrusted bytes into plain data, or raise UnsafePickle without running anything."""
    if len(data) > MAX_PICKLE_BYTES:
        raise UnsafePickle(f"pickle is {len(data)} bytes, over the {MAX_PICKLE_BYTES} byte limit")
    try:
        value = RestrictedUnpickler(io.BytesIO(data)).load()
    except UnsafePickle:
        raise
    except Exception as exc:  # truncated or malformed data raises many kinds
        raise UnsafePickle(f"not a readable pickle ({type(exc).__name__}: {exc})") from None
    return check_plain(value)


def load(path: Path) -> Any:
    """Read and unpickle one untrusted file (blocking)."""
    if path.stat().st_size > MAX_PICKLE_BYTES:
        raise UnsafePickle(f"{path} is over the {MAX_PICKLE_BYTES} byte limit")
    return loads(path.read_bytes())
