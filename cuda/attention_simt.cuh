#pragma once
// The SIMT exact-attention kernel: every dtype, any head dim, every contract feature (causal bottom-right,
// windows, key_lengths, mask, bias, ALiBi, softcap, GQA, LSE, block-sparse layouts, explicit per-row key
// ranges), attention_weights, and the split-KV form for decoding. The tensor-core kernel
// (attention_mma.cuh) takes float16 / bfloat16 problems it supports; everything else runs here.
//
// Work. A warp owns one item: kRows "lanes" (query row, query head) of one (batch, kv head) and one query
// block, lane f of the block mapping to row f / Gp, head group * Gp + f % Gp as on the CPU, so GQA heads
// share every K/V load. The warp walks the keys the lanes may see (the union of their ranges, clipped to
// the layout's allowed key blocks and to the item's split) 32 at a time, warp lane t holding key j0 + t:
//   scores: K chunk transposed through shared memory (coalesced loads), dot products along D in
//           chunks of 32 dimensions, then the score terms (math/masks.h) and the online softmax
//           (math/softmax.h) with warp-shuffle max and sum in a fixed butterfly order;
//   values: each warp lane owns kNV output elements (a slice of Dv: grid.z runs the slices), and adds
//           p * v for the chunk's keys, V rows read coalesced. A masked key (score -inf) is skipped, so a
//           non-finite value behind a mask never reaches the output (as on the CPU).
// Splits (grid.y): a split handles a contiguous share of the keys and writes its normalised partial output
// and LSE to scratch; merge_splits_kernel (attention_split.cuh) merges the splits in order with the merge
// rule. Everything is deterministic: each output element is produced by one thread in a fixed order.

#include <cstdint>

#include "cuda/attention_split.cuh"
#include "cuda/attention_terms.cuh"
#include "cuda/workspace.cuh"

