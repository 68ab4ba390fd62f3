"""Property tests of block_sparse_attention_backward and linformer_attention_backward: random problems
give the oracle's gradients, and a broken argument raises ValueError / TypeError naming it."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import attnkit
from attnkit import reference as ref

from conftest import DTYPES, assert_close, broken_call, magnitude, naive_dtype, randn
from test_properties import SETTINGS, strided


def _longer(x):
    """x with one more entry along its last axis: a shape no call accepts."""
    return np.zeros(x.shape[:-1] + (x.shape[-1] + 1,), x.dtype)


def _dims(data):
    B, Hkv, G = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3))
    return B, Hkv, G, data.draw(st.integers(1, 24)), data.draw(st.integers(1, 24))


@settings(SETTINGS, max_examples=40)
@given(data=st.data())
def test_block_sparse_backward_random_problems(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    dtype = data.draw(st.sampled_from(DTYPES))
    B, Hkv, G, D, Dv = _dims(data)
    Hq = Hkv * G
    bq, bk = data.draw(st.integers(1, 16)), data.draw(st.integers(1, 16))
    nqb, nkb = data.draw(st.integers(0, 5)), data.draw(st.integers(0, 5))
    Sq, Sk = nqb * bq - data.draw(st.integers(0, bq - 1)) * (nqb > 0), nkb * bk
    heads = data.draw(st.sampled_from([1, Hq]))
    layout = attnkit.BlockLayout.from_dense(rng.random((heads, nqb, nkb)) < 0.6, (bq, bk))
    q = strided(rng, (B, Hq, Sq, D), dtype, data)
    k = strided(rng, (B, Hkv, Sk, D), dtype, data)
    v = strided(rng, (B, Hkv, Sk, Dv), dtype, data)
    kw = {"causal": data.draw(st.booleans())}
    if data.draw(st.booleans()):
        kw["key_lengths"] = rng.integers(0, Sk + 1, B)
    out, lse = attnkit.block_sparse_attention(q, k, v, layout, return_lse=True, **kw)
    dout = randn(rng, out.shape, dtype)
    args = dict(dout=dout, q=q, k=k, v=v, out=out, lse=lse, layout=layout, **kw)
    breaks = [("dout", dout[..., :0], "dout"), ("lse", _longer(lse), "lse"), ("out", out.astype(np.int32), "out"),
              ("layout", attnkit.BlockLayout.from_dense(np.ones((1, nqb + 1, nkb + 1), bool), (bq, bk)), "layout"),
              ("key_lengths", np.zeros(B + 1, np.int64), "key_lengths")]
    if broken_call(data, attnkit.block_sparse_attention_backward, args, breaks):
        return
    got = attnkit.block_sparse_attention_backward(**args)
    want = ref.block_sparse_attention_backward(dout, q, k, v, layout, **kw)
    naive = ref.block_sparse_attention_backward(dout, q, k, v, layout, _dtype=naive_dtype(dtype), **kw)
    for name, g, r, n in zip(("dq", "dk", "dv"), got, want, naive):
        # 4 atol units per unit of gradient size, as test_backward.py's _check: the kernel starts from the
        # forward's rounded out and lse (D_i = dout_i . out_i), which the naive recomputation does not see
        # (seen here: a float32 row with one allowed key, where dS = P (dP - D) is 0 exactly, got dk ~3e-6
        # of that rounding against an oracle and a naive result of exactly 0)
        assert_close(g, r, n, dtype, what=name, atol_scale=4 * magnitude(r))


@settings(SETTINGS, max_examples=40)
@given(data=st.data())
def test_linformer_backward_random_problems(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    # float64: in float32 the projections K' = E k, V' = F v (rounded to q's dtype, sums over Sk keys) and
    # dE = dK' k^T put cancellation errors on top of a naive baseline that, on tiny draws, rounds to the
    # oracle exactly; float32 and the 16-bit types are held to the rule by test_backward.py::test_linformer
    dtype = np.float64
    B, Hkv, G, D, Dv = _dims(data)
    Sq, Sk, P = data.draw(st.integers(0, 30)), data.draw(st.integers(1, 40)), data.draw(st.integers(1, 12))
    heads = data.draw(st.sampled_from([None, Hkv]))
    E = attnkit.linformer_projection(P, Sk, seed=1, num_heads=heads)
    F = attnkit.linformer_projection(P, Sk, seed=2, num_heads=heads) if data.draw(st.booleans()) else None
    q = strided(rng, (B, Hkv * G, Sq, D), dtype, data)
    k = strided(rng, (B, Hkv, Sk, D), dtype, data)
    v = strided(rng, (B, Hkv, Sk, Dv), dtype, data)
    kw = {}
    if data.draw(st.booleans()):
        kw["key_lengths"] = rng.integers(0, Sk + 1, B)
    out, lse = attnkit.linformer_attention(q, k, v, E, F, return_lse=True, **kw)
    dout = randn(rng, out.shape, dtype)
    args = dict(dout=dout, q=q, k=k, v=v, out=out, lse=lse, E=E, F=F, **kw)
    breaks = [("dout", dout[:, :0], "dout"), ("lse", _longer(lse), "lse"), ("E", E[..., :-1], "E"),
              ("F", np.ones((P + 1, Sk), np.float32), "F"), ("q", q.astype(np.int64), "q")]
    if broken_call(data, attnkit.linformer_attention_backward, args, breaks):
        return
    got = attnkit.linformer_attention_backward(**args)
    want = ref.linformer_attention_backward(dout, q, k, v, E, F, **kw)
    naive = ref.linformer_attention_backward(dout, q, k, v, E, F, _dtype=naive_dtype(dtype), **kw)
    assert (got[4] is None) == (F is None)
    for name, g, r, n, x in zip(("dq", "dk", "dv", "dE", "dF"), got, want, naive, (q, k, v, E, F)):
        if x is None:
            continue
        assert g.shape == x.shape and g.dtype == x.dtype, name
        # dE / dF are rounded to the projection's dtype (float32: linformer_projection's default)
        tdt = dtype if name[1] in "qkv" else x.dtype
        assert_close(g, r, n, tdt, what=name, atol_scale=magnitude(r))
