"""attnkit.attention_backward / block_sparse_attention_backward against the float64 oracle and float64
finite differences: shapes, dtypes, GQA, every masking feature, dbias, empty rows, determinism, errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import attnkit
from attnkit import layouts
from attnkit import reference as ref

from conftest import (DTYPES, DTYPE_IDS, assert_close, assert_thread_invariant, magnitude, naive_dtype, raises, randn,
                      run_in_isa)


def check(rng, dtype, q, k, v, *, return_dbias=False, **kw):
    """Forward with lse, then the backward; compares dq, dk, dv (and dbias) with the oracle."""
    out, lse = attnkit.attention(q, k, v, return_lse=True, **kw)
    dout = randn(rng, out.shape, dtype)
    got = attnkit.attention_backward(dout, q, k, v, out, lse, return_dbias=return_dbias, **kw)
    want = ref.attention_backward(dout, q, k, v, return_dbias=return_dbias, **kw)
    naive = ref.attention_backward(dout, q, k, v, return_dbias=return_dbias, _dtype=naive_dtype(dtype), **kw)
    names = ("dq", "dk", "dv", "dbias")
    for name, g, r, n, x in zip(names, got, want, naive, (q, k, v, kw.get("bias"))):
        assert g.shape == np.shape(x), (name, g.shape)
        assert g.dtype == (q.dtype if name != "dbias" else x.dtype), name
        # dbias is computed in q's precision, then rounded to the bias's dtype
        tol_dtype = x.dtype if name == "dbias" and x.dtype.itemsize < np.dtype(dtype).itemsize else dtype
        # The kernel starts from the forward's rounded out and lse (D_i = dout_i . out_i, p = exp(s - lse)),
        # which the naive recomputation does not see: 4 atol units per unit of gradient size cover that
        # rounding (seen: 3.4e-6 at |dk| ~ 1 in float32 against a naive error of 2e-7).
        assert_close(g, r, n, tol_dtype, what=name, atol_scale=4 * magnitude(r))
    return got


def qkv(rng, B, Hq, Hkv, Sq, Sk, D, Dv, dtype):
    return randn(rng, (B, Hq, Sq, D), dtype), randn(rng, (B, Hkv, Sk, D), dtype), randn(rng, (B, Hkv, Sk, Dv), dtype)


# ------------------------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("S", [1, 7, 33, 130])
@pytest.mark.parametrize("D", [8, 60, 64, 80])
def test_shapes_dtypes(rng, dtype, S, D):
    check(rng, dtype, *qkv(rng, 2, 2, 2, S, S, D, D, dtype))


@pytest.mark.parametrize("D,Dv", [(256, 256), (3, 5), (1, 1), (33, 200)])
def test_head_dims(rng, D, Dv):
    q, k, v = qkv(rng, 1, 2, 1, 19, 45, D, Dv, np.float32)
    check(rng, np.float32, q, k, v)
    check(rng, np.float32, q, k, v, causal=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("Sq,Sk", [(1, 300), (5, 77), (100, 31), (129, 129), (64, 1), (200, 333)])
@pytest.mark.parametrize("causal", [False, True])
def test_cross_lengths(rng, dtype, Sq, Sk, causal):
    check(rng, dtype, *qkv(rng, 1, 3, 3, Sq, Sk, 64, 32, dtype), causal=causal)


@pytest.mark.parametrize("Hq,Hkv", [(4, 2), (8, 2), (6, 1), (5, 5)])
@pytest.mark.parametrize("Sq,Sk", [(1, 200), (37, 37), (130, 70)])
def test_gqa(rng, Hq, Hkv, Sq, Sk):
    q, k, v = qkv(rng, 2, Hq, Hkv, Sq, Sk, 32, 48, np.float32)
    check(rng, np.float32, q, k, v, causal=True)
    check(rng, np.float32, q, k, v, window=(5, 3), alibi_slopes=rng.uniform(0, 1, Hq))


@pytest.mark.parametrize("rank", [2, 3])
def test_lower_ranks(rng, rank):
    q = randn(rng, (40, 64) if rank == 2 else (4, 40, 64), np.float32)
    k = randn(rng, (50, 64) if rank == 2 else (2, 50, 64), np.float32)
    v = randn(rng, k.shape[:-1] + (16,), np.float32)
    check(rng, np.float32, q, k, v, causal=True, key_lengths=45)


def test_strided_views(rng):
    """BSHD storage read through transposed views, for the inputs and dout."""
    B, S, H, D = 2, 70, 4, 64
    q = randn(rng, (B, S, H, D), np.float32).transpose(0, 2, 1, 3)
    k = randn(rng, (B, S, 2, D), np.float32).transpose(0, 2, 1, 3)
    v = randn(rng, (B, S, 2, 2 * D), np.float32)[..., ::2].transpose(0, 2, 1, 3)
    out, lse = attnkit.attention(q, k, v, causal=True, return_lse=True)
    dout = randn(rng, (B, S, H, D), np.float32).transpose(0, 2, 1, 3)
    got = attnkit.attention_backward(dout, q, k, v, out, lse, causal=True)
    cont = attnkit.attention_backward(*(np.ascontiguousarray(a) for a in (dout, q, k, v, out, lse)), causal=True)
    for a, b in zip(got, cont):
        np.testing.assert_array_equal(a, b)


# -------------------------------------------------------------------------------------------- masking
@pytest.mark.parametrize("window", [(0, 0), (4, 0), (16, 16), (None, 3), (70, None)])
@pytest.mark.parametrize("Sq,Sk", [(97, 97), (40, 131), (131, 40)])
def test_window(rng, window, Sq, Sk):
    q, k, v = qkv(rng, 1, 2, 1, Sq, Sk, 64, 64, np.float32)
    check(rng, np.float32, q, k, v, window=window)
    check(rng, np.float32, q, k, v, window=window, causal=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("mshape", [(2, 3, 45, 70), (1, 3, 45, 70), (2, 3, 45, 1), (45, 70)])
def test_mask(rng, dtype, mshape):
    q, k, v = qkv(rng, 2, 3, 3, 45, 70, 64, 64, dtype)
    check(rng, dtype, q, k, v, mask=rng.random(mshape) < 0.6, causal=True)


@pytest.mark.parametrize("bias_dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("bshape", [(2, 3, 45, 70), (3, 45, 70), (45, 70), (1, 3, 1, 70), (2, 1, 45, 1), (70,)])
def test_bias_and_dbias(rng, bias_dtype, bshape):
    q, k, v = qkv(rng, 2, 3, 3, 45, 70, 64, 64, np.float32)
    bias = randn(rng, bshape, bias_dtype, 2.0)
    check(rng, np.float32, q, k, v, bias=bias, return_dbias=True)
    check(rng, np.float32, q, k, v, bias=bias, return_dbias=True, causal=True, mask=rng.random((45, 70)) < 0.7)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_softcap_alibi_scale(rng, dtype):
    q, k, v = qkv(rng, 2, 4, 2, 50, 90, 64, 64, dtype)
    check(rng, dtype, q, k, v, softcap=3.0, scale=0.4)
    check(rng, dtype, q, k, v, alibi_slopes=np.linspace(0.1, 1, 4), causal=True)
    check(rng, dtype, q, k, v, alibi_slopes=rng.uniform(0, 1, (2, 4)), softcap=2.0, window=(20, 5))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_key_lengths_and_empty_rows(rng, dtype):
    """Batches without keys, fully masked rows and padded keys holding NaN give finite zero gradients."""
    q, k, v = qkv(rng, 4, 2, 2, 33, 90, 64, 64, dtype)
    lens = np.array([90, 0, 1, 57], dtype=np.int32)
    dq, dk, dv = check(rng, dtype, q, k, v, key_lengths=lens, causal=True)
    assert (dq[1] == 0).all() and (dk[1] == 0).all() and (dv[1] == 0).all()
    assert (dk[3, :, 57:] == 0).all()
    mask = rng.random((4, 2, 33, 90)) < 0.5
    mask[0, 1, 5] = False
    dq, _, _ = check(rng, dtype, q, k, v, mask=mask)
    assert (dq[0, 1, 5] == 0).all()
    # padded keys never matter, whatever they hold
    out, lse = attnkit.attention(q, k, v, key_lengths=lens, return_lse=True)
    dout = randn(rng, out.shape, dtype)
    k2, v2 = k.copy(), v.copy()
    k2[3, :, 57:] = np.nan
    v2[3, :, 57:] = np.inf
    a = attnkit.attention_backward(dout, q, k, v, out, lse, key_lengths=lens)
    b = attnkit.attention_backward(dout, q, k2, v2, out, lse, key_lengths=lens)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_empty_sizes(rng):
    q, k, v = qkv(rng, 1, 2, 2, 0, 5, 8, 8, np.float32)
    out, lse = attnkit.attention(q, k, v, return_lse=True)
    dq, dk, dv = attnkit.attention_backward(out, q, k, v, out, lse)
    assert dq.shape == q.shape and (dk == 0).all() and (dv == 0).all()
    q, k, v = qkv(rng, 1, 2, 2, 5, 0, 8, 8, np.float32)
    out, lse = attnkit.attention(q, k, v, return_lse=True)
    dq, dk, dv = attnkit.attention_backward(out, q, k, v, out, lse)
    assert (dq == 0).all() and dk.shape == k.shape


def test_deterministic_across_threads(rng):
    q, k, v = qkv(rng, 1, 4, 1, 300, 700, 64, 64, np.float32)
    out, lse = attnkit.attention(q, k, v, causal=True, return_lse=True)
    dout = randn(rng, out.shape, np.float32)
    assert_thread_invariant(lambda: attnkit.attention_backward(dout, q, k, v, out, lse, causal=True))


# ---------------------------------------------------------------------------------- finite differences
def _fd(f, x, eps=1e-6):
    """Central differences of the scalar f at x (float64), element by element."""
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + eps
        hi = f()
        x[idx] = old - eps
        lo = f()
        x[idx] = old
        g[idx] = (hi - lo) / (2 * eps)
    return g


@pytest.mark.parametrize("kw", [
    dict(causal=True),
    dict(softcap=1.5, alibi_slopes=np.array([0.3, 0.7, 0.2, 0.5]), window=(4, 2)),
    dict(mask=np.tri(9, 11, 2, dtype=bool), key_lengths=[10, 7], scale=0.8),
], ids=["causal", "softcap_alibi_window", "mask_lengths_scale"])
def test_finite_differences(rng, kw):
    """Kernel and oracle both equal float64 central differences of L = sum(dout * attention(...))."""
    q, k, v = qkv(rng, 2, 4, 2, 9, 11, 5, 6, np.float64)
    bias = rng.standard_normal((4, 9, 11))
    kw = dict(kw, bias=bias)
    out, lse = attnkit.attention(q, k, v, return_lse=True, **kw)
    dout = rng.standard_normal(out.shape)
    loss = lambda: float((attnkit.attention(q, k, v, **kw) * dout).sum())  # noqa: E731
    got = attnkit.attention_backward(dout, q, k, v, out, lse, return_dbias=True, **kw)
    want = ref.attention_backward(dout, q, k, v, return_dbias=True, **kw)
    for name, x, g, r in zip(("dq", "dk", "dv", "dbias"), (q, k, v, bias), got, want):
        fd = _fd(loss, x)
        np.testing.assert_allclose(g, fd, atol=1e-7, rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(r, fd, atol=1e-7, rtol=1e-6, err_msg=name)


# ---------------------------------------------------------------------------------------- block-sparse
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("make", ["window", "bigbird", "per_head"])
@pytest.mark.parametrize("causal", [False, True])
def test_block_sparse(rng, dtype, make, causal):
    B, Hq, Hkv, S = 2, 4, 2, 150
    q, k, v = qkv(rng, B, Hq, Hkv, S, S, 64, 48, dtype)
    if make == "window":
        layout = layouts.sliding_window(S, 32, 1)
    elif make == "bigbird":
        layout = layouts.bigbird(S, 16, seed=3, window_blocks=1, global_blocks=1, random_blocks=2)
    else:
        layout = attnkit.BlockLayout.from_dense(rng.random((Hq, 10, 5)) < 0.5, (15, 32))
    lens = [150, 101]
    out, lse = attnkit.block_sparse_attention(q, k, v, layout, causal=causal, key_lengths=lens, return_lse=True)
    dout = randn(rng, out.shape, dtype)
    got = attnkit.block_sparse_attention_backward(dout, q, k, v, out, lse, layout, causal=causal, key_lengths=lens)
    want = ref.block_sparse_attention_backward(dout, q, k, v, layout, causal=causal, key_lengths=lens)
    naive = ref.block_sparse_attention_backward(dout, q, k, v, layout, causal=causal, key_lengths=lens,
                                                _dtype=naive_dtype(dtype))
    for name, g, r, n in zip(("dq", "dk", "dv"), got, want, naive):
        assert_close(g, r, n, dtype, what=name, atol_scale=magnitude(r))


# ------------------------------------------------------------------------------------------- bad input
def _setup(rng):
    q, k, v = qkv(rng, 1, 2, 1, 10, 12, 8, 8, np.float32)
    out, lse = attnkit.attention(q, k, v, return_lse=True)
    return out.copy(), q, k, v, out, lse


@pytest.mark.parametrize("case,exc,name", [
    ("dout_shape", ValueError, "dout"),
    ("dout_dtype", TypeError, "dout"),
    ("lse_shape", ValueError, "lse"),
    ("lse_missing", ValueError, "lse"),
    ("out_shape", ValueError, "out"),
    ("int_q", TypeError, "q"),
    ("dbias_no_bias", ValueError, "bias"),
    ("dout_list", TypeError, "dout"),
])
def test_bad_input(rng, case, exc, name):
    dout, q, k, v, out, lse = _setup(rng)
    kw = {}
    if case == "dout_shape":
        dout = dout[:, :, :5]
    elif case == "dout_dtype":
        dout = dout.astype(np.float64)
    elif case == "lse_shape":
        lse = lse[:, :1]
    elif case == "lse_missing":
        lse = None
    elif case == "out_shape":
        out = out[..., :4]
    elif case == "int_q":
        q = q.astype(np.int32)
    elif case == "dbias_no_bias":
        kw["return_dbias"] = True
    elif case == "dout_list":
        dout = dout.tolist()
    raises(exc, name, attnkit.attention_backward, dout, q, k, v, out, lse, **kw)


def test_bad_layout(rng):
    dout, q, k, v, out, lse = _setup(rng)
    with pytest.raises(TypeError, match="layout"):
        attnkit.block_sparse_attention_backward(dout, q, k, v, out, lse, "dense")


# ------------------------------------------------------------------------------------------ ISA paths
_ISA_SCRIPT = """
import sys, numpy as np, ml_dtypes, attnkit
rng = np.random.default_rng(11)
res = {}
for n, (dt, kw) in enumerate([("float32", dict(causal=True, softcap=4.0)), ("float64", dict(window=(9, 2))),
                              ("bfloat16", dict(alibi_slopes=np.array([0.2, 0.5, 0.1, 0.3])))]):
    dtype = ml_dtypes.bfloat16 if dt == "bfloat16" else np.dtype(dt)
    q = rng.standard_normal((2, 4, 45, 40)).astype(dtype)
    k = rng.standard_normal((2, 2, 77, 40)).astype(dtype)
    v = rng.standard_normal((2, 2, 77, 24)).astype(dtype)
    out, lse = attnkit.attention(q, k, v, return_lse=True, **kw)
    dout = rng.standard_normal(out.shape).astype(dtype)
    for name, a in zip(("q", "k", "v", "dout", "dq", "dk", "dv"),
                       (q, k, v, dout) + attnkit.attention_backward(dout, q, k, v, out, lse, **kw)):
        res[f"{n}_{name}"] = a.astype(np.float64)
