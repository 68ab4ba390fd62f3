"""Array adapter: NumPy / CuPy arrays in, ``_core.TensorRef`` views out, outputs allocated on the
inputs' device. Internal to attnkit."""

from __future__ import annotations

import numbers
import operator
import sys

import numpy as np

from . import _core

try:  # bfloat16 for NumPy
    import ml_dtypes

    BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes is a dependency
    ml_dtypes = None
    BFLOAT16 = None

# NumPy dtype <-> attnkit::DType code; the codes come from the core's one table (_core.DType).
_CODES = {
    (BFLOAT16 if name == "bfloat16" else np.dtype(name)): int(code)
    for name, code in _core.DType.__members__.items()
    if name != "bfloat16" or BFLOAT16 is not None
}
_DTYPES = {code: dt for dt, code in _CODES.items()}
_numpy_ref, _device_ref = _core.numpy_ref, _core.device_ref  # one call per array: see Call.tensor

FLOAT_DTYPES = "float32, float64, float16 or bfloat16"


def is_cuda_array(x) -> bool:
    return hasattr(x, "__cuda_array_interface__") and not isinstance(x, np.ndarray)


class DeviceBF16:
    """A bfloat16 CUDA array, which CuPy cannot hold (it has no bfloat16 dtype): a CuPy uint16 array of the
    same memory (``raw``, the bfloat16 bit patterns) that reports ``dtype`` = ``ml_dtypes.bfloat16``.
    Internal: it carries PyTorch / JAX bfloat16 CUDA tensors (taken zero-copy through DLPack) through the
    Python layer and back, and holds bfloat16 outputs until they are handed back as the caller's
    framework's bfloat16. Layout operations (indexing, reshape, transpose, swapaxes, ``T``, copy) act on
    the bits; ``astype`` converts (bfloat16 -> float32 exactly; float -> bfloat16 rounds to nearest even,
    as ``ml_dtypes`` does); arithmetic is not supported (TypeError): convert with ``astype`` first."""

    __slots__ = ("raw",)

    def __init__(self, raw):
        if np.dtype(raw.dtype) != np.uint16:
            raise TypeError(f"DeviceBF16 holds uint16 bit patterns, got {raw.dtype}")
        self.raw = raw

    # -- array attributes ------------------------------------------------------------------------
    dtype = property(lambda self: BFLOAT16)
    shape = property(lambda self: tuple(self.raw.shape))
    ndim = property(lambda self: self.raw.ndim)
    size = property(lambda self: self.raw.size)
    strides = property(lambda self: tuple(self.raw.strides))
    itemsize = property(lambda self: 2)
    nbytes = property(lambda self: self.raw.nbytes)
    device = property(lambda self: self.raw.device)
    T = property(lambda self: DeviceBF16(self.raw.T))

    @property
    def __cuda_array_interface__(self):
        raw = self.raw
        iface = dict(getattr(raw, "__cuda_array_interface__", None) or raw.__array_interface__)
        iface["typestr"] = BFLOAT16.str  # never "<u2": nothing may read these bits as integers by mistake
        iface.pop("descr", None)
        return iface

    def __len__(self):
        return len(self.raw)

    def __repr__(self):
        return f"DeviceBF16(shape={self.shape}, strides={self.strides})"

    # -- layout (bit-exact) -----------------------------------------------------------------------
    def __getitem__(self, index):
        return DeviceBF16(self.raw[index])

    def __setitem__(self, index, value):
        """Writes value (a scalar, a DeviceBF16, or a float array of the same module) rounded to bfloat16."""
        if isinstance(value, DeviceBF16):
            bits = value.raw
        elif np.ndim(value) == 0 and not hasattr(value, "__cuda_array_interface__"):
            bits = np.asarray(value, dtype=BFLOAT16).view(np.uint16)[()]
        else:
            bits = DeviceBF16.from_float(value).raw
        self.raw[index] = bits

    def reshape(self, *shape):
        return DeviceBF16(self.raw.reshape(*shape))

    def transpose(self, *axes):
        return DeviceBF16(self.raw.transpose(*axes))

    def swapaxes(self, a, b):
        return DeviceBF16(self.raw.swapaxes(a, b))

    def copy(self):
        return DeviceBF16(self.raw.copy())

    def view(self, dtype):
        """``view(numpy.uint16)`` (or int16): the bit patterns; ``view(bfloat16)``: self."""
        dt = np.dtype(dtype)
        if dt == BFLOAT16:
            return self
        if dt in (np.dtype(np.uint16), np.dtype(np.int16)):
            return self.raw.view(dt)
        raise TypeError(f"a bfloat16 device array can be viewed as uint16 or int16 only, not {dt}")

    # -- conversions ------------------------------------------------------------------------------
    def astype(self, dtype, copy=True):
        dt = np.dtype(dtype)
        if dt == BFLOAT16:
            return self.copy() if copy else self
        f32 = (self.raw.astype(np.uint32) << 16).view(np.float32)  # exact: bfloat16 is float32's top half
        return f32 if dt == np.float32 else f32.astype(dt)

    @staticmethod
    def from_float(x):
        """x (a CuPy float array) rounded to bfloat16 (to nearest even; NaN stays NaN with its sign)."""
        xp = _array_module(x)
        f = xp.ascontiguousarray(x, dtype=np.float32)
        u = f.view(np.uint32)
        rounded = (u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16
        bits = xp.where(xp.isnan(f), (u >> 16) | np.uint32(0x40), rounded)
        return DeviceBF16(bits.astype(np.uint16))

    def _no_math(self, *args):
        raise TypeError("arithmetic on a bfloat16 device array (CuPy has no bfloat16): convert it with "
                        "astype(numpy.float32) first")

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __matmul__ = __rmatmul__ = _no_math
    __iadd__ = __neg__ = _no_math

    def __array__(self, *args, **kwargs):
        raise TypeError("a bfloat16 device array is not converted to NumPy implicitly (as CuPy arrays are not)")


def _array_module(a):
    if isinstance(a, np.ndarray):
        return np
    import cupy

    return cupy


def astype(x, dtype):
    """x converted to dtype (a new array, or x itself if it has that dtype already), bfloat16 included on
    CUDA: a CuPy array asked for bfloat16 becomes a DeviceBF16, and a DeviceBF16 converts its values."""
    dt = np.dtype(dtype)
    if isinstance(x, DeviceBF16):
        return x.astype(dt, copy=False)
    if dt == BFLOAT16 and is_cuda_array(x):
        return DeviceBF16.from_float(x)
    return x.astype(dt, copy=False)


def full(like, shape, value, dtype):
    """A new array of ``shape`` filled with ``value``, in ``dtype``, with ``like``'s array module
    (NumPy or CuPy; bfloat16 on CUDA as a DeviceBF16)."""
    dt = np.dtype(dtype)
    if is_cuda_array(like):
        import cupy

        if dt == BFLOAT16:
            bits = int(np.array(value, dtype=BFLOAT16).view(np.uint16))
            return DeviceBF16(cupy.full(shape, bits, dtype=np.uint16))
        return cupy.full(shape, value, dtype=dt)
    return np.full(shape, value, dtype=dt)


def _cupy_ndarray():
    """``cupy.ndarray`` once CuPy is imported (a CuPy array exists only then), else None."""
    return getattr(sys.modules.get("cupy"), "ndarray", None)


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
        raise _alloc_error(name, shape, dtype, e) from None


def _alloc_error(name: str, shape, dtype, e: Exception) -> ValueError:
    return ValueError(f"{name}: cannot allocate an array of shape {tuple(shape)} and dtype {np.dtype(dtype)} "
                      f"({e.__class__.__name__}: {e})")


def _dtype_code(dtype, name: str) -> int:
    code = _CODES.get(np.dtype(dtype))
    if code is None:
        raise TypeError(f"{name} has unsupported dtype {np.dtype(dtype)}")
    return code


class Call:
    """Collects the arrays of one call: converts them to TensorRefs (keeping them alive for the call),
    records the device, and allocates outputs with the matching array module."""

    __slots__ = ("cuda", "device_index", "_keep")

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

    def qkv(self, p, q, k, v):
        """Sets the three inputs ``p.q``, ``p.k``, ``p.v`` of an attention call's params."""
        p.q = self.tensor(q, "q")
        p.k = self.tensor(k, "k")
        p.v = self.tensor(v, "v")

    def tensor(self, x, name: str, *, coerce: bool = False):
        """TensorRef of x (None -> absent)."""
        if x is None:
            return _core.TensorRef()
        t = type(x)  # the common cases first: every array of every call comes through here
        if t is np.ndarray:
            return self._numpy_tensor(x, name)
        if t is _cupy_ndarray():
            return self._cupy_tensor(x, name)
        x = self.array(x, name, coerce=coerce)
        if is_cuda_array(x):
            return self._cuda_tensor(x, name)
        return self._numpy_tensor(np.asarray(x), name)

    def _numpy_tensor(self, x, name: str):
        code = _CODES.get(x.dtype)
        if code is None:
            raise TypeError(f"{name} has unsupported dtype {x.dtype}")
        ref = _numpy_ref(x, code)
        if ref is None:  # exotic byte-strided views (copied once), or a rank the core refuses (it says so)
            item = x.itemsize
            if any(s % item for s in x.strides):
                x = np.ascontiguousarray(x)
            ptr = x.__array_interface__["data"][0] if x.size else 0
            ref = _core.TensorRef(ptr, code, x.shape, tuple(s // item for s in x.strides), 0, 0)
        if self.cuda is None:
            self.cuda = False
        self._keep.append(x)
        return ref

    def _cupy_tensor(self, x, name: str):
        """A CuPy array's TensorRef from its attributes, which CuPy keeps ready (its
        ``__cuda_array_interface__`` builds a dict per access): the same TensorRef the generic path makes."""
        code = _CODES.get(x.dtype)
        if code is None:
            raise TypeError(f"{name} has unsupported dtype {x.dtype}")
        dev = x.device.id
        ref = _device_ref(x.data.ptr if x.size else 0, code, x.shape, x.strides, dev)
        if ref is None:  # strides that are not a multiple of the item size: the generic path says so
            return self._cuda_tensor(x, name)
        self._note_device(True, dev)
        self._keep.append(x)
        return ref

    def _cuda_tensor(self, x, name: str):
        """Any device array (DeviceBF16, foreign CUDA arrays, CuPy subclasses) through its
        ``__cuda_array_interface__``."""
        _require_cupy(name)
        iface = x.__cuda_array_interface__
        dtype = BFLOAT16 if isinstance(x, DeviceBF16) else np.dtype(iface["typestr"])
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

    def outputs(self, params, query, *names):
        """Allocates the outputs ``names`` of a call from the core's output query (the validator computes
        their shapes and dtypes, after checking every input: bad input raises here, before anything is
        allocated), stores each one's TensorRef in ``params`` (dotted names reach nested fields, e.g.
        ``cache_out.states``) and returns the arrays in the order asked."""
        specs = output_specs(query, params)
        arrays = []
        nested = {}  # "cache_out" -> params.cache_out, looked up once (each lookup makes a new wrapper)
        for name in names:
            shape, code = specs[name]
            arr, ref = self.empty(shape, _DTYPES[code], name)
            if "." in name:
                path, last = name.rsplit(".", 1)
                target = nested.get(path)
                if target is None:
                    target = params
                    for part in path.split("."):
                        target = getattr(target, part)
                    nested[path] = target
                setattr(target, last, ref)
            else:
                setattr(params, name, ref)
            arrays.append(arr)
        return arrays

    def allocate(self, spec, name="out"):
        """A new output array for one ``(shape, dtype code)`` of :func:`output_specs`, and its TensorRef."""
        shape, code = spec
        return self.empty(shape, _DTYPES[code], name)

    def empty(self, shape, dtype, name="out"):
        """A new C-contiguous output array on the call's device, and its TensorRef (`name`, the output's,
        in the error when nothing can hold it)."""
        if not self.cuda:
            try:
                arr = np.empty(shape, dtype)
            except (MemoryError, ValueError, OverflowError) as e:
                raise _alloc_error(name, shape, dtype, e) from None
            return arr, self._numpy_tensor(arr, name)
        cupy = _require_cupy(name)
        if cupy.cuda.runtime.getDevice() == self.device_index:  # the usual case: no device switch
            arr = _cupy_empty(cupy, shape, dtype, name)
        else:
            with cupy.cuda.Device(self.device_index):
                arr = _cupy_empty(cupy, shape, dtype, name)
        return arr, self.tensor(arr, name)

    @property
    def stream(self) -> int:
        if not self.cuda:
            return 0
        import cupy

        return cupy.cuda.get_current_stream().ptr


def _cupy_empty(cupy, shape, dtype, name: str):
    """A new CuPy array on the current device; bfloat16 as a DeviceBF16 (CuPy has none: its bits in uint16)."""
    if np.dtype(dtype) == BFLOAT16:
        return DeviceBF16(checked_alloc(cupy.empty, shape, np.uint16, name))
    return checked_alloc(cupy.empty, shape, dtype, name)


def core_dtype(dtype):
    """The ``_core.DType`` of a NumPy dtype attnkit supports."""
    return _core.DType(_CODES[np.dtype(dtype)])


def output_specs(query, params) -> dict:
    """``{name: (shape, dtype code)}`` of every output a call can write, from the core's output query
    (``_core.<function>_outputs``), which validates the inputs first."""
    return {name: (shape, code) for name, shape, code in query(params)}


def as_int(x, name: str, *, clamp: bool = False) -> int:
    """An integer argument: TypeError for a non-integer (bool included: an int subclass, but surely a
    flag), ValueError outside int64 (the C++ core's range) unless ``clamp`` (the caller clamps it to its
    meaning)."""
    if type(x) is int and (clamp or -2**63 <= x < 2**63):  # the common case
        return x
    if isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got bool")
    try:
        v = operator.index(x)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(x).__name__}") from None
    if not clamp and not -2**63 <= v < 2**63:
        raise ValueError(f"{name} = {v} is outside the int64 range")
    return v


def as_float(x, name: str) -> float:
    if type(x) is float:  # the common case
        return x
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    return float(x)


def as_bool(x, name: str) -> bool:
    if x is False or x is True:
        return x
    if not isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(x).__name__}")
    return bool(x)


def as_choice(x, name: str, choices: dict):
    """choices[x] for a string option, else TypeError / ValueError listing the choices."""
    if type(x) is str and x in choices:  # the common case
        return choices[x]
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


# -- DLPack: any framework's arrays in (zero-copy), the same framework's arrays out --------------------
# Public functions are wrapped by dlpack_io (attnkit/__init__.py): arguments that are foreign arrays
# (anything with __dlpack__ that is not NumPy or CuPy: PyTorch, JAX, TensorFlow, ...) become NumPy views
# (CPU) or CuPy views (CUDA) of the same memory, read straight from the DLPack capsule (so bfloat16 and
# read-only buffers work too; bfloat16 CUDA arrays become DeviceBF16 over a CuPy uint16 view, CuPy having
# no bfloat16), and the arrays returned are handed back through that framework's from_dlpack (bfloat16
# as its uint16 bits reinterpreted, zero-copy). The rest of the Python layer only ever sees NumPy, CuPy
# and DeviceBF16.

import ctypes
import functools
import inspect


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]

