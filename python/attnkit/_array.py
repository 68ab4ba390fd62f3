"""Array adapter: NumPy / CuPy arrays in, ``_core.TensorRef`` views out, outputs allocated on the
inputs' device. Internal to attnkit."""

from __future__ import annotations

import numbers
import operator
import sys

import numpy as np

from . import _core, _torch

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


def dtype_error(dtype, name: str) -> TypeError:
    """The TypeError for an array argument ``name`` whose dtype attnkit cannot read. A non-native byte
    order of a supported dtype (``>f4`` on a little-endian machine) is said as such, with the conversion:
    attnkit does not copy inputs to convert them."""
    dt = np.dtype(dtype)
    if _foreign_byte_order(dt) is not None:
        return TypeError(f"{name} has dtype {dt.str}, not in the machine's native byte order: attnkit reads "
                         f"native byte order only; convert it with {name}.astype({name}.dtype.newbyteorder('='))")
    return TypeError(f"{name} has unsupported dtype {dt}")


def _foreign_byte_order(dt: np.dtype):
    """The native twin of dt when dt is a dtype attnkit supports in the other byte order (``>f4`` on a
    little-endian machine), else None: the errors for it say so and name the conversion."""
    native = dt.newbyteorder("=")
    return native if not dt.isnative and native in _CODES else None


def _dtype_code(dtype, name: str) -> int:
    code = _CODES.get(np.dtype(dtype))
    if code is None:
        raise dtype_error(dtype, name)
    return code


