#pragma once
// Linear attention and Performer on the GPU (linear.cu), part 2: the kernels of the bidirectional form.
// Included by linear.cu only.

#include "cuda/linear_features.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
namespace {

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
// (features_kernel, key_stats_kernel, key_exp_kernel and query_den_kernel are in linear_features.cuh.)

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

/// out = phi(Q) S / (den + eps) by tiles of query rows x Dv of each (b, h).
template <class T, bool V2 = false>
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
    tile_product<A, kTM, kTN, true, false, V2>(
        a.S, Dv, F, m0, n0, [&](int64_t t, int64_t f) { return ph[t * F + f]; },
        [&](int64_t f, int64_t d) { return S[f * Dv + d]; },
        [&](int64_t t, int64_t d, A o) { store_out<T, A>(a, b, h, t, d, o, dn[t]); });
  }
}

}  // namespace
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
