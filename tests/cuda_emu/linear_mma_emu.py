"""Host emulation of cuda/linear_mma.cuh (tensor-core causal linear attention) in NumPy: the chunk / prefix
index math (chunks of C from key 0, allowed keys per chunk under key_lengths, the exclusive prefix with
chunks without keys skipped, state in / out, GQA) and the rounding of every mma operand (phi(K) as 16-bit
parts in the increments, the state and phi(Q) as bfloat16 hi / lo parts in the inter-chunk product, the
16-bit scores with the power-of-two row scaling), checked against a float64 quadratic-form oracle with the
tests' tolerance rule (tests/conftest.py assert_close: err <= 2 * naive float32 error + atol). Products are
summed in float64 and rounded to float32 per mma result (the tensor cores' float32 accumulation is close
to that). Needs NumPy and ml_dtypes; run: python tests/cuda_emu/linear_mma_emu.py"""

import sys

import ml_dtypes
import numpy as np

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
ATOL = {F16: 2e-3, BF16: 1.6e-2, np.dtype(np.float32): 2e-6}


def phi(x, m):
    if m == "elu1":
        return np.where(x > 0, x + 1, np.exp(np.minimum(x, 0))).astype(x.dtype)
    if m == "relu":
        return np.maximum(x, 0).astype(x.dtype)
    return x


def rnd(x, dt):
    return x.astype(dt).astype(np.float32)


def parts(x, dt, n):
    out = []
    for _ in range(n):
        h = rnd(x, dt)
        out.append(h)
        x = (x - h).astype(np.float32)
    return out


def mm(a, b):  # one mma result: exact products, float32 result
    return (a.astype(np.float64) @ b.astype(np.float64)).astype(np.float32)


SCALED = [0]  # rows whose scores were scaled down


def emulate(q, k, v, m, C, lens, s_in, z_in, normalize, eps):
    dt = q.dtype
    B, Hq, S, D = q.shape
    Hkv, Dv = k.shape[1], v.shape[3]
    G = Hq // Hkv
    nch = (S + C - 1) // C
    NS = 2 if dt == F16 else 3
    out = np.zeros((B, Hq, S, Dv), np.float32)
    s_out = np.zeros((B, Hkv, D, Dv), np.float32)
    z_out = np.zeros((B, Hkv, D), np.float32)
    for b in range(B):
        L = min(max(int(lens[b]), 0), S) if lens is not None else S
        for hk in range(Hkv):
            # inc_kernel
            I = []
            for c in range(nch):
                j0 = c * C
                kn = max(0, min(S - j0, C, L - j0))
                pk = np.zeros((C, D), np.float32)
                va = np.zeros((C, Dv + 8), np.float32)
                pk[:kn] = phi(k[b, hk, j0:j0 + kn].astype(np.float32), m)
                va[:kn, :Dv] = v[b, hk, j0:j0 + kn].astype(np.float32)
                va[:kn, Dv] = 1
                acc = np.zeros((D, Dv + 8), np.float32)
                for p in parts(pk, dt, NS):
                    acc = (acc + mm(p.T, va)).astype(np.float32)
                I.append(acc)
            # scan_kernel
            s = np.zeros((D, Dv + 8), np.float32)
            if s_in is not None:
                s[:, :Dv] = s_in[b, hk]
                s[:, Dv] = z_in[b, hk]
            P = []
            for c in range(nch):
                P.append(s.copy())
                if c * C < L:
                    s = (s + I[c]).astype(np.float32)
            s_out[b, hk], z_out[b, hk] = s[:, :Dv], s[:, Dv]
            # out_kernel
            for g in range(G):
                h = hk * G + g
                for c in range(nch):
                    j0 = c * C
                    tn = min(C, S - j0)
                    kn = max(0, min(S - j0, C, L - j0))
                    fq = np.zeros((C, D), np.float32)
                    fq[:tn] = phi(q[b, h, j0:j0 + tn].astype(np.float32), m)
                    fk = np.zeros((C, D), np.float32)
                    fk[:kn] = phi(k[b, hk, j0:j0 + kn].astype(np.float32), m)
                    va = np.zeros((C, Dv + 8), np.float32)
                    va[:kn, :Dv] = v[b, hk, j0:j0 + kn].astype(np.float32)
                    va[:kn, Dv] = 1
                    sc = mm(rnd(fq, dt), rnd(fk, dt).T)
                    sc = np.where(np.tril(np.ones((C, C), bool)), sc, 0).astype(np.float32)
                    mx = np.abs(sc).max(1)
                    e = np.where(mx > 32768, np.frexp(mx)[1] - 15, 0)
                    SCALED[0] += int((e > 0).sum())
                    dn = np.ldexp(np.float32(1), -e).astype(np.float32)[:, None]
                    qh, ql = parts(fq, BF16, 2)
                    ph, pl = parts(P[c], BF16, 2)
                    o = mm(qh, ph)
                    o = (o + mm(qh, pl)).astype(np.float32)
                    o = (o + mm(ql, ph)).astype(np.float32)
                    o = (o * dn + mm(rnd(sc * dn, dt), va)).astype(np.float32) / dn
                    den = o[:, Dv:Dv + 1]
                    num = o[:, :Dv]
                    if normalize:
                        d = (den + np.float32(eps)).astype(np.float32)
                        r = np.where(d == 0, 0, num / np.where(d == 0, 1, d))
                    else:
                        r = num
                    out[b, h, j0:j0 + tn] = r[:tn]
    return out.astype(dt), s_out, z_out


