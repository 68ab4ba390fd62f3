#pragma once
// Linear attention's v2 scratch (linear.cu): a stream-ordered workspace like cuda/workspace.cuh, but from a
// memory pool of attnkit's own per device that keeps up to a quarter of the device's memory between calls.
//
// Why: Workspace draws from the device's default pool, whose release threshold is 0: at every
// synchronization the pool hands its memory back, so a call whose scratch is large (linear attention's
// features and chunk states: ~1 GiB for causal Performer, B=4, H=16, S=4096, m=256) maps it afresh each
// time. The v1 times of bench/bench_gpu.py on an H100 (2026-11-26) are close to proportional to the v1
// scratch size, ~11-16 ms per GiB over the four linear rows and both lengths, far above what the kernels'
// memory traffic explains: the suspected cause (the benchmark's "v1 pool-keep" / "v2 default-pool" rows
// test it). A pool of our own changes nothing for other users of the default pool. The pools live until the
// process ends (never destroyed: static destruction may run after the CUDA runtime is gone).
// ATTNKIT_LINEAR_CUDA_POOL=0 (read once) falls back to Workspace (the benchmark's comparison).
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "cuda/workspace.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
namespace {

inline bool linear_pool_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("ATTNKIT_LINEAR_CUDA_POOL");
    return !(e && std::strcmp(e, "0") == 0);
  }();
  return on;
}

/// The pool of the current device (created on first use).
inline cudaMemPool_t linear_pool() {
  constexpr int kMaxDevices = 64;
  static cudaMemPool_t pools[kMaxDevices] = {};
  static std::mutex mu;
  int dev = 0;
  ATTNKIT_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < 0 || dev >= kMaxDevices) throw Error(ErrorKind::Runtime, "CUDA device index beyond attnkit's pools");
  std::lock_guard<std::mutex> lock(mu);
  if (!pools[dev]) {
    cudaMemPoolProps props;
    std::memset(&props, 0, sizeof(props));
    props.allocType = cudaMemAllocationTypePinned;
    props.handleTypes = cudaMemHandleTypeNone;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = dev;
    cudaMemPool_t pool = nullptr;
    ATTNKIT_CUDA_CHECK(cudaMemPoolCreate(&pool, &props));
    std::size_t free_b = 0, total_b = 0;
    ATTNKIT_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    uint64_t keep = static_cast<uint64_t>(total_b / 4);
    ATTNKIT_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
    pools[dev] = pool;
  }
  return pools[dev];
}

/// Stream-ordered scratch from linear_pool() when `pooled` (the v2 path) and the pool is enabled, else from
/// the default pool as Workspace.
class LinearWorkspace {
 public:
  LinearWorkspace(std::size_t bytes, cudaStream_t stream, bool pooled) : stream_(stream) {
    if (!bytes) return;
    if (pooled && linear_pool_enabled())
      ATTNKIT_CUDA_CHECK(cudaMallocFromPoolAsync(&ptr_, bytes, linear_pool(), stream_));
    else
      ATTNKIT_CUDA_CHECK(cudaMallocAsync(&ptr_, bytes, stream_));
  }
  ~LinearWorkspace() {
    if (ptr_) (void)cudaFreeAsync(ptr_, stream_);
  }
  LinearWorkspace(const LinearWorkspace&) = delete;
  LinearWorkspace& operator=(const LinearWorkspace&) = delete;

  template <class T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
};

}  // namespace
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
