"""Exact attention backward on the CPU: attnkit.attention_backward vs PyTorch SDPA's backward.

float32, B=1, H=8, D=64, S in {512, 1024, 2048}, causal and not, side by side (round-robin) in one
process with the same thread count. torch's time is the backward alone: torch.autograd.grad of SDPA's
output with a retained graph (its CPU flash-attention backward kernel); attnkit's is attention_backward
from the forward's out and lse. FLOPs: the five matrix products of the backward, 10 * D per allowed
(query, key) pair (torch's convention: 2.5x the forward). Also the peak RSS of one backward call beyond
its inputs and gradients at S = 8192 (in a subprocess), to show the O(S) memory. Writes
bench/results/backward.json.

    pip install torch==2.13.0   # the anchor; attnkit itself never needs torch
    python bench/bench_backward.py [--sizes 512 1024] [--reps 5] [--no-rss]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import attnkit
from attnkit._bench import (add_rss_arguments, causal_pairs, environment, peak_rss, progress, rss_in_child, timeit_many,
                            torch_or_none, write_json)

RESULTS = Path(__file__).resolve().parent / "results"


def inputs(S, H, D, causal, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v, dout = (rng.standard_normal((1, H, S, D)).astype(np.float32) for _ in range(4))
    out, lse = attnkit.attention(q, k, v, causal=causal, return_lse=True)
    return q, k, v, dout, out, lse


def peak_rss_child(S, H, D):
    """Peak RSS of one causal backward call beyond what the process held before (the gradients
    included); the high-water mark is reset through /proc/self/clear_refs first."""
    q, k, v, dout, out, lse = inputs(S, H, D, True)
    grads, before, peak = peak_rss(lambda: attnkit.attention_backward(dout, q, k, v, out, lse, causal=True))
    grads_mib = sum(g.nbytes for g in grads) / 2**20
    print(json.dumps({"S": S, "H": H, "D": D, "causal": True, "grads_mib": grads_mib, "extra_mib": peak - before,
                      "extra_beyond_grads_mib": peak - before - grads_mib,
                      "dense_scores_would_be_mib": H * S * S * 4 / 2**20}))


def rows_for(sizes, reps, H=8, D=64):
    threads = attnkit.get_num_threads()
    torch = torch_or_none()
    if torch is not None:
        torch.set_num_threads(threads)
    rows = []
    for S in sizes:
        for causal in (False, True):
            q, k, v, dout, out, lse = inputs(S, H, D, causal)
            fns = {"attnkit": lambda: attnkit.attention_backward(dout, q, k, v, out, lse, causal=causal)}
            if torch is not None:
                tq, tk, tv = (torch.from_numpy(x).requires_grad_() for x in (q, k, v))
                tout = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
                tdout = torch.from_numpy(dout)
                fns["torch"] = lambda: torch.autograd.grad(tout, (tq, tk, tv), tdout, retain_graph=True)
                # same gradients (float32 rounding apart), so the two do the same work
                ours = fns["attnkit"]()
                theirs = fns["torch"]()
                err = max(float(np.abs(a - b.numpy()).max()) for a, b in zip(ours, theirs))
            flops = 10.0 * D * H * causal_pairs(S, causal)
            row = {"S": S, "causal": causal}
            for key, t in timeit_many(fns, reps, min_time=0.3).items():
                row[f"{key}_s"] = t
                row[f"{key}_gflops"] = flops / t / 1e9
            if "torch_s" in row:
                row["speedup_vs_torch"] = row["torch_s"] / row["attnkit_s"]
                row["max_abs_diff_vs_torch"] = err
            rows.append(row)
            msg = f"S={S:6d} causal={str(causal):5s} attnkit {row['attnkit_s'] * 1e3:8.2f} ms " \
                  f"{row['attnkit_gflops']:6.1f} GF/s"
            if "torch_s" in row:
                msg += f" | torch {row['torch_s'] * 1e3:8.2f} ms {row['torch_gflops']:6.1f} GF/s " \
                       f"({row['speedup_vs_torch']:.2f}x, max |diff| {err:.1e})"
            progress(msg)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--reps", type=int, default=5)
    add_rss_arguments(ap, 8192)
    ap.add_argument("--out", default="backward.json")
    a = ap.parse_args(argv)
    if a.rss_child:
        return peak_rss_child(a.rss_S, 8, 64)
    payload = {"benchmark": "exact attention backward, float32, B=1, H=8, D=64",
               "env": environment(attnkit.get_num_threads()), "rows": rows_for(a.sizes, a.reps)}
    if not a.no_rss:
        payload["peak_rss"] = rss_in_child(__file__, a.rss_S)
    progress(f"wrote {write_json(RESULTS, a.out, payload)}")


if __name__ == "__main__":
    main()
