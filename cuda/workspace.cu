// attnkit's stream-ordered scratch pool, one per device (see cuda/workspace.cuh). No kernels here.
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#include "cuda/workspace.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
namespace {

constexpr int kMaxPoolDevices = 256;

/// One device's pool: `ready` is set (release) once `pool` holds its final value (nullptr: none possible).
struct PoolSlot {
  std::atomic<bool> ready{false};
  cudaMemPool_t pool = nullptr;
};

/// The release threshold: ATTNKIT_CUDA_SCRATCH_KEEP_MIB when set to a number, else a quarter of `total`.
uint64_t keep_bytes(std::size_t total) {
  const char* e = std::getenv("ATTNKIT_CUDA_SCRATCH_KEEP_MIB");
  if (e && *e) {
    char* end = nullptr;
    const unsigned long long mib = std::strtoull(e, &end, 10);
    if (end && *end == '\0') return mib >= (uint64_t{1} << 44) ? UINT64_MAX : static_cast<uint64_t>(mib) << 20;
  }
  return static_cast<uint64_t>(total / 4);
}

/// A new pool on `device` (the current device) keeping keep_bytes() between calls, or nullptr where the
/// device cannot have one (the failure is cleared: it must not surface at the next launch check).
cudaMemPool_t make_pool(int device) {
  cudaMemPoolProps props;
  std::memset(&props, 0, sizeof(props));
  props.allocType = cudaMemAllocationTypePinned;
  props.handleTypes = cudaMemHandleTypeNone;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = device;
  cudaMemPool_t pool = nullptr;
  if (cudaMemPoolCreate(&pool, &props) != cudaSuccess) {
    (void)cudaGetLastError();
    return nullptr;
  }
  std::size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
    (void)cudaGetLastError();
    total_b = 0;
  }
  uint64_t keep = keep_bytes(total_b);
  // Without a threshold the pool still works, as the default pool does (gives its memory back).
  if (cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep) != cudaSuccess) (void)cudaGetLastError();
  return pool;
}

}  // namespace

cudaMemPool_t scratch_pool() {
  // Never destroyed: static destruction may run after the CUDA runtime has gone.
  static PoolSlot slots[kMaxPoolDevices];
  static std::mutex mu;
  int dev = 0;
  ATTNKIT_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < 0 || dev >= kMaxPoolDevices)
    throw Error(ErrorKind::Runtime, "CUDA device index " + std::to_string(dev) + " is beyond attnkit's " +
                                        std::to_string(kMaxPoolDevices) + " scratch pools");
  PoolSlot& s = slots[dev];
  if (s.ready.load(std::memory_order_acquire)) return s.pool;
  std::lock_guard<std::mutex> lock(mu);
  if (!s.ready.load(std::memory_order_relaxed)) {
    s.pool = make_pool(dev);
    s.ready.store(true, std::memory_order_release);
  }
  return s.pool;
}

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
