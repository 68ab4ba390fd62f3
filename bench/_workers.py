"""The worker protocol shared by the side-by-side build benchmarks (bench_compare_builds.py,
bench_lowp_builds.py): each build of attnkit runs in its own worker process (pybind11 cannot load two
`_core` modules into one interpreter), all alive at once; a request is one line on the worker's stdin, its
answer one line on its stdout; the contenders are called round-robin, one call at a time, a warm-up round
first, and compared by medians.
"""

from __future__ import annotations

import subprocess
import sys


def spawn(source, args=(), env=None, cwd="/"):
    """Starts `python -c source *args` with line-buffered text pipes; returns the Popen."""
    return subprocess.Popen([sys.executable, "-c", source, *[str(a) for a in args]], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env, cwd=cwd)


def ask(worker, msg):
    """Sends one request line to a worker and returns its one-line answer (without the newline)."""
    worker.stdin.write(f"{msg}\n")
    worker.stdin.flush()
    return worker.stdout.readline().rstrip("\n")


def rounds(contenders, call, reps, warmup=1):
    """Calls call(x) for every contender x in turn, warmup + reps rounds; returns {x: [the reps timings]}
    (the warm-up rounds dropped). call returns one timing."""
    times = {x: [] for x in contenders}
    for r in range(warmup + reps):
        for x in contenders:
            t = call(x)
            if r >= warmup:
                times[x].append(t)
    return times


def close(workers):
    """Closes the workers' stdin (their loops end) and waits for them."""
    for w in workers:
        w.stdin.close()
        w.wait()
