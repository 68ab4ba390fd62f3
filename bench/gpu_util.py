"""Shared pieces of the GPU benchmark (bench/bench_gpu.py, bench/gpu_sweeps.py): finding the GPU, timing
(CUDA events; device time alone behind a spin kernel), inputs, FLOP counts and the device's peak memory
bandwidth."""

from __future__ import annotations

import statistics

import numpy as np


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


def host_seconds(cupy, fn, n=200):
    """Median host seconds of one fn() call: the Python, validation and launch work, not waited for (the
    device is synchronised before the loop and every 50 calls, so the launch queue never fills)."""
    import time

    for _ in range(10):
        fn()
    cupy.cuda.Device().synchronize()
    times = []
    for i in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if i % 50 == 49:
            cupy.cuda.Device().synchronize()
    cupy.cuda.Device().synchronize()
    return statistics.median(times)


def pipelined_seconds(cupy, fn, n=20, rounds=5):
    """Median seconds per call of n calls issued back to back between two CUDA events (after a warm-up and a
    synchronisation): the host issues call i+1 while the device runs call i, as a decode loop does when nothing
    in it waits for the device, so this is about max(host time, device time) per call. Timer (above) instead
    starts each call on an idle device and waits for it: its figure is host time before the launches plus
    device time, in series. A call that waits for the device itself (a DLA step with a cache: the validator reads
    the cache's sizes and counts on the host) gets no overlap here either."""
    for _ in range(3):
        fn()
    cupy.cuda.Device().synchronize()
    times = []
    for _ in range(rounds):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        for _ in range(n):
            fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop) / 1e3 / n)
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
    for kind in ("", "device_"):  # call times (host work included) and device times (kernels alone)
        for who in ("attnkit", "torch_flash"):
            if row.get(f"{who}_{kind}s"):
                row[f"{who}_{kind}tflops"] = f / row[f"{who}_{kind}s"] / 1e12
        if row.get(f"attnkit_{kind}s") and row.get(f"torch_flash_{kind}s"):
            row[f"{kind}ratio_vs_torch"] = row[f"torch_flash_{kind}s"] / row[f"attnkit_{kind}s"]


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



# ----------------------------------------------------------------------------------------- peak bandwidth
# (substrings all in the device name, substrings none of which is, peak GB/s): the vendors' figures.
PEAK_GBS_BY_NAME = [
    (("H200",), (), 4800.0),
    (("H100", "HBM3"), (), 3350.0),
    (("H100", "SXM"), (), 3350.0),
    (("A100", "80GB"), ("PCIE",), 2039.0),
    (("A100", "40GB"), (), 1555.0),
]
DEFAULT_PEAK_GBS = 3350.0


def peak_gbs_from(name, clock_khz=None, bus_bits=None):
    """(GB/s, how) for a device: the table above by name, else memory clock (kHz, double data rate) x bus
    width where both are known, else DEFAULT_PEAK_GBS (an H100 SXM's) with a note saying so."""
    upper = name.upper()
    for need, avoid, gbs in PEAK_GBS_BY_NAME:
        if all(x in upper for x in need) and not any(x in upper for x in avoid):
            return gbs, f"by device name ({' '.join(need)})"
    if clock_khz and bus_bits:
        return clock_khz * 1e3 * 2 * bus_bits / 8 / 1e9, "memory clock x 2 x bus width / 8 (device attributes)"
    return DEFAULT_PEAK_GBS, f"device {name!r} unknown and its memory clock unavailable: {DEFAULT_PEAK_GBS:.0f} assumed"


def device_peak_gbs(cupy):
    """peak_gbs_from for the current CuPy device (its name, memory clock and bus width)."""
    rt = cupy.cuda.runtime
    dev = cupy.cuda.Device().id
    props = rt.getDeviceProperties(dev)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])

    def attribute(key, number):  # CUDA 13's device properties lack the memory clock; the attribute has it
        if props.get(key):
            return props[key]
        try:
            return rt.deviceGetAttribute(number, dev)
        except Exception:  # noqa: BLE001 - unknown here: the next fallback
            return None

    # cudaDevAttrMemoryClockRate (kHz), cudaDevAttrGlobalMemoryBusWidth (bits)
    return peak_gbs_from(name, attribute("memoryClockRate", 36), attribute("memoryBusWidth", 37))
