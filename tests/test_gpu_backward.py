"""GPU suite, gradients: attention_backward (every masking feature, GQA, dbias, fully masked rows, strides,
dtypes, empty sizes), block_sparse_attention_backward and linformer_attention_backward on CuPy arrays,
against the float64 oracle and the CPU backend on the same inputs (out and lse from the CPU forward, so
that only the backward differs). Helpers and conventions: gpu_common.py."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import attnkit
from attnkit import layouts
from attnkit import reference as ref

from conftest import DTYPE_IDS, DTYPES, magnitude, naive_dtype, randn, to_f64
from gpu_common import DT, F32, FAKE, GPU_MARKS, close3, gpu_run, need, qkv, same
from gpu_common import random_mask as _mask

pytestmark = GPU_MARKS

NAMES = ("dq", "dk", "dv", "dbias")


def _compare(got, cpu, want, naive, dtype, xs, lse=None):
    """Each gradient vs the oracle and the CPU backend; dbias in the bias's dtype. Exact zeros are asked
    where the contract makes them (given lse): dq on rows without keys (lse = -inf), dk and dv on keys no
    row sees (dv zero in the CPU result and the oracle). A row with a single key has dS = p (dp - delta) = 0
    only up to rounding once dp and delta are summed in different orders (the tensor-core kernels)."""
    assert len(got) == len(cpu) == len(want)
    exact = [None] * len(got)
    if lse is not None:
        exact[0] = np.isneginf(np.asarray(lse))[..., None]
        exact[1] = exact[2] = ((to_f64(cpu[2]) == 0) & (to_f64(want[2]) == 0)).all(-1, keepdims=True)
    for name, g, c, r, n, x, z in zip(NAMES, got, cpu, want, naive, xs, exact):
        assert g.shape == np.shape(x) and g.dtype == c.dtype, (name, g.shape, g.dtype, c.dtype)
        tol_dtype = x.dtype if name == "dbias" and x.dtype.itemsize < np.dtype(dtype).itemsize else dtype
        # the kernels start from the forward's rounded out and lse (tests/test_backward.py's check)
        close3(g, c, r, n, tol_dtype, what=name, atol_scale=4 * magnitude(r), exact_zero=z)


def _check(rng, dtype, q, k, v, *, return_dbias=False, **kw):
    out, lse = attnkit.attention(q, k, v, return_lse=True, **kw)
    dout = randn(rng, out.shape, dtype)
    got = gpu_run(attnkit.attention_backward, dout, q, k, v, out, lse, return_dbias=return_dbias, **kw)
    cpu = attnkit.attention_backward(dout, q, k, v, out, lse, return_dbias=return_dbias, **kw)
    want = ref.attention_backward(dout, q, k, v, return_dbias=return_dbias, **kw)
    naive = ref.attention_backward(dout, q, k, v, return_dbias=return_dbias, _dtype=naive_dtype(dtype), **kw)
    _compare(got, cpu, want, naive, dtype, (q, k, v, kw.get("bias")), lse=lse)
    return got, cpu


def B(id_, B=1, Hq=2, Hkv=None, Sq=33, Sk=None, D=64, Dv=None, dtype="f32", layout="contig", **kw):
    spec = dict(B=B, Hq=Hq, Hkv=Hq if Hkv is None else Hkv, Sq=Sq, Sk=Sq if Sk is None else Sk, D=D,
                Dv=D if Dv is None else Dv, dtype=DT[dtype], layout=layout, kw=kw)
    return pytest.param(spec, id=id_)


# The tensor-core backward (cuda/attention_backward_mma.cu, internal name "attention_backward_mma", run under
# ATTNKIT_CUDA_UNVERIFIED=1): float16 / bfloat16, D = Dv in {64, 128}, causal / windows / key_lengths / GQA,
# tiles of 64 keys and 64 (dQ) or 64 / 32 (dK, dV) query rows, so odd sizes leave partial tiles on both
# sides. Any other case of this file that fits those limits takes the same path (shape-S130-D64, lens-*).
MMA_CASES = (
    [B(f"mma-{d}-D{D}-{'c' if c else 'nc'}", B=2, Hq=4, Hkv=2, Sq=130, Sk=200, D=D, dtype=d, causal=c)
     for d in ("f16", "bf16") for D in (64, 128) for c in (False, True)]
    + [B(f"mma-cross-{Sq}x{Sk}-{d}-D{D}", Hq=2, Sq=Sq, Sk=Sk, D=D, dtype=d, causal=True)
       for d, D in [("f16", 128), ("bf16", 64)] for Sq, Sk in [(200, 77), (16, 300), (1, 65), (64, 64)]]
    + [B(f"mma-lens-{d}-D{D}-{'c' if c else 'nc'}", B=4, Sq=97, Sk=160, D=D, dtype=d, causal=c,
         key_lengths=np.array([160, 0, 63, 129])) for d, D in [("f16", 64), ("bf16", 128)] for c in (False, True)]
    + [B(f"mma-window-{w[0]}-{w[1]}-{d}", Hkv=1, Sq=150, Sk=150, D=64, dtype=d, window=w)
       for w in [(30, 5), (None, 0), (70, None)] for d in ("f16", "bf16")]
    + [B(f"mma-mqa-{d}", B=2, Hq=6, Hkv=1, Sq=70, Sk=90, D=128, dtype=d, causal=True, scale=0.3)
       for d in ("f16", "bf16")]
    # score terms (second gate "attention_backward_mma_terms"; the mask-*, bias-dbias-* and alibi-softcap-*
    # cases above with f16 / bf16 take this path too)
    + [B(f"mma-terms-{d}-D{D}", B=2, Hq=4, Hkv=2, Sq=90, Sk=140, D=D, dtype=d, causal=True, window=(100, 0),
         mask=_mask((4, 90, 140), 0.8), bias=lambda rng: randn(rng, (2, 1, 90, 140), np.float32),
         key_lengths=[140, 77], scale=0.2, softcap=8.0, alibi_slopes=lambda rng: rng.uniform(0, 0.1, 4),
         return_dbias=True) for d, D in [("f16", 128), ("bf16", 64)]]
    # small (the sanitizer subset): partial tiles on both sides, a fully masked batch (key_lengths 0)
    + [B(f"small-mma-f16-D{D}", B=2, Hq=2, Hkv=1, Sq=40, Sk=50, D=D, dtype="f16", causal=True,
         key_lengths=np.array([50, 0])) for D in (64, 128)]
    + [B("small-mma-terms-f16", B=2, Hq=2, Hkv=1, Sq=40, Sk=50, D=64, dtype="f16", causal=True,
         mask=_mask((2, 40, 50), 0.8), bias=lambda rng: randn(rng, (40, 50), np.float32), softcap=5.0,
         alibi_slopes=lambda rng: rng.uniform(0, 0.3, (2, 2)), key_lengths=np.array([50, 0]), return_dbias=True)]
)

BWD_CASES = (
    [B(f"small-{d}", Sq=7, Sk=13, D=32, dtype=d, causal=True) for d in DTYPE_IDS]
    + [B("small-mask-gqa-dbias", Hq=4, Hkv=2, Sq=5, Sk=9, D=40, mask=_mask((5, 9)), key_lengths=[7],
         bias=lambda rng: randn(rng, (4, 5, 9), np.float32), return_dbias=True)]
    + [B(f"shape-S{S}-D{D}-{d}", B=2, Sq=S, D=D, dtype=d, causal=(S % 2 == 1))
       for d in DTYPE_IDS for S, D in [(1, 64), (33, 32), (130, 64), (65, 80), (40, 256)]]
    + [B(f"Dv-{D}-{Dv}", Sq=19, Sk=45, D=D, Dv=Dv, causal=True) for D, Dv in [(3, 5), (33, 200), (1, 1)]]
    + [B(f"cross-{Sq}x{Sk}-{'c' if c else 'nc'}", Hq=3, Sq=Sq, Sk=Sk, D=64, Dv=32, causal=c)
       for Sq, Sk in [(1, 300), (5, 77), (100, 31), (64, 1)] for c in (False, True)]
    + [B(f"gqa-{Hq}-{Hkv}", B=2, Hq=Hq, Hkv=Hkv, Sq=37, Sk=70, D=32, Dv=48, causal=True)
       for Hq, Hkv in [(4, 2), (6, 1), (5, 5)]]
    + [B(f"window-{w[0]}-{w[1]}-{Sq}x{Sk}", Hkv=1, Sq=Sq, Sk=Sk, window=w)
       for w in [(0, 0), (16, 16), (None, 3), (70, None)] for Sq, Sk in [(97, 97), (40, 131), (131, 40)]]
    + [B(f"mask-{d}", B=2, Hq=3, Sq=45, Sk=70, mask=_mask((2, 1, 45, 70)), causal=True, dtype=d) for d in DTYPE_IDS]
    + [B(f"bias-dbias-{'x'.join(map(str, bs))}", B=2, Hq=3, Sq=45, Sk=70, return_dbias=True,
         bias=(lambda bs: lambda rng: randn(rng, bs, np.float32, 2.0))(bs))
       for bs in [(2, 3, 45, 70), (45, 70), (1, 3, 1, 70)]]
    + [B(f"bias-dbias-{d}", B=2, Hq=3, Sq=45, Sk=70, dtype=d, return_dbias=True,
         bias=(lambda d: lambda rng: randn(rng, (3, 45, 70), DT[d], 2.0))(d)) for d in DTYPE_IDS]
    + [B(f"lens-{d}-{'c' if c else 'nc'}", B=4, Sq=33, Sk=90, dtype=d, causal=c, key_lengths=np.array([90, 0, 1, 57]))
       for d in DTYPE_IDS for c in (False, True)]
    + [B(f"alibi-softcap-{d}", B=2, Hq=4, Hkv=2, Sq=50, Sk=80, dtype=d, causal=True, softcap=5.0,
         alibi_slopes=lambda rng: rng.uniform(0, 0.5, (2, 4))) for d in DTYPE_IDS]
    + [B(f"combined-{d}", B=2, Hq=4, Hkv=2, Sq=70, Sk=150, D=80, Dv=48, dtype=d, causal=True, window=(60, 2),
         mask=_mask((4, 70, 150), 0.8), bias=lambda rng: randn(rng, (2, 1, 70, 150), np.float16),
         key_lengths=[150, 101], scale=0.2, softcap=8.0, alibi_slopes=lambda rng: rng.uniform(0, 0.1, 4),
         return_dbias=True) for d in DTYPE_IDS]
    + [B(f"strided-{d}", B=2, Hq=4, Hkv=2, Sq=37, Sk=50, D=64, dtype=d, layout="strided", causal=True)
       for d in ("f32", "bf16")]
    + MMA_CASES
)


@pytest.mark.parametrize("spec", BWD_CASES)
def test_attention_backward(rng, spec):
    need("attention_backward")
    s = spec
    q, k, v = qkv(rng, s["B"], s["Hq"], s["Hkv"], s["Sq"], s["Sk"], s["D"], s["Dv"], s["dtype"], layout=s["layout"])
    kw = {key: (val(rng) if callable(val) else val) for key, val in s["kw"].items()}
    _check(rng, s["dtype"], q, k, v, **kw)


def test_attention_backward_fully_masked_rows_small(rng):
    """Rows without keys (mask, key_lengths 0) get exactly zero dq, and add nothing to dk / dv / dbias."""
    need("attention_backward")
    q, k, v = qkv(rng, 2, 2, 1, 6, 10, 16, 16, F32)
    mask = rng.random((2, 2, 6, 10)) < 0.7
    mask[0, 1, 2] = False
    bias = randn(rng, (2, 2, 6, 10), F32)
    got, cpu = _check(rng, F32, q, k, v, mask=mask, bias=bias, key_lengths=[10, 0], return_dbias=True)
    assert (got[0][0, 1, 2] == 0).all() and (got[0][1] == 0).all()
    assert (got[1][1] == 0).all() and (got[2][1] == 0).all() and (got[3][1] == 0).all()


@pytest.mark.parametrize("shape", [(0, 2, 5, 5), (1, 2, 0, 5), (1, 2, 5, 0), (1, 2, 0, 0)], ids=str)
def test_attention_backward_empty_small(rng, shape):
    need("attention_backward")
    B_, H, Sq, Sk = shape
    q, k, v = qkv(rng, B_, H, H, Sq, Sk, 8, 8, F32)
    out, lse = attnkit.attention(q, k, v, return_lse=True)
    dout = randn(rng, out.shape, F32)
    got = gpu_run(attnkit.attention_backward, dout, q, k, v, out, lse)
    for name, g, c in zip(NAMES, got, attnkit.attention_backward(dout, q, k, v, out, lse)):
        same(g, c, name)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("make", ["window", "bigbird", "per_head"])
@pytest.mark.parametrize("causal", [False, True])
def test_block_sparse_attention_backward(rng, dtype, make, causal):
    need("block_sparse_attention_backward")
    S, Hq, Hkv = 100, 4, 2
    layout = {"window": lambda: layouts.sliding_window(S, 16, 1),
              "bigbird": lambda: layouts.bigbird(S, 16, seed=3, window_blocks=1, global_blocks=1, random_blocks=2),
              "per_head": lambda: layouts.bigbird(S, 16, seed=5, num_heads=Hq)}[make]()
    q, k, v = qkv(rng, 2, Hq, Hkv, S, S, 32, 32, dtype)
    kw = dict(causal=causal, key_lengths=[S, S - 7])
    out, lse = attnkit.block_sparse_attention(q, k, v, layout, return_lse=True, **kw)
    dout = randn(rng, out.shape, dtype)
    got = gpu_run(attnkit.block_sparse_attention_backward, dout, q, k, v, out, lse, layout, **kw)
    cpu = attnkit.block_sparse_attention_backward(dout, q, k, v, out, lse, layout, **kw)
    want = ref.block_sparse_attention_backward(dout, q, k, v, layout, **kw)
    naive = ref.block_sparse_attention_backward(dout, q, k, v, layout, _dtype=naive_dtype(dtype), **kw)
    _compare(got, cpu, want, naive, dtype, (q, k, v))


@pytest.mark.parametrize("dtype", [F32, np.dtype(np.float64)], ids=["f32", "f64"])
@pytest.mark.parametrize("shared", [True, False])
def test_linformer_attention_backward(rng, dtype, shared):
    need("linformer_attention", "attention_backward")
    B_, H, S, P, D = 2, 2, 40, 12, 16
    q, k, v = qkv(rng, B_, H, H, S, S, D, D, dtype)
    E = randn(rng, (P, S) if shared else (H, P, S), dtype, 0.2)
    F = None if shared else randn(rng, (H, P, S), dtype, 0.2)
    out, lse = attnkit.linformer_attention(q, k, v, E, F, return_lse=True, key_lengths=[S, S - 5])
    dout = randn(rng, out.shape, dtype)
    args = (dout, q, k, v, out, lse, E, F)
    got = gpu_run(attnkit.linformer_attention_backward, *args, key_lengths=[S, S - 5])
    cpu = attnkit.linformer_attention_backward(*args, key_lengths=[S, S - 5])
    want = ref.linformer_attention_backward(dout, q, k, v, E, F, key_lengths=[S, S - 5])
    naive = ref.linformer_attention_backward(dout, q, k, v, E, F, key_lengths=[S, S - 5], _dtype=naive_dtype(dtype))
    assert (got[4] is None) == (cpu[4] is None) == (F is None)
    for name, g, c, r, n in zip(("dq", "dk", "dv", "dE", "dF"), got, cpu, want, naive):
        if name == "dF" and F is None:
            continue
        close3(g, c, r, n, dtype, what=name, atol_scale=4 * magnitude(r))


# The tensor-core path against the SIMT kernels on the same inputs: the SIMT result comes from a child
# process with ATTNKIT_CUDA_BWD_SIMT=1 (read once per process, cuda/attention_backward_mma.cu).
SIMT_VS_MMA = [
    dict(B=2, Hq=4, Hkv=2, Sq=100, Sk=150, D=64, dtype="f16", kw=dict(causal=True, key_lengths=[150, 90])),
    dict(B=1, Hq=2, Hkv=2, Sq=77, Sk=64, D=128, dtype="f16", kw=dict()),
    dict(B=1, Hq=3, Hkv=1, Sq=129, Sk=129, D=128, dtype="bf16", kw=dict(window=(40, 3))),
    dict(B=1, Hq=2, Hkv=1, Sq=70, Sk=90, D=64, dtype="f16",
         kw=dict(causal=True, softcap=6.0, alibi_slopes=np.array([0.1, 0.2], np.float32))),
]

_SIMT_CHILD = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import ml_dtypes
import attnkit
from gpu_common import dev, host
for name in sys.argv[2:]:
    d = np.load(name + ".in.npz", allow_pickle=True)
    dt = ml_dtypes.bfloat16 if str(d["dtype"]) == "bf16" else np.float16
    args = [d[n].astype(dt) for n in ("dout", "q", "k", "v", "out")] + [d["lse"]]
    got = host(attnkit.attention_backward(*dev(args), **dev(d["kw"].item())))
    np.savez(name + ".simt.npz", *[np.asarray(g).astype(np.float32) for g in got[:3]])
"""


