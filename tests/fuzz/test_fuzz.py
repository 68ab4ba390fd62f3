"""Fuzz harness: every public function called with hypothesis-drawn arguments — small arrays of every
dtype and layout (slices, reversals, broadcast zero strides) holding NaN / +-inf / huge values, extreme
integers (0, -1, 2^31, 2^63 - 1, 2^64, 10^15 ...) and wrong types for every argument.

The property, for every call: it returns a result, or raises ValueError / TypeError; never a crash (the
process dies: a failure of the whole run), a hang (a watchdog aborts with a traceback after
ATTNKIT_FUZZ_TIMEOUT seconds), a runaway allocation (RLIMIT_AS caps the process at
ATTNKIT_FUZZ_MEM_GB while fuzzing, unless AddressSanitizer is loaded), or any other exception. Results
of the exact, sparse and linear families are also compared with the float64 oracle where the inputs
are in its domain: the same non-finite entries, close finite ones.

Budget: ATTNKIT_FUZZ_EXAMPLES examples per target (default 60; CI runs the default, longer runs by
hand with e.g. ATTNKIT_FUZZ_EXAMPLES=100000), seed ATTNKIT_FUZZ_SEED (default 0; the same seed draws the
same calls). The summary line at the end counts the calls and their outcomes.
"""

from __future__ import annotations

import collections
import dataclasses
import faulthandler
import os
import sys

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import attnkit
from attnkit import layouts
from attnkit import reference as ref

EXAMPLES = int(os.environ.get("ATTNKIT_FUZZ_EXAMPLES", "60"))
SEED = int(os.environ.get("ATTNKIT_FUZZ_SEED", "0"))
TIMEOUT = float(os.environ.get("ATTNKIT_FUZZ_TIMEOUT", "120"))
MEM_GB = float(os.environ.get("ATTNKIT_FUZZ_MEM_GB", "4"))

FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False, print_blob=True,
                suppress_health_check=list(HealthCheck))

STATS = collections.Counter()

BF16 = np.dtype(ml_dtypes.bfloat16)
FLOATS = [np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16), BF16]
ODD_DTYPES = [np.dtype(np.int32), np.dtype(np.bool_), np.dtype(np.complex64), np.dtype(np.int8)]
EXTREME_INTS = [0, 1, -1, 2, 3, 7, 64, 2**31 - 2, 2**31 - 1, 2**31, 2**32, 2**62, 2**63 - 1, -2**63, 2**63,
                2**64, 10**15, -10**15, 10**30]
WRONG = [None, "x", 1.5, float("nan"), True, [1, 2], (3,), object(), np.float32(2.0), b"\x00"]


def _asan_loaded() -> bool:
    return any("asan" in line for line in open("/proc/self/maps")) if os.path.exists("/proc/self/maps") else False


@pytest.fixture(scope="module", autouse=True)
def guards():
    """Memory cap and the summary line; the per-call watchdog is armed in `run`."""
    import resource

    old = resource.getrlimit(resource.RLIMIT_AS)
    capped = not _asan_loaded() and MEM_GB > 0
    if capped:
        resource.setrlimit(resource.RLIMIT_AS, (int(MEM_GB * 2**30), old[1]))
    yield
    if capped:
        resource.setrlimit(resource.RLIMIT_AS, old)
    total = sum(v for k, v in STATS.items() if k.startswith("outcome:"))
    line = (f"attnkit fuzz: seed={SEED} examples/target={EXAMPLES} calls={total} "
            + " ".join(f"{k}={v}" for k, v in sorted(STATS.items())))
    sys.stderr.write("\n" + line + "\n")
    report = os.environ.get("ATTNKIT_FUZZ_REPORT")
    if report:
        with open(report, "a") as f:
            f.write(line + "\n")


def run(name, fn, *args, **kwargs):
    """Calls fn under the watchdog; returns (result, None) or (None, exc) for ValueError / TypeError.
    Anything else propagates (a failure)."""
    faulthandler.dump_traceback_later(TIMEOUT, exit=True)
    try:
        r = fn(*args, **kwargs)
        STATS["outcome:ok"] += 1
        return r, None
    except (ValueError, TypeError) as e:
        STATS[f"outcome:{type(e).__name__}"] += 1
        assert str(e), f"{name}: an empty error message"
        return None, e
    finally:
        faulthandler.cancel_dump_traceback_later()


