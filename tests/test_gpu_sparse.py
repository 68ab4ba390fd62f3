"""GPU suite, sparse attention: block_sparse_attention, lsh_buckets and lsh_attention. Helpers and
conventions: gpu_common.py."""

from __future__ import annotations

import numpy as np
import pytest

import attnkit
from attnkit import layouts
from attnkit import reference as ref

from conftest import DTYPE_IDS, DTYPES, naive_dtype, randn
from gpu_common import F32, GPU_MARKS, close3, gpu_run, need, qkv, same

pytestmark = GPU_MARKS


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
