#!/usr/bin/env bash
# Host emulation of the CUDA kernels of cuda/{merge,rope,linear,linformer,attention_backward,linear_backward,
# dla_prefill_v2,dla_decode_v2,dla_decode_v3}.cu, for machines
# without a GPU: the .cu files are compiled by g++ against shim/cuda/*.cuh (blocks run one after another, the
# threads of a block as std::threads meeting at a std::barrier for __syncthreads; float32/float64 only), with
# each `kernel<<<grid, kThreads, 0, stream>>>(args)` rewritten to a call of the shim's emu_launch. The tests
# compare with naive float64 references (linear attention and the attention backward with the CPU backend's
# generic kernels) and run with blocks of 1 to 32 threads. It checks the index math, the chunk / state logic
# and the barrier structure (a missing __syncthreads between phases that the emulated threads interleave
# shows up as a wrong value), not CUDA itself: tests/test_gpu_*.py do that.
# The harnesses are independent: they build, then run, as parallel jobs (ATTNKIT_EMU_JOBS at once, default the
# core count), each one's output in BUILD_DIR/<stage>.<name>.log, printed in a fixed order with its time; any
# failure fails the script.
# Usage: tests/cuda_emu/run.sh [BUILD_DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$(mktemp -d)}"
mkdir -p "$out"
jobs="${ATTNKIT_EMU_JOBS:-$(nproc)}"
flags=(-std=c++20 -O1 -g -I "$here/shim" -I "$root" -I "$root/cpp/src" -I "$root/cpp/include" -pthread)
cpu_flags=(-std=c++17 -O1 -fopenmp -I "$root/cpp/src" -I "$root/cpp/include")
launch='s/(\w+<[^<>]*>)<<<(.*?), kThreads, 0, stream>>>\((.*?)\);/emu_launch($2, [&]{ $1($3); });/gs'

# The sources, rewritten (fast, serial).
for f in merge rope linear linformer attention_backward linear_backward; do
  perl -0pe "$launch" "$root/cuda/$f.cu" > "$out/$f.emu.cpp"
done
# DLA prefill v4: the kernel bodies (dla_prefill_v2.cu up to its host side, with dla_prefill_v4.cuh's five kernels).
sed -n '1,/^\/\/ ---- host side/p' "$root/cuda/dla_prefill_v2.cu" > "$out/dla_v2_body.inc"
printf '}  // namespace v2\n}  // namespace dla\n}  // namespace cuda\n}  // namespace detail\n}  // namespace attnkit\n' \
  >> "$out/dla_v2_body.inc"
# DLA decode (dla_decode_v2.cu and dla_decode_v3.cu with their host sides; the 16-bit instantiations dropped).
for f in dla_decode_v2 dla_decode_v3; do
  perl -0pe "$launch" "$root/cuda/$f.cu" | grep -v -E '^template (void|bool) .*<(half_t|bf16_t)>' \
    | grep -v '#include "cuda/' > "$out/$f.emu.inc"
done

# Every build, then every run, as parallel jobs (at most $jobs at once), each with its output and exit status
# in files; the outputs are printed in a fixed order with each job's time, and any failure fails the script.
pool() {  # pool PREFIX NAME...: runs the functions PREFIX_NAME
  local prefix=$1 n failed=0 rc secs
  shift
  run_one() {
    local t0=$SECONDS r
    # (not `( ... ) || r=$?`: on the left of || bash ignores errexit inside the subshell, even set -e there)
    set +e
    ( set -euo pipefail; "${prefix}_$1" ) > "$out/$prefix.$1.log" 2>&1
    r=$?
    set -e
    echo "$r $(( SECONDS - t0 ))" > "$out/$prefix.$1.rc"
  }
  for n in "$@"; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
    rm -f "$out/$prefix.$n.rc"
    run_one "$n" &
  done
  wait
  for n in "$@"; do
    read -r rc secs < "$out/$prefix.$n.rc" || { rc=1; secs=?; }
    echo "== $prefix $n (${secs}s, exit $rc)"
    cat "$out/$prefix.$n.log"
    [ "$rc" = 0 ] || failed=1
  done
  return "$failed"
}

