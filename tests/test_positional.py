"""rope (C++ kernel), sinusoidal_positions and alibi_slopes against their float64 oracles: shapes, ranks,
strides, dtypes, positions (shared, per batch, offsets), rotary_dim, both pair layouts, properties
(relative position, norm preservation), errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

import attnkit
from attnkit import reference as ref

from conftest import BF16, DTYPES, DTYPE_IDS, assert_close, broken_call, naive_dtype, raises, randn




def check_rope(x, dtype, **kw):
    out = attnkit.rope(x, **kw)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert_close(out, ref.rope(x, **kw), ref.rope(x, _dtype=naive_dtype(dtype), **kw), dtype)
    return out


# ---------------------------------------------------------------------------------------------- rope
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("shape,rotary_dim", [((2, 3, 7, 8), None), ((1, 2, 33, 64), 32), ((1, 1, 1, 2), None),
                                              ((2, 1, 5, 80), 80), ((1, 2, 9, 60), 20), ((1, 1, 4, 7), 6)])
def test_rope_oracle(rng, dtype, interleaved, shape, rotary_dim):
    x = randn(rng, shape, dtype)
    out = check_rope(x, dtype, rotary_dim=rotary_dim, interleaved=interleaved)
    r = shape[-1] if rotary_dim is None else rotary_dim
    np.testing.assert_array_equal(out[..., r:], x[..., r:])  # unrotated dims pass through bit for bit


@pytest.mark.parametrize("dtype", [np.float32, np.float64, BF16], ids=["f32", "f64", "bf16"])
def test_rope_positions(rng, dtype):
    B, H, S, D = 3, 2, 6, 16
    x = randn(rng, (B, H, S, D), dtype)
    per_batch = rng.integers(0, 100000, size=(B, S))
    check_rope(x, dtype, positions=per_batch, base=500000.0)
    check_rope(x, dtype, positions=np.arange(S, dtype=np.int32) + 1000)
    check_rope(x, dtype, positions=list(range(40, 40 + S)))                      # a Python list
    check_rope(x, dtype, positions=np.arange(S, dtype=np.uint16))                # widened
    # default positions = arange(S); shared positions = the same for every batch row
    np.testing.assert_array_equal(attnkit.rope(x), attnkit.rope(x, positions=np.arange(S)))
    shared = attnkit.rope(x, positions=per_batch[0])
    np.testing.assert_array_equal(shared, attnkit.rope(x, positions=np.broadcast_to(per_batch[:1], (B, S))))
    # large positions: angles in double precision
    big = np.full(S, 2**31 - 1)
    check_rope(x, dtype, positions=big)


def test_rope_decode_offset_matches_prefill(rng):
    """Rotating token t alone at position t equals row t of rotating the whole sequence."""
    x = randn(rng, (1, 2, 9, 32), np.float32)
    full = attnkit.rope(x)
    for t in (0, 4, 8):
        np.testing.assert_array_equal(attnkit.rope(x[:, :, t:t + 1], positions=[t]), full[:, :, t:t + 1])


def test_rope_properties(rng):
    """q_i . k_j after rotation depends only on i - j, and rotation keeps norms."""
    q = randn(rng, (1, 1, 1, 64), np.float64)
    k = randn(rng, (1, 1, 1, 64), np.float64)
    def dot(i, j):
        return float((attnkit.rope(q, positions=[i]) * attnkit.rope(k, positions=[j])).sum())
    assert math.isclose(dot(5, 2), dot(105, 102), rel_tol=1e-12)
    assert math.isclose(dot(0, 7), dot(30, 37), rel_tol=1e-12)
    y = attnkit.rope(q, positions=[12345])
    assert math.isclose(np.linalg.norm(y), np.linalg.norm(q), rel_tol=1e-13)
    # interleaved and half layouts are the same rotation up to a permutation of the dims
    perm = np.concatenate([np.arange(0, 64, 2), np.arange(1, 64, 2)])  # interleaved index -> half layout
    x = randn(rng, (1, 1, 5, 64), np.float64)
    np.testing.assert_allclose(attnkit.rope(x, interleaved=True)[..., perm], attnkit.rope(x[..., perm]),
                               rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("rank", [2, 3])
def test_rope_ranks_and_strides(rng, rank):
    x4 = randn(rng, (1, 3, 10, 24), np.float32)
    x = x4.reshape(x4.shape[4 - rank:]) if rank == 3 else x4[0, 1]
    check_rope(x, np.float32, rotary_dim=12)
    # strided views: heads of a [B, S, H*D] projection, a reversed sequence, every other dim
    proj = randn(rng, (2, 10, 3 * 24), np.float32)
    heads = proj.reshape(2, 10, 3, 24).transpose(0, 2, 1, 3)
    assert not heads.flags.c_contiguous
    check_rope(heads, np.float32)
    check_rope(x4[:, :, ::-1], np.float32)
    check_rope(randn(rng, (2, 5, 40), np.float32)[..., ::2], np.float32)


def test_rope_empty():
    for shape in [(0, 2, 3, 4), (1, 2, 0, 4), (2, 0, 5, 8)]:
        assert attnkit.rope(np.zeros(shape, np.float32)).shape == shape


def test_rope_errors(rng):
    x = randn(rng, (2, 2, 5, 8), np.float32)
    raises(TypeError, "x", attnkit.rope, x.astype(np.int32))
    raises(TypeError, "x", attnkit.rope, [[1.0, 2.0]])
    raises(ValueError, "x", attnkit.rope, np.zeros((4, 2, 2, 5, 8), np.float32))
    raises(ValueError, "rotary_dim", attnkit.rope, randn(rng, (5, 7), np.float32))   # odd D, no rotary_dim
    for r in (0, 3, 10, -2):
        raises(ValueError, "rotary_dim", attnkit.rope, x, rotary_dim=r)
    raises(TypeError, "rotary_dim", attnkit.rope, x, rotary_dim=2.5)
    for b in (0.0, -1.0, float("inf"), float("nan")):
        raises(ValueError, "base", attnkit.rope, x, base=b)
    raises(TypeError, "base", attnkit.rope, x, base="10000")
    raises(TypeError, "interleaved", attnkit.rope, x, interleaved=1)
    raises(ValueError, "positions", attnkit.rope, x, positions=np.arange(4))
    raises(ValueError, "positions", attnkit.rope, x, positions=np.zeros((3, 5), np.int64))
    raises(ValueError, "positions", attnkit.rope, x, positions=[0, 1, -1, 2, 3])
    raises(ValueError, "positions", attnkit.rope, x, positions=np.array([0, 1, 2, 3, 2**31]))
    raises(ValueError, "positions", attnkit.rope, x, positions=np.array([0, 1, 2, 3, 2**64 - 1], np.uint64))
    raises(TypeError, "positions", attnkit.rope, x, positions=np.arange(5.0))


# ------------------------------------------------------------------------------------- sinusoidal / ALiBi
@pytest.mark.parametrize("S,D", [(0, 4), (1, 1), (7, 5), (50, 64), (33, 3)])
def test_sinusoidal_oracle(S, D):
    pe = attnkit.sinusoidal_positions(S, D, dtype=np.float64)
    assert pe.shape == (S, D) and pe.dtype == np.float64
    np.testing.assert_allclose(pe, ref.sinusoidal_positions(S, D), rtol=0, atol=1e-12)
    if S > 1 and D > 1:
        assert pe[0, 0] == 0 and pe[0, 1] == 1 and math.isclose(pe[1, 0], math.sin(1.0))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_sinusoidal_dtypes(dtype):
    pe = attnkit.sinusoidal_positions(20, 16, base=100.0, dtype=dtype)
    assert pe.dtype == dtype
    np.testing.assert_array_equal(pe, ref.sinusoidal_positions(20, 16, base=100.0).astype(dtype))


def test_sinusoidal_errors():
    raises(ValueError, "seq_len", attnkit.sinusoidal_positions, -1, 4)
    raises(ValueError, "dim", attnkit.sinusoidal_positions, 3, 0)
    raises(TypeError, "seq_len", attnkit.sinusoidal_positions, 3.0, 4)
    raises(ValueError, "base", attnkit.sinusoidal_positions, 3, 4, base=0.0)
    raises(TypeError, "dtype", attnkit.sinusoidal_positions, 3, 4, dtype=np.int32)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6, 8, 12, 16, 20, 24, 64, 100])
def test_alibi_slopes_oracle(n):
    s = attnkit.alibi_slopes(n)
    assert s.shape == (n,) and s.dtype == np.float32
    np.testing.assert_allclose(s, ref.alibi_slopes(n), rtol=1e-7)


def test_alibi_slopes_values_and_use(rng):
    np.testing.assert_allclose(attnkit.alibi_slopes(8), [2.0 ** -(h + 1) for h in range(8)], rtol=1e-7)
    # the paper's non-power-of-two rule: 6 heads = the 4 slopes of 4 heads + slopes 1 and 3 of 8 heads
    np.testing.assert_allclose(attnkit.alibi_slopes(6), [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3], rtol=1e-7)
    q = randn(rng, (1, 6, 5, 8), np.float32)
    out = attnkit.attention(q, q, q, causal=True, alibi_slopes=attnkit.alibi_slopes(6))
    r = ref.attention(q, q, q, causal=True, alibi_slopes=attnkit.alibi_slopes(6))
    np.testing.assert_allclose(out, r, atol=1e-5)


def test_alibi_slopes_errors():
    raises(ValueError, "num_heads", attnkit.alibi_slopes, 0)
    raises(TypeError, "num_heads", attnkit.alibi_slopes, 4.0)


# ------------------------------------------------------------------------------------------ properties
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_rope_random_problems(data):
    """Random ranks, sizes, strides, dtypes, rotary dims and positions: matches the oracle or raises a
    clear ValueError naming the argument."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    dtype = data.draw(st.sampled_from(DTYPES))
    rank = data.draw(st.integers(2, 4))
    shape = [data.draw(st.integers(1, 3)) for _ in range(rank - 2)] + [data.draw(st.integers(0, 20)),
                                                                       data.draw(st.integers(1, 20))]
    step = data.draw(st.sampled_from([1, 2]))
    base = randn(rng, shape[:-1] + [shape[-1] * step], dtype)
    x = base[..., ::step]
    if data.draw(st.booleans()) and shape[-2] > 1:
        x = x[..., ::-1, :]
    r = data.draw(st.one_of(st.none(), st.integers(-2, 22)))
    pos = None
    if data.draw(st.booleans()):
        pos = rng.integers(data.draw(st.sampled_from([0, -3])), 10**6, size=shape[-2])
    interleaved = data.draw(st.booleans())
    try:
        out = attnkit.rope(x, positions=pos, rotary_dim=r, interleaved=interleaved)
    except ValueError as e:
        D = shape[-1]
        bad_r = (r is None and D % 2) or (r is not None and (r < 2 or r > D or r % 2))
        bad_pos = pos is not None and pos.size and pos.min() < 0
        assert (bad_r and "rotary_dim" in str(e)) or (bad_pos and "positions" in str(e)), str(e)
        return
    check_rope(x, dtype, positions=pos, rotary_dim=r, interleaved=interleaved)
    assert out.shape == x.shape


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_sinusoidal_random_arguments(data):
    """Random lengths, dims (odd ones too), bases and dtypes: the oracle rounded once, or an error naming the
    argument that was broken."""
    args = dict(seq_len=data.draw(st.integers(0, 150)), dim=data.draw(st.integers(1, 50)),
                base=data.draw(st.sampled_from([10000.0, 100.0, 2.5, 1e6])), dtype=data.draw(st.sampled_from(DTYPES)))
    breaks = [("seq_len", -1, "seq_len"), ("seq_len", 3.0, "seq_len"), ("dim", 0, "dim"), ("dim", True, "dim"),
              ("base", 0.0, "base"), ("base", float("inf"), "base"), ("dtype", np.int32, "dtype")]
    if broken_call(data, attnkit.sinusoidal_positions, args, breaks):
        return
    pe = attnkit.sinusoidal_positions(**args)
    r = ref.sinusoidal_positions(args["seq_len"], args["dim"], base=args["base"])
    assert pe.shape == r.shape and pe.dtype == args["dtype"]
    ulp = {np.dtype(np.float32): 2**-23, np.dtype(np.float64): 1e-12, np.dtype(np.float16): 2**-10, BF16: 2**-7}
    np.testing.assert_allclose(pe.astype(np.float64), r, rtol=0, atol=ulp[np.dtype(args["dtype"])])


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_alibi_slopes_random_arguments(data):
    """Any head count: the oracle's slopes in float32, or an error naming num_heads."""
    args = dict(num_heads=data.draw(st.integers(1, 300)))
    breaks = [("num_heads", 0, "num_heads"), ("num_heads", -7, "num_heads"), ("num_heads", True, "num_heads"),
              ("num_heads", 4.0, "num_heads"), ("num_heads", "4", "num_heads")]
    if broken_call(data, attnkit.alibi_slopes, args, breaks):
        return
    s = attnkit.alibi_slopes(**args)
    assert s.dtype == np.float32 and s.shape == (args["num_heads"],)
    np.testing.assert_allclose(s, ref.alibi_slopes(args["num_heads"]), rtol=2**-24, atol=0)