namespace attnkit {
namespace detail {
namespace cuda {

/// What the SIMT kernel writes.
enum class SimtMode : int { Attend = 0, Split = 1, Stats = 2, Weights = 3 };

/// Geometry shared by the host launcher and the kernel.
struct SimtGeom {
  int64_t Gp;        // query heads packed per item (G, or 1 for per-head layouts)
  int64_t groups;    // Hq / Gp
  int64_t qblock;    // query rows per block (Sq, or the layout's bq)
  int64_t nqblocks;  // ceil(Sq / qblock)
  int64_t tiles;     // items per query block
  int64_t items;     // B * groups * nqblocks * tiles
  int64_t split_keys;  // keys per split (multiple of 32); Sk rounded up when not split
  int nsplit;
  // Split scratch: partial outputs [nsplit][B*Hq*Sq][Dv] and LSEs [nsplit][B*Hq*Sq] (accumulator type);
  // Weights: per-row max and 1/sum from the Stats pass, [B*Hq*Sq] each.
  void* part_o = nullptr;
  void* part_lse = nullptr;
};

constexpr int kSimtRows = 4;    // lanes per warp item
constexpr int kSimtWarps = 4;   // warps per block

template <class A>
__device__ __forceinline__ A warp_max(A x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const A y = __shfl_xor_sync(0xffffffffu, x, o);
    x = y > x ? y : x;
  }
  return x;
}
template <class A>
__device__ __forceinline__ A warp_sum(A x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

/// The SIMT kernel; kNV output elements per warp lane (Dv slice of 32 * kNV).
template <class T, int kNV, SimtMode kMode>
__global__ void __launch_bounds__(32 * kSimtWarps, 1) exact_simt_kernel(const AttnProblem p, const SimtGeom g) {
  using A = acc_t<T>;
  constexpr int R = kSimtRows;
  __shared__ A kt_all[kSimtWarps][32][33];  // K chunk, transposed: kt[d][key]
  __shared__ A qs_all[kSimtWarps][R][32];   // q chunk of each lane
  const int warp = threadIdx.x / 32, t = threadIdx.x % 32;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kSimtWarps + warp;
  if (item >= g.items) return;
  A(*kt)[33] = kt_all[warp];
  A(*qs)[32] = qs_all[warp];
  const int split = blockIdx.y;
  const int64_t dv0 = static_cast<int64_t>(blockIdx.z) * 32 * kNV;

  // Item -> (b, group, query block, first lane).
  const int64_t per_bg = g.nqblocks * g.tiles;
  const int64_t bg = item / per_bg, k = item % per_bg;
  const int64_t b = bg / g.groups, group = bg % g.groups;
  const int64_t qb = k / g.tiles;
  const int64_t f0 = (k % g.tiles) * R;
  const int64_t row0 = qb * g.qblock;
  const int64_t rows_here = (p.Sq - row0) < g.qblock ? (p.Sq - row0) : g.qblock;
  const int64_t G = p.Hkv ? p.Hq / p.Hkv : 1;
  const int64_t hkv = group * g.Gp / G;
  const int nl = static_cast<int>((rows_here * g.Gp - f0) < R ? (rows_here * g.Gp - f0) : R);
  if (nl <= 0) return;

  const int64_t kv_len = valid_keys(p, b);

  int32_t row[R], head[R], lo[R], hi[R];  // validated sizes fit in 32 bits per dimension
  A slope[R], m[R], l[R];
  int64_t ulo = INT64_MAX, uhi = INT64_MIN;  // union of the lanes' ranges
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t f = f0 + (r < nl ? r : 0);
    row[r] = static_cast<int32_t>(row0 + f / g.Gp);
    head[r] = static_cast<int32_t>(group * g.Gp + f % g.Gp);
    math::KeyRange kr = row_keys(p, b, head[r], row[r], kv_len);
    if (r >= nl) kr = {0, 0};
    lo[r] = static_cast<int32_t>(kr.lo);
    hi[r] = static_cast<int32_t>(kr.hi);
    if (kr.hi > kr.lo) {
      ulo = kr.lo < ulo ? kr.lo : ulo;
      uhi = kr.hi > uhi ? kr.hi : uhi;
    }
    slope[r] = alibi_slope<A>(p, b, head[r]);
    m[r] = math::neg_inf<A>();
    l[r] = A(0);
  }
  // This split's share of the keys.
  {
    const int64_t s_lo = static_cast<int64_t>(split) * g.split_keys, s_hi = s_lo + g.split_keys;
    ulo = ulo > s_lo ? ulo : s_lo;
    uhi = uhi < s_hi ? uhi : s_hi;
  }

  const T* qbase = static_cast<const T*>(p.q.data) + b * p.q.stride[0];
  const T* kbase = static_cast<const T*>(p.k.data) + b * p.k.stride[0] + hkv * p.k.stride[1];
  const T* vbase = kMode == SimtMode::Attend || kMode == SimtMode::Split
                       ? static_cast<const T*>(p.v.data) + b * p.v.stride[0] + hkv * p.v.stride[1]
                       : nullptr;
  const ScoreTerms<A> terms(p);

  A acc[R][kNV];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int e = 0; e < kNV; ++e) acc[r][e] = A(0);

  // Weights pass 2: the statistics of pass 1, and every row written whole (zeros first).
  A w_off[R], w_inv[R];
  if (kMode == SimtMode::Weights) {
    const A* mx = static_cast<const A*>(g.part_o);
    const A* inv = static_cast<const A*>(g.part_lse);
    #pragma unroll
    for (int r = 0; r < R; ++r) {
      const int64_t o = (b * p.Hq + head[r]) * p.Sq + row[r];
      w_off[r] = math::softmax_offset<A, A>(mx[o]);
      w_inv[r] = inv[o];
      if (r < nl) {
        T* dst = static_cast<T*>(p.out) + b * p.out_stride[0] + head[r] * p.out_stride[1] + row[r] * p.out_stride[2];
        for (int64_t j = t; j < p.Sk; j += 32) dst[j * p.out_stride[3]] = from_acc<T>(A(0));
      }
    }
    __syncwarp();
  }

