// Gradients of linear attention and Performer on the GPU (linear_attention_backward and
// performer_attention_backward): the semantics of cpu/linear_bwd_kernel.h (its file comment has the
// equations), the feature maps from attnkit/math/feature_maps.h, and the forward's feature, chunk and state
// kernels (linear_features.cuh, linear_causal.cuh) for the recomputed forward. SIMT, float32 accumulation
// (float64 for float64 inputs) for every dtype.
//
// Work mapping (deterministic: every value is summed by one thread in a fixed order; no atomics; nothing
// depends on the launch configuration). Per (b, kv head) item, chunks of C = 64 rows (causal) or the
// whole sequence (bidirectional; its state sums go by chunks of kBiChunk rows):
//   forward, reused:  features of k (key_stats_arg_kernel here for softmax features: |k'|^2/2, the key's
//                     largest exponent and its feature), c_j = running maximum (key_prefix_kernel), phi(k)
//                     relative to c_j (key_exp_kernel), chunk increments + exclusive scan (inc_kernel,
//                     scan_kernel: P_c = the state before chunk c; bidirectional: the state after all keys,
//                     through scan_kernel's state_out), phi(q) (features_kernel, query_map_kernel here for
//                     the softmax map and its maximizing feature), the masked intra-chunk scores A
//                     (scores_kernel) and den, rq (causal_den_kernel; bidirectional query_den_kernel);
//   num_kernel        num = rq phi(q) P_c + A V (rows x Dv tiles), stored unnormalized;
//   dnum_kernel       per row dnum = r dout, dden = -r (dout . y) in place (r = 0 where den + eps == 0);
//   pscores_kernel    causal: P[t][j] = (dnum_t . v_j + dden_t) exp(c_j - c_t), j <= t (chunk x chunk tiles);
//   dphiq_kernel      dphi(q) = rq (P_c dnum + z dden) + P phi(K_c) (rows x F tiles);
//   ginc_kernel       per query chunk its increment of G = dL/dS: sum over the group's heads (head-major,
//                     rows in order) of phi(q_t) q2_t dnum_t^T (and of dden for dL/dz), q2_t = exp(ref - c_t)
//                     relative to the chunk's first query's c_t (F x Dv tiles);
//   rscan_kernel      per state element, chunks in reverse: G_c = the queries after chunk c (dL/dS_final
//                     first), rescaled between chunks; the total is dL/dS_0 (initial_state's gradient);
//   dphik_kernel      dphi(k_j) = kf_j (G_c v_j + g_c) + sum_g P_g^T phi(Q_g) (causal), kf_j = exp(c_j - R_c);
//   dv_kernel         dv_j = kf_j G_c^T phi(k_j) + sum_g A_g^T dnum_g (causal); 0 for padded keys;
//   gck_kernel        softmax features: eps * dden summed over the queries whose keys' stabilizer key j
//                     attains (one thread per key, runs of the running maximum in order);
//   row_sum_kernel +  the chain through the features (Performer: the softmax stabilizers' terms, then the
//   chain_proj_kernel projection (rows x D tiles over F); elementwise maps: chain_map_kernel); 0 for
//                     padded keys.
// Workspace (stream-ordered on the caller's stream): the features of all rows, the chunk states and their
// gradients, and (causal) A and P of every chunk: O(B H S (F + Dv + C)) values, never S x S.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "cpp/src/backend.h"
#include "cuda/linear_causal.cuh"
#include "cuda/workspace.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
namespace {

constexpr int64_t kBwdChunk = 64;   // causal chunk (cpu/linear_bwd_kernel.h kLinearBwdChunk)
constexpr int64_t kBiChunk = 256;   // bidirectional: keys per state increment, queries per G increment

/// The backward's own arguments (LinArgs carries the forward's).
struct BwdLin {
  const void* dout;
  int64_t dos[4];
  void* dq;
  int64_t dqs[4];
  void* dk;
  int64_t dks[4];
  void* dv;
  int64_t dvs[4];
  const void* dsf;  // dL/dS_final [B, Hkv, F, Dv] of A, or null
  int64_t dsfs[4];
  const void* dzf;
  int64_t dzfs[3];
  void* dsi;        // dL/dS_0, or null
  int64_t dsis[4];
  void* dzi;
  int64_t dzis[3];
  bool causal;
  int64_t C;        // rows per chunk of the row-tiled kernels: causal kBwdChunk, bidirectional S (queries) / Sk (keys)
  int64_t nk;       // chunks of the forward state (causal: of C keys; bidirectional: of kBiChunk keys)
  int64_t Cq, nq;   // rows per G increment and their number (causal: C, nk)
  double fs2;       // Performer: scale (|x'|^2 = scale |x|^2), rounded to A once
  // workspace (A unless said otherwise)
  const void* phiK;  // [B Hkv Sk][F], relative to c_j (softmax)
  const void* cK;    // [B Hkv Sk] c_j (softmax)
  const int32_t* karg;  // [B Hkv Sk] the key's largest exponent's feature (softmax)
  const void* P;     // [B Hkv][nk][F Dv + F] the state before each chunk (causal)
  const void* Sfin;  // [B Hkv][F Dv + F] the state after all keys (bidirectional)
  const void* phiQ;  // [B Hq S][F]
  const int32_t* qarg;  // [B Hq S] the query's maximizing feature (softmax)
  const void* Am;    // [B Hq S][C] causal scores
  void* Pm;          // [B Hq S][C] causal P
  const void* den;   // [B Hq S]
  const void* rq;    // [B Hq S] causal
  void* dnum;        // [B Hq S][Dv]: num, then dnum
  void* dd;          // [B Hq S] dden
  void* dphiQ;       // [B Hq S][F]
  void* GI;          // [B Hkv][nq][F Dv + F]: increments, then G_c
  void* Gtot;        // [B Hkv][F Dv + F]
  void* gck;         // [B Hkv Sk] (softmax)
  void* dphiK;       // [B Hkv Sk][F]
  void* rsum;        // [max(B Hq S, B Hkv Sk)] chain row sums
};

template <class A>
__device__ __forceinline__ A fac(A a, A b) {  // exp(a - b) for a <= b; 0 when a is -inf (nothing there)
  return a == math::neg_inf<A>() ? A(0) : DevExp()(a - b);
}

/// c_t of query t of item (b, hkv): the keys' running maximum over the keys it sees (-inf without keys).
template <class A>
__device__ __forceinline__ A c_query(const BwdLin& w, const A* ck, int64_t t, int64_t L) {
  if (L <= 0) return math::neg_inf<A>();
  return ck[w.causal ? (t < L - 1 ? t : L - 1) : L - 1];
}

/// The forward state that query rows of chunk c (causal) / every query (bidirectional) see.
template <class A>
__device__ __forceinline__ const A* query_state(const LinArgs& a, const BwdLin& w, int64_t item, int64_t c) {
  const int64_t E = a.F * a.Dv + a.F;
  return w.causal ? static_cast<const A*>(w.P) + (item * w.nk + c) * E : static_cast<const A*>(w.Sfin) + item * E;
}

/// Softmax features, per allowed key row: hK = |k'|^2/2, mK = max_f (e_f - hK) and its first feature (the
/// forward's key_stats_kernel plus the maximizing feature, which the stabilizer's gradient goes to).
template <class T>
__global__ void key_stats_arg_kernel(const LinArgs a, const RowSet r, const void* e_, void* hK_, void* mK_,
                                     int32_t* arg) {
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
    int32_t best = 0;
    for (int64_t f = 0; f < F; ++f) {
      const A x = math::favor_key_exponent(e[m * F + f], half_sq);
      if (f == 0 || x > mx) best = static_cast<int32_t>(f);
      mx = f == 0 ? x : math::softmax_new_max(mx, x);
    }
    hK[m] = half_sq;
    mK[m] = mx;
    arg[m] = best;
  }
}

