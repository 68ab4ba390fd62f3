#pragma once
// Backward passes (gradients) of exact and block-sparse attention, FlashAttention-2 style: scores are
// recomputed tile by tile from the forward's log-sum-exp, with delta_i = dout_i . out_i, so the extra
// memory is O(S), never O(Sq * Sk). Semantics: the derivative of the forward contract of attention.h /
// block_sparse.h; attnkit.reference.attention_backward implements it literally in float64 NumPy.

#include "attnkit/attention.h"
#include "attnkit/block_sparse.h"
#include "attnkit/runtime.h"
#include "attnkit/types.h"

namespace attnkit {

/// Gradient outputs shared by every attention backward pass.
struct AttentionGrads {
  TensorRef dout;   ///< input [B, Hq, Sq, Dv] (rank of q): dL/d(out), q's dtype
  TensorRef dq;     ///< output shaped like q, q's dtype
  TensorRef dk;     ///< output shaped like k, q's dtype; sums the gradients of a GQA group's query heads
  TensorRef dv;     ///< output shaped like v, q's dtype; sums over a GQA group's query heads too
  /// Optional output [B, Hq, Sq, Sk] (always 4-D), float32 (float64 for float64 inputs): dL/d(score after
  /// softcap), which is dL/dbias for a full-shaped bias; for a broadcast bias the caller sums it over the
  /// broadcast dimensions. 0 where a key is not allowed. Needs fwd.bias. O(Sq * Sk) by nature.
  TensorRef dbias;
};

/// Arguments of attention_backward(): the forward call's params, with fwd.out and fwd.lse as INPUTS (the
/// forward's results; fwd.lse is required), plus the gradients.
struct AttentionBackwardParams {
  AttentionParams fwd;  ///< q, k, v, out, lse and every masking argument of the forward call
  AttentionGrads grad;  ///< dout in, dq / dk / dv (/ dbias) out
};

/// Writes dq, dk, dv (and dbias) of exact attention. Rows with no allowed key contribute nothing (their
/// dq is 0, never NaN). Deterministic: the result does not depend on the number of threads.
/// Throws attnkit::Error on bad arguments.
ATTNKIT_API void attention_backward(const AttentionBackwardParams& p);
/// Validates p like the call does and says whether this build can run it (runtime.h).
ATTNKIT_API Support supported(const AttentionBackwardParams& p);

/// Arguments of block_sparse_attention_backward(): fwd.out and fwd.lse are inputs, as above.
struct BlockSparseBackwardParams {
  BlockSparseParams fwd;  ///< q, k, v, out, lse, layout, causal, scale, key_lengths of the forward call
  AttentionGrads grad;    ///< dout in, dq / dk / dv out (dbias must be absent: there is no bias)
};

/// Writes dq, dk, dv of block-sparse attention; the cost follows the layout's allowed blocks.
ATTNKIT_API void block_sparse_attention_backward(const BlockSparseBackwardParams& p);
/// Validates p like the call does and says whether this build can run it (runtime.h).
ATTNKIT_API Support supported(const BlockSparseBackwardParams& p);

}  // namespace attnkit
