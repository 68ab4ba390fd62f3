"""float16 / bfloat16 exact attention: the operands are converted to float32 as their tiles are packed
(a vector at a time where a row is contiguous, element by element otherwise). Every CPU micro-kernel
family (run in a subprocess with ATTNKIT_CPU_ISA lowering the choice) against the oracle, the conversion
itself checked bit for bit over every finite 16-bit value, and thread-count independence."""

from __future__ import annotations

import inspect
import textwrap

import ml_dtypes
import numpy as np
import pytest

import attnkit
from attnkit import reference as ref

from conftest import BF16, ISA_ORDER, assert_close, assert_thread_invariant, naive_dtype, run_in_isa, saved_kwargs

LOWP = {"float16": np.dtype(np.float16), "bfloat16": BF16}


def finite_values(dt):
    """Every finite value of the 16-bit dtype (both zeros), from its bit patterns."""
    bits = np.arange(1 << 16, dtype=np.uint16)
    x = bits.view(np.float16 if dt == "float16" else ml_dtypes.bfloat16)
    return x[np.isfinite(x.astype(np.float32))]


# The subprocess scripts below start with the imports, finite_values and an empty result dict.
PRELUDE = "import sys, numpy as np, ml_dtypes, attnkit\n" + inspect.getsource(finite_values) + "out = {}\n"


# The three operands in turn hold every finite value; one-hot partners make the result that value exactly:
# out = v (one key, p = 1); lse = q . k with one 1.0 against the value and zeros elsewhere (for q, row i
# of D copies may see key i only).
EXHAUSTIVE = PRELUDE + textwrap.dedent("""
    for dt in ("float16", "bfloat16"):
        x = finite_values(dt)
        for D in (64, 67):  # whole vectors, and a tail converted element by element
            n = -(-x.size // D)
            vals = np.resize(x, n * D).reshape(n, 1, D)
            eye = np.zeros((n, D, D), x.dtype)
            eye[:, np.arange(D), np.arange(D)] = 1
            one = vals[:, :, :1] * 0 + 1
            # v: [1, n, 1, D], one key; out rows must be v
            o = attnkit.attention(one[None].repeat(D, -1), one[None].repeat(D, -1), vals[None])
            out[f"{dt}_{D}_v"] = o.astype(np.float64)
            # strided v (element stride 2 along D): the element-by-element conversion
            wide = np.repeat(vals[None], 2, axis=-1)
            o = attnkit.attention(one[None].repeat(D, -1), one[None].repeat(D, -1), wide[..., ::2])
            out[f"{dt}_{D}_vs"] = o.astype(np.float64)
            # k: one-hot queries pick each element of the key; lse = that element (scale 1)
            _, l = attnkit.attention(eye[None], vals[None], one[None], scale=1.0, return_lse=True)
            out[f"{dt}_{D}_k"] = l.astype(np.float64)
            # q: D copies of the value row against one-hot keys, row i allowed key i only: lse = q_i
            _, l = attnkit.attention(vals[None].repeat(D, 2), eye[None], eye[None][..., :1], scale=1.0,
                                     mask=np.eye(D, dtype=bool), return_lse=True)
            out[f"{dt}_{D}_q"] = l.astype(np.float64)
            out[f"{dt}_{D}_vals"] = vals.astype(np.float64)
    out["isa"] = np.array(attnkit.info()["cpu_isa"])
    np.savez(sys.argv[1], **out)
""")


@pytest.mark.parametrize("isa", ISA_ORDER)
def test_conversion_every_value(isa, tmp_path):
    res = run_in_isa(isa, EXHAUSTIVE, tmp_path)
    for dt in LOWP:
        for D in (64, 67):
            vals = res[f"{dt}_{D}_vals"]  # [n, 1, D]
            n = vals.shape[0]
            for key in ("v", "vs"):
                got = res[f"{dt}_{D}_{key}"][0]  # [n, 1, D]
                np.testing.assert_array_equal(got, vals, err_msg=f"{isa} {dt} D={D} {key}")
            for key in ("k", "q"):
                np.testing.assert_array_equal(res[f"{dt}_{D}_{key}"][0].reshape(n, D), vals[:, 0],
                                              err_msg=f"{isa} {dt} D={D} {key}")


