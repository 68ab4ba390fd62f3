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
