"""Dynamic linear attention on the CPU: prefill and decode, side by side with exact attention and linear
attention.

float32, B=1, H=8, Dk=Dv=64, capacity C=30, tau=0.6 (token_vs_state), S in {1024, ..., 16384}, all in one
process with the same thread count, contenders timed round-robin (attnkit._bench.timeit_many):

  prefill  dla (the default, chunked form), dla_recurrent (the chunked form one token at a time), dla_decay (with a
           log-decay), exact (attnkit.attention, causal), linear (attnkit.linear_attention with the
           identity map, causal, unnormalized: the computation DLA does with lam = 1), when available;
  decode   one T = 1 call continuing from position S (DLA with the returned cache; exact attention of one
           query over a KV cache of S keys; linear attention from its state).

The data are piecewise-stationary (blocks of 8..40 tokens sharing a key/value direction), so boundaries
open at the block changes and the cache merges once a head has seen C of them; the counts are reported.
Reports median times, tokens/s, time(2S)/time(S) and ratios; writes bench/results/dla_<isa>.json, plus a
chunk-length sweep of the chunked prefill at S = 4096. Times are by process CPU time (--clock wall for wall
time), for each of --threads; --vs-isa generic adds prefill and decode timed on the generic micro-kernels
beside this ISA's (one worker process per path, driven alternately).

    python bench/bench_dla.py [--sizes 1024 2048] [--reps 3] [--no-exact] [--threads 1 2] [--vs-isa generic]
"""

from __future__ import annotations

import _quiet_blas  # noqa: F401  (before NumPy: OpenBLAS's threads sleep at once after a call)
import argparse
from pathlib import Path

import attnkit
from attnkit._bench import (add_run_arguments, apply_run_arguments, dla_data, dla_rows, environment, isa_rows,
                            linear_attention_or_none, progress, result_name, timeit_many, tuned, write_json)

RESULTS = Path(__file__).resolve().parent / "results"


def chunk_sweep(S=4096, H=8, D=64, C=30, reps=3, lengths=(16, 32, 64, 128)):
    """Prefill time of the chunked form per chunk length (L = 1: token by token), round-robin."""
    q, k, v, lam = dla_data(S, H, D, C)
    f = attnkit.dynamic_linear_attention
    fns = {f"L={L}": tuned(lambda: f(q, k, v, lam, capacity=C), dla_chunk=L) for L in lengths}
    fns["L=1"] = tuned(lambda: f(q, k, v, lam, capacity=C), dla_chunk=1)
    return {key: t for key, t in timeit_many(fns, reps).items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--decode-reps", type=int, default=40)
    ap.add_argument("--no-exact", action="store_true", help="skip exact attention (slow at large S)")
    ap.add_argument("--no-sweep", action="store_true", help="skip the chunk-length sweep")
    ap.add_argument("--out", default=None, help="file name under bench/results (default dla_<isa>.json)")
    add_run_arguments(ap, [4096])
    a = ap.parse_args(argv)
    threads = apply_run_arguments(a)
    has_linear = linear_attention_or_none() is not None
    progress("linear attention: " + ("included" if has_linear else
                                     "not in this build (attnkit.linear_attention missing): no linear column"))
    rows = []
    for t in threads:
        attnkit.set_num_threads(t)
        progress(f"attnkit {attnkit.__version__}, {t} thread(s), CPU kernels {attnkit.info()['cpu_isa']}")
        rows += [{"threads": t, **r} for r in dla_rows(a.sizes, a.reps, decode_reps=a.decode_reps,
                                                        with_exact=not a.no_exact)]
    payload = {"benchmark": "dynamic linear attention, float32, B=1, H=8, Dk=Dv=64, C=30, tau=0.6, token_vs_state",
               "env": environment(threads), "linear_attention_included": has_linear, "rows": rows}
    if a.vs_isa:
        payload["isa_rows"] = isa_rows(["exact_causal", "dla_prefill", "dla_decode"], a.vs_isa_sizes, threads,
                                       other=a.vs_isa)
    if not a.no_sweep:
        progress("chunk-length sweep at S=4096 ...")
        payload["chunk_sweep_S4096_s"] = chunk_sweep(reps=a.reps)
        progress("  " + ", ".join(f"{k} {t * 1e3:.1f} ms" for k, t in payload["chunk_sweep_S4096_s"].items()))
    progress(f"wrote {write_json(RESULTS, a.out or result_name('dla', payload['env']), payload)}")


if __name__ == "__main__":
    main()
