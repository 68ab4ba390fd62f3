#pragma once
// The workspace seam: how a backend gets scratch memory for one call. Every kernel allocation goes through
// one of these, so running out of memory is always an attnkit::Error (never std::terminate from inside an
// OpenMP region, never a null dereference):
//   - per-thread scratch on the CPU: cpu::parallel_with_scratch (cpu/parallel.h);
//   - call-wide scratch: Workspace below on the CPU (64-byte aligned heap), cuda::Workspace
//     (cuda/workspace.cuh) on a device, stream-ordered on the caller's stream (cudaMallocAsync /
//     cudaFreeAsync: a call never synchronizes to allocate).

#include <cstddef>
#include <cstdlib>
#include <string>

#include "attnkit/types.h"

namespace attnkit {
namespace detail {

class Workspace {
 public:
  /// bytes of host scratch for `what` (named in the error when the memory cannot be had); uninitialised.
  Workspace(std::size_t bytes, const char* what) {
    const std::size_t n = (bytes + 63) / 64 * 64;
    ptr_ = static_cast<char*>(std::aligned_alloc(64, n ? n : 64));
    if (!ptr_)
      throw Error(ErrorKind::Runtime, "attnkit: out of memory allocating " + std::to_string(bytes) +
                                          " bytes of scratch space for " + what);
  }
  ~Workspace() { std::free(ptr_); }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  /// Bytes to reserve for n elements of T in a sequence of take() calls (each piece 64-byte aligned).
  template <class T>
  static std::size_t need(std::size_t n) {
    return (n * sizeof(T) + 63) / 64 * 64;
  }
  /// The next n elements of T (64-byte aligned); the caller reserved them with need().
  template <class T>
  T* take(std::size_t n) {
    T* p = reinterpret_cast<T*>(ptr_ + used_);
    used_ += need<T>(n);
    return p;
  }

 private:
  char* ptr_ = nullptr;
  std::size_t used_ = 0;
};

}  // namespace detail
}  // namespace attnkit
