#pragma once
// The flash-decoding kernel, version 2 (internal name "attention_decode_v2" in cuda/runtime.cu: used only
// where has_kernel() enables it, else the v1 kernel of attention_decode.cuh runs). float16 / bfloat16,
// Sq * G <= 8 rows per kv head (G = Hq / Hkv), head dims up to 256, every dense contract feature (the score
// terms, key ranges and the per-row data are v1's: ScoreTerms, row_keys, valid_keys).
//
// Same work split and reduction structure as v1 (read its comment first): one block per (batch, kv head,
// split, row chunk), lane groups of kL lanes, each group owning U consecutive keys per step, q / the
// accumulators in registers, the group combine in shared memory in group order, splits merged in split
// order. What changes, for bandwidth (decoding reads every K/V byte once; v1 reached 18-44% of an H100's
// 3350 GB/s):
//   * prefetch: each step issues the 16-byte loads of its NEXT step's K/V rows before computing the current
//     one (register double buffer), so loads stay in flight while the scores / softmax / p * v run;
//   * U (keys per group and step, 1, 2 or 4: more loads in flight per thread, one accumulator rescale per
//     U keys) is a template parameter chosen at run time (tuning "cuda_decode_keys");
//   * the per-step score reduction is a reduce-scatter butterfly: the N = U * kR partial dot products of a
//     lane are halved at each of the first log2(N) xor rounds (a lane keeps the half its partner does not),
//     so lane li of a group ends with the full sum of pair index li / (kL / N) (N - 1 + log2(kL / N)
//     shuffles instead of N * log2(kL)); every lane sharing an index holds the same bits (xor butterfly);
//     that lane evaluates the pair's score terms, then N shuffles give every lane every score (as in v1);
//   * the split count follows from a target grid size (tuning "cuda_decode_blocks"), from the problem's
//     shapes only (never the device or a timing);
//   * the split merge runs one warp per (row, 32 output dims), its loads unrolled (merge2_kernel below);
//   * the split scratch (SplitScratch, as v1) comes from Workspace's pool, which keeps its memory between calls.
// Defaults: ATTNKIT_CUDA_DECODE="keys,blocks" (read once per process, e.g. "4,2048"), else kDec2Keys /
// kDec2Blocks below; the tuning options (attnkit._core.set_tuning) override both. bench/bench_gpu.py
// --quick sweeps them (decode_sweep_rows).

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "cpp/src/tuning.h"
#include "cuda/attention_decode.cuh"