def oracle(q, k, v, m, lens, s_in, z_in, normalize, eps, dtype):
    B, Hq, S, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    fq = phi(q.astype(dtype), m)
    fk = phi(k.astype(dtype), m)
    vv = v.astype(dtype)
    L = np.array(lens if lens is not None else [S] * B)
    keys = np.arange(S)[None, :] < L[:, None]  # [B, S]
    fk = np.where(keys[:, None, :, None], fk, 0)
    vv = np.where(keys[:, None, :, None], vv, 0)
    fkr, vr = np.repeat(fk, G, 1), np.repeat(vv, G, 1)
    a = np.tril(fq @ fkr.swapaxes(-1, -2))
    num, den = a @ vr, a.sum(-1)
    if s_in is not None:
        num = num + fq @ np.repeat(s_in.astype(dtype), G, 1)
        den = den + (fq @ np.repeat(z_in.astype(dtype), G, 1)[..., None])[..., 0]
    if normalize:
        d = den + dtype(eps)
        out = np.where(d[..., None] == 0, 0, num / np.where(d == 0, 1, d)[..., None])
    else:
        out = num
    s_end = (s_in.astype(dtype) if s_in is not None else 0) + fk.swapaxes(-1, -2) @ vv
    z_end = (z_in.astype(dtype) if z_in is not None else 0) + fk.sum(-2)
    return out, s_end, z_end


def check(out, ref, naive, dtype, what, scale=1.0):
    err = np.abs(out.astype(np.float64) - ref).max()
    base = np.abs(naive.astype(dtype).astype(np.float64) - ref).max()
    tol = 2 * base + ATOL[np.dtype(dtype)] * scale
    ok = err <= tol
    print(f"    {what}: err {err:.3g} tol {tol:.3g} (naive {base:.3g}) {'ok' if ok else 'FAIL'}")
    return ok


def case(rng, dt, B, Hq, Hkv, S, D, Dv, m, C, lens=None, state=False, normalize=True, scale=0.5):
    q = (rng.standard_normal((B, Hq, S, D)) * scale).astype(dt)
    k = (rng.standard_normal((B, Hkv, S, D)) * scale).astype(dt)
    v = (rng.standard_normal((B, Hkv, S, Dv)) * scale).astype(dt)
    s_in = np.abs(rng.standard_normal((B, Hkv, D, Dv))).astype(np.float32) if state else None
    z_in = np.abs(rng.standard_normal((B, Hkv, D))).astype(np.float32) if state else None
    print(f"  {dt} B{B} Hq{Hq} Hkv{Hkv} S{S} D{D} Dv{Dv} {m} C{C} lens={lens} state={state} norm={normalize}")
    o, so, zo = emulate(q, k, v, m, C, lens, s_in, z_in, normalize, 1e-6)
    r, rs, rz = oracle(q, k, v, m, lens, s_in, z_in, normalize, 1e-6, np.float64)
    n, ns, nz = oracle(q, k, v, m, lens, s_in, z_in, normalize, 1e-6, np.float32)
    mag = lambda x: max(1.0, float(np.abs(x).max()))
    ok = check(o, r, n, dt, "out", 1.0 if normalize else mag(r))
    ok &= check(so, rs, ns, np.float32, "state S", mag(rs))
    ok &= check(zo, rz, nz, np.float32, "state z", mag(rz))
    return ok


def main():
    rng = np.random.default_rng(1)
    ok = True
    for dt in (F16, BF16):
        for m in ("elu1", "relu", "identity"):
            ok &= case(rng, dt, 2, 4, 2, 200, 64, 32, m, 64, normalize=(m != "identity"))
        ok &= case(rng, dt, 1, 2, 2, 1000, 32, 64, "elu1", 64, state=True)
        ok &= case(rng, dt, 3, 2, 1, 65, 128, 128, "relu", 128, lens=[65, 0, 17])
        ok &= case(rng, dt, 1, 1, 1, 63, 32, 32, "elu1", 64, lens=[40], state=True)
        ok &= case(rng, dt, 1, 1, 1, 1, 64, 64, "elu1", 64, state=True)
        # large scores and states: the power-of-two scaling (float16 would overflow without it)
        ok &= case(rng, dt, 1, 1, 1, 130, 64, 64, "relu", 64, scale=60.0)
    print(f"rows with scaled scores: {SCALED[0]}")
    print("all ok" if ok else "FAILURES")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
