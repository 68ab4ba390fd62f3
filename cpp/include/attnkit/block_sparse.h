#pragma once
// Block-sparse attention: attention restricted to the key blocks a BlockLayout allows, at a cost that
// follows the number of allowed blocks. Equal to attention() with the element mask
// blocks[h, i / block_q, j / block_k] (plus causal and key_lengths).

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "attnkit/runtime.h"
#include "attnkit/types.h"

namespace attnkit {

/// A borrowed block layout: for each (layout head, query block) the sorted allowed key blocks (CSR).
struct BlockLayoutRef {
  TensorRef row_ptr;          ///< Int64 [num_heads * num_q_blocks + 1]; row (h, qb) spans col_idx[row_ptr[h*nQb+qb] ..]
  TensorRef col_idx;          ///< Int32 [nnz], strictly increasing within a row, each in [0, num_k_blocks)
  int64_t block_q = 0;        ///< query rows per block (>= 1)
  int64_t block_k = 0;        ///< keys per block (>= 1)
  int64_t num_heads = 1;      ///< 1 = shared by every query head, else the number of query heads
  int64_t num_q_blocks = 0;   ///< ceil(Sq / block_q) of the sequences it serves
  int64_t num_k_blocks = 0;   ///< ceil(Sk / block_k)
  /// The same CSR in device memory, for device tensors (BlockLayout::ref_on fills these): row_ptr and
  /// col_idx above stay host views, which the validator checks; kernels read only these.
  const int64_t* device_row_ptr = nullptr;
  const int32_t* device_col_idx = nullptr;
  int32_t device_index = -1;  ///< the CUDA device holding device_row_ptr / device_col_idx; -1 = none
};

/// An owning block layout and its constructors. Every constructor's rule is exact and documented; the
/// random ones (bigbird) are pure functions of their arguments and seed (Philox), identical on every
/// platform. All constructors but from_dense build square layouts (Sq = Sk = seq_len, block_q = block_k).
struct ATTNKIT_API BlockLayout {
  int64_t block_q = 1, block_k = 1, num_heads = 1, num_q_blocks = 0, num_k_blocks = 0;
  std::vector<int64_t> row_ptr{0};  ///< CSR row pointers, num_heads * num_q_blocks + 1 entries
  std::vector<int32_t> col_idx;     ///< CSR column (key block) indices

  /// From a dense bool block mask laid out [num_heads][num_q_blocks][num_k_blocks] (row-major).
  static BlockLayout from_dense(const uint8_t* blocks, int64_t num_heads, int64_t num_q_blocks,
                                int64_t num_k_blocks, int64_t block_q, int64_t block_k);
  /// Local band: query block i sees key blocks j with |i - j| <= window_blocks (causal: 0 <= i - j <=
  /// window_blocks).
  static BlockLayout sliding_window(int64_t seq_len, int64_t block_size, int64_t window_blocks, bool causal,
                                    int64_t num_heads = 1);
  /// Longformer: the dilated band j = i + dilation * t, |t| <= window_blocks (causal: t <= 0), plus global
  /// blocks (the blocks holding global_tokens) that see and are seen by every block (causal: j <= i).
  static BlockLayout longformer(int64_t seq_len, int64_t block_size, int64_t window_blocks,
                                const std::vector<int64_t>& global_tokens, int64_t dilation, bool causal,
                                int64_t num_heads = 1);
  /// BigBird: band |i - j| <= window_blocks, the first global_blocks blocks global (rows and columns), and
  /// for every other query block random_blocks distinct key blocks drawn uniformly from those not yet
  /// allowed (causal: only j <= i; fewer when fewer remain). Head h of a num_heads > 1 layout draws from its
  /// own Philox stream (kStreamBigBird + h), so heads differ; draws are indexed by (block row, draw).
  static BlockLayout bigbird(int64_t seq_len, int64_t block_size, int64_t window_blocks, int64_t global_blocks,
                             int64_t random_blocks, uint64_t seed, bool causal, int64_t num_heads = 1);
  /// Sparse Transformer "fixed": blocks are grouped into segments of local_blocks; block (i, j) is allowed
  /// when i and j share a segment or j is one of the last global_blocks blocks of its segment (causal: and
  /// j <= i).
  static BlockLayout fixed(int64_t seq_len, int64_t block_size, int64_t local_blocks, int64_t global_blocks,
                           bool causal, int64_t num_heads = 1);
  /// Union of layouts of one block size and block counts; layouts with one head broadcast to the others.
  static BlockLayout unite(const std::vector<const BlockLayout*>& layouts);

