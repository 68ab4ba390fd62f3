"""attnkit.dynamic_linear_attention against the float64 oracle and the spec's invariants
(shared/specs/dla.md): both score modes, with and without decay, every dtype, both kernel forms and
every chunk size, streaming and decode, ties, determinism and every error path.

Boundary decisions are discontinuous in the scores, so float32/16 comparisons use piecewise-stationary
data (blocks of tokens sharing a direction), whose scores stay far from tau (the helpers assert that
premise); float64 comparisons use any data."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attnkit
from attnkit import reference as ref

from conftest import DTYPES, DTYPE_IDS, assert_close, assert_thread_invariant, raises, randn, run_in_isa, tuned

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
f = tuned(attnkit.dynamic_linear_attention, "dla_chunk")

# (score, decay, tau) settings whose scores stay away from tau on piecewise data (margin >= 0.1 measured
# over many seeds): token_vs_state scores sit near 0.1 inside a block and near 1.3 at a change;
# state_drift needs a young or strongly decayed open state to move.
CONFIGS = [("token_vs_state", None, 0.6), ("token_vs_state", "rand", 0.6), ("state_drift", None, 0.6),
           ("state_drift", -1.0, 0.3)]
CONFIG_IDS = ["tvs", "tvs-decay", "drift", "drift-decay"]
SCORE_ATOL = {F32: 1e-5, F64: 1e-7}


def piecewise(rng, B, H, T, Dk, Dv, dtype, lo=2, hi=10, noise=0.05):
    """k, v in blocks of lo..hi tokens sharing a direction (norm sqrt(D)) plus a little noise."""
    k = np.empty((B, H, T, Dk))
    v = np.empty((B, H, T, Dv))
    for b in range(B):
        for h in range(H):
            t = 0
            while t < T:
                e = min(T, t + int(rng.integers(lo, hi + 1)))
                kd = rng.standard_normal(Dk)
                vd = rng.standard_normal(Dv)
                k[b, h, t:e] = kd * np.sqrt(Dk) / np.linalg.norm(kd) + noise * rng.standard_normal((e - t, Dk))
                v[b, h, t:e] = vd * np.sqrt(Dv) / np.linalg.norm(vd) + noise * rng.standard_normal((e - t, Dv))
                t = e
    return (k / np.sqrt(Dk)).astype(dtype), v.astype(dtype)


def problem(rng, B, H, T, Dk, Dv, C, dtype, decay=None):
    """q, k, v, lam and log_decay (None, "rand" = uniform in [-0.5, 0], or a constant)."""
    k, v = piecewise(rng, B, H, T, Dk, Dv, dtype)
    q = randn(rng, (B, H, T, Dk), dtype, 1 / np.sqrt(Dk))
    lam = (rng.random((B, H, T, C)) * 2 / C).astype(dtype)
    if decay is None:
        g = None
    elif decay == "rand":
        g = -rng.random((B, H, T)) * 0.5
    else:
        g = np.full((B, H, T), float(decay))
    return q, k, v, lam, g


def close(out, r, naive, dtype, what):
    """The tolerance rule on results scaled to O(1) (DLA outputs grow with the span sums)."""
    s = max(1.0, float(np.abs(np.asarray(r, np.float64)).max(initial=0)))
    assert_close(np.asarray(out, np.float64) / s, np.asarray(r) / s, np.asarray(naive, np.float64) / s, dtype, what)


def state_dtype(dtype):
    return F64 if np.dtype(dtype) == F64 else F32


def check(q, k, v, lam, *, capacity, dtype, tau=0.6, log_decay=None, score="token_vs_state", cache=None,
          chunk=0, ref_cache=None):
    """Runs the kernel and the oracle (float64, and float32 as the 'naive' baseline) and compares
    everything: outputs and states by the tolerance rule, boundaries, merges, counts, starts and sizes
    exactly. Returns the kernel's (y, cache, aux)."""
    dtype = np.dtype(dtype)
    kw = dict(capacity=capacity, tau=tau, log_decay=log_decay, score=score)
    y, c, a = f(q, k, v, lam, cache=cache, return_aux=True, _chunk_size=chunk, **kw)
    ry, rc, ra = ref.dynamic_linear_attention(q, k, v, lam, cache=ref_cache if ref_cache is not None else cache,
                                              return_aux=True, **kw)
    sdt = state_dtype(dtype)
    assert y.dtype == dtype and c.states.dtype == sdt and a.scores.dtype == sdt and c.info.dtype == sdt
    assert a.boundaries.dtype == np.bool_ and a.merged.dtype == np.int64 and c.counts.dtype == np.int64
    if dtype != F64:
        # premise: every decided score is far from tau, so float32 rounding cannot flip a boundary (the
        # first token of an empty cache decides nothing)
        d = np.abs(np.asarray(ra.scores, np.float64) - tau)
        if cache is None or int(np.asarray(cache.size).min()) == 0:
            d = d[..., 1:]
        assert capacity == 1 or d.size == 0 or d.min() > 1e-3, f"test data too close to tau: {d.min()}"
        ny, nc, na = ref.dynamic_linear_attention(q, k, v, lam, cache=ref_cache if ref_cache is not None else cache,
                                                  return_aux=True, _dtype=np.float32, **kw)
        assert np.array_equal(na.boundaries, ra.boundaries), "naive baseline took other boundaries"
    else:
        ny, nc, na = ry, rc, ra
    np.testing.assert_array_equal(a.boundaries, ra.boundaries)
    np.testing.assert_array_equal(a.merged, ra.merged)
    for name in ("counts", "starts", "size"):
        np.testing.assert_array_equal(getattr(c, name), getattr(rc, name), err_msg=name)
    assert c.position == rc.position
    close(y, ry, ny, dtype, "y")
    close(c.states, rc.states, nc.states, sdt, "cache.states")
    # Scores come from three scalars (A, B, p); near 0 that form cancels (1 - cos of a small angle), so
    # their absolute error is ~sqrt(eps) of the state precision there, not eps.
    s_atol = SCORE_ATOL[sdt] * max(1.0, float(np.abs(ra.scores).max(initial=0)))
    s_err = np.abs(a.scores.astype(np.float64) - ra.scores).max(initial=0)
    s_tol = 2 * np.abs(na.scores - ra.scores).max(initial=0) + s_atol
    assert s_err <= s_tol, f"scores: {s_err} > {s_tol}"
    i_err = np.abs(c.info.astype(np.float64) - rc.info).max(initial=0)
    i_tol = 2 * np.abs(nc.info - rc.info).max(initial=0) + s_atol * max(1, int(np.max(rc.counts, initial=1)))
    assert i_err <= i_tol, f"cache.info: {i_err} > {i_tol}"
    return y, c, a


