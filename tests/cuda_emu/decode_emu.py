# Emulates the index math and reduction structure of cuda/attention_decode.cuh (splits, lane groups, group
# combine, split merge) in NumPy float64 against a direct softmax.
# Run by hand: python3 tests/cuda_emu/decode_emu.py (not collected by pytest).
import numpy as np
W = 4
def lanes(D, Dv, vec):
    n = -(-max(D, Dv) // vec)
    kl = 8 if n <= 8 else 16 if n <= 16 else 32
    nc = 1 if n <= 32 else 2 if n <= 64 else 4
    return kl, nc
def geometry(B, Hkv, Sk):
    bh = B * Hkv; want = -(-1024 // bh)
    per = -(-Sk // want); per = -(-per // 64) * 64; per = max(per, 256)
    return per, max(1, -(-Sk // per))
def kexp(x): return np.exp(x)
def run(B, Hq, Hkv, Sq, Sk, D, Dv, vec, causal, lens, rng):
    G = Hq // Hkv; Rall = Sq * G
    kL, kNC = lanes(D, Dv, vec); accb = 8 if vec == 2 else 4; budget = 128 if accb == 8 else 256
    kR = 4 if (Rall <= 4 or 8 * kNC * vec * accb > budget) else 8
    assert kR * kNC * vec * accb <= budget
    nrc = -(-Rall // kR)
    U = 2 if (kNC == 1 and kR <= 4 and accb == 4) else 1
    assert U * kR <= kL
    kGW = 32 // kL; kG = W * kGW; V = vec; E = kNC * V; DP = kL * E
    q = rng.standard_normal((B, Hq, Sq, D)); k = rng.standard_normal((B, Hkv, Sk, D)); v = rng.standard_normal((B, Hkv, Sk, Dv))
    per, nsplit = geometry(B, Hkv, Sk)
    out = np.zeros((B, Hq, Sq, Dv)); lse = np.full((B, Hq, Sq), -np.inf)
    for bx in range(B * Hkv * nsplit * nrc):
        blk = bx // nrc; rchunk = bx % nrc; r0 = rchunk * kR; R = min(kR, Rall - r0)
        split = blk % nsplit; bh = blk // nsplit; hkv = bh % Hkv; b = bh // Hkv
        rows = []
        for r in range(kR):
            rr = r0 + (r if r < R else 0); i = rr // G; h = hkv * G + rr % G
            pos = i + Sk - Sq; hi = min(lens[b], pos + 1) if causal else lens[b]; lo = 0
            if r >= R: lo, hi = 0, 0
            rows.append((lo, hi, h, i))
        ul = [r[0] for r in rows if r[1] > r[0]]; uh = [r[1] for r in rows if r[1] > r[0]]
        a = max(min(ul) if ul else 2**62, split * per); z = min(max(uh) if uh else -2**62, split * per + per)
        m = np.full((kG, kR), -np.inf); l = np.zeros((kG, kR)); acc = np.zeros((kG, kR, DP))
        seen = []
        for w in range(W):
            jw = a + w * kGW * U
            while jw < z:
                for gw in range(kGW):
                    gi = w * kGW + gw; j0 = jw + gw * U
                    s = np.zeros((U, kR))
                    for u in range(U):
                        j = j0 + u
                        for r in range(kR):
                            x = 0.0
                            for li in range(kL):
                                for c in range(kNC):
                                    for e in range(V):
                                        d = (c * kL + li) * V + e
                                        if True:
                                            qq = q[b, rows[r][2], rows[r][3], d] if (r < R and d < D) else 0.0
                                            kk = k[b, hkv, j, d] if (j < z and d < D) else 0.0
                                            x += qq * kk
                            lo, hi, h, i = rows[r]
                            s[u, r] = x / np.sqrt(D) if (j < z and lo <= j < hi) else -np.inf
                        if j < z: seen.append(j)
                    for r in range(kR):
                        mx = max([m[gi, r]] + [s[u, r] for u in range(U)])
                        off = 0.0 if mx == -np.inf else mx
                        alpha = kexp(m[gi, r] - off)
                        ps = [0.0 if s[u, r] == -np.inf else kexp(s[u, r] - off) for u in range(U)]
                        l[gi, r] = l[gi, r] * alpha + sum(ps); m[gi, r] = mx; acc[gi, r] *= alpha
                        for u in range(U):
                            if s[u, r] != -np.inf:
                                vv = np.zeros(DP); vv[:Dv] = v[b, hkv, j0 + u]; acc[gi, r] += ps[u] * vv
                jw += kG * U
        seen = sorted(seen); assert seen == list(range(a, z)) if a < z else seen == [], (seen[:5], a, z)
        for r in range(R):
            M = m[:, r].max(); off = 0.0 if M == -np.inf else M
            wgt = kexp(m[:, r] - off); L = (l[:, r] * wgt).sum()
            sc = 0.0 if L == 0 else 1 / L; ls = -np.inf if L == 0 else M + np.log(L)
            o = (wgt[:, None] * acc[:, r, :Dv]).sum(0) * sc
            lo, hi, h, i = rows[r]
            # merge in split order
            out_key = (b, h, i)
            parts.setdefault(out_key, []).append((split, ls, o))
    for (b, h, i), pl in parts.items():
        pl.sort(key=lambda t: t[0]); assert [t[0] for t in pl] == list(range(nsplit))
        ls = np.array([t[1] for t in pl]); M = ls.max()
        if M == -np.inf: out[b, h, i] = 0; lse[b, h, i] = -np.inf; continue
        wgt = np.exp(ls - M); out[b, h, i] = (wgt[:, None] * np.array([t[2] for t in pl])).sum(0) / wgt.sum(); lse[b, h, i] = M + np.log(wgt.sum())
    # reference
    for b in range(B):
        for h in range(Hq):
            for i in range(Sq):
                pos = i + Sk - Sq; hi = min(lens[b], pos + 1) if causal else lens[b]
                sc = q[b, h, i] @ k[b, h // G, :hi].T / np.sqrt(D)
                if hi <= 0: assert (out[b, h, i] == 0).all() and lse[b, h, i] == -np.inf; continue
                mm = sc.max(); pp = np.exp(sc - mm)
                ref = pp @ v[b, h // G, :hi] / pp.sum()
                assert np.allclose(out[b, h, i], ref), (b, h, i)
                assert np.isclose(lse[b, h, i], mm + np.log(pp.sum()))
    assert all(len(pl) == nsplit for pl in parts.values()) and len(parts) == B * Hq * Sq
    return nsplit, kL, kNC, kR, U, nrc
rng = np.random.default_rng(0)
for args in [(1, 4, 1, 1, 700, 16, 16, 8, False, [700]), (2, 8, 2, 2, 600, 24, 40, 4, True, [600, 0]),
             (1, 2, 2, 1, 300, 20, 6, 2, False, [299]), (1, 8, 1, 1, 40, 8, 8, 8, True, [33]),
             (2, 8, 2, 4, 400, 16, 8, 8, True, [400, 77]), (1, 6, 1, 2, 300, 8, 4, 2, True, [300]),
             (1, 4, 1, 3, 300, 8, 4, 2, True, [300])]:
    parts = {}
    print(args[:8], run(*args, rng))
print("ok")
