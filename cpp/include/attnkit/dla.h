#pragma once
// Dynamic linear attention (DLA): multi-state linear attention whose states open at semantic transitions
// and merge, least informative adjacent pair first, when a capacity-bounded cache is full.
// Semantics: shared/specs/dla.md (step numbers cited in the code) and the README's semantics table;
// attnkit.reference.dynamic_linear_attention implements them token by token in float64 NumPy.

#include <cstdint>

#include "attnkit/runtime.h"
#include "attnkit/types.h"

namespace attnkit {

/// The information score of step 3 of the spec.
enum class DLAScore : int32_t {
  /// I_t = ||N(k_t v_t^T) - N(S_open)||_F / (||N(S_open)||_F + eps): how unlike the open state the token is.
  TokenVsState = 0,
  /// I_t = ||N(S_open + k_t v_t^T) - N(S_open)||_F / (||N(S_open)||_F + eps): how far the token moves it.
  StateDrift = 1,
};

/// The five arrays of a DLA state cache (one cache per (batch, head); C = capacity). Entries are
/// chronological, oldest first; entries at index >= size are unused and hold zeros.
struct DLACacheTensors {
  /// [B, H, C, Dk, Dv] states S_i: float32 (float64 for float64 inputs), already decayed to the cache's
  /// position.
  TensorRef states;
  TensorRef counts;  ///< [B, H, C] int64: tokens n_i summarised by each state (>= 1 for a used entry)
  TensorRef info;    ///< [B, H, C] summed information scores I_i, dtype of states
  TensorRef starts;  ///< [B, H, C] int64: position of the first token of each span (start_0 = 0, contiguous)
  TensorRef size;    ///< [B, H] int64: entries in use, in [0, C]
};

/// Arguments of dynamic_linear_attention(). q, k, v and lam share one rank: 4 ([B, H, T, *]), 3 ([H, T, *],
/// B = 1) or 2 ([T, *], B = H = 1); the per-token arrays (log_decay and the aux outputs) have one dim less,
/// out has q's rank. The cache tensors always carry the B and H dims.
struct DLAParams {
  TensorRef q;    ///< [B, H, T, Dk], float32/float64/float16/bfloat16 (a feature map, if any, already applied)
  TensorRef k;    ///< [B, H, T, Dk], dtype of q
  TensorRef v;    ///< [B, H, T, Dv], dtype of q
  /// [B, H, T, C] readout weights, dtype of q, recency-indexed: lam[..., t, j] weights the j-th newest
  /// state after token t's insert (j = 0: the open state); entries j >= (states in the cache) are unused.
  TensorRef lam;
  /// Optional [B, H, T] log-decay g_t (any floating dtype), finite and <= 0: every state is multiplied by
  /// exp(g_t) at the start of token t's step (spec step 1).
  TensorRef log_decay;
  TensorRef out;  ///< output [B, H, T, Dv] in q's dtype

  int64_t capacity = 1;  ///< C >= 1: the most states a cache holds (lam's last dim)
  /// Boundary threshold: token t opens a new state when I_t >= tau. Any value but NaN; +inf never opens
  /// one (a single state), <= 0 opens one at every token.
  double tau = 0.6;
  DLAScore score = DLAScore::TokenVsState;  ///< which information score decides boundaries

  /// Cache to continue from. All five tensors absent = an empty cache at position 0.
  DLACacheTensors cache_in;
  /// Tokens seen before this call (sum of cache_in.counts; 0 without cache_in). Starts of the states opened
  /// by this call are position + t.
  int64_t position = 0;
  /// Required outputs: the cache after the last token (position + T), same layout as cache_in. Must not
  /// overlap cache_in (cache_in is never written).
  DLACacheTensors cache_out;

  TensorRef scores;      ///< optional output [B, H, T]: I_t, dtype of the states (0 for a cache's first token)
  TensorRef boundaries;  ///< optional output [B, H, T] bool: token t opened a new state
  TensorRef merged;      ///< optional output [B, H, T] int64: i when the pair (i, i+1) merged at t, else -1

  /// CUDA stream (a cudaStream_t) for device tensors; ignored on the CPU.
  void* stream = nullptr;
};

/// Dynamic linear attention over T tokens continuing from p.cache_in: writes p.out, p.cache_out and the
/// aux outputs given. Throws attnkit::Error on bad arguments. Cost O(T * C * Dk * Dv) per (batch, head);
/// a decode step (T = 1) costs O(C * Dk * Dv) whatever the position.
ATTNKIT_API void dynamic_linear_attention(const DLAParams& p);
/// Validates p like the call does (outputs ignored) and says whether this build can run it (runtime.h).
ATTNKIT_API Support supported(const DLAParams& p);
/// "out", "cache_out.states", "cache_out.counts", "cache_out.info", "cache_out.starts", "cache_out.size",
/// "scores", "boundaries", "merged" (see attention_outputs in attention.h).
ATTNKIT_API OutputSpecs dynamic_linear_attention_outputs(const DLAParams& p);

}  // namespace attnkit
