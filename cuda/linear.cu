// Kernelized linear attention and Performer (FAVOR+) on the GPU: the semantics of cpu/linear_kernel.h (its
// file comment explains the chunked causal form and Performer's stabilizer), with the meaning of every
// feature map and stabilizer step from attnkit/math/feature_maps.h.
//
// Work mapping (deterministic: every value is summed by one thread in a fixed order, nothing depends on
// the launch configuration): the features of all rows first (kernels parallel over rows; Performer's
// projection x' W^T by a shared-memory tiled product), then the states and outputs by tiled products
// parallel over (b, head, chunk, tile). Causal: chunk increments phi(K_c)^T V_c, an exclusive scan over the
// chunks in order per state element (the CPU's S = S r + increment), then per chunk the outputs from the
// state before it plus the masked intra-chunk scores (see the "causal, parallel" section). Bidirectional:
// the state over all allowed keys, then out = phi(Q) S (see the "bidirectional" section). Workspace holds
// the features of all rows (and, causal, the state before every chunk).
// Chunk length: p.chunk, else the CPU's defaults (32 causal, 128 bidirectional), so the stabilizer's rescale
// points are the CPU's. Keys j >= key_lengths[b] are never read.
#include <algorithm>
#include <cmath>

#include "attnkit/math/feature_maps.h"
#include "cpp/src/backend.h"
#include "cuda/common.cuh"
#include "cuda/workspace.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kDefaultCausalChunk = 32;          // cpu/linear_kernel.h kDefaultLinearChunk
constexpr int64_t kDefaultBidirectionalChunk = 128;  // cpu/linear_kernel.h kDefaultBidirectionalChunk

struct DevExp {
  __host__ __device__ float operator()(float x) const { return expf(x); }
  __host__ __device__ double operator()(double x) const { return exp(x); }
};

struct LinArgs {
  int64_t B, Hq, Hkv, S, Sk, D, Dv, F, G, C;
  const void* q;
  const void* k;
  const void* v;
  int64_t qs[4], ks[4], vs[4];
  void* out;
  int64_t os[4];
  LinearMap map;
  bool proj, stab, normalize;
  double eps, half_log_m;  // ln(m) / 2
  double half_scale;       // scale / 2: |x'|^2 / 2 = half_scale * |x|^2
  const void* wS;          // Performer: [F][D] of A, sqrt(scale) W
  const void* len;         // key_lengths or null
  DType len_dtype;
  int64_t len_stride;
  const void* s_in;        // [B, Hkv, F, Dv] of A, or null
  int64_t sis[4];
  const void* z_in;
  int64_t zis[3];
  void* s_out;             // or null
  int64_t sos[4];
  void* z_out;
  int64_t zos[3];
  void* states;            // bidirectional: [B * Hkv][F * Dv + F] of A
};

__device__ __forceinline__ int64_t key_count(const LinArgs& a, int64_t b) {
  return a.len ? load_int(a.len, a.len_dtype, b * a.len_stride) : a.Sk;
}

/// Feature f of row x (elements x[d * xs]) before Performer softmax's exp: the elementwise map, or the
/// projection w_f . x' (ReLU features get their map here; softmax features are finished by the caller).
template <class T, class A>
__device__ __forceinline__ A feature(const LinArgs& a, const T* x, int64_t xs, int64_t f) {
  if (!a.proj) {
    const A v = to_acc<A>(x[f * xs]);
    if (a.map == LinearMap::Elu1) return math::phi_elu1(v, DevExp());
    if (a.map == LinearMap::Relu) return math::phi_relu(v);
    return v;
  }
  const A* w = static_cast<const A*>(a.wS) + f * a.D;
  A s = A(0);
  for (int64_t d = 0; d < a.D; ++d) s += w[d] * to_acc<A>(x[d * xs]);
  return a.stab ? s : math::performer_relu<A>(s);
}

template <class T, class A>
__device__ __forceinline__ void store_out(const LinArgs& a, int64_t b, int64_t h, int64_t t, int64_t d, A o, A den) {
  const A r = a.normalize ? math::linear_output(o, den, static_cast<A>(a.eps)) : o;
  static_cast<T*>(a.out)[b * a.os[0] + h * a.os[1] + t * a.os[2] + d * a.os[3]] = from_acc<T, A>(r);
}

// ----------------------------------------------------------------------------------------- bidirectional
//
// Parallel over all rows and state elements, every sum by one thread in a fixed order:
//   features_kernel   raw features of every allowed key row / every query row into workspace, rows x F:
//                     Performer projections x' . w_f by a shared-memory tiled product (ReLU finished in
//                     place), or the elementwise map;
//   key_stats_kernel  (softmax features) per key row |k'|^2/2 and the largest exponent;
//   key_max_kernel    (softmax features) per (b, hkv) the running maximum over the allowed keys in key
//                     order (the CPU's c after its last chunk, and c after its first chunk, whose rescale
//                     factor exp(-inf - c) multiplies state_in);
//   key_exp_kernel    (softmax features) phi(k) relative to the final maximum: exp(e - |k'|^2/2 - c - ln(m)/2)
//                     (the CPU reaches the same value through per-key c_j and chunk rescales: rounding only);
//   z_part_kernel     partial sums of phi(k_j)_f over fixed segments of kZSeg keys, keys in order;
//   z_kernel          z[f] = z_in r0 + the partial sums in segment order, one thread per (b, hkv, f);
//   state_kernel      S = S_in r0 + phi(K)^T V by tiles of F x Dv, keys in order; writes state_out;
//   query_den_kernel  (queries) the softmax map with the row's maximum, and den = phi(q) . z per row;
//   out_kernel        out = phi(Q) S by tiles of rows x Dv, features in order, divided by den + eps.

constexpr int kTM = 64, kTN = 64, kTK = 16;  // tile of the products; 16 x 16 threads of 4 x 4 outputs