/// Softmax query rows: phi = exp(w - max_f w - ln(m)/2) in place and the maximizing feature (the first).
template <class T>
__global__ void query_map_kernel(const LinArgs a, void* phiQ_, int32_t* arg) {
  using A = acc_t<T>;
  A* phiQ = static_cast<A*>(phiQ_);
  const int64_t F = a.F, rows = a.B * a.Hq * a.S;
  const A hlm = static_cast<A>(a.half_log_m);
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t m = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; m < rows; m += step) {
    A* ph = phiQ + m * F;
    A mx = math::neg_inf<A>();
    int32_t best = 0;
    for (int64_t f = 0; f < F; ++f) {
      if (f == 0 || ph[f] > mx) best = static_cast<int32_t>(f);
      mx = f == 0 ? ph[f] : math::softmax_new_max(mx, ph[f]);
    }
    for (int64_t f = 0; f < F; ++f) ph[f] = DevExp()(math::favor_feature_arg(ph[f], mx, hlm));
    arg[m] = best;
  }
}

/// Tiles of the row-tiled kernels: (b, head, chunk of w.C rows, row tile of kTM, column tile of kTN).
struct RowTile {
  int64_t bh, c, m0, n0;
};
__device__ __forceinline__ RowTile row_tile(int64_t tile, int64_t nch, int64_t C, int64_t ncols) {
  const int64_t mt = ceil_div(C, kTM), nt = ceil_div(ncols, kTN), per = mt * nt;
  RowTile r;
  const int64_t bc = tile / per;
  r.bh = bc / nch;
  r.c = bc % nch;
  r.m0 = (tile % per) / nt * kTM;
  r.n0 = (tile % per) % nt * kTN;
  return r;
}

/// Keys of chunk c that are allowed (j0 = c C): causal chunk_keys, bidirectional all of [0, L).
__device__ __forceinline__ int64_t bwd_chunk_keys(const LinArgs& a, const BwdLin& w, int64_t j0, int64_t L) {
  if (!w.causal) return L < a.Sk ? L : a.Sk;
  return chunk_keys(j0, w.C, a.S, L);
}

/// num (unnormalized output) of query rows: rq phi(q_t) P + sum_{j <= t} A[t][j] v_j (causal), phi(q_t) S.
template <class T>
__global__ void num_kernel(const LinArgs a, const BwdLin w, int64_t nch) {
  using A = acc_t<T>;
  const A* phiQ = static_cast<const A*>(w.phiQ);
  const A* Am = static_cast<const A*>(w.Am);
  const A* rqa = static_cast<const A*>(w.rq);
  A* num = static_cast<A*>(w.dnum);
  const int64_t F = a.F, Dv = a.Dv, C = w.C;
  const int64_t tiles = a.B * a.Hq * nch * ceil_div(C, kTM) * ceil_div(Dv, kTN);
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const RowTile rt = row_tile(tile, nch, C, Dv);
    const int64_t b = rt.bh / a.Hq, h = rt.bh % a.Hq, hkv = h / a.G, item = b * a.Hkv + hkv;
    const int64_t L = key_count(a, b), j0 = rt.c * C, tn = C < a.S - j0 ? C : a.S - j0;
    const int64_t kn = w.causal ? chunk_keys(j0, C, a.S, L) : 0;
    const int64_t row0 = rt.bh * a.S + j0;
    const A* q = phiQ + row0 * F;
    const A* S = query_state<A>(a, w, item, rt.c);
    const T* v = static_cast<const T*>(a.v) + b * a.vs[0] + hkv * a.vs[1] + j0 * a.vs[2];
    tile_product<A, kTM, kTN, true, false>(
        tn, Dv, F, rt.m0, rt.n0, [&](int64_t t, int64_t f) { return q[t * F + f]; },
        [&](int64_t f, int64_t d) { return S[f * Dv + d]; },
        [&](int64_t t, int64_t d, A o) {
          if (w.causal) {
            const A rq = rqa[row0 + t];
            if (rq != A(1)) o *= rq;
            const int64_t jn = t + 1 < kn ? t + 1 : kn;
            const A* ar = Am + (row0 + t) * C;
            A s = A(0);
            for (int64_t j = 0; j < jn; ++j) s += ar[j] * to_acc<A>(v[j * a.vs[2] + d * a.vs[3]]);
            o += s;
          }
          num[(row0 + t) * Dv + d] = o;
        });
  }
}

