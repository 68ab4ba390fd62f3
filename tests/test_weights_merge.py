"""attention_weights and merge_attention against the oracle, and their identities."""

from __future__ import annotations

import numpy as np
import pytest

import attnkit
from attnkit import reference as ref

from conftest import DTYPE_IDS, DTYPES, assert_close, naive_dtype, randn


def _naive_weights(q, k, dtype, **kw):
    return ref.attention_weights(np.asarray(q).astype(naive_dtype(dtype)), np.asarray(k).astype(naive_dtype(dtype)),
                                 **kw)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("Sq,Sk", [(1, 1), (7, 33), (65, 65), (100, 17)])
@pytest.mark.parametrize("kw", [{}, {"causal": True}, {"window": (3, 5)}, "lens", "mask_bias_alibi_softcap"],
                         ids=["plain", "causal", "window", "lens", "all"])
def test_weights(rng, dtype, Sq, Sk, kw):
    B, Hq, Hkv = 2, 4, 2
    if kw == "lens":
        kw = dict(key_lengths=[min(5, Sk), 0])
    if kw == "mask_bias_alibi_softcap":
        kw = dict(mask=rng.random((Sq, Sk)) < 0.7, bias=randn(rng, (B, Hq, 1, Sk), np.float32),
                  alibi_slopes=rng.uniform(0, 0.3, Hq), softcap=4.0, causal=True)
    q = randn(rng, (B, Hq, Sq, 64), dtype)
    k = randn(rng, (B, Hkv, Sk, 64), dtype)
    w = attnkit.attention_weights(q, k, **kw)
    assert w.shape == (B, Hq, Sq, Sk) and w.dtype == q.dtype
    r = ref.attention_weights(q, k, **kw)
    assert_close(w, r, _naive_weights(q, k, dtype, **kw), dtype, what="weights")
    # exact zeros wherever the oracle has them (masked keys, empty rows)
    assert (np.asarray(w, np.float64)[r == 0] == 0).all()
    sums = np.asarray(w, np.float64).sum(-1)
    empty = r.sum(-1) == 0
    np.testing.assert_allclose(sums[~empty], 1.0, atol=2e-2 if q.dtype.itemsize == 2 else 1e-5)


def test_weights_match_attention(rng):
    q = randn(rng, (1, 2, 50, 64), np.float64)
    k = randn(rng, (1, 2, 70, 64), np.float64)
    v = randn(rng, (1, 2, 70, 32), np.float64)
    w = attnkit.attention_weights(q, k, causal=True, window=(20, 0))
    np.testing.assert_allclose(w @ v, attnkit.attention(q, k, v, causal=True, window=(20, 0)), atol=1e-12)


def test_weights_rank2(rng):
    q = randn(rng, (9, 16), np.float32)
    k = randn(rng, (12, 16), np.float32)
    w = attnkit.attention_weights(q, k, causal=True)
    assert w.shape == (9, 12)
    assert_close(w, ref.attention_weights(q, k, causal=True), _naive_weights(q, k, np.float32, causal=True),
                 np.float32)


# ---------------------------------------------------------------------------------------------- merge
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("splits", [[0, 100], [0, 30, 100], [0, 1, 2, 50, 99, 100], [0, 64, 64, 100]])
@pytest.mark.parametrize("causal", [False, True])
def test_merge_equals_union(rng, dtype, splits, causal):
    """Split-KV: attention over disjoint key ranges, merged, equals one call over all keys."""
    q = randn(rng, (2, 4, 40, 64), dtype)
    k = randn(rng, (2, 2, 100, 64), dtype)
    v = randn(rng, (2, 2, 100, 48), dtype)
    full, full_lse = attnkit.attention(q, k, v, causal=causal, return_lse=True)
    outs, lses = [], []
    for a, b in zip(splits[:-1], splits[1:]):
        mask = np.zeros((1, 1, 40, 100), bool)
        mask[..., a:b] = True  # same key positions as the full call, so causal alignment is unchanged
        o, l = attnkit.attention(q, k, v, causal=causal, mask=mask, return_lse=True)
        outs.append(o)
        lses.append(l)
    out, lse = attnkit.merge_attention(outs, lses)
    assert out.dtype == q.dtype and lse.dtype == full_lse.dtype
    r_out, r_lse = ref.merge_attention(outs, lses)
    n_out, n_lse = ref.merge_attention([o.astype(naive_dtype(dtype)) for o in outs], lses)
    assert_close(out, r_out, n_out, dtype)
    assert_close(lse, r_lse, n_lse, lse.dtype, what="lse")
    # and the merge reproduces the single call up to the dtype's rounding of the parts
    tol = {2: 2e-2, 4: 2e-5, 8: 1e-12}[q.dtype.itemsize]
    np.testing.assert_allclose(np.asarray(out, np.float64), np.asarray(full, np.float64), atol=tol)
    np.testing.assert_allclose(lse, full_lse, atol=1e-5 if lse.dtype == np.float32 else 1e-12)


def test_merge_empty_parts(rng):
    outs = [np.full((3, 5, 8), np.nan, np.float32), randn(rng, (3, 5, 8), np.float32)]
    lses = [np.full((3, 5), -np.inf, np.float32), randn(rng, (3, 5), np.float32)]
    lses[1][0, 0] = -np.inf
    out, lse = attnkit.merge_attention(outs, lses)
    np.testing.assert_allclose(out[1:], outs[1][1:], rtol=1e-6)
    np.testing.assert_array_equal(lse[1:], lses[1][1:])
    assert (out[0, 0] == 0).all() and np.isneginf(lse[0, 0])
    r_out, r_lse = ref.merge_attention(outs, lses)
    np.testing.assert_allclose(out, r_out, rtol=1e-6)
    np.testing.assert_array_equal(lse, r_lse)


def test_merge_stacked_and_strided(rng):
    outs = randn(rng, (3, 2, 7, 16), np.float64)
    lses = randn(rng, (3, 2, 7), np.float64)
    out, lse = attnkit.merge_attention(outs, lses)
    r_out, r_lse = ref.merge_attention(list(outs), list(lses))
    np.testing.assert_allclose(out, r_out, rtol=1e-13)
    np.testing.assert_allclose(lse, r_lse, rtol=1e-13)
    out2, lse2 = attnkit.merge_attention([o[:, ::-1].copy()[:, ::-1] for o in outs],
                                         [x.T.copy().T for x in lses])
    np.testing.assert_array_equal(out, out2)
    single, single_lse = attnkit.merge_attention([outs[0]], [lses[0]])
    np.testing.assert_allclose(single, outs[0], rtol=1e-15)
    np.testing.assert_array_equal(single_lse, lses[0])


def test_merge_1d(rng):
    outs = [randn(rng, (8,), np.float32) for _ in range(2)]
    lses = [np.array(0.5, np.float32), np.array(-1.0, np.float32)]
    out, lse = attnkit.merge_attention(outs, lses)
    assert out.shape == (8,) and lse.shape == ()
    r_out, r_lse = ref.merge_attention(outs, lses)
    np.testing.assert_allclose(out, r_out, rtol=1e-6)
    np.testing.assert_allclose(lse, r_lse, rtol=1e-6)
