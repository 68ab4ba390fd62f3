"""Host emulation of the ALGORITHM and ROUNDING of cuda/performer_causal_mma.cuh (causal Performer softmax on
tensor cores): chunks of 64 keys, slices of 64 features each with its own stabilizer references (mb[j][s] per
key and slice, R_s(c) per chunk for the state), the state carried chunk by chunk in float32 with phi split into
16-bit parts (float16: 2 parts of phi times 2^8; bfloat16: 3), the 16-bit key features phi_own relative to
mb[j][s] (phk), the query stabilizer taken online over the slices (rescaling the accumulated O and scores when
it grows), g_t = exp(R_s(c) - c_t) folded into phi(q) for the state product (bfloat16 hi / lo, three
products), scores times exp(mb[j][s] - c_t) where j <= t < ..., j < kn, the power-of-two row scaling of the
scores before they are rounded to the 16-bit type, out = num / (den + eps). Checks the outputs with
tests/conftest.py's tolerance rule against the float64 oracle (attnkit.reference.performer_attention, causal,
with key_lengths), as tests/test_gpu_performer.py checks the kernels', and the final state (state_out, relative
to the CPU's final stabilizer) against a float64 sum. Row-level products are in float64 (the tensor cores'
float32 accumulation of exact products adds ~2^-24 relative).
Needs NumPy, ml_dtypes and an importable attnkit (the oracle); run:
python tests/cuda_emu/performer_causal_emu.py"""

import numpy as np
from performer_mma2_emu import ATOL, BF16, f32, parts  # (same folder: run as a script)

from attnkit import reference as ref

NINF = f32(-np.inf)
C = 64  # chunk = query rows per block
FB = 64  # features per slice


def rescale(old, new):
    """exp(favor_rescale_arg(old, new)) in float32: 0 where old = -inf."""
    off = np.where(new == NINF, f32(0), new)
    with np.errstate(invalid="ignore"):
        return np.exp((old - off).astype(f32)).astype(f32)


def row_exponent(m):
    """pmc::row_exponent: e >= -16 with m 2^-e in [2^14, 2^15); 0 for m = 0."""
    e = np.zeros(m.shape, np.int64)
    pos = m > 0
    e[pos] = np.maximum(np.frexp(m[pos])[1] - 1 - 14, -16)
    return e


