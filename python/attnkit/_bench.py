"""Benchmark plumbing shared by ``bench/*.py`` and ``attnkit bench``: timing (warm-up + median),
the NumPy / PyTorch anchors, environment facts and JSON output. Not part of the stable API."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from . import _core



def tuned(fn, **options):
    """fn() run under backend tuning options (attnkit._tuning), e.g. tuned(f, linear_chunk=16)."""
    from ._tuning import tuning

    def run():
        with tuning(**options):
            return fn()

    return run

# The clock of timeit / timeit_many (set_clock): wall time, or the process's CPU time, which a shared,
# loaded machine inflates far less (a descheduled thread does not count; with several threads it sums them).
# With several threads, run under OMP_WAIT_POLICY=passive (environment() records it): OpenMP threads
# otherwise spin while they wait, and on a loaded machine that spinning, counted as CPU time, swamped short
# calls (a 0.4 ms DLA decode step read as 12 ms of CPU time at 2 threads, load ~12 on 2 cores).
_CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = ["wall"]


def set_clock(name: str) -> None:
    """Times later timeit / timeit_many calls by `name`: "wall" (the default) or "cpu" (process CPU time)."""
    if name not in _CLOCKS:
        raise ValueError(f"clock must be one of {sorted(_CLOCKS)}, got {name!r}")
    _clock[0] = name


def timeit(fn, reps: int = 5, warmup: int = 1, min_time: float = 0.0) -> float:
    """Median time of fn() in seconds (by the clock set_clock chose): `warmup` discarded runs, then at
    least `reps` runs and at least `min_time` wall seconds (at most 50 runs)."""
    for _ in range(warmup):
        fn()
    clock = _CLOCKS[_clock[0]]
    times = []
    t_start = time.perf_counter()
    while len(times) < reps or (time.perf_counter() - t_start) < min_time:
        t0 = clock()
        fn()
        times.append(clock() - t0)
        if len(times) >= 50:
            break
    return statistics.median(times)


def timeit_many(fns: dict, reps: int = 5, warmup: int = 1, min_time: float = 0.0) -> dict:
    """Median times (by the clock set_clock chose) of several contenders measured round-robin (each round
    runs every contender once), so machine noise lands on all of them alike. Returns {name: seconds}."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    clock = _CLOCKS[_clock[0]]
    times = {k: [] for k in fns}
    t_start = time.perf_counter()
    rounds = 0
    while rounds < reps or (time.perf_counter() - t_start) < min_time:
        for k, f in fns.items():
            t0 = clock()
            f()
            times[k].append(clock() - t0)
        rounds += 1
        if rounds >= 50:
            break
    return {k: statistics.median(v) for k, v in times.items()}


def torch_or_none():
    try:
        import torch
    except ImportError:
        return None
    return torch


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), so every figure says where it ran."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def matmul_ceiling(n: int = 2048, reps: int = 3) -> dict:
    """The machine's float32 matrix-multiply rate (GFLOP/s of n^3 products, median of reps): NumPy's sgemm,
    and torch.matmul where torch is installed. Issue 11 measures the exact kernel against the higher one."""
    a, b = (np.random.default_rng(1).standard_normal((n, n)).astype(np.float32) for _ in range(2))
    fns = {"numpy": lambda: a @ b}
    torch = torch_or_none()
    if torch is not None:
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        fns["torch"] = lambda: ta @ tb
    return {k: round(2.0 * n**3 / t / 1e9, 1) for k, t in timeit_many(fns, reps).items()}


