"""DLPack arrays in, the caller's framework out: JAX CPU arrays against jax.nn.dot_product_attention,
PyTorch CPU tensors against torch.nn.functional.scaled_dot_product_attention, every public function with
PyTorch inputs equal to the same call with NumPy inputs, zero-copy views, bfloat16, read-only inputs."""

from __future__ import annotations

import numpy as np
import pytest

import attnkit
from attnkit import reference
from attnkit._array import BFLOAT16
from attnkit._dlpack import dlpack_view

from conftest import raises

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

RNG = np.random.default_rng(1313)


def randn(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


# ------------------------------------------------------------------------------------------------ JAX
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("Hkv", [4, 2])
def test_jax_matches_jax_dot_product_attention(causal, Hkv):
    B, Hq, S, D = 2, 4, 33, 16
    q, k, v = jnp.asarray(randn(B, Hq, S, D)), jnp.asarray(randn(B, Hkv, S, D)), jnp.asarray(randn(B, Hkv, S, D))
    out = attnkit.attention(q, k, v, causal=causal)
    assert isinstance(out, jax.Array) and out.dtype == jnp.float32 and out.shape == (B, Hq, S, D)
    # jax.nn.dot_product_attention takes [B, T, N, H]
    ref = jax.nn.dot_product_attention(q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3),
                                       is_causal=causal).transpose(0, 2, 1, 3)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-5, rtol=1e-5)


def test_jax_bfloat16_and_lse():
    q, k, v = (jnp.asarray(randn(3, 17, 64), dtype=jnp.bfloat16) for _ in range(3))
    out, lse = attnkit.attention(q, k, v, return_lse=True)
    assert out.dtype == jnp.bfloat16 and lse.dtype == jnp.float32 and isinstance(lse, jax.Array)
    ref = reference.attention(*(np.asarray(x).astype(np.float64) for x in (q, k, v)))
    assert np.max(np.abs(np.asarray(out).astype(np.float64) - ref)) < 2e-2


def test_jax_view_is_zero_copy_and_read_only():
    x = jnp.asarray(randn(2, 5, 8))
    view = dlpack_view(x, "x")
    assert isinstance(view, np.ndarray) and not view.flags.writeable
    assert view.__array_interface__["data"][0] == x.unsafe_buffer_pointer()
    np.testing.assert_array_equal(view, np.asarray(x))


# -------------------------------------------------------------------------------------------- PyTorch
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("causal", [False, True])
def test_torch_matches_sdpa(dtype, causal):
    B, H, S, D = 2, 3, 41, 24
    # BSHD storage read as BHSD through a strided (non-contiguous) view, as torch models usually hold it
    q, k, v = (torch.from_numpy(randn(B, S, H, D, dtype=np.float64)).to(dtype).transpose(1, 2) for _ in range(3))
    out = attnkit.attention(q, k, v, causal=causal)
    assert isinstance(out, torch.Tensor) and out.dtype == dtype and out.shape == (B, H, S, D)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_torch_half_types_roundtrip(dtype):
    q, k, v = (torch.randn(2, 19, 32, generator=torch.Generator().manual_seed(i)).to(dtype) for i in range(3))
    out = attnkit.attention(q, k, v)
    assert out.dtype == dtype and isinstance(out, torch.Tensor)
    ref = reference.attention(*(x.double().numpy() for x in (q, k, v)))
    assert np.max(np.abs(out.double().numpy() - ref)) < (2e-2 if dtype == torch.bfloat16 else 3e-3)


def test_torch_view_is_zero_copy_and_requires_grad_is_fine():
    t = torch.randn(4, 6, 8, dtype=torch.float64)[:, ::2]
    view = dlpack_view(t, "t")
    assert view.__array_interface__["data"][0] == t.data_ptr() and view.strides == tuple(8 * s for s in t.stride())
    bf = torch.randn(3, 4).to(torch.bfloat16)
    assert dlpack_view(bf, "bf").dtype == BFLOAT16
    q = torch.randn(5, 8, requires_grad=True)
    assert isinstance(attnkit.attention(q, q, q), torch.Tensor)


