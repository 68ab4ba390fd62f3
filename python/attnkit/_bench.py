"""Benchmark plumbing shared by ``bench/*.py`` and ``attnkit bench``: timing (warm-up + median),
the NumPy / PyTorch anchors, environment facts and JSON output. Not part of the stable API."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from . import _core


def timeit(fn, reps: int = 5, warmup: int = 1, min_time: float = 0.0) -> float:
    """Median wall time of fn() in seconds: `warmup` discarded runs, then at least `reps` runs and at
    least `min_time` seconds (at most 50 runs)."""
    for _ in range(warmup):
        fn()
    times = []
    t_start = time.perf_counter()
    while len(times) < reps or (time.perf_counter() - t_start) < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 50:
            break
    return statistics.median(times)


def timeit_many(fns: dict, reps: int = 5, warmup: int = 1, min_time: float = 0.0) -> dict:
    """Median wall times of several contenders measured round-robin (each round runs every contender
    once), so machine noise lands on all of them alike. Returns {name: seconds}."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times = {k: [] for k in fns}
    t_start = time.perf_counter()
    rounds = 0
    while rounds < reps or (time.perf_counter() - t_start) < min_time:
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
        rounds += 1
        if rounds >= 50:
            break
    return {k: statistics.median(v) for k, v in times.items()}


def torch_or_none():
    try:
        import torch
    except ImportError:
        return None
    return torch


