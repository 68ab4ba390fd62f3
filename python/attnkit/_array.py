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

# NumPy dtype <-> attnkit::DType code; the codes come from the core's one table (_core.DType).
_CODES = {
    (BFLOAT16 if name == "bfloat16" else np.dtype(name)): int(code)
    for name, code in _core.DType.__members__.items()
    if name != "bfloat16" or BFLOAT16 is not None
}
_DTYPES = {code: dt for dt, code in _CODES.items()}

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

    def qkv(self, p, q, k, v):
        """Sets the three inputs ``p.q``, ``p.k``, ``p.v`` of an attention call's params."""
        p.q = self.tensor(q, "q")
        p.k = self.tensor(k, "k")
        p.v = self.tensor(v, "v")

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

    def outputs(self, params, query, *names):
        """Allocates the outputs ``names`` of a call from the core's output query (the validator computes
        their shapes and dtypes, after checking every input: bad input raises here, before anything is
        allocated), stores each one's TensorRef in ``params`` (dotted names reach nested fields, e.g.
        ``cache_out.states``) and returns the arrays in the order asked."""
        specs = output_specs(query, params)
        arrays = []
        for name in names:
            arr, ref = self.allocate(specs[name], name)
            *path, last = name.split(".")
            target = params
            for part in path:
                target = getattr(target, part)
            setattr(target, last, ref)
            arrays.append(arr)
        return arrays

    def allocate(self, spec, name="out"):
        """A new output array for one ``(shape, dtype code)`` of :func:`output_specs`, and its TensorRef."""
        shape, code = spec
        return self.empty(tuple(shape), _DTYPES[code], name)

    def empty(self, shape, dtype, name="out"):
        """A new C-contiguous output array on the call's device, and its TensorRef (`name`, the output's,
        in the error when nothing can hold it)."""
        if self.cuda:
            cupy = _require_cupy(name)
            with cupy.cuda.Device(self.device_index):
                if np.dtype(dtype) == BFLOAT16:  # CuPy has no bfloat16: its bits in uint16
                    arr = DeviceBF16(checked_alloc(cupy.empty, shape, np.uint16, name))
                else:
                    arr = checked_alloc(cupy.empty, shape, dtype, name)
        else:
            arr = checked_alloc(np.empty, shape, dtype, name)
        return arr, self.tensor(arr, name)

    @property
    def stream(self) -> int:
        if not self.cuda:
            return 0
        import cupy

        return cupy.cuda.get_current_stream().ptr


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
import sys


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


def _is_foreign(x) -> bool:
    if isinstance(x, np.ndarray) or _root_module(x) in ("numpy", "cupy"):
        return False
    return hasattr(x, "__dlpack__") or _root_module(x) == "tensorflow"


# What an argument is to dlpack_io, by type (cached: every argument of every call is looked up):
# _PLAIN passes through, _FOREIGN is viewed through its DLPack capsule, _TORCH is a torch.Tensor read
# directly, _NESTED (lists, tuples, dicts, MHAParams, DLACache) is searched element by element.
_PLAIN, _FOREIGN, _TORCH, _NESTED = range(4)
_KINDS = {type(None): _PLAIN, np.ndarray: _PLAIN, int: _PLAIN, float: _PLAIN, bool: _PLAIN, str: _PLAIN}


def _kind(x) -> int:
    kind = _KINDS.get(type(x))
    if kind is not None:
        return kind
    if isinstance(x, (list, tuple, dict)) or type(x) in _containers():
        kind = _NESTED
    elif not _is_foreign(x):
        kind = _PLAIN
    else:
        torch = sys.modules.get("torch")
        kind = _TORCH if torch is not None and type(x) in (torch.Tensor, torch.nn.Parameter) else _FOREIGN
    if hasattr(type(x), "__dlpack__") == hasattr(x, "__dlpack__"):  # the type alone decides: cache it
        _KINDS[type(x)] = kind
    return kind


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


@functools.lru_cache(maxsize=None)
def _torch_dtypes() -> dict:
    """torch dtype -> NumPy dtype, for the dtypes the direct PyTorch path takes (the others go through the
    capsule, whose error names them)."""
    torch = sys.modules["torch"]
    names = ("int8", "int16", "int32", "int64", "uint8", "float16", "float32", "float64", "bool")
    table = {getattr(torch, n): np.dtype(n) for n in names}
    if BFLOAT16 is not None:
        table[torch.bfloat16] = BFLOAT16
    return table