namespace attnkit {
namespace detail {
namespace cuda {

constexpr int kDec2MaxRows = 8;     // rows (Sq * G) per kv head served by v2
constexpr int kDec2Keys = 4;        // default U (clamped to kL / kR)
constexpr int kDec2Blocks = 512;    // default target grid size (the H100 sweep's best with U = 4)
constexpr int kDec2MaxPairs = 16;   // U * kR at most (registers: 8 rows take U <= 2)

/// Blocks per SM the registers must allow: 3 (at most 170 registers) for 4 rows and U <= 2, else 2 (255).
__host__ __device__ constexpr int dec2_min_blocks(int rows, int keys) { return rows <= 4 && keys <= 2 ? 3 : 2; }

template <class T, int kL, int kNC, int U>
__device__ __forceinline__ void dec2_load(uint4 (&kr)[U][kNC], uint4 (&vr)[U][kNC], const T* kb, const T* vb,
                                          const AttnProblem& p, int64_t j0, int64_t z, int li) {
  constexpr int V = DecVec<T>::n;
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int64_t j = j0 + u;
#pragma unroll
    for (int c = 0; c < kNC; ++c) {
      const int64_t d = static_cast<int64_t>(c * kL + li) * V;
      kr[u][c] = (j < z && d < p.D) ? __ldg(reinterpret_cast<const uint4*>(kb + j * p.k.stride[2] + d))
                                    : make_uint4(0u, 0u, 0u, 0u);
      vr[u][c] = (j < z && d < p.Dv) ? __ldg(reinterpret_cast<const uint4*>(vb + j * p.v.stride[2] + d))
                                     : make_uint4(0u, 0u, 0u, 0u);
    }
  }
}

/// v2 kernel: kL lanes per key (8, 16, 32), kNC 16-byte chunks per lane and row, kR rows (4 or 8), U keys
/// per group and step (U * kR <= kL).
template <class T, int kL, int kNC, int kR, int U>
__global__ void __launch_bounds__(kDecThreads, dec2_min_blocks(kR, U)) decode2_kernel(const AttnProblem p, const DecodeGeom g) {
  using A = acc_t<T>;
  static_assert(sizeof(A) == 4, "decode v2: float16 / bfloat16 only");
  constexpr int V = DecVec<T>::n;
  constexpr int E = kNC * V;           // elements per lane and row
  constexpr int kGW = 32 / kL;         // lane groups per warp
  constexpr int kG = kDecWarps * kGW;  // lane groups per block
  constexpr int DP = kL * E;           // dims held by a group
  constexpr int N = U * kR;            // (key, row) pairs per group and step
  constexpr int kSpread = kL / N;      // lanes sharing one pair after the reduce-scatter
  static_assert(N <= kL && kL % N == 0 && N <= kDec2MaxPairs, "decode v2: one score pair per lane");
  static_assert(kR * E * static_cast<int>(sizeof(A)) <= dec_reg_bytes(sizeof(A)), "decode v2: registers");
  __shared__ A s_acc[kG * kR * DP];  // = kDecThreads * kR * E
  __shared__ A s_m[kG][kR], s_l[kG][kR], s_w[kG][kR];
  __shared__ A s_sc[kR], s_slope[kR];
  __shared__ int32_t s_lo[kR], s_hi[kR], s_h[kR], s_i[kR];
  __shared__ int64_t s_a, s_z;

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int li = lane % kL, gi = warp * kGW + lane / kL;
  const int64_t blk = blockIdx.x / g.nrc;
  const int rchunk = static_cast<int>(blockIdx.x % g.nrc);
  const int split = static_cast<int>(blk % g.nsplit);
  const int64_t bh = blk / g.nsplit;
  const int64_t hkv = bh % p.Hkv, b = bh / p.Hkv;
  const int64_t G = p.Hq / p.Hkv;
  const int r0 = rchunk * kR;
  const int R = static_cast<int>(p.Sq * G - r0) < kR ? static_cast<int>(p.Sq * G - r0) : kR;
  const A ninf = math::neg_inf<A>();

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
    const int64_t ka = ulo > s_lo_k ? ulo : s_lo_k, kz = uhi < s_hi_k ? uhi : s_hi_k;
    s_a = ka < kz ? ka : 0;  // an empty range as [0, 0): no key index ever overflows
    s_z = ka < kz ? kz : 0;
  }

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
  // The pair this lane holds after the reduce-scatter, and that row's data.
  const int group_lane0 = lane - li, my_idx = li / kSpread, my_u = my_idx / kR, my_r = my_idx % kR;
  const int64_t my_lo = s_lo[my_r], my_hi = s_hi[my_r], my_h = s_h[my_r], my_i = s_i[my_r];
  const A my_slope = s_slope[my_r];

  constexpr int64_t kStep = static_cast<int64_t>(kG) * U;  // keys per block and step
  const int64_t joff = static_cast<int64_t>(lane / kL) * U;
  int64_t jw = a + static_cast<int64_t>(warp) * kGW * U;
  uint4 ck[U][kNC], cv[U][kNC];  // this step's K / V chunks
  dec2_load<T, kL, kNC, U>(ck, cv, kb, vb, p, jw + joff, z, li);

