"""attnkit's CUDA backend side by side with PyTorch on the same GPU, in one process.

* Exact attention vs ``torch.nn.functional.scaled_dot_product_attention`` with the flash backend
  (``sdpa_kernel(SDPBackend.FLASH_ATTENTION)``), bfloat16 and float16, B=4, H=16, D=64 and 128,
  S = 1024 .. 16384, causal and not: TFLOP/s (4*B*H*S*S*D FLOPs, halved for causal) and the ratio
  attnkit / torch.
* ``attention_backward`` vs torch's flash backward (``autograd.grad`` of SDPA's output; the forward is not
  timed), same grid with S = 4096 under ``--quick``: TFLOP/s with FlashAttention's convention for the
  backward (2.5x the forward's FLOPs).
* The tile-shape variants of the tensor-core exact-attention kernel (``ATTNKIT_MMA_VARIANT``: "0" .. "4"
  of the v2 kernel; ``--variants``, on under ``--quick``): float16 and bfloat16,
  D=64 and 128, S=1024 and 4096, causal and not, each variant in its own process (the variable is read
  once per process), as TFLOP/s, the ratio to torch flash from the exact rows above, the largest difference
  from torch's output (a correctness check of every variant on the benchmark's own shapes), and the device
  times of attnkit and torch flash (``DeviceTimer``: host work per call hidden; the call times include it,
  ~0.15-0.2 ms more for bfloat16, whose torch tensors go through DLPack) with their ratio.
* Decode (Sq=1, Sk up to 128K, GQA Hq=32, Hkv=8, D=128, float16): GB/s of K+V read
  (2 * B * Hkv * Sk * D * itemsize bytes per call) and the % of the peak bandwidth (``--peak-gbs``, default
  3350 GB/s: H100 SXM); torch SDPA (GQA) alongside where it runs.
* Decode kernel variants (``--decode-sweep``, on under ``--quick``): the v1 kernel and v2 with every
  (keys per lane group and step, target grid size) of cuda/attention_decode2.cuh, switched in-process
  through ``attnkit._core.set_tuning``, on GQA 32:8 (Sq 1 and 2) and MHA, Sk = 16384 and 131072: GB/s by
  call time and by device time (a spin kernel ahead of the call hides the host work), and the variant with
  the best geometric-mean device GB/s (the one to make the default).
* Linear attention (elu+1), Performer (m=256) and DLA prefill (tokens/s) and DLA decode (one token with a
  cache of S tokens; tokens/s) vs exact attention on the same shape (float16, B=4, H=16, D=64, S = 4096 ..).
* DLA prefill kernels side by side (``--dla-sweep``, on under ``--quick``; S = 4096, 16384): the first CUDA
  kernel vs the second (``cuda/dla_prefill_v2.cu``) with each column split (tuning option ``dla_split``),
  whether the splits give the same bits, and the largest difference between the two kernels.
* Linear-attention kernel variants (``--linear-sweep``, on under ``--quick``): linear attention and
  Performer (bidirectional and causal, S = 4096 and 16384) once per variant of cuda/linear.cu's internal
  tuning (the v1 kernels, the v2 kernels with causal chunk 32 / 64 / 128 and key segment 128 / 512 / 2048,
  v2 with its scratch from the default pool instead of its own, v1 with the default pool told to keep its
  memory), each variant in a fresh process
  (the tuning is read once per process from ATTNKIT_LINEAR_CUDA_*; v2 needs ATTNKIT_CUDA_UNVERIFIED=1
  until verified).

Timing: CUDA events on the current (null) stream around each call, after warm-up, median of ``--reps``
(fewer for calls slower than ``--target-s``). attnkit gets CuPy arrays; torch gets the same memory through
DLPack (``torch.from_dlpack``). bfloat16 inputs go to attnkit as torch tensors (CuPy has no bfloat16);
where attnkit does not take them the row says why. A mechanism without a CUDA kernel in this build is
listed as "no kernel" and skipped. Writes JSON (device, versions, every row) to ``--json`` (default
bench/results/gpu.json), rewritten after every row so that an interrupted run keeps what it measured.

    python bench/bench_gpu.py [--quick] [--json out.json] [--peak-gbs 3350] [--budget-s 110] [--dla-sweep]
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

RESULTS = Path(__file__).resolve().parent / "results"


def log(msg: str) -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------------------- setup
def gpu_or_reason():
    """(cupy, None) when a CUDA device and a CUDA build of attnkit are there, else (None, reason)."""
    try:
        import cupy
    except Exception as e:  # noqa: BLE001 - any import failure means no GPU here
        return None, f"CuPy is not importable ({e.__class__.__name__}: {e})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # noqa: BLE001
        return None, f"no CUDA driver/device ({e.__class__.__name__}: {e})"
    if n == 0:
        return None, "no CUDA device"
    import attnkit

    if not attnkit.info()["cuda_built"]:
        return None, "attnkit was built without CUDA"
    return cupy, None


def torch_or_none():
    try:
        import torch

        return torch if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001
        return None


def no_kernel_reason(e: Exception):
    msg = str(e)
    if isinstance(e, RuntimeError) and ("no CUDA kernel" in msg or "built without CUDA" in msg):
        return msg
    return None


def kernel_table(cupy, attnkit):
    """{mechanism: None (kernel there) or the core's "no CUDA kernel" reason} from one tiny call each."""
    rng = np.random.default_rng(0)

    def t(*shape):
        return cupy.asarray(rng.standard_normal(shape).astype(np.float16))

    probes = {
        "attention": lambda: attnkit.attention(t(1, 1, 4, 8), t(1, 1, 4, 8), t(1, 1, 4, 8)),
        "attention_backward": lambda: attnkit.attention_backward(
            t(1, 1, 4, 8), t(1, 1, 4, 8), t(1, 1, 4, 8), t(1, 1, 4, 8), t(1, 1, 4, 8),
            cupy.zeros((1, 1, 4), np.float32)),
        "linear_attention": lambda: attnkit.linear_attention(t(1, 1, 4, 8), t(1, 1, 4, 8), t(1, 1, 4, 8)),
        "performer_attention": lambda: attnkit.performer_attention(
            t(1, 1, 4, 8), t(1, 1, 4, 8), t(1, 1, 4, 8), cupy.asarray(attnkit.random_features(4, 8))),
        "dynamic_linear_attention": lambda: attnkit.dynamic_linear_attention(
            t(1, 1, 4, 8), t(1, 1, 4, 8), t(1, 1, 4, 8), cupy.ones((1, 1, 4, 2), np.float16), capacity=2),
    }
    table = {}
    for name, fn in probes.items():
        try:
            fn()
            cupy.cuda.Device().synchronize()
            table[name] = None
        except Exception as e:  # noqa: BLE001 - the table records why
            # another failure: the kernel is there, its rows run (and record their own errors)
            table[name] = no_kernel_reason(e)
            if table[name] is None:
                log(f"bench_gpu: the probe call of {name} failed: {e.__class__.__name__}: {e}")
    return table


def environment(cupy, torch, attnkit, peak):
    dev = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    env = {"device": name, "compute_capability": f"{props['major']}.{props['minor']}",
           "memory_gib": round(props["totalGlobalMem"] / 2**30, 1), "sms": props["multiProcessorCount"],
           "cuda_driver": cupy.cuda.runtime.driverGetVersion(), "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
           "attnkit": attnkit.__version__, "cupy": cupy.__version__, "numpy": np.__version__,
           "python": sys.version.split()[0], "peak_bandwidth_gbs": peak,
           "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if torch is not None:
        env["torch"] = torch.__version__
        env["torch_cuda"] = torch.version.cuda
    return env


# ----------------------------------------------------------------------------------------- timing
class Timer:
    def __init__(self, cupy, reps, warmup, target_s):
        self.cupy, self.reps, self.warmup, self.target_s = cupy, reps, warmup, target_s

    def __call__(self, fn) -> float:
        """Median seconds of fn() by CUDA events on the current stream (warm-up first; fewer repetitions
        for slow calls, at least 3)."""
        cupy = self.cupy
        for _ in range(self.warmup):
            fn()
        cupy.cuda.Device().synchronize()
        times = []
        reps = self.reps
        for i in range(reps):
            start, stop = cupy.cuda.Event(), cupy.cuda.Event()
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(cupy.cuda.get_elapsed_time(start, stop) / 1e3)
            if i == 0 and times[0] * reps > self.target_s:
                reps = max(3, int(self.target_s / max(times[0], 1e-9)))
            if i + 1 >= reps:
                break
        return statistics.median(times)


def attempt(fn):
    """(value, None) or (None, reason): "no kernel: ..." or "error: ...", never an exception."""
    try:
        return fn(), None
    except Exception as e:  # noqa: BLE001 - every failure becomes a row note
        reason = no_kernel_reason(e)
        return None, (f"no kernel: {reason}" if reason else f"error: {e.__class__.__name__}: {e}")


# ----------------------------------------------------------------------------------------- inputs
def randn(cupy, shape, dtype, scale=1.0):
    """A device array of standard normals (bfloat16: a torch tensor, CuPy has no bfloat16)."""
    if dtype == "bfloat16":
        import torch

        return torch.randn(shape, device="cuda", dtype=torch.bfloat16) * scale
    x = cupy.random.standard_normal(shape, dtype=np.float32) * scale
    return x.astype(dtype)


def as_torch(torch, x):
    return x if isinstance(x, torch.Tensor) else torch.from_dlpack(x)


def flops(B, H, Sq, Sk, D, causal):
    f = 4.0 * B * H * Sq * Sk * D
    return f / 2 if causal else f


def add_rates(row, f):
    """TFLOP/s of attnkit and torch's flash backend from their times for f FLOPs, and their ratio."""
    for who in ("attnkit", "torch_flash"):
        if row.get(f"{who}_s"):
            row[f"{who}_tflops"] = f / row[f"{who}_s"] / 1e12
    if row.get("attnkit_s") and row.get("torch_flash_s"):
        row["ratio_vs_torch"] = row["torch_flash_s"] / row["attnkit_s"]


# ----------------------------------------------------------------------------------------- benchmarks
def exact_rows(ctx, dtypes, dims, sizes, B=4, H=16):
    cupy, torch, attnkit, timer = ctx["cupy"], ctx["torch"], ctx["attnkit"], ctx["timer"]
    for dtype in dtypes:
        for D in dims:
            for S in sizes:
                if ctx["out_of_time"]():
                    return
                if dtype == "bfloat16" and torch is None:  # CuPy has no bfloat16: the inputs are torch tensors
                    for causal in (False, True):
                        ctx["add"]({"kind": "exact", "dtype": dtype, "B": B, "H": H, "S": S, "D": D, "causal": causal,
                                    "attnkit_note": "bfloat16 device inputs need PyTorch with CUDA"})
                    continue
                q, k, v = (randn(cupy, (B, H, S, D), dtype, 1 / math.sqrt(math.sqrt(D))) for _ in range(3))
                for causal in (False, True):
                    row = {"kind": "exact", "dtype": dtype, "B": B, "H": H, "S": S, "D": D, "causal": causal}
                    if ctx["kernels"]["attention"]:
                        row["attnkit_note"] = "no kernel: " + ctx["kernels"]["attention"]
                    else:
                        t, note = attempt(lambda: timer(lambda: attnkit.attention(q, k, v, causal=causal)))
                        row["attnkit_s"], row["attnkit_note"] = t, note
                    if torch is not None:
                        tq, tk, tv = (as_torch(torch, x) for x in (q, k, v))

                        def flash_timed():
                            from torch.nn.attention import SDPBackend, sdpa_kernel

                            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # flash only: an error, not a fallback
                                return timer(lambda: torch.nn.functional.scaled_dot_product_attention(
                                    tq, tk, tv, is_causal=causal))

                        t, note = attempt(flash_timed)
                        row["torch_flash_s"], row["torch_note"] = t, note
                    add_rates(row, flops(B, H, S, S, D, causal))
                    ctx["add"](row)
                del q, k, v
                cupy.get_default_memory_pool().free_all_blocks()


# ATTNKIT_MMA_VARIANT values: cuda/attention.cu, cuda/attention_mma2.cuh ("3", "4": 64-row blocks, need
# "attention_mma_v2_small", i.e. ATTNKIT_CUDA_UNVERIFIED=1 until verified, else they run 0: v2_small says).
# "v1" (the previous kernel, bench/results/gpu_h100.json: 0.34-0.52 of torch) left out for time.
MMA_VARIANTS = ["0", "1", "2", "3", "4"]


def variant_worker(spec: str) -> int:
    """In a process of its own (ATTNKIT_MMA_VARIANT set by the parent): times attnkit.attention on each
    config of spec (JSON: configs, B, H, reps, warmup, target_s), by call time and by device time, and
    compares its output with torch's flash SDPA (also timed on the device); prints one JSON line
    {"v2": bool, "v2_small": bool, "rows": [...]} as the last line of stdout."""
    cfg = json.loads(spec)
    cupy, reason = gpu_or_reason()
    if cupy is None:
        print(json.dumps({"error": reason}))
        return 0
    import attnkit

    torch = torch_or_none()
    timer = Timer(cupy, cfg["reps"], cfg["warmup"], cfg["target_s"])
    dtimer = DeviceTimer(cupy, torch, cfg["reps"])
    B, H, rows = cfg["B"], cfg["H"], []
    for dtype, D, S, causal in cfg["configs"]:
        row = {"dtype": dtype, "D": D, "S": S, "causal": causal}
        if dtype == "bfloat16" and torch is None:
            row["attnkit_note"] = "bfloat16 device inputs need PyTorch with CUDA"
            rows.append(row)
            continue
        q, k, v = (randn(cupy, (B, H, S, D), dtype, 1 / math.sqrt(math.sqrt(D))) for _ in range(3))
        t, note = attempt(lambda: timer(lambda: attnkit.attention(q, k, v, causal=causal)))
        row["attnkit_s"], row["attnkit_note"] = t, note
        if t:
            row["attnkit_device_s"], _ = attempt(lambda: dtimer(lambda: attnkit.attention(q, k, v, causal=causal)))
        if t and torch is not None:
            def flash_device():
                from torch.nn.attention import SDPBackend, sdpa_kernel

                tq, tk, tv = (as_torch(torch, x) for x in (q, k, v))
                sdpa = torch.nn.functional.scaled_dot_product_attention
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    return dtimer(lambda: sdpa(tq, tk, tv, is_causal=causal))

            row["torch_flash_device_s"], _ = attempt(flash_device)

            def max_err():
                from torch.nn.attention import SDPBackend, sdpa_kernel

                tq, tk, tv = (as_torch(torch, x) for x in (q, k, v))
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    want = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
                got = as_torch(torch, attnkit.attention(q, k, v, causal=causal))
                return float((got.float() - want.float()).abs().max().item())

            row["max_abs_err_vs_torch"], err_note = attempt(max_err)
            if err_note:
                row["err_note"] = err_note
        rows.append(row)
        del q, k, v
        cupy.get_default_memory_pool().free_all_blocks()
    print(json.dumps({"v2": bool(attnkit._core.cuda_has_kernel("attention_mma_v2")),
                      "v2_small": bool(attnkit._core.cuda_has_kernel("attention_mma_v2_small")), "rows": rows}))
    return 0


def variant_rows(ctx, dtypes, dims, sizes=(1024, 4096), B=4, H=16, timeout_s=90):
    """Each ATTNKIT_MMA_VARIANT in a subprocess (bench_gpu.py --variant-worker), side by side; the torch
    flash call time of the same shape comes from the exact rows (same process, same inputs' shape), its
    device time from the worker."""
    import os
    import subprocess

    if ctx["kernels"]["attention"]:
        return
    configs = [[dtype, D, S, causal] for dtype in dtypes for D in dims for S in sizes for causal in (False, True)]
    torch_s = {(r["dtype"], r["D"], r["S"], r["causal"]): r.get("torch_flash_s") for r in ctx["rows"]
               if r["kind"] == "exact"}
    timer = ctx["timer"]
    spec = json.dumps({"configs": configs, "B": B, "H": H, "reps": timer.reps, "warmup": timer.warmup,
                       "target_s": timer.target_s})
    for variant in MMA_VARIANTS:
        if ctx["out_of_time"]():
            return
        env = dict(os.environ, ATTNKIT_MMA_VARIANT=variant)
        t0 = time.monotonic()
        try:
            r = subprocess.run([sys.executable, __file__, "--variant-worker", spec], env=env, capture_output=True,
                               text=True, timeout=timeout_s)
            lines = r.stdout.strip().splitlines()
            got = json.loads(lines[-1]) if lines else {"error": f"no output (rc {r.returncode}): {r.stderr[-400:]}"}
        except Exception as e:  # noqa: BLE001 - a failed variant becomes a row note
            got = {"error": f"{e.__class__.__name__}: {e}"}
        wall = round(time.monotonic() - t0, 1)
        if "error" in got:
            ctx["add"]({"kind": "exact_variant", "variant": variant, "dtype": "-", "D": 0, "S": 0, "causal": False,
                        "attnkit_note": "error: " + str(got["error"])[-300:], "worker_s": wall})
            continue
        for row in got["rows"]:
            row.update(kind="exact_variant", variant=variant, B=B, H=H, v2_enabled=got["v2"],
                       v2_small_enabled=got.get("v2_small"), worker_s=wall)
            S = row["S"]
            f = flops(B, H, S, S, row["D"], row["causal"])
            if row.get("attnkit_s"):
                row["attnkit_tflops"] = f / row["attnkit_s"] / 1e12
            for who in ("attnkit", "torch_flash"):
                if row.get(f"{who}_device_s"):
                    row[f"{who}_device_tflops"] = f / row[f"{who}_device_s"] / 1e12
            if row.get("attnkit_device_s") and row.get("torch_flash_device_s"):
                row["device_ratio_vs_torch"] = row["torch_flash_device_s"] / row["attnkit_device_s"]
            ts = torch_s.get((row["dtype"], row["D"], S, row["causal"]))
            if ts:
                row["torch_flash_s"], row["torch_flash_tflops"] = ts, f / ts / 1e12
                if row.get("attnkit_s"):
                    row["ratio_vs_torch"] = ts / row["attnkit_s"]
            ctx["add"](row)


def backward_rows(ctx, dtypes, dims, sizes, B=4, H=16):
    """attention_backward vs torch's flash backward (autograd.grad of SDPA's output, the forward not timed):
    TFLOP/s with FlashAttention's convention for the backward, 2.5x the forward's FLOPs."""
    cupy, torch, attnkit, timer = ctx["cupy"], ctx["torch"], ctx["attnkit"], ctx["timer"]
    for dtype in dtypes:
        if dtype == "bfloat16" and torch is None:
            continue
        for D in dims:
            for S in sizes:
                if ctx["out_of_time"]():
                    return
                q, k, v, dout = (randn(cupy, (B, H, S, D), dtype, 1 / math.sqrt(math.sqrt(D))) for _ in range(4))
                for causal in (False, True):
                    row = {"kind": "backward", "dtype": dtype, "B": B, "H": H, "S": S, "D": D, "causal": causal}
                    # which kernels run: the tensor-core backward (cuda/attention_backward_mma.cu) is gated
                    # on ATTNKIT_CUDA_UNVERIFIED=1 until verified; ATTNKIT_CUDA_BWD_SIMT=1 forces the SIMT one
                    mma = (os.environ.get("ATTNKIT_CUDA_UNVERIFIED") == "1"
                           and os.environ.get("ATTNKIT_CUDA_BWD_SIMT") != "1" and D in (64, 128))
                    row["attnkit_path"] = "tensor cores (unverified gate)" if mma else "simt"
                    if ctx["kernels"].get("attention_backward"):
                        row["attnkit_note"] = "no kernel: " + ctx["kernels"]["attention_backward"]
                    else:
                        def attnkit_timed():
                            out, lse = attnkit.attention(q, k, v, causal=causal, return_lse=True)
                            return timer(lambda: attnkit.attention_backward(dout, q, k, v, out, lse, causal=causal))

                        t, note = attempt(attnkit_timed)
                        row["attnkit_s"], row["attnkit_note"] = t, note
                    if torch is not None:
                        def flash_timed():
                            from torch.nn.attention import SDPBackend, sdpa_kernel

                            tq, tk, tv = (as_torch(torch, x).detach().requires_grad_() for x in (q, k, v))
                            tg = as_torch(torch, dout)
                            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                                o = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
                                return timer(lambda: torch.autograd.grad(o, (tq, tk, tv), tg, retain_graph=True))

                        t, note = attempt(flash_timed)
                        row["torch_flash_s"], row["torch_note"] = t, note
                    add_rates(row, 2.5 * flops(B, H, S, S, D, causal))
                    ctx["add"](row)
                del q, k, v, dout
                cupy.get_default_memory_pool().free_all_blocks()


def decode_rows(ctx, sizes, B=4, Hq=32, Hkv=8, D=128, dtype="float16"):
    cupy, torch, attnkit, timer = ctx["cupy"], ctx["torch"], ctx["attnkit"], ctx["timer"]
    for Sk in sizes:
        if ctx["out_of_time"]():
            return
        q = randn(cupy, (B, Hq, 1, D), dtype)
        k, v = (randn(cupy, (B, Hkv, Sk, D), dtype) for _ in range(2))
        kv_bytes = 2 * B * Hkv * Sk * D * np.dtype(dtype).itemsize
        row = {"kind": "decode", "dtype": dtype, "B": B, "Hq": Hq, "Hkv": Hkv, "Sq": 1, "Sk": Sk, "D": D,
               "kv_bytes": kv_bytes}
        if ctx["kernels"]["attention"]:
            row["attnkit_note"] = "no kernel: " + ctx["kernels"]["attention"]
        else:
            t, note = attempt(lambda: timer(lambda: attnkit.attention(q, k, v)))
            row["attnkit_s"], row["attnkit_note"] = t, note
            if t:  # device time alone (DeviceTimer): the gap to the call time is host work per call
                td, _ = attempt(lambda: DeviceTimer(cupy, torch, 5)(lambda: attnkit.attention(q, k, v)))
                if td:
                    row["attnkit_device_s"], row["attnkit_device_gbs"] = td, kv_bytes / td / 1e9
        if torch is not None:
            tq, tk, tv = (as_torch(torch, x) for x in (q, k, v))
            t, note = attempt(lambda: timer(lambda: torch.nn.functional.scaled_dot_product_attention(
                tq, tk, tv, enable_gqa=True)))
            row["torch_s"], row["torch_note"] = t, note  # torch picks its backend (GQA decode)
        for who in ("attnkit", "torch"):
            if row.get(f"{who}_s"):
                row[f"{who}_gbs"] = kv_bytes / row[f"{who}_s"] / 1e9
                row[f"{who}_pct_peak"] = 100 * row[f"{who}_gbs"] / ctx["peak"]
        ctx["add"](row)
        del q, k, v
        cupy.get_default_memory_pool().free_all_blocks()


class DeviceTimer:
    """Device-only seconds of fn(): a ~3 ms spin kernel is enqueued first, so fn's host work (Python,
    validation, launches) happens while the GPU is busy and the events time the GPU work alone (unless fn
    synchronizes). The spin is a CuPy RawKernel (NVRTC), else torch.cuda._sleep; None without either."""

    def __init__(self, cupy, torch, reps):
        self.cupy, self.reps, self.spin = cupy, reps, None
        try:
            k = cupy.RawKernel(r"""extern "C" __global__ void attnkit_bench_spin(long long cycles) {
                long long t0 = clock64(); while (clock64() - t0 < cycles) { } }""", "attnkit_bench_spin")
            k((1,), (1,), (np.int64(6_000_000),))
            cupy.cuda.Device().synchronize()
            self.spin = lambda: k((1,), (1,), (np.int64(6_000_000),))
        except Exception:  # noqa: BLE001 - no NVRTC: torch's sleep kernel, on the same (legacy default) stream
            if torch is not None:
                self.spin = lambda: torch.cuda._sleep(6_000_000)

    def __call__(self, fn):
        if self.spin is None:
            return None
        cupy = self.cupy
        fn()
        cupy.cuda.Device().synchronize()
        times = []
        for _ in range(self.reps):
            start, stop = cupy.cuda.Event(), cupy.cuda.Event()
            self.spin()
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(cupy.cuda.get_elapsed_time(start, stop) / 1e3)
        return statistics.median(times)


# The decode kernel's variants (cuda/attention_decode2.cuh, tuning options of attnkit._core.set_tuning):
# "v1" = the v1 kernel (cuda_decode=1); "k<keys>b<blocks>" = v2 with cuda_decode_keys / cuda_decode_blocks;
# "dflt-nopool" = v2's defaults with its split scratch from the default pool (cuda_decode_scratch=1).
DECODE_VARIANTS = [("v1", {"cuda_decode": 1})] + [
    (f"k{k}b{b}", {"cuda_decode": 0, "cuda_decode_keys": k, "cuda_decode_blocks": b})
    for k in (1, 2, 4) for b in (512, 1024, 2048, 4096)] + [("dflt-nopool", {"cuda_decode": 0, "cuda_decode_scratch": 1})]
DECODE_SWEEP_SHAPES = [("gqa32:8", 32, 8, 1), ("mha8", 8, 8, 1), ("gqa32:8-Sq2", 32, 8, 2)]


def decode_sweep_rows(ctx, sizes, B=4, D=128, dtype="float16"):
    """Every decode variant side by side in this process (switched through the core's tuning options), per
    shape and key length: call time (host included, as the decode rows) and device time (DeviceTimer), as
    GB/s of K+V. Ends with a summary row naming the variant with the best geometric-mean device GB/s."""
    cupy, attnkit, timer = ctx["cupy"], ctx["attnkit"], ctx["timer"]
    if ctx["kernels"]["attention"]:
        return
    core = attnkit._core
    try:
        v2 = bool(core.cuda_has_kernel("attention_decode_v2"))
        core.get_tuning("cuda_decode_scratch")
    except Exception as e:  # noqa: BLE001 - a build without the options
        log(f"bench_gpu: decode sweep skipped ({e.__class__.__name__}: {e})")
        return
    if not v2:
        log("bench_gpu: attention_decode_v2 is not enabled (ATTNKIT_CUDA_UNVERIFIED=1 enables it): "
            "the v2 variants below run the v1 kernel")
    dev_timer = DeviceTimer(cupy, ctx["torch"], 5)
    names = ("cuda_decode", "cuda_decode_keys", "cuda_decode_blocks", "cuda_decode_scratch")
    saved = {n: core.get_tuning(n) for n in names}
    scores = {}
    try:
        for shape, Hq, Hkv, Sq in DECODE_SWEEP_SHAPES:
            for Sk in sizes:
                if ctx["out_of_time"]():
                    return
                q = randn(cupy, (B, Hq, Sq, D), dtype)
                k, v = (randn(cupy, (B, Hkv, Sk, D), dtype) for _ in range(2))
                kv_bytes = 2 * B * Hkv * Sk * D * np.dtype(dtype).itemsize
                for name, opts in DECODE_VARIANTS:
                    for n in names:
                        core.set_tuning(n, 0)
                    for n, val in opts.items():
                        core.set_tuning(n, val)
                    row = {"kind": "decode_sweep", "dtype": dtype, "shape": shape, "B": B, "Hq": Hq, "Hkv": Hkv,
                           "Sq": Sq, "Sk": Sk, "D": D, "variant": name, "v2_enabled": v2, "kv_bytes": kv_bytes}
                    t, note = attempt(lambda: timer(lambda: attnkit.attention(q, k, v)))
                    row["call_s"], row["note"] = t, note
                    if t:
                        row["call_gbs"] = kv_bytes / t / 1e9
                        td, note = attempt(lambda: dev_timer(lambda: attnkit.attention(q, k, v)))
                        row["device_s"] = td
                        if td:
                            row["device_gbs"] = kv_bytes / td / 1e9
                            row["device_pct_peak"] = 100 * row["device_gbs"] / ctx["peak"]
                            scores.setdefault(name, []).append(row["device_gbs"])
                        elif note:
                            row["note"] = note
                    ctx["add"](row)
                del q, k, v
                cupy.get_default_memory_pool().free_all_blocks()
    finally:
        for n, val in saved.items():
            core.set_tuning(n, val)
    scores = {n: x for n, x in scores.items() if n.startswith("k")}  # the v2 (keys, blocks) variants
    full = {n: x for n, x in scores.items() if len(x) == max(len(y) for y in scores.values())}
    if full:
        gm = {n: float(np.exp(np.mean(np.log(x)))) for n, x in full.items()}
        best = max(gm, key=gm.get)
        ctx["add"]({"kind": "decode_sweep_best", "variant": best, "geomean_device_gbs": gm[best],
                    "geomean_device_gbs_by_variant": gm, "v2_enabled": v2,
                    "how": "make it the default: kDec2Keys / kDec2Blocks in cuda/attention_decode2.cuh "
                           "(or ATTNKIT_CUDA_DECODE=keys,blocks)"})
# ----------------------------------------------------------------------------------------- linear variants
LINEAR_SWEEP = [
    # name, environment, calls measured (most telling first: a --budget-s cut drops the tail)
    ("v2", {}, ("linear", "linear_causal", "performer", "performer_causal")),
    ("v1", {"ATTNKIT_LINEAR_CUDA_V1": "1"}, ("linear", "linear_causal", "performer", "performer_causal")),
    ("v2 default-pool", {"ATTNKIT_LINEAR_CUDA_POOL": "0"},
     ("linear", "linear_causal", "performer", "performer_causal")),
    ("v1 pool-keep", {"ATTNKIT_LINEAR_CUDA_V1": "1", "_POOL_KEEP": "1"},
     ("linear", "linear_causal", "performer", "performer_causal")),
    ("v2 chunk32", {"ATTNKIT_LINEAR_CUDA_CHUNK": "32"}, ("linear_causal", "performer_causal")),
    ("v2 chunk64", {"ATTNKIT_LINEAR_CUDA_CHUNK": "64"}, ("linear_causal", "performer_causal")),
    ("v2 chunk128", {"ATTNKIT_LINEAR_CUDA_CHUNK": "128"}, ("linear_causal", "performer_causal")),
    ("v2 seg128", {"ATTNKIT_LINEAR_CUDA_SEG": "128"}, ("linear", "performer")),
    ("v2 seg2048", {"ATTNKIT_LINEAR_CUDA_SEG": "2048"}, ("linear", "performer")),
]


def linear_child(sizes, calls, reps, warmup, target_s):
    """One sweep variant (run in a fresh process by linear_sweep): prints one JSON line {S: {call: s}}."""
    import os

    cupy, reason = gpu_or_reason()
    if cupy is None:
        print(json.dumps({"error": reason}))
        return 0
    import attnkit

    notes = {}
    if os.environ.get("_POOL_KEEP") == "1":
        # Diagnostic: the workspace comes from the default pool (cudaMallocAsync), whose release threshold 0
        # hands its memory back at every synchronization; keep it instead.
        try:
            rt = cupy.cuda.runtime
            pool = rt.deviceGetDefaultMemPool(cupy.cuda.Device().id)
            rt.memPoolSetAttribute(pool, 4, 2**63 - 1)  # cudaMemPoolAttrReleaseThreshold
        except Exception as e:  # noqa: BLE001 - recorded
            notes["pool"] = f"{e.__class__.__name__}: {e}"
    cupy.random.seed(0)
    timer = Timer(cupy, reps, warmup, target_s)
    B, H, D, m = 4, 16, 64, 256
    W = cupy.asarray(attnkit.random_features(m, D, dtype=np.float32))
    out = {}
    for S in sizes:
        q, k, v = (randn(cupy, (B, H, S, D), "float16", 1 / math.sqrt(math.sqrt(D))) for _ in range(3))
        fns = {"linear": lambda: attnkit.linear_attention(q, k, v, causal=False),
               "linear_causal": lambda: attnkit.linear_attention(q, k, v, causal=True),
               "performer": lambda: attnkit.performer_attention(q, k, v, W),
               "performer_causal": lambda: attnkit.performer_attention(q, k, v, W, causal=True)}
        res = {}
        for c in calls:
            t, note = attempt(lambda: timer(fns[c]))
            res[c] = t if t else note
        out[str(S)] = res
        del q, k, v
        cupy.get_default_memory_pool().free_all_blocks()
    print(json.dumps({"times": out, "notes": notes}))
    return 0


def linear_sweep(ctx, sizes, reps, warmup, target_s):
    """Every LINEAR_SWEEP variant in a fresh process (same GPU), one row per variant and length."""
    import os
    import subprocess

    for name, env_add, calls in LINEAR_SWEEP:
        if ctx["out_of_time"]():
            return
        env = dict(os.environ)
        env.update(env_add)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_linear-child", ",".join(map(str, sizes)),
               "--_calls", ",".join(calls), "--reps", str(reps), "--warmup", str(warmup), "--target-s", str(target_s)]
        try:
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=45)
            line = [x for x in r.stdout.splitlines() if x.startswith("{")]
            res = json.loads(line[-1]) if line else {"error": (r.stderr or "no output")[-300:]}
        except Exception as e:  # noqa: BLE001 - a failed variant becomes a row note
            res = {"error": f"{e.__class__.__name__}: {e}"}
        for S in sizes:
            row = {"kind": "linear_sweep", "variant": name, "env": env_add, "S": S, "B": 4, "H": 16, "D": 64,
                   "performer_m": 256, "dtype": "float16",
                   "unverified_enabled": os.environ.get("ATTNKIT_CUDA_UNVERIFIED") == "1"}
            if "error" in res:
                row["note"] = str(res["error"])[:300]
            else:
                row.update({k: v for k, v in res.get("notes", {}).items()})
                for c, t in res["times"].get(str(S), {}).items():
                    if isinstance(t, float):
                        row[f"{c}_s"] = t
                        row[f"{c}_tokens_per_s"] = 4 * S / t
                    else:
                        row[f"{c}_note"] = t
            ctx["add"](row)


