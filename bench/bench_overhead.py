"""Per-call host overhead: the time attnkit's Python layer and bindings add to a call whose kernel does
almost nothing (arrays of a few elements), in microseconds per call, for NumPy arrays and, when PyTorch is
installed, the same calls on torch CPU tensors side by side.

On a GPU the same Python path runs before every kernel launch, so this figure is the floor of a CuPy
(or PyTorch CUDA) decode step's wall time: what it measures here it costs there. Cases: attention
[1,1,1,8] x [1,1,4,8] (alone and with return_lse), linear_attention of the same size, and a
dynamic_linear_attention decode step (T = 1) from a cache of 16 tokens; np.dot of two 8-vectors anchors
the scale (the cheapest NumPy call). With PyTorch, ``torch <case>`` is the case on torch tensors of the
same values (``torch bf16 attention``: bfloat16 tensors; ``torch dla_decode``: a function that still
converts its tensors to NumPy views), and ``torch_overhead_us`` is a torch case less its NumPy case.
Each figure is the median over rounds of the mean of `--calls` calls, as wall time (``us_per_call``) and
process CPU time (``cpu_us_per_call``: the steadier one on a shared machine, a process waiting for a core
accrues none); the cases run round-robin. Writes bench/results/overhead_<isa>.json.

    python bench/bench_overhead.py [--calls 2000] [--rounds 15] [--no-torch] [--profile CASE]
    python bench/bench_overhead.py --baseline DIR [--procs 4]   # another build side by side

With ``--baseline DIR`` (a directory holding an ``attnkit`` package with its compiled ``_core``, e.g. a
build of main) the script runs itself in child processes, alternating the installed build and the
baseline (pybind11 cannot load two ``_core`` modules into one interpreter), `--procs` times each, and
reports the medians of both and their ratio new / baseline.
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

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def cases(with_torch: bool = True):
    """{name: zero-argument call} of the tiny calls timed."""
    import attnkit

    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 1, 1, 8), dtype=np.float32)
    k = rng.standard_normal((1, 1, 4, 8), dtype=np.float32)
    H, Dk, Dv, C = 1, 8, 8, 4
    x = rng.standard_normal((1, H, 17, Dk), dtype=np.float32)
    lam = np.ones((1, H, 17, C), np.float32)
    _, cache = attnkit.dynamic_linear_attention(x[:, :, :16], x[:, :, :16], x[:, :, :16], lam[:, :, :16],
                                                capacity=C)
    xt, lt = x[:, :, 16:], lam[:, :, 16:]
    a, b = q.ravel(), k[0, 0, 0]
    fns = {
        "np.dot": lambda: np.dot(a, b),
        "attention": lambda: attnkit.attention(q, k, k),
        "attention_lse": lambda: attnkit.attention(q, k, k, return_lse=True),
        "linear_attention": lambda: attnkit.linear_attention(k, k, k),
        "dla_decode": lambda: attnkit.dynamic_linear_attention(xt, xt, xt, lt, capacity=C, cache=cache),
    }
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None or not with_torch:
        return fns
    tq, tk, txt, tlt = (torch.from_numpy(x.copy()) for x in (q, k, xt, lt))
    bq, bk = tq.to(torch.bfloat16), tk.to(torch.bfloat16)
    fns.update({
        "torch attention": lambda: attnkit.attention(tq, tk, tk),
        "torch attention_lse": lambda: attnkit.attention(tq, tk, tk, return_lse=True),
        "torch bf16 attention": lambda: attnkit.attention(bq, bk, bk),
        "torch linear_attention": lambda: attnkit.linear_attention(tk, tk, tk),
        "torch dla_decode": lambda: attnkit.dynamic_linear_attention(txt, txt, txt, tlt, capacity=C, cache=cache),
    })
    return fns


def torch_overhead(us: dict) -> dict:
    """{torch case: its time less the same case on NumPy arrays} (bfloat16 against NumPy float32)."""
    return {c: t - us[c.split()[-1]] for c, t in us.items() if c.startswith("torch ")}


def measure(calls: int, rounds: int, threads: int, with_torch: bool = True) -> tuple:
    """({case: median wall microseconds per call}, {case: median process CPU microseconds per call})."""
    import attnkit

    attnkit.set_num_threads(threads)
    fns = cases(with_torch)
    for f in fns.values():  # warm-up
        for _ in range(max(calls // 10, 10)):
            f()
    wall, cpu = ({name: [] for name in fns} for _ in range(2))
    for _ in range(rounds):
        for name, f in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(calls):
                f()
            wall[name].append((time.perf_counter() - t0) / calls * 1e6)
            cpu[name].append((time.process_time() - c0) / calls * 1e6)
    med = lambda d: {name: statistics.median(v) for name, v in d.items()}  # noqa: E731
    return med(wall), med(cpu)


def profile(case: str, calls: int) -> None:
    """A cProfile of `calls` calls of one case (where its time goes, by function)."""
    import cProfile
    import pstats

    fn = cases()[case]
    for _ in range(100):
        fn()
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(calls):
        fn()
    pr.disable()
    pstats.Stats(pr).sort_stats("tottime").print_stats(25)


def environment() -> dict:
    import attnkit
    from attnkit._bench import environment as env

    e = env(attnkit.get_num_threads())
    e["attnkit_file"] = attnkit.__file__
    return e


def child(build: str | None, calls: int, rounds: int, threads: int, with_torch: bool) -> dict:
    """measure() in a fresh interpreter, with `build` (a directory) first on the import path."""
    env = dict(os.environ)
    if build is not None:
        env["PYTHONPATH"] = build + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, __file__, "--child", "--calls", str(calls), "--rounds", str(rounds), "--threads", str(threads)]
    cmd += [] if with_torch else ["--no-torch"]
    out = subprocess.run(cmd,
                         env=env, check=True, capture_output=True, text=True, cwd="/").stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=2000, help="calls per timed batch")
    ap.add_argument("--rounds", type=int, default=15, help="timed batches per case")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU backend threads (default 1: waking a thread team is no host overhead of a GPU call)")
    ap.add_argument("--baseline", default=None, help="directory holding a baseline attnkit package")
    ap.add_argument("--procs", type=int, default=4, help="child processes per build with --baseline")
    ap.add_argument("--out", default=None, help="file name under bench/results (default overhead_<isa>.json)")
    ap.add_argument("--no-torch", action="store_true", help="NumPy cases only, even where PyTorch is installed")
    ap.add_argument("--profile", default=None, metavar="CASE", help="print a cProfile of one case instead")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    with_torch = not a.no_torch
    if a.profile:
        import attnkit

        attnkit.set_num_threads(a.threads)
        profile(a.profile, a.calls)
        return
    if a.child:
        wall, cpu = measure(a.calls, a.rounds, a.threads, with_torch)
        print(json.dumps({"us": wall, "cpu_us": cpu, "env": environment()}))
        return
    if a.baseline is None:
        runs = {"attnkit": [child(None, a.calls, a.rounds, a.threads, with_torch)]}
    else:
        runs = {"attnkit": [], "baseline": []}
        for _ in range(a.procs):  # alternate the builds, so load changes land on both
            runs["attnkit"].append(child(None, a.calls, a.rounds, a.threads, with_torch))
            runs["baseline"].append(child(os.path.abspath(a.baseline), a.calls, a.rounds, a.threads, with_torch))
    env = runs["attnkit"][0]["env"]
    med = lambda key: {build: {case: statistics.median(r[key][case] for r in rs) for case in rs[0][key]}  # noqa: E731
                       for build, rs in runs.items()}
    us, cpu = med("us"), med("cpu_us")
    print(f"# {env['cpu_model']}, isa {env['cpu_isa']}, threads {env['threads']}, load {env['loadavg']}")
    print(f"# microseconds per call, wall / process CPU time; torch cases also less their NumPy case")
    print(f"{'case':24s}" + "".join(f"{b:>22s}" for b in us) + ("   new/base (CPU)" if "baseline" in us else ""))
    over = {b: torch_overhead(cpu[b]) for b in cpu}
    for case in us["attnkit"]:
        line = f"{case:24s}" + "".join(f"{us[b][case]:10.2f} /{cpu[b][case]:8.2f}us" for b in us)
        if "baseline" in us:
            line += f"   {cpu['attnkit'][case] / cpu['baseline'][case]:8.2f}"
        if case in over["attnkit"]:
            line += "   torch extra (CPU): " + ", ".join(f"{b} {over[b][case]:+.2f}" for b in us)
        print(line)
    payload = {"environment": env, "calls": a.calls, "rounds": a.rounds, "us_per_call": us, "cpu_us_per_call": cpu,
               "torch_overhead_cpu_us": over,
               "runs": {b: [r["us"] for r in rs] for b, rs in runs.items()},
               "cpu_runs": {b: [r["cpu_us"] for r in rs] for b, rs in runs.items()}}
    if "baseline" in us:
        payload["baseline"] = {"dir": os.path.abspath(a.baseline), "attnkit_file": runs["baseline"][0]["env"]["attnkit_file"]}
        payload["ratio_new_over_baseline"] = {c: us["attnkit"][c] / us["baseline"][c] for c in us["attnkit"]}
        payload["cpu_ratio_new_over_baseline"] = {c: cpu["attnkit"][c] / cpu["baseline"][c] for c in cpu["attnkit"]}
    from attnkit._bench import write_json

    path = write_json(RESULTS, a.out or f"overhead_{env['cpu_isa']}.json", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