def linear_attention_f64(q, k, v, g=None):
    """Independent float64 formula of (decayed) causal linear attention with the identity feature map,
    unnormalized: y_t = q_t^T sum_{j <= t} exp(G_t - G_j) k_j v_j^T with G the cumulative log-decay."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    T = q.shape[-2]
    G = np.zeros(q.shape[:-1]) if g is None else np.cumsum(np.asarray(g, np.float64), axis=-1)
    y = np.zeros(q.shape[:-1] + (v.shape[-1],))
    for t in range(T):
        w = np.exp(G[..., t:t + 1] - G[..., : t + 1])  # [..., t+1]
        s = np.einsum("...d,...jd->...j", q[..., t, :], k[..., : t + 1, :])
        y[..., t, :] = np.einsum("...j,...j,...je->...e", w, s, v[..., : t + 1, :])
    return y


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max(initial=0) / max(1.0, np.abs(b).max(initial=0))


# ------------------------------------------------------------------------------------- against the oracle
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_matches_oracle(rng, dtype, cfg):
    score, decay, tau = cfg
    q, k, v, lam, g = problem(rng, 2, 2, 45, 16, 8, 4, dtype, decay)
    for chunk in (0, 1, 7):
        check(q, k, v, lam, capacity=4, dtype=dtype, tau=tau, log_decay=g, score=score, chunk=chunk)


@pytest.mark.parametrize("Dk,Dv", [(1, 1), (13, 7), (64, 64), (80, 24), (3, 130)])
def test_head_dims(rng, Dk, Dv):
    """Head dims that are not multiples of the SIMD width (padding), and wide ones."""
    q, k, v, lam, g = problem(rng, 1, 2, 37, Dk, Dv, 5, np.float64, "rand")
    for chunk in (0, 1, 5):
        check(q, k, v, lam, capacity=5, dtype=np.float64, log_decay=g, chunk=chunk)
    q, k, v, lam, _ = problem(rng, 1, 2, 37, Dk, Dv, 5, np.float32)
    if Dk * Dv > 8:  # with a 1x1 "matrix" every token has the same direction up to sign
        check(q, k, v, lam, capacity=5, dtype=np.float32)


@pytest.mark.parametrize("score", ["token_vs_state", "state_drift"])
@pytest.mark.parametrize("decay", [None, "rand"])
def test_random_data_float64(rng, score, decay):
    """Unstructured Gaussian data in float64: boundaries and merges everywhere, exactly the oracle's."""
    B, H, T, Dk, Dv, C = 1, 3, 60, 8, 6, 5
    q, k, v, lam = (randn(rng, s, np.float64) for s in ((B, H, T, Dk), (B, H, T, Dk), (B, H, T, Dv), (B, H, T, C)))
    g = None if decay is None else -rng.random((B, H, T))
    for tau in (-np.inf, 0.0, 0.9, 1.3, np.inf):
        for chunk in (0, 1, 8):
            check(q, k, v, lam, capacity=C, dtype=np.float64, tau=tau, log_decay=g, score=score, chunk=chunk)


# ------------------------------------------------------------------------------------ spec invariants 1-3
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("score", ["token_vs_state", "state_drift"])
@pytest.mark.parametrize("decay", [None, "rand"])
def test_lam_one_is_linear_attention(rng, dtype, score, decay):
    """Invariant 1: lam = 1 gives (decayed) causal linear attention for any tau, C and score mode."""
    B, H, T, Dk, Dv = 2, 2, 50, 12, 10
    q, k, v = (randn(rng, s, dtype, 0.5) for s in ((B, H, T, Dk), (B, H, T, Dk), (B, H, T, Dv)))
    g = None if decay is None else -rng.random((B, H, T)) * 0.3
    want = linear_attention_f64(q, k, v, g)
    tol = 1e-12 if dtype == F64 else 2e-6
    for C in (1, 2, 7):
        for tau in (-1.0, 0.6, 1.2, np.inf):
            for chunk in (0, 1, 9):
                y, c = f(q, k, v, np.ones((B, H, T, C), dtype), capacity=C, tau=tau, score=score, log_decay=g,
                         _chunk_size=chunk)
                assert rel_err(y, want) < tol, (C, tau, chunk, rel_err(y, want))


@pytest.mark.skipif(not hasattr(attnkit, "linear_attention"), reason="attnkit.linear_attention not in this build")
def test_lam_one_equals_attnkit_linear_attention(rng):
    """Invariant 1 against the library's own linear attention (identity map, unnormalized, causal)."""
    B, H, T, D = 1, 4, 70, 16
    q, k, v = (randn(rng, (B, H, T, D), np.float32, 0.5) for _ in range(3))
    want = attnkit.linear_attention(q, k, v, feature_map="identity", normalize=False, causal=True)
    for C, tau in ((1, 0.6), (5, 0.6), (5, 0.0)):
        y, _ = f(q, k, v, np.ones((B, H, T, C), np.float32), capacity=C, tau=tau)
        assert rel_err(y, want) < 1e-5


@pytest.mark.parametrize("decay", [None, "rand"])
@pytest.mark.parametrize("score", ["token_vs_state", "state_drift"])
def test_single_state(rng, decay, score):
    """Invariant 2: C = 1 or tau = +inf gives y = lam[..., 0] * linear attention and one state."""
    B, H, T, Dk, Dv = 1, 3, 40, 8, 8
    q, k, v = (randn(rng, s, np.float64) for s in ((B, H, T, Dk), (B, H, T, Dk), (B, H, T, Dv)))
    g = None if decay is None else -rng.random((B, H, T)) * 0.3
    la = linear_attention_f64(q, k, v, g)
    for C, tau in ((1, -np.inf), (1, 0.0), (4, np.inf)):
        lam = randn(rng, (B, H, T, C), np.float64)
        for chunk in (0, 1, 6):
            y, c, a = f(q, k, v, lam, capacity=C, tau=tau, score=score, log_decay=g, return_aux=True,
                        _chunk_size=chunk)
            assert rel_err(y, lam[..., :1] * la) < 1e-12
            assert (c.size == 1).all() and (c.counts[..., 0] == T).all() and (c.starts == 0).all()
            assert (c.counts[..., 1:] == 0).all() and (c.states[:, :, 1:] == 0).all()
            assert a.boundaries[..., 0].all() and not a.boundaries[..., 1:].any() and (a.merged == -1).all()
            np.testing.assert_allclose(c.info[..., 0], a.scores.sum(-1), rtol=1e-12)