def linear_rows(ctx, sizes, B=4, H=16, D=64, m=256, C=16, dtype="float16"):
    cupy, attnkit, timer, kernels = ctx["cupy"], ctx["attnkit"], ctx["timer"], ctx["kernels"]
    W = cupy.asarray(attnkit.random_features(m, D, dtype=np.float32))
    for S in sizes:
        if ctx["out_of_time"]():
            return
        q, k, v = (randn(cupy, (B, H, S, D), dtype, 1 / math.sqrt(math.sqrt(D))) for _ in range(3))
        lam = (cupy.random.random((B, H, S, C), dtype=np.float32) * (2.0 / C)).astype(dtype)
        row = {"kind": "linear_time", "dtype": dtype, "B": B, "H": H, "S": S, "D": D, "performer_m": m,
               "dla_capacity": C}
        calls = {
            "exact": ("attention", lambda: attnkit.attention(q, k, v)),
            "exact_causal": ("attention", lambda: attnkit.attention(q, k, v, causal=True)),
            "linear": ("linear_attention", lambda: attnkit.linear_attention(q, k, v, causal=False)),
            "linear_causal": ("linear_attention", lambda: attnkit.linear_attention(q, k, v, causal=True)),
            "performer": ("performer_attention", lambda: attnkit.performer_attention(q, k, v, W)),
            "performer_causal": ("performer_attention", lambda: attnkit.performer_attention(q, k, v, W, causal=True)),
            "dla_prefill": ("dynamic_linear_attention",
                            lambda: attnkit.dynamic_linear_attention(q, k, v, lam, capacity=C)),
        }
        for name, (mech, fn) in calls.items():
            if kernels[mech]:
                row[f"{name}_note"] = "no kernel"
                continue
            t, note = attempt(lambda: timer(fn))
            if t:
                row[f"{name}_s"] = t
                row[f"{name}_tokens_per_s"] = B * S / t
            else:
                row[f"{name}_note"] = note
        for name in ("linear", "performer"):
            if row.get(f"{name}_s") and row.get("exact_s"):
                row[f"{name}_speedup_vs_exact"] = row["exact_s"] / row[f"{name}_s"]
        for name in ("linear_causal", "performer_causal", "dla_prefill"):
            if row.get(f"{name}_s") and row.get("exact_causal_s"):
                row[f"{name}_speedup_vs_exact"] = row["exact_causal_s"] / row[f"{name}_s"]
        # decode: one token after S tokens. DLA from its cache (O(C D^2)); exact attention over S keys.
        q1, k1, v1 = q[:, :, -1:], k[:, :, -1:], v[:, :, -1:]
        if not kernels["dynamic_linear_attention"]:
            def dla_step():
                _, cache = attnkit.dynamic_linear_attention(q[:, :, :-1], k[:, :, :-1], v[:, :, :-1], lam[:, :, :-1],
                                                            capacity=C)
                return lambda: attnkit.dynamic_linear_attention(q1, k1, v1, lam[:, :, -1:], capacity=C, cache=cache)

            step, note = attempt(dla_step)
            t, note = attempt(lambda: timer(step)) if step else (None, note)
            if t:
                row["dla_decode_s"], row["dla_decode_tokens_per_s"] = t, B / t
            else:
                row["dla_decode_note"] = note
        else:
            row["dla_decode_note"] = "no kernel"
        if not kernels["attention"]:
            t, note = attempt(lambda: timer(lambda: attnkit.attention(q1, k, v)))
            if t:
                row["exact_decode_s"], row["exact_decode_tokens_per_s"] = t, B / t
            else:
                row["exact_decode_note"] = note
        if row.get("dla_decode_s") and row.get("exact_decode_s"):
            row["dla_decode_speedup_vs_exact"] = row["exact_decode_s"] / row["dla_decode_s"]
        ctx["add"](row)
        del q, k, v, lam
        cupy.get_default_memory_pool().free_all_blocks()


