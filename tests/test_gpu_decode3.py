"""GPU suite, the decode kernel v3 (cuda/attention_decode3.cuh, internal name "attention_decode_v3": tensor
cores, float16 / bfloat16, D = Dv in {64, 128}, Sq * Hq / Hkv <= 16 rows per kv head). It runs where
ATTNKIT_CUDA_UNVERIFIED=1 enables it (as tools/gpu_check.sh does); elsewhere the same calls run v2 / v1 and
these tests check those. Every contract feature over rows per kv head 1..16 (GQA, MQA, MHA, several query
rows with causal bottom-right), key lengths around the 16-key tiles and 64-key split multiples,
key_lengths with empty rows, windows, masks / bias with fully masked rows, soft cap, ALiBi, scale,
infinities / NaN behind masked keys (the element-wise PV), strides, empty sizes, head dims v3 does not
take (the fallback), each case under one of v3's variants (tuning options cuda_decode_stages /
cuda_decode3_blocks: cp.async stages per warp, target grid size -> split count), and v3 against v2.
Helpers and conventions: gpu_common.py."""

from __future__ import annotations

import numpy as np
import pytest

import attnkit
from attnkit._tuning import tuning

from conftest import ATOL, randn
from gpu_common import DT, FAKE, GPU_MARKS, gpu_run, need, qkv, same, same_nonfinite_close
from gpu_common import decode_case as C, decode_check, decode_inputs as _inputs, decode_params, decode_strided_inputs
from gpu_common import masked_rows_mask as _masked_rows_mask, neg_inf_bias as _neg_inf_bias, random_mask as _mask

pytestmark = GPU_MARKS

VARIANTS = [(3, 1024), (2, 64), (4, 65536), (2, 4096), (3, 64), (4, 512)]  # (stages, blocks)


def v3_enabled() -> bool:
    return bool(attnkit._core.cuda_has_kernel("attention_decode_v3"))


def test_decode_v3_status_report():
    """Says whether this run exercises v3 (informational; never fails)."""
    print("attention_decode_v3 enabled:", False if FAKE else v3_enabled())