/// C[m][n] = sum_k la(m, k) lb(k, n) over the TM x TN tile at (m0, n0) (TM, TN: 16, 32 or 64; 16 x 16
/// virtual threads of TM / 16 x TN / 16 outputs), k in increasing order, handed to
/// st(m, n, value) (m < M, n < N only). Operands are read only inside [0, M) x [0, K) and [0, K) x [0, N).
/// kAK / kBK: the operand is contiguous along k (chooses the coalesced load order). Any block size: with
/// fewer than 256 threads the 256 virtual threads are taken in passes. Every thread must call it.
template <class A, int TM, int TN, bool kAK, bool kBK, class LA, class LB, class ST>
__device__ __forceinline__ void tile_product(int64_t M, int64_t N, int64_t K, int64_t m0, int64_t n0, LA la, LB lb,
                                             ST st) {
  constexpr int RM = TM / 16, RN = TN / 16, kVT = 256;
  __shared__ A As[kTK][TM];
  __shared__ A Bs[kTK][TN];
  const int nt = static_cast<int>(blockDim.x), tid = static_cast<int>(threadIdx.x);
  for (int vt0 = 0; vt0 < kVT; vt0 += nt) {
    const int vt = vt0 + tid;
    const bool active = vt < kVT;
    const int ty = vt / 16, tx = vt % 16;
    A acc[RM][RN];
#pragma unroll
    for (int r = 0; r < RM; ++r)
#pragma unroll
      for (int c = 0; c < RN; ++c) acc[r][c] = A(0);
    for (int64_t k0 = 0; k0 < K; k0 += kTK) {
      for (int i = tid; i < kTK * TM; i += nt) {
        const int kk = kAK ? i % kTK : i / TM, mm = kAK ? i / kTK : i % TM;
        As[kk][mm] = (m0 + mm < M && k0 + kk < K) ? la(m0 + mm, k0 + kk) : A(0);
      }
      for (int i = tid; i < kTK * TN; i += nt) {
        const int kk = kBK ? i % kTK : i / TN, nn = kBK ? i / kTK : i % TN;
        Bs[kk][nn] = (n0 + nn < N && k0 + kk < K) ? lb(k0 + kk, n0 + nn) : A(0);
      }
      __syncthreads();
      if (active) {
        for (int kk = 0; kk < kTK; ++kk) {
          A av[RM], bv[RN];
#pragma unroll
          for (int r = 0; r < RM; ++r) av[r] = As[kk][ty + 16 * r];
#pragma unroll
          for (int c = 0; c < RN; ++c) bv[c] = Bs[kk][tx + 16 * c];
#pragma unroll
          for (int r = 0; r < RM; ++r)
#pragma unroll
            for (int c = 0; c < RN; ++c) acc[r][c] += av[r] * bv[c];
        }
      }
      __syncthreads();
    }
    if (active) {
#pragma unroll
      for (int r = 0; r < RM; ++r)
#pragma unroll
        for (int c = 0; c < RN; ++c) {
          const int64_t m = m0 + ty + 16 * r, n = n0 + tx + 16 * c;
          if (m < M && n < N) st(m, n, acc[r][c]);
        }
    }
  }
}

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t n, int64_t d) { return (n + d - 1) / d; }

/// Rows of a feature matrix: row m = (bh * L + t) of a [B, H, L, .] operand; t >= lim(b) (keys beyond
/// key_lengths) are neither read nor written.
struct RowSet {
  const void* x;
  int64_t xs[4];
  int64_t H, L;
  bool keys;  // limit by key_lengths
};

template <class T>
__device__ __forceinline__ const T* row_of(const RowSet& r, int64_t m) {
  const int64_t t = m % r.L, bh = m / r.L;
  return static_cast<const T*>(r.x) + (bh / r.H) * r.xs[0] + (bh % r.H) * r.xs[1] + t * r.xs[2];
}

__device__ __forceinline__ bool row_allowed(const LinArgs& a, const RowSet& r, int64_t m) {
  return !r.keys || m % r.L < key_count(a, m / r.L / r.H);
}

/// Raw features [rows][F] of A: softmax projections, ReLU features finished, elementwise maps applied.
template <class T>
__global__ void features_kernel(const LinArgs a, const RowSet r, void* out_) {
  using A = acc_t<T>;
  A* out = static_cast<A*>(out_);
  const int64_t F = a.F, D = a.D, rows = a.B * r.H * r.L;
  if (!a.proj) {
    const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < rows * F; i += step) {
      const int64_t m = i / F, f = i % F;
      if (row_allowed(a, r, m)) out[i] = feature<T, A>(a, row_of<T>(r, m), r.xs[3], f);
    }
    return;
  }
  // The tile's row pointers and whether each row is allowed, found once per tile (no divisions per load;
  // a flag rather than null: an empty operand may have a null data pointer).
  __shared__ const T* rp[kTM];
  __shared__ bool rok[kTM];
  const A* wS = static_cast<const A*>(a.wS);
  const int64_t mt = ceil_div(rows, kTM), nt = ceil_div(F, kTN);
  for (int64_t tile = blockIdx.x; tile < mt * nt; tile += gridDim.x) {
    const int64_t m0 = (tile / nt) * kTM, n0 = (tile % nt) * kTN;
    for (int64_t i = threadIdx.x; i < kTM; i += blockDim.x) {
      rok[i] = m0 + i < rows && row_allowed(a, r, m0 + i);
      rp[i] = rok[i] ? row_of<T>(r, m0 + i) : nullptr;
    }
    __syncthreads();
    tile_product<A, kTM, kTN, true, true>(
        rows, F, D, m0, n0,
        [&](int64_t m, int64_t d) {
          return rok[m - m0] ? to_acc<A>(rp[m - m0][d * r.xs[3]]) : A(0);
        },
        [&](int64_t d, int64_t f) { return wS[f * D + d]; },
        [&](int64_t m, int64_t f, A s) {
          if (rok[m - m0]) out[m * F + f] = a.stab ? s : math::performer_relu<A>(s);
        });
    __syncthreads();  // rp, rok are rewritten for the next tile
  }
}

/// Softmax features, per allowed key row: hK = |k'|^2/2 and mK = max_f (e_f - hK) (as the CPU's order).
template <class T>
__global__ void key_stats_kernel(const LinArgs a, const RowSet r, const void* e_, void* hK_, void* mK_) {
  using A = acc_t<T>;
  const A* e = static_cast<const A*>(e_);
  A* hK = static_cast<A*>(hK_);
  A* mK = static_cast<A*>(mK_);
  const int64_t F = a.F, rows = a.B * r.H * r.L;
  const A half_scale = static_cast<A>(a.half_scale);
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t m = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; m < rows; m += step) {
    if (!row_allowed(a, r, m)) continue;
    const T* kr = row_of<T>(r, m);
    A sq = A(0);
    for (int64_t d = 0; d < a.D; ++d) {
      const A x = to_acc<A>(kr[d * r.xs[3]]);
      sq += x * x;
    }
    const A half_sq = sq * half_scale;
    A mx = math::neg_inf<A>();
    for (int64_t f = 0; f < F; ++f) mx = math::softmax_new_max(mx, math::favor_key_exponent(e[m * F + f], half_sq));
    hK[m] = half_sq;
    mK[m] = mx;
  }
}

