#pragma once
// Which keys a query may see, and the positional score terms: the meaning of causal, window,
// key_lengths, ALiBi and soft-capping, shared by every exact/sparse attention kernel on every backend.

#include <cstdint>

#include "attnkit/math/config.h"

ATTNKIT_MATH_BEGIN

/// Half-open range [lo, hi) of keys that query row i may attend to under causal / window / key_lengths
/// (the element mask and bias come on top). Bottom-right alignment: a = Sk - Sq, query i sits at key
/// position i + a. Window sides < 0 are unbounded. kv_len is the valid key count (Sk without padding).
/// hi <= lo means the row has no allowed key.
struct KeyRange {
  int64_t lo;
  int64_t hi;
};

ATTNKIT_HD KeyRange key_range(int64_t i, int64_t sq, int64_t sk, bool causal, int64_t window_left,
                              int64_t window_right, int64_t kv_len) {
  const int64_t pos = i + (sk - sq);
  int64_t lo = 0;
  int64_t hi = kv_len < sk ? kv_len : sk;
  if (causal && pos + 1 < hi) hi = pos + 1;
  if (window_right >= 0 && pos + window_right + 1 < hi) hi = pos + window_right + 1;
  if (window_left >= 0 && pos - window_left > lo) lo = pos - window_left;
  if (hi < lo) hi = lo;
  return {lo, hi};
}

/// ALiBi distance of score (i, j): |(i + a) - j| with pos = i + a, in integers (exact for any length);
/// the score gets -slope * distance. I may be an integer SIMD vector.
template <class I>
ATTNKIT_HD I alibi_distance(I pos, I j) {
  const I d = pos - j;
  return d < I{} ? -d : d;
}

ATTNKIT_MATH_END
