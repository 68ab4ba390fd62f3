"""DLPack: any framework's arrays in (zero-copy), the same framework's arrays out. Internal to attnkit."""

from __future__ import annotations

import ctypes
import functools
import inspect
import itertools
import sys

import numpy as np

from ._array import BFLOAT16, DeviceBF16

# -- DLPack: any framework's arrays in (zero-copy), the same framework's arrays out --------------------
# Public functions are wrapped by dlpack_io (attnkit/__init__.py): arguments that are foreign arrays
# (anything with __dlpack__ that is not NumPy or CuPy: PyTorch, JAX, TensorFlow, ...) become NumPy views
# (CPU) or CuPy views (CUDA) of the same memory, read straight from the DLPack capsule (so bfloat16 and
# read-only buffers work too; bfloat16 CUDA arrays become DeviceBF16 over a CuPy uint16 view, CuPy having
# no bfloat16), and the arrays returned are handed back through that framework's from_dlpack (bfloat16
# as its uint16 bits reinterpreted, zero-copy). The rest of the Python layer only ever sees NumPy, CuPy
# and DeviceBF16, but for the functions that take torch tensors as they are (dlpack_io's torch_native;
# attnkit._torch): there Call reads the tensors and allocates torch outputs itself.



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
# _PLAIN passes through, _DEVICE (CuPy arrays, DeviceBF16) too, _FOREIGN is viewed through its DLPack
# capsule, _TORCH is a torch.Tensor (read directly), _NESTED (lists, tuples, dicts, MHAParams, DLACache)
# is searched element by element.
_PLAIN, _DEVICE, _FOREIGN, _TORCH, _NESTED = range(5)
_KINDS = {type(None): _PLAIN, np.ndarray: _PLAIN, int: _PLAIN, float: _PLAIN, bool: _PLAIN, str: _PLAIN}


def _kind(x) -> int:
    kind = _KINDS.get(type(x))
    if kind is not None:
        return kind
    if isinstance(x, (list, tuple, dict)) or type(x) in _containers():
        kind = _NESTED
    elif not _is_foreign(x):
        kind = _DEVICE if type(x) is DeviceBF16 or _root_module(x) == "cupy" else _PLAIN
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


# Number and flag parameters (of the public functions, multi_head_attention's options and its rope dict): a
# foreign 0-d array given for one (scale=torch.tensor(0.5)) is a plain value, read by the _array.as_* checks
# (float(x), bool(x), operator.index(x)): it is neither viewed nor decides the framework of the results, which
# follow the array arguments (PyTorch in, PyTorch out) as they do for a Python number.
_SCALAR_PARAMS = frozenset((
    "scale", "softcap", "eps", "tau", "base", "causal", "return_lse", "return_state", "return_aux",
    "return_dbias", "normalize", "interleaved", "num_buckets", "num_hashes", "seed", "capacity", "rotary_dim",
    "num_heads", "num_kv_heads", "num_features", "proj_len"))


def _plain_scalar(name, x) -> bool:
    """Whether x, given for the parameter (or option, or rope key) ``name``, is a 0-d array of a number or
    flag parameter: then it passes through dlpack_io as a plain value."""
    return name in _SCALAR_PARAMS and getattr(x, "ndim", None) == 0


def _has_foreign(x) -> bool:
    kind = _kind(x)
    if kind != _NESTED:
        return kind == _FOREIGN or kind == _TORCH
    if isinstance(x, (list, tuple)):
        return any(map(_has_foreign, x))
    if isinstance(x, dict):
        return any(_has_foreign(e) for k, e in x.items() if not _plain_scalar(k, e))
    for f in _containers()[type(x)]:  # MHAParams, DLACache: their fields by the cached kinds, as above
        v = getattr(x, f)
        kind = _KINDS.get(type(v))
        if kind is None:
            kind = _kind(v)
        if kind == _FOREIGN or kind == _TORCH or (kind == _NESTED and _has_foreign(v)):
            return True
    return False


def _torch_only(x) -> bool:
    """Whether x holds no arrays but torch tensors, NumPy arrays and plain values (no CuPy, no other
    framework's): what a call of a _TORCH_NATIVE function must hold to get its tensors as they are."""
    kind = _KINDS.get(type(x))
    if kind is None:
        kind = _kind(x)
    if kind != _NESTED:
        return kind == _PLAIN or kind == _TORCH
    if isinstance(x, (list, tuple)):
        return all(map(_torch_only, x))
    return isinstance(x, dict) and all(map(_torch_only, x.values()))


def _convert_in(x, found: list, name: str):
    kind = _kind(x)
    if kind <= _DEVICE:
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
        return {k: e if _plain_scalar(k, e) else _convert_in(e, found, str(k)) for k, e in x.items()}
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


def dlpack_io(fn, torch_native=None):
    """Wraps a public function so that it takes any DLPack array (zero-copy) and returns arrays of the
    first foreign input's framework (PyTorch in, PyTorch out). NumPy and CuPy calls pass straight through.

    ``torch_native(kwargs)``, for a function whose arrays go only to attnkit._array.Call (which reads
    torch tensors itself and then allocates torch outputs): whether a call of torch tensors (NumPy arrays
    and plain values beside them, nothing else) passes them to fn as they are (see attnkit._torch)."""

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
        for name, value in itertools.chain(zip(itertools.repeat(None), args), kwargs.items()):
            kind = _KINDS.get(type(value))
            if kind is None:
                kind = _kind(value)
            if kind > _DEVICE and (kind != _NESTED or _has_foreign(value)) and not _plain_scalar(name, value):
                break  # a foreign array (a 0-d one given by keyword for a number or flag is a plain value)
        else:
            return fn(*args, **kwargs)  # NumPy / CuPy (and 0-d numbers of any framework): no conversion
        if (kind == _TORCH and torch_native is not None and all(map(_torch_only, args))
                and all(map(_torch_only, kwargs.values())) and torch_native(kwargs) and binds(args, kwargs)):
            return fn(*args, **kwargs)  # torch tensors, read and answered by Call itself
        found = []
        if binds(args, kwargs):  # converted in parameter order, as bound arguments are
            args = [_convert_in(a, found, n) for a, n in zip(args, positional)]
            if kwargs:
                named = sorted(kwargs, key=lambda k: order.get(k, len(params)))
                kwargs = {k: kwargs[k] if _plain_scalar(k, kwargs[k]) else _convert_in(kwargs[k], found, k)
                          for k in named}
            result = fn(*args, **kwargs)
        else:
            bound = signature.bind(*args, **kwargs)  # a bad call raises the TypeError fn itself would
            for name, value in bound.arguments.items():
                if not _plain_scalar(name, value):
                    bound.arguments[name] = _convert_in(value, found, name)
            result = fn(*bound.args, **bound.kwargs)
        return _convert_out(result, _returner(found[0])) if found else result

    return wrapper
