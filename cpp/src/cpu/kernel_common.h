#pragma once
// Helpers shared by the CPU kernels (compiled per ISA like everything that includes cpu/simd.h): index
// arithmetic, reading and writing elements of any floating / integer dtype, and per-thread scratch memory.

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "attnkit/math/dtypes.h"
#include "attnkit/types.h"

namespace attnkit {
namespace detail {
namespace cpu {
inline namespace ATTNKIT_ISA_NAMESPACE {

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

/// Reads element `idx` of a floating array of any dtype as T.
template <class T>
inline T load_float(const void* base, DType dt, int64_t idx) {
  switch (dt) {
    case DType::Float32: return static_cast<T>(static_cast<const float*>(base)[idx]);
    case DType::Float64: return static_cast<T>(static_cast<const double*>(base)[idx]);
    case DType::Float16: return static_cast<T>(math::f16_to_float(static_cast<const uint16_t*>(base)[idx]));
    case DType::BFloat16: return static_cast<T>(math::bf16_to_float(static_cast<const uint16_t*>(base)[idx]));
    default: return T(0);
  }
}

/// Writes x to element `idx` of a floating array of any dtype (one rounding; 16-bit types via float).
template <class T>
inline void store_float(void* base, DType dt, int64_t idx, T x) {
  switch (dt) {
    case DType::Float32: static_cast<float*>(base)[idx] = static_cast<float>(x); break;
    case DType::Float64: static_cast<double*>(base)[idx] = static_cast<double>(x); break;
    case DType::Float16: static_cast<uint16_t*>(base)[idx] = math::float_to_f16(static_cast<float>(x)); break;
    case DType::BFloat16: static_cast<uint16_t*>(base)[idx] = math::float_to_bf16(static_cast<float>(x)); break;
    default: break;
  }
}

inline int64_t load_int(const void* base, DType dt, int64_t idx) {
  return dt == DType::Int32 ? static_cast<const int32_t*>(base)[idx] : static_cast<const int64_t*>(base)[idx];
}

/// Hands out consecutive 64-byte aligned pieces of one scratch block: how a kernel carves its per-thread
/// Work out of the bytes its work_bytes() reserved (each piece rounded up the same way there).
class Carver {
 public:
  explicit Carver(void* base) : ptr_(static_cast<char*>(base)) {}
  /// The next n elements of U.
  template <class U>
  U* take(std::size_t n) {
    U* r = reinterpret_cast<U*>(ptr_);
    ptr_ += (n * sizeof(U) + 63) / 64 * 64;
    return r;
  }

 private:
  char* ptr_;
};

/// 64-byte aligned scratch owned by one thread for one call; zero-filled unless the kernel writes every
/// byte before reading it (zero = false).
struct Scratch {
  void* ptr = nullptr;
  explicit Scratch(std::size_t bytes, bool zero = true) {
    bytes = (bytes + 63) / 64 * 64;
    ptr = std::aligned_alloc(64, bytes ? bytes : 64);
    if (ptr && zero) std::memset(ptr, 0, bytes);
  }
  ~Scratch() { std::free(ptr); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

}  // namespace ATTNKIT_ISA_NAMESPACE
}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
