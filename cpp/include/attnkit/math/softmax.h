#pragma once
// Online softmax, shared by every attention kernel (CPU and CUDA) and by merge_attention.
//
// For a query row, kernels carry the running maximum m of the scores and the running sum l of
// exp(s - m) over the keys seen so far; a row that has seen no allowed key has m = -inf, l = 0.
// Scores stay in natural-log units: folding log2(e) into the scores would round every score (and so the
// max, and the log-sum-exp) at |s| * eps; kernels evaluate exp(s - m) as exp2((s - m) * log2(e)), where
// the difference is small and exact near the max.
// The templates below work for scalars (CUDA, finalisation) and for GCC/Clang SIMD vectors (the CPU
// kernels): they use only arithmetic, comparisons and ?:, and T{} for zero.

#include <cmath>
#include <limits>

#include "attnkit/math/config.h"

ATTNKIT_MATH_BEGIN

constexpr double kLog2e = 1.4426950408889634073599246810019;
constexpr double kLn2 = 0.6931471805599453094172321214582;

/// -infinity of the scalar type S. HUGE_VAL (a compiler builtin) rather than numeric_limits, whose
/// constexpr members device code could only call with nvcc's --expt-relaxed-constexpr.
template <class S>
ATTNKIT_HD S neg_inf() {
  return -static_cast<S>(HUGE_VAL);
}

/// The value scores are exponentiated against: the running max m, or 0 while m is -inf (nothing allowed
/// yet), so exp(s - offset) is 0 for masked scores (s = -inf) instead of exp(-inf + inf) = NaN.
template <class T, class S>
ATTNKIT_HD T softmax_offset(T m) {
  return m == neg_inf<S>() ? T{} : m;
}

/// exp(x) the way every kernel evaluates it: exp2(x * log2(e)) with the backend's exp2 (a SIMD polynomial
/// on the CPU, exp2f/exp2 on CUDA). Kernels call it with x = s - offset, which is small near the max, so
/// the product rounds little (see the file comment); T may be a scalar or a SIMD vector of S.
template <class T, class S, class Exp2>
ATTNKIT_HD T exp_via_exp2(T x, Exp2&& exp2) {
  return exp2(x * static_cast<S>(kLog2e));
}

/// New running max after a block whose max is block_max.
template <class T>
ATTNKIT_HD T softmax_new_max(T m, T block_max) {
  return block_max > m ? block_max : m;
}

/// Argument of exp that rescales the old accumulators (sum and output) when the max moves from m_old to
/// m_new: exp(m_old - offset(m_new)) is 1 when the max did not move and 0 when m_old was -inf.
template <class T, class S>
ATTNKIT_HD T softmax_rescale_arg(T m_old, T m_new) {
  return m_old - softmax_offset<T, S>(m_new);
}

// Non-finite values (IEEE propagation). The running max ignores NaN scores (comparisons with NaN are
// false), but exp(NaN - m) is NaN, so a NaN score of an allowed key makes l NaN, and l stays NaN; a +inf
// score makes m = +inf and exp(inf - inf) = NaN. A row without allowed keys, and only such a row, ends
// with l == 0 exactly (every exp(-inf - offset) is 0). So the finalisation tests l == 0 for the empty
// row and lets NaN through everywhere else: one test per row, nothing per element.

/// Log-sum-exp of a finished row: m + log(l); -inf for a row without allowed keys; NaN after a NaN.
template <class S>
ATTNKIT_HD S softmax_lse(S m, S l) {
  using std::log;
  return l == S(0) ? neg_inf<S>() : m + log(l);
}

/// Factor applied to the accumulated output of a finished row: 1/l, 0 for a row without allowed keys
/// (the contract: such rows are 0, never NaN), NaN after a NaN.
template <class S>
ATTNKIT_HD S softmax_out_scale(S m, S l) {
  (void)m;
  return l == S(0) ? S(0) : S(1) / l;
}

/// merge_attention for one row, incrementally: given the merged (max lse so far) we keep, in natural
/// log units, the running max mx over parts and sum = sum_p exp(lse_p - mx). Parts with lse = -inf add
/// nothing. Returns the weight by which the existing accumulator must be multiplied; *w_part receives the
/// weight of the new part.
template <class S>
ATTNKIT_HD S merge_step(S& mx, S& sum, S lse_part, S* w_part) {
  using std::exp;
  if (lse_part == neg_inf<S>()) {
    *w_part = S(0);
    return S(1);
  }
  if (lse_part > mx || mx == neg_inf<S>()) {
    const S r = (mx == neg_inf<S>()) ? S(0) : exp(mx - lse_part);
    sum = sum * r + S(1);
    mx = lse_part;
    *w_part = S(1);
    return r;
  }
  const S w = exp(lse_part - mx);
  sum += w;
  *w_part = w;
  return S(1);
}

/// Factor applied to the merged accumulator (sum_p exp(lse_p - mx) out_p) of merge_step's state: 1/sum,
/// or 0 when every part was empty (the contract: an empty merge is 0, whatever the parts' outputs).
template <class S>
ATTNKIT_HD S merge_scale(S mx, S sum) {
  return mx == neg_inf<S>() ? S(0) : S(1) / sum;
}

/// Final merged lse from merge_step's state; -inf when every part was empty.
template <class S>
ATTNKIT_HD S merge_lse(S mx, S sum) {
  using std::log;
  return mx == neg_inf<S>() ? mx : mx + log(sum);
}

ATTNKIT_MATH_END