  // Warp-uniform loop (the shuffles need every lane); keys past z are not loaded and score -inf.
#pragma unroll 1
  for (; jw < z; jw += kStep) {
    const int64_t j0 = jw + joff;
    uint4 nk[U][kNC], nv[U][kNC];  // the next step's, in flight during this step's arithmetic
    dec2_load<T, kL, kNC, U>(nk, nv, kb, vb, p, j0 + kStep, z, li);
    // Partial dot products: pair index n = u * kR + r.
    A s[N];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      A kf[E];
#pragma unroll
      for (int c = 0; c < kNC; ++c) DecVec<T>::cvt(ck[u][c], kf + c * V);
#pragma unroll
      for (int r = 0; r < kR; ++r) {
        A x = A(0);
#pragma unroll
        for (int e = 0; e < E; ++e) x += q[r][e] * kf[e];
        s[u * kR + r] = x;
      }
    }
    // Reduce-scatter over the group's lanes: round o halves the values held (n -> n / 2); the lane whose
    // bit o is set keeps the upper half. Then plain butterfly rounds over the kSpread lanes of a pair.
    {
      int n = N;
#pragma unroll
      for (int o = kL / 2; o > 0; o >>= 1) {
        if (n > 1) {
          const int half = n / 2;
          const bool up = (li & o) != 0;
#pragma unroll
          for (int t = 0; t < N / 2; ++t)
            if (t < half) {
              const A keep = up ? s[half + t] : s[t];
              const A send = up ? s[t] : s[half + t];
              s[t] = keep + __shfl_xor_sync(0xffffffffu, send, o);
            }
          n = half;
        } else {
          s[0] += __shfl_xor_sync(0xffffffffu, s[0], o);
        }
      }
    }
    // Score terms of this lane's pair, then every lane gets every pair's score.
    A sc[U][kR];
    {
      const int64_t j = j0 + my_u;
      const bool in = j < z && j >= my_lo && j < my_hi;
      const A x = in ? terms(p, b, my_h, my_i, j, s[0], my_slope) : ninf;
#pragma unroll
      for (int u = 0; u < U; ++u)
#pragma unroll
        for (int r = 0; r < kR; ++r) sc[u][r] = __shfl_sync(0xffffffffu, x, group_lane0 + (u * kR + r) * kSpread);
    }
    unsigned live = 0;
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int r = 0; r < kR; ++r)
        if (sc[u][r] != ninf) live |= 1u << (u * kR + r);
    // Online softmax (per group, one rescale per step), then p * v for the live pairs.
#pragma unroll
    for (int r = 0; r < kR; ++r) {
      A mx = m[r];
#pragma unroll
      for (int u = 0; u < U; ++u) mx = sc[u][r] > mx ? sc[u][r] : mx;
      const A off = math::softmax_offset<A, A>(mx);
      const A alpha = kexp(math::softmax_rescale_arg<A, A>(m[r], mx));
      A psum = A(0);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        sc[u][r] = sc[u][r] == ninf ? A(0) : kexp(sc[u][r] - off);
        psum += sc[u][r];
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
      for (int c = 0; c < kNC; ++c) DecVec<T>::cvt(cv[u][c], vf + c * V);
#pragma unroll
      for (int r = 0; r < kR; ++r)
        if ((live >> (u * kR + r)) & 1u)
#pragma unroll
          for (int e = 0; e < E; ++e) acc[r][e] += sc[u][r] * vf[e];
    }
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int c = 0; c < kNC; ++c) {
        ck[u][c] = nk[u][c];
        cv[u][c] = nv[u][c];
      }
  }

  // Combine the groups in group order (as v1).
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

