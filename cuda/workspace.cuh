#pragma once
// The CUDA side of the workspace seam (cpp/src/workspace.h): call-wide scratch, stream-ordered on the
// caller's stream, so allocating never synchronizes the device; freed on the same stream when the call's
// work is enqueued. Throws Error(Runtime) when the memory cannot be had. Every CUDA kernel file takes its
// scratch from here (there is no other pool).
//
// The memory comes from attnkit's own stream-ordered pool of the current device (scratch_pool(), one per
// device index, created on first use and kept for the process) through cudaMallocFromPoolAsync. Why not the
// device's default pool (cudaMallocAsync): its release threshold is 0, so at every synchronization it hands
// its memory back to the driver and the next call maps it afresh (measured on an H100, 2026-11-26: decode at
// Sk = 16K 976 GB/s per call from the default pool vs 1504 from a kept pool; linear attention v1 8-16% faster
// with the pool kept). attnkit's pool keeps up to a quarter of the device's memory between calls (its release
// threshold: what it holds above that goes back to the driver at synchronizations; attnkit never trims it
// itself) and leaves the default pool, which other libraries share, as it is.
//   ATTNKIT_CUDA_SCRATCH_KEEP_MIB=n  (read once per device, when its pool is made) keep at most n MiB
//                                    instead (0: give everything back at each synchronization);
//   tuning option "cuda_scratch" = 1 (cpp/src/tuning.h; for the benchmark's comparison): the scratch of
//                                    later calls comes from the device's default pool instead.
// Where a device cannot make a pool, its scratch comes from the default pool.

#include <cstddef>

#include "cpp/src/tuning.h"
#include "cuda/common.cuh"

namespace attnkit {
namespace detail {
namespace cuda {

/// attnkit's scratch pool of the current device (cuda/workspace.cu: made on first use, thread-safe, kept
/// until the process ends), or nullptr where the device cannot have one. Throws Error(Runtime) when the
/// current device cannot be queried.
cudaMemPool_t scratch_pool();

class Workspace {
 public:
  Workspace(std::size_t bytes, cudaStream_t stream) : stream_(stream) {
    if (!bytes) return;
    cudaMemPool_t pool = tuning().cuda_scratch.load(std::memory_order_relaxed) == 0 ? scratch_pool() : nullptr;
    if (pool)
      ATTNKIT_CUDA_CHECK(cudaMallocFromPoolAsync(&ptr_, bytes, pool, stream_));
    else
      ATTNKIT_CUDA_CHECK(cudaMallocAsync(&ptr_, bytes, stream_));
  }
  ~Workspace() {
    if (ptr_) (void)cudaFreeAsync(ptr_, stream_);
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  template <class T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
};

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
