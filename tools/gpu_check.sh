#!/usr/bin/env bash
# The one GPU check of attnkit's CUDA backend (issue 10): run from a copy of the source tree on a machine with
# one NVIDIA GPU, nvcc 13, CMake, ninja, CuPy, PyTorch with CUDA, pytest, pytest-xdist, hypothesis, ml_dtypes,
# pybind11 and scikit-build-core installed, and no network.
#
#   tools/gpu_check.sh OUTDIR
#
# Stages (each under `timeout`; the whole stays under 9 minutes on 16 cores + one H100 or H200):
#   1. versions (nvidia-smi, nvcc)                                        -> stdout
#   2. build + install for the local GPU with every core (pip)            -> OUTDIR/build.log   (stops here on failure)
#   3. `attnkit info`                                                     -> stdout
#   4. tests/test_gpu_*.py, one worker per core (16 at most)                                 -> OUTDIR/tests.log, OUTDIR/junit.xml
#   5. compute-sanitizer memcheck + racecheck over the "small" subset     -> OUTDIR/sanitizer.log
#   6. bench/bench_gpu.py --quick                                         -> OUTDIR/bench.log, OUTDIR/bench_gpu.json
#   7. per-kernel profile: Nsight Compute over bench/gpu_profile.py (DLA prefill v4 / v2, DLA decode
#      steps v3 / v2 / v1, exact decode Sk=16384 GQA 32:8 D=128), kernel durations and DRAM bytes
#                                                                  -> OUTDIR/profile.log, profile.csv, profile.txt
#   8. summary (device, tests, failed ids, sanitizer errors, table, profile) -> OUTDIR/summary.txt (and stdout)
# A failed or timed-out stage is recorded and the next one runs (except after a failed build). Exit status:
# 0 when every stage passed, 1 otherwise; the profile stage is informational (ncu may be missing or not
# allowed to read the performance counters): its status is recorded but does not fail the check. OUTDIR
# holds at most these 10 files.
#
# Time limits (seconds) can be changed through the environment: BUILD_S, TESTS_S, MEMCHECK_S, RACECHECK_S,
# BENCH_S, PROFILE_S; PYTHON (default python3), BENCH_ARGS (default --quick), NCU (default: ncu on PATH or next
# to nvcc). The limits add up to 525 s (170 + 170 + 30 + 40 + 90 + 25), plus a few seconds of versions,
# `attnkit info` and summary: under 9 minutes. Session 27's H200 run: build 136 s, tests 138 s with 16 workers
# (8 workers ran out of 110 s at 88%), memcheck 11 s, racecheck 26 s, bench 72 s, profile 5 s.
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
# the files of an earlier run in the same OUTDIR would pass for this run's
rm -f "${OUT}"/{build.log,tests.log,junit.xml,sanitizer.log,bench.log,bench_gpu.json,profile.log,profile.csv,profile.txt,summary.txt}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

PY=${PYTHON:-python3}
BUILD_S=${BUILD_S:-170}
TESTS_S=${TESTS_S:-170}
MEMCHECK_S=${MEMCHECK_S:-30}
RACECHECK_S=${RACECHECK_S:-40}
BENCH_S=${BENCH_S:-90}
PROFILE_S=${PROFILE_S:-25}
BENCH_ARGS=${BENCH_ARGS:---quick}
# Kernels not yet verified on a GPU (cuda/runtime.cu's kCompiled list) run only with this set: this check is
# what verifies them.
export ATTNKIT_CUDA_UNVERIFIED=${ATTNKIT_CUDA_UNVERIFIED:-1}
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_BREAK_SYSTEM_PACKAGES=1 PIP_NO_INPUT=1
NPROC=$(nproc)
TEST_WORKERS=$((NPROC < 16 ? NPROC : 16))
# CMake and compute-sanitizer are found next to nvcc; a toolkit outside PATH is taken from the usual places
if ! command -v nvcc >/dev/null 2>&1; then
  for d in /usr/local/cuda/bin /usr/local/cuda-13*/bin /opt/cuda/bin; do
    if [[ -x $d/nvcc ]]; then
      export PATH="$d:$PATH"
      break
    fi
  done
fi
T_START=$(date +%s)

