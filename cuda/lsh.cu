// LSH (Reformer) attention on the GPU, the CPU's pipeline (cpu/lsh.cpp) step by step: hash q and k with
// the same rotations (lsh_hash.cu); then, round by round, sort each head's rows by (bucket, position)
// with a CUB radix sort, gather the sorted q / k / v as the accumulator type, run the exact-attention
// kernel on them with an explicit key range per sorted query row (the key segment of its bucket, cut at
// the causal limit), and scatter the round back, merged with the merge_attention rule (math/softmax.h)
// in round order.
#include <cub/cub.cuh>

#include <algorithm>
#include <cstddef>

#include "attnkit/math/softmax.h"
#include "cpp/src/backend.h"
#include "cuda/common.cuh"
#include "cuda/lsh.cuh"
#include "cuda/workspace.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// ------------------------------------------------------------------------------------------------ sort
/// Round r's sort keys of n rows (heads of S rows each, `codes` [heads][S]): key = head * num_buckets +
/// bucket, value = position. A stable radix sort of these pairs orders every head's rows by (bucket,
/// position) and keeps each head in its own S slots.
__global__ void make_keys_kernel(const int32_t* __restrict__ codes, int64_t n, int64_t S, uint64_t nb,
                                 uint64_t* __restrict__ keys, int32_t* __restrict__ vals) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    keys[i] = static_cast<uint64_t>(i / S) * nb + static_cast<uint64_t>(codes[i]);
    vals[i] = static_cast<int32_t>(i % S);
  }
}

/// Bits that hold every key below heads * nb (at least 1).
int key_bits(int64_t heads, int64_t nb) {
  const uint64_t max_key = static_cast<uint64_t>(heads) * static_cast<uint64_t>(nb) - 1;
  int bits = 1;
  while (bits < 64 && (max_key >> bits) != 0) ++bits;
  return bits;
}

/// The buffers of one sort (n pairs).
struct SortBufs {
  int64_t n = 0, S = 0;
  int end_bit = 64;
  uint64_t* keys_in = nullptr;
  int32_t* vals_in = nullptr;
  uint64_t* keys_out = nullptr;
  int32_t* vals_out = nullptr;
};

size_t sort_temp_bytes(const SortBufs& s, cudaStream_t stream) {
  size_t bytes = 0;
  ATTNKIT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, s.keys_in, s.keys_out, s.vals_in,
                                                     s.vals_out, s.n, 0, s.end_bit, stream));
  return bytes;
}

/// Sorts round codes (n = heads * S) into keys_out / vals_out (vals_out[head * S + i] = position of the
/// head's i-th row in (bucket, position) order).
void sort_round(const SortBufs& s, const int32_t* codes, int64_t nb, void* temp, size_t temp_bytes,
                cudaStream_t stream) {
  make_keys_kernel<<<blocks_for(s.n, kThreads), kThreads, 0, stream>>>(codes, s.n, s.S, static_cast<uint64_t>(nb),
                                                                       s.keys_in, s.vals_in);
  ATTNKIT_CUDA_CHECK_LAUNCH();
  size_t bytes = temp_bytes;
  ATTNKIT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, bytes, s.keys_in, s.keys_out, s.vals_in, s.vals_out,
                                                     s.n, 0, s.end_bit, stream));
}

// ------------------------------------------------------------------------------------------ gather
/// dst[bh][i][e] = x[b, h, order[bh * S + i], e] as T (contiguous [B * H][S][Dd]); one thread per element.
template <class St, class T>
__global__ void gather_kernel(const St* __restrict__ x, int64_t s0, int64_t s1, int64_t s2, int64_t s3, int64_t H,
                              int64_t S, int64_t Dd, const int32_t* __restrict__ order, T* __restrict__ dst,
                              int64_t n) {
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e = idx % Dd, row = idx / Dd;  // row = bh * S + i
    const int64_t bh = row / S, b = bh / H, h = bh % H;
    dst[idx] = to_acc<T>(x[b * s0 + h * s1 + static_cast<int64_t>(order[row]) * s2 + e * s3]);
  }
}

template <class St, class T>
void gather(const ViewN<4>& x, const int32_t* order, T* dst, cudaStream_t stream) {
  const int64_t n = x.shape[0] * x.shape[1] * x.shape[2] * x.shape[3];
  if (n == 0) return;
  gather_kernel<St, T><<<blocks_for(n, kThreads), kThreads, 0, stream>>>(
      static_cast<const St*>(x.data), x.stride[0], x.stride[1], x.stride[2], x.stride[3], x.shape[1], x.shape[2],
      x.shape[3], order, dst, n);
  ATTNKIT_CUDA_CHECK_LAUNCH();
}