def environment(threads: int, ceiling: bool = True) -> dict:
    """Where a benchmark ran: versions, the CPU model and the ISA path, threads, the load average (the
    machines are shared: a figure taken under load says so) and, unless ceiling is False, the machine's
    2048^3 float32 matrix-multiply rate (``matmul_2048_gflops``, about a second), the yardstick of its
    speed figures, timed by the clock set_clock chose (with "cpu": GFLOP per CPU-second of all the BLAS
    threads, which equals the wall-time rate only on an idle machine)."""
    env = {"attnkit": _core.version(), "cpu_model": cpu_model(), "cpu_isa": _core.cpu_isa(),
           "cuda_built": _core.built_with_cuda(), "loadavg": os.getloadavg(),
           "python": sys.version.split()[0], "numpy": np.__version__, "machine": platform.machine(),
           "cpus": os.cpu_count(), "threads": threads,
           "clock": {"wall": "wall time", "cpu": "process CPU time"}[_clock[0]],
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
           # OpenBLAS threads spin ~0.1 s after each call (this ceiling's sgemm among them) unless this is
           # set before NumPy loads (the CPU benchmarks set it: bench/_quiet_blas.py): it says which ran here.
           "openblas_thread_timeout": os.environ.get("OPENBLAS_THREAD_TIMEOUT"),
           "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    torch = torch_or_none()
    if torch is not None:
        env["torch"] = torch.__version__
    if ceiling:
        env["matmul_2048_gflops"] = matmul_ceiling()
    return env


def environment_in(package_dir, threads: int, clock: str = "cpu") -> dict:
    """environment(threads) as reported by the attnkit package in `package_dir`, in a fresh interpreter
    under OMP_NUM_THREADS=threads and OMP_WAIT_POLICY=passive (so the matmul ceiling is timed on that many
    threads, by `clock`): where a run ran, for the scripts that drive builds in worker processes and load
    none themselves (bench/bench_lowp_builds.py)."""
    code = ("import json, sys, attnkit._bench as b; b.set_clock(sys.argv[2]); "
            "print(json.dumps(b.environment(int(sys.argv[1]))))")
    env = dict(os.environ, PYTHONPATH=os.path.abspath(str(package_dir)), OMP_NUM_THREADS=str(threads),
               OMP_WAIT_POLICY="passive")
    res = subprocess.run([sys.executable, "-c", code, str(threads), clock], env=env, cwd="/", check=True,
                         capture_output=True, text=True)
    e = json.loads(res.stdout.strip().splitlines()[-1])
    e["package_dir"] = os.path.abspath(str(package_dir))
    return e


def result_name(stem: str, env: dict) -> str:
    """A results file's default name: one file per ISA path measured (``attention_avx2.json``)."""
    return f"{stem}_{env['cpu_isa']}.json"


def write_json(directory, name: str, payload: dict) -> Path:
    """Writes payload as JSON to directory/name (a name may hold a subfolder: ``history/x.json``). The
    environment() record in it (under "env" or "environment") gets the load average at the end of the run
    (``loadavg_after``) unless it has one."""
    for key in ("env", "environment"):
        if isinstance(payload.get(key), dict):
            payload[key].setdefault("loadavg_after", os.getloadavg())
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def vm_mib(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM ...) in MiB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def peak_rss(fn):
    """``(fn(), resident MiB before the call, peak resident MiB during it)`` of one call in this process
    (Linux). The high-water mark is reset first through /proc/self/clear_refs (ru_maxrss would carry the
    parent's peak across exec)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = vm_mib("VmRSS")
    result = fn()
    return result, before, vm_mib("VmHWM")


def add_run_arguments(ap, isa_sizes) -> None:
    """The options of bench_sparse / bench_linear / bench_dla that say how they run (see apply_run_arguments)."""
    ap.add_argument("--threads", type=int, nargs="+", default=None,
                    help="thread counts, each measured in turn (default: attnkit's current count)")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="process CPU time (default; robust on a shared machine, sums the threads) or wall time")
    ap.add_argument("--vs-isa", default=None, metavar="ISA",
                    help="also time each mechanism on this lower ISA path (e.g. generic) beside this one (isa_rows)")
    ap.add_argument("--vs-isa-sizes", type=int, nargs="+", default=isa_sizes, help="sizes of the --vs-isa rows")


def apply_run_arguments(a) -> list:
    """Sets the clock from parsed add_run_arguments options; returns the thread counts to measure."""
    set_clock(a.clock)
    return a.threads or [_core.get_num_threads()]


def add_rss_arguments(ap, S: int) -> None:
    """The options of a benchmark script that measures peak RSS in a child process (see rss_in_child)."""
    ap.add_argument("--no-rss", action="store_true")
    ap.add_argument("--rss-S", type=int, default=S)
    ap.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)  # the child that measures


def rss_in_child(script, S: int, what: str = "causal, H=8, D=64") -> dict:
    """Runs ``script --rss-child --rss-S S`` in a fresh interpreter (so the peak is that call's alone) and
    returns the JSON object the child prints."""
    progress(f"peak RSS at S={S} ({what}) ...")
    res = subprocess.run([sys.executable, str(script), "--rss-child", "--rss-S", str(S)], check=True,
                         capture_output=True, text=True)
    payload = json.loads(res.stdout)
    progress(json.dumps(payload))
    return payload


# --------------------------------------------------------------------------------------- exact attention
def numpy_plain(q, k, v, causal):
    """Plain NumPy, the textbook form users write: softmax(q k^T / sqrt(D)) v over the whole batch."""
    s = (q @ k.swapaxes(-1, -2)) / np.sqrt(q.shape[-1])
    if causal:
        S, Sk = s.shape[-2:]
        s = np.where(np.tril(np.ones((S, Sk), bool), Sk - S), s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return w @ v


def numpy_loop(q, k, v, causal):
    """Careful NumPy: one head at a time, in-place softmax (a stronger anchor than the plain form)."""
    out = np.empty(q.shape[:-1] + (v.shape[-1],), q.dtype)
    S, Sk = q.shape[2], k.shape[2]
    scale = np.float32(1.0 / np.sqrt(q.shape[-1]))
    tri = np.triu(np.ones((S, Sk), bool), 1 + Sk - S) if causal else None
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            s = (q[b, h] @ k[b, h].T) * scale
            if causal:
                s[tri] = -np.inf
            s -= s.max(-1, keepdims=True)
            np.exp(s, out=s)
            s /= s.sum(-1, keepdims=True)
            out[b, h] = s @ v[b, h]
    return out


def causal_pairs(S: int, causal: bool) -> int:
    return S * (S + 1) // 2 if causal else S * S


def exact_rows(sizes, reps=5, H=8, D=64, with_numpy=True, with_torch=True, report=progress, min_time=0.3):
    """attnkit.attention vs torch SDPA vs NumPy (plain and loop), float32, B=1; one dict per row."""
    from . import attention

    threads = _core.get_num_threads()
    torch = torch_or_none() if with_torch else None
    if torch is not None:
        torch.set_num_threads(threads)
    rows = []
    rng = np.random.default_rng(0)
    for S in sizes:
        q, k, v = (rng.standard_normal((1, H, S, D)).astype(np.float32) for _ in range(3))
        for causal in (False, True):
            flops = 4.0 * D * H * causal_pairs(S, causal)
            row = {"S": S, "causal": causal}
            fns = {"attnkit": lambda: attention(q, k, v, causal=causal)}
            if torch is not None:
                tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
                f = torch.nn.functional.scaled_dot_product_attention
                fns["torch"] = lambda: f(tq, tk, tv, is_causal=causal)
            for key, t in timeit_many(fns, reps, min_time=min_time).items():
                row[f"{key}_s"] = t
            if with_numpy:
                row["numpy_s"] = timeit(lambda: numpy_plain(q, k, v, causal), max(1, reps // 2))
                row["numpy_loop_s"] = timeit(lambda: numpy_loop(q, k, v, causal), max(1, reps // 2))
            for key in ("attnkit", "torch", "numpy", "numpy_loop"):
                if f"{key}_s" in row:
                    row[f"{key}_gflops"] = flops / row[f"{key}_s"] / 1e9
            for key in ("torch", "numpy", "numpy_loop"):
                if f"{key}_s" in row:
                    row[f"speedup_vs_{key}"] = row[f"{key}_s"] / row["attnkit_s"]
            rows.append(row)
            if report:
                report(format_exact_row(row))
    return rows


def format_exact_row(r) -> str:
    s = f"S={r['S']:6d} causal={str(r['causal']):5s}  attnkit {r['attnkit_s'] * 1e3:8.2f} ms {r['attnkit_gflops']:6.1f} GF/s"
    if "torch_s" in r:
        s += f" | torch {r['torch_s'] * 1e3:8.2f} ms ({r['speedup_vs_torch']:.2f}x)"
    if "numpy_s" in r:
        s += f" | numpy {r['numpy_s'] * 1e3:8.2f} ms ({r['speedup_vs_numpy']:.1f}x)"
        s += f" | numpy-loop {r['numpy_loop_s'] * 1e3:8.2f} ms ({r['speedup_vs_numpy_loop']:.1f}x)"
    return s


# ------------------------------------------------------------------------------- sparse attention
def sparse_layouts(S: int, block: int = 64):
    """The benchmark's layouts: BigBird (band 1, 1 global, 2 random blocks per row) and Longformer
    (band 2, one global token)."""
    from . import layouts

    return {"bigbird": layouts.bigbird(S, block, seed=0, window_blocks=1, global_blocks=1, random_blocks=2),
            "longformer": layouts.longformer(S, block, 2, global_tokens=[0])}


def sparse_rows(sizes, reps=3, H=8, D=64, bucket=64, report=progress, min_time=0.3):
    """Block-sparse (BigBird, Longformer) and LSH attention vs dense attnkit attention, float32, B=1.

    For each layout: its density and time / (density * dense time) — the issue's bound is 1.3 plus a small
    constant. LSH uses num_buckets = S / bucket so the mean bucket size stays `bucket` as S grows; its
    hashing (q and k, O(S * D * num_buckets) by definition, so ~S^2 / bucket here) is also timed alone."""
    from . import attention, block_sparse_attention, lsh_attention, lsh_buckets

    rows = []
    rng = np.random.default_rng(0)
    for S in sizes:
        q, k, v = (rng.standard_normal((1, H, S, D)).astype(np.float32) for _ in range(3))
        fns = {"dense": lambda: attention(q, k, v)}
        lays = sparse_layouts(S)
        for name, L in lays.items():
            fns[name] = (lambda L=L: block_sparse_attention(q, k, v, L))
        nb = max(2, 2 * (S // bucket // 2))
        fns["lsh"] = lambda: lsh_attention(q, k, v, num_buckets=nb, num_hashes=1, seed=0)
        fns["lsh_hash"] = lambda: (lsh_buckets(q, num_buckets=nb), lsh_buckets(k, num_buckets=nb))
        t = timeit_many(fns, reps, min_time=min_time)
        row = {"S": S, "dense_s": t["dense"], "lsh_s": t["lsh"], "lsh_hash_s": t["lsh_hash"],
               "lsh_num_buckets": nb, "lsh_speedup_vs_dense": t["dense"] / t["lsh"]}
        for name, L in lays.items():
            row[f"{name}_s"] = t[name]
            row[f"{name}_density"] = L.density
            row[f"{name}_vs_density_x_dense"] = t[name] / (L.density * t["dense"])
        rows.append(row)
        if report:
            report(format_sparse_row(row))
    for a, b in zip(rows, rows[1:]):
        if b["S"] == 2 * a["S"]:
            b["lsh_scaling"] = b["lsh_s"] / a["lsh_s"]
            b["lsh_without_hash_scaling"] = (b["lsh_s"] - b["lsh_hash_s"]) / (a["lsh_s"] - a["lsh_hash_s"])
            b["dense_scaling"] = b["dense_s"] / a["dense_s"]
    return rows


def format_sparse_row(r) -> str:
    s = f"S={r['S']:6d}  dense {r['dense_s'] * 1e3:8.2f} ms"
    for name in ("bigbird", "longformer"):
        s += (f" | {name} {r[name + '_s'] * 1e3:7.2f} ms (density {r[name + '_density']:.3f}, "
              f"{r[name + '_vs_density_x_dense']:.2f} x density*dense)")
    s += (f" | lsh(b={r['lsh_num_buckets']}) {r['lsh_s'] * 1e3:7.2f} ms ({r['lsh_speedup_vs_dense']:.1f}x faster"
          f" than dense; hashing {r['lsh_hash_s'] * 1e3:.2f} ms)")
    return s


# ----------------------------------------------------------------------------- dynamic linear attention
def dla_data(S: int, H: int = 8, D: int = 64, C: int = 30, seed: int = 0, block=(8, 40), noise: float = 0.05):
    """Realistic DLA inputs, float32, B=1: piecewise-stationary k and v (blocks of `block` tokens sharing a
    direction, plus a little noise, so token_vs_state scores sit near 0.1 inside a block and near 1.3 at
    a change: boundaries at every block change, merges once a head has seen C of them), Gaussian q
    and positive readout weights lam summing to about 1."""
    rng = np.random.default_rng(seed)
    k = np.empty((1, H, S, D), np.float32)
    v = np.empty((1, H, S, D), np.float32)
    for h in range(H):
        t = 0
        while t < S:
            e = min(S, t + int(rng.integers(block[0], block[1] + 1)))
            kd, vd = rng.standard_normal(D), rng.standard_normal(D)
            k[0, h, t:e] = kd / np.linalg.norm(kd) + noise / np.sqrt(D) * rng.standard_normal((e - t, D))
            v[0, h, t:e] = vd * np.sqrt(D) / np.linalg.norm(vd) + noise * rng.standard_normal((e - t, D))
            t = e
    q = (rng.standard_normal((1, H, S, D)) / np.sqrt(D)).astype(np.float32)
    lam = (rng.random((1, H, S, C)) * 2 / C).astype(np.float32)
    return q, k, v, lam


def linear_attention_or_none():
    """attnkit.linear_attention when this build has it (it arrives with the linear-attention issue)."""
    import attnkit

    return getattr(attnkit, "linear_attention", None)


def dla_rows(sizes, reps=3, H=8, D=64, C=30, tau=0.6, decode_reps=30, with_exact=True, with_recurrent=True,
             report=progress, min_time=0.0):
    """DLA prefill and decode side by side with exact attention (causal) and, when this build has it,
    linear attention (identity map, causal, unnormalized: DLA with lam = 1). One dict per S."""
    from . import attention, dynamic_linear_attention as dla

    linear = linear_attention_or_none()
    rows = []
    for S in sizes:
        q, k, v, lam = dla_data(S, H, D, C)
        y, cache, aux = dla(q, k, v, lam, capacity=C, tau=tau, return_aux=True)
        row = {"S": S, "H": H, "D": D, "C": C, "tau": tau,
               "boundaries": int(aux.boundaries.sum()), "merges": int((aux.merged >= 0).sum()),
               "states_at_end": int(cache.size.min())}
        g = np.full((1, H, S), -0.01, np.float32)
        fns = {"dla": lambda: dla(q, k, v, lam, capacity=C, tau=tau),
               "dla_decay": lambda: dla(q, k, v, lam, capacity=C, tau=tau, log_decay=g)}
        if with_recurrent:  # the chunked form one token at a time
            fns["dla_recurrent"] = tuned(lambda: dla(q, k, v, lam, capacity=C, tau=tau), dla_chunk=1)
        if with_exact:
            fns["exact"] = lambda: attention(q, k, v, causal=True)
        if linear is not None:
            fns["linear"] = lambda: linear(q, k, v, feature_map="identity", normalize=False, causal=True)
        for key, t in timeit_many(fns, reps, min_time=min_time).items():
            row[f"prefill_{key}_s"] = t
            row[f"prefill_{key}_tok_s"] = S / t
        # Decode: T = 1 steps continuing from position S (the input cache is never modified, so every
        # timed call does the same work). Each contender is timed on its own, in its steady state: timed
        # round-robin, exact attention's KV cache (up to 64 MiB at S = 16384) would evict DLA's cache
        # (3.75 MiB) between DLA steps, an S-dependent bias. "dla_cold" times DLA steps that each follow
        # a read of 64 MiB elsewhere (a model's other layers), which evicts its cache from L3 the same way
        # at every S.
        q1, k1, v1, l1 = (x[:, :, -1:] for x in (q, k, v, lam))
        step = lambda: dla(q1, k1, v1, l1, capacity=C, tau=tau, cache=cache)
        dfns = {"dla": step}
        if with_exact:
            dfns["exact"] = lambda: attention(q1, k, v, causal=True)  # one query over a KV cache of S keys
        if linear is not None:
            _, state = linear(q, k, v, feature_map="identity", normalize=False, causal=True, return_state=True)
            dfns["linear"] = lambda: linear(q1, k1, v1, feature_map="identity", normalize=False, causal=True,
                                            initial_state=state, return_state=True)
        for key, fn in dfns.items():
            t = timeit(fn, decode_reps, min_time=min_time)
            row[f"decode_{key}_s"] = t
            row[f"decode_{key}_tok_s"] = 1.0 / t
        flush = np.ones(64 << 18, np.float32)

        def evict():
            flush.sum()

        t = timeit_many({"dla": step, "evict": evict}, max(3, decode_reps // 4))["dla"]
        row["decode_dla_cold_s"] = t
        row["decode_dla_cold_tok_s"] = 1.0 / t
        for phase in ("prefill", "decode"):
            for other in ("exact", "linear", "dla_recurrent", "dla_decay"):
                if f"{phase}_{other}_s" in row:
                    row[f"{phase}_dla_vs_{other}"] = row[f"{phase}_{other}_s"] / row[f"{phase}_dla_s"]
        rows.append(row)
        if report:
            report(format_dla_row(row))
    for a, b in zip(rows, rows[1:]):  # time(2S) / time(S): 2 for a linear-time prefill, 1 for a flat decode
        if b["S"] == 2 * a["S"]:
            b["prefill_dla_scaling"] = b["prefill_dla_s"] / a["prefill_dla_s"]
            b["decode_dla_scaling"] = b["decode_dla_s"] / a["decode_dla_s"]
    return rows


def format_dla_row(r) -> str:
    s = (f"S={r['S']:6d}  prefill {r['prefill_dla_s'] * 1e3:8.1f} ms {r['prefill_dla_tok_s']:9.0f} tok/s"
         f" | decode {r['decode_dla_s'] * 1e6:7.1f} us {r['decode_dla_tok_s']:7.0f} tok/s"
         f" (cold cache {r['decode_dla_cold_s'] * 1e6:5.0f} us)")
    if "prefill_exact_s" in r:
        s += (f" | exact: prefill {r['prefill_dla_vs_exact']:5.2f}x, decode {r['decode_dla_vs_exact']:5.2f}x"
              " (>1: DLA faster)")
    if "prefill_linear_s" in r:
        s += f" | linear: prefill {r['prefill_dla_vs_linear']:5.2f}x, decode {r['decode_dla_vs_linear']:5.2f}x"
    s += f" | {r['boundaries']} boundaries, {r['merges']} merges"
    return s


# --------------------------------------------------------------------------------- linear-time attention
# name: (label, the exact-attention contender it is compared with)
LINEAR_CONTENDERS = {
    "linear": ("linear attention (elu+1)", "exact"),
    "linear_causal": ("linear attention (elu+1), causal", "exact_causal"),
    "performer": ("Performer", "exact"),
    "performer_causal": ("Performer, causal", "exact_causal"),
    "linformer": ("Linformer", "exact"),
}


def linear_inputs(S, H, D, seed=0):
    """float32 q, k, v [1, H, S, D] with standard normal entries (logits q.k/sqrt(D) ~ N(0, 1))."""
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal((1, H, S, D)).astype(np.float32) for _ in range(3))


def linear_rows(sizes, reps=3, H=8, D=64, m=256, P=256, report=progress, min_time=0.0, contenders=None):
    """attnkit's linear-time mechanisms side by side with attnkit's exact attention (causal and not) in one
    round-robin per size, float32, B=1. One dict per size: seconds per contender and speedups vs the
    matching exact attention."""
    from . import attention, linear_attention, linformer_attention, linformer_projection, performer_attention
    from . import random_features

    names = list(contenders or LINEAR_CONTENDERS)
    W = random_features(m, D, seed=0)
    rows = []
    for S in sizes:
        q, k, v = linear_inputs(S, H, D)
        E = linformer_projection(P, S, seed=0)
        every = {
            "exact": lambda: attention(q, k, v),
            "exact_causal": lambda: attention(q, k, v, causal=True),
            "linear": lambda: linear_attention(q, k, v, causal=False),
            "linear_causal": lambda: linear_attention(q, k, v, causal=True),
            "performer": lambda: performer_attention(q, k, v, W),
            "performer_causal": lambda: performer_attention(q, k, v, W, causal=True),
            "linformer": lambda: linformer_attention(q, k, v, E),
        }
        wanted = set(names) | {LINEAR_CONTENDERS[n][1] for n in names}
        t = timeit_many({key: f for key, f in every.items() if key in wanted}, reps, min_time=min_time)
        row = {"S": S}
        row.update({f"{key}_s": x for key, x in t.items()})
        for n in names:
            row[f"{n}_speedup_vs_exact"] = t[LINEAR_CONTENDERS[n][1]] / t[n]
        rows.append(row)
        if report:
            report(format_linear_row(row, names))
    return rows


def format_linear_row(r, names=None) -> str:
    names = names or [n for n in LINEAR_CONTENDERS if f"{n}_s" in r]
    s = f"S={r['S']:6d}  exact {r['exact_s'] * 1e3:8.1f} ms" if "exact_s" in r else f"S={r['S']:6d}"
    if "exact_causal_s" in r:
        s += f" (causal {r['exact_causal_s'] * 1e3:8.1f} ms)"
    for n in names:
        s += f" | {n} {r[f'{n}_s'] * 1e3:7.1f} ms ({r[f'{n}_speedup_vs_exact']:5.1f}x)"
    return s


def linear_scaling(sizes, reps=5, H=8, D=64, m=256, P=256):
    """Seconds of the linear-time contenders at every size, all (contender, size) pairs in ONE round-robin,
    so that a change of machine load between sizes cannot pass for a change of scaling:
    {name: {S: seconds}}."""
    from . import linear_attention, linformer_attention, linformer_projection, performer_attention
    from . import random_features

    W = random_features(m, D, seed=0)
    fns = {}
    for S in sizes:
        q, k, v = linear_inputs(S, H, D)
        E = linformer_projection(P, S, seed=0)
        fns[("linear", S)] = lambda q=q, k=k, v=v: linear_attention(q, k, v, causal=False)
        fns[("linear_causal", S)] = lambda q=q, k=k, v=v: linear_attention(q, k, v, causal=True)
        fns[("performer", S)] = lambda q=q, k=k, v=v: performer_attention(q, k, v, W)
        fns[("performer_causal", S)] = lambda q=q, k=k, v=v: performer_attention(q, k, v, W, causal=True)
        fns[("linformer", S)] = lambda q=q, k=k, v=v, E=E: linformer_attention(q, k, v, E)
    t = timeit_many(fns, reps)
    return {n: {S: t[(n, S)] for S in sizes} for n in LINEAR_CONTENDERS}


def scaling_ratios(seconds):
    """time(2S) / time(S) from {name: {S: seconds}}: {name: {2S: ratio}}."""
    return {n: {S: by_s[S] / by_s[S // 2] for S in sorted(by_s) if S % 2 == 0 and S // 2 in by_s}
            for n, by_s in seconds.items()}


def crossover(rows, name):
    """Sequence length at which `name` becomes faster than its exact-attention counterpart: log-log
    interpolation of the speedup between the two measured sizes around 1. None if it never crosses in
    the measured range; the smallest size if it is faster everywhere (reported as '<= S')."""
    pts = sorted((r["S"], r[f"{name}_speedup_vs_exact"]) for r in rows if f"{name}_speedup_vs_exact" in r)
    if not pts:
        return None
    if pts[0][1] >= 1:
        return {"S": pts[0][0], "bound": "at or below"}
    for (s1, x1), (s2, x2) in zip(pts, pts[1:]):
        if x1 < 1 <= x2:
            f = np.log(x1) / (np.log(x1) - np.log(x2))
            return {"S": float(np.exp(np.log(s1) + f * (np.log(s2) - np.log(s1)))), "bound": "interpolated"}
    return {"S": pts[-1][0], "bound": "above"}


def approximation_errors(S=1024, H=8, D=64, ms=(64, 128, 256, 512), Ps=(64, 128, 256, 512), seeds=3,
                         row_norm=None):
    """Relative error ||approx - exact||_F / ||exact||_F of Performer (softmax kernel, orthogonal chi
    features) and Linformer (random N(0, 1/P) projections) against exact attention, averaged over `seeds`
    feature / projection seeds; Performer bidirectional and causal. Inputs: the benchmark's standard normal
    q, k, v, or (row_norm = r) with every row of q and k rescaled to |x'| = r, i.e. |x| = r D^(1/4), which
    controls the variance of Performer's estimator (it grows like exp(|q'|^2 + |k'|^2))."""
    from . import attention, linformer_attention, linformer_projection, performer_attention, random_features

    q, k, v = (x.astype(np.float64) for x in linear_inputs(S, H, D))
    if row_norm is not None:
        q, k = (x * (row_norm * D**0.25 / np.linalg.norm(x, axis=-1, keepdims=True)) for x in (q, k))
    exact = {False: attention(q, k, v), True: attention(q, k, v, causal=True)}

    def rel(a, b):
        return float(np.linalg.norm(a - b) / np.linalg.norm(b))

    out = {"S": S, "H": H, "D": D, "seeds": seeds, "inputs": "standard normal q, k, v" if row_norm is None else
           f"standard normal v; q, k rows rescaled to |x'| = sqrt(scale) |x| = {row_norm}",
           "performer": [], "linformer": []}
    for m in ms:
        row = {"m": m}
        for causal in (False, True):
            errs = [rel(performer_attention(q, k, v, random_features(m, D, seed=s), causal=causal), exact[causal])
                    for s in range(seeds)]
            row["causal_rel_err" if causal else "rel_err"] = float(np.mean(errs))
        out["performer"].append(row)
    for P in Ps:
        errs = [rel(linformer_attention(q, k, v, linformer_projection(P, S, seed=s)), exact[False])
                for s in range(seeds)]
        out["linformer"].append({"P": P, "rel_err": float(np.mean(errs))})
    for key, size in (("performer", "m"), ("linformer", "P")):
        xs = [r[size] for r in out[key]]
        out[f"{key}_loglog_slope"] = float(np.polyfit(np.log(xs), np.log([r["rel_err"] for r in out[key]]), 1)[0])
    return out


# ------------------------------------------------------------------------------------- ISA paths
def mechanism_call(name: str, S: int, H: int = 8, D: int = 64):
    """One benchmark call of a mechanism by name, on the inputs its benchmark uses (float32, B=1): exact,
    exact_causal, bigbird, longformer, lsh (bench_sparse), linear[_causal], performer[_causal], linformer
    (bench_linear), dla_prefill, dla_decode (bench_dla, C=30, tau=0.6)."""
    from . import (attention, block_sparse_attention, dynamic_linear_attention, linear_attention, linformer_attention,
                   linformer_projection, lsh_attention, performer_attention, random_features)

    if name.startswith("dla"):
        q, k, v, lam = dla_data(S, H, D)
        if name == "dla_prefill":
            return lambda: dynamic_linear_attention(q, k, v, lam, capacity=30, tau=0.6)
        _, cache = dynamic_linear_attention(q, k, v, lam, capacity=30, tau=0.6)
        q1, k1, v1, l1 = (x[:, :, -1:] for x in (q, k, v, lam))
        return lambda: dynamic_linear_attention(q1, k1, v1, l1, capacity=30, tau=0.6, cache=cache)
    q, k, v = linear_inputs(S, H, D)
    if name in ("bigbird", "longformer"):
        L = sparse_layouts(S)[name]
        return lambda: block_sparse_attention(q, k, v, L)
    nb = max(2, 2 * (S // 64 // 2))
    W = random_features(256, D, seed=0)
    E = linformer_projection(256, S, seed=0)
    return {"exact": lambda: attention(q, k, v), "exact_causal": lambda: attention(q, k, v, causal=True),
            "lsh": lambda: lsh_attention(q, k, v, num_buckets=nb, num_hashes=1, seed=0),
            "linear": lambda: linear_attention(q, k, v, causal=False),
            "linear_causal": lambda: linear_attention(q, k, v, causal=True),
            "performer": lambda: performer_attention(q, k, v, W),
            "performer_causal": lambda: performer_attention(q, k, v, W, causal=True),
            "linformer": lambda: linformer_attention(q, k, v, E)}[name]


def isa_worker() -> None:
    """Runs in a subprocess (ATTNKIT_CPU_ISA set by isa_rows): reads "name S threads" lines, runs one
    mechanism_call and prints its process CPU time and wall time."""
    calls = {}
    print(_core.cpu_isa(), flush=True)
    for line in sys.stdin:
        name, S, threads = line.split()
        _core.set_num_threads(int(threads))
        if (name, S) not in calls:
            calls[(name, S)] = mechanism_call(name, int(S))
        f = calls[(name, S)]
        t0, w0 = time.process_time(), time.perf_counter()
        f()
        print(time.process_time() - t0, time.perf_counter() - w0, flush=True)


def isa_rows(names, sizes, threads, reps=5, other="generic", report=progress):
    """Each named mechanism on this process's ISA path and on `other` (lowered by ATTNKIT_CPU_ISA), one
    worker process per path, driven alternately call by call, each call timed by its process CPU time
    (medians of `reps` rounds after one warm-up round). One dict per (threads, S, name), with
    `<other>_over_<isa>`: how many times faster the micro-kernels of this path make the mechanism."""
    isas = [_core.cpu_isa(), other]
    code = "from attnkit._bench import isa_worker; isa_worker()"
    workers = {isa: subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=dict(os.environ, ATTNKIT_CPU_ISA=isa)) for isa in isas}
    for isa, w in workers.items():
        got = w.stdout.readline().strip()
        if got != isa:
            raise RuntimeError(f"ATTNKIT_CPU_ISA={isa} gave a worker on the {got} path")

    def call(isa, name, S, t):
        w = workers[isa]
        w.stdin.write(f"{name} {S} {t}\n")
        w.stdin.flush()
        return tuple(map(float, w.stdout.readline().split()))

    rows = []
    try:
        for t in threads:
            for S in sizes:
                for name in names:
                    times = {isa: [] for isa in isas}
                    for rnd in range(reps + 1):  # round 0 warms up
                        for isa in isas:
                            x = call(isa, name, S, t)
                            if rnd:
                                times[isa].append(x)
                    row = {"mechanism": name, "S": S, "threads": t, "rounds": reps}
                    for isa, ts in times.items():
                        row[f"{isa}_cpu_s"] = statistics.median(x[0] for x in ts)
                        row[f"{isa}_wall_s"] = statistics.median(x[1] for x in ts)
                    row[f"{other}_over_{isas[0]}"] = row[f"{other}_cpu_s"] / row[f"{isas[0]}_cpu_s"]
                    rows.append(row)
                    if report:
                        report(f"{t} thread(s) S={S:6d} {name:17s} {isas[0]} {row[f'{isas[0]}_cpu_s'] * 1e3:9.2f} ms, "
                               f"{other} {row[f'{other}_cpu_s'] * 1e3:9.2f} ms: {other} / {isas[0]} "
                               f"{row[f'{other}_over_{isas[0]}']:.2f} (CPU time)")
    finally:
        for w in workers.values():
            w.stdin.close()
            w.wait()
    return rows