# ------------------------------------------------------------------------------------------ strategies
def ints():
    return st.one_of(st.integers(-3, 70), st.sampled_from(EXTREME_INTS))


def anything_int():
    """An int argument: mostly sane or extreme integers, sometimes a wrong type."""
    return st.one_of(ints(), ints(), ints(), st.sampled_from(WRONG))


def flag():
    return st.one_of(st.booleans(), st.booleans(), st.booleans(), st.sampled_from(["no", 0, 1, None, np.bool_(True)]))


@st.composite
def array(draw, shape, dtype=None, odd=True, special=True):
    """An array of `shape` (NumPy), any float dtype (sometimes an odd one), through a random layout,
    sometimes holding NaN / +-inf / huge values."""
    if dtype is None:
        pool = FLOATS + (ODD_DTYPES if odd else [])
        dtype = draw(st.sampled_from(pool if draw(st.integers(0, 9)) == 0 else FLOATS))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    base = rng.standard_normal(tuple(s + 2 for s in shape))
    if special and draw(st.integers(0, 3)) == 0 and base.size:
        kind = draw(st.sampled_from(["nan", "inf", "-inf", "huge", "mixed"]))
        n = draw(st.integers(1, 4))
        pos = rng.integers(0, base.size, n)
        val = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "huge": 3e38}.get(kind)
        base.flat[pos] = val if val is not None else rng.choice([np.nan, np.inf, -np.inf, 1e30], n)
    with np.errstate(over="ignore", invalid="ignore"):
        base = base.astype(dtype) if dtype.kind != "b" else base > 0
    view = base[tuple(slice(1, 1 + s) for s in shape)]
    mode = draw(st.integers(0, 5))
    if mode == 1 and view.ndim:
        view = view[..., ::-1]
    elif mode == 2 and view.ndim >= 2:
        view = np.ascontiguousarray(np.swapaxes(view, -1, -2)).swapaxes(-1, -2)
    elif mode == 3 and view.ndim and view.shape[0] > 0:  # broadcast (zero stride) first dim
        view = np.broadcast_to(view[:1], view.shape)
    return view


@st.composite
def attention_operands(draw, odd=True, special=True, same_len=False):
    rank = draw(st.sampled_from([2, 3, 4, 4]))
    B, Hkv, G = draw(st.integers(0, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 3))
    Sq, Sk = draw(st.sampled_from([0, 1, 2, 7, 17, 33, 70])), draw(st.sampled_from([0, 1, 3, 16, 33, 65]))
    if same_len:
        Sk = Sq
    D, Dv = draw(st.sampled_from([1, 3, 8, 17])), draw(st.sampled_from([1, 4, 9]))
    if rank < 4:
        B = 1
    if rank < 3:
        Hkv = G = 1
    lead = (B, Hkv * G)[4 - rank:] if rank > 2 else ()
    klead = (B, Hkv)[4 - rank:] if rank > 2 else ()
    dtype = draw(st.sampled_from(FLOATS))
    if odd and draw(st.integers(0, 15)) == 0:
        dtype = draw(st.sampled_from(ODD_DTYPES))
    q = draw(array(lead + (Sq, D), dtype, special=special))
    k = draw(array(klead + (Sk, D), dtype, special=special))
    v = draw(array(klead + (Sk, Dv), dtype, special=special))
    if odd and draw(st.integers(0, 20)) == 0:  # a mismatch somewhere
        which = draw(st.sampled_from(["q", "k", "v"]))
        bad = draw(st.sampled_from([None, 1.0, [[1.0]], np.zeros((2,), np.float32), np.zeros((1, 2, 3, 4, 5))]))
        q, k, v = [bad if n == which else x for n, x in zip("qkv", (q, k, v))]
    return q, k, v


def finite(*xs):
    return all(isinstance(x, np.ndarray) and x.dtype.kind == "f" or getattr(x, "dtype", None) == BF16 for x in xs) \
        and all(np.isfinite(np.asarray(x, np.float64)).all() for x in xs)


def floaty(*xs):
    return all(isinstance(x, np.ndarray) and (x.dtype in FLOATS) for x in xs)


