"""Two builds of attnkit side by side: the installed one and a baseline package directory (for example a
build of main), each in its own worker process (pybind11 cannot load two `_core` modules into one
interpreter), both alive at once and timed round-robin on the same inputs with the same threads, one
call at a time. Reports medians and the ratio new / baseline. Used to check that a change (issue 9: NaN
propagation, long-row segments, masked-value checks) does not slow the kernels.

    python bench/bench_compare_builds.py --baseline /path/with/attnkit_package [--sizes 1024 4096] [--reps 7]

The baseline directory must hold an `attnkit` package with its compiled `_core`.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from _workers import ask, close, rounds, spawn

WORKER = r"""
import sys, time
import numpy as np
import attnkit

def cases(sizes):
    rng = np.random.default_rng(0)
    out = []
    for S in sizes:
        q, k, v = (rng.standard_normal((1, 8, S, 64)).astype(np.float32) for _ in range(3))
        mask = rng.random((S, S)) < 0.9
        out += [
            (f"attention S={S}", lambda q=q, k=k, v=v: attnkit.attention(q, k, v)),
            (f"attention causal S={S}", lambda q=q, k=k, v=v: attnkit.attention(q, k, v, causal=True)),
            (f"attention mask S={S}", lambda q=q, k=k, v=v, m=mask: attnkit.attention(q, k, v, mask=m)),
            (f"decode Sk={S}", lambda q=q, k=k, v=v: attnkit.attention(q[:, :, -1:], k, v)),
            (f"linear causal S={S}", lambda q=q, k=k, v=v: attnkit.linear_attention(q, k, v, causal=True)),
            (f"linear relu S={S}", lambda q=q, k=k, v=v: attnkit.linear_attention(q, k, v, feature_map="relu",
                                                                                 causal=False)),
        ]
    return out

todo = cases([int(s) for s in sys.argv[1:]])
print(attnkit.info(), flush=True)
for line in sys.stdin:
    i = int(line)
    fn = todo[i][1]
    t = time.perf_counter()
    fn()
    print(f"{todo[i][0]}\t{time.perf_counter() - t}", flush=True)
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args(argv)
    sizes = [str(s) for s in args.sizes]
    env_base = dict(os.environ, PYTHONPATH=os.path.abspath(args.baseline))
    workers = {"new": spawn(WORKER, sizes), "base": spawn(WORKER, sizes, env=env_base)}
    for key, w in workers.items():
        print(f"{key}: {w.stdout.readline().strip()}")

    names = {}

    def call(key, i):
        names[key], t = ask(workers[key], i).split("\t")
        return float(t)

    ncases = 6 * len(sizes)
    for i in range(ncases):
        times = rounds(("new", "base"), lambda key, i=i: call(key, i), args.reps)  # a warm-up round, then reps
        name = names["new"]
        new, old = np.median(times["new"]), np.median(times["base"])
        print(f"{name:28s} new {new * 1e3:9.2f} ms   baseline {old * 1e3:9.2f} ms   new/baseline {new / old:5.3f}",
              flush=True)
    close(workers.values())


if __name__ == "__main__":
    main()