_BASE = (
    # small: the sanitizer subset (-k small)
    [C(f"small-v3-{d}", B=1, Hq=4, Hkv=1, Sq=1, Sk=301, D=64, dtype=d, key_lengths=[300]) for d in ("f16", "bf16")]
    + [C("small-v3-rows16-causal", B=1, Hq=8, Hkv=2, Sq=4, Sk=517, D=128, causal=True)]
    # rows per kv head 1..16: MHA, GQA 4 (the benchmark's 32:8), G 3 / 5 / 8, MQA (Hkv = 1), Sq > 1 causal
    + [C(f"rows-Hq{Hq}-Hkv{Hkv}-Sq{Sq}-Sk{Sk}-D{D}-{d}", B=B, Hq=Hq, Hkv=Hkv, Sq=Sq, Sk=Sk, D=D, dtype=d,
         causal=(Sq > 1))
       for B, Hq, Hkv, Sq, Sk, D, d in [
           (1, 4, 4, 1, 2049, 128, "f16"), (2, 32, 8, 1, 2099, 128, "f16"), (1, 8, 2, 2, 1999, 64, "f16"),
           (1, 6, 2, 2, 777, 128, "f16"), (2, 8, 1, 1, 2049, 64, "f16"), (1, 16, 1, 1, 1030, 128, "f16"),
           (1, 4, 4, 3, 1000, 64, "f16"), (1, 2, 2, 8, 1500, 128, "f16"), (1, 4, 2, 8, 333, 64, "f16"),
           (1, 5, 1, 3, 64, 128, "f16"), (1, 4, 1, 4, 700, 128, "f16"), (1, 1, 1, 15, 900, 64, "f16"),
           (2, 32, 8, 1, 2500, 128, "bf16"), (1, 8, 2, 2, 1001, 64, "bf16"), (1, 16, 1, 1, 1030, 128, "bf16"),
           (1, 2, 2, 8, 700, 128, "bf16")]]
    # head dims v3 does not take (v2 / v1 run them): D != Dv, 96, 256, small
    + [C(f"fallback-D{D}-Dv{Dv}", B=1, Hq=8, Hkv=2, Sq=1, Sk=777, D=D, Dv=Dv, causal=True, window=(500, 0))
       for D, Dv in [(96, 96), (256, 256), (64, 128), (128, 64), (32, 32), (40, 24)]]
    # key lengths around the tiles (16 keys per warp tile, 64 per block step, splits of >= 256 keys)
    + [C(f"Sk{Sk}-D{D}", B=1, Hq=8, Hkv=2, Sq=1, Sk=Sk, D=D)
       for Sk in (1, 2, 15, 16, 17, 63, 64, 65, 255, 256, 257, 511, 513) for D in (64, 128)]
    # key_lengths with empty rows (0) and short ones; causal bottom-right with Sq > 1
    + [C(f"lens-{d}-D{D}", B=4, Hq=8, Hkv=2, Sq=2, Sk=1501, D=D, dtype=d, causal=True,
         key_lengths=[1501, 0, 1, 1234]) for d in ("f16", "bf16") for D in (64, 128)]
    + [C("lens-mqa", B=3, Hq=8, Hkv=1, Sq=1, Sk=900, key_lengths=[17, 900, 255])]
    # explicit windows (left / right / both), causal and not
    + [C(f"window-{w[0]}-{w[1]}-{'c' if c else 'nc'}", B=1, Hq=8, Hkv=2, Sq=2, Sk=1500, window=w, causal=c)
       for w, c in [((100, 0), True), ((0, 0), False), ((300, 300), False), ((None, 5), True), ((1000, None), False),
                    ((7, 0), True)]]
    # masks: random, a head fully masked (rows = 0 / -inf), broadcast shapes
    + [C(f"mask-{d}", B=2, Hq=8, Hkv=2, Sq=1, Sk=2047, dtype=d, mask=_mask((2, 8, 1, 2047)))
       for d in ("f16", "bf16")]
    + [C("mask-masked-rows", B=2, Hq=8, Hkv=2, Sq=2, Sk=1100, mask=_masked_rows_mask(2, 8, 2, 1100))]
    + [C("mask-bcast", B=2, Hq=8, Hkv=2, Sq=1, Sk=1500, D=64, mask=_mask((1, 1, 1, 1500), 0.5))]
    # bias: -inf entries and a fully masked row, broadcast
    + [C(f"bias-{bd}", B=2, Hq=8, Hkv=2, Sq=1, Sk=1300,
         bias=(lambda bd: lambda rng: randn(rng, (2, 8, 1, 1300), DT[bd], 2.0))(bd)) for bd in ("f32", "bf16")]
    + [C("bias-neginf", B=2, Hq=4, Hkv=1, Sq=2, Sk=900, D=64, bias=_neg_inf_bias(2, 4, 2, 900))]
    + [C("bias-bcast", B=2, Hq=8, Hkv=2, Sq=1, Sk=1300, bias=lambda rng: randn(rng, (1300,), np.float32, 2.0))]
    # ALiBi, softcap, scale
    + [C(f"alibi-softcap-{d}", B=2, Hq=8, Hkv=2, Sq=2, Sk=2000, dtype=d, causal=True, softcap=5.0, scale_in=2.0,
         key_lengths=[2000, 1777], alibi_slopes=lambda rng: rng.uniform(0, 0.05, (2, 8))) for d in ("f16", "bf16")]
    + [C(f"scale-{s}", B=1, Hq=8, Hkv=2, Sq=1, Sk=800, scale=s) for s in (0.0, -0.3, 10.0)]
    + [C("combined", B=2, Hq=8, Hkv=2, Sq=2, Sk=2222, D=64, causal=True, window=(1500, 0),
         mask=_mask((8, 2, 2222), 0.9), bias=lambda rng: randn(rng, (2, 1, 2, 2222), np.float16),
         key_lengths=[2222, 1500], scale=0.2, softcap=8.0, alibi_slopes=lambda rng: rng.uniform(0, 0.01, 8))]
    # long keys: many splits
    + [C("long", B=1, Hq=8, Hkv=2, Sq=1, Sk=12000, key_lengths=[11999]),
       C("long-Sk-big", B=1, Hq=4, Hkv=1, Sq=1, Sk=40000, D=64)]
)
CASES = decode_params(_BASE, VARIANTS, "sb")