// ------------------------------------------------------------------------------------------ key ranges
struct RangeArgs {
  int64_t nq, Sq, Sk, Hq, Hkv, G, nb;
  int64_t a;  // Sk - Sq: the causal limit of query position i is key position i + a (bottom-right)
  bool causal;
};

/// [lo, hi) of every sorted query row j of head bh = j / Sq: the keys of its bucket in the sorted keys of
/// its kv head (binary searches on the sorted composite keys), cut at the causal limit (a bucket's keys
/// are in position order, so causal keeps a prefix). One thread per sorted query row.
__global__ void ranges_kernel(const uint64_t* __restrict__ qkeys, const int32_t* __restrict__ qorder,
                              const uint64_t* __restrict__ kkeys, const int32_t* __restrict__ korder,
                              int32_t* __restrict__ lo, int32_t* __restrict__ hi, RangeArgs a) {
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < a.nq;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t bh = j / a.Sq, b = bh / a.Hq, h = bh % a.Hq, bk = b * a.Hkv + h / a.G;
    const uint64_t code = qkeys[j] - static_cast<uint64_t>(bh) * static_cast<uint64_t>(a.nb);
    const uint64_t target = static_cast<uint64_t>(bk) * static_cast<uint64_t>(a.nb) + code;
    const uint64_t* kk = kkeys + bk * a.Sk;
    int64_t l = 0, r = a.Sk;  // first index with kk >= target
    while (l < r) {
      const int64_t m = l + (r - l) / 2;
      if (kk[m] < target) l = m + 1; else r = m;
    }
    const int64_t seg = l;
    r = a.Sk;  // first index with kk > target
    while (l < r) {
      const int64_t m = l + (r - l) / 2;
      if (kk[m] <= target) l = m + 1; else r = m;
    }
    int64_t end = l;
    if (a.causal) {
      const int64_t limit = static_cast<int64_t>(qorder[j]) + a.a;
      const int32_t* ko = korder + bk * a.Sk;
      l = seg;
      r = end;  // first index with position > limit
      while (l < r) {
        const int64_t m = l + (r - l) / 2;
        if (ko[m] <= limit) l = m + 1; else r = m;
      }
      end = l;
    }
    lo[j] = static_cast<int32_t>(seg);
    hi[j] = static_cast<int32_t>(end);
  }
}

// ------------------------------------------------------------------------------------------ unsort, merge
struct OutArgs {
  int64_t nq, Sq, Hq, Dv;
  int64_t os[4];  // out strides
  int64_t ls[3];  // lse strides (lse may be null)
};

/// Scatters round results (sorted row j of head bh = j / Sq holds position qorder[j]) back to the original
/// rows: straight into out / lse when there is one round, else merged into the running (acc, mx, sum) with
/// merge_step. One warp per row (lanes over Dv); rows are a bijection within a round, so no two warps
/// touch one row.
template <class St, class T>
__global__ void unsort_kernel(const T* __restrict__ out_r, const T* __restrict__ lse_r,
                              const int32_t* __restrict__ qorder, bool direct, St* __restrict__ out,
                              T* __restrict__ lse, T* __restrict__ acc, T* __restrict__ mx, T* __restrict__ sum,
                              OutArgs a) {
  const int lane = threadIdx.x % 32;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32; j < a.nq;
       j += static_cast<int64_t>(gridDim.x) * kWarps) {
    const int64_t bh = j / a.Sq, b = bh / a.Hq, h = bh % a.Hq, pos = qorder[j];
    const T* o = out_r + j * a.Dv;
    if (direct) {
      St* dst = out + b * a.os[0] + h * a.os[1] + pos * a.os[2];
      for (int64_t d = lane; d < a.Dv; d += 32) dst[d * a.os[3]] = from_acc<St>(o[d]);
      if (lse && lane == 0) lse[b * a.ls[0] + h * a.ls[1] + pos * a.ls[2]] = lse_r[j];
      continue;
    }
    const int64_t row = bh * a.Sq + pos;
    T m = mx[row], s = sum[row], w_part;
    const T w_old = math::merge_step(m, s, lse_r[j], &w_part);
    __syncwarp();  // every lane has read mx / sum before lane 0 overwrites them
    if (lane == 0) mx[row] = m, sum[row] = s;
    if (w_part == T(0) && w_old == T(1)) continue;
    T* dst = acc + row * a.Dv;
    for (int64_t d = lane; d < a.Dv; d += 32) dst[d] = dst[d] * w_old + w_part * o[d];
  }
}