/// Running maximum (favor_running_max) of x[0, L) in key order by the whole block, written back in place
/// when `write` (x[j] = max of x[0..j]); returns the maximum of all. Each thread takes a contiguous
/// segment, thread 0 the segments' exclusive prefix. The maximum is exact in any grouping and NaN never
/// enters it (x > c is false for NaN), so the values are the sequential loop's. part: kThreads + 1 shared.
template <class A>
__device__ __forceinline__ A block_running_max(A* x, int64_t L, bool write, A* part) {
  const int64_t nt = blockDim.x, seg = ceil_div(L, nt), j0 = threadIdx.x * seg;
  const int64_t j1 = j0 + seg < L ? j0 + seg : L;
  A m = math::neg_inf<A>();
  for (int64_t j = j0; j < j1; ++j) m = math::favor_running_max(m, x[j]);
  part[threadIdx.x] = m;
  __syncthreads();
  if (threadIdx.x == 0) {
    A c = math::neg_inf<A>();
    for (int64_t t = 0; t < nt; ++t) {
      const A v = part[t];
      part[t] = c;
      c = math::favor_running_max(c, v);
    }
    part[nt] = c;
  }
  __syncthreads();
  if (write) {
    A c = part[threadIdx.x];
    for (int64_t j = j0; j < j1; ++j) x[j] = c = math::favor_running_max(c, x[j]);
  }
  const A total = part[nt];
  __syncthreads();  // part is reused by the caller's next call
  return total;
}

/// Softmax features, one block per (b, hkv): cs[2 item] = running maximum after all allowed keys,
/// cs[2 item + 1] = after the CPU's first chunk (C keys).
template <class T>
__global__ void key_max_kernel(const LinArgs a, void* mK_, void* cs_) {
  using A = acc_t<T>;
  __shared__ A part[kThreads + 1];
  A* mK = static_cast<A*>(mK_);
  A* cs = static_cast<A*>(cs_);
  for (int64_t item = blockIdx.x; item < a.B * a.Hkv; item += gridDim.x) {
    const int64_t L = key_count(a, item / a.Hkv);
    const A c = block_running_max(mK + item * a.Sk, L, false, part);
    const A c1 = block_running_max(mK + item * a.Sk, a.C < L ? a.C : L, false, part);
    if (threadIdx.x == 0) {
      cs[2 * item] = c;
      cs[2 * item + 1] = c1;
    }
  }
}

/// Softmax features: phi(k) = exp(e - (hK + c) - ln(m)/2) in place, c the final maximum of the sequence.
/// Causal (per_key): relative to the key's own running maximum cK[m] (cs_ = cK), as the CPU's features.
template <class T>
__global__ void key_exp_kernel(const LinArgs a, const RowSet r, void* e_, const void* hK_, const void* cs_,
                               bool per_key) {
  using A = acc_t<T>;
  A* e = static_cast<A*>(e_);
  const A* hK = static_cast<const A*>(hK_);
  const A* cs = static_cast<const A*>(cs_);
  const int64_t F = a.F, rows = a.B * r.H * r.L;
  const A hlm = static_cast<A>(a.half_log_m);
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < rows * F; i += step) {
    const int64_t m = i / F;
    if (row_allowed(a, r, m)) e[i] = DevExp()(math::favor_feature_arg(e[i], hK[m] + (per_key ? cs[m] : cs[2 * (m / r.L)]), hlm));
  }
}

/// Factor of state_in: the CPU rescales it from c = -inf to c after its first chunk (when there are keys).
template <class A>
__device__ __forceinline__ A state_in_factor(const LinArgs& a, const A* cs, int64_t item, int64_t L) {
  if (!a.stab || L == 0) return A(1);
  return DevExp()(math::favor_rescale_arg<A, A>(math::neg_inf<A>(), cs[2 * item + 1]));
}

constexpr int64_t kZSeg = 256;  // keys per partial sum of z (a fixed split: no launch dependence)

/// zp[item][seg][f] = sum of phi(k_j)_f over the allowed keys of segment seg (kZSeg keys), keys in order.
template <class T>
__global__ void z_part_kernel(const LinArgs a, const void* phiK_, void* zp_, int64_t nseg) {
  using A = acc_t<T>;
  const A* phiK = static_cast<const A*>(phiK_);
  A* zp = static_cast<A*>(zp_);
  const int64_t F = a.F;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < a.B * a.Hkv * nseg * F;
       i += step) {
    const int64_t f = i % F, is = i / F, seg = is % nseg, item = is / nseg;
    const int64_t L = key_count(a, item / a.Hkv), j0 = seg * kZSeg;
    const int64_t j1 = j0 + kZSeg < L ? j0 + kZSeg : L;
    const A* ph = phiK + item * a.Sk * F + f;
    A s = A(0);
    for (int64_t j = j0; j < j1; ++j) s += ph[j * F];
    zp[i] = s;
  }
}

/// z of every (b, hkv) = z_in r0 + the partial sums in segment order, into a.states and z_out.
template <class T>
__global__ void z_kernel(const LinArgs a, const void* zp_, const void* cs_, int64_t nseg) {
  using A = acc_t<T>;
  const A* zp = static_cast<const A*>(zp_);
  const A* cs = static_cast<const A*>(cs_);
  const int64_t F = a.F, Dv = a.Dv;
  const A* zi = static_cast<const A*>(a.z_in);
  A* zo = static_cast<A*>(a.z_out);
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < a.B * a.Hkv * F; i += step) {
    const int64_t item = i / F, f = i % F, b = item / a.Hkv, hkv = item % a.Hkv;
    const int64_t L = key_count(a, b);
    A z = zi ? zi[b * a.zis[0] + hkv * a.zis[1] + f * a.zis[2]] : A(0);
    const A r0 = state_in_factor(a, cs, item, L);
    if (r0 != A(1)) z *= r0;
    A s = A(0);
    for (int64_t seg = 0; seg < nseg; ++seg) s += zp[(item * nseg + seg) * F + f];
    z += s;
    static_cast<A*>(a.states)[item * (F * Dv + F) + F * Dv + f] = z;
    if (zo) zo[b * a.zos[0] + hkv * a.zos[1] + f * a.zos[2]] = z;
  }
}

