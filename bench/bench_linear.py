"""Linear-time attention on the CPU: linear attention (elu+1), Performer (m = 256) and Linformer (P = 256)
side by side with attnkit's exact attention, in one process, each size timed round-robin.

float32, B=1, H=8, D=64, S = 1024 .. 16384 (plus S = 64 .. 512 to locate the crossover, and S = 32768
for the scaling of the linear-time mechanisms alone), causal and
bidirectional. Reports median times, the speedup over exact attention (causal forms against causal exact
attention; each size its own round-robin), the scaling ratios time(2S) / time(S) (all sizes of the
linear-time contenders in ONE round-robin, so load changes between sizes cannot fake a ratio; measured
with the default allocator and, in a child process, with outputs taken from reused heap memory), the
crossover length, and the approximation error of
Performer (m = 64 .. 512, with the fitted m^-1/2 trend) and Linformer (P = 64 .. 512) against exact
attention on the same inputs: the timing inputs (standard normal) and rows of controlled norm |x'| = 1,
where Performer's estimator has moderate variance. Times are by process CPU time (--clock wall for wall time);
the speedups and crossovers for each of --threads, the scaling, targets and errors at the last of them;
--vs-isa generic adds each mechanism timed on the generic micro-kernels beside this ISA's (one worker process
per path, driven alternately). Writes bench/results/linear_<isa>.json.

    python bench/bench_linear.py [--sizes 1024 2048] [--reps 3] [--chunks] [--threads 1 2] [--vs-isa generic]
"""

from __future__ import annotations

import _quiet_blas  # noqa: F401  (before NumPy: OpenBLAS's threads sleep at once after a call)
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import attnkit
from attnkit._bench import (LINEAR_CONTENDERS, add_run_arguments, apply_run_arguments, approximation_errors, crossover,
                            environment, isa_rows, linear_inputs, linear_rows, linear_scaling, progress, result_name,
                            scaling_ratios, timeit_many, tuned, write_json)

RESULTS = Path(__file__).resolve().parent / "results"


