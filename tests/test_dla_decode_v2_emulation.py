"""Host emulation of cuda/dla_decode_v2.cu's state pass (dla_decode_states_kernel; the code is
cuda/dla_decode_states.cuh's, shared with dla_decode_v3.cu's one kernel), which cannot run here:
its work split (blocks of kLanes column lanes x kRows row groups, each thread walking the (entry, row)
units f = i * Dk + d of its row group kU at a time by stepping (i, d) without divisions) must write every
output state element exactly once and sum every term of the readout exactly once, for any Dk, Dv, C and
pack width. The step itself (decode_src, the decisions) is dla_common.cuh's (decode_decide), emulated here in
NumPy and checked against the CPU backend's decode step."""

from __future__ import annotations

import numpy as np
import pytest

K_THREADS, K_LANES = 256, 8
K_ROWS = K_THREADS // K_LANES


def decode_src(i, m, opens, merged):
    """dla_common.cuh decode_src: (s0, s1, tok)."""
    if not opens:
        return i, -1, i == m - 1
    if merged < 0:
        return (i, -1, False) if i < m else (-1, -1, True)
    if i < merged:
        return i, -1, False
    if i == merged:
        return i, i + 1, False
    if i < m - 1:
        return i + 1, -1, False
    return -1, -1, True


def emulate_states(S_in, m, opens, merged, a, q, k, v, lam, vec, units):
    """The state pass of one item, thread by thread: (out states, y, write counts)."""
    C, Dk, Dv = S_in.shape
    m_out = m + 1 if opens and merged < 0 else m
    out = np.full((C, Dk, Dv), np.nan)
    writes = np.zeros((C, Dk, Dv), int)
    y = np.zeros(Dv)
    kcols = K_LANES * vec
    total = C * Dk
    for bx in range((Dv + kcols - 1) // kcols):
        ypart = np.zeros((K_ROWS, kcols))
        for tid in range(K_THREADS):
            cl, rg = tid % K_LANES, tid // K_LANES
            e = bx * kcols + cl * vec
            if e >= Dv:
                continue
            yp = np.zeros(vec)
            ci, cd = rg // Dk, rg % Dk
            f0 = rg
            while f0 < total:
                iu, du = [], []
                for _ in range(units):
                    iu.append(ci)
                    du.append(cd)
                    cd += K_ROWS
                    while cd >= Dk:
                        cd -= Dk
                        ci += 1
                for i, d in zip(iu, du):
                    if i >= C:
                        continue
                    if i >= m_out:
                        x = np.zeros(vec)
                    else:
                        s0, s1, tok = decode_src(i, m, opens, merged)
                        x = np.zeros(vec)
                        if s0 >= 0:
                            x = a * (S_in[s0, d, e:e + vec] + (S_in[s1, d, e:e + vec] if s1 >= 0 else 0))
                        x = x + (k[d] if tok else 0.0) * v[e:e + vec]
                        yp += lam[m_out - 1 - i] * q[d] * x
                    out[i, d, e:e + vec] = x
                    writes[i, d, e:e + vec] += 1
                f0 += K_ROWS * units
            ypart[rg, cl * vec:cl * vec + vec] = yp
        for c in range(kcols):
            if bx * kcols + c < Dv:
                y[bx * kcols + c] = ypart[:, c].sum()
    return out, y, writes


def direct(S_in, m, opens, merged, a, q, k, v, lam):
    """The step on whole arrays: entry list after the merge / append, the token added, the readout."""
    C, Dk, Dv = S_in.shape
    ents = [a * S_in[i] for i in range(m)]
    if not opens:
        ents[-1] = ents[-1] + np.outer(k, v)
    else:
        if merged >= 0:
            ents[merged:merged + 2] = [ents[merged] + ents[merged + 1]]
        ents.append(np.outer(k, v))
    out = np.zeros((C, Dk, Dv))
    for i, s in enumerate(ents):
        out[i] = s
    y = sum(lam[len(ents) - 1 - i] * (q @ s) for i, s in enumerate(ents))
    return out, y


@pytest.mark.parametrize("C,Dk,Dv,vec", [(16, 64, 64, 4), (3, 8, 8, 4), (5, 13, 7, 1), (2, 40, 36, 4),
                                         (4, 5, 16, 2), (1, 33, 1, 1), (7, 64, 12, 4)])
def test_decode_v2_state_pass_covers_every_element_once(C, Dk, Dv, vec):
    rng = np.random.default_rng(C * 1000 + Dk * 10 + Dv)
    S_in = rng.standard_normal((C, Dk, Dv))
    q, k, v, lam = rng.standard_normal(Dk), rng.standard_normal(Dk), rng.standard_normal(Dv), rng.random(C)
    cases = [(0, True, -1)]  # empty cache: the token opens entry 0
    for m in range(1, C + 1):
        cases.append((m, False, -1))  # joins the open state
        if m < C:
            cases.append((m, True, -1))  # opens, no merge
        elif C >= 2:
            cases += [(m, True, j) for j in range(C - 1)]  # full cache: every merge pair
    if C * Dk * Dv > 4096:  # the large case: a few steps of each kind (the emulation is slow)
        cases = cases[:3] + [c for c in cases if c[0] == C][:2] + cases[-1:]
    units = 8 if vec > 1 else 4  # the kernel's kU
    for m, opens, merged in cases:
        S = S_in.copy()
        S[m:] = 0
        out, y, writes = emulate_states(S, m, opens, merged, 0.9, q, k, v, lam, vec, units)
        assert (writes == 1).all(), (m, opens, merged)
        want_out, want_y = direct(S, m, opens, merged, 0.9, q, k, v, lam)
        np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(y, want_y, rtol=1e-10, atol=1e-10)
