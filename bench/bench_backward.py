"""Exact attention backward on the CPU: attnkit.attention_backward vs PyTorch SDPA's backward.

float32, B=1, H=8, D=64, S in {512, 1024, 2048}, causal and not, side by side (round-robin) in one
process with the same thread count. torch's time is the backward alone: torch.autograd.grad of SDPA's
output with a retained graph (its CPU flash-attention backward kernel); attnkit's is attention_backward
from the forward's out and lse. FLOPs: the five matrix products of the backward, 10 * D per allowed
(query, key) pair (torch's convention: 2.5x the forward). Also the peak RSS of one backward call beyond
its inputs and gradients at S = 8192 (in a subprocess), to show the O(S) memory. Writes
bench/results/backward_<isa>.json.

With --linear: linear_attention_backward (elu+1) and performer_attention_backward (softmax kernel, m = 256
features) vs torch autograd of the same formula written in torch (float32, B=1, H=8, D=64): causal as
the masked quadratic form a = (phi(Q) phi(K)^T) * tril, num = a V, den = rowsum(a) (what a torch user
writes without a custom kernel; O(S^2) memory), bidirectional as phi(Q) (phi(K)^T V) / (phi(Q) phi(K)^T 1).
Performer's stabilizers are detached in torch (the usual treatment); with eps = 0 the gradients agree.
Timed: the backward alone (autograd.grad with a retained graph) vs attnkit's backward (which recomputes
the forward). Writes bench/results/linear_backward_<isa>.json.

    pip install torch==2.13.0   # the anchor; attnkit itself never needs torch
    python bench/bench_backward.py [--sizes 512 1024] [--reps 5] [--no-rss]
    python bench/bench_backward.py --linear [--sizes 1024 4096]
"""

from __future__ import annotations

import _quiet_blas  # noqa: F401  (before NumPy: OpenBLAS's threads sleep at once after a call)
import argparse
import json
from pathlib import Path

import numpy as np

import attnkit
from attnkit._bench import (add_rss_arguments, causal_pairs, environment, peak_rss, progress, result_name, rss_in_child,
                            timeit_many, torch_or_none, write_json)

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


def torch_linear(torch, q, k, v, w, causal, eps):
    """out of linear attention (elu+1, w None) or Performer (softmax features W = w) written in torch."""
    if w is None:
        fq, fk = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
    else:
        sc = q.shape[-1] ** -0.25
        qw, kw = (q * sc) @ w.T, (k * sc) @ w.T
        fq = torch.exp(qw - qw.amax(-1, keepdim=True).detach()) / w.shape[0] ** 0.5
        e = kw - 0.5 * (k * sc).pow(2).sum(-1, keepdim=True)
        fk = torch.exp(e - e.amax(dim=(-1, -2), keepdim=True).detach()) / w.shape[0] ** 0.5
    if causal:
        a = (fq @ fk.transpose(-1, -2)).tril()
        return (a @ v) / (a.sum(-1, keepdim=True) + eps)
    return (fq @ (fk.transpose(-1, -2) @ v)) / (fq @ fk.sum(-2).unsqueeze(-1) + eps)


def linear_rows_for(sizes, reps, H=8, D=64, m=256):
    threads = attnkit.get_num_threads()
    torch = torch_or_none()
    if torch is not None:
        torch.set_num_threads(threads)
    rows = []
    w = attnkit.random_features(m, D, seed=0)
    for name in ("linear_elu1", "performer_softmax"):
        for S in sizes:
            for causal in (True, False):
                rng = np.random.default_rng(0)
                q, k, v, dout = (rng.standard_normal((1, H, S, D)).astype(np.float32) for _ in range(4))
                eps = 0.0 if name.startswith("performer") else 1e-6
                if name == "linear_elu1":
                    ours = lambda: attnkit.linear_attention_backward(dout, q, k, v, causal=causal, eps=eps)  # noqa
                else:
                    ours = lambda: attnkit.performer_attention_backward(dout, q, k, v, w, causal=causal, eps=eps)  # noqa
                fns = {"attnkit": ours}
                row = {"function": name, "S": S, "causal": causal, "H": H, "D": D}
                if name != "linear_elu1":
                    row["m"] = m
                if torch is not None:
                    tq, tk, tv = (torch.from_numpy(x).requires_grad_() for x in (q, k, v))
                    tout = torch_linear(torch, tq, tk, tv, None if name == "linear_elu1" else torch.from_numpy(w),
                                        causal, eps)
                    tdout = torch.from_numpy(dout)
                    fns["torch"] = lambda: torch.autograd.grad(tout, (tq, tk, tv), tdout, retain_graph=True)
                    mine, theirs = fns["attnkit"](), fns["torch"]()
                    row["max_rel_diff_vs_torch"] = max(
                        float(np.abs(a - b.numpy()).max() / max(1e-30, np.abs(b.numpy()).max()))
                        for a, b in zip(mine, theirs))
                for key, t in timeit_many(fns, reps, min_time=0.3).items():
                    row[f"{key}_s"] = t
                if "torch_s" in row:
                    row["speedup_vs_torch"] = row["torch_s"] / row["attnkit_s"]
                rows.append(row)
                msg = f"{name:18s} S={S:6d} causal={str(causal):5s} attnkit {row['attnkit_s'] * 1e3:8.2f} ms"
                if "torch_s" in row:
                    msg += f" | torch {row['torch_s'] * 1e3:8.2f} ms ({row['speedup_vs_torch']:.2f}x, " \
                           f"max rel diff {row['max_rel_diff_vs_torch']:.1e})"
                progress(msg)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--reps", type=int, default=5)
    add_rss_arguments(ap, 8192)
    ap.add_argument("--out", default=None)
    ap.add_argument("--linear", action="store_true", help="linear attention / Performer backward instead")
    a = ap.parse_args(argv)
    if a.linear:
        payload = {"benchmark": "linear attention (elu+1) / Performer (softmax, m=256) backward, float32, B=1, "
                                "H=8, D=64, vs torch autograd of the same formula",
                   "env": environment(attnkit.get_num_threads()), "rows": linear_rows_for(a.sizes, a.reps)}
        progress(f"wrote {write_json(RESULTS, a.out or result_name('linear_backward', payload['env']), payload)}")
        return None
    if a.rss_child:
        return peak_rss_child(a.rss_S, 8, 64)
    payload = {"benchmark": "exact attention backward, float32, B=1, H=8, D=64",
               "env": environment(attnkit.get_num_threads()), "rows": rows_for(a.sizes, a.reps)}
    if not a.no_rss:
        payload["peak_rss"] = rss_in_child(__file__, a.rss_S)
    progress(f"wrote {write_json(RESULTS, a.out or result_name('backward', payload['env']), payload)}")


if __name__ == "__main__":
    main()
