#pragma once
// The flash-decoding kernel: exact attention for few query rows per kv head (decoding: Sq * G <= 16, G =
// Hq / Hkv), every dtype, head dims up to 256, every dense contract feature (causal bottom-right, windows,
// key_lengths, explicit per-row key ranges, mask, bias, ALiBi, softcap, scale, LSE). Bandwidth-bound by
// design: every K/V row is read once per (batch, kv head) and serves all the kv head's query rows.
//
// Work. One block per (batch b, kv head, split, row chunk); a split is a contiguous share of the keys
// (split-KV, the number of splits depends on the shapes only). The kv head's rows are its (query row i,
// query head h) pairs, row i * G + (h - hkv * G) as on the CPU; a block serves kR (4 or 8) of them (row
// chunks: more rows take 2-4 adjacent blocks, which read the same K/V rows, the later ones from L2).
// A warp is made of 32 / kL lane groups of kL lanes; a group owns U consecutive keys per step, and the
// block's groups walk the split's keys together (kG * U consecutive keys per step, so a warp reads
// consecutive K/V rows); the score terms of a step's U * kR (key, row) pairs are spread over the group's
// lanes, one pair per lane, and exchanged by shuffles. Lane li of a
// group holds the dims [(c * kL + li) * V, + V) (c < kNC, V elements per 16 bytes) of q (registers, every
// row), of the K and V rows (16-byte loads) and of the output accumulators. Scores: per-lane partial dot
// products, then an xor butterfly over the group's lanes (every lane ends with the same bits), then the
// score terms (ScoreTerms) and a per-group online softmax (math/softmax.h). A masked (row, key) pair has
// score -inf and its value is never multiplied in, so a non-finite value behind a mask cannot reach the
// output; NaN scores propagate (to l, hence to the output and LSE) as in the SIMT kernel.
// End of the split: every group's (m, l, accumulators) go to shared memory and are combined in group
// order (fixed), giving the split's normalised output and LSE: written straight to out / lse when there
// is one split, else to scratch, merged in split order by merge_splits_kernel (attention_split.cuh).
// Deterministic: fixed reduction orders, no atomics.

#include <cstdint>

#include "cuda/attention_split.cuh"
#include "cuda/attention_terms.cuh"
#include "cuda/workspace.cuh"