def dla_split_rows(ctx, sizes, B=4, H=16, D=64, C=16, dtype="float16"):
    """DLA prefill, the CUDA kernels side by side (tuning option dla_split): -1 = the first kernel
    (cuda/dla_prefill.cu), 0 = the second one with its automatic column split, 1/2/4 = the second one with
    that many blocks per (batch, head). Same inputs as linear_rows. Also records whether every split of the
    second kernel gives the same bits (it should) and its largest difference from the first kernel."""
    cupy, attnkit, timer, kernels = ctx["cupy"], ctx["attnkit"], ctx["timer"], ctx["kernels"]
    if kernels["dynamic_linear_attention"]:
        return
    from attnkit._tuning import tuning

    for S in sizes:
        if ctx["out_of_time"]():
            return
        q, k, v = (randn(cupy, (B, H, S, D), dtype, 1 / math.sqrt(math.sqrt(D))) for _ in range(3))
        lam = (cupy.random.random((B, H, S, C), dtype=np.float32) * (2.0 / C)).astype(dtype)
        row = {"kind": "dla_split", "dtype": dtype, "B": B, "H": H, "S": S, "D": D, "dla_capacity": C}
        ys = {}
        for split in (-1, 0, 1, 2, 4):
            def call(split=split):
                with tuning(dla_split=split):
                    return attnkit.dynamic_linear_attention(q, k, v, lam, capacity=C)

            t, note = attempt(lambda: timer(call))
            name = "v1" if split == -1 else f"v2_split{split}"
            if t:
                row[f"{name}_s"], row[f"{name}_tokens_per_s"] = t, B * S / t
                y, _ = call()
                ys[split] = y.astype(cupy.float32)
            else:
                row[f"{name}_note"] = note
        v2 = [ys[s] for s in (0, 1, 2, 4) if s in ys]
        if len(v2) > 1:
            row["v2_splits_same_bits"] = all(bool((x == v2[0]).all()) for x in v2[1:])
        if v2 and -1 in ys:
            row["v2_vs_v1_max_abs_diff"] = float(cupy.abs(v2[0] - ys[-1]).max())
            row["v1_max_abs"] = float(cupy.abs(ys[-1]).max())
        ctx["add"](row)
        del q, k, v, lam, ys, v2
        cupy.get_default_memory_pool().free_all_blocks()