/// S of every (b, hkv) = S_in r0 + phi(K)^T V into a.states and state_out, by F x Dv tiles.
template <class T>
__global__ void state_kernel(const LinArgs a, const void* phiK_, const void* cs_) {
  using A = acc_t<T>;
  const A* phiK = static_cast<const A*>(phiK_);
  const A* cs = static_cast<const A*>(cs_);
  const int64_t F = a.F, Dv = a.Dv;
  const int64_t mt = ceil_div(F, kTM), nt = ceil_div(Dv, kTN), per = mt * nt;
  const A* si = static_cast<const A*>(a.s_in);
  A* so = static_cast<A*>(a.s_out);
  for (int64_t tile = blockIdx.x; tile < a.B * a.Hkv * per; tile += gridDim.x) {
    const int64_t item = tile / per, b = item / a.Hkv, hkv = item % a.Hkv;
    const int64_t m0 = (tile % per) / nt * kTM, n0 = (tile % per) % nt * kTN;
    const int64_t L = key_count(a, b);
    const A r0 = state_in_factor(a, cs, item, L);
    const A* ph = phiK + item * a.Sk * F;
    const T* v = static_cast<const T*>(a.v) + b * a.vs[0] + hkv * a.vs[1];
    A* S = static_cast<A*>(a.states) + item * (F * Dv + F);
    tile_product<A, kTM, kTN, false, false>(
        F, Dv, L, m0, n0, [&](int64_t f, int64_t j) { return ph[j * F + f]; },
        [&](int64_t j, int64_t d) { return to_acc<A>(v[j * a.vs[2] + d * a.vs[3]]); },
        [&](int64_t f, int64_t d, A s) {
          A x = si ? si[b * a.sis[0] + hkv * a.sis[1] + f * a.sis[2] + d * a.sis[3]] : A(0);
          if (r0 != A(1)) x *= r0;
          x += s;
          S[f * Dv + d] = x;
          if (so) so[b * a.sos[0] + hkv * a.sos[1] + f * a.sos[2] + d * a.sos[3]] = x;
        });
  }
}

/// Query rows: the softmax map with the row's own maximum (in place), then den = phi(q) . z.
/// Causal (den_ null): the map only.
template <class T>
__global__ void query_den_kernel(const LinArgs a, void* phiQ_, void* den_) {
  using A = acc_t<T>;
  A* phiQ = static_cast<A*>(phiQ_);
  A* den = static_cast<A*>(den_);
  const int64_t F = a.F, Dv = a.Dv, rows = a.B * a.Hq * a.S;
  const A hlm = static_cast<A>(a.half_log_m);
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t m = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; m < rows; m += step) {
    A* ph = phiQ + m * F;
    if (a.stab) {
      A mx = math::neg_inf<A>();
      for (int64_t f = 0; f < F; ++f) mx = math::softmax_new_max(mx, ph[f]);
      for (int64_t f = 0; f < F; ++f) ph[f] = DevExp()(math::favor_feature_arg(ph[f], mx, hlm));
    }
    if (!den) continue;
    const int64_t bh = m / a.S, item = (bh / a.Hq) * a.Hkv + (bh % a.Hq) / a.G;
    const A* z = static_cast<const A*>(a.states) + item * (F * Dv + F) + F * Dv;
    A s = A(0);
    for (int64_t f = 0; f < F; ++f) s += ph[f] * z[f];
    den[m] = s;
  }
}

/// out = phi(Q) S / (den + eps) by tiles of query rows x Dv of each (b, h).
template <class T>
__global__ void out_kernel(const LinArgs a, const void* phiQ_, const void* den_) {
  using A = acc_t<T>;
  const A* phiQ = static_cast<const A*>(phiQ_);
  const A* den = static_cast<const A*>(den_);
  const int64_t F = a.F, Dv = a.Dv;
  const int64_t mt = ceil_div(a.S, kTM), nt = ceil_div(Dv, kTN), per = mt * nt;
  for (int64_t tile = blockIdx.x; tile < a.B * a.Hq * per; tile += gridDim.x) {
    const int64_t bh = tile / per, b = bh / a.Hq, h = bh % a.Hq, item = b * a.Hkv + h / a.G;
    const int64_t m0 = (tile % per) / nt * kTM, n0 = (tile % per) % nt * kTN;
    const A* ph = phiQ + bh * a.S * F;
    const A* S = static_cast<const A*>(a.states) + item * (F * Dv + F);
    const A* dn = den + bh * a.S;
    tile_product<A, kTM, kTN, true, false>(
        a.S, Dv, F, m0, n0, [&](int64_t t, int64_t f) { return ph[t * F + f]; },
        [&](int64_t f, int64_t d) { return S[f * Dv + d]; },
        [&](int64_t t, int64_t d, A o) { store_out<T, A>(a, b, h, t, d, o, dn[t]); });
  }
}

// ------------------------------------------------------------------------------------ causal, parallel
//
// The CPU's chunked form (chunks of C from key 0), parallel over chunks; features as in the bidirectional
// form, except that softmax key features are relative to their own running maximum c_j, as on the CPU:
//   key_prefix_kernel   c_j = running maximum of the key maxima, per (b, hkv) in key order;
//   inc_kernel          per chunk its increment phi(K_c)^T V_c (and colsum phi(K_c)), each key brought from
//                       c_j to c_end of the chunk first (F x Dv tiles, keys in order);
//   scan_kernel         per state element, chunks in order: P_c = the state before chunk c, then
//                       S = S r + inc_c with r = exp(c_prev - c_end) (the CPU's rescale_state then
//                       state_update), in place over the increments; writes state_out;
//   scores_kernel       per chunk A = phi(Q_c) phi(K_c)^T (j <= t), times exp(c_j - c_t);
//   causal_den_kernel   per row r_t = exp(c_prev - c_t), den = (phi(q_t) . z_c) r_t + sum_j A[t][j];
//   causal_out_kernel   per chunk (phi(Q_c) P_c) r_t + sum_{j <= t} A[t][j] v_j (rows x Dv tiles).
// c_t = c at key min(t, L - 1) (-inf without keys); c_prev of chunk c = c at key min(j0, L) - 1.

