"""Exact attention on the CPU: attnkit vs PyTorch scaled_dot_product_attention vs NumPy.

float32, B=1, H=8, D=64, S in {512, 1024, 2048, 4096}, causal and not, side by side in one process with
the same thread count for everyone. NumPy anchors: the plain textbook form (the issue's target) and a
careful per-head in-place loop. Reports median times, GFLOP/s (4*D FLOPs per allowed (query, key) pair)
and ratios, and the peak RSS of one attnkit call at S=32768 (in a subprocess). Writes
bench/results/attention.json.

    pip install torch==2.13.0   # the anchor; attnkit itself never needs torch
    python bench/bench_attention.py [--sizes 512 1024] [--reps 5] [--no-rss]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

import attnkit
from attnkit._bench import (add_rss_arguments, environment, exact_rows, peak_rss, progress, rss_in_child, timeit_many,
                            torch_or_none, write_json)

RESULTS = Path(__file__).resolve().parent / "results"


def peak_rss_child(S, H, D, causal):
    """Runs in a subprocess: peak RSS during one attention call beyond what the process held before it
    (inputs included), i.e. the output plus the kernel's scratch."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, H, S, D)).astype(np.float32) for _ in range(3))
    out, before, peak = peak_rss(lambda: attnkit.attention(q, k, v, causal=causal))
    print(json.dumps({"S": S, "H": H, "D": D, "causal": causal, "inputs_mib": 3 * q.nbytes / 2**20,
                      "output_mib": out.nbytes / 2**20, "rss_before_mib": before, "rss_peak_mib": peak,
                      "extra_mib": peak - before, "extra_beyond_output_mib": peak - before - out.nbytes / 2**20,
                      "dense_scores_would_be_mib": H * S * S * 4 / 2**20}))


def matmul_ceiling(n=2048, reps=3):
    """The machine's float32 matrix-multiply rate (GFLOP/s, n^3 products, median): NumPy's sgemm and
    torch.matmul when torch is there; issue 11 measures the exact kernel against the higher one."""
    a, b = (np.random.default_rng(1).standard_normal((n, n)).astype(np.float32) for _ in range(2))
    fns = {"numpy": lambda: a @ b}
    torch = torch_or_none()
    if torch is not None:
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        fns["torch"] = lambda: ta @ tb
    return {k: 2.0 * n**3 / t / 1e9 for k, t in timeit_many(fns, reps).items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-numpy", action="store_true")
    add_rss_arguments(ap, 32768)
    ap.add_argument("--dims", type=int, nargs="+", default=[64], help="head dims D")
    ap.add_argument("--out", default="attention.json")
    a = ap.parse_args(argv)
    if a.rss_child:
        return peak_rss_child(a.rss_S, 8, 64, True)
    threads = attnkit.get_num_threads()
    env = environment(threads)
    env["matmul_2048_gflops"] = matmul_ceiling()
    progress(f"{env['cpu_model']}, isa {env['cpu_isa']}, matmul 2048^3 GFLOP/s {env['matmul_2048_gflops']}")
    rows = []
    for D in a.dims:
        progress(f"D={D}")
        rows += [dict(r, D=D) for r in exact_rows(a.sizes, a.reps, D=D, with_numpy=not a.no_numpy)]
    env["loadavg_after"] = os.getloadavg()
    payload = {"benchmark": f"exact attention, float32, B=1, H=8, D in {a.dims}", "env": env, "rows": rows}
    if not a.no_rss:
        payload["peak_rss"] = rss_in_child(__file__, a.rss_S)
    progress(f"wrote {write_json(RESULTS, a.out, payload)}")


if __name__ == "__main__":
    main()
