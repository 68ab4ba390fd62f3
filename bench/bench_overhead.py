"""Per-call host overhead: the time attnkit's Python layer and bindings add to a call whose kernel does
almost nothing (NumPy arrays of a few elements), in microseconds per call.

On a GPU the same Python path runs before every kernel launch, so this figure is the floor of a CuPy
decode step's wall time: what it measures here it costs there. Cases: attention [1,1,1,8] x [1,1,4,8]
(alone and with return_lse), linear_attention of the same size, and a dynamic_linear_attention decode
step (T = 1) from a cache of 16 tokens; np.dot of two 8-vectors anchors the scale (the cheapest NumPy
call). Each figure is the median over rounds of the mean of `--calls` calls; the cases run round-robin.
Writes bench/results/overhead_<isa>.json.

    python bench/bench_overhead.py [--calls 2000] [--rounds 15]
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


def cases():
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
    return {
        "np.dot": lambda: np.dot(a, b),
        "attention": lambda: attnkit.attention(q, k, k),
        "attention_lse": lambda: attnkit.attention(q, k, k, return_lse=True),
        "linear_attention": lambda: attnkit.linear_attention(k, k, k),
        "dla_decode": lambda: attnkit.dynamic_linear_attention(xt, xt, xt, lt, capacity=C, cache=cache),
    }


def measure(calls: int, rounds: int, threads: int) -> dict:
    """{case: median microseconds per call}."""
    import attnkit

    attnkit.set_num_threads(threads)
    fns = cases()
    for f in fns.values():  # warm-up
        for _ in range(max(calls // 10, 10)):
            f()
    per = {name: [] for name in fns}
    for _ in range(rounds):
        for name, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                f()
            per[name].append((time.perf_counter() - t0) / calls * 1e6)
    return {name: statistics.median(v) for name, v in per.items()}


def environment() -> dict:
    import attnkit
    from attnkit._bench import environment as env

    e = env(attnkit.get_num_threads())
    e["attnkit_file"] = attnkit.__file__
    return e


def child(build: str | None, calls: int, rounds: int, threads: int) -> dict:
    """measure() in a fresh interpreter, with `build` (a directory) first on the import path."""
    env = dict(os.environ)
    if build is not None:
        env["PYTHONPATH"] = build + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, __file__, "--child", "--calls", str(calls), "--rounds", str(rounds), "--threads", str(threads)]
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
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps({"us": measure(a.calls, a.rounds, a.threads), "env": environment()}))
        return
    if a.baseline is None:
        runs = {"attnkit": [child(None, a.calls, a.rounds, a.threads)]}
    else:
        runs = {"attnkit": [], "baseline": []}
        for _ in range(a.procs):  # alternate the builds, so load changes land on both
            runs["attnkit"].append(child(None, a.calls, a.rounds, a.threads))
            runs["baseline"].append(child(os.path.abspath(a.baseline), a.calls, a.rounds, a.threads))
    env = runs["attnkit"][0]["env"]
    us = {build: {case: statistics.median(r["us"][case] for r in rs) for case in rs[0]["us"]}
          for build, rs in runs.items()}
    print(f"# {env['cpu_model']}, isa {env['cpu_isa']}, threads {env['threads']}, load {env['loadavg']}")
    print(f"{'case':18s}" + "".join(f"{b:>12s}" for b in us) + ("   new/base" if "baseline" in us else ""))
    for case in us["attnkit"]:
        line = f"{case:18s}" + "".join(f"{us[b][case]:10.2f}us" for b in us)
        if "baseline" in us:
            line += f"   {us['attnkit'][case] / us['baseline'][case]:8.2f}"
        print(line)
    payload = {"environment": env, "calls": a.calls, "rounds": a.rounds, "us_per_call": us,
               "runs": {b: [r["us"] for r in rs] for b, rs in runs.items()}}
    if "baseline" in us:
        payload["baseline"] = {"dir": os.path.abspath(a.baseline), "attnkit_file": runs["baseline"][0]["env"]["attnkit_file"]}
        payload["ratio_new_over_baseline"] = {c: us["attnkit"][c] / us["baseline"][c] for c in us["attnkit"]}
    from attnkit._bench import write_json

    path = write_json(RESULTS, a.out or f"overhead_{env['cpu_isa']}.json", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