def _torch_view(x):
    """dlpack_view of a torch.Tensor read directly (its data pointer, shape, strides, dtype and device)
    rather than through a DLPack capsule, with the same result: a read-only NumPy view (CPU) or a CuPy view
    (CUDA) ordered after PyTorch's current stream as ``__dlpack__(stream=...)`` orders it, both keeping x
    alive. None where the capsule path must answer (other dtypes, layouts, devices; negated views)."""
    dtype = _torch_dtypes().get(x.dtype)
    if dtype is None or x.layout is not sys.modules["torch"].strided or x.is_neg():
        return None
    if x.is_cpu:  # (is_cpu / is_cuda / get_device: x.device builds an object, a few microseconds)
        if x.requires_grad:
            x = x.detach()
        if dtype == BFLOAT16:  # NumPy has no bfloat16 for torch: its bits, viewed back as ml_dtypes' bfloat16
            view = x.view(sys.modules["torch"].int16).numpy().view(BFLOAT16)
        else:
            view = x.numpy()
        view.flags.writeable = False
        return view
    if x.is_cuda:
        return _torch_cuda_view(x, dtype, x.get_device())
    return None


def _torch_raw_stream(index: int) -> int:
    torch = sys.modules["torch"]
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    return raw(index) if raw is not None else torch.cuda.current_stream(index).cuda_stream


def _torch_cuda_view(x, dtype, index: int):
    """A CuPy view of a PyTorch CUDA tensor (bfloat16: a DeviceBF16 over a uint16 view). Stream order as
    ``x.__dlpack__(stream=CuPy's current stream)`` gives it: unless both are the same stream (the legacy
    default stream of both libraries, say), an event recorded on PyTorch's current stream of x's device
    makes CuPy's current stream (which attnkit runs on) wait for x's producer."""
    import cupy

    stream = cupy.cuda.get_current_stream().ptr
    producer = _torch_raw_stream(index)
    if producer != stream:
        with cupy.cuda.Device(index):  # x's device: its event, and what the stream handle 0 means there
            event = cupy.cuda.Event(disable_timing=True)
            cupy.cuda.runtime.eventRecord(event.ptr, producer)
            cupy.cuda.runtime.streamWaitEvent(stream, event.ptr, 0)
    raw = np.dtype(np.uint16) if dtype == BFLOAT16 else dtype  # CuPy has no bfloat16
    shape, strides, item = tuple(x.shape), x.stride(), dtype.itemsize
    if x.numel() == 0:
        with cupy.cuda.Device(index):
            view = cupy.ndarray(shape, raw)
    else:  # torch strides are never negative: the view spans data_ptr() .. its last element
        extent = item * (1 + sum((n - 1) * s for n, s in zip(shape, strides)))
        memory = cupy.cuda.UnownedMemory(x.data_ptr(), extent, x, index)  # owner x; no pointer query
        view = cupy.ndarray(shape, raw, cupy.cuda.MemoryPointer(memory, 0), tuple(s * item for s in strides))
    return DeviceBF16(view) if dtype == BFLOAT16 else view


def dlpack_view(x, name: str):
    """A NumPy (CPU) or CuPy (CUDA) view of a foreign array's memory, without a copy."""
    if _kind(x) == _TORCH:
        view = _torch_view(x)
        if view is not None:
            return view
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
    back = _RETURNERS.get(type(x))
    if back is None:
        back = _RETURNERS[type(x)] = _returner_of(_root_module(x))
    return back


_RETURNERS = {}  # by the foreign input's type