/// Merges the splits (split order, the merge rule of math/softmax.h, as merge_splits_kernel) with one warp
/// per (row, 32 output dims): warp w serves row w / nd, dims (w % nd) * 32 + lane, nd = ceil(Dv / 32).
/// The LSE is written by lane 0 of each row's first warp. Dv >= 1.
/// (The body is merge2_body, which decode v3's merge3_kernel shares.)
template <class T>
__device__ __forceinline__ void merge2_body(const AttnProblem& p, const void* part_o, const void* part_lse, int nsplit) {
  using A = acc_t<T>;
  const int64_t rows_total = p.B * p.Hq * p.Sq;
  const int64_t nd = (p.Dv + 31) / 32;
  const int64_t w = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (w >= rows_total * nd) return;
  const int64_t ro = w / nd, dv = (w % nd) * 32 + threadIdx.x % 32;
  const A* plse = static_cast<const A*>(part_lse);
  const A* po = static_cast<const A*>(part_o);
  A mx = math::neg_inf<A>(), sum = A(0), acc = A(0);
#pragma unroll 4
  for (int s = 0; s < nsplit; ++s) {
    const A x = dv < p.Dv ? po[(s * rows_total + ro) * p.Dv + dv] : A(0);
    A wp;
    const A r = math::merge_step(mx, sum, plse[s * rows_total + ro], &wp);
    acc = acc * r + (wp == A(0) ? A(0) : wp * x);
  }
  const int64_t i = ro % p.Sq, h = (ro / p.Sq) % p.Hq, b = ro / (p.Sq * p.Hq);
  if (dv < p.Dv)
    static_cast<T*>(p.out)[b * p.out_stride[0] + h * p.out_stride[1] + i * p.out_stride[2] + dv * p.out_stride[3]] =
        from_acc<T>(acc * math::merge_scale(mx, sum));
  if (dv == 0 && p.lse)
    static_cast<A*>(p.lse)[b * p.lse_stride[0] + h * p.lse_stride[1] + i * p.lse_stride[2]] = math::merge_lse(mx, sum);
}

template <class T>
__global__ void merge2_kernel(const AttnProblem p, const void* part_o, const void* part_lse, int nsplit) {
  merge2_body<T>(p, part_o, part_lse, nsplit);
}

// ------------------------------------------------------------------------------------------------ host
/// Whether v2 takes problem p (p must already satisfy decode_supported): float16 / bfloat16, at most
/// kDec2MaxRows rows per kv head (one row chunk of 4 or 8 rows).
inline bool decode2_supported(const AttnProblem& p) {
  if (p.dtype != DType::Float16 && p.dtype != DType::BFloat16) return false;
  return p.Sq * p.group() <= kDec2MaxRows;
}

struct Dec2Choice {
  int keys;        // U requested (1, 2, 4), clamped to kL / kR per problem
  int64_t blocks;  // target grid size
};

/// The variant: tuning options cuda_decode_keys / cuda_decode_blocks when set (non-zero), else
/// ATTNKIT_CUDA_DECODE="keys,blocks" (read once per process; either part may be left out or 0), else
/// kDec2Keys / kDec2Blocks. Values out of range are ignored.
inline Dec2Choice decode2_choice() {
  static const Dec2Choice env = [] {
    Dec2Choice c{kDec2Keys, kDec2Blocks};
    const char* e = std::getenv("ATTNKIT_CUDA_DECODE");
    if (!e) return c;
    char* end = nullptr;
    const long long k = std::strtoll(e, &end, 10);
    if (end != e && (k == 1 || k == 2 || k == 4)) c.keys = static_cast<int>(k);
    const char* comma = std::strchr(e, ',');
    if (comma) {
      const long long bl = std::strtoll(comma + 1, &end, 10);
      if (end != comma + 1 && bl >= 64 && bl <= 65536) c.blocks = bl;
    }
    return c;
  }();
  Dec2Choice c = env;
  const int64_t tk = tuning().cuda_decode_keys.load();
  const int64_t tb = tuning().cuda_decode_blocks.load();
  if (tk == 1 || tk == 2 || tk == 4) c.keys = static_cast<int>(tk);
  if (tb >= 64 && tb <= 65536) c.blocks = tb;
  return c;
}

/// v2's rows per block: 4 when 4 suffice, else 8 (float16 / bfloat16 hold 8 rows of up to 256 dims).
inline int decode2_rows(const AttnProblem& p) { return p.Sq * p.group() <= 4 ? 4 : 8; }

