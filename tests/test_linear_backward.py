"""attnkit.linear_attention_backward / performer_attention_backward against the float64 oracle and float64
finite differences: feature maps, kernels, causal and bidirectional, GQA, key lengths, initial / final
states, strides, dtypes, determinism, every ISA path, bad input, and a hypothesis property test."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attnkit
from attnkit import _core
from attnkit import reference as ref

from conftest import (DTYPES, DTYPE_IDS, assert_close, assert_thread_invariant, magnitude, naive_dtype, raises, randn,
                      run_in_isa)

MAPS = ["elu1", "relu", "identity"]


def qkv(rng, B, Hq, Hkv, S, Sk, D, Dv, dtype, scale=1.0):
    return (randn(rng, (B, Hq, S, D), dtype, scale), randn(rng, (B, Hkv, Sk, D), dtype, scale),
            randn(rng, (B, Hkv, Sk, Dv), dtype))


def _compare(got, want, naive, xs, dtype, names=("dq", "dk", "dv")):
    for name, g, r, n, x in zip(names, got, want, naive, xs):
        assert g.shape == np.shape(x) and g.dtype == np.dtype(dtype), (name, g.shape, g.dtype)
        # Gradients are sums over the sequence: atol in units of their size (4x, as test_backward).
        assert_close(g, r, n, dtype, what=name, atol_scale=4 * magnitude(r))


def check_linear(rng, dtype, q, k, v, **kw):
    """linear_attention_backward against the oracle (and the state gradients when initial_state is given)."""
    out = attnkit.linear_attention(q, k, v, **{a: b for a, b in kw.items() if a != "dfinal_state"})
    dout = randn(rng, out.shape, dtype)
    got = attnkit.linear_attention_backward(dout, q, k, v, **kw)
    want = ref.linear_attention_backward(dout, q, k, v, **kw)
    naive = ref.linear_attention_backward(dout, q, k, v, _dtype=naive_dtype(dtype), **kw)
    _compare(got, want, naive, (q, k, v), dtype)
    if kw.get("initial_state") is not None:
        assert len(got) == 4
        for name, g, r, n, x in zip(("dS0", "dz0"), got[3], want[3], naive[3], kw["initial_state"]):
            assert g.shape == x.shape and g.dtype == x.dtype, name
            assert_close(g, r, n, x.dtype, what=name, atol_scale=4 * magnitude(r))
    else:
        assert len(got) == 3
    return got


def check_performer(rng, dtype, q, k, v, w, **kw):
    dout = randn(rng, attnkit.performer_attention(q, k, v, w, **kw).shape, dtype)
    got = attnkit.performer_attention_backward(dout, q, k, v, w, **kw)
    want = ref.performer_attention_backward(dout, q, k, v, w, **kw)
    naive = ref.performer_attention_backward(dout, q, k, v, w, _dtype=naive_dtype(dtype), **kw)
    _compare(got, want, naive, (q, k, v), dtype)
    return got


def state(rng, B, Hkv, F, Dv, dtype=np.float32):
    return np.abs(randn(rng, (B, Hkv, F, Dv), dtype)), np.abs(randn(rng, (B, Hkv, F), dtype))


# ----------------------------------------------------------------------------------------- linear attention
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("feature_map", MAPS)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("S", [1, 7, 65, 130])
def test_linear_shapes_dtypes(rng, dtype, feature_map, causal, S):
    normalize = feature_map != "identity"
    check_linear(rng, dtype, *qkv(rng, 2, 2, 2, S, S, 12, 9, dtype), feature_map=feature_map, causal=causal,
                 normalize=normalize)


@pytest.mark.parametrize("Hq,Hkv", [(4, 2), (6, 1), (3, 3)])
@pytest.mark.parametrize("causal", [True, False])
def test_linear_gqa_key_lengths(rng, Hq, Hkv, causal):
    q, k, v = qkv(rng, 3, Hq, Hkv, 100, 100, 16, 20, np.float32)
    check_linear(rng, np.float32, q, k, v, causal=causal, key_lengths=[100, 37, 0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("with_dfinal", [False, True])
def test_linear_states(rng, dtype, causal, with_dfinal):
    B, H, S, D, Dv = 2, 2, 75, 8, 6
    q, k, v = qkv(rng, B, 2 * H, H, S, S + (0 if causal else 9), D, Dv, dtype)
    st_dtype = np.float64 if dtype == np.float64 else np.float32
    s0 = state(rng, B, H, D, Dv, st_dtype)
    dfin = (randn(rng, (B, H, D, Dv), st_dtype), randn(rng, (B, H, D), st_dtype)) if with_dfinal else None
    check_linear(rng, dtype, q, k, v, causal=causal, initial_state=s0, dfinal_state=dfin, key_lengths=[S - 3, 20])
    check_linear(rng, dtype, q, k, v, causal=causal, dfinal_state=dfin)  # no initial state: 3 results


@pytest.mark.parametrize("normalize,eps", [(True, 0.0), (True, 0.5), (False, 1e-6)])
def test_linear_normalizer(rng, normalize, eps):
    q, k, v = qkv(rng, 1, 2, 1, 70, 70, 10, 10, np.float64)
    for fm in MAPS[:2]:
        check_linear(rng, np.float64, q, k, v, feature_map=fm, normalize=normalize, eps=eps)


def test_linear_zero_denominator(rng):
    """relu features of all-negative rows give den = 0 with eps = 0: output 0 and zero gradients, no NaN."""
    q, k, v = qkv(rng, 1, 1, 1, 20, 20, 4, 4, np.float32)
    q[..., 3:6, :] = -np.abs(q[..., 3:6, :])
    k[..., :4, :] = -np.abs(k[..., :4, :])
    got = check_linear(rng, np.float32, q, k, v, feature_map="relu", eps=0.0)
    assert np.all(got[0][..., 3:6, :] == 0) and np.all(got[0][..., :4, :] == 0)


@pytest.mark.parametrize("rank", [2, 3])
def test_linear_lower_ranks(rng, rank):
    lead = () if rank == 2 else (2,)
    q, k, v = randn(rng, lead + (40, 8), np.float32), randn(rng, lead + (40, 8), np.float32), randn(
        rng, lead + (40, 5), np.float32)
    s0 = (np.abs(randn(rng, lead + (8, 5), np.float32)), np.abs(randn(rng, lead + (8,), np.float32)))
    check_linear(rng, np.float32, q, k, v, initial_state=s0)


def test_linear_strided_views(rng):
    big = randn(rng, (2, 4, 90, 24), np.float32)
    q, k, v = big[:, ::2, ::1, :16], big[:, 1::2, :, 3:19], big[:, ::2, :, ::3][..., :7]
    s0 = state(rng, 2, 2, 16, 7)
    check_linear(rng, np.float32, q, k, v, initial_state=(s0[0].transpose(0, 1, 3, 2).copy().transpose(0, 1, 3, 2),
                                                          s0[1]))
    check_linear(rng, np.float32, q, k, v, causal=False)


# ----------------------------------------------------------------------------------------------- Performer
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kernel", ["softmax", "relu"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("S", [1, 33, 130])
def test_performer_shapes_dtypes(rng, dtype, kernel, causal, S):
    q, k, v = qkv(rng, 2, 4, 2, S, S, 16, 12, dtype)
    w = attnkit.random_features(24, 16, seed=3)
    check_performer(rng, dtype, q, k, v, w, kernel=kernel, causal=causal, key_lengths=[S, max(S - 5, 0)])


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("eps", [0.0, 1e-6, 0.3])
def test_performer_stabilizers(rng, causal, eps):
    """Key norms growing along the sequence move the running maximum by far more than exp's range: the
    rescaled states must neither overflow nor lose the early keys' share; a large eps makes the
    stabilizers' own gradient count."""
    S = 150
    grow = np.linspace(0.2, 4.0, S)[None, None, :, None]
    q, k, v = qkv(rng, 1, 2, 1, S, S, 16, 8, np.float64)
    k = k * grow
    w = attnkit.random_features(40, 16, seed=5, dtype=np.float64)
    check_performer(rng, np.float64, q, k, v, w, causal=causal, eps=eps, scale=1.0)
    check_performer(rng, np.float32, q.astype(np.float32), k.astype(np.float32), v.astype(np.float32), w,
                    causal=causal, eps=eps, scale=1.0)