namespace attnkit {
namespace detail {
namespace cuda {

constexpr int kDecWarps = 4;
constexpr int kDecThreads = 32 * kDecWarps;
constexpr int kDecMaxRows = 16;  // rows (Sq * G) per kv head served by the decode kernel
/// Budget of q (and of the output accumulators) per thread: kR * elements per lane * sizeof(acc) bytes
/// (float: 64 registers each; float64 half of that, its 64-bit arithmetic needing more registers besides).
/// Also bounds the kernel's shared memory: kDecThreads * 256 bytes = 32 KiB.
__host__ __device__ constexpr int dec_reg_bytes(int acc_bytes) { return acc_bytes == 8 ? 128 : 256; }

/// Blocks per SM the register allocation must allow: 3 (at most 170 registers) for 4 float rows, where
/// the bandwidth needs the occupancy; else 1 (at most 255: no spills).
__host__ __device__ constexpr int dec_min_blocks(int acc_bytes, int rows) { return acc_bytes == 4 && rows <= 4 ? 3 : 1; }

struct DecodeGeom {
  int64_t split_keys = 0;  // keys per split
  int nsplit = 1;
  int nrc = 1;               // row chunks: blocks per (batch, kv head, split), kR rows each
  void* part_o = nullptr;    // [nsplit][B*Hq*Sq][Dv] accumulator type (nsplit > 1)
  void* part_lse = nullptr;  // [nsplit][B*Hq*Sq]
};

/// 16 bytes of storage type T -> V accumulator values (exact conversions).
template <class T>
struct DecVec;
template <>
struct DecVec<half_t> {
  static constexpr int n = 8;
  __device__ __forceinline__ static void cvt(const uint4& v, float* o) {
    const unsigned w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      o[2 * i] = __half2float(__ushort_as_half(static_cast<unsigned short>(w[i] & 0xffffu)));
      o[2 * i + 1] = __half2float(__ushort_as_half(static_cast<unsigned short>(w[i] >> 16)));
    }
  }
};
template <>
struct DecVec<bf16_t> {
  static constexpr int n = 8;
  __device__ __forceinline__ static void cvt(const uint4& v, float* o) {
    const unsigned w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      o[2 * i] = __uint_as_float(w[i] << 16);
      o[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
  }
};
template <>
struct DecVec<float> {
  static constexpr int n = 4;
  __device__ __forceinline__ static void cvt(const uint4& v, float* o) {
    o[0] = __uint_as_float(v.x);
    o[1] = __uint_as_float(v.y);
    o[2] = __uint_as_float(v.z);
    o[3] = __uint_as_float(v.w);
  }
};
template <>
struct DecVec<double> {
  static constexpr int n = 2;
  __device__ __forceinline__ static void cvt(const uint4& v, double* o) {
    o[0] = __hiloint2double(static_cast<int>(v.y), static_cast<int>(v.x));
    o[1] = __hiloint2double(static_cast<int>(v.w), static_cast<int>(v.z));
  }
};

/// The decode kernel: kL lanes per key (power of 2, 8..32), kNC 16-byte chunks per lane and row, kR rows.
template <class T, int kL, int kNC, int kR>
__global__ void __launch_bounds__(kDecThreads, dec_min_blocks(sizeof(acc_t<T>), kR)) decode_kernel(const AttnProblem p, const DecodeGeom g) {
  using A = acc_t<T>;
  constexpr int V = DecVec<T>::n;
  constexpr int E = kNC * V;           // elements per lane and row
  constexpr int kGW = 32 / kL;         // lane groups per warp
  constexpr int kG = kDecWarps * kGW;  // lane groups per block
  constexpr int DP = kL * E;           // dims held by a group
  constexpr int U = (kNC == 1 && kR <= 4 && sizeof(A) == 4) ? 2 : 1;  // keys per group and step (registers)
  static_assert(kR * E * static_cast<int>(sizeof(A)) <= dec_reg_bytes(sizeof(A)), "decode kernel: registers");
  __shared__ A s_acc[kG * kR * DP];  // = kDecThreads * kR * E
  __shared__ A s_m[kG][kR], s_l[kG][kR], s_w[kG][kR];
  __shared__ A s_sc[kR], s_slope[kR];
  __shared__ int32_t s_lo[kR], s_hi[kR], s_h[kR], s_i[kR];
  __shared__ int64_t s_a, s_z;

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int li = lane % kL, gi = warp * kGW + lane / kL;
  const int64_t blk = blockIdx.x / g.nrc;  // the row chunks of a split are adjacent: K/V reread from L2
  const int rchunk = static_cast<int>(blockIdx.x % g.nrc);
  const int split = static_cast<int>(blk % g.nsplit);
  const int64_t bh = blk / g.nsplit;
  const int64_t hkv = bh % p.Hkv, b = bh / p.Hkv;
  const int64_t G = p.Hq / p.Hkv;
  const int r0 = rchunk * kR;  // this block's rows: r0 + r, r < R
  const int R = static_cast<int>(p.Sq * G - r0) < kR ? static_cast<int>(p.Sq * G - r0) : kR;
  const A ninf = math::neg_inf<A>();

  // Per-row data (shared memory: read per key, kept out of the registers).
  if (tid == 0) {
    const int64_t kv_len = valid_keys(p, b);
    int64_t ulo = INT64_MAX, uhi = INT64_MIN;  // union of the rows' ranges
    for (int r = 0; r < kR; ++r) {
      const int rr = r0 + (r < R ? r : 0);
      const int64_t i = rr / G, h = hkv * G + rr % G;
      math::KeyRange kr = row_keys(p, b, h, i, kv_len);
      if (r >= R) kr = {0, 0};
      s_lo[r] = static_cast<int32_t>(kr.lo);
      s_hi[r] = static_cast<int32_t>(kr.hi);
      s_h[r] = static_cast<int32_t>(h);
      s_i[r] = static_cast<int32_t>(i);
      s_slope[r] = alibi_slope<A>(p, b, h);
      if (kr.hi > kr.lo) {
        ulo = kr.lo < ulo ? kr.lo : ulo;
        uhi = kr.hi > uhi ? kr.hi : uhi;
      }
    }
    const int64_t s_lo_k = static_cast<int64_t>(split) * g.split_keys, s_hi_k = s_lo_k + g.split_keys;
    s_a = ulo > s_lo_k ? ulo : s_lo_k;
    s_z = uhi < s_hi_k ? uhi : s_hi_k;
  }

  // q of every row (registers): lane li holds dims (c * kL + li) * V + e.
  A q[kR][E];
#pragma unroll
  for (int r = 0; r < kR; ++r) {
    const int rr = r0 + (r < R ? r : 0);
    const int64_t i = rr / G, h = hkv * G + rr % G;
    const T* qrow = static_cast<const T*>(p.q.data) + b * p.q.stride[0] + h * p.q.stride[1] + i * p.q.stride[2];
#pragma unroll
    for (int c = 0; c < kNC; ++c)
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const int64_t d = static_cast<int64_t>(c * kL + li) * V + e;
        q[r][c * V + e] = (r < R && d < p.D) ? to_acc<A>(qrow[d * p.q.stride[3]]) : A(0);
      }
  }
  __syncthreads();
  const int64_t a = s_a, z = s_z;

