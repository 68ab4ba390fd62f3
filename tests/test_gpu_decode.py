"""GPU suite, the decode kernel v2 (cuda/attention_decode2.cuh, internal name "attention_decode_v2": float16 /
bfloat16, Sq * Hq / Hkv <= 8 rows per kv head). It runs where ATTNKIT_CUDA_UNVERIFIED=1 enables it (as
tools/gpu_check.sh does); elsewhere the same calls run the v1 decode kernel and these tests check that.
Every contract feature over rows per kv head 1..8, GQA / MHA, odd key lengths, empty and fully masked rows,
head dims 8..256, each case under one of the kernel's variants (tuning options cuda_decode_keys /
cuda_decode_blocks: keys per lane group and step, target grid size -> split count), and v2 against v1.
Every call sets the tuning option cuda_decode = 2 (v2, never the tensor-core v3, which test_gpu_decode3.py
covers)
Helpers and conventions: gpu_common.py."""

from __future__ import annotations

import numpy as np
import pytest

import attnkit
from attnkit._tuning import tuning

from conftest import randn
from gpu_common import DT, FAKE, GPU_MARKS, gpu_run, need, qkv
from gpu_common import decode_case as C, decode_check, decode_inputs as _inputs, decode_params, decode_strided_inputs
from gpu_common import masked_rows_mask as _masked_rows_mask, neg_inf_bias as _neg_inf_bias, random_mask as _mask

pytestmark = GPU_MARKS

VARIANTS = [(4, 2048), (2, 64), (1, 4096), (4, 64), (2, 2048), (1, 64)]  # (keys, blocks)


def v2_enabled() -> bool:
    return bool(attnkit._core.cuda_has_kernel("attention_decode_v2"))


def test_decode_v2_status_report():
    """Says whether this run exercises v2 (informational; never fails)."""
    print("attention_decode_v2 enabled:", False if FAKE else v2_enabled())


_BASE = (
    # small: the sanitizer subset (-k small)
    [C(f"small-v2-{d}", B=1, Hq=4, Hkv=1, Sq=1, Sk=301, D=64, dtype=d, key_lengths=[300]) for d in ("f16", "bf16")]
    + [C("small-v2-rows8-causal", B=1, Hq=8, Hkv=2, Sq=2, Sk=517, D=128, causal=True)]
    # rows per kv head 1..8: MHA, GQA 4 (the benchmark's 32:8), G 3 / 8, several query rows
    + [C(f"rows-Hq{Hq}-Hkv{Hkv}-Sq{Sq}-Sk{Sk}-{d}", B=1, Hq=Hq, Hkv=Hkv, Sq=Sq, Sk=Sk, dtype=d, causal=(Sq > 1))
       for Hq, Hkv, Sq, Sk, d in [(4, 4, 1, 2049, "f16"), (32, 8, 1, 2099, "f16"), (8, 2, 2, 1999, "f16"),
                                  (6, 2, 2, 777, "f16"), (8, 1, 1, 2049, "f16"), (4, 4, 3, 1000, "f16"),
                                  (2, 2, 8, 1500, "f16"), (4, 2, 4, 333, "f16"), (3, 3, 5, 64, "f16"),
                                  (32, 8, 1, 2500, "bf16"), (8, 2, 2, 1001, "bf16"), (2, 2, 8, 700, "bf16")]]
    # head dims (every lane count: 8, 16, 32 lanes per key; D != Dv)
    + [C(f"dims-D{D}-Dv{Dv}-{d}", B=1, Hq=8, Hkv=2, Sq=1, Sk=1537, D=D, Dv=Dv, dtype=d, window=(600, 0), causal=True)
       for D, Dv, d in [(64, 64, "f16"), (256, 256, "f16"), (40, 24, "f16"), (16, 8, "f16"), (256, 200, "f16"),
                        (96, 128, "f16"), (8, 8, "f16"), (64, 64, "bf16"), (256, 256, "bf16")]]
    # odd / tiny key lengths (fewer keys than one step; a single key; keys < one split)
    + [C(f"Sk{Sk}", B=1, Hq=8, Hkv=2, Sq=1, Sk=Sk) for Sk in (1, 2, 7, 255, 257)]
    # key_lengths with empty rows (0) and short ones; causal bottom-right with Sq > 1
    + [C(f"lens-{d}", B=4, Hq=8, Hkv=2, Sq=2, Sk=1501, dtype=d, causal=True, key_lengths=[1501, 0, 1, 1234])
       for d in ("f16", "bf16")]
    # explicit windows (left / right / both), causal and not
    + [C(f"window-{w[0]}-{w[1]}-{'c' if c else 'nc'}", B=1, Hq=8, Hkv=2, Sq=2, Sk=1500, window=w, causal=c)
       for w, c in [((100, 0), True), ((0, 0), False), ((300, 300), False), ((None, 5), True), ((1000, None), False)]]
    # masks: random, a head fully masked (rows = 0 / -inf), broadcast shapes
    + [C(f"mask-{d}", B=2, Hq=8, Hkv=2, Sq=1, Sk=2047, dtype=d, mask=_mask((2, 8, 1, 2047)))
       for d in ("f16", "bf16")]
    + [C("mask-masked-rows", B=2, Hq=8, Hkv=2, Sq=2, Sk=1100, mask=_masked_rows_mask(2, 8, 2, 1100))]
    + [C("mask-bcast", B=2, Hq=8, Hkv=2, Sq=1, Sk=1500, mask=_mask((1, 1, 1, 1500), 0.5))]
    # bias: every dtype, -inf entries and a fully masked row, broadcast
    + [C(f"bias-{bd}", B=2, Hq=8, Hkv=2, Sq=1, Sk=1300,
         bias=(lambda bd: lambda rng: randn(rng, (2, 8, 1, 1300), DT[bd], 2.0))(bd)) for bd in ("f32", "f16", "bf16")]
    + [C("bias-neginf", B=2, Hq=4, Hkv=1, Sq=2, Sk=900, bias=_neg_inf_bias(2, 4, 2, 900))]
    + [C("bias-bcast", B=2, Hq=8, Hkv=2, Sq=1, Sk=1300, bias=lambda rng: randn(rng, (1300,), np.float32, 2.0))]
    # ALiBi, softcap, scale
    + [C(f"alibi-softcap-{d}", B=2, Hq=8, Hkv=2, Sq=2, Sk=2000, dtype=d, causal=True, softcap=5.0, scale_in=2.0,
         key_lengths=[2000, 1777], alibi_slopes=lambda rng: rng.uniform(0, 0.05, (2, 8))) for d in ("f16", "bf16")]
    + [C(f"scale-{s}", B=1, Hq=8, Hkv=2, Sq=1, Sk=800, scale=s) for s in (0.0, -0.3, 10.0)]
    + [C("combined", B=2, Hq=8, Hkv=2, Sq=2, Sk=2222, D=64, causal=True, window=(1500, 0),
         mask=_mask((8, 2, 2222), 0.9), bias=lambda rng: randn(rng, (2, 1, 2, 2222), np.float16),
         key_lengths=[2222, 1500], scale=0.2, softcap=8.0, alibi_slopes=lambda rng: rng.uniform(0, 0.01, 8))]
    # long keys: many splits
    + [C("long", B=1, Hq=8, Hkv=2, Sq=1, Sk=12000, key_lengths=[11999])]
)
CASES = decode_params(_BASE, VARIANTS, "kb")


