"""lsh_buckets and lsh_attention against the oracle (which builds on reference.lsh_buckets, a NumPy port of
the same Philox stream), and the LSH identities."""

from __future__ import annotations

import numpy as np
import pytest

import attnkit
from attnkit import reference as ref

from conftest import DTYPES, DTYPE_IDS, assert_close, assert_thread_invariant, naive_dtype, raises, randn


def test_philox_port_matches_known_answers():
    out = ref.philox4x32_10([0xFFFFFFFF] * 4, (0xFFFFFFFF, 0xFFFFFFFF))
    assert [int(x) for x in out] == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(2, 3, 50, 64), (3, 50, 17), (50, 8), (1, 1, 1, 4)])
@pytest.mark.parametrize("nb,nh", [(2, 1), (8, 3), (64, 2)])
def test_buckets(rng, dtype, shape, nb, nh):
    x = randn(rng, shape, dtype)
    b = attnkit.lsh_buckets(x, num_buckets=nb, num_hashes=nh, seed=77)
    assert b.dtype == np.int32 and b.shape == shape[:-2] + (nh, shape[-2])
    np.testing.assert_array_equal(b, ref.lsh_buckets(x, num_buckets=nb, num_hashes=nh, seed=77))
    assert b.min() >= 0 and b.max() < nb


def test_buckets_seeded_and_angular(rng):
    x = randn(rng, (4, 300, 32), np.float32)
    a = attnkit.lsh_buckets(x, num_buckets=16, num_hashes=2, seed=1)
    np.testing.assert_array_equal(a, attnkit.lsh_buckets(x, num_buckets=16, num_hashes=2, seed=1))
    assert (a != attnkit.lsh_buckets(x, num_buckets=16, num_hashes=2, seed=2)).any()
    assert (a[..., 0, :] != a[..., 1, :]).any()  # rounds use different rotations
    # angular: positive rescaling never changes a bucket; negation maps bucket c to c +- nb/2
    np.testing.assert_array_equal(attnkit.lsh_buckets(x * 3.5, num_buckets=16, num_hashes=2, seed=1), a)
    np.testing.assert_array_equal(attnkit.lsh_buckets(-x, num_buckets=16, num_hashes=2, seed=1), (a + 8) % 16)
    # buckets are used roughly evenly on isotropic data
    counts = np.bincount(a.ravel(), minlength=16)
    assert counts.min() > 0.4 * counts.mean()


def check(dtype, q, k, v, **kw):
    out, lse = attnkit.lsh_attention(q, k, v, return_lse=True, **kw)
    r_out, r_lse = ref.lsh_attention(q, k, v, return_lse=True, **kw)
    n_out, n_lse = ref.lsh_attention(q, k, v, return_lse=True, _dtype=naive_dtype(dtype), **kw)
    assert_close(out, r_out, n_out, dtype)
    assert_close(lse, r_lse, n_lse, lse.dtype, what="lse")
    return out, lse


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("nb,nh", [(2, 1), (4, 2), (16, 3)])
def test_lsh_attention(rng, dtype, causal, nb, nh):
    q = randn(rng, (2, 4, 97, 32), dtype)
    k = randn(rng, (2, 2, 97, 32), dtype)
    v = randn(rng, (2, 2, 97, 24), dtype)
    check(dtype, q, k, v, num_buckets=nb, num_hashes=nh, seed=3, causal=causal)


@pytest.mark.parametrize("Sq,Sk", [(1, 50), (40, 130), (130, 40)])
def test_cross_and_ranks(rng, Sq, Sk):
    q, k, v = randn(rng, (3, Sq, 16), np.float64), randn(rng, (3, Sk, 16), np.float64), randn(rng, (3, Sk, 8), np.float64)
    check(np.float64, q, k, v, num_buckets=4, num_hashes=2, seed=0, causal=True)
    check(np.float64, q[0], k[0], v[0], num_buckets=6, seed=1)


