"""attnkit.jax: the C++ kernels as JAX operations (XLA FFI) under jit, grad and vmap, against
jax.nn.dot_product_attention and the float64 oracle; errors; the training example."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import attnkit  # noqa: E402
import attnkit.jax as akj  # noqa: E402  (with jax installed, attnkit must have been built with its handlers)
from attnkit import layouts  # noqa: E402
from attnkit import reference as ref  # noqa: E402

from conftest import assert_close, magnitude, raises, randn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BF16 = jnp.bfloat16


def grads_of(fn, argnums, dout):
    """jit(grad) of L = sum(fn(*args) * dout) with respect to argnums: the vector-Jacobian product."""
    return jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a).astype(jnp.float32) * dout), argnums=argnums))


def to_bshd(x):
    return jnp.swapaxes(x, 1, 2)  # jax.nn.dot_product_attention takes [B, S, H, D]


def jax_nn(q, k, v, **kw):
    return to_bshd(jax.nn.dot_product_attention(to_bshd(q), to_bshd(k), to_bshd(v), **kw))


# ------------------------------------------------------------------------ against jax.nn.dot_product_attention
CASES = {
    "plain": dict(),
    "causal": dict(causal=True),
    "mask": dict(mask=True),
    "bias": dict(bias=True),
    "gqa": dict(Hkv=1),
    "scale": dict(scale=0.3),
    "all": dict(causal=True, mask=True, bias=True, Hkv=1, scale=0.7),
}


@pytest.mark.parametrize("case", CASES)
def test_matches_jax_nn(rng, case):
    c = CASES[case]
    B, Hq, Hkv, S, D = 2, 4, c.get("Hkv", 2), 37, 24
    q, k, v = randn(rng, (B, Hq, S, D), np.float32), randn(rng, (B, Hkv, S, D), np.float32), \
        randn(rng, (B, Hkv, S, D), np.float32)
    mask = rng.random((B, 1, S, S)) < 0.8 if c.get("mask") else None
    if mask is not None:
        mask[..., 0] = True  # jax.nn gives a uniform average, attnkit 0, on rows with no allowed key
    bias = randn(rng, (1, Hq, S, S), np.float32) if c.get("bias") else None
    kw = dict(scale=c.get("scale"), mask=mask, bias=bias)
    nn_kw = dict(scale=c.get("scale"), mask=mask, bias=bias, is_causal=c.get("causal", False))
    ours = jax.jit(lambda *a: akj.attention(*a, causal=c.get("causal", False), **kw))
    out = ours(q, k, v)
    want = jax_nn(q, k, v, **nn_kw)
    want64 = ref.attention(q, k, v, causal=c.get("causal", False), **kw)
    assert_close(out, want64, want, np.float32)

    dout = randn(rng, out.shape, np.float32)
    argnums = (0, 1, 2, 3) if bias is not None else (0, 1, 2)
    g = grads_of(lambda q, k, v, b=None: akj.attention(q, k, v, causal=c.get("causal", False), mask=mask,
                                                        bias=b, scale=c.get("scale")), argnums, dout)(q, k, v, bias)
    gn = grads_of(lambda q, k, v, b=None: jax_nn(q, k, v, scale=c.get("scale"), mask=mask, bias=b,
                                                 is_causal=c.get("causal", False)), argnums, dout)(q, k, v, bias)
    g64 = ref.attention_backward(dout, q, k, v, causal=c.get("causal", False), return_dbias=bias is not None, **kw)
    for name, a, n, r in zip(("dq", "dk", "dv", "dbias"), g, gn, g64):
        assert a.shape == r.shape and a.dtype == jnp.float32, name
        assert_close(a, r, n, np.float32, what=name, atol_scale=4 * magnitude(r))


def test_bfloat16(rng):
    q, k, v = (randn(rng, (1, 2, 29, 16), np.float32) for _ in range(3))
    qb, kb, vb = (jnp.asarray(x, BF16) for x in (q, k, v))
    out = jax.jit(lambda *a: akj.attention(*a, causal=True))(qb, kb, vb)
    assert out.dtype == BF16
    r = ref.attention(*(np.asarray(x.astype(jnp.float32)) for x in (qb, kb, vb)), causal=True)
    naive = jax_nn(qb, kb, vb, is_causal=True)
    assert_close(out.astype(jnp.float32), r, naive.astype(jnp.float32), np.float32, atol_scale=8)
    dout = randn(rng, out.shape, np.float32)
    g = grads_of(lambda *a: akj.attention(*a, causal=True), (0, 1, 2), dout)(qb, kb, vb)
    g64 = ref.attention_backward(dout, *(np.asarray(x.astype(jnp.float32)) for x in (qb, kb, vb)), causal=True)
    for a, r in zip(g, g64):
        assert a.dtype == BF16
        np.testing.assert_allclose(np.asarray(a.astype(jnp.float32)), r, atol=0.05 * magnitude(r))


# ------------------------------------------------------------------------ every masking feature, against the oracle
@pytest.mark.parametrize("kw", [
    dict(window=(5, 2)), dict(softcap=2.0), dict(key_lengths=[11, 0]), dict(causal=True, window=(3, None)),
    dict(alibi_slopes=True), dict(causal=True, key_lengths=7),
], ids=["window", "softcap", "key_lengths", "causal_window", "alibi", "causal_lengths_int"])
def test_masking_features(rng, kw):
    B, Hq, Hkv, Sq, Sk, D, Dv = 2, 4, 2, 17, 23, 16, 8
    q, k, v = randn(rng, (B, Hq, Sq, D), np.float32), randn(rng, (B, Hkv, Sk, D), np.float32), \
        randn(rng, (B, Hkv, Sk, Dv), np.float32)
    if kw.get("alibi_slopes") is True:
        kw = dict(kw, alibi_slopes=np.asarray(attnkit.alibi_slopes(Hq), np.float32))
    if isinstance(kw.get("key_lengths"), int):
        B = 1
        q, k, v = q[:1], k[:1], v[:1]
    out = jax.jit(lambda *a: akj.attention(*a, **kw))(q, k, v)
    assert_close(out, ref.attention(q, k, v, **kw), ref.attention(q, k, v, _dtype=np.float32, **kw), np.float32)
    dout = randn(rng, out.shape, np.float32)
    g = grads_of(lambda *a: akj.attention(*a, **kw), (0, 1, 2), dout)(q, k, v)
    g64 = ref.attention_backward(dout, q, k, v, **kw)
    g32 = ref.attention_backward(dout, q, k, v, _dtype=np.float32, **kw)
    for name, a, r, n in zip(("dq", "dk", "dv"), g, g64, g32):
        assert not np.isnan(np.asarray(a)).any(), name  # empty rows (key_lengths = 0) give 0, never NaN
        assert_close(a, r, n, np.float32, what=name, atol_scale=4 * magnitude(r))


def test_alibi_and_broadcast_bias_gradients(rng):
    """d/d(slopes) and d/d(bias of a broadcast shape) against float64 central differences of the oracle."""
    Hq, S, D = 3, 9, 8
    q, k, v = (randn(rng, (1, Hq, S, D), np.float32) for _ in range(3))
    slopes = np.asarray([0.5, 0.25, 0.125], np.float32)
    bias = randn(rng, (S, S), np.float32)
    dout = randn(rng, (1, Hq, S, D), np.float32)
    gs, gb = grads_of(lambda s, b: akj.attention(q, k, v, causal=True, alibi_slopes=s, bias=b), (0, 1), dout)(
        slopes, bias)

    def loss(s, b):
        return float((ref.attention(q, k, v, causal=True, alibi_slopes=s, bias=b) * dout).sum())

    h = 1e-5
    s64, b64 = slopes.astype(np.float64), bias.astype(np.float64)
    fd_s = [(loss(s64 + h * e, b64) - loss(s64 - h * e, b64)) / (2 * h) for e in np.eye(Hq)]
    np.testing.assert_allclose(np.asarray(gs), fd_s, rtol=1e-3, atol=1e-4)
    want_b = ref.attention_backward(dout, q, k, v, causal=True, alibi_slopes=slopes, bias=bias, return_dbias=True)[3]
    assert gb.shape == bias.shape
    np.testing.assert_allclose(np.asarray(gb), want_b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rank", [2, 3])
def test_lower_ranks(rng, rank):
    shape = (3, 13, 8)[3 - rank:]
    q, k, v = (randn(rng, shape, np.float32) for _ in range(3))
    out = akj.attention(q, k, v, causal=True)
    np.testing.assert_allclose(np.asarray(out), ref.attention(q, k, v, causal=True), atol=2e-6)
    dout = randn(rng, shape, np.float32)
    for a, r in zip(grads_of(lambda *a: akj.attention(*a, causal=True), (0, 1, 2), dout)(q, k, v),
                    ref.attention_backward(dout, q, k, v, causal=True)):
        assert a.shape == shape
        np.testing.assert_allclose(np.asarray(a), r, atol=1e-5)


def test_float64_with_x64():
    """With jax_enable_x64 (process-wide, hence a subprocess) float64 runs the float64 kernels: results and
    gradients equal the oracle to float64 rounding."""
    code = """
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp, numpy as np, attnkit, attnkit.jax as akj
from attnkit import reference as ref
rng = np.random.default_rng(0)
q, k, v, g = (rng.standard_normal((2, 2, 13, 8)) for _ in range(4))
kw = dict(causal=True, softcap=3.0, window=(4, 1))
out = akj.attention(q, k, v, **kw)
assert out.dtype == jnp.float64, out.dtype
np.testing.assert_allclose(out, ref.attention(q, k, v, **kw), rtol=0, atol=1e-12)
gr = jax.grad(lambda q, k, v: jnp.sum(akj.attention(q, k, v, **kw) * g), (0, 1, 2))(q, k, v)
for a, r in zip(gr, ref.attention_backward(g, q, k, v, **kw)):
    np.testing.assert_allclose(a, r, rtol=0, atol=1e-11)
