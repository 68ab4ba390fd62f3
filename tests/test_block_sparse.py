"""BlockLayout, the layout constructors (against independent NumPy statements of their rules) and
block_sparse_attention against the oracle."""

from __future__ import annotations

import numpy as np
import pytest

import attnkit
from attnkit import BlockLayout, layouts
from attnkit import reference as ref

from conftest import DTYPES, DTYPE_IDS, assert_close, assert_thread_invariant, naive_dtype, raises, randn

# ------------------------------------------------------------------------------ the rules, restated
def rule_window(n, w, causal):
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    return (np.abs(i - j) <= w) & ((j <= i) if causal else True)


def rule_longformer(n, block, w, globals_, dilation, causal):
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    d = j - i
    band = (d % dilation == 0) & (np.abs(d) <= w * dilation)
    gb = np.zeros(n, bool)
    gb[[g // block for g in globals_]] = True
    m = band | gb[:, None] | gb[None, :]
    return m & (j <= i) if causal else m


def rule_fixed(n, local, glob, causal):
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    m = (i // local == j // local) | (j % local >= local - glob)
    return m & (j <= i) if causal else m


@pytest.mark.parametrize("seq_len,block", [(1000, 64), (64, 64), (1, 16), (257, 32), (0, 8)])
@pytest.mark.parametrize("causal", [False, True])
def test_sliding_window_rule(seq_len, block, causal):
    n = -(-seq_len // block)
    for w in (0, 1, 3):
        L = layouts.sliding_window(seq_len, block, w, causal=causal)
        assert L.block_size == (block, block) and L.num_blocks == (n, n) and L.num_heads == 1
        np.testing.assert_array_equal(L.to_dense()[0], rule_window(n, w, causal))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dilation", [1, 2, 3])
def test_longformer_rule(causal, dilation):
    L = layouts.longformer(1500, 64, 2, global_tokens=[0, 5, 700, 1499], dilation=dilation, causal=causal,
                           num_heads=3)
    n = 24
    assert L.num_heads == 3
    for h in range(3):
        np.testing.assert_array_equal(L.to_dense()[h], rule_longformer(n, 64, 2, [0, 5, 700, 1499], dilation, causal))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("local,glob", [(4, 1), (3, 3), (1, 0), (5, 2)])
def test_fixed_rule(causal, local, glob):
    L = layouts.fixed(1030, 32, local_blocks=local, global_blocks=glob, causal=causal)
    np.testing.assert_array_equal(L.to_dense()[0], rule_fixed(33, local, glob, causal))


@pytest.mark.parametrize("causal", [False, True])
def test_bigbird_rule(causal):
    n, w, g, r = 40, 1, 2, 3
    L = layouts.bigbird(n * 16 - 5, 16, seed=123, window_blocks=w, global_blocks=g, random_blocks=r, causal=causal)
    d = L.to_dense()[0]
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    base = (np.abs(i - j) <= w) & ((j <= i) if causal else True)
    base |= (j < g) & ((j <= i) if causal else True)
    base |= (i < g) & ((j <= i) if causal else True)
    assert (d >= base).all(), "window/global blocks missing"
    extra = d & ~base
    for row in range(n):
        cand = (~base[row]) & ((np.arange(n) <= row) if causal else True)
        want = 0 if row < g else min(r, cand.sum())
        assert extra[row].sum() == want, (row, extra[row].sum(), want)
        assert not (extra[row] & ~cand).any()


def test_bigbird_seeded():
    a = layouts.bigbird(2048, 64, seed=7)
    assert a == layouts.bigbird(2048, 64, seed=7)
    assert a != layouts.bigbird(2048, 64, seed=8)
    heads = layouts.bigbird(2048, 64, seed=7, num_heads=4).to_dense()
    assert heads.shape[0] == 4 and not all((heads[0] == heads[h]).all() for h in range(1, 4))
    np.testing.assert_array_equal(heads[0], a.to_dense()[0])  # head 0 draws from the shared stream
    # the random blocks are roughly uniform over the candidates (no position bias)
    big = layouts.bigbird(64 * 512, 64, seed=1, window_blocks=0, global_blocks=0, random_blocks=8).to_dense()[0]
    cols = big.sum(0)
    assert cols.min() > 0 and cols.max() < 30  # mean 8 per column


def test_layout_object():
    blocks = np.random.default_rng(0).random((3, 5, 7)) < 0.4
    blocks[1, 2] = False  # an empty row
    L = BlockLayout.from_dense(blocks, (16, 8))
    np.testing.assert_array_equal(L.to_dense(), blocks)
    assert L.block_size == (16, 8) and L.num_blocks == (5, 7) and L.num_heads == 3
    assert L.density == pytest.approx(blocks.mean()) and L.nnz == blocks.sum()
    assert L.seq_lens == ((65, 80), (49, 56))
    L2 = BlockLayout(L.row_ptr, L.col_idx, block_size=(16, 8), num_heads=3, num_blocks=(5, 7))
    assert L2 == L
    shared = BlockLayout.from_dense(blocks[0], (16, 8))
    u = L | shared
    np.testing.assert_array_equal(u.to_dense(), blocks | blocks[0])
    assert layouts.union(shared, L, shared) == u
    assert "density" in repr(L)
    with pytest.raises(ValueError):
        L.row_ptr[0] = 1  # read-only: a validated layout cannot be broken afterwards


def test_layout_errors():
    rp, ci = np.array([0, 2, 3]), np.array([0, 1, 1])
    ok = dict(block_size=16, num_heads=1, num_blocks=(2, 2))
    BlockLayout(rp, ci, **ok)
    cases = [
        (ValueError, "strictly increasing", dict(row_ptr=[0, 2, 3], col_idx=[1, 0, 1])),
        (ValueError, "strictly increasing", dict(row_ptr=[0, 2, 3], col_idx=[1, 1, 1])),
        (ValueError, "outside", dict(row_ptr=[0, 2, 3], col_idx=[0, 2, 1])),
        (ValueError, "outside", dict(row_ptr=[0, 2, 3], col_idx=[-1, 0, 1])),
        (ValueError, "row_ptr[0]", dict(row_ptr=[1, 2, 3], col_idx=[0, 1, 1])),
        (ValueError, "row_ptr must have shape", dict(row_ptr=[0, 3], col_idx=[0, 1, 1])),
        (ValueError, "non-decreasing", dict(row_ptr=[0, 4, 3], col_idx=[0, 1, 1])),
        (ValueError, "non-decreasing", dict(row_ptr=[0, -1, 3], col_idx=[0, 1, 1])),
        (ValueError, "len(col_idx)", dict(row_ptr=[0, 1, 2], col_idx=[0, 1, 1])),
    ]
    for exc, msg, kw in cases:
        with pytest.raises(exc, match=msg.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            BlockLayout(np.array(kw["row_ptr"]), np.array(kw["col_idx"]), **ok)
    with pytest.raises(ValueError, match="block_size"):
        BlockLayout(rp, ci, block_size=0, num_heads=1, num_blocks=(2, 2))
    with pytest.raises(ValueError, match="num_heads"):
        BlockLayout(rp, ci, block_size=4, num_heads=0, num_blocks=(2, 2))
    raises(TypeError, "blocks", BlockLayout.from_dense, np.ones((2, 2)), 4)
    raises(ValueError, "blocks", BlockLayout.from_dense, np.ones((1, 2, 2, 2), bool), 4)
    with pytest.raises(ValueError, match="window_blocks"):
        layouts.sliding_window(100, 10, -1)
    with pytest.raises(ValueError, match="block_size"):
        layouts.sliding_window(100, 0, 1)
    with pytest.raises(ValueError, match="seq_len"):
        layouts.sliding_window(-1, 8, 1)
    with pytest.raises(ValueError, match="dilation"):
        layouts.longformer(100, 10, 1, dilation=0)
    with pytest.raises(ValueError, match="global_tokens"):
        layouts.longformer(100, 10, 1, global_tokens=[100])
    with pytest.raises(ValueError, match="global_blocks"):
        layouts.fixed(100, 10, local_blocks=2, global_blocks=3)
    with pytest.raises(ValueError, match="seed"):
        layouts.bigbird(100, 10, seed=-1)
    with pytest.raises(TypeError, match="seed"):
        layouts.bigbird(100, 10, seed=1.5)
    with pytest.raises(TypeError):
        layouts.bigbird(100, 10)  # seed is required
    a, b = layouts.sliding_window(100, 10, 1), layouts.sliding_window(100, 20, 1)
    raises(ValueError, "layout 1", layouts.union, a, b)                         # geometry
    raises(ValueError, "layouts", layouts.union, layouts.sliding_window(100, 10, 1, num_heads=2),
           layouts.sliding_window(100, 10, 1, num_heads=3))
    with pytest.raises(TypeError, match="layouts"):
        layouts.union(layouts.sliding_window(100, 10, 1), "x")


# -------------------------------------------------------------------------------------- attention
def check(dtype, q, k, v, layout, **kw):
    out, lse = attnkit.block_sparse_attention(q, k, v, layout, return_lse=True, **kw)
    r_out, r_lse = ref.block_sparse_attention(q, k, v, layout, return_lse=True, **kw)
    n_out, n_lse = ref.block_sparse_attention(q, k, v, layout, return_lse=True, _dtype=naive_dtype(dtype), **kw)
    assert_close(out, r_out, n_out, dtype)
    assert_close(lse, r_lse, n_lse, lse.dtype, what="lse")
    return out, lse


LAYOUTS = {
    "window": lambda S, b: layouts.sliding_window(S, b, 1),
    "window_causal": lambda S, b: layouts.sliding_window(S, b, 2, causal=True),
    "longformer": lambda S, b: layouts.longformer(S, b, 1, global_tokens=[0, S // 2], dilation=2),
    "bigbird": lambda S, b: layouts.bigbird(S, b, seed=11, random_blocks=2),
    "bigbird_causal": lambda S, b: layouts.bigbird(S, b, seed=3, causal=True),
    "fixed": lambda S, b: layouts.fixed(S, b, local_blocks=3, global_blocks=1),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", sorted(LAYOUTS))
@pytest.mark.parametrize("S,block", [(300, 32), (129, 16), (64, 64)])
def test_constructor_layouts(rng, dtype, name, S, block):
    q = randn(rng, (2, 4, S, 64), dtype)
    k = randn(rng, (2, 2, S, 64), dtype)
    v = randn(rng, (2, 2, S, 48), dtype)
    L = LAYOUTS[name](S, block)
    check(dtype, q, k, v, L)
    check(dtype, q, k, v, L, causal=True, key_lengths=[S, S // 3])


@pytest.mark.parametrize("bq,bk", [(16, 16), (32, 8), (8, 48), (1, 1), (100, 7)])
@pytest.mark.parametrize("Sq,Sk", [(90, 90), (33, 150), (150, 20)])
def test_random_layouts(rng, bq, bk, Sq, Sk):
    nqb, nkb = -(-Sq // bq), -(-Sk // bk)
    L = BlockLayout.from_dense(rng.random((nqb, nkb)) < 0.3, (bq, bk))
    q, k, v = randn(rng, (1, 2, Sq, 32), np.float32), randn(rng, (1, 1, Sk, 32), np.float32), randn(rng, (1, 1, Sk, 20), np.float32)
    out, lse = check(np.float32, q, k, v, L)
    check(np.float32, q, k, v, L, causal=True)
    empty_rows = ~L.to_dense()[0].any(-1)
    rows = np.repeat(empty_rows, bq)[:Sq]
    assert (out[:, :, rows] == 0).all() and np.isneginf(lse[:, :, rows]).all()


@pytest.mark.parametrize("Hq,Hkv", [(4, 4), (4, 2), (6, 1)])
def test_per_head_layouts(rng, Hq, Hkv):
    S = 200
    L = BlockLayout.from_dense(rng.random((Hq, 7, 7)) < 0.4, 32)
    q, k, v = randn(rng, (2, Hq, S, 64), np.float32), randn(rng, (2, Hkv, S, 64), np.float32), randn(rng, (2, Hkv, S, 64), np.float32)
    check(np.float32, q, k, v, L)
    check(np.float32, q, k, v, L, causal=True)
    # per-head layouts really differ per head: each head equals dense attention with its own mask
    out = attnkit.block_sparse_attention(q, k, v, L)
    for h in range(Hq):
        m = ref.block_mask(L, S, S)[h]
        hk = h // (Hq // Hkv)
        np.testing.assert_allclose(out[:, h], attnkit.attention(q[:, h], k[:, hk], v[:, hk], mask=m), atol=1e-6)


def test_full_layout_equals_dense(rng):
    q, k, v = (randn(rng, (1, 2, 333, 64), np.float32) for _ in range(3))
    L = BlockLayout.from_dense(np.ones((6, 6), bool), 64)
    np.testing.assert_array_equal(attnkit.block_sparse_attention(q, k, v, L, causal=True),
                                  attnkit.attention(q, k, v, causal=True))


def test_strided_and_rank3(rng):
    S = 160
    base = randn(rng, (S, 4, 64), np.float32)
    q = base.transpose(1, 0, 2)  # [H, S, D] view of an SHD buffer
    L = layouts.bigbird(S, 32, seed=5, num_heads=4)
    check(np.float32, q, q, q, L, causal=True)


def test_call_errors(rng):
    q = randn(rng, (1, 2, 100, 16), np.float32)
    L = layouts.sliding_window(100, 32, 1)
    with pytest.raises(TypeError, match="layout"):
        attnkit.block_sparse_attention(q, q, q, L.to_dense())
    raises(ValueError, "layout", attnkit.block_sparse_attention, q, q, q, layouts.sliding_window(200, 32, 1))
    raises(ValueError, "layout", attnkit.block_sparse_attention, q, q, q,
           layouts.sliding_window(100, 32, 1, num_heads=3))
    with pytest.raises(ValueError, match="key_lengths"):
        attnkit.block_sparse_attention(q, q, q, L, key_lengths=[101])
    with pytest.raises(TypeError, match="causal"):
        attnkit.block_sparse_attention(q, q, q, L, causal=1)


def test_thread_count_independent(rng):
    q, k, v = (randn(rng, (1, 4, 500, 64), np.float32) for _ in range(3))
    L = layouts.bigbird(500, 32, seed=2, num_heads=4)
    assert_thread_invariant(lambda: attnkit.block_sparse_attention(q, k, v, L, causal=True))


def test_layout_device_copy_takes_a_stream_handle():
    """Layout.ref_on takes the stream as an integer handle (CuPy's stream.ptr), as every call does; in a
    build without CUDA (or without a GPU) it raises a clear error rather than a binding TypeError."""
    L = layouts.sliding_window(64, 16, 1)
    with pytest.raises(RuntimeError, match="CUDA|device"):
        L._impl.ref_on(0, 0)