  /// Dense bool mask [num_heads][num_q_blocks][num_k_blocks].
  std::vector<uint8_t> to_dense() const;
  /// Allowed blocks / all blocks.
  double density() const;
  /// A borrowed view, valid while this layout lives and is not modified.
  BlockLayoutRef ref() const;
  /// ref() plus the CSR in the memory of CUDA device `device_index`, copied there on the first request (on
  /// `stream`, a cudaStream_t) and cached per device for the layout's lifetime (a modified layout is copied
  /// again). Throws Error(NotBuilt) in builds without CUDA.
  BlockLayoutRef ref_on(int32_t device_index, void* stream) const;

  /// Device copies made by ref_on (created on the first request; shared by later copies of this layout).
  mutable std::shared_ptr<struct BlockLayoutDeviceCache> device_cache;
};

/// Checks a layout's structure (sizes, sorted in-range indices); throws Error(Value) naming the problem.
ATTNKIT_API void validate_layout(const BlockLayoutRef& layout);

/// Arguments of block_sparse_attention(): as AttentionParams, restricted to what the layout form needs.
struct BlockSparseParams {
  TensorRef q;            ///< [B, Hq, Sq, D] (or 3-D / 2-D, as in attention)
  TensorRef k;            ///< [B, Hkv, Sk, D]
  TensorRef v;            ///< [B, Hkv, Sk, Dv]
  TensorRef out;          ///< [B, Hq, Sq, Dv], q's dtype
  TensorRef lse;          ///< optional [B, Hq, Sq] float32 (float64 for float64 inputs)
  BlockLayoutRef layout;  ///< num_heads 1 or Hq; num_q_blocks = ceil(Sq / block_q), num_k_blocks = ceil(Sk / block_k)
  std::optional<double> scale;  ///< default 1/sqrt(D)
  bool causal = false;    ///< bottom-right aligned, applied inside the allowed blocks
  TensorRef key_lengths;  ///< optional [B] Int32/Int64 valid key counts
  void* stream = nullptr; ///< CUDA stream for device tensors
};

/// attention() with the layout's block mask; rows with no allowed key give 0 and lse = -inf.
ATTNKIT_API void block_sparse_attention(const BlockSparseParams& p);
/// Validates p like the call does (outputs ignored) and says whether this build can run it (runtime.h).
ATTNKIT_API Support supported(const BlockSparseParams& p);
/// "out", "lse" (see attention_outputs in attention.h).
ATTNKIT_API OutputSpecs block_sparse_attention_outputs(const BlockSparseParams& p);

/// Arguments of lsh_buckets().
struct LshBucketsParams {
  TensorRef x;              ///< [B, H, S, D] (or 3-D / 2-D), floating
  TensorRef out;            ///< Int32 [B, H, num_hashes, S] (rank follows x: [H, R, S] / [R, S])
  int64_t num_buckets = 2;  ///< even, >= 2
  int64_t num_hashes = 1;   ///< rounds, >= 1
  uint64_t seed = 0;
  void* stream = nullptr;
};

/// Angular LSH: round r hashes x to argmax([x R_r, -x R_r]) with R_r [D, num_buckets / 2] standard normal
/// entries R_r[d][c] = normal(seed, kStreamLsh + r, d * (num_buckets / 2) + c) (math/random.h). Ties go
/// to the lowest bucket. Projections are computed in float64.
ATTNKIT_API void lsh_buckets(const LshBucketsParams& p);
/// Validates p like the call does (outputs ignored) and says whether this build can run it (runtime.h).
ATTNKIT_API Support supported(const LshBucketsParams& p);
ATTNKIT_API OutputSpecs lsh_buckets_outputs(const LshBucketsParams& p);  ///< "out"

/// Arguments of lsh_attention().
struct LshAttentionParams {
  TensorRef q, k, v;        ///< as in attention (GQA allowed)
  TensorRef out;            ///< [B, Hq, Sq, Dv], q's dtype
  TensorRef lse;            ///< optional [B, Hq, Sq], merged over rounds
  int64_t num_buckets = 2;  ///< even, >= 2
  int64_t num_hashes = 1;   ///< rounds, >= 1
  uint64_t seed = 0;        ///< the same rotations hash q and k
  bool causal = false;      ///< bottom-right aligned, on original positions
  std::optional<double> scale;  ///< default 1/sqrt(D)
  void* stream = nullptr;
};

/// Reformer attention: for each round, exact attention restricted to the keys hashed to the query's
/// bucket (and causal); rounds merged like merge_attention (a key sharing the query's bucket in several
/// rounds counts in each of them). Rows with no key in their bucket in any round give 0 and lse = -inf.
ATTNKIT_API void lsh_attention(const LshAttentionParams& p);
/// Validates p like the call does (outputs ignored) and says whether this build can run it (runtime.h).
ATTNKIT_API Support supported(const LshAttentionParams& p);
ATTNKIT_API OutputSpecs lsh_attention_outputs(const LshAttentionParams& p);  ///< "out", "lse"

}  // namespace attnkit