# The output's rounding to 16 bits: two keys of equal score (q = 0) make each output element (v0 + v1) / 2,
# exact in float32 and often half-way between two 16-bit values (a tie), so out must be that float32
# value rounded to nearest even (NumPy / ml_dtypes). Every finite value appears in v; a NaN value gives
# NaN. 33 query rows (more than the decode kernel takes):
# the exact kernel's output store (8 lanes at a time on AVX2 / AVX-512, element by element on generic).
ROUNDING = PRELUDE + textwrap.dedent("""
    for dt in ("float16", "bfloat16"):
        x = finite_values(dt)
        D = 64
        H = -(-x.size // (2 * D))
        v = np.resize(x, H * 2 * D).reshape(1, H, 2, D)
        v[0, 0, 0, 3] = np.nan
        q = np.zeros((1, H, 33, D), x.dtype)
        k = np.ones((1, H, 2, D), x.dtype)
        out[f"{dt}_o"] = attnkit.attention(q, k, v).astype(np.float64)
        out[f"{dt}_v"] = v.astype(np.float64)
    out["isa"] = np.array(attnkit.info()["cpu_isa"])
    np.savez(sys.argv[1], **out)
""")


@pytest.mark.parametrize("isa", ISA_ORDER)
def test_output_rounding(isa, tmp_path):
    res = run_in_isa(isa, ROUNDING, tmp_path)
    for dt, dtype in LOWP.items():
        v = res[f"{dt}_v"].astype(np.float32)
        want = ((v[:, :, 0] + v[:, :, 1]) * np.float32(0.5)).astype(dtype).astype(np.float64)[:, :, None]
        want = np.broadcast_to(want, res[f"{dt}_o"].shape)
        assert np.isnan(want[0, 0, :, 3]).all()
        np.testing.assert_array_equal(res[f"{dt}_o"], want, err_msg=f"{isa} {dt}")


# dtype, B, Hq, Hkv, Sq, Sk, D, Dv, layout, kwargs. layout: "c" contiguous, "bshd" (head stride < row
# stride), "dstride" (every other element along D: the element-by-element conversion), "neg" (reversed keys)
CASES = [
    ("float16", 1, 2, 2, 257, 257, 64, 64, "c", dict(causal=True)),
    ("bfloat16", 1, 2, 2, 257, 257, 64, 64, "c", dict(causal=True)),
    ("float16", 2, 6, 2, 33, 130, 17, 23, "c", dict(window=(9, 4))),
    ("bfloat16", 2, 8, 1, 7, 301, 67, 67, "bshd", dict(key_lengths=[301, 40])),
    ("float16", 1, 4, 1, 1, 500, 128, 128, "c", dict()),  # decode, GQA: dot-product path
    ("bfloat16", 1, 3, 3, 70, 90, 130, 129, "dstride", dict(mask=True)),
    ("float16", 1, 2, 1, 45, 77, 33, 8, "neg", dict(bias=True, alibi=True)),
    ("bfloat16", 1, 2, 2, 100, 100, 3, 5, "dstride", dict(causal=True, softcap=4.0)),
    ("float16", 1, 2, 2, 66, 200, 80, 64, "c", dict(mask=True, nonfinite_masked_v=True)),
    # a kv head's float32 K/V copy would pass 1 MiB: every query tile converts its chunks (the cases above
    # read K and V from a copy converted once per call)
    ("bfloat16", 1, 4, 2, 60, 2100, 64, 64, "c", dict(causal=True)),
]

SCRIPT = textwrap.dedent("""
    import sys, numpy as np, ml_dtypes, attnkit
    out = {}
    rng = np.random.default_rng(23)

    def make(shape, dtype, layout):
        B, H, S, D = shape
        if layout == "bshd":
            return rng.standard_normal((B, S, H, D)).astype(dtype).transpose(0, 2, 1, 3)
        if layout == "dstride":
            return rng.standard_normal((B, H, S, 2 * D)).astype(dtype)[..., ::2]
        if layout == "neg":
            return rng.standard_normal(shape).astype(dtype)[:, :, ::-1]
        return rng.standard_normal(shape).astype(dtype)

    for n, (dt, B, Hq, Hkv, Sq, Sk, D, Dv, layout, kw) in enumerate(CASES):
        dtype = ml_dtypes.bfloat16 if dt == "bfloat16" else np.dtype(dt)
        q = make((B, Hq, Sq, D), dtype, layout)
        k = make((B, Hkv, Sk, D), dtype, layout)
        v = make((B, Hkv, Sk, Dv), dtype, layout)
        kw = dict(kw)
        if kw.pop("alibi", None):
            kw["alibi_slopes"] = rng.uniform(0, 0.5, Hq)
        if kw.pop("bias", None):
            kw["bias"] = rng.standard_normal((Sq, Sk)).astype(np.float32)
        if kw.pop("mask", None):
            kw["mask"] = rng.random((B, 1, Sq, Sk)) < 0.7
        if kw.pop("nonfinite_masked_v", None):
            kw["mask"][..., 5] = False  # key 5 is masked for every row: its inf / NaN value is never read
            v[..., 5, 0] = np.inf
            v[..., 5, 1] = np.nan
        o, l = attnkit.attention(q, k, v, return_lse=True, **kw)
        for name, a in (("q", q), ("k", k), ("v", v), ("o", o)):
            out[f"{n}_{name}"] = a.astype(np.float64)
        out[f"{n}_l"] = l.astype(np.float64)
        for key, val in kw.items():
            out[f"{n}_kw_{key}"] = np.asarray(val)
    out["isa"] = np.array(attnkit.info()["cpu_isa"])
    np.savez(sys.argv[1], **out)
""")


