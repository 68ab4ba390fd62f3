"""attnkit.linear_attention against the float64 oracle (quadratic form) and a recurrent form: feature maps,
causal and not, normalized and not, chunk sizes, states (streaming, decoding), key_lengths, GQA, ranks,
strides, dtypes, determinism, causality, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attnkit
from attnkit import _core
from attnkit import reference as ref

from conftest import DTYPES, DTYPE_IDS, assert_close, assert_thread_invariant, magnitude, naive_dtype, raises, randn, tuned

linear_attention = tuned(attnkit.linear_attention, "linear_chunk")

MAPS = ["elu1", "relu", "identity"]


def check(dtype, q, k, v, **kw):
    """attnkit.linear_attention vs the oracle (and the state when asked for); returns attnkit's result."""
    res = linear_attention(q, k, v, **kw)
    kw.pop("_chunk_size", None)
    r = ref.linear_attention(q, k, v, **kw)
    n = ref.linear_attention(q, k, v, _dtype=naive_dtype(dtype), **kw)
    if kw.get("return_state"):
        (out, (s, z)), (r, (rs, rz)), (n, (ns, nz)) = res, r, n
        sd = np.float64 if dtype == np.float64 else np.float32
        assert s.dtype == sd and z.dtype == sd
        assert_close(s, rs, ns, sd, what="state S", atol_scale=magnitude(rs))
        assert_close(z, rz, nz, sd, what="state z", atol_scale=magnitude(rz))
    else:
        out = res
    assert out.dtype == q.dtype
    assert_close(out, r, n, dtype, atol_scale=1.0 if kw.get("normalize", True) else magnitude(r))
    return res


def qkv(rng, B, Hq, Hkv, S, Sk, D, Dv, dtype, scale=1.0):
    return (randn(rng, (B, Hq, S, D), dtype, scale), randn(rng, (B, Hkv, Sk, D), dtype, scale),
            randn(rng, (B, Hkv, Sk, Dv), dtype))


def recurrent(q, k, v, feature_map, normalize=True, eps=1e-6):
    """The RNN form of causal linear attention (Katharopoulos et al. eq. 16-20), token by token, float64."""
    q, k, v = (np.asarray(x).astype(np.float64) for x in (q, k, v))
    phi = {"elu1": lambda x: np.where(x > 0, x + 1, np.exp(np.minimum(x, 0))), "relu": lambda x: np.maximum(x, 0),
           "identity": lambda x: x}[feature_map]
    B, H, S, D = q.shape
    out = np.zeros((B, H, S, v.shape[-1]))
    for b in range(B):
        for h in range(H):
            Sst = np.zeros((D, v.shape[-1]))
            z = np.zeros(D)
            for t in range(S):
                fk = phi(k[b, h, t])
                Sst += np.outer(fk, v[b, h, t])
                z += fk
                fq = phi(q[b, h, t])
                den = fq @ z + eps
                out[b, h, t] = fq @ Sst / den if normalize else fq @ Sst
    return out


# ------------------------------------------------------------------------------------- forms agree
@pytest.mark.parametrize("feature_map", MAPS)
def test_oracle_quadratic_equals_recurrent(rng, feature_map):
    """The two textbook forms of the oracle agree (float64), so the kernel is checked against both."""
    normalize = feature_map != "identity"
    q, k, v = qkv(rng, 1, 2, 2, 23, 23, 6, 5, np.float64)
    np.testing.assert_allclose(ref.linear_attention(q, k, v, feature_map=feature_map, normalize=normalize),
                               recurrent(q, k, v, feature_map, normalize), rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 16, 33, 64, 100, 1024])
@pytest.mark.parametrize("feature_map", MAPS)
def test_every_chunk_size(rng, chunk, feature_map):
    """Chunked = recurrent = quadratic for chunk sizes that divide S and that do not."""
    normalize = feature_map != "identity"
    q, k, v = qkv(rng, 2, 4, 2, 100, 100, 24, 20, np.float32)
    out = check(np.float32, q, k, v, feature_map=feature_map, normalize=normalize, key_lengths=[100, 71],
                return_state=True, _chunk_size=chunk)[0]
    if chunk in (1, 1024):
        rec = recurrent(q[:, ::2], k, v, feature_map, normalize)  # query heads 0 and 2 read kv heads 0 and 1
        np.testing.assert_allclose(out[0, ::2], rec[0], rtol=2e-4, atol=2e-4)