def _check(q, k, v, kw, dtype, variant):
    keys, blocks = variant  # cuda_decode = 2: v2, never v3
    return decode_check(q, k, v, kw, dtype, cuda_decode=2, cuda_decode_keys=keys, cuda_decode_blocks=blocks)


@pytest.mark.parametrize("spec,variant", CASES)
def test_decode_v2(rng, spec, variant):
    need("attention")
    q, k, v, kw = _inputs(rng, spec)
    _check(q, k, v, kw, spec["dtype"], variant)


@pytest.mark.parametrize("keys", [1, 2, 4])
@pytest.mark.parametrize("blocks", [64, 65536])
def test_decode_v2_variants(rng, keys, blocks):
    """Every variant on the benchmark's shape (GQA 32:8, D = 128), a short key length for the test's time."""
    need("attention")
    q, k, v = qkv(rng, 1, 32, 8, 1, 2001, 128, 128, DT["f16"])
    _check(q, k, v, {"key_lengths": [1999]}, DT["f16"], (keys, blocks))


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_decode_v2_strided(rng, dtype):
    """Non-contiguous K / V the kernel still takes (16-byte aligned rows): K padded by 8 elements per row,
    V broadcast over the batch (zero stride), q head-transposed."""
    need("attention")
    dt = DT[dtype]
    q, k, v = decode_strided_inputs(rng, dt)
    _check(q, k, v, {"causal": True}, dt, (4, 2048))


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_decode_v2_matches_v1(rng, dtype):
    """v2 against the v1 kernel (tuning cuda_decode = 1) on the same device inputs: both within the
    tolerance rule of the CPU backend (checked above), and close to each other."""
    need("attention")
    if FAKE or not v2_enabled():
        pytest.skip("attention_decode_v2 is not enabled in this run")
    dt = DT[dtype]
    q, k, v = qkv(rng, 2, 32, 8, 1, 2001, 128, 128, dt)
    kw = {"key_lengths": [2001, 1333], "causal": True}
    o2, l2 = _check(q, k, v, kw, dt, (4, 2048))
    with tuning(cuda_decode=1):
        o1, l1 = gpu_run(attnkit.attention, q, k, v, return_lse=True, **kw)
    tol = 2e-2 if dtype == "bf16" else 4e-3
    np.testing.assert_allclose(np.asarray(o1, np.float64), np.asarray(o2, np.float64), atol=tol, rtol=0)
    np.testing.assert_allclose(np.asarray(l1, np.float64), np.asarray(l2, np.float64), atol=1e-4, rtol=1e-5)
