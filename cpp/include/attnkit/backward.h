#pragma once
// Backward passes (gradients) of exact and block-sparse attention, FlashAttention-2 style: scores are
// recomputed tile by tile from the forward's log-sum-exp, with delta_i = dout_i . out_i, so the extra
// memory is O(S), never O(Sq * Sk). Semantics: the derivative of the forward contract of attention.h /
// block_sparse.h; attnkit.reference.attention_backward implements it literally in float64 NumPy.

#include "attnkit/attention.h"
#include "attnkit/block_sparse.h"
#include "attnkit/linear.h"
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

/// Output queries of the backward passes (see attention_outputs in attention.h): "grad.dq", "grad.dk",
/// "grad.dv", and "grad.dbias" when fwd.bias is given.
ATTNKIT_API OutputSpecs attention_backward_outputs(const AttentionBackwardParams& p);
/// "grad.dq", "grad.dk", "grad.dv".
ATTNKIT_API OutputSpecs block_sparse_attention_backward_outputs(const BlockSparseBackwardParams& p);

/// Arguments of linear_attention_backward(): the forward call's params (its outputs out / final_state /
/// final_normalizer are ignored: the forward is recomputed) plus the gradients. The derivative of the
/// contract of linear.h; attnkit.reference.linear_attention_backward implements it in float64 NumPy.
/// Gradients flow through the feature map (elu+1: 1 for x > 0, e^x otherwise; relu: 1 for x > 0, else 0;
/// identity: 1) and through the normalizer (dy/dden = -y / (den + eps)); rows whose denominator is
/// exactly 0 (output 0 by contract) pass no gradient.
struct LinearAttentionBackwardParams {
  LinearAttentionParams fwd;  ///< q, k, v, feature_map, causal, normalize, eps, key_lengths, initial state
  TensorRef dout;             ///< input [B, Hq, S, Dv] (rank of q), q's dtype: dL/d(out)
  /// Optional inputs: dL/d(final_state) [B, Hkv, F, Dv] and dL/d(final_normalizer) [B, Hkv, F] (the state
  /// dtype, rank of q's state tensors), given together: the gradient arriving from a later call that
  /// continued from this call's final state.
  TensorRef dfinal_state;
  TensorRef dfinal_normalizer;
  TensorRef dq;  ///< output shaped like q, q's dtype
  TensorRef dk;  ///< output shaped like k, q's dtype; sums the gradients of a GQA group's query heads
  TensorRef dv;  ///< output shaped like v, q's dtype; likewise
  /// Outputs, required exactly when fwd.initial_state is given: dL/d(initial_state) and
  /// dL/d(initial_normalizer), shaped and typed like them.
  TensorRef dinitial_state;
  TensorRef dinitial_normalizer;
};

/// Writes the gradients of linear_attention. Causal: two chunked scans (forward for dq, reverse for dk,
/// dv and the initial state), O(S) memory, no S x S matrix. Keys j >= key_lengths[b] get zero gradients.
/// Deterministic: the result does not depend on the number of threads. Throws attnkit::Error on bad
/// arguments.
ATTNKIT_API void linear_attention_backward(const LinearAttentionBackwardParams& p);
ATTNKIT_API Support supported(const LinearAttentionBackwardParams& p);
/// "dq", "dk", "dv", and "dinitial_state", "dinitial_normalizer" when fwd.initial_state is given.
ATTNKIT_API OutputSpecs linear_attention_backward_outputs(const LinearAttentionBackwardParams& p);

/// Arguments of performer_attention_backward(): the forward's params (fwd.out ignored) plus the gradients.
/// The features W are constants (no gradient). The softmax kernel's stabilizers (the query row maximum
/// and the keys' running maximum, linear.h) are differentiated as the functions of q and k they are: their
/// gradient is -eps / (den + eps) * (dout . out) per query row, sent to the maximizing feature / key
/// (the first one on ties), and vanishes with eps = 0, where the forward does not depend on them.
struct PerformerBackwardParams {
  PerformerParams fwd;  ///< q, k, v, features, kernel, causal, scale, eps, key_lengths of the forward call
  TensorRef dout;       ///< input [B, Hq, S, Dv], q's dtype
  TensorRef dq;         ///< output shaped like q, q's dtype
  TensorRef dk;         ///< output shaped like k, q's dtype (GQA: summed over the group)
  TensorRef dv;         ///< output shaped like v, q's dtype
};

/// Writes dq, dk, dv of Performer attention (same core and memory as linear_attention_backward).
ATTNKIT_API void performer_attention_backward(const PerformerBackwardParams& p);
ATTNKIT_API Support supported(const PerformerBackwardParams& p);
/// "dq", "dk", "dv".
ATTNKIT_API OutputSpecs performer_attention_backward_outputs(const PerformerBackwardParams& p);

}  // namespace attnkit