# ------------------------------------------------------------------------------- shapes and dtypes
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("S", [1, 7, 33, 257])
@pytest.mark.parametrize("D", [8, 60, 64, 80])
@pytest.mark.parametrize("causal", [True, False])
def test_shapes_dtypes(rng, dtype, S, D, causal):
    q, k, v = qkv(rng, 2, 2, 2, S, S, D, D, dtype)
    check(dtype, q, k, v, causal=causal, return_state=True)


@pytest.mark.parametrize("feature_map", MAPS)
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("causal", [True, False])
def test_maps(rng, feature_map, normalize, causal):
    q, k, v = qkv(rng, 1, 3, 1, 77, 77, 17, 9, np.float32)
    if feature_map == "identity" and normalize:
        # normalized identity features divide by q . z, which random signs can bring arbitrarily close to 0
        # (an ill-conditioned problem for every implementation): positive q and k keep it away from 0
        q, k = np.abs(q) + 0.1, np.abs(k) + 0.1
    check(np.float32, q, k, v, feature_map=feature_map, normalize=normalize, causal=causal, eps=1e-3)


@pytest.mark.parametrize("D,Dv", [(1, 1), (3, 5), (16, 1), (33, 200), (130, 48)])
def test_head_dims(rng, D, Dv):
    q, k, v = qkv(rng, 1, 2, 1, 45, 45, D, Dv, np.float32)
    check(np.float32, q, k, v, return_state=True)
    check(np.float32, q, k, v, causal=False)


@pytest.mark.parametrize("Sq,Sk", [(1, 50), (40, 13), (13, 40), (0, 9), (9, 0)])
def test_bidirectional_lengths(rng, Sq, Sk):
    """Bidirectional attention accepts Sq != Sk (cross attention)."""
    q, k, v = qkv(rng, 2, 2, 2, Sq, Sk, 16, 8, np.float32)
    out, (s, z) = check(np.float32, q, k, v, causal=False, return_state=True)
    if Sk == 0:
        assert (out == 0).all() and (s == 0).all() and (z == 0).all()


