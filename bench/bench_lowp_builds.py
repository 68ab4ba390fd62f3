"""Exact attention in float16 / bfloat16 against float32, two builds side by side (issue 11 item 2: the
before/after of a lowp change), with torch 2.13 CPU SDPA in the same dtypes beside them.

Each build (a directory holding an `attnkit` package with its compiled `_core`) runs in its own worker
process (pybind11 cannot load two `_core` modules into one interpreter); torch runs in the first worker.
Every contender (build x dtype, torch x dtype) is called in turn, one call at a time, for --reps rounds after
a warm-up round; the figures are medians of process CPU time (OMP_WAIT_POLICY=passive, --threads threads).
Cases are D:S:causal, B=1, H=8.

    python bench/bench_lowp_builds.py --dirs base=/tmp/base new=/tmp/new --torch \
        --cases 64:1024:0 128:1024:1 --reps 5 --out history/lowp_avx2_s<N>.json

--out is a path under bench/results, as in the other bench scripts (an absolute path is kept as it is).
"""
import argparse, os, statistics, json
from _workers import ask, rounds, spawn
WORKER = r'''
import sys, time, os
import numpy as np, ml_dtypes
import attnkit
attnkit.set_num_threads(int(sys.argv[1]))
use_torch = sys.argv[2] == "1"
if use_torch:
    import torch; torch.set_num_threads(int(sys.argv[1]))
cache = {}
def get(D, S, dt):
    key = (D, S)
    if key not in cache:
        rng = np.random.default_rng(S * 1000 + D)
        cache[key] = [rng.standard_normal((1, 8, S, D)).astype(np.float32) for _ in range(3)]
    x = cache[key]
    nd = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}[dt]
    return [a.astype(nd) for a in x]
tc = {}
print("ready", flush=True)
for line in sys.stdin:
    lib, D, S, c, dt = line.split()
    D, S, c = int(D), int(S), c == "1"
    k = (lib, D, S, dt)
    if k not in tc:
        xs = get(D, S, dt)
        tc[k] = xs if lib == "ak" else [torch.from_numpy(a.astype(np.float32)).to(getattr(torch, dt)) for a in xs]
    xs = tc[k]
    t = time.process_time()
    if lib == "ak": attnkit.attention(*xs, causal=c)
    else: torch.nn.functional.scaled_dot_product_attention(*xs, is_causal=c)
    print(time.process_time() - t, flush=True)
'''
ap = argparse.ArgumentParser()
ap.add_argument("--dirs", nargs="+")
ap.add_argument("--cases", nargs="+")
ap.add_argument("--threads", default="1")
ap.add_argument("--reps", type=int, default=5)
ap.add_argument("--dtypes", nargs="+", default=["float32", "float16", "bfloat16"])
ap.add_argument("--torch", action="store_true")
ap.add_argument("--out", help="path under bench/results (absolute: as given)")
a = ap.parse_args()
if a.out:  # where it ran (CPU model, ISA path, matmul ceiling), by this checkout's attnkit._bench
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "python"))
    from attnkit._bench import environment_in
    run_env = environment_in(a.dirs[0].split("=")[1], int(a.threads))
env = dict(os.environ, OMP_WAIT_POLICY="passive", OMP_NUM_THREADS=a.threads)
ws = {}
for i, d in enumerate(a.dirs):
    name, path = d.split("=")
    e = dict(env, PYTHONPATH=path)
    p = spawn(WORKER, [a.threads, "1" if (a.torch and i == 0) else "0"], env=e, cwd="/tmp")
    assert p.stdout.readline().strip() == "ready"
    ws[name] = p
rows = []
for case in a.cases:
    D, S, c = case.split(":")
    contenders = [(n, "ak", dt) for dt in a.dtypes for n in ws]
    if a.torch: contenders += [(a.dirs[0].split("=")[0], "torch", dt) for dt in a.dtypes]
    t = rounds(contenders, lambda x: float(ask(ws[x[0]], f"{x[1]} {D} {S} {c} {x[2]}")), a.reps)
    med = {x: statistics.median(v) for x, v in t.items()}
    row = {"D": int(D), "S": int(S), "causal": c == "1"}
    for (n, lib, dt), m in med.items():
        row[f"{lib if lib=='torch' else n}_{dt}_s"] = m
    line = f"D={D} S={S} c={c}: "
    for n in ws:
        f32 = med[(n, "ak", "float32")] if "float32" in a.dtypes else None
        for dt in a.dtypes:
            if dt == "float32": continue
            m = med[(n, "ak", dt)]
            s = f"{n} {dt} {m*1e3:.1f}ms"
            if f32: s += f" {f32/m:.2f}xf32"; row[f"{n}_{dt}_vs_{n}_float32"] = f32 / m
            if a.torch:
                tt = med[(a.dirs[0].split('=')[0], 'torch', dt)]; s += f" {tt/m:.2f}xtorch"; row[f"{n}_{dt}_vs_torch_{dt}"] = tt / m
            line += s + " | "
        if f32:
            line += f"{n} f32 {f32*1e3:.1f}ms"
            first = next(iter(ws))
            if n != first:  # float32 of this build against the first (baseline) build's
                r = med[(first, "ak", "float32")] / f32
                row[f"{n}_float32_vs_{first}_float32"] = r
                line += f" {r:.3f}x{first}"
            if a.torch:
                tt = med[(first, "torch", "float32")]
                row[f"{n}_float32_vs_torch_float32"] = tt / f32
                line += f" {tt/f32:.2f}xtorch"
            line += " | "
    print(line, flush=True)
    rows.append(row)
print("load", os.getloadavg())
if a.out:
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", a.out)  # an absolute a.out wins
    os.makedirs(os.path.dirname(out), exist_ok=True)
    json.dump({"env": run_env, "rows": rows, "load_after": os.getloadavg(), "threads": a.threads, "reps": a.reps}, open(out, "w"), indent=1)
