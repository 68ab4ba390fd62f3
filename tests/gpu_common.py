"""Shared helpers of the GPU suite (tests/test_gpu_*.py): every public array function on CuPy arrays through
the CUDA backend, against the float64 oracle (``attnkit.reference``, the tolerance rule of
conftest.assert_close) AND against the CPU backend on the same inputs, over grids like the CPU tests' (shapes
incl. odd sizes, head dims 32..256 and odd ones, every dtype, GQA/MQA, masking features, strides, empty
sizes, fully masked rows, bad input). One file per mechanism family: test_gpu_exact (attention,
attention_weights, merge_attention), test_gpu_sparse (block-sparse, LSH), test_gpu_linear (linear,
Performer, Linformer), test_gpu_dla, test_gpu_misc (rope, multi-head attention, bad input, devices),
test_gpu_backward (gradients).

Each file is skipped unless CuPy imports and a CUDA device is visible (``pytestmark = GPU_MARKS``; the
development machines have no GPU). A mechanism whose CUDA kernel is not enabled in this build
(``cuda/runtime.cu``'s lists) is reported as *skipped* with the core's reason, per (mechanism, case), never
as a failure.

Every GPU call (``gpu_run``) also checks: outputs are CuPy arrays on the inputs' device, inputs are left
untouched, two runs give the same bits, and a run on a non-default CuPy stream gives the same bits.

bfloat16: CuPy has no bfloat16 dtype, so bfloat16 device inputs are PyTorch tensors handed over through
DLPack (attnkit's DLPack adapter, zero-copy, carried inside attnkit as a DeviceBF16: a CuPy uint16 view),
and the results come back as PyTorch bfloat16 CUDA tensors. Without PyTorch with CUDA those cases are
skipped.

Sanitizer subset (tools/gpu_check.sh): ``-k small`` selects a few tiny cases of every mechanism (test names
or case ids containing "small"); ``ATTNKIT_GPU_TESTS_SANITIZER=1`` turns CuPy's memory pool off (exact
allocation bounds for memcheck) and the reruns.

Checking the test code itself without a GPU: ``ATTNKIT_GPU_TESTS_ON_CPU=1 pytest tests/test_gpu_*.py`` runs
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
from attnkit._tuning import tuning

from conftest import ATOL, BF16, DTYPE_IDS, DTYPES, _result_bytes, assert_close, magnitude, naive_dtype, randn, to_f64

FAKE = os.environ.get("ATTNKIT_GPU_TESTS_ON_CPU") == "1"  # NumPy stands in for CuPy: checks the test code

if FAKE:
    cupy = None
    N_DEVICES = 1
    GPU_MARKS = []
else:
    cupy = pytest.importorskip("cupy")
    try:
        N_DEVICES = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # pragma: no cover - no driver
        N_DEVICES = 0
    GPU_MARKS = [pytest.mark.skipif(N_DEVICES == 0 or not attnkit.info()["cuda_built"],
                                    reason="needs a CUDA device and a CUDA build of attnkit")]

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
    "attention_backward": lambda: attnkit.attention_backward(
        _tiny(1, 1, 4, 8), _tiny(1, 1, 4, 8), _tiny(1, 1, 4, 8), _tiny(1, 1, 4, 8), _tiny(1, 1, 4, 8),
        _tiny(1, 1, 4)),
    "block_sparse_attention_backward": lambda: attnkit.block_sparse_attention_backward(
        _tiny(1, 1, 8, 8), _tiny(1, 1, 8, 8), _tiny(1, 1, 8, 8), _tiny(1, 1, 8, 8), _tiny(1, 1, 8, 8),
        _tiny(1, 1, 8), layouts.sliding_window(8, 4, 1)),
    "linear_attention_backward": lambda: attnkit.linear_attention_backward(
        _tiny(1, 1, 4, 8), _tiny(1, 1, 4, 8), _tiny(1, 1, 4, 8), _tiny(1, 1, 4, 8)),
    "performer_attention_backward": lambda: attnkit.performer_attention_backward(
        _tiny(1, 1, 4, 8), _tiny(1, 1, 4, 8), _tiny(1, 1, 4, 8), _tiny(1, 1, 4, 8), _tiny(4, 8)),
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
def close3(gpu, cpu, r, n, dtype, what="out", atol_scale=1.0, exact_zero=None):
    """GPU result vs the oracle by the tolerance rule, and vs the CPU backend: the same non-finite entries,
    exact zeros where the CPU and the oracle have them (masked rows; ``exact_zero``, a boolean array, narrows
    that to the entries the contract makes zero, where others are zero only up to rounding), and a difference
    within the sum of both results' tolerances (4 * naive error + 2 * atol)."""
    dtype = np.dtype(dtype)
    assert np.asarray(gpu).dtype == np.asarray(cpu).dtype, (what, np.asarray(gpu).dtype, np.asarray(cpu).dtype)
    assert_close(gpu, r, n, dtype, what=f"{what} (GPU vs oracle)", atol_scale=atol_scale)
    g, c, r64 = to_f64(gpu), to_f64(cpu), to_f64(r)
    assert g.shape == c.shape, (what, g.shape, c.shape)
    fin = np.isfinite(c)
    assert np.array_equal(np.isfinite(g), fin), f"{what}: infinities differ from the CPU backend"
    assert np.array_equal(g[~fin], c[~fin]), f"{what}: infinite entries differ from the CPU backend"
    zero = (c == 0) & (r64 == 0)
    if exact_zero is not None:
        zero &= np.broadcast_to(exact_zero, zero.shape)
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