@pytest.mark.parametrize("decay", [None, "rand"])
def test_one_state_per_token(rng, decay):
    """Invariant 3: tau <= 0 and C >= T give one state per token; lam = 1 on the W newest slots is
    sliding-window linear attention."""
    B, H, T, Dk, Dv, W = 1, 2, 24, 8, 4, 5
    q, k, v = (randn(rng, s, np.float64) for s in ((B, H, T, Dk), (B, H, T, Dk), (B, H, T, Dv)))
    g = None if decay is None else -rng.random((B, H, T)) * 0.3
    G = np.zeros((B, H, T)) if g is None else np.cumsum(g, -1)
    for C in (T, T + 3):
        lam = np.zeros((B, H, T, C))
        lam[..., :W] = 1
        for tau in (0.0, -2.0):
            for chunk in (0, 1, 7):
                y, c, a = f(q, k, v, lam, capacity=C, tau=tau, log_decay=g, return_aux=True, _chunk_size=chunk)
                assert (c.size == T).all() and (c.counts[..., :T] == 1).all()
                np.testing.assert_array_equal(c.starts[..., :T], np.broadcast_to(np.arange(T), (B, H, T)))
                assert a.boundaries.all() and (a.merged == -1).all()
                want = np.zeros_like(y)
                for t in range(T):
                    for j in range(max(0, t - W + 1), t + 1):
                        w = np.exp(G[..., t] - G[..., j])[..., None]
                        want[..., t, :] += w * (q[..., t, :] * k[..., j, :]).sum(-1, keepdims=True) * v[..., j, :]
                assert rel_err(y, want) < 1e-12


# ---------------------------------------------------------------------------------------- invariant 4
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_cache_invariants(rng, dtype, cfg):
    """Invariant 4: at most C states, contiguous chronological spans covering every token, each S_i the
    decayed sum of k v^T over its span, each I_i the sum of its tokens' scores, unused entries zero."""
    score, decay, tau = cfg
    B, H, T, Dk, Dv, C = 1, 3, 90, 8, 6, 4
    q, k, v, lam, g = problem(rng, B, H, T, Dk, Dv, C, dtype, decay)
    G = np.zeros((B, H, T)) if g is None else np.cumsum(g, -1)
    for chunk in (0, 1, 11):
        y, c, a = f(q, k, v, lam, capacity=C, tau=tau, score=score, log_decay=g, return_aux=True, _chunk_size=chunk)
        assert c.position == T
        for b in range(B):
            for h in range(H):
                m = int(c.size[b, h])
                assert 1 <= m <= C
                n, s = c.counts[b, h], c.starts[b, h]
                assert s[0] == 0 and (n[:m] >= 1).all() and n[:m].sum() == T
                np.testing.assert_array_equal(s[1:m], np.cumsum(n[:m])[:-1])
                assert (n[m:] == 0).all() and (s[m:] == 0).all() and (c.info[b, h, m:] == 0).all()
                assert (c.states[b, h, m:] == 0).all()
                # boundaries open exactly the spans that survived, plus those merged away
                assert a.boundaries[b, h, s[:m]].all()
                for i in range(m):
                    span = slice(s[i], s[i] + n[i])
                    w = np.exp(G[b, h, T - 1] - G[b, h, span])
                    S = np.einsum("j,jd,je->de", w, k[b, h, span].astype(np.float64), v[b, h, span].astype(np.float64))
                    tol = 1e-12 if dtype == F64 else 1e-5
                    assert rel_err(c.states[b, h, i], S) < tol
                    np.testing.assert_allclose(c.info[b, h, i], a.scores[b, h, span].astype(np.float64).sum(),
                                               rtol=1e-12 if dtype == F64 else 1e-5)


# ---------------------------------------------------------------------------------------- invariant 5
def concat(*parts):
    return [np.concatenate(x, axis=2) for x in zip(*parts)]


