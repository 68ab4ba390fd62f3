"""Regression tests of the hardening issue: each defect class found by the adversarial run, with its
example and a test of the class (crashes, integer overflow, NaN / Inf propagation, runaway cost, bad
input accepted silently, precision at extreme lengths)."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

import attnkit
from attnkit import layouts
from attnkit import reference as ref

from conftest import raises, to_f64


def nan_pattern_equal(out, want):
    """Same non-finite entries (NaN / inf as IEEE gives them), and close elsewhere."""
    out, want = to_f64(out), to_f64(want)
    assert out.shape == want.shape
    assert np.array_equal(np.isfinite(out), np.isfinite(want)), (np.argwhere(np.isfinite(out) != np.isfinite(want))[:5])
    fin = np.isfinite(want)
    if fin.any():
        np.testing.assert_allclose(out[fin], want[fin], rtol=2e-4, atol=2e-5)


def qkv(rng, B=1, H=2, S=37, D=8, dtype=np.float32, Sk=None):
    Sk = S if Sk is None else Sk
    return (rng.standard_normal((B, H, S, D)).astype(dtype), rng.standard_normal((B, H, Sk, D)).astype(dtype),
            rng.standard_normal((B, H, Sk, D)).astype(dtype))


# ------------------------------------------------------------------------------------------- 1. crashes
def test_lsh_buckets_nan_row_no_crash():
    x = np.array([[np.nan, 0.0]], np.float32)
    out = attnkit.lsh_buckets(x, num_buckets=2)
    assert out.tolist() == [[0]]
    np.testing.assert_array_equal(out, ref.lsh_buckets(x, num_buckets=2))


@pytest.mark.parametrize("row", [[3e38, 3e38, -3e38, 1.0], [np.inf, 0, 0, 0], [np.inf, -np.inf, 1, 2],
                                 [1e30, 1e30, 1e30, 1e30], [np.nan] * 4, [0, 0, 0, 0]])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lsh_buckets_extreme_rows(row, dtype):
    """Overflowing float32 projections, infinities, NaN, zeros: the float64 decision, never a crash."""
    rng = np.random.default_rng(0)
    x = np.concatenate([np.array([row], np.float64), rng.standard_normal((5, 4))]).astype(dtype)
    for nb in (2, 8, 64):
        got = attnkit.lsh_buckets(x, num_buckets=nb, num_hashes=2, seed=3)
        np.testing.assert_array_equal(got, ref.lsh_buckets(x, num_buckets=nb, num_hashes=2, seed=3))


def test_block_layout_overflowing_sizes():
    with pytest.raises(ValueError, match="num_heads"):
        attnkit.BlockLayout(np.zeros(1, np.int64), np.zeros(0, np.int32), block_size=1, num_heads=2**62,
                            num_blocks=(2**62, 1))
    assert attnkit.BlockLayout.from_dense(np.zeros((1, 1), bool), 2**63 - 1).num_blocks == (1, 1)
    with pytest.raises(ValueError, match="num_heads"):
        attnkit.layouts.sliding_window(2**62, 1, 1, num_heads=2**40)


def test_thread_cap():
    before = attnkit.get_num_threads()
    try:
        attnkit.set_num_threads(100000)
        assert attnkit.get_num_threads() <= 1024
        rng = np.random.default_rng(1)
        q, k, v = qkv(rng, B=3, H=4, S=65)
        out = attnkit.attention(q, k, v, causal=True)
        np.testing.assert_allclose(out, ref.attention(q, k, v, causal=True), atol=1e-5)
        attnkit.linear_attention(q, k, v)
        attnkit.lsh_attention(q, k, v, num_buckets=4)
        attnkit.random_features(70, 8)
        attnkit.set_num_threads(2**40)  # clamped, not an overflow
    finally:
        attnkit.set_num_threads(before)


# --------------------------------------------------------------------------------- 2. integer overflow
@pytest.mark.parametrize("window", [(None, 2**63 - 1), (2**63 - 1, 2**63 - 1), (2**63 - 1, 0), (2**64, None),
                                    (10**30, 3)])
def test_huge_window_is_unbounded(rng, window):
    q, k, v = qkv(rng, S=20, Sk=33)
    want = ref.attention(q, k, v, window=tuple(None if w is not None and w > 2**40 else w for w in window))
    np.testing.assert_allclose(attnkit.attention(q, k, v, window=window), want, atol=1e-5)


def test_huge_block_size_layout(rng):
    layout = layouts.sliding_window(10, 2**63 - 1, 1)
    assert layout.num_blocks == (1, 1) and layout.nnz == 1
    q, k, v = qkv(rng, S=10)
    out = attnkit.block_sparse_attention(q, k, v, layout, causal=True)
    np.testing.assert_allclose(out, ref.attention(q, k, v, causal=True), atol=1e-5)
    big = attnkit.BlockLayout.from_dense(np.ones((1, 1), bool), (2**63 - 1, 2**62))
    np.testing.assert_allclose(attnkit.block_sparse_attention(q, k, v, big), ref.attention(q, k, v), atol=1e-5)


@pytest.mark.parametrize("make", [
    lambda: layouts.longformer(100, 7, 2**62, global_tokens=[3], dilation=2**62),
    lambda: layouts.longformer(100, 7, 3, dilation=2**63 - 1),
    lambda: layouts.bigbird(100, 7, seed=1, window_blocks=2**63 - 1, global_blocks=2**63 - 1, random_blocks=2**63 - 1),
    lambda: layouts.fixed(100, 7, local_blocks=2**63 - 1, global_blocks=2**63 - 2),
    lambda: layouts.sliding_window(100, 7, 2**63 - 1, causal=True),
])
def test_layout_constructors_huge_arguments_match_the_rule(make):
    """Huge windows, dilations and counts mean "everything in range": the rule, evaluated in Python."""
    L = make()
    d = L.to_dense()[0]
    assert d.shape == (15, 15)
    assert d.dtype == bool


def test_layout_rules_with_huge_arguments():
    n = 15
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    assert (layouts.sliding_window(100, 7, 2**63 - 1).to_dense()[0] == np.ones((n, n), bool)).all()
    assert (layouts.sliding_window(100, 7, 2**63 - 1, causal=True).to_dense()[0] == (j <= i)).all()
    assert (layouts.longformer(100, 7, 3, dilation=2**63 - 1).to_dense()[0] == (i == j)).all()
    assert (layouts.fixed(100, 7, local_blocks=2**63 - 1, global_blocks=0, causal=False).to_dense()[0]).all()
    bb = layouts.bigbird(100, 7, seed=1, window_blocks=0, global_blocks=0, random_blocks=2**63 - 1)
    assert bb.to_dense()[0].all()


def test_bigbird_random_blocks_unchanged():
    """The sparse Fisher-Yates draws exactly the blocks the listed-candidates version drew (a layout
    pinned from before the change)."""
    L = layouts.bigbird(64 * 12, 64, seed=7, window_blocks=1, global_blocks=1, random_blocks=3)
    rows = [list(L.col_idx[L.row_ptr[r]:L.row_ptr[r + 1]]) for r in range(12)]
    assert rows[0] == list(range(12))
    for i, r in enumerate(rows[1:], 1):
        band = {j for j in (i - 1, i, i + 1) if 0 <= j < 12} | {0}
        assert band <= set(r) and len(r) == len(band) + 3, (i, r)


# ------------------------------------------------------------------------------------------- 3. NaN / Inf
EXACT_CASES = {
    "q_row": lambda q, k, v: q.__setitem__((0, 1, 5, 2), np.nan),
    "k_row": lambda q, k, v: k.__setitem__((0, 0, 9, 0), np.nan),
    "v_entry": lambda q, k, v: v.__setitem__((0, 1, 20, 3), np.nan),
    "q_inf": lambda q, k, v: q.__setitem__((0, 0, 3, 1), np.inf),
    "k_neg_inf": lambda q, k, v: k.__setitem__((0, 1, 30, 4), -np.inf),
    "v_inf": lambda q, k, v: v.__setitem__((0, 0, 11, 0), np.inf),
}


@pytest.mark.parametrize("case", sorted(EXACT_CASES))
@pytest.mark.parametrize("opts", [{}, {"causal": True}, {"window": (5, 2)}, {"key_lengths": [25]}])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_attention_nan_propagation(rng, case, opts, dtype):
    q, k, v = qkv(rng, S=37, D=8, dtype=dtype)
    EXACT_CASES[case](q, k, v)
    out, lse = attnkit.attention(q, k, v, return_lse=True, **opts)
    want, wlse = ref.attention(q, k, v, return_lse=True, **opts)
    nan_pattern_equal(out, want)
    nan_pattern_equal(lse, wlse)
    w = attnkit.attention_weights(q, k, **opts)
    nan_pattern_equal(w, ref.attention_weights(q, k, **opts))


def test_attention_nan_query_row_is_not_a_masked_row():
    q = np.zeros((4, 2), np.float32)
    q[1, 0] = np.nan
    k = np.ones((3, 2), np.float32)
    out, lse = attnkit.attention(q, k, k, return_lse=True)
    assert np.isnan(out[1]).all() and np.isnan(lse[1])
    assert np.isfinite(out[[0, 2, 3]]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_masked_non_finite_entries_are_never_read(rng, dtype):
    """NaN / inf in keys and values that the mask, key_lengths, causal (inside a tile), a -inf bias or
    a window forbid leave every output finite."""
    B, H, S, D = 2, 2, 70, 16
    q, k, v = qkv(rng, B=B, H=H, S=S, D=D, dtype=dtype)
    mask = np.ones((B, 1, S, S), bool)
    mask[:, :, :, 40] = False
    bias = np.zeros((S, S), dtype)
    bias[:, 41] = -np.inf
    for j in (40, 41):
        k[:, :, j] = np.nan
        v[:, :, j] = np.inf
    k[:, :, 60:] = np.nan
    v[:, :, 60:] = np.nan
    out = attnkit.attention(q, k, v, mask=mask, bias=bias, key_lengths=[60, 60])
    assert np.isfinite(out).all()
    nan_pattern_equal(out, ref.attention(q, k, v, mask=mask, bias=bias, key_lengths=[60, 60]))
    # causal: a NaN value at key 50 affects rows >= 50 only, also inside one tile
    q, k, v = qkv(rng, B=1, H=1, S=S, D=D, dtype=dtype)
    v[0, 0, 50, 3] = np.nan
    out = attnkit.attention(q, k, v, causal=True)
    assert np.isfinite(out[0, 0, :50]).all() and np.isnan(out[0, 0, 50:, 3]).all()
    nan_pattern_equal(out, ref.attention(q, k, v, causal=True))
    w = attnkit.attention_weights(q, k, causal=True)
    assert np.isfinite(w).all()


def test_block_sparse_and_lsh_nan(rng):
    q, k, v = qkv(rng, B=1, H=2, S=64, D=8)
    q[0, 0, 3, 0] = np.nan
    k[0, 1, 40, 2] = np.nan
    v[0, 0, 10, 1] = np.nan
    layout = layouts.sliding_window(64, 16, 1)
    out = attnkit.block_sparse_attention(q, k, v, layout, causal=True)
    nan_pattern_equal(out, ref.block_sparse_attention(q, k, v, layout, causal=True))
    out, lse = attnkit.lsh_attention(q, k, v, num_buckets=4, num_hashes=2, seed=1, return_lse=True)
    want, wlse = ref.lsh_attention(q, k, v, num_buckets=4, num_hashes=2, seed=1, return_lse=True)
    nan_pattern_equal(out, want)
    nan_pattern_equal(lse, wlse)


@pytest.mark.parametrize("fmap", ["elu1", "relu", "identity"])
@pytest.mark.parametrize("causal", [False, True])
def test_linear_attention_nan(rng, fmap, causal):
    q, k, v = qkv(rng, B=1, H=2, S=70, D=8)
    q[0, 0, 5, 1] = np.nan
    k[0, 1, 40, 2] = np.nan
    v[0, 0, 50, 3] = np.inf
    kw = dict(feature_map=fmap, causal=causal, key_lengths=[65])
    out = attnkit.linear_attention(q, k, v, **kw)
    nan_pattern_equal(out, ref.linear_attention(q, k, v, **kw))
    if causal:
        assert np.isfinite(out[0, 1, :40]).all()  # the NaN key never reaches an earlier row


@pytest.mark.parametrize("kernel", ["softmax", "relu"])
@pytest.mark.parametrize("causal", [False, True])
def test_performer_nan(rng, kernel, causal):
    q, k, v = qkv(rng, B=1, H=2, S=70, D=8)
    q[0, 0, 5, 1] = np.nan
    k[0, 1, 40, 2] = np.nan
    v[0, 0, 50, 3] = np.nan
    W = attnkit.random_features(16, 8, seed=1)
    out = attnkit.performer_attention(q, k, v, W, kernel=kernel, causal=causal)
    nan_pattern_equal(out, ref.performer_attention(q, k, v, W, kernel=kernel, causal=causal))


def test_linformer_nan(rng):
    q, k, v = qkv(rng, B=1, H=2, S=40, D=8)
    E = attnkit.linformer_projection(8, 40, seed=1)
    q[0, 0, 5, 1] = np.nan
    out = attnkit.linformer_attention(q, k, v, E, key_lengths=[30])
    nan_pattern_equal(out, ref.linformer_attention(q, k, v, E, key_lengths=[30]))
    k[0, 1, 35, 0] = np.nan  # padded: never read
    v[0, 1, 36, 0] = np.inf
    out2 = attnkit.linformer_attention(q, k, v, E, key_lengths=[30])
    np.testing.assert_array_equal(np.isfinite(out), np.isfinite(out2))
    k[0, 1, 3, 0] = np.nan
    out3 = attnkit.linformer_attention(q, k, v, E, key_lengths=[30])
    nan_pattern_equal(out3, ref.linformer_attention(q, k, v, E, key_lengths=[30]))
    assert np.isnan(out3[0, 1]).all()


def test_dla_nan(rng):
    q, k, v = qkv(rng, B=1, H=2, S=20, D=4)
    lam = np.full((1, 2, 20, 3), 0.3, np.float32)
    k[0, 0, 7, 1] = np.nan
    y, _ = attnkit.dynamic_linear_attention(q, k, v, lam, capacity=3)
    yr, _ = ref.dynamic_linear_attention(q, k, v, lam, capacity=3)
    assert np.isfinite(y[0, 0, :7]).all()
    assert np.array_equal(np.isfinite(y), np.isfinite(yr))
    assert np.isfinite(y[0, 1]).all()


# ------------------------------------------------------------------------------------ 4. runaway cost
@pytest.mark.parametrize("make", [
    lambda: layouts.sliding_window(64, 64, 10**15),
    lambda: layouts.sliding_window(2**31, 2**21, 10**18, num_heads=2),
    lambda: layouts.bigbird(2**31 - 2, 2**19, seed=0, random_blocks=10**12),
    lambda: layouts.bigbird(2**31 - 2, 2**14, seed=0, random_blocks=3),
    lambda: layouts.fixed(2**31 - 2, 2**14, local_blocks=4, global_blocks=0),
])
def test_constructors_cost_follows_result(make):
    t = time.perf_counter()
    make()
    assert time.perf_counter() - t < 5


@pytest.mark.parametrize("make", [
    lambda: layouts.sliding_window(10**15, 64, 1),
    lambda: layouts.sliding_window(2**20, 1, 1, num_heads=2**20),
    lambda: layouts.longformer(10**12, 1, 1),
    lambda: layouts.bigbird(2**31, 1, seed=0),
    lambda: layouts.fixed(2**31, 1),
    lambda: layouts.sliding_window(2**30, 1, 2**30),
])
def test_absurd_layout_sizes_raise_before_allocating(make):
    t = time.perf_counter()
    with pytest.raises(ValueError, match="seq_len"):
        make()
    assert time.perf_counter() - t < 1


def test_random_features_cost_follows_the_rows():
    t = time.perf_counter()
    w = attnkit.random_features(1, 2000, seed=3)
    assert time.perf_counter() - t < 5
    assert w.shape == (1, 2000)


@pytest.mark.parametrize("m", [1, 3, 63])
def test_random_features_thin_qr_is_bitwise_the_full_one(m):
    full = attnkit.random_features(64 + m, 64, seed=5, dtype=np.float64)
    np.testing.assert_array_equal(attnkit.random_features(m, 64, seed=5, dtype=np.float64), full[:m])
    np.testing.assert_allclose(full, ref.random_features(64 + m, 64, seed=5), atol=1e-12)


# -------------------------------------------------------------------------------------- 5. bad input
def test_block_layout_index_arrays_checked():
    with pytest.raises(TypeError, match="row_ptr"):
        attnkit.BlockLayout(np.array([0.0, 1.5]), np.array([0]), block_size=4, num_heads=1, num_blocks=(1, 1))
    with pytest.raises(TypeError, match="col_idx"):
        attnkit.BlockLayout(np.array([0, 1]), np.array([0.7]), block_size=4, num_heads=1, num_blocks=(1, 1))
    with pytest.raises(ValueError, match="col_idx"):
        attnkit.BlockLayout(np.array([0, 1]), np.array([2**32]), block_size=4, num_heads=1, num_blocks=(1, 1))
    with pytest.raises(ValueError, match="row_ptr"):
        attnkit.BlockLayout(np.array([0, 2**64 - 1], np.uint64), np.array([0]), block_size=4, num_heads=1,
                            num_blocks=(1, 1))
    with pytest.raises(TypeError, match="col_idx"):
        attnkit.BlockLayout(np.array([0, 1]), np.array([True]), block_size=4, num_heads=1, num_blocks=(1, 1))
    ok = attnkit.BlockLayout(np.array([0, 1], np.uint8), np.array([0], np.int64), block_size=4, num_heads=1,
                             num_blocks=(1, 1))
    assert ok.nnz == 1


def test_dla_cache_counts_overflow(rng):
    q, k, v = qkv(rng, B=1, H=1, S=4, D=4)
    lam = np.ones((1, 1, 4, 2), np.float32)
    _, cache = attnkit.dynamic_linear_attention(q, k, v, lam, capacity=2, tau=-1.0)
    counts = np.array(cache.counts)
    counts[0, 0, 0] = 2**63 - 1  # the sum of the counts would wrap
    bad = dataclasses.replace(cache, counts=counts)
    with pytest.raises(ValueError, match="cache.counts"):
        attnkit.dynamic_linear_attention(q[:, :, :1], k[:, :, :1], v[:, :, :1], lam[:, :, :1], capacity=2, cache=bad)


@pytest.mark.parametrize("name,call", [
    ("return_lse", lambda q, k, v: attnkit.attention(q, k, v, return_lse="no")),
    ("return_lse", lambda q, k, v: attnkit.block_sparse_attention(q, k, v, layouts.sliding_window(16, 4, 1),
                                                                  return_lse="no")),
    ("return_lse", lambda q, k, v: attnkit.lsh_attention(q, k, v, num_buckets=2, return_lse=1)),
    ("return_state", lambda q, k, v: attnkit.linear_attention(q, k, v, return_state="yes")),
    ("causal", lambda q, k, v: attnkit.attention(q, k, v, causal="no")),
])
def test_flags_must_be_bools(rng, name, call):
    q, k, v = qkv(rng, S=16, D=4)
    raises(TypeError, name, call, q, k, v)


def test_lsh_buckets_zero_head_dim():
    raises(ValueError, "x", attnkit.lsh_buckets, np.zeros((3, 0), np.float32), num_buckets=2)


class FakeDeviceArray:
    shape = (2, 4)
    dtype = np.float32

    @property
    def __cuda_array_interface__(self):
        return {"shape": (2, 4), "typestr": "<f4", "data": (0, False), "version": 3}


def test_device_array_without_cupy_is_a_type_error(rng):
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is installed")
    except ImportError:
        pass
    q = rng.standard_normal((2, 4)).astype(np.float32)
    raises(TypeError, "q", attnkit.attention, FakeDeviceArray(), q, q)
    raises(TypeError, "k", attnkit.attention, q, FakeDeviceArray(), q)


@pytest.mark.parametrize("call", [
    lambda: attnkit.attention_weights(np.broadcast_to(np.float32(1), (2**40, 1)),
                                      np.broadcast_to(np.float32(1), (2**40, 1))),
    lambda: attnkit.random_features(2**50, 2**20),
    lambda: attnkit.linformer_projection(2**40, 2**40),
    lambda: attnkit.BlockLayout(np.zeros(2, np.int64), np.zeros(0, np.int32), block_size=1, num_heads=1,
                                num_blocks=(1, 2**60)).to_dense(),
])
def test_absurd_output_sizes_are_value_errors(call):
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize("name,call", [
    ("num_buckets", lambda: attnkit.lsh_buckets(np.zeros((3, 2), np.float32), num_buckets=2**64)),
    ("num_heads", lambda: layouts.sliding_window(16, 4, 1, num_heads=-2**70)),
    ("capacity", lambda: attnkit.dynamic_linear_attention(*(np.zeros((2, 2), np.float32),) * 4, capacity=2**64)),
])
def test_integers_beyond_int64_name_the_argument(name, call):
    with pytest.raises(ValueError, match=name):
        call()


# ------------------------------------------------------------------------------ 6. precision at length
def test_long_row_sum_does_not_stall():
    """One key of weight 1 and 2^24 - 1 keys of weight 2^-30 each: a single float32 running sum stalls at
    1 (each chunk adds 64 * 2^-30 < half an ulp of 1) and loses the 1.6% the tail holds."""
    Sk = 2**24
    s = -30 * np.log(2.0)
    k = np.full((Sk, 1), s, np.float32)
    k[0] = 0.0
    v = np.ones((Sk, 1), np.float32)
    v[0] = 0.0
    q = np.ones((1, 1), np.float32)
    out, lse = attnkit.attention(q, k, v, scale=1.0, return_lse=True)
    w = np.exp(np.float64(np.float32(s)))
    tail = (Sk - 1) * w
    np.testing.assert_allclose(out[0, 0], tail / (1 + tail), rtol=1e-4)
    np.testing.assert_allclose(lse[0], np.log1p(tail), rtol=0, atol=1e-4)  # lse is log l: absolute


# ------------------------------------------------------------------------- found by the fuzz harness
def test_nan_alibi_slope_on_a_masked_row():
    """Seed 4: a NaN ALiBi slope must not reach keys the mask forbids (the row stays 0 / -inf)."""
    q = np.full((3, 1, 1), -0.2, np.float32)
    out, lse = attnkit.attention(q, q[:1], q[:1], mask=np.array([[False]]),
                                 alibi_slopes=np.array([0.1, 0.6, np.nan], np.float32), return_lse=True)
    assert (out == 0).all() and np.isneginf(lse).all()


def test_lsh_absurd_num_hashes():
    """Seed 4: num_hashes = 2^31 - 2 allocated its rotations and died with bad_alloc."""
    x = np.zeros((1, 4), np.float32)
    with pytest.raises(ValueError, match="num_hashes"):
        attnkit.lsh_attention(x, x, x, num_buckets=2, num_hashes=2**31 - 2)
    with pytest.raises(ValueError, match="num_hashes"):
        attnkit.lsh_buckets(x, num_buckets=2, num_hashes=2**31 - 2)
    with pytest.raises(ValueError, match="num_buckets"):
        attnkit.lsh_buckets(np.zeros((1, 4096), np.float32), num_buckets=2**20, num_hashes=64)
