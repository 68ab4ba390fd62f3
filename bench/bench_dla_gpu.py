"""DLA prefill on the GPU, the paths side by side in one process (a short run for a single end-of-session GPU check).

Per sequence length S (float16, B=4, H=16, D=64, C=16, random data: a boundary and a merge at nearly every token;
bench_gpu.py's linear rows use the same shape): exact causal attention, DLA prefill v4 (tuning ``dla_split = -2``:
its passes C1 + C2) and the default path (v5's fused pass C, cuda/dla_prefill_v5.cuh, where its gate is open, i.e.
under ATTNKIT_CUDA_UNVERIFIED=1 until verified; else v4 again), as milliseconds per call and million tokens/s
(B * S / time), with whether v5 gives v4's bits (output and cache states; it must). One line per S.

    python bench/bench_dla_gpu.py [--sizes 4096 16384] [--json out.json]
    python bench/bench_dla_gpu.py --dry      # no GPU: the same logic on NumPy arrays and the CPU backend, tiny shapes

Timing: CUDA events around each call after one warm-up call, median of --reps (bench/gpu_util.py's Timer).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--dry", action="store_true", help="no GPU: NumPy arrays on the CPU backend, tiny shapes")
    args = ap.parse_args(argv)

    import attnkit
    from attnkit._tuning import tuning

    if args.dry:
        cupy = None
        B, H, D, C, sizes = 1, 2, 8, 4, [min(s, 70 + 60 * i) for i, s in enumerate(args.sizes)]

        def timer(fn):
            ts = []
            for _ in range(max(1, args.reps)):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            return statistics.median(ts)

        has = lambda name: False  # noqa: E731
        device = "CPU (--dry)"
    else:
        from gpu_util import Timer, gpu_or_reason

        cupy, reason = gpu_or_reason()
        if cupy is None:
            print(f"bench_dla_gpu: no GPU run: {reason}")
            return 0
        B, H, D, C, sizes = 4, 16, 64, 16, args.sizes
        timer = Timer(cupy, args.reps, 1, 2.0)
        has = attnkit._core.cuda_has_kernel
        device = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"].decode()
    v5_on = bool(has("dla_prefill_v5")) and os.environ.get("ATTNKIT_DLA_V5") != "0" and \
        bool(has("dla_prefill_v4")) and os.environ.get("ATTNKIT_DLA_V4") != "0"
    print(f"bench_dla_gpu: {device}; float16 B={B} H={H} D={D} C={C}; dla_prefill_v5 enabled: {v5_on}", flush=True)
    rows = []
    for S in sizes:
        s = 1 / math.sqrt(math.sqrt(D))
        if cupy is None:
            rng = np.random.default_rng(S)
            q, k, v = ((rng.standard_normal((B, H, S, D)) * s).astype(np.float16) for _ in range(3))
            lam = (rng.random((B, H, S, C)) * (2.0 / C)).astype(np.float16)
        else:  # on the device (bench_gpu.py's inputs): no host generation or copies
            cupy.random.seed(S)
            q, k, v = ((cupy.random.standard_normal((B, H, S, D), dtype=np.float32) * s).astype(np.float16)
                       for _ in range(3))
            lam = (cupy.random.random((B, H, S, C), dtype=np.float32) * (2.0 / C)).astype(np.float16)
        dla = lambda: attnkit.dynamic_linear_attention(q, k, v, lam, capacity=C)  # noqa: E731
        row = {"S": S, "B": B, "H": H, "D": D, "C": C, "dtype": "float16", "v5_enabled": v5_on}
        row["exact_causal_s"] = timer(lambda: attnkit.attention(q, k, v, causal=True))
        with tuning(dla_split=-2):  # v4's C1 + C2
            row["v4_s"] = timer(dla)
            y4, c4 = dla()
        row["default_s"] = timer(dla)  # v5 where enabled
        y5, c5 = dla()
        host = (lambda x: x) if cupy is None else cupy.asnumpy
        row["same_bits"] = bool(np.asarray(host(y5)).tobytes() == np.asarray(host(y4)).tobytes() and
                                np.asarray(host(c5.states)).tobytes() == np.asarray(host(c4.states)).tobytes())
        for name in ("exact_causal", "v4", "default"):
            row[f"{name}_mtok_s"] = B * S / row[f"{name}_s"] / 1e6
        rows.append(row)
        print(f"dla S={S:<6} exact causal {row['exact_causal_s'] * 1e3:8.2f} ms ({row['exact_causal_mtok_s']:6.2f} Mtok/s)"
              f"  v4 {row['v4_s'] * 1e3:8.2f} ms ({row['v4_mtok_s']:6.2f})"
              f"  {'v5' if v5_on else 'default'} {row['default_s'] * 1e3:8.2f} ms ({row['default_mtok_s']:6.2f})"
              f"  speedup {row['v4_s'] / row['default_s']:5.2f}x  vs exact causal "
              f"{row['exact_causal_s'] / row['default_s']:5.2f}x  same bits {row['same_bits']}", flush=True)
        del q, k, v, lam, y4, c4, y5, c5
        if cupy is not None:
            cupy.get_default_memory_pool().free_all_blocks()
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
