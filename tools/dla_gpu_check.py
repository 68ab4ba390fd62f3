"""DLA on CuPy arrays against the CPU backend (and the float64 oracle for float64 inputs): every shape,
dtype, score mode, decay, chunk size, streaming and decode, strides, empty sizes and determinism, then
prefill / decode timings. Needs a GPU, CuPy and a CUDA build with the DLA kernel enabled
(cuda/runtime.cu kKernels). `python tools/dla_gpu_check.py` (all) or `... small` (a few cases, for
compute-sanitizer)."""
import sys
import time

import numpy as np
import cupy as cp

import attnkit
from attnkit import reference as ref
from attnkit._tuning import tuning
from attnkit._dla import DLACache

F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
fails = []
n_ok = 0


def piecewise(rng, B, H, T, Dk, Dv, dtype, lo=2, hi=10, noise=0.05):
    k = np.empty((B, H, T, Dk))
    v = np.empty((B, H, T, Dv))
    for b in range(B):
        for h in range(H):
            t = 0
            while t < T:
                e = min(T, t + int(rng.integers(lo, hi + 1)))
                kd = rng.standard_normal(Dk)
                vd = rng.standard_normal(Dv)
                k[b, h, t:e] = kd * np.sqrt(Dk) / np.linalg.norm(kd) + noise * rng.standard_normal((e - t, Dk))
                v[b, h, t:e] = vd * np.sqrt(Dv) / np.linalg.norm(vd) + noise * rng.standard_normal((e - t, Dv))
                t = e
    return (k / np.sqrt(Dk)).astype(dtype), v.astype(dtype)


def problem(rng, B, H, T, Dk, Dv, C, dtype, decay):
    k, v = piecewise(rng, B, H, T, Dk, Dv, dtype)
    q = (rng.standard_normal((B, H, T, Dk)) / np.sqrt(Dk)).astype(dtype)
    lam = (rng.random((B, H, T, C)) * 2 / C).astype(dtype)
    g = None if decay is None else (-rng.random((B, H, T)) * 0.5 if decay == "rand" else np.full((B, H, T), decay))
    return q, k, v, lam, g


def to_np_cache(c):
    if c is None:
        return None
    return DLACache(*(cp.asnumpy(getattr(c, f)) if isinstance(getattr(c, f), cp.ndarray) else getattr(c, f)
                      for f in ("states", "counts", "info", "starts", "size")), c.position)


def to_cp_cache(c):
    if c is None:
        return None
    return DLACache(*(cp.asarray(getattr(c, f)) for f in ("states", "counts", "info", "starts", "size")), c.position)


def call(xs, gpu, cache, chunk, **kw):
    q, k, v, lam, g = xs
    conv = cp.asarray if gpu else (lambda a: a)
    with tuning(dla_chunk=chunk):
        y, c, aux = attnkit.dynamic_linear_attention(
            conv(q), conv(k), conv(v), conv(lam), log_decay=None if g is None else conv(g),
            cache=(to_cp_cache(cache) if gpu else cache), return_aux=True, **kw)
    if gpu:
        cp.cuda.Device().synchronize()
        y = cp.asnumpy(y)
        c = to_np_cache(c)
        aux = tuple(cp.asnumpy(a) for a in aux)
    return y, c, aux