/// Per query row: dnum = r dout (in place of num), dden = -r (dout . num r); r = 1 / (den + eps), 0 where
/// den + eps == 0 (no gradient); unnormalized: dnum = dout, dden = 0.
template <class T>
__global__ void dnum_kernel(const LinArgs a, const BwdLin w) {
  using A = acc_t<T>;
  A* num = static_cast<A*>(w.dnum);
  A* dd = static_cast<A*>(w.dd);
  const A* den = static_cast<const A*>(w.den);
  const int64_t Dv = a.Dv, rows = a.B * a.Hq * a.S;
  const A eps = static_cast<A>(a.eps);
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t m = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; m < rows; m += step) {
    const int64_t t = m % a.S, bh = m / a.S, b = bh / a.Hq, h = bh % a.Hq;
    const T* g = static_cast<const T*>(w.dout) + b * w.dos[0] + h * w.dos[1] + t * w.dos[2];
    A* y = num + m * Dv;
    if (!a.normalize) {
      for (int64_t e = 0; e < Dv; ++e) y[e] = to_acc<A>(g[e * w.dos[3]]);
      dd[m] = A(0);
      continue;
    }
    const A d = den[m] + eps;
    const A r = d == A(0) ? A(0) : A(1) / d;
    A yy = A(0);
    for (int64_t e = 0; e < Dv; ++e) {
      const A gy = to_acc<A>(g[e * w.dos[3]]);
      yy += gy * y[e] * r;
      y[e] = gy * r;
    }
    dd[m] = -yy * r;
  }
}

/// Causal: Pm[t][j] = (dnum_t . v_j + dden_t) exp(c_j - c_t) for j <= t, j < kn (the scores' factors).
template <class T>
__global__ void pscores_kernel(const LinArgs a, const BwdLin w, int64_t nch) {
  using A = acc_t<T>;
  const A* dn = static_cast<const A*>(w.dnum);
  const A* dd = static_cast<const A*>(w.dd);
  const A* cKall = static_cast<const A*>(w.cK);
  A* Pm = static_cast<A*>(w.Pm);
  const int64_t Dv = a.Dv, C = w.C;
  const int64_t mt = ceil_div(C, kTM), per = mt * mt;
  for (int64_t tile = blockIdx.x; tile < a.B * a.Hq * nch * per; tile += gridDim.x) {
    const int64_t bc = tile / per, bh = bc / nch, c = bc % nch, b = bh / a.Hq, h = bh % a.Hq;
    const int64_t item = b * a.Hkv + h / a.G, hkv = h / a.G;
    const int64_t m0 = (tile % per) / mt * kTM, n0 = (tile % per) % mt * kTM;
    const int64_t L = key_count(a, b), j0 = c * C, kn = chunk_keys(j0, C, a.S, L);
    const int64_t tn = C < a.S - j0 ? C : a.S - j0;
    const int64_t row0 = bh * a.S + j0;
    const A* ck = a.stab ? cKall + item * a.Sk : nullptr;
    const T* v = static_cast<const T*>(a.v) + b * a.vs[0] + hkv * a.vs[1] + j0 * a.vs[2];
    tile_product<A, kTM, kTM, true, true>(
        tn, kn, Dv, m0, n0, [&](int64_t t, int64_t e) { return dn[(row0 + t) * Dv + e]; },
        [&](int64_t e, int64_t j) { return to_acc<A>(v[j * a.vs[2] + e * a.vs[3]]); },
        [&](int64_t t, int64_t j, A s) {
          if (j > t) return;
          s += dd[row0 + t];
          if (a.stab) {
            const A ct = ck[j0 + (t < kn ? t : kn - 1)];
            if (ck[j0] != ct) s *= DevExp()(ck[j0 + j] - ct);
          }
          Pm[(row0 + t) * C + j] = s;
        });
  }
}

/// dphi(q_t) = rq (P dnum_t + z dden_t) + sum_{j <= t} Pm[t][j] phi(k_j) (rows x F tiles).
template <class T>
__global__ void dphiq_kernel(const LinArgs a, const BwdLin w, int64_t nch) {
  using A = acc_t<T>;
  const A* dn = static_cast<const A*>(w.dnum);
  const A* dd = static_cast<const A*>(w.dd);
  const A* rqa = static_cast<const A*>(w.rq);
  const A* Pm = static_cast<const A*>(w.Pm);
  const A* phiK = static_cast<const A*>(w.phiK);
  A* out = static_cast<A*>(w.dphiQ);
  const int64_t F = a.F, Dv = a.Dv, C = w.C;
  const int64_t tiles = a.B * a.Hq * nch * ceil_div(C, kTM) * ceil_div(F, kTN);
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const RowTile rt = row_tile(tile, nch, C, F);
    const int64_t b = rt.bh / a.Hq, h = rt.bh % a.Hq, item = b * a.Hkv + h / a.G;
    const int64_t L = key_count(a, b), j0 = rt.c * C, tn = C < a.S - j0 ? C : a.S - j0;
    const int64_t kn = w.causal ? chunk_keys(j0, C, a.S, L) : 0;
    const int64_t row0 = rt.bh * a.S + j0;
    const A* S = query_state<A>(a, w, item, rt.c);
    const A* z = S + F * Dv;
    const A* pk = phiK + (item * a.Sk + j0) * F;
    tile_product<A, kTM, kTN, true, true>(
        tn, F, Dv, rt.m0, rt.n0, [&](int64_t t, int64_t e) { return dn[(row0 + t) * Dv + e]; },
        [&](int64_t e, int64_t f) { return S[f * Dv + e]; },
        [&](int64_t t, int64_t f, A s) {
          A o = s + dd[row0 + t] * z[f];
          if (w.causal) {
            const A rq = rqa[row0 + t];
            if (rq != A(1)) o *= rq;
            const int64_t jn = t + 1 < kn ? t + 1 : kn;
            const A* pr = Pm + (row0 + t) * C;
            A x = A(0);
            for (int64_t j = 0; j < jn; ++j) x += pr[j] * pk[j * F + f];
            o += x;
          }
          out[(row0 + t) * F + f] = o;
        });
  }
}

/// q2_t of query t (its rows' weight in G, relative to ref): exp(ref - c_t), 1 unstabilized.
template <class A>
__device__ __forceinline__ A q_weight(const LinArgs& a, const BwdLin& w, const A* ck, int64_t t, int64_t L, A ref) {
  if (!a.stab) return A(1);
  return fac(ref, c_query<A>(w, ck, t, L));
}

/// The reference of query chunk c's G increment: c of its first query (the smallest of the chunk).
template <class A>
__device__ __forceinline__ A chunk_ref(const LinArgs& a, const BwdLin& w, const A* ck, int64_t c, int64_t L) {
  return a.stab ? c_query<A>(w, ck, c * w.Cq, L) : A(0);
}

