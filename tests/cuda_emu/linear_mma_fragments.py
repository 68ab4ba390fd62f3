"""Host check of the fragment addressing of cuda/linear_mma.cuh: ldmatrix (x4, x2, .trans) and
mma.m16n8k16 emulated lane by lane from the PTX ISA's fragment layouts, driven by the kernels' own address
expressions (copied below), for the three products: I = phi(K)^T V (inc_kernel), scores = phi(Q) phi(K)^T
with the packing of the scores as the A operand of s V, and phi(Q) P (out_kernel). Run:
python tests/cuda_emu/linear_mma_fragments.py"""

import numpy as np

from mma_emu import gather, ldsm, mma

rng = np.random.default_rng(0)
ok = True

# ---- the emulator itself, on attention_mma2.cuh's PV product (verified on GPUs): B = V [keys][D] by
# ldsm_x4_t at (ks * 16 + ((lane / 8) % 2) * 8 + lane % 8, dp * 16 + (lane / 16) * 8), n-tiles 2 dp, 2 dp + 1.
Vt = rng.standard_normal((16, 32))
Pm = rng.standard_normal((16, 16))
aP = [[(Pm[t // 4, 2 * (t % 4)], Pm[t // 4, 2 * (t % 4) + 1]), (Pm[t // 4 + 8, 2 * (t % 4)], Pm[t // 4 + 8, 2 * (t % 4) + 1]),
       (Pm[t // 4, 8 + 2 * (t % 4)], Pm[t // 4, 9 + 2 * (t % 4)]), (Pm[t // 4 + 8, 8 + 2 * (t % 4)], Pm[t // 4 + 8, 9 + 2 * (t % 4)])]
      for t in range(32)]
o = [[[0.0] * 4 for _ in range(32)] for _ in range(4)]
for dp in range(2):
    bb = ldsm(Vt, lambda l: (((l // 8) % 2) * 8 + l % 8, dp * 16 + (l // 16) * 8), 4, True)
    mma(o[2 * dp], aP, [bb[t][0] for t in range(32)], [bb[t][1] for t in range(32)])
    mma(o[2 * dp + 1], aP, [bb[t][2] for t in range(32)], [bb[t][3] for t in range(32)])
ok &= np.allclose(gather(None, o), Pm @ Vt)
print("emulator on attention_mma2's PV:", "ok" if ok else "FAIL")

# ---- inc_kernel: A = phi(K)^T from sK [C][LDF] (keys x features) by ldsm_x4_t; B = V from sV [C][DVA] by ldsm_x2_t.
C, FB, DVA = 64, 64, 72
sK = rng.standard_normal((C, FB))
sV = rng.standard_normal((C, DVA))
for mt in range(FB // 16):
    accs = [[[0.0] * 4 for _ in range(32)] for _ in range(DVA // 8)]
    for ks in range(C // 16):
        af = ldsm(sK, lambda l: (ks * 16 + (l // 16) * 8 + l % 8, mt * 16 + ((l // 8) % 2) * 8), 4, True)
        for nt in range(DVA // 8):
            bf = ldsm(sV, lambda l: (ks * 16 + l % 16, nt * 8), 2, True)
            mma(accs[nt], af, [bf[t][0] for t in range(32)], [bf[t][1] for t in range(32)])
    got = gather(None, accs)
    want = sK[:, mt * 16:(mt + 1) * 16].T @ sV
    ok &= np.allclose(got, want)
print("inc  phi(K)^T V:", "ok" if ok else "FAIL")

# ---- out_kernel scores: A = phi(Q) from sQ [C][LDD] by ldsm_x4; B from sK [C][LDD] by ldsm_x4 (two n-tiles).
D, NW = 64, 4
sQ = rng.standard_normal((C, D))
sK = rng.standard_normal((C, D))
sV = rng.standard_normal((C, DVA))
P = rng.standard_normal((D, DVA))
ok2 = True
for warp in range(NW):
    sc = [[[0.0] * 4 for _ in range(32)] for _ in range(C // 8)]
    for ks in range(D // 16):
        aq = ldsm(sQ, lambda l: (warp * 16 + l % 16, ks * 16 + (l // 16) * 8), 4, False)
        for np_ in range(NW):
            if np_ <= warp:
                bb = ldsm(sK, lambda l: (np_ * 16 + (l // 16) * 8 + l % 8, ks * 16 + ((l // 8) % 2) * 8), 4, False)
                mma(sc[2 * np_], aq, [bb[t][0] for t in range(32)], [bb[t][1] for t in range(32)])
                mma(sc[2 * np_ + 1], aq, [bb[t][2] for t in range(32)], [bb[t][3] for t in range(32)])
    # causal mask, as in the kernel
    for n in range(C // 8):
        for t in range(32):
            g, q = t // 4, t % 4
            for e in range(4):
                row = warp * 16 + g + (8 if e >= 2 else 0)
                j = n * 8 + 2 * q + (e & 1)
                if j > row:
                    sc[n][t][e] = 0.0
    dense = gather(None, sc)
    full = sQ @ sK.T
    want = np.where(np.tril(np.ones((C, C), bool)), full, 0)[warp * 16:(warp + 1) * 16]
    ok2 &= np.allclose(dense, want)
    # pk: scores as A operands; O = phi(Q) P + s V
    pk = [[(sc[2 * kt][t][0], sc[2 * kt][t][1]), (sc[2 * kt][t][2], sc[2 * kt][t][3]),
           (sc[2 * kt + 1][t][0], sc[2 * kt + 1][t][1]), (sc[2 * kt + 1][t][2], sc[2 * kt + 1][t][3])]
          for kt in range(NW) for t in range(32)]
    pk = [pk[kt * 32:(kt + 1) * 32] for kt in range(NW)]
    o = [[[0.0] * 4 for _ in range(32)] for _ in range(DVA // 8)]
    FBs = 64
    for sl in range(D // FBs):
        sP = P[sl * FBs:(sl + 1) * FBs]
        for kk in range(FBs // 16):
            col = lambda l: sl * FBs + kk * 16 + (l // 16) * 8
            qh = ldsm(sQ, lambda l: (warp * 16 + l % 16, col(l)), 4, False)
            for n in range(DVA // 8):
                ph = ldsm(sP, lambda l: (kk * 16 + l % 16, n * 8), 2, True)
                mma(o[n], qh, [ph[t][0] for t in range(32)], [ph[t][1] for t in range(32)])
    for kt in range(NW):
        if kt <= warp:
            for n in range(DVA // 8):
                bv = ldsm(sV, lambda l: (kt * 16 + l % 16, n * 8), 2, True)
                mma(o[n], pk[kt], [bv[t][0] for t in range(32)], [bv[t][1] for t in range(32)])
    got = gather(None, o)
    # the non-finite-V path: the diagonal tile element by element from the quad's registers (shuffles)
    o2 = [[[0.0] * 4 for _ in range(32)] for _ in range(DVA // 8)]
    for kt in range(warp):
        for n in range(DVA // 8):
            bv = ldsm(sV, lambda l: (kt * 16 + l % 16, n * 8), 2, True)
            mma(o2[n], pk[kt], [bv[t][0] for t in range(32)], [bv[t][1] for t in range(32)])
    dk = pk[warp]
    for lane in range(32):
        gq, tq = lane // 4, lane % 4
        r0, r1 = warp * 16 + gq, warp * 16 + gq + 8
        for jj in range(16):
            hf, src, j = jj // 8, (lane & ~3) | ((jj % 8) // 2), warp * 16 + jj
            s0 = dk[src][2 * hf][jj & 1]
            s1 = dk[src][2 * hf + 1][jj & 1]
            for n in range(DVA // 8):
                v0, v1 = sV[j, n * 8 + 2 * tq], sV[j, n * 8 + 2 * tq + 1]
                if j <= r0:
                    o2[n][lane][0] += s0 * v0
                    o2[n][lane][1] += s0 * v1
                if j <= r1:
                    o2[n][lane][2] += s1 * v0
                    o2[n][lane][3] += s1 * v1
    ok2 &= np.allclose(gather(None, o2), np.where(np.tril(np.ones((C, C), bool)), full, 0)[warp * 16:(warp + 1) * 16] @ sV)
    rows = slice(warp * 16, (warp + 1) * 16)
    want = sQ[rows] @ P + np.where(np.tril(np.ones((C, C), bool)), full, 0)[rows] @ sV
    ok2 &= np.allclose(got, want)
    # the denominator column DV = DVA - 8 sits in n-tile NV - 1, element 0 / 2 of the quad's lane tq = 0
    for t in range(32):
        g = t // 4
        lead = t & ~3
        ok2 &= np.isclose(o[DVA // 8 - 1][lead][0], want[g, DVA - 8]) and np.isclose(o[DVA // 8 - 1][lead][2],
                                                                                    want[g + 8, DVA - 8])
print("out  scores, mask, phi(Q) P + s V, den, non-finite-V diagonal path:", "ok" if ok2 else "FAIL")
raise SystemExit(0 if ok and ok2 else 1)