/// Splits for a grid of about `target` blocks: at least 256 keys each (a multiple of 64); from the shapes
/// and the chosen target only.
inline DecodeGeom decode2_geometry(const AttnProblem& p, int64_t target) {
  DecodeGeom g;
  const int kr = decode2_rows(p);
  g.nrc = static_cast<int>((p.Sq * p.group() + kr - 1) / kr);
  const int64_t bhr = p.B * p.Hkv * g.nrc > 0 ? p.B * p.Hkv * g.nrc : 1;
  const int64_t want = (target + bhr - 1) / bhr;
  int64_t per = (p.Sk + want - 1) / want;
  per = (per + 63) / 64 * 64;
  if (per < 256) per = 256;
  g.split_keys = per;
  const int64_t n = (p.Sk + per - 1) / per;
  g.nsplit = static_cast<int>(n > 1 ? n : 1);
  return g;
}

template <class T, int kL, int kR, int U>
void launch_decode2(const AttnProblem& p, const DecodeGeom& g, cudaStream_t st) {
  if constexpr (U * kR <= kL && U * kR <= kDec2MaxPairs) {
    const int64_t blocks = p.B * p.Hkv * g.nsplit * g.nrc;
    decode2_kernel<T, kL, 1, kR, U><<<static_cast<unsigned>(blocks), kDecThreads, 0, st>>>(p, g);
    ATTNKIT_CUDA_CHECK_LAUNCH();
  } else {
    throw Error(ErrorKind::Runtime, "CUDA decode kernel v2: unsupported shape (internal)");
  }
}

template <class T, int kL, int kR>
void launch_decode2_keys(const AttnProblem& p, const DecodeGeom& g, int keys, cudaStream_t st) {
  if (keys >= 4)
    launch_decode2<T, kL, kR, 4>(p, g, st);
  else if (keys == 2)
    launch_decode2<T, kL, kR, 2>(p, g, st);
  else
    launch_decode2<T, kL, kR, 1>(p, g, st);
}

template <class T, int kL>
void launch_decode2_rows(const AttnProblem& p, const DecodeGeom& g, int keys, cudaStream_t st) {
  if (decode2_rows(p) == 4)
    launch_decode2_keys<T, kL, 4>(p, g, keys, st);
  else
    launch_decode2_keys<T, kL, 8>(p, g, keys, st);
}

/// Runs v2 for storage type T (p must satisfy decode_supported and decode2_supported); instantiated once
/// per dtype in attention_decode2_<dtype>.cu.
template <class T>
void run_decode2(const AttnProblem& p) {
  using A = acc_t<T>;
  if (p.empty_output()) return;
  const cudaStream_t st = as_stream(p.stream);
  const Dec2Choice choice = decode2_choice();
  DecodeGeom g = decode2_geometry(p, choice.blocks);
  const int64_t rows = p.B * p.Hq * p.Sq;
  const SplitScratch<A> scratch(g.nsplit, rows, p.Dv, st);
  g.part_o = scratch.o;
  g.part_lse = scratch.lse;
  int kl = 0, nc = 0;
  decode_lanes(p, &kl, &nc);
  if (nc != 1) throw Error(ErrorKind::Runtime, "CUDA decode kernel v2: unsupported head dim (internal)");
  const int kr = decode2_rows(p);
  int keys = choice.keys;
  // One score pair per lane (U * kR <= kL) and the register budget (U * kR <= kDec2MaxPairs).
  while (keys > 1 && (keys * kr > kl || keys * kr > kDec2MaxPairs)) keys /= 2;
  if (kl == 8)
    launch_decode2_rows<T, 8>(p, g, keys, st);
  else if (kl == 16)
    launch_decode2_rows<T, 16>(p, g, keys, st);
  else
    launch_decode2_rows<T, 32>(p, g, keys, st);
  if (g.nsplit > 1) {
    const int64_t warps = rows * ((p.Dv + 31) / 32);
    merge2_kernel<T><<<blocks_for(warps, 4), 128, 0, st>>>(p, g.part_o, g.part_lse, g.nsplit);
    ATTNKIT_CUDA_CHECK_LAUNCH();
  }
}

#define ATTNKIT_INSTANTIATE_DECODE2(T) template void run_decode2<T>(const AttnProblem&);

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