# Sanitizer subsets (pytest -k): tiny cases only; "bf16" is excluded by name since "f16" is a substring of it.
MEMCHECK_K='small and not bf16 and not bfloat16'
RACECHECK_K='small and not bf16 and not bfloat16'

declare -a STAGES=()  # "name|status|seconds"
FAILED=0

# run_stage NAME LIMIT LOG CMD...: runs CMD under timeout with stdout+stderr appended to LOG, records the result.
run_stage() {
  local name=$1 limit=$2 log=$3
  shift 3
  local t0 rc status
  t0=$(date +%s)
  echo "== ${name} (limit ${limit} s) -> ${log}"
  set +e
  timeout --kill-after=10 "${limit}" "$@" >>"${log}" 2>&1
  rc=$?
  set -e
  if [[ $rc -eq 0 ]]; then
    status=ok
  elif [[ $rc -eq 124 || $rc -eq 137 ]]; then
    status="TIMEOUT after ${limit} s"
    FAILED=1
  else
    status="FAILED (exit ${rc})"
    FAILED=1
  fi
  STAGES+=("${name}|${status}|$(($(date +%s) - t0))")
  echo "== ${name}: ${status} in $(($(date +%s) - t0)) s"
  return 0
}

stage_status() {  # the recorded status of a stage, or "not run"
  local s
  for s in "${STAGES[@]}"; do
    if [[ ${s%%|*} == "$1" ]]; then
      s=${s#*|}
      echo "${s%%|*}"
      return 0
    fi
  done
  echo "not run"
}

write_summary() {
  local summary="${OUT}/summary.txt"
  {
    echo "attnkit GPU check, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), total $(($(date +%s) - T_START)) s"
    echo "device: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1 || echo unknown)"
    echo "nvcc: $(nvcc --version 2>/dev/null | grep -i release | head -1 || echo unknown)"
    echo "git: $(git -C "${ROOT}" rev-parse --short HEAD 2>/dev/null || echo 'not a git checkout')"
    echo
    echo "stages:"
    local s name rest
    for s in "${STAGES[@]}"; do
      name=${s%%|*}
      rest=${s#*|}
      printf '  %-10s %-28s %s s\n' "${name}" "${rest%%|*}" "${rest#*|}"
    done
    echo
    OUT="${OUT}" ROOT="${ROOT}" "${PY}" - <<'PYEOF' || echo "(summary script failed)"
import json, os, re, sys
import xml.etree.ElementTree as ET
out, root = os.environ["OUT"], os.environ["ROOT"]

junit = os.path.join(out, "junit.xml")
if os.path.exists(junit):
    try:
        tree = ET.parse(junit)
        suites = [tree.getroot()] if tree.getroot().tag == "testsuite" else list(tree.getroot().iter("testsuite"))
        n = sum(int(s.get("tests", 0)) for s in suites)
        f = sum(int(s.get("failures", 0)) for s in suites)
        e = sum(int(s.get("errors", 0)) for s in suites)
        sk = sum(int(s.get("skipped", 0)) for s in suites)
        print(f"tests: {n - f - e - sk} passed, {f} failed, {e} errors, {sk} skipped (of {n})")
        bad = []
        for tc in tree.getroot().iter("testcase"):
            if tc.find("failure") is not None or tc.find("error") is not None:
                bad.append(f"{tc.get('classname', '')}::{tc.get('name', '')}")
        if bad:
            print("failed test ids:")
            for b in bad[:80]:
                print("  " + b)
            if len(bad) > 80:
                print(f"  ... and {len(bad) - 80} more")
        reasons = {}
        for tc in tree.getroot().iter("testcase"):
            s = tc.find("skipped")
            if s is not None:
                msg = (s.get("message") or "").split(";")[0]
                msg = re.sub(r"\s+", " ", msg)[:150]
                reasons[msg] = reasons.get(msg, 0) + 1
        if reasons:
            print("skip reasons:")
            for msg, c in sorted(reasons.items(), key=lambda x: -x[1])[:15]:
                print(f"  {c:5d}  {msg}")
    except Exception as ex:  # noqa: BLE001
        print(f"tests: junit.xml unreadable ({ex})")
else:
    print("tests: no junit.xml (the test stage did not run or was killed)")

san = os.path.join(out, "sanitizer.log")
if os.path.exists(san):
    text = open(san, errors="replace").read()
    for tool in ("memcheck", "racecheck"):
        part = text.split(f"#### compute-sanitizer --tool {tool}")
        if len(part) < 2:
            print(f"sanitizer {tool}: not run")
            continue
        body = part[1].split("#### compute-sanitizer --tool")[0]
        counts = [int(a or b) for a, b in re.findall(r"(?:ERROR SUMMARY: (\d+) error|RACECHECK SUMMARY: \d+ hazards? displayed \((\d+) error)", body)]
        tail = re.findall(r"^(\d+ passed.*|.*(?:passed|failed|error).* in [\d.]+s.*)$", body, re.M)
        print(f"sanitizer {tool}: {sum(counts)} errors over {len(counts)} process(es)"
              + (f"; pytest: {tail[-1].strip('= ')}" if tail else ""))
else:
    print("sanitizer: not run")

bench = os.path.join(out, "bench_gpu.json")
print()
if os.path.exists(bench):
    try:
        sys.path.insert(0, os.path.join(root, "bench"))
        from bench_gpu import format_row
        d = json.load(open(bench))
        env = d.get("env", {})
        print(f"benchmark on {env.get('device')} (torch {env.get('torch', 'absent')}, peak {env.get('peak_bandwidth_gbs')} GB/s):")
        if d.get("kernel_notes"):
            print("  without a CUDA kernel: " + ", ".join(d["kernel_notes"]))
        for r in d.get("rows", []):
            print("  " + format_row(r))
        if d.get("truncated"):
            print("  " + d["truncated"])
    except Exception as ex:  # noqa: BLE001
        print(f"benchmark: bench_gpu.json unreadable ({ex})")
else:
    print("benchmark: no bench_gpu.json")

prof = os.path.join(out, "profile.txt")
print()
if os.path.exists(prof):
    print(open(prof, errors="replace").read().rstrip())
else:
    print("profile: not run")
PYEOF
  } >"${summary}" 2>&1
  echo
  echo "================================ summary (${summary})"
  cat "${summary}"
}

# ---------------------------------------------------------------------------------------------- 1. versions
echo "== versions"
nvidia-smi || echo "nvidia-smi failed"
nvcc --version || echo "nvcc not found"
echo "python: $(${PY} --version 2>&1), cmake: $(cmake --version 2>/dev/null | head -1), ninja: $(ninja --version 2>/dev/null), cores: ${NPROC}"
${PY} - <<'PYEOF' || true
import importlib
for m in ("cupy", "torch", "pytest", "xdist", "hypothesis", "ml_dtypes", "pybind11", "scikit_build_core", "numpy"):
    try:
        mod = importlib.import_module(m)
        print(f"  {m} {getattr(mod, '__version__', '?')}")
    except Exception as e:  # noqa: BLE001
        print(f"  {m}: NOT importable ({e.__class__.__name__})")
PYEOF

# ---------------------------------------------------------------------------------------------- 2. build
: >"${OUT}/build.log"
run_stage build "${BUILD_S}" "${OUT}/build.log" \
  env CMAKE_BUILD_PARALLEL_LEVEL="${NPROC}" "${PY}" -m pip install -v --no-build-isolation --no-deps --no-index . \
  -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=native -Ccmake.define.ATTNKIT_CUDA=ON
if [[ $(stage_status build) != ok ]]; then
  echo "== build failed: last 60 lines of ${OUT}/build.log"
  tail -n 60 "${OUT}/build.log"
  write_summary
  exit 1
fi

# ---------------------------------------------------------------------------------------------- 3. info
echo "== attnkit info"
# from outside the source tree, so that the installed package (with its compiled _core) is the one imported
(cd "${OUT}" && timeout 60 "${PY}" -X faulthandler -m attnkit info) || echo "attnkit info failed"

# ---------------------------------------------------------------------------------------------- 4. tests
: >"${OUT}/tests.log"
run_stage tests "${TESTS_S}" "${OUT}/tests.log" \
  "${PY}" -m pytest -q -n "${TEST_WORKERS}" tests/test_gpu_*.py -rfEs -p no:cacheprovider --junitxml "${OUT}/junit.xml"
echo "-- tail of tests.log"
tail -n 40 "${OUT}/tests.log"

# ---------------------------------------------------------------------------------------------- 5. sanitizer
: >"${OUT}/sanitizer.log"
SAN=$(command -v compute-sanitizer || true)
if [[ -z ${SAN} && -n $(command -v nvcc || true) ]]; then
  SAN=$(dirname "$(command -v nvcc)")/compute-sanitizer
fi
if [[ -n ${SAN} && -x ${SAN} ]]; then
  echo "#### compute-sanitizer --tool memcheck  (-k '${MEMCHECK_K}')" >>"${OUT}/sanitizer.log"
  run_stage memcheck "${MEMCHECK_S}" "${OUT}/sanitizer.log" \
    env ATTNKIT_GPU_TESTS_SANITIZER=1 "${SAN}" --tool memcheck --error-exitcode 1 \
    "${PY}" -m pytest -q -p no:xdist tests/test_gpu_*.py -p no:cacheprovider -k "${MEMCHECK_K}"
  echo "#### compute-sanitizer --tool racecheck  (-k '${RACECHECK_K}')" >>"${OUT}/sanitizer.log"
  run_stage racecheck "${RACECHECK_S}" "${OUT}/sanitizer.log" \
    env ATTNKIT_GPU_TESTS_SANITIZER=1 "${SAN}" --tool racecheck --error-exitcode 1 \
    "${PY}" -m pytest -q -p no:xdist tests/test_gpu_*.py -p no:cacheprovider -k "${RACECHECK_K}"
  echo "-- sanitizer error summaries"
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|passed|failed" "${OUT}/sanitizer.log" | tail -n 20 || true
else
  echo "compute-sanitizer not found" | tee -a "${OUT}/sanitizer.log"
  STAGES+=("memcheck|FAILED (no compute-sanitizer)|0" "racecheck|FAILED (no compute-sanitizer)|0")
  FAILED=1
fi

# ---------------------------------------------------------------------------------------------- 6. benchmark
: >"${OUT}/bench.log"
# --budget-s: the benchmark stops starting rows in time to write its JSON before the stage's timeout
# shellcheck disable=SC2086
run_stage bench "${BENCH_S}" "${OUT}/bench.log" \
  "${PY}" bench/bench_gpu.py ${BENCH_ARGS} --budget-s $((BENCH_S - 35)) --json "${OUT}/bench_gpu.json"

# ---------------------------------------------------------------------------------------------- 7. profile
# Nsight Compute over a few launches of attnkit's DLA and decode kernels (bench/gpu_profile.py marks the phases
# with empty dla_mark_* kernels): durations at the GPU's own clocks (--clock-control none), caches flushed
# between replays (ncu's default), DRAM bytes read and written. Informational: FAILED is left as it was.
: >"${OUT}/profile.log"
NCU=${NCU:-$(command -v ncu || true)}
if [[ -z ${NCU} && -n $(command -v nvcc || true) ]]; then
  NCU=$(dirname "$(command -v nvcc)")/ncu
fi
if [[ -n ${NCU} && -x ${NCU} ]]; then
  failed_before=${FAILED}
  run_stage profile "${PROFILE_S}" "${OUT}/profile.log" \
    "${NCU}" --target-processes all --kernel-name "regex:dla_|decode|merge" --launch-count 80 --clock-control none \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum --csv --print-units base \
    --log-file "${OUT}/profile.csv" "${PY}" bench/gpu_profile.py --budget-s $((PROFILE_S - 15))
  FAILED=${failed_before}
  timeout 30 "${PY}" bench/gpu_profile.py --summarize "${OUT}/profile.csv" >"${OUT}/profile.txt" 2>&1 || true
else
  echo "ncu not found (looked on PATH and next to nvcc; NCU=... names it)" | tee -a "${OUT}/profile.log" >"${OUT}/profile.txt"
  STAGES+=("profile|skipped (no ncu)|0")
fi
echo "-- profile"
cat "${OUT}/profile.txt" 2>/dev/null || true

# ---------------------------------------------------------------------------------------------- 8. summary
write_summary
exit "${FAILED}"
