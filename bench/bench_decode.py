"""Decode on the CPU: attnkit vs PyTorch SDPA (enable_gqa=True) against the machine's memory-read ceiling.

A decode step reads every key and value row once per kv head (the query heads of a GQA group share them),
so its speed is the rate at which it reads K and V: GB/s = (K + V bytes) / time. The ceiling is measured
beside it, in the same process: NumPy reductions (np.add.reduce and a float32 dot) over an array far
larger than the cache. Contenders run round-robin (each round runs every one once) and the medians are
reported with their ratios: the machine may be shared, so absolute figures move, ratios much less.
Cases: float32, D=128, Sq in {1, 4} query rows per head, Sk in {8192, 32768, 131072}, MHA 32:32 and GQA
32:8. Writes bench/results/decode_<isa>.json.

    pip install torch==2.13.0   # the anchor; attnkit itself never needs torch
    python bench/bench_decode.py [--sk 32768] [--reps 15] [--ceiling-gib 1.5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

import attnkit
from attnkit._bench import environment, progress, timeit_many, torch_or_none, write_json

RESULTS = Path(__file__).resolve().parent / "results"


def bandwidth_ceiling(gib: float, reps: int) -> dict:
    """GB/s of NumPy reductions over `gib` GiB of float32 (far larger than any cache), medians of
    alternating rounds: np.add.reduce (one thread) and a matrix-vector dot with a ones vector (BLAS, its
    default threads: all cores); both read the array once. The ceiling is the higher."""
    n = int(gib * 2**30) // 4 // 1024 * 1024
    a = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
    ones = np.ones(1024, np.float32)
    a2 = a.reshape(-1, 1024)
    t = timeit_many({"add_reduce": lambda: np.add.reduce(a), "dot": lambda: a2 @ ones}, reps)
    return {k: a.nbytes / s / 1e9 for k, s in t.items()}


def decode_case(Hq, Hkv, Sq, Sk, D, reps, torch):
    rng = np.random.default_rng(1)
    q = rng.standard_normal((1, Hq, Sq, D), dtype=np.float32)
    k = rng.standard_normal((1, Hkv, Sk, D), dtype=np.float32)
    v = rng.standard_normal((1, Hkv, Sk, D), dtype=np.float32)
    fns = {"attnkit": lambda: attnkit.attention(q, k, v)}
    if torch is not None:
        tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
        sdpa = torch.nn.functional.scaled_dot_product_attention
        fns["torch"] = lambda: sdpa(tq, tk, tv, enable_gqa=Hq != Hkv)
        err = float(np.abs(fns["torch"]().numpy() - fns["attnkit"]()).max())
    t = timeit_many(fns, reps, warmup=2)
    kv_bytes = k.nbytes + v.nbytes
    row = {"Hq": Hq, "Hkv": Hkv, "Sq": Sq, "Sk": Sk, "D": D, "dtype": "float32", "kv_mib": kv_bytes / 2**20,
           "median_s": t, "gbps": {name: kv_bytes / s / 1e9 for name, s in t.items()}}
    if torch is not None:
        row["torch_over_attnkit"] = t["torch"] / t["attnkit"]
        row["max_abs_diff_vs_torch"] = err
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sk", type=int, nargs="+", default=[8192, 32768, 131072])
    ap.add_argument("--sq", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--heads", nargs="+", default=["32:8", "32:32"], help="Hq:Hkv pairs")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--ceiling-gib", type=float, default=1.5)
    ap.add_argument("--max-kv-gib", type=float, default=1.0, help="skip cases whose K and V exceed this")
    ap.add_argument("--out", default=None, help="file name under bench/results (default decode_<isa>.json)")
    a = ap.parse_args(argv)
    threads = attnkit.get_num_threads()
    torch = torch_or_none()
    if torch is not None:
        torch.set_num_threads(threads)
    env = environment(threads)
    rows = []
    for Sk in a.sk:
        for Sq in a.sq:
            for hh in a.heads:
                Hq, Hkv = map(int, hh.split(":"))
                if Hkv * Sk * 128 * 4 * 2 > a.max_kv_gib * 2**30:
                    continue
                r = decode_case(Hq, Hkv, Sq, Sk, 128, a.reps, torch)
                # The ceiling right beside each case: the load of a shared machine changes by the minute.
                r["ceiling_gbps"] = bandwidth_ceiling(a.ceiling_gib, 5)
                best = max(r["ceiling_gbps"].values())
                r["attnkit_of_ceiling"] = r["gbps"]["attnkit"] / best
                rows.append(r)
                progress(f"Hq={Hq} Hkv={Hkv} Sq={Sq} Sk={Sk}: attnkit {r['gbps']['attnkit']:.1f} GB/s "
                         f"({100 * r['attnkit_of_ceiling']:.0f}% of {best:.1f})"
                         + (f", torch {r['gbps']['torch']:.1f} GB/s, torch/attnkit time "
                            f"{r['torch_over_attnkit']:.2f}x" if torch is not None else ""))
    env["loadavg_after"] = os.getloadavg()
    summary = {
        "median_attnkit_of_ceiling": statistics.median(r["attnkit_of_ceiling"] for r in rows),
        "min_attnkit_of_ceiling": min(r["attnkit_of_ceiling"] for r in rows)}
    if torch is not None:
        summary["median_torch_over_attnkit"] = statistics.median(r["torch_over_attnkit"] for r in rows)
        summary["min_torch_over_attnkit"] = min(r["torch_over_attnkit"] for r in rows)
    payload = {"benchmark": "decode, float32, D=128, B=1: K/V read rate vs a NumPy reduction ceiling and torch SDPA",
               "method": "medians of round-robin rounds (attnkit and torch alternate in one process, same thread "
                         "count); the ceiling (NumPy reductions over a 1.5 GiB array) measured right after each case",
               "env": env, "summary": summary, "rows": rows}
    name = a.out or f"decode_{env['cpu_isa']}.json"
    progress(f"wrote {write_json(RESULTS, name, payload)}")


if __name__ == "__main__":
    main()