def chunk_sweep(S, chunks, reps, H=8, D=64, m=256):
    """Causal linear attention and Performer for several chunk lengths (the tuning of the default)."""
    q, k, v = linear_inputs(S, H, D)
    W = attnkit.random_features(m, D)
    fns = {}
    for c in chunks:
        fns[f"linear_causal_c{c}"] = tuned(lambda: attnkit.linear_attention(q, k, v), linear_chunk=c)
        fns[f"performer_causal_c{c}"] = tuned(lambda: attnkit.performer_attention(q, k, v, W, causal=True),
                                              linear_chunk=c)
        fns[f"linear_c{c}"] = tuned(lambda: attnkit.linear_attention(q, k, v, causal=False), linear_chunk=c)
        fns[f"performer_c{c}"] = tuned(lambda: attnkit.performer_attention(q, k, v, W), linear_chunk=c)
    return {"S": S, "seconds": timeit_many(fns, reps)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    ap.add_argument("--crossover-sizes", type=int, nargs="*", default=[64, 128, 256, 512])
    ap.add_argument("--reps", type=int, default=3, help="round-robin rounds per size (median)")
    ap.add_argument("--scaling-extra", type=int, nargs="*", default=[32768],
                    help="sizes beyond --sizes for the scaling measurement only (exact attention is not run there)")
    ap.add_argument("--errors-S", type=int, default=1024, help="sequence length of the error table")
    ap.add_argument("--chunks", action="store_true", help="also sweep the chunk length at S = 4096 and 16384")
    ap.add_argument("--out", default=None, help="file name under bench/results (default linear_<isa>.json)")
    ap.add_argument("--scaling-child", action="store_true", help=argparse.SUPPRESS)
    add_run_arguments(ap, [1024, 4096])
    a = ap.parse_args(argv)
    threads = apply_run_arguments(a)
    if a.scaling_child:
        attnkit.set_num_threads(threads[-1])
        print(json.dumps(linear_scaling(sorted(a.sizes), reps=a.reps + 4)))
        return
    progress("float32, B=1, H=8, D=64; Performer m=256, Linformer P=256; speedups vs exact attention")
    all_rows, crossovers = [], {}
    for t in threads:
        attnkit.set_num_threads(t)
        progress(f"attnkit {attnkit.__version__}, {t} thread(s), CPU kernels {attnkit.info()['cpu_isa']}")
        small = linear_rows(sorted(a.crossover_sizes), reps=a.reps, min_time=0.5) if a.crossover_sizes else []
        rows = linear_rows(sorted(a.sizes), reps=a.reps)
        all_rows += [{"threads": t, **r} for r in small + rows]
        crossovers[str(t)] = cross = {n: crossover(small + rows, n) for n in LINEAR_CONTENDERS}
        progress("crossover with exact attention:")
        for n, c in cross.items():
            progress(f"  {n:17s} {c['bound']} S = {c['S']:.0f}" if c else f"  {n}: -")
    progress(f"scaling at {threads[-1]} thread(s): every (contender, size) in one round-robin ...")
    scaling_sizes = sorted(set(a.sizes) | set(a.scaling_extra))
    scaling = linear_scaling(scaling_sizes, reps=a.reps + 4)
    ratios = scaling_ratios(scaling)
    # glibc always serves allocations >= 32 MiB with fresh mmap'ed pages, which the OS zeroes on first
    # touch: at S = 16384 the [1, 8, S, 64] float32 output is exactly 32 MiB, so every call from that size
    # on pays ~10 ms that smaller sizes (heap reuse) do not. The child run raises the threshold so outputs
    # reuse heap memory at every size: it measures the kernels' own scaling.
    progress("scaling again in a child process with MALLOC_MMAP_THRESHOLD_=1 GiB (outputs reuse heap memory) ...")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(2**30))
    child = subprocess.run([sys.executable, __file__, "--scaling-child", "--reps", str(a.reps), "--clock", a.clock,
                            "--threads", str(threads[-1]), "--sizes", *map(str, scaling_sizes)], env=env, check=True,
                           capture_output=True, text=True)
    scaling_heap = {n: {int(S): x for S, x in by_s.items()} for n, by_s in json.loads(child.stdout).items()}
    ratios_heap = scaling_ratios(scaling_heap)
    for label, rr in (("default allocator", ratios), ("outputs from reused heap memory", ratios_heap)):
        progress(f"scaling time(2S)/time(S), {label}:")
        for n, r in rr.items():
            progress(f"  {n:17s} " + "  ".join(f"{S}: {x:.2f}" for S, x in r.items()))
    big = max(rows, key=lambda r: r["S"])
    # the targets: >= 5x faster than exact at the largest S, time(2S)/time(S) <= 2.2 at the large
    # sizes (here: the last two doublings of --sizes, 4096 -> 8192 -> 16384 by default)
    targets = {}
    top = max(a.sizes)
    for n in LINEAR_CONTENDERS:
        large = [x for S, x in sorted(ratios[n].items()) if S <= top][-2:]
        large_heap = [x for S, x in sorted(ratios_heap[n].items()) if S <= top][-2:]
        targets[n] = {"S": big["S"], "speedup_vs_exact": big[f"{n}_speedup_vs_exact"],
                      "meets_5x": big[f"{n}_speedup_vs_exact"] >= 5,
                      "large_size_scaling_ratios": large, "meets_2_2_scaling": bool(large) and max(large) <= 2.2,
                      "large_size_scaling_ratios_heap_outputs": large_heap,
                      "meets_2_2_scaling_heap_outputs": bool(large_heap) and max(large_heap) <= 2.2}
        progress(f"  {n:17s} {big[f'{n}_speedup_vs_exact']:6.1f}x vs exact at S={big['S']}; time(2S)/time(S) of "
                 f"the last two doublings {', '.join(f'{x:.2f}' for x in large)} (heap outputs: "
                 f"{', '.join(f'{x:.2f}' for x in large_heap)})")
    errors = []
    for row_norm in (None, 1.0):
        e = approximation_errors(S=a.errors_S, row_norm=row_norm)
        errors.append(e)
        progress(f"approximation errors at S={a.errors_S}, {e['inputs']}:")
        for r in e["performer"]:
            progress(f"  Performer m={r['m']:4d}: rel. error {r['rel_err']:.4f} (causal {r['causal_rel_err']:.4f})")
        progress(f"  Performer log-log slope of the error in m: {e['performer_loglog_slope']:.3f}")
        for r in e["linformer"]:
            progress(f"  Linformer P={r['P']:4d}: rel. error {r['rel_err']:.4f}")
    payload = {"benchmark": "linear-time attention vs exact attention, float32, B=1, H=8, D=64, Performer m=256, "
                            "Linformer P=256",
               "env": environment(threads), "rows": all_rows,
               "scaling_seconds": {n: {str(S): x for S, x in by_s.items()} for n, by_s in scaling.items()},
               "scaling_ratios": {n: {str(S): x for S, x in r.items()} for n, r in ratios.items()},
               "scaling_seconds_heap_outputs": {n: {str(S): x for S, x in by_s.items()}
                                                for n, by_s in scaling_heap.items()},
               "scaling_ratios_heap_outputs": {n: {str(S): x for S, x in r.items()} for n, r in ratios_heap.items()},
               "crossover_by_threads": crossovers, "scaling_and_targets_threads": threads[-1],
               "targets_at_largest_S": targets, "approximation_errors": errors}
    if a.vs_isa:
        payload["isa_rows"] = isa_rows(["exact", "exact_causal", *LINEAR_CONTENDERS], a.vs_isa_sizes, threads,
                                       other=a.vs_isa)
    if a.chunks:
        payload["chunk_sweep"] = [chunk_sweep(S, [16, 32, 64, 128], a.reps + 2) for S in (4096, 16384)]
        for sw in payload["chunk_sweep"]:
            progress(f"chunks at S={sw['S']}: " + " ".join(f"{k}={v * 1e3:.1f}ms" for k, v in sw["seconds"].items()))
    progress(f"wrote {write_json(RESULTS, a.out or result_name('linear', payload['env']), payload)}")


if __name__ == "__main__":
    main()