/// GI[item][c] = sum over the group's heads g (in order) and the chunk's rows t (in order) of
/// phi(q_t) q2_t dnum_t^T (F x Dv tiles) and, with the first Dv tile, of phi(q_t) q2_t dden_t.
template <class T>
__global__ void ginc_kernel(const LinArgs a, const BwdLin w) {
  using A = acc_t<T>;
  const A* phiQ = static_cast<const A*>(w.phiQ);
  const A* dn = static_cast<const A*>(w.dnum);
  const A* dd = static_cast<const A*>(w.dd);
  const A* cKall = static_cast<const A*>(w.cK);
  A* GI = static_cast<A*>(w.GI);
  const int64_t F = a.F, Dv = a.Dv, E = F * Dv + F, nq = w.nq;
  const int64_t mt = ceil_div(F, kTM), nt = ceil_div(Dv, kTN) > 0 ? ceil_div(Dv, kTN) : 1, per = mt * nt;
  for (int64_t tile = blockIdx.x; tile < a.B * a.Hkv * nq * per; tile += gridDim.x) {
    const int64_t ic = tile / per, item = ic / nq, c = ic % nq, b = item / a.Hkv, hkv = item % a.Hkv;
    const int64_t m0 = (tile % per) / nt * kTM, n0 = (tile % per) % nt * kTN;
    const int64_t L = key_count(a, b), t0 = c * w.Cq, n = w.Cq < a.S - t0 ? w.Cq : a.S - t0;
    const A* ck = a.stab ? cKall + item * a.Sk : nullptr;
    const A ref = chunk_ref<A>(a, w, ck, c, L);
    const int64_t hrow0 = (b * a.Hq + hkv * a.G) * a.S + t0;  // row of (head g, t0 + i): hrow0 + g S + i
    A* out = GI + ic * E;
    auto row = [&](int64_t kk) { return hrow0 + (kk / n) * a.S + kk % n; };
    auto qw = [&](int64_t kk) { return q_weight<A>(a, w, ck, t0 + kk % n, L, ref); };
    if (Dv > 0)
      tile_product<A, kTM, kTN, false, false>(
          F, Dv, a.G * n, m0, n0, [&](int64_t f, int64_t kk) { return phiQ[row(kk) * F + f] * qw(kk); },
          [&](int64_t kk, int64_t e) { return dn[row(kk) * Dv + e]; },
          [&](int64_t f, int64_t e, A s) { out[f * Dv + e] = s; });
    if (n0 == 0) {
      const int64_t f1 = m0 + kTM < F ? m0 + kTM : F;
      for (int64_t f = m0 + threadIdx.x; f < f1; f += blockDim.x) {
        A s = A(0);
        for (int64_t kk = 0; kk < a.G * n; ++kk) s += phiQ[row(kk) * F + f] * dd[row(kk)] * qw(kk);
        out[F * Dv + f] = s;
      }
    }
  }
}

/// Per (item, state element), chunks in reverse: GI[c] becomes G_c, the gradient of the queries after
/// chunk c plus dL/dS_final (relative to R_c = c of chunk c + 1's first query; bidirectional: the global
/// c); the total goes to Gtot and dL/dS_0.
template <class T>
__global__ void rscan_kernel(const LinArgs a, const BwdLin w) {
  using A = acc_t<T>;
  const A* cKall = static_cast<const A*>(w.cK);
  A* GI = static_cast<A*>(w.GI);
  A* Gtot = static_cast<A*>(w.Gtot);
  const int64_t F = a.F, Dv = a.Dv, E = F * Dv + F, nq = w.nq;
  const A* sf = static_cast<const A*>(w.dsf);
  const A* zf = static_cast<const A*>(w.dzf);
  A* si = static_cast<A*>(w.dsi);
  A* zi = static_cast<A*>(w.dzi);
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < a.B * a.Hkv * E; i += step) {
    const int64_t item = i / E, e = i % E, b = item / a.Hkv, hkv = item % a.Hkv;
    const bool is_s = e < F * Dv;
    const int64_t f = is_s ? e / Dv : e - F * Dv, d = is_s ? e % Dv : 0;
    A s = A(0);
    if (is_s && sf) s = sf[b * w.dsfs[0] + hkv * w.dsfs[1] + f * w.dsfs[2] + d * w.dsfs[3]];
    if (!is_s && zf) s = zf[b * w.dzfs[0] + hkv * w.dzfs[1] + f * w.dzfs[2]];
    const int64_t L = key_count(a, b);
    const A* ck = a.stab ? cKall + item * a.Sk : nullptr;
    A* p = GI + item * nq * E + e;
    for (int64_t c = nq - 1; c >= 0; --c) {
      const A x = p[c * E];
      p[c * E] = s;
      if (a.stab && w.causal && L > 0) {  // from R_c to the chunk's reference (<= R_c)
        const A r = DevExp()(chunk_ref<A>(a, w, ck, c, L) - chunk_ref<A>(a, w, ck, c + 1, L));
        if (r != A(1)) s *= r;
      }
      s += x;
    }
    Gtot[i] = s;
    if (is_s && si) si[b * w.dsis[0] + hkv * w.dsis[1] + f * w.dsis[2] + d * w.dsis[3]] = s;
    if (!is_s && zi) zi[b * w.dzis[0] + hkv * w.dzis[1] + f * w.dzis[2]] = s;
  }
}

/// The G that key chunk c sees and its reference R_c (causal: G_c; bidirectional: the total).
template <class A>
__device__ __forceinline__ const A* key_grad_state(const LinArgs& a, const BwdLin& w, int64_t item, int64_t c) {
  const int64_t E = a.F * a.Dv + a.F;
  return w.causal ? static_cast<const A*>(w.GI) + (item * w.nq + c) * E : static_cast<const A*>(w.Gtot) + item * E;
}

/// kf_j = exp(c_j - R_c) of key j of chunk c (1 unstabilized).
template <class A>
__device__ __forceinline__ A key_factor(const LinArgs& a, const BwdLin& w, const A* ck, int64_t j, int64_t c,
                                        int64_t L) {
  if (!a.stab) return A(1);
  const A R = w.causal ? chunk_ref<A>(a, w, ck, c + 1, L) : c_query<A>(w, ck, 0, L);
  return fac(ck[j], R);
}