def modest(*xs):
    """Values the float32 kernels and the float64 oracle agree on (no finite value near float32's
    overflow: 3e38 * 2 is inf in float32, not in float64)."""
    return all(not (np.abs(np.asarray(x, np.float64)[np.isfinite(np.asarray(x, np.float64))]) > 1e4).any() for x in xs)


def compare(out, want, dtype, what):
    out, want = np.asarray(out, np.float64), np.asarray(want, np.float64)
    assert out.shape == want.shape, (what, out.shape, want.shape)
    assert np.array_equal(np.isfinite(out), np.isfinite(want)), \
        f"{what}: non-finite entries differ from the oracle at {np.argwhere(np.isfinite(out) != np.isfinite(want))[:4]}"
    fin = np.isfinite(want)
    if fin.any():
        tol = {np.dtype(np.float64): 1e-9, np.dtype(np.float32): 2e-4, np.dtype(np.float16): 3e-2, BF16: 2e-1}[np.dtype(dtype)]
        scale = max(1.0, float(np.abs(want[fin]).max()))
        err = float(np.abs(out[fin] - want[fin]).max())
        assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol * scale:.3g}"
    STATS["oracle-checked"] += 1


# ------------------------------------------------------------------------------------------ targets
@FUZZ
@seed(SEED)
@given(ops=attention_operands(), data=st.data())
def test_fuzz_attention(ops, data):
    q, k, v = ops
    kw = {}
    if data.draw(st.booleans()):
        kw["causal"] = data.draw(flag())
    if data.draw(st.booleans()):
        kw["window"] = data.draw(st.one_of(st.tuples(st.one_of(st.none(), ints()), st.one_of(st.none(), ints())),
                                           st.sampled_from(WRONG)))
    shape4 = None
    if isinstance(q, np.ndarray) and isinstance(k, np.ndarray) and q.ndim >= 2 and k.ndim >= 2:
        shape4 = (q.shape[-2], k.shape[-2])
    if shape4 and data.draw(st.integers(0, 3)) == 0:
        kw["mask"] = data.draw(array(shape4, np.dtype(np.bool_)))
    if shape4 and data.draw(st.integers(0, 3)) == 0:
        kw["bias"] = data.draw(array(shape4))
    if data.draw(st.integers(0, 3)) == 0:
        kw["key_lengths"] = data.draw(st.one_of(ints(), st.lists(ints(), max_size=3), st.sampled_from(WRONG)))
    if data.draw(st.integers(0, 4)) == 0:
        kw["scale"] = data.draw(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(WRONG)))
    if data.draw(st.integers(0, 4)) == 0:
        kw["softcap"] = data.draw(st.one_of(st.floats(-1, 50), st.sampled_from([0.0, np.inf, np.nan, 1e-30]), st.sampled_from(WRONG)))
    if isinstance(q, np.ndarray) and q.ndim >= 3 and data.draw(st.integers(0, 4)) == 0:
        kw["alibi_slopes"] = data.draw(array((q.shape[-3],)))
    ret = data.draw(flag())
    fn = data.draw(st.sampled_from(["attention", "weights"]))
    if fn == "attention":
        r, err = run("attention", attnkit.attention, q, k, v, return_lse=ret, **kw)
    else:
        r, err = run("attention_weights", attnkit.attention_weights, q, k, **kw)
    if err is not None or not floaty(q, k, v) or not modest(q, k, v, kw.get("bias", 0), kw.get("alibi_slopes", 0)):
        return
    if isinstance(kw.get("scale"), float) and abs(kw["scale"]) > 1e3:
        return
    if kw.get("softcap") is not None and isinstance(kw["softcap"], float) and 0 < kw["softcap"] < 1e-3:
        return
    if fn == "attention":
        want = ref.attention(q, k, v, return_lse=ret, **kw)
        if ret:
            compare(r[0], want[0], q.dtype, "out")
            compare(r[1], want[1], q.dtype, "lse")
        else:
            compare(r, want, q.dtype, "out")
    else:
        compare(r, ref.attention_weights(q, k, **kw), q.dtype, "weights")


