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
# Usage: tests/cuda_emu/run.sh [BUILD_DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$(mktemp -d)}"
mkdir -p "$out"
flags=(-std=c++20 -O1 -g -I "$here/shim" -I "$root" -I "$root/cpp/src" -I "$root/cpp/include" -pthread)
for f in merge rope linear linformer attention_backward linear_backward; do
  perl -0pe 's/(\w+<[^<>]*>)<<<(.*?), kThreads, 0, stream>>>\((.*?)\);/emu_launch($2, [&]{ $1($3); });/gs' \
    "$root/cuda/$f.cu" > "$out/$f.emu.cpp"
done
g++ "${flags[@]}" "$here/test_linear_merge_rope.cpp" "$out/merge.emu.cpp" "$out/rope.emu.cpp" "$out/linear.emu.cpp" \
  -o "$out/test_linear_merge_rope"
g++ "${flags[@]}" "$here/test_linformer.cpp" "$out/linformer.emu.cpp" -o "$out/test_linformer"
g++ -std=c++17 -O1 -fopenmp -I "$root/cpp/src" -I "$root/cpp/include" -c "$root/cpp/src/cpu/linear_generic.cpp" \
  -o "$out/linear_generic.o"
g++ "${flags[@]}" -fopenmp "$here/test_linear_vs_cpu.cpp" "$out/linear.emu.cpp" "$out/linear_generic.o" \
  -o "$out/test_linear_vs_cpu"
"$out/test_linear_merge_rope" | tail -1
"$out/test_linformer" | tail -1
g++ -std=c++17 -O1 -fopenmp -I "$root/cpp/src" -I "$root/cpp/include" -c "$root/cpp/src/cpu/attention_bwd_generic.cpp" \
  -o "$out/attention_bwd_generic.o"
g++ "${flags[@]}" -fopenmp "$here/test_attention_backward.cpp" "$out/attention_backward.emu.cpp" \
  "$out/attention_bwd_generic.o" -o "$out/test_attention_backward"
OMP_NUM_THREADS=1 "$out/test_linear_vs_cpu" | tail -1
# linear_backward.cu (linear attention / Performer gradients) vs the CPU backend's generic backward kernel.
g++ "${flags[@]}" -fopenmp "$here/test_linear_bwd_vs_cpu.cpp" "$out/linear_backward.emu.cpp" "$out/linear_generic.o" \
  -o "$out/test_linear_bwd_vs_cpu"
OMP_NUM_THREADS=1 "$out/test_linear_bwd_vs_cpu" | tail -1
# linear.cu's v2 tuning (read once per process): small key segments and an odd default causal chunk.
ATTNKIT_LINEAR_CUDA_SEG=16 ATTNKIT_LINEAR_CUDA_CHUNK=5 OMP_NUM_THREADS=1 "$out/test_linear_vs_cpu" | tail -1
ATTNKIT_LINEAR_CUDA_SEG=16 ATTNKIT_LINEAR_CUDA_CHUNK=5 "$out/test_linear_merge_rope" | tail -1
OMP_NUM_THREADS=1 "$out/test_attention_backward" | tail -1
# DLA prefill v4: the kernel bodies (dla_prefill_v2.cu up to its host side, with dla_prefill_v4.cuh's five kernels)
# vs the CPU backend's generic kernel, and v4 vs itself under other grids / item groups / C2 splits; blocks of 1, 5,
# 32 and 40 emulated threads (pass B's warp chain runs from 32 on; 40: the warp cases only).
sed -n '1,/^\/\/ ---- host side/p' "$root/cuda/dla_prefill_v2.cu" > "$out/dla_v2_body.inc"
printf '}  // namespace v2\n}  // namespace dla\n}  // namespace cuda\n}  // namespace detail\n}  // namespace attnkit\n' \
  >> "$out/dla_v2_body.inc"
g++ -std=c++17 -O1 -fopenmp -I "$root/cpp/src" -I "$root/cpp/include" -c "$root/cpp/src/cpu/dla_generic.cpp" \
  -o "$out/dla_generic.o"
g++ "${flags[@]}" -fopenmp -I "$out" "$here/test_dla_v2.cpp" "$out/dla_generic.o" -o "$out/test_dla_v2"
OMP_NUM_THREADS=1 "$out/test_dla_v2" | tail -1
# DLA decode (dla_decode_v2.cu and dla_decode_v3.cu with their host sides; the 16-bit
# instantiations dropped) vs the CPU backend's generic kernel, and v3 vs v2 bit for bit; blocks of 256
# emulated threads.
for f in dla_decode_v2 dla_decode_v3; do
  perl -0pe 's/(\w+<[^<>]*>)<<<(.*?), kThreads, 0, stream>>>\((.*?)\);/emu_launch($2, [&]{ $1($3); });/gs' \
    "$root/cuda/$f.cu" | grep -v -E '^template (void|bool) .*<(half_t|bf16_t)>' | grep -v '#include "cuda/' > "$out/$f.emu.inc"
done
g++ "${flags[@]}" -fopenmp -I "$out" "$here/test_dla_decode.cpp" "$out/dla_generic.o" -o "$out/test_dla_decode"
OMP_NUM_THREADS=1 "$out/test_dla_decode" | tail -1

