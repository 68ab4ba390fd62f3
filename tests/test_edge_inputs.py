"""Edge inputs found by session 29's defect hunt (each test failed before its fix): extreme softcap and
scale values, huge head counts and tables, 0-d and non-sequence merge parts, a zero-width embedding,
and bad command-line numbers and files."""

from __future__ import annotations

import time

import ml_dtypes
import numpy as np
import pytest

import attnkit
from attnkit import cli
from attnkit import reference as ref

from conftest import raises


def qkv(dtype=np.float32, Sq=5, Sk=7, D=8, Dv=4):
    rng = np.random.default_rng(29)
    q = rng.standard_normal((1, 2, Sq, D)).astype(dtype)
    q[0, 0, 1] = 0  # a zero score row: 0 / c must stay 0
    return q, rng.standard_normal((1, 2, Sk, D)).astype(dtype), rng.standard_normal((1, 2, Sk, Dv)).astype(dtype)


# ------------------------------------------------------------------------------------------- softcap
@pytest.mark.parametrize("dtype,atol", [(np.float32, 2e-6), (np.float64, 1e-12)])
@pytest.mark.parametrize("cap", [1e4, 1e6, 1e12, 1e30])
def test_large_softcap_keeps_the_scores(dtype, atol, cap):
    """c tanh(s / c) at a large cap is s to rounding: the kernels' tanh lost small arguments to
    cancellation (c = 1e6 in float32: 5% of a score; c >= 1e10: every score 0, uniform weights)."""
    q, k, v = qkv(dtype)
    want, wlse = ref.attention(q, k, v, softcap=cap, return_lse=True)
    out, lse = attnkit.attention(q, k, v, softcap=cap, return_lse=True)
    np.testing.assert_allclose(out, want, atol=atol, rtol=0)
    np.testing.assert_allclose(lse, wlse, atol=atol, rtol=0)
    dec = attnkit.attention(q[:, :, -1:], k, v, softcap=cap)  # the decoding kernel
    np.testing.assert_allclose(dec, ref.attention(q[:, :, -1:], k, v, softcap=cap), atol=atol, rtol=0)
    w = attnkit.attention_weights(q, k, softcap=cap)
    np.testing.assert_allclose(w, ref.attention_weights(q, k, softcap=cap), atol=atol, rtol=0)
    dout = np.ones_like(out)
    grads = attnkit.attention_backward(dout, q, k, v, out, lse, softcap=cap)
    for g, gw in zip(grads, ref.attention_backward(dout, q, k, v, softcap=cap)):
        np.testing.assert_allclose(g, gw, atol=20 * atol, rtol=0)