@FUZZ
@seed(SEED)
@given(data=st.data())
def test_fuzz_merge(data):
    n = data.draw(st.integers(0, 3))
    shape = data.draw(st.sampled_from([(3, 4), (2, 5, 1), (4,), (0, 3)]))
    outs = [data.draw(array(shape)) for _ in range(n)]
    lses = [data.draw(array(shape[:-1], data.draw(st.sampled_from([np.dtype(np.float32), np.dtype(np.float64)]))))
            for _ in range(n)]
    if data.draw(st.integers(0, 5)) == 0 and lses:
        lses[0] = data.draw(st.sampled_from(WRONG))
    run("merge_attention", attnkit.merge_attention, outs, lses)


@FUZZ
@seed(SEED)
@given(data=st.data())
def test_fuzz_layouts(data):
    which = data.draw(st.sampled_from(["sliding", "longformer", "bigbird", "fixed", "init", "dense", "union"]))
    S, b = data.draw(anything_int()), data.draw(anything_int())
    heads = data.draw(st.one_of(st.just(1), anything_int()))
    causal = data.draw(flag())
    if which == "sliding":
        L, _ = run(which, layouts.sliding_window, S, b, data.draw(anything_int()), causal=causal, num_heads=heads)
    elif which == "longformer":
        g = data.draw(st.one_of(st.lists(ints(), max_size=4), st.sampled_from(WRONG)))
        L, _ = run(which, layouts.longformer, S, b, data.draw(anything_int()), global_tokens=g if g is not None else (),
                   dilation=data.draw(anything_int()), causal=causal, num_heads=heads)
    elif which == "bigbird":
        L, _ = run(which, layouts.bigbird, S, b, seed=data.draw(anything_int()), window_blocks=data.draw(anything_int()),
                   global_blocks=data.draw(anything_int()), random_blocks=data.draw(anything_int()), causal=causal,
                   num_heads=heads)
    elif which == "fixed":
        L, _ = run(which, layouts.fixed, S, b, local_blocks=data.draw(anything_int()),
                   global_blocks=data.draw(anything_int()), causal=causal, num_heads=heads)
    elif which == "init":
        rp = data.draw(st.one_of(array((data.draw(st.integers(0, 6)),), odd=True),
                                 st.lists(ints(), max_size=6).map(np.array)))
        ci = data.draw(st.one_of(array((data.draw(st.integers(0, 6)),), odd=True),
                                 st.lists(ints(), max_size=6).map(np.array)))
        L, _ = run(which, attnkit.BlockLayout, rp, ci, block_size=b, num_heads=heads,
                   num_blocks=(data.draw(anything_int()), data.draw(anything_int())))
    elif which == "dense":
        blocks = data.draw(array((data.draw(st.integers(0, 3)), data.draw(st.integers(0, 5))),
                                 data.draw(st.sampled_from([np.dtype(np.bool_), np.dtype(np.float32)]))))
        L, _ = run(which, attnkit.BlockLayout.from_dense, blocks,
                   data.draw(st.one_of(anything_int(), st.tuples(ints(), ints()))))
    else:
        a = layouts.sliding_window(64, 8, 1)
        other = data.draw(st.sampled_from([layouts.sliding_window(64, 8, 2), layouts.fixed(64, 16), a, 3, None]))
        L, _ = run(which, layouts.union, a, other)
    if isinstance(L, attnkit.BlockLayout) and L.num_heads * L.num_blocks[0] * L.num_blocks[1] <= 4096:
        run("to_dense", L.to_dense)
        # a layout of reasonable geometry drives the kernel too
        (Sq0, Sq1), (Sk0, Sk1) = L.seq_lens
        if 0 < Sq0 <= 300 and 0 < Sk0 <= 300:
            rng = np.random.default_rng(0)
            q = rng.standard_normal((L.num_heads, Sq0, 4)).astype(np.float32)
            k = rng.standard_normal((1, Sk0, 4)).astype(np.float32)
            out, err = run("block_sparse_attention", attnkit.block_sparse_attention, q, k, k, L, causal=bool(causal is True))
            if err is None:
                compare(out, ref.block_sparse_attention(q, k, k, L, causal=bool(causal is True)), q.dtype, "block_sparse")


