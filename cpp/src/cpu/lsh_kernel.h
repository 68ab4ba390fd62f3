#pragma once
// Angular LSH hashing, compiled per ISA.
//
// The bucket is argmax over [x R_r, -x R_r] (ties to the lowest bucket) as if computed in float64 — the
// oracle's precision — but the projections run in float32 (the shared micro-GEMM, twice the lanes of
// float64): a row is recomputed in float64 only when its two best float32 scores are closer than twice a
// rigorous bound on the float32 error, |s32 - s64| <= (D + 3) u |x| |R_c| with u = 2^-24 (recursive
// summation with FMA; x and R rounded to float32). Outside that margin the float32 winner is the
// float64 winner, so the result does not depend on the fast path.

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "cpu/gemm_kernel.h"
#include "cpu/isa_entry_points.h"
#include "cpu/simd.h"

namespace attnkit {
namespace detail {
namespace cpu {
inline namespace ATTNKIT_ISA_NAMESPACE {

/// argmax over [p, -p] with the lowest index on ties (a positive-side index beats a negative one), and
/// the gap between the best and the second-best of the 2 * half values. Scalar reference form, used for
/// the float64 recheck. A row with a NaN projection (a NaN in x, or inf - inf) goes to bucket 0.
inline int64_t lsh_argmax(const double* p, int64_t half, double* gap) {
  for (int64_t c = 0; c < half; ++c)
    if (std::isnan(p[c])) {
      *gap = 0;
      return 0;
    }
  double best = p[0], second = -INFINITY;
  int64_t arg = 0;
  for (int64_t c = 1; c < 2 * half; ++c) {
    const double v = c < half ? p[c] : -p[c - half];
    if (v > best) {
      second = best;
      best = v;
      arg = c;
    } else if (v > second) {
      second = v;
    }
  }
  *gap = best - second;
  return arg;
}

/// The same decision for a float32 row, vectorised: the two largest and two smallest values of p give
/// the best and second-best of [p, -p]; then the winner's first index. Returns -1 (decide in float64)
/// when the row holds NaN (float32 overflow gives inf - inf) and no value matches the winner.
template <int W>
inline int64_t lsh_argmax_fast(const float* p, int64_t half, double* gap) {
  using S = Simd<float, W>;
  using V = typename S::V;
  const int64_t hv = half / W * W;
  float a1 = -INFINITY, a2 = -INFINITY, b1 = INFINITY, b2 = INFINITY;  // top-2 and bottom-2 of p
  if (hv > 0) {
    V m1 = S::set1(-INFINITY), m2 = m1, n1 = S::set1(INFINITY), n2 = n1;
    for (int64_t c = 0; c < hv; c += W) {
      const V x = S::load(p + c);
      m2 = S::vmax(m2, S::vmin(m1, x));
      m1 = S::vmax(m1, x);
      n2 = S::vmin(n2, S::vmax(n1, x));
      n1 = S::vmin(n1, x);
    }
    for (int l = 0; l < W; ++l) {
      const float x1 = m1[l], x2 = m2[l], y1 = n1[l], y2 = n2[l];
      if (x1 > a1) a2 = a1 > x2 ? a1 : x2, a1 = x1; else if (x1 > a2) a2 = x1;
      if (y1 < b1) b2 = b1 < y2 ? b1 : y2, b1 = y1; else if (y1 < b2) b2 = y1;
    }
  }
  for (int64_t c = hv; c < half; ++c) {
    const float x = p[c];
    if (x > a1) a2 = a1, a1 = x; else if (x > a2) a2 = x;
    if (x < b1) b2 = b1, b1 = x; else if (x < b2) b2 = x;
  }
  // Candidates for the top two of [p, -p]: a1, a2, -b1, -b2 (p's extremes may coincide when half == 1).
  const double pos = a1, neg = -static_cast<double>(b1);
  const bool positive = pos >= neg;  // equal: the positive side has the lower index
  const double best = positive ? pos : neg;
  double second = positive ? std::max<double>(a2, neg) : std::max<double>(pos, -static_cast<double>(b2));
  if (half == 1) second = positive ? neg : pos;
  *gap = best - second;
  const float target = positive ? a1 : b1;
  int64_t c = 0;
  while (c < half && p[c] != target) ++c;
  if (c == half) return -1;
  return positive ? c : half + c;
}

template <class St, int W, int RL, int NV>
void lsh_hash_typed(const LshHashJob& job) {
  using Gemm = MicroGemm<float, W>;
  const int64_t half = job.num_buckets / 2, D = job.D;
  const int64_t rb = job.rows_per_block;
  const St* x = static_cast<const St*>(job.x);
  auto load = [&](int64_t idx) -> double {
    if constexpr (std::is_same<St, Half>::value) return math::f16_to_float(x[idx].bits);
    else if constexpr (std::is_same<St, BFloat>::value) return math::bf16_to_float(x[idx].bits);
    else return static_cast<double>(x[idx]);
  };
  float* X = job.scratch;                // [rb][D]
  float* P = job.scratch + rb * D;       // [rb][half]
  double* xd = job.scratch_d;            // [D]   one row in float64 (recheck)
  double* pd = job.scratch_d + D;        // [half]
  double xnorm[64];
  for (int64_t i0 = 0; i0 < job.n; i0 += rb) {
    const int64_t nr = job.n - i0 < rb ? job.n - i0 : rb;
    for (int64_t i = 0; i < nr; ++i) {
      double n2 = 0;
      const int64_t base = (i0 + i) * job.ldx;
      for (int64_t d = 0; d < D; ++d) {
        const double v = load(base + d * job.sd);
        X[i * D + d] = static_cast<float>(v);
        n2 += v * v;
      }
      xnorm[i] = std::sqrt(n2);
    }
    for (int64_t r = 0; r < job.num_hashes; ++r) {
      Gemm::template gemm<RL, NV, Store::Overwrite>(nr, half, D, X, D, 1, job.rot32 + r * D * half, half, P, half);
      const double bound = (D + 3) * 5.9604644775390625e-08 * job.rot_norm_max[r];
      for (int64_t i = 0; i < nr; ++i) {
        double gap;
        int64_t arg = lsh_argmax_fast<W>(P + i * half, half, &gap);
        // Too close to call in float32 (NaN gaps, NaN / inf rows and float32 overflow included): decide
        // in float64.
        // |x . R_c| <= |x| |R_c|: below 1e37 no float32 projection can overflow (or become inf - inf).
        if (arg < 0 || !(gap > 2 * bound * xnorm[i]) || !(xnorm[i] * job.rot_norm_max[r] < 1e37)) {
          const int64_t base = (i0 + i) * job.ldx;
          for (int64_t d = 0; d < D; ++d) xd[d] = load(base + d * job.sd);
          const double* rot = job.rot + r * D * half;
          for (int64_t c = 0; c < half; ++c) pd[c] = 0;
          for (int64_t d = 0; d < D; ++d)
            for (int64_t c = 0; c < half; ++c) pd[c] += xd[d] * rot[d * half + c];
          arg = lsh_argmax(pd, half, &gap);
        }
        job.codes[r * job.n + i0 + i] = static_cast<int32_t>(arg);
      }
    }
  }
}

template <int W, int RL, int NV>
void lsh_hash(const LshHashJob& job) {
  switch (job.dtype) {
    case DType::Float64: return lsh_hash_typed<double, W, RL, NV>(job);
    case DType::Float16: return lsh_hash_typed<Half, W, RL, NV>(job);
    case DType::BFloat16: return lsh_hash_typed<BFloat, W, RL, NV>(job);
    default: return lsh_hash_typed<float, W, RL, NV>(job);
  }
}

}  // namespace ATTNKIT_ISA_NAMESPACE
}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
