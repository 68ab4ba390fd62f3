"""GPU suite, exact attention: attention (every masking feature, GQA, strides, dtypes, empty sizes,
fully masked rows), attention_weights and merge_attention. Helpers and conventions: gpu_common.py."""

from __future__ import annotations

import numpy as np
import pytest

import attnkit
from attnkit import layouts
from attnkit import reference as ref
from attnkit._array import acc_dtype

from conftest import ATOL, DTYPE_IDS, DTYPES, naive_dtype, randn, _result_bytes
from gpu_common import (DT, F32, FAKE, GPU_MARKS, PROBES, SANITIZER, close3, _eval, gpu_run, _leaves, _missing,
                        need, qkv, same)
from gpu_common import random_mask as _mask

pytestmark = GPU_MARKS


def test_kernel_status_report():
    """Lists which mechanisms run on CUDA in this build (informational; never fails)."""
    enabled = [m for m in PROBES if not _missing(m)]
    print("CUDA kernels enabled:", ", ".join(enabled) or "none")


# ============================================================================== exact attention
def A(id_, B=1, Hq=2, Hkv=None, Sq=33, Sk=None, D=64, Dv=None, dtype="f32", layout="contig", scale_in=1.0, **kw):
    """An attention case: sizes, dtype id, and keyword arguments (callables of rng are drawn per test)."""
    spec = dict(B=B, Hq=Hq, Hkv=Hq if Hkv is None else Hkv, Sq=Sq, Sk=Sq if Sk is None else Sk, D=D,
                Dv=D if Dv is None else Dv, dtype=DT[dtype], layout=layout, scale_in=scale_in, kw=kw)
    return pytest.param(spec, id=id_)


