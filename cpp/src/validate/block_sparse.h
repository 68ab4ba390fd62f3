#pragma once
// Validators of block-sparse and LSH attention. Both reuse validate_attention for q / k / v / out / lse /
// scale / causal / key_lengths and add their own arguments.

#include "attnkit/block_sparse.h"
#include "validate/attention.h"

namespace attnkit {
namespace detail {

/// read_out: as validate_attention's (the backward reads p.out and p.lse).
AttnProblem validate_block_sparse(const BlockSparseParams& p, OutputSpecs* infer = nullptr, bool read_out = false);

/// A validated lsh_attention problem: `base` is the attention problem on the original (unsorted) rows.
struct LshProblem {
  AttnProblem base;
  int64_t num_buckets = 2, num_hashes = 1;
  uint64_t seed = 0;
};
LshProblem validate_lsh_attention(const LshAttentionParams& p, OutputSpecs* infer = nullptr);

/// The exact-attention problem of one LSH round, on every backend: the bucket-sorted rows in contiguous
/// [B, H, S, *] buffers of dtype `dt` (q, k, v), their output and LSE buffers, and each sorted query row's
/// key range [lo, hi) (which replaces causal and key_lengths).
AttnProblem lsh_round_problem(const AttnProblem& p, DType dt, const void* q, const void* k, const void* v, void* out,
                              void* lse, const int32_t* lo, const int32_t* hi);

/// A validated lsh_buckets problem.
struct LshBucketsProblem {
  Device device = Device::CPU;
  int32_t device_index = 0;
  void* stream = nullptr;
  ViewN<4> x;                ///< [B, H, S, D]
  int64_t B = 0, H = 0, S = 0, D = 0;
  int32_t* out = nullptr;    ///< [B, H, R, S]
  int64_t out_stride[4] = {};
  int64_t num_buckets = 2, num_hashes = 1;
  uint64_t seed = 0;
};
LshBucketsProblem validate_lsh_buckets(const LshBucketsParams& p, OutputSpecs* infer = nullptr);

}  // namespace detail
}  // namespace attnkit
