#pragma once
// Dynamic linear attention on the GPU (shared/specs/dla.md): what the decode kernel (dla_decode.cu) and
// the chunked prefill kernel (dla_prefill.cu) share. The semantics are the CPU backend's
// (cpu/dla_decode.h, cpu/dla_prefill.h) with the scalar rules of attnkit/math/dla.h; see dla.cu for the
// mapping of work to threads and for where the GPU can decide differently from the CPU.

#include <cstddef>
#include <cstdint>

#include "attnkit/math/dla.h"
#include "cuda/common.cuh"
#include "validate/dla.h"

namespace attnkit {
namespace detail {
namespace cuda {
namespace dla {

/// Threads per block of both kernels. A fixed constant: the block reductions below sum in a fixed tree
/// over exactly these threads, so results never depend on the launch.
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

/// The CPU's automatic chunk length (cpu/dla_cache.h kDefaultChunk): the chunk boundaries decide where the
/// open state's squared norm is recomputed from the stored state, so they must be the CPU's.
constexpr int64_t kDefaultChunk = 64;

/// Scratch memory the grid may take at once; the grid shrinks (blocks loop over more items) to stay under it.
constexpr std::size_t kScratchBudget = std::size_t(1) << 30;

/// Whether the CPU takes its decode path (cpu/dla_decode.h can_fuse): the GPU takes its own decode kernel
/// in exactly the same cases, so both use the same formulas for the step.
inline bool takes_decode_path(const DLAProblem& p) {
  return p.T == 1 && p.chunk_size == 0 && (p.Dv == 1 || p.cache_out.states.stride[4] == 1) &&
         (!p.cache_in.present || p.Dv == 1 || p.cache_in.states.stride[4] == 1);
}

/// Blocks of a grid-stride launch over `items` (batch, head) items, each block owning `per_block` bytes of
/// scratch: a few blocks per SM, fewer when the scratch would pass kScratchBudget (at least 1).
unsigned grid_for(int64_t items, std::size_t per_block, int device);

template <class St>
void launch_decode(const DLAProblem& p, cudaStream_t stream);
template <class St>
void launch_prefill(const DLAProblem& p, cudaStream_t stream);
/// dla_prefill_v2.cu: the faster chunked prefill; false (nothing launched) when its chunk does not fit in
/// the device's shared memory, and the caller takes launch_prefill.
template <class St>
bool launch_prefill_v2(const DLAProblem& p, cudaStream_t stream);

// ------------------------------------------------------------------------------------------ device helpers

/// Element idx of a storage-typed array as the accumulator type.
template <class St>
__device__ __forceinline__ acc_t<St> ld(const void* base, int64_t idx) {
  return to_acc<acc_t<St>>(static_cast<const St*>(base)[idx]);
}

/// Offset of element (b, h, t) of a view whose first three dims are [B, H, T] (or [B, H, C]).
template <class View>
__device__ __forceinline__ int64_t at3(const View& x, int64_t b, int64_t h, int64_t t) {
  return b * x.stride[0] + h * x.stride[1] + t * x.stride[2];
}

/// The sum of x over the block's kThreads threads in a fixed tree; every thread gets it. `sh` holds
/// kThreads doubles of shared memory. Every thread of the block must call it (it synchronizes).
__device__ __forceinline__ double block_sum(double x, double* sh) {
  sh[threadIdx.x] = x;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (static_cast<int>(threadIdx.x) < s) sh[threadIdx.x] += sh[threadIdx.x + s];
    __syncthreads();
  }
  const double r = sh[0];
  __syncthreads();
  return r;
}

/// The sum of x over the 32 lanes of a warp in a fixed tree; lane 0 gets it.
__device__ __forceinline__ double warp_sum(double x) {
  for (int s = 16; s > 0; s >>= 1) x += __shfl_down_sync(0xffffffffu, x, s);
  return x;
}

}  // namespace dla
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
