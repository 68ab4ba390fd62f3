"""Run under a real MPI launcher by tests/test_distributed.py: ``mpiexec -n P python tests/mpi_worker.py``.

Every rank builds the same global inputs from fixed seeds, runs the attnkit.distributed function on its
shard and compares its rows with the single-process function (and the float64 oracle) on the gathered
sequence; bad-input cases check that every rank raises the same error. Rank 0 prints one line per case
("ok NAME" or "FAIL NAME: why"), a digest of the outputs (for the run-to-run bit check), and "ALL OK"; the
exit status is 1 when any case failed on any rank.
"""

import hashlib
import os
import sys
import traceback

import ml_dtypes
import numpy as np
from mpi4py import MPI

import attnkit
from attnkit import distributed as dist
from attnkit import reference

comm = MPI.COMM_WORLD
P, R = comm.Get_size(), comm.Get_rank()
SEED = int(os.environ.get("ATTNKIT_TEST_SEED", "1234"))
BF16 = np.dtype(ml_dtypes.bfloat16)
ATOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-6, np.dtype(np.float16): 1e-3, BF16: 1e-2}
cases, digest = [], hashlib.sha256()


def case(f):
    cases.append(f)
    return f


def rng(tag):
    return np.random.default_rng([SEED, tag])


def data(tag, shape, dtype=np.float32, scale=1.0):
    return (rng(tag).standard_normal(shape) * scale).astype(dtype)


def uneven(total, tag):
    """Random cut points: any lengths per rank, possibly 0."""
    cuts = np.sort(rng(tag).integers(0, total + 1, P - 1))
    return np.diff(np.concatenate([[0], cuts, [total]])).astype(int).tolist()


def mine(x, lengths, axis=-2):
    start = sum(lengths[:R])
    return np.take(x, np.arange(start, start + lengths[R]), axis=axis)


def close(name, got, single, ref, dtype):
    """House tolerance: |got - ref| <= 2 |single - ref| + atol, and no NaN."""
    got64, single64 = np.asarray(got, np.float64), np.asarray(single, np.float64)
    assert got.shape == single.shape, f"{name}: shape {got.shape} != {single.shape}"
    fin = np.isfinite(single64)
    assert np.array_equal(np.isfinite(got64), fin) and np.array_equal(got64[~fin], single64[~fin]), \
        f"{name}: NaN / inf where the single-process result has none (or the reverse)"
    err = np.abs(got64[fin] - ref[fin]).max(initial=0)
    bound = 2 * np.abs(single64[fin] - ref[fin]).max(initial=0) + ATOL[np.dtype(dtype)]
    assert err <= bound, f"{name}: max error {err:.3g} > bound {bound:.3g}"
    digest.update(np.ascontiguousarray(got).tobytes())


def expect_error(exc, words, f):
    try:
        f()
    except exc as e:
        for w in words:
            assert w in str(e), f"{exc.__name__} message lacks {w!r}: {e}"
        return str(e)
    except Exception as e:  # noqa: BLE001 - reported as the failure
        raise AssertionError(f"expected {exc.__name__}, got {type(e).__name__}: {e}") from None
    raise AssertionError(f"expected {exc.__name__} mentioning {words}, nothing raised")


def same_on_all(msg):
    msgs = comm.allgather(msg)
    assert all(m == msgs[0] for m in msgs), f"ranks raised different errors: {msgs}"


# --------------------------------------------------------------------------------- ring attention
def ring_case(tag, *, B, Hq, Hkv, Sq, Sk, D, Dv, dtype, **opts):
    q, k, v = data(tag, (B, Hq, Sq, D)), data(tag + 1, (B, Hkv, Sk, D)), data(tag + 2, (B, Hkv, Sk, Dv))
    q, k, v = q.astype(dtype), k.astype(dtype), v.astype(dtype)
    ql, kl = uneven(Sq, tag + 3), uneven(Sk, tag + 4)
    out, lse = dist.ring_attention(mine(q, ql), mine(k, kl), mine(v, kl), comm, return_lse=True, **opts)
    single, slse = attnkit.attention(q, k, v, return_lse=True, **opts)
    ref, rlse = reference.attention(q, k, v, return_lse=True, **opts)
    close("out", out, mine(single, ql), mine(ref, ql), dtype)
    close("lse", lse, mine(slse, ql, -1), mine(rlse, ql, -1), np.float32 if dtype != np.float64 else dtype)