ATTN_CASES = (
    # small: the sanitizer subset
    [A(f"small-{d}", Sq=7, Sk=13, D=32, dtype=d, causal=True) for d in DTYPE_IDS]
    + [A("small-mask-gqa", Hq=4, Hkv=2, Sq=5, Sk=9, D=40, mask=_mask((5, 9)), key_lengths=[7]),
       A("small-decode", Hq=4, Hkv=1, Sq=1, Sk=300, D=64, dtype="f16")]
    # shapes x head dims x dtypes
    + [A(f"shape-S{S}-D{D}-{d}", B=2, Sq=S, D=D, dtype=d, causal=(S % 2 == 1))
       for d in DTYPE_IDS for S, D in [(1, 64), (33, 32), (130, 64), (65, 80), (100, 96), (129, 128), (40, 256),
                                      (77, 72), (50, 40)]]
    + [A(f"Dv-{D}-{Dv}", Sq=19, Sk=45, D=D, Dv=Dv, causal=True) for D, Dv in [(3, 5), (33, 200), (128, 64), (520, 24)]]
    # causal bottom-right with Sq != Sk, cross lengths
    + [A(f"cross-{Sq}x{Sk}-{'c' if c else 'nc'}-{d}", Hq=3, Sq=Sq, Sk=Sk, D=64, Dv=32, dtype=d, causal=c)
       for d in ("f32", "f16") for Sq, Sk in [(1, 300), (5, 77), (100, 31), (300, 1000), (64, 1)] for c in (False, True)]
    # GQA / MQA
    + [A(f"gqa-{Hq}-{Hkv}-{Sq}x{Sk}", B=2, Hq=Hq, Hkv=Hkv, Sq=Sq, Sk=Sk, D=32, Dv=48, causal=True)
       for Hq, Hkv in [(4, 2), (8, 1), (6, 3), (32, 4)] for Sq, Sk in [(1, 200), (37, 37), (130, 70)]]
    + [A(f"gqa-window-alibi-{d}", B=2, Hq=8, Hkv=2, Sq=50, Sk=70, D=64, dtype=d, window=(5, 3),
         alibi_slopes=lambda rng: rng.uniform(0, 1, 8)) for d in DTYPE_IDS]
    # windows
    + [A(f"window-{w[0]}-{w[1]}-{Sq}x{Sk}-{'c' if c else 'nc'}", Hkv=1, Sq=Sq, Sk=Sk, window=w, causal=c)
       for w in [(0, 0), (4, 0), (0, 4), (16, 16), (None, 3), (70, None), (-1, 2), (200, 200)]
       for Sq, Sk in [(97, 97), (40, 131), (131, 40)] for c in (False, True)]
    + [A(f"window-{d}", Sq=97, Sk=131, window=(16, 4), causal=True, dtype=d) for d in ("f16", "bf16", "f64")]
    # masks (bool, broadcast)
    + [A(f"mask-{name}-{d}", B=2, Hq=3, Sq=45, Sk=70, mask=_mask(shape), causal=(d != "f32"), dtype=d)
       for name, shape in [("full", (2, 3, 45, 70)), ("bcast_b", (1, 3, 45, 70)), ("bcast_h", (2, 1, 45, 70)),
                           ("row", (2, 3, 45, 1)), ("col", (2, 1, 1, 70)), ("2d", (45, 70))]
       for d in ("f32", "f16")]
    # bias (every dtype and broadcast shape)
    + [A(f"bias-{'x'.join(map(str, bs))}-{bd}", B=2, Hq=3, Sq=45, Sk=70,
         bias=(lambda bs, bd: lambda rng: randn(rng, bs, DT[bd], 2.0))(bs, bd))
       for bs in [(2, 3, 45, 70), (3, 45, 70), (45, 70), (1, 3, 1, 70), (2, 1, 45, 1), (70,)] for bd in ("f32", "f16")]
    + [A(f"bias-{bd}", B=2, Hq=3, Sq=45, Sk=70, bias=(lambda bd: lambda rng: randn(rng, (45, 70), DT[bd], 2.0))(bd))
       for bd in ("f64", "bf16")]
    # key_lengths, ALiBi, softcap, scale
    + [A(f"lens-{d}-{'c' if c else 'nc'}", B=4, Sq=33, Sk=90, dtype=d, causal=c, key_lengths=np.array([90, 0, 1, 57]))
       for d in DTYPE_IDS for c in (False, True)]
    + [A("lens-int64", B=4, Sq=33, Sk=90, key_lengths=np.array([5, 6, 7, 8], np.int64))]
    + [A(f"alibi-{s}-{d}", B=2, Hq=4, Hkv=2, Sq=50, Sk=80, dtype=d, causal=(s == "bh"),
         alibi_slopes=(2.0 ** -np.arange(1, 5)) if s == "h" else (lambda rng: rng.uniform(0, 0.5, (2, 4))))
       for s in ("h", "bh") for d in DTYPE_IDS]
    + [A(f"softcap-{cap}-{d}", Sq=40, Sk=60, dtype=d, scale_in=3.0, softcap=cap, causal=(cap > 1))
       for cap in (0.5, 30.0) for d in DTYPE_IDS]
    + [A(f"scale-{s}", Sq=33, Sk=47, scale=s, causal=True) for s in (0.0, -0.3, 10.0)]
    + [A(f"combined-{d}", B=2, Hq=4, Hkv=2, Sq=70, Sk=150, D=80, Dv=48, dtype=d, causal=True, window=(60, 2),
         mask=_mask((4, 70, 150), 0.8), bias=lambda rng: randn(rng, (2, 1, 70, 150), np.float16),
         key_lengths=[150, 101], scale=0.2, softcap=8.0, alibi_slopes=lambda rng: rng.uniform(0, 0.1, 4))
       for d in DTYPE_IDS]
    # non-contiguous strided inputs (transposed q, padded k, batch-broadcast v), broadcast mask
    + [A(f"strided-{d}", B=2, Hq=4, Hkv=2, Sq=37, Sk=50, D=64, dtype=d, layout="strided", causal=True,
         mask=lambda rng: np.broadcast_to(rng.random((1, 1, 37, 50)) < 0.8, (2, 4, 37, 50))) for d in DTYPE_IDS]
    # decode: one query row, long keys, GQA (the split-KV path)
    + [A(f"decode-Sk4096-{d}", B=2, Hq=16, Hkv=4, Sq=1, Sk=4096, D=128, dtype=d, key_lengths=[4096, 2051])
       for d in ("f32", "f16", "bf16")]
    + [A(f"decode-Sk16384-{d}", B=1, Hq=8, Hkv=2, Sq=1, Sk=16384, D=128, dtype=d) for d in ("f32", "f16")]
    + [A(f"decode-{Sq}x{Sk}-{d}", B=1, Hq=8, Hkv=2, Sq=Sq, Sk=Sk, D=D, dtype=d, causal=True)
       for Sq, Sk, D in [(1, 8191, 64), (4, 3000, 128), (2, 1000, 80)] for d in ("f32", "f16")]
    + [A("decode-f64", Hq=4, Hkv=1, Sq=1, Sk=5000, D=64, dtype="f64", window=(1000, 0))]
    # the decode kernel (attention_decode.cuh): Sq * G <= 8 rows per kv head, every score term
    + [A(f"decode-Sq2-alibi-softcap-{d}", B=2, Hq=8, Hkv=2, Sq=2, Sk=3000, D=128, dtype=d, causal=True,
         softcap=5.0, scale_in=2.0, key_lengths=[3000, 1777], alibi_slopes=lambda rng: rng.uniform(0, 0.05, (2, 8)))
       for d in ("f16", "bf16")]
    + [A("decode-mask-bias-bf16", B=2, Hq=4, Hkv=1, Sq=1, Sk=2500, D=64, dtype="bf16", key_lengths=[2500, 0],
         mask=_mask((2, 4, 1, 2500), 0.7), bias=lambda rng: randn(rng, (1, 4, 1, 2500), np.float32))]
    + [A(f"decode-D{D}-Dv{Dv}-{d}", B=3, Hq=8, Hkv=2, Sq=1, Sk=2100, D=D, Dv=Dv, dtype=d, window=(700, 0),
         causal=True) for D, Dv, d in [(128, 64, "f64"), (96, 256, "f32"), (64, 128, "f16"), (256, 256, "f32")]]
    # several blocks of rows per kv head (row chunks): 12 rows of 8 + 4, float64 8 rows of 4 + 4
    + [A("decode-Sq3-G4-f16", B=2, Hq=8, Hkv=2, Sq=3, Sk=1500, D=128, dtype="f16", causal=True, window=(600, 0),
         key_lengths=[1500, 900])]
    + [A("decode-G8-f64", B=2, Hq=8, Hkv=1, Sq=1, Sk=1200, D=128, dtype="f64", key_lengths=[1200, 3])]
    # the v2 tensor-core kernel (attention_mma2.cuh; float16 / bfloat16, D = 64 / 128, no mask / bias / soft
    # cap / ALiBi): several 128-row query blocks and key tiles with a partial last one, causal bottom-right
    # both ways (Sq > Sk: blocks whose first rows see no key), windows, key_lengths, GQA
    + [A(f"small-mma2-D{D}-{'c' if c else 'nc'}-f16", Hq=2, Sq=200, D=D, dtype="f16", causal=c)
       for D in (64, 128) for c in (False, True)]
    + [A(f"mma2-S300-D{D}-{'c' if c else 'nc'}-{d}", B=2, Hq=4, Hkv=2, Sq=300, D=D, dtype=d, causal=c, scale_in=2.0)
       for d in ("f16", "bf16") for D in (64, 128) for c in (False, True)]
    + [A(f"mma2-cross-{Sq}x{Sk}-D{D}-{d}", Hq=2, Sq=Sq, Sk=Sk, D=D, dtype=d, causal=True)
       for Sq, Sk in [(200, 333), (333, 200), (129, 64)] for D in (64, 128) for d in ("f16", "bf16")]
    + [A(f"mma2-window-{w[0]}-{w[1]}-D{D}-{d}", Hq=2, Sq=260, Sk=290, D=D, dtype=d, window=w, causal=c)
       for w, c in [((40, 10), False), ((100, 0), True), ((None, 70), False)] for D in (64, 128) for d in ("f16", "bf16")]
    + [A(f"mma2-lens-D{D}-{'c' if c else 'nc'}-{d}", B=3, Hq=2, Sq=150, Sk=300, D=D, dtype=d, causal=c,
         key_lengths=[300, 0, 77]) for D in (64, 128) for c in (False, True) for d in ("f16", "bf16")]
    + [A(f"mma2-scale-D{D}", Sq=140, D=D, dtype="f16", scale=0.5, causal=True) for D in (64, 128)]
    # the v2 kernel's default tile shape at the block edges: one block of 63 / 64 rows, a second one of 1
    # row (65), partial key tiles (128 keys per tile at D = 64, 64 at D = 128), GQA; S = 1 takes the decode
    # path (variants 3 and 4, the 64-row blocks, run these shapes in test_attention_mma_variants)
    + [A(f"mma2v3-S{S}-D{D}-{'c' if c else 'nc'}-{d}", B=1 if S > 128 else 2, Hq=4, Hkv=2, Sq=S, D=D, dtype=d,
         causal=c, scale_in=2.0) for S in (1, 63, 64, 65, 128, 1000) for D in (64, 128) for c in (False, True)
       for d in ("f16", "bf16")]
)


