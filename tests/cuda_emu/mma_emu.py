"""ldmatrix (x4, x2, .trans) and mma.m16n8k16 emulated lane by lane from the PTX ISA's fragment layouts
(float64, no rounding), for the fragment checks linear_mma_fragments.py and performer_mma2_fragments.py."""

import numpy as np


def ldsm(smem, addr, nmat, trans):
    """smem: 2D array [rows][cols]; addr(lane) -> (row, col) of the 8-element row that lane points at.
    Returns regs[lane][m] = (lo, hi) element pair."""
    rows = [[addr(8 * m + r) for r in range(8)] for m in range(nmat)]
    regs = [[None] * nmat for _ in range(32)]
    for t in range(32):
        for m in range(nmat):
            if not trans:
                r0, c0 = rows[m][t // 4]
                regs[t][m] = (smem[r0, c0 + 2 * (t % 4)], smem[r0, c0 + 2 * (t % 4) + 1])
            else:
                ra, ca = rows[m][2 * (t % 4)]
                rb, cb = rows[m][2 * (t % 4) + 1]
                regs[t][m] = (smem[ra, ca + t // 4], smem[rb, cb + t // 4])
    return regs


def mma(d, a, b0, b1):
    """d: [32][4] accumulators (C layout), a: [32][4] pairs, b0/b1: [32] pairs. D += A B."""
    A = np.zeros((16, 16))
    B = np.zeros((16, 8))
    for t in range(32):
        g, q = t // 4, t % 4
        for i in range(2):
            A[g, 2 * q + i] = a[t][0][i]
            A[g + 8, 2 * q + i] = a[t][1][i]
            A[g, 8 + 2 * q + i] = a[t][2][i]
            A[g + 8, 8 + 2 * q + i] = a[t][3][i]
            B[2 * q + i, g] = b0[t][i]
            B[8 + 2 * q + i, g] = b1[t][i]
    Cm = A @ B
    for t in range(32):
        g, q = t // 4, t % 4
        d[t][0] += Cm[g, 2 * q]
        d[t][1] += Cm[g, 2 * q + 1]
        d[t][2] += Cm[g + 8, 2 * q]
        d[t][3] += Cm[g + 8, 2 * q + 1]


def gather(d, nt_list, M=16):
    """Accumulators of n-tiles -> dense [16][8 * len]."""
    out = np.zeros((M, 8 * len(nt_list)))
    for idx, acc in enumerate(nt_list):
        for t in range(32):
            g, q = t // 4, t % 4
            out[g, idx * 8 + 2 * q] = acc[t][0]
            out[g, idx * 8 + 2 * q + 1] = acc[t][1]
            out[g + 8, idx * 8 + 2 * q] = acc[t][2]
            out[g + 8, idx * 8 + 2 * q + 1] = acc[t][3]
    return out
