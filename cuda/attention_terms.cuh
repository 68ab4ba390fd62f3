#pragma once
// The score of one (query row, key) pair in every exact-attention kernel of the CUDA backend: scale, soft
// cap, mask / bias, ALiBi, in the order of the CPU kernel (math/masks.h gives the terms' meaning). The key
// ranges (causal, window, key_lengths, explicit ranges) are applied by the kernels, which know them per row.

#include <cstdint>

#include "attnkit/math/masks.h"
#include "attnkit/math/softmax.h"
#include "cpp/src/validate/attention.h"
#include "cuda/common.cuh"

namespace attnkit {
namespace detail {
namespace cuda {

/// Query rows per block of the tensor-core kernel (attention_mma.cuh).
constexpr int kMmaRows = 64;

template <class A>
struct ScoreTerms {
  A scale, cap_in, cap_out;
  bool softcap, bias_tile;
  int64_t pos_off;  // key position of query row i is i + pos_off (bottom-right alignment)

  __device__ __forceinline__ explicit ScoreTerms(const AttnProblem& p)
      : scale(static_cast<A>(p.scale)),
        cap_in(p.softcap > 0 ? static_cast<A>(1.0 / p.softcap) : A(0)),
        cap_out(static_cast<A>(p.softcap)),
        softcap(p.softcap > 0),
        bias_tile(p.mask.present || p.bias.present),
        pos_off(p.Sk - p.Sq) {}

  /// Score of (batch b, query head h, row i, key j) from the raw dot product q.k; slope is the row's ALiBi
  /// slope (0 without ALiBi). -inf where the mask forbids or the bias is -inf, even when the rest is NaN.
  __device__ __forceinline__ A operator()(const AttnProblem& p, int64_t b, int64_t h, int64_t i, int64_t j, A dot,
                                          A slope) const {
    const A ninf = math::neg_inf<A>();
    A x = dot * scale;
    if (softcap) x = tanh(x * cap_in) * cap_out;
    A bb = A(0);
    if (bias_tile) {
      if (p.mask.present &&
          !static_cast<const uint8_t*>(p.mask.data)[b * p.mask.stride[0] + h * p.mask.stride[1] +
                                                    i * p.mask.stride[2] + j * p.mask.stride[3]])
        bb = ninf;
      else if (p.bias.present)
        bb = load_float<A>(p.bias.data, p.bias.dtype,
                           b * p.bias.stride[0] + h * p.bias.stride[1] + i * p.bias.stride[2] + j * p.bias.stride[3]);
      x += bb;
    }
    if (p.alibi.present) x -= slope * static_cast<A>(math::alibi_distance<int64_t>(i + pos_off, j));
    return bb == ninf ? ninf : x;
  }
};

template <class A>
__device__ __forceinline__ A alibi_slope(const AttnProblem& p, int64_t b, int64_t h) {
  return p.alibi.present ? load_float<A>(p.alibi.data, p.alibi.dtype, b * p.alibi.stride[0] + h * p.alibi.stride[1])
                         : A(0);
}

template <class A>
struct Exp2Fn {
  __device__ A operator()(A x) const { return exp2(x); }
};

/// exp(x) as every kernel evaluates it (math/softmax.h).
template <class A>
__device__ __forceinline__ A kexp(A x) {
  return math::exp_via_exp2<A, A>(x, Exp2Fn<A>());
}

/// Key range [lo, hi) of query row i (head h, batch b): the explicit per-row ranges when the problem has
/// them, else causal / window / key_lengths.
__device__ __forceinline__ math::KeyRange row_keys(const AttnProblem& p, int64_t b, int64_t h, int64_t i,
                                                   int64_t kv_len) {
  if (p.row_lo) {
    const int64_t o = (b * p.Hq + h) * p.Sq + i;
    return {p.row_lo[o], p.row_hi[o] > p.row_lo[o] ? p.row_hi[o] : p.row_lo[o]};
  }
  return math::key_range(i, p.Sq, p.Sk, p.causal, p.window_left, p.window_right, kv_len);
}

__device__ __forceinline__ int64_t valid_keys(const AttnProblem& p, int64_t b) {
  return p.key_lengths.present ? load_int(p.key_lengths.data, p.key_lengths.dtype, b * p.key_lengths.stride[0])
                               : p.Sk;
}

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
