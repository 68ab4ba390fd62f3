"""GPU suite, the rest: rope, multi-head attention, mixed NumPy / CuPy inputs, two devices, bfloat16
status. Helpers and conventions: gpu_common.py."""

from __future__ import annotations

import numpy as np
import pytest

import attnkit
from attnkit import layouts
from attnkit import reference as ref

from conftest import BF16, DTYPE_IDS, DTYPES, magnitude, naive_dtype, raises, randn
from gpu_common import (DT, F16, F32, FAKE, GPU_MARKS, HAVE_TORCH_CUDA, MHA_CORE, N_DEVICES, close3, cupy, dev,
                        _dev_array, gpu_run, host, _is_torch, need, qkv, same, _tiny, torch)
from test_mha import MECH_CASES, make_params

pytestmark = GPU_MARKS


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
MHA_CASES = [
    ("exact", {}, False, "f16"),
    ("linear", {"feature_map": "elu1"}, True, "f16"),
    ("performer", {"num_features": 64, "seed": 2}, False, "f16"),
    *MECH_CASES,  # float32: the CPU suite's cases
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
    P = make_params(rng, E, H, Hkv, E // H, dtype=dtype)
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
    P = make_params(rng, 16, 2, 1, 8, dtype=F32)
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


def test_cupy_fast_path_refs_small(monkeypatch):
    """CuPy arrays take the adapter's fast path (their attributes, not __cuda_array_interface__) and get
    exactly the TensorRef the interface path gives, for every kind of view; outputs too."""
    if FAKE:
        pytest.skip("needs CuPy")
    from attnkit import _array

    base = cupy.arange(2 * 3 * 5 * 8, dtype=cupy.float32).reshape(2, 3, 5, 8)
    views = [base, base.transpose(0, 2, 1, 3), base[:, 1:, ::2, 1:7], base[::-1, :, ::-1], base[:, :, -1:],
             base[:, None, 0], base[:, :, :0], base[:, ::2, :0, ::3], cupy.ones((), cupy.float32),
             cupy.ones((1, 2, 1, 3), cupy.float64)[:, :, :, ::2], base.astype(cupy.float16).T, base > 100,
             base.astype(cupy.int32)[1], cupy.arange(7, dtype=cupy.int64)[::2]]

    def fields(r):
        return r.data, r.dtype, r.ndim, r.shape, r.strides, r.device, r.device_index

    for x in views:
        want = _array.Call()._cuda_tensor(x, "q")
        call = _array.Call()
        assert fields(call._cupy_tensor(x, "q", _array._CODES.get(x.dtype))) == fields(want), (x.shape, x.strides)
        assert call.cuda is True and call.device_index == x.device.id
    # bfloat16 bits (DeviceBF16 over a CuPy uint16 array, as PyTorch bfloat16 tensors arrive): the same refs
    bf_views = [_array.DeviceBF16(base.astype(cupy.uint16)), _array.DeviceBF16(base.astype(cupy.uint16))[:, 1:, ::2]]
    for x in bf_views:
        assert fields(_array.Call().tensor(x, "q")) == fields(_array.Call()._cuda_tensor(x, "q")), x
    views += bf_views
    # Call.tensor takes the fast path for every one of them, and for the outputs it allocates
    generic = _array.Call._cuda_tensor
    monkeypatch.setattr(_array.Call, "_cuda_tensor", lambda *a: pytest.fail("the generic path was taken"))
    call = _array.Call()
    for x in views:
        call.tensor(x, "q")
    out, ref = call.empty((2, 3), np.float32, "out")
    assert type(out) is cupy.ndarray and out.device.id == call.device_index == base.device.id
    assert fields(ref) == (out.data.ptr, 0, 2, [2, 3], [3, 1], 1, base.device.id)
    need("attention")
    q, k = base[:1, :2, -1:], base[:1, :2]  # a decode step's views
    got = [host(a) for a in attnkit.attention(q, k, k, return_lse=True)]
    monkeypatch.setattr(_array.Call, "_cuda_tensor", generic)  # now everything through the interface
    monkeypatch.setattr(_array, "_cupy_ndarray", lambda: None)
    want = [host(a) for a in attnkit.attention(q, k, k, return_lse=True)]
    same(got[0], want[0], "out")
    same(got[1], want[1], "lse")
    # Call.outputs' own CuPy path (cupy.empty and the header reader, without Call.tensor's dispatch; session
    # 27): the refs the interface path gives for the same arrays
    p = attnkit._core.AttentionParams()
    call = _array.Call()
    call.qkv(p, q, k, k)
    out, lse = call.outputs(p, attnkit._core.attention_outputs, "out", "lse")
    assert type(out) is cupy.ndarray and type(lse) is cupy.ndarray
    assert fields(p.out) == fields(_array.Call()._cuda_tensor(out, "out"))
    assert fields(p.lse) == fields(_array.Call()._cuda_tensor(lse, "lse"))


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


# ============================================================================== scratch memory
def test_scratch_pool_choice(rng):
    """Every CUDA kernel's scratch comes from attnkit's pool of the device (cuda/workspace.cuh) or, with the
    tuning option cuda_scratch = 1, from the device's default pool: the same bits either way (decoding with
    split partials, causal linear attention; each call also on a non-default stream, by gpu_run)."""
    from attnkit import _core
    from attnkit._tuning import tuning

    for bad in (-1, 2):
        raises(ValueError, "cuda_scratch", _core.set_tuning, "cuda_scratch", bad)
    need("attention", "linear_attention")
    q = randn(rng, (2, 8, 1, 128), F16)
    k, v = (randn(rng, (2, 2, 4096, 128), F16) for _ in range(2))
    lq, lk, lv = (randn(rng, (1, 2, 300, 32), F32) for _ in range(3))
    outs = {}
    for choice in (1, 0):
        with tuning(cuda_scratch=choice):
            outs[choice] = (gpu_run(attnkit.attention, q, k, v),
                            gpu_run(attnkit.linear_attention, lq, lk, lv, causal=True))
    for a, b, what in zip(outs[0], outs[1], ("decode", "linear")):
        same(a, b, what)


# ============================================================================== PyTorch CUDA tensors in and out
def test_bfloat16_torch_streams_small(rng):
    """PyTorch CUDA tensors are read directly (no DLPack capsule, no CuPy view) and attention runs on PyTorch's
    current stream (attnkit._torch), outputs from torch.empty: an input written on a non-default PyTorch stream
    (after a long sleep there) is read after that write and the output read back on that stream, whichever of
    PyTorch and CuPy is on a non-default stream (and with both on the same one); strided and requires_grad
    tensors are read in place; bfloat16 and float16 come back as PyTorch."""
    if FAKE or not HAVE_TORCH_CUDA:
        pytest.skip("needs PyTorch with CUDA")
    need("attention")
    q, k, v = (randn(rng, (2, 2, 64, 32), BF16) for _ in range(3))
    tq, tk, tv = (_dev_array(a) for a in (q, k, v))
    want = host(attnkit.attention(tq, tk, tv, causal=True))
    close3(want, attnkit.attention(q, k, v, causal=True), ref.attention(q, k, v, causal=True),
           ref.attention(q, k, v, causal=True, _dtype=naive_dtype(BF16)), BF16)

    def late_copy(src):  # src copied on PyTorch's current stream after ~50 ms of spinning there
        dst = torch.zeros_like(src)
        torch.cuda._sleep(100_000_000)
        return dst.copy_(src)

    s = torch.cuda.Stream()
    with torch.cuda.stream(s):  # PyTorch on s, CuPy on its default stream
        out = attnkit.attention(late_copy(tq), tk, tv, causal=True)
        assert _is_torch(out) and out.dtype == torch.bfloat16 and out.is_cuda
        got = host(out)
    assert got.view(np.uint16).tobytes() == want.view(np.uint16).tobytes()
    torch.cuda.synchronize()
    with cupy.cuda.Stream(non_blocking=True) as cs:  # CuPy on a stream of its own, PyTorch on its default
        got = host(attnkit.attention(late_copy(tq), tk, tv, causal=True))
        cs.synchronize()
    assert got.view(np.uint16).tobytes() == want.view(np.uint16).tobytes()
    with torch.cuda.stream(s), cupy.cuda.ExternalStream(s.cuda_stream):  # both on s: no event needed
        got = host(attnkit.attention(late_copy(tq), tk, tv, causal=True))
    assert got.view(np.uint16).tobytes() == want.view(np.uint16).tobytes()
    torch.cuda.synchronize()
    # strided views and requires_grad: zero-copy, same bits as contiguous copies
    wide = torch.zeros(2, 64, 2, 48, dtype=torch.bfloat16, device="cuda")
    wide[..., 8:40] = tq.transpose(1, 2)
    qs = wide[..., 8:40].transpose(1, 2).detach().requires_grad_()
    got = host(attnkit.attention(qs, tk, tv, causal=True))
    assert got.view(np.uint16).tobytes() == want.view(np.uint16).tobytes()
    h = attnkit.attention(tq.half(), tk.half(), tv.half())
    assert _is_torch(h) and h.dtype == torch.float16 and h.is_cuda
