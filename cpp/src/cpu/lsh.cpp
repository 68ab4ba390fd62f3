// LSH (Reformer) attention on the CPU: hash, sort, attend within buckets, unsort, merge rounds.
//
// Round r: q and k are hashed with the same rotations (lsh_kernel.h), each (batch, head) sorts its rows
// by (bucket, position), the sorted q / k / v are gathered, and the exact-attention kernel runs on them
// with an explicit key range per sorted query row: the key segment of its bucket, cut at the causal limit
// (keys of a bucket are in position order, so causal keeps a prefix). The kernel visits only the union
// of its rows' ranges, so the cost is O(S * bucket size). Round results are scattered back and merged
// with the merge_attention rule (math/softmax.h).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <type_traits>
#include <vector>

#include "attnkit/math/dtypes.h"
#include "attnkit/math/random.h"
#include "attnkit/math/softmax.h"
#include "backend.h"
#include "cpu/isa.h"
#include "cpu/isa_entry_points.h"
#include "cpu/parallel.h"
#include "cpu/simd.h"
#include "validate/block_sparse.h"

namespace attnkit {
namespace detail {
namespace cpu {
namespace {

/// The rounds' rotations R_r[d][c] = normal(seed, kStreamLsh + r, d * half + c), [R][D][half], in
/// float64 and float32, with each round's largest column norm (for the float32 error bound).
struct Rotations {
  std::vector<double> rot;
  std::vector<float> rot32;
  std::vector<double> norm_max;
  Rotations(uint64_t seed, int64_t R, int64_t D, int64_t half)
      : rot(static_cast<size_t>(R * D * half)), rot32(rot.size()), norm_max(static_cast<size_t>(R), 0.0) {
    for (int64_t r = 0; r < R; ++r) {
      for (int64_t i = 0; i < D * half; ++i) {
        rot[r * D * half + i] = math::normal(seed, math::kStreamLsh + static_cast<uint64_t>(r), static_cast<uint64_t>(i));
        rot32[r * D * half + i] = static_cast<float>(rot[r * D * half + i]);
      }
      for (int64_t c = 0; c < half; ++c) {
        double n2 = 0;
        for (int64_t d = 0; d < D; ++d) n2 += rot[(r * D + d) * half + c] * rot[(r * D + d) * half + c];
        norm_max[r] = std::max(norm_max[r], std::sqrt(n2));
      }
    }
  }
};

int64_t hash_rows_per_block(int64_t D, int64_t half) {
  return std::max<int64_t>(1, std::min<int64_t>(64, 32768 / (D + half)));
}

/// codes[R][S] of head (b, h) of x.
void hash_head(const ViewN<4>& x, int64_t b, int64_t h, const Rotations& rot, int64_t num_buckets, int64_t R,
               int32_t* codes, float* scratch, double* scratch_d) {
  LshHashJob job;
  job.dtype = x.dtype;
  job.x = static_cast<const char*>(x.data) +
          (b * x.stride[0] + h * x.stride[1]) * static_cast<int64_t>(dtype_size(x.dtype));
  job.n = x.shape[2];
  job.D = x.shape[3];
  job.ldx = x.stride[2];
  job.sd = x.stride[3];
  job.rot = rot.rot.data();
  job.rot32 = rot.rot32.data();
  job.rot_norm_max = rot.norm_max.data();
  job.num_buckets = num_buckets;
  job.num_hashes = R;
  job.codes = codes;
  job.rows_per_block = hash_rows_per_block(job.D, num_buckets / 2);
  job.scratch = scratch;
  job.scratch_d = scratch_d;
  by_isa([&] { lsh_hash_generic(job); }, [&] { lsh_hash_avx2(job); }, [&] { lsh_hash_avx512(job); });
}

/// All codes of x: [B * H][R][S].
std::vector<int32_t> hash_all(const ViewN<4>& x, const Rotations& rot, int64_t nb, int64_t R) {
  const int64_t B = x.shape[0], H = x.shape[1], S = x.shape[2];
  std::vector<int32_t> codes(static_cast<size_t>(B * H * R * S));
  const int64_t row = x.shape[3] + nb / 2;  // floats per projected row
  const std::size_t floats = static_cast<std::size_t>(hash_rows_per_block(x.shape[3], nb / 2) * row);
  const std::size_t fbytes = (sizeof(float) * floats + 63) / 64 * 64;
  parallel_with_scratch("LSH hashing", B * H > 1, fbytes + sizeof(double) * static_cast<std::size_t>(row),
                        /*zero=*/false, [&](void* mem) {
    float* scratch = static_cast<float*>(mem);
    double* scratch_d = reinterpret_cast<double*>(static_cast<char*>(mem) + fbytes);
    team_for(B * H, mem, [&](int64_t bh) {
      hash_head(x, bh / H, bh % H, rot, nb, R, codes.data() + bh * R * S, scratch, scratch_d);
    });
  });
  return codes;
}

/// Scratch carved from one buffer that each calling thread keeps between calls (up to kKeepBytes), so
/// repeated calls do not pay for freshly zeroed pages (10% of the time at S = 8192). Buffers are fully
/// written before they are read, so nothing is initialised.
class Arena {
 public:
  static constexpr size_t kKeepBytes = size_t(256) << 20;
  explicit Arena(size_t bytes) {
    static thread_local std::unique_ptr<char[]> kept;
    static thread_local size_t kept_size = 0;
    try {
      if (bytes <= kKeepBytes) {
        if (kept_size < bytes) {
          kept.reset();
          kept_size = 0;
          kept.reset(new char[bytes]);
          kept_size = bytes;
        }
        base_ = kept.get();
      } else {
        own_.reset(new char[bytes]);
        base_ = own_.get();
      }
    } catch (const std::bad_alloc&) {
      throw Error(ErrorKind::Runtime, "attnkit: out of memory allocating " + std::to_string(bytes) +
                                          " bytes of scratch space for LSH attention");
    }
  }
  template <class T>
  T* take(size_t n) {
    T* p = reinterpret_cast<T*>(base_ + used_);
    used_ += (n * sizeof(T) + 63) / 64 * 64;
    return p;
  }
  template <class T>
  static size_t need(size_t n) {
    return (n * sizeof(T) + 63) / 64 * 64;
  }