def emulate(q, k, v, W, T, lens, scale=None, eps=1e-6):
    B, H, S, D = q.shape
    Dv = v.shape[3]
    m = W.shape[0]
    nfb, nch = m // FB, (S + C - 1) // C
    scale = 1.0 / np.sqrt(D) if scale is None else scale
    fs = f32(np.sqrt(scale))
    half_scale = f32(0.5 * np.sqrt(scale) * np.sqrt(scale))
    hlm = f32(0.5 * np.log(m))
    ns, phs = (2, f32(256)) if T == np.float16 else (3, f32(1))
    Wp = sum(parts((fs * W.astype(f32)).astype(f32), T, ns))  # exact sum of the parts, [m][D]
    out = np.zeros(q.shape[:3] + (Dv,), T)
    states = np.zeros((B, H, m, Dv + 1))
    for b in range(B):
        L = lens[b]
        for h in range(H):
            # ---- state_kernel
            e = (k[b, h].astype(np.float64) @ Wp.T).astype(f32)  # [S][m]
            sq = np.zeros(S, f32)
            for d in range(D):
                x = k[b, h, :, d].astype(f32)
                sq = (sq + x * x).astype(f32)
            hsq = (sq * half_scale).astype(f32)
            mb = np.stack([(e[:, s * FB:(s + 1) * FB].max(1) - hsq).astype(f32) for s in range(nfb)], 1)  # [S][nfb]
            V1 = np.concatenate([v[b, h].astype(np.float64), np.ones((S, 1))], 1)
            acc = np.zeros((m, Dv + 1))  # times phs
            R = np.full(nfb, NINF, f32)
            P, pref = [], []
            phk = np.zeros((S, m), np.float64)
            for c in range(nch):
                j0 = c * C
                P.append((acc / np.float64(phs)).astype(f32))
                pref.append(R.copy())
                kn = int(np.clip(L - j0, 0, min(C, S - j0)))
                if kn == 0:
                    continue
                for s in range(nfb):
                    fsl = slice(s * FB, (s + 1) * FB)
                    E = e[j0:j0 + kn, fsl]
                    mbs = mb[j0:j0 + kn, s]
                    Rn = max(R[s], mbs.max())
                    off = (hsq[j0:j0 + kn] + mbs).astype(f32)
                    own = (np.exp((E - off[:, None]).astype(f32) - hlm).astype(f32) * phs).astype(f32)
                    phk[j0:j0 + kn, fsl] = own.astype(T).astype(np.float64)
                    rb = np.where(mbs != Rn, np.exp((mbs - Rn).astype(f32)), f32(1)).astype(f32)
                    ps = (own * rb[:, None]).astype(f32)
                    pp = sum(parts(ps, T, ns))
                    rs = rescale(R[s], Rn)
                    if rs != 1:
                        acc[fsl] = (acc[fsl] * rs).astype(f32)
                    acc[fsl] = (acc[fsl] + pp.T @ V1[j0:j0 + kn]).astype(f32)
                    R[s] = Rn
            cf = R.max() if L > 0 else NINF
            fin = acc / np.float64(phs)
            for s in range(nfb):
                if R[s] != cf:
                    fin[s * FB:(s + 1) * FB] *= rescale(R[s], cf)
            states[b, h] = fin
            # ---- out_kernel
            eq_all = (q[b, h].astype(np.float64) @ Wp.T).astype(f32)
            for c in range(nch):
                j0 = c * C
                tn = min(C, S - j0)
                kn = int(np.clip(L - j0, 0, tn))
                cp = pref[c].max()
                mj = mb[j0:j0 + kn].max(1) if kn > 0 else np.zeros(0, f32)
                cj = np.maximum.accumulate(np.concatenate([[cp], mj]))[1:] if kn > 0 else np.zeros(0, f32)
                ct = np.array([cj[min(t, kn - 1)] if kn > 0 else cp for t in range(tn)], f32)
                mq = np.full(tn, NINF, f32)
                o = np.zeros((tn, Dv + 1))
                sc = np.zeros((tn, C))
                allowed = (np.arange(C)[None, :] <= np.arange(tn)[:, None]) & (np.arange(C)[None, :] < kn)
                for s in range(nfb):
                    fsl = slice(s * FB, (s + 1) * FB)
                    eq = eq_all[j0:j0 + tn, fsl]
                    mn = np.maximum(mq, eq.max(1))
                    fc = np.where(mn != mq, rescale(mq, mn), f32(1))
                    o *= fc[:, None]
                    sc *= fc[:, None]
                    mq = mn
                    phi = np.exp((eq - mq[:, None]).astype(f32) - hlm).astype(f32)
                    g = rescale(np.full(tn, pref[c][s], f32), ct)
                    qT = (phi * phs).astype(f32).astype(T).astype(np.float64)
                    qh, ql = parts((phi * g[:, None]).astype(f32), BF16, 2)
                    ph, pl = parts(P[c][fsl], BF16, 2)
                    o = (o + qh @ ph + qh @ pl + ql @ ph).astype(f32)
                    kf = np.zeros((C, FB))
                    kf[:kn] = phk[j0:j0 + kn, fsl]
                    st = (qT @ kf.T).astype(f32)
                    mbs = np.full(C, NINF, f32)
                    mbs[:kn] = mb[j0:j0 + kn, s]
                    with np.errstate(invalid="ignore"):
                        fac = np.where(allowed, rescale(mbs[None, :], ct[:, None]), f32(0))
                    sc = (sc + np.where(allowed, st * fac, 0)).astype(f32)
                sc = (sc / (np.float64(phs) ** 2)).astype(f32)
                ex = row_exponent(np.abs(sc).max(1))
                pk = (sc * np.ldexp(1.0, -ex)[:, None]).astype(f32).astype(T).astype(np.float64)
                Vc = np.zeros((C, Dv + 1))
                Vc[:kn] = V1[j0:j0 + kn]
                o = ((o * np.ldexp(1.0, -ex)[:, None] + pk @ Vc) * np.ldexp(1.0, ex)[:, None]).astype(f32)
                den = o[:, -1:]
                d = (den + f32(eps)).astype(f32)
                out[b, h, j0:j0 + tn] = np.where(d == 0, f32(0), o[:, :-1] / np.where(d == 0, 1, d)).astype(T)
    return out, states