def _attn_inputs(rng, spec):
    s = spec
    q, k, v = qkv(rng, s["B"], s["Hq"], s["Hkv"], s["Sq"], s["Sk"], s["D"], s["Dv"], s["dtype"], s["scale_in"],
                  s["layout"])
    return q, k, v, _eval(s["kw"], rng)


@pytest.mark.parametrize("spec", ATTN_CASES)
def test_attention(rng, spec):
    need("attention")
    dtype = spec["dtype"]
    q, k, v, kw = _attn_inputs(rng, spec)
    out, lse = gpu_run(attnkit.attention, q, k, v, return_lse=True, **kw)
    c_out, c_lse = attnkit.attention(q, k, v, return_lse=True, **kw)
    r_out, r_lse = ref.attention(q, k, v, return_lse=True, **kw)
    n_out, n_lse = ref.attention(q, k, v, return_lse=True, _dtype=naive_dtype(dtype), **kw)
    assert out.dtype == dtype and lse.dtype == acc_dtype(dtype)
    close3(out, c_out, r_out, n_out, dtype)
    close3(lse, c_lse, r_lse, n_lse, lse.dtype, what="lse")


@pytest.mark.parametrize("rank", [2, 3])
def test_attention_lower_ranks(rng, rank):
    need("attention")
    shape_q = (40, 64) if rank == 2 else (4, 40, 64)
    shape_k = (50, 64) if rank == 2 else (2, 50, 64)
    q, k, v = randn(rng, shape_q, F32), randn(rng, shape_k, F32), randn(rng, shape_k[:-1] + (16,), F32)
    out, lse = gpu_run(attnkit.attention, q, k, v, causal=True, key_lengths=45, return_lse=True)
    c_out, c_lse = attnkit.attention(q, k, v, causal=True, key_lengths=45, return_lse=True)
    r_out, r_lse = ref.attention(q, k, v, causal=True, key_lengths=45, return_lse=True)
    n_out, n_lse = ref.attention(q, k, v, causal=True, key_lengths=45, return_lse=True, _dtype=np.float32)
    assert out.shape == shape_q[:-1] + (16,) and lse.shape == shape_q[:-1]
    close3(out, c_out, r_out, n_out, F32)
    close3(lse, c_lse, r_lse, n_lse, F32, what="lse")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_attention_fully_masked_rows_small(rng, dtype):
    """Rows that see no key give exactly 0 and LSE = -inf (causal Sq > Sk, an all-False mask row, a window
    beyond the keys, key_lengths = 0, a -inf bias row)."""
    need("attention")
    q, k, v = qkv(rng, 2, 2, 2, 40, 30, 64, 64, dtype)
    mask = np.ones((40, 30), bool)
    mask[17] = False
    bias = np.zeros((40, 30), np.float32)
    bias[3] = -np.inf
    for kw, rows in [(dict(causal=True), np.s_[:, :, :10]), (dict(mask=mask), np.s_[:, :, 17]),
                     (dict(window=(0, 0)), np.s_[:, :, :10]), (dict(key_lengths=[0, 30]), np.s_[0]),
                     (dict(bias=bias), np.s_[:, :, 3])]:
        out, lse = gpu_run(attnkit.attention, q, k, v, return_lse=True, _stream=False, **kw)
        c_out, c_lse = attnkit.attention(q, k, v, return_lse=True, **kw)
        assert (out[rows] == 0).all() and np.isneginf(lse[rows]).all(), kw
        r_out, r_lse = ref.attention(q, k, v, return_lse=True, **kw)
        n_out, n_lse = ref.attention(q, k, v, return_lse=True, _dtype=naive_dtype(dtype), **kw)
        close3(out, c_out, r_out, n_out, dtype)
        close3(lse, c_lse, r_lse, n_lse, lse.dtype, what="lse")


