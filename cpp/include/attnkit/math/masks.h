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

/// Which keys a tile of query rows visits, part 1: the union of the rows' key ranges [lo[r], hi[r]) (empty
/// ones skipped) as sorted, disjoint ranges, written as pairs (start, end) to kr[0 .. 2 * count); returns
/// count (<= n). Insertion sort of the n ranges, then merging of overlapping or touching ones. L is the
/// integer type of the row bounds.
template <class L>
ATTNKIT_HD int union_of_ranges(const L* lo, const L* hi, int n, int64_t* kr) {
  int count = 0;
  for (int r = 0; r < n; ++r) {
    if (hi[r] <= lo[r]) continue;
    int pos = count++;
    while (pos > 0 && kr[2 * (pos - 1)] > lo[r]) {
      kr[2 * pos] = kr[2 * (pos - 1)];
      kr[2 * pos + 1] = kr[2 * (pos - 1) + 1];
      --pos;
    }
    kr[2 * pos] = lo[r];
    kr[2 * pos + 1] = hi[r];
  }
  int m = 0;
  for (int r = 0; r < count; ++r) {
    if (m > 0 && kr[2 * r] <= kr[2 * (m - 1) + 1]) {
      if (kr[2 * r + 1] > kr[2 * (m - 1) + 1]) kr[2 * (m - 1) + 1] = kr[2 * r + 1];
    } else {
      kr[2 * m] = kr[2 * r];
      kr[2 * m + 1] = kr[2 * r + 1];
      ++m;
    }
  }
  return m;
}

/// Part 2, block-sparse attention: the intersection of m sorted, disjoint key ranges kr[0 .. 2m) with the
/// allowed key blocks col_idx[beg .. end) of one CSR row (sorted; runs of consecutive blocks of bk keys
/// become one range), written as sorted pairs to out; returns their number (<= m + end - beg). Two
/// pointers over both lists. out must not overlap kr.
ATTNKIT_HD int intersect_block_runs(const int64_t* kr, int m, const int32_t* col_idx, int64_t beg, int64_t end,
                                    int64_t bk, int64_t* out) {
  int count = 0;
  int r = 0;
  for (int64_t e = beg; e < end && r < m;) {
    int64_t e2 = e + 1;
    while (e2 < end && col_idx[e2] == col_idx[e2 - 1] + 1) ++e2;
    const int64_t a = static_cast<int64_t>(col_idx[e]) * bk;
    const int64_t z = static_cast<int64_t>(col_idx[e2 - 1] + 1) * bk;
    while (r < m && kr[2 * r + 1] <= a) ++r;
    for (int r2 = r; r2 < m && kr[2 * r2] < z; ++r2) {
      out[2 * count] = a > kr[2 * r2] ? a : kr[2 * r2];
      out[2 * count + 1] = z < kr[2 * r2 + 1] ? z : kr[2 * r2 + 1];
      ++count;
    }
    e = e2;
  }
  return count;
}

/// Part 3, split decoding: clips m sorted, disjoint key ranges kr[0 .. 2m) to [lo, hi) in place (a split
/// of the keys; the splits' results are merged with merge_step of softmax.h); returns the ranges left.
ATTNKIT_HD int clip_ranges(int64_t* kr, int m, int64_t lo, int64_t hi) {
  int count = 0;
  for (int r = 0; r < m; ++r) {
    const int64_t a = kr[2 * r] > lo ? kr[2 * r] : lo;
    const int64_t z = kr[2 * r + 1] < hi ? kr[2 * r + 1] : hi;
    if (a >= z) continue;
    kr[2 * count] = a;
    kr[2 * count + 1] = z;
    ++count;
  }
  return count;
}

/// ALiBi distance of score (i, j): |(i + a) - j| with pos = i + a, in integers (exact for any length);
/// the score gets -slope * distance. I may be an integer SIMD vector.
template <class I>
ATTNKIT_HD I alibi_distance(I pos, I j) {
  const I d = pos - j;
  return d < I{} ? -d : d;
}

ATTNKIT_MATH_END
