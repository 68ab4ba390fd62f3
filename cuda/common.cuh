#pragma once
// Shared infrastructure of the CUDA backend: error checking that throws (never aborts), the caller's
// stream, and the device guard.

#include <cuda_runtime.h>

#include <string>

#include "attnkit/types.h"

namespace attnkit {
namespace detail {
namespace cuda {

[[noreturn]] inline void throw_cuda(cudaError_t e, const char* what, const char* file, int line) {
  throw Error(ErrorKind::Runtime, std::string("CUDA error in ") + what + " (" + file + ":" +
                                      std::to_string(line) + "): " + cudaGetErrorName(e) + ": " +
                                      cudaGetErrorString(e));
}

/// Throws attnkit::Error(Runtime) when a CUDA runtime call fails.
#define ATTNKIT_CUDA_CHECK(expr)                                                        \
  do {                                                                                  \
    const cudaError_t attnkit_err_ = (expr);                                            \
    if (attnkit_err_ != cudaSuccess)                                                    \
      ::attnkit::detail::cuda::throw_cuda(attnkit_err_, #expr, __FILE__, __LINE__);     \
  } while (0)

/// Checks the last kernel launch on the current thread.
#define ATTNKIT_CUDA_CHECK_LAUNCH() ATTNKIT_CUDA_CHECK(cudaGetLastError())

/// The caller's stream (CuPy's current stream arrives here as a cudaStream_t).
inline cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

/// Makes `device` current for the scope and restores the previous device afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    ATTNKIT_CUDA_CHECK(cudaGetDevice(&prev_));
    if (prev_ != device) ATTNKIT_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() {
    int cur = -1;
    if (cudaGetDevice(&cur) == cudaSuccess && cur != prev_) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
};

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