@case
def ring_dense_gqa():
    ring_case(10, B=2, Hq=4, Hkv=2, Sq=37, Sk=37, D=16, Dv=12, dtype=np.float32)


@case
def ring_causal():
    ring_case(20, B=1, Hq=3, Hkv=1, Sq=45, Sk=45, D=8, Dv=8, dtype=np.float32, causal=True)


@case
def ring_causal_cross_window_lengths():
    # Sq != Sk: bottom-right alignment of the global sequence; window, key_lengths, softcap, scale
    ring_case(30, B=2, Hq=2, Hkv=2, Sq=29, Sk=41, D=8, Dv=5, dtype=np.float32, causal=True, window=(9, 2),
              key_lengths=[30, 17], softcap=5.0, scale=0.3)
    ring_case(35, B=2, Hq=2, Hkv=1, Sq=41, Sk=23, D=8, Dv=8, dtype=np.float32, causal=True, key_lengths=[23, 4])
    ring_case(38, B=1, Hq=2, Hkv=2, Sq=31, Sk=31, D=8, Dv=8, dtype=np.float32, window=(3, None))


@case
def ring_empty_shard_strides_masked_rows():
    # rank 0 holds no token; BSHD views read in place; batch entry 1 has no valid key (out 0, lse -inf)
    B, H, S, D = 2, 2, 19, 8
    q, k, v = (data(50 + i, (B, S, H, D)).transpose(0, 2, 1, 3) for i in range(3))
    lens = [0] + uneven(S, 53)[1:]
    lens[-1] += S - sum(lens)
    opts = dict(causal=True, key_lengths=[13, 0])
    out, lse = dist.ring_attention(mine(q, lens), mine(k, lens), mine(v, lens), comm, return_lse=True, **opts)
    single, slse = attnkit.attention(q, k, v, return_lse=True, **opts)
    ref = reference.attention(q, k, v, **opts)
    close("out", out, mine(single, lens), mine(ref, lens), np.float32)
    np.testing.assert_allclose(lse, mine(slse, lens, -1), rtol=1e-5, atol=1e-5)   # -inf rows equal too
    assert np.all(np.isneginf(lse[1])) and not np.any(out[1])


@case
def ring_dtypes():
    for i, dt in enumerate((np.float64, np.float16, BF16)):
        ring_case(40 + 5 * i, B=1, Hq=4, Hkv=2, Sq=33, Sk=33, D=16, Dv=16, dtype=dt, causal=True)


@case
def ring_ranks_3d_2d():
    q, k, v = data(60, (3, 26, 8)), data(61, (3, 26, 8)), data(62, (3, 26, 8))
    lens = uneven(26, 63)
    out = dist.ring_attention(mine(q, lens), mine(k, lens), mine(v, lens), comm, causal=True)
    close("3-D", out, mine(attnkit.attention(q, k, v, causal=True), lens),
          mine(reference.attention(q, k, v, causal=True), lens), np.float32)
    out = dist.ring_attention(mine(q[0], lens), mine(k[0], lens), mine(v[0], lens), comm)
    close("2-D", out, mine(attnkit.attention(q[0], k[0], v[0]), lens), mine(reference.attention(q[0], k[0], v[0]), lens),
          np.float32)