_DL_CPU, _DL_CUDA, _DL_CUDA_HOST = 1, 2, 3
# (DLDataTypeCode, bits) -> NumPy dtype: kDLInt 0, kDLUInt 1, kDLFloat 2, kDLBfloat 4, kDLBool 6
_DL_DTYPES = {(0, 8): np.int8, (0, 16): np.int16, (0, 32): np.int32, (0, 64): np.int64,
              (1, 8): np.uint8, (1, 16): np.uint16, (1, 32): np.uint32, (1, 64): np.uint64,
              (2, 16): np.float16, (2, 32): np.float32, (2, 64): np.float64, (6, 8): np.bool_}
if BFLOAT16 is not None:
    _DL_DTYPES[(4, 16)] = BFLOAT16


class _View:
    """Exposes an array interface over borrowed memory and keeps its owners (the producer's array and
    the DLPack capsule, whose destructor releases the producer's buffer) alive as the view's base."""

    def __init__(self, key: str, iface: dict, owners: tuple):
        setattr(self, key, iface)
        self._owners = owners


def _root_module(x) -> str:
    root = type(x).__module__.split(".")[0]
    return "jax" if root == "jaxlib" else root


# Types whose values are never foreign arrays nor hold any: dlpack_io lets them through on their type alone.
# NumPy's and CuPy's types join on first sight (_is_foreign decides those by type).
_PLAIN_TYPES = {type(None), bool, int, float, str, np.ndarray}


