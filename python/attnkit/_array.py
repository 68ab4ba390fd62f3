"""Array adapter: NumPy / CuPy arrays in, ``_core.TensorRef`` views out, outputs allocated on the
inputs' device. Internal to attnkit."""

from __future__ import annotations

import numbers
import operator

import numpy as np

from . import _core

try:  # bfloat16 for NumPy
    import ml_dtypes

    BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes is a dependency
    ml_dtypes = None
    BFLOAT16 = None

# attnkit::DType codes (cpp/include/attnkit/types.h)
_CODES = {
    np.dtype(np.float32): 0,
    np.dtype(np.float64): 1,
    np.dtype(np.float16): 2,
    np.dtype(np.bool_): 4,
    np.dtype(np.int32): 5,
    np.dtype(np.int64): 6,
}
if BFLOAT16 is not None:
    _CODES[BFLOAT16] = 3

FLOAT_DTYPES = "float32, float64, float16 or bfloat16"


def is_cuda_array(x) -> bool:
    return hasattr(x, "__cuda_array_interface__") and not isinstance(x, np.ndarray)


def _require_cupy(name: str):
    """CuPy, which device arrays need (outputs are allocated with it); TypeError naming the argument
    when it is not installed."""
    try:
        import cupy
    except ImportError:
        raise TypeError(f"{name} is a device array (__cuda_array_interface__) but CuPy is not installed; "
                        "attnkit needs CuPy for device arrays") from None
    return cupy


def checked_alloc(fn, shape, dtype, name: str):
    """fn(shape, dtype) (np.empty, np.zeros, cupy.empty), with a ValueError naming the output instead of
    MemoryError / a size error for a shape nothing can hold."""
    try:
        return fn(shape, dtype=dtype)
    except (MemoryError, ValueError, OverflowError) as e:
        raise ValueError(f"{name}: cannot allocate an array of shape {tuple(shape)} and dtype "
                         f"{np.dtype(dtype)} ({e.__class__.__name__}: {e})") from None


def _dtype_code(dtype, name: str) -> int:
    code = _CODES.get(np.dtype(dtype))
    if code is None:
        raise TypeError(f"{name} has unsupported dtype {np.dtype(dtype)}")
    return code


