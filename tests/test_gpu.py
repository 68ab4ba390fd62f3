"""GPU suite: every public array function on CuPy arrays through the CUDA backend, against the float64
oracle (``attnkit.reference``, the tolerance rule of conftest.assert_close) AND against the CPU backend on
the same inputs, over grids like the CPU tests' (shapes incl. odd sizes, head dims 32..256 and odd ones,
every dtype, GQA/MQA, masking features, strides, empty sizes, fully masked rows, bad input).

Skipped unless CuPy imports and a CUDA device is visible (the development machines have no GPU). A
mechanism whose CUDA kernel is not enabled in this build (``cuda/runtime.cu``'s list) is reported as
*skipped* with the core's reason, per (mechanism, case), never as a failure.

Every GPU call (``gpu_run``) also checks: outputs are CuPy arrays on the inputs' device, inputs are left
untouched, two runs give the same bits, and a run on a non-default CuPy stream gives the same bits.

bfloat16: CuPy has no bfloat16 dtype, so bfloat16 device inputs are PyTorch tensors handed over through
DLPack (attnkit's DLPack adapter, zero-copy, carried inside attnkit as a DeviceBF16: a CuPy uint16 view),
and the results come back as PyTorch bfloat16 CUDA tensors. Without PyTorch with CUDA those cases are
skipped.

Sanitizer subset (tools/gpu_check.sh): ``-k small`` selects a few tiny cases of every mechanism (test names
or case ids containing "small"); ``ATTNKIT_GPU_TESTS_SANITIZER=1`` turns CuPy's memory pool off (exact
allocation bounds for memcheck) and the reruns.

Checking the test code itself without a GPU: ``ATTNKIT_GPU_TESTS_ON_CPU=1 pytest tests/test_gpu.py`` runs
every case with NumPy standing in for CuPy (the device checks are then vacuous, the oracle comparisons
are not)."""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest

import attnkit
from attnkit import layouts
from attnkit import reference as ref
from attnkit._array import acc_dtype

from conftest import (ATOL, BF16, DTYPES, DTYPE_IDS, _result_bytes, assert_close, magnitude, naive_dtype, raises,
                      randn, to_f64)

FAKE = os.environ.get("ATTNKIT_GPU_TESTS_ON_CPU") == "1"  # NumPy stands in for CuPy: checks the test code

if FAKE:
    cupy = None
    N_DEVICES = 1
else:
    cupy = pytest.importorskip("cupy")
    try:
        N_DEVICES = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # pragma: no cover - no driver
        N_DEVICES = 0
    pytestmark = pytest.mark.skipif(N_DEVICES == 0 or not attnkit.info()["cuda_built"],
                                    reason="needs a CUDA device and a CUDA build of attnkit")

# Under compute-sanitizer (tools/gpu_check.sh): no CuPy memory pool, so that every array is its own
# allocation and memcheck sees reads past its end; one run per call (no determinism / stream reruns).
SANITIZER = os.environ.get("ATTNKIT_GPU_TESTS_SANITIZER") == "1"
if SANITIZER and cupy is not None:
    cupy.cuda.set_allocator(None)

try:
    import torch  # only for bfloat16 device inputs

    HAVE_TORCH_CUDA = bool(torch.cuda.is_available())
except Exception:  # pragma: no cover
    torch = None
    HAVE_TORCH_CUDA = False

F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
DT = dict(zip(DTYPE_IDS, DTYPES))


# ============================================================================== kernel availability
def _tiny(*shape, dtype=np.float32):
    return cupy.asarray(np.random.default_rng(0).standard_normal(shape).astype(dtype))


# One tiny call per dispatch name: it raises RuntimeError("... has no CUDA kernel ...") when the build has no
# kernel for it (attnkit exposes no Python support query; the core's select() gives this same reason).
PROBES = {
    "attention": lambda: attnkit.attention(_tiny(1, 1, 4, 8), _tiny(1, 1, 4, 8), _tiny(1, 1, 4, 8)),
    "attention_weights": lambda: attnkit.attention_weights(_tiny(1, 1, 4, 8), _tiny(1, 1, 4, 8)),
    "merge_attention": lambda: attnkit.merge_attention([_tiny(1, 1, 4, 8)], [_tiny(1, 1, 4)]),
    "block_sparse_attention": lambda: attnkit.block_sparse_attention(
        _tiny(1, 1, 8, 8), _tiny(1, 1, 8, 8), _tiny(1, 1, 8, 8), layouts.sliding_window(8, 4, 1)),
    "lsh_buckets": lambda: attnkit.lsh_buckets(_tiny(1, 1, 4, 8), num_buckets=2),
    "lsh_attention": lambda: attnkit.lsh_attention(_tiny(1, 1, 4, 8), _tiny(1, 1, 4, 8), _tiny(1, 1, 4, 8),
                                                   num_buckets=2),
    "linear_attention": lambda: attnkit.linear_attention(_tiny(1, 1, 4, 8), _tiny(1, 1, 4, 8), _tiny(1, 1, 4, 8)),
    "performer_attention": lambda: attnkit.performer_attention(
        _tiny(1, 1, 4, 8), _tiny(1, 1, 4, 8), _tiny(1, 1, 4, 8), cupy.asarray(attnkit.random_features(4, 8))),
    "linformer_attention": lambda: attnkit.linformer_attention(
        _tiny(1, 1, 4, 8), _tiny(1, 1, 4, 8), _tiny(1, 1, 4, 8), cupy.asarray(attnkit.linformer_projection(2, 4))),
    "dynamic_linear_attention": lambda: attnkit.dynamic_linear_attention(
        _tiny(1, 1, 4, 8), _tiny(1, 1, 4, 8), _tiny(1, 1, 4, 8), cupy.ones((1, 1, 4, 2), np.float32), capacity=2),
    "rope": lambda: attnkit.rope(_tiny(1, 1, 4, 8)),
}

# multi_head_attention's mechanism -> the dispatch name of its attention core
MHA_CORE = {"exact": "attention", "block_sparse": "block_sparse_attention", "lsh": "lsh_attention",
            "linear": "linear_attention", "performer": "performer_attention", "linformer": "linformer_attention",
            "dla": "dynamic_linear_attention"}


def _no_kernel(e: Exception) -> bool:
    msg = str(e)
    return isinstance(e, RuntimeError) and ("no CUDA kernel" in msg or "built without CUDA" in msg)


@functools.lru_cache(maxsize=None)
def _missing(mechanism: str):
    """The core's reason when `mechanism` has no CUDA kernel in this build, else None."""
    if FAKE:
        return None
    try:
        PROBES[mechanism]()
        cupy.cuda.get_current_stream().synchronize()
    except Exception as e:  # any other failure: the kernel exists; the tests will show what is wrong
        if _no_kernel(e):
            return str(e)
    return None


def need(*mechanisms):
    """Skips the test (with the core's reason) unless every mechanism has a CUDA kernel in this build."""
    for m in mechanisms:
        reason = _missing(m)
        if reason:
            pytest.skip(f"kernel not enabled: {reason}")


def test_kernel_status_report():
    """Lists which mechanisms run on CUDA in this build (informational; never fails)."""
    enabled = [m for m in PROBES if not _missing(m)]
    print("CUDA kernels enabled:", ", ".join(enabled) or "none")


# ============================================================================== host <-> device
def _owner(x: np.ndarray) -> np.ndarray:
    o = x
    while isinstance(o.base, np.ndarray):
        o = o.base
    return o


