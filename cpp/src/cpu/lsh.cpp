// LSH (Reformer) attention on the CPU: hash, sort, attend within buckets, unsort, merge rounds.
//
// Round r: q and k are hashed with the same rotations (lsh_kernel.h), each (batch, head) sorts its rows
// by (bucket, position), the sorted q / k / v are gathered, and the exact-attention kernel runs on them
// with an explicit key range per sorted query row: the key segment of its bucket, cut at the causal limit
// (keys of a bucket are in position order, so causal keeps a prefix). The kernel visits only the union
// of its rows' ranges, so the cost is O(S * bucket size). Round results are scattered back and merged
// with the merge_attention rule (math/softmax.h).
#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#include "attnkit/math/dtypes.h"
#include "attnkit/math/random.h"
#include "attnkit/math/softmax.h"
#include "backend.h"
#include "cpu/isa.h"
#include "cpu/kernels.h"
#include "validate/block_sparse.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace attnkit {
namespace detail {
namespace cpu {
namespace {

/// R_r[d][c] = normal(seed, kStreamLsh + r, d * half + c), rounds stacked: [R][D][half].
std::vector<double> rotations(uint64_t seed, int64_t R, int64_t D, int64_t half) {
  std::vector<double> rot(static_cast<size_t>(R * D * half));
  for (int64_t r = 0; r < R; ++r)
    for (int64_t i = 0; i < D * half; ++i)
      rot[r * D * half + i] = math::normal(seed, math::kStreamLsh + static_cast<uint64_t>(r), static_cast<uint64_t>(i));
  return rot;
}

int64_t hash_rows_per_block(int64_t D, int64_t half) {
  return std::max<int64_t>(1, std::min<int64_t>(64, 32768 / (D + half)));
}

/// codes[R][S] of head (b, h) of x.
void hash_head(const ViewN<4>& x, int64_t b, int64_t h, const std::vector<double>& rot, int64_t num_buckets,
               int64_t R, int32_t* codes, std::vector<double>& scratch) {
  LshHashJob job;
  job.dtype = x.dtype;
  job.x = static_cast<const char*>(x.data) +
          (b * x.stride[0] + h * x.stride[1]) * static_cast<int64_t>(dtype_size(x.dtype));
  job.n = x.shape[2];
  job.D = x.shape[3];
  job.ldx = x.stride[2];
  job.sd = x.stride[3];
  job.rot = rot.data();
  job.num_buckets = num_buckets;
  job.num_hashes = R;
  job.codes = codes;
  job.rows_per_block = hash_rows_per_block(job.D, num_buckets / 2);
  scratch.resize(static_cast<size_t>(job.rows_per_block * (job.D + num_buckets / 2)));
  job.scratch = scratch.data();
  by_isa([&] { lsh_hash_generic(job); }, [&] { lsh_hash_avx2(job); }, [&] { lsh_hash_avx512(job); });
}

/// All codes of x: [B * H][R][S].
std::vector<int32_t> hash_all(const ViewN<4>& x, const std::vector<double>& rot, int64_t nb, int64_t R) {
  const int64_t B = x.shape[0], H = x.shape[1], S = x.shape[2];
  std::vector<int32_t> codes(static_cast<size_t>(B * H * R * S));
#if defined(_OPENMP)
#pragma omp parallel if (B * H > 1)
#endif
  {
    std::vector<double> scratch;
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
    for (int64_t bh = 0; bh < B * H; ++bh) hash_head(x, bh / H, bh % H, rot, nb, R, codes.data() + bh * R * S, scratch);
  }
  return codes;
}

template <class T>
T load_as(const void* base, DType t, int64_t i) {
  switch (t) {
    case DType::Float32: return static_cast<T>(static_cast<const float*>(base)[i]);
    case DType::Float64: return static_cast<T>(static_cast<const double*>(base)[i]);
    case DType::Float16: return static_cast<T>(math::f16_to_float(static_cast<const uint16_t*>(base)[i]));
    default: return static_cast<T>(math::bf16_to_float(static_cast<const uint16_t*>(base)[i]));
  }
}

template <class T>
void store_as(void* base, DType t, int64_t i, T x) {
  switch (t) {
    case DType::Float32: static_cast<float*>(base)[i] = static_cast<float>(x); break;
    case DType::Float64: static_cast<double*>(base)[i] = static_cast<double>(x); break;
    case DType::Float16: static_cast<uint16_t*>(base)[i] = math::float_to_f16(static_cast<float>(x)); break;
    default: static_cast<uint16_t*>(base)[i] = math::float_to_bf16(static_cast<float>(x)); break;
  }
}

/// rows [S][D'] of head (b, h) of view x, in the given order, as T (contiguous).
template <class T>
void gather(const ViewN<4>& x, int64_t b, int64_t h, const int32_t* order, int64_t S, T* dst) {
  const int64_t Dd = x.shape[3];
  const int64_t base = b * x.stride[0] + h * x.stride[1];
  for (int64_t i = 0; i < S; ++i) {
    const int64_t src = base + order[i] * x.stride[2];
    for (int64_t d = 0; d < Dd; ++d) dst[i * Dd + d] = load_as<T>(x.data, x.dtype, src + d * x.stride[3]);
  }
}

/// Positions 0..S-1 sorted by (code, position).
void sort_by_code(const int32_t* codes, int64_t S, int32_t* order) {
  std::iota(order, order + S, 0);
  std::stable_sort(order, order + S, [codes](int32_t a, int32_t b) { return codes[a] < codes[b]; });
}

template <class T>
void lsh_attention_impl(const LshProblem& P) {
  const AttnProblem& p = P.base;
  const int64_t B = p.B, Hq = p.Hq, Hkv = p.Hkv, Sq = p.Sq, Sk = p.Sk, D = p.D, Dv = p.Dv, R = P.num_hashes;
  const int64_t G = p.group(), a = Sk - Sq;
  const DType tdt = sizeof(T) == 8 ? DType::Float64 : DType::Float32;
  const std::vector<double> rot = rotations(P.seed, R, D, P.num_buckets / 2);
  const std::vector<int32_t> qcodes = hash_all(p.q, rot, P.num_buckets, R);
  const std::vector<int32_t> kcodes = hash_all(p.k, rot, P.num_buckets, R);

  const size_t nq = static_cast<size_t>(B * Hq * Sq), nk = static_cast<size_t>(B * Hkv * Sk);
  std::vector<int32_t> qorder(nq), korder(nk), lo(nq), hi(nq);
  std::vector<T> qs(nq * D), ks(nk * D), vs(nk * Dv), out_r(nq * Dv), lse_r(nq);
  std::vector<T> acc(nq * Dv, T(0)), mx(nq, math::neg_inf<T>()), sum(nq, T(0));

  // The round's attention problem on the sorted rows (contiguous [B, H, S, *] buffers).
  AttnProblem s = p;
  auto contiguous = [](ViewN<4>& v, const void* data, int64_t H, int64_t S, int64_t Dd, DType dt) {
    v.data = data;
    v.dtype = dt;
    const int64_t shape[4] = {v.shape[0], H, S, Dd};
    const int64_t stride[4] = {H * S * Dd, S * Dd, Dd, 1};
    for (int d = 0; d < 4; ++d) v.shape[d] = shape[d], v.stride[d] = stride[d];
  };
  s.dtype = tdt;
  contiguous(s.q, qs.data(), Hq, Sq, D, tdt);
  contiguous(s.k, ks.data(), Hkv, Sk, D, tdt);
  contiguous(s.v, vs.data(), Hkv, Sk, Dv, tdt);
  s.out = out_r.data();
  const int64_t ostr[4] = {Hq * Sq * Dv, Sq * Dv, Dv, 1};
  std::copy(ostr, ostr + 4, s.out_stride);
  s.lse = lse_r.data();
  const int64_t lstr[3] = {Hq * Sq, Sq, 1};
  std::copy(lstr, lstr + 3, s.lse_stride);
  s.causal = false;
  s.key_lengths = ViewN<1>();
  s.row_lo = lo.data();
  s.row_hi = hi.data();

  for (int64_t r = 0; r < R; ++r) {
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) if (B * Hkv > 1)
#endif
    for (int64_t bh = 0; bh < B * Hkv; ++bh) {
      int32_t* ord = korder.data() + bh * Sk;
      sort_by_code(kcodes.data() + (bh * R + r) * Sk, Sk, ord);
      gather(p.k, bh / Hkv, bh % Hkv, ord, Sk, ks.data() + bh * Sk * D);
      gather(p.v, bh / Hkv, bh % Hkv, ord, Sk, vs.data() + bh * Sk * Dv);
    }
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) if (B * Hq > 1)
#endif
    for (int64_t bh = 0; bh < B * Hq; ++bh) {
      const int64_t b = bh / Hq, h = bh % Hq, bk = b * Hkv + h / G;
      const int32_t* qc = qcodes.data() + (bh * R + r) * Sq;
      const int32_t* kc = kcodes.data() + (bk * R + r) * Sk;
      const int32_t* kord = korder.data() + bk * Sk;
      int32_t* ord = qorder.data() + bh * Sq;
      sort_by_code(qc, Sq, ord);
      gather(p.q, b, h, ord, Sq, qs.data() + bh * Sq * D);
      // Key segment of each query's bucket in the sorted keys, cut at the causal limit.
      for (int64_t i = 0; i < Sq; ++i) {
        const int32_t c = qc[ord[i]];
        const int32_t* beg = std::partition_point(kord, kord + Sk, [&](int32_t k) { return kc[k] < c; });
        const int32_t* end = std::partition_point(beg, kord + Sk, [&](int32_t k) { return kc[k] == c; });
        if (p.causal) {
          const int64_t limit = ord[i] + a;
          end = std::partition_point(beg, end, [&](int32_t k) { return k <= limit; });
        }
        lo[bh * Sq + i] = static_cast<int32_t>(beg - kord);
        hi[bh * Sq + i] = static_cast<int32_t>(end - kord);
      }
    }
    cpu::attention(s);
    // Unsort and merge into the running result (merge_attention's rule, one part at a time).
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (nq * Dv > 32768)
#endif
    for (int64_t bh = 0; bh < B * Hq; ++bh) {
      const int32_t* ord = qorder.data() + bh * Sq;
      for (int64_t i = 0; i < Sq; ++i) {
        const int64_t row = bh * Sq + ord[i], src = bh * Sq + i;
        T w_part;
        const T w_old = math::merge_step(mx[row], sum[row], lse_r[src], &w_part);
        if (w_part == T(0) && w_old == T(1)) continue;
        T* dst = acc.data() + row * Dv;
        const T* o = out_r.data() + src * Dv;
        for (int64_t d = 0; d < Dv; ++d) dst[d] = dst[d] * w_old + w_part * o[d];
      }
    }
  }
  // Final rows: acc / sum (0 when every round was empty), lse = mx + log(sum).
  for (int64_t bh = 0; bh < B * Hq; ++bh) {
    const int64_t b = bh / Hq, h = bh % Hq;
    for (int64_t i = 0; i < Sq; ++i) {
      const int64_t row = bh * Sq + i;
      const T inv = mx[row] == math::neg_inf<T>() ? T(0) : T(1) / sum[row];
      const int64_t o = b * p.out_stride[0] + h * p.out_stride[1] + i * p.out_stride[2];
      for (int64_t d = 0; d < Dv; ++d) store_as<T>(p.out, p.dtype, o + d * p.out_stride[3], acc[row * Dv + d] * inv);
      if (p.lse)
        static_cast<T*>(p.lse)[b * p.lse_stride[0] + h * p.lse_stride[1] + i * p.lse_stride[2]] =
            math::merge_lse(mx[row], sum[row]);
    }
  }
}

}  // namespace

void lsh_buckets(const LshBucketsProblem& p) {
  const int64_t R = p.num_hashes, S = p.S;
  if (p.B * p.H * S == 0) return;
  const std::vector<double> rot = rotations(p.seed, R, p.D, p.num_buckets / 2);
  const std::vector<int32_t> codes = hash_all(p.x, rot, p.num_buckets, R);
  for (int64_t bh = 0; bh < p.B * p.H; ++bh) {
    const int64_t b = bh / p.H, h = bh % p.H;
    for (int64_t r = 0; r < R; ++r)
      for (int64_t i = 0; i < S; ++i)
        p.out[b * p.out_stride[0] + h * p.out_stride[1] + r * p.out_stride[2] + i * p.out_stride[3]] =
            codes[(bh * R + r) * S + i];
  }
}

void lsh_attention(const LshProblem& p) {
  if (p.base.empty_output()) return;
  if (p.base.dtype == DType::Float64)
    lsh_attention_impl<double>(p);
  else
    lsh_attention_impl<float>(p);
}

}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
