"""Host time per call of three short CUDA calls, and what it does to their rates (session 27's host-time work;
issue 10): a tiny exact attention from CuPy (float16 [1, 1, 4, 64]), the decode step of bench_gpu.py's decode
row (Sq=1, Hq=32, Hkv=8, D=128, Sk=16384, float16; torch SDPA beside it) and a DLA decode step (float16,
B=4, H=16, D=64, C=16, from the cache of 4095 tokens; the first step, without a cache, beside it). One line
per call:

* ``host``: median host seconds of one call, the device not waited for (gpu_util.host_seconds);
* ``device``: the kernels alone (gpu_util.DeviceTimer: a spin kernel ahead of the call hides its host work);
* ``call``: the call started on an idle device and waited for (gpu_util.Timer, bench_gpu's decode figure):
  host work before the launches plus device time, in series;
* ``b2b``: 20 calls back to back between two events (gpu_util.pipelined_seconds): the host issues the next
  call while the device runs this one, as a decode loop that never waits does: about max(host, device);
* for the decode step, GB/s of K+V by each of call, device and b2b time, and % of the peak bandwidth;
* ``chain``: DLA steps back to back, each from the cache the step before returned (the real decode loop).

Then session 27's figures (bench/results/gpu_h200_s27.json: host, device and decode call time on an H200,
before this work) beside the current ones (same device kind only: compare H200 with H200). (Session 27 also
tried launching the DLA step before its value checks: 127 us per step against 95, so it was removed.)
``--dry`` runs the same calls on NumPy arrays (small shapes, no GPU) to check the script itself.

    python bench/bench_gpu_host.py [--dry] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
BASELINE = RESULTS / "gpu_h200_s27.json"


class _NumpyTiming:
    """The timers on the CPU (--dry): wall seconds, nothing to wait for."""

    @staticmethod
    def each(fn, n=50):
        for _ in range(3):
            fn()
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts)

    def host(self, fn):
        return self.each(fn)

    def device(self, fn):
        return None

    def call(self, fn):
        return self.each(fn)

    def b2b(self, fn, n=20):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t) / n


class _CudaTiming:
    def __init__(self, cupy, torch):
        from gpu_util import DeviceTimer, Timer

        self.cupy = cupy
        self.timer = Timer(cupy, 10, 2, 1.0)
        self.dev = DeviceTimer(cupy, torch, 5)

    def host(self, fn):
        from gpu_util import host_seconds

        return host_seconds(self.cupy, fn)

    def device(self, fn):
        return self.dev(fn)

    def call(self, fn):
        return self.timer(fn)

    def b2b(self, fn, n=20):
        from gpu_util import pipelined_seconds

        return pipelined_seconds(self.cupy, fn, n=n)


def cases(xp, attnkit, torch, dry):
    """{name: (fn, bytes read or None, chained step factory or None)}."""
    rng = np.random.default_rng(0)

    def randn(shape, scale=1.0):
        x = (rng.standard_normal(shape, dtype=np.float32) * scale).astype(np.float16)
        return xp.asarray(x)

    out = {}
    tiny = [randn((1, 1, 4, 64)) for _ in range(3)]
    out["tiny_f16"] = (lambda: attnkit.attention(*tiny), None, None)
    B, Hq, Hkv, D, Sk = (1, 4, 2, 16, 256) if dry else (4, 32, 8, 128, 16384)
    q = randn((B, Hq, 1, D))
    k, v = randn((B, Hkv, Sk, D)), randn((B, Hkv, Sk, D))
    kv_bytes = 2 * B * Hkv * Sk * D * 2
    out["decode_16k_f16"] = (lambda: attnkit.attention(q, k, v), kv_bytes, None)
    if torch is not None and not dry:
        tq, tk, tv = (torch.from_dlpack(x) for x in (q, k, v))
        out["decode_16k_torch_sdpa"] = (
            lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, enable_gqa=True), kv_bytes, None)
    return _dla_cases(xp, attnkit, dry, randn, rng, out)


def _dla_cases(xp, attnkit, dry, randn, rng, out):
    B, H, S, D, C = (1, 2, 64, 16, 4) if dry else (4, 16, 4096, 64, 16)
    dq, dk, dv = (randn((B, H, S, D), 0.35) for _ in range(3))
    lam = xp.asarray((rng.random((B, H, S, C), dtype=np.float32) * (2.0 / C)).astype(np.float16))
    _, cache = attnkit.dynamic_linear_attention(dq[:, :, :-1], dk[:, :, :-1], dv[:, :, :-1], lam[:, :, :-1],
                                                capacity=C)
    one = tuple(x[:, :, -1:] for x in (dq, dk, dv, lam))

    def chain():  # a step from the cache the previous step returned
        state = {"cache": cache}

        def step():
            state["cache"] = attnkit.dynamic_linear_attention(*one, capacity=C, cache=state["cache"])[1]
        return step

    out["dla_step_f16"] = (lambda: attnkit.dynamic_linear_attention(*one, capacity=C, cache=cache), None, chain)
    out["dla_first_step_f16"] = (lambda: attnkit.dynamic_linear_attention(*one, capacity=C), None, None)
    return out


def baseline_rows():
    """{call: (host_s, device_s, call_s)} of session 27's run (bench_gpu.py names), {} when absent."""
    try:
        rows = json.loads(BASELINE.read_text())["rows"]
    except (OSError, ValueError, KeyError):
        return {}
    host = {r["call"]: r for r in rows if r.get("kind") == "host"}
    dec = next((r for r in rows if r.get("kind") == "decode" and r.get("Sk") == 16384), {})
    pick = lambda name: (host.get(name, {}).get("host_s"), host.get(name, {}).get("device_s"))  # noqa: E731
    return {"tiny_f16": pick("tiny_cupy_f16") + (None,),
            "decode_16k_f16": pick("decode_16k_cupy_f16")[:1] + (dec.get("attnkit_device_s"), dec.get("attnkit_s")),
            "decode_16k_torch_sdpa": (None, None, dec.get("torch_s")),
            "dla_step_f16": pick("dla_decode_step_f16") + (None,),
            "dla_first_step_f16": pick("dla_first_step_f16") + (None,)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry", action="store_true", help="NumPy arrays, small shapes, no GPU: checks the script")
    ap.add_argument("--json", default=None, help="also write the rows here (a path)")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import attnkit

    torch = None
    if a.dry:
        xp, timing, peak, device = np, _NumpyTiming(), None, "CPU (--dry: NumPy, small shapes)"
    else:
        from gpu_util import device_peak_gbs, gpu_or_reason, torch_or_none

        cupy, reason = gpu_or_reason()
        if cupy is None:
            print(f"bench_gpu_host: no GPU here ({reason}); --dry runs the script on NumPy")
            return 0
        torch = torch_or_none()
        xp, timing = cupy, _CudaTiming(cupy, torch)
        peak, _ = device_peak_gbs(cupy)
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        device = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    t0 = time.monotonic()
    print(f"bench_gpu_host on {device}, attnkit {attnkit.__version__}{f', peak {peak:.0f} GB/s' if peak else ''}",
          flush=True)
    us = lambda x: "-" if x is None else f"{x * 1e6:.1f}"  # noqa: E731
    rows = []
    for name, (fn, nbytes, chain) in cases(xp, attnkit, torch, a.dry).items():
        r = {"call": name}
        is_torch = name.endswith("torch_sdpa")
        r["host_s"] = None if is_torch else timing.host(fn)
        r["device_s"] = None if is_torch else timing.device(fn)
        r["call_s"] = timing.call(fn)
        r["b2b_s"] = timing.b2b(fn)
        if chain is not None:
            r["chain_s"] = timing.b2b(chain())
        line = (f"{name:<22} host {us(r['host_s']):>7} us  device {us(r['device_s']):>7} us  call {us(r['call_s']):>7} us"
                f"  b2b {us(r['b2b_s']):>7} us")
        if "chain_s" in r:
            line += f"  chain {us(r['chain_s'])} us/step"
        if nbytes:
            gbs = {k: nbytes / r[f"{k}_s"] / 1e9 for k in ("call", "device", "b2b") if r.get(f"{k}_s")}
            r.update({f"{k}_gbs": g for k, g in gbs.items()})
            line += "  GB/s: " + "  ".join(f"{k} {g:.0f}" + (f" ({100 * g / peak:.0f}%)" if peak else "")
                                          for k, g in gbs.items())
        print(line, flush=True)
        rows.append(r)
    base = baseline_rows()
    if base and not a.dry:
        print(f"session 27 (H200, before; {BASELINE.name}) -> now ({device}):")
        for r in rows:
            b = base.get(r["call"])
            if not b:
                continue
            parts = [f"{k} {us(old)} -> {us(r.get(k + '_s'))} us" for k, old in zip(("host", "device", "call"), b)
                     if old is not None]
            print(f"  {r['call']:<22} " + "  ".join(parts))
    print(f"bench_gpu_host: {len(rows)} calls in {time.monotonic() - t0:.1f} s", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"device": device, "peak_gbs": peak, "rows": rows,
                                            "baseline": str(BASELINE)},
                                           indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
