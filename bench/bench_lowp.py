"""Exact attention in float32, float16 and bfloat16 on the CPU: attnkit vs torch SDPA (issue 11 item 2).

B=1, H=8, D in --dims, S in --sizes, causal and not, for each thread count in --threads: attnkit and torch
2.13 CPU SDPA in every dtype run side by side in ONE process, call by call in alternation (the machine is
shared and noisy, so every contender sees the same load), medians over --reps rounds after a warm-up
round of both wall-clock time and process CPU time per call; the ratios use CPU time (all threads' CPU
seconds: on a machine loaded past its cores, wall time measures the load, CPU time the work). Ratios: each attnkit dtype against attnkit float32 (the "hardware speed" rule: >= 0.9x on
AVX2) and against torch in the same dtype. Records the CPU model, the ISA path and the machine's float32
matmul ceiling (NumPy and torch, 2048^3) beside the figures.

    pip install torch==2.13.0   # the anchor; attnkit itself never needs torch
    python bench/bench_lowp.py --sizes 1024 2048 4096 --dims 64 128 --threads 1 2 --out history/lowp_avx2_s21.json
"""

from __future__ import annotations

import _quiet_blas  # noqa: F401  (before NumPy: OpenBLAS's threads sleep at once after a call)
import argparse
import os
import statistics
import time
from pathlib import Path

import ml_dtypes
import numpy as np

import attnkit
from attnkit._bench import environment, matmul_ceiling, progress, torch_or_none, write_json

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = ("float32", "float16", "bfloat16")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--causal", choices=["both", "yes", "no"], default="both")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=None, help="results file name under bench/results (none: print only)")
    a = ap.parse_args(argv)
    torch = torch_or_none()
    env = environment(attnkit.get_num_threads())
    env["torch_isa"] = torch.backends.cpu.get_cpu_capability() if torch is not None else None
    rows = []
    causals = {"both": (False, True), "yes": (True,), "no": (False,)}[a.causal]
    ndt = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
    for threads in a.threads:
        attnkit.set_num_threads(threads)
        if torch is not None:
            torch.set_num_threads(threads)
        env.setdefault("matmul_2048_gflops", {})[str(threads)] = matmul_ceiling()
        progress(f"{env['cpu_model']}, isa {env['cpu_isa']}, {threads} thread(s), matmul 2048^3 GFLOP/s "
                 f"{env['matmul_2048_gflops'][str(threads)]}")
        for D in a.dims:
            for S in a.sizes:
                rng = np.random.default_rng(S * 1000 + D)
                x32 = [rng.standard_normal((1, 8, S, D)).astype(np.float32) for _ in range(3)]
                ins = {dt: [x.astype(ndt[dt]) for x in x32] for dt in DTYPES}
                if torch is not None:
                    tins = {dt: [torch.from_numpy(x).to(getattr(torch, dt)) for x in x32] for dt in DTYPES}
                for causal in causals:
                    fns = {}
                    for dt in DTYPES:
                        fns[("attnkit", dt)] = (lambda q, k, v, c=causal: attnkit.attention(q, k, v, causal=c), ins[dt])
                        if torch is not None:
                            sdpa = torch.nn.functional.scaled_dot_product_attention
                            fns[("torch", dt)] = (lambda q, k, v, c=causal: sdpa(q, k, v, is_causal=c), tins[dt])
                    times = {name: [] for name in fns}
                    walls = {name: [] for name in fns}
                    for rnd in range(a.reps + 1):  # round 0 warms up
                        for name, (fn, args) in fns.items():
                            t0, c0 = time.perf_counter(), time.process_time()
                            fn(*args)
                            if rnd:
                                times[name].append(time.process_time() - c0)
                                walls[name].append(time.perf_counter() - t0)
                    flops = 4.0 * D * 8 * (S * (S + 1) // 2 if causal else S * S)
                    row = {"threads": threads, "S": S, "D": D, "causal": causal, "rounds": a.reps}
                    for (lib, dt), ts in times.items():
                        row[f"{lib}_{dt}_s"] = statistics.median(ts)  # CPU seconds
                        row[f"{lib}_{dt}_wall_s"] = statistics.median(walls[(lib, dt)])
                        row[f"{lib}_{dt}_gflops"] = flops * threads / statistics.median(ts) / 1e9  # per CPU-s x threads
                    for dt in DTYPES:
                        row[f"attnkit_{dt}_vs_attnkit_float32"] = row["attnkit_float32_s"] / row[f"attnkit_{dt}_s"]
                        if torch is not None:
                            row[f"attnkit_{dt}_vs_torch_{dt}"] = row[f"torch_{dt}_s"] / row[f"attnkit_{dt}_s"]
                    rows.append(row)
                    progress(f"t={threads} D={D:3d} S={S:5d} causal={causal!s:5s} " + "  ".join(
                        f"{dt}: {row[f'attnkit_{dt}_gflops']:5.1f} GF/s {row[f'attnkit_{dt}_vs_attnkit_float32']:.2f}x f32"
                        + (f" {row[f'attnkit_{dt}_vs_torch_{dt}']:.2f}x torch" if torch is not None else "")
                        for dt in DTYPES))
    env["loadavg_after"] = os.getloadavg()
    if a.out:
        payload = {"benchmark": "exact attention, float32 / float16 / bfloat16, B=1, H=8: attnkit vs torch SDPA",
                   "method": f"one process, attnkit and torch called in alternation, medians of {a.reps} rounds after "
                             "a warm-up round; *_s is process CPU time (ratios use it), *_wall_s wall time, gflops = "
                             "FLOPs x threads / CPU s; the machine was shared with other builds (see loadavg)",
                   "env": env, "rows": rows}
        progress(f"wrote {write_json(RESULTS, a.out, payload)}")


if __name__ == "__main__":
    main()