def environment(threads: int) -> dict:
    env = {"attnkit": _core.version(), "cpu_isa": _core.cpu_isa(), "cuda_built": _core.built_with_cuda(),
           "python": sys.version.split()[0], "numpy": np.__version__, "machine": platform.machine(),
           "cpus": os.cpu_count(), "threads": threads, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    torch = torch_or_none()
    if torch is not None:
        env["torch"] = torch.__version__
    return env


def write_json(directory, name: str, payload: dict) -> Path:
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------- exact attention
def numpy_plain(q, k, v, causal):
    """Plain NumPy, the textbook form users write: softmax(q k^T / sqrt(D)) v over the whole batch."""
    s = (q @ k.swapaxes(-1, -2)) / np.sqrt(q.shape[-1])
    if causal:
        S, Sk = s.shape[-2:]
        s = np.where(np.tril(np.ones((S, Sk), bool), Sk - S), s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return w @ v


def numpy_loop(q, k, v, causal):
    """Careful NumPy: one head at a time, in-place softmax (a stronger anchor than the plain form)."""
    out = np.empty(q.shape[:-1] + (v.shape[-1],), q.dtype)
    S, Sk = q.shape[2], k.shape[2]
    scale = np.float32(1.0 / np.sqrt(q.shape[-1]))
    tri = np.triu(np.ones((S, Sk), bool), 1 + Sk - S) if causal else None
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            s = (q[b, h] @ k[b, h].T) * scale
            if causal:
                s[tri] = -np.inf
            s -= s.max(-1, keepdims=True)
            np.exp(s, out=s)
            s /= s.sum(-1, keepdims=True)
            out[b, h] = s @ v[b, h]
    return out


def causal_pairs(S: int, causal: bool) -> int:
    return S * (S + 1) // 2 if causal else S * S


def exact_rows(sizes, reps=5, H=8, D=64, with_numpy=True, with_torch=True, report=progress, min_time=0.3):
    """attnkit.attention vs torch SDPA vs NumPy (plain and loop), float32, B=1; one dict per row."""
    from . import attention

    threads = _core.get_num_threads()
    torch = torch_or_none() if with_torch else None
    if torch is not None:
        torch.set_num_threads(threads)
    rows = []
    rng = np.random.default_rng(0)
    for S in sizes:
        q, k, v = (rng.standard_normal((1, H, S, D)).astype(np.float32) for _ in range(3))
        for causal in (False, True):
            flops = 4.0 * D * H * causal_pairs(S, causal)
            row = {"S": S, "causal": causal}
            fns = {"attnkit": lambda: attention(q, k, v, causal=causal)}
            if torch is not None:
                tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
                f = torch.nn.functional.scaled_dot_product_attention
                fns["torch"] = lambda: f(tq, tk, tv, is_causal=causal)
            for key, t in timeit_many(fns, reps, min_time=min_time).items():
                row[f"{key}_s"] = t
            if with_numpy:
                row["numpy_s"] = timeit(lambda: numpy_plain(q, k, v, causal), max(1, reps // 2))
                row["numpy_loop_s"] = timeit(lambda: numpy_loop(q, k, v, causal), max(1, reps // 2))
            for key in ("attnkit", "torch", "numpy", "numpy_loop"):
                if f"{key}_s" in row:
                    row[f"{key}_gflops"] = flops / row[f"{key}_s"] / 1e9
            for key in ("torch", "numpy", "numpy_loop"):
                if f"{key}_s" in row:
                    row[f"speedup_vs_{key}"] = row[f"{key}_s"] / row["attnkit_s"]
            rows.append(row)
            if report:
                report(format_exact_row(row))
    return rows


def format_exact_row(r) -> str:
    s = f"S={r['S']:6d} causal={str(r['causal']):5s}  attnkit {r['attnkit_s'] * 1e3:8.2f} ms {r['attnkit_gflops']:6.1f} GF/s"
    if "torch_s" in r:
        s += f" | torch {r['torch_s'] * 1e3:8.2f} ms ({r['speedup_vs_torch']:.2f}x)"
    if "numpy_s" in r:
        s += f" | numpy {r['numpy_s'] * 1e3:8.2f} ms ({r['speedup_vs_numpy']:.1f}x)"
        s += f" | numpy-loop {r['numpy_loop_s'] * 1e3:8.2f} ms ({r['speedup_vs_numpy_loop']:.1f}x)"
    return s


# --------------------------------------------------------------------------------- linear-time attention
# name: (label, the exact-attention contender it is compared with)
LINEAR_CONTENDERS = {
    "linear": ("linear attention (elu+1)", "exact"),
    "linear_causal": ("linear attention (elu+1), causal", "exact_causal"),
    "performer": ("Performer", "exact"),
    "performer_causal": ("Performer, causal", "exact_causal"),
    "linformer": ("Linformer", "exact"),
}


def linear_inputs(S, H, D, seed=0):
    """float32 q, k, v [1, H, S, D] with standard normal entries (logits q.k/sqrt(D) ~ N(0, 1))."""
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal((1, H, S, D)).astype(np.float32) for _ in range(3))


def linear_rows(sizes, reps=3, H=8, D=64, m=256, P=256, report=progress, min_time=0.0, contenders=None):
    """attnkit's linear-time mechanisms side by side with attnkit's exact attention (causal and not) in one
    round-robin per size, float32, B=1. One dict per size: seconds per contender and speedups vs the
    matching exact attention."""
    from . import attention, linear_attention, linformer_attention, linformer_projection, performer_attention
    from . import random_features

    names = list(contenders or LINEAR_CONTENDERS)
    W = random_features(m, D, seed=0)
    rows = []
    for S in sizes:
        q, k, v = linear_inputs(S, H, D)
        E = linformer_projection(P, S, seed=0)
        every = {
            "exact": lambda: attention(q, k, v),
            "exact_causal": lambda: attention(q, k, v, causal=True),
            "linear": lambda: linear_attention(q, k, v, causal=False),
            "linear_causal": lambda: linear_attention(q, k, v, causal=True),
            "performer": lambda: performer_attention(q, k, v, W),
            "performer_causal": lambda: performer_attention(q, k, v, W, causal=True),
            "linformer": lambda: linformer_attention(q, k, v, E),
        }
        wanted = set(names) | {LINEAR_CONTENDERS[n][1] for n in names}
        t = timeit_many({key: f for key, f in every.items() if key in wanted}, reps, min_time=min_time)
        row = {"S": S}
        row.update({f"{key}_s": x for key, x in t.items()})
        for n in names:
            row[f"{n}_speedup_vs_exact"] = t[LINEAR_CONTENDERS[n][1]] / t[n]
        rows.append(row)
        if report:
            report(format_linear_row(row, names))
    return rows


def format_linear_row(r, names=None) -> str:
    names = names or [n for n in LINEAR_CONTENDERS if f"{n}_s" in r]
    s = f"S={r['S']:6d}  exact {r['exact_s'] * 1e3:8.1f} ms" if "exact_s" in r else f"S={r['S']:6d}"
    if "exact_causal_s" in r:
        s += f" (causal {r['exact_causal_s'] * 1e3:8.1f} ms)"
    for n in names:
        s += f" | {n} {r[f'{n}_s'] * 1e3:7.1f} ms ({r[f'{n}_speedup_vs_exact']:5.1f}x)"
    return s


def linear_scaling(sizes, reps=5, H=8, D=64, m=256, P=256):
    """Seconds of the linear-time contenders at every size, all (contender, size) pairs in ONE round-robin,
    so that a change of machine load between sizes cannot pass for a change of scaling:
    {name: {S: seconds}}."""
    from . import linear_attention, linformer_attention, linformer_projection, performer_attention
    from . import random_features

    W = random_features(m, D, seed=0)
    fns = {}
    for S in sizes:
        q, k, v = linear_inputs(S, H, D)
        E = linformer_projection(P, S, seed=0)
        fns[("linear", S)] = lambda q=q, k=k, v=v: linear_attention(q, k, v, causal=False)
        fns[("linear_causal", S)] = lambda q=q, k=k, v=v: linear_attention(q, k, v, causal=True)
        fns[("performer", S)] = lambda q=q, k=k, v=v: performer_attention(q, k, v, W)
        fns[("performer_causal", S)] = lambda q=q, k=k, v=v: performer_attention(q, k, v, W, causal=True)
        fns[("linformer", S)] = lambda q=q, k=k, v=v, E=E: linformer_attention(q, k, v, E)
    t = timeit_many(fns, reps)
    return {n: {S: t[(n, S)] for S in sizes} for n in LINEAR_CONTENDERS}


def scaling_ratios(seconds):
    """time(2S) / time(S) from {name: {S: seconds}}: {name: {2S: ratio}}."""
    return {n: {S: by_s[S] / by_s[S // 2] for S in sorted(by_s) if S % 2 == 0 and S // 2 in by_s}
            for n, by_s in seconds.items()}


def crossover(rows, name):
    """Sequence length at which `name` becomes faster than its exact-attention counterpart: log-log
    interpolation of the speedup between the two measured sizes around 1. None if it never crosses in
    the measured range; the smallest size if it is faster everywhere (reported as '<= S')."""
    pts = sorted((r["S"], r[f"{name}_speedup_vs_exact"]) for r in rows if f"{name}_speedup_vs_exact" in r)
    if not pts:
        return None
    if pts[0][1] >= 1:
        return {"S": pts[0][0], "bound": "at or below"}
    for (s1, x1), (s2, x2) in zip(pts, pts[1:]):
        if x1 < 1 <= x2:
            f = np.log(x1) / (np.log(x1) - np.log(x2))
            return {"S": float(np.exp(np.log(s1) + f * (np.log(s2) - np.log(s1)))), "bound": "interpolated"}
    return {"S": pts[-1][0], "bound": "above"}


def approximation_errors(S=1024, H=8, D=64, ms=(64, 128, 256, 512), Ps=(64, 128, 256, 512), seeds=3,
                         row_norm=None):
    """Relative error ||approx - exact||_F / ||exact||_F of Performer (softmax kernel, orthogonal chi
    features) and Linformer (random N(0, 1/P) projections) against exact attention, averaged over `seeds`
    feature / projection seeds; Performer bidirectional and causal. Inputs: the benchmark's standard normal
    q, k, v, or (row_norm = r) with every row of q and k rescaled to |x'| = r, i.e. |x| = r D^(1/4), which
    controls the variance of Performer's estimator (it grows like exp(|q'|^2 + |k'|^2))."""
    from . import attention, linformer_attention, linformer_projection, performer_attention, random_features

    q, k, v = (x.astype(np.float64) for x in linear_inputs(S, H, D))
    if row_norm is not None:
        q, k = (x * (row_norm * D**0.25 / np.linalg.norm(x, axis=-1, keepdims=True)) for x in (q, k))
    exact = {False: attention(q, k, v), True: attention(q, k, v, causal=True)}

    def rel(a, b):
        return float(np.linalg.norm(a - b) / np.linalg.norm(b))

    out = {"S": S, "H": H, "D": D, "seeds": seeds, "inputs": "standard normal q, k, v" if row_norm is None else
           f"standard normal v; q, k rows rescaled to |x'| = sqrt(scale) |x| = {row_norm}",
           "performer": [], "linformer": []}
    for m in ms:
        row = {"m": m}
        for causal in (False, True):
            errs = [rel(performer_attention(q, k, v, random_features(m, D, seed=s), causal=causal), exact[causal])
                    for s in range(seeds)]
            row["causal_rel_err" if causal else "rel_err"] = float(np.mean(errs))
        out["performer"].append(row)
    for P in Ps:
        errs = [rel(linformer_attention(q, k, v, linformer_projection(P, S, seed=s)), exact[False])
                for s in range(seeds)]
        out["linformer"].append({"P": P, "rel_err": float(np.mean(errs))})
    for key, size in (("performer", "m"), ("linformer", "P")):
        xs = [r[size] for r in out[key]]
        out[f"{key}_loglog_slope"] = float(np.polyfit(np.log(xs), np.log([r["rel_err"] for r in out[key]]), 1)[0])
    return out
