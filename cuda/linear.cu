// Kernelized linear attention and Performer (FAVOR+) on the GPU: the semantics of cpu/linear_kernel.h (its
// file comment explains the chunked causal form and Performer's stabilizer), with the meaning of every
// feature map and stabilizer step from attnkit/math/feature_maps.h.
//
// Work mapping (simple, deterministic: every value is summed by one thread in a fixed order):
//   causal         one thread block per (b, query head), looping over the chunks in order. Its key side
//                  (features, state S [F][Dv] and z [F]) lives in the block's own global scratch; the query
//                  heads of a GQA group each recompute the same key side in the same order (as the CPU's
//                  split items do), and the head with g = 0 writes state_out. Within a chunk, threads take
//                  (row, feature) pairs for the features, (t, j) pairs for the intra-chunk scores, rows for
//                  the denominators, (t, d) pairs for the outputs and (f, d) pairs for the state update.
//   bidirectional  kernel 1: one block per (b, kv head) builds the state over all allowed keys chunk by
//                  chunk (same chunk boundaries and rescaling as the CPU) into a workspace and writes
//                  state_out; kernel 2: one block per query row (b, h, t): features by feature, then each
//                  output element by one thread.
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
  void* scratch;           // per block: scratch_elems of A
  int64_t scratch_elems;
  void* states;            // bidirectional: [B * Hkv][F * Dv + F] of A
};

/// A block's scratch (A elements): key side first (all that the bidirectional state kernel needs), then the
/// query side and, for the causal kernel, the running state.
template <class A>
struct Scr {
  A *phiK, *cK, *hK;                  // [C][F] key features; [C] stabilizer c_j; [C] |k'|^2/2, then offset
  A *phiQ, *qmx, *cQ, *rq, *Am, *den;  // [C][F]; [C] query max; [C] c_t; [C] state factor; [C][C]; [C]
  A *S, *z;                           // causal: [F][Dv], [F]
};

int64_t scratch_elems(int64_t C, int64_t F, int64_t Dv, int part) {
  const int64_t keys = C * F + 2 * C;
  if (part == 0) return keys;
  return keys + C * F + 5 * C + C * C + F * Dv + F;
}