/// dphi(k_j) = kf_j (G v_j + g) + (causal) sum_g sum_{t >= j} Pm_g[t][j] phi(q_g,t) (key rows x F tiles).
template <class T>
__global__ void dphik_kernel(const LinArgs a, const BwdLin w, int64_t nch, int64_t C) {
  using A = acc_t<T>;
  const A* Pm = static_cast<const A*>(w.Pm);
  const A* phiQ = static_cast<const A*>(w.phiQ);
  const A* cKall = static_cast<const A*>(w.cK);
  A* out = static_cast<A*>(w.dphiK);
  const int64_t F = a.F, Dv = a.Dv;
  const int64_t tiles = a.B * a.Hkv * nch * ceil_div(C, kTM) * ceil_div(F, kTN);
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const RowTile rt = row_tile(tile, nch, C, F);
    const int64_t item = rt.bh, b = item / a.Hkv, hkv = item % a.Hkv;
    const int64_t L = key_count(a, b), j0 = rt.c * C, tn = C < a.Sk - j0 ? C : a.Sk - j0;
    const int64_t kn = bwd_chunk_keys(a, w, j0, L);
    const A* G = key_grad_state<A>(a, w, item, rt.c);
    const A* ck = a.stab ? cKall + item * a.Sk : nullptr;
    const T* v = static_cast<const T*>(a.v) + b * a.vs[0] + hkv * a.vs[1] + j0 * a.vs[2];
    const int64_t hrow0 = (b * a.Hq + hkv * a.G) * a.S + j0;
    const int64_t qn = w.causal ? (C < a.S - j0 ? C : a.S - j0) : 0;  // the chunk's query rows
    tile_product<A, kTM, kTN, true, true>(
        tn, F, Dv, rt.m0, rt.n0,
        [&](int64_t j, int64_t e) { return j < kn ? to_acc<A>(v[j * a.vs[2] + e * a.vs[3]]) : A(0); },
        [&](int64_t e, int64_t f) { return G[f * Dv + e]; },
        [&](int64_t j, int64_t f, A s) {
          A o = A(0);
          if (j < kn) {
            o = s + G[F * Dv + f];
            const A kf = key_factor<A>(a, w, ck, j0 + j, rt.c, L);
            if (kf != A(1)) o *= kf;
            for (int64_t g = 0; g < a.G && w.causal; ++g) {
              const int64_t r0 = hrow0 + g * a.S;
              A x = A(0);
              for (int64_t t = j; t < qn; ++t) x += Pm[(r0 + t) * C + j] * phiQ[(r0 + t) * F + f];
              o += x;
            }
          }
          out[(item * a.Sk + j0 + j) * F + f] = o;
        });
  }
}

/// dv_j = kf_j G^T phi(k_j) + (causal) sum_g sum_{t >= j} A_g[t][j] dnum_g,t; 0 for padded keys.
template <class T>
__global__ void dv_kernel(const LinArgs a, const BwdLin w, int64_t nch, int64_t C) {
  using A = acc_t<T>;
  const A* Am = static_cast<const A*>(w.Am);
  const A* dn = static_cast<const A*>(w.dnum);
  const A* phiK = static_cast<const A*>(w.phiK);
  const A* cKall = static_cast<const A*>(w.cK);
  const int64_t F = a.F, Dv = a.Dv;
  const int64_t tiles = a.B * a.Hkv * nch * ceil_div(C, kTM) * ceil_div(Dv, kTN);
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const RowTile rt = row_tile(tile, nch, C, Dv);
    const int64_t item = rt.bh, b = item / a.Hkv, hkv = item % a.Hkv;
    const int64_t L = key_count(a, b), j0 = rt.c * C, tn = C < a.Sk - j0 ? C : a.Sk - j0;
    const int64_t kn = bwd_chunk_keys(a, w, j0, L);
    const A* G = key_grad_state<A>(a, w, item, rt.c);
    const A* ck = a.stab ? cKall + item * a.Sk : nullptr;
    const A* pk = phiK + (item * a.Sk + j0) * F;
    const int64_t hrow0 = (b * a.Hq + hkv * a.G) * a.S + j0;
    const int64_t qn = w.causal ? (C < a.S - j0 ? C : a.S - j0) : 0;
    tile_product<A, kTM, kTN, true, false>(
        tn, Dv, F, rt.m0, rt.n0, [&](int64_t j, int64_t f) { return j < kn ? pk[j * F + f] : A(0); },
        [&](int64_t f, int64_t e) { return G[f * Dv + e]; },
        [&](int64_t j, int64_t e, A s) {
          A o = A(0);
          if (j < kn) {
            const A kf = key_factor<A>(a, w, ck, j0 + j, rt.c, L);
            o = kf != A(1) ? s * kf : s;
            for (int64_t g = 0; g < a.G && w.causal; ++g) {
              const int64_t r0 = hrow0 + g * a.S;
              A x = A(0);
              for (int64_t t = j; t < qn; ++t) x += Am[(r0 + t) * C + j] * dn[(r0 + t) * Dv + e];
              o += x;
            }
          }
          static_cast<T*>(w.dv)[b * w.dvs[0] + hkv * w.dvs[1] + (j0 + j) * w.dvs[2] + e * w.dvs[3]] =
              from_acc<T, A>(o);
        });
  }
}

/// Softmax features: gck[j] = eps * dden summed over the queries whose keys' stabilizer c_t key j attains
/// (the first key of a run of the running maximum; the queries of a run are contiguous: causal from j to
/// the next run's key, bidirectional all of them for the last run), chunk by chunk, head-major inside.
template <class T>
__global__ void gck_kernel(const LinArgs a, const BwdLin w) {
  using A = acc_t<T>;
  const A* cKall = static_cast<const A*>(w.cK);
  const A* dd = static_cast<const A*>(w.dd);
  A* gck = static_cast<A*>(w.gck);
  const A eps = static_cast<A>(a.eps);
  const int64_t rows = a.B * a.Hkv * a.Sk;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t m = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; m < rows; m += step) {
    const int64_t item = m / a.Sk, j = m % a.Sk, b = item / a.Hkv, hkv = item % a.Hkv;
    const int64_t L = key_count(a, b);
    const A* ck = cKall + item * a.Sk;
    A s = A(0);
    if (j < L && (j == 0 ? ck[0] > math::neg_inf<A>() : ck[j] > ck[j - 1])) {
      int64_t nx = j + 1;  // the next run's key (L: none)
      while (nx < L && !(ck[nx] > ck[j])) ++nx;
      int64_t t0 = j, t1 = nx < L ? nx : a.S;  // queries [t0, t1)
      if (!w.causal) {
        t0 = 0;
        t1 = nx < L ? 0 : a.S;
      }
      const int64_t hrow0 = (b * a.Hq + hkv * a.G) * a.S;
      for (int64_t c0 = t0 / w.Cq * w.Cq; c0 < t1; c0 += w.Cq) {
        const int64_t lo = c0 > t0 ? c0 : t0, hi = c0 + w.Cq < t1 ? c0 + w.Cq : t1;
        for (int64_t g = 0; g < a.G; ++g)
          for (int64_t t = lo; t < hi; ++t) s += eps * dd[hrow0 + g * a.S + t];
      }
    }
    gck[m] = s;
  }
}