def np_and_torch(*arrays):
    return arrays, tuple(torch.from_numpy(a) for a in arrays)


# Every public array function: the PyTorch call returns torch tensors equal to the NumPy call's arrays.
CASES = {
    "attention": lambda q, k, v: attnkit.attention(q, k, v, causal=True, return_lse=True),
    "attention_weights": lambda q, k, v: attnkit.attention_weights(q, k),
    "merge_attention": lambda q, k, v: attnkit.merge_attention([q, v], [q[..., 0], k[..., 0]]),
    "block_sparse_attention": lambda q, k, v: attnkit.block_sparse_attention(
        q, k, v, attnkit.layouts.sliding_window(24, 8, 1), return_lse=True),
    "lsh_buckets": lambda q, k, v: attnkit.lsh_buckets(q, num_buckets=4, num_hashes=2),
    "lsh_attention": lambda q, k, v: attnkit.lsh_attention(q, k, v, num_buckets=4, num_hashes=2),
    "linear_attention": lambda q, k, v: attnkit.linear_attention(q, k, v, return_state=True),
    "performer_attention": lambda q, k, v: attnkit.performer_attention(
        q, k, v, attnkit.random_features(32, q.shape[-1], seed=3)),
    "linformer_attention": lambda q, k, v: attnkit.linformer_attention(
        q, k, v, attnkit.linformer_projection(8, q.shape[-2], seed=2)),
    "dynamic_linear_attention": lambda q, k, v: attnkit.dynamic_linear_attention(
        q, k, v, np.full(q.shape[:-1] + (4,), 0.25, np.float32), capacity=4)[0],
    "rope": lambda q, k, v: attnkit.rope(q, positions=k[0, :, 0].abs().long() if hasattr(k, "abs") and
                                         hasattr(k, "long") else np.abs(k[0, :, 0]).astype(np.int64)),
    "attention_backward": lambda q, k, v: attnkit.attention_backward(
        v, q, k, v, *attnkit.attention(q, k, v, causal=True, return_lse=True), causal=True),
    "multi_head_attention": lambda q, k, v: attnkit.multi_head_attention(
        q, k, v, attnkit.MHAParams(q[0, :16], k[0, :16], v[0, :16], q[1, :16], b_o=k[1, 0]), num_heads=2,
        rope={"positions": np.arange(24)}),
}


def flatten(r):
    return [x for e in r for x in flatten(e)] if isinstance(r, (tuple, list)) else [r]


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_function_torch_equals_numpy(name):
    (q, k, v), (tq, tk, tv) = np_and_torch(randn(2, 24, 16), randn(2, 24, 16), randn(2, 24, 16))
    want, got = flatten(CASES[name](q, k, v)), flatten(CASES[name](tq, tk, tv))
    assert len(want) == len(got)
    for w, g in zip(want, got):
        assert isinstance(g, torch.Tensor), type(g)
        np.testing.assert_array_equal(g.numpy(), w)


def test_torch_bad_inputs_name_the_argument():
    q = torch.randn(4, 8)
    raises(TypeError, "k", attnkit.attention, q, torch.ones(4, 8, dtype=torch.int16), q)
    raises(ValueError, "v", attnkit.attention, q, q, torch.randn(5, 8))
    with pytest.raises(TypeError, match="key_lengths"):
        attnkit.attention(q[None], q[None], q[None], key_lengths=torch.tensor([2.0]))


# ------------------------------------------------------------------- bfloat16 CUDA arrays, without a GPU
# CuPy has no bfloat16, so a bfloat16 CUDA tensor (PyTorch, JAX) travels through attnkit as a DeviceBF16: a
# uint16 array of the same memory reporting dtype bfloat16. Its logic does not need a GPU: below, a NumPy
# uint16 array stands in for the CuPy one, and a fake "cupy" module plus a PyTorch tensor whose DLPack capsule
# is relabelled as CUDA stand in for a real device (what the C++ core then does with the device pointer is
# tested by tests/test_gpu_*.py on a GPU).
import contextlib
import sys
import types

