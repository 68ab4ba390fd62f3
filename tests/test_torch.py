"""PyTorch tensors read directly (attnkit._torch): attention, attention_weights, linear_attention and
attention_backward take CPU torch tensors as they are (no NumPy view, no DLPack capsule) and answer with
tensors from torch.empty; each call must give the bits of the same call on NumPy copies of the values.
Skipped without PyTorch (attnkit never depends on it)."""

from __future__ import annotations

import numpy as np
import pytest

import attnkit
from attnkit import _array, _dlpack, _torch, reference
from attnkit._array import BFLOAT16

from conftest import raises

torch = pytest.importorskip("torch")

GEN = torch.Generator().manual_seed(2121)


def randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, generator=GEN, dtype=torch.float64).to(dtype)


def as_numpy(t):
    """A NumPy copy of t's values (bfloat16 as ml_dtypes' bfloat16)."""
    t = t.detach().resolve_neg()
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().view(BFLOAT16).copy()
    return t.contiguous().numpy().copy()


def same(got, want):
    assert isinstance(got, torch.Tensor), type(got)
    assert not got.requires_grad and got.grad_fn is None and got.device.type == "cpu"
    np.testing.assert_array_equal(as_numpy(got), want)
    assert as_numpy(got).dtype == want.dtype


@pytest.fixture
def native_only(monkeypatch):
    """Fails any call that would convert a torch tensor to a NumPy view (the DLPack wrapper's way)."""

    def no(*a, **k):
        raise AssertionError("a torch tensor went through the view conversion")

    monkeypatch.setattr(_dlpack, "_convert_in", no)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_attention_dtypes_match_numpy_and_the_oracle(dtype, native_only):
    q, k, v = randn(2, 4, 9, 16, dtype=dtype), randn(2, 2, 13, 16, dtype=dtype), randn(2, 2, 13, 8, dtype=dtype)
    out, lse = attnkit.attention(q, k, v, causal=True, return_lse=True)
    assert out.dtype == dtype and lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    want_out, want_lse = _array_call(attnkit.attention, q, k, v, causal=True, return_lse=True)
    same(out, want_out)
    same(lse, want_lse)
    ref = reference.attention(*(as_numpy(x).astype(np.float64) for x in (q, k, v)), causal=True)
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}[dtype]
    assert np.max(np.abs(as_numpy(out).astype(np.float64) - ref)) < tol


def as_view(t):
    """A NumPy view of t's memory with its strides (bfloat16 as ml_dtypes' bfloat16): the NumPy call that
    must give the same bits (a copy could take another kernel path, with other rounding)."""
    t = t.detach().resolve_neg()
    return t.view(torch.int16).numpy().view(BFLOAT16) if t.dtype == torch.bfloat16 else t.numpy()


def _array_call(fn, *args, **kwargs):
    """fn on NumPy views of every torch tensor among args / kwargs (tuples included)."""
    conv = lambda x: (as_view(x) if isinstance(x, torch.Tensor)  # noqa: E731
                      else tuple(map(conv, x)) if isinstance(x, tuple) else x)
    return fn(*map(conv, args), **{n: conv(x) for n, x in kwargs.items()})


def test_strided_offset_and_broadcast_views_are_read_in_place(native_only):
    base = randn(3, 20, 6, 16)
    q = base.transpose(1, 2)[1:, :, 2:17:2]  # BSHD storage read as BHSD, a storage offset, a step
    k = randn(1, 6, 11, 16).expand(2, 6, 11, 16)  # stride 0 along the batch
    v = randn(2, 11, 6, 32).permute(0, 2, 1, 3)[..., ::2]
    assert q.storage_offset() > 0 and not q.is_contiguous() and k.stride(0) == 0
    out = attnkit.attention(q, k, v, window=(3, 1))
    same(out, _array_call(attnkit.attention, q, k, v, window=(3, 1)))
    assert out.is_contiguous() and out.shape == (2, 6, 8, 16)


def test_empty_sizes():
    q, k = randn(2, 0, 8), randn(2, 5, 8)
    assert attnkit.attention(q, k, k).shape == (2, 0, 8)
    out, lse = attnkit.attention(randn(2, 3, 8), randn(2, 0, 8), randn(2, 0, 4), return_lse=True)
    assert out.shape == (2, 3, 4) and bool((out == 0).all()) and bool(torch.isneginf(lse).all())
    assert attnkit.attention(randn(0, 1, 3, 8), randn(0, 1, 5, 8), randn(0, 1, 5, 8)).shape == (0, 1, 3, 8)


def test_requires_grad_inputs_are_read_and_outputs_carry_no_graph(native_only):
    q = randn(2, 7, 8).requires_grad_()
    w = torch.nn.Parameter(randn(2, 7, 8))
    out = attnkit.attention(q, w, w)
    same(out, _array_call(attnkit.attention, q, w, w))
    assert q.grad is None


