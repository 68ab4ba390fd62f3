#include "validate/block_sparse.h"

#include <algorithm>
#include <string>

#include "validate/checked.h"

namespace attnkit {
namespace detail {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return ceil_div_safe(a, b); }

/// The exact-attention arguments shared by block-sparse and LSH params, for validate_attention.
template <class P>
AttentionParams core_params(const P& p) {
  AttentionParams a;
  a.q = p.q;
  a.k = p.k;
  a.v = p.v;
  a.out = p.out;
  a.lse = p.lse;
  a.scale = p.scale;
  a.causal = p.causal;
  a.stream = p.stream;
  return a;
}

constexpr int64_t kMaxHashes = 1024;
constexpr int64_t kMaxRotationEntries = int64_t(1) << 26;

void check_buckets(int64_t num_buckets, int64_t num_hashes) {
  if (num_buckets < 2 || num_buckets % 2 != 0)
    value_error("num_buckets must be even and >= 2, got " + std::to_string(num_buckets));
  if (num_buckets > (int64_t(1) << 30)) value_error("num_buckets must be below 2^30");
  if (num_hashes < 1) value_error("num_hashes must be >= 1, got " + std::to_string(num_hashes));
  if (num_hashes > kMaxHashes)
    value_error("num_hashes must be <= " + std::to_string(kMaxHashes) + ", got " + std::to_string(num_hashes));
}

/// The rotations (num_hashes x D x num_buckets / 2, double and float copies) are allocated before any
/// work: an absurd table is a ValueError instead of bad_alloc.
void check_rotations(int64_t D, int64_t num_buckets, int64_t num_hashes) {
  const int64_t n = sat_mul(sat_mul(num_hashes, D), num_buckets / 2);
  if (n > kMaxRotationEntries)
    value_error("num_hashes * D * num_buckets / 2 = " + std::to_string(n) + " rotation entries exceed the limit 2^26 " +
                "(num_hashes = " + std::to_string(num_hashes) + ", num_buckets = " + std::to_string(num_buckets) +
                ", D = " + std::to_string(D) + ")");
}

}  // namespace

AttnProblem validate_block_sparse(const BlockSparseParams& p, OutputSpecs* infer) {
  AttentionParams a = core_params(p);
  a.key_lengths = p.key_lengths;
  AttnProblem r = validate_attention(a, nullptr, infer);
  const BlockLayoutRef& L = p.layout;
  validate_layout(L);
  if (L.num_heads != 1 && L.num_heads != r.Hq)
    value_error("layout has " + std::to_string(L.num_heads) + " heads; it must have 1 (shared) or Hq = " +
                std::to_string(r.Hq));
  const int64_t want_q = ceil_div(r.Sq, L.block_q), want_k = ceil_div(r.Sk, L.block_k);
  if (L.num_q_blocks != want_q || L.num_k_blocks != want_k)
    value_error("layout has " + std::to_string(L.num_q_blocks) + " x " + std::to_string(L.num_k_blocks) +
                " blocks of (" + std::to_string(L.block_q) + ", " + std::to_string(L.block_k) + ") but q and k (Sq = " +
                std::to_string(r.Sq) + ", Sk = " + std::to_string(r.Sk) + ") need ceil(Sq / " +
                std::to_string(L.block_q) + ") x ceil(Sk / " + std::to_string(L.block_k) + ") = " +
                std::to_string(want_q) + " x " + std::to_string(want_k));
  r.sparse = true;
  // The kernels read the CSR in their own memory: the host arrays (validated above) on the CPU, the copies
  // of BlockLayout::ref_on on a CUDA device.
  if (r.device == Device::CPU) {
    r.layout.row_ptr = static_cast<const int64_t*>(L.row_ptr.data);
    r.layout.col_idx = static_cast<const int32_t*>(L.col_idx.data);
  } else {
    if (!L.device_row_ptr || !L.device_col_idx || L.device_index != r.device_index)
      type_error("layout has no copy on cuda:" + std::to_string(r.device_index) +
                 " (the device of q): pass BlockLayout::ref_on(" + std::to_string(r.device_index) + ", stream)");
    r.layout.row_ptr = L.device_row_ptr;
    r.layout.col_idx = L.device_col_idx;
  }
  // A block larger than the sequence is one block holding all of it: clamping changes nothing in the
  // meaning and keeps the kernels' block arithmetic (row0 + bq, (col + 1) * bk) far from overflow.
  r.layout.bq = std::min(L.block_q, std::max<int64_t>(r.Sq, 1));
  r.layout.bk = std::min(L.block_k, std::max<int64_t>(r.Sk, 1));
  r.layout.heads = L.num_heads;
  r.layout.nqb = L.num_q_blocks;
  r.layout.nkb = L.num_k_blocks;
  return r;
}

LshProblem validate_lsh_attention(const LshAttentionParams& p, OutputSpecs* infer) {
  LshProblem r;
  r.base = validate_attention(core_params(p), nullptr, infer);
  check_buckets(p.num_buckets, p.num_hashes);
  check_rotations(r.base.D, p.num_buckets, p.num_hashes);
  r.num_buckets = p.num_buckets;
  r.num_hashes = p.num_hashes;
  r.seed = p.seed;
  return r;
}

LshBucketsProblem validate_lsh_buckets(const LshBucketsParams& p, OutputSpecs* infer) {
  LshBucketsProblem r;
  r.x = bhsd_view(p.x, "x");
  require_floating(p.x, "x");
  check_buckets(p.num_buckets, p.num_hashes);
  r.device = p.x.device;
  r.device_index = p.x.device_index;
  r.stream = p.stream;
  r.B = r.x.shape[0];
  r.H = r.x.shape[1];
  r.S = r.x.shape[2];
  r.D = r.x.shape[3];
  if (r.D < 1) value_error("x must have a last (head) dim of at least 1, got shape " + shape_str(p.x));
  check_rotations(r.D, p.num_buckets, p.num_hashes);
  if (r.S > kMaxSeqLen) value_error("x: sequence lengths above " + std::to_string(kMaxSeqLen) + " are not supported");
  r.num_buckets = p.num_buckets;
  r.num_hashes = p.num_hashes;
  r.seed = p.seed;
  int64_t shape[4];
  const int lead = p.x.ndim - 2;  // B, H present in x
  for (int d = 0; d < lead; ++d) shape[d] = p.x.shape[d];
  shape[lead] = p.num_hashes;
  shape[lead + 1] = r.S;
  Outputs outs(infer, p.x, "x");
  if (const TensorRef* o = outs.bind("out", p.out, shape, lead + 2, DType::Int32, nullptr)) {
    r.out = static_cast<int32_t*>(o->data);
    lead_strides(*o, r.out_stride);
  }
  return r;
}

}  // namespace detail
}  // namespace attnkit
