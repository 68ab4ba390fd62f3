#pragma once
// Exact (softmax) attention: the flash-style kernel, attention maps, and the merge of partial results.
// Semantics: see the README's semantics table and shared/specs/api.md; attnkit.reference implements them
// literally in float64 NumPy.

#include <optional>
#include <vector>

#include "attnkit/runtime.h"
#include "attnkit/types.h"

namespace attnkit {

/// Arguments of attention() and attention_weights(). Shapes use B = batch, Hq / Hkv = query / key-value
/// heads, Sq / Sk = query / key lengths, D = head dim of q and k, Dv = head dim of v. q, k, v (and out) must
/// share one rank: 4 ([B, H, S, D]), 3 ([H, S, D], B = 1) or 2 ([S, D], B = H = 1).
struct AttentionParams {
  TensorRef q;    ///< [B, Hq, Sq, D], float32/float64/float16/bfloat16
  TensorRef k;    ///< [B, Hkv, Sk, D], same dtype as q; Hq % Hkv == 0, query head h reads kv head h / (Hq/Hkv)
  TensorRef v;    ///< [B, Hkv, Sk, Dv], same dtype as q (unused by attention_weights)
  TensorRef out;  ///< output [B, Hq, Sq, Dv] in q's dtype (attention_weights: [B, Hq, Sq, Sk])
  TensorRef lse;  ///< optional output [B, Hq, Sq]: float32 (float64 for float64 inputs); -inf on empty rows

  /// Score scale; absent means 1/sqrt(D). Any finite value the accumulation type holds (0 gives uniform
  /// weights): with float32 accumulation (float32, float16, bfloat16 inputs) |scale| <= 3.4e38, and 0 or
  /// |scale| > 2^-150, which float32 would hold as 0; else attnkit::Error (a value error).
  std::optional<double> scale;
  /// Logit soft-capping s -> c * tanh(s / c), applied after scaling and before bias; 0 = off, else c > 0.
  double softcap = 0.0;
  /// Causal masking, aligned bottom-right: query i sees key j <= i + (Sk - Sq).
  bool causal = false;
  /// Local window, bottom-right aligned: query i sees keys i + a - window_left <= j <= i + a + window_right
  /// with a = Sk - Sq; a negative side is unbounded.
  int64_t window_left = -1;
  int64_t window_right = -1;  ///< see window_left
  /// Optional bool mask (true = attend), any rank <= 4, broadcastable (NumPy rules, right-aligned) to
  /// [B, Hq, Sq, Sk]; dims of size 1 broadcast.
  TensorRef mask;
  /// Optional additive float bias (any floating dtype), broadcastable to [B, Hq, Sq, Sk] like mask.
  TensorRef bias;
  /// Optional [B] (or 0-d when B == 1) Int32/Int64 valid key counts (right padding): keys j >= L[b] are
  /// masked. Values must lie in [0, Sk].
  TensorRef key_lengths;
  /// Optional ALiBi slopes, floating [Hq] or [B, Hq]: s_ij -= slope * |i + a - j|.
  TensorRef alibi_slopes;
  /// CUDA stream (a cudaStream_t) for device tensors; ignored on the CPU.
  void* stream = nullptr;
};

/// Exact attention: writes p.out (and p.lse when given). Rows with no allowed key get out = 0, lse = -inf.
/// Throws attnkit::Error on bad arguments.
ATTNKIT_API void attention(const AttentionParams& p);
/// Validates p like the call does (outputs ignored) and says whether this build can run it (runtime.h).
ATTNKIT_API Support supported(const AttentionParams& p);

/// Output queries: <function>_outputs(p) validates p's inputs exactly as <function>(p) does (ignoring the
/// output fields) and returns the outputs it would write, optional ones included, with their shapes and
/// dtypes, so a caller allocates them without restating the shape rules.
ATTNKIT_API OutputSpecs attention_outputs(const AttentionParams& p);                 ///< "out", "lse"
ATTNKIT_API OutputSpecs attention_weights_outputs(const AttentionParams& p);         ///< "weights"

/// Attention probabilities: writes weights [B, Hq, Sq, Sk] (q's dtype) = softmax of the masked scores, with
/// exact zeros where a key is not allowed and on rows with no allowed key. Reads q, k and the masking
/// fields of p; p.v, p.out and p.lse are ignored. O(Sq * Sk) memory by nature: meant for inspection.
ATTNKIT_API void attention_weights(const AttentionParams& p, const TensorRef& weights);

/// Arguments of merge_attention().
struct MergeParams {
  /// Partial outputs, each [..., S, Dv] of one floating dtype and one shape (any rank >= 1).
  std::vector<TensorRef> outs;
  /// Their log-sum-exps, each shaped like outs[i] without the last dim; float32 (float64 for float64 outs).
  std::vector<TensorRef> lses;
  TensorRef out;  ///< merged output, shaped and typed like outs[0]
  TensorRef lse;  ///< merged log-sum-exp, shaped and typed like lses[0] (optional)
  void* stream = nullptr;  ///< CUDA stream for device tensors
};

/// Combines attention results over disjoint key sets: lse = logaddexp over parts,
/// out = sum_p exp(lse_p - lse) * out_p. Parts with lse_p = -inf add nothing; if every part is -inf the
/// result is out = 0, lse = -inf.
ATTNKIT_API void merge_attention(const MergeParams& p);
/// Validates p like the call does (outputs ignored) and says whether this build can run it (runtime.h).
ATTNKIT_API Support supported(const MergeParams& p);
ATTNKIT_API OutputSpecs merge_attention_outputs(const MergeParams& p);  ///< "out", "lse" (see attention_outputs)

}  // namespace attnkit
