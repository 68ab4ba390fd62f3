"""GPU suite, gradients of linear attention and Performer: linear_attention_backward and
performer_attention_backward on CuPy arrays (cuda/linear_backward.cu, gated by the public names
"linear_attention_backward" / "performer_attention_backward" in cuda/runtime.cu's kCompiled list, so they run
where ATTNKIT_CUDA_UNVERIFIED=1 enables them, as tools/gpu_check.sh does; elsewhere the calls raise the core's
"no CUDA kernel enabled" reason and the cases are skipped) against the float64 oracle (attnkit.reference, the
tolerance rule of tests/test_linear_backward.py: atol in units of the gradient's size) and against the CPU
backend on the same inputs: causal (chunks of 64 with partial last ones) and bidirectional (state sums over 256
rows), every feature map and Performer kernel, GQA / MQA, key_lengths (0, partial, full), initial_state and
dfinal_state, eps = 0 and > 0, every dtype, head dims crossing the kernels' 64-wide tiles, strided views, empty
sizes, and bad input (a NumPy argument in a CuPy call: TypeError naming it). Helpers: gpu_common.py.
The sanitizer subset ("small": tools/gpu_check.sh) takes few of these cases (a causal linear one, a
bidirectional Performer one, the empty sizes, bad input): racecheck's time limit is shared by every file."""

from __future__ import annotations

import numpy as np
import pytest

import attnkit
from attnkit import reference as ref

from conftest import DTYPE_IDS, magnitude, naive_dtype, raises, randn
from gpu_common import DT, F32, FAKE, GPU_MARKS, _tiny, close3, cupy, gpu_run, need, qkv

pytestmark = GPU_MARKS

F64 = np.dtype(np.float64)


def _state(rng, B, Hkv, F, Dv, dtype):
    return np.abs(randn(rng, (B, Hkv, F, Dv), dtype)), np.abs(randn(rng, (B, Hkv, F), dtype))


def _compare(got, cpu, want, naive, dtype, xs, names=("dq", "dk", "dv"), lens=None):
    """Each gradient vs the oracle and the CPU backend (atol in units of its size, as the CPU tests); exact
    zeros where the contract makes them: dk / dv of padded keys."""
    assert len(got) == len(cpu) == len(want)
    for i, (name, g, c, r, n, x) in enumerate(zip(names, got, cpu, want, naive, xs)):
        g, x = np.asarray(g), np.asarray(x)
        assert g.shape == x.shape and g.dtype == np.asarray(c).dtype, (name, g.shape, g.dtype)
        exact = None
        if lens is not None and name in ("dk", "dv"):
            Sk = x.shape[-2]
            exact = (np.arange(Sk)[None, :] >= np.asarray(lens)[:, None])[:, None, :, None]
        close3(g, c, r, n, x.dtype if i >= 3 else dtype, what=name, atol_scale=4 * magnitude(r), exact_zero=exact)
        if exact is not None:
            assert (np.asarray(g, np.float64)[np.broadcast_to(exact, g.shape)] == 0).all(), f"{name}: padded keys"


def check_linear(rng, dtype, q, k, v, **kw):
    """linear_attention_backward on the device vs the CPU backend and the oracle; returns the device's."""
    need("linear_attention_backward")
    dout = randn(rng, q.shape[:-1] + (v.shape[-1],), dtype)
    got = gpu_run(attnkit.linear_attention_backward, dout, q, k, v, **kw)
    cpu = attnkit.linear_attention_backward(dout, q, k, v, **kw)
    want = ref.linear_attention_backward(dout, q, k, v, **kw)
    naive = ref.linear_attention_backward(dout, q, k, v, _dtype=naive_dtype(dtype), **kw)
    flat = lambda t: tuple(t[:3]) + tuple(t[3]) if len(t) == 4 else tuple(t)  # noqa: E731
    xs = (q, k, v) + (tuple(kw["initial_state"]) if kw.get("initial_state") is not None else ())
    assert len(got) == len(cpu)
    lens = kw.get("key_lengths")
    if lens is not None:
        lens = np.broadcast_to(np.asarray(lens), (q.shape[0],))
    _compare(flat(got), flat(cpu), flat(want), flat(naive), dtype, xs, ("dq", "dk", "dv", "dS0", "dz0"), lens)
    return got