from attnkit import _array, _dlpack
from attnkit._array import Call, DeviceBF16, astype


def bf16_bits(x):
    return np.asarray(x, dtype=BFLOAT16).view(np.uint16)


def test_devicebf16_rounds_like_ml_dtypes():
    special = np.array([1.0, 1.00390625, 1.01171875, -0.0, np.inf, -np.inf, np.nan, -np.nan, 3.4e38, 1e-40,
                        1e-45, 65504.0, -2.5e-39], np.float32)
    f = np.concatenate([special, randn(4096) * np.exp(RNG.uniform(-80, 80, 4096)).astype(np.float32)])
    w = DeviceBF16.from_float(f)
    np.testing.assert_array_equal(w.raw, bf16_bits(f))
    back = w.astype(np.float32)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, np.asarray(f, BFLOAT16).astype(np.float32))
    np.testing.assert_array_equal(w.astype(np.float64), np.asarray(f, BFLOAT16).astype(np.float64))
    assert w.astype(BFLOAT16, copy=False) is w and w.astype(BFLOAT16).raw is not w.raw


def test_devicebf16_layout_ops_keep_the_bits():
    x = randn(3, 4, 6, 8)
    w, ref = DeviceBF16.from_float(x), np.asarray(x, BFLOAT16)
    assert (w.dtype, w.shape, w.ndim, w.size, w.strides, w.itemsize) == (BFLOAT16, ref.shape, 4, ref.size,
                                                                          ref.strides, 2)
    for op in (lambda a: a[1], lambda a: a[None], lambda a: a[..., :0, :], lambda a: a[:, ::2, 1:],
               lambda a: a.transpose(0, 2, 1, 3), lambda a: a.swapaxes(-1, -2), lambda a: a.reshape(12, 48),
               lambda a: a.transpose(0, 2, 1, 3).reshape(3, 6, 32), lambda a: a[0, 0].T, lambda a: a.copy()):
        got, want = op(w), op(ref)
        assert isinstance(got, DeviceBF16) and got.shape == want.shape
        np.testing.assert_array_equal(got.raw, want.view(np.uint16))
    iface = w[:, 1].__cuda_array_interface__
    assert iface["typestr"] == BFLOAT16.str and iface["shape"] == (3, 6, 8) and iface["strides"] == (384, 16, 2)
    assert w.view(np.uint16).dtype == np.uint16 and np.shares_memory(w.view(np.uint16), w.raw)
    assert w.view(BFLOAT16) is w
    for bad in (lambda: w + 1, lambda: 2 * w, lambda: w @ w, lambda: np.asarray(w), lambda: w.view(np.float16)):
        with pytest.raises(TypeError):
            bad()


@pytest.fixture
def fake_cupy(monkeypatch):
    """A 'cupy' module over NumPy: enough for the adapter's CUDA paths (views, outputs, stream, device)."""

    def asarray(x, dtype=None):
        iface = getattr(x, "__cuda_array_interface__", None)
        if iface is None:
            return np.asarray(x, dtype=dtype)
        iface = {k: v for k, v in iface.items() if k != "stream"}
        return np.asarray(_dlpack._View("__array_interface__", iface, (x,)))

    fake = types.SimpleNamespace(
        asarray=asarray, empty=np.empty, full=np.full, ascontiguousarray=np.ascontiguousarray,
        where=np.where, isnan=np.isnan,
        cuda=types.SimpleNamespace(Device=lambda i: contextlib.nullcontext(),
                                   runtime=types.SimpleNamespace(getDevice=lambda: 0),
                                   get_current_stream=lambda: types.SimpleNamespace(ptr=0)))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    return fake