  A m[kR], l[kR], acc[kR][E];
#pragma unroll
  for (int r = 0; r < kR; ++r) {
    m[r] = ninf;
    l[r] = A(0);
#pragma unroll
    for (int e = 0; e < E; ++e) acc[r][e] = A(0);
  }

  const T* kb = static_cast<const T*>(p.k.data) + b * p.k.stride[0] + hkv * p.k.stride[1];
  const T* vb = static_cast<const T*>(p.v.data) + b * p.v.stride[0] + hkv * p.v.stride[1];
  const ScoreTerms<A> terms(p);
  // The (key, row) pair whose score terms this lane evaluates, and that row's data.
  static_assert(U * kR <= kL, "decode kernel: one score pair per lane");
  const int group_lane0 = lane - li, my_u = li / kR, my_r = li % kR;
  const int64_t my_lo = s_lo[my_r], my_hi = s_hi[my_r], my_h = s_h[my_r], my_i = s_i[my_r];
  const A my_slope = s_slope[my_r];

  // Warp-uniform loop (the butterflies need every lane); keys past z are not loaded and score -inf.
#pragma unroll 1
  for (int64_t jw = a + static_cast<int64_t>(warp) * kGW * U; jw < z; jw += static_cast<int64_t>(kG) * U) {
    const int64_t j0 = jw + static_cast<int64_t>(lane / kL) * U;
    uint4 kv[U][kNC], vv[U][kNC];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t j = j0 + u;
#pragma unroll
      for (int c = 0; c < kNC; ++c) {
        const int64_t d = static_cast<int64_t>(c * kL + li) * V;
        kv[u][c] = (j < z && d < p.D) ? __ldg(reinterpret_cast<const uint4*>(kb + j * p.k.stride[2] + d))
                                      : make_uint4(0u, 0u, 0u, 0u);
        vv[u][c] = (j < z && d < p.Dv) ? __ldg(reinterpret_cast<const uint4*>(vb + j * p.v.stride[2] + d))
                                       : make_uint4(0u, 0u, 0u, 0u);
      }
    }
    // Scores.
    A s[U][kR];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      A kf[E];
#pragma unroll
      for (int c = 0; c < kNC; ++c) DecVec<T>::cvt(kv[u][c], kf + c * V);
#pragma unroll
      for (int r = 0; r < kR; ++r) {
        A x = A(0);
#pragma unroll
        for (int e = 0; e < E; ++e) x += q[r][e] * kf[e];
        s[u][r] = x;
      }
    }
#pragma unroll
    for (int o = kL / 2; o > 0; o >>= 1)
#pragma unroll
      for (int u = 0; u < U; ++u)
#pragma unroll
        for (int r = 0; r < kR; ++r) s[u][r] += __shfl_xor_sync(0xffffffffu, s[u][r], o);
    // Score terms: lane li of the group takes pair (u, r) = (li / kR, li % kR), then the group's lanes
    // exchange the results (every lane ends with the same bits).
    {
      A x = A(0);
#pragma unroll
      for (int u = 0; u < U; ++u)
#pragma unroll
        for (int r = 0; r < kR; ++r)
          if (u * kR + r == li) x = s[u][r];
      const int64_t j = j0 + my_u;
      const bool in = li < U * kR && j < z && j >= my_lo && j < my_hi;
      x = in ? terms(p, b, my_h, my_i, j, x, my_slope) : ninf;
#pragma unroll
      for (int u = 0; u < U; ++u)
#pragma unroll
        for (int r = 0; r < kR; ++r) s[u][r] = __shfl_sync(0xffffffffu, x, group_lane0 + u * kR + r);
    }
    unsigned live = 0;
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int r = 0; r < kR; ++r)
        if (s[u][r] != ninf) live |= 1u << (u * kR + r);
    // Online softmax (per group), then p * v for the live pairs.
#pragma unroll
    for (int r = 0; r < kR; ++r) {
      A mx = m[r];
#pragma unroll
      for (int u = 0; u < U; ++u) mx = s[u][r] > mx ? s[u][r] : mx;
      const A off = math::softmax_offset<A, A>(mx);
      const A alpha = kexp(math::softmax_rescale_arg<A, A>(m[r], mx));
      A psum = A(0);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        s[u][r] = s[u][r] == ninf ? A(0) : kexp(s[u][r] - off);
        psum += s[u][r];
      }
      l[r] = l[r] * alpha + psum;
      m[r] = mx;
#pragma unroll
      for (int e = 0; e < E; ++e) acc[r][e] *= alpha;
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      A vf[E];
#pragma unroll
      for (int c = 0; c < kNC; ++c) DecVec<T>::cvt(vv[u][c], vf + c * V);
#pragma unroll
      for (int r = 0; r < kR; ++r)
        if ((live >> (u * kR + r)) & 1u)
#pragma unroll
          for (int e = 0; e < E; ++e) acc[r][e] += s[u][r] * vf[e];
    }
  }

  // Combine the groups in group order.