@functools.lru_cache(maxsize=None)
def _returner_of(root: str):
    module = sys.modules.get(root)
    if root == "torch":
        def from_array(a):
            if type(a) is np.ndarray and a.flags.writeable:  # the direct way, zero-copy as from_dlpack is
                try:
                    return module.from_numpy(a)
                except (TypeError, ValueError):  # what it refuses gets from_dlpack's answer, as before
                    pass
            return module.from_dlpack(a)

        def back(a):
            if a.dtype == BFLOAT16:
                return from_array(a.view(np.int16)).view(module.bfloat16)  # int16: any PyTorch
            return from_array(a)
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
    kind = _kind(x)
    if kind != _NESTED:
        return kind != _PLAIN
    if isinstance(x, (list, tuple)):
        return any(map(_has_foreign, x))
    if isinstance(x, dict):
        return any(map(_has_foreign, x.values()))
    return any(_is_foreign(getattr(x, f)) for f in _containers()[type(x)])


def _convert_in(x, found: list, name: str):
    kind = _kind(x)
    if kind == _PLAIN:
        return x
    if kind != _NESTED:
        found.append(x)
        view = _torch_view(x) if kind == _TORCH else None
        return dlpack_view(x, name) if view is None else view
    if isinstance(x, (list, tuple)):
        if hasattr(x, "_fields"):  # named tuples pass as they are
            return x
        return type(x)(_convert_in(e, found, f"{name}[{i}]") for i, e in enumerate(x))
    if isinstance(x, dict):  # multi_head_attention's rope and **options
        return {k: _convert_in(e, found, str(k)) for k, e in x.items()}
    fields = _containers()[type(x)]  # MHAParams (weights), DLACache (arrays and position)
    conv = [_convert_in(getattr(x, f), found, f"{name}.{f}") for f in fields]
    return type(x)(*conv) if len(fields) == 8 else type(x)(*conv, x.position)


def _convert_out(r, back):
    if isinstance(r, (np.ndarray, DeviceBF16)) or _root_module(r) == "cupy":
        return back(r)
    if isinstance(r, tuple) and hasattr(r, "_fields"):  # named tuples (DLAAux)
        return type(r)._make(_convert_out(e, back) for e in r)
    if isinstance(r, (list, tuple)):
        return type(r)(_convert_out(e, back) for e in r)
    return r


def dlpack_io(fn):
    """Wraps a public function so that it takes any DLPack array (zero-copy) and returns arrays of the
    first foreign input's framework (PyTorch in, PyTorch out). NumPy and CuPy calls pass straight through."""

    signature = inspect.signature(fn)
    params = list(signature.parameters.values())
    P = inspect.Parameter
    positional = tuple(p.name for p in params if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD))
    order = {p.name: i for i, p in enumerate(params) if p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY)}
    required = tuple(p.name for p in params if p.default is P.empty and p.kind not in (P.VAR_POSITIONAL,
                                                                                      P.VAR_KEYWORD))
    any_keyword = any(p.kind is P.VAR_KEYWORD for p in params)

    n_required = sum(p.default is P.empty for p in params if p.name in positional)  # leading ones
    plain_positional = len(required) == n_required  # no required keyword-only parameter

    def binds(args, kwargs) -> bool:
        """Whether signature.bind would take the call as it is (then the call needs no binding)."""
        if not kwargs and plain_positional:
            return n_required <= len(args) <= len(positional)
        given = positional[:len(args)]
        if len(args) > len(positional) or any(k in given or (k not in order and not any_keyword) for k in kwargs):
            return False
        return all(r in kwargs or r in given for r in required)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        for value in (*args, *kwargs.values()):
            kind = _KINDS.get(type(value))
            if kind is None:
                kind = _kind(value)
            if kind != _PLAIN and (kind != _NESTED or _has_foreign(value)):
                break
        else:
            return fn(*args, **kwargs)  # NumPy / CuPy: no binding, no conversion
        found = []
        if binds(args, kwargs):  # converted in parameter order, as bound arguments are
            args = [_convert_in(a, found, n) for a, n in zip(args, positional)]
            if kwargs:
                named = sorted(kwargs, key=lambda k: order.get(k, len(params)))
                kwargs = {k: _convert_in(kwargs[k], found, k) for k in named}
            result = fn(*args, **kwargs)
        else:
            bound = signature.bind(*args, **kwargs)  # a bad call raises the TypeError fn itself would
            for name, value in bound.arguments.items():
                bound.arguments[name] = _convert_in(value, found, name)
            result = fn(*bound.args, **bound.kwargs)
        return _convert_out(result, _returner(found[0])) if found else result

    return wrapper
