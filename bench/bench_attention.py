"""Exact attention on the CPU: attnkit vs PyTorch scaled_dot_product_attention vs NumPy.

float32, B=1, H=8, D=64, S in {512, 1024, 2048, 4096}, causal and not, side by side in one process with
the same thread count for everyone. NumPy anchors: the plain textbook form (the issue's target) and a
careful per-head in-place loop. Reports median times, GFLOP/s (4*D FLOPs per allowed (query, key) pair)
and ratios, and the peak RSS of one attnkit call at S=32768 (in a subprocess). Writes
bench/results/attention_<isa>.json.

--dtypes float32 float16 bfloat16 (issue 11, 16-bit inputs) times attnkit and torch SDPA in every listed
dtype instead: one worker process per library, driven alternately call by call on the same inputs with the
same thread count, each call timed by its process's CPU time (robust on a shared, loaded machine, where
wall time is not), medians over --reps rounds; ratios vs attnkit float32 and vs torch in the same dtype.
--baseline DIR adds a third worker running the attnkit package found in DIR (for example a build of main
copied there), timed the same way: before/after figures of a kernel change beside torch. Wall times are
recorded too (with several threads CPU time sums the threads, wall time shows their scaling).

    pip install torch==2.13.0   # the anchor; attnkit itself never needs torch
    python bench/bench_attention.py [--sizes 512 1024] [--reps 5] [--no-rss]
    python bench/bench_attention.py --dtypes float32 float16 bfloat16 --dims 64 128 --threads 1 --out lowp_avx2.json
    python bench/bench_attention.py --dtypes float32 --baseline /tmp/main_pkg --threads 1 --out history/exact_avx2_s21_1thread.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _quiet_blas  # noqa: F401  (before NumPy: OpenBLAS's threads sleep at once after a call)

import numpy as np

import attnkit
from attnkit._bench import (add_rss_arguments, environment, exact_rows, peak_rss, progress, result_name, rss_in_child,
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


def dtype_worker(lib, threads):
    """Runs in a subprocess: reads "S D causal dtype" lines, runs one call of `lib` (attnkit or torch) on
    that case's inputs and prints the call's process CPU time. Inputs come from one seed per (S, D), drawn in
    float32 and rounded to the dtype, so both libraries see the same values."""
    import ml_dtypes

    cache = {}
    if lib == "torch":
        import torch

        torch.set_num_threads(threads)
        sdpa = torch.nn.functional.scaled_dot_product_attention
        tdt = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    else:
        attnkit.set_num_threads(threads)
        ndt = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
    print("ready", flush=True)
    for line in sys.stdin:
        S, D, causal, dt = line.split()
        S, D, causal = int(S), int(D), causal == "1"
        if (S, D, dt) not in cache:
            rng = np.random.default_rng(S * 1000 + D)
            x = [rng.standard_normal((1, 8, S, D)).astype(np.float32) for _ in range(3)]
            cache[(S, D, dt)] = ([torch.from_numpy(a).to(tdt[dt]) for a in x] if lib == "torch"
                                 else [a.astype(ndt[dt]) for a in x])
        q, k, v = cache[(S, D, dt)]
        t0, w0 = time.process_time(), time.perf_counter()
        if lib == "torch":
            sdpa(q, k, v, is_causal=causal)
        else:
            attnkit.attention(q, k, v, causal=causal)
        print(time.process_time() - t0, time.perf_counter() - w0, flush=True)


def dtype_rows(sizes, dims, dtypes, reps, threads, baseline=None):
    """attnkit and torch (and the baseline attnkit package in directory `baseline`) in every dtype,
    alternately, in one worker process each (see dtype_worker)."""
    libs = ["attnkit"] + (["baseline"] if baseline else []) + (["torch"] if torch_or_none() is not None else [])

    def spawn(lib):
        env = dict(os.environ)
        if lib == "baseline":  # its attnkit package is found before the installed one
            env["PYTHONPATH"] = os.pathsep.join([str(baseline)] + [p for p in [env.get("PYTHONPATH")] if p])
        return subprocess.Popen([sys.executable, __file__, "--worker", "torch" if lib == "torch" else "attnkit",
                                 "--threads", str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True, env=env)

    workers = {lib: spawn(lib) for lib in libs}
    for w in workers.values():
        assert w.stdout.readline().strip() == "ready"

    def call(lib, case):
        w = workers[lib]
        w.stdin.write(" ".join(map(str, case)) + "\n")
        w.stdin.flush()
        return tuple(map(float, w.stdout.readline().split()))  # (CPU time, wall time)

    rows = []
    for D in dims:
        for S in sizes:
            for causal in (False, True):
                names = [(lib, dt) for dt in dtypes for lib in libs]
                times = {n: [] for n in names}
                for rnd in range(reps + 1):  # round 0 warms up
                    for lib, dt in names:
                        t = call(lib, (S, D, int(causal), dt))
                        if rnd:
                            times[(lib, dt)].append(t)
                flops = 4.0 * D * 8 * (S * (S + 1) // 2 if causal else S * S)
                row = {"S": S, "D": D, "causal": causal, "rounds": reps}
                for (lib, dt), ts in times.items():
                    row[f"{lib}_{dt}_cpu_s"] = statistics.median(t[0] for t in ts)
                    row[f"{lib}_{dt}_wall_s"] = statistics.median(t[1] for t in ts)
                    row[f"{lib}_{dt}_gflops"] = flops / row[f"{lib}_{dt}_cpu_s"] / 1e9
                for dt in dtypes:
                    a = row[f"attnkit_{dt}_cpu_s"]
                    if "float32" in dtypes:
                        row[f"attnkit_{dt}_rate_vs_attnkit_float32"] = row["attnkit_float32_cpu_s"] / a
                    for other in ("torch", "baseline"):
                        if other in libs:
                            row[f"attnkit_{dt}_vs_{other}_{dt}"] = row[f"{other}_{dt}_cpu_s"] / a
                            row[f"attnkit_{dt}_vs_{other}_{dt}_wall"] = row[f"{other}_{dt}_wall_s"] / row[f"attnkit_{dt}_wall_s"]
                    if baseline and "torch" in libs:
                        row[f"baseline_{dt}_vs_torch_{dt}"] = row[f"torch_{dt}_cpu_s"] / row[f"baseline_{dt}_cpu_s"]
                rows.append(row)
                progress(f"D={D} S={S:5d} causal={causal!s:5s} " + "  ".join(
                    f"{dt}: {row[f'attnkit_{dt}_gflops']:5.1f} GF/s"
                    + (f" {row[f'attnkit_{dt}_rate_vs_attnkit_float32']:.2f}x f32" if "float32" in dtypes else "")
                    + (f" {row[f'attnkit_{dt}_vs_torch_{dt}']:.2f}x torch" if "torch" in libs else "")
                    + (f" {row[f'attnkit_{dt}_vs_baseline_{dt}']:.2f}x baseline" if baseline else "")
                    + (f" (baseline {row[f'baseline_{dt}_vs_torch_{dt}']:.2f}x torch)" if baseline and "torch" in libs
                       else "")
                    for dt in dtypes))
    for w in workers.values():
        w.stdin.close()
        w.wait()
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-numpy", action="store_true")
    add_rss_arguments(ap, 32768)
    ap.add_argument("--dims", type=int, nargs="+", default=[64], help="head dims D")
    ap.add_argument("--dtypes", nargs="+", choices=["float32", "float16", "bfloat16"],
                    help="attnkit and torch in these dtypes, worker processes timed by CPU time (see above)")
    ap.add_argument("--threads", type=int, default=None, help="threads per contender (default: attnkit's)")
    ap.add_argument("--baseline", help="with --dtypes: also time the attnkit package in this directory")
    ap.add_argument("--worker", choices=["attnkit", "torch"], help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help="file name under bench/results (default attention_<isa>.json)")
    a = ap.parse_args(argv)
    if a.rss_child:
        return peak_rss_child(a.rss_S, 8, 64, True)
    if a.worker:
        return dtype_worker(a.worker, a.threads)
    if a.threads:
        attnkit.set_num_threads(a.threads)
        torch = torch_or_none()
        if torch is not None:
            torch.set_num_threads(a.threads)
    threads = attnkit.get_num_threads()
    env = environment(threads)
    a.out = a.out or result_name("attention", env)
    progress(f"{env['cpu_model']}, isa {env['cpu_isa']}, matmul 2048^3 GFLOP/s {env['matmul_2048_gflops']}")
    if a.dtypes:
        rows = dtype_rows(a.sizes, a.dims, a.dtypes, a.reps, threads, a.baseline)
        env["loadavg_after"] = os.getloadavg()
        payload = {"benchmark": f"exact attention in {a.dtypes}, B=1, H=8, D in {a.dims}: attnkit vs torch SDPA",
                   "method": "one worker process per contender (attnkit, torch"
                             + (f"; baseline: the attnkit package in {a.baseline}" if a.baseline else "")
                             + f"), driven alternately call by call, {threads} "
                             f"thread(s) each; median of {a.reps} rounds of process CPU time per call (the machine "
                             "is shared: wall times are not the machine's speed, CPU times and ratios are)",
                   "env": env, "rows": rows}
        progress(f"wrote {write_json(RESULTS, a.out, payload)}")
        return
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
