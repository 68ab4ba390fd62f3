"""Host emulation (float64 NumPy) of the GPU DLA kernels' structure: cuda/dla_prefill.cu's phases (scan
with snapshots, weights from snapshots, outputs, per-element state update through the slot plan) and
the decode steps' closed-form entry map (decode_src in cuda/dla_common.cuh), checked against
attnkit.reference. Not the CUDA code itself: its index math and bookkeeping, transcribed line by line, for machines without a GPU.

Run from anywhere: python tools/dla_cuda_emulate.py (needs NumPy only: the compiled core is stubbed, so
run it as a script, never import it into a process that uses attnkit)."""
import math
import os
import sys
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python"))
core = types.ModuleType("attnkit._core")
core.__getattr__ = lambda name: type(name, (), {"TokenVsState": 0, "StateDrift": 1, "__members__": {}})
pkg = types.ModuleType("attnkit")
pkg.__path__ = [os.path.join(HERE, "..", "python", "attnkit")]
sys.modules["attnkit"] = pkg
sys.modules["attnkit._core"] = core
from attnkit import reference as ref  # noqa: E402
from attnkit._dla import DLACache  # noqa: E402

RMS = 1e-6


def rms_scale(x, n):
    return 1.0 / math.sqrt(x / n + RMS)


def info_score(drift, A, B, p, n):
    ra = rms_scale(A, n)
    den = ra * math.sqrt(A) + 1e-6
    if drift:
        A2 = max(A + 2 * p + B, 0.0)
        rc = rms_scale(A2, n)
        num2 = rc * rc * A2 + ra * ra * A - 2 * ra * rc * (A + p)
    else:
        rb = rms_scale(B, n)
        num2 = rb * rb * B + ra * ra * A - 2 * ra * rb * p
    return math.sqrt(max(num2, 0.0)) / den


def opens_state(score, tau, C, m):
    if m == 0:
        return True
    if C == 1:
        return False
    return score >= tau


def merge_pair(info, count, m):
    best, br = 0, 0.0
    for i in range(m - 1):
        r = (info[i] + info[i + 1]) / (count[i] + count[i + 1])
        if i == 0 or r < br:
            best, br = i, r
    return best


