"""DLPack arrays in, the caller's framework out: JAX CPU arrays against jax.nn.dot_product_attention,
PyTorch CPU tensors against torch.nn.functional.scaled_dot_product_attention, every public function with
PyTorch inputs equal to the same call with NumPy inputs, zero-copy views, bfloat16, read-only inputs."""

from __future__ import annotations

import numpy as np
import pytest

import attnkit
from attnkit import reference
from attnkit._array import BFLOAT16, dlpack_view

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
    with pytest.raises(TypeError, match="k"):
        attnkit.attention(q, torch.ones(4, 8, dtype=torch.int16), q)
    with pytest.raises(ValueError, match="v"):
        attnkit.attention(q, q, torch.randn(5, 8))
    with pytest.raises(TypeError, match="key_lengths"):
        attnkit.attention(q[None], q[None], q[None], key_lengths=torch.tensor([2.0]))
