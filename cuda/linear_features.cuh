#pragma once
// Linear attention and Performer on the GPU (linear.cu), part 1: the arguments shared by every kernel, the
// feature maps (elementwise maps, Performer projections by the shared-memory tiled product, softmax
// features' statistics and exponentials, the query map), used by both the bidirectional
// (linear_bidirectional.cuh) and the causal (linear_causal.cuh) forms. Included by linear.cu only.

#include <cmath>
#include <cstdint>

#include "attnkit/math/feature_maps.h"
#include "cpp/src/validate/linear.h"
#include "cuda/common.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
namespace {

constexpr int kThreads = 256;

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

/// LinArgs from a problem: shapes, operands (pointers and strides), the map's problem-given fields and the
/// optional arrays, as run_linear and the fused Performer path (performer_mma2.cuh) both need them; A is the
/// accumulator type (half_scale is rounded to it once, as the CPU does). C, proj and stab are the caller's.
template <class A>
inline LinArgs lin_args(const LinearProblem& p) {
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
  a.out = p.out;
  a.map = p.map;
  a.normalize = p.normalize;
  a.eps = p.eps;
  a.half_log_m = 0.5 * std::log(static_cast<double>(p.F));
  a.half_scale = static_cast<double>(static_cast<A>(0.5 * p.feature_scale * p.feature_scale));
  a.len = p.key_lengths.present ? p.key_lengths.data : nullptr;
  a.len_dtype = p.key_lengths.dtype;
  a.len_stride = p.key_lengths.stride[0];
  a.s_in = p.state_in.present ? p.state_in.data : nullptr;
  a.z_in = p.state_in.present ? p.z_in.data : nullptr;
  a.s_out = p.state_out;
  a.z_out = p.z_out;
  copy_linear_operands(a, p);
  return a;
}

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

constexpr int kTM = 64, kTN = 64, kTK = 16;  // tile of the products; 16 x 16 threads of 4 x 4 outputs

/// C[m][n] = sum_k la(m, k) lb(k, n) over the TM x TN tile at (m0, n0) (TM, TN: 16, 32 or 64; 16 x 16
/// virtual threads of TM / 16 x TN / 16 outputs), k in increasing order, handed to
/// st(m, n, value) (m < M, n < N only). Operands are read only inside [0, M) x [0, K) and [0, K) x [0, N).
/// kAK / kBK: the operand is contiguous along k (chooses the coalesced load order). Any block size: with
/// fewer than 256 threads the 256 virtual threads are taken in passes. Every thread must call it.
/// kContig (the v2 path, linear_v2.cuh): virtual thread (ty, tx) owns the contiguous rows ty RM .. and columns
/// tx RN .. of the tile (vector shared-memory loads), instead of the rows ty + 16 r and columns tx + 16 c;
/// the sums are the same (k in increasing order), only the thread that computes an output changes.
template <class A, int TM, int TN, bool kAK, bool kBK, bool kContig = false, class LA, class LB, class ST>
__device__ __forceinline__ void tile_product(int64_t M, int64_t N, int64_t K, int64_t m0, int64_t n0, LA la, LB lb,
                                             ST st) {
  constexpr int RM = TM / 16, RN = TN / 16, kVT = 256;
  alignas(16) __shared__ A As[kTK][TM];
  alignas(16) __shared__ A Bs[kTK][TN];
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
          for (int r = 0; r < RM; ++r) av[r] = As[kk][kContig ? ty * RM + r : ty + 16 * r];
#pragma unroll
          for (int c = 0; c < RN; ++c) bv[c] = Bs[kk][kContig ? tx * RN + c : tx + 16 * c];
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
          const int64_t m = m0 + (kContig ? ty * RM + r : ty + 16 * r);
          const int64_t n = n0 + (kContig ? tx * RN + c : tx + 16 * c);
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
template <class T, bool V2 = false>
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
    tile_product<A, kTM, kTN, true, true, V2>(
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

/// wS[f][d] = sqrt(scale) * W[f][d] in A, rounded as on the CPU (the scale cast to A, then the product).
template <class A>
__global__ void scale_features_kernel(A* wS, const void* W, DType dt, int64_t s0, int64_t s1, int64_t F, int64_t D,
                                      A fs) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < F * D; i += step)
    wS[i] = fs * load_float<A>(W, dt, (i / D) * s0 + (i % D) * s1);
}

}  // namespace
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
