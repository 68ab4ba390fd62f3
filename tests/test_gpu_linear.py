"""GPU suite, linear-time attention: linear_attention (with streaming state), performer_attention,
random_features on the device, linformer_attention. Helpers and conventions: gpu_common.py."""

from __future__ import annotations

import numpy as np
import pytest

import attnkit
from attnkit import reference as ref
from attnkit._array import acc_dtype

from conftest import BF16, DTYPE_IDS, DTYPES, magnitude, naive_dtype, randn
from gpu_common import F16, F32, F64, FAKE, GPU_MARKS, SANITIZER, close3, dev, gpu_run, host, need, qkv, same
from gpu_common import performer_in_subprocess, same_nonfinite_close

pytestmark = GPU_MARKS


# ============================================================================== linear attention
LIN_CASES = [
    # id, B, Hq, Hkv, S, Sk, D, Dv, kwargs
    ("small-causal", 1, 2, 1, 9, 9, 16, 8, dict(causal=True)),
    ("small-bidir", 1, 2, 2, 7, 11, 16, 8, dict(causal=False)),
    ("elu1-causal", 2, 4, 2, 100, 100, 32, 24, dict(feature_map="elu1", causal=True)),
    ("relu-causal", 2, 4, 4, 257, 257, 64, 64, dict(feature_map="relu", causal=True)),
    ("identity-causal", 2, 2, 2, 130, 130, 64, 32, dict(feature_map="identity", normalize=False, causal=True)),
    ("elu1-bidir", 2, 4, 2, 100, 77, 32, 24, dict(feature_map="elu1", causal=False)),
    ("relu-bidir-D128", 1, 4, 1, 65, 200, 128, 128, dict(feature_map="relu", causal=False)),
    ("identity-bidir", 1, 2, 2, 33, 33, 80, 96, dict(feature_map="identity", normalize=False, causal=False)),
    ("lens-causal", 3, 2, 2, 60, 60, 32, 16, dict(causal=True, key_lengths=[60, 0, 17])),
    ("lens-bidir", 3, 2, 2, 40, 60, 32, 16, dict(causal=False, key_lengths=[60, 0, 17])),
    ("state-causal", 2, 4, 2, 50, 50, 32, 24, dict(causal=True, initial_state="s", return_state=True)),
    ("state-bidir", 2, 2, 1, 30, 45, 16, 12, dict(causal=False, initial_state="s", return_state=True)),
    ("state-out-only", 2, 2, 2, 64, 64, 72, 40, dict(causal=True, return_state=True)),
    ("decode-step", 2, 8, 2, 1, 1, 64, 64, dict(causal=True, initial_state="s", return_state=True)),
    ("strided", 2, 4, 2, 37, 37, 32, 32, dict(causal=True, layout="strided")),
    ("empty-small", 1, 2, 2, 0, 0, 16, 8, dict(causal=True, return_state=True)),
    # v2 boundaries (cuda/linear_v2.cuh): several default causal chunks (64) with a partial last one, odd S;
    # several bidirectional key segments (512 keys) with a partial last one and key_lengths inside one.
    ("v2-causal-odd", 2, 4, 2, 199, 199, 64, 64, dict(feature_map="elu1", causal=True, initial_state="s",
                                                      return_state=True)),
    ("v2-bidir-segments", 2, 2, 1, 33, 1100, 32, 24, dict(feature_map="elu1", causal=False, key_lengths=[1100, 517],
                                                          initial_state="s", return_state=True)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", LIN_CASES, ids=[c[0] for c in LIN_CASES])
def test_linear_attention(rng, dtype, case):
    need("linear_attention")
    _, B, Hq, Hkv, S, Sk, D, Dv, kw = case
    kw = dict(kw)
    layout = kw.pop("layout", "contig")
    q, k, v = qkv(rng, B, Hq, Hkv, S, Sk, D, Dv, dtype, 0.5, layout)
    sd = acc_dtype(dtype)
    if kw.get("initial_state") == "s":
        kw["initial_state"] = (np.abs(randn(rng, (B, Hkv, D, Dv), sd)), np.abs(randn(rng, (B, Hkv, D), sd)))
    res = gpu_run(attnkit.linear_attention, q, k, v, **kw)
    cres = attnkit.linear_attention(q, k, v, **kw)
    if S == 0:
        same(res[0], cres[0])
        same(res[1][0], cres[1][0], "S")
        same(res[1][1], cres[1][1], "z")
        return
    r = ref.linear_attention(q, k, v, **kw)
    n = ref.linear_attention(q, k, v, _dtype=naive_dtype(dtype), **kw)
    if kw.get("return_state"):
        (out, (s, z)), (c_out, (cs, cz)), (r, (rs, rz)), (n, (ns, nz)) = res, cres, r, n
        assert s.dtype == sd and z.dtype == sd
        close3(s, cs, rs, ns, sd, what="state S", atol_scale=magnitude(rs))
        close3(z, cz, rz, nz, sd, what="state z", atol_scale=magnitude(rz))
    else:
        out, c_out = res, cres
    assert out.dtype == dtype
    close3(out, c_out, r, n, dtype, atol_scale=1.0 if kw.get("normalize", True) else magnitude(r))


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
def test_linear_attention_streaming(rng, dtype):
    """Causal with state in/out on the device: prefill + chunks + token-by-token decode == one call."""
    need("linear_attention")
    q, k, v = qkv(rng, 2, 4, 2, 70, 70, 32, 16, dtype)
    full, (s_full, z_full) = gpu_run(attnkit.linear_attention, q, k, v, return_state=True)
    dq, dk, dv = dev(q), dev(k), dev(v)
    state, outs = None, []
    for a, b in [(0, 40), (40, 41), (41, 42), (42, 70)]:
        o, state = attnkit.linear_attention(dq[:, :, a:b], dk[:, :, a:b], dv[:, :, a:b], initial_state=state,
                                            return_state=True)
        outs.append(host(o))
    tol = 1e-5 if dtype == F32 else 1e-12
    np.testing.assert_allclose(np.concatenate(outs, axis=2), full, rtol=tol, atol=tol)
    np.testing.assert_allclose(host(state[0]), s_full, rtol=tol, atol=tol * 10)
    np.testing.assert_allclose(host(state[1]), z_full, rtol=tol, atol=tol * 10)


# ============================================================================== Performer
PERF_CASES = [
    # id, B, Hq, Hkv, S, Sk, D, Dv, m, kwargs
    ("small", 1, 2, 1, 9, 9, 16, 8, 8, dict(causal=True)),
    ("softmax-bidir", 2, 4, 2, 100, 77, 32, 24, 64, dict(causal=False)),
    ("softmax-causal", 2, 4, 2, 130, 130, 64, 64, 128, dict(causal=True)),
    ("relu-causal", 2, 2, 2, 65, 65, 80, 40, 40, dict(kernel="relu", causal=True)),
    ("relu-bidir-D128", 1, 4, 1, 33, 200, 128, 128, 256, dict(kernel="relu", causal=False)),
    ("lens", 3, 2, 2, 50, 50, 32, 16, 32, dict(causal=False, key_lengths=[50, 0, 21])),
    ("lens-causal-scale", 3, 2, 2, 50, 50, 32, 16, 33, dict(causal=True, key_lengths=[50, 0, 21], scale=0.1)),
    ("strided", 2, 4, 2, 37, 37, 32, 32, 48, dict(causal=True, layout="strided")),
    # v2 boundaries: m not a multiple of the 64-wide tiles nor of the 32 row lanes, several causal chunks,
    # several key segments with key_lengths inside one.
    ("v2-softmax-causal-m100", 2, 4, 2, 150, 150, 64, 64, 100, dict(causal=True)),
    ("v2-softmax-bidir-segments", 2, 2, 2, 20, 1100, 32, 16, 100, dict(causal=False, key_lengths=[1100, 600])),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", PERF_CASES, ids=[c[0] for c in PERF_CASES])
def test_performer_attention(rng, dtype, case):
    need("performer_attention")
    _, B, Hq, Hkv, S, Sk, D, Dv, m, kw = case
    kw = dict(kw)
    layout = kw.pop("layout", "contig")
    q, k, v = qkv(rng, B, Hq, Hkv, S, Sk, D, Dv, dtype, 0.5, layout)
    w = attnkit.random_features(m, D, seed=m, dtype=acc_dtype(dtype))
    out = gpu_run(attnkit.performer_attention, q, k, v, w, **kw)
    c_out = attnkit.performer_attention(q, k, v, w, **kw)
    r = ref.performer_attention(q, k, v, w, **kw)
    n = ref.performer_attention(q, k, v, w, _dtype=naive_dtype(dtype), **kw)
    assert out.dtype == dtype
    close3(out, c_out, r, n, dtype)


# Performer on tensor cores (cuda/performer_mma.cuh, internal name "performer_attention_mma": float16 /
# bfloat16, D in {32, 64, 128}, m a multiple of 16 up to 512). It runs where ATTNKIT_CUDA_UNVERIFIED=1 enables
# it (as tools/gpu_check.sh does); elsewhere the same calls run the SIMT kernels and these tests check those.
# The grid: every (D, m) of D 32/64/128 x m 16/64/256 over S 1/63/64/65/200/1000, causal and not (one (D, m)
# per (S, causal) slot, all nine used), with GQA, Dv != D, Sk != S, key_lengths, the ReLU kernel and a scale.
# Where "performer_attention_mma2_causal" is enabled too, the causal softmax cases with m a multiple of 64 and
# Dv in {32, 64, 128} run that path instead (cuda/performer_causal_mma.cuh; tests/test_gpu_performer.py);
# test_performer_mma_variants below turns it off so that its causal cases keep checking these products.
_MMA_DM = [(32, 16), (64, 64), (128, 256), (32, 64), (64, 256), (128, 16), (32, 256), (64, 16), (128, 64)]
_MMA_S = [1, 63, 64, 65, 200, 1000]


def _mma_cases():
    cases = []
    for ci, causal in enumerate((False, True)):
        for si, S in enumerate(_MMA_S):
            D, m = _MMA_DM[(ci * len(_MMA_S) + si) % len(_MMA_DM)]
            Sk = S if causal else S + 13 * si
            Dv = D if si % 2 == 0 else 48
            B, Hq, Hkv = (2, 4, 2) if si % 3 != 2 else (1, 2, 2)
            kw = dict(causal=causal)
            if S == 200:
                kw["key_lengths"] = [Sk, 77]
            if S == 65:
                kw["kernel"] = "relu"
            if S == 63:
                kw["scale"] = 0.3
            cases.append((f"mma-{'causal' if causal else 'bidir'}-S{S}-D{D}-m{m}", B, Hq, Hkv, S, Sk, D, Dv, m, kw))
    # tiny cases for the sanitizer subset (-k small)
    cases.append(("mma-small-causal", 1, 2, 1, 70, 70, 32, 16, 16, dict(causal=True)))
    cases.append(("mma-small-bidir", 1, 2, 1, 40, 90, 32, 16, 32, dict(causal=False, key_lengths=[61])))
    return cases


PERF_MMA_CASES = _mma_cases()


def test_performer_mma_status_report():
    """Says whether this run exercises the tensor-core Performer path (informational; never fails)."""
    print("performer_attention_mma enabled:", False if FAKE else bool(attnkit._core.cuda_has_kernel(
        "performer_attention_mma")))


@pytest.mark.parametrize("dtype", [F16, BF16], ids=["f16", "bf16"])
@pytest.mark.parametrize("case", PERF_MMA_CASES, ids=[c[0] for c in PERF_MMA_CASES])
def test_performer_attention_mma(rng, dtype, case):
    need("performer_attention")
    _, B, Hq, Hkv, S, Sk, D, Dv, m, kw = case
    q, k, v = qkv(rng, B, Hq, Hkv, S, Sk, D, Dv, dtype, 0.5)
    w = attnkit.random_features(m, D, seed=m, dtype=acc_dtype(dtype))
    out = gpu_run(attnkit.performer_attention, q, k, v, w, **kw)
    c_out = attnkit.performer_attention(q, k, v, w, **kw)
    r = ref.performer_attention(q, k, v, w, **kw)
    n = ref.performer_attention(q, k, v, w, _dtype=naive_dtype(dtype), **kw)
    assert out.dtype == dtype
    close3(out, c_out, r, n, dtype)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_performer_mma_nonfinite(rng, causal):
    """An Inf and a NaN in V at late keys: the same non-finite outputs as the CPU backend (a causal row never
    sees a future key's NaN / Inf, even through a masked 0 in the tensor-core product), the finite ones close."""
    need("performer_attention")
    q, k, v = qkv(rng, 1, 2, 2, 300, 300, 64, 64, F16, 0.5)
    v[:, 0, 250, 5] = np.inf
    v[:, 1, 299, 9] = np.nan
    w = attnkit.random_features(64, 64, seed=3, dtype=F32)
    g = gpu_run(attnkit.performer_attention, q, k, v, w, causal=causal).astype(np.float64)
    c = attnkit.performer_attention(q, k, v, w, causal=causal).astype(np.float64)
    assert np.isnan(c).any() and np.isinf(c).any() and np.isfinite(c).any()
    same_nonfinite_close(g, c, rtol=1e-2, atol=2e-3)


# The products the tensor-core path takes over (ATTNKIT_PERFORMER_MMA, a bit mask read once per process, so
# each variant runs in a subprocess; 0 = the SIMT v2 kernels), the causal 32-row tiles (chunk 32) and short
# bidirectional key segments, float16, against the CPU backend and the oracle.
_PMMA_VARIANTS = {"7": {}, "1": {}, "2": {}, "4": {}, "0": {}, "7-chunk32": dict(ATTNKIT_LINEAR_CUDA_CHUNK="32"),
                  "7-chunk200-seg64": dict(ATTNKIT_LINEAR_CUDA_CHUNK="200", ATTNKIT_LINEAR_CUDA_SEG="64")}


@pytest.mark.parametrize("variant", list(_PMMA_VARIANTS))
def test_performer_mma_variants(rng, tmp_path, variant):
    need("performer_attention")
    if FAKE or SANITIZER:
        pytest.skip("runs CuPy in a subprocess")
    cases = {
        "causal": (2, 4, 2, 300, 300, 64, 64, 64, dict(causal=True)),
        "causal-lens": (2, 2, 1, 150, 150, 128, 40, 256, dict(causal=True, key_lengths=[150, 33])),
        "relu-causal": (1, 2, 2, 100, 100, 32, 32, 48, dict(causal=True, kernel="relu")),
        "bidir-lens": (2, 4, 2, 150, 700, 64, 64, 128, dict(causal=False, key_lengths=[700, 130])),
        "bidir-D32": (1, 2, 1, 90, 333, 32, 80, 512, dict(causal=False)),
    }
    env = dict(ATTNKIT_PERFORMER_MMA=variant.split("-")[0], ATTNKIT_PERFORMER_CAUSAL_MMA="0", **_PMMA_VARIANTS[variant])
    performer_in_subprocess(rng, tmp_path, cases, env, "performer_attention_mma")


def test_random_features_on_device(rng):
    """random_features' output, uploaded, is usable on the device (and is the same matrix as on the host)."""
    need("performer_attention")
    q, k, v = qkv(rng, 1, 2, 2, 20, 20, 16, 16, F32)
    w = attnkit.random_features(32, 16, seed=1)
    close3(gpu_run(attnkit.performer_attention, q, k, v, w, causal=True),
           attnkit.performer_attention(q, k, v, w, causal=True), ref.performer_attention(q, k, v, w, causal=True),
           ref.performer_attention(q, k, v, w, causal=True, _dtype=np.float32), F32)


# ============================================================================== Linformer
LF_CASES = [
    # id, B, Hq, Hkv, Sq, Sk, D, Dv, P, E kind, F kind, kwargs
    ("small", 1, 2, 1, 7, 9, 16, 8, 4, "shared", "none", {}),
    ("shared", 2, 4, 2, 33, 100, 32, 24, 16, "shared", "none", {}),
    ("per-head-E-F", 2, 6, 3, 40, 130, 64, 64, 32, "per_head", "per_head", {}),
    ("F-shared", 2, 4, 4, 90, 20, 128, 64, 70, "shared", "shared", dict(scale=0.3)),
    ("lens", 3, 2, 2, 50, 60, 40, 16, 12, "per_head", "none", dict(key_lengths=[60, 0, 17])),
    ("strided", 2, 4, 2, 37, 50, 32, 32, 8, "shared", "none", dict(layout="strided")),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", LF_CASES, ids=[c[0] for c in LF_CASES])
def test_linformer_attention(rng, dtype, case):
    need("linformer_attention")
    _, B, Hq, Hkv, Sq, Sk, D, Dv, P, ek, fk, kw = case
    kw = dict(kw)
    layout = kw.pop("layout", "contig")
    q, k, v = qkv(rng, B, Hq, Hkv, Sq, Sk, D, Dv, dtype, 1.0, layout)
    pd = acc_dtype(dtype)
    E = attnkit.linformer_projection(P, Sk, seed=1, num_heads=Hkv if ek == "per_head" else None, dtype=pd)
    F = None if fk == "none" else attnkit.linformer_projection(P, Sk, seed=2, num_heads=Hkv if fk == "per_head"
                                                               else None, dtype=pd)
    out, lse = gpu_run(attnkit.linformer_attention, q, k, v, E, F, return_lse=True, **kw)
    c_out, c_lse = attnkit.linformer_attention(q, k, v, E, F, return_lse=True, **kw)
    r, rl = ref.linformer_attention(q, k, v, E, F, return_lse=True, **kw)
    n, nl = ref.linformer_attention(q, k, v, E, F, return_lse=True, _dtype=naive_dtype(dtype),
                                    _proj_dtype=dtype if np.dtype(dtype).itemsize == 2 else None, **kw)
    close3(out, c_out, r, n, dtype, atol_scale=magnitude(r))
    close3(lse, c_lse, rl, nl, lse.dtype, what="lse", atol_scale=magnitude(rl))


# ============================================================================== tensor-core causal path
# cuda/linear_mma.cuh ("linear_attention_mma", taken under ATTNKIT_CUDA_UNVERIFIED=1): causal, elementwise
# maps, float16 / bfloat16, D and Dv in {32, 64, 128}, chunks of 64 (the default) or 128 (linear_chunk=128).
# S = 1, 63, 64, 65, 200, 1000 around the chunk boundaries; GQA; key_lengths ending inside a chunk and on a
# chunk boundary (a chunk without keys); state in / out; strided operands; large inputs whose scores pass
# 2^15 (the float16 scaling of the score rows).
MMA_CASES = [
    # id, B, Hq, Hkv, S, D, Dv, chunk, input scale, kwargs
    ("mma-small-S1", 2, 2, 1, 1, 32, 32, 0, 0.5, dict(feature_map="elu1", initial_state="s", return_state=True)),
    ("mma-small-S65", 1, 2, 1, 65, 32, 32, 0, 0.5, dict(feature_map="elu1", return_state=True)),
    ("mma-S63-relu", 2, 4, 2, 63, 64, 64, 0, 0.5, dict(feature_map="relu")),
    ("mma-S64-identity", 2, 2, 2, 64, 128, 32, 0, 0.5, dict(feature_map="identity", normalize=False)),
    ("mma-S65-elu1-Dv128", 1, 4, 1, 65, 32, 128, 0, 0.5, dict(feature_map="elu1")),
    ("mma-S200-D128-state", 2, 4, 2, 200, 128, 128, 0, 0.5, dict(feature_map="elu1", initial_state="s",
                                                                  return_state=True)),
    ("mma-S1000-D64", 2, 2, 1, 1000, 64, 64, 0, 0.5, dict(feature_map="elu1")),
    ("mma-S1000-relu-D32-Dv64", 1, 4, 2, 1000, 32, 64, 0, 0.5, dict(feature_map="relu", return_state=True)),
    ("mma-S200-identity-D64-Dv128", 2, 2, 1, 200, 64, 128, 0, 0.5, dict(feature_map="identity", normalize=False)),
    ("mma-lens", 3, 2, 2, 200, 64, 32, 0, 0.5, dict(key_lengths=[200, 0, 70], return_state=True)),
    ("mma-lens-chunk-edge", 2, 2, 1, 65, 32, 32, 0, 0.5, dict(feature_map="relu", key_lengths=[30, 64],
                                                              initial_state="s", return_state=True)),
    ("mma-strided", 2, 4, 2, 130, 64, 64, 0, 0.5, dict(layout="strided")),
    ("mma-large-scores", 1, 2, 1, 130, 64, 64, 0, 60.0, dict(feature_map="relu")),
    ("mma-chunk128-S200-state", 2, 4, 2, 200, 64, 64, 128, 0.5, dict(feature_map="elu1", initial_state="s",
                                                                      return_state=True)),
    ("mma-chunk128-S1000-D128", 1, 2, 1, 1000, 128, 128, 128, 0.5, dict(feature_map="relu")),
    ("mma-chunk128-S63-identity", 2, 2, 2, 63, 32, 32, 128, 0.5, dict(feature_map="identity", normalize=False)),
    ("mma-chunk128-lens", 2, 2, 2, 300, 32, 64, 128, 0.5, dict(key_lengths=[256, 129], return_state=True)),
    # infinite values inside chunks: rows before them (same chunk) never see them (NaN values are not
    # compared: assert_close wants none in a result)
    ("mma-nonfinite-v", 2, 2, 1, 150, 64, 32, 0, 0.5, dict(poison=True)),
    ("mma-nonfinite-v-chunk128", 1, 2, 2, 150, 32, 64, 128, 0.5, dict(poison=True, return_state=True)),
]


@pytest.mark.parametrize("dtype", [DTYPES[2], DTYPES[3]], ids=["f16", "bf16"])
@pytest.mark.parametrize("case", MMA_CASES, ids=[c[0] for c in MMA_CASES])
def test_linear_attention_mma(rng, dtype, case):
    need("linear_attention")
    from attnkit._tuning import tuning

    _, B, Hq, Hkv, S, D, Dv, chunk, scale, kw = case
    kw = dict(kw, causal=True)
    layout = kw.pop("layout", "contig")
    poison = kw.pop("poison", False)
    q, k, v = qkv(rng, B, Hq, Hkv, S, S, D, Dv, dtype, scale, layout)
    if poison:
        v = np.array(v)
        v[0, 0, 10, 3] = np.inf
        v[-1, -1, 100, 5] = -np.inf
    if kw.get("initial_state") == "s":
        kw["initial_state"] = (np.abs(randn(rng, (B, Hkv, D, Dv), F32)), np.abs(randn(rng, (B, Hkv, D), F32)))
    with tuning(linear_chunk=chunk):
        res = gpu_run(attnkit.linear_attention, q, k, v, **kw)
        cres = attnkit.linear_attention(q, k, v, **kw)
    r = ref.linear_attention(q, k, v, **kw)
    n = ref.linear_attention(q, k, v, _dtype=naive_dtype(dtype), **kw)
    if kw.get("return_state"):
        (out, (s, z)), (c_out, (cs, cz)), (r, (rs, rz)), (n, (ns, nz)) = res, cres, r, n
        assert s.dtype == F32 and z.dtype == F32
        close3(s, cs, rs, ns, F32, what="state S", atol_scale=magnitude(rs))
        close3(z, cz, rz, nz, F32, what="state z", atol_scale=magnitude(rz))
    else:
        out, c_out = res, cres
    assert out.dtype == dtype
    close3(out, c_out, r, n, dtype, atol_scale=1.0 if kw.get("normalize", True) else magnitude(r))
