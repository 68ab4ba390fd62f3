# Emulates the index math and reduction structure of cuda/attention_decode2.cuh (the decode kernel v2):
# split geometry, the prefetching key loop (every key of [a, z) once, the prefetched rows are the next
# step's), the reduce-scatter butterfly (lane li ends with pair li / (kL / N), the lanes sharing a pair
# with the same bits, emulated lane by lane in float32 with shfl_xor semantics), the score-pair broadcast,
# the per-group online softmax, the group combine and merge2's split merge, against a direct softmax in
# float64. Run by hand: python3 tests/cuda_emu/decode2_emu.py (not collected by pytest).
import numpy as np

W = 4            # warps per block (kDecWarps)
MAX_PAIRS = 16   # kDec2MaxPairs


def lanes(D, Dv, vec=8):
    n = -(-max(D, Dv) // vec)
    kl = 8 if n <= 8 else 16 if n <= 16 else 32
    nc = 1 if n <= 32 else 2 if n <= 64 else 4
    return kl, nc


def geometry(B, Hkv, Sk, nrc, target):
    bhr = max(B * Hkv * nrc, 1); want = -(-target // bhr)
    per = -(-Sk // want); per = -(-per // 64) * 64; per = max(per, 256)
    return per, max(1, -(-Sk // per))


def keys_for(req, kr, kl):
    k = req
    while k > 1 and (k * kr > kl or k * kr > MAX_PAIRS):
        k //= 2
    return k


def reduce_scatter(s, kL):
    """s: [kL lanes][N] float32 partial sums; returns [kL] (lane li's s[0] after the rounds)."""
    s = s.copy(); N = s.shape[1]; n = N
    o = kL // 2
    while o > 0:
        li = np.arange(kL); partner = li ^ o
        if n > 1:
            half = n // 2
            up = (li & o) != 0
            new = s.copy()
            for t in range(N // 2):
                if t < half:
                    keep = np.where(up, s[:, half + t], s[:, t])
                    send = np.where(up, s[:, t], s[:, half + t])
                    new[:, t] = (keep + send[partner]).astype(np.float32)
            s = new; n = half
        else:
            s[:, 0] = (s[:, 0] + s[partner, 0]).astype(np.float32)
        o //= 2
    return s[:, 0]


def check_reduce_scatter(rng):
    for kL in (8, 16, 32):
        for N in (1, 2, 4, 8, 16):
            if N > kL:
                continue
            s = rng.standard_normal((kL, N)).astype(np.float32)
            got = reduce_scatter(s, kL)
            spread = kL // N
            for li in range(kL):
                idx = li // spread
                assert np.isclose(got[li], s[:, idx].astype(np.float64).sum(), rtol=1e-5, atol=1e-5), (kL, N, li)
                assert got[li] == got[idx * spread], "lanes sharing a pair must hold the same bits"


def run(B, Hq, Hkv, Sq, Sk, D, Dv, causal, lens, req_keys, target, rng):
    G = Hq // Hkv; Rall = Sq * G
    assert Rall <= 8
    kL, kNC = lanes(D, Dv); assert kNC == 1
    V = 8; E = V; DP = kL * E
    kR = 4 if Rall <= 4 else 8
    nrc = -(-Rall // kR)
    U = keys_for(req_keys, kR, kL); N = U * kR; spread = kL // N
    assert N <= kL and kL % N == 0
    kGW = 32 // kL; kG = W * kGW; kStep = kG * U
    q = rng.standard_normal((B, Hq, Sq, D)); k = rng.standard_normal((B, Hkv, Sk, D))
    v = rng.standard_normal((B, Hkv, Sk, Dv))
    per, nsplit = geometry(B, Hkv, Sk, nrc, target)
    assert (nsplit - 1) * per < max(Sk, 1) and nsplit * per >= Sk
    parts = {}
    for bx in range(B * Hkv * nsplit * nrc):
        blk = bx // nrc; rchunk = bx % nrc; r0 = rchunk * kR; R = min(kR, Rall - r0)
        split = blk % nsplit; bh = blk // nsplit; hkv = bh % Hkv; b = bh // Hkv
        rows = []
        for r in range(kR):
            rr = r0 + (r if r < R else 0); i = rr // G; h = hkv * G + rr % G
            pos = i + Sk - Sq; hi = min(lens[b], pos + 1) if causal else lens[b]; lo = 0
            hi = max(hi, lo)
            if r >= R: lo, hi = 0, 0
            rows.append((lo, hi, h, i))
        ul = [r[0] for r in rows if r[1] > r[0]]; uh = [r[1] for r in rows if r[1] > r[0]]
        ka = max(min(ul) if ul else 2**62, split * per); kz = min(max(uh) if uh else -2**62, split * per + per)
        a, z = (ka, kz) if ka < kz else (0, 0)
        qv = np.zeros((kR, DP))
        for r in range(kR):
            if r < R:
                qv[r, :D] = q[b, rows[r][2], rows[r][3]]
        m = np.full((kG, kR), -np.inf); l = np.zeros((kG, kR)); acc = np.zeros((kG, kR, DP))
        seen = []
        for w in range(W):
            jw = a + w * kGW * U
            loaded = {gw: [jw + gw * U + u for u in range(U)] for gw in range(kGW)}  # the first load
            while jw < z:
                for gw in range(kGW):
                    gi = w * kGW + gw; j0 = jw + gw * U
                    assert loaded[gw] == [j0 + u for u in range(U)], "prefetched rows are this step's"
                    loaded[gw] = [j0 + kStep + u for u in range(U)]
                    # per-lane partial dots: lane li holds dims [li * V, li * V + V)
                    part = np.zeros((kL, N), dtype=np.float32)
                    for u in range(U):
                        j = j0 + u
                        kk = np.zeros(DP)
                        if j < z:
                            kk[:D] = k[b, hkv, j]; seen.append(j)
                        for r in range(kR):
                            prod = (qv[r] * kk).reshape(kL, V).sum(1)
                            part[:, u * kR + r] = prod
                    red = reduce_scatter(part, kL)
                    x = np.full(kL, -np.inf)
                    for li in range(kL):
                        idx = li // spread; mu, mr = idx // kR, idx % kR
                        j = j0 + mu; lo, hi = rows[mr][0], rows[mr][1]
                        if j < z and lo <= j < hi:
                            x[li] = red[li] / np.sqrt(D)
                    sc = np.array([[x[(u * kR + r) * spread] for r in range(kR)] for u in range(U)])
                    for r in range(kR):
                        mx = max([m[gi, r]] + [sc[u, r] for u in range(U)])
                        off = 0.0 if mx == -np.inf else mx
                        alpha = np.exp(m[gi, r] - off)
                        ps = [0.0 if sc[u, r] == -np.inf else np.exp(sc[u, r] - off) for u in range(U)]
                        l[gi, r] = l[gi, r] * alpha + sum(ps); m[gi, r] = mx; acc[gi, r] *= alpha
                        for u in range(U):
                            if sc[u, r] != -np.inf:
                                vv = np.zeros(DP); vv[:Dv] = v[b, hkv, j0 + u]; acc[gi, r] += ps[u] * vv
                jw += kStep
        seen = sorted(seen); assert seen == list(range(a, z)), (seen[:5], a, z)
        for r in range(R):
            M = m[:, r].max(); off = 0.0 if M == -np.inf else M
            wgt = np.exp(m[:, r] - off); L = (l[:, r] * wgt).sum()
            scl = 0.0 if L == 0 else 1 / L; ls = -np.inf if L == 0 else M + np.log(L)
            o = (wgt[:, None] * acc[:, r, :Dv]).sum(0) * scl
            _, _, h, i = rows[r]
            parts.setdefault((b, h, i), []).append((split, ls, o))
    out = np.zeros((B, Hq, Sq, Dv)); lse = np.full((B, Hq, Sq), -np.inf)
    for (b, h, i), pl in parts.items():
        pl.sort(key=lambda t: t[0]); assert [t[0] for t in pl] == list(range(nsplit))
        # merge2: merge_step in split order
        mx, s, accm = -np.inf, 0.0, np.zeros(Dv)
        for _, lp, op in pl:
            if lp == -np.inf:
                continue
            if lp > mx or mx == -np.inf:
                rs = 0.0 if mx == -np.inf else np.exp(mx - lp); s = s * rs + 1.0; accm = accm * rs + op; mx = lp
            else:
                wp = np.exp(lp - mx); s += wp; accm += wp * op
        out[b, h, i] = 0 if mx == -np.inf else accm / s
        lse[b, h, i] = mx if mx == -np.inf else mx + np.log(s)
    assert len(parts) == B * Hq * Sq
    for b in range(B):
        for h in range(Hq):
            for i in range(Sq):
                pos = i + Sk - Sq; hi = min(lens[b], pos + 1) if causal else lens[b]
                if hi <= 0:
                    assert (out[b, h, i] == 0).all() and lse[b, h, i] == -np.inf; continue
                sc = q[b, h, i] @ k[b, h // G, :hi].T / np.sqrt(D)
                mm = sc.max(); pp = np.exp(sc - mm)
                ref = pp @ v[b, h // G, :hi] / pp.sum()
                assert np.allclose(out[b, h, i], ref, atol=1e-5), (b, h, i, np.abs(out[b, h, i] - ref).max())
                assert np.isclose(lse[b, h, i], mm + np.log(pp.sum()), atol=1e-5)
    return dict(nsplit=nsplit, per=per, kL=kL, kR=kR, U=U, nrc=nrc)


rng = np.random.default_rng(0)
check_reduce_scatter(rng)
print("reduce-scatter ok")
#        B  Hq Hkv Sq  Sk    D   Dv  causal lens          keys target
cases = [(1, 4, 1, 1, 700, 128, 128, False, [700], 4, 2048),
         (2, 8, 2, 2, 600, 64, 64, True, [600, 0], 4, 64),
         (1, 2, 2, 1, 300, 40, 24, False, [299], 2, 2048),
         (1, 8, 1, 1, 1100, 128, 128, True, [1033], 2, 64),
         (2, 8, 2, 2, 700, 128, 128, True, [700, 77], 1, 64),
         (1, 6, 1, 1, 520, 256, 256, True, [520], 4, 64),
         (1, 8, 2, 2, 900, 256, 200, True, [900], 4, 128),
         (1, 1, 1, 1, 0, 64, 64, False, [0], 4, 2048),
         (1, 4, 1, 1, 600, 256, 256, True, [600], 4, 64),
         (1, 3, 3, 1, 301, 16, 8, False, [301], 4, 64)]
for c in cases:
    print(c[:7], run(*c, rng))
print("ok")
