#pragma once
// Overflow-safe size arithmetic for validators and layout constructors: every size, window, dilation,
// block size, count and position that reaches arithmetic goes through these, so nothing wraps. The
// checked forms throw a ValueError naming the argument; the saturating ones are for bounds that only
// need to be compared.

#include <cstdint>
#include <limits>
#include <string>

#include "attnkit/types.h"

namespace attnkit {
namespace detail {

constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();

/// Largest sequence length the kernels index (they use int32 key positions in SIMD lanes).
constexpr int64_t kMaxSeqLen = std::numeric_limits<int32_t>::max() - 1;

/// Largest number of allowed blocks (and of CSR rows) a BlockLayout may have: col_idx and row_ptr of
/// this size take 0.5 and 1 GiB: 2^27 block rows are 2^31 query rows (the longest sequence) of blocks
/// of 16.
constexpr int64_t kMaxLayoutBlocks = int64_t(1) << 27;

/// ceil(a / b) for a >= 0, b >= 1, without the overflow of (a + b - 1) / b.
inline int64_t ceil_div_safe(int64_t a, int64_t b) { return a / b + (a % b != 0); }

/// a * b for non-negative a, b, saturated at kInt64Max.
inline int64_t sat_mul(int64_t a, int64_t b) {
  int64_t r;
  return __builtin_mul_overflow(a, b, &r) ? kInt64Max : r;
}

/// a + b for non-negative a, b, saturated at kInt64Max.
inline int64_t sat_add(int64_t a, int64_t b) {
  int64_t r;
  return __builtin_add_overflow(a, b, &r) ? kInt64Max : r;
}

/// a * b, or a ValueError "<what> overflows int64" (what names the arguments).
inline int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r))
    throw Error(ErrorKind::Value, std::string(what) + " = " + std::to_string(a) + " * " + std::to_string(b) +
                                      " overflows int64");
  return r;
}

/// x clamped to [lo, hi].
inline int64_t clamp_i64(int64_t x, int64_t lo, int64_t hi) { return x < lo ? lo : (x > hi ? hi : x); }

}  // namespace detail
}  // namespace attnkit
