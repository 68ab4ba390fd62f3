"""PyTorch tensors read and written directly by attnkit._array.Call (no NumPy / CuPy view, no DLPack capsule).
Internal to attnkit; torch is never imported here: these run only once a torch.Tensor has been passed in.

A call whose array arguments are all torch tensors (or NumPy arrays and plain values), for the functions
that touch their arrays only through Call (attnkit/__init__.py's ``_TORCH_NATIVE``), hands the tensors to
the function as they are: Call makes each one's TensorRef from ``data_ptr()`` (which includes the storage
offset), ``shape``, ``stride()`` (elements, never negative in PyTorch) and its dtype and device, allocates
the outputs with ``torch.empty`` on the inputs' device, and runs a CUDA call on PyTorch's current stream
of that device (as a PyTorch operation does). CPU and CUDA tensors take the same code; only the device and
the stream differ. Values are only read: a tensor that requires grad is read as it is (outputs never
require grad; attnkit does not record autograd graphs), a negated view (``is_neg()``) is resolved into a
copy first; complex tensors (the only ones with a conjugate bit) have no attnkit dtype.
"""

from __future__ import annotations

import sys

import numpy as np

from . import _core

_strided_ref = _core.strided_ref

_TYPES = None  # (torch.Tensor, torch.nn.Parameter) once torch is imported


def tensor_types() -> tuple:
    """The torch tensor types Call reads directly: () while torch is not imported (no tensor exists then)."""
    global _TYPES
    if _TYPES is None:
        torch = sys.modules.get("torch")
        if torch is None:
            return ()
        _TYPES = (torch.Tensor, torch.nn.Parameter)
        _tables(torch)
    return _TYPES


CODES = {}  # torch dtype -> attnkit dtype code (_core.DType)
DTYPES = {}  # attnkit dtype code -> torch dtype
NARROW_INTS = set()  # the integer dtypes other than int32 / int64 (lengths are widened from them)
_DEVICES = {}  # device index (-1: the CPU) -> torch.device
_STRIDED = None
_current_stream = None


def _tables(torch) -> None:
    global _STRIDED, _current_stream
    for name, code in _core.DType.__members__.items():
        CODES[getattr(torch, name)] = int(code)
        DTYPES[int(code)] = getattr(torch, name)
    NARROW_INTS.update(getattr(torch, n) for n in ("int8", "uint8", "int16", "uint16", "uint32", "uint64")
                       if hasattr(torch, n))
    _STRIDED = torch.strided
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)  # the handle without a Stream object
    _current_stream = raw if raw is not None else (lambda index: torch.cuda.current_stream(index).cuda_stream)


def ref(x, name: str):
    """``(TensorRef, device index or -1 for the CPU, tensor to keep alive)`` of a torch tensor; TypeError
    naming the argument for a dtype, layout or device attnkit does not take."""
    code = CODES.get(x.dtype)
    if code is None:
        raise TypeError(f"{name} has unsupported dtype {x.dtype}")
    if x.layout is not _STRIDED:
        raise TypeError(f"{name} is a {x.layout} tensor: attnkit takes strided (dense) tensors")
    if x.is_cuda:  # is_cuda / is_cpu / get_device: x.device builds an object
        index = x.get_device()
    elif x.is_cpu:
        index = -1
    else:
        raise TypeError(f"{name} is on PyTorch device '{x.device}': attnkit takes CPU and CUDA tensors")
    if x.is_neg():  # the storage holds -x: its values, materialized
        x = x.resolve_neg()
    t = _strided_ref(x.data_ptr(), code, x.shape, x.stride(), index)
    if t is None:
        raise ValueError(f"{name} has rank {x.dim()}: attnkit takes arrays of rank 8 at most")
    return t, index, x


def device(index: int):
    """The torch.device of a device index (-1: the CPU), cached."""
    d = _DEVICES.get(index)
    if d is None:
        torch = sys.modules["torch"]
        d = _DEVICES[index] = torch.device("cpu") if index < 0 else torch.device("cuda", index)
    return d


def empty(shape, code: int, index: int):
    """A new C-contiguous tensor (``torch.empty`` on device index, -1 the CPU: on CUDA, from PyTorch's
    caching allocator on the current stream) and its TensorRef."""
    x = sys.modules["torch"].empty(shape, dtype=DTYPES[code], device=device(index))
    return x, _strided_ref(x.data_ptr(), code, shape, None, index)


def as_tensor(x, index: int):
    """A Python sequence or scalar as a tensor on device index, with the dtype NumPy would give it (so a
    coerced argument means the same for every framework)."""
    return sys.modules["torch"].as_tensor(np.asarray(x), device=device(index))


def current_stream(index: int) -> int:
    """PyTorch's current CUDA stream on device index, as a raw handle."""
    return _current_stream(index)
