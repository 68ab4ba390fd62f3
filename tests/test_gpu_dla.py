"""GPU suite, dynamic linear attention: prefill and decode against the oracle and the CPU backend.
Helpers and conventions: gpu_common.py."""

from __future__ import annotations

import numpy as np
import pytest

import attnkit
from attnkit import reference as ref
from attnkit._array import acc_dtype

from conftest import DTYPE_IDS, DTYPES, assert_close, randn, to_f64
from gpu_common import F16, F32, F64, GPU_MARKS, _check_on_device, close3, dev, gpu_run, host, need, same

pytestmark = GPU_MARKS


# ============================================================================== DLA
def _piecewise(rng, B, H, T, Dk, Dv, dtype, lo=2, hi=10, noise=0.05):
    """k, v in blocks of lo..hi tokens sharing a direction: scores stay far from tau (see test_dla.py)."""
    k, v = np.empty((B, H, T, Dk)), np.empty((B, H, T, Dv))
    for b in range(B):
        for h in range(H):
            t = 0
            while t < T:
                e = min(T, t + int(rng.integers(lo, hi + 1)))
                kd, vd = rng.standard_normal(Dk), rng.standard_normal(Dv)
                k[b, h, t:e] = kd * np.sqrt(Dk) / np.linalg.norm(kd) + noise * rng.standard_normal((e - t, Dk))
                v[b, h, t:e] = vd * np.sqrt(Dv) / np.linalg.norm(vd) + noise * rng.standard_normal((e - t, Dv))
                t = e
    return (k / np.sqrt(Dk)).astype(dtype), v.astype(dtype)


def _dla_problem(rng, B, H, T, Dk, Dv, C, dtype, decay):
    if np.dtype(dtype) == F64:  # any data in float64
        k, v = randn(rng, (B, H, T, Dk), dtype, 1 / np.sqrt(Dk)), randn(rng, (B, H, T, Dv), dtype)
    else:
        k, v = _piecewise(rng, B, H, T, Dk, Dv, dtype)
    q = randn(rng, (B, H, T, Dk), dtype, 1 / np.sqrt(Dk))
    lam = (rng.random((B, H, T, C)) * 2 / C).astype(dtype)
    g = None if decay is None else -rng.random((B, H, T)) * 0.5
    return q, k, v, lam, g


def _scaled(x, r):
    s = max(1.0, float(np.abs(np.asarray(r, np.float64)).max(initial=0)))
    return np.asarray(x, np.float64) / s


def _dla_compare(res, cres, rres, nres, dtype):
    """GPU (y, cache, aux) vs CPU and oracle: decisions exactly, y and states by the tolerance rule scaled to
    O(1) (as test_dla.py), scores and info within the CPU's distance from the oracle plus a little."""
    (y, c, a), (cy, cc, ca), (ry, rc, ra), (ny, nc, na) = res, cres, rres, nres
    sdt = acc_dtype(dtype)
    for name in ("boundaries", "merged"):
        same(getattr(a, name), getattr(ca, name), name)
    # against the oracle only where the CPU agrees with it (else the data sits too close to tau for this dtype)
    if np.array_equal(ca.boundaries, ra.boundaries) and np.array_equal(ca.merged, ra.merged):
        np.testing.assert_array_equal(a.boundaries, ra.boundaries)
    else:
        return
    for name in ("counts", "starts", "size"):
        same(getattr(c, name), getattr(cc, name), f"cache.{name}")
    assert c.position == cc.position
    close3(_scaled(y, ry), _scaled(cy, ry), _scaled(ry, ry), _scaled(ny, ry), dtype, what="y")
    close3(_scaled(c.states, rc.states), _scaled(cc.states, rc.states), _scaled(rc.states, rc.states),
           _scaled(nc.states, rc.states), sdt, what="cache.states")
    for what, g, cpu, r in (("scores", a.scores, ca.scores, ra.scores), ("info", c.info, cc.info, rc.info)):
        g, cpu, r = to_f64(g), to_f64(cpu), to_f64(r)
        tol = 2 * np.abs(cpu - r).max(initial=0) + (1e-5 if sdt == F32 else 1e-9) * max(1.0, np.abs(r).max(initial=0))
        assert np.abs(g - cpu).max(initial=0) <= tol, f"{what}: GPU vs CPU beyond {tol:.3g}"