__device__ __forceinline__ int64_t chunk_keys(int64_t j0, int64_t C, int64_t S, int64_t L) {
  const int64_t tn = C < S - j0 ? C : S - j0;
  const int64_t kn = L - j0 < tn ? L - j0 : tn;
  return kn < 0 ? 0 : kn;
}

template <class A>
__device__ __forceinline__ A c_at(const A* cK, int64_t n) {  // c after the first n keys of the item
  return n > 0 ? cK[n - 1] : math::neg_inf<A>();
}

/// c_j in place of the key maxima, one block per (b, hkv).
template <class T>
__global__ void key_prefix_kernel(const LinArgs a, void* cK_) {
  using A = acc_t<T>;
  __shared__ A part[kThreads + 1];
  A* cK = static_cast<A*>(cK_);
  for (int64_t item = blockIdx.x; item < a.B * a.Hkv; item += gridDim.x)
    block_running_max(cK + item * a.Sk, key_count(a, item / a.Hkv), true, part);
}

/// inc[item][c] = [F][Dv] then [F] of chunk c. Blocks: (item, chunk, F tile, Dv tile); the Dv tile 0
/// also sums z.
template <class T>
__global__ void inc_kernel(const LinArgs a, const void* phiK_, const void* cK_, void* inc_, int64_t nch) {
  using A = acc_t<T>;
  const A* phiK = static_cast<const A*>(phiK_);
  const A* cKall = static_cast<const A*>(cK_);
  A* inc = static_cast<A*>(inc_);
  const int64_t F = a.F, Dv = a.Dv, E = F * Dv + F;
  const int64_t mt = ceil_div(F, kTM), nt = ceil_div(Dv, kTN) > 0 ? ceil_div(Dv, kTN) : 1, per = mt * nt;
  for (int64_t tile = blockIdx.x; tile < a.B * a.Hkv * nch * per; tile += gridDim.x) {
    const int64_t ic = tile / per, item = ic / nch, c = ic % nch, b = item / a.Hkv, hkv = item % a.Hkv;
    const int64_t m0 = (tile % per) / nt * kTM, n0 = (tile % per) % nt * kTN;
    const int64_t L = key_count(a, b), j0 = c * a.C, kn = chunk_keys(j0, a.C, a.S, L);
    const A* ph = phiK + (item * a.Sk + j0) * F;
    const A* ck = a.stab ? cKall + item * a.Sk + j0 : nullptr;
    const A c_end = a.stab && kn > 0 ? ck[kn - 1] : A(0);
    const T* v = static_cast<const T*>(a.v) + b * a.vs[0] + hkv * a.vs[1] + j0 * a.vs[2];
    A* out = inc + ic * E;
    auto key = [&](int64_t j, int64_t f) {
      A x = ph[j * F + f];
      if (a.stab && ck[j] != c_end) x *= DevExp()(ck[j] - c_end);
      return x;
    };
    if (Dv > 0)
      tile_product<A, kTM, kTN, false, false>(
          F, Dv, kn, m0, n0, [&](int64_t f, int64_t j) { return key(j, f); },
          [&](int64_t j, int64_t d) { return to_acc<A>(v[j * a.vs[2] + d * a.vs[3]]); },
          [&](int64_t f, int64_t d, A s) { out[f * Dv + d] = s; });
    if (n0 == 0) {
      const int64_t f1 = m0 + kTM < F ? m0 + kTM : F;
      for (int64_t f = m0 + threadIdx.x; f < f1; f += blockDim.x) {
        A s = A(0);
        for (int64_t j = 0; j < kn; ++j) s += key(j, f);
        out[F * Dv + f] = s;
      }
    }
  }
}

/// In place: inc[item][c] becomes P_c, the state before chunk c; the final state goes to state_out.
template <class T>
__global__ void scan_kernel(const LinArgs a, const void* cK_, void* inc_, int64_t nch) {
  using A = acc_t<T>;
  const A* cKall = static_cast<const A*>(cK_);
  A* inc = static_cast<A*>(inc_);
  const int64_t F = a.F, Dv = a.Dv, E = F * Dv + F;
  const A* si = static_cast<const A*>(a.s_in);
  const A* zi = static_cast<const A*>(a.z_in);
  A* so = static_cast<A*>(a.s_out);
  A* zo = static_cast<A*>(a.z_out);
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < a.B * a.Hkv * E; i += step) {
    const int64_t item = i / E, e = i % E, b = item / a.Hkv, hkv = item % a.Hkv;
    const bool is_s = e < F * Dv;
    const int64_t f = is_s ? e / Dv : e - F * Dv, d = is_s ? e % Dv : 0;
    A s = A(0);
    if (is_s && si) s = si[b * a.sis[0] + hkv * a.sis[1] + f * a.sis[2] + d * a.sis[3]];
    if (!is_s && zi) s = zi[b * a.zis[0] + hkv * a.zis[1] + f * a.zis[2]];
    const int64_t L = key_count(a, b);
    const A* ck = a.stab ? cKall + item * a.Sk : nullptr;
    A* p = inc + item * nch * E + e;
    for (int64_t c = 0; c < nch; ++c) {
      const int64_t j0 = c * a.C, kn = chunk_keys(j0, a.C, a.S, L);
      const A x = p[c * E];
      p[c * E] = s;
      if (kn == 0) continue;
      if (a.stab) {
        const A r = DevExp()(math::favor_rescale_arg<A, A>(c_at(ck, j0), ck[j0 + kn - 1]));
        if (r != A(1)) s *= r;
      }
      s += x;
    }
    if (is_s && so) so[b * a.sos[0] + hkv * a.sos[1] + f * a.sos[2] + d * a.sos[3]] = s;
    if (!is_s && zo) zo[b * a.zos[0] + hkv * a.zos[1] + f * a.zos[2]] = s;
  }
}

