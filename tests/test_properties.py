"""Property tests: random shapes, strides, dtypes and masking options either match the oracle or raise
a clear ValueError/TypeError — never a crash or garbage."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attnkit
from attnkit import reference as ref

from conftest import DTYPES, assert_close, naive_dtype

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def strided(rng, shape, dtype, data):
    """An array of `shape` as a view with random slicing / reversal / transposition."""
    step = [data.draw(st.sampled_from([1, 1, 2])) for _ in shape]
    base = rng.standard_normal(tuple(s * t + 1 for s, t in zip(shape, step))).astype(dtype)
    view = base[tuple(slice(1, 1 + s * t, t) for s, t in zip(shape, step))]
    if data.draw(st.booleans()):
        view = view[..., ::-1, :]
    if data.draw(st.booleans()) and len(shape) == 4:  # a BSHD-style buffer read as BHSD
        b = np.ascontiguousarray(view.transpose(0, 2, 1, 3))
        view = b.transpose(0, 2, 1, 3)
    assert view.shape == tuple(shape)
    return view


def draw_masking(data, rng, B, Hq, Sq, Sk):
    """Random masking arguments of attention (each present or not): causal, window, mask, bias,
    key_lengths, ALiBi slopes, softcap."""
    kw = {}
    if data.draw(st.booleans()):
        kw["causal"] = True
    if data.draw(st.booleans()):
        kw["window"] = (data.draw(st.integers(-1, 40)), data.draw(st.integers(-1, 40)))
    if data.draw(st.booleans()):
        kw["mask"] = rng.random((B, 1, Sq, Sk)) < 0.7
    if data.draw(st.booleans()):
        kw["bias"] = rng.standard_normal((Sq, Sk)).astype(np.float32)
    if data.draw(st.booleans()):
        kw["key_lengths"] = rng.integers(0, Sk + 1, B)
    if data.draw(st.booleans()):
        kw["alibi_slopes"] = rng.uniform(0, 0.3, Hq)
    if data.draw(st.booleans()):
        kw["softcap"] = data.draw(st.sampled_from([1.0, 10.0]))
    return kw


@SETTINGS
@given(data=st.data())
def test_random_problems(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    dtype = data.draw(st.sampled_from(DTYPES))
    B = data.draw(st.integers(1, 2))
    Hkv = data.draw(st.integers(1, 3))
    G = data.draw(st.integers(1, 3))
    Sq = data.draw(st.integers(0, 70))
    Sk = data.draw(st.integers(0, 90))
    D = data.draw(st.integers(1, 70))
    Dv = data.draw(st.integers(1, 40))
    q = strided(rng, (B, Hkv * G, Sq, D), dtype, data)
    k = strided(rng, (B, Hkv, Sk, D), dtype, data)
    v = strided(rng, (B, Hkv, Sk, Dv), dtype, data)
    kw = draw_masking(data, rng, B, Hkv * G, Sq, Sk)
    out, lse = attnkit.attention(q, k, v, return_lse=True, **kw)
    r_out, r_lse = ref.attention(q, k, v, return_lse=True, **kw)
    n_out, n_lse = ref.attention(q, k, v, return_lse=True, _dtype=naive_dtype(dtype), **kw)
    assert_close(out, r_out, n_out, dtype)
    assert_close(lse, r_lse, n_lse, lse.dtype, what="lse")


@SETTINGS
@given(data=st.data())
def test_bad_shapes_raise_cleanly(data):
    """Arbitrary (often inconsistent) shapes: a result or ValueError/TypeError, nothing else."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    dims = st.lists(st.integers(0, 5), min_size=1, max_size=5)
    q = rng.standard_normal(data.draw(dims)).astype(np.float32)
    k = rng.standard_normal(data.draw(dims)).astype(np.float32)
    v = rng.standard_normal(data.draw(dims)).astype(np.float32)
    mask = rng.random(data.draw(dims)) < 0.5 if data.draw(st.booleans()) else None
    try:
        out = attnkit.attention(q, k, v, mask=mask)
    except (ValueError, TypeError):
        return
    assert out.shape == q.shape[:-1] + (v.shape[-1],)
    assert not np.isnan(out).any()
    np.testing.assert_allclose(out, ref.attention(q, k, v, mask=mask), atol=1e-5)
