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


# ------------------------------------------------------------------------------- sparse attention
def sparse_layouts(S: int, block: int = 64):
    """The benchmark's layouts: BigBird (band 1, 1 global, 2 random blocks per row) and Longformer
    (band 2, one global token)."""
    from . import layouts

    return {"bigbird": layouts.bigbird(S, block, seed=0, window_blocks=1, global_blocks=1, random_blocks=2),
            "longformer": layouts.longformer(S, block, 2, global_tokens=[0])}


def sparse_rows(sizes, reps=3, H=8, D=64, bucket=64, report=progress, min_time=0.3):
    """Block-sparse (BigBird, Longformer) and LSH attention vs dense attnkit attention, float32, B=1.

    For each layout: its density and time / (density * dense time) — the issue's bound is 1.3 plus a small
    constant. LSH uses num_buckets = S / bucket so the mean bucket size stays `bucket` as S grows; its
    hashing (q and k, O(S * D * num_buckets) by definition, so ~S^2 / bucket here) is also timed alone."""
    from . import attention, block_sparse_attention, lsh_attention, lsh_buckets

    rows = []
    rng = np.random.default_rng(0)
    for S in sizes:
        q, k, v = (rng.standard_normal((1, H, S, D)).astype(np.float32) for _ in range(3))
        fns = {"dense": lambda: attention(q, k, v)}
        lays = sparse_layouts(S)
        for name, L in lays.items():
            fns[name] = (lambda L=L: block_sparse_attention(q, k, v, L))
        nb = max(2, 2 * (S // bucket // 2))
        fns["lsh"] = lambda: lsh_attention(q, k, v, num_buckets=nb, num_hashes=1, seed=0)
        fns["lsh_hash"] = lambda: (lsh_buckets(q, num_buckets=nb), lsh_buckets(k, num_buckets=nb))
        t = timeit_many(fns, reps, min_time=min_time)
        row = {"S": S, "dense_s": t["dense"], "lsh_s": t["lsh"], "lsh_hash_s": t["lsh_hash"],
               "lsh_num_buckets": nb, "lsh_speedup_vs_dense": t["dense"] / t["lsh"]}
        for name, L in lays.items():
            row[f"{name}_s"] = t[name]
            row[f"{name}_density"] = L.density
            row[f"{name}_vs_density_x_dense"] = t[name] / (L.density * t["dense"])
        rows.append(row)
        if report:
            report(format_sparse_row(row))
    for a, b in zip(rows, rows[1:]):
        if b["S"] == 2 * a["S"]:
            b["lsh_scaling"] = b["lsh_s"] / a["lsh_s"]
            b["lsh_without_hash_scaling"] = (b["lsh_s"] - b["lsh_hash_s"]) / (a["lsh_s"] - a["lsh_hash_s"])
            b["dense_scaling"] = b["dense_s"] / a["dense_s"]
    return rows


def format_sparse_row(r) -> str:
    s = f"S={r['S']:6d}  dense {r['dense_s'] * 1e3:8.2f} ms"
    for name in ("bigbird", "longformer"):
        s += (f" | {name} {r[name + '_s'] * 1e3:7.2f} ms (density {r[name + '_density']:.3f}, "
              f"{r[name + '_vs_density_x_dense']:.2f} x density*dense)")
    s += (f" | lsh(b={r['lsh_num_buckets']}) {r['lsh_s'] * 1e3:7.2f} ms ({r['lsh_speedup_vs_dense']:.1f}x faster"
          f" than dense; hashing {r['lsh_hash_s'] * 1e3:.2f} ms)")
    return s