  // Visit the keys: the union of the lanes' ranges (clipped to the split), and for block-sparse attention
  // only the layout's allowed key blocks of this query block (runs of consecutive blocks), in increasing
  // key order, in chunks of jn <= 32 keys starting at j0. (One loop, no lambdas: a call the compiler does
  // not inline would spill the accumulators.)
  int64_t e = 0, e_end = uhi > ulo ? 1 : 0;
  if (p.sparse && e_end) {
    const int64_t rr = (p.layout.heads > 1 ? head[0] : 0) * p.layout.nqb + qb;
    e = p.layout.row_ptr[rr];
    e_end = p.layout.row_ptr[rr + 1];
  }
  while (e < e_end) {
    int64_t a = ulo, z = uhi;
    if (p.sparse) {
      const int32_t* col = p.layout.col_idx;
      int64_t e2 = e + 1;
      while (e2 < e_end && col[e2] == col[e2 - 1] + 1) ++e2;
      const int64_t ba = static_cast<int64_t>(col[e]) * p.layout.bk;
      const int64_t bz = static_cast<int64_t>(col[e2 - 1] + 1) * p.layout.bk;
      a = ba > ulo ? ba : ulo;
      z = bz < uhi ? bz : uhi;
      e = e2;
    } else {
      e = e_end;
    }
  for (int64_t j0 = a; j0 < z; j0 += 32) {
    const int jn = static_cast<int>((z - j0) < 32 ? (z - j0) : 32);
    A s[R];
#pragma unroll
    for (int r = 0; r < R; ++r) s[r] = A(0);
    const int64_t j = j0 + t;
    for (int64_t d0 = 0; d0 < p.D; d0 += 32) {
      const int64_t d = d0 + t;
      __syncwarp();
      #pragma unroll 8
      for (int jj = 0; jj < 32; ++jj)
        kt[t][jj] = (jj < jn && d < p.D) ? to_acc<A>(kbase[(j0 + jj) * p.k.stride[2] + d * p.k.stride[3]]) : A(0);
#pragma unroll
      for (int r = 0; r < R; ++r)
        qs[r][t] = (d < p.D) ? to_acc<A>(qbase[head[r] * p.q.stride[1] + row[r] * p.q.stride[2] + d * p.q.stride[3]])
                             : A(0);
      __syncwarp();
      const int dn = (p.D - d0) < 32 ? static_cast<int>(p.D - d0) : 32;
      for (int dd = 0; dd < dn; ++dd) {
        const A kd = kt[dd][t];
#pragma unroll
        for (int r = 0; r < R; ++r) s[r] += qs[r][dd] * kd;
      }
    }
    const bool valid = t < jn;
    const A ninf = math::neg_inf<A>();
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const bool in = valid && j >= lo[r] && j < hi[r];
      s[r] = in ? terms(p, b, head[r], row[r], j, s[r], slope[r]) : ninf;
    }
    if constexpr (kMode == SimtMode::Weights) {
      if (valid) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
          if (r >= nl) continue;
          T* dst = static_cast<T*>(p.out) + b * p.out_stride[0] + head[r] * p.out_stride[1] + row[r] * p.out_stride[2];
          const A pr = s[r] == ninf ? A(0) : kexp(s[r] - w_off[r]) * w_inv[r];
          dst[j * p.out_stride[3]] = from_acc<T>(pr);
        }
      }
    } else {
    // Which (lane, key) pairs are allowed: a masked key's value is never read, so a non-finite value
    // behind a mask cannot reach the output (an allowed key whose probability underflows to 0 still
    // multiplies its value, as on the CPU).
    unsigned live[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      live[r] = __ballot_sync(0xffffffffu, s[r] != ninf);
      const A m_new = math::softmax_new_max(m[r], warp_max(s[r]));
      const A off = math::softmax_offset<A, A>(m_new);
      const A alpha = kexp(math::softmax_rescale_arg<A, A>(m[r], m_new));
      const A pr = s[r] == ninf ? A(0) : kexp(s[r] - off);
      l[r] = l[r] * alpha + warp_sum(pr);
      m[r] = m_new;
      s[r] = pr;
      if constexpr (kMode != SimtMode::Stats)
#pragma unroll
        for (int e = 0; e < kNV; ++e) acc[r][e] *= alpha;
    }
    if constexpr (kMode != SimtMode::Stats) {
    for (int jj = 0; jj < jn; ++jj) {
      A vv[kNV];
#pragma unroll
      for (int e = 0; e < kNV; ++e) {
        const int64_t dv = dv0 + t + 32 * e;
        vv[e] = dv < p.Dv ? to_acc<A>(vbase[(j0 + jj) * p.v.stride[2] + dv * p.v.stride[3]]) : A(0);
      }
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const A pj = __shfl_sync(0xffffffffu, s[r], jj);
        if ((live[r] >> jj) & 1u)
#pragma unroll
          for (int e = 0; e < kNV; ++e) acc[r][e] += pj * vv[e];
      }
    }
    }
    }
  }
  }

  // Finalise.
  if constexpr (kMode == SimtMode::Weights) return;
  const int64_t rows_total = p.B * p.Hq * p.Sq;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    if (r >= nl) continue;
    const int64_t ro = (b * p.Hq + head[r]) * p.Sq + row[r];
    if (kMode == SimtMode::Stats) {
      if (t == 0) {
        static_cast<A*>(g.part_o)[ro] = m[r];
        static_cast<A*>(g.part_lse)[ro] = math::softmax_out_scale(m[r], l[r]);
      }
      continue;
    }
    const A sc = math::softmax_out_scale(m[r], l[r]);
    if (kMode == SimtMode::Split) {
      A* po = static_cast<A*>(g.part_o) + (split * rows_total + ro) * p.Dv;
#pragma unroll
      for (int e = 0; e < kNV; ++e) {
        const int64_t dv = dv0 + t + 32 * e;
        if (dv < p.Dv) po[dv] = acc[r][e] * sc;
      }
      if (t == 0 && blockIdx.z == 0) static_cast<A*>(g.part_lse)[split * rows_total + ro] = math::softmax_lse(m[r], l[r]);
      continue;
    }
    T* dst = static_cast<T*>(p.out) + b * p.out_stride[0] + head[r] * p.out_stride[1] + row[r] * p.out_stride[2];
