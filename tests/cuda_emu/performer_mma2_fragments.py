"""Host check of the fragment addressing of cuda/performer_mma2.cuh: the kernels' own address and index
expressions (copied below, lane by lane, with the ldmatrix / mma emulation of mma_emu.py, float64, no
rounding) for one block of each kernel on a small problem with two feature slices and two parts of W':
  stats_kernel  projections x . w' (project()) and the row maxima by quad shuffles -> mK;
  state_kernel  phi from the projection fragments, stored as [keys][features] parts, then phi^T [V | 1]
                by transposed loads -> the partial state rows of each warp;
  out_kernel    pass 1 row maxima, pass 2 phi(q) packed from the accumulators as A fragments times the state
                slice by transposed loads, the denominator column by the quad shuffle.
Compared with NumPy's products. Run: python tests/cuda_emu/performer_mma2_fragments.py"""

import numpy as np

from mma_emu import gather, ldsm, mma

rng = np.random.default_rng(1)
kRows, kFB, NS = 64, 64, 2
D, DV, F = 32, 32, 128
DVA, NV = DV + 8, (DV + 8) // 8
hlm = 0.5 * np.log(F)
ok = True


def zeros_acc(n):
    return [[[0.0] * 4 for _ in range(32)] for _ in range(n)]


def project(sX, sW, warp):
    """project(): e[n] for this warp's 16 rows and the slice's kFB features."""
    e = zeros_acc(kFB // 8)
    for ks in range(D // 16):
        ax = ldsm(sX, lambda l: (warp * 16 + l % 16, ks * 16 + (l // 16) * 8), 4, False)
        for s in range(NS):
            for np_ in range(kFB // 16):
                bb = ldsm(sW, lambda l: (s * kFB + np_ * 16 + (l // 16) * 8 + l % 8, ks * 16 + ((l // 8) % 2) * 8), 4,
                          False)
                mma(e[2 * np_], ax, [bb[t][0] for t in range(32)], [bb[t][1] for t in range(32)])
                mma(e[2 * np_ + 1], ax, [bb[t][2] for t in range(32)], [bb[t][3] for t in range(32)])
    return e


W = rng.standard_normal((F, D)) * 0.3
Wp = [np.round(W, 2), None]
Wp[1] = W - Wp[0]  # two "parts" whose sum is W
wp = np.concatenate(Wp)  # [NS][F][D] as rows


def w_slice(f0):
    """load_w: [NS][kFB][D] rows of the parts, features f0 .."""
    return np.concatenate([wp[s * F + f0:s * F + f0 + kFB] for s in range(NS)])


def quad_max(vals):
    """The xor-shuffle maximum over the quad (lanes t & ~3 .. + 3)."""
    out = list(vals)
    for o in (1, 2):
        out = [max(out[t], out[t ^ o]) for t in range(32)]
    return out


# ---- stats_kernel: mK_j = max_f e_jf - h_j
K = rng.standard_normal((kRows, D)) * 0.5
kn = 50
K[kn:] = 0  # load_rows zero-fills rows >= kn
hK = 0.5 * (K ** 2).sum(1) * 0.125
mK = np.full(kRows, np.nan)
for warp in range(4):
    mx0, mx1 = [-np.inf] * 32, [-np.inf] * 32
    for f0 in range(0, F, kFB):
        e = project(K, w_slice(f0), warp)
        for n in range(kFB // 8):
            for t in range(32):
                mx0[t] = max(mx0[t], e[n][t][0], e[n][t][1])
                mx1[t] = max(mx1[t], e[n][t][2], e[n][t][3])
    mx0, mx1 = quad_max(mx0), quad_max(mx1)
    for t in range(32):
        gq, tq = t // 4, t % 4
        r0, r1 = warp * 16 + gq, warp * 16 + gq + 8
        if tq == 0 and r0 < kn:
            mK[r0] = mx0[t] - hK[r0]
        if tq == 0 and r1 < kn:
            mK[r1] = mx1[t] - hK[r1]
want = (K @ W.T).max(1) - hK
ok1 = np.allclose(mK[:kn], want[:kn]) and np.isnan(mK[kn:]).all()
print("stats  projections, row maxima -> mK:", "ok" if ok1 else "FAIL")
ok &= ok1

# ---- state_kernel: one block (feature slice fb), one 64-key chunk with kn allowed keys
c = want[:kn].max()
sOff = hK + c
V = rng.standard_normal((kRows, DV))
sV = np.zeros((kRows, DVA))
sV[:kn, :DV] = V[:kn]
sV[:kn, DV] = 1.0  # the ones column (z)
ok2 = True
for fb in range(F // kFB):
    sW = w_slice(fb * kFB)
    sP = np.zeros((NS * kRows, kFB + 8))
    for warp in range(4):
        e = project(K, sW, warp)
        for t in range(32):
            gq, tq = t // 4, t % 4
            for hr in range(2):
                j = warp * 16 + gq + 8 * hr
                for n in range(kFB // 8):
                    for u in range(2):
                        p = np.exp(e[n][t][2 * hr + u] - sOff[j] - hlm) if j < kn else 0.0
                        # parts: the first takes p rounded to 3 decimals, the second the rest
                        parts = [np.round(p, 3), p - np.round(p, 3)]
                        for sp in range(NS):
                            sP[sp * kRows + j, n * 8 + 2 * tq + u] = parts[sp]
    part = np.zeros((kFB, DVA))
    for warp in range(4):
        acc = zeros_acc(NV)
        for ks in range(kRows // 16):
            afs = [ldsm(sP, lambda l: (sp * kRows + ks * 16 + (l // 16) * 8 + l % 8, warp * 16 + ((l // 8) % 2) * 8), 4,
                        True) for sp in range(NS)]
            for n in range(NV):
                bf = ldsm(sV, lambda l: (ks * 16 + l % 16, n * 8), 2, True)
                for sp in range(NS):
                    mma(acc[n], afs[sp], [bf[t][0] for t in range(32)], [bf[t][1] for t in range(32)])
        # the kernel's store: rows f = fb kFB + 16 warp + gq (+ 8), columns 8 n + 2 tq (+ 1)
        for t in range(32):
            gq, tq = t // 4, t % 4
            r = warp * 16 + gq
            for n in range(NV):
                part[r, n * 8 + 2 * tq:n * 8 + 2 * tq + 2] = acc[n][t][0:2]
                part[r + 8, n * 8 + 2 * tq:n * 8 + 2 * tq + 2] = acc[n][t][2:4]
    phi = np.exp(K[:kn] @ W[fb * kFB:(fb + 1) * kFB].T - sOff[:kn, None] - hlm)
    ok2 &= np.allclose(part, phi.T @ sV[:kn])
print("state  phi parts [keys][features], phi^T [V | 1] -> partial rows:", "ok" if ok2 else "FAIL")
ok &= ok2

# ---- out_kernel: 64 query rows, state St [F][DVA] (column DV: z)
Q = rng.standard_normal((kRows, D)) * 0.5
St = np.abs(rng.standard_normal((F, DVA)))
St[:, DV + 1:] = 0
ok3 = True
for warp in range(4):
    mx0, mx1 = [-np.inf] * 32, [-np.inf] * 32
    for f0 in range(0, F, kFB):
        e = project(Q, w_slice(f0), warp)
        for n in range(kFB // 8):
            for t in range(32):
                mx0[t] = max(mx0[t], e[n][t][0], e[n][t][1])
                mx1[t] = max(mx1[t], e[n][t][2], e[n][t][3])
    mx0, mx1 = quad_max(mx0), quad_max(mx1)
    o = zeros_acc(NV)
    for f0 in range(0, F, kFB):
        sPh = St[f0:f0 + kFB]
        e = project(Q, w_slice(f0), warp)
        for kt in range(kFB // 16):
            qh = [[None] * 4 for _ in range(32)]
            for t in range(32):
                for r in range(4):
                    n, i0 = 2 * kt + r // 2, 2 * (r % 2)
                    m = mx1[t] if r % 2 else mx0[t]
                    qh[t][r] = (np.exp(e[n][t][i0] - m - hlm), np.exp(e[n][t][i0 + 1] - m - hlm))
            for n in range(NV):
                ph = ldsm(sPh, lambda l: (kt * 16 + l % 16, n * 8), 2, True)
                mma(o[n], qh, [ph[t][0] for t in range(32)], [ph[t][1] for t in range(32)])
    rows = slice(warp * 16, (warp + 1) * 16)
    proj = Q[rows] @ W.T
    phiq = np.exp(proj - proj.max(1, keepdims=True) - hlm)
    want = phiq @ St
    ok3 &= np.allclose(gather(None, o), want)
    for t in range(32):  # den0 / den1: o[NV - 1][lane & ~3][0] / [2]
        g = t // 4
        ok3 &= np.isclose(o[NV - 1][t & ~3][0], want[g, DV]) and np.isclose(o[NV - 1][t & ~3][2], want[g + 8, DV])
print("out    row maxima, phi(q) A fragments x state slice, den column:", "ok" if ok3 else "FAIL")
ok &= ok3
raise SystemExit(0 if ok else 1)