def _is_foreign(x) -> bool:
    if isinstance(x, np.ndarray) or _root_module(x) in ("numpy", "cupy"):
        _PLAIN_TYPES.add(type(x))
        return False
    return hasattr(x, "__dlpack__") or _root_module(x) == "tensorflow"


def _capsule(x, name: str):
    """x's DLPack capsule; on CUDA, ordered on CuPy's current stream (which attnkit then runs on)."""
    if not hasattr(x, "__dlpack__"):  # TensorFlow tensors export through a function
        import tensorflow as tf

        return tf.experimental.dlpack.to_dlpack(x)
    if getattr(x, "requires_grad", False):  # PyTorch refuses to export those; attnkit only reads values
        x = x.detach()
    try:
        device = x.__dlpack_device__()[0]
    except Exception:
        device = _DL_CPU
    if device == _DL_CUDA:
        import cupy

        return x.__dlpack__(stream=cupy.cuda.get_current_stream().ptr or 1)  # 1: the legacy default stream
    return x.__dlpack__()


def dlpack_view(x, name: str):
    """A NumPy (CPU) or CuPy (CUDA) view of a foreign array's memory, without a copy."""
    capsule = _capsule(x, name)
    ptr = _capsule_pointer(capsule, b"dltensor")
    t = _DLTensor.from_address(ptr)  # DLManagedTensor starts with its DLTensor
    if t.dtype.lanes != 1 or (t.dtype.code, t.dtype.bits) not in _DL_DTYPES:
        raise TypeError(f"{name} has an unsupported DLPack dtype (code {t.dtype.code}, {t.dtype.bits} bits, "
                        f"{t.dtype.lanes} lanes)")
    dtype = np.dtype(_DL_DTYPES[(t.dtype.code, t.dtype.bits)])
    shape = tuple(t.shape[i] for i in range(t.ndim))
    strides = None if not t.strides else tuple(t.strides[i] * dtype.itemsize for i in range(t.ndim))
    data = (t.data or 0) + t.byte_offset
    kind = t.device.device_type
    typestr = dtype.str if dtype != BFLOAT16 else "|V2"  # ml_dtypes' bfloat16 is a 2-byte void to NumPy
    iface = {"shape": shape, "typestr": typestr, "data": (data, True), "strides": strides, "version": 3}
    if kind in (_DL_CPU, _DL_CUDA_HOST):
        if 0 in shape:
            return np.empty(shape, dtype)
        return np.asarray(_View("__array_interface__", iface, (x, capsule))).view(dtype)
    if kind == _DL_CUDA:
        import cupy

        iface["stream"] = None  # ordered already: the capsule was requested on the current stream
        iface["data"] = (data, False)  # CuPy has no read-only arrays; attnkit never writes its inputs
        if dtype == BFLOAT16:  # CuPy has no bfloat16: a uint16 view of the same memory, in a DeviceBF16
            iface["typestr"] = np.dtype(np.uint16).str
        with cupy.cuda.Device(t.device.device_id):
            view = cupy.asarray(_View("__cuda_array_interface__", iface, (x, capsule)))
        return DeviceBF16(view) if dtype == BFLOAT16 else view
    raise TypeError(f"{name} lives on DLPack device type {kind}: attnkit takes CPU and CUDA arrays")


