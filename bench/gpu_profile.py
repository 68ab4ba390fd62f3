"""Per-kernel GPU times for tools/gpu_check.sh's profile stage (Nsight Compute), and their summary.

Two modes:

* ``python bench/gpu_profile.py`` (run under ``ncu``): a small workload in phases, each opened by an empty
  marker kernel named ``dla_mark_<phase>`` (so the summary can split the profiled launches by phase):

  - ``prefill``: one DLA prefill (float16, B=4, H=16, T=4095, D=64, C=16) on the default path (v4's five
    kernels where enabled), which also makes the cache for the decode steps;
  - ``decode``: 3 DLA decode steps from that cache on the default path (v3's one kernel where enabled);
  - ``decode_v2``: 3 steps on v2's two kernels (tuning ``dla_decode = 2``);
  - ``exact_decode``: 3 exact attention decode calls (float16, B=4, Hq=32, Hkv=8, Sq=1, Sk=16384, D=128),
    the case whose call time (49% of peak bandwidth on the H200) trails its device time (68%);
  - ``prefill_v1``: the first prefill again on the first kernel (tuning ``dla_split = -1``; the v2 kernel,
    profiled here until session 27, was removed then).

  ncu prints its results when the process ends, so a run killed by the stage's time limit leaves nothing:
  the workload starts no phase after ``--budget-s`` seconds (default 25; gpu_check.sh passes its limit
  less 15 s for ncu's replays of the last phase and its report).

* ``python bench/gpu_profile.py --summarize NCU.csv``: reads ncu's CSV (``--csv --print-units base``) and
  prints a table: per phase and kernel, the launches, the median duration and DRAM traffic, the achieved
  GB/s, and per phase the kernels' total per call.

Only kernels whose names match the stage's ``--kernel-name`` regex are profiled (attnkit's DLA and decode
kernels and the markers); memsets and copies are not kernels and do not appear. ncu serialises and replays
each profiled kernel, so durations are of the kernel alone, with a cold-ish L2 between replays (ncu flushes
caches by default): launch gaps and host time are not in them (bench_gpu.py's host rows have those).
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

PHASES = ("prefill", "prefill_v1", "decode", "decode_v2", "exact_decode")
PER_CALL = {"prefill": 1, "prefill_v1": 1, "decode": 3, "decode_v2": 3, "exact_decode": 3}


def workload(budget_s: float) -> int:
    import time

    import cupy
    import numpy as np

    import attnkit
    from attnkit._tuning import tuning
    from gpu_util import randn

    marks = {name: cupy.RawKernel(f'extern "C" __global__ void dla_mark_{name}() {{}}', f"dla_mark_{name}")
             for name in PHASES}

    t0 = time.monotonic()

    def mark(name):
        """Opens phase `name`; False (the phase is skipped) once the budget is spent."""
        if time.monotonic() - t0 > budget_s:
            print(f"gpu_profile: {name} skipped (past --budget-s {budget_s:.0f} s)", flush=True)
            return False
        marks[name]((1,), (1,), ())
        return True

    def attempt(name, fn):
        try:
            fn()
            cupy.cuda.Device().synchronize()
        except Exception as e:  # noqa: BLE001 - the phase is reported as failed, the others still run
            print(f"gpu_profile: {name} failed: {e.__class__.__name__}: {e}", flush=True)

    B, H, S, D, C = 4, 16, 4096, 64, 16
    q, k, v = (randn(cupy, (B, H, S, D), "float16", 0.35) for _ in range(3))
    lam = (cupy.random.random((B, H, S, C), dtype=np.float32) * (2.0 / C)).astype("float16")
    pre = tuple(x[:, :, :-1] for x in (q, k, v, lam))
    step = tuple(x[:, :, -1:] for x in (q, k, v, lam))
    cupy.cuda.Device().synchronize()
    state = {}

    def prefill():
        state["cache"] = attnkit.dynamic_linear_attention(*pre, capacity=C)[1]

    # the most wanted first: under a tight budget the last phases are the ones skipped
    if mark("prefill"):
        attempt("prefill", prefill)
    cache = state.get("cache")

    def decode(name, mode):
        if cache is not None and mark(name):
            with tuning(dla_decode=mode):
                for _ in range(PER_CALL[name]):
                    attempt(name, lambda: attnkit.dynamic_linear_attention(*step, capacity=C, cache=cache))

    decode("decode", 0)
    decode("decode_v2", 2)
    qd = randn(cupy, (4, 32, 1, 128), "float16")
    kd, vd = (randn(cupy, (4, 8, 16384, 128), "float16") for _ in range(2))
    cupy.cuda.Device().synchronize()
    if mark("exact_decode"):
        for _ in range(PER_CALL["exact_decode"]):
            attempt("exact_decode", lambda: attnkit.attention(qd, kd, vd))
    if mark("prefill_v1"):
        with tuning(dla_split=-1):
            attempt("prefill_v1", lambda: attnkit.dynamic_linear_attention(*pre, capacity=C))
    print("gpu_profile: workload done", flush=True)
    return 0


# ------------------------------------------------------------------------------------------ summary
def short_name(name: str) -> str:
    """`void ns::(anonymous namespace)::kernel<float, 4>(Args...)` -> `kernel<float, 4>`."""
    name = name.strip()
    name = re.sub(r"^void\s+", "", name)
    depth, cut = 0, len(name)
    for i, ch in enumerate(name):  # the parameter list: the first '(' outside template brackets
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0 and not name.startswith("(anonymous", i):
            cut = i
            break
    name = name[:cut]
    name = re.sub(r"\(anonymous namespace\)::", "", name)
    head, sep, tmpl = name.partition("<")
    head = head.split("::")[-1]
    tmpl = re.sub(r"attnkit::detail::|__nv_", "", tmpl)
    return (head + sep + tmpl)[:60]


def scale(unit: str, value: float, kind: str) -> float:
    """A metric value in base units: nanoseconds for durations, bytes for traffic."""
    u = (unit or "").strip().lower()
    if kind == "time":
        for prefix, f in (("ns", 1), ("nsecond", 1), ("us", 1e3), ("usecond", 1e3), ("ms", 1e6), ("msecond", 1e6),
                          ("s", 1e9), ("second", 1e9)):
            if u == prefix:
                return value * f
        return value
    for prefix, f in (("byte", 1), ("kbyte", 1e3), ("mbyte", 1e6), ("gbyte", 1e9), ("b", 1), ("kb", 1e3),
                      ("mb", 1e6), ("gb", 1e9)):
        if u == prefix:
            return value * f
    return value


def summarize(path: str) -> int:
    text = Path(path).read_text(errors="replace") if Path(path).exists() else ""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith('"ID"')), None)
    if start is None:
        print(f"profile: no ncu CSV in {path} (ncu missing, not permitted to read the counters, or killed)")
        tail = [ln for ln in lines if ln.strip()][-8:]
        for ln in tail:
            print("  " + ln[:200])
        return 0
    kernels = {}  # ID -> {"name", "time", "read", "write"}
    for row in csv.DictReader(lines[start:]):
        try:
            kid = int(row["ID"])
        except (KeyError, ValueError, TypeError):
            continue
        rec = kernels.setdefault(kid, {"name": row.get("Kernel Name", "?")})
        metric = row.get("Metric Name", "")
        raw = (row.get("Metric Value") or "").replace(",", "")
        try:
            val = float(raw)
        except ValueError:
            continue
        unit = row.get("Metric Unit", "")
        if metric.startswith("gpu__time_duration"):
            rec["time"] = scale(unit, val, "time")
        elif metric.startswith("dram__bytes_read"):
            rec["read"] = scale(unit, val, "bytes")
        elif metric.startswith("dram__bytes_write"):
            rec["write"] = scale(unit, val, "bytes")
    phase = "(before the first marker)"
    groups = {}  # (phase, kernel) -> list of records
    order = []
    for kid in sorted(kernels):
        rec = kernels[kid]
        name = short_name(rec["name"])
        m = re.match(r"dla_mark_(\w+)", name)
        if m:
            phase = m.group(1)
            continue
        key = (phase, name)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(rec)
    print(f"per-kernel profile (ncu, {len(kernels)} launches profiled; durations of the kernels alone, "
          "caches flushed between replays; no launch gaps or host time)")
    print(f"  {'phase':<13} {'kernel':<44} {'n':>3} {'median us':>10} {'DRAM rd MB':>10} {'wr MB':>8} {'GB/s':>7}")
    totals = {}
    for key in order:
        recs = groups[key]
        times = [r["time"] for r in recs if "time" in r]
        t = statistics.median(times) if times else None
        rd = statistics.median([r["read"] for r in recs if "read" in r]) if any("read" in r for r in recs) else None
        wr = statistics.median([r["write"] for r in recs if "write" in r]) if any("write" in r for r in recs) else None
        gbs = (rd or 0) + (wr or 0)
        gbs = gbs / t if t else None  # bytes per ns = GB/s
        def f(x, w, d):
            return f"{'-':>{w}}" if x is None else f"{x:{w}.{d}f}"

        print(f"  {key[0]:<13} {key[1]:<44} {len(recs):>3} {f(t and t / 1e3, 10, 1)} "
              f"{f(rd and rd / 1e6, 10, 2)} {f(wr and wr / 1e6, 8, 2)} {f(gbs, 7, 0)}")
        totals[key[0]] = totals.get(key[0], 0.0) + sum(times) / 1e3
    if totals:
        print("  kernel time per call (sum over the phase's kernels / calls):  " + "  ".join(
            f"{p} {totals[p] / PER_CALL.get(p, 1):.1f} us" for p in totals))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--summarize", metavar="NCU_CSV", help="print the summary of ncu's CSV output instead")
    ap.add_argument("--budget-s", type=float, default=25.0, help="start no phase after this many seconds")
    a = ap.parse_args()
    return summarize(a.summarize) if a.summarize else workload(a.budget_s)


if __name__ == "__main__":
    sys.exit(main())
