"""Every CPU micro-kernel family (generic / AVX2 / AVX-512) against the oracle. The family is chosen
once per process, so each runs in a subprocess with ATTNKIT_CPU_ISA lowering the choice."""

from __future__ import annotations

import os
import sys
import textwrap

import numpy as np
import pytest

import attnkit
from attnkit import reference as ref

from conftest import BF16, ISA_ORDER, assert_close, magnitude, naive_dtype, run_in_isa, saved_kwargs

ORDER = ISA_ORDER

CASES = [
    # dtype, B, Hq, Hkv, Sq, Sk, D, Dv, kwargs
    ("float32", 1, 4, 2, 37, 70, 64, 64, dict(causal=True)),
    ("float32", 2, 2, 2, 19, 130, 60, 24, dict(window=(7, 3), softcap=5.0, alibi="h")),
    ("float64", 1, 3, 1, 41, 41, 80, 80, dict(causal=True, bias=True)),
    ("float16", 1, 2, 2, 66, 33, 128, 128, dict(mask=True)),
    ("bfloat16", 2, 2, 1, 5, 77, 32, 16, dict(key_lengths=[77, 3])),
    ("float32", 1, 1, 1, 1, 300, 256, 256, dict()),
    # decoding with long keys: split across threads, partial results merged
    ("float32", 1, 8, 2, 3, 4500, 128, 128, dict(window=(3000, 0), softcap=5.0, alibi="h")),
    ("bfloat16", 1, 4, 1, 1, 9000, 128, 64, dict(causal=True, key_lengths=[7001])),
    # the fused decode kernel (AVX2 / AVX-512 builds): 32 rows per kv head, packed float16, odd D; splits
    ("float16", 1, 32, 8, 8, 2500, 67, 67, dict(causal=True)),
    ("float32", 2, 4, 4, 2, 4500, 128, 64, dict(softcap=3.0, window=(3000, 0))),
    # bfloat16 past the decode kernel: avx512bf16's vdpbf16ps QK^T (odd D: a lone last dim; key tails)
    ("bfloat16", 1, 4, 2, 70, 151, 67, 33, dict(causal=True, alibi="h")),
    ("bfloat16", 2, 2, 2, 40, 64, 64, 64, dict(mask=True)),
]

SCRIPT = textwrap.dedent("""
    import sys, numpy as np, ml_dtypes, attnkit
    out = {}
    rng = np.random.default_rng(7)
    for n, (dt, B, Hq, Hkv, Sq, Sk, D, Dv, kw) in enumerate(CASES):
        dtype = ml_dtypes.bfloat16 if dt == "bfloat16" else np.dtype(dt)
        q = rng.standard_normal((B, Hq, Sq, D)).astype(dtype)
        k = rng.standard_normal((B, Hkv, Sk, D)).astype(dtype)
        v = rng.standard_normal((B, Hkv, Sk, Dv)).astype(dtype)
        kw = dict(kw)
        if kw.pop("alibi", None):
            kw["alibi_slopes"] = rng.uniform(0, 0.5, Hq)
        if kw.pop("bias", None):
            kw["bias"] = rng.standard_normal((Sq, Sk))
        if kw.pop("mask", None):
            kw["mask"] = rng.random((B, 1, Sq, Sk)) < 0.7
        o, l = attnkit.attention(q, k, v, return_lse=True, **kw)
        w = attnkit.attention_weights(q, k, **kw)
        for name, a in (("q", q), ("k", k), ("v", v), ("o", o), ("w", w)):
            out[f"{n}_{name}"] = a.astype(np.float64)
        out[f"{n}_l"] = l.astype(np.float64)
        for key, val in kw.items():
            out[f"{n}_kw_{key}"] = np.asarray(val)
    # block-sparse (per-head BigBird, GQA) and LSH (float64 hashing, explicit key ranges)
    q = rng.standard_normal((1, 4, 300, 64)).astype(np.float32)
    k = rng.standard_normal((1, 2, 300, 64)).astype(np.float32)
    v = rng.standard_normal((1, 2, 300, 40)).astype(np.float32)
    layout = attnkit.layouts.bigbird(300, 32, seed=1, num_heads=4)
    out["bs"] = attnkit.block_sparse_attention(q, k, v, layout, causal=True)
    out["lsh"] = attnkit.lsh_attention(q, k, v, num_buckets=8, num_hashes=2, seed=3, causal=True)
    out["buckets"] = attnkit.lsh_buckets(q, num_buckets=8, num_hashes=2, seed=3)
    out["sq"], out["sk"], out["sv"] = q, k, v
    out["isa"] = np.array(attnkit.info()["cpu_isa"])
    np.savez(sys.argv[1], **out)
""")