class FakeCudaTensor:
    """A PyTorch tensor presented as a CUDA one: its DLPack capsule's device is relabelled kDLCUDA."""

    def __init__(self, t):
        self.t = t

    def __dlpack_device__(self):
        return (_dlpack._DL_CUDA, 0)

    def __dlpack__(self, stream=None):
        capsule = self.t.__dlpack__()
        tensor = _dlpack._DLTensor.from_address(_dlpack._capsule_pointer(capsule, b"dltensor"))
        tensor.device.device_type = _dlpack._DL_CUDA
        return capsule


FakeCudaTensor.__module__ = "torch.fake"  # answered in PyTorch, as a CUDA tensor would be


def test_bf16_cuda_dlpack_in_is_a_zero_copy_devicebf16(fake_cupy):
    t = torch.randn(4, 6, 8).to(torch.bfloat16)[:, ::2]
    w = _dlpack.dlpack_view(FakeCudaTensor(t), "q")
    assert isinstance(w, DeviceBF16) and w.dtype == BFLOAT16 and w.shape == (4, 3, 8)
    assert w.strides == tuple(2 * s for s in t.stride())
    assert w.__cuda_array_interface__["data"][0] == t.data_ptr()
    np.testing.assert_array_equal(w.raw, t.view(torch.int16).numpy().view(np.uint16))
    # the TensorRef the core gets: bfloat16 on the device, with the view's shape
    call = Call()
    ref = call.tensor(w, "q")
    assert call.cuda and ref.shape == [4, 3, 8]
    # f16 / f32 CUDA tensors still become (Cu)Py arrays
    assert not isinstance(_dlpack.dlpack_view(FakeCudaTensor(torch.randn(3, 2)), "k"), DeviceBF16)


def test_bf16_cuda_outputs_and_return_to_torch_and_jax(fake_cupy):
    call = Call()
    call.tensor(DeviceBF16(np.zeros((2, 3), np.uint16)), "q")  # the call is on the (fake) device
    out, ref = call.empty((2, 5), BFLOAT16, "out")
    assert isinstance(out, DeviceBF16) and out.shape == (2, 5) and ref.shape == [2, 5]
    x = randn(2, 5)
    out.raw[...] = bf16_bits(x)
    tt = _dlpack._convert_out((out, np.float32(0)), _dlpack._returner(torch.zeros(1)))[0]
    assert tt.dtype == torch.bfloat16 and tt.data_ptr() == out.raw.ctypes.data  # zero-copy
    np.testing.assert_array_equal(tt.float().numpy(), np.asarray(x, BFLOAT16).astype(np.float32))
    jt = _dlpack._returner(jnp.zeros(1))(out)
    assert jt.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(jt.astype(jnp.float32)), np.asarray(x, BFLOAT16).astype(np.float32))


def test_bf16_cuda_helpers(fake_cupy):
    like = DeviceBF16(np.zeros(1, np.uint16))
    ones = _array.full(like, (2, 3), 1.0, BFLOAT16)
    assert isinstance(ones, DeviceBF16) and (ones.raw == bf16_bits(1.0)).all()
    assert astype(ones, np.float32).dtype == np.float32 and (astype(ones, np.float32) == 1).all()
    f = randn(3, 4)  # a NumPy array stays NumPy (ml_dtypes bfloat16)
    assert astype(f, BFLOAT16).dtype == BFLOAT16 and type(astype(f, BFLOAT16)) is np.ndarray


def test_bf16_cuda_mixed_with_cpu_names_the_argument(fake_cupy):
    q = torch.randn(1, 2, 4, 8).to(torch.bfloat16)
    raises(TypeError, "k", attnkit.attention, FakeCudaTensor(q), q, FakeCudaTensor(q))
    with pytest.raises(TypeError, match="bias"):
        attnkit.attention(FakeCudaTensor(q), FakeCudaTensor(q), FakeCudaTensor(q), bias=np.zeros((4, 4), np.float32))