/// Chain row sums of softmax features: s = sum_f dphi_f phi_f (+ gck for keys).
template <class T>
__global__ void row_sum_kernel(const LinArgs a, int64_t rows, const void* dphi_, const void* phi_, const void* gck_,
                               void* out_) {
  using A = acc_t<T>;
  const A* dphi = static_cast<const A*>(dphi_);
  const A* phi = static_cast<const A*>(phi_);
  const A* gck = static_cast<const A*>(gck_);
  A* out = static_cast<A*>(out_);
  const int64_t F = a.F;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t m = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; m < rows; m += step) {
    A s = A(0);
    for (int64_t f = 0; f < F; ++f) s += dphi[m * F + f] * phi[m * F + f];
    out[m] = gck ? s + gck[m] : s;
  }
}

/// Output rows of the chain: dq or dk of row m (the rows of a RowSet) at dimension d.
struct GradOut {
  void* x;
  int64_t xs[4];
};
template <class T, class A>
__device__ __forceinline__ void store_grad(const GradOut& o, const RowSet& r, int64_t m, int64_t d, A val) {
  const int64_t t = m % r.L, bh = m / r.L;
  static_cast<T*>(o.x)[(bh / r.H) * o.xs[0] + (bh % r.H) * o.xs[1] + t * o.xs[2] + d * o.xs[3]] = from_acc<T, A>(val);
}

/// Performer: dx = de W' (rows x D tiles over F), de the gradient of w_f . x': ReLU features dphi where
/// phi > shift; softmax features dphi phi with the stabilizer's term at the row's feature arg (queries
/// -s, keys +gck) and keys' -scale s x. Keys beyond key_lengths get 0.
template <class T>
__global__ void chain_proj_kernel(const LinArgs a, const BwdLin w, const RowSet r, const void* dphi_,
                                  const void* phi_, const int32_t* arg, const void* gck_, const void* rs_,
                                  GradOut o) {
  using A = acc_t<T>;
  const A* dphi = static_cast<const A*>(dphi_);
  const A* phi = static_cast<const A*>(phi_);
  const A* gck = static_cast<const A*>(gck_);
  const A* rs = static_cast<const A*>(rs_);
  const A* wS = static_cast<const A*>(a.wS);
  const A shift = static_cast<A>(math::kPerformerReluShift), fs2 = static_cast<A>(w.fs2);
  const int64_t F = a.F, D = a.D, rows = a.B * r.H * r.L;
  const int64_t mt = ceil_div(rows, kTM), nt = ceil_div(D, kTN);
  for (int64_t tile = blockIdx.x; tile < mt * nt; tile += gridDim.x) {
    const int64_t m0 = (tile / nt) * kTM, n0 = (tile % nt) * kTN;
    tile_product<A, kTM, kTN, true, false>(
        rows, D, F, m0, n0,
        [&](int64_t m, int64_t f) {
          if (!row_allowed(a, r, m)) return A(0);
          const A g = dphi[m * F + f], ph = phi[m * F + f];
          if (!a.stab) return ph > shift ? g : A(0);
          A de = g * ph;
          if (f == arg[m]) de += r.keys ? gck[m] : -rs[m];
          return de;
        },
        [&](int64_t f, int64_t d) { return wS[f * D + d]; },
        [&](int64_t m, int64_t d, A s) {
          A val = A(0);
          if (row_allowed(a, r, m)) {
            val = s;
            if (a.stab && r.keys) val = -fs2 * rs[m] * to_acc<A>(row_of<T>(r, m)[d * r.xs[3]]) + s;
          }
          store_grad<T, A>(o, r, m, d, val);
        });
  }
}

/// Elementwise maps: dx = dphi phi'(x) from the stored phi (elu1: phi > 1 where x > 0, else phi = e^x;
/// relu: 1 where phi > 0; identity: 1). Keys beyond key_lengths get 0.
template <class T>
__global__ void chain_map_kernel(const LinArgs a, const RowSet r, const void* dphi_, const void* phi_, GradOut o) {
  using A = acc_t<T>;
  const A* dphi = static_cast<const A*>(dphi_);
  const A* phi = static_cast<const A*>(phi_);
  const int64_t F = a.F, rows = a.B * r.H * r.L;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < rows * F; i += step) {
    const int64_t m = i / F, d = i % F;
    A val = A(0);
    if (row_allowed(a, r, m)) {
      const A g = dphi[i], ph = phi[i];
      val = g;
      if (a.map == LinearMap::Elu1)
        val = ph > A(1) ? g : g * ph;
      else if (a.map == LinearMap::Relu)
        val = ph > A(0) ? g : A(0);
    }
    store_grad<T, A>(o, r, m, d, val);
  }
}

