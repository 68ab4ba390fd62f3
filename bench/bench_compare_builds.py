"""Two builds of attnkit side by side in one process: the installed one and a baseline package directory
(for example a build of main), timed round-robin on the same inputs with the same threads, reporting
medians and the ratio new / baseline. Used to check that a change (issue 9: NaN propagation, long-row
segments, masked-value checks) does not slow the kernels.

    python bench/bench_compare_builds.py --baseline /path/with/attnkit_package [--reps 7]

The baseline directory must hold an `attnkit` package with its compiled `_core`; it is imported under
another name, so both are live at once.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

import attnkit


def load_baseline(directory: str):
    pkg = Path(directory) / "attnkit"
    spec = importlib.util.spec_from_file_location("attnkit_baseline", pkg / "__init__.py",
                                                  submodule_search_locations=[str(pkg)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["attnkit_baseline"] = mod
    spec.loader.exec_module(mod)
    return mod


def cases(S_list):
    rng = np.random.default_rng(0)
    for S in S_list:
        q, k, v = (rng.standard_normal((1, 8, S, 64)).astype(np.float32) for _ in range(3))
        mask = rng.random((S, S)) < 0.9
        yield f"attention S={S}", lambda m, q=q, k=k, v=v: m.attention(q, k, v)
        yield f"attention causal S={S}", lambda m, q=q, k=k, v=v: m.attention(q, k, v, causal=True)
        yield f"attention mask S={S}", lambda m, q=q, k=k, v=v, mask=mask: m.attention(q, k, v, mask=mask)
        yield f"decode Sk={S}", lambda m, q=q, k=k, v=v: m.attention(q[:, :, -1:], k, v)
        yield f"linear causal S={S}", lambda m, q=q, k=k, v=v: m.linear_attention(q, k, v, causal=True)
        yield f"linear relu S={S}", lambda m, q=q, k=k, v=v: m.linear_attention(q, k, v, feature_map="relu",
                                                                                causal=False)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args(argv)
    base = load_baseline(args.baseline)
    print(f"new: {attnkit.info()}\nbaseline: {base.info()}")
    for name, fn in cases(args.sizes):
        for m in (attnkit, base):  # warm-up
            fn(m)
        times = {"new": [], "base": []}
        for _ in range(args.reps):
            for key, m in (("new", attnkit), ("base", base)):
                t = time.perf_counter()
                fn(m)
                times[key].append(time.perf_counter() - t)
        new, old = np.median(times["new"]), np.median(times["base"])
        print(f"{name:28s} new {new * 1e3:9.2f} ms   baseline {old * 1e3:9.2f} ms   new/baseline {new / old:5.3f}")


if __name__ == "__main__":
    main()