def assert_same_run(one, pieces, dtype, what):
    """Outputs, scores, boundaries, merges and the final cache of a split run equal one call's."""
    (y1, c1, a1), (y2, c2, a2) = one, pieces
    tol = 1e-12 if dtype == F64 else 2e-6
    assert rel_err(y2, y1) < tol, (what, rel_err(y2, y1))
    np.testing.assert_array_equal(a2.boundaries, a1.boundaries, err_msg=what)
    np.testing.assert_array_equal(a2.merged, a1.merged, err_msg=what)
    assert np.abs(a2.scores.astype(np.float64) - a1.scores).max() < (1e-9 if dtype == F64 else 2e-5), what
    for name in ("counts", "starts", "size"):
        np.testing.assert_array_equal(getattr(c2, name), getattr(c1, name), err_msg=f"{what}: {name}")
    assert c2.position == c1.position
    assert rel_err(c2.states, c1.states) < tol and rel_err(c2.info, c1.info) < tol, what


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_streaming(rng, dtype, cfg):
    """Invariant 5: [0, T1) then [T1, T) with the returned cache equals one call over [0, T)."""
    score, decay, tau = cfg
    B, H, T, C = 2, 2, 70, 4
    q, k, v, lam, g = problem(rng, B, H, T, 12, 6, C, dtype, decay)
    kw = dict(capacity=C, tau=tau, score=score, return_aux=True)
    one = f(q, k, v, lam, log_decay=g, **kw)
    for T1 in (0, 1, 23, 64, 69, T):
        sl = lambda x, a, b: None if x is None else x[:, :, a:b]
        y1, c1, a1 = f(*(x[:, :, :T1] for x in (q, k, v, lam)), log_decay=sl(g, 0, T1), **kw)
        y2, c2, a2 = f(*(x[:, :, T1:] for x in (q, k, v, lam)), log_decay=sl(g, T1, T), cache=c1, **kw)
        y, s, bd, mg = concat((y1, a1.scores, a1.boundaries, a1.merged), (y2, a2.scores, a2.boundaries, a2.merged))
        assert_same_run(one, (y, c2, attnkit.DLAAux(s, bd, mg)), dtype, f"T1={T1}")
    # the continuation also matches the oracle fed the kernel's own cache
    check(q[:, :, 40:], k[:, :, 40:], v[:, :, 40:], lam[:, :, 40:], capacity=C, dtype=dtype, tau=tau, score=score,
          log_decay=None if g is None else g[:, :, 40:],
          cache=f(q[:, :, :40], k[:, :, :40], v[:, :, :40], lam[:, :, :40], capacity=C, tau=tau, score=score,
                  log_decay=None if g is None else g[:, :, :40])[1])


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_decode_equals_prefill(rng, dtype, cfg):
    """Invariant 5: token-by-token decode (T = 1 calls) after a prefill equals one prefill call."""
    score, decay, tau = cfg
    B, H, T, T0, C = 1, 3, 60, 20, 5
    q, k, v, lam, g = problem(rng, B, H, T, 16, 8, C, dtype, decay)
    kw = dict(capacity=C, tau=tau, score=score, return_aux=True)
    one = f(q, k, v, lam, log_decay=g, **kw)
    y, c, a = f(q[:, :, :T0], k[:, :, :T0], v[:, :, :T0], lam[:, :, :T0],
                log_decay=None if g is None else g[:, :, :T0], **kw)
    parts = [(y, a.scores, a.boundaries, a.merged)]
    for t in range(T0, T):
        yt, c, at = f(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], lam[:, :, t:t + 1],
                      log_decay=None if g is None else g[:, :, t:t + 1], cache=c, **kw)
        parts.append((yt, at.scores, at.boundaries, at.merged))
    y, s, bd, mg = concat(*parts)
    assert_same_run(one, (y, c, attnkit.DLAAux(s, bd, mg)), dtype, "decode")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_decode_steps_match_oracle(rng, dtype, cfg):
    """Each T = 1 step (the fused decode path), checked against the oracle from the kernel's own cache,
    through boundaries and merges (capacity 3, so the cache is full early)."""
    score, decay, tau = cfg
    q, k, v, lam, g = problem(rng, 2, 2, 34, 16, 7, 3, dtype, decay)
    kw = dict(capacity=3, dtype=dtype, tau=tau, score=score)
    cut = lambda x, a, b: None if x is None else x[:, :, a:b]
    _, c, _ = check(*(x[:, :, :1] for x in (q, k, v, lam)), log_decay=cut(g, 0, 1), **kw)  # into an empty cache
    _, c, _ = check(*(x[:, :, 1:20] for x in (q, k, v, lam)), log_decay=cut(g, 1, 20), cache=c, **kw)
    for t in range(20, 34):
        _, c, _ = check(*(x[:, :, t:t + 1] for x in (q, k, v, lam)), log_decay=cut(g, t, t + 1), cache=c, **kw)


def test_decode_with_strided_cache(rng):
    """A cache whose rows are not unit-stride (read through the general path) gives the same step."""
    q, k, v, lam, g = problem(rng, 1, 2, 30, 8, 6, 4, np.float32, "rand")
    _, c = f(q[:, :, :29], k[:, :, :29], v[:, :, :29], lam[:, :, :29], capacity=4, log_decay=g[:, :, :29])
    odd = np.zeros(c.states.shape[:-1] + (2 * c.states.shape[-1],), np.float32)[..., ::2]
    odd[...] = c.states
    c2 = attnkit.DLACache(odd, c.counts, c.info, c.starts, c.size, c.position)
    step = lambda cc: f(q[:, :, 29:], k[:, :, 29:], v[:, :, 29:], lam[:, :, 29:], capacity=4, log_decay=g[:, :, 29:],
                        cache=cc, return_aux=True)
    (y1, c1, a1), (y2, c2, a2) = step(c), step(c2)
    assert rel_err(y2, y1) < 1e-6 and rel_err(c2.states, c1.states) < 1e-6
    np.testing.assert_array_equal(a1.merged, a2.merged)


# ---------------------------------------------------------------------------------------- invariant 6
@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_chunk_lengths_agree(rng, dtype, cfg):
    """Invariant 6: the chunked prefill equals its token-by-token form (chunks of 1) for every chunk size
    (dividing T or not, and longer than T), starting from an empty cache and from a carried one."""
    score, decay, tau = cfg
    B, H, T, C = 1, 2, 75, 4
    q, k, v, lam, g = problem(rng, B, H, T + 30, 16, 8, C, dtype, decay)
    kw = dict(capacity=C, tau=tau, score=score, return_aux=True)
    _, c0 = f(q[:, :, :30], k[:, :, :30], v[:, :, :30], lam[:, :, :30],
              log_decay=None if g is None else g[:, :, :30], capacity=C, tau=tau, score=score)
    q, k, v, lam = (x[:, :, 30:] for x in (q, k, v, lam))
    g = None if g is None else g[:, :, 30:]
    for cache in (None, c0):
        rec = f(q, k, v, lam, log_decay=g, cache=cache, _chunk_size=1, **kw)
        for L in (2, 3, 5, 16, 25, 64, 75, 200):
            assert_same_run(rec, f(q, k, v, lam, log_decay=g, cache=cache, _chunk_size=L, **kw), dtype, f"L={L}")


# ---------------------------------------------------------------------------------------- invariant 7
@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("chunk", [0, 1])
def test_boundaries_independent_of_q_lam_capacity(rng, cfg, chunk):
    """Invariant 7: scores and boundaries depend only on k, v, g and tau (C >= 2): bitwise equal."""
    score, decay, tau = cfg
    if score == "state_drift" and decay is None:
        tau = 0.1  # (the kernel is compared with itself: any tau with boundaries will do)
    B, H, T = 1, 2, 80
    q, k, v, _, g = problem(rng, B, H, T, 16, 8, 2, np.float32, decay)
    base = None
    for C in (2, 3, 9, 100):
        for trial in range(2):
            qq = randn(rng, q.shape, np.float32)
            lam = randn(rng, (B, H, T, C), np.float32)
            _, _, a = f(qq, k, v, lam, capacity=C, tau=tau, score=score, log_decay=g, return_aux=True, _chunk_size=chunk)
            if base is None:
                base = a
            np.testing.assert_array_equal(a.scores, base.scores)
            np.testing.assert_array_equal(a.boundaries, base.boundaries)
    assert base.boundaries[..., 1:].any()


