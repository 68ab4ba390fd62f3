"""The causal Performer's two state passes side by side on one GPU, in one process (~15 s on an H200).

cuda/performer_causal_mma.cuh runs the causal softmax Performer on tensor cores in three steps: the state pass
(the state before every chunk of 64 keys), out_kernel (outputs), final_kernel (state_out). Its state pass is
either the chunk-parallel inc_kernel + scan_kernel (internal name "performer_attention_mma3_causal", tuning
performer_causal = 0, where its gate is open: ATTNKIT_CUDA_UNVERIFIED=1 while it is in runtime.cu's
kCompiled) or the serial state_kernel (performer_causal = 2, the verified one). Per case (B = 4, H = 16,
m = 256, float16 and, with PyTorch, bfloat16; D = Dv = 64 and 128; S = 4096 and 16384): million tokens/s
(B S / call time, CUDA events, median) of both, of exact causal attention on the same q, k, v (the target:
every linear-time mechanism faster than exact attention from S = 4096), their ratio, and the largest
difference between the two passes' outputs (rounding only), one line per case:

    pcausal float16  D=64  S=4096  mma3 27.1  serial 10.7  exact_causal 26.2  (Mtok/s)  mma3/serial 2.53  ...

    python bench/bench_performer_causal.py [--json out.json] [--sizes 4096 16384] [--dims 64 128]
    python bench/bench_performer_causal.py --dry     # the same rows on the CPU backend, tiny shapes (a check)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _rows(attnkit, make, timer, to_np, sizes, dims, dtypes, B, H, m, log):
    has = getattr(attnkit._core, "cuda_has_kernel", None)
    enabled = bool(has and has("performer_attention_mma3_causal"))
    rows = []
    for dtype in dtypes:
        for D in dims:
            W = attnkit.random_features(m, D, seed=1, dtype=np.float32)
            for S in sizes:
                q, k, v = (make((B, H, S, D), dtype, 1 / math.sqrt(math.sqrt(D))) for _ in range(3))
                Wd = make.features(W, dtype)
                row = {"dtype": dtype, "B": B, "H": H, "S": S, "D": D, "m": m, "mma3_enabled": enabled}
                outs = {}
                for name, value in (("mma3", 0), ("serial", 2)):
                    attnkit._core.set_tuning("performer_causal", value)
                    try:
                        fn = lambda: attnkit.performer_attention(q, k, v, Wd, causal=True)  # noqa: E731
                        t = timer(fn)
                        row[f"{name}_s"], row[f"{name}_mtok_s"] = t, B * S / t / 1e6
                        outs[name] = fn()
                        if name == "mma3":  # the same bits on a second call
                            row["mma3_repeat_same_bits"] = to_np.same(outs[name], fn())
                    except Exception as e:  # noqa: BLE001 - the row records it
                        row[f"{name}_note"] = f"{e.__class__.__name__}: {e}"
                    finally:
                        attnkit._core.set_tuning("performer_causal", 0)
                try:
                    t = timer(lambda: attnkit.attention(q, k, v, causal=True))
                    row["exact_causal_s"], row["exact_causal_mtok_s"] = t, B * S / t / 1e6
                except Exception as e:  # noqa: BLE001
                    row["exact_causal_note"] = f"{e.__class__.__name__}: {e}"
                if "mma3" in outs and "serial" in outs:
                    row["max_abs_diff"], row["max_abs_out"] = to_np.diff(outs["mma3"], outs["serial"])
                del outs
                rows.append(row)

                def f(key):
                    x = row.get(key)
                    return f"{x:6.2f}" if x is not None else "   n/a"

                ratio = (row["serial_s"] / row["mma3_s"]) if row.get("mma3_s") and row.get("serial_s") else None
                vs_exact = (row["exact_causal_s"] / row["mma3_s"]) if row.get("mma3_s") and row.get(
                    "exact_causal_s") else None
                notes = "  ".join(f"{n}: {row[n + '_note']}" for n in ("mma3", "serial", "exact_causal")
                                  if row.get(n + "_note"))
                parts = [f"pcausal {dtype:8s} D={D:<3d} S={S:<6d}", f"mma3 {f('mma3_mtok_s')}",
                         f"serial {f('serial_mtok_s')}", f"exact_causal {f('exact_causal_mtok_s')} (Mtok/s)",
                         f"mma3/serial {ratio:.2f}" if ratio else "mma3/serial n/a",
                         f"mma3/exact_causal {vs_exact:.2f}" if vs_exact else "mma3/exact_causal n/a",
                         f"|mma3-serial| {row.get('max_abs_diff', float('nan')):.3g} of "
                         f"{row.get('max_abs_out', float('nan')):.3g}",
                         f"same bits twice {row.get('mma3_repeat_same_bits')}", f"mma3 gate open {enabled}"]
                log("  ".join(parts) + (f"  {notes}" if notes else ""))
                del q, k, v
    return rows


def kernel_profile(torch, attnkit, fn, log, label, n=3):
    """Per-kernel device time per call of fn() by torch's profiler (CUPTI traces every kernel of the process,
    attnkit's included): one line per kernel, microseconds per call, so the state pass and out_kernel are seen
    apart. Returns {kernel: us per call}; logs why where it does not run."""
    try:
        from torch.profiler import ProfilerActivity, profile

        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(n):
                fn()
            torch.cuda.synchronize()
        times = {}
        for e in prof.key_averages():
            t = getattr(e, "device_time_total", None)
            if t is None:
                t = getattr(e, "cuda_time_total", 0.0)
            name = e.key
            if not t or "Memcpy" in name or "Memset" in name:
                continue
            short = name.split("(")[0].replace("void ", "").replace("attnkit::detail::cuda::", "")
            times[short] = times.get(short, 0.0) + t / n
        total = sum(times.values())
        log(f"kernels {label}: " + "  ".join(f"{k} {v:.0f}" for k, v in sorted(times.items(), key=lambda kv: -kv[1]))
            + f"  total {total:.0f} (us per call)")
        return times
    except Exception as e:  # noqa: BLE001 - informational only
        log(f"kernels {label}: n/a ({e.__class__.__name__}: {e})")
        return {}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None, help="write the rows here (default: print only)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16"])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--dry", action="store_true", help="the CPU backend on tiny shapes: checks this script only")
    a = ap.parse_args(argv)

    def log(msg):
        print(msg, flush=True)

    import attnkit

    t0 = time.perf_counter()
    if a.dry:
        rng = np.random.default_rng(0)

        def make(shape, dtype, scale):
            dt = np.float32 if dtype == "bfloat16" else np.dtype(dtype)  # NumPy has no bfloat16: float32 stands in
            return (rng.standard_normal(shape) * scale).astype(dt)

        make.features = lambda W, dtype: W

        def timer(fn):
            ts = []
            for _ in range(3):
                t = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t)
            return sorted(ts)[1]

        def to_np(x):
            return np.asarray(x)

        to_np.same = lambda x, y: bool(np.array_equal(x, y, equal_nan=True))
        to_np.diff = lambda x, y: (float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max(initial=0.0)),
                                   float(np.abs(y.astype(np.float64)).max(initial=0.0)))
        rows = _rows(attnkit, make, timer, to_np, [256, 300], [64, 128], a.dtypes, 1, 2, 64, log)
    else:
        from gpu_util import Timer, gpu_or_reason, randn

        cupy, reason = gpu_or_reason()
        if cupy is None:
            log(f"bench_performer_causal: no GPU run ({reason})")
            return 0
        dtypes = list(a.dtypes)
        if "bfloat16" in dtypes:
            try:
                import torch

                if not torch.cuda.is_available():
                    raise RuntimeError("no CUDA in torch")
            except Exception:  # noqa: BLE001
                log("bench_performer_causal: bfloat16 skipped (needs PyTorch with CUDA)")
                dtypes.remove("bfloat16")

        def make(shape, dtype, scale):
            return randn(cupy, shape, dtype, scale)

        def features(W, dtype):  # bfloat16 operands are torch tensors: the features too (no CuPy / torch mix)
            if dtype == "bfloat16":
                import torch

                return torch.as_tensor(W, device="cuda")
            return cupy.asarray(W)

        make.features = features

        def to_np(x):
            if hasattr(x, "get"):
                return x.get()
            return x.float().cpu().numpy()  # a torch bfloat16 tensor

        def same(x, y):  # on the device (CuPy arrays, or torch tensors for bfloat16)
            if hasattr(x, "get"):
                return bool(cupy.array_equal(x, y, equal_nan=True))
            return bool(((x == y) | (x.isnan() & y.isnan())).all().item())

        def diff(x, y):  # largest |x - y| and |y| in float32 on the device, NaNs skipped
            if x.size == 0 if hasattr(x, "get") else x.numel() == 0:
                return 0.0, 0.0
            if hasattr(x, "get"):
                xf, yf = x.astype(np.float32), y.astype(np.float32)
                return (float(cupy.nan_to_num(cupy.abs(xf - yf), nan=0.0).max()),
                        float(cupy.nan_to_num(cupy.abs(yf), nan=0.0).max()))
            xf, yf = x.float(), y.float()
            return float((xf - yf).abs().nan_to_num(nan=0.0).max()), float(yf.abs().nan_to_num(nan=0.0).max())

        to_np.same, to_np.diff = same, diff
        timer = Timer(cupy, a.reps, 2, 0.5)
        rows = _rows(attnkit, make, timer, to_np, a.sizes, a.dims, dtypes, 4, 16, 256, log)
        try:  # where the time goes: per-kernel device times of both state passes (float16, D = 64, S = 4096)
            import torch

            if torch.cuda.is_available():
                S, D = a.sizes[0], a.dims[0]
                q, k, v = (randn(cupy, (4, 16, S, D), "float16", 1 / math.sqrt(math.sqrt(D))) for _ in range(3))
                W = cupy.asarray(attnkit.random_features(256, D, seed=1, dtype=np.float32))
                prof = {}
                for name, value in (("mma3", 0), ("serial", 2)):
                    attnkit._core.set_tuning("performer_causal", value)
                    try:
                        prof[name] = kernel_profile(torch, attnkit,
                                                    lambda: attnkit.performer_attention(q, k, v, W, causal=True), log,
                                                    f"{name} float16 D={D} S={S}")
                    finally:
                        attnkit._core.set_tuning("performer_causal", 0)
                rows.append({"kind": "kernel_profile_us", "S": S, "D": D, **prof})
        except Exception as e:  # noqa: BLE001
            log(f"kernels: n/a ({e.__class__.__name__}: {e})")
    log(f"bench_performer_causal: {len(rows)} rows in {time.perf_counter() - t0:.1f} s")
    if a.json:
        Path(a.json).write_text(json.dumps({"benchmark": "bench_performer_causal", "dry": a.dry, "rows": rows},
                                           indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