@FUZZ
@seed(SEED)
@given(ops=attention_operands(), data=st.data())
def test_fuzz_block_sparse(ops, data):
    q, k, v = ops
    Sq = q.shape[-2] if isinstance(q, np.ndarray) and q.ndim >= 2 else 1
    Sk = k.shape[-2] if isinstance(k, np.ndarray) and k.ndim >= 2 else 1
    bq, bk = data.draw(st.sampled_from([1, 4, 16, 2**62])), data.draw(st.sampled_from([1, 8, 2**40]))
    nqb, nkb = -(-Sq // bq), -(-Sk // bk)
    if data.draw(st.integers(0, 5)) == 0:  # a geometry that does not fit
        nqb += 1
    rng = np.random.default_rng(data.draw(st.integers(0, 99)))
    dense = rng.random((nqb, nkb)) < 0.6
    layout = data.draw(st.sampled_from(["layout", "wrong"]))
    L = attnkit.BlockLayout.from_dense(dense, (bq, bk)) if layout == "layout" else data.draw(st.sampled_from(WRONG))
    causal, ret = data.draw(flag()), data.draw(flag())
    kl = data.draw(st.one_of(st.none(), ints(), st.sampled_from(WRONG)))
    r, err = run("block_sparse_attention", attnkit.block_sparse_attention, q, k, v, L, causal=causal, key_lengths=kl,
                 return_lse=ret)
    if err is None and floaty(q, k, v) and modest(q, k, v):
        want = ref.block_sparse_attention(q, k, v, L, causal=causal, key_lengths=kl, return_lse=ret)
        compare(r[0] if ret else r, want[0] if ret else want, q.dtype, "block_sparse")


@FUZZ
@seed(SEED)
@given(ops=attention_operands(), data=st.data())
def test_fuzz_lsh(ops, data):
    q, k, v = ops
    nb = data.draw(st.one_of(st.sampled_from([2, 4, 8]), anything_int()))
    nh = data.draw(st.one_of(st.sampled_from([1, 2]), anything_int()))
    sd = data.draw(st.one_of(st.integers(0, 5), anything_int()))
    if data.draw(st.booleans()):
        r, err = run("lsh_buckets", attnkit.lsh_buckets, q, num_buckets=nb, num_hashes=nh, seed=sd)
        if err is None and floaty(q) and modest(q) and nh <= 4 and nb <= 64:
            np.testing.assert_array_equal(r, ref.lsh_buckets(q, num_buckets=nb, num_hashes=nh, seed=sd))
            STATS["oracle-checked"] += 1
        return
    causal = data.draw(flag())
    r, err = run("lsh_attention", attnkit.lsh_attention, q, k, v, num_buckets=nb, num_hashes=nh, seed=sd, causal=causal)
    if err is None and floaty(q, k, v) and modest(q, k, v) and nh <= 4 and nb <= 64:
        compare(r, ref.lsh_attention(q, k, v, num_buckets=nb, num_hashes=nh, seed=sd, causal=causal), q.dtype, "lsh")


@FUZZ
@seed(SEED)
@given(ops=attention_operands(same_len=True), data=st.data())
def test_fuzz_linear(ops, data):
    q, k, v = ops
    which = data.draw(st.sampled_from(["linear", "performer", "linformer"]))
    causal = data.draw(flag())
    kl = data.draw(st.one_of(st.none(), st.none(), ints(), st.sampled_from(WRONG)))
    D = q.shape[-1] if isinstance(q, np.ndarray) and q.ndim else 4
    S = k.shape[-2] if isinstance(k, np.ndarray) and k.ndim >= 2 else 4
    if which == "linear":
        fm = data.draw(st.one_of(st.sampled_from(["elu1", "relu", "identity"]), st.sampled_from(WRONG + ["softmax"])))
        eps = data.draw(st.one_of(st.sampled_from([1e-6, 0.0]), st.floats(allow_nan=True), st.sampled_from(WRONG)))
        norm = data.draw(flag())
        r, err = run(which, attnkit.linear_attention, q, k, v, feature_map=fm, causal=causal, normalize=norm, eps=eps,
                     key_lengths=kl)
        if err is None and floaty(q, k, v) and modest(q, k, v) and isinstance(eps, float) and eps >= 1e-6:
            compare(r, ref.linear_attention(q, k, v, feature_map=fm, causal=causal, normalize=norm, eps=eps,
                                            key_lengths=kl), q.dtype, "linear")
    elif which == "performer":
        m = data.draw(st.one_of(st.sampled_from([1, 8, 33]), anything_int()))
        W, err = run("random_features", attnkit.random_features, m, data.draw(st.one_of(st.just(D), anything_int())),
                     seed=data.draw(st.one_of(st.just(0), anything_int())), orthogonal=data.draw(flag()),
                     scaling=data.draw(st.one_of(st.sampled_from(["chi", "sqrt_d"]), st.sampled_from(WRONG))),
                     dtype=data.draw(st.sampled_from(FLOATS + [np.int32, None, "float32"])))
        if err is not None:
            W = data.draw(array((3, D)))
        kern = data.draw(st.one_of(st.sampled_from(["softmax", "relu"]), st.sampled_from(WRONG)))
        r, err = run(which, attnkit.performer_attention, q, k, v, W, kernel=kern, causal=causal, key_lengths=kl)
        if err is None and finite(q, k, v, W) and floaty(q, k, v) and modest(q, k, v, W):
            compare(r, ref.performer_attention(q, k, v, W, kernel=kern, causal=causal, key_lengths=kl), q.dtype, "performer")
    else:
        P = data.draw(st.one_of(st.sampled_from([1, 4, 16]), anything_int()))
        E, err = run("linformer_projection", attnkit.linformer_projection, P, data.draw(st.one_of(st.just(S), anything_int())),
                     seed=data.draw(st.one_of(st.just(0), anything_int())),
                     num_heads=data.draw(st.one_of(st.none(), anything_int())))
        if err is not None:
            E = data.draw(array((4, S)))
        ret = data.draw(flag())
        r, err = run(which, attnkit.linformer_attention, q, k, v, E, key_lengths=kl, return_lse=ret)
        # (the oracle materialises E k: only for projections of modest length)
        if err is None and finite(q, k, v, E) and floaty(q, k, v) and modest(q, k, v, E) and E.shape[-2] <= 4096:
            want = ref.linformer_attention(q, k, v, E, key_lengths=kl, return_lse=ret)
            compare(r[0] if ret else r, want[0] if ret else want, q.dtype, "linformer")


@FUZZ
@seed(SEED)
@given(ops=attention_operands(), data=st.data())
def test_fuzz_dla(ops, data):
    q, k, v = ops
    C = data.draw(st.one_of(st.sampled_from([1, 2, 4]), anything_int()))
    Cl = C if isinstance(C, int) and 1 <= C <= 8 else 2
    lead = q.shape[:-1] if isinstance(q, np.ndarray) and q.ndim >= 2 else (3,)
    lam = data.draw(array(lead + (Cl,)))
    tau = data.draw(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(WRONG)))
    g = data.draw(st.one_of(st.none(), array(lead), st.sampled_from(WRONG)))
    score = data.draw(st.one_of(st.sampled_from(["token_vs_state", "state_drift"]), st.sampled_from(WRONG)))
    r, err = run("dynamic_linear_attention", attnkit.dynamic_linear_attention, q, k, v, lam, capacity=C, tau=tau,
                 log_decay=g, score=score, return_aux=data.draw(flag()))
    if err is None and data.draw(st.booleans()):  # continue from the returned cache, sometimes corrupted
        cache = r[1]
        field = data.draw(st.sampled_from(["counts", "starts", "size", "none"]))
        if field != "none":
            arr = np.array(getattr(cache, field))
            if arr.size:
                arr.flat[data.draw(st.integers(0, arr.size - 1))] = data.draw(st.sampled_from(EXTREME_INTS[:16]))
            cache = dataclasses.replace(cache, **{field: arr})
        run("dynamic_linear_attention(cache)", attnkit.dynamic_linear_attention, q, k, v, lam, capacity=C, tau=tau,
            log_decay=g, score=score, cache=cache)


@FUZZ
@seed(SEED)
@given(n=anything_int())
def test_fuzz_threads(n):
    before = attnkit.get_num_threads()
    try:
        _, err = run("set_num_threads", attnkit.set_num_threads, n)
        assert 1 <= attnkit.get_num_threads() <= 1024
        x = np.ones((2, 3, 40, 8), np.float32)
        run("attention", attnkit.attention, x, x, x, causal=True)
    finally:
        attnkit.set_num_threads(before)