/// Final rows after several rounds: acc / sum (0 when every round was empty), lse = mx + log(sum); with
/// acc == nullptr (no keys at all) every row is the empty row: 0 and -inf. One warp per row.
template <class St, class T>
__global__ void finish_kernel(const T* __restrict__ acc, const T* __restrict__ mx, const T* __restrict__ sum,
                              St* __restrict__ out, T* __restrict__ lse, OutArgs a) {
  const int lane = threadIdx.x % 32;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32; row < a.nq;
       row += static_cast<int64_t>(gridDim.x) * kWarps) {
    const int64_t bh = row / a.Sq, b = bh / a.Hq, h = bh % a.Hq, i = row % a.Sq;
    const T m = acc ? mx[row] : math::neg_inf<T>(), s = acc ? sum[row] : T(0);
    const T inv = math::merge_scale(m, s);
    St* dst = out + b * a.os[0] + h * a.os[1] + i * a.os[2];
    for (int64_t d = lane; d < a.Dv; d += 32) dst[d * a.os[3]] = from_acc<St>(acc ? acc[row * a.Dv + d] * inv : T(0));
    if (lse && lane == 0) lse[b * a.ls[0] + h * a.ls[1] + i * a.ls[2]] = math::merge_lse(m, s);
  }
}

template <class T>
__global__ void init_merge_kernel(T* __restrict__ acc, T* __restrict__ mx, T* __restrict__ sum, int64_t nq,
                                  int64_t Dv) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < nq * Dv + nq;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (i < nq * Dv) {
      acc[i] = T(0);
    } else {
      mx[i - nq * Dv] = math::neg_inf<T>();
      sum[i - nq * Dv] = T(0);
    }
  }
}

// ------------------------------------------------------------------------------------------ driver
/// Byte offsets of the call's scratch in one stream-ordered allocation (256-byte aligned pieces).
struct Layout {
  size_t used = 0;
  template <class T>
  size_t take(int64_t n) {
    const size_t off = used;
    used += (sizeof(T) * static_cast<size_t>(n) + 255) / 256 * 256;
    return off;
  }
};

