#pragma once
// Positional encodings applied to attention operands: rotary position embedding (RoPE; Su et al. 2021,
// "RoFormer"). Semantics: the README's semantics table and shared/specs/api.md; attnkit.reference.rope
// implements them literally in float64 NumPy. The angle rule lives in attnkit/math/rope.h.

#include <cstdint>

#include "attnkit/runtime.h"
#include "attnkit/types.h"

namespace attnkit {

/// Arguments of rope(). x and out share one rank: 4 ([B, H, S, D]), 3 ([H, S, D], B = 1) or 2 ([S, D],
/// B = H = 1). With r = rotary_dim, pair p (0 <= p < r/2) at position t is rotated by the angle
/// theta = t * base^(-2p / r):
///   (a, b) -> (a cos(theta) - b sin(theta), b cos(theta) + a sin(theta))
/// where (a, b) = (x[p], x[p + r/2]) (interleaved = false: GPT-NeoX, Llama) or (x[2p], x[2p + 1])
/// (interleaved = true: GPT-J). Dims r..D-1 are copied unchanged. Angles, sines and cosines are computed
/// in double precision and the rotation in float32 (float64 for float64 inputs).
struct RopeParams {
  TensorRef x;    ///< [B, H, S, D], float32/float64/float16/bfloat16; any strides
  TensorRef out;  ///< output, x's shape and dtype; may not overlap x unless it is x itself (in place)
  /// Optional Int32/Int64 positions [S] (shared by the batch) or [B, S], each in [0, 2^31 - 1]; absent
  /// means 0, 1, ..., S-1. A decoding step passes its offset here.
  TensorRef positions;
  /// Frequency base, finite and > 0 (10000 in the paper; Llama 3 uses 500000).
  double base = 10000.0;
  /// Number of leading dims rotated: even, in [2, D]; 0 means D (which must then be even).
  int64_t rotary_dim = 0;
  /// Pair layout: false pairs (p, p + r/2), true pairs (2p, 2p + 1).
  bool interleaved = false;
  /// CUDA stream (a cudaStream_t) for device tensors; ignored on the CPU.
  void* stream = nullptr;
};

/// Rotary position embedding: writes p.out. Throws attnkit::Error on bad arguments.
ATTNKIT_API void rope(const RopeParams& p);
/// Validates p like the call does (outputs ignored) and says whether this build can run it (runtime.h).
ATTNKIT_API Support supported(const RopeParams& p);
/// "out" (see attention_outputs in attention.h).
ATTNKIT_API OutputSpecs rope_outputs(const RopeParams& p);

}  // namespace attnkit