def test_performer_cross_lengths_and_strides(rng):
    big = randn(rng, (1, 6, 80, 20), np.float32)
    q, k, v = big[:, :4, :31, :16], big[:, 4:, :, 2:18], big[:, 4:, ::1, 1:8]
    w = attnkit.random_features(30, 16, seed=1)
    check_performer(rng, np.float32, q, k, v, w)
    check_performer(rng, np.float32, q, k, v, w, kernel="relu", key_lengths=33)


# -------------------------------------------------------------------------------------- finite differences
def _fd(f, x, h=1e-6):
    """Central differences of the scalar f at x (float64), element by element."""
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + h
        hi = f()
        x[idx] = old - h
        lo = f()
        x[idx] = old
        g[idx] = (hi - lo) / (2 * h)
    return g


@pytest.mark.parametrize("feature_map", MAPS)
@pytest.mark.parametrize("causal", [True, False])
def test_linear_finite_differences(rng, feature_map, causal):
    B, Hq, Hkv, S, D, Dv = 2, 4, 2, 9, 3, 4
    q, k, v = qkv(rng, B, Hq, Hkv, S, S, D, Dv, np.float64)
    s0 = state(rng, B, Hkv, D, Dv, np.float64)
    dfin = (rng.standard_normal((B, Hkv, D, Dv)), rng.standard_normal((B, Hkv, D)))
    kw = dict(feature_map=feature_map, causal=causal, normalize=feature_map != "identity", eps=0.1,
              key_lengths=[9, 6])
    dout = rng.standard_normal((B, Hq, S, Dv))

    def loss():
        out, (s, z) = attnkit.linear_attention(q, k, v, initial_state=s0, return_state=True, **kw)
        return float((out * dout).sum() + (s * dfin[0]).sum() + (z * dfin[1]).sum())

    got = attnkit.linear_attention_backward(dout, q, k, v, initial_state=s0, dfinal_state=dfin, **kw)
    want = ref.linear_attention_backward(dout, q, k, v, initial_state=s0, dfinal_state=dfin, **kw)
    for name, x, g, r in zip(("dq", "dk", "dv", "dS0", "dz0"), (q, k, v) + s0, got[:3] + got[3], want[:3] + want[3]):
        fd = _fd(loss, x)
        np.testing.assert_allclose(g, fd, atol=1e-7, rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(r, fd, atol=1e-7, rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("kernel", ["softmax", "relu"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_performer_finite_differences(rng, kernel, causal, eps):
    """With eps > 0 the stabilizers' gradient is part of the exact gradient (see the docstring)."""
    B, Hq, Hkv, S, D, Dv = 1, 2, 1, 8, 3, 2
    q, k, v = qkv(rng, B, Hq, Hkv, S, S, D, Dv, np.float64, scale=1.5)
    w = attnkit.random_features(5, D, seed=2, dtype=np.float64)
    kw = dict(kernel=kernel, causal=causal, eps=eps, key_lengths=7)
    dout = rng.standard_normal((B, Hq, S, Dv))
    loss = lambda: float((attnkit.performer_attention(q, k, v, w, **kw) * dout).sum())  # noqa: E731
    got = attnkit.performer_attention_backward(dout, q, k, v, w, **kw)
    want = ref.performer_attention_backward(dout, q, k, v, w, **kw)
    for name, x, g, r in zip(("dq", "dk", "dv"), (q, k, v), got, want):
        fd = _fd(loss, x)
        np.testing.assert_allclose(g, fd, atol=1e-7, rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(r, fd, atol=1e-7, rtol=1e-6, err_msg=name)


# ----------------------------------------------------------------------------------- determinism, ISA paths
def test_thread_invariance(rng):
    q, k, v = qkv(rng, 3, 4, 2, 150, 150, 16, 8, np.float32)
    dout = randn(rng, (3, 4, 150, 8), np.float32)
    w = attnkit.random_features(32, 16)
    s0 = state(rng, 3, 2, 16, 8)
    for causal in (True, False):
        assert_thread_invariant(lambda: attnkit.linear_attention_backward(dout, q, k, v, causal=causal,
                                                                          initial_state=s0))
        assert_thread_invariant(lambda: attnkit.performer_attention_backward(dout, q, k, v, w, causal=causal))


_ISA_SCRIPT = """
import sys, numpy as np, ml_dtypes, attnkit
rng = np.random.default_rng(12)
res = {}
w = attnkit.random_features(20, 24, seed=4)
for n, (dt, causal) in enumerate([("float32", True), ("float64", False), ("bfloat16", True)]):
    dtype = ml_dtypes.bfloat16 if dt == "bfloat16" else np.dtype(dt)
    q = rng.standard_normal((2, 4, 70, 24)).astype(dtype)
    k = rng.standard_normal((2, 2, 70, 24)).astype(dtype)
    v = rng.standard_normal((2, 2, 70, 12)).astype(dtype)
    dout = rng.standard_normal((2, 4, 70, 12)).astype(dtype)
    lin = attnkit.linear_attention_backward(dout, q, k, v, causal=causal, key_lengths=[70, 51])
    perf = attnkit.performer_attention_backward(dout, q, k, v, w, causal=causal, key_lengths=[70, 51])
    for name, a in zip(("q", "k", "v", "dout", "ldq", "ldk", "ldv", "pdq", "pdk", "pdv"), (q, k, v, dout) + lin + perf):
        res[f"{n}_{name}"] = a.astype(np.float64)
np.savez(sys.argv[1], isa=attnkit.info()["cpu_isa"], w=w, **res)
"""


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_isa_paths(tmp_path, isa):
    """Each micro-kernel family (lowered by ATTNKIT_CPU_ISA) against the oracle."""
    r = run_in_isa(isa, _ISA_SCRIPT, tmp_path)
    for n, (dtype, causal) in enumerate([(np.float32, True), (np.float64, False), (DTYPES[3], True)]):
        q, k, v, dout = (r[f"{n}_{x}"] for x in ("q", "k", "v", "dout"))
        kw = dict(causal=causal, key_lengths=[70, 51])
        for prefix, oracle, args in (("l", ref.linear_attention_backward, ()),
                                     ("p", ref.performer_attention_backward, (r["w"],))):
            want = oracle(dout, q, k, v, *args, **kw)
            naive = oracle(dout, q, k, v, *args, _dtype=naive_dtype(dtype), **kw)
            for name, wnt, nv in zip(("dq", "dk", "dv"), want, naive):
                assert_close(r[f"{n}_{prefix}{name}"], wnt, nv, dtype, what=f"{isa} case {n} {prefix}{name}",
                             atol_scale=4 * magnitude(wnt))


# ----------------------------------------------------------------------------------------------- bad input
def _setup(rng):
    q, k, v = qkv(rng, 2, 4, 2, 20, 20, 8, 6, np.float32)
    return randn(rng, (2, 4, 20, 6), np.float32), q, k, v


@pytest.mark.parametrize("case,exc,name", [
    ("dout_shape", ValueError, "dout"),
    ("dout_dtype", TypeError, "dout"),
    ("dout_int", TypeError, "dout"),
    ("dout_missing", ValueError, "dout"),
    ("q_int", TypeError, "q"),
    ("feature_map", ValueError, "feature_map"),
    ("dfinal_shape", ValueError, "dfinal_state"),
    ("dfinal_dtype", TypeError, "dfinal_state"),
    ("dfinal_not_pair", ValueError, "dfinal_state"),
    ("causal_lengths", ValueError, "k"),
])
def test_linear_bad_input(rng, case, exc, name):
    dout, q, k, v = _setup(rng)
    kw = {}
    if case == "dout_shape":
        dout = dout[:, :, :5]
    elif case == "dout_dtype":
        dout = dout.astype(np.float64)
    elif case == "dout_int":
        dout = dout.astype(np.int32)
    elif case == "dout_missing":
        dout = None
    elif case == "q_int":
        q = q.astype(np.int32)
    elif case == "feature_map":
        kw["feature_map"] = "softmax"
    elif case == "dfinal_shape":
        kw["dfinal_state"] = (np.zeros((2, 2, 8, 5), np.float32), np.zeros((2, 2, 8), np.float32))
    elif case == "dfinal_dtype":
        kw["dfinal_state"] = (np.zeros((2, 2, 8, 6), np.float64), np.zeros((2, 2, 8), np.float64))
    elif case == "dfinal_not_pair":
        kw["dfinal_state"] = np.zeros((2, 2, 8, 6), np.float32)
    elif case == "causal_lengths":
        k, v = k[:, :, :10], v[:, :, :10]
    raises(exc, name, attnkit.linear_attention_backward, dout, q, k, v, **kw)


@pytest.mark.parametrize("case,exc,name", [
    ("dout_shape", ValueError, "dout"),
    ("dout_dtype", TypeError, "dout"),
    ("features_shape", ValueError, "features"),
    ("features_int", TypeError, "features"),
    ("kernel", ValueError, "kernel"),
    ("q_int", TypeError, "q"),
])
def test_performer_bad_input(rng, case, exc, name):
    dout, q, k, v = _setup(rng)
    w = attnkit.random_features(10, 8)
    if case == "dout_shape":
        dout = dout[..., :3]
    elif case == "dout_dtype":
        dout = dout.astype(np.float16)
    elif case == "features_shape":
        w = w[:, :5]
    elif case == "features_int":
        w = w.astype(np.int64)
    elif case == "q_int":
        q = q.astype(np.int64)
    kw = {"kernel": "gauss"} if case == "kernel" else {}
    raises(exc, name, attnkit.performer_attention_backward, dout, q, k, v, w, **kw)


# --------------------------------------------------------------------------------------------- output query
def test_output_queries(rng):
    """The validators own the backward outputs: names, shapes and dtypes, initial-state gradients only
    when an initial state is given, dbias only with a bias."""
    from attnkit._array import Call

    dout, q, k, v = _setup(rng)
    call = Call()
    bp = _core.LinearAttentionBackwardParams()
    bp.fwd.q, bp.fwd.k, bp.fwd.v = call.tensor(q, "q"), call.tensor(k, "k"), call.tensor(v, "v")
    bp.dout = call.tensor(dout, "dout")
    specs = {n: (tuple(s), c) for n, s, c in _core.linear_attention_backward_outputs(bp)}
    assert list(specs) == ["dq", "dk", "dv"]
    assert specs["dk"][0] == k.shape and specs["dv"][0] == v.shape
    s0 = state(rng, 2, 2, 8, 6)
    bp.fwd.initial_state, bp.fwd.initial_normalizer = call.tensor(s0[0], "s"), call.tensor(s0[1], "z")
    specs = {n: tuple(s) for n, s, c in _core.linear_attention_backward_outputs(bp)}
    assert specs["dinitial_state"] == (2, 2, 8, 6) and specs["dinitial_normalizer"] == (2, 2, 8)
    out, lse = attnkit.attention(q, k, v, return_lse=True, bias=np.zeros((20, 20), np.float32))
    ap = _core.AttentionBackwardParams()
    for f, x in (("q", q), ("k", k), ("v", v), ("out", out), ("lse", lse), ("bias", np.zeros((20, 20), np.float32))):
        setattr(ap.fwd, f, call.tensor(x, f))
    ap.grad.dout = call.tensor(dout, "dout")
    names = [n for n, s, c in _core.attention_backward_outputs(ap)]
    assert names == ["grad.dq", "grad.dk", "grad.dv", "grad.dbias"]
    ap.grad.dout = call.tensor(dout[:, :, :3], "dout")
    raises(ValueError, "dout", _core.attention_backward_outputs, ap)


# ------------------------------------------------------------------------------------------------ property
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_problems(data):
    """Random shapes, strides, dtypes and options: the gradients equal the oracle, or a clear error."""
    d = data.draw
    dtype = d(st.sampled_from([np.float32, np.float64]))
    B, Hkv, G = d(st.integers(1, 2)), d(st.integers(1, 2)), d(st.integers(1, 2))
    S, D, Dv = d(st.integers(0, 80)), d(st.integers(1, 9)), d(st.integers(1, 6))
    causal = d(st.booleans())
    Sk = S if causal or d(st.booleans()) else d(st.integers(0, 40))
    rng = np.random.default_rng(d(st.integers(0, 2**31)))
    q, k, v = qkv(rng, B, Hkv * G, Hkv, S, Sk, D, Dv, dtype)
    if d(st.booleans()):  # a strided view of q
        q = np.concatenate([q, q], axis=-1)[..., ::2]
    dout = randn(rng, (B, Hkv * G, S, Dv + d(st.sampled_from([0, 0, 0, 1]))), dtype)  # sometimes a wrong shape
    lens = d(st.none() | st.lists(st.integers(-1, Sk + 1), min_size=B, max_size=B))
    performer = d(st.booleans())
    if performer:
        w = attnkit.random_features(d(st.integers(1, 12)), D, seed=1, dtype=dtype)
        kw = dict(kernel=d(st.sampled_from(["softmax", "relu"])), causal=causal, key_lengths=lens,
                  eps=d(st.sampled_from([0.0, 1e-6, 0.5])))
        fn, oracle, args = attnkit.performer_attention_backward, ref.performer_attention_backward, (w,)
    else:
        kw = dict(feature_map=d(st.sampled_from(MAPS)), causal=causal, key_lengths=lens,
                  normalize=d(st.booleans()), eps=d(st.sampled_from([0.0, 1e-6, 0.5])))
        fn, oracle, args = attnkit.linear_attention_backward, ref.linear_attention_backward, ()
    try:
        got = fn(dout, q, k, v, *args, **kw)
    except (ValueError, TypeError):
        bad = dout.shape[-1] != Dv or (lens is not None and any(n < 0 or n > Sk for n in lens))
        assert bad, "a valid problem raised"
        return
    assert dout.shape[-1] == Dv and (lens is None or all(0 <= n <= Sk for n in lens))
    want = oracle(dout, q, k, v, *args, **kw)
    naive = oracle(dout, q, k, v, *args, _dtype=naive_dtype(dtype), **kw)
    _compare(got, want, naive, (q, k, v), dtype)


def test_docs_example_runs():
    """The example of docs/linear_backward.md runs as written."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "linear_backward.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    for i, code in enumerate(blocks):
        exec(compile(code, f"docs/linear_backward.md python block {i}", "exec"), {})