template <class St, class T>
void lsh_attention_impl(const LshProblem& P, cudaStream_t stream) {
  const AttnProblem& p = P.base;
  const int64_t B = p.B, Hq = p.Hq, Hkv = p.Hkv, Sq = p.Sq, Sk = p.Sk, D = p.D, Dv = p.Dv, R = P.num_hashes;
  const int64_t nb = P.num_buckets;
  const int64_t nq = B * Hq * Sq, nk = B * Hkv * Sk;
  OutArgs oa;
  oa.nq = nq, oa.Sq = Sq, oa.Hq = Hq, oa.Dv = Dv;
  for (int i = 0; i < 4; ++i) oa.os[i] = p.out_stride[i];
  for (int i = 0; i < 3; ++i) oa.ls[i] = p.lse_stride[i];
  St* out = static_cast<St*>(p.out);
  T* lse = static_cast<T*>(p.lse);
  if (nk == 0) {  // no keys: every row is empty in every round (0, -inf), as the CPU's empty ranges give
    finish_kernel<St, T><<<blocks_for(nq, kWarps), kThreads, 0, stream>>>(nullptr, nullptr, nullptr, out, lse, oa);
    ATTNKIT_CUDA_CHECK_LAUNCH();
    return;
  }
  const int64_t nacc = R > 1 ? nq : 0;  // running merge over rounds (one round unsorts straight into out)
  const int64_t nmax = std::max(nq, nk);
  Layout L;
  const size_t o_rot = L.take<double>(lsh_rotation_count(R, D, nb));
  const size_t o_qcodes = L.take<int32_t>(R * nq), o_kcodes = L.take<int32_t>(R * nk);
  const size_t o_keys_in = L.take<uint64_t>(nmax), o_vals_in = L.take<int32_t>(nmax);
  const size_t o_kkeys = L.take<uint64_t>(nk), o_korder = L.take<int32_t>(nk);
  const size_t o_qkeys = L.take<uint64_t>(nq), o_qorder = L.take<int32_t>(nq);
  const size_t o_lo = L.take<int32_t>(nq), o_hi = L.take<int32_t>(nq);
  const size_t o_qs = L.take<T>(nq * D), o_ks = L.take<T>(nk * D), o_vs = L.take<T>(nk * Dv);
  const size_t o_out = L.take<T>(nq * Dv), o_lse = L.take<T>(nq);
  const size_t o_acc = L.take<T>(nacc * Dv), o_mx = L.take<T>(nacc), o_sum = L.take<T>(nacc);

  SortBufs ks, qs;
  ks.n = nk, ks.S = Sk, ks.end_bit = key_bits(B * Hkv, nb);
  qs.n = nq, qs.S = Sq, qs.end_bit = key_bits(B * Hq, nb);
  const size_t temp_bytes = std::max(sort_temp_bytes(ks, stream), sort_temp_bytes(qs, stream));
  const size_t o_temp = L.take<char>(static_cast<int64_t>(std::max<size_t>(temp_bytes, 1)));

  Workspace ws(L.used, stream);
  char* base = ws.as<char>();
  auto at = [base](size_t off) { return static_cast<void*>(base + off); };
  double* rot = static_cast<double*>(at(o_rot));
  int32_t* qcodes = static_cast<int32_t*>(at(o_qcodes));
  int32_t* kcodes = static_cast<int32_t*>(at(o_kcodes));
  ks.keys_in = qs.keys_in = static_cast<uint64_t*>(at(o_keys_in));  // k's sort is done before q's starts
  ks.vals_in = qs.vals_in = static_cast<int32_t*>(at(o_vals_in));
  ks.keys_out = static_cast<uint64_t*>(at(o_kkeys));
  ks.vals_out = static_cast<int32_t*>(at(o_korder));
  qs.keys_out = static_cast<uint64_t*>(at(o_qkeys));
  qs.vals_out = static_cast<int32_t*>(at(o_qorder));
  int32_t* lo = static_cast<int32_t*>(at(o_lo));
  int32_t* hi = static_cast<int32_t*>(at(o_hi));
  T* q_s = static_cast<T*>(at(o_qs));
  T* k_s = static_cast<T*>(at(o_ks));
  T* v_s = static_cast<T*>(at(o_vs));
  T* out_r = static_cast<T*>(at(o_out));
  T* lse_r = static_cast<T*>(at(o_lse));
  T* acc = static_cast<T*>(at(o_acc));
  T* mx = static_cast<T*>(at(o_mx));
  T* sum = static_cast<T*>(at(o_sum));
  void* temp = at(o_temp);

  // Codes [R][heads][S] of q and k, hashed with the same rotations.
  lsh_upload_rotations(rot, P.seed, R, D, nb, stream);
  const int64_t qos[4] = {Hq * Sq, Sq, nq, 1}, kos[4] = {Hkv * Sk, Sk, nk, 1};
  lsh_hash(p.q, rot, nb, R, qcodes, qos, stream);
  lsh_hash(p.k, rot, nb, R, kcodes, kos, stream);
  if (nacc) {
    init_merge_kernel<T><<<blocks_for(nacc * Dv + nacc, kThreads), kThreads, 0, stream>>>(acc, mx, sum, nacc, Dv);
    ATTNKIT_CUDA_CHECK_LAUNCH();
  }

  // The round's attention problem on the sorted rows (contiguous [B, H, S, *] buffers), as on the CPU.
  const DType tdt = sizeof(T) == 8 ? DType::Float64 : DType::Float32;
  const AttnProblem s = lsh_round_problem(p, tdt, q_s, k_s, v_s, out_r, lse_r, lo, hi);

  RangeArgs ra;
  ra.nq = nq, ra.Sq = Sq, ra.Sk = Sk, ra.Hq = Hq, ra.Hkv = Hkv, ra.G = p.group(), ra.nb = nb;
  ra.a = Sk - Sq;
  ra.causal = p.causal;
  for (int64_t r = 0; r < R; ++r) {
    sort_round(ks, kcodes + r * nk, nb, temp, temp_bytes, stream);
    gather<St, T>(p.k, ks.vals_out, k_s, stream);
    gather<St, T>(p.v, ks.vals_out, v_s, stream);
    sort_round(qs, qcodes + r * nq, nb, temp, temp_bytes, stream);
    gather<St, T>(p.q, qs.vals_out, q_s, stream);
    ranges_kernel<<<blocks_for(nq, kThreads), kThreads, 0, stream>>>(qs.keys_out, qs.vals_out, ks.keys_out,
                                                                     ks.vals_out, lo, hi, ra);
    ATTNKIT_CUDA_CHECK_LAUNCH();
    attention(s);
    unsort_kernel<St, T><<<blocks_for(nq, kWarps), kThreads, 0, stream>>>(out_r, lse_r, qs.vals_out, R == 1, out, lse,
                                                                          acc, mx, sum, oa);
    ATTNKIT_CUDA_CHECK_LAUNCH();
  }
  if (R == 1) return;
  finish_kernel<St, T><<<blocks_for(nq, kWarps), kThreads, 0, stream>>>(acc, mx, sum, out, lse, oa);
  ATTNKIT_CUDA_CHECK_LAUNCH();
}

}  // namespace

void lsh_attention(const LshProblem& P) {
  require_device(P.base.device_index);
  DeviceGuard guard(P.base.device_index);
  if (P.base.empty_output()) return;
  const cudaStream_t stream = as_stream(P.base.stream);
  dispatch_float(P.base.dtype, [&](auto tag) {
    using St = decltype(tag);
    lsh_attention_impl<St, acc_t<St>>(P, stream);
  });
}

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
