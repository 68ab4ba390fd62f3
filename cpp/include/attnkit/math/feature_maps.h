#pragma once
// Feature maps of kernelized linear attention and of Performer (FAVOR+), shared by every backend.
//
// Linear attention replaces exp(q.k) by phi(q).phi(k) for a feature map phi, so that
// sum_j phi(q).phi(k_j) v_j = phi(q)^T (sum_j phi(k_j) v_j^T) costs O(F * Dv) per token instead of O(S).
//
// The functions are templates over the value type, written with arithmetic, comparisons and ?: only, so
// they serve scalars (CUDA, oracles in C++ tests) and GCC/Clang SIMD vectors (the CPU kernels) alike.
// Maps that need exp take it as an argument (`exp_fn`): std::exp on the host, the backend's own vector
// exp in kernels, so the meaning lives here and the fast exp stays backend-specific.
//
// Performer softmax features (Choromanski et al., "Rethinking Attention with Performers", ICLR 2021,
// Lemma 1, positive random features): with W [m, D] rows w_f and x' = sqrt(scale) x,
//   phi(x)_f = m^-1/2 exp(w_f . x' - |x'|^2 / 2 - c),
// so that E_w[phi(x) . phi(y)] = exp(x' . y') exp(-c_x - c_y). The stabilizer c only keeps exp in range:
// it multiplies the numerator and the denominator of normalized attention by the same factor, so it
// cancels exactly when eps = 0. attnkit's choice of c:
//   - queries: per row, c = max_f (w_f . x') - |x'|^2 / 2, i.e. phi(q)_f = m^-1/2 exp(w_f . q' - max_g w_g . q')
//     (the |q'|^2 / 2 term cancels inside the row, so it is never computed);
//   - keys: the running maximum over the keys seen so far (allowed keys only) of max_f (w_f . k' - |k'|^2/2).
//     A query at position t uses the value reached at key min(t, last allowed key) in causal attention
//     (no future key can influence a past output), and the maximum over all allowed keys in
//     bidirectional attention (one constant per sequence). When the running maximum grows, state that
//     was accumulated against the old value is rescaled by exp(c_old - c_new), as in online softmax.

#include <cmath>
#include <limits>

#include "attnkit/math/config.h"
#include "attnkit/math/softmax.h"

ATTNKIT_MATH_BEGIN

/// elu(x) + 1 (Katharopoulos et al., "Transformers are RNNs", 2020): x + 1 for x > 0, e^x otherwise.
/// Positive everywhere, so the normalizer phi(q) . z of normalized attention is positive. exp is taken of
/// min(x, 0), which never overflows. The selects are ordered so that NaN maps to NaN (IEEE propagation:
/// every comparison with NaN is false): exp_fn(NaN) is NaN.
template <class T, class Exp>
ATTNKIT_HD T phi_elu1(T x, Exp exp_fn) {
  const T e = exp_fn(x > T{} ? T{} : x);
  return x > T{} ? x + 1 : e;
}

/// max(x, 0), NaN for NaN. A row of zeros makes the normalizer 0; attnkit then outputs 0 (see
/// linear_output).
template <class T>
ATTNKIT_HD T phi_relu(T x) {
  return x < T{} ? T{} : x;
}

/// Shift of Performer's generalized ReLU kernel phi(x) = relu(W x') + kPerformerReluShift; it keeps the
/// normalizer positive (performer-pytorch and the paper's code use the same 1e-3).
constexpr double kPerformerReluShift = 1e-3;

/// Performer ReLU feature from the projection wx = w_f . x' (S: the scalar type of T).
template <class S, class T>
ATTNKIT_HD T performer_relu(T wx) {
  return (wx < T{} ? T{} : wx) + static_cast<S>(kPerformerReluShift);  // NaN stays NaN
}

/// Exponent of a Performer softmax KEY feature before stabilization: w_f . k' - |k'|^2 / 2, from the
/// projection wx and half_sq = |k'|^2 / 2. The feature is m^-1/2 exp(exponent - c) with c the running
/// maximum of these exponents (favor_running_max).
template <class T>
ATTNKIT_HD T favor_key_exponent(T wx, T half_sq) {
  return wx - half_sq;
}

/// Argument of exp of a Performer softmax feature: exponent - c - ln(m)/2 (the m^-1/2 factor folded into
/// the exponent; half_log_m = ln(m) / 2). Queries pass exponent = w_f . q' and c = max_g w_g . q'.
template <class T>
ATTNKIT_HD T favor_feature_arg(T exponent, T c, T half_log_m) {
  return exponent - c - half_log_m;
}

/// Key stabilizer after a key whose largest exponent is key_max: the running maximum (-inf before any key).
template <class T>
ATTNKIT_HD T favor_running_max(T c_old, T key_max) {
  return softmax_new_max(c_old, key_max);
}

/// Argument of exp of the factor that brings state accumulated against stabilizer c_old to c_new >= c_old:
/// c_old - c_new, and -inf (factor 0) while nothing was accumulated (c_old = -inf).
template <class T, class S>
ATTNKIT_HD T favor_rescale_arg(T c_old, T c_new) {
  return softmax_rescale_arg<T, S>(c_old, c_new);
}

/// Output of normalized linear attention from numerator num = phi(q)^T S and denominator
/// den = phi(q)^T z: num / (den + eps), and 0 where den + eps is exactly 0 (no allowed key, or a ReLU
/// feature row of zeros): the contract says such rows are 0, never NaN.
template <class T>
ATTNKIT_HD T linear_output(T num, T den, T eps) {
  const T d = den + eps;
  return d == T{} ? T{} : num / d;
}

ATTNKIT_MATH_END