#pragma unroll
    for (int e = 0; e < kNV; ++e) {
      const int64_t dv = dv0 + t + 32 * e;
      if (dv < p.Dv) dst[dv * p.out_stride[3]] = from_acc<T>(acc[r][e] * sc);
    }
    if (p.lse && t == 0 && blockIdx.z == 0)
      static_cast<A*>(p.lse)[b * p.lse_stride[0] + head[r] * p.lse_stride[1] + row[r] * p.lse_stride[2]] =
          math::softmax_lse(m[r], l[r]);
  }
}

/// The item geometry of problem p (the same tiling rules as the CPU kernel).
inline SimtGeom simt_geometry(const AttnProblem& p) {
  SimtGeom g;
  const int64_t G = p.Hkv ? p.Hq / p.Hkv : 1;
  g.Gp = (p.sparse && p.layout.heads > 1) ? 1 : G;
  g.groups = p.Hq / g.Gp;
  g.qblock = p.sparse ? p.layout.bq : (p.Sq > 0 ? p.Sq : 1);
  g.nqblocks = (p.Sq + g.qblock - 1) / g.qblock;
  const int64_t lanes = (g.qblock < p.Sq ? g.qblock : p.Sq) * g.Gp;
  g.tiles = (lanes + kSimtRows - 1) / kSimtRows;
  g.items = p.B * g.groups * g.nqblocks * g.tiles;
  g.nsplit = 1;
  g.split_keys = (p.Sk + 31) / 32 * 32 + 32;
  return g;
}

