"""GPU suite: CuPy arrays through the CUDA backend. Skipped unless CuPy imports and a CUDA device is
visible (the development machines have no GPU).

No mechanism has a CUDA kernel in this version: every call must fail with a clear RuntimeError, never
crash, and never return a silently wrong array. When a kernel lands, its test here compares the CuPy
result with attnkit.reference and with the CPU backend."""

from __future__ import annotations

import numpy as np
import pytest

import attnkit

cupy = pytest.importorskip("cupy")
try:
    HAVE_GPU = cupy.cuda.runtime.getDeviceCount() > 0
except Exception:  # pragma: no cover - no driver
    HAVE_GPU = False
pytestmark = pytest.mark.skipif(not HAVE_GPU or not attnkit.info()["cuda_built"], reason="needs a CUDA device")


@pytest.fixture
def qkv():
    rng = np.random.default_rng(0)
    return [cupy.asarray(rng.standard_normal((1, 2, 64, 32)).astype(np.float32)) for _ in range(3)]


CALLS = {
    "attention": lambda q, k, v: attnkit.attention(q, k, v, causal=True),
    "attention_weights": lambda q, k, v: attnkit.attention_weights(q, k),
    "merge_attention": lambda q, k, v: attnkit.merge_attention([q], [q[..., 0]]),
    "block_sparse_attention": lambda q, k, v: attnkit.block_sparse_attention(
        q, k, v, attnkit.layouts.sliding_window(64, 16, 1)),
    "lsh_buckets": lambda q, k, v: attnkit.lsh_buckets(q, num_buckets=4),
    "lsh_attention": lambda q, k, v: attnkit.lsh_attention(q, k, v, num_buckets=4),
    "linear_attention": lambda q, k, v: attnkit.linear_attention(q, k, v),
    "performer_attention": lambda q, k, v: attnkit.performer_attention(
        q, k, v, cupy.asarray(attnkit.random_features(16, 32))),
    "linformer_attention": lambda q, k, v: attnkit.linformer_attention(
        q, k, v, cupy.asarray(attnkit.linformer_projection(8, 64))),
    "dynamic_linear_attention": lambda q, k, v: attnkit.dynamic_linear_attention(
        q, k, v, cupy.ones(q.shape[:-1] + (4,), dtype=q.dtype), capacity=4),
    "rope": lambda q, k, v: attnkit.rope(q, positions=cupy.arange(64)),
    # the layer projects with CuPy matmuls (run on the GPU), then reaches the attention core
    "multi_head_attention": lambda q, k, v: attnkit.multi_head_attention(
        q[0], q[0], q[0], attnkit.MHAParams(*(cupy.eye(32, dtype=q.dtype) for _ in range(4))), num_heads=2),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_no_kernel_yet_is_a_clear_error(qkv, name):
    with pytest.raises(RuntimeError, match="no CUDA kernel"):
        CALLS[name](*qkv)


def test_mixed_devices_rejected(qkv):
    q, k, v = qkv
    with pytest.raises(TypeError, match="device"):
        attnkit.attention(q, cupy.asnumpy(k), v)
