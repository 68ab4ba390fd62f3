"""Block-sparse and LSH attention on the CPU, side by side with dense attnkit attention.

float32, B=1, H=8, D=64, S in {2048, 4096, 8192}, block 64. For BigBird and Longformer layouts (density
5-20%): time / (density * dense time), which must stay <= 1.3 (+ a small constant); for LSH with
num_buckets = S / 64 (mean bucket 64 keys): time(2S) / time(S), which O(S * bucket) keeps near 2 (hashing,
O(S * D * num_buckets) by the definition of angular LSH, is timed separately).
Every time is a median of round-robin rounds by process CPU time (--clock wall for wall time), for each
of --threads; --vs-isa generic adds each mechanism timed on the generic micro-kernels beside this ISA's
(one worker process per path, driven alternately). Writes bench/results/sparse_<isa>.json.

    python bench/bench_sparse.py [--sizes 2048 4096 8192] [--reps 3] [--threads 1 2] [--vs-isa generic]
"""

from __future__ import annotations

import _quiet_blas  # noqa: F401  (before NumPy: OpenBLAS's threads sleep at once after a call)
import argparse
from pathlib import Path

import attnkit
from attnkit._bench import (add_run_arguments, apply_run_arguments, environment, isa_rows, progress, result_name,
                            sparse_rows, write_json)

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=None, help="file name under bench/results (default sparse_<isa>.json)")
    add_run_arguments(ap, [2048, 4096])
    a = ap.parse_args(argv)
    threads = apply_run_arguments(a)
    rows = []
    for t in threads:
        attnkit.set_num_threads(t)
        progress(f"{t} thread(s), CPU kernels {attnkit.info()['cpu_isa']}")
        for r in sparse_rows(a.sizes, a.reps):
            rows.append({"threads": t, **r})
            if "lsh_scaling" in r:
                progress(f"time({r['S']}) / time({r['S'] // 2}): LSH {r['lsh_scaling']:.2f} (without hashing "
                         f"{r['lsh_without_hash_scaling']:.2f}), dense {r['dense_scaling']:.2f}")
    payload = {"benchmark": "block-sparse and LSH attention, float32, B=1, H=8, D=64, block 64",
               "env": environment(threads), "rows": rows}
    if a.vs_isa:
        payload["isa_rows"] = isa_rows(["exact", "bigbird", "longformer", "lsh"], a.vs_isa_sizes, threads,
                                       other=a.vs_isa)
    progress(f"wrote {write_json(RESULTS, a.out or result_name('sparse', payload['env']), payload)}")


if __name__ == "__main__":
    main()
