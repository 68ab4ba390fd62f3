"""Edge inputs found by session 29's defect hunt (each test failed before its fix): extreme softcap and
scale values, huge head counts and tables, 0-d and non-sequence merge parts, a zero-width embedding,
and bad command-line numbers and files."""

from __future__ import annotations

import time

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