def test_avx512bf16_selected_where_the_cpu_has_it():
    """A CPU listing avx512_bf16 must run the avx512bf16 family: its kernel is chosen only after a
    self-check of vdpbf16ps passes (cpu/isa.cpp), so a failed self-check shows here, not as a slow path."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    need = {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_bf16", "avx2", "fma", "bmi2"}
    if not need <= set(flags) or "ATTNKIT_CPU_ISA" in os.environ:
        pytest.skip("this CPU has no AVX512-BF16 (or ATTNKIT_CPU_ISA lowers the choice)")
    assert attnkit.info()["cpu_isa"] == "avx512bf16"


@pytest.mark.parametrize("isa", ORDER)
def test_isa_family(isa, tmp_path):
    res = run_in_isa(isa, SCRIPT, tmp_path, cases=CASES)
    for n, (dt, B, Hq, Hkv, Sq, Sk, D, Dv, kw) in enumerate(CASES):
        dtype = BF16 if dt == "bfloat16" else np.dtype(dt)
        q, k, v = (res[f"{n}_{x}"].astype(dtype) for x in "qkv")
        kw = saved_kwargs(res, n)
        r_o, r_l = ref.attention(q, k, v, return_lse=True, **kw)
        n_o, n_l = ref.attention(q, k, v, return_lse=True, _dtype=naive_dtype(dtype), **kw)
        assert_close(res[f"{n}_o"], r_o, n_o, dtype, what=f"{isa} case {n} out")
        assert_close(res[f"{n}_l"], r_l, n_l, np.float64 if dtype == np.float64 else np.float32,
                     what=f"{isa} case {n} lse")
        r_w = ref.attention_weights(q, k, **kw)
        n_w = ref.attention_weights(q.astype(naive_dtype(dtype)), k.astype(naive_dtype(dtype)), **kw)
        assert_close(res[f"{n}_w"], r_w, n_w, dtype, what=f"{isa} case {n} weights")
    q, k, v = res["sq"], res["sk"], res["sv"]
    layout = attnkit.layouts.bigbird(300, 32, seed=1, num_heads=4)
    assert_close(res["bs"], ref.block_sparse_attention(q, k, v, layout, causal=True),
                 ref.block_sparse_attention(q, k, v, layout, causal=True, _dtype=np.float32), np.float32,
                 what=f"{isa} block-sparse")
    np.testing.assert_array_equal(res["buckets"], ref.lsh_buckets(q, num_buckets=8, num_hashes=2, seed=3))
    assert_close(res["lsh"], ref.lsh_attention(q, k, v, num_buckets=8, num_hashes=2, seed=3, causal=True),
                 ref.lsh_attention(q, k, v, num_buckets=8, num_hashes=2, seed=3, causal=True, _dtype=np.float32),
                 np.float32, what=f"{isa} lsh")


# Linear attention, Performer and Linformer projections: the same per-ISA dispatch.
LINEAR_CASES = [
    # function, dtype, B, Hq, Hkv, S, Sk, D, Dv, kwargs
    ("linear", "float32", 2, 4, 2, 70, 70, 24, 20, dict(causal=True, key_lengths=[70, 33], _chunk_size=16)),
    ("linear", "float64", 1, 2, 2, 45, 30, 17, 9, dict(causal=False, feature_map="relu")),
    ("linear", "bfloat16", 1, 3, 1, 33, 33, 64, 64, dict(causal=True, feature_map="identity", normalize=False)),
    ("performer", "float16", 1, 2, 1, 90, 90, 32, 16, dict(causal=True, m=40)),
    ("performer", "float32", 2, 2, 2, 50, 60, 16, 33, dict(causal=False, kernel="relu", m=64)),
    ("performer", "float64", 1, 2, 2, 65, 65, 8, 8, dict(causal=True, m=19, _chunk_size=7)),
    ("linformer", "float32", 2, 4, 2, 40, 300, 64, 48, dict(P=70, key_lengths=[300, 129])),
    ("linformer", "float64", 1, 2, 1, 20, 50, 16, 8, dict(P=7)),
]

LINEAR_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, ml_dtypes, attnkit
    from attnkit._tuning import tuning
    out = {}
    rng = np.random.default_rng(11)
    for n, (fn, dt, B, Hq, Hkv, S, Sk, D, Dv, kw) in enumerate(CASES):
        dtype = ml_dtypes.bfloat16 if dt == "bfloat16" else np.dtype(dt)
        q = rng.standard_normal((B, Hq, S, D)).astype(dtype)
        k = rng.standard_normal((B, Hkv, Sk, D)).astype(dtype)
        v = rng.standard_normal((B, Hkv, Sk, Dv)).astype(dtype)
        kw = dict(kw)
        with tuning(linear_chunk=kw.pop("_chunk_size", 0)):
            if fn == "linear":
                o = attnkit.linear_attention(q, k, v, **kw)
            elif fn == "performer":
                o = attnkit.performer_attention(q, k, v, attnkit.random_features(kw.pop("m"), D), **kw)
            else:
                e = attnkit.linformer_projection(kw.pop("P"), Sk, num_heads=Hkv)
                o = attnkit.linformer_attention(q, k, v, e, **kw)
        for name, a in (("q", q), ("k", k), ("v", v), ("o", o)):
            out[f"{n}_{name}"] = a.astype(np.float64)
    out["isa"] = np.array(attnkit.info()["cpu_isa"])
    np.savez(sys.argv[1], **out)
""")


