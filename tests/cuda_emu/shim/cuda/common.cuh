#pragma once
// Host emulation shim of cuda/common.cuh: blocks run one after another, each block's threads as std::threads
// meeting at a std::barrier for __syncthreads. float/double only.
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <string>
#include <thread>
#include <vector>
#include "attnkit/types.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
struct EmuDim { unsigned x = 0, y = 0, z = 0; };
inline thread_local EmuDim threadIdx;
inline EmuDim blockIdx, blockDim{1, 1, 1}, gridDim{1, 1, 1};
inline std::barrier<>* g_bar = nullptr;
inline void __syncthreads() { g_bar->arrive_and_wait(); }
inline unsigned g_emu_threads = 5;
template <class F>
void emu_launch(unsigned grid, F&& f) {
  gridDim.x = grid; blockDim.x = g_emu_threads;
  for (unsigned b = 0; b < grid; ++b) {
    blockIdx.x = b;
    std::barrier<> bar(g_emu_threads);
    g_bar = &bar;
    std::vector<std::thread> ts;
    for (unsigned t = 0; t < g_emu_threads; ++t) ts.emplace_back([&, t] { threadIdx.x = t; f(); bar.arrive_and_drop(); });
    for (auto& t : ts) t.join();
  }
}
typedef void* cudaStream_t;
typedef int cudaError_t;
constexpr int cudaSuccess = 0;
constexpr int cudaDevAttrMultiProcessorCount = 0;
inline int cudaDeviceGetAttribute(int* v, int, int) { *v = 2; return 0; }

namespace attnkit { namespace detail { namespace cuda {
#define ATTNKIT_CUDA_CHECK(expr) do { if ((expr) != 0) throw Error(ErrorKind::Runtime, #expr); } while (0)
#define ATTNKIT_CUDA_CHECK_LAUNCH() do {} while (0)
inline cudaStream_t as_stream(void* s) { return s; }
struct DeviceGuard { explicit DeviceGuard(int) {} };
inline void require_device(int) {}
template <class T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };
template <class T> using acc_t = typename AccOf<T>::type;
template <class A> inline A to_acc(float x) { return static_cast<A>(x); }
template <class A> inline A to_acc(double x) { return static_cast<A>(x); }
template <class T, class A> inline T from_acc(A x) { return static_cast<T>(x); }
template <class A> inline A load_float(const void* base, DType dt, int64_t idx) {
  switch (dt) {
    case DType::Float32: return static_cast<A>(static_cast<const float*>(base)[idx]);
    case DType::Float64: return static_cast<A>(static_cast<const double*>(base)[idx]);
    default: std::abort();
  }
}
inline int64_t load_int(const void* base, DType dt, int64_t idx) {
  return dt == DType::Int32 ? static_cast<const int32_t*>(base)[idx] : static_cast<const int64_t*>(base)[idx];
}
template <class F> void dispatch_float(DType dt, F&& f) {
  switch (dt) { case DType::Float32: f(float{}); break; case DType::Float64: f(double{}); break; default: std::abort(); }
}
inline unsigned blocks_for(int64_t n, int per_block) {
  const int64_t b = (n + per_block - 1) / per_block;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 0x7fffffff ? 0x7fffffff : b));
}
}}}
