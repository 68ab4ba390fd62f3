"""random_features and performer_attention: the generator against its NumPy port (Philox + LAPACK QR),
the properties of the features (orthogonality, norms, unbiased kernel estimates), Performer against the
float64 oracle, the textbook formula with eps = 0, exact softmax attention as m grows, causality and
thread independence, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import attnkit
from attnkit import reference as ref

from conftest import BF16, DTYPES, DTYPE_IDS, assert_close, broken_call, naive_dtype, raises, randn, tuned
from test_properties import SETTINGS, strided

performer_attention = tuned(attnkit.performer_attention, "linear_chunk")


def qkv(rng, B, Hq, Hkv, S, Sk, D, Dv, dtype, scale=1.0):
    return (randn(rng, (B, Hq, S, D), dtype, scale), randn(rng, (B, Hkv, Sk, D), dtype, scale),
            randn(rng, (B, Hkv, Sk, Dv), dtype))


def check(dtype, q, k, v, w, atol_scale=1.0, **kw):
    out = performer_attention(q, k, v, w, **kw)
    kw.pop("_chunk_size", None)
    assert out.dtype == q.dtype
    assert_close(out, ref.performer_attention(q, k, v, w, **kw),
                 ref.performer_attention(q, k, v, w, _dtype=naive_dtype(dtype), **kw), dtype, atol_scale=atol_scale)
    return out




# ------------------------------------------------------------------------------------ the generator
def test_philox_port_known_answers():
    """The NumPy Philox4x32-10 of the oracle reproduces Random123's known-answer vectors."""
    cases = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
             ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
             ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
              (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    for ctr, key, want in cases:
        got = ref.philox4x32_10([np.array([c]) for c in ctr], key)
        assert tuple(int(x[0]) for x in got) == want


def test_gaussian_rows_are_the_philox_normals():
    """orthogonal=False, scaling='chi' returns the raw normals: the C++ and NumPy generators agree."""
    for seed in (0, 7, 2**63 + 5):
        w = attnkit.random_features(70, 32, seed=seed, orthogonal=False, dtype=np.float64)
        want = np.concatenate([ref.normal(seed, (0x52464541 << 32) + b, np.arange(32 * 32)).reshape(32, 32)
                               for b in range(3)])[:70]
        np.testing.assert_allclose(w, want, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("m,D", [(1, 1), (5, 1), (16, 16), (40, 16), (100, 33), (64, 130), (3, 64)])
@pytest.mark.parametrize("orthogonal", [True, False])
@pytest.mark.parametrize("scaling", ["chi", "sqrt_d"])
def test_random_features_oracle(m, D, orthogonal, scaling):
    w = attnkit.random_features(m, D, seed=11, orthogonal=orthogonal, scaling=scaling, dtype=np.float64)
    r = ref.random_features(m, D, seed=11, orthogonal=orthogonal, scaling=scaling)
    assert w.shape == (m, D) and w.dtype == np.float64
    np.testing.assert_allclose(w, r, rtol=1e-10, atol=1e-10 * np.sqrt(D))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_random_features_dtypes(dtype):
    w = attnkit.random_features(50, 20, seed=3, dtype=dtype)
    assert w.dtype == dtype
    w64 = attnkit.random_features(50, 20, seed=3, dtype=np.float64)
    # one rounding of the float64 matrix (via float32 for the 16-bit types): within one unit in the last place
    ulp = {np.dtype(np.float32): 2**-23, np.dtype(np.float64): 2**-52, np.dtype(np.float16): 2**-10, BF16: 2**-7}
    np.testing.assert_array_less(np.abs(w.astype(np.float64) - w64), ulp[np.dtype(dtype)] * np.abs(w64) + 1e-300)


def test_random_features_pure_function():
    a = attnkit.random_features(100, 24, seed=5)
    np.testing.assert_array_equal(a, attnkit.random_features(100, 24, seed=5))
    np.testing.assert_array_equal(a[:37], attnkit.random_features(37, 24, seed=5))      # prefix property
    assert not np.array_equal(a, attnkit.random_features(100, 24, seed=6))
    n = attnkit.get_num_threads()
    try:
        attnkit.set_num_threads(1)
        one = attnkit.random_features(200, 24, seed=5)
        attnkit.set_num_threads(3)
        three = attnkit.random_features(200, 24, seed=5)
    finally:
        attnkit.set_num_threads(n)
    assert one.tobytes() == three.tobytes()


@pytest.mark.parametrize("D", [1, 8, 33, 64])
def test_orthogonality_and_norms(D):
    m = 3 * D + 2
    for scaling in ("chi", "sqrt_d"):
        w = attnkit.random_features(m, D, seed=1, scaling=scaling, dtype=np.float64)
        norms = np.linalg.norm(w, axis=1)
        if scaling == "sqrt_d":
            np.testing.assert_allclose(norms, np.sqrt(D), rtol=1e-13)
        for b in range(0, m, D):
            blk = w[b:b + D]
            gram = blk @ blk.T
            np.testing.assert_allclose(gram, np.diag(norms[b:b + D] ** 2), atol=1e-12 * D)
    # chi norms: E|w|^2 = D
    w = attnkit.random_features(4096, 16, seed=2, dtype=np.float64)
    assert abs((w * w).sum(1).mean() / 16 - 1) < 0.05
    w = attnkit.random_features(4096, 16, seed=2, orthogonal=False, dtype=np.float64)
    assert abs((w * w).sum(1).mean() / 16 - 1) < 0.05
    assert abs(w.mean()) < 0.01 and abs(w.std() - 1) < 0.02


@pytest.mark.parametrize("orthogonal", [True, False])
def test_softmax_kernel_unbiased_over_seeds(rng, orthogonal):
    """E_W[phi(x) . phi(y)] = exp(x . y) for chi-scaled features, orthogonal or not (Performer Lemma 1;
    Yu et al. 2016 for orthogonal blocks). The mean over many seeds lies within 4 standard errors. The
    estimates are log-normal-like with a tail that grows with |x|^2 + |y|^2, so the vectors have a fixed
    moderate norm (0.7) where the normal-theory bound holds (|z| < 2.3 over 80 draws of x, y)."""
    D, m, n = 8, 8, 4000
    x, y = rng.standard_normal(D), rng.standard_normal(D)
    x *= 0.7 / np.linalg.norm(x)
    y *= 0.7 / np.linalg.norm(y)
    est = np.empty(n)
    for s in range(n):
        w = attnkit.random_features(m, D, seed=s, orthogonal=orthogonal, dtype=np.float64)
        fx = np.exp(w @ x - x @ x / 2) / np.sqrt(m)
        fy = np.exp(w @ y - y @ y / 2) / np.sqrt(m)
        est[s] = fx @ fy
    truth = np.exp(x @ y)
    assert abs(est.mean() - truth) < 4 * est.std() / np.sqrt(n), (est.mean(), truth)


# -------------------------------------------------------------------------------------- Performer
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("S", [1, 7, 33, 257])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kernel", ["softmax", "relu"])
def test_performer_oracle(rng, dtype, S, causal, kernel):
    q, k, v = qkv(rng, 2, 4, 2, S, S, 16, 12, dtype)
    w = attnkit.random_features(40, 16, seed=S)
    check(dtype, q, k, v, w, causal=causal, kernel=kernel, key_lengths=[S, S // 2])


@pytest.mark.parametrize("m,D,Dv", [(1, 1, 1), (17, 5, 3), (64, 64, 64), (100, 60, 80), (256, 16, 33)])
@pytest.mark.parametrize("causal", [True, False])
def test_performer_sizes(rng, m, D, Dv, causal):
    q, k, v = qkv(rng, 1, 3, 1, 70, 70, D, Dv, np.float32)
    check(np.float32, q, k, v, attnkit.random_features(m, D), causal=causal)


@pytest.mark.parametrize("chunk", [1, 3, 16, 50, 64, 200])
@pytest.mark.parametrize("causal", [True, False])
def test_performer_chunk_sizes(rng, chunk, causal):
    q, k, v = qkv(rng, 2, 2, 1, 150, 150, 16, 16, np.float32, scale=2.0)
    w = attnkit.random_features(48, 16)
    check(np.float32, q, k, v, w, causal=causal, _chunk_size=chunk, key_lengths=[150, 77])


@pytest.mark.parametrize("eps", [0.0, 1e-6, 0.1, 10.0])
@pytest.mark.parametrize("causal", [True, False])
def test_performer_eps(rng, eps, causal):
    q, k, v = qkv(rng, 1, 2, 2, 60, 60, 16, 8, np.float64)
    check(np.float64, q, k, v, attnkit.random_features(32, 16), causal=causal, eps=eps)


def test_performer_options(rng):
    q, k, v = qkv(rng, 2, 4, 2, 41, 53, 32, 16, np.float32)
    w = attnkit.random_features(64, 32, seed=9)
    for scale in (0.0, 0.05, 1.0):
        check(np.float32, q, k, v, w, scale=scale)
    for wd in (np.float64, np.float16, BF16):                            # features of any float dtype
        check(np.float32, q, k, v, w.astype(wd))
    check(np.float32, q[0], k[0], v[0], w, key_lengths=9)                 # rank 3
    check(np.float32, q[0, 0], k[0, 0], v[0, 0], w, key_lengths=0)        # rank 2, nothing allowed
    qb = np.ascontiguousarray(q.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    check(np.float32, qb, k[:, :, ::-1], v, w[:, ::-1])                   # strides everywhere
    out = attnkit.performer_attention(q, k, v, w, key_lengths=[53, 0])
    assert (out[1] == 0).all()
    for kernel in ("softmax", "relu"):                                  # no keys at all: zeros
        assert (check(np.float32, q, k[:, :, :0], v[:, :, :0], w, kernel=kernel) == 0).all()


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kernel", ["softmax", "relu"])
def test_eps0_equals_textbook_formula(rng, causal, kernel):
    """With eps = 0 the stabilizers cancel: the result equals the float64 formula without them."""
    B, H, S, D, m = 1, 2, 50, 16, 64
    q, k, v = qkv(rng, B, H, H, S, S, D, D, np.float32)
    w = attnkit.random_features(m, D, seed=4)
    out = attnkit.performer_attention(q, k, v, w, kernel=kernel, causal=causal, eps=0.0)
    s = 1 / np.sqrt(np.sqrt(D))
    q64, k64, v64, w64 = (x.astype(np.float64) for x in (q, k, v, w))
    if kernel == "softmax":
        phi = lambda x: np.exp((s * x) @ w64.T - ((s * x) ** 2).sum(-1, keepdims=True) / 2) / np.sqrt(m)  # noqa: E731
    else:
        phi = lambda x: np.maximum((s * x) @ w64.T, 0) + 1e-3  # noqa: E731
    a = phi(q64) @ phi(k64).swapaxes(-1, -2)
    if causal:
        a = np.tril(a)
    want = (a @ v64) / a.sum(-1, keepdims=True)
    np.testing.assert_allclose(out, want, rtol=5e-5, atol=5e-6)


def test_stabilizers_keep_large_inputs_finite(rng):
    """Scores far beyond exp's float32 range: the unstabilized features would overflow; attnkit stays
    finite and matches the oracle (which uses the same stabilizers in float64)."""
    q, k, v = qkv(rng, 1, 2, 2, 80, 80, 16, 16, np.float32, scale=12.0)
    w = attnkit.random_features(32, 16, seed=8)
    s = 1 / np.sqrt(np.sqrt(16))
    expo = np.abs((s * k.astype(np.float64)) @ w.T.astype(np.float64)).max()
    assert expo > 89  # exp overflows float32 there
    for causal in (True, False):
        # rounding the exponent e in float32 costs every implementation a relative error ~ |e| u
        out = check(np.float32, q, k, v, w, causal=causal, atol_scale=expo)
        assert np.isfinite(out).all()


def test_error_falls_like_inverse_sqrt_m(rng):
    """Performer's approximation error against exact softmax attention falls like m^-1/2 on inputs of
    controlled norm (|x'|^2 = 0.5): the fitted log-log slope over m = 16 .. 1024 is close to -1/2."""
    B, H, S, D = 1, 4, 64, 16
    ms = [16, 64, 256, 1024]
    errs = np.zeros(len(ms))
    for trial in range(3):
        q, k, v = qkv(rng, B, H, H, S, S, D, D, np.float64)
        q *= np.sqrt(0.5 * np.sqrt(D)) / np.linalg.norm(q, axis=-1, keepdims=True)
        k *= np.sqrt(0.5 * np.sqrt(D)) / np.linalg.norm(k, axis=-1, keepdims=True)
        exact = attnkit.attention(q, k, v)
        for i, m in enumerate(ms):
            for seed in range(4):
                w = attnkit.random_features(m, D, seed=100 * trial + seed, orthogonal=False)
                approx = attnkit.performer_attention(q, k, v, w, eps=0.0)
                errs[i] += np.sqrt(((approx - exact) ** 2).mean() / (exact**2).mean())
    slope = np.polyfit(np.log(ms), np.log(errs), 1)[0]
    assert -0.65 < slope < -0.35, (slope, errs)


@pytest.mark.parametrize("t0", [0, 30, 63, 64, 99])
def test_causality_bitwise(rng, t0):
    """No future token changes a past output, not through the stabilizer either: a future key that
    raises the running maximum leaves earlier rows bit for bit unchanged."""
    q, k, v = qkv(rng, 1, 2, 1, 130, 130, 16, 16, np.float32)
    w = attnkit.random_features(32, 16)
    base = attnkit.performer_attention(q, k, v, w, causal=True)
    k2, v2, q2 = k.copy(), v.copy(), q.copy()
    k2[:, :, t0] = 20 * w[0] / np.linalg.norm(w[0])  # a key with a much larger exponent
    v2[:, :, t0:] += 1.0
    q2[:, :, t0:] -= 2.0
    pert = attnkit.performer_attention(q2, k2, v2, w, causal=True)
    assert base[:, :, :t0].tobytes() == pert[:, :, :t0].tobytes()
    assert not np.array_equal(base[:, :, t0:], pert[:, :, t0:])


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("Hkv", [1, 2])  # fewer kv heads than threads: causal splits the groups' heads
def test_thread_count_independent(rng, causal, Hkv):
    q, k, v = qkv(rng, 1, 6, Hkv, 300, 300, 32, 32, np.float32)
    w = attnkit.random_features(100, 32)
    n = attnkit.get_num_threads()
    res = []
    try:
        for t in (1, 2, 3):
            attnkit.set_num_threads(t)
            res.append(attnkit.performer_attention(q, k, v, w, causal=causal).tobytes())
    finally:
        attnkit.set_num_threads(n)
    assert res[0] == res[1] == res[2]


# ------------------------------------------------------------------------------------------- errors
def test_random_features_errors():
    f = attnkit.random_features
    raises(ValueError, "num_features", f, 0, 8)
    raises(ValueError, "head_dim", f, 8, 0)
    raises(TypeError, "num_features", f, 8.0, 8)
    raises(ValueError, "scaling", f, 8, 8, scaling="unit")
    raises(TypeError, "scaling", f, 8, 8, scaling=None)
    raises(ValueError, "seed", f, 8, 8, seed=-1)
    raises(ValueError, "seed", f, 8, 8, seed=2**64)
    raises(TypeError, "seed", f, 8, 8, seed=1.5)
    raises(TypeError, "dtype", f, 8, 8, dtype=np.int32)
    raises(TypeError, "dtype", f, 8, 8, dtype=None)
    raises(TypeError, "orthogonal", f, 8, 8, orthogonal=1)


def test_performer_errors(rng):
    q, k, v = qkv(rng, 2, 4, 2, 10, 10, 8, 4, np.float32)
    w = attnkit.random_features(16, 8)
    f = attnkit.performer_attention
    raises(ValueError, "features", f, q, k, v, w[:, :7])
    raises(ValueError, "features", f, q, k, v, w[0])
    raises(ValueError, "features", f, q, k, v, w[:0])
    raises(TypeError, "features", f, q, k, v, w.astype(np.int32))
    raises(TypeError, "features", f, q, k, v, w.tolist())
    raises(ValueError, "kernel", f, q, k, v, w, kernel="exp")
    raises(TypeError, "kernel", f, q, k, v, w, kernel=0)
    raises(ValueError, "scale", f, q, k, v, w, scale=-1.0)
    raises(ValueError, "scale", f, q, k, v, w, scale=float("nan"))
    raises(ValueError, "eps", f, q, k, v, w, eps=-1.0)
    raises(ValueError, "q's length", f, q, k[:, :, :5], v[:, :, :5], w, causal=True)
    raises(ValueError, "key_lengths", f, q, k, v, w, key_lengths=[-1, 2])
    raises(ValueError, "v", f, q, k, v[:, :1], w)
    raises(ValueError, "linear_chunk", performer_attention, q, k, v, w, _chunk_size=2000)


# ------------------------------------------------------------------------------------------ properties
@SETTINGS
@given(data=st.data())
def test_random_features_random_arguments(data):
    """Random sizes, seeds, constructions and dtypes: the oracle's matrix rounded once to the dtype, or an
    error naming the argument that was broken."""
    m, D = data.draw(st.integers(1, 70)), data.draw(st.integers(1, 40))
    args = dict(num_features=m, head_dim=D, seed=data.draw(st.integers(0, 2**64 - 1)),
                orthogonal=data.draw(st.booleans()), scaling=data.draw(st.sampled_from(["chi", "sqrt_d"])),
                dtype=data.draw(st.sampled_from(DTYPES)))
    breaks = [("num_features", 0, "num_features"), ("num_features", True, "num_features"),
              ("num_features", 2.0, "num_features"), ("head_dim", -1, "head_dim"), ("seed", -1, "seed"),
              ("seed", 2**64, "seed"), ("scaling", "unit", "scaling"), ("orthogonal", "yes", "orthogonal"),
              ("dtype", np.int32, "dtype")]
    if broken_call(data, attnkit.random_features, args, breaks):
        return
    w = attnkit.random_features(**args)
    r = ref.random_features(**dict(args, dtype=np.float64))
    assert w.shape == (m, D) and w.dtype == args["dtype"]
    # one rounding of the float64 matrix (via float32 for the 16-bit types) on top of QR's rounding
    ulp = {np.dtype(np.float32): 2**-23, np.dtype(np.float64): 2**-52, np.dtype(np.float16): 2**-10, BF16: 2**-7}
    err = np.abs(w.astype(np.float64) - r)
    assert (err <= ulp[np.dtype(args["dtype"])] * np.abs(r) + 1e-10 * np.sqrt(D) + 2**-24).all(), err.max()


@SETTINGS
@given(data=st.data())
def test_performer_random_problems(data):
    """Random shapes, strides, dtypes, feature counts, kernels, causality, key_lengths, scale, eps and
    chunk sizes: the oracle, or an error naming the argument that was broken."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    dtype = data.draw(st.sampled_from(DTYPES))
    B, Hkv, G = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3))
    causal = data.draw(st.booleans())
    S = data.draw(st.integers(0, 60))
    Sk = S if causal else data.draw(st.integers(0, 60))
    D, Dv, m = data.draw(st.integers(1, 24)), data.draw(st.integers(1, 24)), data.draw(st.integers(1, 40))
    w = attnkit.random_features(m, D, seed=data.draw(st.integers(0, 99)),
                                dtype=data.draw(st.sampled_from(DTYPES)))
    args = dict(q=strided(rng, (B, Hkv * G, S, D), dtype, data), k=strided(rng, (B, Hkv, Sk, D), dtype, data),
                v=strided(rng, (B, Hkv, Sk, Dv), dtype, data), features=w,
                kernel=data.draw(st.sampled_from(["softmax", "relu"])), causal=causal)
    if data.draw(st.booleans()):
        args["key_lengths"] = rng.integers(0, Sk + 1, B)
    if data.draw(st.booleans()):
        args["scale"] = data.draw(st.sampled_from([0.0, 0.1, 0.5]))
    if data.draw(st.booleans()):
        args["eps"] = data.draw(st.sampled_from([1e-3, 0.1]))
    breaks = [("features", w[:, :-1] if D > 1 else w[:, :0], "features"), ("features", w.astype(np.int32), "features"),
              ("kernel", "exp", "kernel"), ("scale", -1.0, "scale"), ("eps", float("nan"), "eps"),
              ("key_lengths", np.full(B + 1, Sk), "key_lengths"), ("v", np.zeros((B, Hkv, Sk + 1, Dv), dtype), "v"),
              ("q", args["q"].astype(np.int32), "q"), ("causal", 1, "causal")]
    if broken_call(data, attnkit.performer_attention, args, breaks):
        return
    a = dict(args)
    check(dtype, a.pop("q"), a.pop("k"), a.pop("v"), a.pop("features"),
          _chunk_size=data.draw(st.sampled_from([None, 1, 7, 64])), **a)