@pytest.mark.parametrize("isa", ORDER)
def test_isa_family_linear(isa, tmp_path):
    res = run_in_isa(isa, LINEAR_SCRIPT, tmp_path, cases=LINEAR_CASES)
    for n, (fn, dt, B, Hq, Hkv, S, Sk, D, Dv, kw) in enumerate(LINEAR_CASES):
        dtype = BF16 if dt == "bfloat16" else np.dtype(dt)
        q, k, v = (res[f"{n}_{x}"].astype(dtype) for x in "qkv")
        kw = {key: val for key, val in kw.items() if key != "_chunk_size"}
        nd = naive_dtype(dtype)
        if fn == "linear":
            r, nv = ref.linear_attention(q, k, v, **kw), ref.linear_attention(q, k, v, _dtype=nd, **kw)
        elif fn == "performer":
            w = attnkit.random_features(kw.pop("m"), D)
            r, nv = ref.performer_attention(q, k, v, w, **kw), ref.performer_attention(q, k, v, w, _dtype=nd, **kw)
        else:
            e = attnkit.linformer_projection(kw.pop("P"), Sk, num_heads=Hkv)
            r, nv = ref.linformer_attention(q, k, v, e, **kw), ref.linformer_attention(q, k, v, e, _dtype=nd, **kw)
        scale = magnitude(r) if fn != "performer" else 1.0
        assert_close(res[f"{n}_o"], r, nv, dtype, what=f"{isa} {fn} case {n}", atol_scale=scale)
