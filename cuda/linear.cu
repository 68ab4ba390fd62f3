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

/// The state of every (b, hkv) over all allowed keys, into a.states (softmax features: relative to the
/// maximum over all allowed keys); writes state_out.
template <class T>
__global__ void bidir_state_kernel(const LinArgs a) {
  using A = acc_t<T>;
  __shared__ A sh[1];
  const Scr<A> w = carve<A>(a);
  const int64_t F = a.F, Dv = a.Dv;
  for (int64_t item = blockIdx.x; item < a.B * a.Hkv; item += gridDim.x) {
    const int64_t b = item / a.Hkv, hkv = item % a.Hkv;
    const int64_t L = key_count(a, b);
    A* S = static_cast<A*>(a.states) + item * (F * Dv + F);
    A* z = S + F * Dv;
    load_state(a, S, z, b, hkv);
    A c_prev = math::neg_inf<A>();
    for (int64_t j0 = 0; j0 < L; j0 += a.C) {
      const int64_t kn = a.C < L - j0 ? a.C : L - j0;
      const A c_end = key_features<T, A>(a, w, b, hkv, j0, kn, c_prev, sh);
      state_update<T, A>(a, w, S, z, b, hkv, j0, kn, c_prev, c_end);
      c_prev = c_end;
    }
    save_state(a, S, z, b, hkv);
    __syncthreads();
  }
}

/// out = phi(q)^T S / (phi(q) . z + eps) for every query row, one block per row (scratch: its features).
template <class T>
__global__ void bidir_query_kernel(const LinArgs a) {
  using A = acc_t<T>;
  __shared__ A sh[2];
  const int64_t F = a.F, Dv = a.Dv;
  A* phi = static_cast<A*>(a.scratch) + static_cast<int64_t>(blockIdx.x) * a.scratch_elems;
  const A hlm = static_cast<A>(a.half_log_m);
  for (int64_t row = blockIdx.x; row < a.B * a.Hq * a.S; row += gridDim.x) {
    const int64_t t = row % a.S, bh = row / a.S, h = bh % a.Hq, b = bh / a.Hq, hkv = h / a.G;
    const T* qr = static_cast<const T*>(a.q) + b * a.qs[0] + h * a.qs[1] + t * a.qs[2];
    for (int64_t f = threadIdx.x; f < F; f += blockDim.x) phi[f] = feature<T, A>(a, qr, a.qs[3], f);
    __syncthreads();
    if (a.stab) {
      if (threadIdx.x == 0) {
        A mx = math::neg_inf<A>();
        for (int64_t f = 0; f < F; ++f) mx = math::softmax_new_max(mx, phi[f]);
        sh[0] = mx;
      }
      __syncthreads();
      const A mx = sh[0];
      for (int64_t f = threadIdx.x; f < F; f += blockDim.x) phi[f] = DevExp()(math::favor_feature_arg(phi[f], mx, hlm));
      __syncthreads();
    }
    const A* S = static_cast<const A*>(a.states) + (b * a.Hkv + hkv) * (F * Dv + F);
    const A* z = S + F * Dv;
    if (threadIdx.x == 0) {
      A den = A(0);
      for (int64_t f = 0; f < F; ++f) den += phi[f] * z[f];
      sh[1] = den;
    }
    __syncthreads();
    const A den = sh[1];
    for (int64_t d = threadIdx.x; d < Dv; d += blockDim.x) {
      A o = A(0);
      for (int64_t f = 0; f < F; ++f) o += phi[f] * S[f * Dv + d];
      store_out<T, A>(a, b, h, t, d, o, den);
    }
    __syncthreads();  // phi and sh are rewritten by the next row
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
  const int64_t cap = max_resident_blocks(p.device_index);
  const int64_t wS_elems = a.proj ? F * p.D : 0;
  // Causal attention without query heads (Hq = 0) still owes state_out: the bidirectional state kernel
  // computes it with the same chunk boundaries (chunks of C from key 0; S = Sk in causal problems).
  const bool causal_items = p.causal && p.Hq > 0;
  const int64_t items = causal_items ? p.B * p.Hq : p.B * p.Hkv;
  const int64_t blocks1 = std::min(items, cap);
  const int64_t per1 = scratch_elems(C, F, Dv, causal_items ? 1 : 0);
  const int64_t state_elems = causal_items ? 0 : items * (F * Dv + F);
  const int64_t qrows = p.B * p.Hq * p.S;
  const int64_t blocks2 = p.causal ? 0 : std::min(qrows, 2 * cap);
  const int64_t per2 = F;
  const int64_t scratch = std::max(blocks1 * per1, blocks2 * per2);
  Workspace ws(sizeof(A) * static_cast<std::size_t>(wS_elems + state_elems + scratch), stream);
  A* base = ws.as<A>();
  a.wS = base;
  a.states = base + wS_elems;
  a.scratch = base + wS_elems + state_elems;

  if (a.proj && wS_elems > 0) {
    scale_features_kernel<A><<<blocks_for(wS_elems, kThreads), kThreads, 0, stream>>>(
        base, p.features.data, p.features.dtype, p.features.stride[0], p.features.stride[1], F, p.D, fs);
    ATTNKIT_CUDA_CHECK_LAUNCH();
  }
  if (items == 0) return;
  a.scratch_elems = per1;
  if (causal_items) {
    causal_kernel<T><<<static_cast<unsigned>(blocks1), kThreads, 0, stream>>>(a);
    ATTNKIT_CUDA_CHECK_LAUNCH();
    return;
  }
  bidir_state_kernel<T><<<static_cast<unsigned>(blocks1), kThreads, 0, stream>>>(a);
  ATTNKIT_CUDA_CHECK_LAUNCH();
  if (p.causal || blocks2 == 0) return;
  a.scratch_elems = per2;
  bidir_query_kernel<T><<<static_cast<unsigned>(blocks2), kThreads, 0, stream>>>(a);
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
