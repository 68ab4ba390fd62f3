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
from pathlib import Path

import numpy as np

import attnkit
from attnkit._bench import add_rss_arguments, environment, exact_rows, peak_rss, progress, rss_in_child, write_json

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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-numpy", action="store_true")
    add_rss_arguments(ap, 32768)
    ap.add_argument("--out", default="attention.json")
    a = ap.parse_args(argv)
    if a.rss_child:
        return peak_rss_child(a.rss_S, 8, 64, True)
    threads = attnkit.get_num_threads()
    rows = exact_rows(a.sizes, a.reps, with_numpy=not a.no_numpy)
    payload = {"benchmark": "exact attention, float32, B=1, H=8, D=64", "env": environment(threads), "rows": rows}
    if not a.no_rss:
        payload["peak_rss"] = rss_in_child(__file__, a.rss_S)
    progress(f"wrote {write_json(RESULTS, a.out, payload)}")


if __name__ == "__main__":
    main()