E = attnkit.linformer_projection(5, 13, seed=1, dtype=np.float64)
gr = jax.grad(lambda q, k, v, E: jnp.sum(akj.linformer_attention(q, k, v, E) * g), (0, 1, 2, 3))(q, k, v, E)
for a, r in zip(gr, ref.linformer_attention_backward(g, q, k, v, E)):
    np.testing.assert_allclose(a, r, rtol=0, atol=1e-11)
"""
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------ vmap
def test_vmap(rng):
    N, H, S, D = 3, 2, 11, 8
    q, k, v = (randn(rng, (N, H, S, D), np.float32) for _ in range(3))
    bias = randn(rng, (N, S, S), np.float32)
    f = jax.jit(jax.vmap(lambda q, k, v, b: akj.attention(q, k, v, causal=True, bias=b)))
    out = f(q, k, v, bias)
    for n in range(N):
        np.testing.assert_array_equal(np.asarray(out[n]), np.asarray(akj.attention(q[n], k[n], v[n], causal=True,
                                                                                    bias=bias[n])))
    # unmapped k / v (read in place with stride 0), nested vmap over [N, 2] leading axes
    qq = randn(rng, (N, 2, H, S, D), np.float32)
    out2 = jax.vmap(jax.vmap(lambda q, k, v: akj.attention(q, k, v), in_axes=(0, None, None)),
                    in_axes=(0, None, None))(qq, k[0], v[0])
    np.testing.assert_allclose(np.asarray(out2), ref.attention(qq.reshape(N * 2, H, S, D), k[:1], v[:1]).reshape(
        qq.shape), atol=2e-6)
    # vmap of grad, and grad through vmap
    dout = randn(rng, (N, H, S, D), np.float32)
    per = jax.vmap(lambda q, k, v, g: jax.grad(lambda q, k, v: jnp.sum(akj.attention(q, k, v) * g), (0, 1, 2))(
        q, k, v))(q, k, v, dout)
    whole = grads_of(jax.vmap(akj.attention), (0, 1, 2), dout)(q, k, v)
    want = ref.attention_backward(dout, q, k, v)  # the leading axis is the batch axis of the oracle
    for a, b, r in zip(per, whole, want):
        np.testing.assert_allclose(np.asarray(a), r, atol=1e-5)
        np.testing.assert_allclose(np.asarray(b), r, atol=1e-5)


# ------------------------------------------------------------------------ the other mechanisms
def test_block_sparse(rng):
    S, D = 40, 16
    layout = layouts.bigbird(S, 8, window_blocks=1, global_blocks=1, random_blocks=1, seed=3)
    q, k, v = (randn(rng, (2, 2, S, D), np.float32) for _ in range(3))
    lens = np.asarray([S, 29])
    f = jax.jit(lambda *a: akj.block_sparse_attention(*a, layout, causal=True, key_lengths=lens))
    out = f(q, k, v)
    np.testing.assert_allclose(np.asarray(out), ref.block_sparse_attention(q, k, v, layout, causal=True,
                                                                           key_lengths=lens), atol=2e-6)
    dout = randn(rng, out.shape, np.float32)
    g = grads_of(f, (0, 1, 2), dout)(q, k, v)
    for a, r in zip(g, ref.block_sparse_attention_backward(dout, q, k, v, layout, causal=True, key_lengths=lens)):
        np.testing.assert_allclose(np.asarray(a), r, atol=1e-5)
    out_v = jax.vmap(lambda q: akj.block_sparse_attention(q, k[0], v[0], layout))(q)
    np.testing.assert_allclose(np.asarray(out_v), ref.block_sparse_attention(q, k[:1], v[:1], layout), atol=2e-6)


@pytest.mark.parametrize("shared,with_F", [(True, False), (False, True)])
def test_linformer(rng, shared, with_F):
    B, Hq, Hkv, S, D, P = 2, 4, 2, 21, 8, 6
    q, k, v = randn(rng, (B, Hq, S, D), np.float32), randn(rng, (B, Hkv, S, D), np.float32), \
        randn(rng, (B, Hkv, S, D), np.float32)
    E = attnkit.linformer_projection(P, S, seed=1, num_heads=None if shared else Hkv)
    F = attnkit.linformer_projection(P, S, seed=2, num_heads=None if shared else Hkv) if with_F else None
    lens = np.asarray([S, 15])
    f = jax.jit(lambda q, k, v, E, F: akj.linformer_attention(q, k, v, E, F, key_lengths=lens))
    out = f(q, k, v, E, F)
    np.testing.assert_allclose(np.asarray(out), ref.linformer_attention(q, k, v, E, F, key_lengths=lens), atol=2e-6)
    dout = randn(rng, out.shape, np.float32)
    argnums = (0, 1, 2, 3, 4) if with_F else (0, 1, 2, 3)
    g = grads_of(f, argnums, dout)(q, k, v, E, F)
    want = ref.linformer_attention_backward(dout, q, k, v, E, F, key_lengths=lens)
    for name, a, r in zip(("dq", "dk", "dv", "dE", "dF"), g, want):
        np.testing.assert_allclose(np.asarray(a), r, atol=2e-5 * magnitude(r), err_msg=name)
    out_v = jax.vmap(lambda q, k, v: akj.linformer_attention(q, k, v, E, F))(q, k, v)  # E, F not mapped
    np.testing.assert_allclose(np.asarray(out_v), ref.linformer_attention(q, k, v, E, F), atol=2e-6)


@pytest.mark.parametrize("causal", [True, False])
def test_linear(rng, causal):
    B, Hq, Hkv, S, D = 2, 4, 2, 19, 8
    q, k, v = randn(rng, (B, Hq, S, D), np.float32), randn(rng, (B, Hkv, S, D), np.float32), \
        randn(rng, (B, Hkv, S, D), np.float32)
    s0 = (np.abs(randn(rng, (B, Hkv, D, D), np.float32)), np.abs(randn(rng, (B, Hkv, D), np.float32)))
    kw = dict(causal=causal, key_lengths=np.asarray([S, 12]))
    f = jax.jit(lambda q, k, v, s, z: akj.linear_attention(q, k, v, initial_state=(s, z), return_state=True, **kw))
    out, (S1, z1) = f(q, k, v, *s0)
    want, (wS, wz) = ref.linear_attention(q, k, v, initial_state=s0, return_state=True, **kw)
    for a, r in ((out, want), (S1, wS), (z1, wz)):
        np.testing.assert_allclose(np.asarray(a), r, atol=2e-5 * magnitude(r))
    # gradients into q, k, v and the initial state, with a gradient arriving through the final state too
    dout, dS = randn(rng, out.shape, np.float32), randn(rng, S1.shape, np.float32)
    loss = lambda *a: jnp.sum(f(*a)[0] * dout) + jnp.sum(f(*a)[1][0] * dS)  # noqa: E731
    g = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))(q, k, v, *s0)
    dq, dk, dv, (ds0, dz0) = ref.linear_attention_backward(dout, q, k, v, initial_state=s0,
                                                           dfinal_state=(dS, np.zeros_like(s0[1])), **kw)
    for name, a, r in zip(("dq", "dk", "dv", "dS0", "dz0"), g, (dq, dk, dv, ds0, dz0)):
        np.testing.assert_allclose(np.asarray(a), r, atol=1e-4 * magnitude(r), err_msg=name)
    # plain call (no state) under vmap and grad
    dout1 = randn(rng, (B, Hq, S, D), np.float32)
    gv = grads_of(jax.vmap(lambda q, k, v: akj.linear_attention(q, k, v, causal=causal)), (0, 1, 2), dout1)(q, k, v)
    for a, r in zip(gv, ref.linear_attention_backward(dout1, q, k, v, causal=causal)):
        np.testing.assert_allclose(np.asarray(a), r, atol=1e-4 * magnitude(r))


@pytest.mark.parametrize("causal", [True, False])
def test_performer(rng, causal):
    B, H, S, D = 2, 2, 19, 8
    q, k, v = (randn(rng, (B, H, S, D), np.float32) for _ in range(3))
    W = attnkit.random_features(16, D, seed=4)
    lens = np.asarray([S, 12])
    f = jax.jit(lambda *a: akj.performer_attention(*a, W, causal=causal, key_lengths=lens))
    out = f(q, k, v)
    want = ref.performer_attention(q, k, v, W, causal=causal, key_lengths=lens)
    np.testing.assert_allclose(np.asarray(out), want, atol=1e-5 * magnitude(want))
    dout = randn(rng, out.shape, np.float32)
    g = grads_of(f, (0, 1, 2), dout)(q, k, v)
    for a, r in zip(g, ref.performer_attention_backward(dout, q, k, v, W, causal=causal, key_lengths=lens)):
        np.testing.assert_allclose(np.asarray(a), r, atol=1e-4 * magnitude(r))
    out_v = jax.vmap(lambda q, k, v: akj.performer_attention(q, k, v, W, causal=causal, key_lengths=12))(q, k, v)
    np.testing.assert_allclose(np.asarray(out_v), ref.performer_attention(q, k, v, W, causal=causal, key_lengths=12),
                               atol=1e-5 * magnitude(want))


# ------------------------------------------------------------------------ errors
def test_bad_input(rng):
    q, k, v = (randn(rng, (1, 2, 5, 8), np.float32) for _ in range(3))
    raises(TypeError, "q", akj.attention, q.tolist(), k, v)
    raises(ValueError, "k", akj.attention, q, k[..., :4], v)
    raises(TypeError, "q", akj.attention, q.astype(np.int32), k, v)
    raises(TypeError, "v", akj.attention, q, k, v.astype(np.float16))
    raises(ValueError, "window", akj.attention, q, k, v, window=3)
    raises(TypeError, "causal", akj.attention, q, k, v, causal=1)
    raises(ValueError, "mask", akj.attention, q, k, v, mask=np.ones((3, 5), bool))
    raises(TypeError, "layout", akj.block_sparse_attention, q, k, v, "dense")
    raises(ValueError, "E", akj.linformer_attention, q, k, v, np.ones((3, 7), np.float32))
    raises(ValueError, "feature_map", akj.linear_attention, q, k, v, feature_map="tanh")
    raises(ValueError, "features", akj.performer_attention, q, k, v, np.ones((4, 5), np.float32))
    W = attnkit.random_features(4, 8)
    raises(ValueError, "features", jax.grad(lambda W: akj.performer_attention(q, k, v, W).sum()), W)
    raises(ValueError, "initial_state", akj.linear_attention, q, k, v, initial_state=np.ones(3))
    # run-time values: JAX's runtime error carrying attnkit's message
    with pytest.raises(Exception, match="key_lengths"):
        jax.jit(lambda lens: akj.attention(q, k, v, key_lengths=lens))(jnp.asarray([9])).block_until_ready()


def test_import_attnkit_does_not_import_jax():
    code = "import sys, attnkit; assert 'jax' not in sys.modules, 'attnkit imported jax'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_error_names_the_fix():
    """An attnkit built without the handlers (no jaxlib headers at build time) says so, and how to rebuild."""
    code = """
import attnkit._core as core
del core.jax_ffi_targets
try:
    import attnkit.jax
except ImportError as e:
    assert "built without its JAX" in str(e) and "jaxlib" in str(e), e
else:
    raise SystemExit("import attnkit.jax did not fail")
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def test_docs_examples_run():
    """The examples of docs/jax.md run as written."""
    import re

    text = (ROOT / "docs" / "jax.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    for i, code in enumerate(blocks):
        exec(compile(code, f"docs/jax.md python block {i}", "exec"), {})


def test_training_example():
    """examples/jax_train.py: a one-layer attention model learns to copy a sequence; its loss must fall."""
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import jax_train
    finally:
        sys.path.pop(0)
    losses = jax_train.train(steps=60, seed=0, log=False)
    assert losses[-1] < 0.1 * losses[0], losses[::10]