def check_performer(rng, dtype, q, k, v, w, **kw):
    need("performer_attention_backward")
    dout = randn(rng, q.shape[:-1] + (v.shape[-1],), dtype)
    got = gpu_run(attnkit.performer_attention_backward, dout, q, k, v, w, **kw)
    cpu = attnkit.performer_attention_backward(dout, q, k, v, w, **kw)
    want = ref.performer_attention_backward(dout, q, k, v, w, **kw)
    naive = ref.performer_attention_backward(dout, q, k, v, w, _dtype=naive_dtype(dtype), **kw)
    lens = kw.get("key_lengths")
    if lens is not None:
        lens = np.broadcast_to(np.asarray(lens), (q.shape[0],))
    _compare(got, cpu, want, naive, dtype, (q, k, v), lens=lens)
    return got


# ----------------------------------------------------------------------------------------- linear attention
def L(id_, B=2, Hq=2, Hkv=None, S=33, Sk=None, D=16, Dv=None, dtype="f32", **kw):
    spec = dict(B=B, Hq=Hq, Hkv=Hq if Hkv is None else Hkv, S=S, Sk=Sk, D=D, Dv=D if Dv is None else Dv,
                dtype=DT[dtype], kw=kw)
    return pytest.param(spec, id=id_)


LINEAR_CASES = (
    [L(f"{'small' if d == 'f32' and c else 'tiny'}-{d}-{'c' if c else 'nc'}", S=7, D=8, Dv=5, dtype=d, causal=c)
     for d in DTYPE_IDS for c in (True, False)]
    + [L(f"map-{fm}-{'c' if c else 'nc'}-S{S}", S=S, D=12, Dv=9, feature_map=fm, causal=c,
         normalize=fm != "identity") for fm in ("elu1", "relu", "identity") for c in (True, False) for S in (1, 130)]
    + [L(f"dtype-{d}-{'c' if c else 'nc'}", S=150, D=24, Dv=20, dtype=d, causal=c) for d in DTYPE_IDS
       for c in (True, False)]
    + [L(f"gqa-{Hq}-{Hkv}-{'c' if c else 'nc'}", B=3, Hq=Hq, Hkv=Hkv, S=100, D=16, Dv=20, causal=c,
         key_lengths=[100, 37, 0]) for Hq, Hkv in [(4, 2), (6, 1)] for c in (True, False)]
    + [L(f"cross-{S}x{Sk}", Hq=4, Hkv=2, S=S, Sk=Sk, D=8, Dv=6, causal=False, key_lengths=[Sk, Sk // 3])
       for S, Sk in [(300, 20), (5, 600), (257, 257)]]
    + [L(f"tiles-D{D}-Dv{Dv}-{'c' if c else 'nc'}", Hq=2, Hkv=1, S=140, D=D, Dv=Dv, causal=c, key_lengths=[140, 65])
       for D, Dv in [(70, 33), (65, 130)] for c in (True, False)]
    + [L(f"eps-{fm}-{eps}", S=70, D=10, feature_map=fm, eps=eps) for fm in ("elu1", "relu") for eps in (0.0, 0.5)]
    + [L("unnormalized-elu1", S=80, D=10, normalize=False, causal=True)]
)


@pytest.mark.parametrize("spec", LINEAR_CASES)
def test_linear_backward(rng, spec):
    s = spec
    Sk = s["Sk"] if s["Sk"] is not None else s["S"]
    q, k, v = qkv(rng, s["B"], s["Hq"], s["Hkv"], s["S"], Sk, s["D"], s["Dv"], s["dtype"])
    check_linear(rng, s["dtype"], q, k, v, **s["kw"])


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("with_dfinal", [False, True])
def test_linear_backward_states(rng, dtype, causal, with_dfinal):
    """initial_state's gradient (dS0, dz0) and dfinal_state's share in every gradient; key_lengths."""
    B, H, S, D, Dv = 2, 2, 75, 8, 6
    q, k, v = qkv(rng, B, 2 * H, H, S, S + (0 if causal else 9), D, Dv, dtype)
    s0 = _state(rng, B, H, D, Dv, dtype)
    dfin = (randn(rng, (B, H, D, Dv), dtype), randn(rng, (B, H, D), dtype)) if with_dfinal else None
    check_linear(rng, dtype, q, k, v, causal=causal, initial_state=s0, dfinal_state=dfin, key_lengths=[S - 3, 20])
    check_linear(rng, dtype, q, k, v, causal=causal, dfinal_state=dfin)


def test_linear_backward_zero_denominator(rng):
    """relu features of all-negative rows give den = 0 with eps = 0: zero gradients, no NaN."""
    q, k, v = qkv(rng, 1, 1, 1, 20, 20, 4, 4, F32)
    q[..., 3:6, :] = -np.abs(q[..., 3:6, :])
    k[..., :4, :] = -np.abs(k[..., :4, :])
    got = check_linear(rng, F32, q, k, v, feature_map="relu", eps=0.0)
    assert np.all(got[0][..., 3:6, :] == 0) and np.all(got[0][..., :4, :] == 0)


def test_linear_backward_strided(rng):
    big = randn(rng, (2, 4, 90, 24), F32)
    q, k, v = big[:, ::2, ::1, :16], big[:, 1::2, :, 3:19], big[:, ::2, :, ::3][..., :7]
    s0 = _state(rng, 2, 2, 16, 7, F32)
    check_linear(rng, F32, q, k, v, initial_state=(s0[0].transpose(0, 1, 3, 2).copy().transpose(0, 1, 3, 2), s0[1]))
    check_linear(rng, F32, q, k, v, causal=False, key_lengths=[90, 41])


# ----------------------------------------------------------------------------------------------- Performer
def P(id_, B=2, Hq=4, Hkv=2, S=33, Sk=None, D=16, Dv=12, m=24, dtype="f32", **kw):
    spec = dict(B=B, Hq=Hq, Hkv=Hkv, S=S, Sk=Sk, D=D, Dv=Dv, m=m, dtype=DT[dtype], kw=kw)
    return pytest.param(spec, id=id_)


PERFORMER_CASES = (
    [P(f"{'small' if d == 'f32' and kern == 'softmax' and not c else 'tiny'}-{d}-{kern}-{'c' if c else 'nc'}", S=9, D=8,
       Dv=5, m=6, dtype=d, kernel=kern, causal=c, key_lengths=[9, 4])
     for d in DTYPE_IDS for kern in ("softmax", "relu") for c in (True, False)]
    + [P(f"shape-{d}-{kern}-{'c' if c else 'nc'}-S{S}", S=S, dtype=d, kernel=kern, causal=c,
         key_lengths=[S, max(S - 5, 0)]) for d in ("f32", "f64", "bf16") for kern in ("softmax", "relu")
       for c in (True, False) for S in (1, 130)]
    + [P(f"stab-eps{eps}-{'c' if c else 'nc'}", Hq=2, Hkv=1, S=150, D=16, Dv=8, m=40, causal=c, eps=eps, scale=1.0,
         grow=True) for eps in (0.0, 1e-6, 0.3) for c in (True, False)]
    + [P(f"tiles-m{m}-D{D}-{'c' if c else 'nc'}", Hq=2, Hkv=1, S=140, D=D, Dv=70, m=m, causal=c,
         key_lengths=[140, 77]) for m, D in [(130, 64), (70, 80)] for c in (True, False)]
    + [P(f"mqa-{'c' if c else 'nc'}", B=2, Hq=6, Hkv=1, S=100, m=32, causal=c, key_lengths=[100, 0])
       for c in (True, False)]
    + [P(f"cross-{S}x{Sk}", S=S, Sk=Sk, causal=False, key_lengths=[Sk, Sk // 2]) for S, Sk in [(300, 31), (7, 520)]]
)


@pytest.mark.parametrize("spec", PERFORMER_CASES)
def test_performer_backward(rng, spec):
    s = dict(spec)
    kw = dict(s["kw"])
    grow = kw.pop("grow", False)
    Sk = s["Sk"] if s["Sk"] is not None else s["S"]
    dtype = s["dtype"]
    q, k, v = qkv(rng, s["B"], s["Hq"], s["Hkv"], s["S"], Sk, s["D"], s["Dv"], dtype)
    if grow:  # key norms growing along the sequence: the running maximum moves by far more than exp's range
        k = (k.astype(np.float64) * np.linspace(0.2, 4.0, Sk)[None, None, :, None]).astype(dtype)
    w = attnkit.random_features(s["m"], s["D"], seed=s["m"], dtype=F64 if dtype == F64 else F32)
    check_performer(rng, dtype, q, k, v, w, **kw)


def test_performer_backward_strided(rng):
    big = randn(rng, (1, 6, 80, 20), F32)
    q, k, v = big[:, :4, :31, :16], big[:, 4:, :, 2:18], big[:, 4:, ::1, 1:8]
    w = attnkit.random_features(30, 16, seed=1)
    check_performer(rng, F32, q, k, v, w)
    check_performer(rng, F32, q, k, v, w, kernel="relu", key_lengths=33)


# ---------------------------------------------------------------------------------------------- empty sizes
@pytest.mark.parametrize("shape", [(0, 2, 5, 5), (1, 2, 0, 9), (1, 2, 5, 0)], ids=str)
def test_linear_backward_empty_small(rng, shape):
    """B = 0; S = 0 with keys (bidirectional: zero dk, dv; dS0 = dfinal_state); Sk = 0 (zero dk, dv)."""
    B, H, S, Sk = shape
    q, k, v = qkv(rng, B, H, 1, S, Sk, 4, 3, F32)
    s0 = _state(rng, B, 1, 4, 3, F32)
    dfin = (randn(rng, (B, 1, 4, 3), F32), randn(rng, (B, 1, 4), F32))
    check_linear(rng, F32, q, k, v, causal=False, initial_state=s0, dfinal_state=dfin)
    w = attnkit.random_features(6, 4)
    check_performer(rng, F32, q, k, v, w)
    if S == Sk:
        check_linear(rng, F32, q, k, v, causal=True)


# ----------------------------------------------------------------------------------------------- bad input
MIXED = [
    ("linear_attention_backward", lambda dout, q, k, v: attnkit.linear_attention_backward(dout, q, k, v), "k"),
    ("linear_attention_backward", lambda dout, q, k, v: attnkit.linear_attention_backward(
        cupy.asnumpy(dout), q, k, v), "dout"),
    ("linear_attention_backward", lambda dout, q, k, v: attnkit.linear_attention_backward(
        dout, q, k, v, dfinal_state=(np.zeros((1, 1, 8, 8), np.float32), np.zeros((1, 1, 8), np.float32))),
     "dfinal_state"),
    ("performer_attention_backward", lambda dout, q, k, v: attnkit.performer_attention_backward(
        dout, q, k, v, attnkit.random_features(4, 8)), "features"),
    ("performer_attention_backward", lambda dout, q, k, v: attnkit.performer_attention_backward(
        dout, q, k, v, q[0, 0]), "k"),
]


@pytest.mark.parametrize("fn,call,name", MIXED, ids=[f"{f}-{n}" for f, _, n in MIXED])
def test_linear_backward_mixed_numpy_cupy_rejected_small(fn, call, name):
    """A NumPy argument in a CuPy call: TypeError naming the argument (validation precedes dispatch, so this
    holds with or without the kernel)."""
    if FAKE:
        pytest.skip("needs CuPy")
    q, v, dout = _tiny(1, 1, 4, 8), _tiny(1, 1, 4, 8), _tiny(1, 1, 4, 8)
    k = cupy.asnumpy(_tiny(1, 1, 4, 8)) if name == "k" else _tiny(1, 1, 4, 8)
    raises(TypeError, name, call, dout, q, k, v)


def test_linear_backward_gate_message_small():
    """Where the gate is closed the call names it: 'no CUDA kernel enabled ... ATTNKIT_CUDA_UNVERIFIED=1'."""
    if FAKE:
        pytest.skip("needs CuPy")
    import os

    if os.environ.get("ATTNKIT_CUDA_UNVERIFIED") == "1" or attnkit._core.cuda_has_kernel("linear_attention_backward"):
        pytest.skip("the gate is open here")
    with pytest.raises(RuntimeError, match="ATTNKIT_CUDA_UNVERIFIED=1"):
        attnkit.linear_attention_backward(_tiny(1, 1, 4, 8), _tiny(1, 1, 4, 8), _tiny(1, 1, 4, 8), _tiny(1, 1, 4, 8))