def _same_nonfinite_close(got, want, dtype, what):
    """The same NaN and infinity entries as the CPU backend, and the finite ones close to it."""
    got, want = np.asarray(got).astype(np.float64), np.asarray(want).astype(np.float64)
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"{what}: NaN entries differ from the CPU backend"
    assert np.array_equal(np.isinf(got), np.isinf(want)), f"{what}: infinite entries differ from the CPU backend"
    inf = np.isinf(want)
    assert np.array_equal(got[inf], want[inf]), f"{what}: infinite entries differ from the CPU backend"
    fin = np.isfinite(want)
    tol = 8 * ATOL[np.dtype(dtype)] if what == "out" else 1e-4
    assert np.abs(got[fin] - want[fin]).max(initial=0.0) <= tol, what


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("kw", [dict(causal=True), dict(window=(30, 5)), dict(causal=True, key_lengths=[300, 260])],
                         ids=["causal", "window", "causal-lens"])
def test_attention_nonfinite_masked_keys(rng, dtype, D, kw):
    """Infinities and NaN in V (and NaN in K) at keys some rows of a tile do not see: those rows stay
    finite (the contract never reads a masked key's values), the others get what the CPU backend gives
    (the tensor-core kernels' slow PV path)."""
    need("attention")
    dt = DT[dtype]
    q, k, v = qkv(rng, 2, 2, 2, 300, 300, D, D, dt)
    v[:, :, 250, 5] = np.inf
    v[:, 1, 261, 7] = -np.inf
    v[0, :, 270, 9] = np.nan
    k[:, :, 280, 3] = np.nan
    out, lse = gpu_run(attnkit.attention, q, k, v, return_lse=True, **kw)
    c_out, c_lse = attnkit.attention(q, k, v, return_lse=True, **kw)
    _same_nonfinite_close(out, c_out, dt, "out")
    _same_nonfinite_close(lse, c_lse, dt, "lse")