# ----------------------------------------------------------------------------------------- mask / bias makers
# Case specs carry these as functions of the case's rng, drawn when the case runs.
def random_mask(shape, p=0.6):
    """A boolean mask of the shape keeping each key with probability p."""
    return lambda rng: rng.random(shape) < p


def masked_rows_mask(B, Hq, Sq, Sk):
    """A mask that forbids every key of query head 1 (every batch) and keeps 70% elsewhere."""
    def f(rng):
        m = rng.random((B, Hq, Sq, Sk)) < 0.7
        m[:, 1] = False
        return m
    return f


def neg_inf_bias(B, Hq, Sq, Sk):
    """A float32 bias with -inf on every third key and on the whole of row (0, 0): fully masked rows."""
    def f(rng):
        b = randn(rng, (B, Hq, Sq, Sk), np.float32)
        b[:, :, :, ::3] = -np.inf
        b[0, 0] = -np.inf  # a fully masked row
        return b
    return f


# ----------------------------------------------------------------------------------------- decode suites
# test_gpu_decode.py (v2) and test_gpu_decode3.py (v3): the same case specs, inputs and three-way check, each
# call under the suite's kernel and variant (tuning options).
def decode_case(id_, B=2, Hq=8, Hkv=2, Sq=1, Sk=1000, D=128, Dv=None, dtype="f16", scale_in=1.0, **kw):
    """One case: (spec, id); kw are attention's keyword arguments (callables of the case's rng drawn when
    the case runs)."""
    spec = dict(B=B, Hq=Hq, Hkv=Hkv, Sq=Sq, Sk=Sk, D=D, Dv=D if Dv is None else Dv, dtype=DT[dtype],
                scale_in=scale_in, kw=kw)
    return spec, id_


def decode_params(cases, variants, tag):
    """pytest params (spec, variant): case n under variants[n % len(variants)], the variant in its id as
    f"{tag[0]}{variant[0]}{tag[1]}{variant[1]}"."""
    out = []
    for n, (spec, id_) in enumerate(cases):
        var = variants[n % len(variants)]
        out.append(pytest.param(spec, var, id=f"{id_}-{tag[0]}{var[0]}{tag[1]}{var[1]}"))
    return out


def decode_inputs(rng, spec):
    s = spec
    q, k, v = qkv(rng, s["B"], s["Hq"], s["Hkv"], s["Sq"], s["Sk"], s["D"], s["Dv"], s["dtype"], s["scale_in"])
    return q, k, v, _eval(s["kw"], rng)


def decode_check(q, k, v, kw, dtype, **tune):
    """attention with return_lse on the device under tuning(**tune), against the CPU backend and the oracle;
    returns the device's (out, lse) as host arrays."""
    with tuning(**tune):
        out, lse = gpu_run(attnkit.attention, q, k, v, return_lse=True, **kw)
    c_out, c_lse = attnkit.attention(q, k, v, return_lse=True, **kw)
    r_out, r_lse = ref.attention(q, k, v, return_lse=True, **kw)
    n_out, n_lse = ref.attention(q, k, v, return_lse=True, _dtype=naive_dtype(dtype), **kw)
    assert out.dtype == dtype and lse.dtype == acc_dtype(dtype)
    close3(out, c_out, r_out, n_out, dtype)
    # float32 LSE far from unit size (scale=10: ~315) carries an ulp or two per split merge: atol in units of it
    close3(lse, c_lse, r_lse, n_lse, lse.dtype, what="lse", atol_scale=magnitude(r_lse))
    return out, lse


