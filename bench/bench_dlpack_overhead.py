"""Host overhead per call of attnkit's DLPack path (PyTorch / JAX arrays in, the same framework out) against
the same call on NumPy arrays, on tiny inputs where the kernel itself costs next to nothing.

Contenders, timed round-robin in one process (median of ``--rounds`` rounds of ``--calls`` calls each, in
microseconds per call, of process CPU time, the steadier figure on a shared machine, and of wall time):
attnkit.attention on NumPy float32 arrays (no DLPack at all), on the same memory as PyTorch CPU float32
tensors, as PyTorch bfloat16 tensors, and as JAX arrays when JAX is installed; plus the conversions alone
(``dlpack_view`` of one tensor, one result handed back to PyTorch). ``*_overhead_us`` is a contender's time
less the NumPy call's. ``--profile`` prints a cProfile of the PyTorch calls instead.
Writes bench/results/dlpack_overhead[_LABEL].json (dlpack_overhead_{before,after}.json: this script over
attnkit before and after the direct PyTorch path, processes run alternately on a shared, loaded machine).

    python bench/bench_dlpack_overhead.py [--label before] [--calls 2000] [--rounds 15] [--profile]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import attnkit
from attnkit import _array
from attnkit._bench import environment, write_json

RESULTS = Path(__file__).resolve().parent / "results"
SHAPE = (1, 2, 4, 8)


def contenders():
    import torch

    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal(SHAPE).astype(np.float32) for _ in range(3))
    tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
    bq, bk, bv = (t.to(torch.bfloat16) for t in (tq, tk, tv))
    out = np.zeros(SHAPE, np.float32)
    back = _array._returner(tq)
    fns = {
        "numpy f32": lambda: attnkit.attention(q, k, v),
        "torch f32": lambda: attnkit.attention(tq, tk, tv),
        "torch bf16": lambda: attnkit.attention(bq, bk, bv),
        "dlpack_view (torch f32, one tensor)": lambda: _array.dlpack_view(tq, "q"),
        "hand back (one NumPy result to torch)": lambda: back(out),
    }
    try:
        import jax.numpy as jnp

        jq, jk, jv = (jnp.asarray(a) for a in (q, k, v))
        fns["jax f32"] = lambda: attnkit.attention(jq, jk, jv)
    except ImportError:
        pass
    return fns, torch.__version__


def measure(fns: dict, calls: int, rounds: int) -> tuple:
    """Median microseconds per call of each contender, round-robin over `rounds` rounds of `calls` calls:
    (process CPU time, wall time). CPU time is the steadier figure on a shared machine (a process waiting
    for a core accrues none)."""
    cpu, wall = ({name: [] for name in fns} for _ in range(2))
    for fn in fns.values():  # warm-up
        for _ in range(50):
            fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(calls):
                fn()
            wall[name].append((time.perf_counter() - t0) / calls * 1e6)
            cpu[name].append((time.process_time() - c0) / calls * 1e6)
    med = lambda d: {name: float(np.median(s)) for name, s in d.items()}  # noqa: E731
    return med(cpu), med(wall)


def profile(fns: dict, calls: int) -> None:
    import cProfile
    import pstats

    for name in ("torch f32", "torch bf16"):
        fn = fns[name]
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(calls):
            fn()
        pr.disable()
        print(f"== {name}: {calls} calls")
        pstats.Stats(pr).sort_stats("tottime").print_stats(18)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", default="")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    attnkit.set_num_threads(1)  # the kernel's share stays small and fixed
    fns, torch_version = contenders()
    if a.profile:
        profile(fns, a.calls)
        return
    cpu, wall = measure(fns, a.calls, a.rounds)
    for name in fns:
        extra = f"  (+{cpu[name] - cpu['numpy f32']:.2f} over NumPy)" if name.startswith(("torch", "jax")) else ""
        print(f"{name:40s} {cpu[name]:8.2f} us CPU/call{extra}   wall {wall[name]:8.2f} us")
    env = environment(1)
    env["torch"] = torch_version
    over = lambda d: {n: t - d["numpy f32"] for n, t in d.items() if n.startswith(("torch", "jax"))}  # noqa: E731
    payload = {"environment": env, "shape": SHAPE, "calls": a.calls, "rounds": a.rounds,
               "cpu_us_per_call": cpu, "wall_us_per_call": wall, "cpu_overhead_us": over(cpu),
               "wall_overhead_us": over(wall)}
    name = f"dlpack_overhead_{a.label}.json" if a.label else "dlpack_overhead.json"
    print(write_json(RESULTS, name, payload))


if __name__ == "__main__":
    main()