np.savez(sys.argv[1], isa=attnkit.info()["cpu_isa"], **res)
"""


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_isa_paths(tmp_path, isa):
    """Each micro-kernel family (chosen once per process, lowered by ATTNKIT_CPU_ISA) against the oracle."""
    r = run_in_isa(isa, _ISA_SCRIPT, tmp_path)
    kws = [dict(causal=True, softcap=4.0), dict(window=(9, 2)), dict(alibi_slopes=np.array([0.2, 0.5, 0.1, 0.3]))]
    for n, (dtype, kw) in enumerate(zip([np.float32, np.float64, np.float32], kws)):
        q, k, v, dout = (r[f"{n}_{x}"] for x in ("q", "k", "v", "dout"))
        want = ref.attention_backward(dout, q, k, v, **kw)
        naive = ref.attention_backward(dout, q, k, v, _dtype=naive_dtype(dtype), **kw)
        for name, w, nv in zip(("dq", "dk", "dv"), want, naive):
            # bfloat16 case (n = 2): its own rounding dominates; compare with its atol
            tol_dtype = DTYPES[3] if n == 2 else dtype
            assert_close(r[f"{n}_{name}"], w, nv, tol_dtype, what=f"{isa} case {n} {name}", atol_scale=magnitude(w))


# ------------------------------------------------------------------------------------------- Linformer
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shared,with_f", [(True, False), (False, True), (True, True)])
def test_linformer(rng, dtype, shared, with_f):
    B, Hq, Hkv, Sq, Sk, D, P = 2, 4, 2, 30, 70, 32, 16
    q, k, v = qkv(rng, B, Hq, Hkv, Sq, Sk, D, D, dtype)
    eshape = (P, Sk) if shared else (Hkv, P, Sk)
    E = attnkit.linformer_projection(P, Sk, seed=1, num_heads=None if shared else Hkv)
    F = attnkit.linformer_projection(P, Sk, seed=2, num_heads=None if shared else Hkv) if with_f else None
    assert E.shape == eshape
    lens = [70, 41]
    out, lse = attnkit.linformer_attention(q, k, v, E, F, key_lengths=lens, return_lse=True)
    dout = randn(rng, out.shape, dtype)
    got = attnkit.linformer_attention_backward(dout, q, k, v, out, lse, E, F, key_lengths=lens)
    want = ref.linformer_attention_backward(dout, q, k, v, E, F, key_lengths=lens)
    naive = ref.linformer_attention_backward(dout, q, k, v, E, F, key_lengths=lens, _dtype=naive_dtype(dtype))
    assert (got[4] is None) == (F is None)
    for name, g, r, n, x in zip(("dq", "dk", "dv", "dE", "dF"), got, want, naive, (q, k, v, E, F)):
        if x is None:
            continue
        assert g.shape == x.shape and g.dtype == x.dtype, name
        # K' and V' are rounded to q's dtype for the kernel (as in the forward): 16-bit inputs get the
        # projection's rounding on top of the naive error
        scale = magnitude(r) * (8 if np.dtype(dtype).itemsize == 2 else 1)
        # dE / dF: products in acc of dK' / dV' (q's dtype), rounded to E's / F's dtype
        acc = np.dtype(naive_dtype(dtype))
        small = name[1] in "qkv" or np.dtype(dtype).itemsize == 2
        tdt = dtype if small else (x.dtype if x.dtype.itemsize <= acc.itemsize else acc)
        assert_close(g, r, n, tdt, what=name, atol_scale=scale)


def test_linformer_finite_differences(rng):
    q, k, v = qkv(rng, 2, 2, 1, 6, 9, 4, 5, np.float64)
    E = rng.standard_normal((3, 9)) / 3
    F = rng.standard_normal((3, 9)) / 3
    for Fx in (F, None):
        kw = dict(key_lengths=[9, 6], scale=0.7)
        out, lse = attnkit.linformer_attention(q, k, v, E, Fx, return_lse=True, **kw)
        dout = rng.standard_normal(out.shape)
        loss = lambda: float((attnkit.linformer_attention(q, k, v, E, Fx, **kw) * dout).sum())  # noqa: E731
        got = attnkit.linformer_attention_backward(dout, q, k, v, out, lse, E, Fx, **kw)
        want = ref.linformer_attention_backward(dout, q, k, v, E, Fx, **kw)
        for name, x, g, r in zip(("dq", "dk", "dv", "dE", "dF"), (q, k, v, E, Fx), got, want):
            if x is None:
                continue
            fd = _fd(loss, x)
            np.testing.assert_allclose(g, fd, atol=1e-7, rtol=1e-6, err_msg=name)
            np.testing.assert_allclose(r, fd, atol=1e-7, rtol=1e-6, err_msg=name)


# --------------------------------------------------------------------------------------- properties
from hypothesis import given, settings, strategies as st  # noqa: E402

from test_properties import SETTINGS, draw_masking, strided  # noqa: E402


@settings(SETTINGS, max_examples=30)
@given(data=st.data())
def test_random_problems(data):
    """Random shapes, strides, dtypes and masking options: the gradients match the oracle."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    dtype = data.draw(st.sampled_from(DTYPES))
    B, Hkv, G = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3))
    Sq, Sk = data.draw(st.integers(0, 70)), data.draw(st.integers(0, 90))
    D, Dv = data.draw(st.integers(1, 40)), data.draw(st.integers(1, 40))
    q = strided(rng, (B, Hkv * G, Sq, D), dtype, data)
    k = strided(rng, (B, Hkv, Sk, D), dtype, data)
    v = strided(rng, (B, Hkv, Sk, Dv), dtype, data)
    kw = draw_masking(data, rng, B, Hkv * G, Sq, Sk)
    check(rng, dtype, q, k, v, return_dbias="bias" in kw, **kw)


@settings(SETTINGS, max_examples=30)
@given(data=st.data())
def test_bad_gradient_shapes_raise_cleanly(data):
    """dout / out / lse of arbitrary shapes: gradients or ValueError/TypeError, nothing else."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    q, k, v = qkv(rng, 1, 2, 1, 6, 7, 4, 3, np.float32)
    out, lse = attnkit.attention(q, k, v, return_lse=True)
    dims = st.lists(st.integers(0, 7), min_size=0, max_size=5)
    args = {"dout": out, "out": out, "lse": lse}
    name = data.draw(st.sampled_from(sorted(args)))
    args[name] = rng.standard_normal(data.draw(dims)).astype(data.draw(st.sampled_from([np.float32, np.float64])))
    try:
        grads = attnkit.attention_backward(args["dout"], q, k, v, args["out"], args["lse"])
    except (ValueError, TypeError) as e:
        assert name in str(e)
    else:
        assert all(np.isfinite(g).all() for g in grads)
