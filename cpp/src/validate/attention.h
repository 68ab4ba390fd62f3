#pragma once
// The one validator of exact attention (attention, attention_weights) and of merge_attention. Every
// backend receives the problems built here and never re-checks user input.

#include "attnkit/attention.h"
#include "attnkit/math/config.h"
#include "validate/common.h"

namespace attnkit {
namespace detail {

/// A block layout borrowed from the caller: for each (layout head, query block) the sorted allowed key
/// blocks, as CSR. Validated (validate_layout) before any kernel sees it.
struct LayoutView {
  const int64_t* row_ptr = nullptr;  ///< [heads * nqb + 1], row_ptr[0] = 0, non-decreasing
  const int32_t* col_idx = nullptr;  ///< [row_ptr.back()], strictly increasing within a row, in [0, nkb)
  int64_t bq = 0, bk = 0;            ///< block size (query rows, keys)
  int64_t heads = 0;                 ///< 1 (shared by every query head) or Hq
  int64_t nqb = 0, nkb = 0;          ///< number of query / key blocks
};

/// A validated exact-attention problem, every operand brought to rank 4 ([B, H, S, D]).
/// Dense, block-sparse (layout) and LSH (explicit per-row key ranges over sorted rows) attention are all
/// this problem; the CPU kernel only changes which keys a tile visits.
struct AttnProblem {
  Device device = Device::CPU;
  int32_t device_index = 0;
  void* stream = nullptr;
  DType dtype = DType::Float32;  ///< of q, k, v and out
  int64_t B = 0, Hq = 0, Hkv = 0, Sq = 0, Sk = 0, D = 0, Dv = 0;
  ViewN<4> q, k, v;           ///< v absent for attention_weights
  void* out = nullptr;        ///< [B, Hq, Sq, Dv] (attention) or [B, Hq, Sq, Sk] (weights), dtype
  int64_t out_stride[4] = {};
  void* lse = nullptr;        ///< optional [B, Hq, Sq] float32 (float64 for float64 problems)
  int64_t lse_stride[3] = {};
  double scale = 1.0;         ///< resolved (default 1/sqrt(D) applied)
  double softcap = 0.0;       ///< 0 = off
  bool causal = false;
  int64_t window_left = -1, window_right = -1;
  ViewN<4> mask;              ///< Bool, broadcast to [B, Hq, Sq, Sk]
  ViewN<4> bias;              ///< floating, broadcast to [B, Hq, Sq, Sk]
  ViewN<1> key_lengths;       ///< Int32/Int64, broadcast to [B]
  ViewN<2> alibi;             ///< floating, broadcast to [B, Hq]
  bool sparse = false;        ///< block-sparse: keys restricted to `layout`
  LayoutView layout;
  /// Explicit key range [row_lo, row_hi) of every query row, [B, Hq, Sq] each (LSH on bucket-sorted rows);
  /// when set it replaces causal / window / key_lengths.
  const int32_t* row_lo = nullptr;
  const int32_t* row_hi = nullptr;

  int64_t group() const { return Hkv ? Hq / Hkv : 1; }
  bool empty_output() const { return B == 0 || Hq == 0 || Sq == 0; }
};

/// Validates p for attention() (weights == nullptr) or attention_weights() (weights = its output). With
/// `infer`, records the outputs' shapes and dtypes there instead of checking the output tensors. read_out:
/// p.out and p.lse are a forward call's results, read by a backward call (any strides, see Outputs).
AttnProblem validate_attention(const AttentionParams& p, const TensorRef* weights, OutputSpecs* infer = nullptr,
                               bool read_out = false);

/// A validated merge problem: rows = product of all but the last dim of outs[i], each of Dv elements.
struct MergeProblem {
  Device device = Device::CPU;
  int32_t device_index = 0;
  void* stream = nullptr;
  DType dtype = DType::Float32;      ///< of the outs and out
  DType lse_dtype = DType::Float32;  ///< of the lses and lse
  int nd = 0;                        ///< rank of the lse tensors (= rank of outs - 1)
  int64_t shape[kMaxDims] = {};      ///< outs' shape
  int64_t rows = 0, Dv = 0;
  int64_t parts = 0;                 ///< number of partial results
  const TensorRef* outs = nullptr;   ///< [parts], borrowed from the params for the call
  const TensorRef* lses = nullptr;   ///< [parts]
  TensorRef out, lse;                ///< lse may be absent
};

MergeProblem validate_merge(const MergeParams& p, OutputSpecs* infer = nullptr);

/// Element offset of merge row r (row-major over the first nd dims of `shape`) under `strides`; every
/// backend's merge_attention walks rows this way.
ATTNKIT_HD int64_t merge_row_offset(int64_t r, const int64_t* shape, const int64_t* strides, int nd) {
  int64_t off = 0;
  for (int d = nd - 1; d >= 0; --d) {
    const int64_t n = shape[d];
    off += (r % n) * strides[d];
    r /= n;
  }
  return off;
}

}  // namespace detail
}  // namespace attnkit