def test_bf16_cuda_mha_projection_matches_the_cpu(fake_cupy, monkeypatch):
    """multi_head_attention's projections and head split on DeviceBF16 arrays (the Python part of the
    layer; its attention core is the CUDA kernel) give the CPU path's bits."""
    from attnkit._mha import _heads, _linear

    fake_cupy.matmul = np.matmul
    # the fake CuPy's results are NumPy arrays: let astype() treat them as device arrays, as CuPy's are
    monkeypatch.setattr(_array, "is_cuda_array", lambda a: hasattr(a, "__cuda_array_interface__")
                        or isinstance(a, np.ndarray))
    x, w, b = randn(2, 5, 16), randn(12, 16), randn(12)
    xs, ws, bs = (np.asarray(a, BFLOAT16) for a in (x, w, b))
    xd, wd, bd = (DeviceBF16.from_float(a) for a in (x, w, b))
    want = _heads(_linear(xs, ws, bs, "w_q"), 2, 5, 3, "num_heads", "w_q")
    got = _heads(_linear(xd, wd, bd, "w_q"), 2, 5, 3, "num_heads", "w_q")
    assert isinstance(got, DeviceBF16) and got.shape == want.shape == (2, 3, 5, 4)
    np.testing.assert_array_equal(got.raw, want.view(np.uint16))
    back = got.transpose(0, 2, 1, 3).reshape(2, 5, 12)
    np.testing.assert_array_equal(back.raw, want.transpose(0, 2, 1, 3).reshape(2, 5, 12).view(np.uint16))


# ------------------------------------------------------------- the direct PyTorch path (no DLPack capsule)
def test_torch_direct_view_matches_the_capsule_path():
    """torch.Tensor / nn.Parameter are read directly (data_ptr, shape, stride, dtype): the same read-only
    zero-copy view the capsule gives; dtypes, layouts and devices it does not take go through the capsule,
    with its errors."""
    base = torch.randn(4, 6, 8, dtype=torch.float64)
    for t in (base[:, ::2, 1:], base.to(torch.bfloat16).transpose(0, 2), base.float()[1:, 2],
              torch.nn.Parameter(base.float()), base[:, :0], torch.arange(6, dtype=torch.int32)):
        assert _dlpack._kind(t) == _dlpack._TORCH
        view = dlpack_view(t, "t")
        assert isinstance(view, np.ndarray) and not view.flags.writeable and view.shape == tuple(t.shape)
        if t.numel():
            assert view.__array_interface__["data"][0] == t.data_ptr()
            assert view.strides == tuple(t.element_size() * s for s in t.stride())
        ref = t.detach().view(torch.int16).numpy().view(BFLOAT16) if t.dtype == torch.bfloat16 else t.detach().numpy()
        assert view.dtype == ref.dtype
        np.testing.assert_array_equal(view, ref)
    raises(TypeError, "unsupported DLPack dtype", dlpack_view, torch.zeros(3, dtype=torch.complex64), "x")
    assert _dlpack._torch_view(torch.zeros(3, dtype=torch.complex64)) is None
    assert _dlpack._torch_view(torch.zeros(3).to_sparse()) is None


def test_torch_calls_convert_like_bound_arguments():
    """The unbound conversion (arguments converted in parameter order, named after their parameters) gives
    the bound one's results and errors: the first foreign input (in parameter order) picks the framework
    returned, keyword calls work, and bad calls raise Python's TypeError before anything is converted."""
    q = torch.randn(2, 5, 8)
    out = attnkit.attention(v=q, k=q, q=jnp.asarray(q.numpy()))
    assert isinstance(out, jax.Array)
    np.testing.assert_array_equal(np.asarray(out), attnkit.attention(q.numpy(), q.numpy(), q.numpy()))
    bad = torch.zeros(2, 5, 8, dtype=torch.complex64)
    with pytest.raises(TypeError, match="missing a required argument: 'v'"):
        attnkit.attention(bad, q)
    with pytest.raises(TypeError, match="multiple values for argument 'k'"):
        attnkit.attention(bad, q, q, k=q)
    with pytest.raises(TypeError, match="unexpected keyword argument 'causl'"):
        attnkit.attention(bad, q, q, causl=True)
    raises(TypeError, "k", attnkit.attention, q, bad, q)


