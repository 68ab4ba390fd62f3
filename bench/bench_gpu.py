"""attnkit's CUDA backend side by side with PyTorch on the same GPU, in one process.

* Exact attention vs ``torch.nn.functional.scaled_dot_product_attention`` with the flash backend
  (``sdpa_kernel(SDPBackend.FLASH_ATTENTION)``), bfloat16 and float16, B=4, H=16, D=64 and 128,
  S = 1024 .. 16384, causal and not: TFLOP/s (4*B*H*S*S*D FLOPs, halved for causal) and the ratio
  attnkit / torch.
* ``attention_backward`` vs torch's flash backward (``autograd.grad`` of SDPA's output; the forward is not
  timed), same grid with S = 4096 under ``--quick``: TFLOP/s with FlashAttention's convention for the
  backward (2.5x the forward's FLOPs).
* ``linear_attention_backward`` and ``performer_attention_backward`` (cuda/linear_backward.cu; gated by
  their public names until verified: ATTNKIT_CUDA_UNVERIFIED=1): float16, B=4, H=16, D=64, Performer m=256,
  causal and bidirectional, S = 4096 under ``--quick`` (4096, 16384 otherwise), as tokens/s beside the forward
  on the same inputs and the backward / forward time ratio. ``--linear-bwd-only`` runs just these rows;
  ``--dry`` runs their code on NumPy arrays (the CPU backend, S=256) to check it without a GPU.
* The tile-shape variants of the tensor-core exact-attention kernel (``ATTNKIT_MMA_VARIANT``: "0" .. "4"
  of the v2 kernel; ``--variants``, on under ``--quick``): float16 and bfloat16,
  D=64 and 128, S=1024 and 4096, causal and not, each variant in its own process (the variable is read
  once per process), as TFLOP/s, the ratio to torch flash from the exact rows above, the largest difference
  from torch's output (a correctness check of every variant on the benchmark's own shapes), and the device
  times of attnkit and torch flash (``DeviceTimer``: host work per call hidden; the call times include it,
  ~0.15-0.2 ms more for bfloat16, whose torch tensors went through CuPy views and DLPack before attnkit read
  them directly: attnkit._torch) with their ratio.
* Host time per call (``host_seconds``: the call's Python, validation and launches, the device not waited
  for) beside its device time, for tiny exact attention from CuPy and torch (float16, bfloat16; torch's own
  SDPA for scale), a GQA decode step over 16K keys and a DLA decode step: where short calls spend their time.
* Decode (Sq=1, Sk up to 128K, GQA Hq=32, Hkv=8, D=128, float16): GB/s of K+V read
  (2 * B * Hkv * Sk * D * itemsize bytes per call) by call time (each call started on an idle device and
  waited for: host work before the launches plus device time, in series), by device time, and with calls
  back to back (``pipelined_seconds``: the host issues the next call while the device runs this one, as a
  decode loop that never waits does: about max(host, device) per call), and the % of the peak bandwidth (``--peak-gbs``, default
  the device's: H100 SXM/HBM3 3350, H200 4800, A100 80GB 2039, A100 40GB 1555 GB/s by name, else memory clock
  x 2 x bus width / 8, else 3350; the JSON's env says which); torch SDPA (GQA) alongside where it runs.
* Decode kernel variants (``--decode-sweep``, on under ``--quick``): the v1 kernel, v2
  (cuda/attention_decode2.cuh) with its defaults and one other (keys per lane group and step, target grid
  size), and the tensor-core v3 (cuda/attention_decode3.cuh) with every (cp.async stages per warp, target
  grid size), switched in-process through ``attnkit._core.set_tuning`` (gpu_sweeps.DECODE_VARIANTS), on
  GQA 32:8 (Sq 1 and 2) and MHA, Sk = 16384 and 131072: GB/s by call time and by device time (a spin kernel
  ahead of the call hides the host work), and the variants with the best geometric-mean device GB/s
  (overall and v3's: the one to make the default); "v3-nopool": v3's defaults with the scratch from the
  device's default pool (tuning ``cuda_scratch``) instead of attnkit's (cuda/workspace.cuh).
* Linear attention (elu+1), Performer (m=256) and DLA prefill (tokens/s) and DLA decode (one token with a
  cache of S tokens; tokens/s) vs exact attention on the same shape (float16, B=4, H=16, D=64, S = 4096 ..).
* DLA prefill kernels side by side (``--dla-sweep``, on under ``--quick``; S = 4096, 16384): the first CUDA
  kernel vs DLA prefill v4 (``cuda/dla_prefill_v4.cuh``) with each column split (tuning option ``dla_split``),
  whether the splits give the same bits, and the largest difference between the two kernels.
* Linear-attention kernel variants (``--linear-sweep``, on under ``--quick``): linear attention and
  Performer (bidirectional and causal, S = 4096 and 16384) once per variant of cuda/linear.cu's internal
  tuning (the v1 kernels, the v2 kernels with causal chunk 32 / 64 / 128 and key segment 128 / 512 / 2048,
  v2 and v1 with their scratch from the device's default pool instead of attnkit's), each variant in a fresh
  process (the tuning is read once per process from ATTNKIT_LINEAR_CUDA_*).

The sweeps live in bench/gpu_sweeps.py, the shared timing and setup in bench/gpu_util.py.

Timing: CUDA events on the current (null) stream around each call, after warm-up, median of ``--reps``
(fewer for calls slower than ``--target-s``). attnkit gets CuPy arrays; torch gets the same memory through
DLPack (``torch.from_dlpack``). bfloat16 inputs go to attnkit as torch tensors (CuPy has no bfloat16);
where attnkit does not take them the row says why. A mechanism without a CUDA kernel in this build is
listed as "no kernel" and skipped. Writes JSON (device, versions, every row) to ``--json`` (default
bench/results/gpu.json), rewritten after every row so that an interrupted run keeps what it measured.

    python bench/bench_gpu.py [--quick] [--json out.json] [--peak-gbs GBS] [--budget-s 110] [--dla-sweep]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from gpu_sweeps import (MMA_VARIANTS, decode_sweep_rows, dla_split_rows, linear_child, linear_sweep, variant_rows,
                        variant_worker)
from gpu_util import (DeviceTimer, Timer, add_rates, as_torch, attempt, device_peak_gbs, flops, gpu_or_reason,
                      host_seconds, log, no_kernel_reason, pipelined_seconds, randn, torch_or_none)

RESULTS = Path(__file__).resolve().parent / "results"


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
        "linear_attention_backward": lambda: attnkit.linear_attention_backward(
            t(1, 1, 4, 8), t(1, 1, 4, 8), t(1, 1, 4, 8), t(1, 1, 4, 8)),
        "performer_attention_backward": lambda: attnkit.performer_attention_backward(
            t(1, 1, 4, 8), t(1, 1, 4, 8), t(1, 1, 4, 8), t(1, 1, 4, 8), cupy.asarray(attnkit.random_features(4, 8))),
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


def environment(cupy, torch, attnkit, peak, peak_how):
    dev = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    env = {"device": name, "compute_capability": f"{props['major']}.{props['minor']}",
           "memory_gib": round(props["totalGlobalMem"] / 2**30, 1), "sms": props["multiProcessorCount"],
           "cuda_driver": cupy.cuda.runtime.driverGetVersion(), "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
           "attnkit": attnkit.__version__, "cupy": cupy.__version__, "numpy": np.__version__,
           "python": sys.version.split()[0], "peak_bandwidth_gbs": peak,
           "peak_bandwidth_how": peak_how,
           "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if torch is not None:
        env["torch"] = torch.__version__
        env["torch_cuda"] = torch.version.cuda
    return env


# ----------------------------------------------------------------------------------------- benchmarks
def exact_rows(ctx, dtypes, dims, sizes, B=4, H=16):
    """attnkit.attention vs torch's flash SDPA: call times (host work included, as a user sees them) and
    device times (DeviceTimer: the kernels alone), as TFLOP/s and ratios."""
    cupy, torch, attnkit, timer = ctx["cupy"], ctx["torch"], ctx["attnkit"], ctx["timer"]
    dtimer = DeviceTimer(cupy, torch, 5)
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
                        if t:  # the kernels alone: the call time above includes the host work of every call
                            row["attnkit_device_s"], _ = attempt(
                                lambda: dtimer(lambda: attnkit.attention(q, k, v, causal=causal)))
                    if torch is not None:
                        tq, tk, tv = (as_torch(torch, x) for x in (q, k, v))

                        def flash_timed(tm):
                            from torch.nn.attention import SDPBackend, sdpa_kernel

                            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # flash only: an error, not a fallback
                                return tm(lambda: torch.nn.functional.scaled_dot_product_attention(
                                    tq, tk, tv, is_causal=causal))

                        t, note = attempt(lambda: flash_timed(timer))
                        row["torch_flash_s"], row["torch_note"] = t, note
                        if t:
                            row["torch_flash_device_s"], _ = attempt(lambda: flash_timed(dtimer))
                    add_rates(row, flops(B, H, S, S, D, causal))
                    ctx["add"](row)
                del q, k, v
                cupy.get_default_memory_pool().free_all_blocks()


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
                    # which kernels run: the tensor-core backward (cuda/attention_backward_mma.cu) at D = 64 /
                    # 128; ATTNKIT_CUDA_BWD_SIMT=1 forces the SIMT one
                    mma = os.environ.get("ATTNKIT_CUDA_BWD_SIMT") != "1" and D in (64, 128)
                    row["attnkit_path"] = "tensor cores" if mma else "simt"
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


def linear_backward_rows(ctx, sizes, B=4, H=16, D=64, m=256, dtype="float16"):
    """linear_attention_backward / performer_attention_backward (elu1; softmax features, m=256), causal and
    bidirectional, beside their forwards on the same inputs: tokens/s (B*S per call) and the ratio of the
    backward's time to the forward's. Inputs through xp.asarray, so ``--dry`` runs the same code on NumPy."""
    xp, attnkit, timer, kernels = ctx["cupy"], ctx["attnkit"], ctx["timer"], ctx["kernels"]
    rng = np.random.default_rng(0)
    W = xp.asarray(attnkit.random_features(m, D, dtype=np.float32))
    for S in sizes:
        if ctx["out_of_time"]():
            return
        q, k, v, dout = (xp.asarray((rng.standard_normal((B, H, S, D), np.float32) / math.sqrt(math.sqrt(D)))
                                    .astype(dtype)) for _ in range(4))
        for mech, causal in (("linear", True), ("linear", False), ("performer", True), ("performer", False)):
            row = {"kind": "linear_backward", "mechanism": mech, "dtype": dtype, "B": B, "H": H, "S": S, "D": D,
                   "causal": causal}
            if mech == "performer":
                row["performer_m"] = m
                fwd = lambda: attnkit.performer_attention(q, k, v, W, causal=causal)  # noqa: E731
                bwd = lambda: attnkit.performer_attention_backward(dout, q, k, v, W, causal=causal)  # noqa: E731
            else:
                fwd = lambda: attnkit.linear_attention(q, k, v, causal=causal)  # noqa: E731
                bwd = lambda: attnkit.linear_attention_backward(dout, q, k, v, causal=causal)  # noqa: E731
            for name, fn, kname in (("fwd", fwd, f"{mech}_attention"), ("bwd", bwd, f"{mech}_attention_backward")):
                if kernels.get(kname):
                    row[f"{name}_note"] = "no kernel: " + kernels[kname]
                    continue
                t, note = attempt(lambda: timer(fn))
                if t:
                    row[f"{name}_s"], row[f"{name}_tokens_per_s"] = t, B * S / t
                else:
                    row[f"{name}_note"] = note
            if row.get("fwd_s") and row.get("bwd_s"):
                row["bwd_over_fwd"] = row["bwd_s"] / row["fwd_s"]
            ctx["add"](row)
        del q, k, v, dout
        if hasattr(xp, "get_default_memory_pool"):
            xp.get_default_memory_pool().free_all_blocks()


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
                # calls back to back (pipelined_seconds): the host issues the next call while the device runs
                # this one, as a decode loop that never waits does: about max(host, device) per call
                tp, _ = attempt(lambda: pipelined_seconds(cupy, lambda: attnkit.attention(q, k, v)))
                row["attnkit_pipelined_s"] = tp
        if torch is not None:
            tq, tk, tv = (as_torch(torch, x) for x in (q, k, v))
            sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, enable_gqa=True)  # noqa: E731
            t, note = attempt(lambda: timer(sdpa))
            row["torch_s"], row["torch_note"] = t, note  # torch picks its backend (GQA decode)
            if t:
                row["torch_pipelined_s"], _ = attempt(lambda: pipelined_seconds(cupy, sdpa))
        for who in ("attnkit", "torch"):
            if row.get(f"{who}_s"):
                row[f"{who}_gbs"] = kv_bytes / row[f"{who}_s"] / 1e9
                row[f"{who}_pct_peak"] = 100 * row[f"{who}_gbs"] / ctx["peak"]
            if row.get(f"{who}_pipelined_s"):
                row[f"{who}_pipelined_gbs"] = kv_bytes / row[f"{who}_pipelined_s"] / 1e9
                row[f"{who}_pipelined_pct_peak"] = 100 * row[f"{who}_pipelined_gbs"] / ctx["peak"]
        ctx["add"](row)
        del q, k, v
        cupy.get_default_memory_pool().free_all_blocks()


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
        # performer_causal runs the tensor-core causal path (cuda/performer_causal_mma.cuh) where it is enabled
        # (gated; ATTNKIT_PERFORMER_CAUSAL_MMA=0 turns it off); gpu_sweeps' "v2 pcausal-off" row is the previous path.
        has = getattr(attnkit._core, "cuda_has_kernel", None)
        row["performer_causal_mma"] = bool(has and has("performer_attention_mma2_causal")) and \
            os.environ.get("ATTNKIT_PERFORMER_CAUSAL_MMA") != "0"
        # dla_prefill runs v4's five kernels (cuda/dla_prefill_v4.cuh) where its gate is open (ATTNKIT_DLA_V4=0
        # turns it off; v2 and v3, side by side here until session 27, were removed then), with C1 + C2 fused into
        # v5's one pass (cuda/dla_prefill_v5.cuh) where that gate is open (ATTNKIT_DLA_V5=0 turns it off); then
        # dla_prefill_v4 is v4's C1 + C2 beside it (tuning dla_split = -2), measured only when v5 ran.
        row["dla_prefill_v4"] = bool(has and has("dla_prefill_v4")) and os.environ.get("ATTNKIT_DLA_V4") != "0"
        row["dla_prefill_v5"] = row["dla_prefill_v4"] and bool(has and has("dla_prefill_v5")) and \
            os.environ.get("ATTNKIT_DLA_V5") != "0"
        if row["dla_prefill_v5"] and row.get("dla_prefill_s"):
            t4, note4 = attempt(lambda: with_tuning(attnkit, "dla_split", -2, lambda: timer(calls["dla_prefill"][1])))
            if t4:
                row["dla_prefill_v4_s"], row["dla_prefill_v4_tokens_per_s"] = t4, B * S / t4
            else:
                row["dla_prefill_v4_note"] = note4
        for name in ("linear", "performer"):
            if row.get(f"{name}_s") and row.get("exact_s"):
                row[f"{name}_speedup_vs_exact"] = row["exact_s"] / row[f"{name}_s"]
        for name in ("linear_causal", "performer_causal", "dla_prefill", "dla_prefill_v4"):
            if row.get(f"{name}_s") and row.get("exact_causal_s"):
                row[f"{name}_speedup_vs_exact"] = row["exact_causal_s"] / row[f"{name}_s"]
        # decode: one token after S tokens. DLA from its cache (O(C D^2)); exact attention over S keys.
        q1, k1, v1, lam1 = q[:, :, -1:], k[:, :, -1:], v[:, :, -1:], lam[:, :, -1:]
        if not kernels["dynamic_linear_attention"]:
            def dla_step():
                _, cache = attnkit.dynamic_linear_attention(q[:, :, :-1], k[:, :, :-1], v[:, :, :-1], lam[:, :, :-1],
                                                            capacity=C)
                return lambda: attnkit.dynamic_linear_attention(q1, k1, v1, lam1, capacity=C, cache=cache)

            step, note = attempt(dla_step)
            t, note = attempt(lambda: timer(step)) if step else (None, note)
            if t:
                row["dla_decode_s"], row["dla_decode_tokens_per_s"] = t, B / t
            else:
                row["dla_decode_note"] = note
            # dla_decode runs v3's one kernel (cuda/dla_decode_v3.cu) where its gate is open
            # (ATTNKIT_DLA_DECODE_V3=0 turns it off); side by side: v2's two kernels (tuning dla_decode = 2;
            # the first kernel, cuda/dla_decode.cu, is gone since session 27)
            has = getattr(attnkit._core, "cuda_has_kernel", None)
            row["dla_decode_v3"] = bool(has and has("dla_decode_v3")) and os.environ.get("ATTNKIT_DLA_DECODE_V3") != "0"
            for name, mode in (("dla_decode_v2", 2),) if step else ():
                t1, note1 = attempt(lambda: with_tuning(attnkit, "dla_decode", mode, lambda: timer(step)))
                if t1:
                    row[f"{name}_s"], row[f"{name}_tokens_per_s"] = t1, B / t1
                else:
                    row[f"{name}_note"] = note1
        else:
            row["dla_decode_note"] = "no kernel"
        if not kernels["attention"]:
            t, note = attempt(lambda: timer(lambda: attnkit.attention(q1, k, v)))
            if t:
                row["exact_decode_s"], row["exact_decode_tokens_per_s"] = t, B / t
            else:
                row["exact_decode_note"] = note
        for name in ("dla_decode", "dla_decode_v2"):
            if row.get(f"{name}_s") and row.get("exact_decode_s"):
                row[f"{name}_speedup_vs_exact"] = row["exact_decode_s"] / row[f"{name}_s"]
        ctx["add"](row)
        del q, k, v, lam
        cupy.get_default_memory_pool().free_all_blocks()



def with_tuning(attnkit, name, value, fn):
    """fn() with the core's tuning option `name` set to value, restored after."""
    old = attnkit._core.get_tuning(name)
    attnkit._core.set_tuning(name, value)
    try:
        return fn()
    finally:
        attnkit._core.set_tuning(name, old)