# ----------------------------------------------------------------------------------------- report
def fmt(x, spec=".1f", none="-"):
    return none if x is None else format(x, spec)


def format_row(r) -> str:
    if r["kind"] == "exact_variant":
        head = f"variant {r['variant']:>2} {r['dtype']:>8} D={r['D']:<3} S={r['S']:<5} {'causal' if r['causal'] else 'full  '}"
        if not r.get("attnkit_s"):
            return f"{head} attnkit: {r.get('attnkit_note')}"[:240]
        err = r.get("max_abs_err_vs_torch")
        return (f"{head} attnkit {fmt(r.get('attnkit_tflops')):>6} TFLOP/s  ratio {fmt(r.get('ratio_vs_torch'), '.2f'):>5}"
                f"  device {fmt(r.get('attnkit_device_tflops')):>6} vs {fmt(r.get('torch_flash_device_tflops')):>6}"
                f" TFLOP/s ratio {fmt(r.get('device_ratio_vs_torch'), '.2f'):>5}"
                f"  max|out-torch| {fmt(err, '.2g')}  v2 {'on' if r.get('v2_enabled') else 'OFF'}"
                f"{'' if r.get('v2_small_enabled') or r['variant'] not in ('3', '4') else ' (v2_small OFF: ran 0)'}"
                f"{'  ' + r['err_note'] if r.get('err_note') else ''}"[:240])
    if r["kind"] in ("exact", "backward"):
        note = "" if r.get("attnkit_s") else f"  attnkit: {r.get('attnkit_note')}"
        if r.get("torch_note"):
            note += f"  torch: {r['torch_note']}"
        return (f"{'exact ' if r['kind'] == 'exact' else 'bwd   '} {r['dtype']:>8} D={r['D']:<3} S={r['S']:<5} {'causal' if r['causal'] else 'full  '} "
                f"attnkit {fmt(r.get('attnkit_tflops')):>6} TFLOP/s  torch-flash {fmt(r.get('torch_flash_tflops')):>6} "
                f"TFLOP/s  ratio {fmt(r.get('ratio_vs_torch'), '.2f'):>5}{note}"[:240])
    if r["kind"] == "decode_sweep":
        note = f"  {r['note']}" if r.get("note") else ""
        return (f"dsweep {r['shape']:<11} Sk={r['Sk']:<6} {r['variant']:<8} call {fmt(r.get('call_gbs'), '.0f'):>5} GB/s  "
                f"device {fmt(r.get('device_gbs'), '.0f'):>5} GB/s ({fmt(r.get('device_pct_peak'), '.0f')}% of peak)"
                f"{'' if r.get('v2_enabled') else '  (v2 not enabled)'}{note}"[:240])
    if r["kind"] == "decode_sweep_best":
        return (f"dsweep best variant by geometric-mean device GB/s: {r['variant']} "
                f"({fmt(r.get('geomean_device_gbs'), '.0f')} GB/s); {r['how']}"[:240])
    if r["kind"] == "decode":
        note = "" if r.get("attnkit_s") else f"  attnkit: {r.get('attnkit_note')}"
        return (f"decode {r['dtype']:>8} Hq={r['Hq']} Hkv={r['Hkv']} D={r['D']} Sk={r['Sk']:<6} "
                f"attnkit {fmt(r.get('attnkit_gbs'), '.0f'):>5} GB/s ({fmt(r.get('attnkit_pct_peak'), '.0f')}% of peak)  "
                f"torch {fmt(r.get('torch_gbs'), '.0f'):>5} GB/s  (attnkit device time: "
                f"{fmt(r.get('attnkit_device_gbs'), '.0f')} GB/s){note}"[:240])
    if r["kind"] == "dla_split":
        parts = [f"dla    {r['dtype']:>8} S={r['S']:<5}"]
        for name in ("v1", "v2_split0", "v2_split1", "v2_split2", "v2_split4"):
            tps = r.get(f"{name}_tokens_per_s")
            parts.append(f"{name} {fmt(tps and tps / 1e6, '.2f', r.get(f'{name}_note', '-')[:9])}")
        parts.append(f"splits same bits {r.get('v2_splits_same_bits', '-')}  |v2-v1| "
                     f"{fmt(r.get('v2_vs_v1_max_abs_diff'), '.2g')} of {fmt(r.get('v1_max_abs'), '.2g')}")
        return "  ".join(parts) + "  (Mtok/s)"
    if r["kind"] == "linear_sweep":
        parts = [f"sweep  {r['variant']:<13} S={r['S']:<5}"]
        for name in ("linear", "linear_causal", "performer", "performer_causal"):
            tps = r.get(f"{name}_tokens_per_s")
            if tps or r.get(f"{name}_note"):
                parts.append(f"{name} {fmt(tps and tps / 1e6, '.2f', str(r.get(f'{name}_note', '-'))[:9])}")
        if r.get("note"):
            parts.append(f"error: {r['note'][:120]}")
        return "  ".join(parts) + "  (Mtok/s)"
    parts = [f"linear {r['dtype']:>8} S={r['S']:<5}"]
    for name in ("exact", "exact_causal", "linear", "linear_causal", "performer", "performer_causal", "dla_prefill",
                 "exact_decode", "dla_decode"):
        tps = r.get(f"{name}_tokens_per_s")
        parts.append(f"{name} {fmt(tps and tps / 1e6, '.2f', r.get(f'{name}_note', '-')[:9])}")
    return "  ".join(parts) + "  (Mtok/s)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a cut grid (S = 1024, 4096, 16384; fewer decode and "
                                                         "linear sizes; fewer repetitions)")
    ap.add_argument("--json", default=str(RESULTS / "gpu.json"), help="where the JSON goes")
    ap.add_argument("--peak-gbs", type=float, default=3350.0, help="peak memory bandwidth in GB/s (H100 SXM: 3350)")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions per call (median; default 10, quick 5)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--target-s", type=float, default=1.0, help="at most about this many seconds per timed call set")
    ap.add_argument("--budget-s", type=float, default=None, help="stop starting new rows after this many seconds")
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="exact attention sequence lengths")
    ap.add_argument("--decode-sizes", type=int, nargs="+", default=None, help="decode key lengths")
    ap.add_argument("--decode-sweep", action="store_true", help="sweep the decode kernel's variants (on under "
                                                                 "--quick)")
    ap.add_argument("--decode-sweep-sizes", type=int, nargs="+", default=None, help="the sweep's key lengths")
    ap.add_argument("--linear-sizes", type=int, nargs="+", default=None, help="linear-time mechanisms' lengths")
    ap.add_argument("--variants", action="store_true", help="the tensor-core kernel's tile-shape variants side "
                                                             "by side (always under --quick)")
    ap.add_argument("--variant-worker", default=None, help=argparse.SUPPRESS)  # internal: variant_rows' subprocess
    ap.add_argument("--dla-sweep", action="store_true", help="DLA prefill kernels / column splits side by side "
                                                             "(S = 4096, 16384; on under --quick)")
    ap.add_argument("--linear-sweep", action="store_true", help="linear-attention kernel variants (on under --quick)")
    ap.add_argument("--_linear-child", dest="linear_child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_calls", dest="calls", default="", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.variant_worker is not None:
        return variant_worker(a.variant_worker)
    if a.linear_child is not None:
        return linear_child([int(x) for x in a.linear_child.split(",")], [c for c in a.calls.split(",") if c],
                            a.reps or 5, a.warmup, a.target_s)

    cupy, reason = gpu_or_reason()
    if cupy is None:
        log(f"bench_gpu: no GPU here ({reason}); nothing to measure")
        return 0
    import attnkit

    torch = torch_or_none()
    if torch is None:
        log("bench_gpu: PyTorch with CUDA is not available: the torch columns stay empty")
    reps = a.reps or (5 if a.quick else 10)
    sizes = a.sizes or ([1024, 4096, 16384] if a.quick else [1024, 2048, 4096, 8192, 16384])
    decode_sizes = a.decode_sizes or ([16384, 131072] if a.quick else [4096, 16384, 65536, 131072])
    linear_sizes = a.linear_sizes or ([4096, 16384] if a.quick else [4096, 8192, 16384])
    t0 = time.monotonic()
    kernels = kernel_table(cupy, attnkit)
    env = environment(cupy, torch, attnkit, a.peak_gbs)
    log(f"bench_gpu on {env['device']} (cc {env['compute_capability']}, {env['memory_gib']} GiB), attnkit "
        f"{env['attnkit']}, cupy {env['cupy']}, torch {env.get('torch', 'absent')}")
    for name, why in kernels.items():
        log(f"  {name:<26} {'CUDA kernel' if why is None else 'no kernel: ' + why}")
    payload = {"benchmark": "attnkit CUDA backend vs torch SDPA (flash) on one GPU: exact attention, decode, "
                            "linear-time mechanisms",
               "flops_convention": "4*B*H*Sq*Sk*D, halved for causal",
               "env": env, "kernels": {k: v is None for k, v in kernels.items()},
               "kernel_notes": {k: v for k, v in kernels.items() if v}, "quick": a.quick, "reps": reps, "rows": []}
    out = Path(a.json)

    def add(row):
        payload["rows"].append(row)
        log(format_row(row))
        out.parent.mkdir(parents=True, exist_ok=True)
        payload["elapsed_s"] = round(time.monotonic() - t0, 1)
        out.write_text(json.dumps(payload, indent=2) + "\n")

    def out_of_time():
        if a.budget_s is not None and time.monotonic() - t0 > a.budget_s:
            if not payload.get("truncated"):
                payload["truncated"] = f"stopped after {a.budget_s:.0f} s (--budget-s); later rows not measured"
                log("bench_gpu: " + payload["truncated"])
            return True
        return False

    ctx = {"cupy": cupy, "torch": torch, "attnkit": attnkit, "kernels": kernels, "peak": a.peak_gbs, "add": add,
           "rows": payload["rows"],
           "out_of_time": out_of_time, "timer": Timer(cupy, reps, a.warmup, a.target_s)}
    log("-- exact attention vs torch SDPA (flash): TFLOP/s")
    exact_rows(ctx, ["bfloat16", "float16"], [64, 128], sizes)
    if a.quick or a.variants:
        log(f"-- tensor-core kernel variants (ATTNKIT_MMA_VARIANT: {', '.join(MMA_VARIANTS)}), S=1024, 4096, "
            "one process each")
        variant_rows(ctx, ["bfloat16", "float16"], [64, 128])
    log("-- attention_backward vs torch flash backward: TFLOP/s (2.5x the forward's FLOPs)")
    backward_rows(ctx, ["bfloat16", "float16"], [64, 128], [4096] if a.quick else [1024, 4096, 16384])
    log("-- decode (Sq=1, GQA 32/8, D=128): GB/s of K+V")
    decode_rows(ctx, decode_sizes)
    log("-- linear-time mechanisms vs exact attention (float16, B=4, H=16, D=64): tokens/s")
    linear_rows(ctx, linear_sizes)
    if a.decode_sweep or a.quick:
        log("-- decode kernel variants (v1; v2 k<keys per step>b<target blocks>): GB/s of K+V, call and device")
        try:
            decode_sweep_rows(ctx, a.decode_sweep_sizes or [16384, 131072])
        except Exception as e:  # noqa: BLE001 - the rows measured so far are kept
            log(f"bench_gpu: decode sweep failed: {e.__class__.__name__}: {e}")
    if a.dla_sweep or a.quick:
        log("-- DLA prefill: first kernel (v1) vs second (v2) and its column splits (float16, B=4, H=16, D=64, "
            "C=16): tokens/s")
        dla_split_rows(ctx, [4096, 16384])
    if a.linear_sweep or a.quick:
        log("-- linear-attention kernel variants (cuda/linear.cu tuning; fresh process each): tokens/s")
        linear_sweep(ctx, [4096, 16384], reps, a.warmup, min(a.target_s, 0.5))
    payload["elapsed_s"] = round(time.monotonic() - t0, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    log(f"bench_gpu: {len(payload['rows'])} rows in {payload['elapsed_s']} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