def test_masking_arguments_as_tensors_lists_and_numpy(native_only):
    q, k, v = randn(2, 3, 5, 8), randn(2, 3, 7, 8), randn(2, 3, 7, 8)
    mask = torch.rand(5, 7, generator=GEN) > 0.3
    bias = randn(3, 1, 7)
    slopes = torch.tensor([0.5, 0.25, 0.125])
    for lengths in (torch.tensor([7, 4], dtype=torch.int32), torch.tensor([3, 6]), torch.tensor([5, 2], dtype=torch.int16),
                    [2, 7], np.array([6, 1])):
        kw = dict(mask=mask, bias=bias, alibi_slopes=slopes, key_lengths=lengths, softcap=4.0, scale=0.3)
        same(attnkit.attention(q, k, v, **kw), _array_call(attnkit.attention, q, k, v, **kw))
    kw = dict(mask=as_numpy(mask).tolist(), bias=as_numpy(bias))  # Python lists and NumPy arrays beside tensors
    same(attnkit.attention(q, k, v, **kw), _array_call(attnkit.attention, q, k, v, **kw))
    same(attnkit.attention_weights(q, k, causal=True, bias=bias), _array_call(attnkit.attention_weights, q, k,
                                                                              causal=True, bias=bias))


def test_linear_attention_and_attention_backward(native_only):
    q, k, v = randn(2, 9, 8), randn(2, 9, 8), randn(2, 9, 4)
    out, (s, z) = attnkit.linear_attention(q, k, v, return_state=True)
    want = _array_call(attnkit.linear_attention, q, k, v, return_state=True)
    same(out, want[0]), same(s, want[1][0]), same(z, want[1][1])
    kw = dict(initial_state=(s, z), key_lengths=torch.tensor([5]), causal=False)
    same(attnkit.linear_attention(q, k, v, **kw), _array_call(attnkit.linear_attention, q, k, v, **kw))
    out, lse = attnkit.attention(q, k, v, causal=True, return_lse=True)
    dout = randn(2, 9, 4)
    grads = attnkit.attention_backward(dout, q, k, v, out, lse, causal=True)
    for g, w in zip(grads, _array_call(attnkit.attention_backward, dout, q, k, v, out, lse, causal=True)):
        same(g, w)


def test_dbias_and_other_functions_still_go_through_views():
    q = randn(1, 2, 5, 8)
    bias = randn(5, 5)
    out, lse = attnkit.attention(q, q, q, bias=bias, return_lse=True)
    grads = attnkit.attention_backward(randn(1, 2, 5, 8), q, q, q, out, lse, bias=bias, return_dbias=True)
    assert all(isinstance(g, torch.Tensor) for g in grads) and grads[3].shape == (5, 5)
    o, l = attnkit.merge_attention([out, out], [lse, lse])
    same(o, as_numpy(out))


def test_negated_views_are_resolved_and_conjugates_refused(native_only):
    x = randn(2, 6, 8)
    neg = torch._neg_view(x)
    assert neg.is_neg()
    same(attnkit.attention(neg, x, x), _array_call(attnkit.attention, -x, x, x))
    c = torch.randn(2, 6, 8, dtype=torch.complex64).conj()
    raises(TypeError, "k", attnkit.attention, x, c, x)


def test_bad_tensors_name_the_argument():
    x = randn(2, 6, 8)
    raises(TypeError, "v", attnkit.attention, x, x, torch.empty(2, 6, 8, device="meta"))
    raises(TypeError, "q", attnkit.attention, x.to_sparse(), x, x)
    raises(TypeError, "k", attnkit.attention, x, x.to(torch.int16), x)
    raises(TypeError, "mask", attnkit.attention, x, x, x, mask=torch.ones(6, 6, dtype=torch.float16))
    raises(ValueError, "v", attnkit.attention, x, x, randn(2, 5, 8))
    raises(ValueError, "q", attnkit.attention, randn(*[1] * 9), x, x)
    raises(TypeError, "key_lengths", attnkit.attention, x[None], x[None], x[None], key_lengths=torch.tensor([2.0]))
    with pytest.raises(TypeError, match="missing a required argument: 'v'"):  # as the bound path says it
        attnkit.attention(x, x)


def test_output_allocation_errors_name_the_output(monkeypatch):
    def refuse(shape, code, index):
        raise RuntimeError("DefaultCPUAllocator: not enough memory")

    monkeypatch.setattr(_torch, "empty", refuse)
    raises(ValueError, "out", attnkit.attention, randn(2, 6, 8), randn(2, 6, 8), randn(2, 6, 8))


def test_cuda_calls_use_torchs_device_and_current_stream(monkeypatch):
    """What a CUDA tensor changes, checked without a GPU: the TensorRef's device, the stream (PyTorch's
    current one on that device), coerced arguments and outputs created on that device."""
    torch_types = _torch.tensor_types()  # tables built
    assert torch.Tensor in torch_types
    monkeypatch.setattr(_torch, "_current_stream", lambda index: 5000 + index)
    made = []
    monkeypatch.setattr(_torch, "device", lambda index: made.append(index) or torch.device("cpu"))
    call = _array.Call()
    call.cuda, call.torch, call.device_index = True, True, 1
    assert call.stream == 5001
    mask = call.array([[True, False]], "mask", coerce=True)
    assert isinstance(mask, torch.Tensor) and mask.dtype == torch.bool and made == [1]
    lengths = call.lengths([3, 1])
    assert lengths.dtype == int(attnkit._core.DType.int64) and made == [1, 1]
    t, ref = call.empty((2, 3), np.float32, "out")
    assert isinstance(t, torch.Tensor) and made == [1, 1, 1] and ref.device == 1 and ref.device_index == 1
    assert ref.strides == [3, 1] and ref.data == t.data_ptr()
    cpu = _array.Call()
    cpu.tensor(randn(3, 4), "q")
    assert cpu.torch and cpu.cuda is False and cpu.stream == 0