class Call:
    """Collects the arrays of one call: converts them to TensorRefs (keeping them alive for the call),
    records the device, and allocates outputs with the matching array module."""

    def __init__(self):
        self.cuda = None  # None until the first array: False = NumPy, True = CuPy
        self.device_index = 0
        self._keep = []

    # -- inputs -------------------------------------------------------------------------------
    def array(self, x, name: str, *, coerce: bool = False):
        """Returns x as an array. Only auxiliary arguments (masks, lengths, slopes) are coerced from
        Python sequences and scalars; q/k/v must be arrays already (NumPy, CuPy, or anything exposing
        ``__array_interface__``)."""
        if is_cuda_array(x) or isinstance(x, np.ndarray):
            return x
        if coerce:
            return self.xp.asarray(x)
        if hasattr(x, "__array_interface__"):
            return np.asarray(x)
        raise TypeError(f"{name} must be a NumPy or CuPy array, got {type(x).__name__}")

    def tensor(self, x, name: str, *, coerce: bool = False):
        """TensorRef of x (None -> absent)."""
        if x is None:
            return _core.TensorRef()
        if type(x) is np.ndarray:  # the common case first: every array of every call comes through here
            return self._numpy_tensor(x, name)
        x = self.array(x, name, coerce=coerce)
        if is_cuda_array(x):
            _require_cupy(name)
            iface = x.__cuda_array_interface__
            dtype = np.dtype(iface["typestr"])
            code = _dtype_code(dtype, name)
            shape = tuple(iface["shape"])
            item = dtype.itemsize
            strides = iface.get("strides")
            if strides is None:
                strides, acc = [], 1
                for s in reversed(shape):
                    strides.insert(0, acc)
                    acc *= s
            else:
                if any(s % item for s in strides):
                    raise ValueError(f"{name} has strides that are not a multiple of its item size")
                strides = [s // item for s in strides]
            ptr = iface["data"][0] or 0
            dev = getattr(getattr(x, "device", None), "id", 0)
            self._note_device(True, dev)
            self._keep.append(x)
            return _core.TensorRef(ptr, code, list(shape), list(strides), 1, dev)
        return self._numpy_tensor(np.asarray(x), name)

    def _numpy_tensor(self, x, name: str):
        code = _CODES.get(x.dtype)
        if code is None:
            raise TypeError(f"{name} has unsupported dtype {x.dtype}")
        item = x.itemsize
        if any(s % item for s in x.strides):  # exotic byte-strided views: copy once
            x = np.ascontiguousarray(x)
        self._note_device(False, 0)
        self._keep.append(x)
        ptr = x.__array_interface__["data"][0] if x.size else 0
        return _core.TensorRef(ptr, code, x.shape, tuple(s // item for s in x.strides), 0, 0)

    def lengths(self, x, name: str = "key_lengths"):
        """TensorRef of an integer length array (None -> absent): Python ints and sequences are accepted,
        other integer dtypes are widened to int64."""
        if x is None:
            return _core.TensorRef()
        x = self.array(x, name, coerce=True)
        if x.dtype.kind in "iu" and x.dtype not in (np.int32, np.int64):
            x = x.astype(np.int64)
        return self.tensor(x, name)

    def _note_device(self, cuda: bool, index: int):
        if self.cuda is None:
            self.cuda, self.device_index = cuda, index

    # -- outputs ------------------------------------------------------------------------------
    @property
    def xp(self):
        if self.cuda:
            import cupy

            return cupy
        return np

    def empty(self, shape, dtype):
        """A new C-contiguous output array on the call's device, and its TensorRef."""
        if self.cuda:
            cupy = _require_cupy("out")
            with cupy.cuda.Device(self.device_index):
                arr = checked_alloc(cupy.empty, shape, dtype, "out")
        else:
            arr = checked_alloc(np.empty, shape, dtype, "out")
        return arr, self.tensor(arr, "out")

    @property
    def stream(self) -> int:
        if not self.cuda:
            return 0
        import cupy

        return cupy.cuda.get_current_stream().ptr


def as_int(x, name: str, *, clamp: bool = False) -> int:
    """An integer argument: TypeError for a non-integer, ValueError outside int64 (the C++ core's
    range) unless ``clamp`` (the caller clamps it to its meaning)."""
    try:
        v = operator.index(x)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(x).__name__}") from None
    if not clamp and not -2**63 <= v < 2**63:
        raise ValueError(f"{name} = {v} is outside the int64 range")
    return v


def as_float(x, name: str) -> float:
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    return float(x)


def as_bool(x, name: str) -> bool:
    if not isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(x).__name__}")
    return bool(x)


def as_choice(x, name: str, choices: dict):
    """choices[x] for a string option, else TypeError / ValueError listing the choices."""
    names = ", ".join(repr(c) for c in choices)
    if not isinstance(x, str):
        raise TypeError(f"{name} must be one of {names}, got {type(x).__name__}")
    if x not in choices:
        raise ValueError(f"{name} must be one of {names}, got {x!r}")
    return choices[x]


def as_seed(x, name: str = "seed") -> int:
    """A Philox key: an integer in [0, 2**64)."""
    x = as_int(x, name, clamp=True)  # the range check is [0, 2**64), below
    if not 0 <= x < 2**64:
        raise ValueError(f"{name} must be in [0, 2**64), got {x}")
    return x


def float_dtype(dtype, name: str = "dtype") -> np.dtype:
    """A floating dtype attnkit can write: float32, float64, float16 or bfloat16, else TypeError."""
    if dtype is None:  # np.dtype(None) would mean float64
        raise TypeError(f"{name} must be {FLOAT_DTYPES}, got None")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be {FLOAT_DTYPES}, got {dtype!r}") from None
    if dt not in _CODES or dt.kind not in "fV":
        raise TypeError(f"{name} must be {FLOAT_DTYPES}, got {dt}")
    return dt


def acc_dtype(dtype) -> np.dtype:
    """Accumulator / log-sum-exp dtype of an input dtype: float64 for float64, else float32."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)