@case
def ring_zigzag_balance():
    S = 24 * P
    q, k, v = data(70, (1, 2, S, 8)), data(71, (1, 2, S, 8)), data(72, (1, 2, S, 8))
    sq, sk, sv = (dist.shard(x, comm, layout="zigzag") for x in (q, k, v))
    stats = {}
    out = dist.ring_attention(sq, sk, sv, comm, causal=True, layout="zigzag", stats=stats)
    full = dist.unshard(out, comm, layout="zigzag")
    close("zigzag", full, attnkit.attention(q, k, v, causal=True), reference.attention(q, k, v, causal=True),
          np.float32)
    pairs = comm.allgather(stats["pairs"])
    assert sum(pairs) == 2 * S * (S + 1) // 2, f"pairs {pairs} do not add up to the causal triangle"
    assert max(pairs) <= 1.10 * min(pairs), f"zig-zag work not balanced within 10%: {pairs}"
    plain = {}
    lens = [S // P] * P
    dist.ring_attention(mine(q, lens), mine(k, lens), mine(v, lens), comm, causal=True, stats=plain)
    contiguous = comm.allgather(plain["pairs"])
    assert max(contiguous) > 1.5 * min(contiguous), f"the contiguous layout should be unbalanced: {contiguous}"
    assert stats["bytes_sent"] == (P - 1) * 2 * sq.nbytes
    # shard / unshard round trip on another axis and a length that does not divide
    x = data(73, (5, 2 * P + 3))
    for layout in ("contiguous", "zigzag"):
        assert np.array_equal(dist.unshard(dist.shard(x, comm, layout=layout, axis=1), comm, layout=layout,
                                           axis=1), x)


# --------------------------------------------------------------------------------- linear / Performer
@case
def linear_state_passing():
    B, Hq, Hkv, S, D, Dv = 2, 4, 2, 70, 8, 6
    q, k, v = data(80, (B, Hq, S, D)), data(81, (B, Hkv, S, D)), data(82, (B, Hkv, S, Dv))
    init = (np.abs(data(83, (B, Hkv, D, Dv))), np.abs(data(84, (B, Hkv, D))))
    lens = uneven(S, 85)
    for opts in (dict(causal=True, key_lengths=[51, 70], initial_state=init),
                 dict(causal=False, key_lengths=[9, 64]),
                 dict(causal=True, feature_map="relu", normalize=False),
                 dict(causal=False, feature_map="identity", normalize=False, initial_state=init)):
        out, state = dist.linear_attention(mine(q, lens), mine(k, lens), mine(v, lens), comm, return_state=True,
                                           **opts)
        single, sstate = attnkit.linear_attention(q, k, v, return_state=True, **opts)
        ref = reference.linear_attention(q, k, v, **opts)
        close(f"linear {opts}", out, mine(single, lens), mine(ref, lens), np.float32)
        for a, b in zip(state, sstate):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-4)
        states = comm.allgather(state)
        assert all(np.array_equal(s[0], states[0][0]) for s in states), "final state differs across ranks"
    for dt in (np.float16, BF16, np.float64):
        qd, kd, vd = q.astype(dt), k.astype(dt), v.astype(dt)
        out = dist.linear_attention(mine(qd, lens), mine(kd, lens), mine(vd, lens), comm, key_lengths=[60, 33])
        close(f"linear {dt}", out, mine(attnkit.linear_attention(qd, kd, vd, key_lengths=[60, 33]), lens),
              mine(reference.linear_attention(qd, kd, vd, key_lengths=[60, 33]), lens), dt)


