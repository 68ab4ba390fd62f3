"""XLA FFI plumbing of attnkit.jax: registration of the C++ handlers, trace-time validation through the
core's own validators, and the ``jax.ffi.ffi_call`` that runs a handler. Internal."""

from __future__ import annotations

import jax
import numpy as np

from .. import _core
from .._array import _CODES, _DTYPES, Call

_REBUILD = ("attnkit was built without its JAX (XLA FFI) handlers: jaxlib, which ships XLA's FFI headers, was "
            "not in the build environment. Reinstall from source with build isolation (pyproject.toml brings "
            "jaxlib): `pip install --force-reinstall --no-deps attnkit` (or `.` in a checkout), or, without "
            "build isolation, `pip install jaxlib` first; CMake option ATTNKIT_JAX=ON makes a build without "
            "them fail instead.")


def _register():
    if not hasattr(_core, "jax_ffi_targets"):
        raise ImportError(_REBUILD)
    for name, platforms in _core.jax_ffi_targets().items():
        for platform, capsule in platforms.items():
            jax.ffi.register_ffi_target(name, capsule, platform=platform, api_version=1)


_register()

# A valid address for the TensorRefs of trace-time validation: the validators check shapes and dtypes
# and never read the memory of q / k / v / masks / parameters (key_lengths, whose values they do read,
# get a real zero array of their shape and dtype instead).
_PLACEHOLDER = np.zeros(8, np.int64)


class Check:
    """The TensorRefs of one trace-time validation: abstract JAX values (shapes and dtypes) described to the
    core's validator, which checks them and computes the output shapes exactly as the kernels will."""

    stream = 0     # the attributes of attnkit._array.Call that the NumPy API's parameter builders read
    cuda = False   # (a block layout is validated from its host copy)

    def __init__(self):
        self._keep = []

    def tensor(self, x, name: str, coerce: bool = False):
        return self.ref(x, name)

    qkv = Call.qkv  # sets p.q, p.k, p.v through tensor()

    def lengths(self, x, name: str = "key_lengths"):
        return self.ref(x, name)

    def ref(self, x, name: str):
        if x is None:
            return _core.TensorRef()
        code = _CODES.get(np.dtype(x.dtype))
        if code is None:
            raise TypeError(f"{name} has unsupported dtype {np.dtype(x.dtype)}")
        shape = [int(n) for n in x.shape]
        strides = [int(s) for s in np.cumprod([1] + shape[:0:-1])[::-1]] if shape else []  # row-major, in elements
        if name == "key_lengths":  # read by the validator: zeros are valid lengths; the kernel checks the values
            buf = np.zeros(shape, _DTYPES[code])
            self._keep.append(buf)
            ptr = buf.ctypes.data
        else:
            ptr = _PLACEHOLDER.ctypes.data
        return _core.TensorRef(ptr, code, shape, strides, 0, 0)

    @staticmethod
    def outputs(query, params, *names):
        """``jax.ShapeDtypeStruct`` of the outputs ``names``, from the core's output query (which validates
        the inputs first: bad input raises ValueError / TypeError naming the argument here, at trace time)."""
        specs = {name: (shape, code) for name, shape, code in query(params)}
        return tuple(jax.ShapeDtypeStruct(tuple(specs[n][0]), _DTYPES[specs[n][1]]) for n in names)


def call(target: str, args: dict, results: dict, **attrs):
    """Runs the FFI target ``attnkit_<target>`` on the arrays ``args`` (name -> array; None = left out) and
    returns its results (name -> ShapeDtypeStruct), in order, as a tuple.

    Batching: ``vmap_method="expand_dims"`` gives every buffer the same extra leading dims (the batch size,
    or 1 for an argument that is not batched), and the handler loops over them with stride 0 along the
    dims of 1 (python/src/jax_ffi.cpp), so unbatched arguments are never copied N times. The attribute
    ``rank`` (the first argument's rank here) tells the handler how many leading dims vmap added."""
    names = [n for n, a in args.items() if a is not None]
    arrays = [args[n] for n in names]
    fn = jax.ffi.ffi_call(f"attnkit_{target}", tuple(results.values()), vmap_method="expand_dims")
    return fn(*arrays, args=",".join(names), rets=",".join(results), rank=np.int64(arrays[0].ndim), **attrs)


def f64(x) -> np.float64:
    """A float attribute (``None`` -> NaN, which the handlers read as "the default")."""
    return np.float64(np.nan if x is None else x)