template <class A>
__device__ __forceinline__ Scr<A> carve(const LinArgs& a) {
  A* p = static_cast<A*>(a.scratch) + static_cast<int64_t>(blockIdx.x) * a.scratch_elems;
  const int64_t C = a.C, F = a.F;
  Scr<A> w;
  w.phiK = p;
  p += C * F;
  w.cK = p;
  p += C;
  w.hK = p;
  p += C;
  w.phiQ = p;
  p += C * F;
  w.qmx = p;
  p += C;
  w.cQ = p;
  p += C;
  w.rq = p;
  p += C;
  w.Am = p;
  p += C * C;
  w.den = p;
  p += C;
  w.S = p;
  p += F * a.Dv;
  w.z = p;
  return w;
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

/// Key features of rows [j0, j0 + kn) of (b, hkv) into w.phiK; softmax features also get w.cK[j] = c_j
/// (running maximum from c_prev on). Returns the stabilizer after the chunk (c_prev when unstabilized).
/// Every thread of the block calls it; it ends synchronized.
template <class T, class A>
__device__ __forceinline__ A key_features(const LinArgs& a, const Scr<A>& w, int64_t b, int64_t hkv, int64_t j0,
                                          int64_t kn, A c_prev, A* sh) {
  const T* k = static_cast<const T*>(a.k) + b * a.ks[0] + hkv * a.ks[1];
  const int64_t F = a.F;
  for (int64_t i = threadIdx.x; i < kn * F; i += blockDim.x) {
    const int64_t j = i / F, f = i % F;
    w.phiK[i] = feature<T, A>(a, k + (j0 + j) * a.ks[2], a.ks[3], f);
  }
  __syncthreads();
  if (!a.stab) return c_prev;
  // Exponents e - |k'|^2/2, each key's maximum over the features, then the running maximum c_j.
  const A half_scale = static_cast<A>(a.half_scale);
  for (int64_t j = threadIdx.x; j < kn; j += blockDim.x) {
    const T* kr = k + (j0 + j) * a.ks[2];
    A sq = A(0);
    for (int64_t d = 0; d < a.D; ++d) {
      const A x = to_acc<A>(kr[d * a.ks[3]]);
      sq += x * x;
    }
    const A half_sq = sq * half_scale;
    A mx = math::neg_inf<A>();
    for (int64_t f = 0; f < F; ++f)
      mx = math::softmax_new_max(mx, math::favor_key_exponent(w.phiK[j * F + f], half_sq));
    w.hK[j] = half_sq;
    w.cK[j] = mx;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    A cur = c_prev;
    for (int64_t j = 0; j < kn; ++j) {
      w.cK[j] = cur = math::favor_running_max(cur, w.cK[j]);
      w.hK[j] = w.hK[j] + w.cK[j];  // the offset of key j: |k'_j|^2/2 + c_j
    }
    *sh = cur;
  }
  __syncthreads();
  const A c_end = *sh;
  const A hlm = static_cast<A>(a.half_log_m);
  for (int64_t i = threadIdx.x; i < kn * F; i += blockDim.x)
    w.phiK[i] = DevExp()(math::favor_feature_arg(w.phiK[i], w.hK[i / F], hlm));
  __syncthreads();
  return c_end;
}

/// S += phi(K_c)^T V_c and z += colsum phi(K_c) over the kn keys at j0, after bringing the state from c_prev
/// and the chunk's keys from their c_j to c_end (softmax features). Ends synchronized.
template <class T, class A>
__device__ __forceinline__ void state_update(const LinArgs& a, const Scr<A>& w, A* S, A* z, int64_t b, int64_t hkv,
                                             int64_t j0, int64_t kn, A c_prev, A c_end) {
  const int64_t F = a.F, Dv = a.Dv;
  if (a.stab) {
    const A r = DevExp()(math::favor_rescale_arg<A, A>(c_prev, c_end));
    if (r != A(1))
      for (int64_t i = threadIdx.x; i < F * Dv + F; i += blockDim.x) {
        if (i < F * Dv)
          S[i] *= r;
        else
          z[i - F * Dv] *= r;
      }
    for (int64_t i = threadIdx.x; i < kn * F; i += blockDim.x) {
      const A cj = w.cK[i / F];
      if (cj != c_end) w.phiK[i] *= DevExp()(cj - c_end);
    }
    __syncthreads();
  }
  const T* v = static_cast<const T*>(a.v) + b * a.vs[0] + hkv * a.vs[1] + j0 * a.vs[2];
  for (int64_t i = threadIdx.x; i < F * Dv + F; i += blockDim.x) {
    if (i < F * Dv) {
      const int64_t f = i / Dv, d = i % Dv;
      A s = S[i];
      for (int64_t j = 0; j < kn; ++j) s += w.phiK[j * F + f] * to_acc<A>(v[j * a.vs[2] + d * a.vs[3]]);
      S[i] = s;
    } else {
      const int64_t f = i - F * Dv;
      A s = z[f];
      for (int64_t j = 0; j < kn; ++j) s += w.phiK[j * F + f];
      z[f] = s;
    }
  }
  __syncthreads();
}

/// Initial state of (b, hkv) into S, z (zero without state_in). Ends synchronized.
template <class A>
__device__ __forceinline__ void load_state(const LinArgs& a, A* S, A* z, int64_t b, int64_t hkv) {
  const int64_t F = a.F, Dv = a.Dv;
  const A* si = static_cast<const A*>(a.s_in);
  const A* zi = static_cast<const A*>(a.z_in);
  for (int64_t i = threadIdx.x; i < F * Dv + F; i += blockDim.x) {
    if (i < F * Dv) {
      const int64_t f = i / Dv, d = i % Dv;
      S[i] = si ? si[b * a.sis[0] + hkv * a.sis[1] + f * a.sis[2] + d * a.sis[3]] : A(0);
    } else {
      const int64_t f = i - F * Dv;
      z[f] = zi ? zi[b * a.zis[0] + hkv * a.zis[1] + f * a.zis[2]] : A(0);
    }
  }
  __syncthreads();
}

template <class A>
__device__ __forceinline__ void save_state(const LinArgs& a, const A* S, const A* z, int64_t b, int64_t hkv) {
  // S and z are checked apart: an empty state [.., F, 0] may come with a null data pointer (the CPU's
  // save_state returns early then and leaves z_out unwritten; noted for the lead).
  if (!a.s_out && !a.z_out) return;
  const int64_t F = a.F, Dv = a.Dv;
  A* so = static_cast<A*>(a.s_out);
  A* zo = static_cast<A*>(a.z_out);
  for (int64_t i = threadIdx.x; i < F * Dv + F; i += blockDim.x) {
    if (i < F * Dv) {
      const int64_t f = i / Dv, d = i % Dv;
      if (so) so[b * a.sos[0] + hkv * a.sos[1] + f * a.sos[2] + d * a.sos[3]] = S[i];
    } else {
      const int64_t f = i - F * Dv;
      if (zo) zo[b * a.zos[0] + hkv * a.zos[1] + f * a.zos[2]] = z[f];
    }
  }
}

template <class T, class A>
__device__ __forceinline__ void store_out(const LinArgs& a, int64_t b, int64_t h, int64_t t, int64_t d, A o, A den) {
  const A r = a.normalize ? math::linear_output(o, den, static_cast<A>(a.eps)) : o;
  static_cast<T*>(a.out)[b * a.os[0] + h * a.os[1] + t * a.os[2] + d * a.os[3]] = from_acc<T, A>(r);
}

// ------------------------------------------------------------------------------------------------ causal

template <class T>
__global__ void causal_kernel(const LinArgs a) {
  using A = acc_t<T>;
  __shared__ A sh[1];
  const Scr<A> w = carve<A>(a);
  const int64_t F = a.F, Dv = a.Dv, C = a.C;
  const A hlm = static_cast<A>(a.half_log_m);
  for (int64_t item = blockIdx.x; item < a.B * a.Hq; item += gridDim.x) {
    const int64_t b = item / a.Hq, h = item % a.Hq, hkv = h / a.G, g = h % a.G;
    const int64_t L = key_count(a, b);
    const T* q = static_cast<const T*>(a.q) + b * a.qs[0] + h * a.qs[1];
    const T* v = static_cast<const T*>(a.v) + b * a.vs[0] + hkv * a.vs[1];
    load_state(a, w.S, w.z, b, hkv);
    A c_prev = math::neg_inf<A>();
    for (int64_t t0 = 0; t0 < a.S; t0 += C) {
      const int64_t tn = C < a.S - t0 ? C : a.S - t0;
      int64_t kn = L - t0 < tn ? L - t0 : tn;
      if (kn < 0) kn = 0;
      const A c_end = kn > 0 ? key_features<T, A>(a, w, b, hkv, t0, kn, c_prev, sh) : c_prev;
      // Query features.
      for (int64_t i = threadIdx.x; i < tn * F; i += blockDim.x)
        w.phiQ[i] = feature<T, A>(a, q + (t0 + i / F) * a.qs[2], a.qs[3], i % F);
      __syncthreads();
      // Per row: the query's own maximum (softmax features), c_t (the running maximum at key
      // min(t, kn - 1)) and the factor exp(c_prev - c_t) of the carried state.
      for (int64_t t = threadIdx.x; t < tn; t += blockDim.x) {
        const A ct = kn > 0 ? w.cK[t < kn ? t : kn - 1] : c_prev;
        w.cQ[t] = ct;
        w.rq[t] = A(1);
        if (a.stab) {
          A mx = math::neg_inf<A>();
          for (int64_t f = 0; f < F; ++f) mx = math::softmax_new_max(mx, w.phiQ[t * F + f]);
          w.qmx[t] = mx;
          w.rq[t] = DevExp()(math::favor_rescale_arg<A, A>(c_prev, ct));
        }
      }
      __syncthreads();
      if (a.stab) {
        for (int64_t i = threadIdx.x; i < tn * F; i += blockDim.x)
          w.phiQ[i] = DevExp()(math::favor_feature_arg(w.phiQ[i], w.qmx[i / F], hlm));
        __syncthreads();
      }
      // Intra-chunk scores A[t][j] = phi(q_t) . phi(k_j) exp(c_j - c_t) for j <= t, else 0.
      for (int64_t i = threadIdx.x; i < tn * kn; i += blockDim.x) {
        const int64_t t = i / kn, j = i % kn;
        A s = A(0);
        if (j <= t) {
          for (int64_t f = 0; f < F; ++f) s += w.phiQ[t * F + f] * w.phiK[j * F + f];
          if (a.stab && w.cK[j] != w.cQ[t]) s *= DevExp()(w.cK[j] - w.cQ[t]);
        }
        w.Am[t * C + j] = s;
      }
      __syncthreads();
      // Denominators: (phi(q_t) . z) exp(c_prev - c_t) + sum_{j <= t} A[t][j].
      for (int64_t t = threadIdx.x; t < tn; t += blockDim.x) {
        A den = A(0);
        for (int64_t f = 0; f < F; ++f) den += w.phiQ[t * F + f] * w.z[f];
        if (w.rq[t] != A(1)) den *= w.rq[t];
        const int64_t jn = t + 1 < kn ? t + 1 : kn;
        A s = A(0);
        for (int64_t j = 0; j < jn; ++j) s += w.Am[t * C + j];
        w.den[t] = den + s;
      }
      __syncthreads();
      // Outputs: (phi(q_t)^T S) exp(c_prev - c_t) + sum_{j <= t} A[t][j] v_j.
      for (int64_t i = threadIdx.x; i < tn * Dv; i += blockDim.x) {
        const int64_t t = i / Dv, d = i % Dv;
        A o = A(0);
        for (int64_t f = 0; f < F; ++f) o += w.phiQ[t * F + f] * w.S[f * Dv + d];
        if (w.rq[t] != A(1)) o *= w.rq[t];
        const int64_t jn = t + 1 < kn ? t + 1 : kn;
        for (int64_t j = 0; j < jn; ++j) o += w.Am[t * C + j] * to_acc<A>(v[(t0 + j) * a.vs[2] + d * a.vs[3]]);
        store_out<T, A>(a, b, h, t0 + t, d, o, w.den[t]);
      }
      __syncthreads();
      if (kn > 0) {
        state_update<T, A>(a, w, w.S, w.z, b, hkv, t0, kn, c_prev, c_end);
        c_prev = c_end;
      }
    }
    if (g == 0) save_state(a, w.S, w.z, b, hkv);
    __syncthreads();  // the next item reuses the scratch
  }
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
//   z_kernel          z[f] = z_in r0 + sum_j phi(k_j)_f, one thread per (b, hkv, f), keys in order;
//   state_kernel      S = S_in r0 + phi(K)^T V by tiles of F x Dv, keys in order; writes state_out;
//   query_den_kernel  (queries) the softmax map with the row's maximum, and den = phi(q) . z per row;
//   out_kernel        out = phi(Q) S by tiles of rows x Dv, features in order, divided by den + eps.

constexpr int kTM = 64, kTN = 64, kTK = 16;  // tile of the products; 16 x 16 threads of 4 x 4 outputs

/// C[m][n] = sum_k la(m, k) lb(k, n) over the 64 x 64 tile at (m0, n0), k in increasing order, handed to
/// st(m, n, value) (m < M, n < N only). Operands are read only inside [0, M) x [0, K) and [0, K) x [0, N).
/// kAK / kBK: the operand is contiguous along k (chooses the coalesced load order). Any block size: with
/// fewer than 256 threads the 256 virtual threads are taken in passes. Every thread must call it.
template <class A, bool kAK, bool kBK, class LA, class LB, class ST>
__device__ __forceinline__ void tile_product(int64_t M, int64_t N, int64_t K, int64_t m0, int64_t n0, LA la, LB lb,
                                             ST st) {
  __shared__ A As[kTK][kTM];
  __shared__ A Bs[kTK][kTN];
  constexpr int kVT = (kTM / 4) * (kTN / 4);
  const int nt = static_cast<int>(blockDim.x), tid = static_cast<int>(threadIdx.x);
  for (int vt0 = 0; vt0 < kVT; vt0 += nt) {
    const int vt = vt0 + tid;
    const bool active = vt < kVT;
    const int ty = vt / (kTN / 4), tx = vt % (kTN / 4);
    A acc[4][4];
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[r][c] = A(0);
    for (int64_t k0 = 0; k0 < K; k0 += kTK) {
      for (int i = tid; i < kTK * kTM; i += nt) {
        const int kk = kAK ? i % kTK : i / kTM, mm = kAK ? i / kTK : i % kTM;
        As[kk][mm] = (m0 + mm < M && k0 + kk < K) ? la(m0 + mm, k0 + kk) : A(0);
      }
      for (int i = tid; i < kTK * kTN; i += nt) {
        const int kk = kBK ? i % kTK : i / kTN, nn = kBK ? i / kTK : i % kTN;
        Bs[kk][nn] = (n0 + nn < N && k0 + kk < K) ? lb(k0 + kk, n0 + nn) : A(0);
      }
      __syncthreads();
      if (active) {
        for (int kk = 0; kk < kTK; ++kk) {
          A av[4], bv[4];
#pragma unroll
          for (int r = 0; r < 4; ++r) av[r] = As[kk][ty + (kTM / 4) * r];
#pragma unroll
          for (int c = 0; c < 4; ++c) bv[c] = Bs[kk][tx + (kTN / 4) * c];
#pragma unroll
          for (int r = 0; r < 4; ++r)
#pragma unroll
            for (int c = 0; c < 4; ++c) acc[r][c] += av[r] * bv[c];
        }
      }
      __syncthreads();
    }
    if (active) {
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const int64_t m = m0 + ty + (kTM / 4) * r, n = n0 + tx + (kTN / 4) * c;
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
  const A* wS = static_cast<const A*>(a.wS);
  const int64_t mt = ceil_div(rows, kTM), nt = ceil_div(F, kTN);
  for (int64_t tile = blockIdx.x; tile < mt * nt; tile += gridDim.x) {
    const int64_t m0 = (tile / nt) * kTM, n0 = (tile % nt) * kTN;
    tile_product<A, true, true>(
        rows, F, D, m0, n0,
        [&](int64_t m, int64_t d) {
          return row_allowed(a, r, m) ? to_acc<A>(row_of<T>(r, m)[d * r.xs[3]]) : A(0);
        },
        [&](int64_t d, int64_t f) { return wS[f * D + d]; },
        [&](int64_t m, int64_t f, A s) {
          if (row_allowed(a, r, m)) out[m * F + f] = a.stab ? s : math::performer_relu<A>(s);
        });
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

/// Softmax features, per (b, hkv): cs[2 item] = running maximum after all allowed keys, cs[2 item + 1] =
/// after the CPU's first chunk (C keys).
template <class T>
__global__ void key_max_kernel(const LinArgs a, const void* mK_, void* cs_) {
  using A = acc_t<T>;
  const A* mK = static_cast<const A*>(mK_);
  A* cs = static_cast<A*>(cs_);
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; item < a.B * a.Hkv; item += step) {
    const int64_t L = key_count(a, item / a.Hkv);
    A c = math::neg_inf<A>(), c1 = c;
    for (int64_t j = 0; j < L; ++j) {
      c = math::favor_running_max(c, mK[item * a.Sk + j]);
      if (j + 1 == a.C) c1 = c;
    }
    if (L < a.C) c1 = c;
    cs[2 * item] = c;
    cs[2 * item + 1] = c1;
  }
}

/// Softmax features: phi(k) = exp(e - (hK + c) - ln(m)/2) in place, c the final maximum of the sequence.
template <class T>
__global__ void key_exp_kernel(const LinArgs a, const RowSet r, void* e_, const void* hK_, const void* cs_) {
  using A = acc_t<T>;
  A* e = static_cast<A*>(e_);
  const A* hK = static_cast<const A*>(hK_);
  const A* cs = static_cast<const A*>(cs_);
  const int64_t F = a.F, rows = a.B * r.H * r.L;
  const A hlm = static_cast<A>(a.half_log_m);
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < rows * F; i += step) {
    const int64_t m = i / F;
    if (row_allowed(a, r, m)) e[i] = DevExp()(math::favor_feature_arg(e[i], hK[m] + cs[2 * (m / r.L)], hlm));
  }
}

/// Factor of state_in: the CPU rescales it from c = -inf to c after its first chunk (when there are keys).
template <class A>
__device__ __forceinline__ A state_in_factor(const LinArgs& a, const A* cs, int64_t item, int64_t L) {
  if (!a.stab || L == 0) return A(1);
  return DevExp()(math::favor_rescale_arg<A, A>(math::neg_inf<A>(), cs[2 * item + 1]));
}

/// z of every (b, hkv) into a.states and z_out: one thread per (item, f), keys in order.
template <class T>
__global__ void z_kernel(const LinArgs a, const void* phiK_, const void* cs_) {
  using A = acc_t<T>;
  const A* phiK = static_cast<const A*>(phiK_);
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
    const A* ph = phiK + item * a.Sk * F + f;
    A s = A(0);
    for (int64_t j = 0; j < L; ++j) s += ph[j * F];
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
    tile_product<A, false, false>(
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
    tile_product<A, true, false>(
        a.S, Dv, F, m0, n0, [&](int64_t t, int64_t f) { return ph[t * F + f]; },
        [&](int64_t f, int64_t d) { return S[f * Dv + d]; },
        [&](int64_t t, int64_t d, A o) { store_out<T, A>(a, b, h, t, d, o, dn[t]); });
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

int64_t max_resident_blocks(int device) {
  int sms = 0;
  ATTNKIT_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return 4 * static_cast<int64_t>(sms > 0 ? sms : 1);
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
  if (causal_items) {
    const int64_t items = p.B * p.Hq;
    const int64_t blocks1 = std::min(items, max_resident_blocks(p.device_index));
    const int64_t per1 = scratch_elems(C, F, Dv, 1);
    Workspace ws(sizeof(A) * static_cast<std::size_t>(wS_elems + blocks1 * per1), stream);
    A* base = ws.as<A>();
    a.wS = base;
    a.scratch = base + wS_elems;
    a.scratch_elems = per1;
    if (wS_elems > 0) {
      scale_features_kernel<A><<<blocks_for(wS_elems, kThreads), kThreads, 0, stream>>>(
          base, p.features.data, p.features.dtype, p.features.stride[0], p.features.stride[1], F, p.D, fs);
      ATTNKIT_CUDA_CHECK_LAUNCH();
    }
    if (items == 0) return;
    causal_kernel<T><<<static_cast<unsigned>(blocks1), kThreads, 0, stream>>>(a);
    ATTNKIT_CUDA_CHECK_LAUNCH();
    return;
  }
  // Bidirectional: see the section's comment. Workspace (A): wS, states, phi(K) [B Hkv Sk][F], hK, mK,
  // cs, phi(Q) [B Hq S][F], den.
  const int64_t items = p.B * p.Hkv, krows = items * p.Sk, qrows = p.B * p.Hq * (p.causal ? 0 : p.S);
  const int64_t state_elems = items * (F * Dv + F);
  const int64_t stat_elems = a.stab ? krows : 0;
  const int64_t n_all = wS_elems + state_elems + krows * F + 2 * stat_elems + 2 * items + qrows * F + qrows;
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
  auto grid = [](int64_t blocks) { return static_cast<unsigned>(std::min<int64_t>(blocks, int64_t{1} << 20)); };
  auto feature_grid = [&](int64_t rows) {
    return grid(a.proj ? ceil_div(rows, kTM) * ceil_div(F, kTN) : ceil_div(rows * F, kThreads));
  };
  if (wS_elems > 0) {
    scale_features_kernel<A><<<blocks_for(wS_elems, kThreads), kThreads, 0, stream>>>(
        base, p.features.data, p.features.dtype, p.features.stride[0], p.features.stride[1], F, p.D, fs);
    ATTNKIT_CUDA_CHECK_LAUNCH();
  }
  RowSet kr{};
  kr.x = p.k.data;
  kr.H = p.Hkv;
  kr.L = p.Sk;
  kr.keys = true;
  for (int i = 0; i < 4; ++i) kr.xs[i] = p.k.stride[i];
  if (krows > 0 && F > 0) {
    features_kernel<T><<<feature_grid(krows), kThreads, 0, stream>>>(a, kr, phiK);
    ATTNKIT_CUDA_CHECK_LAUNCH();
  }
  if (a.stab) {
    if (krows > 0) {
      key_stats_kernel<T><<<grid(ceil_div(krows, kThreads)), kThreads, 0, stream>>>(a, kr, phiK, hK, mK);
      ATTNKIT_CUDA_CHECK_LAUNCH();
    }
    key_max_kernel<T><<<grid(ceil_div(items, kThreads)), kThreads, 0, stream>>>(a, mK, cs);
    ATTNKIT_CUDA_CHECK_LAUNCH();
    if (krows > 0 && F > 0) {
      key_exp_kernel<T><<<grid(ceil_div(krows * F, kThreads)), kThreads, 0, stream>>>(a, kr, phiK, hK, cs);
      ATTNKIT_CUDA_CHECK_LAUNCH();
    }
  }
  if (F > 0) {
    z_kernel<T><<<grid(ceil_div(items * F, kThreads)), kThreads, 0, stream>>>(a, phiK, cs);
    ATTNKIT_CUDA_CHECK_LAUNCH();
    if (Dv > 0) {
      state_kernel<T><<<grid(items * ceil_div(F, kTM) * ceil_div(Dv, kTN)), kThreads, 0, stream>>>(a, phiK, cs);
      ATTNKIT_CUDA_CHECK_LAUNCH();
    }
  }
  if (qrows == 0 || Dv == 0) return;
  RowSet qr{};
  qr.x = p.q.data;
  qr.H = p.Hq;
  qr.L = p.S;
  qr.keys = false;
  for (int i = 0; i < 4; ++i) qr.xs[i] = p.q.stride[i];
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