template <class T>
void run_linear_backward(const LinearBwdProblem& bp, cudaStream_t stream) {
  using A = acc_t<T>;
  const LinearProblem& p = bp.fwd;
  LinArgs a = lin_args<A>(p);
  a.proj = p.projected();
  a.stab = p.stabilized();
  a.s_out = a.z_out = nullptr;
  const A fs = static_cast<A>(p.feature_scale);
  const int64_t F = p.F, D = p.D, Dv = p.Dv, E = F * Dv + F;
  const bool causal = p.causal;
  const int64_t C = kBwdChunk;
  a.C = causal ? C : kBiChunk;  // the forward kernels' chunk (bidirectional: keys per state increment)

  BwdLin w{};
  w.dout = bp.dout.data;
  for (int i = 0; i < 4; ++i) {
    w.dos[i] = bp.dout.stride[i];
    w.dqs[i] = bp.dq_stride[i];
    w.dks[i] = bp.dk_stride[i];
    w.dvs[i] = bp.dv_stride[i];
    w.dsfs[i] = bp.dstate_out.stride[i];
    w.dsis[i] = bp.dstate_in_stride[i];
  }
  for (int i = 0; i < 3; ++i) {
    w.dzfs[i] = bp.dz_out.stride[i];
    w.dzis[i] = bp.dz_in_stride[i];
  }
  w.dq = bp.dq;
  w.dk = bp.dk;
  w.dv = bp.dv;
  w.dsf = bp.dstate_out.present ? bp.dstate_out.data : nullptr;
  w.dzf = bp.dstate_out.present ? bp.dz_out.data : nullptr;
  w.dsi = bp.dstate_in;
  w.dzi = bp.dz_in;
  w.causal = causal;
  w.C = causal ? C : 0;
  w.nk = ceil_div(p.Sk, a.C);
  w.Cq = causal ? C : kBiChunk;
  w.nq = ceil_div(p.S, w.Cq);
  w.fs2 = static_cast<double>(static_cast<A>(p.feature_scale * p.feature_scale));

  const int64_t items = p.B * p.Hkv, krows = items * p.Sk, qrows = p.B * p.Hq * p.S;
  const int64_t wS_elems = a.proj ? F * D : 0, stat = a.stab ? krows : 0;
  const int64_t cw = causal ? C : 0;
  // Workspace (A): wS, phiK, hK, cK, P, Sfin, phiQ, Am, Pm, den, rq, dnum, dd, dphiQ, GI, Gtot, gck, dphiK,
  // rsum; then (int32) karg, qarg.
  const int64_t sizes[] = {wS_elems, krows * F, stat, stat, items * w.nk * E, causal ? 0 : items * E, qrows * F,
                           qrows * cw, qrows * cw, qrows, qrows, qrows * Dv, qrows, qrows * F, items * w.nq * E,
                           items * E, stat, krows * F, std::max(qrows, krows)};
  constexpr int kParts = static_cast<int>(sizeof(sizes) / sizeof(sizes[0]));
  int64_t n_all = 0;
  for (int64_t s : sizes) n_all += s;
  const int64_t n_int = stat + (a.stab ? qrows : 0);
  Workspace ws(sizeof(A) * static_cast<std::size_t>(n_all) + sizeof(int32_t) * static_cast<std::size_t>(n_int),
               stream);
  A* part[kParts];
  A* cur = ws.as<A>();
  for (int i = 0; i < kParts; ++i) {
    part[i] = cur;
    cur += sizes[i];
  }
  int32_t* ints = reinterpret_cast<int32_t*>(cur);
  a.wS = part[0];
  A* phiK = part[1];
  A* hK = part[2];
  A* cK = part[3];
  A* P = part[4];
  A* Sfin = part[5];
  A* phiQ = part[6];
  w.phiK = phiK;
  w.cK = cK;
  w.karg = ints;
  w.P = P;
  w.Sfin = Sfin;
  w.phiQ = phiQ;
  w.qarg = ints + stat;
  w.Am = part[7];
  w.Pm = part[8];
  w.den = part[9];
  w.rq = part[10];
  w.dnum = part[11];
  w.dd = part[12];
  w.dphiQ = part[13];
  w.GI = part[14];
  w.Gtot = part[15];
  w.gck = part[16];
  w.dphiK = part[17];
  w.rsum = part[18];

  auto grid = [](int64_t blocks) {
    return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(blocks, int64_t{1} << 20)));
  };
  auto rows_grid = [&](int64_t rows) { return grid(ceil_div(rows, kThreads)); };
  RowSet kr{};
  kr.x = p.k.data;
  kr.H = p.Hkv;
  kr.L = p.Sk;
  kr.keys = true;
  RowSet qr{};
  qr.x = p.q.data;
  qr.H = p.Hq;
  qr.L = p.S;
  qr.keys = false;
  for (int i = 0; i < 4; ++i) {
    kr.xs[i] = p.k.stride[i];
    qr.xs[i] = p.q.stride[i];
  }
  auto feature_grid = [&](int64_t rows) {
    return grid(a.proj ? ceil_div(rows, kTM) * ceil_div(F, kTN) : ceil_div(rows * F, kThreads));
  };

  // ---- the forward: key features (relative to c_j), the states, query features, scores, den
  if (wS_elems > 0) {
    scale_features_kernel<A><<<blocks_for(wS_elems, kThreads), kThreads, 0, stream>>>(
        part[0], p.features.data, p.features.dtype, p.features.stride[0], p.features.stride[1], F, D, fs);
    ATTNKIT_CUDA_CHECK_LAUNCH();
  }
  if (krows > 0 && F > 0) {
    features_kernel<T><<<feature_grid(krows), kThreads, 0, stream>>>(a, kr, phiK);
    ATTNKIT_CUDA_CHECK_LAUNCH();
    if (a.stab) {
      key_stats_arg_kernel<T><<<rows_grid(krows), kThreads, 0, stream>>>(a, kr, phiK, hK, cK, ints);
      ATTNKIT_CUDA_CHECK_LAUNCH();
      key_prefix_kernel<T><<<grid(items), kThreads, 0, stream>>>(a, cK);
      ATTNKIT_CUDA_CHECK_LAUNCH();
      key_exp_kernel<T><<<grid(ceil_div(krows * F, kThreads)), kThreads, 0, stream>>>(a, kr, phiK, hK, cK, true);
      ATTNKIT_CUDA_CHECK_LAUNCH();
    }
  }
  // States: the forward's increments and scan over key chunks of a.C (chunk_keys counts keys with a.S:
  // the bidirectional form passes Sk there).
  LinArgs af = a;
  af.S = causal ? p.S : p.Sk;
  if (!causal) {
    af.s_out = Sfin;
    af.z_out = Sfin + F * Dv;
    af.sos[0] = p.Hkv * E;
    af.sos[1] = E;
    af.sos[2] = Dv;
    af.sos[3] = 1;
    af.zos[0] = p.Hkv * E;
    af.zos[1] = E;
    af.zos[2] = 1;
  }
  const int64_t inc_blocks = items * w.nk * ceil_div(F, kTM) * std::max<int64_t>(ceil_div(Dv, kTN), 1);
  if (inc_blocks > 0) {
    inc_kernel<T><<<grid(inc_blocks), kThreads, 0, stream>>>(af, phiK, cK, P, w.nk);
    ATTNKIT_CUDA_CHECK_LAUNCH();
  }
  if (items * E > 0) {
    scan_kernel<T><<<grid(ceil_div(items * E, kThreads)), kThreads, 0, stream>>>(af, cK, P, w.nk);
    ATTNKIT_CUDA_CHECK_LAUNCH();
  }
  const int64_t nch_q = causal ? w.nk : 1, Cr_q = causal ? C : p.S;  // row chunks of the query kernels
  if (qrows > 0) {
    if (F > 0) {
      features_kernel<T><<<feature_grid(qrows), kThreads, 0, stream>>>(a, qr, phiQ);
      ATTNKIT_CUDA_CHECK_LAUNCH();
      if (a.stab) {
        query_map_kernel<T><<<rows_grid(qrows), kThreads, 0, stream>>>(a, phiQ, ints + stat);
        ATTNKIT_CUDA_CHECK_LAUNCH();
      }
    }
    BwdLin wq = w;
    wq.C = Cr_q;
    if (causal) {
      const int64_t sc_blocks = p.B * p.Hq * w.nk * ceil_div(C, kTM) * ceil_div(C, kTM);
      scores_kernel<T, kTM><<<grid(sc_blocks), kThreads, 0, stream>>>(a, phiQ, phiK, cK, part[7], w.nk);
      ATTNKIT_CUDA_CHECK_LAUNCH();
      causal_den_kernel<T><<<rows_grid(qrows), kThreads, 0, stream>>>(a, phiQ, cK, P, part[7], part[9], part[10],
                                                                       w.nk);
      ATTNKIT_CUDA_CHECK_LAUNCH();
    } else {
      LinArgs ad = a;
      ad.stab = false;  // the map is done: den only
      ad.states = Sfin;
      query_den_kernel<T><<<rows_grid(qrows), kThreads, 0, stream>>>(ad, phiQ, part[9]);
      ATTNKIT_CUDA_CHECK_LAUNCH();
    }
    // ---- dnum, dden, dq
    if (Dv > 0) {
      num_kernel<T><<<grid(p.B * p.Hq * nch_q * ceil_div(Cr_q, kTM) * ceil_div(Dv, kTN)), kThreads, 0, stream>>>(
          a, wq, nch_q);
      ATTNKIT_CUDA_CHECK_LAUNCH();
    }
    dnum_kernel<T><<<rows_grid(qrows), kThreads, 0, stream>>>(a, wq);
    ATTNKIT_CUDA_CHECK_LAUNCH();
    if (causal) {
      pscores_kernel<T><<<grid(p.B * p.Hq * w.nk * ceil_div(C, kTM) * ceil_div(C, kTM)), kThreads, 0, stream>>>(
          a, wq, w.nk);
      ATTNKIT_CUDA_CHECK_LAUNCH();
    }
    if (F > 0) {
      dphiq_kernel<T><<<grid(p.B * p.Hq * nch_q * ceil_div(Cr_q, kTM) * ceil_div(F, kTN)), kThreads, 0, stream>>>(
          a, wq, nch_q);
      ATTNKIT_CUDA_CHECK_LAUNCH();
    }
    GradOut oq{bp.dq, {bp.dq_stride[0], bp.dq_stride[1], bp.dq_stride[2], bp.dq_stride[3]}};
    if (D > 0) {
      if (a.proj) {
        if (a.stab) {
          row_sum_kernel<T><<<rows_grid(qrows), kThreads, 0, stream>>>(a, qrows, w.dphiQ, phiQ, nullptr, w.rsum);
          ATTNKIT_CUDA_CHECK_LAUNCH();
        }
        chain_proj_kernel<T><<<grid(ceil_div(qrows, kTM) * ceil_div(D, kTN)), kThreads, 0, stream>>>(
            a, w, qr, w.dphiQ, phiQ, w.qarg, nullptr, w.rsum, oq);
      } else {
        chain_map_kernel<T><<<grid(ceil_div(qrows * D, kThreads)), kThreads, 0, stream>>>(a, qr, w.dphiQ, phiQ, oq);
      }
      ATTNKIT_CUDA_CHECK_LAUNCH();
    }
  }
  // ---- G by query chunks, in reverse; dL/dS_0
  const int64_t ginc_blocks = items * w.nq * ceil_div(F, kTM) * std::max<int64_t>(ceil_div(Dv, kTN), 1);
  if (ginc_blocks > 0) {
    ginc_kernel<T><<<grid(ginc_blocks), kThreads, 0, stream>>>(a, w);
    ATTNKIT_CUDA_CHECK_LAUNCH();
  }
  if (items * E > 0) {
    rscan_kernel<T><<<grid(ceil_div(items * E, kThreads)), kThreads, 0, stream>>>(a, w);
    ATTNKIT_CUDA_CHECK_LAUNCH();
  }
  if (krows == 0) return;
  // ---- dk, dv
  const int64_t nch_k = causal ? w.nk : 1, Cr_k = causal ? C : p.Sk;
  BwdLin wk = w;
  wk.C = causal ? C : 0;
  if (F > 0) {
    dphik_kernel<T><<<grid(items * nch_k * ceil_div(Cr_k, kTM) * ceil_div(F, kTN)), kThreads, 0, stream>>>(
        a, wk, nch_k, Cr_k);
    ATTNKIT_CUDA_CHECK_LAUNCH();
  }
  if (Dv > 0) {
    dv_kernel<T><<<grid(items * nch_k * ceil_div(Cr_k, kTM) * ceil_div(Dv, kTN)), kThreads, 0, stream>>>(
        a, wk, nch_k, Cr_k);
    ATTNKIT_CUDA_CHECK_LAUNCH();
  }
  GradOut ok{bp.dk, {bp.dk_stride[0], bp.dk_stride[1], bp.dk_stride[2], bp.dk_stride[3]}};
  if (D > 0) {
    if (a.proj) {
      if (a.stab) {
        gck_kernel<T><<<rows_grid(krows), kThreads, 0, stream>>>(a, w);
        ATTNKIT_CUDA_CHECK_LAUNCH();
        row_sum_kernel<T><<<rows_grid(krows), kThreads, 0, stream>>>(a, krows, w.dphiK, phiK, w.gck, w.rsum);
        ATTNKIT_CUDA_CHECK_LAUNCH();
      }
      chain_proj_kernel<T><<<grid(ceil_div(krows, kTM) * ceil_div(D, kTN)), kThreads, 0, stream>>>(
          a, w, kr, w.dphiK, phiK, w.karg, w.gck, w.rsum, ok);
    } else {
      chain_map_kernel<T><<<grid(ceil_div(krows * D, kThreads)), kThreads, 0, stream>>>(a, kr, w.dphiK, phiK, ok);
    }
    ATTNKIT_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace

void linear_attention_backward(const LinearBwdProblem& p) {
  require_device(p.fwd.device_index);
  if (p.fwd.B == 0 || p.fwd.Hkv == 0) return;
  DeviceGuard g(p.fwd.device_index);
  const cudaStream_t stream = as_stream(p.fwd.stream);
  dispatch_float(p.fwd.dtype, [&](auto tag) { run_linear_backward<decltype(tag)>(p, stream); });
}

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