 private:
  std::unique_ptr<char[]> own_;
  char* base_ = nullptr;
  size_t used_ = 0;
};

/// Rows of head (b, h) of view x, in the given order, as T (contiguous [S][Dd]).
template <class St, class T>
void gather(const ViewN<4>& x, int64_t b, int64_t h, const int32_t* order, int64_t S, T* dst) {
  const int64_t Dd = x.shape[3];
  const St* base = static_cast<const St*>(x.data) + b * x.stride[0] + h * x.stride[1];
  for (int64_t i = 0; i < S; ++i) {
    const St* src = base + order[i] * x.stride[2];
    T* d = dst + i * Dd;
    if constexpr (std::is_same<St, T>::value) {
      if (x.stride[3] == 1) {
        std::memcpy(d, src, sizeof(T) * Dd);
        continue;
      }
    }
    for (int64_t e = 0; e < Dd; ++e) d[e] = static_cast<T>(to_acc(src[e * x.stride[3]]));
  }
}

/// Positions 0..S-1 sorted by (code, position).
void sort_by_code(const int32_t* codes, int64_t S, int32_t* order) {
  std::iota(order, order + S, 0);
  std::stable_sort(order, order + S, [codes](int32_t a, int32_t b) { return codes[a] < codes[b]; });
}

template <class St, class T>
void lsh_attention_impl(const LshProblem& P) {
  const AttnProblem& p = P.base;
  const int64_t B = p.B, Hq = p.Hq, Hkv = p.Hkv, Sq = p.Sq, Sk = p.Sk, D = p.D, Dv = p.Dv, R = P.num_hashes;
  const int64_t G = p.group(), a = Sk - Sq;
  const DType tdt = sizeof(T) == 8 ? DType::Float64 : DType::Float32;
  const Rotations rot(P.seed, R, D, P.num_buckets / 2);
  const std::vector<int32_t> qcodes = hash_all(p.q, rot, P.num_buckets, R);
  const std::vector<int32_t> kcodes = hash_all(p.k, rot, P.num_buckets, R);

  const size_t nq = static_cast<size_t>(B * Hq * Sq), nk = static_cast<size_t>(B * Hkv * Sk);
  const size_t nacc = R > 1 ? nq : 0;  // running merge over rounds (one round unsorts straight into out)
  Arena arena(Arena::need<int32_t>(nq) * 3 + Arena::need<int32_t>(nk) + Arena::need<T>(nq * D) +
              Arena::need<T>(nk * D) + Arena::need<T>(nk * Dv) + Arena::need<T>(nq * Dv) + Arena::need<T>(nq) +
              Arena::need<T>(nacc * Dv) + 2 * Arena::need<T>(nacc));
  int32_t* qorder = arena.take<int32_t>(nq);
  int32_t* korder = arena.take<int32_t>(nk);
  int32_t* lo = arena.take<int32_t>(nq);
  int32_t* hi = arena.take<int32_t>(nq);
  T* qs = arena.take<T>(nq * D);
  T* ks = arena.take<T>(nk * D);
  T* vs = arena.take<T>(nk * Dv);
  T* out_r = arena.take<T>(nq * Dv);
  T* lse_r = arena.take<T>(nq);
  T* acc = arena.take<T>(nacc * Dv);
  T* mx = arena.take<T>(nacc);
  T* sum = arena.take<T>(nacc);
  std::fill(acc, acc + nacc * Dv, T(0));
  std::fill(mx, mx + nacc, math::neg_inf<T>());
  std::fill(sum, sum + nacc, T(0));

  // The round's attention problem on the sorted rows (contiguous [B, H, S, *] buffers).
  const AttnProblem s = lsh_round_problem(p, tdt, qs, ks, vs, out_r, lse_r, lo, hi);

  for (int64_t r = 0; r < R; ++r) {
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) if (B * Hkv > 1)
#endif
    for (int64_t bh = 0; bh < B * Hkv; ++bh) {
      int32_t* ord = korder + bh * Sk;
      sort_by_code(kcodes.data() + (bh * R + r) * Sk, Sk, ord);
      gather<St>(p.k, bh / Hkv, bh % Hkv, ord, Sk, ks + bh * Sk * D);
      gather<St>(p.v, bh / Hkv, bh % Hkv, ord, Sk, vs + bh * Sk * Dv);
    }
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic, 1) if (B * Hq > 1)
#endif
    for (int64_t bh = 0; bh < B * Hq; ++bh) {
      const int64_t b = bh / Hq, h = bh % Hq, bk = b * Hkv + h / G;
      const int32_t* qc = qcodes.data() + (bh * R + r) * Sq;
      const int32_t* kc = kcodes.data() + (bk * R + r) * Sk;
      const int32_t* kord = korder + bk * Sk;
      int32_t* ord = qorder + bh * Sq;
      sort_by_code(qc, Sq, ord);
      gather<St>(p.q, b, h, ord, Sq, qs + bh * Sq * D);
      // Key segment of each query's bucket in the sorted keys, cut at the causal limit (the keys of a
      // bucket are in position order). Sorted queries visit buckets in increasing order, so the segment
      // bounds only move forward.
      const int32_t* seg = kord;
      for (int64_t i = 0; i < Sq; ++i) {
        const int32_t c = qc[ord[i]];
        seg = std::partition_point(seg, kord + Sk, [&](int32_t k) { return kc[k] < c; });
        const int32_t* end = std::partition_point(seg, kord + Sk, [&](int32_t k) { return kc[k] == c; });
        if (p.causal) {
          const int64_t limit = ord[i] + a;
          end = std::partition_point(seg, end, [&](int32_t k) { return k <= limit; });
        }
        lo[bh * Sq + i] = static_cast<int32_t>(seg - kord);
        hi[bh * Sq + i] = static_cast<int32_t>(end - kord);
      }
    }
    cpu::attention(s);
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (nq * Dv > 32768)
#endif
    for (int64_t bh = 0; bh < B * Hq; ++bh) {
      const int64_t b = bh / Hq, h = bh % Hq;
      const int32_t* ord = qorder + bh * Sq;
      for (int64_t i = 0; i < Sq; ++i) {
        const int64_t src = bh * Sq + i;
        const T* o = out_r + src * Dv;
        if (R == 1) {  // unsort straight into the result
          St* dst = static_cast<St*>(p.out) + b * p.out_stride[0] + h * p.out_stride[1] + ord[i] * p.out_stride[2];
          for (int64_t d = 0; d < Dv; ++d) dst[d * p.out_stride[3]] = from_acc<St>(o[d]);
          if (p.lse)
            static_cast<T*>(p.lse)[b * p.lse_stride[0] + h * p.lse_stride[1] + ord[i] * p.lse_stride[2]] = lse_r[src];
          continue;
        }
        // Merge into the running result (merge_attention's rule, one part at a time).
        const int64_t row = bh * Sq + ord[i];
        T w_part;
        const T w_old = math::merge_step(mx[row], sum[row], lse_r[src], &w_part);
        if (w_part == T(0) && w_old == T(1)) continue;
        T* dst = acc + row * Dv;
        for (int64_t d = 0; d < Dv; ++d) dst[d] = dst[d] * w_old + w_part * o[d];
      }
    }
  }
  if (R == 1) return;
  // Final rows: acc / sum (0 when every round was empty), lse = mx + log(sum).
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (nq * Dv > 32768)
#endif
  for (int64_t bh = 0; bh < B * Hq; ++bh) {
    const int64_t b = bh / Hq, h = bh % Hq;
    for (int64_t i = 0; i < Sq; ++i) {
      const int64_t row = bh * Sq + i;
      const T inv = math::merge_scale(mx[row], sum[row]);
      St* dst = static_cast<St*>(p.out) + b * p.out_stride[0] + h * p.out_stride[1] + i * p.out_stride[2];
      for (int64_t d = 0; d < Dv; ++d) dst[d * p.out_stride[3]] = from_acc<St>(acc[row * Dv + d] * inv);
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
  const Rotations rot(p.seed, R, p.D, p.num_buckets / 2);
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
  switch (p.base.dtype) {
    case DType::Float64: return lsh_attention_impl<double, double>(p);
    case DType::Float16: return lsh_attention_impl<Half, float>(p);
    case DType::BFloat16: return lsh_attention_impl<BFloat, float>(p);
    default: return lsh_attention_impl<float, float>(p);
  }
}

}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