def _check(q, k, v, kw, dtype, variant):
    stages, blocks = variant
    return decode_check(q, k, v, kw, dtype, cuda_decode=0, cuda_decode_stages=stages, cuda_decode3_blocks=blocks)


@pytest.mark.parametrize("spec,variant", CASES)
def test_decode_v3(rng, spec, variant):
    need("attention")
    q, k, v, kw = _inputs(rng, spec)
    _check(q, k, v, kw, spec["dtype"], variant)


@pytest.mark.parametrize("stages", [2, 3, 4])
@pytest.mark.parametrize("blocks", [64, 65536])
@pytest.mark.parametrize("D", [64, 128])
def test_decode_v3_variants(rng, stages, blocks, D):
    """Every variant on the benchmark's shape (GQA 32:8), a short key length for the test's time."""
    need("attention")
    q, k, v = qkv(rng, 1, 32, 8, 1, 2001, D, D, DT["f16"])
    _check(q, k, v, {"key_lengths": [1999]}, DT["f16"], (stages, blocks))


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_decode_v3_fully_masked_rows(rng, dtype):
    """Rows that see no key give exactly 0 and LSE = -inf (key_lengths = 0, an all-False mask row, a -inf
    bias row, causal with Sq > Sk), through the split merge (blocks 65536: many splits) and without it."""
    need("attention")
    dt = DT[dtype]
    B, Hq, Hkv, Sq, Sk = 2, 8, 2, 2, 1200
    q, k, v = qkv(rng, B, Hq, Hkv, Sq, Sk, 128, 128, dt)
    mask = np.ones((Sq, Sk), bool)
    mask[1] = False
    bias = np.zeros((Hq, Sq, Sk), np.float32)
    bias[3, 0] = -np.inf
    for blocks in (64, 65536):
        for kw, rows in [(dict(key_lengths=[0, Sk]), np.s_[0]), (dict(mask=mask), np.s_[:, :, 1]),
                         (dict(bias=bias), np.s_[:, 3, 0])]:
            with tuning(cuda_decode=0, cuda_decode3_blocks=blocks):
                out, lse = gpu_run(attnkit.attention, q, k, v, return_lse=True, _stream=False, **kw)
            assert (np.asarray(out, np.float64)[rows] == 0).all() and np.isneginf(np.asarray(lse)[rows]).all(), kw
            _check(q, k, v, kw, dt, (2, blocks))
    # causal with more query rows than keys: the first rows see nothing
    q2, k2, v2 = qkv(rng, 1, 4, 1, 4, 2, 64, 64, dt)
    out, lse = _check(q2, k2, v2, dict(causal=True), dt, (3, 1024))
    assert (np.asarray(out, np.float64)[:, :, :2] == 0).all() and np.isneginf(np.asarray(lse)[:, :, :2]).all()


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("kw", [dict(causal=True), dict(window=(30, 5)), dict(causal=True, key_lengths=[300, 260])],
                         ids=["causal", "window", "causal-lens"])
def test_decode_v3_nonfinite_masked_keys(rng, dtype, D, kw):
    """Infinities and NaN in V (and NaN in K) at keys some rows of a tile do not see (Sq = 4 rows with
    causal / window ranges): those rows stay finite (a masked key's values are never read: v3's element-wise
    PV), the others get what the CPU backend gives."""
    need("attention")
    dt = DT[dtype]
    q, k, v = qkv(rng, 2, 4, 2, 4, 300, D, D, dt)
    v[:, :, 297, 5] = np.inf
    v[:, 1, 298, 7] = -np.inf
    v[0, :, 299, 9] = np.nan
    k[:, :, 298, 3] = np.nan
    v[:, :, 100, 1] = np.inf  # outside every window row's range: never loaded, or masked for all rows
    with tuning(cuda_decode=0):
        out, lse = gpu_run(attnkit.attention, q, k, v, return_lse=True, **kw)
    c_out, c_lse = attnkit.attention(q, k, v, return_lse=True, **kw)
    same_nonfinite_close(out, c_out, "out", atol=8 * ATOL[np.dtype(dt)])
    same_nonfinite_close(lse, c_lse, "lse", atol=1e-4)