/// Splits the keys when there are too few items to fill the GPU (decoding): about 4096 warps in flight,
/// at least 256 keys per split. Depends on the shapes only, so results do not depend on the device.
inline void choose_splits(const AttnProblem& p, SimtGeom& g) {
  const int64_t want = (4096 + g.items - 1) / (g.items > 0 ? g.items : 1);
  const int64_t most = (p.Sk + 255) / 256;
  int64_t n = want < most ? want : most;
  if (n > 1024) n = 1024;
  if (n <= 1) return;
  const int64_t per = ((p.Sk + n - 1) / n + 31) / 32 * 32;
  g.split_keys = per;
  g.nsplit = static_cast<int>((p.Sk + per - 1) / per);
}

template <class T, int kNV>
void launch_simt_nv(const AttnProblem& p, const SimtGeom& g, cudaStream_t st, bool split) {
  const dim3 grid(blocks_for(g.items, kSimtWarps), static_cast<unsigned>(g.nsplit),
                  static_cast<unsigned>((p.Dv + 32 * kNV - 1) / (32 * kNV) > 0 ? (p.Dv + 32 * kNV - 1) / (32 * kNV) : 1));
  if (split)
    exact_simt_kernel<T, kNV, SimtMode::Split><<<grid, 32 * kSimtWarps, 0, st>>>(p, g);
  else
    exact_simt_kernel<T, kNV, SimtMode::Attend><<<grid, 32 * kSimtWarps, 0, st>>>(p, g);
  ATTNKIT_CUDA_CHECK_LAUNCH();
}

/// Runs the SIMT kernel for storage type T (attention, or attention_weights); instantiated once per dtype
/// in attention_simt_<dtype>.cu.
template <class T>
void run_simt(const AttnProblem& p, bool weights) {
  using A = acc_t<T>;
  if (p.empty_output()) return;
  const cudaStream_t st = as_stream(p.stream);
  SimtGeom g = simt_geometry(p);
  const int64_t rows = p.B * p.Hq * p.Sq;
  if (weights) {
    Workspace ws(sizeof(A) * 2 * static_cast<std::size_t>(rows), st);
    g.part_o = ws.as<A>();
    g.part_lse = ws.as<A>() + rows;
    const dim3 grid(blocks_for(g.items, kSimtWarps), 1, 1);
    exact_simt_kernel<T, 1, SimtMode::Stats><<<grid, 32 * kSimtWarps, 0, st>>>(p, g);
    ATTNKIT_CUDA_CHECK_LAUNCH();
    exact_simt_kernel<T, 1, SimtMode::Weights><<<grid, 32 * kSimtWarps, 0, st>>>(p, g);
    ATTNKIT_CUDA_CHECK_LAUNCH();
    return;
  }
  choose_splits(p, g);
  const bool split = g.nsplit > 1;
  const SplitScratch<A> scratch(g.nsplit, rows, p.Dv, st);
  g.part_o = scratch.o;
  g.part_lse = scratch.lse;
  // Dv slices of at most 256 elements (128 for float64, whose accumulators take twice the registers).
  constexpr bool kWide = sizeof(A) == 4;
  if (p.Dv <= 32)
    launch_simt_nv<T, 1>(p, g, st, split);
  else if (p.Dv <= 64)
    launch_simt_nv<T, 2>(p, g, st, split);
  else if (p.Dv <= 128 || !kWide)
    launch_simt_nv<T, 4>(p, g, st, split);
  else if constexpr (kWide)
    launch_simt_nv<T, 8>(p, g, st, split);
  if (split) {
    merge_splits_kernel<T><<<blocks_for(rows, 4), 128, 0, st>>>(p, g.part_o, g.part_lse, g.nsplit);
    ATTNKIT_CUDA_CHECK_LAUNCH();
  }
}

#define ATTNKIT_INSTANTIATE_SIMT(T) template void run_simt<T>(const AttnProblem&, bool);

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
