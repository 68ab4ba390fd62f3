# Emulates the index math and reduction structure of cuda/attention_decode3.cuh (the tensor-core decode
# kernel v3): split geometry; the warp tiles (tile t of a block belongs to warp t % 4, every key of [a, z)
# once); each warp's cp.async ring (the stage a tile is loaded into is free: the tile that used it is
# finished, and wait_group NS - 1 leaves tile k complete); the fragments of ldmatrix (x4, plain and .trans)
# and mma.m16n8k16 (row.col) lane by lane, as the kernel addresses them (Q as A, K as B, P as A from the
# score accumulators, V as B through .trans); the score terms' element -> (row, key) map; the warp's online
# softmax with the quad reductions; the element-wise PV of a tile whose masked keys hold non-finite values;
# the warp combine and merge2's split merge -- against a direct softmax in float64. P is rounded to float16
# as in the kernel. Run by hand: python3 tests/cuda_emu/decode3_emu.py (not collected by pytest).
import numpy as np

NW = 4      # warps per block (kDec3Warps)
TK = 16     # keys per warp tile (kDec3Tile)
ROWS = 16   # rows per block (kDec3Rows)


def geometry(B, Hkv, Sk, target):
    bh = max(B * Hkv, 1); want = -(-target // bh)
    per = -(-Sk // want); per = -(-per // 64) * 64; per = max(per, 256)
    return per, max(1, -(-Sk // per))


# ------------------------------------------------------------------------- fragments (PTX ISA semantics)
def ldsm_x4(smem, addr, trans=False):
    """smem: 2-D array [rows][cols]; addr(lane) -> (row, col) of the 8 consecutive elements lane supplies
    (matrix lane // 8, row lane % 8). Returns regs[lane][4][2]: register j of lane t holds matrix j's
    elements (t // 4, 2 (t % 4) + {0, 1}), or with .trans (2 (t % 4) + {0, 1}, t // 4)."""
    mats = []
    for j in range(4):
        m = np.zeros((8, 8))
        for r in range(8):
            row, col = addr(8 * j + r)
            m[r] = smem[row, col:col + 8]
        mats.append(m)
    regs = np.zeros((32, 4, 2))
    for t in range(32):
        for j in range(4):
            for e in range(2):
                regs[t, j, e] = mats[j][2 * (t % 4) + e, t // 4] if trans else mats[j][t // 4, 2 * (t % 4) + e]
    return regs


def mma16816(d, a, b0, b1):
    """d[lane][4] += A (16x16, a[lane][4][2]) x B (16x8, b0 / b1[lane][2]), PTX fragment layouts."""
    A = np.zeros((16, 16)); Bm = np.zeros((16, 8))
    for t in range(32):
        g, c = t // 4, t % 4
        for e in range(2):
            A[g, 2 * c + e] = a[t, 0, e]; A[g + 8, 2 * c + e] = a[t, 1, e]
            A[g, 2 * c + 8 + e] = a[t, 2, e]; A[g + 8, 2 * c + 8 + e] = a[t, 3, e]
            Bm[2 * c + e, g] = b0[t, e]; Bm[2 * c + 8 + e, g] = b1[t, e]
    C = A @ Bm
    for t in range(32):
        g, c = t // 4, t % 4
        d[t, 0] += C[g, 2 * c]; d[t, 1] += C[g, 2 * c + 1]; d[t, 2] += C[g + 8, 2 * c]; d[t, 3] += C[g + 8, 2 * c + 1]


def check_fragments(rng, D=64):
    """S = Q K^T and O = P V through the kernel's addressing, against numpy."""
    LD = D + 8
    Q = rng.standard_normal((16, D)); Kt = rng.standard_normal((16, D)); Vt = rng.standard_normal((16, D))
    sQ = np.zeros((16, LD)); sQ[:, :D] = Q
    sK = np.zeros((16, LD)); sK[:, :D] = Kt
    sV = np.zeros((16, LD)); sV[:, :D] = Vt
    s = np.zeros((2, 32, 4))
    for ks in range(D // 16):
        qa = ldsm_x4(sQ, lambda L: (L % 16, ks * 16 + (L // 16) * 8))
        bb = ldsm_x4(sK, lambda L: ((L // 16) * 8 + L % 8, ks * 16 + ((L // 8) % 2) * 8))
        mma16816(s[0], qa, bb[:, 0], bb[:, 1]); mma16816(s[1], qa, bb[:, 2], bb[:, 3])
    S = Q @ Kt.T
    for t in range(32):
        g, c = t // 4, t % 4
        for n in range(2):
            for e in range(4):
                assert np.isclose(s[n, t, e], S[g + 8 * (e // 2), n * 8 + 2 * c + (e & 1)])
    P = s  # any values: O = P V with P from the accumulators
    pa = np.zeros((32, 4, 2))
    for t in range(32):
        pa[t, 0] = P[0, t, 0:2]; pa[t, 1] = P[0, t, 2:4]; pa[t, 2] = P[1, t, 0:2]; pa[t, 3] = P[1, t, 2:4]
    o = np.zeros((D // 8, 32, 4))
    for dp in range(D // 16):
        bb = ldsm_x4(sV, lambda L: (((L // 8) % 2) * 8 + L % 8, dp * 16 + (L // 16) * 8), trans=True)
        mma16816(o[2 * dp], pa, bb[:, 0], bb[:, 1]); mma16816(o[2 * dp + 1], pa, bb[:, 2], bb[:, 3])
    O = S @ Vt
    for t in range(32):
        g, c = t // 4, t % 4
        for n in range(D // 8):
            for e in range(4):
                assert np.isclose(o[n, t, e], O[g + 8 * (e // 2), n * 8 + 2 * c + (e & 1)])


def check_pipeline():
    """Each warp's ring: commit groups, the stage of each load, wait_group NS - 1."""
    for NS in (2, 3, 4):
        for nw in range(0, 9):
            stage_of = {}; groups = []  # groups[g] = tile loaded in commit group g (or None)
            for s in range(NS - 1):
                groups.append(s if s < nw else None)
                if s < nw: stage_of[s] = s % NS
            busy = {}  # stage -> tile loaded and not yet finished
            for t, st in stage_of.items():
                busy[st] = t
            for k in range(nw):
                kn = k + NS - 1
                if kn < nw:
                    st = kn % NS
                    assert st not in busy, (NS, nw, k, "stage still in use")
                    busy[st] = kn
                groups.append(kn if kn < nw else None)
                # wait_group NS - 1: all but the NS - 1 most recent groups are complete
                done = groups[:len(groups) - (NS - 1)]
                assert k in done, (NS, nw, k)
                assert busy[k % NS] == k
                del busy[k % NS]  # finished (the __syncwarp at the end of the iteration)
            assert not busy


def run(B, Hq, Hkv, Sq, Sk, D, causal, lens, target, rng, window=None, bad_v=()):
    """The kernel's blocks one by one (every warp, every tile), then merge2; P rounded to float16."""
    G = Hq // Hkv; R = Sq * G; assert R <= ROWS
    q = rng.standard_normal((B, Hq, Sq, D)); k = rng.standard_normal((B, Hkv, Sk, D))
    v = rng.standard_normal((B, Hkv, Sk, D))
    for (bb, hh, jj, dd, val) in bad_v:
        v[bb, hh, jj, dd] = val
    scale = 1 / np.sqrt(D)
    per, nsplit = geometry(B, Hkv, Sk, target)

    def key_range(b, i):
        pos = i + Sk - Sq
        lo, hi = 0, lens[b]
        if causal: hi = min(hi, pos + 1)
        if window is not None:
            lo = max(lo, pos - window[0]); hi = min(hi, pos + window[1] + 1)
        return lo, max(hi, lo)

    parts = {}
    for blk in range(B * Hkv * nsplit):
        bh, split = blk // nsplit, blk % nsplit
        hkv, b = bh % Hkv, bh // Hkv
        rows = []
        ulo, uhi = None, None
        for r in range(ROWS):
            rr = r if r < R else 0
            i, h = rr // G, hkv * G + rr % G
            lo, hi = key_range(b, i) if r < R else (0, 0)
            rows.append((lo, hi, h, i))
            if hi > lo:
                ulo = lo if ulo is None else min(ulo, lo); uhi = hi if uhi is None else max(uhi, hi)
        s0, s1 = split * per, split * per + per
        ka, kz = (max(ulo, s0), min(uhi, s1)) if ulo is not None else (0, 0)
        a, z = (ka, kz) if ka < kz else (0, 0)
        Q = np.zeros((ROWS, D))
        for r in range(R):
            Q[r] = q[b, rows[r][2], rows[r][3]]
        nt = -(-(z - a) // TK)
        seen = []
        wm = np.full((NW, ROWS), -np.inf); wl = np.zeros((NW, ROWS)); wo = np.zeros((NW, ROWS, D))
        for w in range(NW):
            nw = (nt - 1 - w) // NW + 1 if w < nt else 0
            m = np.full(ROWS, -np.inf); l = np.zeros(ROWS); o = np.zeros((ROWS, D))
            for kk in range(nw):
                j0 = a + (w + NW * kk) * TK; jz = min(j0 + TK, z)
                Kt = np.zeros((TK, D)); Vt = np.zeros((TK, D))
                for r in range(TK):
                    if j0 + r < z:
                        Kt[r] = k[b, hkv, j0 + r]; Vt[r] = v[b, hkv, j0 + r]; seen.append(j0 + r)
                with np.errstate(invalid="ignore"):
                    S = Q @ Kt.T
                X = np.full((ROWS, TK), -np.inf); flag = False
                for r in range(ROWS):
                    lo, hi = (rows[r][0], rows[r][1]) if r < R else (-10**18, 10**18)
                    for c in range(TK):
                        j = j0 + c
                        if j < jz and lo <= j < hi:
                            X[r, c] = S[r, c] * scale
                        elif j < jz and r < R:
                            flag = True
                mx = X.max(1)
                m_new = np.maximum(m, mx)
                off = np.where(m_new == -np.inf, 0.0, m_new)
                alpha = np.exp(m - off)
                P = np.where(X == -np.inf, 0.0, np.exp(X - off[:, None]))
                l = l * alpha + P.sum(1); m = m_new; o = o * alpha[:, None]
                slow = flag and not np.isfinite(Vt[:jz - j0]).all()
                P16 = P.astype(np.float16).astype(np.float64)
                if not slow:
                    o = o + P16 @ Vt
                else:
                    for r in range(ROWS):
                        for c in range(jz - j0):
                            if X[r, c] != -np.inf:
                                o[r] += P[r, c] * Vt[c]
            wm[w], wl[w], wo[w] = m, l, o
        assert sorted(seen) == list(range(a, z)), (a, z)
        for r in range(R):
            M = wm[:, r].max(); off = 0.0 if M == -np.inf else M
            wt = np.exp(wm[:, r] - off); L = (wl[:, r] * wt).sum()
            scl = 0.0 if L == 0 else 1 / L; ls = -np.inf if L == 0 else M + np.log(L)
            with np.errstate(invalid="ignore"):
                oo = sum((0.0 if wt[x] == 0 else wt[x] * wo[x, r]) for x in range(NW)) * scl
            _, _, h, i = rows[r]
            parts.setdefault((b, h, i), []).append((split, ls, np.zeros(D) + oo))
    out = np.zeros((B, Hq, Sq, D)); lse = np.full((B, Hq, Sq), -np.inf)
    for (b, h, i), pl in parts.items():
        pl.sort(key=lambda t: t[0]); assert [t[0] for t in pl] == list(range(nsplit))
        mx, s, accm = -np.inf, 0.0, np.zeros(D)
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
                lo, hi = key_range(b, i)
                if hi <= lo:
                    assert (out[b, h, i] == 0).all() and lse[b, h, i] == -np.inf; continue
                sc = q[b, h, i] @ k[b, h // G, lo:hi].T * scale
                mm = sc.max(); pp = np.exp(sc - mm)
                with np.errstate(invalid="ignore"):
                    ref = pp @ v[b, h // G, lo:hi] / pp.sum()
                fin = np.isfinite(ref)  # non-finite only where the row sees a non-finite value
                assert np.array_equal(np.isfinite(out[b, h, i]), fin), (b, h, i, "a masked key's value leaked")
                assert np.array_equal(np.isnan(out[b, h, i]), np.isnan(ref)), (b, h, i)
                assert np.allclose(out[b, h, i][fin], ref[fin], atol=3e-3), (b, h, i, np.abs(out[b, h, i] - ref).max())
                assert np.isclose(lse[b, h, i], mm + np.log(pp.sum()), atol=1e-9)
    return dict(nsplit=nsplit, per=per)


rng = np.random.default_rng(0)
check_fragments(rng, 64)
check_fragments(rng, 32)
print("fragments ok")
check_pipeline()
print("pipeline ok")
#        B  Hq Hkv Sq  Sk    D  causal lens        target
cases = [(1, 4, 1, 1, 700, 32, False, [700], 2048, None, ()),
         (2, 8, 2, 2, 600, 32, True, [600, 0], 64, None, ()),
         (1, 8, 1, 2, 1100, 16, True, [1033], 64, None, ()),
         (2, 8, 2, 4, 333, 16, True, [333, 77], 1024, None, ()),
         (1, 16, 1, 1, 40, 16, False, [40], 64, None, ()),
         (1, 1, 1, 15, 300, 16, True, [300], 64, (20, 3), ()),
         (1, 1, 1, 1, 0, 16, False, [0], 2048, None, ()),
         (1, 4, 2, 4, 300, 16, True, [300], 64, None, [(0, 0, 298, 3, np.inf), (0, 1, 299, 5, np.nan)]),
         (1, 4, 2, 4, 300, 16, False, [300], 64, (30, 0), [(0, 0, 290, 3, -np.inf)])]
for c in cases:
    print(c[:9], run(*c[:9], rng, window=c[9], bad_v=c[10]))
print("ok")
