#pragma once
// The one validator of the attention backward passes (exact and block-sparse): the forward problem is
// validated by the forward's own validator (validate_attention / validate_block_sparse), then the
// gradient arguments here.

#include "attnkit/backward.h"
#include "validate/attention.h"

namespace attnkit {
namespace detail {

/// A validated backward problem: the forward problem (out and lse are read) plus the gradients.
struct AttnBwdProblem {
  AttnProblem fwd;               ///< out and lse are inputs here; lse is always present
  ViewN<4> dout;                 ///< [B, Hq, Sq, Dv], fwd.dtype
  void* dq = nullptr;            ///< [B, Hq, Sq, D], fwd.dtype
  int64_t dq_stride[4] = {};
  void* dk = nullptr;            ///< [B, Hkv, Sk, D]
  int64_t dk_stride[4] = {};
  void* dv = nullptr;            ///< [B, Hkv, Sk, Dv]
  int64_t dv_stride[4] = {};
  void* dbias = nullptr;         ///< optional [B, Hq, Sq, Sk], accumulator dtype
  int64_t dbias_stride[4] = {};
};

/// In inference mode (`infer` given) the gradient outputs are recorded, not checked (output queries).
AttnBwdProblem validate_attention_backward(const AttentionBackwardParams& p, OutputSpecs* infer = nullptr);
AttnBwdProblem validate_block_sparse_backward(const BlockSparseBackwardParams& p, OutputSpecs* infer = nullptr);

/// dout of a backward pass: shaped like the forward's output (q's shape with head dim Dv), q's dtype, on
/// q's device; as a [B, H, S, Dv] view.
ViewN<4> dout_view(const TensorRef& dout, const TensorRef& q, int64_t Dv, DType dtype);

}  // namespace detail
}  // namespace attnkit