#pragma unroll
  for (int r = 0; r < kR; ++r) {
#pragma unroll
    for (int c = 0; c < kNC; ++c)
#pragma unroll
      for (int e = 0; e < V; ++e) s_acc[(gi * kR + r) * DP + (c * kL + li) * V + e] = acc[r][c * V + e];
    if (li == 0) {
      s_m[gi][r] = m[r];
      s_l[gi][r] = l[r];
    }
  }
  __syncthreads();
  const int64_t rows_total = p.B * p.Hq * p.Sq;
  if (tid < kR) {
    const int r = tid;
    A M = ninf;
    for (int gg = 0; gg < kG; ++gg) M = s_m[gg][r] > M ? s_m[gg][r] : M;
    A L = A(0);
    for (int gg = 0; gg < kG; ++gg) {
      const A w = kexp(math::softmax_rescale_arg<A, A>(s_m[gg][r], M));
      s_w[gg][r] = w;
      L += s_l[gg][r] * w;
    }
    s_sc[r] = math::softmax_out_scale(M, L);
    if (r < R) {
      const int64_t h = s_h[r], i = s_i[r];
      const A lse = math::softmax_lse(M, L);
      if (g.nsplit > 1)
        static_cast<A*>(g.part_lse)[split * rows_total + (b * p.Hq + h) * p.Sq + i] = lse;
      else if (p.lse)
        static_cast<A*>(p.lse)[b * p.lse_stride[0] + h * p.lse_stride[1] + i * p.lse_stride[2]] = lse;
    }
  }
  __syncthreads();
  const int64_t n_out = static_cast<int64_t>(R) * p.Dv;
  for (int64_t idx = tid; idx < n_out; idx += kDecThreads) {
    const int r = static_cast<int>(idx / p.Dv);
    const int64_t d = idx % p.Dv;
    A o = A(0);
    for (int gg = 0; gg < kG; ++gg) {
      const A w = s_w[gg][r];
      o += w == A(0) ? A(0) : w * s_acc[(gg * kR + r) * DP + d];
    }
    o *= s_sc[r];
    const int64_t h = s_h[r], i = s_i[r];
    if (g.nsplit > 1)
      static_cast<A*>(g.part_o)[(split * rows_total + (b * p.Hq + h) * p.Sq + i) * p.Dv + d] = o;
    else
      static_cast<T*>(p.out)[b * p.out_stride[0] + h * p.out_stride[1] + i * p.out_stride[2] + d * p.out_stride[3]] =
          from_acc<T>(o);
  }
}