# Each tile-shape variant of the v2 tensor-core kernel (ATTNKIT_MMA_VARIANT, read once per process, so each
# runs in a subprocess) and the previous kernel ("v1"), float16 (bfloat16 takes the same code paths but
# needs torch tensors), against the CPU backend and the oracle.
_VARIANT_SCRIPT = """
import sys
import cupy, numpy as np, attnkit
d = np.load(sys.argv[1], allow_pickle=True)
res = {}
for name in d["names"]:
    kw = d[name + ":kw"].item()
    out, lse = attnkit.attention(*(cupy.asarray(d[name + ":" + x]) for x in "qkv"), return_lse=True, **kw)
    res[name + ":out"], res[name + ":lse"] = cupy.asnumpy(out), cupy.asnumpy(lse)
res["v2"] = np.array(attnkit._core.cuda_has_kernel("attention_mma_v2"))
res["v2_small"] = np.array(attnkit._core.cuda_has_kernel("attention_mma_v2_small"))
np.savez(sys.argv[2], **res)
"""


@pytest.mark.parametrize("variant", ["0", "1", "2", "3", "4", "v1"])
def test_attention_mma_variants(rng, tmp_path, variant):
    need("attention")
    if FAKE or SANITIZER:
        pytest.skip("runs CuPy in a subprocess")
    import os
    import subprocess
    import sys

    F16 = np.dtype(np.float16)
    cases = {}
    for D in (64, 128):
        cases[f"nc{D}"] = (qkv(rng, 2, 4, 2, 300, 300, D, D, F16, 2.0), {})
        cases[f"c{D}"] = (qkv(rng, 1, 2, 2, 270, 333, D, D, F16), dict(causal=True))
        cases[f"w{D}"] = (qkv(rng, 1, 2, 1, 260, 260, D, D, F16), dict(window=(50, 20), key_lengths=[200]))
    for D in (64, 128):  # the slow PV of tiles with masked pairs and an infinity / NaN in V
        cases[f"inf{D}"] = (qkv(rng, 1, 2, 2, 300, 300, D, D, F16), dict(causal=True))
        cases[f"inf{D}"][0][2][:, :, 250, 5] = np.inf
        cases[f"inf{D}"][0][2][:, 1, 299, 9] = np.nan
    arrays = {"names": np.array(list(cases))}
    for name, ((q, k, v), kw) in cases.items():
        arrays.update({name + ":q": q, name + ":k": k, name + ":v": v, name + ":kw": np.array(kw, dtype=object)})
    np.savez(tmp_path / "in.npz", **arrays)
    env = dict(os.environ, ATTNKIT_MMA_VARIANT=variant, ATTNKIT_CUDA_UNVERIFIED="1")
    r = subprocess.run([sys.executable, "-c", _VARIANT_SCRIPT, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    print(f"variant {variant}: attention_mma_v2 enabled: {bool(got['v2'])}, attention_mma_v2_small (variant 3) "
          f"enabled: {bool(got['v2_small'])}")
    for name, ((q, k, v), kw) in cases.items():
        c_out, c_lse = attnkit.attention(q, k, v, return_lse=True, **kw)
        if name.startswith("inf"):
            _same_nonfinite_close(got[name + ":out"], c_out, F16, "out")
            _same_nonfinite_close(got[name + ":lse"], c_lse, F16, "lse")
            continue
        r_out, r_lse = ref.attention(q, k, v, return_lse=True, **kw)
        n_out, n_lse = ref.attention(q, k, v, return_lse=True, _dtype=naive_dtype(F16), **kw)
        close3(got[name + ":out"], c_out, r_out, n_out, F16, what=f"{name} out")
        close3(got[name + ":lse"], c_lse, r_lse, n_lse, c_lse.dtype, what=f"{name} lse")


def test_attention_mma_v3_bits_as_v0(rng, tmp_path):
    """Variant 3 of the v2 kernel (64-row blocks, 0's key tiles), which attention.cu picks by shape, gives
    variant 0's bits where every row's keys start at 0 (no left window): a row's arithmetic does not depend
    on the rows beside it (cuda/attention_mma2.cuh). A failure here with test_attention_mma_variants[3]
    passing means 3 is correct but rounds differently from 0 (the choice by shape would change results)."""
    need("attention")
    if FAKE or SANITIZER:
        pytest.skip("runs CuPy in a subprocess")
    import os
    import subprocess
    import sys

    F16 = np.dtype(np.float16)
    cases = {}
    for D in (64, 128):
        cases[f"nc{D}"] = (qkv(rng, 2, 4, 2, 300, 300, D, D, F16, 2.0), {})
        cases[f"c{D}"] = (qkv(rng, 1, 4, 1, 270, 333, D, D, F16, 2.0), dict(causal=True))
        cases[f"cl{D}"] = (qkv(rng, 2, 2, 2, 333, 200, D, D, F16), dict(causal=True, key_lengths=[200, 77]))
    arrays = {"names": np.array(list(cases))}
    for name, ((q, k, v), kw) in cases.items():
        arrays.update({name + ":q": q, name + ":k": k, name + ":v": v, name + ":kw": np.array(kw, dtype=object)})
    np.savez(tmp_path / "in.npz", **arrays)
    got = {}
    for variant in ("0", "3"):
        env = dict(os.environ, ATTNKIT_MMA_VARIANT=variant, ATTNKIT_CUDA_UNVERIFIED="1")
        out = tmp_path / f"out{variant}.npz"
        r = subprocess.run([sys.executable, "-c", _VARIANT_SCRIPT, str(tmp_path / "in.npz"), str(out)], env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        got[variant] = np.load(out)
    if not (got["3"]["v2"] and got["3"]["v2_small"]):
        pytest.skip("the v2 kernel or its variant 3 is not enabled")
    for name in cases:
        for x in ("out", "lse"):
            a, b = got["0"][f"{name}:{x}"], got["3"][f"{name}:{x}"]
            assert np.array_equal(a, b, equal_nan=True), (name, x, float(np.nanmax(np.abs(a.astype(np.float64) - b))))


@pytest.mark.parametrize("shape", [(0, 2, 5, 5), (2, 0, 5, 5), (1, 2, 0, 5), (1, 2, 5, 0), (1, 2, 0, 0)],
                         ids=["B0", "H0", "Sq0", "Sk0", "S0"])
@pytest.mark.parametrize("fn", ["attention", "attention_weights"])
def test_attention_empty_small(rng, shape, fn):
    """Empty sizes: the CPU's result exactly (no keys: out = 0, lse = -inf; no rows: empty arrays)."""
    need(fn)
    B, H, Sq, Sk = shape
    q, k, v = randn(rng, (B, H, Sq, 32), F32), randn(rng, (B, H, Sk, 32), F32), randn(rng, (B, H, Sk, 16), F32)
    if fn == "attention":
        out, lse = gpu_run(attnkit.attention, q, k, v, causal=True, return_lse=True)
        c_out, c_lse = attnkit.attention(q, k, v, causal=True, return_lse=True)
        same(out, c_out)
        same(lse, c_lse, "lse")
    else:
        same(gpu_run(attnkit.attention_weights, q, k), attnkit.attention_weights(q, k))


EMPTY_CALLS = {  # (q, k, v, aux) -> result; aux holds the other arrays (features, projections, lam), made per test
    "merge_attention": lambda q, k, v, a: attnkit.merge_attention([q, q], [q[..., 0], q[..., 0]]),
    "block_sparse_attention": lambda q, k, v, a: attnkit.block_sparse_attention(
        q, k, v, layouts.sliding_window(q.shape[2], 4, 1), return_lse=True),
    "lsh_attention": lambda q, k, v, a: attnkit.lsh_attention(q, k, v, num_buckets=4, return_lse=True),
    "linear_attention": lambda q, k, v, a: attnkit.linear_attention(q, k, v, causal=False, return_state=True),
    "performer_attention": lambda q, k, v, a: attnkit.performer_attention(q, k, v, a["features"], causal=True),
    "linformer_attention": lambda q, k, v, a: attnkit.linformer_attention(q, k, v, a["E"], return_lse=True),
    "dynamic_linear_attention": lambda q, k, v, a: attnkit.dynamic_linear_attention(
        q, k, v, a["lam"], capacity=2, return_aux=True),
}


@pytest.mark.parametrize("B,H,S", [(0, 2, 8), (1, 0, 8), (1, 2, 0)], ids=["B0", "H0", "S0"])
@pytest.mark.parametrize("mechanism", list(EMPTY_CALLS))
def test_empty_small(rng, mechanism, B, H, S):
    """Empty sizes for the other mechanisms: the CPU backend's result, bit for bit."""
    need(mechanism)
    q, k, v = qkv(rng, B, H, H, S, S, 16, 8, F32)
    aux = {"features": attnkit.random_features(8, 16), "E": attnkit.linformer_projection(4, S),
           "lam": np.ones((B, H, S, 2), np.float32)}
    got, want = gpu_run(EMPTY_CALLS[mechanism], q, k, v, aux), EMPTY_CALLS[mechanism](q, k, v, aux)
    assert _result_bytes(got) == _result_bytes(want)
    for g, w in zip(_leaves(got), _leaves(want)):
        assert g.shape == w.shape and g.dtype == w.dtype


# ============================================================================== attention_weights
def _naive_weights(q, k, dtype, **kw):
    return ref.attention_weights(np.asarray(q).astype(naive_dtype(dtype)), np.asarray(k).astype(naive_dtype(dtype)),
                                 **kw)


WEIGHT_KW = {"plain": {}, "causal": {"causal": True}, "window": {"window": (3, 5)},
             "lens": {"key_lengths": "lens"}, "all": "all"}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("Sq,Sk", [(1, 1), (7, 33), (65, 65), (100, 17)])
@pytest.mark.parametrize("kind", list(WEIGHT_KW))
def test_attention_weights(rng, dtype, Sq, Sk, kind):
    need("attention_weights")
    B, Hq, Hkv = 2, 4, 2
    kw = WEIGHT_KW[kind]
    if kind == "lens":
        kw = dict(key_lengths=[min(5, Sk), 0])
    if kind == "all":
        kw = dict(mask=rng.random((Sq, Sk)) < 0.7, bias=randn(rng, (B, Hq, 1, Sk), np.float32),
                  alibi_slopes=rng.uniform(0, 0.3, Hq), softcap=4.0, causal=True)
    q, k = randn(rng, (B, Hq, Sq, 64), dtype), randn(rng, (B, Hkv, Sk, 64), dtype)
    w = gpu_run(attnkit.attention_weights, q, k, **kw)
    c = attnkit.attention_weights(q, k, **kw)
    r = ref.attention_weights(q, k, **kw)
    assert w.shape == (B, Hq, Sq, Sk) and w.dtype == dtype
    close3(w, c, r, _naive_weights(q, k, dtype, **kw), dtype, what="weights")


def test_attention_weights_small(rng):
    need("attention_weights")
    q, k = randn(rng, (1, 2, 5, 40), F32), randn(rng, (1, 1, 9, 40), F32)
    kw = dict(causal=True, mask=rng.random((5, 9)) < 0.7)
    close3(gpu_run(attnkit.attention_weights, q, k, **kw), attnkit.attention_weights(q, k, **kw),
           ref.attention_weights(q, k, **kw), _naive_weights(q, k, F32, **kw), F32, what="weights")


# ============================================================================== merge_attention
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("splits", [[0, 100], [0, 30, 100], [0, 1, 2, 50, 99, 100], [0, 64, 64, 100]],
                         ids=["one", "two", "many", "empty-part"])
@pytest.mark.parametrize("causal", [False, True])
def test_merge_attention(rng, dtype, splits, causal):
    need("merge_attention")
    q, k, v = randn(rng, (2, 4, 40, 64), dtype), randn(rng, (2, 2, 100, 64), dtype), randn(rng, (2, 2, 100, 48), dtype)
    outs, lses = [], []
    for a, b in zip(splits[:-1], splits[1:]):  # parts from the CPU backend (some rows empty: -inf)
        mask = np.zeros((1, 1, 40, 100), bool)
        mask[..., a:b] = True
        o, l = attnkit.attention(q, k, v, causal=causal, mask=mask, return_lse=True)
        outs.append(o)
        lses.append(l)
    out, lse = gpu_run(attnkit.merge_attention, outs, lses)
    c_out, c_lse = attnkit.merge_attention(outs, lses)
    r_out, r_lse = ref.merge_attention(outs, lses)
    n_out, n_lse = ref.merge_attention([o.astype(naive_dtype(dtype)) for o in outs], lses)
    close3(out, c_out, r_out, n_out, dtype)
    close3(lse, c_lse, r_lse, n_lse, lse.dtype, what="lse")


def test_merge_attention_small(rng):
    """Strided parts, a part that is -inf everywhere, rank 3."""
    need("merge_attention")
    o = randn(rng, (3, 6, 8, 16), F32)[:, ::2]  # non-contiguous
    l1, l2 = randn(rng, (3, 3, 8), F32), np.full((3, 3, 8), -np.inf, np.float32)
    l2[0, 0, 0] = 0.5
    outs, lses = [o, o * 2, o[..., ::-1]], [l1, l2, l1]
    out, lse = gpu_run(attnkit.merge_attention, outs, lses)
    c_out, c_lse = attnkit.merge_attention(outs, lses)
    r_out, r_lse = ref.merge_attention(outs, lses)
    close3(out, c_out, r_out, r_out, F32)
    close3(lse, c_lse, r_lse, r_lse, F32, what="lse")