def _dev_array(x: np.ndarray, device: int = 0):
    """A device copy of x with the same element strides (broadcast zero strides and padded / transposed
    views stay views): the memory x lives in is copied whole and x's view is rebuilt over it."""
    if FAKE:
        return x
    owner = _owner(x)
    strided = not x.flags.c_contiguous and x.size > 0
    if strided and (not owner.flags.c_contiguous or owner.dtype != x.dtype or any(s < 0 for s in x.strides)):
        x, owner, strided = np.ascontiguousarray(x), None, False
    if x.dtype == BF16:
        if not HAVE_TORCH_CUDA:
            pytest.skip("bfloat16 device arrays need PyTorch with CUDA (CuPy has no bfloat16)")
        if not strided:
            return torch.from_numpy(np.ascontiguousarray(x).view(np.int16)).to(
                f"cuda:{device}").view(torch.bfloat16)
        off = (x.__array_interface__["data"][0] - owner.__array_interface__["data"][0]) // x.itemsize
        flat = torch.from_numpy(owner.reshape(-1).view(np.int16)).to(f"cuda:{device}")
        return torch.as_strided(flat.view(torch.bfloat16), x.shape, [s // x.itemsize for s in x.strides], off)
    with cupy.cuda.Device(device):
        if not strided:
            return cupy.asarray(x)
        off = x.__array_interface__["data"][0] - owner.__array_interface__["data"][0]
        flat = cupy.asarray(owner.reshape(-1).view(np.uint8))[off:]
        flat = flat[: flat.size - flat.size % x.itemsize].view(x.dtype)
        return cupy.lib.stride_tricks.as_strided(flat, x.shape, x.strides)


def dev(x, device: int = 0):
    """NumPy arrays anywhere in x (lists, tuples, dicts, DLACache, MHAParams) -> device arrays."""
    if isinstance(x, np.ndarray):
        return _dev_array(x, device)
    if isinstance(x, attnkit.DLACache):
        return attnkit.DLACache(*(dev(getattr(x, f), device) for f in ("states", "counts", "info", "starts", "size")),
                                x.position)
    if isinstance(x, attnkit.MHAParams):
        return attnkit.MHAParams(*(dev(getattr(x, n), device) for n in attnkit.MHAParams.__slots__))
    if isinstance(x, dict):
        return {k: dev(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)) and not hasattr(x, "_fields"):
        return type(x)(dev(e, device) for e in x)
    return x


def _is_torch(x) -> bool:
    return torch is not None and isinstance(x, torch.Tensor)


def host(x):
    """Device arrays anywhere in a result -> NumPy (bfloat16 tensors -> ml_dtypes bfloat16)."""
    if isinstance(x, np.ndarray):
        return x
    if cupy is not None and isinstance(x, cupy.ndarray):
        return cupy.asnumpy(x)
    if _is_torch(x):
        t = x.detach()
        if t.dtype == torch.bfloat16:
            return t.contiguous().view(torch.int16).cpu().numpy().view(BF16)
        return t.cpu().numpy()
    if isinstance(x, attnkit.DLACache):
        return attnkit.DLACache(*(host(getattr(x, f)) for f in ("states", "counts", "info", "starts", "size")),
                                x.position)
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return type(x)._make(host(e) for e in x)
    if isinstance(x, (list, tuple)):
        return type(x)(host(e) for e in x)
    return x


def _leaves(x):
    """The device arrays in x."""
    if isinstance(x, dict):
        x = list(x.values())
    if isinstance(x, attnkit.DLACache):
        x = [getattr(x, f) for f in ("states", "counts", "info", "starts", "size")]
    if isinstance(x, attnkit.MHAParams):
        x = [getattr(x, n) for n in attnkit.MHAParams.__slots__]
    if isinstance(x, (list, tuple)):
        return [a for e in x for a in _leaves(e)]
    if isinstance(x, np.ndarray) or _is_torch(x) or (cupy is not None and isinstance(x, cupy.ndarray)):
        return [x]
    return []


def _has_bf16(x) -> bool:
    return any(getattr(a, "dtype", None) in (BF16, getattr(torch, "bfloat16", None)) for a in _leaves(x))


def _check_on_device(result, device: int):
    for a in _leaves(result):
        if FAKE:
            assert isinstance(a, np.ndarray)
        elif _is_torch(a):
            assert a.is_cuda and a.device.index == device, f"result on {a.device}, inputs on cuda:{device}"
        else:
            assert isinstance(a, cupy.ndarray), f"result is a {type(a).__name__}, not a CuPy array"
            assert a.device.id == device, f"result on cuda:{a.device.id}, inputs on cuda:{device}"


def _bits(x) -> bytes:
    return _result_bytes(host(x))


def gpu_run(fn, *args, _device: int = 0, _stream: bool = True, **kwargs):
    """fn on device copies of the NumPy arrays in args/kwargs; returns the result as NumPy. Checks that the
    outputs live on the inputs' device, that the inputs are untouched, that a second run gives the same
    bits, and that a run on a non-default stream (inputs made on that stream) gives the same bits.
    Skips when the call needs bfloat16 device arrays that attnkit does not take."""
    dargs, dkw = dev(args, _device), dev(kwargs, _device)
    inputs = _leaves([dargs, dkw])
    before = [_bits(a) for a in inputs]
    try:
        if FAKE:
            r1 = fn(*dargs, **dkw)
        else:
            with cupy.cuda.Device(_device):
                r1 = fn(*dargs, **dkw)
    except RuntimeError as e:
        if _no_kernel(e):
            pytest.skip(f"kernel not enabled: {e}")
        raise
    _check_on_device(r1, _device)
    if SANITIZER:
        return host(r1)
    first = _bits(r1)
    if FAKE:
        r2 = fn(*dargs, **dkw)
    else:
        with cupy.cuda.Device(_device):
            r2 = fn(*dargs, **dkw)
    assert _bits(r2) == first, "two runs on the same inputs give other bits (not deterministic)"
    if _stream and not FAKE and not _has_bf16([dargs, dkw]):
        with cupy.cuda.Device(_device):
            s = cupy.cuda.Stream(non_blocking=True)
            with s:
                sargs, skw = dev(args, _device), dev(kwargs, _device)  # uploaded on s
                r3 = fn(*sargs, **skw)
                got = _bits(r3)  # asnumpy on the current stream (s)
            s.synchronize()
        assert got == first, "a run on a non-default CuPy stream gives other bits"
    assert [_bits(a) for a in inputs] == before, "the call modified one of its inputs"
    return host(r1)


# ============================================================================== comparisons
def close3(gpu, cpu, r, n, dtype, what="out", atol_scale=1.0):
    """GPU result vs the oracle by the tolerance rule, and vs the CPU backend: the same non-finite entries,
    exact zeros where the CPU and the oracle have them (masked rows), and a difference within the sum of
    both results' tolerances (4 * naive error + 2 * atol)."""
    dtype = np.dtype(dtype)
    assert np.asarray(gpu).dtype == np.asarray(cpu).dtype, (what, np.asarray(gpu).dtype, np.asarray(cpu).dtype)
    assert_close(gpu, r, n, dtype, what=f"{what} (GPU vs oracle)", atol_scale=atol_scale)
    g, c, r64 = to_f64(gpu), to_f64(cpu), to_f64(r)
    assert g.shape == c.shape, (what, g.shape, c.shape)
    fin = np.isfinite(c)
    assert np.array_equal(np.isfinite(g), fin), f"{what}: infinities differ from the CPU backend"
    assert np.array_equal(g[~fin], c[~fin]), f"{what}: infinite entries differ from the CPU backend"
    zero = (c == 0) & (r64 == 0)
    assert (g[zero] == 0).all(), f"{what}: not exactly 0 where the CPU backend and the oracle are"
    if fin.any():
        nn = to_f64(np.asarray(n).astype(dtype) if dtype != F64 else n)
        fr = np.isfinite(r64)
        base = np.abs(nn[fr] - r64[fr]).max(initial=0.0)
        err = np.abs(g[fin] - c[fin]).max()
        tol = 4 * base + 2 * ATOL[dtype] * atol_scale
        assert err <= tol, f"{what}: GPU vs CPU max difference {err:.3g} > {tol:.3g} (naive error {base:.3g})"


def same(gpu, cpu, what="out"):
    """Exactly the CPU backend's result (integers, empty results, zeros / -inf)."""
    gpu, cpu = np.asarray(gpu), np.asarray(cpu)
    assert gpu.dtype == cpu.dtype and gpu.shape == cpu.shape, (what, gpu.dtype, cpu.dtype, gpu.shape, cpu.shape)
    assert gpu.tobytes() == cpu.tobytes(), f"{what}: differs from the CPU backend"


def qkv(rng, B, Hq, Hkv, Sq, Sk, D, Dv, dtype, scale=1.0, layout="contig"):
    """q [B,Hq,Sq,D], k [B,Hkv,Sk,D], v [B,Hkv,Sk,Dv]; layout "strided": q is a head-transposed view of a
    [B,S,H,D] array, k a view with a padded last dim, v a view broadcast over the batch (zero stride)."""
    if layout == "contig":
        return (randn(rng, (B, Hq, Sq, D), dtype, scale), randn(rng, (B, Hkv, Sk, D), dtype, scale),
                randn(rng, (B, Hkv, Sk, Dv), dtype))
    q = randn(rng, (B, Sq, Hq, D), dtype, scale).transpose(0, 2, 1, 3)
    k = randn(rng, (B, Hkv, Sk, D + 3), dtype, scale)[..., :D]
    v = np.broadcast_to(randn(rng, (1, Hkv, Sk, Dv), dtype), (B, Hkv, Sk, Dv))
    return q, k, v


def _eval(kw, rng):
    return {k: (v(rng) if callable(v) else v) for k, v in kw.items()}


# ============================================================================== exact attention
def A(id_, B=1, Hq=2, Hkv=None, Sq=33, Sk=None, D=64, Dv=None, dtype="f32", layout="contig", scale_in=1.0, **kw):
    """An attention case: sizes, dtype id, and keyword arguments (callables of rng are drawn per test)."""
    spec = dict(B=B, Hq=Hq, Hkv=Hq if Hkv is None else Hkv, Sq=Sq, Sk=Sq if Sk is None else Sk, D=D,
                Dv=D if Dv is None else Dv, dtype=DT[dtype], layout=layout, scale_in=scale_in, kw=kw)
    return pytest.param(spec, id=id_)


def _mask(shape, p=0.6):
    return lambda rng: rng.random(shape) < p


ATTN_CASES = (
    # small: the sanitizer subset
    [A(f"small-{d}", Sq=7, Sk=13, D=32, dtype=d, causal=True) for d in DTYPE_IDS]
    + [A("small-mask-gqa", Hq=4, Hkv=2, Sq=5, Sk=9, D=40, mask=_mask((5, 9)), key_lengths=[7]),
       A("small-decode", Hq=4, Hkv=1, Sq=1, Sk=300, D=64, dtype="f16")]
    # shapes x head dims x dtypes
    + [A(f"shape-S{S}-D{D}-{d}", B=2, Sq=S, D=D, dtype=d, causal=(S % 2 == 1))
       for d in DTYPE_IDS for S, D in [(1, 64), (33, 32), (130, 64), (65, 80), (100, 96), (129, 128), (40, 256),
                                      (77, 72), (50, 40)]]
    + [A(f"Dv-{D}-{Dv}", Sq=19, Sk=45, D=D, Dv=Dv, causal=True) for D, Dv in [(3, 5), (33, 200), (128, 64), (520, 24)]]
    # causal bottom-right with Sq != Sk, cross lengths
    + [A(f"cross-{Sq}x{Sk}-{'c' if c else 'nc'}-{d}", Hq=3, Sq=Sq, Sk=Sk, D=64, Dv=32, dtype=d, causal=c)
       for d in ("f32", "f16") for Sq, Sk in [(1, 300), (5, 77), (100, 31), (300, 1000), (64, 1)] for c in (False, True)]
    # GQA / MQA
    + [A(f"gqa-{Hq}-{Hkv}-{Sq}x{Sk}", B=2, Hq=Hq, Hkv=Hkv, Sq=Sq, Sk=Sk, D=32, Dv=48, causal=True)
       for Hq, Hkv in [(4, 2), (8, 1), (6, 3), (32, 4)] for Sq, Sk in [(1, 200), (37, 37), (130, 70)]]
    + [A(f"gqa-window-alibi-{d}", B=2, Hq=8, Hkv=2, Sq=50, Sk=70, D=64, dtype=d, window=(5, 3),
         alibi_slopes=lambda rng: rng.uniform(0, 1, 8)) for d in DTYPE_IDS]
    # windows
    + [A(f"window-{w[0]}-{w[1]}-{Sq}x{Sk}-{'c' if c else 'nc'}", Hkv=1, Sq=Sq, Sk=Sk, window=w, causal=c)
       for w in [(0, 0), (4, 0), (0, 4), (16, 16), (None, 3), (70, None), (-1, 2), (200, 200)]
       for Sq, Sk in [(97, 97), (40, 131), (131, 40)] for c in (False, True)]
    + [A(f"window-{d}", Sq=97, Sk=131, window=(16, 4), causal=True, dtype=d) for d in ("f16", "bf16", "f64")]
    # masks (bool, broadcast)
    + [A(f"mask-{name}-{d}", B=2, Hq=3, Sq=45, Sk=70, mask=_mask(shape), causal=(d != "f32"), dtype=d)
       for name, shape in [("full", (2, 3, 45, 70)), ("bcast_b", (1, 3, 45, 70)), ("bcast_h", (2, 1, 45, 70)),
                           ("row", (2, 3, 45, 1)), ("col", (2, 1, 1, 70)), ("2d", (45, 70))]
       for d in ("f32", "f16")]
    # bias (every dtype and broadcast shape)
    + [A(f"bias-{'x'.join(map(str, bs))}-{bd}", B=2, Hq=3, Sq=45, Sk=70,
         bias=(lambda bs, bd: lambda rng: randn(rng, bs, DT[bd], 2.0))(bs, bd))
       for bs in [(2, 3, 45, 70), (3, 45, 70), (45, 70), (1, 3, 1, 70), (2, 1, 45, 1), (70,)] for bd in ("f32", "f16")]
    + [A(f"bias-{bd}", B=2, Hq=3, Sq=45, Sk=70, bias=(lambda bd: lambda rng: randn(rng, (45, 70), DT[bd], 2.0))(bd))
       for bd in ("f64", "bf16")]
    # key_lengths, ALiBi, softcap, scale
    + [A(f"lens-{d}-{'c' if c else 'nc'}", B=4, Sq=33, Sk=90, dtype=d, causal=c, key_lengths=np.array([90, 0, 1, 57]))
       for d in DTYPE_IDS for c in (False, True)]
    + [A("lens-int64", B=4, Sq=33, Sk=90, key_lengths=np.array([5, 6, 7, 8], np.int64))]
    + [A(f"alibi-{s}-{d}", B=2, Hq=4, Hkv=2, Sq=50, Sk=80, dtype=d, causal=(s == "bh"),
         alibi_slopes=(2.0 ** -np.arange(1, 5)) if s == "h" else (lambda rng: rng.uniform(0, 0.5, (2, 4))))
       for s in ("h", "bh") for d in DTYPE_IDS]
    + [A(f"softcap-{cap}-{d}", Sq=40, Sk=60, dtype=d, scale_in=3.0, softcap=cap, causal=(cap > 1))
       for cap in (0.5, 30.0) for d in DTYPE_IDS]
    + [A(f"scale-{s}", Sq=33, Sk=47, scale=s, causal=True) for s in (0.0, -0.3, 10.0)]
    + [A(f"combined-{d}", B=2, Hq=4, Hkv=2, Sq=70, Sk=150, D=80, Dv=48, dtype=d, causal=True, window=(60, 2),
         mask=_mask((4, 70, 150), 0.8), bias=lambda rng: randn(rng, (2, 1, 70, 150), np.float16),
         key_lengths=[150, 101], scale=0.2, softcap=8.0, alibi_slopes=lambda rng: rng.uniform(0, 0.1, 4))
       for d in DTYPE_IDS]
    # non-contiguous strided inputs (transposed q, padded k, batch-broadcast v), broadcast mask
    + [A(f"strided-{d}", B=2, Hq=4, Hkv=2, Sq=37, Sk=50, D=64, dtype=d, layout="strided", causal=True,
         mask=lambda rng: np.broadcast_to(rng.random((1, 1, 37, 50)) < 0.8, (2, 4, 37, 50))) for d in DTYPE_IDS]
    # decode: one query row, long keys, GQA (the split-KV path)
    + [A(f"decode-Sk4096-{d}", B=2, Hq=16, Hkv=4, Sq=1, Sk=4096, D=128, dtype=d, key_lengths=[4096, 2051])
       for d in ("f32", "f16", "bf16")]
    + [A(f"decode-Sk16384-{d}", B=1, Hq=8, Hkv=2, Sq=1, Sk=16384, D=128, dtype=d) for d in ("f32", "f16")]
    + [A(f"decode-{Sq}x{Sk}-{d}", B=1, Hq=8, Hkv=2, Sq=Sq, Sk=Sk, D=D, dtype=d, causal=True)
       for Sq, Sk, D in [(1, 8191, 64), (4, 3000, 128), (2, 1000, 80)] for d in ("f32", "f16")]
    + [A("decode-f64", Hq=4, Hkv=1, Sq=1, Sk=5000, D=64, dtype="f64", window=(1000, 0))]
    # the decode kernel (attention_decode.cuh): Sq * G <= 8 rows per kv head, every score term
    + [A(f"decode-Sq2-alibi-softcap-{d}", B=2, Hq=8, Hkv=2, Sq=2, Sk=3000, D=128, dtype=d, causal=True,
         softcap=5.0, scale_in=2.0, key_lengths=[3000, 1777], alibi_slopes=lambda rng: rng.uniform(0, 0.05, (2, 8)))
       for d in ("f16", "bf16")]
    + [A("decode-mask-bias-bf16", B=2, Hq=4, Hkv=1, Sq=1, Sk=2500, D=64, dtype="bf16", key_lengths=[2500, 0],
         mask=_mask((2, 4, 1, 2500), 0.7), bias=lambda rng: randn(rng, (1, 4, 1, 2500), np.float32))]
    + [A(f"decode-D{D}-Dv{Dv}-{d}", B=3, Hq=8, Hkv=2, Sq=1, Sk=2100, D=D, Dv=Dv, dtype=d, window=(700, 0),
         causal=True) for D, Dv, d in [(128, 64, "f64"), (96, 256, "f32"), (64, 128, "f16"), (256, 256, "f32")]]
    # several blocks of rows per kv head (row chunks): 12 rows of 8 + 4, float64 8 rows of 4 + 4
    + [A("decode-Sq3-G4-f16", B=2, Hq=8, Hkv=2, Sq=3, Sk=1500, D=128, dtype="f16", causal=True, window=(600, 0),
         key_lengths=[1500, 900])]
    + [A("decode-G8-f64", B=2, Hq=8, Hkv=1, Sq=1, Sk=1200, D=128, dtype="f64", key_lengths=[1200, 3])]
)


def _attn_inputs(rng, spec):
    s = spec
    q, k, v = qkv(rng, s["B"], s["Hq"], s["Hkv"], s["Sq"], s["Sk"], s["D"], s["Dv"], s["dtype"], s["scale_in"],
                  s["layout"])
    return q, k, v, _eval(s["kw"], rng)


@pytest.mark.parametrize("spec", ATTN_CASES)
def test_attention(rng, spec):
    need("attention")
    dtype = spec["dtype"]
    q, k, v, kw = _attn_inputs(rng, spec)
    out, lse = gpu_run(attnkit.attention, q, k, v, return_lse=True, **kw)
    c_out, c_lse = attnkit.attention(q, k, v, return_lse=True, **kw)
    r_out, r_lse = ref.attention(q, k, v, return_lse=True, **kw)
    n_out, n_lse = ref.attention(q, k, v, return_lse=True, _dtype=naive_dtype(dtype), **kw)
    assert out.dtype == dtype and lse.dtype == acc_dtype(dtype)
    close3(out, c_out, r_out, n_out, dtype)
    close3(lse, c_lse, r_lse, n_lse, lse.dtype, what="lse")


@pytest.mark.parametrize("rank", [2, 3])
def test_attention_lower_ranks(rng, rank):
    need("attention")
    shape_q = (40, 64) if rank == 2 else (4, 40, 64)
    shape_k = (50, 64) if rank == 2 else (2, 50, 64)
    q, k, v = randn(rng, shape_q, F32), randn(rng, shape_k, F32), randn(rng, shape_k[:-1] + (16,), F32)
    out, lse = gpu_run(attnkit.attention, q, k, v, causal=True, key_lengths=45, return_lse=True)
    c_out, c_lse = attnkit.attention(q, k, v, causal=True, key_lengths=45, return_lse=True)
    r_out, r_lse = ref.attention(q, k, v, causal=True, key_lengths=45, return_lse=True)
    n_out, n_lse = ref.attention(q, k, v, causal=True, key_lengths=45, return_lse=True, _dtype=np.float32)
    assert out.shape == shape_q[:-1] + (16,) and lse.shape == shape_q[:-1]
    close3(out, c_out, r_out, n_out, F32)
    close3(lse, c_lse, r_lse, n_lse, F32, what="lse")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_attention_fully_masked_rows_small(rng, dtype):
    """Rows that see no key give exactly 0 and LSE = -inf (causal Sq > Sk, an all-False mask row, a window
    beyond the keys, key_lengths = 0, a -inf bias row)."""
    need("attention")
    q, k, v = qkv(rng, 2, 2, 2, 40, 30, 64, 64, dtype)
    mask = np.ones((40, 30), bool)
    mask[17] = False
    bias = np.zeros((40, 30), np.float32)
    bias[3] = -np.inf
    for kw, rows in [(dict(causal=True), np.s_[:, :, :10]), (dict(mask=mask), np.s_[:, :, 17]),
                     (dict(window=(0, 0)), np.s_[:, :, :10]), (dict(key_lengths=[0, 30]), np.s_[0]),
                     (dict(bias=bias), np.s_[:, :, 3])]:
        out, lse = gpu_run(attnkit.attention, q, k, v, return_lse=True, _stream=False, **kw)
        c_out, c_lse = attnkit.attention(q, k, v, return_lse=True, **kw)
        assert (out[rows] == 0).all() and np.isneginf(lse[rows]).all(), kw
        r_out, r_lse = ref.attention(q, k, v, return_lse=True, **kw)
        n_out, n_lse = ref.attention(q, k, v, return_lse=True, _dtype=naive_dtype(dtype), **kw)
        close3(out, c_out, r_out, n_out, dtype)
        close3(lse, c_lse, r_lse, n_lse, lse.dtype, what="lse")


@pytest.mark.parametrize("shape", [(0, 2, 5, 5), (2, 0, 5, 5), (1, 2, 0, 5), (1, 2, 5, 0), (1, 2, 0, 0)],
                         ids=["B0", "H0", "Sq0", "Sk0", "S0"])
@pytest.mark.parametrize("fn", ["attention", "attention_weights"])
def test_attention_empty_small(rng, shape, fn):
    """Empty sizes: the CPU's result exactly (no keys: out = 0, lse = -inf; no rows: empty arrays)."""
    need(fn)
    B, H, Sq, Sk = shape
    q, k, v = randn(rng, (B, H, Sq, 32), F32), randn(rng, (B, H, Sk, 32), F32), randn(rng, (B, H, Sk, 16), F32)
    if fn == "attention":
        out, lse = gpu_run(attnkit.attention, q, k, v, causal=True, return_lse=True)
        c_out, c_lse = attnkit.attention(q, k, v, causal=True, return_lse=True)
        same(out, c_out)
        same(lse, c_lse, "lse")
    else:
        same(gpu_run(attnkit.attention_weights, q, k), attnkit.attention_weights(q, k))


EMPTY_CALLS = {  # (q, k, v, aux) -> result; aux holds the other arrays (features, projections, lam), made per test
    "merge_attention": lambda q, k, v, a: attnkit.merge_attention([q, q], [q[..., 0], q[..., 0]]),
    "block_sparse_attention": lambda q, k, v, a: attnkit.block_sparse_attention(
        q, k, v, layouts.sliding_window(q.shape[2], 4, 1), return_lse=True),
    "lsh_attention": lambda q, k, v, a: attnkit.lsh_attention(q, k, v, num_buckets=4, return_lse=True),
    "linear_attention": lambda q, k, v, a: attnkit.linear_attention(q, k, v, causal=False, return_state=True),
    "performer_attention": lambda q, k, v, a: attnkit.performer_attention(q, k, v, a["features"], causal=True),
    "linformer_attention": lambda q, k, v, a: attnkit.linformer_attention(q, k, v, a["E"], return_lse=True),
    "dynamic_linear_attention": lambda q, k, v, a: attnkit.dynamic_linear_attention(
        q, k, v, a["lam"], capacity=2, return_aux=True),
}


@pytest.mark.parametrize("B,H,S", [(0, 2, 8), (1, 0, 8), (1, 2, 0)], ids=["B0", "H0", "S0"])
@pytest.mark.parametrize("mechanism", list(EMPTY_CALLS))
def test_empty_small(rng, mechanism, B, H, S):
    """Empty sizes for the other mechanisms: the CPU backend's result, bit for bit."""
    need(mechanism)
    q, k, v = qkv(rng, B, H, H, S, S, 16, 8, F32)
    aux = {"features": attnkit.random_features(8, 16), "E": attnkit.linformer_projection(4, S),
           "lam": np.ones((B, H, S, 2), np.float32)}
    got, want = gpu_run(EMPTY_CALLS[mechanism], q, k, v, aux), EMPTY_CALLS[mechanism](q, k, v, aux)
    assert _result_bytes(got) == _result_bytes(want)
    for g, w in zip(_leaves(got), _leaves(want)):
        assert g.shape == w.shape and g.dtype == w.dtype


# ============================================================================== attention_weights
def _naive_weights(q, k, dtype, **kw):
    return ref.attention_weights(np.asarray(q).astype(naive_dtype(dtype)), np.asarray(k).astype(naive_dtype(dtype)),
                                 **kw)


WEIGHT_KW = {"plain": {}, "causal": {"causal": True}, "window": {"window": (3, 5)},
             "lens": {"key_lengths": "lens"}, "all": "all"}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("Sq,Sk", [(1, 1), (7, 33), (65, 65), (100, 17)])
@pytest.mark.parametrize("kind", list(WEIGHT_KW))
def test_attention_weights(rng, dtype, Sq, Sk, kind):
    need("attention_weights")
    B, Hq, Hkv = 2, 4, 2
    kw = WEIGHT_KW[kind]
    if kind == "lens":
        kw = dict(key_lengths=[min(5, Sk), 0])
    if kind == "all":
        kw = dict(mask=rng.random((Sq, Sk)) < 0.7, bias=randn(rng, (B, Hq, 1, Sk), np.float32),
                  alibi_slopes=rng.uniform(0, 0.3, Hq), softcap=4.0, causal=True)
    q, k = randn(rng, (B, Hq, Sq, 64), dtype), randn(rng, (B, Hkv, Sk, 64), dtype)
    w = gpu_run(attnkit.attention_weights, q, k, **kw)
    c = attnkit.attention_weights(q, k, **kw)
    r = ref.attention_weights(q, k, **kw)
    assert w.shape == (B, Hq, Sq, Sk) and w.dtype == dtype
    close3(w, c, r, _naive_weights(q, k, dtype, **kw), dtype, what="weights")


def test_attention_weights_small(rng):
    need("attention_weights")
    q, k = randn(rng, (1, 2, 5, 40), F32), randn(rng, (1, 1, 9, 40), F32)
    kw = dict(causal=True, mask=rng.random((5, 9)) < 0.7)
    close3(gpu_run(attnkit.attention_weights, q, k, **kw), attnkit.attention_weights(q, k, **kw),
           ref.attention_weights(q, k, **kw), _naive_weights(q, k, F32, **kw), F32, what="weights")


# ============================================================================== merge_attention
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("splits", [[0, 100], [0, 30, 100], [0, 1, 2, 50, 99, 100], [0, 64, 64, 100]],
                         ids=["one", "two", "many", "empty-part"])
@pytest.mark.parametrize("causal", [False, True])
def test_merge_attention(rng, dtype, splits, causal):
    need("merge_attention")
    q, k, v = randn(rng, (2, 4, 40, 64), dtype), randn(rng, (2, 2, 100, 64), dtype), randn(rng, (2, 2, 100, 48), dtype)
    outs, lses = [], []
    for a, b in zip(splits[:-1], splits[1:]):  # parts from the CPU backend (some rows empty: -inf)
        mask = np.zeros((1, 1, 40, 100), bool)
        mask[..., a:b] = True
        o, l = attnkit.attention(q, k, v, causal=causal, mask=mask, return_lse=True)
        outs.append(o)
        lses.append(l)
    out, lse = gpu_run(attnkit.merge_attention, outs, lses)
    c_out, c_lse = attnkit.merge_attention(outs, lses)
    r_out, r_lse = ref.merge_attention(outs, lses)
    n_out, n_lse = ref.merge_attention([o.astype(naive_dtype(dtype)) for o in outs], lses)
    close3(out, c_out, r_out, n_out, dtype)
    close3(lse, c_lse, r_lse, n_lse, lse.dtype, what="lse")


def test_merge_attention_small(rng):
    """Strided parts, a part that is -inf everywhere, rank 3."""
    need("merge_attention")
    o = randn(rng, (3, 6, 8, 16), F32)[:, ::2]  # non-contiguous
    l1, l2 = randn(rng, (3, 3, 8), F32), np.full((3, 3, 8), -np.inf, np.float32)
    l2[0, 0, 0] = 0.5
    outs, lses = [o, o * 2, o[..., ::-1]], [l1, l2, l1]
    out, lse = gpu_run(attnkit.merge_attention, outs, lses)
    c_out, c_lse = attnkit.merge_attention(outs, lses)
    r_out, r_lse = ref.merge_attention(outs, lses)
    close3(out, c_out, r_out, r_out, F32)
    close3(lse, c_lse, r_lse, r_lse, F32, what="lse")


# ============================================================================== block-sparse attention
LAYOUTS = {
    "window": lambda S, b, H: layouts.sliding_window(S, b, 1),
    "window_causal": lambda S, b, H: layouts.sliding_window(S, b, 2, causal=True),
    "longformer": lambda S, b, H: layouts.longformer(S, b, 1, global_tokens=[0, S // 2], dilation=2),
    "bigbird": lambda S, b, H: layouts.bigbird(S, b, seed=3, window_blocks=1, global_blocks=1, random_blocks=2),
    "fixed": lambda S, b, H: layouts.fixed(S, b, local_blocks=2, global_blocks=1),
    "bigbird_per_head": lambda S, b, H: layouts.bigbird(S, b, seed=5, num_heads=H),
    "window_per_head": lambda S, b, H: layouts.sliding_window(S, b, 1, num_heads=H),
    "union": lambda S, b, H: layouts.sliding_window(S, b, 1) | layouts.bigbird(S, b, seed=1, random_blocks=1),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("S,block,D", [(100, 16, 64), (257, 32, 128), (64, 64, 72)])
def test_block_sparse_attention(rng, dtype, name, S, block, D):
    need("block_sparse_attention")
    Hq, Hkv = 4, 2
    layout = LAYOUTS[name](S, block, Hq)
    q, k, v = qkv(rng, 2, Hq, Hkv, S, S, D, D, dtype)
    kw = dict(key_lengths=[S, S - 7]) if name in ("window", "bigbird_per_head") else {}
    kw["causal"] = name in ("longformer", "window_per_head")
    out, lse = gpu_run(attnkit.block_sparse_attention, q, k, v, layout, return_lse=True, **kw)
    c_out, c_lse = attnkit.block_sparse_attention(q, k, v, layout, return_lse=True, **kw)
    r_out, r_lse = ref.block_sparse_attention(q, k, v, layout, return_lse=True, **kw)
    n_out, n_lse = ref.block_sparse_attention(q, k, v, layout, return_lse=True, _dtype=naive_dtype(dtype), **kw)
    close3(out, c_out, r_out, n_out, dtype)
    close3(lse, c_lse, r_lse, n_lse, lse.dtype, what="lse")


@pytest.mark.parametrize("layout_kind", ["shared", "per_head"])
def test_block_sparse_attention_small(rng, layout_kind):
    need("block_sparse_attention")
    S = 20
    layout = layouts.sliding_window(S, 8, 1, num_heads=2 if layout_kind == "per_head" else 1)
    q, k, v = qkv(rng, 1, 2, 1, S, S, 32, 16, F32, layout="strided")
    out, lse = gpu_run(attnkit.block_sparse_attention, q, k, v, layout, return_lse=True, causal=True)
    c_out, c_lse = attnkit.block_sparse_attention(q, k, v, layout, return_lse=True, causal=True)
    r_out, r_lse = ref.block_sparse_attention(q, k, v, layout, return_lse=True, causal=True)
    n_out, n_lse = ref.block_sparse_attention(q, k, v, layout, return_lse=True, causal=True, _dtype=np.float32)
    close3(out, c_out, r_out, n_out, F32)
    close3(lse, c_lse, r_lse, n_lse, F32, what="lse")


# ============================================================================== LSH
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(2, 4, 97, 32), (3, 130, 64), (7, 72), (1, 1, 1, 8), (1, 2, 0, 16)],
                         ids=["4d", "3d", "2d-small", "one-small", "empty-small"])
@pytest.mark.parametrize("nb,nh", [(2, 1), (16, 3)])
def test_lsh_buckets(rng, dtype, shape, nb, nh):
    need("lsh_buckets")
    x = randn(rng, shape, dtype)
    b = gpu_run(attnkit.lsh_buckets, x, num_buckets=nb, num_hashes=nh, seed=4)
    same(b, attnkit.lsh_buckets(x, num_buckets=nb, num_hashes=nh, seed=4), "buckets")
    np.testing.assert_array_equal(b, ref.lsh_buckets(x, num_buckets=nb, num_hashes=nh, seed=4))


def test_lsh_buckets_strided(rng):
    need("lsh_buckets")
    x = randn(rng, (2, 50, 3, 40), F32).transpose(0, 2, 1, 3)
    b = gpu_run(attnkit.lsh_buckets, x, num_buckets=8, num_hashes=2)
    same(b, attnkit.lsh_buckets(x, num_buckets=8, num_hashes=2), "buckets")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("nb,nh,Sq,Sk", [(2, 1, 97, 97), (4, 2, 64, 130), (16, 3, 257, 257), (4, 2, 9, 9)],
                         ids=["nb2", "nb4-cross", "nb16", "small"])
def test_lsh_attention(rng, dtype, causal, nb, nh, Sq, Sk):
    need("lsh_attention")
    q, k, v = qkv(rng, 2, 4, 2, Sq, Sk, 32, 24, dtype)
    kw = dict(num_buckets=nb, num_hashes=nh, seed=9, causal=causal)
    out, lse = gpu_run(attnkit.lsh_attention, q, k, v, return_lse=True, **kw)
    c_out, c_lse = attnkit.lsh_attention(q, k, v, return_lse=True, **kw)
    r_out, r_lse = ref.lsh_attention(q, k, v, return_lse=True, **kw)
    n_out, n_lse = ref.lsh_attention(q, k, v, return_lse=True, _dtype=naive_dtype(dtype), **kw)
    close3(out, c_out, r_out, n_out, dtype)
    close3(lse, c_lse, r_lse, n_lse, lse.dtype, what="lse")


# ============================================================================== linear attention
LIN_CASES = [
    # id, B, Hq, Hkv, S, Sk, D, Dv, kwargs
    ("small-causal", 1, 2, 1, 9, 9, 16, 8, dict(causal=True)),
    ("small-bidir", 1, 2, 2, 7, 11, 16, 8, dict(causal=False)),
    ("elu1-causal", 2, 4, 2, 100, 100, 32, 24, dict(feature_map="elu1", causal=True)),
    ("relu-causal", 2, 4, 4, 257, 257, 64, 64, dict(feature_map="relu", causal=True)),
    ("identity-causal", 2, 2, 2, 130, 130, 64, 32, dict(feature_map="identity", normalize=False, causal=True)),
    ("elu1-bidir", 2, 4, 2, 100, 77, 32, 24, dict(feature_map="elu1", causal=False)),
    ("relu-bidir-D128", 1, 4, 1, 65, 200, 128, 128, dict(feature_map="relu", causal=False)),
    ("identity-bidir", 1, 2, 2, 33, 33, 80, 96, dict(feature_map="identity", normalize=False, causal=False)),
    ("lens-causal", 3, 2, 2, 60, 60, 32, 16, dict(causal=True, key_lengths=[60, 0, 17])),
    ("lens-bidir", 3, 2, 2, 40, 60, 32, 16, dict(causal=False, key_lengths=[60, 0, 17])),
    ("state-causal", 2, 4, 2, 50, 50, 32, 24, dict(causal=True, initial_state="s", return_state=True)),
    ("state-bidir", 2, 2, 1, 30, 45, 16, 12, dict(causal=False, initial_state="s", return_state=True)),
    ("state-out-only", 2, 2, 2, 64, 64, 72, 40, dict(causal=True, return_state=True)),
    ("decode-step", 2, 8, 2, 1, 1, 64, 64, dict(causal=True, initial_state="s", return_state=True)),
    ("strided", 2, 4, 2, 37, 37, 32, 32, dict(causal=True, layout="strided")),
    ("empty-small", 1, 2, 2, 0, 0, 16, 8, dict(causal=True, return_state=True)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", LIN_CASES, ids=[c[0] for c in LIN_CASES])
def test_linear_attention(rng, dtype, case):
    need("linear_attention")
    _, B, Hq, Hkv, S, Sk, D, Dv, kw = case
    kw = dict(kw)
    layout = kw.pop("layout", "contig")
    q, k, v = qkv(rng, B, Hq, Hkv, S, Sk, D, Dv, dtype, 0.5, layout)
    sd = acc_dtype(dtype)
    if kw.get("initial_state") == "s":
        kw["initial_state"] = (np.abs(randn(rng, (B, Hkv, D, Dv), sd)), np.abs(randn(rng, (B, Hkv, D), sd)))
    res = gpu_run(attnkit.linear_attention, q, k, v, **kw)
    cres = attnkit.linear_attention(q, k, v, **kw)
    if S == 0:
        same(res[0], cres[0])
        same(res[1][0], cres[1][0], "S")
        same(res[1][1], cres[1][1], "z")
        return
    r = ref.linear_attention(q, k, v, **kw)
    n = ref.linear_attention(q, k, v, _dtype=naive_dtype(dtype), **kw)
    if kw.get("return_state"):
        (out, (s, z)), (c_out, (cs, cz)), (r, (rs, rz)), (n, (ns, nz)) = res, cres, r, n
        assert s.dtype == sd and z.dtype == sd
        close3(s, cs, rs, ns, sd, what="state S", atol_scale=magnitude(rs))
        close3(z, cz, rz, nz, sd, what="state z", atol_scale=magnitude(rz))
    else:
        out, c_out = res, cres
    assert out.dtype == dtype
    close3(out, c_out, r, n, dtype, atol_scale=1.0 if kw.get("normalize", True) else magnitude(r))


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_linear_attention_streaming(rng, dtype):
    """Causal with state in/out on the device: prefill + chunks + token-by-token decode == one call."""
    need("linear_attention")
    q, k, v = qkv(rng, 2, 4, 2, 70, 70, 32, 16, dtype)
    full, (s_full, z_full) = gpu_run(attnkit.linear_attention, q, k, v, return_state=True)
    dq, dk, dv = dev(q), dev(k), dev(v)
    state, outs = None, []
    for a, b in [(0, 40), (40, 41), (41, 42), (42, 70)]:
        o, state = attnkit.linear_attention(dq[:, :, a:b], dk[:, :, a:b], dv[:, :, a:b], initial_state=state,
                                            return_state=True)
        outs.append(host(o))
    tol = 1e-5 if dtype == F32 else 1e-12
    np.testing.assert_allclose(np.concatenate(outs, axis=2), full, rtol=tol, atol=tol)
    np.testing.assert_allclose(host(state[0]), s_full, rtol=tol, atol=tol * 10)
    np.testing.assert_allclose(host(state[1]), z_full, rtol=tol, atol=tol * 10)


# ============================================================================== Performer
PERF_CASES = [
    # id, B, Hq, Hkv, S, Sk, D, Dv, m, kwargs
    ("small", 1, 2, 1, 9, 9, 16, 8, 8, dict(causal=True)),
    ("softmax-bidir", 2, 4, 2, 100, 77, 32, 24, 64, dict(causal=False)),
    ("softmax-causal", 2, 4, 2, 130, 130, 64, 64, 128, dict(causal=True)),
    ("relu-causal", 2, 2, 2, 65, 65, 80, 40, 40, dict(kernel="relu", causal=True)),
    ("relu-bidir-D128", 1, 4, 1, 33, 200, 128, 128, 256, dict(kernel="relu", causal=False)),
    ("lens", 3, 2, 2, 50, 50, 32, 16, 32, dict(causal=False, key_lengths=[50, 0, 21])),
    ("lens-causal-scale", 3, 2, 2, 50, 50, 32, 16, 33, dict(causal=True, key_lengths=[50, 0, 21], scale=0.1)),
    ("strided", 2, 4, 2, 37, 37, 32, 32, 48, dict(causal=True, layout="strided")),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", PERF_CASES, ids=[c[0] for c in PERF_CASES])
def test_performer_attention(rng, dtype, case):
    need("performer_attention")
    _, B, Hq, Hkv, S, Sk, D, Dv, m, kw = case
    kw = dict(kw)
    layout = kw.pop("layout", "contig")
    q, k, v = qkv(rng, B, Hq, Hkv, S, Sk, D, Dv, dtype, 0.5, layout)
    w = attnkit.random_features(m, D, seed=m, dtype=acc_dtype(dtype))
    out = gpu_run(attnkit.performer_attention, q, k, v, w, **kw)
    c_out = attnkit.performer_attention(q, k, v, w, **kw)
    r = ref.performer_attention(q, k, v, w, **kw)
    n = ref.performer_attention(q, k, v, w, _dtype=naive_dtype(dtype), **kw)
    assert out.dtype == dtype
    close3(out, c_out, r, n, dtype)


def test_random_features_on_device(rng):
    """random_features' output, uploaded, is usable on the device (and is the same matrix as on the host)."""
    need("performer_attention")
    q, k, v = qkv(rng, 1, 2, 2, 20, 20, 16, 16, F32)
    w = attnkit.random_features(32, 16, seed=1)
    close3(gpu_run(attnkit.performer_attention, q, k, v, w, causal=True),
           attnkit.performer_attention(q, k, v, w, causal=True), ref.performer_attention(q, k, v, w, causal=True),
           ref.performer_attention(q, k, v, w, causal=True, _dtype=np.float32), F32)


# ============================================================================== Linformer
LF_CASES = [
    # id, B, Hq, Hkv, Sq, Sk, D, Dv, P, E kind, F kind, kwargs
    ("small", 1, 2, 1, 7, 9, 16, 8, 4, "shared", "none", {}),
    ("shared", 2, 4, 2, 33, 100, 32, 24, 16, "shared", "none", {}),
    ("per-head-E-F", 2, 6, 3, 40, 130, 64, 64, 32, "per_head", "per_head", {}),
    ("F-shared", 2, 4, 4, 90, 20, 128, 64, 70, "shared", "shared", dict(scale=0.3)),
    ("lens", 3, 2, 2, 50, 60, 40, 16, 12, "per_head", "none", dict(key_lengths=[60, 0, 17])),
    ("strided", 2, 4, 2, 37, 50, 32, 32, 8, "shared", "none", dict(layout="strided")),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", LF_CASES, ids=[c[0] for c in LF_CASES])
def test_linformer_attention(rng, dtype, case):
    need("linformer_attention")
    _, B, Hq, Hkv, Sq, Sk, D, Dv, P, ek, fk, kw = case
    kw = dict(kw)
    layout = kw.pop("layout", "contig")
    q, k, v = qkv(rng, B, Hq, Hkv, Sq, Sk, D, Dv, dtype, 1.0, layout)
    pd = acc_dtype(dtype)
    E = attnkit.linformer_projection(P, Sk, seed=1, num_heads=Hkv if ek == "per_head" else None, dtype=pd)
    F = None if fk == "none" else attnkit.linformer_projection(P, Sk, seed=2, num_heads=Hkv if fk == "per_head"
                                                               else None, dtype=pd)
    out, lse = gpu_run(attnkit.linformer_attention, q, k, v, E, F, return_lse=True, **kw)
    c_out, c_lse = attnkit.linformer_attention(q, k, v, E, F, return_lse=True, **kw)
    r, rl = ref.linformer_attention(q, k, v, E, F, return_lse=True, **kw)
    n, nl = ref.linformer_attention(q, k, v, E, F, return_lse=True, _dtype=naive_dtype(dtype),
                                    _proj_dtype=dtype if np.dtype(dtype).itemsize == 2 else None, **kw)
    close3(out, c_out, r, n, dtype, atol_scale=magnitude(r))
    close3(lse, c_lse, rl, nl, lse.dtype, what="lse", atol_scale=magnitude(rl))


# ============================================================================== DLA
def _piecewise(rng, B, H, T, Dk, Dv, dtype, lo=2, hi=10, noise=0.05):
    """k, v in blocks of lo..hi tokens sharing a direction: scores stay far from tau (see test_dla.py)."""
    k, v = np.empty((B, H, T, Dk)), np.empty((B, H, T, Dv))
    for b in range(B):
        for h in range(H):
            t = 0
            while t < T:
                e = min(T, t + int(rng.integers(lo, hi + 1)))
                kd, vd = rng.standard_normal(Dk), rng.standard_normal(Dv)
                k[b, h, t:e] = kd * np.sqrt(Dk) / np.linalg.norm(kd) + noise * rng.standard_normal((e - t, Dk))
                v[b, h, t:e] = vd * np.sqrt(Dv) / np.linalg.norm(vd) + noise * rng.standard_normal((e - t, Dv))
                t = e
    return (k / np.sqrt(Dk)).astype(dtype), v.astype(dtype)


def _dla_problem(rng, B, H, T, Dk, Dv, C, dtype, decay):
    if np.dtype(dtype) == F64:  # any data in float64
        k, v = randn(rng, (B, H, T, Dk), dtype, 1 / np.sqrt(Dk)), randn(rng, (B, H, T, Dv), dtype)
    else:
        k, v = _piecewise(rng, B, H, T, Dk, Dv, dtype)
    q = randn(rng, (B, H, T, Dk), dtype, 1 / np.sqrt(Dk))
    lam = (rng.random((B, H, T, C)) * 2 / C).astype(dtype)
    g = None if decay is None else -rng.random((B, H, T)) * 0.5
    return q, k, v, lam, g


def _scaled(x, r):
    s = max(1.0, float(np.abs(np.asarray(r, np.float64)).max(initial=0)))
    return np.asarray(x, np.float64) / s


def _dla_compare(res, cres, rres, nres, dtype):
    """GPU (y, cache, aux) vs CPU and oracle: decisions exactly, y and states by the tolerance rule scaled to
    O(1) (as test_dla.py), scores and info within the CPU's distance from the oracle plus a little."""
    (y, c, a), (cy, cc, ca), (ry, rc, ra), (ny, nc, na) = res, cres, rres, nres
    sdt = acc_dtype(dtype)
    for name in ("boundaries", "merged"):
        same(getattr(a, name), getattr(ca, name), name)
    # against the oracle only where the CPU agrees with it (else the data sits too close to tau for this dtype)
    if np.array_equal(ca.boundaries, ra.boundaries) and np.array_equal(ca.merged, ra.merged):
        np.testing.assert_array_equal(a.boundaries, ra.boundaries)
    else:
        return
    for name in ("counts", "starts", "size"):
        same(getattr(c, name), getattr(cc, name), f"cache.{name}")
    assert c.position == cc.position
    close3(_scaled(y, ry), _scaled(cy, ry), _scaled(ry, ry), _scaled(ny, ry), dtype, what="y")
    close3(_scaled(c.states, rc.states), _scaled(cc.states, rc.states), _scaled(rc.states, rc.states),
           _scaled(nc.states, rc.states), sdt, what="cache.states")
    for what, g, cpu, r in (("scores", a.scores, ca.scores, ra.scores), ("info", c.info, cc.info, rc.info)):
        g, cpu, r = to_f64(g), to_f64(cpu), to_f64(r)
        tol = 2 * np.abs(cpu - r).max(initial=0) + (1e-5 if sdt == F32 else 1e-9) * max(1.0, np.abs(r).max(initial=0))
        assert np.abs(g - cpu).max(initial=0) <= tol, f"{what}: GPU vs CPU beyond {tol:.3g}"


DLA_CASES = [
    # id, B, H, T, Dk, Dv, C, score, decay, tau
    ("small", 1, 2, 9, 8, 8, 3, "token_vs_state", None, 0.6),
    ("tvs", 2, 2, 45, 16, 8, 4, "token_vs_state", None, 0.6),
    ("tvs-decay", 2, 2, 60, 32, 32, 5, "token_vs_state", "rand", 0.6),
    ("drift", 2, 2, 45, 16, 8, 4, "state_drift", None, 0.6),
    ("wide", 1, 2, 37, 64, 64, 6, "token_vs_state", "rand", 0.6),
    ("odd", 1, 3, 41, 13, 7, 2, "token_vs_state", None, 0.6),
    ("cap1", 1, 2, 30, 16, 16, 1, "token_vs_state", None, 0.6),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", DLA_CASES, ids=[c[0] for c in DLA_CASES])
def test_dla_prefill(rng, dtype, case):
    need("dynamic_linear_attention")
    _, B, H, T, Dk, Dv, C, score, decay, tau = case
    q, k, v, lam, g = _dla_problem(rng, B, H, T, Dk, Dv, C, dtype, decay)
    kw = dict(capacity=C, tau=tau, log_decay=g, score=score, return_aux=True)
    res = gpu_run(attnkit.dynamic_linear_attention, q, k, v, lam, **kw)
    cres = attnkit.dynamic_linear_attention(q, k, v, lam, **kw)
    rres = ref.dynamic_linear_attention(q, k, v, lam, **kw)
    nres = ref.dynamic_linear_attention(q, k, v, lam, _dtype=np.float32, **kw) if dtype != F64 else rres
    _dla_compare(res, cres, rres, nres, np.dtype(dtype))


@pytest.mark.parametrize("dtype", [F32, F64, F16], ids=["f32", "f64", "f16"])
@pytest.mark.parametrize("decay", [None, "rand"])
def test_dla_prefill_then_decode(rng, dtype, decay):
    """A prefill, then a second prefill chunk and token-by-token decode (T = 1) from the device cache: each
    step against the CPU run on the CPU cache, and the whole against one oracle call over every token."""
    need("dynamic_linear_attention")
    B, H, T, Dk, Dv, C = 2, 2, 40, 16, 16, 4
    q, k, v, lam, g = _dla_problem(rng, B, H, T, Dk, Dv, C, dtype, decay)
    kw = dict(capacity=C, tau=0.6, score="token_vs_state", return_aux=True)
    dcache, ccache, ys = None, None, []
    for a, b in [(0, 20), (20, 30)] + [(t, t + 1) for t in range(30, T)]:
        part = lambda x: None if x is None else x[:, :, a:b]  # noqa: E731
        args = (part(q), part(k), part(v), part(lam))
        dargs = dev(args)
        res = attnkit.dynamic_linear_attention(*dargs, log_decay=dev(part(g)), cache=dcache, **kw)
        _check_on_device(res, 0)
        cres = attnkit.dynamic_linear_attention(*args, log_decay=part(g), cache=ccache, **kw)
        hres = host(res)
        for name in ("boundaries", "merged"):
            same(getattr(hres[2], name), getattr(cres[2], name), f"{name} at tokens {a}:{b}")
        for name in ("counts", "starts", "size"):
            same(getattr(hres[1], name), getattr(cres[1], name), f"cache.{name} at tokens {a}:{b}")
        tol = 1e-12 if dtype == F64 else 1e-4
        np.testing.assert_allclose(to_f64(hres[0]), to_f64(cres[0]), rtol=tol * 30, atol=tol * 30)
        np.testing.assert_allclose(hres[1].states, cres[1].states, rtol=tol, atol=tol)
        dcache, ccache = res[1], cres[1]
        ys.append(hres[0])
    ry, rc, _ = ref.dynamic_linear_attention(q, k, v, lam, log_decay=g, **kw)
    ny = ref.dynamic_linear_attention(q, k, v, lam, log_decay=g, _dtype=np.float32, **kw)[0] if dtype != F64 else ry
    y = np.concatenate(ys, axis=2)
    assert_close(_scaled(y, ry), _scaled(ry, ry), _scaled(ny, ry), dtype, what="y (decoded)", atol_scale=4.0)
    for name in ("counts", "starts", "size"):
        np.testing.assert_array_equal(getattr(host(dcache), name), getattr(rc, name), err_msg=name)


# ============================================================================== rope
ROPE_CASES = [
    # id, shape, kwargs
    ("small", (1, 2, 5, 8), {}),
    ("basic", (2, 3, 33, 64), {}),
    ("partial", (1, 2, 33, 64), dict(rotary_dim=32)),
    ("interleaved", (2, 4, 17, 128), dict(interleaved=True)),
    ("interleaved-partial", (1, 2, 40, 80), dict(interleaved=True, rotary_dim=40)),
    ("positions", (2, 2, 9, 32), dict(positions="p")),
    ("positions-2d", (2, 2, 9, 32), dict(positions="p2", base=500.0)),
    ("rank3", (3, 21, 96), {}),
    ("strided", (2, 3, 20, 64), dict(layout="strided")),
    ("empty-small", (1, 2, 0, 16), {}),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", ROPE_CASES, ids=[c[0] for c in ROPE_CASES])
def test_rope(rng, dtype, case):
    need("rope")
    _, shape, kw = case
    kw = dict(kw)
    if kw.pop("layout", None) == "strided":
        B, H, S, D = shape
        x = randn(rng, (B, S, H, D + 2), dtype)[..., :D].transpose(0, 2, 1, 3)
    else:
        x = randn(rng, shape, dtype)
    if kw.get("positions") == "p":
        kw["positions"] = rng.integers(0, 5000, shape[-2]).astype(np.int64)
    elif kw.get("positions") == "p2":
        kw["positions"] = rng.integers(0, 100, (shape[0], shape[-2])).astype(np.int32)
    out = gpu_run(attnkit.rope, x, **kw)
    c_out = attnkit.rope(x, **kw)
    assert out.shape == x.shape and out.dtype == x.dtype
    if x.size == 0:
        same(out, c_out)
        return
    close3(out, c_out, ref.rope(x, **kw), ref.rope(x, _dtype=naive_dtype(dtype), **kw), dtype)


# ============================================================================== multi-head attention
def _mha_params(rng, E, Hq, Hkv, D, dtype):
    s = 1 / np.sqrt(E)
    w = [randn(rng, (Hq * D, E), dtype, s), randn(rng, (Hkv * D, E), dtype, s), randn(rng, (Hkv * D, E), dtype, s),
         randn(rng, (E, Hq * D), dtype, 1 / np.sqrt(Hq * D))]
    return attnkit.MHAParams(*w, *(randn(rng, (x.shape[0],), dtype, 0.1) for x in w))


MHA_CASES = [
    ("exact", {}, False, "f16"),
    ("linear", {"feature_map": "elu1"}, True, "f16"),
    ("performer", {"num_features": 64, "seed": 2}, False, "f16"),
    ("exact", {}, False),
    ("exact", {"window": (3, 0), "softcap": 20.0}, True),
    ("block_sparse", {"layout": None}, False),
    ("lsh", {"num_buckets": 4, "num_hashes": 2, "seed": 5}, True),
    ("linear", {"feature_map": "elu1"}, True),
    ("linear", {"feature_map": "relu"}, False),
    ("performer", {"num_features": 64, "seed": 2}, False),
    ("linformer", {"proj_len": 8, "seed": 1}, False),
    ("dla", {"capacity": 3, "tau": 0.5}, True),
    # bfloat16: PyTorch tensors in (weights in MHAParams too), DeviceBF16 projections, PyTorch out
    ("exact", {}, True, "bf16"),
    ("linformer", {"proj_len": 8, "seed": 1}, False, "bf16"),
    ("dla", {"capacity": 3, "tau": 0.5}, True, "bf16"),
]


@pytest.mark.parametrize("mechanism,options,causal,dtype", [c if len(c) == 4 else c + ("f32",) for c in MHA_CASES],
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(MHA_CASES)])
def test_multi_head_attention(rng, mechanism, options, causal, dtype):
    """The layer over each mechanism: CuPy projections, then the mechanism's CUDA kernel."""
    dtype = DT[dtype]
    need(MHA_CORE[mechanism])
    B, S, E, H = 2, 13, 32, 4
    Hkv = H if mechanism == "dla" else 2
    P = _mha_params(rng, E, H, Hkv, E // H, dtype)
    x = randn(rng, (B, S, E), dtype)
    opts = dict(options)
    if "layout" in opts:
        opts["layout"] = layouts.bigbird(S, 4, window_blocks=1, global_blocks=1, random_blocks=1, seed=3, num_heads=H)
    kw = dict(num_heads=H, num_kv_heads=Hkv, causal=causal, mechanism=mechanism, **opts)
    out = gpu_run(attnkit.multi_head_attention, x, x, x, P, **kw)
    c_out = attnkit.multi_head_attention(x, x, x, P, **kw)
    r = ref.multi_head_attention(x, x, x, P, **kw)
    n = ref.multi_head_attention(x, x, x, P, _dtype=naive_dtype(dtype), **kw)
    assert out.dtype == dtype and out.shape == r.shape
    scale = magnitude(r) * (4 if np.dtype(dtype).itemsize == 2 else 1)
    # the GPU's projections (cuBLAS) round differently from NumPy's: the CPU comparison gets the same rule
    close3(out, c_out, r, n, dtype, atol_scale=scale)


def test_multi_head_attention_small(rng):
    need("attention")
    P = _mha_params(rng, 16, 2, 1, 8, F32)
    x, kv = randn(rng, (1, 5, 16), F32), randn(rng, (1, 7, 16), F32)
    kw = dict(num_heads=2, num_kv_heads=1, causal=True, key_lengths=[6])
    close3(gpu_run(attnkit.multi_head_attention, x, kv, kv, P, **kw), attnkit.multi_head_attention(x, kv, kv, P, **kw),
           ref.multi_head_attention(x, kv, kv, P, **kw),
           ref.multi_head_attention(x, kv, kv, P, _dtype=np.float32, **kw), F32, atol_scale=4.0)


# ============================================================================== bad input, devices
MIXED = [
    ("attention", lambda q, k, v: attnkit.attention(q, k, v), "k"),
    ("attention", lambda q, k, v: attnkit.attention(q, k, v, mask=np.ones((4, 4), bool)), "mask"),
    ("attention", lambda q, k, v: attnkit.attention(q, k, v, bias=np.zeros((4, 4), np.float32)), "bias"),
    ("attention", lambda q, k, v: attnkit.attention(q, k, v, key_lengths=np.array([3])), "key_lengths"),
    ("attention_weights", lambda q, k, v: attnkit.attention_weights(q, k), "k"),
    ("merge_attention", lambda q, k, v: attnkit.merge_attention([q, v], [q[..., 0], q[..., 0]]), "outs[1]"),
    ("linear_attention", lambda q, k, v: attnkit.linear_attention(q, k, v), "k"),
    ("performer_attention", lambda q, k, v: attnkit.performer_attention(
        q, q, q, attnkit.random_features(4, 8)), "features"),
    ("linformer_attention", lambda q, k, v: attnkit.linformer_attention(
        q, q, q, attnkit.linformer_projection(2, 4)), "E"),
    ("dynamic_linear_attention", lambda q, k, v: attnkit.dynamic_linear_attention(
        q, k, v, cupy.ones((1, 1, 4, 2), np.float32), capacity=2), "k"),
]


@pytest.mark.parametrize("fn,call,name", MIXED, ids=[f"{f}-{n}" for f, _, n in MIXED])
def test_mixed_numpy_cupy_rejected_small(fn, call, name):
    """A NumPy argument in a CuPy call: TypeError naming the argument (validation precedes dispatch, so this
    holds with or without a kernel)."""
    if FAKE:
        pytest.skip("needs CuPy")
    q = _tiny(1, 1, 4, 8)
    k = cupy.asnumpy(_tiny(1, 1, 4, 8)) if name == "k" else _tiny(1, 1, 4, 8)
    v = cupy.asnumpy(q) if name == "outs[1]" else _tiny(1, 1, 4, 8)
    raises(TypeError, name, call, q, k, v)


def test_numpy_first_then_cupy_rejected_small():
    if FAKE:
        pytest.skip("needs CuPy")
    q = np.zeros((1, 1, 4, 8), np.float32)
    raises(TypeError, "k", attnkit.attention, q, _tiny(1, 1, 4, 8), q)


@pytest.mark.skipif(FAKE or N_DEVICES < 2, reason="needs two GPUs")
def test_two_devices(rng):
    q, k, v = qkv(rng, 1, 2, 2, 16, 16, 32, 32, F32)
    with cupy.cuda.Device(1):
        k1 = cupy.asarray(k)
    raises(TypeError, "k", attnkit.attention, dev(q, 0), k1, dev(v, 0))
    need("attention")
    # a call on device 1 runs there and gives the device-0 bits
    out1 = gpu_run(attnkit.attention, q, k, v, causal=True, _device=1)
    out0 = gpu_run(attnkit.attention, q, k, v, causal=True, _device=0)
    same(out1, out0)


def test_bfloat16_status_small(rng):
    """bfloat16 reaches the CUDA backend as PyTorch tensors (DLPack, zero-copy) and comes back as PyTorch
    bfloat16 CUDA tensors with the CPU backend's values."""
    if FAKE or not HAVE_TORCH_CUDA:
        pytest.skip("needs PyTorch with CUDA")
    need("attention")
    q = randn(rng, (1, 2, 8, 32), BF16)
    t = _dev_array(q)
    out = attnkit.attention(t, t, t)
    assert _is_torch(out) and out.dtype == torch.bfloat16 and out.is_cuda
    assert tuple(out.shape) == q.shape
    close3(host(out), attnkit.attention(q, q, q), ref.attention(q, q, q),
           ref.attention(q, q, q, _dtype=naive_dtype(BF16)), BF16)
    assert host(t).view(np.uint16).tobytes() == q.view(np.uint16).tobytes()  # the input is untouched