def decode_strided_inputs(rng, dtype):
    """Non-contiguous K / V a decode kernel still takes (16-byte aligned rows): K padded by 8 elements per
    row, V broadcast over the batch (zero stride), q head-transposed; B=2, Hq=8, Hkv=2, Sk=1203, D=128."""
    B, Hq, Hkv, Sk, D = 2, 8, 2, 1203, 128
    q = randn(rng, (B, 1, Hq, D), dtype).transpose(0, 2, 1, 3)
    k = randn(rng, (B, Hkv, Sk, D + 8), dtype)[..., :D]
    v = np.broadcast_to(randn(rng, (1, Hkv, Sk, D), dtype), (B, Hkv, Sk, D))
    return q, k, v


# ----------------------------------------------------------------------------------------- shared checks
def same_nonfinite_close(got, want, what="out", atol=0.0, rtol=0.0):
    """The device result against the CPU backend's where both may hold NaN / Inf: the same NaN and infinite
    entries (signs included), the finite ones within atol + rtol * |want|."""
    got, want = to_f64(got), to_f64(want)
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"{what}: NaN entries differ from the CPU backend"
    assert np.array_equal(np.isinf(got), np.isinf(want)), f"{what}: infinite entries differ from the CPU backend"
    inf = np.isinf(want)
    assert np.array_equal(got[inf], want[inf]), f"{what}: signs of the infinite entries differ"
    fin = np.isfinite(want)
    np.testing.assert_allclose(got[fin], want[fin], rtol=rtol, atol=atol, err_msg=what)


_PERFORMER_SCRIPT = """
import sys
import cupy, numpy as np, attnkit
d = np.load(sys.argv[1], allow_pickle=True)
res = {}
for name in d["names"]:
    kw = d[name + ":kw"].item()
    args = [cupy.asarray(d[name + ":" + x]) for x in "qkvw"]
    res[name] = cupy.asnumpy(attnkit.performer_attention(*args, **kw))
res["enabled"] = np.array(attnkit._core.cuda_has_kernel(sys.argv[3]))
np.savez(sys.argv[2], **res)
"""


def performer_in_subprocess(rng, tmp_path, cases, env, gate):
    """performer_attention on float16 CuPy arrays in a fresh process with the environment variables env (the
    CUDA tuning is read once per process) and ATTNKIT_CUDA_UNVERIFIED=1, for each case name -> (B, Hq, Hkv, S,
    Sk, D, Dv, m, kwargs), against the CPU backend and the oracle; prints whether the internal name gate was
    enabled there."""
    import subprocess
    import sys

    arrays, data = {"names": np.array(list(cases))}, {}
    for name, (B, Hq, Hkv, S, Sk, D, Dv, m, kw) in cases.items():
        q, k, v = qkv(rng, B, Hq, Hkv, S, Sk, D, Dv, F16, 0.5)
        w = attnkit.random_features(m, D, seed=m, dtype=F32)
        data[name] = (q, k, v, w, kw)
        arrays.update({name + ":q": q, name + ":k": k, name + ":v": v, name + ":w": w,
                       name + ":kw": np.array(kw, dtype=object)})
    np.savez(tmp_path / "in.npz", **arrays)
    r = subprocess.run([sys.executable, "-c", _PERFORMER_SCRIPT, str(tmp_path / "in.npz"), str(tmp_path / "out.npz"),
                        gate], env=dict(os.environ, ATTNKIT_CUDA_UNVERIFIED="1", **env), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    print(f"{env}: {gate} enabled: {bool(got['enabled'])}")
    for name, (q, k, v, w, kw) in data.items():
        close3(got[name], attnkit.performer_attention(q, k, v, w, **kw), ref.performer_attention(q, k, v, w, **kw),
               ref.performer_attention(q, k, v, w, _dtype=naive_dtype(F16), **kw), F16, what=name)