/// Am[row][j] (rows of phi(Q), j < C) = phi(q_t) . phi(k_j) exp(c_j - c_t) for j <= t, j < kn.
template <class T, int TM>
__global__ void scores_kernel(const LinArgs a, const void* phiQ_, const void* phiK_, const void* cK_, void* Am_,
                              int64_t nch) {
  using A = acc_t<T>;
  const A* phiQ = static_cast<const A*>(phiQ_);
  const A* phiK = static_cast<const A*>(phiK_);
  const A* cKall = static_cast<const A*>(cK_);
  A* Am = static_cast<A*>(Am_);
  const int64_t F = a.F, C = a.C;
  const int64_t mt = ceil_div(C, TM), per = mt * mt;
  for (int64_t tile = blockIdx.x; tile < a.B * a.Hq * nch * per; tile += gridDim.x) {
    const int64_t bc = tile / per, bh = bc / nch, c = bc % nch, b = bh / a.Hq, h = bh % a.Hq;
    const int64_t item = b * a.Hkv + h / a.G;
    const int64_t m0 = (tile % per) / mt * TM, n0 = (tile % per) % mt * TM;
    const int64_t L = key_count(a, b), j0 = c * C, kn = chunk_keys(j0, C, a.S, L);
    const int64_t tn = C < a.S - j0 ? C : a.S - j0;
    const A* q = phiQ + (bh * a.S + j0) * F;
    const A* k = phiK + (item * a.Sk + j0) * F;
    const A* ck = a.stab ? cKall + item * a.Sk : nullptr;
    A* out = Am + (bh * a.S + j0) * C;
    tile_product<A, TM, TM, true, true>(
        tn, kn, F, m0, n0, [&](int64_t t, int64_t f) { return q[t * F + f]; },
        [&](int64_t f, int64_t j) { return k[j * F + f]; },
        [&](int64_t t, int64_t j, A s) {
          if (j > t) return;
          if (a.stab) {
            const A ct = ck[j0 + (t < kn ? t : kn - 1)];
            if (ck[j0] != ct) s *= DevExp()(ck[j0 + j] - ct);
          }
          out[t * C + j] = s;
        });
  }
}

/// Per query row: rq = exp(c_prev - c_t) (1 unstabilized) and den = (phi(q_t) . z_c) rq + sum_{j<=t} A[t][j].
template <class T>
__global__ void causal_den_kernel(const LinArgs a, const void* phiQ_, const void* cK_, const void* P_,
                                  const void* Am_, void* den_, void* rq_, int64_t nch) {
  using A = acc_t<T>;
  const A* phiQ = static_cast<const A*>(phiQ_);
  const A* cKall = static_cast<const A*>(cK_);
  const A* P = static_cast<const A*>(P_);
  const A* Am = static_cast<const A*>(Am_);
  A* den = static_cast<A*>(den_);
  A* rqa = static_cast<A*>(rq_);
  const int64_t F = a.F, Dv = a.Dv, E = F * Dv + F, C = a.C;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t m = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; m < a.B * a.Hq * a.S; m += step) {
    const int64_t bh = m / a.S, t = m % a.S, b = bh / a.Hq, h = bh % a.Hq, item = b * a.Hkv + h / a.G;
    const int64_t c = t / C, j0 = c * C, tl = t - j0;
    const int64_t L = key_count(a, b), kn = chunk_keys(j0, C, a.S, L);
    A rq = A(1);
    if (a.stab) {
      const A* ck = cKall + item * a.Sk;
      const A cp = c_at(ck, j0 < L ? j0 : L);
      const A ct = kn > 0 ? ck[j0 + (tl < kn ? tl : kn - 1)] : cp;
      rq = DevExp()(math::favor_rescale_arg<A, A>(cp, ct));
    }
    const A* z = P + (item * nch + c) * E + F * Dv;
    const A* ph = phiQ + m * F;
    A s = A(0);
    for (int64_t f = 0; f < F; ++f) s += ph[f] * z[f];
    if (rq != A(1)) s *= rq;
    const int64_t jn = tl + 1 < kn ? tl + 1 : kn;
    A sa = A(0);
    for (int64_t j = 0; j < jn; ++j) sa += Am[m * C + j];
    den[m] = s + sa;
    rqa[m] = rq;
  }
}

/// out rows of chunk c = (phi(Q_c) P_c) rq + sum_{j <= t} A[t][j] v_j, over tiles of rows x Dv.
template <class T, int TM>
__global__ void causal_out_kernel(const LinArgs a, const void* phiQ_, const void* P_, const void* Am_,
                                  const void* den_, const void* rq_, int64_t nch) {
  using A = acc_t<T>;
  const A* phiQ = static_cast<const A*>(phiQ_);
  const A* P = static_cast<const A*>(P_);
  const A* Am = static_cast<const A*>(Am_);
  const A* den = static_cast<const A*>(den_);
  const A* rqa = static_cast<const A*>(rq_);
  const int64_t F = a.F, Dv = a.Dv, E = F * Dv + F, C = a.C;
  const int64_t mt = ceil_div(C, TM), nt = ceil_div(Dv, kTN), per = mt * nt;
  for (int64_t tile = blockIdx.x; tile < a.B * a.Hq * nch * per; tile += gridDim.x) {
    const int64_t bc = tile / per, bh = bc / nch, c = bc % nch, b = bh / a.Hq, h = bh % a.Hq;
    const int64_t item = b * a.Hkv + h / a.G, hkv = h / a.G;
    const int64_t m0 = (tile % per) / nt * TM, n0 = (tile % per) % nt * kTN;
    const int64_t L = key_count(a, b), j0 = c * C, kn = chunk_keys(j0, C, a.S, L);
    const int64_t tn = C < a.S - j0 ? C : a.S - j0;
    const int64_t row0 = bh * a.S + j0;
    const A* q = phiQ + row0 * F;
    const A* S = P + (item * nch + c) * E;
    const T* v = static_cast<const T*>(a.v) + b * a.vs[0] + hkv * a.vs[1] + j0 * a.vs[2];
    tile_product<A, TM, kTN, true, false>(
        tn, Dv, F, m0, n0, [&](int64_t t, int64_t f) { return q[t * F + f]; },
        [&](int64_t f, int64_t d) { return S[f * Dv + d]; },
        [&](int64_t t, int64_t d, A o) {
          const A rq = rqa[row0 + t];
          if (rq != A(1)) o *= rq;
          const int64_t jn = t + 1 < kn ? t + 1 : kn;
          const A* ar = Am + (row0 + t) * C;
          A s = A(0);
          for (int64_t j = 0; j < jn; ++j) s += ar[j] * to_acc<A>(v[j * a.vs[2] + d * a.vs[3]]);
          store_out<T, A>(a, b, h, j0 + t, d, o + s, den[row0 + t]);
        });
  }
}

/// wS[f][d] = sqrt(scale) * W[f][d] in A, rounded as on the CPU (the scale cast to A, then the product).
template <class A>
__global__ void scale_features_kernel(A* wS, const void* W, DType dt, int64_t s0, int64_t s1, int64_t F, int64_t D,
                                      A fs) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < F * D; i += step)
    wS[i] = fs * load_float<A>(W, dt, (i / D) * s0 + (i % D) * s1);
}

