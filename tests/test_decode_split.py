"""Split decoding on the CPU: few query rows per kv head and long keys, where the keys are cut into splits
whose partial results are merged with the merge rule (split points from the problem size only). Against
the oracle over every contract feature, bitwise independent of the thread count."""

from __future__ import annotations

import numpy as np
import pytest

import attnkit

from conftest import BF16, DTYPES, DTYPE_IDS, assert_thread_invariant, randn
from test_attention import check, qkv

# Splits are at least 2048 keys long and only cut problems of fewer than 64 tiles: these lengths give
# 2 .. 8 splits, the odd ones a short last split.
SK = [4096, 6001, 16411]


@pytest.mark.parametrize("Sq", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("Hq,Hkv", [(4, 4), (8, 2), (32, 8)])
def test_split_shapes(rng, Sq, Hq, Hkv):
    q, k, v = qkv(rng, 1, Hq, Hkv, Sq, 6001, 128, 128, np.float32)
    check(rng, np.float32, q, k, v)
    check(rng, np.float32, q, k, v, causal=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("Sk", SK)
def test_split_dtypes(rng, dtype, Sk):
    q, k, v = qkv(rng, 2, 4, 1, 1, Sk, 128, 64, dtype)
    check(rng, dtype, q, k, v)


@pytest.mark.parametrize("dtype", [np.dtype(np.float32), BF16], ids=["f32", "bf16"])
@pytest.mark.parametrize("Sq", [1, 4])
def test_split_every_feature(rng, dtype, Sq):
    B, Hq, Hkv, Sk = 2, 8, 2, 6001
    q, k, v = qkv(rng, B, Hq, Hkv, Sq, Sk, 128, 128, dtype, scale=0.5)
    check(rng, dtype, q, k, v, mask=rng.random((B, Hq, Sq, Sk)) < 0.7)
    check(rng, dtype, q, k, v, bias=randn(rng, (B, 1, Sq, Sk), np.float32, 2.0))
    check(rng, dtype, q, k, v, key_lengths=[5000, 2100])
    check(rng, dtype, q, k, v, window=(3000, 0))
    check(rng, dtype, q, k, v, window=(100, 50), causal=True)  # only the last split has keys
    check(rng, dtype, q, k, v, softcap=2.0, alibi_slopes=rng.uniform(0, 0.01, Hq))
    check(rng, dtype, q, k, v, causal=True, window=(4000, 1), mask=rng.random((Hq, Sq, Sk)) < 0.9,
          bias=randn(rng, (Sq, Sk), np.float16), key_lengths=[6001, 4500], scale=0.2, softcap=8.0,
          alibi_slopes=rng.uniform(0, 0.001, (B, Hq)))


def test_split_fully_masked_rows(rng):
    B, Hq, Hkv, Sq, Sk = 3, 4, 2, 3, 8193
    q, k, v = qkv(rng, B, Hq, Hkv, Sq, Sk, 128, 128, np.float32)
    out, lse = check(rng, np.float32, q, k, v, key_lengths=[Sk, 0, 1])
    assert (out[1] == 0).all() and np.isneginf(lse[1]).all()
    assert np.isfinite(lse[2]).all()
    mask = np.ones((Sq, Sk), bool)
    mask[1] = False
    mask[2, :5000] = False  # only the later splits have keys
    out, lse = check(rng, np.float32, q, k, v, mask=mask)
    assert (out[:, :, 1] == 0).all() and np.isneginf(lse[:, :, 1]).all()
    out, lse = check(rng, np.float32, q, k, v, key_lengths=0)
    assert (out == 0).all() and np.isneginf(lse).all()


def test_split_non_finite(rng):
    """NaN in one split's values or keys poisons the row as without splits; masked ones never matter."""
    q, k, v = qkv(rng, 1, 4, 2, 1, 8192, 128, 64, np.float32)
    k[0, 0, 7000, 3] = np.nan
    out, lse = attnkit.attention(q, k, v, return_lse=True)
    assert np.isnan(out[0, :2]).all() and np.isnan(lse[0, :2]).all()
    assert np.isfinite(out[0, 2:]).all() and np.isfinite(lse[0, 2:]).all()
    k[0, 0, 7000, 3] = 0
    v[0, 1, 6000:] = np.inf
    a = attnkit.attention(q, k, v, key_lengths=6000)
    v[0, 1, 6000:] = 0
    np.testing.assert_array_equal(a, attnkit.attention(q, k, v, key_lengths=6000))


@pytest.mark.parametrize("shape", [(1, 4, 0, 8192), (0, 4, 1, 8192), (1, 4, 1, 0)])
def test_split_empty(rng, shape):
    B, Hq, Sq, Sk = shape
    q, k, v = randn(rng, (B, Hq, Sq, 128), np.float32), randn(rng, (B, 2, Sk, 128), np.float32), \
        randn(rng, (B, 2, Sk, 32), np.float32)
    out, lse = attnkit.attention(q, k, v, return_lse=True, causal=True)
    assert out.shape == (B, Hq, Sq, 32) and (out == 0).all() and np.isneginf(lse).all()


@pytest.mark.parametrize("Sq,Hq,Hkv,Sk", [(1, 32, 8, 16411), (3, 8, 2, 6001), (8, 4, 4, 4096), (1, 1, 1, 40000)])
def test_split_thread_count_independent(rng, Sq, Hq, Hkv, Sk):
    q, k, v = qkv(rng, 1, Hq, Hkv, Sq, Sk, 128, 128, np.float32)
    kw = dict(causal=True, bias=randn(rng, (Sq, Sk), np.float32), key_lengths=Sk - 7, return_lse=True)
    assert_thread_invariant(lambda: attnkit.attention(q, k, v, **kw), threads=(1, 2, 3, 5))