@pytest.mark.parametrize("cap", [0.05, 0.5, 2.0, 30.0])
def test_softcap_tanh_across_the_switch(cap):
    """Scores on both sides of the tanh's polynomial / exponential switch (|s / c| = 0.4 in float32)."""
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((1, 1, 64, 16)).astype(np.float32) for _ in range(3))
    np.testing.assert_allclose(attnkit.attention(q, k, v, softcap=cap), ref.attention(q, k, v, softcap=cap),
                               atol=2e-6, rtol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("name,kw", [("softcap", {"softcap": 1e39}), ("softcap", {"softcap": 1e-39}),
                                     ("softcap", {"softcap": 1e-300}), ("scale", {"scale": 1e39}),
                                     ("scale", {"scale": -1e300})])
def test_values_beyond_float32_raise(dtype, name, kw):
    """float32 / float16 / bfloat16 inputs compute in float32: a scale or softcap (or 1 / softcap) it holds
    as inf gave NaN everywhere (or NaN for zero scores: 0 * inf); now a ValueError naming it."""
    q, k, v = qkv(dtype)
    raises(ValueError, name, attnkit.attention, q, k, v, **kw)
    raises(ValueError, name, attnkit.attention_weights, q, k, **kw)
    if name == "scale":
        layout = attnkit.BlockLayout.from_dense(np.ones((1, 1), bool), 8)
        raises(ValueError, name, attnkit.block_sparse_attention, q, k, v, layout, **kw)
        raises(ValueError, name, attnkit.lsh_attention, q, k, v, num_buckets=2, **kw)
        raises(ValueError, name, attnkit.linformer_attention, q, k, v, attnkit.linformer_projection(3, 7), **kw)
    if dtype == np.float32:  # the same values are fine in float64
        q, k, v = (x.astype(np.float64) for x in (q, k, v))
        np.testing.assert_allclose(attnkit.attention(q, k, v, **kw), ref.attention(q, k, v, **kw), atol=1e-12)


def test_tiny_softcap_in_range_is_finite():
    """The smallest caps float32 can invert: zero scores stay 0, the others saturate at +-c."""
    q, k, v = qkv(np.float32)
    for cap in (1e-37, 3e-39):
        out = attnkit.attention(q, k, v, softcap=cap)
        assert np.isfinite(out).all()
        np.testing.assert_allclose(out, ref.attention(q, k, v, softcap=cap), atol=2e-6)
    q, k, v = qkv(np.float64)
    np.testing.assert_allclose(attnkit.attention(q, k, v, softcap=1e-300), ref.attention(q, k, v, softcap=1e-300),
                               atol=1e-12)
    raises(ValueError, "softcap", attnkit.attention, q, k, v, softcap=5e-324)  # 1 / c is inf in float64


# --------------------------------------------------------------------------------- tables and sizes
def test_alibi_slopes_huge_head_counts_raise_at_once():
    """alibi_slopes built a Python list per head: 10**18 heads never returned, 10**9 took minutes."""
    t = time.perf_counter()
    for n in (10**18, 2**62):
        raises(ValueError, "alibi_slopes", attnkit.alibi_slopes, n)
    assert time.perf_counter() - t < 1
    for n in (1, 2, 3, 5, 8, 12, 100, 1000, 4097):
        got = attnkit.alibi_slopes(n)
        assert got.dtype == np.float32 and got.shape == (n,)
        np.testing.assert_allclose(got, ref.alibi_slopes(n), rtol=1e-6, atol=0)


@pytest.mark.parametrize("S,D", [(2**40, 2**40), (2**62, 2**62), (2**62, 1)])
def test_sinusoidal_positions_huge_tables_raise(S, D):
    """A table nothing can hold: ValueError naming it (was MemoryError, or NumPy's unnamed size error)."""
    raises(ValueError, "sinusoidal_positions", attnkit.sinusoidal_positions, S, D)


@pytest.mark.parametrize("S,D", [(0, 3), (1, 1), (37, 7), (300, 4096)])
def test_sinusoidal_positions_by_blocks_of_rows(S, D):
    """Rows are computed in blocks of 2^20 / D (bounded float64 scratch): each as the whole-table formula."""
    t = np.arange(S, dtype=np.float64)[:, None] / 10000.0 ** (np.arange(0, D, 2, dtype=np.float64) / D)
    want = np.empty((S, D))
    want[:, 0::2], want[:, 1::2] = np.sin(t), np.cos(t[:, : D // 2])
    np.testing.assert_array_equal(attnkit.sinusoidal_positions(S, D), want.astype(np.float32))
    if S * D <= 300:
        np.testing.assert_allclose(attnkit.sinusoidal_positions(S, D), ref.sinusoidal_positions(S, D), atol=1e-7)


# ------------------------------------------------------------------------------------ merge and MHA
def test_merge_attention_parts_that_are_not_sequences():
    """A 0-d array raised IndexError, None a TypeError that named nothing."""
    raises(ValueError, "outs", attnkit.merge_attention, np.float32(1), np.float32(0))
    raises(ValueError, "lses", attnkit.merge_attention, np.ones((1, 3, 2), np.float32), np.array(0, np.float32))
    raises(TypeError, "outs", attnkit.merge_attention, None, None)
    raises(TypeError, "lses", attnkit.merge_attention, [np.ones((3, 2), np.float32)], 7)


def test_multi_head_attention_zero_width_embedding():
    """E = 0 input features: the projections are their biases (a reshape(-1, 0) failed)."""
    x = np.ones((2, 6, 0), np.float32)
    rng = np.random.default_rng(1)
    p = attnkit.MHAParams(np.ones((16, 0), np.float32), np.ones((8, 0), np.float32), np.ones((8, 0), np.float32),
                          rng.standard_normal((5, 16)).astype(np.float32), b_q=rng.standard_normal(16).astype(np.float32),
                          b_v=rng.standard_normal(8).astype(np.float32), b_o=np.ones(5, np.float32))
    got = attnkit.multi_head_attention(x, x, x, p, num_heads=4, num_kv_heads=2, causal=True)
    np.testing.assert_allclose(got, ref.multi_head_attention(x, x, x, p, num_heads=4, num_kv_heads=2, causal=True),
                               atol=1e-5)


# ---------------------------------------------------------------------------------------- the CLI
@pytest.mark.parametrize("argv", [["bench", "--reps", "0"], ["bench", "--reps", "-1"], ["bench", "--sizes", "-5"],
                                  ["bench", "--sizes", "x"], ["compare", "--reps", "0", "a.npz"]])
def test_cli_rejects_bad_counts(argv, capsys):
    """--reps 0 died in statistics.median, --sizes -5 in NumPy; now argparse says which option."""
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    assert argv[1] in capsys.readouterr().err


def test_cli_compare_bad_inputs(tmp_path):
    """A missing file, one .npy, integer or 5-D arrays: a one-line error, not a traceback."""
    np.save(tmp_path / "f.npy", np.ones((2, 3), np.float32))
    np.save(tmp_path / "i.npy", np.ones((2, 3), np.int64))
    np.save(tmp_path / "r5.npy", np.ones((1, 1, 1, 2, 3), np.float32))
    cases = [([str(tmp_path / "missing.npz")], "missing.npz"), ([str(tmp_path / "f.npy")], "one array"),
             ([str(tmp_path / n) for n in ("i.npy", "f.npy", "f.npy")], "q must be a float array"),
             ([str(tmp_path / "r5.npy")] * 3, "rank 2, 3 or 4")]
    for argv, words in cases:
        with pytest.raises(SystemExit) as e:
            cli.main(["compare", "--no-progress", *argv])
        assert isinstance(e.value.code, str) and e.value.code.startswith("attnkit compare:") and words in e.value.code


# --------------------------------------------------------------- scalars as 0-d arrays (session 30)
def _float_calls():
    """(id, call(value) for one float argument, the argument's name, a good value) for every public function
    with a float argument (scale, softcap, eps, tau, base)."""
    rng = np.random.default_rng(30)
    q, k, v = (rng.standard_normal((1, 2, 8, 8)).astype(np.float32) for _ in range(3))
    out, lse = attnkit.attention(q, k, v, return_lse=True)
    lay = attnkit.BlockLayout.from_dense(np.ones((2, 2), bool), 4)
    W, E = attnkit.random_features(16, 8), attnkit.linformer_projection(4, 8)
    lam = rng.random((1, 2, 8, 3)).astype(np.float32)
    x = rng.standard_normal((1, 8, 16)).astype(np.float32)
    P = attnkit.MHAParams(*(rng.standard_normal((16, 16)).astype(np.float32) / 4 for _ in range(4)))
    mha = lambda **kw: attnkit.multi_head_attention(x, x, x, P, num_heads=2, **kw)
    A = attnkit
    return [
        ("attention.scale", lambda s: A.attention(q, k, v, scale=s), "scale", 0.5),
        ("attention.softcap", lambda s: A.attention(q, k, v, softcap=s), "softcap", 2.0),
        ("attention_weights.scale", lambda s: A.attention_weights(q, k, scale=s), "scale", 0.5),
        ("attention_weights.softcap", lambda s: A.attention_weights(q, k, softcap=s), "softcap", 2.0),
        ("attention_backward.scale", lambda s: A.attention_backward(out, q, k, v, out, lse, scale=s), "scale", 0.5),
        ("attention_backward.softcap", lambda s: A.attention_backward(out, q, k, v, out, lse, softcap=s), "softcap", 2.0),
        ("block_sparse_attention.scale", lambda s: A.block_sparse_attention(q, k, v, lay, scale=s), "scale", 0.5),
        ("block_sparse_attention_backward.scale",
         lambda s: A.block_sparse_attention_backward(out, q, k, v, out, lse, lay, scale=s), "scale", 0.5),
        ("lsh_attention.scale", lambda s: A.lsh_attention(q, k, v, num_buckets=2, scale=s), "scale", 0.5),
        ("linear_attention.eps", lambda s: A.linear_attention(q, k, v, eps=s), "eps", 0.5),
        ("linear_attention_backward.eps", lambda s: A.linear_attention_backward(out, q, k, v, eps=s), "eps", 0.5),
        ("performer_attention.scale", lambda s: A.performer_attention(q, k, v, W, scale=s), "scale", 0.5),
        ("performer_attention.eps", lambda s: A.performer_attention(q, k, v, W, eps=s), "eps", 0.5),
        ("performer_attention_backward.scale", lambda s: A.performer_attention_backward(out, q, k, v, W, scale=s),
         "scale", 0.5),
        ("performer_attention_backward.eps", lambda s: A.performer_attention_backward(out, q, k, v, W, eps=s), "eps", 0.5),
        ("linformer_attention.scale", lambda s: A.linformer_attention(q, k, v, E, scale=s), "scale", 0.5),
        ("linformer_attention_backward.scale",
         lambda s: A.linformer_attention_backward(out[..., :0, :], q[..., :0, :], k, v, out[..., :0, :],
                                                  lse[..., :0], E, scale=s), "scale", 0.5),
        ("dynamic_linear_attention.tau", lambda s: A.dynamic_linear_attention(q, k, v, lam, capacity=3, tau=s)[0],
         "tau", 0.5),
        ("rope.base", lambda s: A.rope(q, base=s), "base", 64.0),
        ("sinusoidal_positions.base", lambda s: A.sinusoidal_positions(8, 6, base=s), "base", 64.0),
        ("multi_head_attention.scale", lambda s: mha(scale=s), "scale", 0.5),
        ("multi_head_attention.softcap", lambda s: mha(softcap=s), "softcap", 2.0),
        ("multi_head_attention.eps", lambda s: mha(mechanism="linear", eps=s), "eps", 0.5),
        ("multi_head_attention.tau", lambda s: mha(mechanism="dla", causal=True, capacity=2, tau=s), "tau", 0.5),
        ("multi_head_attention.rope_base", lambda s: mha(rope={"base": s}), "base", 64.0),
    ]


FLOAT_CALLS = _float_calls()


@pytest.mark.parametrize("case", FLOAT_CALLS, ids=[c[0] for c in FLOAT_CALLS])
def test_float_arguments_take_numpy_scalars_and_0d_arrays(case):
    """scale / softcap (and eps, tau, base) refused 0-d NumPy arrays (and bfloat16 scalars) that window and
    every integer argument took: each is now the Python float it holds, in every function."""
    _, call, name, good = case
    want = call(good)
    values = [np.array(good), np.array(good, np.float32), np.float32(good), np.float16(good),
              np.array(good, np.float16), ml_dtypes.bfloat16(good), np.array(good, ml_dtypes.bfloat16),
              np.array([good])[0]]
    if float(good).is_integer():  # integers are real numbers too, 0-d integer arrays included
        values += [np.int32(good), np.array(int(good), np.uint8)]
    for value in values:
        got = call(value)
        for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
            np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("case", FLOAT_CALLS, ids=[c[0] for c in FLOAT_CALLS])
def test_float_arguments_still_refuse_non_numbers(case):
    """What is not one real number stays a TypeError naming the argument: strings, arrays of two elements,
    one-element 1-d arrays (as for the integer arguments), bools, complex numbers, and None (scale and
    softcap take None: their defaults)."""
    _, call, name, good = case
    bad = [str(good), np.array([good, good]), np.array([good]), np.array(True), np.bool_(True), True,
           np.array(good + 1j), complex(good)]
    if name not in ("scale", "softcap"):
        bad.append(None)
    for value in bad:
        raises(TypeError, name, call, value)


def test_jax_operations_take_0d_scalars():
    """attnkit.jax shares the NumPy functions' argument checks: a 0-d NumPy or JAX array is its value there too
    (a static argument, compiled into the call)."""
    akj = pytest.importorskip("attnkit.jax")
    import jax.numpy as jnp

    q, k, v = (jnp.asarray(x) for x in qkv(np.float32))
    want = akj.attention(q, k, v, scale=0.5, softcap=2.0)
    np.testing.assert_array_equal(akj.attention(q, k, v, scale=np.array(0.5), softcap=jnp.array(2.0)), want)
    np.testing.assert_array_equal(akj.linear_attention(q, k, v, causal=False, eps=np.float32(0.5)),
                                  akj.linear_attention(q, k, v, causal=False, eps=0.5))
    raises(TypeError, "scale", akj.attention, q, k, v, scale=jnp.ones(2))


def test_0d_numbers_of_other_frameworks_are_plain_values():
    """A PyTorch / JAX 0-d array given for a number (scale=torch.tensor(0.5)) is that number: the results follow
    the array arguments, in every function (attention answered NumPy arrays for NumPy q and a torch scale by its
    direct torch path, the other functions torch tensors: the scale decided their framework)."""
    torch = pytest.importorskip("torch")
    jnp = pytest.importorskip("jax.numpy")
    q = np.random.default_rng(1).standard_normal((1, 2, 6, 8)).astype(np.float32)
    E, W = attnkit.linformer_projection(3, 6), attnkit.random_features(8, 8)
    P = attnkit.MHAParams(*(np.eye(8, dtype=np.float32),) * 4)
    calls = [lambda q, s: attnkit.attention(q, q, q, scale=s, softcap=s * 4, causal=s > 0),
             lambda q, s: attnkit.linformer_attention(q, q, q, E, scale=s),
             lambda q, s: attnkit.performer_attention(q, q, q, W, scale=s, eps=s),
             lambda q, s: attnkit.lsh_attention(q, q, q, num_buckets=2, scale=s),
             lambda q, s: attnkit.rope(q, base=s * 200),
             lambda q, s: attnkit.multi_head_attention(q[0], q[0], q[0], P, num_heads=2, scale=s, rope={"base": s * 200}),
             lambda q, s: attnkit.dynamic_linear_attention(q, q, q, np.ones((1, 2, 6, 2), np.float32), capacity=2,
                                                           tau=s)[0]]
    for call in calls:
        want = call(q, 0.5)
        for arrays, kind in ((q, np.ndarray), (torch.from_numpy(q), torch.Tensor), (jnp.asarray(q), type(jnp.ones(1)))):
            for s in (torch.tensor(0.5), jnp.array(0.5), np.array(0.5)):
                got = call(arrays, s)
                assert isinstance(got, kind), (type(got), kind)
                np.testing.assert_array_equal(np.asarray(got), want)


def test_block_size_pairs_and_global_tokens():
    """block_size / num_blocks took a tuple or list but not a 1-d array of two ints (window takes any pair);
    a global_tokens that is not a sequence (5, a 0-d array, None) was a TypeError naming nothing."""
    blocks = np.ones((2, 3), bool)
    want = attnkit.BlockLayout.from_dense(blocks, (4, 2))
    for bs in (np.array([4, 2]), [np.int64(4), np.array(2)], (4, 2)):
        got = attnkit.BlockLayout.from_dense(blocks, bs)
        assert got.block_size == (4, 2) and np.array_equal(got.to_dense(), want.to_dense())
    lay = attnkit.BlockLayout(want.row_ptr, want.col_idx, block_size=np.array([4, 2]), num_heads=np.array(1),
                              num_blocks=np.array([2, 3]))
    assert lay.block_size == (4, 2) and lay.num_blocks == (2, 3)
    raises(ValueError, "block_size", attnkit.BlockLayout.from_dense, blocks, np.array([4, 2, 1]))
    raises(TypeError, "block_size[0]", attnkit.BlockLayout.from_dense, blocks, np.array([4.0, 2.0]))
    raises(TypeError, "block_size", attnkit.BlockLayout.from_dense, blocks, np.ones((2, 2), int))
    for bad in (5, np.array(3), None):
        raises(TypeError, "global_tokens", attnkit.layouts.longformer, 16, 4, 1, global_tokens=bad)
    raises(TypeError, "global_tokens[1]", attnkit.layouts.longformer, 16, 4, 1, global_tokens=[0, 1.5])
    a = attnkit.layouts.longformer(16, 4, 1, global_tokens=np.array([0, 9]))
    assert np.array_equal(a.to_dense(), attnkit.layouts.longformer(16, 4, 1, global_tokens=(0, 9)).to_dense())


def test_flags_take_0d_bool_arrays():
    """causal=np.array(True) was a TypeError while np.bool_(True) (and window=np.array(2)) worked."""
    q, k, v = qkv(np.float32, Sq=7)
    want, wlse = attnkit.attention(q, k, v, causal=True, return_lse=True)
    out, lse = attnkit.attention(q, k, v, causal=np.array(True), return_lse=np.array(True))
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(lse, wlse)
    np.testing.assert_array_equal(attnkit.linear_attention(q, k, v, causal=np.array(False), normalize=np.array(True)),
                                  attnkit.linear_attention(q, k, v, causal=False))
    for bad in (np.array([True]), np.array(1), np.array(1.0), "True"):
        raises(TypeError, "causal", attnkit.attention, q, k, v, causal=bad)


def test_set_num_threads_clamps_every_huge_int():
    """2**62 was clamped but 2**63 (past int64) raised: any huge positive integer now means the cap."""
    before = attnkit.get_num_threads()
    try:
        attnkit.set_num_threads(2**31 - 1)
        cap = attnkit.get_num_threads()
        for n in (2**31, 2**62, 2**63, 2**64, 10**100, np.uint64(2**64 - 1), np.array(2**63, np.uint64)):
            attnkit.set_num_threads(1)
            attnkit.set_num_threads(n)
            assert attnkit.get_num_threads() == cap
        for n in (0, -1, -2**63, -2**63 - 1, -10**100):
            raises(ValueError, "n", attnkit.set_num_threads, n)
        for n in (1.5, 2.0, True, "4", None, np.array([2])):
            raises(TypeError, "n", attnkit.set_num_threads, n)
    finally:
        attnkit.set_num_threads(before)


# ------------------------------------------------------------------------------- byte order (session 30)
def _native_order_error(fn, name, *a, **kw):
    e = raises(TypeError, name, fn, *a, **kw)
    assert "native byte order" in str(e) and "unsupported" not in str(e), str(e)


def test_big_endian_arrays_say_byte_order():
    """'>f4' arrays got "unsupported dtype >f4": the message now says the byte order and how to convert,
    naming the argument, for every array argument (nothing is converted silently)."""
    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal((1, 2, 8, 8)).astype(np.float32) for _ in range(3))
    out, lse = attnkit.attention(q, k, v, return_lse=True)
    be = lambda a: a.astype(a.dtype.newbyteorder(">" if np.little_endian else "<"))
    A = attnkit
    lay = A.BlockLayout.from_dense(np.ones((2, 2), bool), 4)
    W, E = A.random_features(16, 8), A.linformer_projection(4, 8)
    lam = rng.random((1, 2, 8, 3)).astype(np.float32)
    _, state = A.linear_attention(q, k, v, return_state=True)
    for name in ("q", "k", "v", "bias", "alibi_slopes"):
        args = dict(q=q, k=k, v=v, bias=np.zeros((8, 8), np.float32), alibi_slopes=np.ones(2, np.float32))
        args[name] = be(args[name])
        _native_order_error(A.attention, name, args.pop("q"), args.pop("k"), args.pop("v"), **args)
    _native_order_error(A.attention, "q", be(q.astype(np.float64)), k, v)
    _native_order_error(A.attention, "q", be(q.astype(np.float16)), k, v)
    _native_order_error(A.attention_weights, "k", q, be(k))
    _native_order_error(A.attention_backward, "lse", out, q, k, v, out, be(lse))
    _native_order_error(A.merge_attention, "outs[0]", [be(out)], [lse])
    _native_order_error(A.block_sparse_attention, "v", q, k, be(v), lay)
    _native_order_error(A.lsh_buckets, "x", be(q), num_buckets=2)
    _native_order_error(A.lsh_attention, "q", be(q), k, v, num_buckets=2)
    _native_order_error(A.linear_attention, "initial_state[0]", q, k, v, initial_state=(be(state[0]), state[1]))
    _native_order_error(A.performer_attention, "features", q, k, v, be(W))
    _native_order_error(A.linformer_attention, "E", q, k, v, be(E))
    _native_order_error(A.dynamic_linear_attention, "lam", q, k, v, be(lam), capacity=3)
    _native_order_error(A.rope, "x", be(q))
    x = rng.standard_normal((1, 8, 16)).astype(np.float32)
    w = rng.standard_normal((16, 16)).astype(np.float32)
    _native_order_error(A.MHAParams, "w_q", be(w), w, w, w)
    _native_order_error(A.multi_head_attention, "query", be(x), x, x, A.MHAParams(w, w, w, w), num_heads=2)
    for f, args in ((A.random_features, (4, 8)), (A.sinusoidal_positions, (4, 8)), (A.linformer_projection, (4, 8))):
        _native_order_error(f, "dtype", *args, dtype=np.dtype(np.float32).newbyteorder(">" if np.little_endian else "<"))
        # a swapped integer dtype is no float in either byte order: no "use int32" advice (session 31)
        e = raises(TypeError, "dtype", f, *args, dtype=np.dtype(np.int32).newbyteorder(">" if np.little_endian else "<"))
        assert "native byte order" not in str(e) and "int32" not in str(e), str(e)


# ---------------------------------------------------------------------- errors name the argument (s30)
def test_absurd_sizes_name_the_argument():
    """attention_weights' output nothing can hold was a ValueError naming "out" (it is "weights"), and a
    sequence past the 2^31 - 2 limit named no argument ("sequence lengths above ... are not supported")."""
    x = np.broadcast_to(np.float32(1), (1, 2**20, 2**20, 1))
    raises(ValueError, "weights", attnkit.attention_weights, x, x)
    small = np.zeros((1, 1, 4, 1), np.float32)
    long = np.broadcast_to(np.float32(1), (1, 1, 2**31 - 1, 1))
    for fn in (attnkit.attention_weights, lambda q, k: attnkit.attention(q, k, k)):
        raises(ValueError, "q", fn, long, small)
        raises(ValueError, "k", fn, small, long)


# ------------------------------------------------------------------ a scale float32 holds as 0 (s31)
def test_scale_that_float32_rounds_to_zero_raises():
    """A nonzero scale below float32's range (|scale| <= 2^-150) was held as 0 by the float32 kernels: with an
    infinite key, 0 * inf gave a NaN row where the oracle's -inf score weighs 0 (found by tests/fuzz, seed
    3131). It is now a ValueError naming scale on float32 accumulation, like |scale| > 3.4e38; float64 inputs
    and Performer's scale (used as sqrt(scale)) keep such scales."""
    rng = np.random.default_rng(7)
    q = np.full((1, 1, 2, 4), -1.0, np.float32)
    k, v = (rng.random((1, 1, 4, 4)).astype(np.float32) for _ in range(2))
    k[0, 0, 0, 0] = np.inf  # q . k = -inf: weighs 0 at any positive scale
    lay = attnkit.BlockLayout.from_dense(np.ones((1, 1), bool), 4)
    E = attnkit.linformer_projection(2, 4)
    _, lse = attnkit.attention(q, k, v, return_lse=True)
    calls = {
        "attention": lambda x, s: attnkit.attention(*x, scale=s),
        "attention_weights": lambda x, s: attnkit.attention_weights(x[0], x[1], scale=s),
        "attention_backward": lambda x, s: attnkit.attention_backward(x[0], *x, x[0], lse, scale=s),
        "block_sparse_attention": lambda x, s: attnkit.block_sparse_attention(*x, lay, scale=s),
        "lsh_attention": lambda x, s: attnkit.lsh_attention(*x, num_buckets=2, scale=s),
        "linformer_attention": lambda x, s: attnkit.linformer_attention(*x, E, scale=s),
    }
    for dtype in (np.float32, np.float16, ml_dtypes.bfloat16):
        x = tuple(a.astype(dtype) for a in (q, k, v))
        for name, call in calls.items():
            for s in (1e-46, -1e-46, 2.0**-150, 1e-186):
                e = raises(ValueError, "scale", call, x, s)
                assert "float32" in str(e), (name, str(e))
            call(x, 2.0**-149)  # float32's smallest subnormal: held, accepted
    r = attnkit.attention(q, k, v, scale=2.0**-149)
    np.testing.assert_allclose(r, ref.attention(q, k, v, scale=2.0**-149), rtol=1e-6)
    x64 = tuple(a.astype(np.float64) for a in (q, k, v))
    np.testing.assert_allclose(attnkit.attention(*x64, scale=1e-186), ref.attention(*x64, scale=1e-186), rtol=1e-12)
    assert np.isfinite(attnkit.attention(*x64, scale=1e-186)).all()
    W = attnkit.random_features(8, 4)
    kf = np.where(np.isfinite(k), k, 1.0).astype(np.float32)
    np.testing.assert_allclose(attnkit.performer_attention(q, kf, v, W, scale=1e-50),
                               ref.performer_attention(q, kf, v, W, scale=1e-50), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------- open (not fixed)
def test_attention_backward_reads_broadcast_out_and_lse():
    """Inputs may have any strides, zero included; attention_backward's out and lse are inputs."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 2, 4, 3)).astype(np.float32) for _ in range(3))
    v[:] = v[:, :, :1]  # one value for every key: every query's out is that value
    out, lse = attnkit.attention(q, k, v, return_lse=True)
    dout = np.ones_like(out)
    want = attnkit.attention_backward(dout, q, k, v, out, lse)
    got = attnkit.attention_backward(dout, q, k, v, np.broadcast_to(out[:, :, :1], out.shape), lse)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-5)