@pytest.mark.parametrize("isa", ISA_ORDER)
def test_lowp_cases(isa, tmp_path):
    res = run_in_isa(isa, SCRIPT, tmp_path, cases=CASES)
    for n, (dt, *_, kw) in enumerate(CASES):
        dtype = LOWP[dt]
        q, k, v = (res[f"{n}_{x}"].astype(dtype) for x in "qkv")
        kw = saved_kwargs(res, n)
        r_o, r_l = ref.attention(q, k, v, return_lse=True, **kw)
        n_o, n_l = ref.attention(q, k, v, return_lse=True, _dtype=naive_dtype(dtype), **kw)
        assert_close(res[f"{n}_o"], r_o, n_o, dtype, what=f"{isa} case {n} out")
        assert_close(res[f"{n}_l"], r_l, n_l, np.float32, what=f"{isa} case {n} lse")


# float16 / bfloat16 keys converted straight into the packed QK order (AVX2; D >= 96 and 17 query tiles per
# key chunk), bfloat16 widened 16 lanes at a time: the same float32 sums as a float32 call on the widened
# inputs, so out is that call's output rounded to the dtype and lse is bitwise its lse, with 1 and 2
# threads. Sk = 301: a last key block past Sk (zero rows) and a chunk tail. (Not for avx512bf16's
# bfloat16, whose vdpbf16ps products round otherwise.)
PACKED_K = PRELUDE + textwrap.dedent("""
    rng = np.random.default_rng(31)
    for dt in ("float16", "bfloat16"):
        dtype = ml_dtypes.bfloat16 if dt == "bfloat16" else np.dtype(dt)
        q = rng.standard_normal((1, 2, 800, 128)).astype(dtype)
        k = rng.standard_normal((1, 2, 301, 128)).astype(dtype)
        v = rng.standard_normal((1, 2, 301, 128)).astype(dtype)
        for causal in (False, True):
            for t in (1, 2):
                attnkit.set_num_threads(t)
                o, l = attnkit.attention(q, k, v, causal=causal, return_lse=True)
                o32, l32 = attnkit.attention(*(x.astype(np.float32) for x in (q, k, v)), causal=causal,
                                             return_lse=True)
                key = f"{dt}_{int(causal)}_{t}"
                out[key + "_o"] = o.astype(np.float64)
                out[key + "_o32"] = o32.astype(dtype).astype(np.float64)
                out[key + "_l"] = l.astype(np.float64)
                out[key + "_l32"] = l32.astype(np.float64)
    out["isa"] = np.array(attnkit.info()["cpu_isa"])
    np.savez(sys.argv[1], **out)
""")


@pytest.mark.parametrize("isa", ISA_ORDER)
def test_lowp_packed_keys_match_float32(isa, tmp_path):
    res = run_in_isa(isa, PACKED_K, tmp_path)
    for dt in LOWP:
        for causal in (0, 1):
            first = f"{dt}_{causal}_1"
            for t in (1, 2):
                key = f"{dt}_{causal}_{t}"
                np.testing.assert_array_equal(res[key + "_o"], res[first + "_o"], err_msg=f"{isa} {key} threads")
                np.testing.assert_array_equal(res[key + "_l"], res[first + "_l"], err_msg=f"{isa} {key} threads")
                if isa == "avx512bf16" and dt == "bfloat16":
                    continue
                np.testing.assert_array_equal(res[key + "_o"], res[key + "_o32"], err_msg=f"{isa} {key} out")
                np.testing.assert_array_equal(res[key + "_l"], res[key + "_l32"], err_msg=f"{isa} {key} lse")


@pytest.mark.parametrize("dt", list(LOWP))
@pytest.mark.parametrize("Sq,G", [(300, 2), (1, 4)])
def test_lowp_thread_count_independent(rng, dt, Sq, G):
    dtype = LOWP[dt]
    q = rng.standard_normal((1, 2 * G, Sq, 72)).astype(dtype)
    k = rng.standard_normal((1, 2, 333, 72)).astype(dtype)
    v = rng.standard_normal((1, 2, 333, 40)).astype(dtype)
    assert_thread_invariant(lambda: attnkit.attention(q, k, v, causal=True, return_lse=True))


def test_finite_values_helper():
    """The exhaustive test's value set is what it says: every finite value once."""
    for dt, count in (("float16", 65536 - 2048), ("bfloat16", 65536 - 256)):
        x = finite_values(dt)
        assert x.size == count, dt