# The CPU backend's generic kernels the harnesses compare with.
obj_linear() { g++ "${cpu_flags[@]}" -c "$root/cpp/src/cpu/linear_generic.cpp" -o "$out/linear_generic.o"; }
obj_attention_backward() {
  g++ "${cpu_flags[@]}" -c "$root/cpp/src/cpu/attention_bwd_generic.cpp" -o "$out/attention_bwd_generic.o"
}
obj_dla() { g++ "${cpu_flags[@]}" -c "$root/cpp/src/cpu/dla_generic.cpp" -o "$out/dla_generic.o"; }
pool obj linear dla attention_backward

# merge.cu, rope.cu, linear.cu against naive references
build_merge_rope() {
  g++ "${flags[@]}" "$here/test_linear_merge_rope.cpp" "$out/merge.emu.cpp" "$out/rope.emu.cpp" "$out/linear.emu.cpp" \
    -o "$out/test_linear_merge_rope"
}
build_linformer() { g++ "${flags[@]}" "$here/test_linformer.cpp" "$out/linformer.emu.cpp" -o "$out/test_linformer"; }
# linear.cu and linear_backward.cu (linear attention / Performer gradients) vs the CPU backend
build_linear() {
  g++ "${flags[@]}" -fopenmp "$here/test_linear_vs_cpu.cpp" "$out/linear.emu.cpp" "$out/linear_generic.o" \
    -o "$out/test_linear_vs_cpu"
}
build_linear_backward() {
  g++ "${flags[@]}" -fopenmp "$here/test_linear_bwd_vs_cpu.cpp" "$out/linear_backward.emu.cpp" "$out/linear_generic.o" \
    -o "$out/test_linear_bwd_vs_cpu"
}
build_attention_backward() {
  g++ "${flags[@]}" -fopenmp "$here/test_attention_backward.cpp" "$out/attention_backward.emu.cpp" \
    "$out/attention_bwd_generic.o" -o "$out/test_attention_backward"
}
# DLA prefill v4 vs the CPU backend's generic kernel, and v4 vs itself under other grids / item groups / C2 splits;
# blocks of 1, 5, 32 and 40 emulated threads (pass B's warp chain runs from 32 on; 40: the warp cases only).
build_dla_prefill() {
  g++ "${flags[@]}" -fopenmp -I "$out" "$here/test_dla_v2.cpp" "$out/dla_generic.o" -o "$out/test_dla_v2"
}
# DLA decode v2 / v3 vs the generic kernel, and v3 vs v2 bit for bit; blocks of 256 emulated threads.
build_dla_decode() {
  g++ "${flags[@]}" -fopenmp -I "$out" "$here/test_dla_decode.cpp" "$out/dla_generic.o" -o "$out/test_dla_decode"
}
pool build linear linear_backward dla_prefill dla_decode merge_rope attention_backward linformer

run_linear() { OMP_NUM_THREADS=1 "$out/test_linear_vs_cpu" | tail -1; }
# linear.cu's v2 tuning (read once per process): small key segments and an odd default causal chunk.
run_linear_tuned() {
  ATTNKIT_LINEAR_CUDA_SEG=16 ATTNKIT_LINEAR_CUDA_CHUNK=5 OMP_NUM_THREADS=1 "$out/test_linear_vs_cpu" | tail -1
}
run_linear_backward() { OMP_NUM_THREADS=1 "$out/test_linear_bwd_vs_cpu" | tail -1; }
run_dla_prefill() { OMP_NUM_THREADS=1 "$out/test_dla_v2" | tail -1; }
run_dla_decode() { OMP_NUM_THREADS=1 "$out/test_dla_decode" | tail -1; }
run_merge_rope() { "$out/test_linear_merge_rope" | tail -1; }
run_merge_rope_tuned() { ATTNKIT_LINEAR_CUDA_SEG=16 ATTNKIT_LINEAR_CUDA_CHUNK=5 "$out/test_linear_merge_rope" | tail -1; }
run_attention_backward() { OMP_NUM_THREADS=1 "$out/test_attention_backward" | tail -1; }
run_linformer() { "$out/test_linformer" | tail -1; }
# (the longest first)
pool run linear linear_tuned dla_prefill linear_backward merge_rope merge_rope_tuned dla_decode attention_backward \
  linformer