// ------------------------------------------------------------------------------------------------ host
inline int decode_vec(DType dt) {
  switch (dt) {
    case DType::Float64: return 2;
    case DType::Float32: return 4;
    default: return 8;  // float16, bfloat16
  }
}


/// 16-byte chunks of a head dim per lane: max(D, Dv) / V chunks spread over kL = 8, 16 or 32 lanes, then
/// 2 or 4 chunks per lane on 32 lanes.
inline void decode_lanes(const AttnProblem& p, int* kl, int* nc) {
  const int64_t dmax = p.D > p.Dv ? p.D : p.Dv;
  const int64_t n = (dmax + decode_vec(p.dtype) - 1) / decode_vec(p.dtype);
  *kl = n <= 8 ? 8 : n <= 16 ? 16 : 32;
  *nc = n <= 32 ? 1 : n <= 64 ? 2 : 4;
}

/// The kernel's rows per block kR (4 or 8: 8 unless 4 rows suffice or 8 exceed the register budget).
inline int decode_rows(const AttnProblem& p) {
  int kl = 0, nc = 0;
  decode_lanes(p, &kl, &nc);
  const int acc_bytes = p.dtype == DType::Float64 ? 8 : 4;
  return p.Sq * p.group() <= 4 || 8 * nc * decode_vec(p.dtype) * acc_bytes > dec_reg_bytes(acc_bytes) ? 4 : 8;
}

/// Whether the decode kernel takes problem p (attention only; the rest runs on the SIMT kernel).
inline bool decode_supported(const AttnProblem& p) {
  if (p.sparse || p.Hkv <= 0 || p.Hq % p.Hkv != 0) return false;
  if (p.Sq < 1 || p.Sq > kDecMaxRows || p.Sq * p.group() > kDecMaxRows) return false;
  if (p.D < 1 || p.Dv < 1 || p.D > 256 || p.Dv > 256) return false;
  if (p.B * p.Hkv > (int64_t{1} << 20)) return false;  // grid: B * Hkv * nsplit * nrc blocks
  const int vec = decode_vec(p.dtype);
  if (p.D % vec != 0 || p.Dv % vec != 0) return false;
  const ViewN<4>* ops[2] = {&p.k, &p.v};
  for (const ViewN<4>* v : ops) {  // 16-byte aligned rows
    if (v->stride[3] != 1) return false;
    if (reinterpret_cast<uintptr_t>(v->data) % 16 != 0) return false;
    for (int d = 0; d < 3; ++d)
      if (v->stride[d] % vec != 0 && v->shape[d] > 1) return false;
  }
  int kl = 0, nc = 0;
  decode_lanes(p, &kl, &nc);
  const int acc_bytes = p.dtype == DType::Float64 ? 8 : 4;
  return decode_rows(p) * nc * vec * acc_bytes <= dec_reg_bytes(acc_bytes);
}