def _returner(x):
    """A function handing a NumPy/CuPy result back as the array type of the foreign input x."""
    root = _root_module(x)
    module = sys.modules.get(root)
    if root == "torch":
        def back(a):
            if a.dtype == BFLOAT16:
                return module.from_dlpack(a.view(np.int16)).view(module.bfloat16)  # int16: any PyTorch
            return module.from_dlpack(a)
    elif root == "jax":
        import jax.numpy as jnp

        def back(a):  # JAX understands ml_dtypes.bfloat16 natively (it copies that one)
            if isinstance(a, DeviceBF16):  # the uint16 bits zero-copy, reinterpreted as bfloat16
                import jax

                return jax.lax.bitcast_convert_type(jnp.from_dlpack(a.raw), jnp.bfloat16)
            return jnp.asarray(a) if a.dtype == BFLOAT16 else jnp.from_dlpack(a)
    elif root == "tensorflow":
        def back(a):
            if a.dtype == BFLOAT16:
                u = module.experimental.dlpack.from_dlpack(a.view(np.uint16).__dlpack__())
                return module.bitcast(u, module.bfloat16)
            return module.experimental.dlpack.from_dlpack(a.__dlpack__())
    elif module is not None and hasattr(module, "from_dlpack"):
        def back(a):
            if isinstance(a, DeviceBF16):
                raise TypeError(f"attnkit cannot hand a bfloat16 CUDA array back to {root} (it knows how for "
                                "PyTorch, JAX and TensorFlow); pass float16 or float32 arrays")
            return module.from_dlpack(a)
    else:
        def back(a):
            return a
    return back


