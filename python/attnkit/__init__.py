"""attnkit: attention in every form the field uses, for NumPy (CPU) and CuPy (CUDA).

Array in, array out: every function takes NumPy arrays (run on the C++ CPU backend) or CuPy arrays
(run on the CUDA backend, on CuPy's current stream) and returns arrays of the same kind. Any other
DLPack array (PyTorch, JAX, TensorFlow, ...) is read in place too and the results come back in its
framework.
``attnkit.reference`` holds float64 NumPy oracles of every function.
"""

try:  # before the compiled core: see the note below
    import ml_dtypes as _ml_dtypes  # noqa: F401
except ImportError:  # pragma: no cover - ml_dtypes is a dependency
    pass
# ml_dtypes is imported before attnkit._core on purpose. On session 27's GPU machine (Python 3.12, NumPy 2.5.2,
# ml_dtypes 0.6.0, a CUDA build) ``import attnkit._core; import ml_dtypes`` crashed (SIGSEGV in ml_dtypes'
# float4_e2m1fn finfo, at its import) while ``import ml_dtypes, attnkit`` worked (bench/results/gpu_check_h200_s27b.txt).
# The cause is not known; the order keeps ``import attnkit`` working there.
from . import _core, layouts  # noqa: E402
from ._backward import (attention_backward, block_sparse_attention_backward, linear_attention_backward,
                        linformer_attention_backward, performer_attention_backward)
from ._dla import DLAAux, DLACache, dynamic_linear_attention
from ._exact import attention, attention_weights, merge_attention
from ._mha import MHAParams, multi_head_attention
from ._positional import alibi_slopes, rope, sinusoidal_positions
from ._linear import (linear_attention, linformer_attention, linformer_projection, performer_attention,
                      random_features)
from ._sparse import BlockLayout, block_sparse_attention, lsh_attention, lsh_buckets

from ._dlpack import dlpack_io as _dlpack_io

# Every array-taking function accepts any DLPack array (zero-copy) and answers in the caller's framework.
# These take torch tensors as they are (attnkit._torch): their arrays only go through _array.Call.
_TORCH_NATIVE = {"attention": lambda kwargs: True, "attention_weights": lambda kwargs: True,
                 "linear_attention": lambda kwargs: True,
                 "attention_backward": lambda kwargs: not kwargs.get("return_dbias")}  # dbias: NumPy/CuPy sums
attention, attention_weights, linear_attention, attention_backward = (
    _dlpack_io(f, _TORCH_NATIVE[f.__name__]) for f in (attention, attention_weights, linear_attention,
                                                       attention_backward))
merge_attention = _dlpack_io(merge_attention)
block_sparse_attention, lsh_attention, lsh_buckets = map(_dlpack_io, (block_sparse_attention, lsh_attention,
                                                                      lsh_buckets))
performer_attention, linformer_attention = map(_dlpack_io, (performer_attention, linformer_attention))
dynamic_linear_attention = _dlpack_io(dynamic_linear_attention)
block_sparse_attention_backward, linformer_attention_backward = map(
    _dlpack_io, (block_sparse_attention_backward, linformer_attention_backward))
linear_attention_backward, performer_attention_backward = map(
    _dlpack_io, (linear_attention_backward, performer_attention_backward))
rope, multi_head_attention = map(_dlpack_io, (rope, multi_head_attention))

__version__ = _core.__version__

__all__ = [
    "attention",
    "attention_weights",
    "merge_attention",
    "attention_backward",
    "block_sparse_attention_backward",
    "linformer_attention_backward",
    "linear_attention_backward",
    "performer_attention_backward",
    "BlockLayout",
    "block_sparse_attention",
    "layouts",
    "lsh_buckets",
    "lsh_attention",
    "dynamic_linear_attention",
    "DLACache",
    "DLAAux",
    "linear_attention",
    "random_features",
    "performer_attention",
    "linformer_projection",
    "linformer_attention",
    "rope",
    "sinusoidal_positions",
    "alibi_slopes",
    "MHAParams",
    "multi_head_attention",
    "get_num_threads",
    "set_num_threads",
    "info",
    "__version__",
]


def get_num_threads() -> int:
    """Number of threads the CPU backend uses for calls from this thread (OpenMP's max threads;
    ``OMP_NUM_THREADS`` sets the initial value)."""
    return _core.get_num_threads()


def set_num_threads(n: int) -> None:
    """Sets the number of CPU threads for later calls from this thread. Results do not depend on it.
    A call uses at most 4 threads per processor (at least 16, at most 1024), whatever ``n`` asks for:
    any larger ``n`` (``2**31``, ``2**63``, ``10**100``) is taken as that cap.

    ``n`` is an integer (a Python int, a NumPy integer or a 0-d integer array).

    Raises
    ------
    ValueError
        ``n < 1``.
    TypeError
        ``n`` not an integer (a float, a bool, a string).
    """
    from ._array import as_int

    n = as_int(n, "n", clamp=True)  # any size: the cap below is the meaning of a huge n
    if n < 1:
        raise ValueError(f"n (num_threads) must be >= 1, got {n}")
    _core.set_num_threads(min(n, 2**31 - 1))


def info() -> dict:
    """Build and runtime facts: version, backends built, CUDA devices, the public functions that run on
    CUDA arrays here (``cuda_kernels``), CPU kernels and threads."""
    return {
        "version": __version__,
        "cpu_isa": _core.cpu_isa(),
        "threads": _core.get_num_threads(),
        "cuda_built": _core.built_with_cuda(),
        "cuda_devices": _core.cuda_device_count(),
        "cuda_kernels": [m for m in _CUDA_MECHANISMS if _core.cuda_has_kernel(m)],
    }


# The public functions that can have a CUDA kernel (info()["cuda_kernels"] lists those that do here).
_CUDA_MECHANISMS = ("attention", "attention_weights", "merge_attention", "block_sparse_attention", "lsh_buckets",
                    "lsh_attention", "linear_attention", "performer_attention", "linformer_attention",
                    "dynamic_linear_attention", "rope", "attention_backward", "block_sparse_attention_backward",
                    "linear_attention_backward", "performer_attention_backward")
