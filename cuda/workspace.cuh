#pragma once
// The CUDA side of the workspace seam (cpp/src/workspace.h): call-wide scratch, stream-ordered on the
// caller's stream, so allocating never synchronizes the device; freed on the same stream when the call's
// work is enqueued. Throws Error(Runtime) when the memory cannot be had.

#include <cstddef>

#include "cuda/common.cuh"

namespace attnkit {
namespace detail {
namespace cuda {

class Workspace {
 public:
  Workspace(std::size_t bytes, cudaStream_t stream) : stream_(stream) {
    if (bytes) ATTNKIT_CUDA_CHECK(cudaMallocAsync(&ptr_, bytes, stream_));
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