def prefill(q, k, v, lam, g, C, tau, drift, L, cache):
    """The prefill kernel for one call; returns y, cache arrays, aux (per (b, h) item, like a block)."""
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]
    if L > T:
        L = T if T > 0 else 1
    n = float(Dk * Dv)
    SS = Dk * Dv
    y = np.full((B, H, T, Dv), np.nan)
    scores = np.full((B, H, T), np.nan)
    bounds = np.zeros((B, H, T), bool)
    merged_out = np.full((B, H, T), -7)
    co = dict(states=np.full((B, H, C, Dk, Dv), np.nan), counts=np.zeros((B, H, C), np.int64),
              info=np.zeros((B, H, C)), starts=np.zeros((B, H, C), np.int64), size=np.zeros((B, H), np.int64))
    position = 0 if cache is None else cache.position
    for b in range(B):
        for h in range(H):
            slots = np.full((C, SS), np.nan)
            slot = [0] * C
            count = [0] * C
            info = [0.0] * C
            start = [0] * C
            unit = [0] * C
            in_slot = [0] * C
            free_ = [0] * C
            m = int(cache.size[b, h]) if cache is not None else 0
            for i in range(m):
                slot[i] = i
                count[i] = int(cache.counts[b, h, i])
                info[i] = float(cache.info[b, h, i])
                start[i] = int(cache.starts[b, h, i])
            nfree = 0
            for s in range(C - 1, m - 1, -1):
                free_[nfree] = s
                nfree += 1
            for i in range(m):
                slots[i] = cache.states[b, h, i].reshape(-1)
            for t0 in range(0, T, L):
                Lc = min(L, T - t0)
                m_in = m
                Qc, Kc, Vc, lamc = q[b, h, t0:t0 + Lc], k[b, h, t0:t0 + Lc], v[b, h, t0:t0 + Lc], lam[b, h, t0:t0 + Lc]
                decay = g is not None
                G = eG = er = fj = a2 = None
                factored = False
                if decay:
                    G = np.cumsum(g[b, h, t0:t0 + Lc])
                    factored = G[0] - G[Lc - 1] <= 600.0
                    eG = np.exp(G)
                    a2 = np.exp(2.0 * g[b, h, t0:t0 + Lc])
                    if factored:
                        er = np.exp(G - G[0])
                        fj = np.exp(G[0] - G)

                def dec(r, j):
                    if not decay:
                        return 1.0
                    return er[r] * fj[j] if factored else math.exp(G[r] - G[j])

                KK = Kc @ Kc.T
                VV = Vc @ Vc.T
                QK = Qc @ Kc.T
                cp = np.zeros(Lc)
                A_open = 0.0
                if m_in > 0:
                    open_ = slots[slot[m_in - 1]].reshape(Dk, Dv)
                    cp = np.einsum("rd,de,re->r", Kc, open_, Vc)
                    A_open = float(np.sum(open_ * open_))
                decj = [dec(Lc - 1, j) for j in range(Lc)] if decay else None
                # scan (thread 0)
                for u in range(m_in):
                    in_slot[u] = slot[u]
                    unit[u] = u
                A_after = A_open if m_in > 0 else 0.0
                carried = m_in > 0
                open_lo = 0
                snap_m = [0] * Lc
                snap_unit = np.full((Lc, C), -99)
                for r in range(Lc):
                    A = (a2[r] if decay else 1.0) * A_after
                    pr = (eG[r] if decay else 1.0) * cp[r] if carried else 0.0
                    for j in range(open_lo, r):
                        pr += dec(r, j) * KK[r, j] * VV[r, j]
                    Bv = KK[r, r] * VV[r, r]
                    score = info_score(drift, A, Bv, pr, n) if m > 0 else 0.0
                    opens = opens_state(score, tau, C, m)
                    mg = -1
                    if opens:
                        if m == C:
                            i = merge_pair(info, count, m)
                            count[i] += count[i + 1]
                            info[i] += info[i + 1]
                            for j in range(i + 1, m - 1):
                                slot[j], count[j], info[j], start[j], unit[j] = (slot[j + 1], count[j + 1], info[j + 1],
                                                                                 start[j + 1], unit[j + 1])
                            m -= 1
                            mg = i
                        count[m], info[m], start[m], unit[m] = 1, score, position + t0 + r, m_in + r
                        m += 1
                        open_lo = r
                        carried = False
                        A_after = Bv
                    else:
                        count[m - 1] += 1
                        info[m - 1] += score
                        A_after = max(A + 2 * pr + Bv, 0.0)
                    scores[b, h, t0 + r] = score
                    bounds[b, h, t0 + r] = opens
                    merged_out[b, h, t0 + r] = mg
                    snap_m[r] = m
                    snap_unit[r, :m] = unit[:m]
                for pas in range(2):
                    for i in range(m):
                        ulo = unit[i]
                        uhi = unit[i + 1] if i + 1 < m else m_in + Lc
                        if (ulo < m_in) != (pas == 0):
                            continue
                        if ulo < m_in:
                            ue = min(uhi, m_in)
                            for u in range(ulo + 1, ue):
                                free_[nfree] = in_slot[u]
                                nfree += 1
                            slot[i] = in_slot[ulo]
                        else:
                            nfree -= 1
                            slot[i] = free_[nfree]
                # weights (one thread per row)
                P = np.full((Lc, Lc), np.nan)
                Win = np.full((Lc, C), np.nan)
                for r in range(Lc):
                    mm = snap_m[r]
                    units = snap_unit[r]
                    for i in range(mm):
                        li = lamc[r, mm - 1 - i]
                        ulo = units[i]
                        uhi = units[i + 1] if i + 1 < mm else m_in + r + 1
                        umid = min(uhi, m_in)
                        for u in range(ulo, umid):
                            Win[r, u] = li * (eG[r] if decay else 1.0)
                        j0 = max(ulo, m_in) - m_in
                        for j in range(j0, uhi - m_in):
                            P[r, j] = li * dec(r, j) * QK[r, j]
                anyU = [bool(np.any(Win[:, u] != 0)) for u in range(m_in)]
                # outputs (one thread per element)
                for r in range(Lc):
                    for e in range(Dv):
                        acc = 0.0
                        for j in range(r + 1):
                            acc += P[r, j] * Vc[j, e]
                        for u in range(m_in):
                            if not anyU[u]:
                                continue
                            S = slots[in_slot[u]].reshape(Dk, Dv)
                            acc += sum(Win[r, u] * Qc[r, d] * S[d, e] for d in range(Dk))
                        y[b, h, t0 + r, e] = acc
                # states (one thread per element; vectorised over elements here, same per-element order)
                E = eG[Lc - 1] if decay else 1.0
                for pas in range(2):
                    for i in range(m):
                        ulo = unit[i]
                        uhi = unit[i + 1] if i + 1 < m else m_in + Lc
                        carries = ulo < m_in
                        if carries != (pas == 0):
                            continue
                        x = np.zeros(SS)
                        if carries:
                            x = slots[in_slot[ulo]].copy()
                            for u in range(ulo + 1, min(uhi, m_in)):
                                x = x + slots[in_slot[u]]
                            if decay:
                                x = x * E
                        j0, j1 = max(ulo, m_in) - m_in, uhi - m_in
                        if j1 > j0:
                            acc = np.zeros(SS)
                            for j in range(j0, j1):
                                vj = decj[j] * Vc[j] if decay else Vc[j]
                                acc += np.outer(Kc[j], vj).reshape(-1)
                            x = x + acc if carries else acc
                        slots[slot[i]] = x
            for i in range(C):
                co["states"][b, h, i] = slots[slot[i]].reshape(Dk, Dv) if i < m else 0.0
                co["counts"][b, h, i] = count[i] if i < m else 0
                co["info"][b, h, i] = info[i] if i < m else 0.0
                co["starts"][b, h, i] = start[i] if i < m else 0
            co["size"][b, h] = m
    return y, DLACache(**co, position=position + T), (scores, bounds, merged_out)