template <class T>
void run_linear(const LinearProblem& p, cudaStream_t stream) {
  using A = acc_t<T>;
  LinArgs a{};
  a.B = p.B;
  a.Hq = p.Hq;
  a.Hkv = p.Hkv;
  a.S = p.S;
  a.Sk = p.Sk;
  a.D = p.D;
  a.Dv = p.Dv;
  a.F = p.F;
  a.G = p.group();
  a.C = p.chunk > 0 ? p.chunk : (p.causal ? kDefaultCausalChunk : kDefaultBidirectionalChunk);
  a.q = p.q.data;
  a.k = p.k.data;
  a.v = p.v.data;
  for (int i = 0; i < 4; ++i) {
    a.qs[i] = p.q.stride[i];
    a.ks[i] = p.k.stride[i];
    a.vs[i] = p.v.stride[i];
    a.os[i] = p.out_stride[i];
    a.sis[i] = p.state_in.stride[i];
    a.sos[i] = p.state_out_stride[i];
  }
  for (int i = 0; i < 3; ++i) {
    a.zis[i] = p.z_in.stride[i];
    a.zos[i] = p.z_out_stride[i];
  }
  a.out = p.out;
  a.map = p.map;
  a.proj = p.projected();
  a.stab = p.stabilized();
  a.normalize = p.normalize;
  a.eps = p.eps;
  a.half_log_m = 0.5 * std::log(static_cast<double>(p.F));
  // As the CPU: sqrt(scale) and scale / 2 are each rounded once to A (from double).
  const A fs = static_cast<A>(p.feature_scale);
  a.half_scale = static_cast<double>(static_cast<A>(0.5 * p.feature_scale * p.feature_scale));
  a.len = p.key_lengths.present ? p.key_lengths.data : nullptr;
  a.len_dtype = p.key_lengths.dtype;
  a.len_stride = p.key_lengths.stride[0];
  a.s_in = p.state_in.present ? p.state_in.data : nullptr;
  a.z_in = p.state_in.present ? p.z_in.data : nullptr;
  a.s_out = p.state_out;
  a.z_out = p.z_out;

  const int64_t F = p.F, Dv = p.Dv, C = a.C;
  const int64_t wS_elems = a.proj ? F * p.D : 0;
  // Causal attention without query heads (Hq = 0) still owes state_out: the bidirectional state kernels
  // compute it (the state after all keys does not depend on the chunk boundaries beyond rounding).
  const bool causal_items = p.causal && p.Hq > 0;
  auto grid = [](int64_t blocks) { return static_cast<unsigned>(std::min<int64_t>(blocks, int64_t{1} << 20)); };
  auto feature_grid = [&](int64_t rows) {
    return grid(a.proj ? ceil_div(rows, kTM) * ceil_div(F, kTN) : ceil_div(rows * F, kThreads));
  };
  RowSet kr{};
  kr.x = p.k.data;
  kr.H = p.Hkv;
  kr.L = p.Sk;
  kr.keys = true;
  for (int i = 0; i < 4; ++i) kr.xs[i] = p.k.stride[i];
  RowSet qr{};
  qr.x = p.q.data;
  qr.H = p.Hq;
  qr.L = p.S;
  qr.keys = false;
  for (int i = 0; i < 4; ++i) qr.xs[i] = p.q.stride[i];
  if (causal_items) {
    // Workspace (A): wS, phi(K) [B Hkv Sk][F], hK, cK (softmax), P [B Hkv][nch][F Dv + F],
    // phi(Q) [B Hq S][F], Am [B Hq S][C], den, rq.
    const int64_t items = p.B * p.Hkv, krows = items * p.Sk, qrows = p.B * p.Hq * p.S;
    const int64_t nch = ceil_div(p.S, C), E = F * Dv + F;
    const int64_t stat_elems = a.stab ? krows : 0;
    const int64_t n_all = wS_elems + krows * F + 2 * stat_elems + items * nch * E + qrows * (F + C + 2);
    Workspace ws(sizeof(A) * static_cast<std::size_t>(n_all), stream);
    A* base = ws.as<A>();
    a.wS = base;
    A* phiK = base + wS_elems;
    A* hK = phiK + krows * F;
    A* cK = hK + stat_elems;
    A* P = cK + stat_elems;
    A* phiQ = P + items * nch * E;
    A* Am = phiQ + qrows * F;
    A* den = Am + qrows * C;
    A* rq = den + qrows;
    if (wS_elems > 0) {
      scale_features_kernel<A><<<blocks_for(wS_elems, kThreads), kThreads, 0, stream>>>(
          base, p.features.data, p.features.dtype, p.features.stride[0], p.features.stride[1], F, p.D, fs);
      ATTNKIT_CUDA_CHECK_LAUNCH();
    }
    if (krows > 0 && F > 0) {
      features_kernel<T><<<feature_grid(krows), kThreads, 0, stream>>>(a, kr, phiK);
      ATTNKIT_CUDA_CHECK_LAUNCH();
    }
    if (a.stab && krows > 0) {
      key_stats_kernel<T><<<grid(ceil_div(krows, kThreads)), kThreads, 0, stream>>>(a, kr, phiK, hK, cK);
      ATTNKIT_CUDA_CHECK_LAUNCH();
      key_prefix_kernel<T><<<grid(items), kThreads, 0, stream>>>(a, cK);
      ATTNKIT_CUDA_CHECK_LAUNCH();
      if (F > 0) {
        key_exp_kernel<T><<<grid(ceil_div(krows * F, kThreads)), kThreads, 0, stream>>>(a, kr, phiK, hK, cK, true);
        ATTNKIT_CUDA_CHECK_LAUNCH();
      }
    }
    const int64_t inc_blocks = items * nch * ceil_div(F, kTM) * std::max<int64_t>(ceil_div(Dv, kTN), 1);
    if (inc_blocks > 0) {
      inc_kernel<T><<<grid(inc_blocks), kThreads, 0, stream>>>(a, phiK, cK, P, nch);
      ATTNKIT_CUDA_CHECK_LAUNCH();
    }
    if (items * E > 0) {
      scan_kernel<T><<<grid(ceil_div(items * E, kThreads)), kThreads, 0, stream>>>(a, cK, P, nch);
      ATTNKIT_CUDA_CHECK_LAUNCH();
    }
    if (qrows == 0 || Dv == 0) return;
    if (F > 0) {
      features_kernel<T><<<feature_grid(qrows), kThreads, 0, stream>>>(a, qr, phiQ);
      ATTNKIT_CUDA_CHECK_LAUNCH();
      if (a.stab) {
        query_den_kernel<T><<<grid(ceil_div(qrows, kThreads)), kThreads, 0, stream>>>(a, phiQ, nullptr);
        ATTNKIT_CUDA_CHECK_LAUNCH();
      }
    }
    // Chunks of at most 32 rows (the default) take 32-row tiles, longer ones 64-row tiles.
    const bool small = C <= 32;
    const int64_t cm = ceil_div(C, small ? 32 : kTM), sc_blocks = p.B * p.Hq * nch * cm * cm;
    if (small)
      scores_kernel<T, 32><<<grid(sc_blocks), kThreads, 0, stream>>>(a, phiQ, phiK, cK, Am, nch);
    else
      scores_kernel<T, kTM><<<grid(sc_blocks), kThreads, 0, stream>>>(a, phiQ, phiK, cK, Am, nch);
    ATTNKIT_CUDA_CHECK_LAUNCH();
    causal_den_kernel<T><<<grid(ceil_div(qrows, kThreads)), kThreads, 0, stream>>>(a, phiQ, cK, P, Am, den, rq, nch);
    ATTNKIT_CUDA_CHECK_LAUNCH();
    const int64_t out_blocks = p.B * p.Hq * nch * cm * ceil_div(Dv, kTN);
    if (small)
      causal_out_kernel<T, 32><<<grid(out_blocks), kThreads, 0, stream>>>(a, phiQ, P, Am, den, rq, nch);
    else
      causal_out_kernel<T, kTM><<<grid(out_blocks), kThreads, 0, stream>>>(a, phiQ, P, Am, den, rq, nch);
    ATTNKIT_CUDA_CHECK_LAUNCH();
    return;
  }
  // Bidirectional: see the section's comment. Workspace (A): wS, states, phi(K) [B Hkv Sk][F], hK, mK,
  // cs, phi(Q) [B Hq S][F], den.
  const int64_t items = p.B * p.Hkv, krows = items * p.Sk, qrows = p.B * p.Hq * (p.causal ? 0 : p.S);
  const int64_t state_elems = items * (F * Dv + F);
  const int64_t stat_elems = a.stab ? krows : 0;
  const int64_t nseg = ceil_div(p.Sk, kZSeg), zp_elems = items * nseg * F;
  const int64_t n_all =
      wS_elems + state_elems + krows * F + 2 * stat_elems + 2 * items + qrows * F + qrows + zp_elems;
  Workspace ws(sizeof(A) * static_cast<std::size_t>(n_all), stream);
  A* base = ws.as<A>();
  a.wS = base;
  a.states = base + wS_elems;
  A* phiK = base + wS_elems + state_elems;
  A* hK = phiK + krows * F;
  A* mK = hK + stat_elems;
  A* cs = mK + stat_elems;
  A* phiQ = cs + 2 * items;
  A* den = phiQ + qrows * F;
  A* zp = den + qrows;
  if (wS_elems > 0) {
    scale_features_kernel<A><<<blocks_for(wS_elems, kThreads), kThreads, 0, stream>>>(
        base, p.features.data, p.features.dtype, p.features.stride[0], p.features.stride[1], F, p.D, fs);
    ATTNKIT_CUDA_CHECK_LAUNCH();
  }
  if (krows > 0 && F > 0) {
    features_kernel<T><<<feature_grid(krows), kThreads, 0, stream>>>(a, kr, phiK);
    ATTNKIT_CUDA_CHECK_LAUNCH();
  }
  if (a.stab) {
    if (krows > 0) {
      key_stats_kernel<T><<<grid(ceil_div(krows, kThreads)), kThreads, 0, stream>>>(a, kr, phiK, hK, mK);
      ATTNKIT_CUDA_CHECK_LAUNCH();
    }
    key_max_kernel<T><<<grid(items), kThreads, 0, stream>>>(a, mK, cs);
    ATTNKIT_CUDA_CHECK_LAUNCH();
    if (krows > 0 && F > 0) {
      key_exp_kernel<T><<<grid(ceil_div(krows * F, kThreads)), kThreads, 0, stream>>>(a, kr, phiK, hK, cs, false);
      ATTNKIT_CUDA_CHECK_LAUNCH();
    }
  }
  if (F > 0) {
    if (zp_elems > 0) {
      z_part_kernel<T><<<grid(ceil_div(zp_elems, kThreads)), kThreads, 0, stream>>>(a, phiK, zp, nseg);
      ATTNKIT_CUDA_CHECK_LAUNCH();
    }
    z_kernel<T><<<grid(ceil_div(items * F, kThreads)), kThreads, 0, stream>>>(a, zp, cs, nseg);
    ATTNKIT_CUDA_CHECK_LAUNCH();
    if (Dv > 0) {
      state_kernel<T><<<grid(items * ceil_div(F, kTM) * ceil_div(Dv, kTN)), kThreads, 0, stream>>>(a, phiK, cs);
      ATTNKIT_CUDA_CHECK_LAUNCH();
    }
  }
  if (qrows == 0 || Dv == 0) return;
  if (F > 0) {
    features_kernel<T><<<feature_grid(qrows), kThreads, 0, stream>>>(a, qr, phiQ);
    ATTNKIT_CUDA_CHECK_LAUNCH();
  }
  query_den_kernel<T><<<grid(ceil_div(qrows, kThreads)), kThreads, 0, stream>>>(a, phiQ, den);
  ATTNKIT_CUDA_CHECK_LAUNCH();
  out_kernel<T><<<grid(p.B * p.Hq * ceil_div(p.S, kTM) * ceil_div(Dv, kTN)), kThreads, 0, stream>>>(a, phiQ, den);
  ATTNKIT_CUDA_CHECK_LAUNCH();
}

}  // namespace

void linear_attention(const LinearProblem& p) {
  require_device(p.device_index);
  if (p.B == 0 || p.Hkv == 0) return;
  DeviceGuard g(p.device_index);
  const cudaStream_t stream = as_stream(p.stream);
  dispatch_float(p.dtype, [&](auto tag) { run_linear<decltype(tag)>(p, stream); });
}

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
