#pragma once
// Kernelized linear attention, Performer (FAVOR+) random-feature attention and Linformer low-rank
// attention. Semantics: the README's semantics table and shared/specs/api.md; attnkit.reference implements
// them literally in float64 NumPy.
//
// Linear attention and Performer are one mechanism: a feature map phi in front of one linear-attention
// core (attnkit/math/feature_maps.h holds the maps). Linformer is a projection of keys and values along
// the sequence followed by exact attention (attention.h).

#include <cstdint>
#include <optional>

#include "attnkit/runtime.h"
#include "attnkit/types.h"

namespace attnkit {

/// Feature maps phi of linear_attention(), applied to each row of q and k (F = D features).
enum class FeatureMap : int32_t {
  Elu1 = 0,      ///< elu(x) + 1 (Katharopoulos et al. 2020): x + 1 for x > 0, e^x otherwise
  Relu = 1,      ///< max(x, 0)
  Identity = 2,  ///< x (only unnormalized use makes sense with it)
};

/// Arguments of linear_attention(). Shapes use B = batch, Hq / Hkv = query / key-value heads, S = query
/// length, Sk = key length, D = head dim of q and k, Dv = head dim of v, F = number of features (= D).
/// q, k, v and out share one rank: 4 ([B, H, S, D]), 3 ([H, S, D], B = 1) or 2 ([S, D], B = H = 1); the
/// state tensors drop the same leading dims (rank 3: [Hkv, F, Dv] and [Hkv, F]; rank 2: [F, Dv] and [F]).
///
/// With S_0, z_0 the initial state (zero when absent), causal attention uses
/// S_t = S_0 + sum_{j <= t} phi(k_j) v_j^T and z_t = z_0 + sum_{j <= t} phi(k_j); bidirectional attention
/// uses the sums over all keys. Keys j >= key_lengths[b] are left out of every sum and of the final state
/// (a causal query at t >= key_lengths[b] sees the state after the last allowed key).
/// Output: y_t = phi(q_t)^T S_t / (phi(q_t)^T z_t + eps) when normalize (0 where that denominator is
/// exactly 0), else phi(q_t)^T S_t.
struct LinearAttentionParams {
  TensorRef q;    ///< [B, Hq, S, D], float32/float64/float16/bfloat16
  TensorRef k;    ///< [B, Hkv, Sk, D], q's dtype; Hq % Hkv == 0 (query head h reads kv head h / (Hq/Hkv)); causal needs Sk == S
  TensorRef v;    ///< [B, Hkv, Sk, Dv], q's dtype
  TensorRef out;  ///< output [B, Hq, S, Dv] in q's dtype
  /// The feature map phi.
  FeatureMap feature_map = FeatureMap::Elu1;
  /// Causal (prefix sums, query t sees keys j <= t) or bidirectional (every key).
  bool causal = true;
  /// Divide by phi(q)^T z + eps (normalized attention) or not.
  bool normalize = true;
  /// Added to the denominator when normalize; finite and >= 0.
  double eps = 1e-6;
  /// Optional [B] (or 0-d when B == 1) Int32/Int64 valid key counts in [0, Sk] (right padding).
  TensorRef key_lengths;
  /// Optional initial state S_0 [B, Hkv, F, Dv], float32 (float64 for float64 inputs); given together with
  /// initial_normalizer. Any strides.
  TensorRef initial_state;
  /// Optional initial normalizer z_0 [B, Hkv, F], dtype of initial_state.
  TensorRef initial_normalizer;
  /// Optional output: the state S after the last allowed key (initial state included), shaped and typed
  /// like initial_state; given together with final_normalizer. A later call with it as initial_state
  /// continues the sequence exactly (causal streaming and token-by-token decoding).
  TensorRef final_state;
  /// Optional output: the normalizer z after the last allowed key, [B, Hkv, F].
  TensorRef final_normalizer;
  /// CUDA stream (a cudaStream_t) for device tensors; ignored on the CPU.
  void* stream = nullptr;
};

/// Kernelized linear attention: writes p.out (and the final state when asked). Throws attnkit::Error on
/// bad arguments.
ATTNKIT_API void linear_attention(const LinearAttentionParams& p);
/// Validates p like the call does (outputs ignored) and says whether this build can run it (runtime.h).
ATTNKIT_API Support supported(const LinearAttentionParams& p);
/// "out", "final_state", "final_normalizer" (see attention_outputs in attention.h).
ATTNKIT_API OutputSpecs linear_attention_outputs(const LinearAttentionParams& p);

/// How random_features() scales its rows.
enum class FeatureScaling : int32_t {
  Chi = 0,    ///< norms drawn from the chi(D) distribution (the norms of Gaussian vectors): unbiased
  SqrtD = 1,  ///< every row has norm sqrt(D)
};

/// Arguments of random_features(): W [m, D] for Performer.
///
/// W is a pure function of (seed, num_features, head_dim, orthogonal, scaling): the same on every
/// backend, platform and thread count. It is built in double precision and rounded to out's dtype.
/// Construction, block b = 0, 1, ... of D rows (the last block truncated when m % D != 0), all numbers
/// from Philox stream kStreamRandomFeatures + b (math/random.h, normal(seed, stream, index)):
///   - G_b [D, D], G_b[i][j] = normal index i * D + j;
///   - orthogonal: the rows of the block are the Gram-Schmidt orthonormalization of G_b's rows, i.e.
///     Q^T from the QR factorization G_b^T = Q R with the sign correction diag(R) > 0 (Householder in
///     double; Mezzadri 2007, so the directions are Haar-distributed); chi scaling multiplies row r by
///     the norm of the Gaussian vector (normal index D*D + r*D + d, d = 0..D-1), drawn independently of
///     the direction; sqrt_d by sqrt(D);
///   - not orthogonal: row r of the block is G_b's row r, i.i.d. N(0, I_D); chi scaling keeps it as it is
///     (its norm is chi(D)-distributed), sqrt_d rescales it to norm sqrt(D).
/// Consequences: W for m rows is the first m rows of W for any larger m (same seed and options).
struct RandomFeaturesParams {
  int64_t num_features = 0;  ///< m >= 1
  int64_t head_dim = 0;      ///< D >= 1
  uint64_t seed = 0;         ///< Philox key
  bool orthogonal = true;    ///< orthogonal blocks (true) or i.i.d. Gaussian rows
  FeatureScaling scaling = FeatureScaling::Chi;  ///< row norms
  TensorRef out;             ///< output [m, D] of `dtype`, CPU memory
  DType dtype = DType::Float32;  ///< element type of out (floating; W is built in double and rounded once)
};

/// Random features for Performer: writes p.out.
ATTNKIT_API void random_features(const RandomFeaturesParams& p);
ATTNKIT_API OutputSpecs random_features_outputs(const RandomFeaturesParams& p);  ///< "out"

/// Performer kernels.
enum class PerformerKernel : int32_t {
  Softmax = 0,  ///< positive random features of exp(q'.k'): phi(x) = m^-1/2 exp(W x' - |x'|^2/2 - c)
  Relu = 1,     ///< generalized ReLU kernel: phi(x) = relu(W x') + 1e-3
};

/// Arguments of performer_attention(): normalized linear attention with Performer features, x' =
/// sqrt(scale) x. The softmax kernel's stabilizer c (math/feature_maps.h) is per row for queries and a
/// running maximum over the allowed keys for keys, so no future key influences a past output; with
/// eps = 0 the result does not depend on it.
struct PerformerParams {
  TensorRef q;         ///< [B, Hq, S, D], float32/float64/float16/bfloat16
  TensorRef k;         ///< [B, Hkv, Sk, D], q's dtype; causal needs Sk == S
  TensorRef v;         ///< [B, Hkv, Sk, Dv], q's dtype
  TensorRef features;  ///< W [m, D], any floating dtype (used in float32, float64 for float64 inputs)
  TensorRef out;       ///< output [B, Hq, S, Dv] in q's dtype
  /// The kernel approximated.
  PerformerKernel kernel = PerformerKernel::Softmax;
  /// Causal (prefix sums) or bidirectional.
  bool causal = false;
  /// x' = sqrt(scale) x; absent means 1/sqrt(D). Finite and >= 0.
  std::optional<double> scale;
  /// Added to the denominator; finite and >= 0.
  double eps = 1e-6;
  /// Optional [B] (or 0-d) Int32/Int64 valid key counts in [0, Sk].
  TensorRef key_lengths;
  /// CUDA stream for device tensors.
  void* stream = nullptr;
};

/// Performer (FAVOR+) attention: writes p.out.
ATTNKIT_API void performer_attention(const PerformerParams& p);
/// Validates p like the call does (outputs ignored) and says whether this build can run it (runtime.h).
ATTNKIT_API Support supported(const PerformerParams& p);
ATTNKIT_API OutputSpecs performer_attention_outputs(const PerformerParams& p);  ///< "out"

/// Arguments of linformer_projection(): E [P, Sk] (shared) or [H, P, Sk] (per head) with N(0, 1/P)
/// entries. Entry (h, p, j) is normal(seed, kStreamLinformer + h, j * P + p) / sqrt(P) (math/random.h;
/// h = 0 for a shared projection), so the projection for a shorter sequence is a column prefix of the
/// projection for a longer one, and a shared projection equals head 0 of a per-head one.
struct LinformerProjectionParams {
  int64_t proj_len = 0;   ///< P >= 1
  int64_t seq_len = 0;    ///< Sk >= 0
  int64_t num_heads = 0;  ///< 0: shared [P, Sk]; H >= 1: [H, P, Sk]
  uint64_t seed = 0;      ///< Philox key
  TensorRef out;          ///< output [P, Sk] or [H, P, Sk] of `dtype`, CPU memory
  DType dtype = DType::Float32;  ///< element type of out (floating)
};

/// Random Linformer projection: writes p.out.
ATTNKIT_API void linformer_projection(const LinformerProjectionParams& p);
ATTNKIT_API OutputSpecs linformer_projection_outputs(const LinformerProjectionParams& p);  ///< "out"

/// Arguments of linformer_attention(): K' = E k and V' = F v per (batch, kv head), then exact attention
/// attention(q, K', V') over the P projected keys. Keys j >= key_lengths[b] count as zero rows.
/// For float16/bfloat16 inputs the projections are accumulated in float32 and rounded to the input dtype
/// before the exact kernel (which reads q, K', V' in one dtype).
struct LinformerParams {
  TensorRef q;    ///< [B, Hq, S, D], float32/float64/float16/bfloat16
  TensorRef k;    ///< [B, Hkv, Sk, D], q's dtype
  TensorRef v;    ///< [B, Hkv, Sk, Dv], q's dtype
  TensorRef E;    ///< key projection [P, Sk] (shared) or [Hkv, P, Sk] (per kv head), any floating dtype
  TensorRef F;    ///< optional value projection, as E (absent: F = E)
  TensorRef out;  ///< output [B, Hq, S, Dv] in q's dtype
  TensorRef lse;  ///< optional output [B, Hq, S]: log-sum-exp over the P projected keys, float32 (float64 for float64)
  /// Score scale; absent means 1/sqrt(D). Finite.
  std::optional<double> scale;
  /// Optional [B] (or 0-d) Int32/Int64 valid key counts in [0, Sk]: keys j >= L[b] count as zero rows.
  TensorRef key_lengths;
  /// Must stay false: causal masking is not defined for Linformer (each projected key mixes every
  /// position), so true is a ValueError.
  bool causal = false;
  /// CUDA stream for device tensors.
  void* stream = nullptr;
};

/// Linformer attention: writes p.out (and p.lse).
ATTNKIT_API void linformer_attention(const LinformerParams& p);
/// Validates p like the call does (outputs ignored) and says whether this build can run it (runtime.h).
ATTNKIT_API Support supported(const LinformerParams& p);
ATTNKIT_API OutputSpecs linformer_attention_outputs(const LinformerParams& p);  ///< "out", "lse"

}  // namespace attnkit