# ----------------------------------------------------------------------------------------- tie rule
@pytest.mark.parametrize("chunk", [0, 1, 3])
def test_ties_pick_oldest_pair(chunk):
    """All scores 0 (k = 0: the open state and every token are 0) and tau = 0: every token opens a
    state, every merge ratio ties, so the oldest pair (0, 1) merges every time."""
    B, H, T, D, C = 1, 2, 20, 4, 5
    rng = np.random.default_rng(0)
    q, v = randn(rng, (B, H, T, D), np.float32), randn(rng, (B, H, T, D), np.float32)
    k = np.zeros((B, H, T, D), np.float32)
    lam = np.ones((B, H, T, C), np.float32)
    y, c, a = f(q, k, v, lam, capacity=C, tau=0.0, return_aux=True, _chunk_size=chunk)
    assert (a.scores == 0).all() and a.boundaries.all()
    np.testing.assert_array_equal(a.merged[..., :C], -1)
    np.testing.assert_array_equal(a.merged[..., C:], 0)
    np.testing.assert_array_equal(c.counts[0, 0], [T - C + 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(c.starts[0, 0], [0, T - C + 1, T - C + 2, T - C + 3, T - C + 4])


@pytest.mark.parametrize("chunk", [0, 1, 2])
def test_ties_in_the_middle(rng, chunk):
    """A cache whose pairs (1, 2) and (2, 3) tie for the smallest ratio: the older, 1, merges."""
    B, H, C, D = 1, 1, 4, 3
    states = randn(rng, (B, H, C, D, D), np.float64)
    cache = attnkit.DLACache(states=states, counts=np.ones((B, H, C), np.int64),
                             info=np.array([[[5.0, 1.0, 1.0, 1.0]]]), starts=np.arange(C).reshape(B, H, C),
                             size=np.full((B, H), C, np.int64), position=C)
    q, k, v = (randn(rng, (B, H, 1, D), np.float64) for _ in range(3))
    lam = randn(rng, (B, H, 1, C), np.float64)
    y, c, a = check(q, k, v, lam, capacity=C, dtype=np.float64, tau=-np.inf, cache=cache, chunk=chunk)
    assert a.merged[0, 0, 0] == 1
    np.testing.assert_array_equal(c.counts[0, 0], [1, 2, 1, 1])
    np.testing.assert_array_equal(c.starts[0, 0], [0, 1, 3, 4])
    np.testing.assert_array_equal(c.info[0, 0, :3], [5.0, 2.0, 1.0])


# ------------------------------------------------------------------------------------ API behaviour
def test_threads_do_not_change_results(rng):
    q, k, v, lam, g = problem(rng, 2, 3, 150, 32, 16, 6, np.float32, "rand")
    assert_thread_invariant(
        lambda: [f(q, k, v, lam, capacity=6, log_decay=g, return_aux=True, _chunk_size=cs) for cs in (0, 1)])


def test_empty_and_tiny(rng):
    B, H, Dk, Dv, C = 2, 3, 5, 4, 3
    q, k, v, lam, _ = problem(rng, B, H, 10, Dk, Dv, C, np.float32)
    e = lambda x: x[:, :, :0]
    # T = 0 without a cache: an empty cache at position 0
    y, c, a = f(e(q), e(k), e(v), e(lam), capacity=C, return_aux=True)
    assert y.shape == (B, H, 0, Dv) and a.scores.shape == (B, H, 0)
    assert c.position == 0 and (c.size == 0).all() and (c.states == 0).all() and (c.counts == 0).all()
    # T = 0 with a cache: an unchanged copy
    _, c1 = f(q, k, v, lam, capacity=C)
    y, c2 = f(e(q), e(k), e(v), e(lam), capacity=C, cache=c1)
    assert c2.position == 10 and c2.states is not c1.states
    for name in ("states", "counts", "info", "starts", "size"):
        np.testing.assert_array_equal(getattr(c2, name), getattr(c1, name))
    # B = 0 and H = 0
    for shape in ((0, H), (B, 0)):
        qq, kk = np.zeros(shape + (4, Dk), np.float32), np.zeros(shape + (4, Dk), np.float32)
        y, c = f(qq, kk, np.zeros(shape + (4, Dv), np.float32), np.zeros(shape + (4, C), np.float32), capacity=C)
        assert y.shape == shape + (4, Dv) and c.states.shape == shape + (C, Dk, Dv)
    # one token
    check(q[:, :, :1], k[:, :, :1], v[:, :, :1], lam[:, :, :1], capacity=C, dtype=np.float32)


def test_cache_not_modified(rng):
    q, k, v, lam, g = problem(rng, 1, 2, 40, 8, 8, 3, np.float32, "rand")
    _, c = f(q[:, :, :20], k[:, :, :20], v[:, :, :20], lam[:, :, :20], capacity=3, log_decay=g[:, :, :20])
    before = {n: getattr(c, n).copy() for n in ("states", "counts", "info", "starts", "size")}
    for chunk in (0, 1):
        f(q[:, :, 20:], k[:, :, 20:], v[:, :, 20:], lam[:, :, 20:], capacity=3, log_decay=g[:, :, 20:], cache=c,
          _chunk_size=chunk)
    for n, x in before.items():
        np.testing.assert_array_equal(getattr(c, n), x)
    assert c.position == 20


@pytest.mark.parametrize("rank", [2, 3])
def test_lower_ranks(rng, rank):
    """[H, T, *] and [T, *] inputs: outputs keep q's rank, the cache keeps its B and H dims."""
    q, k, v, lam, g = problem(rng, 1, 1 if rank == 2 else 3, 30, 8, 4, 3, np.float32, "rand")
    full = f(q, k, v, lam, capacity=3, log_decay=g, return_aux=True)
    lo = (lambda x: x[0, 0]) if rank == 2 else (lambda x: x[0])
    y, c, a = f(lo(q), lo(k), lo(v), lo(lam), capacity=3, log_decay=lo(g), return_aux=True)
    assert y.shape == lo(full[0]).shape and a.scores.shape == lo(full[2].scores).shape
    np.testing.assert_array_equal(y, lo(full[0]))
    np.testing.assert_array_equal(a.boundaries, lo(full[2].boundaries))
    assert c.states.shape == full[1].states.shape
    np.testing.assert_array_equal(c.states, full[1].states)
    y2, c2 = f(lo(q), lo(k), lo(v), lo(lam), capacity=3, log_decay=lo(g), cache=c)  # continue
    ry, rc = ref.dynamic_linear_attention(lo(q), lo(k), lo(v), lo(lam), capacity=3, log_decay=lo(g), cache=c)
    assert y2.shape == ry.shape and rel_err(y2, ry) < 1e-5


def test_strided_inputs(rng):
    """BSHD buffers read through transposed views, reversed and sliced views, a broadcast log_decay."""
    B, H, T, Dk, Dv, C = 2, 3, 33, 16, 8, 4
    q, k, v, lam, g = problem(rng, B, H, T, Dk, Dv, C, np.float32, "rand")
    bshd = lambda x: np.ascontiguousarray(x.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    want = f(q, k, v, lam, capacity=C, log_decay=g, return_aux=True)
    got = f(bshd(q), bshd(k), bshd(v), bshd(lam), capacity=C, log_decay=np.asfortranarray(g), return_aux=True)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1].states, want[1].states)
    # every other element of a bigger buffer, last dims reversed
    big = lambda x: np.repeat(x[..., ::-1], 2, axis=-1)[..., ::-2]
    got = f(big(q), big(k), big(v), big(lam), capacity=C, log_decay=g)
    np.testing.assert_array_equal(got[0], want[0])
    # a constant decay broadcast through zero strides
    g0 = np.broadcast_to(np.float32(-0.1), (B, H, T))
    np.testing.assert_array_equal(f(q, k, v, lam, capacity=C, log_decay=g0)[0],
                                  f(q, k, v, lam, capacity=C, log_decay=np.full((B, H, T), -0.1, np.float32))[0])


def test_decay_edge_values(rng):
    """log_decay = 0 is no decay; huge decays (exp(g) underflowing to 0) forget everything cleanly."""
    q, k, v, lam, _ = problem(rng, 1, 2, 50, 8, 8, 4, np.float64)
    for chunk in (0, 1, 7):
        a = f(q, k, v, lam, capacity=4, _chunk_size=chunk)
        b = f(q, k, v, lam, capacity=4, log_decay=np.zeros((1, 2, 50)), _chunk_size=chunk)
        assert rel_err(b[0], a[0]) < 1e-13
        g = np.where(rng.random((1, 2, 50)) < 0.3, -800.0, -rng.random((1, 2, 50)) * 30)
        check(q, k, v, lam, capacity=4, dtype=np.float64, log_decay=g, chunk=chunk)


def test_cache_dataclass(rng):
    q, k, v, lam, _ = problem(rng, 1, 2, 12, 4, 4, 3, np.float32)
    _, c = f(q, k, v, lam, capacity=3)
    assert isinstance(c, attnkit.DLACache) and c.capacity == 3 and "position=12" in repr(c)
    with pytest.raises(Exception):
        c.position = 3  # frozen: a cache is a value


# ------------------------------------------------------------------------------------ every CPU ISA path
ISA_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, attnkit
    from attnkit._tuning import tuning
    d = dict(np.load(sys.argv[1]))
    out = {"isa": np.array(attnkit.info()["cpu_isa"])}
    for dt in ("float32", "float64"):
        args = [d[n].astype(dt) for n in ("q", "k", "v", "lam")]
        for chunk in (0, 1, 5):
            with tuning(dla_chunk=chunk):
                y, c, a = attnkit.dynamic_linear_attention(*args, capacity=4, log_decay=d["g"], return_aux=True)
            out[f"{dt}_{chunk}_y"] = y
            out[f"{dt}_{chunk}_b"] = a.boundaries
            out[f"{dt}_{chunk}_s"] = c.states
    np.savez(sys.argv[2], **out)
""")


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_isa_family(rng, isa, tmp_path):
    q, k, v, lam, g = problem(rng, 1, 2, 50, 13, 7, 4, np.float64, "rand")
    res = run_in_isa(isa, ISA_SCRIPT, tmp_path, inputs=dict(q=q, k=k, v=v, lam=lam, g=g))
    ry, rc, ra = ref.dynamic_linear_attention(q, k, v, lam, capacity=4, log_decay=g, return_aux=True)
    for dt, tol in (("float32", 2e-6), ("float64", 1e-12)):
        for chunk in (0, 1, 5):
            assert rel_err(res[f"{dt}_{chunk}_y"], ry) < tol
            np.testing.assert_array_equal(res[f"{dt}_{chunk}_b"], ra.boundaries)
            assert rel_err(res[f"{dt}_{chunk}_s"], rc.states) < tol


# ---------------------------------------------------------------------------------------- property test
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(data=st.data())
def test_random_problems_float64(data):
    """Random small shapes, capacities, thresholds, modes, decays and splits: equal to the oracle."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    B, H = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))
    T, Dk, Dv = data.draw(st.integers(0, 40)), data.draw(st.integers(1, 20)), data.draw(st.integers(1, 20))
    C = data.draw(st.integers(1, 8))
    tau = data.draw(st.sampled_from([-np.inf, 0.0, 0.5, 0.9, 1.2, 1.4, np.inf]))
    score = data.draw(st.sampled_from(["token_vs_state", "state_drift"]))
    q, k, v, lam = (rng.standard_normal(s) for s in ((B, H, T, Dk), (B, H, T, Dk), (B, H, T, Dv), (B, H, T, C)))
    g = -rng.random((B, H, T)) * data.draw(st.sampled_from([0.0, 0.5, 5.0])) if data.draw(st.booleans()) else None
    chunk = data.draw(st.sampled_from([0, 1, 2, 7, 64]))
    T1 = data.draw(st.integers(0, T))
    sl = lambda x, a, b: None if x is None else x[:, :, a:b]
    kw = dict(capacity=C, tau=tau, score=score)
    _, c1 = f(q[:, :, :T1], k[:, :, :T1], v[:, :, :T1], lam[:, :, :T1], log_decay=sl(g, 0, T1), **kw)
    check(q[:, :, T1:], k[:, :, T1:], v[:, :, T1:], lam[:, :, T1:], dtype=np.float64, log_decay=sl(g, T1, T),
          cache=c1, chunk=chunk, **kw)


@SETTINGS
@given(data=st.data())
def test_bad_shapes_raise_cleanly(data):
    """Arbitrary (often inconsistent) shapes and capacities: a result or ValueError/TypeError, never a
    crash; when it runs, it matches the oracle."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    dims = st.lists(st.integers(0, 4), min_size=1, max_size=5)
    q, k, v, lam = (rng.standard_normal(data.draw(dims)) for _ in range(4))
    capacity = data.draw(st.integers(-1, 4))
    g = -rng.random(data.draw(dims)) if data.draw(st.booleans()) else None
    try:
        y, c = f(q, k, v, lam, capacity=capacity, log_decay=g)
    except (ValueError, TypeError):
        return
    ry, rc = ref.dynamic_linear_attention(q, k, v, lam, capacity=capacity, log_decay=g)
    assert y.shape == ry.shape and rel_err(y, ry) < 1e-10
    np.testing.assert_array_equal(c.counts, rc.counts)


# ----------------------------------------------------------------------------------------------- errors


@pytest.fixture
def args(rng):
    q, k, v, lam, g = problem(rng, 2, 3, 10, 8, 4, 3, np.float32, "rand")
    _, cache = f(q, k, v, lam, capacity=3)
    return q, k, v, lam, g, cache


def test_errors_scalars(args):
    q, k, v, lam, g, _ = args
    raises(ValueError, "capacity", f, q, k, v, lam[..., :0], capacity=0)
    raises(ValueError, "capacity", f, q, k, v, lam, capacity=-3)
    raises(TypeError, "capacity", f, q, k, v, lam, capacity=3.0)
    raises(TypeError, "capacity", f, q, k, v, lam, capacity=True)
    raises(TypeError, "capacity", f, q, k, v, lam, capacity=None)
    raises(ValueError, "lam", f, q, k, v, lam, capacity=4)
    raises(ValueError, "lam", f, q, k, v, lam[..., :2], capacity=3)
    raises(ValueError, "tau", f, q, k, v, lam, capacity=3, tau=float("nan"))
    raises(TypeError, "tau", f, q, k, v, lam, capacity=3, tau="0.5")
    raises(ValueError, "score", f, q, k, v, lam, capacity=3, score="cosine")
    raises(TypeError, "score", f, q, k, v, lam, capacity=3, score=1)
    raises(TypeError, "return_aux", f, q, k, v, lam, capacity=3, return_aux=1)
    raises(ValueError, "dla_chunk", f, q, k, v, lam, capacity=3, _chunk_size=-1)


def test_errors_log_decay(args):
    q, k, v, lam, g, _ = args
    raises(ValueError, "log_decay", f, q, k, v, lam, capacity=3, log_decay=-g)      # positive
    raises(ValueError, "grow", f, q, k, v, lam, capacity=3, log_decay=-g + 0.6)
    for bad in (np.nan, np.inf, -np.inf):
        g2 = g.copy()
        g2[1, 2, 3] = bad
        raises(ValueError, "log_decay", f, q, k, v, lam, capacity=3, log_decay=g2)
    raises(ValueError, "log_decay", f, q, k, v, lam, capacity=3, log_decay=g[:, :, :5])
    raises(ValueError, "log_decay", f, q, k, v, lam, capacity=3, log_decay=g[..., None])
    raises(TypeError, "log_decay", f, q, k, v, lam, capacity=3, log_decay=np.zeros(g.shape, np.int32))


def test_errors_inputs(args):
    q, k, v, lam, g, _ = args
    raises(TypeError, "q", f, q.tolist(), k, v, lam, capacity=3)
    raises(TypeError, "q", f, q.astype(np.int32), k, v, lam, capacity=3)
    raises(TypeError, "k", f, q, k.astype(np.float64), v, lam, capacity=3)
    raises(TypeError, "v", f, q, k, v.astype(np.float16), lam, capacity=3)
    raises(TypeError, "lam", f, q, k, v, lam.astype(np.float64), capacity=3)
    raises(ValueError, "k", f, q, k[:, :, :9], v, lam, capacity=3)          # T
    raises(ValueError, "k", f, q, k[:, :2], v, lam, capacity=3)             # H
    raises(ValueError, "k", f, q, k[:1], v, lam, capacity=3)                # B
    raises(ValueError, "k", f, q, k[..., :5], v, lam, capacity=3)           # Dk
    raises(ValueError, "v", f, q, k, v[:, :, :9], lam, capacity=3)
    raises(ValueError, "lam", f, q, k, v, lam[:, :, :9], capacity=3)
    raises(ValueError, "k", f, q, k[0], v, lam, capacity=3)                 # rank
    raises(ValueError, "q", f, q[0, 0, 0], k, v, lam, capacity=3)
    raises(ValueError, "head dims", f, q[..., :0], k[..., :0], v, lam, capacity=3)
    raises(ValueError, "head dims", f, q, k, v[..., :0], lam, capacity=3)


def test_errors_cache(args):
    q, k, v, lam, g, c = args
    C = attnkit.DLACache
    kw = dict(capacity=3)
    raises(TypeError, "cache", f, q, k, v, lam, cache={"states": c.states}, **kw)
    rep = lambda **x: C(**{**dict(states=c.states, counts=c.counts, info=c.info, starts=c.starts, size=c.size,
                                  position=c.position), **x})
    raises(ValueError, "cache.states", f, q, k, v, lam, cache=rep(states=c.states[:1]), **kw)            # B
    raises(ValueError, "cache.states", f, q, k, v, lam, cache=rep(states=c.states[..., :3]), **kw)       # Dv
    raises(ValueError, "cache.states", f, q, k, v, lam[..., :2], capacity=2, cache=c)                    # C
    raises(ValueError, "cache.counts", f, q, k, v, lam, cache=rep(counts=c.counts[:, :2]), **kw)
    raises(ValueError, "cache.info", f, q, k, v, lam, cache=rep(info=c.info[..., None]), **kw)
    raises(ValueError, "cache.starts", f, q, k, v, lam, cache=rep(starts=c.starts[:, :, :2]), **kw)
    raises(ValueError, "cache.size", f, q, k, v, lam, cache=rep(size=c.size[0]), **kw)
    raises(TypeError, "cache.states", f, q, k, v, lam, cache=rep(states=c.states.astype(np.float64)), **kw)
    raises(TypeError, "cache.info", f, q, k, v, lam, cache=rep(info=c.info.astype(np.float16)), **kw)
    raises(TypeError, "cache.counts", f, q, k, v, lam, cache=rep(counts=c.counts.astype(np.int32)), **kw)
    raises(TypeError, "cache.size", f, q, k, v, lam, cache=rep(size=c.size.astype(np.float32)), **kw)
    raises(TypeError, "cache.states", f, q.astype(np.float64), k.astype(np.float64), v.astype(np.float64),
           lam.astype(np.float64), cache=c, **kw)  # float32 cache with float64 inputs
    # values
    bad = c.size.copy()
    bad[1, 1] = 4
    raises(ValueError, "cache.size", f, q, k, v, lam, cache=rep(size=bad), **kw)
    bad[1, 1] = -1
    raises(ValueError, "cache.size", f, q, k, v, lam, cache=rep(size=bad), **kw)
    raises(ValueError, "cache.position", f, q, k, v, lam, cache=rep(position=c.position + 1), **kw)
    raises(ValueError, "cache.position", f, q, k, v, lam, cache=rep(position=-1), **kw)
    raises(TypeError, "cache.position", f, q, k, v, lam, cache=rep(position=1.5), **kw)
    bad = c.counts.copy()
    bad[0, 0, 0] = 0
    raises(ValueError, "cache.counts", f, q, k, v, lam, cache=rep(counts=bad), **kw)
    bad = c.starts.copy()
    bad[0, 0, int(c.size[0, 0]) - 1] += 1
    raises(ValueError, "cache.starts", f, q, k, v, lam, cache=rep(starts=bad), **kw)


def test_errors_from_the_core(args):
    """The C++ validator checks what Python never passes wrong (C++ users fill the params themselves)."""
    from attnkit import _core

    q, k, v, lam, g, c = args
    ref_ = lambda a: _core.TensorRef(a.ctypes.data, {np.dtype(np.float32): 0, np.dtype(np.int64): 6,
                                                     np.dtype(np.bool_): 4}[a.dtype],
                                     list(a.shape), [s // a.itemsize for s in a.strides])
    p = _core.DLAParams()
    p.q, p.k, p.v, p.lam = ref_(q), ref_(k), ref_(v), ref_(lam)
    p.capacity = 3
    raises(ValueError, "out is required", _core.dynamic_linear_attention, p)
    y = np.empty((2, 3, 10, 4), np.float32)
    p.out = ref_(y)
    raises(ValueError, "cache_out.states is required", _core.dynamic_linear_attention, p)
    outs = dict(states=np.empty((2, 3, 3, 8, 4), np.float32), counts=np.empty((2, 3, 3), np.int64),
                info=np.empty((2, 3, 3), np.float32), starts=np.empty((2, 3, 3), np.int64),
                size=np.empty((2, 3), np.int64))
    for n, a in outs.items():
        setattr(p.cache_out, n, ref_(a))
    _core.dynamic_linear_attention(p)  # complete: runs
    p.cache_out.info = ref_(np.empty((2, 3, 3), np.int64))
    raises(TypeError, "cache_out.info", _core.dynamic_linear_attention, p)
    p.cache_out.info = ref_(outs["info"])
    p.scores = ref_(np.empty((2, 3, 9), np.float32))
    raises(ValueError, "scores", _core.dynamic_linear_attention, p)
    p.scores = _core.TensorRef()
    p.boundaries = ref_(np.empty((2, 3, 10), np.int64))
    raises(TypeError, "boundaries", _core.dynamic_linear_attention, p)
    p.boundaries = _core.TensorRef()
    p.cache_in.states = ref_(c.states)
    raises(ValueError, "cache.counts is required", _core.dynamic_linear_attention, p)
    p.cache_in.states = _core.TensorRef()
    p.position = 5
    raises(ValueError, "position", _core.dynamic_linear_attention, p)
    p.position = 0
    p.out = ref_(np.broadcast_to(np.empty((1, 1, 1, 4), np.float32), (2, 3, 10, 4)))
    raises(ValueError, "out", _core.dynamic_linear_attention, p)


def test_cuda_path_without_gpu(args):
    from attnkit import _core

    q, k, v, lam, g, c = args
    p = _core.DLAParams()
    for name, a in (("q", q), ("k", k), ("v", v), ("lam", lam), ("out", np.empty((2, 3, 10, 4), np.float32))):
        setattr(p, name, _core.TensorRef(0x1000, 0, list(a.shape), [s // 4 for s in a.strides], 1, 0))
    p.capacity = 3
    for n, shape, code in (("states", (2, 3, 3, 8, 4), 0), ("counts", (2, 3, 3), 6), ("info", (2, 3, 3), 0),
                           ("starts", (2, 3, 3), 6), ("size", (2, 3), 6)):
        strides = [int(np.prod(shape[i + 1:])) for i in range(len(shape))]
        setattr(p.cache_out, n, _core.TensorRef(0x1000, code, list(shape), strides, 1, 0))
    with pytest.raises(RuntimeError) as e:
        _core.dynamic_linear_attention(p)
    assert ("CUDA" in str(e.value)) if _core.built_with_cuda() else ("built without CUDA" in str(e.value))


def test_dla_split_tuning_option():
    """The CUDA prefill's column split (tuning option dla_split, cuda/dla_prefill_v4.cuh): range-checked,
    restored by attnkit._tuning.tuning, and no effect on the CPU backend."""
    from attnkit import _core
    from attnkit._tuning import tuning

    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal((1, 2, 30, 8)).astype(np.float32) for _ in range(3))
    lam = rng.random((1, 2, 30, 3)).astype(np.float32)
    y0 = attnkit.dynamic_linear_attention(q, k, v, lam, capacity=3)[0]
    for split in (-2, -1, 0, 1, 8):
        with tuning(dla_split=split):
            assert _core.get_tuning("dla_split") == split
            np.testing.assert_array_equal(attnkit.dynamic_linear_attention(q, k, v, lam, capacity=3)[0], y0)
    assert _core.get_tuning("dla_split") == 0
    for bad in (-3, 9):
        raises(ValueError, "dla_split", _core.set_tuning, "dla_split", bad)


def test_dla_decode_tuning_option():
    """The CUDA decode kernel's choice (tuning option dla_decode, cuda/dla_decode_v2.cu / _v3.cu): 0 or 2 (1, the
    first kernel, is gone since session 27), restored by attnkit._tuning.tuning, and no effect on the CPU
    backend's decode step."""
    from attnkit import _core
    from attnkit._tuning import tuning

    rng = np.random.default_rng(6)
    q, k, v = (rng.standard_normal((1, 2, 9, 8)).astype(np.float32) for _ in range(3))
    lam = rng.random((1, 2, 9, 3)).astype(np.float32)
    _, c = attnkit.dynamic_linear_attention(q[:, :, :8], k[:, :, :8], v[:, :, :8], lam[:, :, :8], capacity=3)
    step = lambda: attnkit.dynamic_linear_attention(q[:, :, 8:], k[:, :, 8:], v[:, :, 8:], lam[:, :, 8:],  # noqa: E731
                                                    capacity=3, cache=c)
    y0, c0 = step()
    for mode in (2, 0):
        with tuning(dla_decode=mode):
            assert _core.get_tuning("dla_decode") == mode
            y, c1 = step()
            np.testing.assert_array_equal(y, y0)
            np.testing.assert_array_equal(c1.states, c0.states)
    assert _core.get_tuning("dla_decode") == 0
    for bad in (-1, 1, 3):
        raises(ValueError, "dla_decode", _core.set_tuning, "dla_decode", bad)