@pytest.fixture
def fake_cuda_torch(monkeypatch, fake_cupy):
    """The direct PyTorch CUDA path on the CPU: CuPy views over raw pointers (UnownedMemory, MemoryPointer,
    ndarray) and the stream calls recorded; PyTorch CPU tensors stand in for CUDA ones."""
    calls = []

    class Memory:
        def __init__(self, ptr, size, owner, device_id):
            calls.append(("memory", size, device_id))
            self.ptr, self.size, self.owner = ptr, size, owner

    def ndarray(shape, dtype, memptr=None, strides=None):
        if memptr is None:
            return np.empty(shape, dtype)
        iface = {"shape": shape, "typestr": np.dtype(dtype).str, "data": (memptr.ptr, False), "strides": strides,
                 "version": 3}
        return np.asarray(_dlpack._View("__array_interface__", iface, (memptr,)))

    class Event:
        ptr = 77

        def __init__(self, disable_timing=False):
            assert disable_timing

    runtime = types.SimpleNamespace(eventRecord=lambda e, s: calls.append(("record", e, s)),
                                    streamWaitEvent=lambda s, e, f: calls.append(("wait", s, e)))
    fake_cupy.ndarray = ndarray
    fake_cupy.cuda.UnownedMemory = Memory
    fake_cupy.cuda.MemoryPointer = lambda mem, offset: types.SimpleNamespace(ptr=mem.ptr + offset, mem=mem)
    fake_cupy.cuda.Event = Event
    fake_cupy.cuda.runtime = runtime
    streams = {"torch": 0}
    monkeypatch.setattr(_dlpack, "_torch_raw_stream", lambda index: streams["torch"])
    return calls, streams


def test_torch_cuda_direct_view_and_stream_order(fake_cuda_torch, fake_cupy):
    calls, streams = fake_cuda_torch
    base = torch.randn(5, 7, 9).to(torch.bfloat16)
    t = base[1:, ::3, 2:].transpose(0, 1)
    w = _dlpack._torch_cuda_view(t, BFLOAT16, 0)
    assert isinstance(w, DeviceBF16) and w.shape == tuple(t.shape)
    assert w.strides == tuple(2 * s for s in t.stride()) and w.__cuda_array_interface__["data"][0] == t.data_ptr()
    np.testing.assert_array_equal(w.raw, t.view(torch.int16).numpy().view(np.uint16))
    last = t.data_ptr() + 2 * sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
    assert calls == [("memory", last + 2 - t.data_ptr(), 0)]  # exactly the span of the view, no stream work
    f = _dlpack._torch_cuda_view(torch.randn(3, 4)[:, 1], np.dtype(np.float32), 0)
    assert type(f) is np.ndarray and f.dtype == np.float32 and f.shape == (3,)
    assert _dlpack._torch_cuda_view(torch.zeros(2, 0), np.dtype(np.float32), 0).shape == (2, 0)
    # PyTorch on another stream than CuPy's: CuPy's stream waits for an event recorded on PyTorch's
    calls.clear()
    streams["torch"] = 1234
    _dlpack._torch_cuda_view(t, BFLOAT16, 0)
    assert calls[:2] == [("record", 77, 1234), ("wait", 0, 77)]
    fake_cupy.cuda.get_current_stream = lambda: types.SimpleNamespace(ptr=1234)  # the same stream: nothing
    calls.clear()
    _dlpack._torch_cuda_view(t, BFLOAT16, 0)
    assert [c[0] for c in calls] == ["memory"]