def test_attention_backward_mma_vs_simt(rng, tmp_path):
    """Same inputs through the tensor-core path (this process) and the SIMT kernels (one child process with
    ATTNKIT_CUDA_BWD_SIMT=1 for all cases): within tolerance of each other, and not bit-identical (which
    would mean that the tensor-core path did not run: it rounds P and dS to the input dtype). The oracle
    comparisons of the same path are MMA_CASES."""
    if FAKE or os.environ.get("ATTNKIT_CUDA_UNVERIFIED") != "1":
        pytest.skip("the tensor-core backward runs only under ATTNKIT_CUDA_UNVERIFIED=1 on a GPU")
    need("attention_backward")
    f32 = lambda a: np.asarray(a).astype(np.float32)  # noqa: E731  (exact for float16 / bfloat16)
    runs = []
    for idx, c in enumerate(SIMT_VS_MMA):
        dtype = DT[c["dtype"]]
        q, k, v = qkv(rng, c["B"], c["Hq"], c["Hkv"], c["Sq"], c["Sk"], c["D"], c["D"], dtype)
        kw = c["kw"]
        out, lse = attnkit.attention(q, k, v, return_lse=True, **kw)
        dout = randn(rng, out.shape, dtype)
        got = gpu_run(attnkit.attention_backward, dout, q, k, v, out, lse, **kw)
        name = str(tmp_path / f"case{idx}")
        np.savez(name + ".in.npz", dout=f32(dout), q=f32(q), k=f32(k), v=f32(v), out=f32(out), lse=f32(lse),
                 dtype=c["dtype"], kw=np.array(kw, dtype=object))
        runs.append((c, name, got, ref.attention_backward(dout, q, k, v, **kw)))
    env = dict(os.environ, ATTNKIT_CUDA_BWD_SIMT="1")
    r = subprocess.run([sys.executable, "-c", _SIMT_CHILD, os.path.dirname(os.path.abspath(__file__))]
                       + [name for _, name, _, _ in runs], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for c, name, got, want in runs:
        simt = np.load(name + ".simt.npz")
        differs = False
        for idx, what in enumerate(("dq", "dk", "dv")):
            g, s_ = f32(got[idx]), simt[f"arr_{idx}"]
            tol = 8 * {"f16": 2e-3, "bf16": 1.6e-2}[c["dtype"]] * magnitude(want[idx])
            err = float(np.abs(g.astype(np.float64) - s_).max(initial=0.0))
            assert err <= tol, f"{c}: {what}: tensor-core vs SIMT max difference {err:.3g} > {tol:.3g}"
            differs |= not np.array_equal(g, s_)
        assert differs, f"{c}: tensor-core and SIMT results are bit-identical: did the tensor-core path run?"