/// Splits: about 1024 blocks (4-8 waves of a large GPU) of at least 256 keys; depends on the shapes only.
inline DecodeGeom decode_geometry(const AttnProblem& p) {
  DecodeGeom g;
  const int64_t bh = p.B * p.Hkv > 0 ? p.B * p.Hkv : 1;
  const int64_t want = (1024 + bh - 1) / bh;
  int64_t per = (p.Sk + want - 1) / want;
  per = (per + 63) / 64 * 64;
  if (per < 256) per = 256;
  g.split_keys = per;
  const int64_t n = (p.Sk + per - 1) / per;
  g.nsplit = static_cast<int>(n > 1 ? n : 1);
  const int kr = decode_rows(p);
  g.nrc = static_cast<int>((p.Sq * p.group() + kr - 1) / kr);
  return g;
}

template <class T, int kL, int kNC, int kR>
void launch_decode(const AttnProblem& p, const DecodeGeom& g, cudaStream_t st) {
  constexpr int acc_bytes = static_cast<int>(sizeof(acc_t<T>));
  if constexpr (kR * kNC * DecVec<T>::n * acc_bytes <= dec_reg_bytes(acc_bytes)) {
    const int64_t blocks = p.B * p.Hkv * g.nsplit * g.nrc;
    decode_kernel<T, kL, kNC, kR><<<static_cast<unsigned>(blocks), kDecThreads, 0, st>>>(p, g);
    ATTNKIT_CUDA_CHECK_LAUNCH();
  } else {
    throw Error(ErrorKind::Runtime, "CUDA decode kernel: unsupported shape (internal)");
  }
}

template <class T, int kL, int kNC>
void launch_decode_rows(const AttnProblem& p, const DecodeGeom& g, cudaStream_t st) {
  if (decode_rows(p) == 4)
    launch_decode<T, kL, kNC, 4>(p, g, st);
  else
    launch_decode<T, kL, kNC, 8>(p, g, st);
}

/// Runs the decode kernel for storage type T (p must satisfy decode_supported); instantiated once per
/// dtype in attention_decode_<dtype>.cu.
template <class T>
void run_decode(const AttnProblem& p) {
  using A = acc_t<T>;
  if (p.empty_output()) return;
  const cudaStream_t st = as_stream(p.stream);
  DecodeGeom g = decode_geometry(p);
  const int64_t rows = p.B * p.Hq * p.Sq;
  const bool split = g.nsplit > 1;
  const SplitScratch<A> scratch(g.nsplit, rows, p.Dv, st);
  g.part_o = scratch.o;
  g.part_lse = scratch.lse;
  int kl = 0, nc = 0;
  decode_lanes(p, &kl, &nc);
  constexpr int V = DecVec<T>::n;
  if (nc == 1) {
    if (kl == 8)
      launch_decode_rows<T, 8, 1>(p, g, st);
    else if (kl == 16)
      launch_decode_rows<T, 16, 1>(p, g, st);
    else
      launch_decode_rows<T, 32, 1>(p, g, st);
  } else if constexpr (V <= 4) {  // float32 / float64: head dims over 32 * V
    if (nc == 2)
      launch_decode_rows<T, 32, 2>(p, g, st);
    else if constexpr (V <= 2)
      launch_decode_rows<T, 32, 4>(p, g, st);
  }
  if (split) {
    merge_splits_kernel<T><<<blocks_for(rows, 4), 128, 0, st>>>(p, g.part_o, g.part_lse, g.nsplit);
    ATTNKIT_CUDA_CHECK_LAUNCH();
  }
}

#define ATTNKIT_INSTANTIATE_DECODE(T) template void run_decode<T>(const AttnProblem&);

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