@pytest.mark.parametrize("Hq,Hkv", [(4, 4), (4, 2), (6, 1), (12, 3)])
@pytest.mark.parametrize("causal", [True, False])
def test_gqa(rng, Hq, Hkv, causal):
    q, k, v = qkv(rng, 2, Hq, Hkv, 40, 40, 16, 24, np.float32)
    out = check(np.float32, q, k, v, causal=causal, return_state=True)[0]
    rep = attnkit.linear_attention(q, np.repeat(k, Hq // Hkv, 1), np.repeat(v, Hq // Hkv, 1), causal=causal)
    np.testing.assert_array_equal(out, rep)


@pytest.mark.parametrize("rank", [2, 3])
def test_lower_ranks(rng, rank):
    lead = () if rank == 2 else (2,)
    q = randn(rng, lead + (30, 16), np.float32)
    k = randn(rng, lead + (30, 16), np.float32)
    v = randn(rng, lead + (30, 8), np.float32)
    out, (s, z) = check(np.float32, q, k, v, key_lengths=20, return_state=True)
    assert out.shape == lead + (30, 8) and s.shape == lead + (16, 8) and z.shape == lead + (16,)
    out2, _ = check(np.float32, q, k, v, initial_state=(s, z), return_state=True)
    out4 = attnkit.linear_attention(q.reshape((1,) * (4 - rank) + q.shape), k.reshape((1,) * (4 - rank) + k.shape),
                                    v.reshape((1,) * (4 - rank) + v.shape),
                                    initial_state=(s.reshape((1,) * (4 - rank) + s.shape),
                                                   z.reshape((1,) * (4 - rank) + z.shape)))
    np.testing.assert_array_equal(out2, out4.reshape(out2.shape))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_strides(rng, dtype):
    B, S, H, D = 2, 45, 4, 32
    qb, kb, vb = randn(rng, (B, S, H, D), dtype), randn(rng, (B, S, 2, D), dtype), randn(rng, (B, S, 2, D), dtype)
    q, k, v = (x.transpose(0, 2, 1, 3) for x in (qb, kb, vb))           # BSHD buffers read as BHSD
    out = check(dtype, q, k, v)
    np.testing.assert_array_equal(out, attnkit.linear_attention(*(np.ascontiguousarray(x) for x in (q, k, v))))
    base = randn(rng, (2, 3, 90, 70), dtype)
    q = base[:, ::-1, 0:90:2, 1:41]                                     # negative head stride, S step 2
    k = base[:, :1, 5:50, :40][:, :, ::-1]                              # negative S stride
    v = base[:, 1:2, 45:90, 3:60:3]                                     # step on Dv
    check(dtype, q, k, v, causal=False, return_state=True)
    check(dtype, q, k, v, causal=True)


def test_broadcast_and_inputs_untouched(rng):
    k1 = randn(rng, (1, 1, 30, 16), np.float32)
    k, v = np.broadcast_to(k1, (2, 2, 30, 16)), np.broadcast_to(randn(rng, (1, 1, 30, 16), np.float32), (2, 2, 30, 16))
    q = randn(rng, (2, 4, 30, 16), np.float32)
    copies = [x.copy() for x in (q, k, v)]
    check(np.float32, q, k, v, return_state=True)
    for a, b in zip((q, k, v), copies):
        np.testing.assert_array_equal(a, b)


# -------------------------------------------------------------------------------------- key_lengths
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("causal", [True, False])
def test_key_lengths(rng, dtype, causal):
    q, k, v = qkv(rng, 4, 2, 2, 70, 70, 16, 16, dtype)
    lens = np.array([70, 0, 1, 41], np.int32)
    out, (s, z) = check(dtype, q, k, v, causal=causal, key_lengths=lens, return_state=True)
    assert (out[1] == 0).all() and (s[1] == 0).all() and (z[1] == 0).all()
    # padded keys are never read, whatever they hold
    k2, v2 = k.copy(), v.copy()
    k2[3, :, 41:] = np.nan
    v2[3, :, 41:] = np.inf
    out2, (s2, z2) = attnkit.linear_attention(q, k2, v2, causal=causal, key_lengths=lens, return_state=True)
    np.testing.assert_array_equal(out2, out)
    np.testing.assert_array_equal(s2, s)
    if causal:
        # queries past the last allowed key all see the final state: rows 41.. of batch 3 agree with
        # attending to the first 41 keys only
        last = attnkit.linear_attention(q[3:, :, 41:], k[3:, :, :41], v[3:, :, :41], causal=False)
        np.testing.assert_allclose(out[3:, :, 41:].astype(np.float64), last.astype(np.float64), rtol=2e-2, atol=2e-2)


def test_zero_denominator_gives_zero(rng):
    """relu features of a negative query are all 0: the row is 0, never NaN (also with eps = 0)."""
    q, k, v = qkv(rng, 1, 1, 1, 20, 20, 8, 4, np.float32)
    q[0, 0, 5] = -np.abs(q[0, 0, 5]) - 0.1
    for eps in (0.0, 1e-6):
        for causal in (True, False):
            out = attnkit.linear_attention(q, k, v, feature_map="relu", eps=eps, causal=causal)
            assert not np.isnan(out).any() and (out[0, 0, 5] == 0).all()
    out = attnkit.linear_attention(q, k, v, key_lengths=0, eps=0.0)
    assert (out == 0).all()


# ------------------------------------------------------------------------------ state, streaming, decode
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("split", [1, 17, 64, 99])
def test_streaming_equals_one_call(rng, dtype, split):
    q, k, v = qkv(rng, 2, 4, 2, 100, 100, 24, 16, dtype)
    full, (s_full, z_full) = attnkit.linear_attention(q, k, v, return_state=True)
    a, st1 = attnkit.linear_attention(q[:, :, :split], k[:, :, :split], v[:, :, :split], return_state=True)
    b, (s2, z2) = attnkit.linear_attention(q[:, :, split:], k[:, :, split:], v[:, :, split:], initial_state=st1,
                                           return_state=True)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(np.concatenate([a, b], axis=2), full, rtol=tol, atol=tol)
    np.testing.assert_allclose(s2, s_full, rtol=tol, atol=tol * 10)
    np.testing.assert_allclose(z2, z_full, rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("feature_map", MAPS)
def test_decode_token_by_token(rng, feature_map):
    normalize = feature_map != "identity"
    q, k, v = qkv(rng, 2, 4, 2, 40, 40, 16, 8, np.float32)
    full = attnkit.linear_attention(q, k, v, feature_map=feature_map, normalize=normalize)
    state, outs = None, []
    for t in range(40):
        o, state = attnkit.linear_attention(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1],
                                            feature_map=feature_map, normalize=normalize, initial_state=state,
                                            return_state=True)
        outs.append(o)
    np.testing.assert_allclose(np.concatenate(outs, axis=2), full, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("causal", [True, False])
def test_initial_state_oracle(rng, causal):
    q, k, v = qkv(rng, 2, 2, 1, 33, 33, 16, 12, np.float64)
    s0 = np.abs(rng.standard_normal((2, 1, 16, 12)))
    z0 = np.abs(rng.standard_normal((2, 1, 16)))
    check(np.float64, q, k, v, causal=causal, initial_state=(s0, z0), key_lengths=[33, 5], return_state=True)
    # the state may have any strides
    s0t = np.asfortranarray(s0)
    check(np.float64, q, k, v, causal=causal, initial_state=(s0t, z0[..., ::-1].copy()[..., ::-1]), return_state=True)


def test_empty_sequence_returns_initial_state(rng):
    q, k, v = qkv(rng, 1, 2, 2, 0, 0, 8, 4, np.float32)
    s0, z0 = rng.random((1, 2, 8, 4)).astype(np.float32), rng.random((1, 2, 8)).astype(np.float32)
    out, (s, z) = attnkit.linear_attention(q, k, v, initial_state=(s0, z0), return_state=True)
    assert out.shape == (1, 2, 0, 4)
    np.testing.assert_array_equal(s, s0)
    np.testing.assert_array_equal(z, z0)



@pytest.mark.parametrize("causal", [True, False])
def test_empty_value_dim_still_returns_normalizer(rng, causal):
    # Dv = 0: the state S is empty, but the normalizer z has F entries and must be written
    q, k, v = qkv(rng, 1, 2, 2, 5, 5, 4, 0, np.float32)
    out, (s, z) = attnkit.linear_attention(q, k, v, causal=causal, return_state=True)
    _, (s_ref, z_ref) = ref.linear_attention(q, k, v, causal=causal, return_state=True)
    assert out.shape == (1, 2, 5, 0) and s.shape == (1, 2, 4, 0)
    np.testing.assert_allclose(z, z_ref, rtol=1e-5)

# ---------------------------------------------------------------------------- causality, determinism
@pytest.mark.parametrize("t0", [0, 37, 63, 64, 100])
def test_causality_bitwise(rng, t0):
    q, k, v = qkv(rng, 1, 2, 1, 130, 130, 16, 16, np.float32)
    base = attnkit.linear_attention(q, k, v)
    q2, k2, v2 = q.copy(), k.copy(), v.copy()
    q2[:, :, t0:] += 3.0
    k2[:, :, t0:] -= 5.0
    v2[:, :, t0:] *= -7.0
    pert = attnkit.linear_attention(q2, k2, v2)
    assert base[:, :, :t0].tobytes() == pert[:, :, :t0].tobytes()
    assert not np.array_equal(base[:, :, t0:], pert[:, :, t0:])


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("B,Hq,Hkv", [(2, 6, 3), (1, 6, 1)])  # (1, 6, 1): causal splits the group's heads
def test_thread_count_independent(rng, causal, B, Hq, Hkv):
    q, k, v = qkv(rng, B, Hq, Hkv, 300, 300, 32, 32, np.float32)
    assert_thread_invariant(lambda: attnkit.linear_attention(q, k, v, causal=causal, return_state=True,
                                                             key_lengths=[300, 123][:B]))


# ------------------------------------------------------------------------------------------- errors


def test_errors(rng):
    q, k, v = qkv(rng, 2, 4, 2, 10, 10, 8, 4, np.float32)
    f = attnkit.linear_attention
    raises(ValueError, "feature_map", f, q, k, v, feature_map="softmax")
    raises(TypeError, "feature_map", f, q, k, v, feature_map=1)
    raises(ValueError, "eps", f, q, k, v, eps=-1e-3)
    raises(ValueError, "eps", f, q, k, v, eps=float("nan"))
    raises(ValueError, "eps", f, q, k, v, eps=float("inf"))
    raises(TypeError, "eps", f, q, k, v, eps="1e-6")
    raises(TypeError, "causal", f, q, k, v, causal=1)
    raises(TypeError, "normalize", f, q, k, v, normalize=None)
    raises(TypeError, "return_state", f, q, k, v, return_state="yes")
    raises(ValueError, "q's length", f, q, k[:, :, :7], v[:, :, :7])      # causal needs Sk == S
    raises(ValueError, "k", f, q[:, :3], k, v)                            # Hq % Hkv
    raises(ValueError, "v", f, q, k, v[:, :, :9])
    raises(TypeError, "k", f, q, k.astype(np.float64), v)
    raises(TypeError, "q", f, q.astype(np.int32), k, v)
    raises(ValueError, "key_lengths", f, q, k, v, key_lengths=[11, 2])
    raises(TypeError, "key_lengths", f, q, k, v, key_lengths=[1.5, 2.0])
    raises(ValueError, "linear_chunk", linear_attention, q, k, v, _chunk_size=-1)
    raises(ValueError, "linear_chunk", linear_attention, q, k, v, _chunk_size=4096)
    s0, z0 = np.zeros((2, 2, 8, 4), np.float32), np.zeros((2, 2, 8), np.float32)
    raises(ValueError, "initial_state", f, q, k, v, initial_state=s0)
    raises(ValueError, "initial_state", f, q, k, v, initial_state=(s0, z0, z0))
    raises(ValueError, "initial_state", f, q, k, v, initial_state=(s0[..., :3], z0))      # Dv
    raises(ValueError, "initial_state", f, q, k, v, initial_state=(s0[:, :, :7], z0))     # F
    raises(ValueError, "initial_state", f, q, k, v, initial_state=(s0, z0[..., :7]))      # F of z
    raises(ValueError, "initial_state", f, q, k, v, initial_state=(s0[0], z0))            # rank
    raises(TypeError, "initial_state", f, q, k, v, initial_state=(s0.astype(np.float64), z0))
    raises(TypeError, "initial_state", f, q, k, v, initial_state=(s0, z0.astype(np.float16)))
    raises(TypeError, "initial_state", f, q, k, v, initial_state=(s0.tolist(), z0))
    # float64 inputs keep a float64 state
    raises(TypeError, "float64", f, q.astype(np.float64), k.astype(np.float64), v.astype(np.float64),
           initial_state=(s0, z0))


def test_errors_of_the_core(rng):
    """The C++ validator checks what the Python layer does not reach: outputs, state pairs, enum codes."""
    q, k, v = qkv(rng, 1, 2, 2, 6, 6, 4, 4, np.float32)

    def ref_of(a):
        return _core.TensorRef(a.ctypes.data, 0, list(a.shape), [s // 4 for s in a.strides])

    p = _core.LinearAttentionParams()
    p.q, p.k, p.v = ref_of(q), ref_of(k), ref_of(v)
    raises(ValueError, "out is required", _core.linear_attention, p)
    out = np.empty((1, 2, 6, 4), np.float32)
    p.out = ref_of(out)
    p.final_state = ref_of(np.empty((1, 2, 4, 4), np.float32))
    raises(ValueError, "final_normalizer", _core.linear_attention, p)
    p.final_normalizer = ref_of(np.empty((1, 2, 5), np.float32))
    raises(ValueError, "final_normalizer", _core.linear_attention, p)
    p.final_normalizer = ref_of(np.empty((1, 2, 4), np.float32))
    _core.linear_attention(p)
    p.initial_normalizer = ref_of(np.zeros((1, 2, 4), np.float32))
    raises(ValueError, "initial_state is required", _core.linear_attention, p)


# ------------------------------------------------------------------------------------------ property
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(data=st.data())
def test_random_problems(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    dtype = data.draw(st.sampled_from(DTYPES))
    B, Hkv, G = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    causal = data.draw(st.booleans())
    S = data.draw(st.integers(0, 80))
    Sk = S if causal else data.draw(st.integers(0, 80))
    D, Dv = data.draw(st.integers(1, 40)), data.draw(st.integers(1, 40))
    q, k, v = qkv(rng, B, Hkv * G, Hkv, S, Sk, D, Dv, dtype)
    if data.draw(st.booleans()):
        q = np.ascontiguousarray(q.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    if data.draw(st.booleans()):
        k = k[:, :, ::-1]
    kw = dict(causal=causal, feature_map=data.draw(st.sampled_from(MAPS)), return_state=True,
              _chunk_size=data.draw(st.sampled_from([None, 1, 5, 16, 33])))
    kw["normalize"] = kw["feature_map"] != "identity"
    if data.draw(st.booleans()):
        kw["key_lengths"] = rng.integers(0, Sk + 1, B)
    if data.draw(st.booleans()):
        sd = np.float64 if dtype == np.float64 else np.float32
        kw["initial_state"] = (np.abs(rng.standard_normal((B, Hkv, D, Dv))).astype(sd),
                               np.abs(rng.standard_normal((B, Hkv, D))).astype(sd))
    chunk = kw.pop("_chunk_size")
    res = linear_attention(q, k, v, _chunk_size=chunk, **kw)
    (out, (s, z)), (r, (rs, rz)), (n, (ns, nz)) = res, ref.linear_attention(q, k, v, **kw), ref.linear_attention(
        q, k, v, _dtype=naive_dtype(dtype), **kw)
    assert_close(out, r, n, dtype, atol_scale=1.0 if kw["normalize"] else magnitude(r))
    assert_close(s, rs, ns, s.dtype, what="S", atol_scale=magnitude(rs))
    assert_close(z, rz, nz, z.dtype, what="z", atol_scale=magnitude(rz))


def test_cuda_path_without_gpu(rng):
    """Device tensors reach the CUDA backend, which reports clearly that it cannot run them (no kernels
    yet, or no CUDA in this build)."""
    def dev(shape):
        strides = [int(np.prod(shape[i + 1:])) for i in range(len(shape))]
        return _core.TensorRef(0x1000, 0, list(shape), strides, 1, 0)

    lp = _core.LinearAttentionParams()
    lp.q, lp.k, lp.v, lp.out = dev((1, 2, 8, 4)), dev((1, 2, 8, 4)), dev((1, 2, 8, 4)), dev((1, 2, 8, 4))
    pp = _core.PerformerParams()
    pp.q, pp.k, pp.v, pp.out, pp.features = lp.q, lp.k, lp.v, lp.out, dev((16, 4))
    fp = _core.LinformerParams()
    fp.q, fp.k, fp.v, fp.out, fp.E = lp.q, lp.k, lp.v, lp.out, dev((3, 8))
    for f, p in ((_core.linear_attention, lp), (_core.performer_attention, pp), (_core.linformer_attention, fp)):
        with pytest.raises(RuntimeError) as e:
            f(p)
        assert ("CUDA" in str(e.value)) if _core.built_with_cuda() else ("built without CUDA" in str(e.value))
