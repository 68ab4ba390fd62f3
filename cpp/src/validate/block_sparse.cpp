#include "validate/block_sparse.h"

#include <algorithm>
#include <cstdint>
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

AttnProblem validate_block_sparse(const BlockSparseParams& p, OutputSpecs* infer, bool read_out) {
  AttentionParams a = core_params(p);
  a.key_lengths = p.key_lengths;
  AttnProblem r = validate_attention(a, nullptr, infer, read_out);
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

AttnProblem lsh_round_problem(const AttnProblem& p, DType dt, const void* q, const void* k, const void* v, void* out,
                              void* lse, const int32_t* lo, const int32_t* hi) {
  AttnProblem s = p;
  s.dtype = dt;
  s.q = contiguous_view(q, dt, p.B, p.Hq, p.Sq, p.D);
  s.k = contiguous_view(k, dt, p.B, p.Hkv, p.Sk, p.D);
  s.v = contiguous_view(v, dt, p.B, p.Hkv, p.Sk, p.Dv);
  s.out = out;
  const int64_t ostr[4] = {p.Hq * p.Sq * p.Dv, p.Sq * p.Dv, p.Dv, 1};
  std::copy(ostr, ostr + 4, s.out_stride);
  s.lse = lse;
  const int64_t lstr[3] = {p.Hq * p.Sq, p.Sq, 1};
  std::copy(lstr, lstr + 3, s.lse_stride);
  s.causal = false;
  s.key_lengths = ViewN<1>();
  s.row_lo = lo;
  s.row_hi = hi;
  return s;
}

}  // namespace detail

/// A layout's structure (sizes, sorted in-range indices), checked on the host where it is built.
void validate_layout(const BlockLayoutRef& L) {
  using namespace detail;
  require_positive(L.block_q, "layout.block_size[0]");
  require_positive(L.block_k, "layout.block_size[1]");
  require_positive(L.num_heads, "layout.num_heads");
  require_nonnegative(L.num_q_blocks, "layout.num_q_blocks");
  require_nonnegative(L.num_k_blocks, "layout.num_k_blocks");
  if (L.num_k_blocks > INT32_MAX) value_error("layout: more than 2^31 key blocks are not supported");
  require_defined(L.row_ptr, "layout.row_ptr");
  require_defined(L.col_idx, "layout.col_idx");
  require_sane(L.row_ptr, "layout.row_ptr");
  require_sane(L.col_idx, "layout.col_idx");
  require_dtype(L.row_ptr, DType::Int64, "layout.row_ptr");
  require_dtype(L.col_idx, DType::Int32, "layout.col_idx");
  if (L.row_ptr.device != Device::CPU || L.col_idx.device != Device::CPU)
    type_error("layout.row_ptr and layout.col_idx must be in host memory (a layout is validated on the host; "
               "device kernels read the copies of BlockLayout::ref_on)");
  const int64_t rows = checked_mul(L.num_heads, L.num_q_blocks, "layout.num_heads * layout.num_q_blocks");
  if (L.row_ptr.ndim != 1 || L.row_ptr.shape[0] != rows + 1)
    value_error("layout.row_ptr must have shape (num_heads * num_q_blocks + 1,) = (" + std::to_string(rows + 1) +
                ",), got " + shape_str(L.row_ptr));
  if (L.col_idx.ndim != 1) value_error("layout.col_idx must be 1-D, got " + shape_str(L.col_idx));
  if ((L.row_ptr.shape[0] > 1 && L.row_ptr.strides[0] != 1) || (L.col_idx.shape[0] > 1 && L.col_idx.strides[0] != 1))
    value_error("layout.row_ptr and layout.col_idx must be contiguous");
  const int64_t* rp = static_cast<const int64_t*>(L.row_ptr.data);
  const int32_t* ci = static_cast<const int32_t*>(L.col_idx.data);
  const int64_t rs = 1, cs = 1;
  if (rp[0] != 0) value_error("layout.row_ptr[0] must be 0, got " + std::to_string(rp[0]));
  if (rp[rows * rs] != L.col_idx.shape[0])
    value_error("layout.row_ptr[-1] = " + std::to_string(rp[rows * rs]) + " must equal len(col_idx) = " +
                std::to_string(L.col_idx.shape[0]));
  // row_ptr first (monotone, within [0, nnz]), so the col_idx scan below stays in bounds.
  for (int64_t r = 0; r < rows; ++r)
    if (rp[(r + 1) * rs] < rp[r * rs] || rp[(r + 1) * rs] > L.col_idx.shape[0])
      value_error("layout.row_ptr must be non-decreasing and end at len(col_idx); it is not at row " +
                  std::to_string(r) + " (head " + std::to_string(r / L.num_q_blocks) + ", query block " +
                  std::to_string(r % L.num_q_blocks) + ")");
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t b = rp[r * rs], e = rp[(r + 1) * rs];
    for (int64_t k = b; k < e; ++k) {
      const int64_t c = ci[k * cs];
      if (c < 0 || c >= L.num_k_blocks)
        value_error("layout.col_idx[" + std::to_string(k) + "] = " + std::to_string(c) + " is outside [0, " +
                    std::to_string(L.num_k_blocks) + ") (query block " + std::to_string(r % L.num_q_blocks) + ")");
      if (k > b && ci[(k - 1) * cs] >= c)
        value_error("layout.col_idx must be strictly increasing within a row; row " + std::to_string(r) +
                    " (head " + std::to_string(r / L.num_q_blocks) + ", query block " +
                    std::to_string(r % L.num_q_blocks) + ") is not sorted at position " + std::to_string(k));
    }
  }
}

}  // namespace attnkit