@functools.lru_cache(maxsize=None)
def _containers():
    """The attnkit classes that hold arrays (converted field by field): {class: field names}."""
    from ._dla import DLACache
    from ._mha import MHAParams

    return {MHAParams: MHAParams.__slots__, DLACache: ("states", "counts", "info", "starts", "size")}


def _has_foreign(x) -> bool:
    if type(x) in _PLAIN_TYPES:
        return False
    if isinstance(x, (list, tuple)):
        return any(map(_has_foreign, x))
    if isinstance(x, dict):
        return any(map(_has_foreign, x.values()))
    fields = _containers().get(type(x))
    if fields is not None:
        for f in fields:
            v = getattr(x, f)
            if type(v) not in _PLAIN_TYPES and _is_foreign(v):
                return True
        return False
    return _is_foreign(x)


def _convert_in(x, found: list, name: str):
    if isinstance(x, (list, tuple)) and not hasattr(x, "_fields"):
        return type(x)(_convert_in(e, found, f"{name}[{i}]") for i, e in enumerate(x))
    if isinstance(x, dict):  # multi_head_attention's rope and **options
        return {k: _convert_in(e, found, str(k)) for k, e in x.items()}
    fields = _containers().get(type(x))
    if fields is not None:  # MHAParams (weights), DLACache (arrays and position)
        conv = [_convert_in(getattr(x, f), found, f"{name}.{f}") for f in fields]
        return type(x)(*conv) if len(fields) == 8 else type(x)(*conv, x.position)
    if _is_foreign(x):
        found.append(x)
        return dlpack_view(x, name)
    return x


