#pragma once
// The scalar meaning of the attention backward pass (FlashAttention-2, Dao 2023, Algorithm 2), shared by
// every backend. With s the final scores (after softcap, bias and ALiBi), p_ij = exp(s_ij - lse_i) and
// delta_i = sum_j p_ij dp_ij = dout_i . out_i (dp_ij = dout_i . v_j):
//   dL/ds_ij = p_ij (dp_ij - delta_i)                          (softmax_grad; = dL/dbias_ij)
//   dL/dx_ij = dL/ds_ij * (1 - tanh(x_ij / c)^2)  under softcap s = c tanh(x / c) (softcap_grad)
//   dq_i = scale sum_j dL/dx_ij k_j,   dk_j = scale sum_i dL/dx_ij q_i,   dv_j = sum_i p_ij dout_i
// ALiBi and bias are additive constants: they shape p but take no part in the chain rule to q and k.
// Templates over the value type, like softmax.h: scalars and GCC/Clang SIMD vectors alike.

#include "attnkit/math/config.h"
#include "attnkit/math/softmax.h"

ATTNKIT_MATH_BEGIN

/// Argument of exp that recomputes p_ij = exp(s_ij - lse_i) from the forward's log-sum-exp (S: scalar
/// type). A row without allowed keys has lse = -inf: the argument is -inf there (p = 0), not +inf / NaN.
template <class T, class S>
ATTNKIT_HD T backward_prob_arg(T s, S lse) {
  return lse == neg_inf<S>() ? T{} + neg_inf<S>() : s - lse;
}

/// dL/ds_ij = p_ij (dp_ij - delta_i); exactly 0 where p_ij is 0 (a masked key, an empty row), even when
/// dp_ij is not finite there.
template <class T>
ATTNKIT_HD T softmax_grad(T p, T dp, T delta) {
  return p == T{} ? T{} : p * (dp - delta);
}

/// Derivative of the soft-cap x -> c tanh(x / c), from t = tanh(x / c): 1 - t^2 (S: scalar type).
template <class T, class S>
ATTNKIT_HD T softcap_grad(T t) {
  return static_cast<S>(1) - t * t;
}

ATTNKIT_MATH_END