@case
def performer_state_passing():
    B, Hq, Hkv, S, D, Dv, m = 2, 2, 1, 66, 8, 8, 32
    q, k, v = data(90, (B, Hq, S, D)), data(91, (B, Hkv, S, D)), data(92, (B, Hkv, S, Dv))
    k[:, :, S // 2:] *= 2.5  # later keys with larger exponents: the causal stabilizer changes across ranks
    W = attnkit.random_features(m, D, seed=5)
    lens = uneven(S, 93)
    for dt in (np.float32, BF16):
        qd, kd, vd = q.astype(dt), k.astype(dt), v.astype(dt)
        for opts in (dict(causal=True), dict(causal=True, key_lengths=[40, 66]), dict(causal=False, key_lengths=[5, 60]),
                     dict(causal=True, kernel="relu"), dict(causal=False, eps=0.0)):
            out = dist.performer_attention(mine(qd, lens), mine(kd, lens), mine(vd, lens), W, comm, **opts)
            single = attnkit.performer_attention(qd, kd, vd, W, **opts)
            ref = reference.performer_attention(qd, kd, vd, W, **opts)
            close(f"performer {dt} {opts}", out, mine(single, lens), mine(ref, lens), dt)
    Wb = W.astype(BF16)  # features of any float dtype
    out = dist.performer_attention(mine(q, lens), mine(k, lens), mine(v, lens), Wb, comm, causal=True)
    close("performer bf16 features", out, mine(attnkit.performer_attention(q, k, v, Wb, causal=True), lens),
          mine(reference.performer_attention(q, k, v, Wb, causal=True), lens), np.float32)


@case
def dla_pipeline():
    B, H, T, D, C = 1, 2, 48, 8, 4
    q, k, v = data(100, (B, H, T, D), scale=0.3), data(101, (B, H, T, D), scale=0.3), data(102, (B, H, T, D))
    lam = np.abs(data(103, (B, H, T, C))) / C
    g = -np.abs(data(104, (B, H, T))) * 0.1
    lens = uneven(T, 105)
    y, cache, aux = dist.dla_pipeline(mine(q, lens), mine(k, lens), mine(v, lens), mine(lam, lens), comm, capacity=C,
                                      tau=0.5, log_decay=mine(g, lens, -1), return_aux=True)
    sy, scache, saux = attnkit.dynamic_linear_attention(q, k, v, lam, capacity=C, tau=0.5, log_decay=g,
                                                        return_aux=True)
    np.testing.assert_allclose(y, mine(sy, lens), rtol=1e-4, atol=1e-5)
    assert np.array_equal(aux.boundaries, mine(saux.boundaries, lens, -1))
    assert cache.position == sum(lens[:R + 1])
    if R == P - 1:
        np.testing.assert_allclose(cache.states, scache.states, rtol=1e-4, atol=1e-5)
        assert np.array_equal(cache.size, scache.size) and np.array_equal(cache.starts, scache.starts)
    digest.update(y.tobytes())


# --------------------------------------------------------------------------------- bad input: same error everywhere
@case
def errors_everywhere():
    q = data(110, (1, 2, 8, 8))
    bad_d = data(111, (1, 2, 8, 8 if R else 4))
    same_on_all(expect_error(ValueError, ["differs across ranks", "D"],
                             lambda: dist.ring_attention(bad_d, bad_d, bad_d, comm)))
    mixed = q.astype(np.float16 if R == P - 1 else np.float32)
    same_on_all(expect_error(TypeError, ["dtype", "differs across ranks"],
                             lambda: dist.ring_attention(mixed, mixed, mixed, comm)))
    same_on_all(expect_error(TypeError, ["dtype", "differs across ranks"],
                             lambda: dist.linear_attention(mixed, mixed, mixed, comm)))
    not_array = [[1.0]] if R == 0 else q
    same_on_all(expect_error(TypeError, ["rank 0", "q must be"],
                             lambda: dist.ring_attention(not_array, q, q, comm)))
    same_on_all(expect_error(ValueError, ["key_lengths", f"[0, {8 * P}]"],
                             lambda: dist.ring_attention(q, q, q, comm, key_lengths=[8 * P + 1])))
    lens = [3] if R == 0 else [4]
    same_on_all(expect_error(ValueError, ["key_lengths", "differs across ranks"],
                             lambda: dist.ring_attention(q, q, q, comm, key_lengths=lens)))
    same_on_all(expect_error(ValueError, ["mask", "not supported"],
                             lambda: dist.ring_attention(q, q, q, comm, mask=np.ones((8, 8), bool))))
    causal = R == 0
    same_on_all(expect_error(ValueError, ["causal", "differs across ranks"],
                             lambda: dist.ring_attention(q, q, q, comm, causal=causal)))
    odd = data(112, (1, 2, 8 + 2 * (R == 0), 8))
    same_on_all(expect_error(ValueError, ["zigzag", "lengths"],
                             lambda: dist.ring_attention(odd, odd, odd, comm, layout="zigzag")))
    same_on_all(expect_error(ValueError, ["layout"], lambda: dist.ring_attention(q, q, q, comm, layout="spiral")))
    kshort = q[:, :, :7]
    same_on_all(expect_error(ValueError, ["rank", "k must have q's length"],
                             lambda: dist.linear_attention(q, kshort, q, comm)))
    W = attnkit.random_features(16, 8, seed=R)
    same_on_all(expect_error(ValueError, ["differs across ranks"],
                             lambda: dist.performer_attention(q, q, q, W, comm)))
    same_on_all(expect_error(ValueError, ["capacity"],
                             lambda: dist.dla_pipeline(q, q, q, q[..., :2], comm, capacity=2 + (R == 1))))
    g = np.zeros((1, 2, 8)) + (0.5 if R == P - 1 else 0.0)   # only the last rank's log_decay is bad
    same_on_all(expect_error(ValueError, [f"rank {P - 1}", "log_decay"],
                             lambda: dist.dla_pipeline(q, q, q, q[..., :2], comm, capacity=2, log_decay=g)))
    flag = "no" if R == P - 1 else False  # checked on the last rank only: raised there before the collective
    same_on_all(expect_error(TypeError, [f"rank {P - 1}", "return_state"],  # check (the others waited forever)
                             lambda: dist.linear_attention(q, q, q, comm, return_state=flag)))
    same_on_all(expect_error(TypeError, [f"rank {P - 1}", "causal"],
                             lambda: dist.performer_attention(q, q, q, attnkit.random_features(16, 8), comm,
                                                              causal=flag)))
    # a scale or eps given as a NumPy scalar on one rank and a 0-d array on another is the same option
    s0 = np.float32(0.5) if R == 0 else np.array(0.5)
    assert np.array_equal(dist.ring_attention(q, q, q, comm, scale=s0, softcap=s0 * 4),
                          dist.ring_attention(q, q, q, comm, scale=0.5, softcap=2.0))
    assert np.array_equal(dist.linear_attention(q, q, q, comm, eps=s0), dist.linear_attention(q, q, q, comm, eps=0.5))
    W = attnkit.random_features(16, 8)
    assert np.array_equal(dist.performer_attention(q, q, q, W, comm, scale=s0, eps=s0),
                          dist.performer_attention(q, q, q, W, comm, scale=0.5, eps=0.5))
    expect_error(ValueError, ["comm", "COMM_NULL"], lambda: dist.ring_attention(q, q, q, MPI.COMM_NULL))
    expect_error(TypeError, ["comm must be"], lambda: dist.linear_attention(q, q, q, "world"))
    expect_error(TypeError, ["cache must be"], lambda: dist.send_cache(None, comm, 0))


def main():
    failed = False
    for f in cases:
        try:
            f()
            msg = None
        except Exception:  # noqa: BLE001 - every failure is reported
            msg = traceback.format_exc(limit=3)
        msgs = comm.allgather(msg)
        bad = [(r, m) for r, m in enumerate(msgs) if m]
        failed |= bool(bad)
        if R == 0:
            print(f"ok {f.__name__}" if not bad else f"FAIL {f.__name__}: " + "\n".join(f"[rank {r}] {m}" for r, m in bad),
                  flush=True)
    digests = comm.gather(digest.hexdigest(), root=0)
    if R == 0:
        print("digest " + " ".join(digests))
        print("SOME FAILED" if failed else "ALL OK", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
