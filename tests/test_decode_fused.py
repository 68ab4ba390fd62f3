"""The fused CPU decode kernel (cpu/attention_decode.h, AVX2 and AVX-512 builds): few query rows per kv head
(Sq x G <= 32), every row of the kv head against each K/V chunk in one pass, split keys merged in split
order. Against the oracle over MHA and GQA 32:8, Sq 1..8, head dims 64 / 128 / odd, float32 / float16 /
bfloat16 (16-bit K/V converted in the loads up to 4 rows, packed beyond), key ranges and softcap; bitwise
independent of the thread count. Problems with a mask, bias or ALiBi keep the generic kernel (covered in
test_decode_split.py)."""

from __future__ import annotations

import numpy as np
import pytest

import attnkit

from conftest import BF16, assert_thread_invariant
from test_attention import check, qkv

F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)
HEADS = [(8, 8), (32, 8)]  # MHA, GQA 32:8
HEAD_IDS = ["mha", "gqa4"]


@pytest.mark.parametrize("Sq", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("Hq,Hkv", HEADS, ids=HEAD_IDS)
@pytest.mark.parametrize("D", [64, 128, 67])
def test_fused_f32(rng, Sq, Hq, Hkv, D):
    # 4133 keys: two splits, the last chunk short; 45: no split, one short chunk.
    Sk = 4133 if D == 128 else 45
    q, k, v = qkv(rng, 1, Hq, Hkv, Sq, Sk, D, D, F32)
    check(rng, F32, q, k, v)


@pytest.mark.parametrize("dtype", [F16, BF16], ids=["f16", "bf16"])
@pytest.mark.parametrize("Sq", [1, 3, 8])
@pytest.mark.parametrize("Hq,Hkv", HEADS, ids=HEAD_IDS)
@pytest.mark.parametrize("D,Dv", [(128, 128), (67, 33)])
def test_fused_lowp(rng, dtype, Sq, Hq, Hkv, D, Dv):
    q, k, v = qkv(rng, 1, Hq, Hkv, Sq, 4133 if D == 128 else 300, D, Dv, dtype)
    check(rng, dtype, q, k, v)
    check(rng, dtype, q, k, v, causal=True)


@pytest.mark.parametrize("dtype", [F32, F16, BF16], ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("Sq", [1, 8])
def test_fused_ranges(rng, dtype, Sq):
    B, Hq, Hkv, Sk = 3, 8, 2, 6001
    q, k, v = qkv(rng, B, Hq, Hkv, Sq, Sk, 128, 64, dtype, scale=0.5)
    check(rng, dtype, q, k, v, causal=True)
    check(rng, dtype, q, k, v, key_lengths=[5000, 0, 33])
    check(rng, dtype, q, k, v, window=(3000, 0))
    check(rng, dtype, q, k, v, window=(5, 2), causal=True)  # a few keys, in the last split
    check(rng, dtype, q, k, v, window=(2, 1))  # rows' ranges barely overlap
    check(rng, dtype, q, k, v, softcap=2.0, scale=0.3, key_lengths=np.array([6001, 4097, 2049], np.int32))
    check(rng, dtype, q, k, v, causal=True, window=(4000, 1), key_lengths=[6001, 4500, 1], scale=-0.2)


def test_fused_more_queries_than_keys(rng):
    q, k, v = qkv(rng, 1, 4, 1, 8, 3, 64, 64, F32)
    out, lse = check(rng, F32, q, k, v, causal=True)  # rows 0 .. 4 see no key
    assert (out[:, :, :5] == 0).all() and np.isneginf(lse[:, :, :5]).all()


def test_fused_strided(rng):
    """K / V rows at any row stride are read in place; a non-unit element stride goes to the generic
    kernel; queries of any strides."""
    big_k = rng.standard_normal((1, 2, 5000, 200), dtype=np.float32)
    big_v = rng.standard_normal((1, 5000, 2, 160), dtype=np.float32)
    q = np.ascontiguousarray(rng.standard_normal((1, 2, 8, 128), dtype=np.float32)).transpose(0, 2, 1, 3)
    k = big_k[..., 3:131]
    v = big_v.transpose(0, 2, 1, 3)[..., :96]
    check(rng, F32, q, k, v, causal=True)
    check(rng, F32, q[..., :64], big_k[..., ::2][..., :64], v, key_lengths=4000)


def test_fused_non_finite(rng):
    """A value row that is non-finite and masked for some rows (causal, Sq > 1) reaches only the rows that
    see its key; a NaN key poisons only its kv head's rows."""
    q, k, v = qkv(rng, 1, 8, 2, 4, 6000, 128, 64, F32)
    v[0, 0, 5998] = np.inf  # seen by rows 2 and 3 of kv head 0 only
    out = attnkit.attention(q, k, v, causal=True)
    assert np.isfinite(out[0, :4, :2]).all() and not np.isfinite(out[0, :4, 2:]).any()
    assert np.isfinite(out[0, 4:]).all()
    v[0, 0, 5998] = 0
    k[0, 1, 100, 5] = np.nan
    out, lse = attnkit.attention(q, k, v, return_lse=True)
    assert np.isnan(out[0, 4:]).all() and np.isnan(lse[0, 4:]).all() and np.isfinite(out[0, :4]).all()


def test_fused_long_splits(rng):
    """64 kv heads (no splits for the cores' sake) and more keys than one split may hold."""
    q, k, v = qkv(rng, 1, 64, 64, 1, 17000, 16, 16, F32)
    check(rng, F32, q, k, v)


@pytest.mark.parametrize("Sq,Hq,Hkv,Sk,dtype", [(1, 32, 32, 9000, F32), (2, 16, 16, 9000, F32), (3, 8, 8, 6000, F32),
                                                 (8, 32, 8, 16411, F32), (1, 32, 8, 7000, F16),
                                                 (6, 8, 2, 5003, BF16), (1, 1, 1, 40000, F32)])
def test_fused_thread_count_independent(rng, Sq, Hq, Hkv, Sk, dtype):
    q, k, v = qkv(rng, 1, Hq, Hkv, Sq, Sk, 128, 128, dtype)
    kw = dict(causal=True, key_lengths=Sk - 7, return_lse=True, softcap=20.0)
    assert_thread_invariant(lambda: attnkit.attention(q, k, v, **kw), threads=(1, 2, 3, 5))


@pytest.mark.parametrize("dtype", [F32, F16, BF16], ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("Sq,Hq,Hkv", [(1, 4, 4), (2, 4, 4), (3, 4, 4), (1, 8, 2), (5, 8, 2)])
def test_fused_prefetch_streams(rng, dtype, Sq, Hq, Hkv):
    """The K/V prefetches follow the keys across splits, kv heads and batch items (one thread: the end of
    an item prefetches the first keys of the next, which may be empty or short; several threads: each item
    starts with its own); MHA rows (Sq x G < 4) prefetch in their own blocks. Prefetching never changes a
    result: against the oracle, and the same bits with any thread count."""
    B, Sk = 3, 9000
    q, k, v = qkv(rng, B, Hq, Hkv, Sq, Sk, 128, 128, dtype)
    kw = dict(key_lengths=[Sk, 50, 2100], causal=True)
    check(rng, dtype, q, k, v, **kw)
    assert_thread_invariant(lambda: attnkit.attention(q, k, v, return_lse=True, **kw), threads=(1, 2, 3))


@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])
@pytest.mark.parametrize("B,Hkv,Sk", [(1, 1, 6000), (1, 2, 5000), (2, 3, 3000), (1, 8, 9000)])
def test_fused_more_threads_than_items(rng, dtype, B, Hkv, Sk):
    """Work items (batch, kv head, split) to threads: 2, 4, 6 and 32 items on up to 7 threads (some threads get
    none). Every item runs exactly once: against the oracle at 7 threads, and the same bits with any thread
    count."""
    q, k, v = qkv(rng, B, 2 * Hkv, Hkv, 1, Sk, 128, 128, dtype)
    old = attnkit.get_num_threads()
    try:
        attnkit.set_num_threads(7)
        check(rng, dtype, q, k, v, causal=True, key_lengths=Sk - 3)
    finally:
        attnkit.set_num_threads(old)
    assert_thread_invariant(lambda: attnkit.attention(q, k, v, return_lse=True), threads=(1, 2, 3, 7))


@pytest.mark.parametrize("Dv", [8, 24, 40, 128, 136])
@pytest.mark.parametrize("Sq,Hq,Hkv", [(1, 4, 4), (1, 8, 4), (1, 12, 4), (1, 32, 8), (2, 16, 8)])
def test_fused_bf16_value_pairs(rng, Dv, Sq, Hq, Hkv):
    """bfloat16 V read in place is read in pairs (the even and the odd elements of each block of 2W
    columns, W the vector width) and the output rows are kept in that order until they are written: every
    value width (whole blocks only, a block and a single vector, a single vector, the scalar tail) and row
    count (1-4 rows per kv head: the 1-, 2-, 3- and 4-row PV blocks), in chunks cut by key ranges (each
    row's own keys) and whole ones, against the oracle, and the same bits with any thread count."""
    q, k, v = qkv(rng, 2, Hq, Hkv, Sq, 3001, 64, Dv, BF16)
    check(rng, BF16, q, k, v)
    check(rng, BF16, q, k, v, causal=True, key_lengths=[3001, 1500], window=(2000, 0))
    assert_thread_invariant(lambda: attnkit.attention(q, k, v, return_lse=True, key_lengths=[2900, 77]),
                            threads=(1, 2))