def test_one_bucket_is_exact_attention(rng):
    """Everything hashed to one bucket (the worst case): exact attention; identical rounds change only lse."""
    for _ in range(100):  # a shared direction whose hash margins exceed the noise in every round
        d = rng.standard_normal(32)
        q = (d + 0.01 * rng.standard_normal((1, 2, 200, 32))).astype(np.float32)
        k = (d + 0.01 * rng.standard_normal((1, 2, 200, 32))).astype(np.float32)
        b = attnkit.lsh_buckets(np.concatenate([q, k], 2), num_buckets=4, num_hashes=3, seed=9)
        if all(len(np.unique(b[..., r, :])) == 1 for r in range(3)):
            break
    else:
        pytest.fail("no direction hashed to a single bucket")
    v = randn(rng, (1, 2, 200, 32), np.float32)
    exact, exact_lse = attnkit.attention(q, k, v, causal=True, return_lse=True)
    one, one_lse = attnkit.lsh_attention(q, k, v, num_buckets=4, num_hashes=1, seed=9, causal=True, return_lse=True)
    np.testing.assert_array_equal(one, exact)
    np.testing.assert_array_equal(one_lse, exact_lse)
    three, three_lse = attnkit.lsh_attention(q, k, v, num_buckets=4, num_hashes=3, seed=9, causal=True,
                                             return_lse=True)
    np.testing.assert_allclose(three, exact, atol=1e-6)
    np.testing.assert_allclose(three_lse, exact_lse + np.log(3), atol=1e-5)


def test_bucket_restriction(rng):
    """Each output row is attention over exactly the keys of its bucket."""
    q, k, v = (randn(rng, (1, 1, 120, 16), np.float64) for _ in range(3))
    out = attnkit.lsh_attention(q, k, v, num_buckets=6, seed=4)
    bq = attnkit.lsh_buckets(q, num_buckets=6, seed=4)[0, 0, 0]
    bk = attnkit.lsh_buckets(k, num_buckets=6, seed=4)[0, 0, 0]
    for i in range(0, 120, 7):
        keys = bk == bq[i]
        if not keys.any():
            assert (out[0, 0, i] == 0).all()
            continue
        want = attnkit.attention(q[0, 0, i:i + 1], k[0, 0][keys], v[0, 0][keys])
        np.testing.assert_allclose(out[0, 0, i], want[0], atol=1e-12)


def test_empty_buckets_give_zero(rng):
    q = randn(rng, (1, 1, 30, 8), np.float32)
    k = -q  # every key lands in the opposite bucket of its own query
    v = randn(rng, (1, 1, 30, 8), np.float32)
    out, lse = attnkit.lsh_attention(q, q[:, :, :1], v[:, :, :1], num_buckets=2, seed=0, return_lse=True)
    r_out, r_lse = ref.lsh_attention(q, q[:, :, :1], v[:, :, :1], num_buckets=2, seed=0, return_lse=True)
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(r_lse))
    assert np.isneginf(lse).any() and (out[np.isneginf(lse)] == 0).all()
    assert not np.isnan(out).any()
    del k


def test_errors(rng):
    x = randn(rng, (1, 2, 10, 8), np.float32)
    for nb in (0, 3, -2):
        with pytest.raises(ValueError, match="num_buckets"):
            attnkit.lsh_buckets(x, num_buckets=nb)
        with pytest.raises(ValueError, match="num_buckets"):
            attnkit.lsh_attention(x, x, x, num_buckets=nb)
    with pytest.raises(ValueError, match="num_hashes"):
        attnkit.lsh_buckets(x, num_buckets=2, num_hashes=0)
    with pytest.raises(ValueError, match="num_hashes"):
        attnkit.lsh_attention(x, x, x, num_buckets=2, num_hashes=0)
    with pytest.raises(ValueError, match="seed"):
        attnkit.lsh_attention(x, x, x, num_buckets=2, seed=-1)
    with pytest.raises(TypeError, match="num_buckets"):
        attnkit.lsh_buckets(x, num_buckets=2.0)
    raises(TypeError, "x", attnkit.lsh_buckets, x.astype(np.int32), num_buckets=2)
    raises(ValueError, "x", attnkit.lsh_buckets, x[0, 0, 0], num_buckets=2)
    raises(ValueError, "k", attnkit.lsh_attention, x[:, :1].repeat(3, 1), x[:, :2], x[:, :2], num_buckets=2)
    with pytest.raises(TypeError, match="causal"):
        attnkit.lsh_attention(x, x, x, num_buckets=2, causal="no")


def test_thread_count_independent(rng):
    q, k, v = (randn(rng, (2, 3, 300, 32), np.float32) for _ in range(3))
    assert_thread_invariant(lambda: attnkit.lsh_attention(q, k, v, num_buckets=8, num_hashes=2, causal=True))
