"""linformer_projection and linformer_attention against the float64 oracles (NumPy Philox port; projection
then reference.attention), identities (identity projection = exact attention), dtypes, GQA, shared and
per-head projections, key_lengths, ranks, strides, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import attnkit
from attnkit import reference as ref

from conftest import (DTYPES, DTYPE_IDS, assert_close, assert_thread_invariant, broken_call, magnitude, naive_dtype,
                      raises, randn)
from test_properties import SETTINGS, strided


def qkv(rng, B, Hq, Hkv, Sq, Sk, D, Dv, dtype):
    return randn(rng, (B, Hq, Sq, D), dtype), randn(rng, (B, Hkv, Sk, D), dtype), randn(rng, (B, Hkv, Sk, Dv), dtype)


def check(dtype, q, k, v, E, F=None, **kw):
    """Output and lse against the oracle. The naive baseline stores the projections in the input dtype,
    as the kernel does for 16-bit inputs (the same-precision computation a framework would run)."""
    out, lse = attnkit.linformer_attention(q, k, v, E, F, return_lse=True, **kw)
    assert out.dtype == q.dtype and lse.dtype == (np.float64 if dtype == np.float64 else np.float32)
    r, rl = ref.linformer_attention(q, k, v, E, F, return_lse=True, **kw)
    nd = naive_dtype(dtype)
    n, nl = ref.linformer_attention(q, k, v, E, F, return_lse=True, _dtype=nd,
                                    _proj_dtype=dtype if np.dtype(dtype).itemsize == 2 else None, **kw)
    # K' and V' are sums over the keys, their size grows like sqrt(Sk / P): atol follows the result's size
    assert_close(out, r, n, dtype, atol_scale=magnitude(r))
    assert_close(lse, rl, nl, lse.dtype, what="lse", atol_scale=magnitude(rl))
    return out, lse




# -------------------------------------------------------------------------------------- projection
@pytest.mark.parametrize("P,Sk,H", [(1, 1, None), (7, 33, None), (16, 100, 3), (64, 5, 1), (3, 0, 2)])
def test_projection_oracle(P, Sk, H):
    e = attnkit.linformer_projection(P, Sk, seed=12, num_heads=H, dtype=np.float64)
    r = ref.linformer_projection(P, Sk, seed=12, num_heads=H)
    assert e.shape == r.shape == ((P, Sk) if H is None else (H, P, Sk))
    np.testing.assert_allclose(e, r, rtol=1e-14, atol=1e-15)


def test_projection_properties():
    e = attnkit.linformer_projection(64, 3000, seed=4, num_heads=2, dtype=np.float64)
    assert abs(e.var() * 64 - 1) < 0.02 and abs(e.mean()) < 0.01                  # N(0, 1/P)
    shared = attnkit.linformer_projection(64, 3000, seed=4, dtype=np.float64)
    np.testing.assert_array_equal(shared, e[0])                                    # shared = head 0
    np.testing.assert_array_equal(attnkit.linformer_projection(64, 100, seed=4, dtype=np.float64), shared[:, :100])
    assert not np.array_equal(e[0], e[1])
    x64 = attnkit.linformer_projection(8, 20, seed=4, dtype=np.float64)
    for dt in DTYPES:
        x = attnkit.linformer_projection(8, 20, seed=4, dtype=dt)
        assert x.dtype == dt
        np.testing.assert_allclose(x.astype(np.float64), x64, rtol=2**-8, atol=2**-24)


# ------------------------------------------------------------------------------------------ attention
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("Sq,Sk", [(1, 1), (7, 7), (33, 33), (257, 257), (20, 90), (90, 20)])
@pytest.mark.parametrize("P", [1, 16, 70])
def test_oracle(rng, dtype, Sq, Sk, P):
    q, k, v = qkv(rng, 2, 4, 2, Sq, Sk, 32, 24, dtype)
    e = attnkit.linformer_projection(P, Sk, seed=P)
    check(dtype, q, k, v, e)


@pytest.mark.parametrize("per_head_e", [False, True])
@pytest.mark.parametrize("f_kind", ["none", "shared", "per_head"])
def test_projection_kinds(rng, per_head_e, f_kind):
    q, k, v = qkv(rng, 2, 6, 3, 40, 50, 16, 20, np.float32)
    e = attnkit.linformer_projection(12, 50, seed=1, num_heads=3 if per_head_e else None)
    f = {"none": None, "shared": attnkit.linformer_projection(12, 50, seed=2),
         "per_head": attnkit.linformer_projection(12, 50, seed=3, num_heads=3)}[f_kind]
    check(np.float32, q, k, v, e, f)


@pytest.mark.parametrize("edtype", DTYPES, ids=DTYPE_IDS)
def test_projection_dtypes_and_strides(rng, edtype):
    """E and F of any float dtype and any strides, with inputs of another dtype."""
    q, k, v = qkv(rng, 1, 2, 2, 30, 60, 64, 64, np.float32)
    e = randn(rng, (2, 60, 10), edtype).transpose(0, 2, 1)            # [Hkv, P, Sk] column-major
    f = randn(rng, (10, 120), edtype)[:, ::-2]                        # negative stride along Sk
    check(np.float32, q, k, v, e, f)
    check(np.float64, q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), e, f)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_key_lengths(rng, dtype):
    q, k, v = qkv(rng, 3, 2, 2, 20, 80, 16, 16, dtype)
    e = attnkit.linformer_projection(24, 80)
    lens = np.array([80, 0, 33])
    out, lse = check(dtype, q, k, v, e, key_lengths=lens)
    assert (out[1] == 0).all() and np.isfinite(lse[1]).all()         # K' = V' = 0: uniform over zeros
    k2, v2 = k.copy(), v.copy()
    k2[2, :, 33:] = np.nan
    v2[2, :, 33:] = np.inf
    np.testing.assert_array_equal(attnkit.linformer_attention(q, k2, v2, e, key_lengths=lens), out)


def test_identity_projection_is_exact_attention(rng):
    q, k, v = qkv(rng, 2, 4, 2, 50, 40, 32, 16, np.float64)
    eye = np.eye(40)
    np.testing.assert_allclose(attnkit.linformer_attention(q, k, v, eye), attnkit.attention(q, k, v),
                               rtol=1e-12, atol=1e-13)
    out, lse = attnkit.linformer_attention(q, k, v, eye, scale=0.3, return_lse=True)
    r, rl = attnkit.attention(q, k, v, scale=0.3, return_lse=True)
    np.testing.assert_allclose(out, r, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(lse, rl, rtol=1e-12, atol=1e-13)
    perm = np.eye(40)[::-1]                                           # any permutation too
    np.testing.assert_allclose(attnkit.linformer_attention(q, k, v, perm), attnkit.attention(q, k, v), atol=1e-12)


@pytest.mark.parametrize("rank", [2, 3])
def test_lower_ranks(rng, rank):
    lead = () if rank == 2 else (2,)
    q, k, v = (randn(rng, lead + (s, d), np.float32) for s, d in ((30, 16), (45, 16), (45, 8)))
    e = attnkit.linformer_projection(10, 45, num_heads=2 if rank == 3 else None)
    out, lse = check(np.float32, q, k, v, e, key_lengths=40)
    assert out.shape == lead + (30, 8) and lse.shape == lead + (30,)


def test_gqa_bshd_and_determinism(rng):
    B, S, H, D = 2, 200, 8, 32
    qb, kb, vb = randn(rng, (B, S, H, D), np.float32), randn(rng, (B, S, 2, D), np.float32), randn(
        rng, (B, S, 2, D), np.float32)
    q, k, v = (x.transpose(0, 2, 1, 3) for x in (qb, kb, vb))
    e = attnkit.linformer_projection(130, S, num_heads=2)
    check(np.float32, q, k, v, e, key_lengths=[200, 150])
    assert_thread_invariant(lambda: attnkit.linformer_attention(q, k, v, e))


def test_empty(rng):
    q, k, v = qkv(rng, 1, 2, 2, 0, 10, 8, 4, np.float32)
    out, lse = attnkit.linformer_attention(q, k, v, attnkit.linformer_projection(3, 10), return_lse=True)
    assert out.shape == (1, 2, 0, 4) and lse.shape == (1, 2, 0)
    q, k, v = qkv(rng, 1, 2, 2, 5, 0, 8, 4, np.float32)
    out = attnkit.linformer_attention(q, k, v, attnkit.linformer_projection(3, 0))
    assert (out == 0).all()


# ------------------------------------------------------------------------------------------- errors
def test_causal_is_rejected(rng):
    q, k, v = qkv(rng, 1, 2, 2, 8, 8, 8, 8, np.float32)
    e = attnkit.linformer_projection(4, 8)
    for value in (True, False, None):
        raises(ValueError, "causal is not defined for Linformer", attnkit.linformer_attention, q, k, v, e,
               causal=value)


def test_errors(rng):
    q, k, v = qkv(rng, 2, 4, 2, 10, 12, 8, 4, np.float32)
    e = attnkit.linformer_projection(5, 12)
    f = attnkit.linformer_attention
    raises(ValueError, "E", f, q, k, v, e[:, :11])                                # Sk
    raises(ValueError, "E", f, q, k, v, np.ones((3, 5, 12), np.float32))          # Hkv
    raises(ValueError, "E", f, q, k, v, e[0])                                     # rank 1
    raises(ValueError, "E", f, q, k, v, e[:0])                                    # P = 0
    raises(ValueError, "E is required", f, q, k, v, None)
    raises(TypeError, "E", f, q, k, v, e.astype(np.int64))
    raises(TypeError, "E", f, q, k, v, e.tolist())
    raises(ValueError, "F", f, q, k, v, e, attnkit.linformer_projection(6, 12))   # P differs
    raises(ValueError, "F", f, q, k, v, e, e[:, :3])
    raises(ValueError, "scale", f, q, k, v, e, scale=float("inf"))
    raises(ValueError, "key_lengths", f, q, k, v, e, key_lengths=[13, 0])
    raises(ValueError, "k", f, q[:, :3], k, v, e)                                 # Hq % Hkv
    raises(TypeError, "v", f, q, k, v.astype(np.float16), e)
    raises(TypeError, "return_lse", f, q, k, v, e, return_lse=1)
    p = attnkit.linformer_projection
    raises(ValueError, "proj_len", p, 0, 10)
    raises(ValueError, "seq_len", p, 4, -1)
    raises(ValueError, "num_heads", p, 4, 10, num_heads=0)
    raises(TypeError, "num_heads", p, 4, 10, num_heads=2.0)
    raises(ValueError, "seed", p, 4, 10, seed=-3)
    raises(TypeError, "dtype", p, 4, 10, dtype=np.int8)
    raises(TypeError, "proj_len", p, "4", 10)


# ------------------------------------------------------------------------------------------ properties
@SETTINGS
@given(data=st.data())
def test_projection_random_arguments(data):
    """Random lengths, head counts, seeds and dtypes: the oracle rounded once to the dtype, or an error
    naming the argument that was broken."""
    P, Sk, H = data.draw(st.integers(1, 40)), data.draw(st.integers(0, 60)), data.draw(st.sampled_from([None, 1, 3]))
    args = dict(proj_len=P, seq_len=Sk, seed=data.draw(st.integers(0, 2**64 - 1)), num_heads=H,
                dtype=data.draw(st.sampled_from(DTYPES)))
    breaks = [("proj_len", 0, "proj_len"), ("proj_len", "4", "proj_len"), ("seq_len", -1, "seq_len"),
              ("seq_len", True, "seq_len"), ("num_heads", 0, "num_heads"), ("num_heads", 2.0, "num_heads"),
              ("seed", -1, "seed"), ("seed", 2**64, "seed"), ("dtype", np.int8, "dtype")]
    if broken_call(data, attnkit.linformer_projection, args, breaks):
        return
    e = attnkit.linformer_projection(**args)
    r = ref.linformer_projection(**dict(args, dtype=np.float64))
    assert e.shape == r.shape == ((P, Sk) if H is None else (H, P, Sk)) and e.dtype == args["dtype"]
    rtol = {8: 1e-14, 4: 2**-23, 2: 2**-8}[e.dtype.itemsize]                      # one rounding of the oracle
    np.testing.assert_allclose(e.astype(np.float64), r, rtol=rtol, atol=1e-15 if e.dtype.itemsize == 8 else 2**-24)


@SETTINGS
@given(data=st.data())
def test_attention_random_problems(data):
    """Random shapes, strides, dtypes, GQA, shared / per-head E and F, key_lengths and scale: the oracle,
    or an error naming the argument that was broken."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    dtype = data.draw(st.sampled_from(DTYPES))
    B, Hkv, G = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3))
    Sq, Sk, P = data.draw(st.integers(0, 40)), data.draw(st.integers(0, 60)), data.draw(st.integers(1, 20))
    D, Dv = data.draw(st.integers(1, 24)), data.draw(st.integers(1, 24))

    def projection(seed):
        heads = data.draw(st.sampled_from([None, Hkv]))
        return attnkit.linformer_projection(P, Sk, seed=seed, num_heads=heads, dtype=data.draw(st.sampled_from(DTYPES)))

    E = projection(1)
    args = dict(q=strided(rng, (B, Hkv * G, Sq, D), dtype, data), k=strided(rng, (B, Hkv, Sk, D), dtype, data),
                v=strided(rng, (B, Hkv, Sk, Dv), dtype, data), E=E,
                F=projection(2) if data.draw(st.booleans()) else None)
    if data.draw(st.booleans()):
        args["key_lengths"] = rng.integers(0, Sk + 1, B)
    if data.draw(st.booleans()):
        args["scale"] = data.draw(st.sampled_from([0.0, 0.1, 2.0]))
    breaks = [("E", attnkit.linformer_projection(P, Sk + 1), "E"), ("E", np.ones((Hkv + 1, P, Sk), np.float32), "E"),
              ("E", E.astype(np.int64), "E"), ("F", attnkit.linformer_projection(P + 1, Sk), "F"),
              ("causal", True, "causal"), ("key_lengths", np.full(B + 1, Sk), "key_lengths"),
              ("key_lengths", np.full(B, Sk + 1), "key_lengths"), ("scale", float("nan"), "scale"),
              ("q", args["q"].astype(np.int32), "q"), ("k", np.zeros((B, Hkv, Sk, D + 1), dtype), "k"),
              ("return_lse", 1, "return_lse")]
    if broken_call(data, attnkit.linformer_attention, args, breaks):
        return
    a = dict(args)
    check(dtype, a.pop("q"), a.pop("k"), a.pop("v"), a.pop("E"), a.pop("F"), **a)