class Call:
    """Collects the arrays of one call: converts them to TensorRefs (keeping them alive for the call),
    records the device, and allocates outputs with the matching array module (PyTorch once a torch tensor
    came in: see attnkit._torch)."""

    __slots__ = ("cuda", "device_index", "torch", "_keep")

    def __init__(self):
        self.cuda = None  # None until the first array: False = the CPU, True = a CUDA device
        self.device_index = 0
        self.torch = False  # a torch tensor came in: outputs are torch tensors, CUDA runs on torch's stream
        self._keep = []

    # -- inputs -------------------------------------------------------------------------------
    def array(self, x, name: str, *, coerce: bool = False):
        """Returns x as an array. Only auxiliary arguments (masks, lengths, slopes) are coerced from
        Python sequences and scalars; q/k/v must be arrays already (NumPy, CuPy, or anything exposing
        ``__array_interface__``)."""
        if is_cuda_array(x) or isinstance(x, np.ndarray):
            return x
        if coerce:
            if self.torch and self.cuda:  # a CUDA call of torch tensors needs no CuPy
                return _torch.as_tensor(x, self.device_index)
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
            return self._cupy_tensor(x, name, _CODES.get(x.dtype))
        if t is DeviceBF16 and type(x.raw) is _cupy_ndarray():  # bfloat16 bits in a CuPy uint16 array
            return self._cupy_tensor(x.raw, name, _CODES[BFLOAT16], whole=x)
        if t in _torch.tensor_types():
            return self._torch_tensor(x, name)
        x = self.array(x, name, coerce=coerce)
        if type(x) in _torch.tensor_types():  # coerced for a CUDA call of torch tensors
            return self._torch_tensor(x, name)
        if is_cuda_array(x):
            return self._cuda_tensor(x, name)
        return self._numpy_tensor(np.asarray(x), name)

    def _numpy_tensor(self, x, name: str):
        code = _CODES.get(x.dtype)
        if code is None:
            raise dtype_error(x.dtype, name)
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

    def _cupy_tensor(self, x, name: str, code, whole=None):
        """A CuPy array's TensorRef (elements of dtype code: x's own, or bfloat16 for the bits of ``whole``, a
        DeviceBF16) from its attributes, which CuPy keeps ready (its ``__cuda_array_interface__`` builds a dict
        per access): the same TensorRef the generic path makes."""
        if code is None:
            raise dtype_error(x.dtype, name)
        dev = x.device.id
        ref = _device_ref(x.data.ptr if x.size else 0, code, x.shape, x.strides, dev)
        if ref is None:  # strides that are not a multiple of the item size: the generic path says so
            return self._cuda_tensor(x if whole is None else whole, name)
        self._note_device(True, dev)
        self._keep.append(x)
        return ref

    def _torch_tensor(self, x, name: str):
        ref, index, x = _torch.ref(x, name)
        self._note_device(index >= 0, max(index, 0))
        self.torch = True
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
        if type(x) not in _torch.tensor_types():
            x = self.array(x, name, coerce=True)  # a torch tensor for a CUDA call of torch tensors
        if type(x) in _torch.tensor_types():
            if x.dtype in _torch.NARROW_INTS:  # as NumPy's other integer dtypes below
                x = x.long()
            return self.tensor(x, name)
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
        allocated; only DLA's cache and log-decay values are read later, once, when the call runs), stores
        each one's TensorRef in ``params`` (dotted names reach nested fields, e.g. ``cache_out.states``) and
        returns the arrays in the order asked.

        The query is asked for these names only (``query(params, names)``: their (shape, dtype code) pairs in
        order). NumPy and CuPy outputs go straight to the core's header readers, without the per-array
        dispatch of :meth:`tensor` (a new C-contiguous array of a dtype attnkit supports needs none of its
        checks); on CUDA the current device is looked up once per call. Anything else (torch outputs,
        bfloat16 CuPy bits, another current device) goes through :meth:`empty`."""
        specs = query(params, names)
        arrays = []
        nested = {}  # "cache_out" -> params.cache_out, looked up once (each lookup makes a new wrapper)
        keep = self._keep
        fast = 0  # 1: NumPy, 2: CuPy on the current device, 0: empty()
        if not self.torch:
            if not self.cuda:
                fast = 1
                if self.cuda is None:
                    self.cuda = False
            else:
                cupy = _require_cupy(names[0] if names else "out")
                if cupy.cuda.runtime.getDevice() == self.device_index:
                    fast, cupy_empty, dev = 2, cupy.empty, self.device_index
        for name, (shape, code) in zip(names, specs):
            dtype = _DTYPES[code]
            if fast == 1:
                try:
                    arr = np.empty(shape, dtype)
                except (MemoryError, ValueError, OverflowError) as e:
                    raise _alloc_error(name, shape, dtype, e) from None
                ref = _numpy_ref(arr, code)
                if ref is None:  # a rank the core refuses: the generic path says so
                    ref = self._numpy_tensor(arr, name)
                else:
                    keep.append(arr)
            elif fast == 2 and dtype != BFLOAT16:
                try:
                    arr = cupy_empty(shape, dtype)
                except (MemoryError, ValueError, OverflowError) as e:
                    raise _alloc_error(name, shape, dtype, e) from None
                ref = _device_ref(arr.data.ptr if arr.size else 0, code, arr.shape, arr.strides, dev)
                if ref is None:
                    ref = self.tensor(arr, name)
                else:
                    keep.append(arr)
            else:
                arr, ref = self.empty(shape, dtype, name)
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
        if self.torch:
            code = _CODES[np.dtype(dtype)]
            try:
                return _torch.empty(shape, code, self.device_index if self.cuda else -1)
            except RuntimeError as e:  # torch's out-of-memory errors are RuntimeErrors
                raise _alloc_error(name, shape, dtype, e) from None
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
        if self.torch:
            return _torch.current_stream(self.device_index)
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


def _scalar_kind(x):
    """The kind of a one-element array scalar: ``"f"`` (any float dtype, bfloat16 included), ``"i"`` (any
    integer), ``"b"`` (bool), ``"c"`` (complex), ``"?"`` (another dtype), for a NumPy scalar or a 0-d array
    of any framework (NumPy, CuPy, PyTorch, JAX: ``ndim == 0`` and a ``dtype``); None for anything else."""
    if getattr(x, "ndim", None) != 0 or not hasattr(x, "dtype"):
        return None
    dt = x.dtype
    try:
        dt = np.dtype(dt)
    except TypeError:  # a framework's own dtype object (torch.float32, ...)
        if getattr(dt, "is_complex", False):
            return "c"
        if getattr(dt, "is_floating_point", False):
            return "f"
        text = str(dt)
        return "b" if text.endswith("bool") else "i" if "int" in text else "?"
    if dt == BFLOAT16:
        return "f"
    return {"f": "f", "i": "i", "u": "i", "b": "b", "c": "c"}.get(dt.kind, "?")


def _type_text(x) -> str:
    shape = getattr(x, "shape", None)
    if shape is not None and hasattr(x, "dtype"):
        return f"{type(x).__name__} of shape {tuple(shape)} and dtype {x.dtype}"
    return type(x).__name__


def as_float(x, name: str) -> float:
    """A real-number argument: a Python int or float, a NumPy scalar (bfloat16 included) or a 0-d array of
    a float or integer dtype (any framework's); TypeError for anything else (bools, strings, complex
    numbers, arrays of more than one element, None)."""
    if type(x) is float:  # the common case
        return x
    if not isinstance(x, (bool, np.bool_)):
        if isinstance(x, (numbers.Real, np.floating, np.integer)):
            return float(x)
        if _scalar_kind(x) in ("f", "i"):  # NumPy scalars of ml_dtypes (bfloat16), 0-d arrays
            return float(x)
    raise TypeError(f"{name} must be a real number, got {_type_text(x)}")


def as_bool(x, name: str) -> bool:
    """A flag: a Python or NumPy bool, or a 0-d bool array (any framework's); TypeError for anything else."""
    if x is False or x is True:
        return x
    if isinstance(x, np.bool_) or _scalar_kind(x) == "b":
        return bool(x)
    raise TypeError(f"{name} must be a bool, got {_type_text(x)}")


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
        native = _foreign_byte_order(dt)
        if native is not None and native.kind in "fV":  # (a swapped int32 is no float either way)
            raise TypeError(f"{name} must be {FLOAT_DTYPES} in the machine's native byte order (attnkit writes "
                            f"native byte order only), got {dt.str}: use {native} ({native.str})")
        raise TypeError(f"{name} must be {FLOAT_DTYPES}, got {dt}")
    return dt


def acc_dtype(dtype) -> np.dtype:
    """Accumulator / log-sum-exp dtype of an input dtype: float64 for float64, else float32."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)