DLA_CASES = [
    # id, B, H, T, Dk, Dv, C, score, decay, tau
    ("small", 1, 2, 9, 8, 8, 3, "token_vs_state", None, 0.6),
    ("tvs", 2, 2, 45, 16, 8, 4, "token_vs_state", None, 0.6),
    ("tvs-decay", 2, 2, 60, 32, 32, 5, "token_vs_state", "rand", 0.6),
    ("drift", 2, 2, 45, 16, 8, 4, "state_drift", None, 0.6),
    ("wide", 1, 2, 37, 64, 64, 6, "token_vs_state", "rand", 0.6),
    ("odd", 1, 3, 41, 13, 7, 2, "token_vs_state", None, 0.6),
    ("cap1", 1, 2, 30, 16, 16, 1, "token_vs_state", None, 0.6),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", DLA_CASES, ids=[c[0] for c in DLA_CASES])
def test_dla_prefill(rng, dtype, case):
    need("dynamic_linear_attention")
    _, B, H, T, Dk, Dv, C, score, decay, tau = case
    q, k, v, lam, g = _dla_problem(rng, B, H, T, Dk, Dv, C, dtype, decay)
    kw = dict(capacity=C, tau=tau, log_decay=g, score=score, return_aux=True)
    res = gpu_run(attnkit.dynamic_linear_attention, q, k, v, lam, **kw)
    cres = attnkit.dynamic_linear_attention(q, k, v, lam, **kw)
    rres = ref.dynamic_linear_attention(q, k, v, lam, **kw)
    nres = ref.dynamic_linear_attention(q, k, v, lam, _dtype=np.float32, **kw) if dtype != F64 else rres
    _dla_compare(res, cres, rres, nres, np.dtype(dtype))


@pytest.mark.parametrize("dtype", [F32, F64, F16], ids=["f32", "f64", "f16"])
@pytest.mark.parametrize("decay", [None, "rand"])
def test_dla_prefill_then_decode(rng, dtype, decay):
    """A prefill, then a second prefill chunk and token-by-token decode (T = 1) from the device cache: each
    step against the CPU run on the CPU cache, and the whole against one oracle call over every token."""
    need("dynamic_linear_attention")
    B, H, T, Dk, Dv, C = 2, 2, 40, 16, 16, 4
    q, k, v, lam, g = _dla_problem(rng, B, H, T, Dk, Dv, C, dtype, decay)
    kw = dict(capacity=C, tau=0.6, score="token_vs_state", return_aux=True)
    dcache, ccache, ys = None, None, []
    for a, b in [(0, 20), (20, 30)] + [(t, t + 1) for t in range(30, T)]:
        part = lambda x: None if x is None else x[:, :, a:b]  # noqa: E731
        args = (part(q), part(k), part(v), part(lam))
        dargs = dev(args)
        res = attnkit.dynamic_linear_attention(*dargs, log_decay=dev(part(g)), cache=dcache, **kw)
        _check_on_device(res, 0)
        cres = attnkit.dynamic_linear_attention(*args, log_decay=part(g), cache=ccache, **kw)
        hres = host(res)
        for name in ("boundaries", "merged"):
            same(getattr(hres[2], name), getattr(cres[2], name), f"{name} at tokens {a}:{b}")
        for name in ("counts", "starts", "size"):
            same(getattr(hres[1], name), getattr(cres[1], name), f"cache.{name} at tokens {a}:{b}")
        tol = 1e-12 if dtype == F64 else 1e-4
        np.testing.assert_allclose(to_f64(hres[0]), to_f64(cres[0]), rtol=tol * 30, atol=tol * 30)
        np.testing.assert_allclose(hres[1].states, cres[1].states, rtol=tol, atol=tol)
        dcache, ccache = res[1], cres[1]
        ys.append(hres[0])
    ry, rc, _ = ref.dynamic_linear_attention(q, k, v, lam, log_decay=g, **kw)
    ny = ref.dynamic_linear_attention(q, k, v, lam, log_decay=g, _dtype=np.float32, **kw)[0] if dtype != F64 else ry
    y = np.concatenate(ys, axis=2)
    assert_close(_scaled(y, ry), _scaled(ry, ry), _scaled(ny, ry), dtype, what="y (decoded)", atol_scale=4.0)
    for name in ("counts", "starts", "size"):
        np.testing.assert_array_equal(getattr(host(dcache), name), getattr(rc, name), err_msg=name)


# ----------------------------------------------------------------------- the chunked prefill (DLA prefill v4)
# Every prefill above already runs DLA prefill v4 (cuda/dla_prefill_v4.cuh; where its chunk layout fits in shared
# memory: all of them but "wide" in float64, which takes the first kernel, cuda/dla_prefill.cu). The cases below
# add several chunks per call (the cache carried from chunk to chunk), odd lengths and chunk lengths, capacity
# edges, every column split (tuning option dla_split) and prefill in pieces. (Until session 27 they ran the
# second kernel, dla_prefill_v2.cu's v2, removed then.)
from attnkit._tuning import tuning  # noqa: E402

DLA_V2_CASES = [
    # id, B, H, T, Dk, Dv, C, score, decay, chunk (0: automatic, 64)
    ("small-multi", 1, 2, 70, 8, 8, 3, "token_vs_state", "rand", 0),  # in the sanitizer subset (-k small)
    ("multi", 2, 2, 150, 32, 32, 5, "token_vs_state", None, 0),
    ("multi-decay", 1, 3, 131, 16, 24, 4, "token_vs_state", "rand", 0),
    ("multi-drift", 2, 1, 129, 24, 16, 3, "state_drift", "rand", 0),
    ("d64", 1, 2, 200, 64, 64, 16, "token_vs_state", None, 0),
    ("chunk7", 1, 2, 61, 13, 9, 3, "token_vs_state", "rand", 7),
    ("chunk1", 1, 2, 23, 8, 8, 3, "token_vs_state", None, 1),
    ("cap1", 1, 2, 140, 16, 16, 1, "token_vs_state", "rand", 0),
    ("cap2", 1, 2, 140, 16, 16, 2, "token_vs_state", None, 0),
    ("capT", 1, 2, 70, 8, 8, 70, "token_vs_state", None, 0),
    ("capbig", 1, 2, 33, 8, 8, 50, "token_vs_state", "rand", 0),
]


def _dla_v2_run(case, dtype, rng, split, cache=None):
    _, B, H, T, Dk, Dv, C, score, decay, chunk = case
    q, k, v, lam, g = _dla_problem(rng, B, H, T, Dk, Dv, C, dtype, decay)
    kw = dict(capacity=C, tau=0.6, log_decay=g, score=score, return_aux=True)
    with tuning(dla_chunk=chunk, dla_split=split):
        res = gpu_run(attnkit.dynamic_linear_attention, q, k, v, lam, **kw)
        cres = attnkit.dynamic_linear_attention(q, k, v, lam, **kw)
    return (q, k, v, lam, kw), res, cres


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", DLA_V2_CASES, ids=[c[0] for c in DLA_V2_CASES])
def test_dla_prefill_chunks(rng, dtype, case):
    need("dynamic_linear_attention")
    (q, k, v, lam, kw), res, cres = _dla_v2_run(case, dtype, rng, 0)
    rres = ref.dynamic_linear_attention(q, k, v, lam, **kw)
    nres = ref.dynamic_linear_attention(q, k, v, lam, _dtype=np.float32, **kw) if dtype != F64 else rres
    _dla_compare(res, cres, rres, nres, np.dtype(dtype))


@pytest.mark.parametrize("dtype", [F32, F16, F64], ids=["f32", "f16", "f64"])
@pytest.mark.parametrize("case", [DLA_V2_CASES[i] for i in (1, 2, 4, 5)], ids=["multi", "multi-decay", "d64", "chunk7"])
def test_dla_prefill_split_invariant(dtype, case):
    """Every column split gives the same bits (each element is computed by the same operations whichever
    block owns it; the scan runs identically in every block), and the CPU's decisions."""
    need("dynamic_linear_attention")
    base = None
    for split in (1, 2, 3, 4, 8, 0):
        rng = np.random.default_rng(1234)
        _, res, cres = _dla_v2_run(case, dtype, rng, split)
        for name in ("boundaries", "merged"):
            same(getattr(res[2], name), getattr(cres[2], name), f"{name} (split {split})")
        bits = [np.asarray(x).tobytes() for x in (res[0], res[1].states, res[1].counts, res[1].info, res[1].starts,
                                                   res[1].size, res[2].scores, res[2].boundaries, res[2].merged)]
        if base is None:
            base = bits
        else:
            assert bits == base, f"split {split} gives other bits than split 1"


@pytest.mark.parametrize("dtype", [F32, F16, F64], ids=["f32", "f16", "f64"])
@pytest.mark.parametrize("decay", [None, "rand"])
@pytest.mark.parametrize("split", [0, 1, 3])
def test_dla_prefill_pieces(rng, dtype, decay, split):
    """Prefill in pieces of odd lengths (37, 64, 1, 55: chunk boundaries inside and across pieces) with the
    device cache carried, against the CPU in the same pieces and against one GPU call over every token."""
    need("dynamic_linear_attention")
    B, H, T, Dk, Dv, C = 2, 2, 157, 16, 16, 4
    q, k, v, lam, g = _dla_problem(rng, B, H, T, Dk, Dv, C, dtype, decay)
    kw = dict(capacity=C, tau=0.6, score="token_vs_state", return_aux=True)
    dcache, ccache, ys, bnds = None, None, [], []
    part = lambda x, a, b: None if x is None else x[:, :, a:b]  # noqa: E731
    with tuning(dla_split=split):
        for a, b in [(0, 37), (37, 101), (101, 102), (102, T)]:
            args = tuple(part(x, a, b) for x in (q, k, v, lam))
            res = attnkit.dynamic_linear_attention(*dev(args), log_decay=dev(part(g, a, b)), cache=dcache, **kw)
            _check_on_device(res, 0)
            cres = attnkit.dynamic_linear_attention(*args, log_decay=part(g, a, b), cache=ccache, **kw)
            hres = host(res)
            for name in ("boundaries", "merged"):
                same(getattr(hres[2], name), getattr(cres[2], name), f"{name} at tokens {a}:{b}")
            for name in ("counts", "starts", "size"):
                same(getattr(hres[1], name), getattr(cres[1], name), f"cache.{name} at tokens {a}:{b}")
            tol = 1e-12 if dtype == F64 else 1e-4
            np.testing.assert_allclose(to_f64(hres[0]), to_f64(cres[0]), rtol=tol * 30, atol=tol * 30)
            np.testing.assert_allclose(hres[1].states, cres[1].states, rtol=tol * 10, atol=tol * 10)
            dcache, ccache = res[1], cres[1]
            ys.append(hres[0])
            bnds.append(hres[2].boundaries)
        whole = host(attnkit.dynamic_linear_attention(*dev((q, k, v, lam)), log_decay=dev(g), **kw))
    np.testing.assert_array_equal(np.concatenate(bnds, axis=2), whole[2].boundaries)
    for name in ("counts", "starts", "size"):
        same(getattr(host(dcache), name), getattr(whole[1], name), f"cache.{name}: pieces vs one call")
    tol = 1e-11 if dtype == F64 else 2e-3
    np.testing.assert_allclose(to_f64(np.concatenate(ys, axis=2)), to_f64(whole[0]), rtol=tol, atol=tol)
    np.testing.assert_allclose(host(dcache).states, whole[1].states, rtol=tol, atol=tol)


# ------------------------------------------------------- the v2 / v3 decode steps (dla_decode_v2.cu, _v3.cu)
# Every decode step (T = 1) runs cuda/dla_decode_v3.cu (tuning dla_decode = 0; v3 is v2 in one kernel, the same
# bits), dla_decode = 2 takes v2 (cuda/dla_decode_v2.cu); the first kernel (cuda/dla_decode.cu) is gone since
# session 27. The cases start from a CPU-made cache of T0
# tokens (0: an empty cache) and take enough steps to fill the cache and merge (tau = 0: every token opens a
# state); "odd" (Dv % 4 != 0) and "unaligned" (cache states at a 4-byte offset) take the scalar fallback of
# the state pass, "wide" several column tiles, float64 its 2-double packs.
DLA_DEC_CASES = [
    # id, B, H, Dk, Dv, C, tau, decay, T0, layout of the input cache's states
    ("small-dec", 1, 2, 8, 8, 3, 0.6, "rand", 5, "contig"),  # in the sanitizer subset (-k small)
    ("empty", 2, 2, 16, 16, 4, 0.0, None, 0, "contig"),
    ("d64-c16", 2, 2, 64, 64, 16, 0.0, None, 20, "contig"),
    ("d64-c16-decay", 1, 3, 64, 64, 16, 0.6, "rand", 40, "contig"),
    ("drift", 1, 2, 16, 24, 5, 0.6, "rand", 12, "contig"),
    ("odd", 1, 2, 13, 7, 4, 0.0, "rand", 6, "contig"),
    ("cap1", 1, 2, 16, 16, 1, 0.6, None, 9, "contig"),
    ("unaligned", 1, 2, 16, 16, 5, 0.0, None, 7, "offset"),
    ("wide", 1, 1, 32, 200, 3, 0.6, None, 8, "contig"),
]


def _cache_layout(c, layout):
    """The CPU cache c with its states in `layout`: "contig" as is, "offset" a view one element into a
    wider buffer (rows padded to Dv + 4: 16-byte rows, but a base 4 or 8 bytes past a 16-byte boundary)."""
    if layout == "contig" or c is None:
        return c
    B, H, C, Dk, Dv = c.states.shape
    buf = np.zeros((B, H, C, Dk, Dv + 4), c.states.dtype)
    st = buf[..., 1:Dv + 1]
    st[...] = c.states
    return attnkit.DLACache(st, c.counts, c.info, c.starts, c.size, c.position)


@pytest.mark.parametrize("dtype", [F32, F16, F64], ids=["f32", "f16", "f64"])
@pytest.mark.parametrize("case", DLA_DEC_CASES, ids=[c[0] for c in DLA_DEC_CASES])
def test_dla_decode_v2(rng, dtype, case):
    """Token-by-token decode from a device cache: each step against the CPU step on the CPU cache, and the
    decode kernels (tuning dla_decode 0: v3 where enabled, 2: v2) on the same device cache against each
    other."""
    need("dynamic_linear_attention")
    _, B, H, Dk, Dv, C, tau, decay, T0, layout = case
    steps = C + 6
    T = T0 + steps
    q, k, v, lam, g = _dla_problem(rng, B, H, T, Dk, Dv, C, dtype, decay)
    score = "state_drift" if case[0] == "drift" else "token_vs_state"
    kw = dict(capacity=C, tau=tau, score=score, return_aux=True)
    part = lambda x, a, b: None if x is None else x[:, :, a:b]  # noqa: E731
    ccache = None
    if T0:
        ccache = attnkit.dynamic_linear_attention(*(part(x, 0, T0) for x in (q, k, v, lam)),
                                                  log_decay=part(g, 0, T0), **kw)[1]
    dcache = dev(_cache_layout(ccache, layout))
    tol = 1e-12 if dtype == F64 else 1e-4
    for t in range(T0, T):
        args = tuple(part(x, t, t + 1) for x in (q, k, v, lam))
        gt = part(g, t, t + 1)
        with tuning(dla_decode=0):  # gpu_run uploads the NumPy operands (dcache is on the device already)
            hres = gpu_run(attnkit.dynamic_linear_attention, *args, log_decay=gt, cache=dcache, **kw)
        with tuning(dla_decode=2):
            res2 = host(attnkit.dynamic_linear_attention(*dev(args), log_decay=dev(gt), cache=dcache, **kw))
        cres = attnkit.dynamic_linear_attention(*args, log_decay=gt, cache=ccache, **kw)
        for other, who in ((cres, "CPU"), (res2, "second kernel")):
            for name in ("boundaries", "merged"):
                same(getattr(hres[2], name), getattr(other[2], name), f"{name} at token {t} vs the {who}")
            for name in ("counts", "starts", "size"):
                same(getattr(hres[1], name), getattr(other[1], name), f"cache.{name} at token {t} vs the {who}")
            np.testing.assert_allclose(to_f64(hres[0]), to_f64(other[0]), rtol=tol * 30, atol=tol * 30,
                                       err_msg=f"y at token {t} vs the {who}")
            np.testing.assert_allclose(hres[1].states, other[1].states, rtol=tol, atol=tol,
                                       err_msg=f"cache.states at token {t} vs the {who}")
            np.testing.assert_allclose(to_f64(hres[1].info), to_f64(other[1].info), rtol=tol * 10, atol=tol * 10,
                                       err_msg=f"cache.info at token {t} vs the {who}")
        # the next step from the GPU's cache (gpu_run returns NumPy: uploaded again, in the case's layout)
        dcache, ccache = dev(_cache_layout(hres[1], layout)), cres[1]
    if C >= 2 and tau <= 0 and T0 + steps > C:
        assert (np.asarray(hres[1].size) == C).all()  # the cache filled, so the last steps merged


def test_dla_decode_large_capacity():
    """A capacity past v3's shared buffers (cuda/dla_decode_v3.cu kMaxSharedC = 256): the default path falls
    back to v2 and still agrees with the CPU and with v2 (tuning dla_decode = 2), merging into a full cache."""
    need("dynamic_linear_attention")
    rng = np.random.default_rng(12)
    B, H, D, C = 1, 2, 4, 300
    T = C + 2
    q, k, v, lam, _ = _dla_problem(rng, B, H, T, D, D, C, F32, None)
    kw = dict(capacity=C, tau=0.0, return_aux=True)  # every token opens a state: full after C, then merges
    ccache = attnkit.dynamic_linear_attention(q[:, :, :C], k[:, :, :C], v[:, :, :C], lam[:, :, :C], **kw)[1]
    dcache = dev(ccache)
    for t in range(C, T):
        args = tuple(x[:, :, t:t + 1] for x in (q, k, v, lam))
        hres = gpu_run(attnkit.dynamic_linear_attention, *args, cache=dcache, **kw)
        with tuning(dla_decode=2):
            res2 = host(attnkit.dynamic_linear_attention(*dev(args), cache=dcache, **kw))
        cres = attnkit.dynamic_linear_attention(*args, cache=ccache, **kw)
        for other, who in ((cres, "CPU"), (res2, "second kernel")):
            for name in ("boundaries", "merged"):
                same(getattr(hres[2], name), getattr(other[2], name), f"{name} at token {t} vs the {who}")
            for name in ("counts", "starts", "size"):
                same(getattr(hres[1], name), getattr(other[1], name), f"cache.{name} at token {t} vs the {who}")
            np.testing.assert_allclose(to_f64(hres[0]), to_f64(other[0]), rtol=3e-3, atol=3e-3,
                                       err_msg=f"y at token {t} vs the {who}")
            np.testing.assert_allclose(hres[1].states, other[1].states, rtol=1e-4, atol=1e-4,
                                       err_msg=f"cache.states at token {t} vs the {who}")
        assert (np.asarray(hres[2].merged) >= 0).all()  # a full cache: the step merged
        dcache, ccache = dev(hres[1]), cres[1]


def test_dla_device_values_checked_small():
    """The validator's reads of device values (log_decay and the cache's size / counts / starts, read with one
    wait: validate/dla.cpp, cuda::download_many) still catch bad values, each array in turn, with a decay
    and a cache in the same call (four arrays in one read), before any kernel runs; a good step after the
    bad ones must still work."""
    need("dynamic_linear_attention")
    rng = np.random.default_rng(11)
    B, H, T, D, C = 2, 2, 10, 8, 3
    q, k, v, lam, g = _dla_problem(rng, B, H, T + 1, D, D, C, F32, "rand")
    _, c = attnkit.dynamic_linear_attention(q[:, :, :T], k[:, :, :T], v[:, :, :T], lam[:, :, :T], capacity=C,
                                            log_decay=g[:, :, :T])
    step = tuple(x[:, :, T:] for x in (q, k, v, lam))
    good = attnkit.dynamic_linear_attention(*step, capacity=C, log_decay=g[:, :, T:], cache=c)
    got = host(attnkit.dynamic_linear_attention(*dev(step), capacity=C, log_decay=dev(g[:, :, T:]), cache=dev(c)))
    np.testing.assert_allclose(to_f64(got[0]), to_f64(good[0]), rtol=1e-4, atol=1e-4)
    same(got[1].counts, good[1].counts, "cache.counts")

    def bad(name, fix, match, g_=None):
        arrs = {f: np.array(getattr(c, f)) for f in ("states", "counts", "info", "starts", "size")}
        fix(arrs)
        bc = attnkit.DLACache(**arrs, position=c.position)
        with pytest.raises(ValueError, match=match):
            attnkit.dynamic_linear_attention(*dev(step), capacity=C, cache=dev(bc),
                                             log_decay=dev(g[:, :, T:] if g_ is None else g_))

    bad("size", lambda a: a["size"].__setitem__((1, 1), C + 1), "cache.size")
    bad("size", lambda a: a["size"].__setitem__((0, 0), -1), "cache.size")
    bad("size", lambda a: a["size"].__setitem__((0, 1), 1 << 40), "cache.size")
    last = int(np.asarray(c.size)[0, 1]) - 1  # the open entry: its count past the position
    bad("counts", lambda a: a["counts"].__setitem__((0, 1, last), a["counts"][0, 1, last] + 1), "cache.counts")
    bad("starts", lambda a: a["starts"].__setitem__((1, 0, 0), 1), "cache.starts")
    pos = np.abs(g[:, :, T:]) + 0.5
    bad("log_decay", lambda a: None, "log_decay must be finite", g_=pos)
    again = host(attnkit.dynamic_linear_attention(*dev(step), capacity=C, log_decay=dev(g[:, :, T:]), cache=dev(c)))
    np.testing.assert_allclose(to_f64(again[0]), to_f64(good[0]), rtol=1e-4, atol=1e-4)
    same(again[1].counts, good[1].counts, "cache.counts of a good step after the bad ones")


# ------------------------------------------------------- DLA prefill v4 (gate dla_prefill_v4, dla_prefill_v4.cuh)
# Every prefill with tuning dla_split >= 0 (the default 0 included) runs v4's five kernels: (A1) the chunk-local
# score tables, every chunk at once; (A2) the carried column, lookups and boundaries, a block per item; (B) the
# merge chain, a warp per item (thread 0 for C > 32); (C1) the states at every chunk start per column slice; (C2)
# the readout, every chunk at once (tests/cuda_emu/test_dla_v2.cpp emulates them against the CPU, and v4 == v4
# under other grids and splits). The cases: merges at every token into a full cache (tau = -1), ties (zero keys:
# every score 0), C = 32 (every lane of pass B's warp an entry) and 33 (thread 0's chain), odd lengths and
# chunks, a cache carried in, empty sizes, and long ones (many chunks, T not a multiple of 32 or of the chunk);
# decisions against the CPU in float64 (any data) and on piecewise data (scores far from tau), and every split
# the same bits. (Until session 27 these cases also checked v4 == v3 == v2 bit for bit; v2 and v3 were removed.)
DLA_BASE_CASES = [
    # id, B, H, T, Dk, Dv, C, score, decay, chunk, tau, carried cache tokens, zero keys
    ("merge-every-c16", 1, 2, 200, 64, 64, 16, "token_vs_state", None, 0, -1.0, 0, False),
    ("merge-every-c16-cache-decay", 2, 2, 131, 16, 24, 16, "token_vs_state", "rand", 0, -1.0, 40, False),
    ("c32-cache", 1, 2, 150, 8, 8, 32, "state_drift", None, 0, -1.0, 45, False),
    ("c33", 1, 2, 90, 8, 8, 33, "token_vs_state", None, 0, -1.0, 0, False),
    ("ties", 1, 2, 100, 8, 8, 6, "token_vs_state", None, 9, -1.0, 20, True),
    ("piecewise-odd", 2, 1, 157, 13, 9, 5, "token_vs_state", "rand", 7, 0.6, 0, False),
    ("piecewise-cap2", 1, 2, 140, 16, 16, 2, "token_vs_state", None, 0, 0.6, 30, False),
    ("cap1", 1, 2, 70, 16, 16, 1, "token_vs_state", None, 0, 0.6, 0, False),
    ("empty-T-cache", 1, 2, 0, 8, 8, 4, "token_vs_state", None, 0, 0.6, 10, False),
    ("empty-B", 0, 2, 20, 8, 8, 4, "token_vs_state", None, 0, 0.6, 0, False),
]


def _dla_case_inputs(case, dtype, rng):
    _, B, H, T, Dk, Dv, C, score, decay, chunk, tau, T0, zero_keys = case
    q, k, v, lam, g = _dla_problem(rng, B, H, T0 + T, Dk, Dv, C, dtype, decay)
    if zero_keys:
        k = np.zeros_like(k)
    kw = dict(capacity=C, tau=tau, score=score, return_aux=True)
    cache = None
    if T0 > 0:  # a cache from the CPU over the first T0 tokens
        part = tuple(x[:, :, :T0] for x in (q, k, v, lam))
        cache = attnkit.dynamic_linear_attention(*part, log_decay=None if g is None else g[:, :, :T0], **kw)[1]
    rest = tuple(x[:, :, T0:] for x in (q, k, v, lam))
    kw.update(log_decay=None if g is None else g[:, :, T0:], cache=cache)
    return rest, kw, chunk


def _dla_bits(res):
    y, c, a = res
    return [np.asarray(x).tobytes() for x in (y, c.states, c.counts, c.info, c.starts, c.size, a.scores,
                                              a.boundaries, a.merged)]


_DLA_SCRIPT = """
import sys
import cupy, numpy as np, attnkit
d = np.load(sys.argv[1], allow_pickle=True)
res = {}
for name in d["names"]:
    kw = d[name + ":kw"].item()
    args = [cupy.asarray(d[name + ":" + x]) for x in ("q", "k", "v", "lam")]
    y, c, a = attnkit.dynamic_linear_attention(*args, return_aux=True, **kw)
    for f, x in (("y", y), ("states", c.states), ("counts", c.counts), ("merged", a.merged), ("scores", a.scores)):
        res[name + ":" + f] = cupy.asnumpy(x)
res["enabled"] = np.array(attnkit._core.cuda_has_kernel("dla_prefill_v4"))
np.savez(sys.argv[2], **res)
"""


DLA_V4_CASES = DLA_BASE_CASES + [
    ("long-merge-every-c16-cache", 1, 2, 1000, 32, 32, 16, "token_vs_state", "rand", 0, -1.0, 50, False),
    ("long-piecewise-c4-chunk16", 2, 1, 700, 16, 16, 4, "state_drift", None, 16, 0.6, 33, False),
    ("long-c32-chunk1", 1, 1, 130, 8, 8, 32, "token_vs_state", None, 1, -1.0, 40, False),
    # in the sanitizer subset (-k small): merges into a full cache carried in, decay, chunks of 9
    ("small-v4-merge-cache", 1, 2, 40, 8, 8, 3, "token_vs_state", "rand", 9, -1.0, 10, False),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", DLA_V4_CASES, ids=[c[0] for c in DLA_V4_CASES])
def test_dla_prefill_v4_cases(rng, dtype, case):
    need("dynamic_linear_attention")
    args, kw, chunk = _dla_case_inputs(case, dtype, rng)
    with tuning(dla_chunk=chunk):
        r4 = gpu_run(attnkit.dynamic_linear_attention, *args, **kw)  # v4, automatic split
        r4s = []
        for split in (1, 3):
            with tuning(dla_split=split):
                r4s.append(gpu_run(attnkit.dynamic_linear_attention, *args, **kw))
        cres = attnkit.dynamic_linear_attention(*args, **kw)
    for r in r4s:
        assert _dla_bits(r) == _dla_bits(r4), "v4: another column split gives other bits"
    if np.dtype(dtype) == F64 or case[10] > 0:  # decisions: float64, or piecewise data under tau = 0.6
        for name in ("boundaries", "merged"):
            same(getattr(r4[2], name), getattr(cres[2], name), name)
        for name in ("counts", "starts", "size"):
            same(getattr(r4[1], name), getattr(cres[1], name), f"cache.{name}")
    # Wherever the decisions agree with the CPU's (always above; on random data under tau = -1 they may round
    # apart in the low precisions), the outputs, scores and states must too.
    if all(np.array_equal(getattr(r4[2], n), getattr(cres[2], n)) for n in ("boundaries", "merged")):
        tol = 1e-10 if np.dtype(dtype) == F64 else 2e-2
        for what, x, z in (("y", r4[0], cres[0]), ("states", r4[1].states, cres[1].states),
                           ("scores", r4[2].scores, cres[2].scores)):
            rx, cx = to_f64(x), to_f64(z)
            scale = max(1.0, float(np.abs(cx).max(initial=0)))
            assert np.abs(rx - cx).max(initial=0) <= tol * scale, f"{what}: v4 vs CPU"


def test_dla_prefill_v4_off(rng, tmp_path):
    """ATTNKIT_DLA_V4=0 (read once per process: a subprocess) turns v4 off: the call gives the bits of
    tuning dla_split = -1 (the first kernel, dla_prefill.cu) in this process, and agrees with v4 up to rounding."""
    import os
    import subprocess
    import sys

    from gpu_common import FAKE, SANITIZER

    need("dynamic_linear_attention")
    if FAKE or SANITIZER:
        pytest.skip("runs CuPy in a subprocess")
    B, H, T, Dk, Dv, C = 1, 2, 150, 32, 32, 16
    q, k, v, lam, _ = _dla_problem(rng, B, H, T, Dk, Dv, C, F32, None)
    kw = dict(capacity=C, tau=-1.0)
    arrays = {"names": np.array(["c16"]), "c16:q": q, "c16:k": k, "c16:v": v, "c16:lam": lam,
              "c16:kw": np.array(kw, dtype=object)}
    with tuning(dla_split=-1):
        y3, c3, a3 = gpu_run(attnkit.dynamic_linear_attention, q, k, v, lam, return_aux=True, **kw)
    y4, c4, a4 = gpu_run(attnkit.dynamic_linear_attention, q, k, v, lam, return_aux=True, **kw)
    if np.array_equal(a3.merged, a4.merged):  # float32 merges may round apart between the kernels
        np.testing.assert_allclose(y4, y3, rtol=2e-3, atol=2e-3 * max(1.0, float(np.abs(y3).max())))
    np.savez(tmp_path / "in.npz", **arrays)
    r = subprocess.run([sys.executable, "-c", _DLA_SCRIPT, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                       env=dict(os.environ, ATTNKIT_CUDA_UNVERIFIED="1", ATTNKIT_DLA_V4="0"), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    for f, x in (("y", y3), ("states", c3.states), ("merged", a3.merged)):
        assert np.asarray(x).tobytes() == got["c16:" + f].tobytes(), f"{f}: ATTNKIT_DLA_V4=0"


# ------------------------------------------------------- DLA prefill v5 (gate dla_prefill_v5, dla_prefill_v5.cuh)
# Under ATTNKIT_CUDA_UNVERIFIED=1 every prefill that takes v4 runs v5 instead where its gate is open: v4's passes
# A1, A2 and B, then ONE pass C (one block per (item, column slice), the slice's states in shared memory, the chunks
# in order: readout, then the states in place) instead of v4's C1 (every chunk-start state to global memory) and C2.
# Every value is v4's operation in v4's order (tests/cuda_emu/test_dla_v2.cpp: v5 == v4 bit for bit, emulated), so
# v5 must give v4's bits (tuning dla_split = -2) for every column split (dla_split > 0 sets v5's), and the CPU's
# decisions.
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", DLA_V4_CASES, ids=[c[0] for c in DLA_V4_CASES])
def test_dla_prefill_v5_same_bits_as_v4(rng, dtype, case):
    need("dynamic_linear_attention")
    args, kw, chunk = _dla_case_inputs(case, dtype, rng)
    with tuning(dla_chunk=chunk):
        with tuning(dla_split=-2):  # v4's C1 + C2
            r4 = gpu_run(attnkit.dynamic_linear_attention, *args, **kw)
        r5 = gpu_run(attnkit.dynamic_linear_attention, *args, **kw)  # v5, automatic split
        r5s = []
        for split in (1, 2, 5):
            with tuning(dla_split=split):
                r5s.append(gpu_run(attnkit.dynamic_linear_attention, *args, **kw))
        cres = attnkit.dynamic_linear_attention(*args, **kw)
    assert _dla_bits(r5) == _dla_bits(r4), "v5 gives other bits than v4"
    for r in r5s:
        assert _dla_bits(r) == _dla_bits(r5), "v5: another column split gives other bits"
    if np.dtype(dtype) == F64 or case[10] > 0:  # decisions: float64, or piecewise data under tau = 0.6
        for name in ("boundaries", "merged"):
            same(getattr(r5[2], name), getattr(cres[2], name), name)
        for name in ("counts", "starts", "size"):
            same(getattr(r5[1], name), getattr(cres[1], name), f"cache.{name}")
    if all(np.array_equal(getattr(r5[2], n), getattr(cres[2], n)) for n in ("boundaries", "merged")):
        tol = 1e-10 if np.dtype(dtype) == F64 else 2e-2
        for what, x, z in (("y", r5[0], cres[0]), ("states", r5[1].states, cres[1].states)):
            rx, cx = to_f64(x), to_f64(z)
            scale = max(1.0, float(np.abs(cx).max(initial=0)))
            assert np.abs(rx - cx).max(initial=0) <= tol * scale, f"{what}: v5 vs CPU"


def test_dla_prefill_v5_off(rng, tmp_path):
    """ATTNKIT_DLA_V5=0 (read once per process: a subprocess) turns v5 off: the call gives the bits of tuning
    dla_split = -2 (v4's C1 + C2) in this process, which are v5's."""
    import os
    import subprocess
    import sys

    from gpu_common import FAKE, SANITIZER

    need("dynamic_linear_attention")
    if FAKE or SANITIZER:
        pytest.skip("runs CuPy in a subprocess")
    B, H, T, Dk, Dv, C = 2, 2, 150, 64, 64, 16
    q, k, v, lam, _ = _dla_problem(rng, B, H, T, Dk, Dv, C, F32, "rand")
    kw = dict(capacity=C, tau=-1.0)
    arrays = {"names": np.array(["c16"]), "c16:q": q, "c16:k": k, "c16:v": v, "c16:lam": lam,
              "c16:kw": np.array(kw, dtype=object)}
    with tuning(dla_split=-2):
        y4, c4, a4 = gpu_run(attnkit.dynamic_linear_attention, q, k, v, lam, return_aux=True, **kw)
    y5, c5, a5 = gpu_run(attnkit.dynamic_linear_attention, q, k, v, lam, return_aux=True, **kw)
    for x, z in ((y4, y5), (c4.states, c5.states), (a4.merged, a5.merged)):
        assert np.asarray(x).tobytes() == np.asarray(z).tobytes(), "v5 vs v4 bits"
    np.savez(tmp_path / "in.npz", **arrays)
    r = subprocess.run([sys.executable, "-c", _DLA_SCRIPT, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                       env=dict(os.environ, ATTNKIT_CUDA_UNVERIFIED="1", ATTNKIT_DLA_V5="0"), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    for f, x in (("y", y4), ("states", c4.states), ("merged", a4.merged)):
        assert np.asarray(x).tobytes() == got["c16:" + f].tobytes(), f"{f}: ATTNKIT_DLA_V5=0"