def host_rows(ctx):
    """Host time per call (Python, validation, launches; the device not waited for) beside the device
    time, and the time per call of 20 calls back to back (pipelined_seconds: about max(host, device) where
    nothing waits): where a call's time goes when the kernels are short. Tiny exact attention from CuPy and from
    torch (float16, bfloat16; torch's own SDPA for scale), a GQA decode step over 16K keys and a DLA decode
    step (capacity 16, float16, B=4, H=16, D=64; operands sliced once, outside the timed call) on the default
    path (v3's one kernel where enabled) and on v2's two kernels (tuning dla_decode = 2).

    A DLA step waits for the stream (the validator reads the cache's size / counts / starts on the host), so
    its host time includes the previous call's kernels when they outlast the host work before the wait, and
    its "device" time (DeviceTimer) includes the host work after the wait (the value checks, the launches)
    while the GPU idles: neither is the kernels alone (tools/gpu_check.sh's profile stage has those). The
    "dla_first_step" rows (no cache: no wait) are host work alone and kernels alone."""
    cupy, torch, attnkit = ctx["cupy"], ctx["torch"], ctx["attnkit"]
    dev = DeviceTimer(cupy, torch, 5)
    tiny = (1, 1, 4, 64)
    calls = {"tiny_cupy_f16": lambda c=[randn(cupy, tiny, "float16") for _ in range(3)]: attnkit.attention(*c)}
    if torch is not None:
        t16, tbf = ([torch.ones(tiny, device="cuda", dtype=dt) for _ in range(3)] for dt in (torch.float16,
                                                                                         torch.bfloat16))
        calls["tiny_torch_f16"] = lambda: attnkit.attention(*t16)
        calls["tiny_torch_bf16"] = lambda: attnkit.attention(*tbf)
        calls["tiny_torch_sdpa_bf16"] = lambda: torch.nn.functional.scaled_dot_product_attention(*tbf)
    q = randn(cupy, (4, 32, 1, 128), "float16")
    k, v = (randn(cupy, (4, 8, 16384, 128), "float16") for _ in range(2))
    calls["decode_16k_cupy_f16"] = lambda: attnkit.attention(q, k, v)
    B, H, S, D, C = 4, 16, 4096, 64, 16
    dq, dk, dv = (randn(cupy, (B, H, S, D), "float16", 0.35) for _ in range(3))
    lam = (cupy.random.random((B, H, S, C), dtype=np.float32) * (2.0 / C)).astype("float16")
    cache, note = attempt(lambda: attnkit.dynamic_linear_attention(dq[:, :, :-1], dk[:, :, :-1], dv[:, :, :-1],
                                                                   lam[:, :, :-1], capacity=C)[1])
    tuned = {}  # call -> (tuning option, value) set while it is measured
    if cache is not None:
        one = tuple(x[:, :, -1:] for x in (dq, dk, dv, lam))
        calls["dla_decode_step_f16"] = lambda: attnkit.dynamic_linear_attention(*one, capacity=C, cache=cache)
        calls["dla_decode_step_f16_v2"] = calls["dla_decode_step_f16"]  # v2's two kernels
        tuned["dla_decode_step_f16_v2"] = ("dla_decode", 2)
        # The same step without a cache (the first token): no cache values to read, so no wait: its host time
        # is the call's host work alone and its device time the kernels alone (they write the C output states,
        # zeros but the first, and read none); against the rows above, the cost of the cache (5 more arrays,
        # the copies and the wait) in the host time, and of the host work after the wait in the device time.
        calls["dla_first_step_f16"] = lambda: attnkit.dynamic_linear_attention(*one, capacity=C)
        calls["dla_first_step_f16_v2"] = calls["dla_first_step_f16"]
        tuned["dla_first_step_f16_v2"] = ("dla_decode", 2)
    for name, fn in calls.items():
        if ctx["out_of_time"]():
            return
        row = {"kind": "host", "call": name}
        opt = tuned.get(name)
        run = (lambda f: with_tuning(attnkit, opt[0], opt[1], f)) if opt else (lambda f: f())
        row["host_s"], row["host_note"] = attempt(lambda: run(lambda: host_seconds(cupy, fn)))
        row["device_s"], _ = attempt(lambda: run(lambda: dev(fn)))
        # 20 calls back to back (pipelined_seconds): about max(host, device) per call where nothing waits
        row["pipelined_s"], _ = attempt(lambda: run(lambda: pipelined_seconds(cupy, fn)))
        ctx["add"](row)
    del q, k, v, dq, dk, dv, lam
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
                f"TFLOP/s  ratio {fmt(r.get('ratio_vs_torch'), '.2f'):>5}"
                f"{'  device ratio ' + fmt(r.get('device_ratio_vs_torch'), '.2f') if r.get('device_ratio_vs_torch') else ''}"
                f"{note}"[:240])
    if r["kind"] == "linear_backward":
        tps = lambda x: fmt(x and x / 1e6, ".2f")  # noqa: E731
        note = "".join(f"  {n}: {r[n + '_note']}" for n in ("fwd", "bwd") if r.get(n + "_note"))
        return (f"lbwd   {r['mechanism']:<9} {r['dtype']:>8} S={r['S']:<5} {'causal' if r['causal'] else 'full  '} "
                f"backward {tps(r.get('bwd_tokens_per_s')):>7} Mtok/s  forward {tps(r.get('fwd_tokens_per_s')):>7} "
                f"Mtok/s  bwd/fwd time {fmt(r.get('bwd_over_fwd'), '.2f')}{note}"[:240])
    if r["kind"] == "host":
        us = lambda x: fmt(x and x * 1e6, ".1f")  # noqa: E731
        return (f"host   {r['call']:<22} host {us(r.get('host_s')):>7} us/call  device {us(r.get('device_s')):>8} us"
                f"  back to back {us(r.get('pipelined_s')):>7} us/call"
                f"{'  ' + r['host_note'] if r.get('host_note') else ''}"[:240])
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
                f"{fmt(r.get('attnkit_device_gbs'), '.0f')} GB/s; calls back to back: attnkit "
                f"{fmt(r.get('attnkit_pipelined_gbs'), '.0f')} ({fmt(r.get('attnkit_pipelined_pct_peak'), '.0f')}%) "
                f"torch {fmt(r.get('torch_pipelined_gbs'), '.0f')} GB/s){note}"[:240])
    if r["kind"] == "dla_split":
        parts = [f"dla    {r['dtype']:>8} S={r['S']:<5}"]
        sv = next((x for x in ("v5", "v4") if any(f"{x}_split{n}_tokens_per_s" in r or f"{x}_split{n}_note" in r
                                                  for n in (0, 1, 2, 4))), "v1")
        for name in ("v1", "v4_auto") + tuple(f"{sv}_split{n}" for n in (0, 1, 2, 4)):
            tps = r.get(f"{name}_tokens_per_s")
            parts.append(f"{name} {fmt(tps and tps / 1e6, '.2f', r.get(f'{name}_note', '-')[:9])}")
        parts.append(f"splits same bits {r.get('splits_same_bits', '-')}  v5 = v4 bits "
                     f"{r.get('v5_same_bits_as_v4', '-')}  |default-v1| "
                     f"{fmt(r.get('default_vs_v1_max_abs_diff'), '.2g')} of {fmt(r.get('v1_max_abs'), '.2g')}")
        return "  ".join(parts) + "  (Mtok/s)"
    if r["kind"] == "linear_sweep":
        parts = [f"sweep  {r['variant']:<13} S={r['S']:<5}"]
        for name in ("linear", "linear_causal", "performer", "performer_causal", "dla"):
            tps = r.get(f"{name}_tokens_per_s")
            if tps or r.get(f"{name}_note"):
                parts.append(f"{name} {fmt(tps and tps / 1e6, '.2f', str(r.get(f'{name}_note', '-'))[:9])}")
        if r.get("note"):
            parts.append(f"error: {r['note'][:120]}")
        return "  ".join(parts) + "  (Mtok/s)"
    parts = [f"linear {r['dtype']:>8} S={r['S']:<5}"]
    for name in ("exact", "exact_causal", "linear", "linear_causal", "performer", "performer_causal", "dla_prefill",
                 "dla_prefill_v4", "exact_decode", "dla_decode", "dla_decode_v2"):
        tps = r.get(f"{name}_tokens_per_s")
        parts.append(f"{name} {fmt(tps and tps / 1e6, '.2f', r.get(f'{name}_note', '-')[:9])}")
    return "  ".join(parts) + "  (Mtok/s)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a cut grid (S = 1024, 2048, 4096, 16384: the targets "
                                                         "start at 2048; fewer decode and linear sizes; fewer "
                                                         "repetitions)")
    ap.add_argument("--json", default=str(RESULTS / "gpu.json"), help="where the JSON goes")
    ap.add_argument("--peak-gbs", type=float, default=None,
                    help="peak memory bandwidth in GB/s for the %% of peak (default: the device's, from its name: "
                         "H100 SXM/HBM3 3350, H200 4800, A100 80GB 2039, A100 40GB 1555; else memory clock x bus "
                         "width; else 3350)")
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
    ap.add_argument("--linear-bwd-only", action="store_true",
                    help="only the linear_attention_backward / performer_attention_backward rows")
    ap.add_argument("--dry", action="store_true", help="run the linear backward rows' code on NumPy arrays (CPU "
                                                       "backend, S=256, no GPU, nothing written): a check of this "
                                                       "script")
    a = ap.parse_args(argv)
    if a.dry:
        import attnkit

        ctx = {"cupy": np, "attnkit": attnkit, "kernels": {}, "out_of_time": lambda: False,
               "timer": lambda fn: (lambda t0: (fn(), time.perf_counter() - t0)[1])(time.perf_counter()),
               "add": lambda row: log(format_row(row))}
        linear_backward_rows(ctx, [256], B=1, H=2, D=16, m=32)
        return 0
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
    sizes = a.sizes or ([1024, 2048, 4096, 16384] if a.quick else [1024, 2048, 4096, 8192, 16384])
    decode_sizes = a.decode_sizes or ([16384, 131072] if a.quick else [4096, 16384, 65536, 131072])
    linear_sizes = a.linear_sizes or ([4096, 16384] if a.quick else [4096, 8192, 16384])
    t0 = time.monotonic()
    kernels = kernel_table(cupy, attnkit)
    peak, peak_how = (a.peak_gbs, "--peak-gbs") if a.peak_gbs else device_peak_gbs(cupy)
    env = environment(cupy, torch, attnkit, peak, peak_how)
    log(f"bench_gpu on {env['device']} (cc {env['compute_capability']}, {env['memory_gib']} GiB), attnkit "
        f"{env['attnkit']}, cupy {env['cupy']}, torch {env.get('torch', 'absent')}")
    log(f"  peak memory bandwidth {peak:.0f} GB/s ({peak_how})")
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

    ctx = {"cupy": cupy, "torch": torch, "attnkit": attnkit, "kernels": kernels, "peak": peak, "add": add,
           "rows": payload["rows"],
           "out_of_time": out_of_time, "timer": Timer(cupy, reps, a.warmup, a.target_s)}
    lbwd_sizes = [4096] if a.quick else [4096, 16384]
    if a.linear_bwd_only:
        log("-- linear_attention_backward / performer_attention_backward beside the forwards: tokens/s")
        linear_backward_rows(ctx, lbwd_sizes)
        payload["elapsed_s"] = round(time.monotonic() - t0, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=2) + "\n")
        log(f"bench_gpu: {len(payload['rows'])} rows in {payload['elapsed_s']} s -> {out}")
        return 0
    log("-- exact attention vs torch SDPA (flash): TFLOP/s")
    exact_rows(ctx, ["bfloat16", "float16"], [64, 128], sizes)
    if a.quick or a.variants:
        log(f"-- tensor-core kernel variants (ATTNKIT_MMA_VARIANT: {', '.join(MMA_VARIANTS)}), S=1024, 4096, "
            "one process each")
        variant_rows(ctx, ["bfloat16", "float16"], [64, 128])
    log("-- attention_backward vs torch flash backward: TFLOP/s (2.5x the forward's FLOPs)")
    backward_rows(ctx, ["bfloat16", "float16"], [64, 128], [4096] if a.quick else [1024, 4096, 16384])
    log("-- linear_attention_backward / performer_attention_backward beside the forwards: tokens/s")
    linear_backward_rows(ctx, lbwd_sizes)
    log("-- host time per call (not waited for) beside device time: us")
    try:
        host_rows(ctx)
    except Exception as e:  # noqa: BLE001 - the rows measured so far are kept
        log(f"bench_gpu: host rows failed: {e.__class__.__name__}: {e}")
    log("-- decode (Sq=1, GQA 32/8, D=128): GB/s of K+V")
    decode_rows(ctx, decode_sizes)
    log("-- linear-time mechanisms vs exact attention (float16, B=4, H=16, D=64): tokens/s")
    linear_rows(ctx, linear_sizes)
    if a.decode_sweep or a.quick:
        log("-- decode kernel variants (v1; v2; v3 s<stages>b<target blocks>): GB/s of K+V, call and device")
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
