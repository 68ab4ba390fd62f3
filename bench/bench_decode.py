"""Decode on the CPU: attnkit vs PyTorch SDPA (enable_gqa=True) against the machine's memory-read ceiling.

A decode step reads every key and value row once per kv head (the query heads of a GQA group share them),
so its speed is the rate at which it reads K and V: GB/s = (K + V bytes) / time. The ceiling is measured
beside it, in the same process and the same rounds: NumPy reductions over an array far larger than the
cache (np.add.reduce, one thread; and a float32 matrix-vector dot, on as many BLAS threads as attnkit's). The
contenders (attnkit, torch SDPA, the ceiling) run round-robin (each round runs every one once) and the
medians are reported with their ratios: the machine may be shared, so absolute figures move, ratios much
less. Cases: float32 (--dtypes: also float16 / bfloat16, whose K and V are half the bytes), D=128, Sq in
{1, 4} query rows per head, Sk in {8192, 32768, 131072}, MHA 32:32 and GQA 32:8. Writes
bench/results/decode_<isa>.json.

--clock cpu times by process CPU time (a descheduled thread does not count; several threads sum), the
clock of the 1-thread tables on shared machines. --baseline DIR (a directory holding another build's
attnkit package, e.g. a build of main) runs --processes rounds of alternating worker processes, the
baseline's and this one's, and reports per-build medians of their per-process medians.

    pip install torch==2.13.0   # the anchor; attnkit itself never needs torch
    python bench/bench_decode.py [--sk 32768] [--reps 15] [--ceiling-gib 1.5]
    OMP_WAIT_POLICY=passive python bench/bench_decode.py --clock cpu --threads 1 --reps 7 --ceiling-gib 1 \
        --cases 32:32:1:8192 32:8:1:8192 32:8:1:32768 32:8:4:8192 32:8:8:4096 \
        --baseline /tmp/main-build/python --processes 3 --out history/decode_avx2_s24.json   # the s24 table
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import _quiet_blas  # noqa: F401  (before NumPy: OpenBLAS's threads sleep at once after the ceiling's dot)

import numpy as np  # noqa: E402

import attnkit  # noqa: E402
from attnkit._bench import environment, progress, set_clock, timeit_many, torch_or_none, write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def blas_threads(n: int) -> int | None:
    """Sets the threads of the OpenBLAS that NumPy loaded to n (ctypes, as threadpoolctl does: the BLAS dot of
    the ceiling must run on as many threads as attnkit, not on the BLAS default); returns the count BLAS then
    reports, or None where no OpenBLAS is found (another BLAS: its default threads)."""
    import ctypes

    try:
        paths = {line.split()[-1] for line in open("/proc/self/maps") if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return None
    for path in sorted(paths):
        lib = ctypes.CDLL(path)
        for suffix in ("64_", "_64_", ""):
            setter = getattr(lib, f"scipy_openblas_set_num_threads{suffix}", None) or getattr(
                lib, f"openblas_set_num_threads{suffix}", None)
            getter = getattr(lib, f"scipy_openblas_get_num_threads{suffix}", None) or getattr(
                lib, f"openblas_get_num_threads{suffix}", None)
            if setter is not None and getter is not None:
                setter(ctypes.c_int(n))
                return int(getter())
    return None


def ceiling_fns(gib: float, threads: int) -> tuple:
    """(contenders, bytes, BLAS threads): NumPy reductions over `gib` GiB of float32 (far larger than any
    cache), each reading the array once: np.add.reduce (one thread, compute-limited at ~14 GB/s on Zen 3)
    and a matrix-vector dot with a ones vector (BLAS on `threads` threads, set through blas_threads; at one
    thread it read 16.4 GB/s where the reduction read 14.0). The ceiling is the higher rate."""
    n = int(gib * 2**30) // 4 // 1024 * 1024
    a = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
    ones, a2 = np.ones(1024, np.float32), a.reshape(-1, 1024)
    nblas = blas_threads(threads)
    fns = {"ceiling_add_reduce": lambda: np.add.reduce(a), "ceiling_dot": lambda: a2 @ ones}
    return fns, a.nbytes, nblas


DTYPES = ("float32", "float16", "bfloat16")


def decode_case(Hq, Hkv, Sq, Sk, D, reps, torch, ceiling, dtype="float32"):
    import ml_dtypes

    rng = np.random.default_rng(1)
    nd = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}[dtype]
    q = rng.standard_normal((1, Hq, Sq, D), dtype=np.float32).astype(nd)
    k = rng.standard_normal((1, Hkv, Sk, D), dtype=np.float32).astype(nd)
    v = rng.standard_normal((1, Hkv, Sk, D), dtype=np.float32).astype(nd)
    fns = {"attnkit": lambda: attnkit.attention(q, k, v)}
    if torch is not None:
        def to_torch(x):  # (torch.from_numpy takes no ml_dtypes.bfloat16: its bits, viewed)
            return torch.from_numpy(x.view(np.int16)).view(torch.bfloat16) if dtype == "bfloat16" else torch.from_numpy(x)

        tq, tk, tv = (to_torch(x) for x in (q, k, v))
        sdpa = torch.nn.functional.scaled_dot_product_attention
        fns["torch"] = lambda: sdpa(tq, tk, tv, enable_gqa=Hq != Hkv)
        err = float(np.abs(fns["torch"]().float().numpy() - fns["attnkit"]().astype(np.float32)).max())
    fns.update(ceiling[0])
    t = timeit_many(fns, reps, warmup=2)
    kv_bytes = k.nbytes + v.nbytes
    t_case = {name: s for name, s in t.items() if not name.startswith("ceiling")}
    row = {"Hq": Hq, "Hkv": Hkv, "Sq": Sq, "Sk": Sk, "D": D, "dtype": dtype, "kv_mib": kv_bytes / 2**20,
           "median_s": t, "gbps": {name: kv_bytes / s / 1e9 for name, s in t_case.items()},
           "gflops": {name: 4 * Hq * Sq * Sk * D / s / 1e9 for name, s in t_case.items()},
           "ceiling_gbps": {name[8:]: ceiling[1] / s / 1e9 for name, s in t.items() if name.startswith("ceiling")}}
    best = max(row["ceiling_gbps"].values())
    row["of_ceiling"] = {name: g / best for name, g in row["gbps"].items()}
    row["attnkit_of_ceiling"] = row["of_ceiling"]["attnkit"]
    if torch is not None:
        row["torch_over_attnkit"] = t["torch"] / t["attnkit"]
        row["max_abs_diff_vs_torch"] = err
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sk", type=int, nargs="+", default=[8192, 32768, 131072])
    ap.add_argument("--sq", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--heads", nargs="+", default=["32:8", "32:32"], help="Hq:Hkv pairs")
    ap.add_argument("--cases", nargs="+", default=None, metavar="HQ:HKV:SQ:SK",
                    help="explicit cases instead of the --sk x --sq x --heads grid")
    ap.add_argument("--dtypes", nargs="+", choices=DTYPES, default=["float32"],
                    help="Q/K/V dtypes, each case in each (GB/s counts the bytes K and V take in that dtype)")
    ap.add_argument("--reps", type=int, default=15, help="round-robin rounds per case")
    ap.add_argument("--ceiling-gib", type=float, default=1.5)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="wall time or process CPU time")
    ap.add_argument("--threads", type=int, default=None, help="attnkit and torch threads (default: attnkit's)")
    ap.add_argument("--baseline", default=None, metavar="DIR",
                    help="another build's package directory: alternate worker processes, baseline and this one")
    ap.add_argument("--processes", type=int, default=3, help="worker processes per build with --baseline")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # prints its rows as JSON
    ap.add_argument("--max-kv-gib", type=float, default=1.0, help="skip cases whose K and V exceed this")
    ap.add_argument("--out", default=None, help="file name under bench/results (default decode_<isa>.json)")
    a = ap.parse_args(argv)
    if a.baseline:
        return compare_builds(a, sys.argv[1:] if argv is None else list(argv))
    set_clock(a.clock)
    if a.threads:
        attnkit.set_num_threads(a.threads)
    threads = attnkit.get_num_threads()
    torch = torch_or_none()
    if torch is not None:
        torch.set_num_threads(threads)
    env = environment(threads, ceiling=not a.worker)
    ceiling = ceiling_fns(a.ceiling_gib, threads)
    env["ceiling_blas_threads"] = ceiling[2]
    rows = []
    grid = [f"{hh}:{Sq}:{Sk}" for Sk in a.sk for Sq in a.sq for hh in a.heads]
    for case, dtype in [(c, dt) for dt in a.dtypes for c in a.cases or grid]:
        Hq, Hkv, Sq, Sk = map(int, case.split(":"))
        if Hkv * Sk * 128 * (4 if dtype == "float32" else 2) * 2 > a.max_kv_gib * 2**30:
            continue
        r = decode_case(Hq, Hkv, Sq, Sk, 128, a.reps, torch, ceiling, dtype)
        best = max(r["ceiling_gbps"].values())
        rows.append(r)
        progress(f"Hq={Hq} Hkv={Hkv} Sq={Sq} Sk={Sk} {dtype}: attnkit {r['gbps']['attnkit']:.1f} GB/s "
                 f"({100 * r['attnkit_of_ceiling']:.0f}% of {best:.1f})"
                 + (f", torch {r['gbps']['torch']:.1f} GB/s, torch/attnkit time "
                    f"{r['torch_over_attnkit']:.2f}x" if torch is not None else ""))
    env["loadavg_after"] = os.getloadavg()
    if a.worker:
        print(json.dumps({"env": env, "rows": rows}), flush=True)
        return
    summary = {
        "median_attnkit_of_ceiling": statistics.median(r["attnkit_of_ceiling"] for r in rows),
        "min_attnkit_of_ceiling": min(r["attnkit_of_ceiling"] for r in rows)}
    if torch is not None:
        summary["median_torch_over_attnkit"] = statistics.median(r["torch_over_attnkit"] for r in rows)
        summary["min_torch_over_attnkit"] = min(r["torch_over_attnkit"] for r in rows)
    payload = {"benchmark": f"decode, {'/'.join(a.dtypes)}, D=128, B=1: K/V read rate vs a NumPy reduction ceiling and torch SDPA",
               "method": f"medians of {a.reps} round-robin rounds (attnkit, torch and the ceiling, NumPy reductions "
                         f"over a {a.ceiling_gib} GiB array: np.add.reduce and a BLAS dot, the higher rate, alternate in one "
                         f"process, same thread count), "
                         f"clock: {env['clock']}",
               "env": env, "summary": summary, "rows": rows}
    name = a.out or f"decode_{env['cpu_isa']}.json"
    progress(f"wrote {write_json(RESULTS, name, payload)}")


def compare_builds(a, argv):
    """--baseline: --processes rounds of two worker processes (the baseline build's, then this one's), each
    running every case round-robin with torch and the ceiling; per-build medians of the per-process medians."""
    args = [x for i, x in enumerate(argv) if x != "--baseline" and (i == 0 or argv[i - 1] != "--baseline")]
    here = str(Path(attnkit.__file__).resolve().parents[1])
    builds = {"baseline": a.baseline, "this": here}
    runs = {name: [] for name in builds}
    for i in range(a.processes):
        for name, path in builds.items():
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([path, os.environ.get("PYTHONPATH", "")]))
            out = subprocess.run([sys.executable, __file__, *args, "--worker"], env=env, check=True,
                                 capture_output=True, text=True).stdout
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
            progress(f"process {i + 1}/{a.processes} {name}: " + ", ".join(
                f"{r['Hkv']}:{r['Sq']}:{r['Sk']}{'' if r['dtype'] == 'float32' else ':' + r['dtype']} "
                f"{100 * r['attnkit_of_ceiling']:.0f}%" for r in runs[name][-1]["rows"]))
    med = statistics.median
    rows = []
    for n, r0 in enumerate(runs["this"][0]["rows"]):
        row = {k: r0[k] for k in ("Hq", "Hkv", "Sq", "Sk", "D", "dtype", "kv_mib")}
        for name in builds:
            per = [run["rows"][n] for run in runs[name]]
            row[name] = {key: med(p[key] for p in per) for key in ("attnkit_of_ceiling",)}
            row[name]["attnkit_ms"] = med(1e3 * p["median_s"]["attnkit"] for p in per)
            row[name]["gbps"] = {k: med(p["gbps"][k] for p in per) for k in per[0]["gbps"]}
            row[name]["gflops"] = {k: med(p["gflops"][k] for p in per) for k in per[0]["gflops"]}
            row[name]["ceiling_gbps"] = med(max(p["ceiling_gbps"].values()) for p in per)
            if "torch_over_attnkit" in per[0]:
                row[name]["torch_over_attnkit"] = med(p["torch_over_attnkit"] for p in per)
                row[name]["torch_of_ceiling"] = med(p["of_ceiling"]["torch"] for p in per)
            row[name]["per_process_attnkit_of_ceiling"] = [round(p["attnkit_of_ceiling"], 3) for p in per]
        row["this_over_baseline_time"] = row["this"]["attnkit_ms"] / row["baseline"]["attnkit_ms"]
        rows.append(row)
        progress(f"Hq={row['Hq']} Hkv={row['Hkv']} Sq={row['Sq']} Sk={row['Sk']} {row['dtype']}: of ceiling baseline "
                 f"{100 * row['baseline']['attnkit_of_ceiling']:.1f}% this {100 * row['this']['attnkit_of_ceiling']:.1f}%,"
                 f" time this/baseline {row['this_over_baseline_time']:.3f}")
    set_clock(a.clock)
    env = environment(runs["this"][0]["env"]["threads"])  # this build's, with the matmul ceiling
    env["baseline"] = a.baseline
    env["loadavg_runs"] = [run["env"]["loadavg"] for name in builds for run in runs[name]]
    payload = {"benchmark": f"decode, {'/'.join(a.dtypes)}, D=128, B=1: two attnkit builds side by side, each with torch SDPA and "
                            "a NumPy memory-read ceiling in the same process",
               "method": f"{a.processes} rounds of alternating worker processes (baseline, this); each runs every case "
                         f"with {a.reps} round-robin rounds of attnkit, torch and the ceiling (np.add.reduce and a BLAS dot, "
                         f"the higher rate) over {a.ceiling_gib} GiB; "
                         f"figures: medians over processes of the per-process medians; clock: {env['clock']}",
               "env": env, "rows": rows, "runs": runs}
    name = a.out or f"decode_{env['cpu_isa']}.json"
    progress(f"wrote {write_json(RESULTS, name, payload)}")


if __name__ == "__main__":
    main()