def final_state(k, v, W, lens, scale=None):
    """float64: sum over the allowed keys of phi(k_j) relative to the final running maximum, times [v_j | 1]."""
    B, H, S, D = k.shape
    m = W.shape[0]
    scale = 1.0 / np.sqrt(D) if scale is None else scale
    out = np.zeros((B, H, m, v.shape[3] + 1))
    for b in range(B):
        L = lens[b]
        if L == 0:
            continue
        for h in range(H):
            kp = k[b, h, :L].astype(np.float64) * np.sqrt(scale)
            ex = kp @ W.astype(np.float64).T - 0.5 * (kp * kp).sum(1, keepdims=True)
            phi = np.exp(ex - ex.max()) / np.sqrt(m)
            out[b, h] = phi.T @ np.concatenate([v[b, h, :L].astype(np.float64), np.ones((L, 1))], 1)
    return out


def check(T, B, H, S, D, Dv, m, seed, lens=None, qk_scale=0.5):
    rng = np.random.default_rng(seed)
    q = (rng.standard_normal((B, H, S, D)) * qk_scale).astype(T)
    k = (rng.standard_normal((B, H, S, D)) * qk_scale).astype(T)
    v = rng.standard_normal((B, H, S, Dv)).astype(T)
    W = rng.standard_normal((m, D)).astype(f32)
    lens = [S] * B if lens is None else lens
    kw = dict(causal=True, key_lengths=np.array(lens, np.int64))
    got, st = emulate(q, k, v, W, T, lens)
    got = got.astype(np.float64)
    r = ref.performer_attention(q, k, v, W, **kw)
    n = ref.performer_attention(q, k, v, W, _dtype=np.float32, **kw).astype(T)  # naive_dtype: float32
    err = np.abs(got - r).max()
    base = np.abs(n.astype(np.float64) - r).max()
    tol = 2 * base + ATOL[np.dtype(T)]
    fs = final_state(k, v, W, lens)
    serr = np.abs(st - fs).max() / max(1.0, np.abs(fs).max())
    ok = err <= tol and serr <= 1e-5
    print(f"{np.dtype(T).name:8s} B={B} S={S} D={D} Dv={Dv} m={m} lens={lens} qk*{qk_scale}: max error {err:.3g}, "
          f"tolerance {tol:.3g}; state rel. error {serr:.2g}", "ok" if ok else "FAIL")
    return ok


ok = True
for T in (np.float16, BF16.type):
    ok &= check(T, 1, 2, 130, 64, 64, 256, 1)
    ok &= check(T, 2, 1, 200, 32, 32, 128, 2, lens=[200, 77])
    ok &= check(T, 1, 1, 65, 128, 128, 64, 3)
    ok &= check(T, 2, 1, 100, 64, 32, 192, 4, lens=[0, 64], qk_scale=1.5)  # larger exponents: the stabilizers
    ok &= check(T, 1, 1, 150, 32, 64, 64, 5, qk_scale=3.0)  # exponents far apart (c moves by tens)
raise SystemExit(0 if ok else 1)
