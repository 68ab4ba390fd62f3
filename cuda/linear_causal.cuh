#pragma once
// Linear attention and Performer on the GPU (linear.cu), part 3: the kernels of the chunked causal form.
// Included by linear.cu only.

#include "cuda/linear_features.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
namespace {

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
template <class T, bool V2 = false>
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
      tile_product<A, kTM, kTN, false, false, V2>(
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
template <class T, int TM, bool V2 = false>
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
    tile_product<A, TM, TM, true, true, V2>(
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
template <class T, int TM, bool V2 = false>
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
    tile_product<A, TM, kTN, true, false, V2>(
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

}  // namespace
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
