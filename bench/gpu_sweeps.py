"""The GPU benchmark's side-by-side sweeps of kernel variants (run by bench/bench_gpu.py, which documents
them and whose CLI and JSON they are part of): the tensor-core exact-attention kernel's tile shapes
(variant_rows, a process per variant), the decode kernel's variants (decode_sweep_rows, in-process tuning),
the linear-attention kernels' variants (linear_sweep, a process per variant) and the DLA prefill kernels
and column splits (dla_split_rows)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from gpu_util import DeviceTimer, Timer, add_rates, as_torch, attempt, flops, gpu_or_reason, log, randn, torch_or_none

# The benchmark's entry point: the subprocesses of the sweeps run it with its internal flags.
BENCH_GPU = str(Path(__file__).resolve().parent / "bench_gpu.py")

# ----------------------------------------------------------------------------------------- exact variants
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
            r = subprocess.run([sys.executable, BENCH_GPU, "--variant-worker", spec], env=env, capture_output=True,
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
            ts = torch_s.get((row["dtype"], row["D"], row["S"], row["causal"]))
            if ts:
                row["torch_flash_s"] = ts
            add_rates(row, flops(B, H, row["S"], row["S"], row["D"], row["causal"]))
            ctx["add"](row)


# The decode kernel's variants (cuda/attention_decode{2,3}.cuh, tuning options of attnkit._core.set_tuning):
# "v1" = the v1 kernel (cuda_decode=1); "v2" = v2's defaults (cuda_decode=2: never v3), "v2k<keys>b<blocks>"
# = v2 with cuda_decode_keys / cuda_decode_blocks; "v3s<stages>b<blocks>" = the tensor-core v3 with
# cuda_decode_stages (cp.async stages per warp) / cuda_decode3_blocks (target grid size -> split count);
# "v3-nopdl" = v3's defaults with the split merge launched plainly (cuda_decode3_pdl=2: no programmatic
# dependent launch); "v3-nopool" = v3's defaults with the scratch from the device's default pool instead of attnkit's
# (cuda_scratch=1, cuda/workspace.cuh). v3 needs "attention_decode_v3" (ATTNKIT_CUDA_UNVERIFIED=1 until
# verified), else its rows run v2. Session 22's H200 sweep fell monotonically with the grid size in every shape
# (256 best, 2048 worst; 4 stages never ahead of 2); session 27's put 128 first (the default since, 3747 GB/s
# geometric mean against 256's 3590; 1024 last): 96 is what is left to try below it.
DECODE_VARIANTS = (
    [("v1", {"cuda_decode": 1}), ("v2", {"cuda_decode": 2}),
     ("v2k2b1024", {"cuda_decode": 2, "cuda_decode_keys": 2, "cuda_decode_blocks": 1024})]
    + [(f"v3s{st}b{b}", {"cuda_decode": 0, "cuda_decode_stages": st, "cuda_decode3_blocks": b})
       for st in (2, 3) for b in (96, 128, 192, 256, 512)]
    + [("v3-nopdl", {"cuda_decode": 0, "cuda_decode3_pdl": 2}), ("v3-nopool", {"cuda_decode": 0, "cuda_scratch": 1})])
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
        v3 = bool(core.cuda_has_kernel("attention_decode_v3"))
        core.get_tuning("cuda_scratch")
        core.get_tuning("cuda_decode3_pdl")
    except Exception as e:  # noqa: BLE001 - a build without the options
        log(f"bench_gpu: decode sweep skipped ({e.__class__.__name__}: {e})")
        return
    if not v2:
        log("bench_gpu: attention_decode_v2 is not enabled (ATTNKIT_CUDA_UNVERIFIED=1 enables it): "
            "the v2 variants below run the v1 kernel")
    if not v3:
        log("bench_gpu: attention_decode_v3 is not enabled (ATTNKIT_CUDA_UNVERIFIED=1 enables it): "
            "the v3 variants below run v2")
    dev_timer = DeviceTimer(cupy, ctx["torch"], 5)
    names = ("cuda_decode", "cuda_decode_keys", "cuda_decode_blocks", "cuda_decode_stages", "cuda_decode3_blocks",
             "cuda_decode3_pdl", "cuda_scratch")
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
                           "Sq": Sq, "Sk": Sk, "D": D, "variant": name, "v2_enabled": v2, "v3_enabled": v3,
                           "kv_bytes": kv_bytes}
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
    # The (keys, blocks) / (stages, blocks) variants with every shape measured: the best overall and the best v3.
    full = {n: x for n, x in scores.items() if n != "v1" and n != "v3-nopool"}
    most = max((len(x) for x in full.values()), default=0)
    full = {n: x for n, x in full.items() if len(x) == most}
    if full:
        gm = {n: float(np.exp(np.mean(np.log(x)))) for n, x in full.items()}
        best = max(gm, key=gm.get)
        v3gm = {n: g for n, g in gm.items() if n.startswith("v3")}
        best3 = max(v3gm, key=v3gm.get) if v3gm else None
        ctx["add"]({"kind": "decode_sweep_best", "variant": best, "geomean_device_gbs": gm[best],
                    "best_v3": best3, "best_v3_geomean_device_gbs": v3gm.get(best3),
                    "geomean_device_gbs_by_variant": gm, "v2_enabled": v2, "v3_enabled": v3,
                    "how": "make it the default: kDec3Stages / kDec3Blocks in cuda/attention_decode3.cuh "
                           "(or ATTNKIT_CUDA_DECODE3=stages,blocks); v2: kDec2Keys / kDec2Blocks"})


# ----------------------------------------------------------------------------------------- linear variants
LINEAR_SWEEP = [
    # name, environment, calls measured (most telling first: a --budget-s cut drops the tail); _CUDA_SCRATCH=1:
    # the child sets tuning cuda_scratch=1 (scratch from the device's default pool, not attnkit's).
    ("v2", {}, ("linear", "linear_causal", "performer", "performer_causal")),
    # Causal Performer softmax on tensor cores (performer_causal_mma.cuh; taken by "v2" above where enabled): off =
    # the previous causal kernels (linear.cu's v2 causal form with performer_mma.cuh's products), side by side.
    ("v2 pcausal-off", {"ATTNKIT_PERFORMER_CAUSAL_MMA": "0"}, ("performer_causal",)),
    # ... with its serial state_kernel instead of the chunk-parallel state pass (performer_attention_mma3_causal)
    ("v2 pcausal-mma3-off", {"ATTNKIT_PERFORMER_CAUSAL_MMA3": "0"}, ("performer_causal",)),
    ("v1", {"ATTNKIT_LINEAR_CUDA_V1": "1"}, ("linear", "linear_causal", "performer", "performer_causal")),
    ("v2 default-pool", {"_CUDA_SCRATCH": "1"}, ("linear", "linear_causal", "performer", "performer_causal")),
    # Bidirectional Performer with fused tensor-core features (performer_mma2.cuh; taken by "v2" above where
    # enabled): off = today's verified path (performer_mma.cuh), and its key segments per partial state
    ("v2 pmma2-off", {"ATTNKIT_PERFORMER_MMA2": "0"}, ("performer",)),
    ("v2 pmma2 seg256", {"ATTNKIT_PERFORMER_MMA2_SEG": "256"}, ("performer",)),
    # Performer's tensor-core products (performer_mma.cuh; bit mask: 1 projections, 2 states, 4 outputs)
    ("v2 pmma0", {"ATTNKIT_PERFORMER_MMA": "0", "ATTNKIT_PERFORMER_MMA2": "0", "ATTNKIT_PERFORMER_CAUSAL_MMA": "0"},
     ("performer", "performer_causal")),
    ("v2 pmma1", {"ATTNKIT_PERFORMER_MMA": "1", "ATTNKIT_PERFORMER_MMA2": "0", "ATTNKIT_PERFORMER_CAUSAL_MMA": "0"},
     ("performer", "performer_causal")),
    ("v2 pmma3", {"ATTNKIT_PERFORMER_MMA": "3", "ATTNKIT_PERFORMER_MMA2": "0", "ATTNKIT_PERFORMER_CAUSAL_MMA": "0"},
     ("performer", "performer_causal")),
    # causal elementwise maps on tensor cores (linear_mma.cuh; chunk 64/128) vs the SIMT kernels at the same chunk
    ("v2 lmma0", {"ATTNKIT_LINEAR_CUDA_MMA": "0"}, ("linear_causal",)),
    ("v2 lmma0 chunk128", {"ATTNKIT_LINEAR_CUDA_MMA": "0", "ATTNKIT_LINEAR_CUDA_CHUNK": "128"}, ("linear_causal",)),
    ("v2 chunk32", {"ATTNKIT_LINEAR_CUDA_CHUNK": "32"}, ("linear_causal", "performer_causal")),
    ("v2 chunk64", {"ATTNKIT_LINEAR_CUDA_CHUNK": "64"}, ("linear_causal", "performer_causal")),  # (performer_causal:
    # the tensor-core path where enabled, as "v2"; the other chunks run the previous causal kernels)
    ("v2 chunk128", {"ATTNKIT_LINEAR_CUDA_CHUNK": "128"}, ("linear_causal", "performer_causal")),
    ("v2 chunk256", {"ATTNKIT_LINEAR_CUDA_CHUNK": "256"}, ("linear_causal", "performer_causal")),
    ("v2 seg128", {"ATTNKIT_LINEAR_CUDA_SEG": "128"}, ("linear", "performer")),
    ("v2 seg512", {"ATTNKIT_LINEAR_CUDA_SEG": "512"}, ("linear", "performer")),
    ("v2 seg2048", {"ATTNKIT_LINEAR_CUDA_SEG": "2048"}, ("linear", "performer")),
    # DLA prefill: v4 off (ATTNKIT_DLA_V4=0: the first kernel, dla_prefill.cu) beside the dla line's default
    ("dla v4 off", {"ATTNKIT_DLA_V4": "0"}, ("dla",)),
]


def linear_child(sizes, calls, reps, warmup, target_s):
    """One sweep variant (run in a fresh process by linear_sweep): prints one JSON line {S: {call: s}}."""
    cupy, reason = gpu_or_reason()
    if cupy is None:
        print(json.dumps({"error": reason}))
        return 0
    import attnkit

    notes = {}
    if os.environ.get("_CUDA_SCRATCH"):
        # The comparison: scratch from the device's default pool (release threshold 0: its memory goes back at
        # every synchronization) instead of attnkit's pool, which keeps it (cuda/workspace.cuh).
        try:
            attnkit._core.set_tuning("cuda_scratch", int(os.environ["_CUDA_SCRATCH"]))
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
               "performer_causal": lambda: attnkit.performer_attention(q, k, v, W, causal=True),
               "dla": lambda: attnkit.dynamic_linear_attention(q, k, v, lam, capacity=16)}
        if "dla" in calls:
            lam = (cupy.random.random((B, H, S, 16), dtype=np.float32) * (2.0 / 16)).astype("float16")
        res = {}
        for c in calls:
            if c == "dla" and S > 4096:  # the DLA parts at 4096 only (bench time); the dla line has both sizes
                res[c] = "S > 4096 not run"
                continue
            t, note = attempt(lambda: timer(fns[c]))
            res[c] = t if t else note
        out[str(S)] = res
        del q, k, v
        cupy.get_default_memory_pool().free_all_blocks()
    print(json.dumps({"times": out, "notes": notes}))
    return 0


def linear_sweep(ctx, sizes, reps, warmup, target_s):
    """Every LINEAR_SWEEP variant in a fresh process (same GPU), one row per variant and length."""
    for name, env_add, calls in LINEAR_SWEEP:
        if ctx["out_of_time"]():
            return
        env = dict(os.environ)
        env.update(env_add)
        cmd = [sys.executable, BENCH_GPU, "--_linear-child", ",".join(map(str, sizes)),
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


def dla_split_rows(ctx, sizes, B=4, H=16, D=64, C=16, dtype="float16"):
    """DLA prefill, the CUDA kernels side by side (tuning option dla_split): -1 = the first kernel
    (cuda/dla_prefill.cu), 0 = the default path (DLA prefill v4, cuda/dla_prefill_v4.cuh, where its gate is open
    and ATTNKIT_DLA_V4 is not 0) with the automatic column split, 1/2/4 = the same with that many blocks per
    (batch, head) of its state pass. Same inputs as linear_rows. Also records whether every split gives the same
    bits (it should) and the largest difference from the first kernel. (v2 and v3, measured here until session
    27, were removed then.)"""
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
        sv = "v4" if (attnkit._core.cuda_has_kernel("dla_prefill_v4") and os.environ.get("ATTNKIT_DLA_V4") != "0") \
            else "v1"
        if sv == "v4" and attnkit._core.cuda_has_kernel("dla_prefill_v5") and os.environ.get("ATTNKIT_DLA_V5") != "0":
            sv = "v5"  # splits >= 0 run v5's fused pass C (dla_prefill_v5.cuh); -2 = v4's C1 + C2 beside it
        ys = {}
        for split in (-1, -2, 0, 1, 2, 4) if sv == "v5" else (-1, 0, 1, 2, 4):
            def call(split=split):
                with tuning(dla_split=split):
                    return attnkit.dynamic_linear_attention(q, k, v, lam, capacity=C)

            t, note = attempt(lambda: timer(call))
            name = {-1: "v1", -2: "v4_auto"}.get(split, f"{sv}_split{split}")
            if t:
                row[f"{name}_s"], row[f"{name}_tokens_per_s"] = t, B * S / t
                y, _ = call()
                ys[split] = y.astype(cupy.float32)
            else:
                row[f"{name}_note"] = note
        v2 = [ys[s] for s in (0, 1, 2, 4) if s in ys]
        if len(v2) > 1:
            row["splits_same_bits"] = all(bool((x == v2[0]).all()) for x in v2[1:])
        if v2 and -2 in ys:
            row["v5_same_bits_as_v4"] = bool((v2[0] == ys[-2]).all())
        if v2 and -1 in ys:
            row["default_vs_v1_max_abs_diff"] = float(cupy.abs(v2[0] - ys[-1]).max())
            row["v1_max_abs"] = float(cupy.abs(ys[-1]).max())
        ctx["add"](row)
        del q, k, v, lam, ys, v2
        cupy.get_default_memory_pool().free_all_blocks()

