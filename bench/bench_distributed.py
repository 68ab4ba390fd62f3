"""Ring attention across local MPI ranks: attnkit.distributed.ring_attention on 1, 2 and 4 ranks of this
machine (mpiexec, one OpenMP thread per rank), float32, B=1, H=8, D=64.

Per rank count and case (non-causal; causal with the contiguous and the zig-zag layout) it reports the
median wall time of the collective call (slowest rank), the bytes each rank sends, the communication time
of the same K/V ring pass run alone, the time each rank waited for communication after its compute, the
fraction of communication hidden behind compute (``1 - wait / communication alone``), and the work
balance across ranks (allowed (query, key) pairs and measured compute time, max / min). Writes
bench/results/distributed_<isa>.json. On a 2-core machine 4 ranks are oversubscribed: the times of that row
measure sharing, not scaling; bytes, balance and hiding are the figures to read.

It ends with the scaling model on paper (``scaling_model``) for S = 2^20 tokens on 8, 64 and 512 machines
from the measured rate of one rank, ``--cores`` per machine, ``--bandwidth`` and ``--latency``.

    python bench/bench_distributed.py [--S 4096] [--ranks 1 2 4] [--reps 3] [--model-only]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
# (name, causal, layout, progress thread)
CASES = [("dense", False, "contiguous", True), ("dense_no_thread", False, "contiguous", False),
         ("causal", True, "contiguous", True), ("causal_zigzag", True, "zigzag", True)]


def worker(a):
    from mpi4py import MPI

    import attnkit
    from attnkit import _mpi
    from attnkit import distributed as dist

    comm = MPI.COMM_WORLD
    P, R = comm.Get_size(), comm.Get_rank()
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, a.H, a.S, a.D), dtype=np.float32) for _ in range(3))
    rows = {}
    for name, causal, layout, thread in CASES:
        sq, sk, sv = (dist.shard(x, comm, layout=layout) for x in (q, k, v))
        dist.ring_attention(sq, sk, sv, comm, causal=causal, layout=layout, progress_thread=thread)  # warm-up
        totals, stats = [], []
        for _ in range(a.reps):
            st = {}
            comm.Barrier()
            t0 = time.perf_counter()
            dist.ring_attention(sq, sk, sv, comm, causal=causal, layout=layout, progress_thread=thread, stats=st)
            totals.append(comm.allreduce(time.perf_counter() - t0, op=MPI.MAX))
            stats.append(st)
        # the same ring pass of the K/V blocks, without compute
        transport = _mpi.Transport(comm, False)
        buf = np.concatenate([_mpi.as_bytes(sk), _mpi.as_bytes(sv)])
        comm_alone = []
        for _ in range(a.reps):
            comm.Barrier()
            t0 = time.perf_counter()
            cur = buf
            for step in range(P - 1):
                recv = np.empty_like(cur)
                transport.exchange(cur, (R + 1) % P, recv, (R - 1) % P, step)()
                cur = recv
            comm_alone.append(time.perf_counter() - t0)
        med = lambda xs: float(np.median(xs))  # noqa: E731
        mine = dict(compute_s=med([s["compute_s"] for s in stats]), wait_s=med([s["wait_s"] for s in stats]),
                    comm_alone_s=med(comm_alone), bytes_sent=stats[0]["bytes_sent"], pairs=stats[0]["pairs"])
        every = comm.gather(mine, root=0)
        if R == 0:
            comm_s = max(e["comm_alone_s"] for e in every)
            wait_s = max(e["wait_s"] for e in every)
            rows[name] = dict(
                ranks=P, causal=causal, layout=layout, progress_thread=thread, seconds=med(totals),
                bytes_sent_per_rank=[e["bytes_sent"] for e in every],
                comm_alone_s=comm_s, wait_s=wait_s,
                hidden=None if P == 1 or comm_s == 0 else float(np.clip(1 - wait_s / comm_s, 0, 1)),
                compute_s=[e["compute_s"] for e in every], pairs=[e["pairs"] for e in every],
                pairs_balance=max(e["pairs"] for e in every) / max(1, min(e["pairs"] for e in every)),
                compute_balance=max(e["compute_s"] for e in every) / min(e["compute_s"] for e in every))
    if R == 0:
        t0 = time.perf_counter()
        for _ in range(a.reps):
            attnkit.attention(q, k, v)
        rows["single_process_dense_s"] = (time.perf_counter() - t0) / a.reps
        print("RESULT " + json.dumps(rows), flush=True)


def scaling_model(rate, bandwidth, latency, *, S=2 ** 20, H=8, Hkv=8, D=64, itemsize=4, machines=(8, 64, 512)):
    """Ring attention (causal, zig-zag) on paper: P ring steps, each the larger of the local compute
    (2 H S^2 D / P^2 FLOPs at ``rate``) and the K/V block transfer (alpha + 2 Hkv (S/P) D b / beta), so
    T = P max(t_c, t_m): compute-bound (communication hidden) while S / P >= rate b Hkv / (H beta)."""
    rows = []
    for P in machines:
        t_c = 2 * H * S ** 2 * D / P ** 2 / rate
        t_m = latency + 2 * Hkv * (S / P) * D * itemsize / bandwidth
        rows.append(dict(machines=P, step_compute_s=t_c, step_transfer_s=t_m, seconds=P * max(t_c, t_m),
                         kv_block_bytes=2 * Hkv * (S // P) * D * itemsize))
    return dict(S=S, H=H, Hkv=Hkv, D=D, itemsize=itemsize, rate_flops=rate, bandwidth_bytes_s=bandwidth,
                latency_s=latency, hidden_above_tokens_per_machine=rate * itemsize * Hkv / (H * bandwidth),
                rows=rows)


def add_model(payload, a):
    """The scaling model from the measured single-rank rate (dense, P = 1), into ``payload["model"]``."""
    one = next(r for r in payload["results"] if r["dense"]["ranks"] == 1)
    seconds = min(one["dense"]["seconds"], one["dense_no_thread"]["seconds"])  # the same computation twice
    rate = 4 * payload["H"] * payload["S"] ** 2 * payload["D"] / seconds   # FLOP/s, one core
    model = scaling_model(a.cores * rate, a.bandwidth, a.latency, H=payload["H"], Hkv=payload["H"], D=payload["D"])
    model.update(measured_rate_one_core_flops=rate, cores_per_machine=a.cores)
    payload["model"] = model
    print(f"model: {a.cores} cores x {rate / 1e9:.1f} GFLOP/s measured per core, {a.bandwidth / 1e9:g} GB/s, "
          f"{1e6 * a.latency:g} us; communication hidden above {model['hidden_above_tokens_per_machine']:.0f} tokens per machine")
    for row in model["rows"]:
        print(f"model: S = 2^20 on {row['machines']:4d} machines: {row['seconds']:9.1f} s  (step: compute "
              f"{row['step_compute_s']:.3g} s, K/V block {row['kv_block_bytes'] / 2**20:.0f} MiB in "
              f"{1e3 * row['step_transfer_s']:.2f} ms)")


def mpiexec():
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else "mpiexec"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--S", type=int, default=4096)
    ap.add_argument("--H", type=int, default=8)
    ap.add_argument("--D", type=int, default=64)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--cores", type=int, default=2, help="cores of one machine in the scaling model")
    ap.add_argument("--bandwidth", type=float, default=25e9, help="network bytes/s per machine in the model")
    ap.add_argument("--latency", type=float, default=5e-6, help="network latency (s) in the model")
    ap.add_argument("--out", default=None, help="file name under bench/results (default distributed_<isa>.json)")
    ap.add_argument("--model-only", action="store_true", help="only recompute the model from --out")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        return worker(a)
    from attnkit import _core
    from attnkit._bench import environment, result_name, write_json

    a.out = a.out or result_name("distributed", {"cpu_isa": _core.cpu_isa()})

    if a.model_only:  # recompute the model from the results already written
        payload = json.loads((RESULTS / a.out).read_text())
        add_model(payload, a)
        print("wrote", write_json(RESULTS, a.out, payload))
        return

    results = []
    for P in a.ranks:
        cmd = [mpiexec(), "-n", str(P), sys.executable, __file__, "--worker", "--S", str(a.S), "--H", str(a.H),
               "--D", str(a.D), "--reps", str(a.reps)]
        res = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                             stdin=subprocess.DEVNULL,
                             timeout=1800)
        line = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
        if res.returncode or not line:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}")
        rows = json.loads(line[0][len("RESULT "):])
        results.append(rows)
        for name, r in rows.items():
            if isinstance(r, dict):
                hidden = "-" if r["hidden"] is None else f"{100 * r['hidden']:.0f}%"
                print(f"P={P} {name:14s} {1e3 * r['seconds']:9.1f} ms  sent/rank {r['bytes_sent_per_rank'][0] / 2**20:7.1f}"
                      f" MiB  comm alone {1e3 * r['comm_alone_s']:7.1f} ms  waited {1e3 * r['wait_s']:7.1f} ms"
                      f"  hidden {hidden:>4s}  pairs max/min {r['pairs_balance']:.3f}"
                      f"  compute max/min {r['compute_balance']:.3f}", flush=True)
    payload = dict(environment=environment(1), S=a.S, H=a.H, D=a.D, dtype="float32", results=results)
    add_model(payload, a)
    print("wrote", write_json(RESULTS, a.out, payload))


if __name__ == "__main__":
    main()
