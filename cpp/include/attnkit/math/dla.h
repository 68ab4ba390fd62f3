#pragma once
// The scalar semantics of dynamic linear attention (shared/specs/dla.md), shared by every backend: the
// RMS normalisation N(X), both information scores, the boundary rule and the merge-pair rule.
//
// Step 3 of the spec defines the scores on Dk x Dv matrices. With A = ||S_open||_F^2, B = |k|^2 |v|^2 =
// ||k v^T||_F^2 and p = k^T S_open v = <S_open, k v^T>_F, and n = Dk * Dv, N(X) = r(||X||^2) X with
// r(x) = 1 / sqrt(x / n + rms_eps), so
//   ||N(X)||^2            = r(||X||^2)^2 ||X||^2
//   <N(X), N(Y)>          = r(||X||^2) r(||Y||^2) <X, Y>
// and both scores follow from (A, B, p) without forming k v^T:
//   token_vs_state: ||N(s) - N(S)||^2       = r_B^2 B + r_A^2 A - 2 r_A r_B p
//   state_drift:    ||N(S + s) - N(S)||^2   = r_A'^2 A' + r_A^2 A - 2 r_A r_A' (A + p),  A' = A + 2p + B
// each divided by ||N(S)|| + eps = r_A sqrt(A) + eps. Kernels call these in double precision whatever
// their storage type: a handful of flops per token, and the difference of nearly equal terms above is
// where rounding would hurt most.

#include <cmath>
#include <cstdint>

#include "attnkit/math/config.h"

ATTNKIT_MATH_BEGIN

/// rms_eps of N(X) = X / sqrt(||X||_F^2 / (Dk * Dv) + rms_eps).
constexpr double kDlaRmsEps = 1e-6;
/// eps of the score's denominator ||N(S_open)||_F + eps.
constexpr double kDlaScoreEps = 1e-6;

/// r(x) = 1 / sqrt(x / n + rms_eps): N(X) = r(||X||^2) * X for a matrix of n elements.
template <class R>
ATTNKIT_HD R dla_rms_scale(R sq_norm, R n) {
  using std::sqrt;
  return R(1) / sqrt(sq_norm / n + R(kDlaRmsEps));
}

/// ||S + k v^T||_F^2 = A + 2p + B (clamped at 0 against rounding): the open state's squared norm after
/// the token joins it (step 4, b_t false).
template <class R>
ATTNKIT_HD R dla_joined_sq_norm(R A, R B, R p) {
  const R x = A + R(2) * p + B;
  return x > R(0) ? x : R(0);
}

/// The information score I_t of step 3 from A = ||S_open||^2 (after the decay), B = |k|^2 |v|^2 and
/// p = k^T S_open v, for matrices of n = Dk * Dv elements. state_drift selects the second score.
template <class R>
ATTNKIT_HD R dla_info_score(bool state_drift, R A, R B, R p, R n) {
  using std::sqrt;
  const R ra = dla_rms_scale(A, n);
  const R den = ra * sqrt(A) + R(kDlaScoreEps);
  R num2;
  if (state_drift) {
    const R A2 = dla_joined_sq_norm(A, B, p);
    const R rc = dla_rms_scale(A2, n);
    num2 = rc * rc * A2 + ra * ra * A - R(2) * ra * rc * (A + p);
  } else {
    const R rb = dla_rms_scale(B, n);
    num2 = rb * rb * B + ra * ra * A - R(2) * ra * rb * p;
  }
  return sqrt(num2 > R(0) ? num2 : R(0)) / den;
}

/// Whether the token opens a new state (steps 3 and 4): always into an empty cache (m == 0), never when
/// the capacity is 1 [ours], otherwise when score >= tau (+inf: never; NaN scores: never).
template <class R>
ATTNKIT_HD bool dla_opens_state(R score, double tau, int64_t capacity, int64_t m) {
  if (m == 0) return true;
  if (capacity == 1) return false;
  return static_cast<double>(score) >= tau;
}

/// Step 4, full cache: the index i of the adjacent pair (i, i+1) with the smallest (I_i + I_{i+1}) /
/// (n_i + n_{i+1}); ties go to the oldest pair (smallest i) [ours]. info and count are the m >= 2
/// entries in chronological order. The ratios are compared in double whatever the storage type.
template <class Info, class Count>
ATTNKIT_HD int64_t dla_merge_pair(const Info* info, const Count* count, int64_t m) {
  int64_t best = 0;
  double best_ratio = 0;
  for (int64_t i = 0; i + 1 < m; ++i) {
    const double ratio = (static_cast<double>(info[i]) + static_cast<double>(info[i + 1])) /
                         static_cast<double>(count[i] + count[i + 1]);
    if (i == 0 || ratio < best_ratio) {  // strict: an equal ratio keeps the older pair
      best = i;
      best_ratio = ratio;
    }
  }
  return best;
}

/// Step 5: lam_t[j] weights the j-th newest state, so chronological entry i of m reads lam_t[m - 1 - i].
ATTNKIT_HD int64_t dla_lam_index(int64_t i, int64_t m) { return m - 1 - i; }

ATTNKIT_MATH_END