def decode_src(i, m, opens, merged):
    s0, s1, tok = -1, -1, False
    if not opens:
        s0, tok = i, i == m - 1
    elif merged < 0:
        if i < m:
            s0 = i
        else:
            tok = True
    elif i < merged:
        s0 = i
    elif i == merged:
        s0, s1 = i, i + 1
    elif i < m - 1:
        s0 = i + 1
    else:
        tok = True
    return s0, s1, tok


def decode(q, k, v, lam, g, C, tau, drift, cache):
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]
    assert T == 1
    n = float(Dk * Dv)
    y = np.full((B, H, 1, Dv), np.nan)
    aux = (np.zeros((B, H, 1)), np.zeros((B, H, 1), bool), np.zeros((B, H, 1), np.int64))
    co = dict(states=np.full((B, H, C, Dk, Dv), np.nan), counts=np.zeros((B, H, C), np.int64),
              info=np.zeros((B, H, C)), starts=np.zeros((B, H, C), np.int64), size=np.zeros((B, H), np.int64))
    position = 0 if cache is None else cache.position
    for b in range(B):
        for h in range(H):
            m = int(cache.size[b, h]) if cache is not None else 0
            a = math.exp(g[b, h, 0]) if g is not None else 1.0
            kr, vr, qr, lr = k[b, h, 0], v[b, h, 0], q[b, h, 0], lam[b, h, 0]
            kk, vv = float(kr @ kr), float(vr @ vr)
            score = 0.0
            if m > 0:
                S = cache.states[b, h, m - 1]
                score = info_score(drift, a * a * float(np.sum(S * S)), kk * vv, a * float(kr @ S @ vr), n)
            opens = opens_state(score, tau, C, m)
            merged = -1
            if opens and m == C:
                merged = merge_pair(list(cache.info[b, h]), list(cache.counts[b, h]), m)
            aux[0][b, h, 0], aux[1][b, h, 0], aux[2][b, h, 0] = score, opens, merged
            m_out = m + 1 if opens and merged < 0 else m
            yy = np.zeros(Dv)
            for i in range(C):
                if i >= m_out:
                    co["states"][b, h, i] = 0
                    continue
                s0, s1, tok = decode_src(i, m, opens, merged)
                if s0 < 0:
                    cnt, inf, st = 1, score, position
                else:
                    cnt, inf, st = (int(cache.counts[b, h, s0]), float(cache.info[b, h, s0]),
                                    int(cache.starts[b, h, s0]))
                    if s1 >= 0:
                        cnt += int(cache.counts[b, h, s1])
                        inf += float(cache.info[b, h, s1])
                    if tok:
                        cnt += 1
                        inf += score
                co["counts"][b, h, i], co["info"][b, h, i], co["starts"][b, h, i] = cnt, inf, st
                x = np.zeros((Dk, Dv))
                if s0 >= 0:
                    x = a * (cache.states[b, h, s0] + (cache.states[b, h, s1] if s1 >= 0 else 0))
                x = x + np.outer(kr if tok else np.zeros(Dk), vr)
                co["states"][b, h, i] = x
                yy += (lr[m_out - 1 - i] * qr) @ x
            y[b, h, 0] = yy
            co["size"][b, h] = m_out
    return y, DLACache(**co, position=position + 1), aux