@pytest.mark.parametrize("shape", [(0, 8, 2, 1, 50), (1, 8, 2, 0, 50), (1, 8, 2, 1, 0), (2, 4, 1, 3, 0)],
                         ids=["B0", "Sq0", "Sk0", "Sk0-rows"])
def test_decode_v3_empty_small(rng, shape):
    """Empty sizes: the CPU's result exactly (no keys: out = 0, lse = -inf; no rows: empty arrays)."""
    need("attention")
    B, Hq, Hkv, Sq, Sk = shape
    q, k, v = qkv(rng, B, Hq, Hkv, Sq, Sk, 64, 64, DT["f16"])
    with tuning(cuda_decode=0):
        out, lse = gpu_run(attnkit.attention, q, k, v, causal=True, return_lse=True)
    c_out, c_lse = attnkit.attention(q, k, v, causal=True, return_lse=True)
    same(out, c_out)
    same(lse, c_lse, "lse")


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_decode_v3_strided(rng, dtype):
    """Non-contiguous K / V the kernel still takes (16-byte aligned rows): K padded by 8 elements per row,
    V broadcast over the batch (zero stride), q head-transposed."""
    need("attention")
    dt = DT[dtype]
    q, k, v = decode_strided_inputs(rng, dt)
    _check(q, k, v, {"causal": True}, dt, (3, 1024))


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_decode_v3_matches_v2(rng, dtype):
    """v3 against v2 (tuning cuda_decode = 2) on the same device inputs: both within the tolerance rule of
    the CPU backend (checked above), and close to each other; and v3's variants give close results (the
    split count changes the merge's rounding only)."""
    need("attention")
    if FAKE or not v3_enabled():
        pytest.skip("attention_decode_v3 is not enabled in this run")
    dt = DT[dtype]
    q, k, v = qkv(rng, 2, 32, 8, 1, 2001, 128, 128, dt)
    kw = {"key_lengths": [2001, 1333], "causal": True}
    o3, l3 = _check(q, k, v, kw, dt, (3, 1024))
    with tuning(cuda_decode=2):
        o2, l2 = gpu_run(attnkit.attention, q, k, v, return_lse=True, **kw)
    tol = 2e-2 if dtype == "bf16" else 4e-3
    np.testing.assert_allclose(np.asarray(o2, np.float64), np.asarray(o3, np.float64), atol=tol, rtol=0)
    np.testing.assert_allclose(np.asarray(l2, np.float64), np.asarray(l3, np.float64), atol=1e-4, rtol=1e-5)
    o4, l4 = _check(q, k, v, kw, dt, (2, 65536))
    np.testing.assert_allclose(np.asarray(o4, np.float64), np.asarray(o3, np.float64), atol=tol, rtol=0)
    np.testing.assert_allclose(np.asarray(l4, np.float64), np.asarray(l3, np.float64), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("pdl", [1, 2], ids=["pdl", "nopdl"])
@pytest.mark.parametrize("stages", [2, 4])
def test_decode_v3_merge_launch(rng, pdl, stages):
    """The split merge with and without programmatic dependent launch (tuning cuda_decode3_pdl; sm_90+ has
    it): the same bits either way (and across stage counts: the stages change no reduction order)."""
    need("attention")
    q, k, v = qkv(rng, 2, 32, 8, 1, 3000, 128, 128, DT["f16"])
    kw = {"key_lengths": [3000, 2321]}
    with tuning(cuda_decode3_pdl=pdl, cuda_decode_stages=stages):
        out, lse = _check(q, k, v, kw, DT["f16"], (stages, 4096))
    with tuning(cuda_decode3_pdl=2, cuda_decode_stages=3, cuda_decode3_blocks=4096, cuda_decode=0):
        o2, l2 = gpu_run(attnkit.attention, q, k, v, return_lse=True, **kw)
    same(out, o2)
    same(lse, l2, "lse")
