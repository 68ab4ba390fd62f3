"""Host emulation of the ROUNDING of cuda/performer_mma2.cuh (bidirectional Performer softmax on tensor cores):
the 16-bit parts of W' (float16: 2, bfloat16: 3), the projections (exact 16-bit products, float32 results),
|k'|^2/2 and the stabilizers in float32, phi(K) times 2^8 (float16) split into 16-bit parts times the exact
[V | 1], phi(q) and the state in bfloat16 hi + lo (three products), out = num / (den + eps) in the output
dtype. Each result is checked by tests/conftest.py's tolerance rule against the float64 oracle
(attnkit.reference.performer_attention), as tests/test_gpu_performer.py checks the kernel's. Row-level
products are in float64 (the tensor cores' float32 accumulation of exact products adds ~2^-24 relative).
Needs NumPy, ml_dtypes and an importable attnkit (the oracle); run:
python tests/cuda_emu/performer_mma2_emu.py"""

import ml_dtypes
import numpy as np

from attnkit import reference as ref

BF16 = np.dtype(ml_dtypes.bfloat16)
ATOL = {np.dtype(np.float16): 2e-3, BF16: 1.6e-2}
f32 = np.float32


def parts(x, T, n):
    """x (float32) as n values of T summing to x up to the last remainder (linmma::split_part)."""
    out, r = [], x.astype(f32)
    for _ in range(n):
        h = r.astype(T)
        out.append(h.astype(np.float64))
        r = (r - h.astype(f32)).astype(f32)
        r = np.where(np.isfinite(r), r, f32(0))
    return out


def emulate(q, k, v, W, T, scale=None, eps=1e-6):
    B, H, S, D = q.shape
    m = W.shape[0]
    scale = 1.0 / np.sqrt(D) if scale is None else scale
    fs = f32(np.sqrt(scale))
    half_scale = f32(0.5 * np.sqrt(scale) * np.sqrt(scale))
    hlm = f32(0.5 * np.log(m))
    ns, phi_scale = (2, f32(256)) if T == np.float16 else (3, f32(1))
    Wp = sum(parts((fs * W.astype(f32)).astype(f32), T, ns))  # exact sum of the parts, [m][D]
    out = np.zeros(q.shape[:3] + (v.shape[3],), T)
    for b in range(B):
        for h in range(H):
            K = k[b, h].astype(np.float64)
            e = (K @ Wp.T).astype(f32)
            sq = np.zeros(K.shape[0], f32)
            for d in range(D):
                x = k[b, h, :, d].astype(f32)
                sq = (sq + x * x).astype(f32)
            hsq = (sq * half_scale).astype(f32)
            c = (e.max(1) - hsq).astype(f32).max()
            off = (hsq + c).astype(f32)
            phi = (np.exp((e - off[:, None]).astype(f32) - hlm).astype(f32) * phi_scale).astype(f32)
            ph = sum(parts(phi, T, ns))
            V1 = np.concatenate([v[b, h].astype(np.float64), np.ones((K.shape[0], 1))], 1)
            St = ((ph.T @ V1) / np.float64(phi_scale)).astype(f32)
            Q = q[b, h].astype(np.float64)
            eq = (Q @ Wp.T).astype(f32)
            pq = np.exp((eq - eq.max(1, keepdims=True)).astype(f32) - hlm).astype(f32)
            qh, ql = parts(pq, BF16, 2)
            sh, sl = parts(St, BF16, 2)
            O = (qh @ sh + qh @ sl + ql @ sh).astype(f32)
            den = O[:, -1:]
            out[b, h] = (O[:, :-1] / (den + f32(eps))).astype(T)
    return out


def check(T, B, H, S, Sk, D, Dv, m, seed):
    rng = np.random.default_rng(seed)
    q = (rng.standard_normal((B, H, S, D)) * 0.5).astype(T)
    k = (rng.standard_normal((B, H, Sk, D)) * 0.5).astype(T)
    v = rng.standard_normal((B, H, Sk, Dv)).astype(T)
    W = rng.standard_normal((m, D)).astype(f32)
    got = emulate(q, k, v, W, T).astype(np.float64)
    r = ref.performer_attention(q, k, v, W)
    n = ref.performer_attention(q, k, v, W, _dtype=np.float32).astype(T)  # naive_dtype: float32
    err = np.abs(got - r).max()
    base = np.abs(n.astype(np.float64) - r).max()
    tol = 2 * base + ATOL[np.dtype(T)]
    ok = err <= tol
    print(f"{np.dtype(T).name:8s} S={S} Sk={Sk} D={D} Dv={Dv} m={m}: max error {err:.3g}, tolerance {tol:.3g}",
          "ok" if ok else "FAIL")
    return ok


if __name__ == "__main__":  # performer_causal_emu.py imports parts() and the tolerances from here
    ok = True
    for T in (np.float16, BF16.type):
        ok &= check(T, 1, 2, 65, 300, 64, 64, 256, 1)
        ok &= check(T, 1, 1, 33, 700, 128, 32, 128, 2)
        ok &= check(T, 1, 2, 40, 129, 32, 128, 64, 3)
    raise SystemExit(0 if ok else 1)