def run(q, k, v, lam, g, C, tau, drift, L, cache, use_decode):
    if use_decode and q.shape[2] == 1:
        return decode(q, k, v, lam, g, C, tau, drift, cache)
    return prefill(q, k, v, lam, g, C, tau, drift, L, cache)


def cmp(name, got, want):
    (gy, gc, ga), (ry, rc, ra) = got, want
    bad = []
    for what, a, b in (("bounds", ga[1], ra[1]), ("merged", ga[2], ra[2]), ("counts", gc.counts, rc.counts),
                       ("starts", gc.starts, rc.starts), ("size", gc.size, rc.size)):
        if not np.array_equal(a, b):
            bad.append(what)
    for what, a, b in (("y", gy, ry), ("states", gc.states, rc.states), ("info", gc.info, rc.info),
                       ("scores", ga[0], ra[0])):
        s = max(1.0, float(np.abs(b).max(initial=0)))
        if not (np.abs(np.asarray(a) - b).max(initial=0) / s < 1e-9):
            bad.append(what)
    if gc.position != rc.position:
        bad.append("position")
    if bad:
        print("FAIL", name, bad)
    return not bad


def main():
    rng = np.random.default_rng(7)
    ok = total = 0
    for drift in (False, True):
        for gmode in (None, "rand", "strong"):
            for tau in (0.6, 0.9, 0.0, float("inf")):
                for (B, H, T, Dk, Dv, C) in ((1, 2, 13, 3, 4, 3), (2, 1, 9, 2, 2, 1), (1, 1, 20, 4, 3, 6),
                                             (1, 1, 0, 2, 2, 2)):
                    q, k, v = (rng.standard_normal((B, H, T, d)) for d in (Dk, Dk, Dv))
                    lam = rng.random((B, H, T, C))
                    g = None if gmode is None else (-rng.random((B, H, T)) * (0.5 if gmode == "rand" else 400))
                    kw = dict(capacity=C, tau=tau, score="state_drift" if drift else "token_vs_state")
                    for L in (1, 4, 64):
                        want = ref.dynamic_linear_attention(q, k, v, lam, log_decay=g, return_aux=True, **kw)
                        got = run(q, k, v, lam, g, C, tau, drift, L, None, L == 64)
                        total += 1
                        ok += cmp(f"d{drift} g{gmode} tau{tau} T{T} C{C} L{L}", got, want)
                        # stream: a second piece, then decode steps (decode kernel and chunked T = 1)
                        cache_r = want[1]
                        cache_g = got[1]
                        for s in range(4):
                            T2 = 5 if s == 0 else 1
                            q2, k2, v2 = (rng.standard_normal((B, H, T2, d)) for d in (Dk, Dk, Dv))
                            lam2 = rng.random((B, H, T2, C))
                            g2 = None if gmode is None else -rng.random((B, H, T2)) * 0.5
                            want2 = ref.dynamic_linear_attention(q2, k2, v2, lam2, log_decay=g2, cache=cache_r,
                                                                 return_aux=True, **kw)
                            got2 = run(q2, k2, v2, lam2, g2, C, tau, drift, L, cache_g, L == 64)
                            total += 1
                            ok += cmp(f"  stream{s} d{drift} g{gmode} tau{tau} T{T} C{C} L{L}", got2, want2)
                            cache_r, cache_g = want2[1], got2[1]
    print(f"{ok}/{total} ok")
    return 0 if ok == total else 1


if __name__ == "__main__":
    sys.exit(main())
