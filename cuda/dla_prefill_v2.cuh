#pragma once
// The DLA prefill v4 kernels' constants, shared-memory layout and block reduction (dla_prefill_v2.cu and
// dla_prefill_v4.cuh hold the kernels; tests/cuda_emu/test_dla_v2.cpp emulates them on the host).

#include "cuda/dla_common.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
namespace dla {
namespace v2 {

/// Rows per thread of the readout, state rows per thread of the state update, Gram tile edge.
constexpr int kRt = 8;
constexpr int kDt = 8;
constexpr int kTg = 4;

/// x[0 .. kRt) = src[0 .. kRt): src is 32-byte aligned in shared memory (float: two 16-byte loads; the
/// whole warp usually reads the same address, a broadcast).
__device__ __forceinline__ void load_rows(const float* src, float (&x)[kRt]) {
  static_assert(kRt == 8 && kDt == 8, "two float4 per row group");
  const float4 a = reinterpret_cast<const float4*>(src)[0], b = reinterpret_cast<const float4*>(src)[1];
  x[0] = a.x;
  x[1] = a.y;
  x[2] = a.z;
  x[3] = a.w;
  x[4] = b.x;
  x[5] = b.y;
  x[6] = b.z;
  x[7] = b.w;
}
__device__ __forceinline__ void load_rows(const double* src, double (&x)[kRt]) {
#pragma unroll
  for (int a = 0; a < kRt; ++a) x[a] = src[a];
}

/// Elements [0, n) of a block-strided loop, kLb per thread at a time: load(idx) for all of them first (loads in
/// flight together), then store(idx, value) in the same order (the chunk loads).
constexpr int kLb = 4;
template <class Load, class Store>
__device__ __forceinline__ void batched(int64_t n, int tid, int nth, Load load, Store store) {
  using X = decltype(load(int64_t(0)));
  for (int64_t i0 = tid; i0 < n; i0 += static_cast<int64_t>(kLb) * nth) {
    X x[kLb] = {};
#pragma unroll
    for (int a = 0; a < kLb; ++a) {
      const int64_t idx = i0 + static_cast<int64_t>(a) * nth;
      if (idx < n) x[a] = load(idx);
    }
#pragma unroll
    for (int a = 0; a < kLb; ++a) {
      const int64_t idx = i0 + static_cast<int64_t>(a) * nth;
      if (idx < n) store(idx, x[a]);
    }
  }
}

/// The shared-memory layout of one block (byte offsets) and its global scratch (state slots).
struct Lay {
  int64_t L, LP, C, Dk, Dv, ns, ncol;
  std::size_t smem, gbytes;
  std::size_t QT, KT, Kc, VT, Vc, Suf, QK, lamc, Win, uni;  // R or double
  std::size_t G, eG, er, fj, cp, a2, Bv, Ac, ratio, red;                         // double
  std::size_t decj, info;                                                        // R
  std::size_t slot, count, start, unit, in_slot, free_;                          // int64
  std::size_t snap_unit, snap_m, anyU, death, rowOpen, rowMerged;                // int32
  std::size_t rowI;                                                              // R
};

/// part (v4's passes C1 and C2 only; 0 everywhere else): 1 leaves out the score arrays (Suf and the K S_open /
/// score-table union: size 0, their offsets alias the next array, never used), 2 also K row-major and V^T (the
/// readout pass C2: Q K^T from Q^T and K^T, y from V row-major), so that two C2 blocks fit on an SM.
inline Lay make_lay(const DLAProblem& p, std::size_t rsize, int64_t ns, int part = 0) {
  Lay l{};
  l.L = p.chunk_size > 0 ? p.chunk_size : kDefaultChunk;
  if (l.L > p.T) l.L = p.T > 0 ? p.T : 1;
  // Row stride of the transposed chunk arrays: whole row groups of kRt, plus 4 so that the transposing
  // stores of step 1 (consecutive d, stride LP) spread over the banks (4-way instead of 32-way conflicts),
  // while every row group stays 16-byte aligned for load_rows.
  l.LP = (l.L + kRt - 1) / kRt * kRt + 4;
  l.C = p.C;
  l.Dk = p.Dk;
  l.Dv = p.Dv;
  l.ncol = (p.Dv + ns - 1) / ns;
  l.ns = (p.Dv + l.ncol - 1) / l.ncol;
  const std::size_t L = static_cast<std::size_t>(l.L), LP = static_cast<std::size_t>(l.LP);
  const std::size_t C = static_cast<std::size_t>(p.C), Dk = static_cast<std::size_t>(p.Dk);
  const std::size_t Dv = static_cast<std::size_t>(p.Dv);
  std::size_t used = 0;
  auto take = [&](std::size_t n, std::size_t esize) {
    const std::size_t at = used;
    used += (n * esize + 15) / 16 * 16;
    return at;
  };
  l.QT = take(Dk * LP, rsize);
  l.KT = take(Dk * LP, rsize);
  l.Kc = take(part == 2 ? 0 : L * Dk, rsize);
  l.VT = take(part == 2 ? 0 : Dv * LP, rsize);
  l.Vc = take(L * Dv, rsize);
  l.Suf = take(part > 0 ? 0 : L * LP, sizeof(double));
  l.QK = take(L * LP, rsize);
  l.lamc = take(L * C, rsize);
  l.Win = take(L * C, rsize);
  // A union: K S_open (double, step 2), then the score table (double, steps 2b-3).
  std::size_t ks = L * Dv * sizeof(double);
  if (ks < L * LP * sizeof(double)) ks = L * LP * sizeof(double);
  l.uni = take(part > 0 ? 0 : ks, 1);
  l.G = take(L, sizeof(double));
  l.eG = take(L, sizeof(double));
  l.er = take(L, sizeof(double));
  l.fj = take(L, sizeof(double));
  l.cp = take(L, sizeof(double));
  l.a2 = take(L, sizeof(double));
  l.Bv = take(L, sizeof(double));
  l.Ac = take(L, sizeof(double));
  l.ratio = take(C, sizeof(double));
  l.red = take(kThreads, sizeof(double));
  l.decj = take(L, rsize);
  l.info = take(C, rsize);
  l.slot = take(C, sizeof(int64_t));
  l.count = take(C, sizeof(int64_t));
  l.start = take(C, sizeof(int64_t));
  l.unit = take(C, sizeof(int64_t));
  l.in_slot = take(C, sizeof(int64_t));
  l.free_ = take(C, sizeof(int64_t));
  l.snap_unit = take(L * C, sizeof(int32_t));
  l.snap_m = take(L, sizeof(int32_t));
  l.death = take(C + L, sizeof(int32_t));
  l.rowOpen = take(L, sizeof(int32_t));
  l.rowMerged = take(L, sizeof(int32_t));
  l.rowI = take(L, rsize);
  l.anyU = take(C, sizeof(int32_t));
  l.smem = used;
  l.gbytes = (C * Dk * Dv * rsize + 255) / 256 * 256;
  if (l.gbytes == 0) l.gbytes = 256;
  return l;
}

/// The sum of x over the block (any block size) in a fixed tree; every thread gets it. Synchronizes.
__device__ __forceinline__ double block_total(double x, double* sh) {
  const int tid = static_cast<int>(threadIdx.x), n = static_cast<int>(blockDim.x);
  sh[tid] = x;
  __syncthreads();
  int s = 1;
  while (s < n) s <<= 1;
  for (s >>= 1; s > 0; s >>= 1) {
    if (tid < s && tid + s < n) sh[tid] += sh[tid + s];
    __syncthreads();
  }
  const double r = sh[0];
  __syncthreads();
  return r;
}

}  // namespace v2
}  // namespace dla
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
