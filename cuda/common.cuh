#pragma once
// Shared infrastructure of the CUDA backend: error checking that throws (never aborts), the caller's
// stream, and the device guard.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
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

/// Throws Error(Runtime) when no CUDA device is present and Error(Value) when `index` names none.
void require_device(int index);

/// cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) for the current device,
/// skipped when an earlier call already allowed at least `bytes` for this kernel on this device (runtime.cu):
/// the attribute is a per-function, per-device setting that stays for the process (the context), so setting
/// it before every launch only cost host time per call. It is a limit, not the launch's shared memory: a
/// higher limit than a launch asks for changes nothing. (A cudaDeviceReset by the application would clear the
/// attribute behind this record: the next launch over 48 KiB would then fail with a CUDA error.)
void allow_dynamic_smem(const void* kernel, int device, std::size_t bytes);
template <class K>
void allow_dynamic_smem(K* kernel, std::size_t bytes) {
  int dev = 0;
  ATTNKIT_CUDA_CHECK(cudaGetDevice(&dev));
  allow_dynamic_smem(reinterpret_cast<const void*>(kernel), dev, bytes);
}

// ------------------------------------------------------------------------------------------ element types
/// The device storage type of each floating dtype.
using half_t = __half;
using bf16_t = __nv_bfloat16;

/// Accumulator type of a storage type: float for the 16-bit types and float32, double for float64.
template <class T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};
template <class T>
using acc_t = typename AccOf<T>::type;

template <class A>
__device__ __forceinline__ A to_acc(float x) { return static_cast<A>(x); }
template <class A>
__device__ __forceinline__ A to_acc(double x) { return static_cast<A>(x); }
template <class A>
__device__ __forceinline__ A to_acc(half_t x) { return static_cast<A>(__half2float(x)); }
template <class A>
__device__ __forceinline__ A to_acc(bf16_t x) { return static_cast<A>(__bfloat162float(x)); }

/// One rounding from the accumulator to the storage type (16-bit types round to nearest even).
template <class T, class A>
__device__ __forceinline__ T from_acc(A x);
template <>
__device__ __forceinline__ float from_acc<float, float>(float x) { return x; }
template <>
__device__ __forceinline__ double from_acc<double, double>(double x) { return x; }
template <>
__device__ __forceinline__ half_t from_acc<half_t, float>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ bf16_t from_acc<bf16_t, float>(float x) { return __float2bfloat16_rn(x); }

/// Reads element `idx` of a floating array of any dtype (operands whose dtype is their own: bias, ALiBi
/// slopes, feature matrices) as A.
template <class A>
__device__ __forceinline__ A load_float(const void* base, DType dt, int64_t idx) {
  switch (dt) {
    case DType::Float32: return static_cast<A>(static_cast<const float*>(base)[idx]);
    case DType::Float64: return static_cast<A>(static_cast<const double*>(base)[idx]);
    case DType::Float16: return static_cast<A>(__half2float(static_cast<const half_t*>(base)[idx]));
    case DType::BFloat16: return static_cast<A>(__bfloat162float(static_cast<const bf16_t*>(base)[idx]));
    default: return A(0);
  }
}

/// Writes x to element `idx` of a floating array of any dtype.
template <class A>
__device__ __forceinline__ void store_float(void* base, DType dt, int64_t idx, A x) {
  switch (dt) {
    case DType::Float32: static_cast<float*>(base)[idx] = static_cast<float>(x); break;
    case DType::Float64: static_cast<double*>(base)[idx] = static_cast<double>(x); break;
    case DType::Float16: static_cast<half_t*>(base)[idx] = __float2half_rn(static_cast<float>(x)); break;
    case DType::BFloat16: static_cast<bf16_t*>(base)[idx] = __float2bfloat16_rn(static_cast<float>(x)); break;
    default: break;
  }
}

__device__ __forceinline__ int64_t load_int(const void* base, DType dt, int64_t idx) {
  return dt == DType::Int32 ? static_cast<const int32_t*>(base)[idx] : static_cast<const int64_t*>(base)[idx];
}

/// Calls f(T{}) with the storage type of floating dtype `dt`.
template <class F>
void dispatch_float(DType dt, F&& f) {
  switch (dt) {
    case DType::Float32: f(float{}); break;
    case DType::Float64: f(double{}); break;
    case DType::Float16: f(half_t{}); break;
    case DType::BFloat16: f(bf16_t{}); break;
    default: throw Error(ErrorKind::Type, "CUDA backend: not a floating dtype");
  }
}

/// Grid size for a 1-D launch of n items, `per_block` per block (at least 1 block).
inline unsigned blocks_for(int64_t n, int per_block) {
  const int64_t b = (n + per_block - 1) / per_block;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 0x7fffffff ? 0x7fffffff : b));
}

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