def rel(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    s = max(1.0, float(np.abs(b).max(initial=0)))
    return float(np.abs(a - b).max(initial=0)) / s


TOL = {F16: 2e-2, F32: 2e-5, F64: 1e-11}


def compare(name, gy, gc, ga, cy, cc, ca, dtype):
    global n_ok
    msgs = []
    for what, a, b in (("boundaries", ga[1], ca[1]), ("merged", ga[2], ca[2]), ("counts", gc.counts, cc.counts),
                       ("starts", gc.starts, cc.starts), ("size", gc.size, cc.size)):
        if not np.array_equal(a, b):
            msgs.append(f"{what} differ at {int(np.sum(np.asarray(a) != np.asarray(b)))} places")
    if gc.position != cc.position:
        msgs.append("position")
    tol = TOL[dtype]
    for what, a, b in (("y", gy, cy), ("states", gc.states, cc.states), ("info", gc.info, cc.info),
                       ("scores", ga[0], ca[0])):
        if not np.all(np.isfinite(np.asarray(a, np.float64)) == np.isfinite(np.asarray(b, np.float64))):
            msgs.append(f"{what}: finiteness differs")
            continue
        e = rel(a, b)
        if e > tol:
            msgs.append(f"{what}: rel err {e:.3g} > {tol}")
    if msgs:
        fails.append(name + ": " + "; ".join(msgs))
        print("FAIL", name, msgs, flush=True)
    else:
        n_ok += 1


def case(name, xs, dtype, cache=None, chunk=0, oracle=False, **kw):
    gy, gc, ga = call(xs, True, cache, chunk, **kw)
    cy, cc, ca = call(xs, False, cache, chunk, **kw)
    compare(name, gy, gc, ga, cy, cc, ca, dtype)
    if oracle:
        ry, rc, ra = ref.dynamic_linear_attention(*xs[:4], log_decay=xs[4], cache=cache, return_aux=True, **kw)
        compare(name + "/oracle", gy, gc, ga, ry, rc, ra, dtype)
    return (gy, gc, ga), (cy, cc, ca)


CONFIGS = [("token_vs_state", None, 0.6), ("token_vs_state", "rand", 0.6), ("state_drift", None, 0.6),
           ("state_drift", -1.0, 0.3)]
SHAPES = [(1, 8, 16, 3), (7, 8, 16, 3), (64, 16, 33, 4), (150, 33, 40, 5), (100, 64, 64, 1), (40, 8, 8, 64),
          (70, 1, 1, 2)]


def main():
    rng = np.random.default_rng(1234)
    t_start = time.time()
    for dtype in (F32, F64, F16):
        for score, decay, tau in CONFIGS:
            for (T, Dk, Dv, C) in SHAPES:
                for chunk in (0, 1, 16):
                    xs = problem(rng, 2, 3, T, Dk, Dv, C, dtype, decay)
                    name = f"{dtype}/{score}/{decay}/{tau}/T{T}/Dk{Dk}/Dv{Dv}/C{C}/L{chunk}"
                    case(name, xs, dtype, chunk=chunk, capacity=C, tau=tau, score=score,
                         oracle=(dtype == F64 and T <= 64))
                    # streaming: continue from the CPU's cache with more tokens, then decode steps
                    _, (cy, cc, ca) = case(name + "/first", xs, dtype, chunk=chunk, capacity=C, tau=tau, score=score)
                    xs2 = problem(rng, 2, 3, 37, Dk, Dv, C, dtype, decay)
                    _, (cy2, cc2, _) = case(name + "/second", xs2, dtype, cache=cc, chunk=chunk, capacity=C, tau=tau,
                                            score=score)
                    cache = cc2
                    for s in range(3):
                        xs3 = problem(rng, 2, 3, 1, Dk, Dv, C, dtype, decay)
                        _, (_, cache, _) = case(name + f"/decode{s}", xs3, dtype, cache=cache, chunk=chunk,
                                                capacity=C, tau=tau, score=score)
        print(f"{dtype} done, {n_ok} ok, {len(fails)} fails, {time.time() - t_start:.0f}s", flush=True)
    # tau extremes, full caches merging at every step (decode with merges), random (non-piecewise) data in f64
    for tau in (0.0, -1.0, float("inf")):
        for dtype in (F32, F64):
            for chunk in (0, 5):
                xs = problem(rng, 2, 2, 50, 12, 10, 4, dtype, "rand")
                _, (_, cc, _) = case(f"tau{tau}/{dtype}/L{chunk}", xs, dtype, chunk=chunk, capacity=4, tau=tau,
                                     oracle=dtype == F64)
                cache = cc
                for s in range(6):
                    xs3 = problem(rng, 2, 2, 1, 12, 10, 4, dtype, "rand")
                    _, (_, cache, _) = case(f"tau{tau}/{dtype}/L{chunk}/dec{s}", xs3, dtype, cache=cache,
                                            chunk=chunk, capacity=4, tau=tau, oracle=dtype == F64)
    for chunk in (0, 1, 7):
        q, k, v, lam = (rng.standard_normal(s) for s in ((2, 2, 60, 9), (2, 2, 60, 9), (2, 2, 60, 11), (2, 2, 60, 3)))
        case(f"random-f64/L{chunk}", (q, k, v, lam, None), F64, chunk=chunk, capacity=3, tau=0.9, oracle=True)
    # strides: non-contiguous inputs (every second element, a transposed head/time layout), 3-D inputs
    for dtype in (F32, F64):
        q, k, v, lam, g = problem(rng, 2, 3, 45, 20, 24, 4, dtype, "rand")
        big = lambda a: np.repeat(a, 2, axis=-1)[..., ::2]
        tr = lambda a: np.ascontiguousarray(np.swapaxes(a, 1, 2)).swapaxes(1, 2)
        xs = (big(q), tr(k), big(v), tr(lam), g[..., ::1])
        for chunk in (0, 16):
            case(f"strided/{dtype}/L{chunk}", xs, dtype, chunk=chunk, capacity=4)
            case(f"3d/{dtype}/L{chunk}", tuple(a[0] for a in (q, k, v, lam, g)), dtype, chunk=chunk, capacity=4)
        # decode with a strided cache: states with a transposed (Dk, Dv) layout
        _, (_, cc, _) = case(f"pre-dec/{dtype}", (q, k, v, lam, g), dtype, capacity=4)
        st = np.ascontiguousarray(np.swapaxes(cc.states, 3, 4)).swapaxes(3, 4)
        cc2 = DLACache(st, cc.counts, cc.info, cc.starts, cc.size, cc.position)
        xs1 = problem(rng, 2, 3, 1, 20, 24, 4, dtype, "rand")
        case(f"dec-strided-cache/{dtype}", xs1, dtype, cache=cc2, capacity=4)
    # empty sizes
    for (B, H, T) in ((0, 2, 5), (2, 0, 5), (2, 2, 0), (1, 1, 0)):
        xs = problem(rng, B, H, T, 8, 8, 3, F32, None)
        case(f"empty/{B}/{H}/{T}", xs, F32, capacity=3)
    xs = problem(rng, 2, 2, 20, 8, 8, 3, F32, None)
    _, (_, cc, _) = case("pre-empty", xs, F32, capacity=3)
    case("empty-T-with-cache", problem(rng, 2, 2, 0, 8, 8, 3, F32, None), F32, cache=cc, capacity=3)
    # determinism
    xs = problem(rng, 3, 4, 300, 32, 32, 6, F32, "rand")
    a = call(xs, True, None, 0, capacity=6)
    b = call(xs, True, None, 0, capacity=6)
    if not (np.array_equal(a[0], b[0]) and np.array_equal(a[1].states, b[1].states)):
        fails.append("determinism")
    print(f"correctness: {n_ok} ok, {len(fails)} fails, {time.time() - t_start:.0f}s", flush=True)
    for f in fails[:40]:
        print("  ", f)

    # timing (informative)
    for (B, H, T, D, C) in ((4, 16, 4096, 64, 16), (4, 16, 4096, 128, 16)):
        xs = [cp.asarray(x) for x in problem(rng, B, H, T, D, D, C, F32, None)[:4]]
        for _ in range(2):
            y, c = attnkit.dynamic_linear_attention(*xs, capacity=C)
        cp.cuda.Device().synchronize()
        t0 = time.time()
        y, c = attnkit.dynamic_linear_attention(*xs, capacity=C)
        cp.cuda.Device().synchronize()
        dt = time.time() - t0
        x1 = [x[:, :, :1] for x in xs]
        for _ in range(3):
            attnkit.dynamic_linear_attention(*x1, capacity=C, cache=c)
        cp.cuda.Device().synchronize()
        t0 = time.time()
        for _ in range(20):
            attnkit.dynamic_linear_attention(*x1, capacity=C, cache=c)
        cp.cuda.Device().synchronize()
        dd = (time.time() - t0) / 20
        print(f"prefill B{B} H{H} T{T} D{D} C{C}: {dt * 1e3:.1f} ms ({B * T / dt:.0f} tok/s); "
              f"decode step {dd * 1e3:.3f} ms", flush=True)
    return 1 if fails else 0


def small():
    rng = np.random.default_rng(5)
    for chunk in (0, 4):
        xs = problem(rng, 2, 2, 11, 8, 12, 3, F32, "rand")
        _, (_, cc, _) = case(f"small/L{chunk}", xs, F32, chunk=chunk, capacity=3, tau=0.0)
        case(f"small-dec/L{chunk}", problem(rng, 2, 2, 1, 8, 12, 3, F32, "rand"), F32, cache=cc, chunk=chunk,
             capacity=3, tau=0.0)
    print("small:", n_ok, "ok", fails)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(small() if sys.argv[1:] == ["small"] else main())