def _convert_out(r, back):
    if isinstance(r, (np.ndarray, DeviceBF16)) or _root_module(r) == "cupy":
        return back(r)
    if isinstance(r, tuple) and hasattr(r, "_fields"):  # named tuples (DLAAux)
        return type(r)._make(_convert_out(e, back) for e in r)
    if isinstance(r, (list, tuple)):
        return type(r)(_convert_out(e, back) for e in r)
    return r


def _all_plain(values) -> bool:
    """No value is or holds a foreign array (decided by the value's type alone in the common case)."""
    for v in values:
        if type(v) not in _PLAIN_TYPES and _has_foreign(v):
            return False
    return True


def dlpack_io(fn):
    """Wraps a public function so that it takes any DLPack array (zero-copy) and returns arrays of the
    first foreign input's framework (PyTorch in, PyTorch out). NumPy and CuPy calls pass straight through."""

    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _all_plain(args) and (not kwargs or _all_plain(kwargs.values())):
            return fn(*args, **kwargs)  # NumPy / CuPy: no binding, no conversion
        bound = signature.bind(*args, **kwargs)  # a bad call raises the TypeError fn itself would
        found = []
        for name, value in bound.arguments.items():
            bound.arguments[name] = _convert_in(value, found, name)
        result = fn(*bound.args, **bound.kwargs)
        return _convert_out(result, _returner(found[0])) if found else result

    return wrapper
