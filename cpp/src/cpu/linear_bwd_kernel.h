#pragma once
// The CPU backward pass of linear attention and Performer, written once over SIMD width and compiled per
// instruction set by linear_{generic,avx2,avx512}.cpp. Semantics: the derivative of the forward of
// linear.h (attnkit.reference.linear_attention_backward / performer_attention_backward in float64).
//
// Per (batch b, kv head) work item, with phi the features, S_t / z_t the state seen by query t and
// y_t = num_t r_t, num_t = phi(q_t)^T S_t, r_t = 1 / (phi(q_t) . z_t + eps) (r = 1 unnormalized):
//   dnum_t = r_t dy_t,  dden_t = -r_t (dy_t . y_t)                              (0 where den + eps == 0)
//   dphi(q_t) = S_t dnum_t + z_t dden_t
//   dS_j = G_j = dS_final + sum_{t sees j} phi(q_t) dnum_t^T,  dz_j = g_j (same with dden_t)
//   dphi(k_j) = G_j v_j + g_j,  dv_j = G_j^T phi(k_j),  dS_0 = G_0, dz_0 = g_0
// Causal: pass 1 walks chunks forward with the running state (dq, and dnum / dden stored for pass 2),
// pass 2 walks them in reverse with the running G (dk, dv, the initial state's gradient). Inside a chunk
// the pairs j <= t are the masked products A = phi(Q) phi(K)^T and P = dnum V^T + dden 1^T:
//   dphi(Q) += P phi(K),  dphi(K) += P^T phi(Q),  dV += A^T dnum.
// Bidirectional: no intra-chunk part; pass 1 (every query sees the final state) also completes G, so
// pass 2 is the keys' products only.
// Memory: per work item O(S (F + G Dv)) (key features and the G query heads' dnum), never S x S.
//
// Performer softmax features carry the stabilizers of linear.h. Key j's features are stored relative to
// its own largest exponent kmax_j, so a pair (t, j) gets the factor exp(kmax_j - c_t) <= 1 (c_t the
// keys' running maximum seen by t); the state of pass 1 is kept relative to the c at its last key and G
// of pass 2 relative to the c of its first query (factors <= 1 again: nothing overflows). The stabilizers
// are functions of q and k: dL/dc_t = eps * dden_t goes to the key that attains c_t (the first one on
// ties), and the query's row maximum gets -sum_f dphi_f phi_f at its maximizing feature.
//
// Determinism: each work item is done by one thread in a fixed order. (Parallelism is over the B * Hkv
// items: with fewer items than threads some threads idle.)

#include <cmath>
#include <cstring>
#include <limits>

#include "attnkit/math/feature_maps.h"
#include "check.h"
#include "cpu/gemm_kernel.h"
#include "cpu/kernel_common.h"
#include "cpu/linear_kernel.h"
#include "cpu/parallel.h"
#include "cpu/simd.h"
#include "validate/linear.h"
#include "workspace.h"

namespace attnkit {
namespace detail {
namespace cpu {
inline namespace ATTNKIT_ISA_NAMESPACE {

/// Chunk length of the causal backward scans (the intra-chunk products cost O(C (F + Dv)) per row).
constexpr int64_t kLinearBwdChunk = 64;

template <class Cfg, class St>
struct LinearBwdKernel {
  using T = typename Cfg::T;
  using Gemm = MicroGemm<T, Cfg::W>;
  using Sd = Simd<T, Cfg::W>;
  using V = typename Sd::V;
  static constexpr int W = Cfg::W;
  static constexpr int RL = Cfg::RL;
  static constexpr int NV = Cfg::NV;

  struct Ctx {
    const LinearBwdProblem* bp;
    const LinearProblem* p;
    int64_t G, C, CP, FP, DP, DvP;
    T eps, half_log_m, fs2;  // fs2 = scale: |x'|^2 / 2 = fs2 / 2 |x|^2
    bool stab, proj;
    const T* Wf;   // (sqrt(scale) W) [F][DP]
    const T* WfT;  // its transpose [D][FP]
  };

  struct Work {
    T* phik;      // [Sk][FP]  key features (relative to kmax_j when stabilized), 0 for padded keys
    T* vb;        // [Sk][DvP] values, 0 for padded keys
    T* kmax;      // [Sk]      stabilized: largest exponent of key j (-inf when padded)
    int32_t* kf;  // [Sk]      its feature
    T* gck;       // [Sk]      stabilizer gradient gathered by key j
    T* c;         // [S]       c_t (running / global maximum of kmax over the keys query t sees)
    int32_t* cj;  // [S]       the key attaining c_t (-1: none)
    T* dnum;      // [G][S][DvP]
    T* dden;      // [G][S]
    T* M;         // [F][DvP]  state S (pass 1)
    T* MT;        // [Dv][FP]  its transpose
    T* z;         // [FP]      normalizer z
    T* G;         // [F][DvP]  dL/dS of the keys before the queries added so far (pass 2; bidirectional: 1)
    T* GT;        // [Dv][FP]
    T* gz;        // [FP]      dL/dz likewise
    T* Fac;       // [CP][CP]  pair factors with the mask (causal)
    T* A;         // [CP][CP]
    T* P;         // [CP][CP]
    T* vT;        // [Dv][CP]
    T* phikT;     // [F][CP]
    T* x;         // [CP][DP]  q or k rows
    T* phiq;      // [CP][FP]
    int32_t* qf;  // [CP]
    T* dphi;      // [CP][FP]
    T* dx;        // [CP][DP]
    T* rows;      // [CP][max(FP, DvP)]  scaled rows (state updates), dv rows
    T* num;       // [CP][DvP]
    T* den;       // [CP]
  };

  static int64_t seq_elems(const Ctx& c, int64_t* n_int) {
    const LinearProblem& p = *c.p;
    const int64_t CP = c.CP, RW = c.FP > c.DvP ? c.FP : c.DvP;
    *n_int = 2 * p.Sk + p.S + CP + 64;
    return p.Sk * (c.FP + c.DvP + 2) + p.S + c.G * p.S * (c.DvP + 1) + 2 * (p.F * c.DvP + p.Dv * c.FP + c.FP) +
           3 * CP * CP + p.Dv * CP + p.F * CP + CP * c.DP * 2 + 2 * CP * c.FP + CP * RW + CP * c.DvP + CP + 30 * 16;
  }

  static std::size_t work_bytes(const Ctx& c) {
    int64_t ni = 0;
    const int64_t n = seq_elems(c, &ni);
    return sizeof(T) * static_cast<std::size_t>(n) + sizeof(int32_t) * static_cast<std::size_t>(ni) + 32 * 64;
  }

  static Work carve(void* base, const Ctx& c) {
    const LinearProblem& p = *c.p;
    Carver cv(base);
    const int64_t CP = c.CP, RW = c.FP > c.DvP ? c.FP : c.DvP;
    Work w;
    w.phik = cv.take<T>(p.Sk * c.FP);
    w.vb = cv.take<T>(p.Sk * c.DvP);
    w.kmax = cv.take<T>(p.Sk);
    w.kf = cv.take<int32_t>(p.Sk);
    w.gck = cv.take<T>(p.Sk);
    w.c = cv.take<T>(p.S);
    w.cj = cv.take<int32_t>(p.S);
    w.dnum = cv.take<T>(c.G * p.S * c.DvP);
    w.dden = cv.take<T>(c.G * p.S);
    w.M = cv.take<T>(p.F * c.DvP);
    w.MT = cv.take<T>(p.Dv * c.FP);
    w.z = cv.take<T>(c.FP);
    w.G = cv.take<T>(p.F * c.DvP);
    w.GT = cv.take<T>(p.Dv * c.FP);
    w.gz = cv.take<T>(c.FP);
    w.Fac = cv.take<T>(CP * CP);
    w.A = cv.take<T>(CP * CP);
    w.P = cv.take<T>(CP * CP);
    w.vT = cv.take<T>(p.Dv * CP);
    w.phikT = cv.take<T>(p.F * CP);
    w.x = cv.take<T>(CP * c.DP);
    w.phiq = cv.take<T>(CP * c.FP);
    w.qf = cv.take<int32_t>(CP);
    w.dphi = cv.take<T>(CP * c.FP);
    w.dx = cv.take<T>(CP * c.DP);
    w.rows = cv.take<T>(CP * RW);
    w.num = cv.take<T>(CP * c.DvP);
    w.den = cv.take<T>(CP);
    return w;
  }

  // ------------------------------------------------------------------------------------------ helpers

  static T neg_inf() { return -std::numeric_limits<T>::infinity(); }

  /// exp(a - b) for a <= b, 0 when a is -inf (nothing there).
  static T fac(T a, T b) { return a == neg_inf() ? T(0) : std::exp(a - b); }

  /// n rows [t0, t0 + n) of head (b, h) of x (N columns) as T rows of ld columns, zero padded.
  static void load_rows(const ViewN<4>& x, int64_t b, int64_t h, int64_t t0, int64_t n, int64_t N, T* dst,
                        int64_t ld) {
    for (int64_t t = 0; t < n; ++t) {
      const St* r = LinearKernel<Cfg, St>::row_ptr(x, b, h, t0 + t);
      for (int64_t d = 0; d < N; ++d) dst[t * ld + d] = static_cast<T>(to_acc(r[d * x.stride[3]]));
      for (int64_t d = N; d < ld; ++d) dst[t * ld + d] = T(0);
    }
  }

  static void store_rows(void* base, const int64_t* stride, int64_t b, int64_t h, int64_t t0, int64_t n, int64_t N,
                         const T* src, int64_t ld) {
    for (int64_t t = 0; t < n; ++t) {
      St* dst = static_cast<St*>(base) + b * stride[0] + h * stride[1] + (t0 + t) * stride[2];
      for (int64_t d = 0; d < N; ++d) dst[d * stride[3]] = from_acc<St>(src[t * ld + d]);
    }
  }

  static int64_t key_count(const LinearProblem& p, int64_t b) {
    return p.key_lengths.present ? load_int(p.key_lengths.data, p.key_lengths.dtype, b * p.key_lengths.stride[0])
                                 : p.Sk;
  }

  /// Features of n rows x [n][DP] into phi [n][FP] (padded columns zero). Stabilized maps: queries get
  /// phi = m^-1/2 exp(w - max_f w) and arg[t] = the maximizing feature; keys get the exponents
  /// e = w - |x'|^2 / 2, mx[t] = max_f e, arg[t] its feature and phi = m^-1/2 exp(e - mx).
  static void features(const Ctx& c, const T* x, int64_t n, T* phi, bool query, T* mx, int32_t* arg) {
    const LinearProblem& p = *c.p;
    const int64_t F = p.F, FP = c.FP, D = p.D;
    if (!c.proj) {  // F = D, FP = DP
      for (int64_t t = 0; t < n; ++t) {
        const T* xr = x + t * c.DP;
        T* r = phi + t * FP;
        for (int64_t f = 0; f < FP; f += W) {
          const V v = Sd::load(xr + f);
          if (p.map == LinearMap::Elu1)
            Sd::store(r + f, math::phi_elu1(v, [](V a) { return Sd::exp(a); }));
          else if (p.map == LinearMap::Relu)
            Sd::store(r + f, math::phi_relu(v));
          else
            Sd::store(r + f, v);
        }
        for (int64_t f = F; f < FP; ++f) r[f] = T(0);
      }
      return;
    }
    Gemm::template gemm<RL, NV, Store::Overwrite>(n, F, D, x, c.DP, 1, c.WfT, FP, phi, FP);
    for (int64_t t = 0; t < n; ++t) {
      T* e = phi + t * FP;
      if (!c.stab) {
        for (int64_t f = 0; f < FP; f += W) Sd::store(e + f, math::performer_relu<T>(Sd::load(e + f)));
        for (int64_t f = F; f < FP; ++f) e[f] = T(0);
        continue;
      }
      if (!query) {
        T sq = T(0);
        for (int64_t d = 0; d < D; ++d) sq += x[t * c.DP + d] * x[t * c.DP + d];
        const T half_sq = T(0.5) * c.fs2 * sq;
        for (int64_t f = 0; f < F; ++f) e[f] = math::favor_key_exponent(e[f], half_sq);
      }
      int32_t best = 0;
      for (int64_t f = 1; f < F; ++f)
        if (e[f] > e[best]) best = static_cast<int32_t>(f);
      const T m = e[best];
      arg[t] = best;
      if (mx) mx[t] = m;
      const V vm = Sd::set1(m), hlm = Sd::set1(c.half_log_m);
      for (int64_t f = 0; f < FP; f += W) Sd::store(e + f, Sd::exp(math::favor_feature_arg(Sd::load(e + f), vm, hlm)));
      for (int64_t f = F; f < FP; ++f) e[f] = T(0);
    }
  }

  /// dx [n][DP] from the gradient dphi [n][FP] of features phi of rows x. Keys (`key_j0` >= 0) add their
  /// stabilizer gradient w.gck to the exponent of their largest feature, and the -|x'|^2 / 2 term.
  static void chain(const Ctx& c, const Work& w, const T* x, const T* phi, T* dphi, const int32_t* arg, int64_t n,
                    int64_t key_j0, T* dx) {
    const LinearProblem& p = *c.p;
    const int64_t F = p.F, FP = c.FP, D = p.D, DP = c.DP;
    if (!c.proj) {
      for (int64_t t = 0; t < n; ++t)
        for (int64_t d = 0; d < D; ++d) {
          const T ph = phi[t * FP + d], g = dphi[t * FP + d];
          T r = g;  // identity
          if (p.map == LinearMap::Elu1)
            r = ph > T(1) ? g : g * ph;  // phi > 1 exactly where x > 0; e^x = phi elsewhere
          else if (p.map == LinearMap::Relu)
            r = ph > T(0) ? g : T(0);
          dx[t * DP + d] = r;
        }
      return;
    }
    const T shift = static_cast<T>(math::kPerformerReluShift);
    for (int64_t t = 0; t < n; ++t) {
      T* g = dphi + t * FP;
      const T* ph = phi + t * FP;
      if (!c.stab) {
        for (int64_t f = 0; f < F; ++f) g[f] = ph[f] > shift ? g[f] : T(0);
        continue;
      }
      T s = T(0);
      for (int64_t f = 0; f < F; ++f) s += (g[f] *= ph[f]);
      if (key_j0 < 0) {
        g[arg[t]] -= s;  // the query's row maximum
      } else {
        g[arg[t]] += w.gck[key_j0 + t];  // the keys' running maximum, attained here
        s += w.gck[key_j0 + t];
        for (int64_t d = 0; d < D; ++d) dx[t * DP + d] = -c.fs2 * s * x[t * DP + d];
      }
    }
    if (c.stab && key_j0 >= 0)
      Gemm::template gemm<RL, NV, Store::Accumulate>(n, D, F, dphi, FP, 1, c.Wf, DP, dx, DP);
    else
      Gemm::template gemm<RL, NV, Store::Overwrite>(n, D, F, dphi, FP, 1, c.Wf, DP, dx, DP);
  }

  static void transpose(const T* src, int64_t rows, int64_t cols, int64_t lds, T* dst, int64_t ldd) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t q = 0; q < cols; ++q) dst[q * ldd + r] = src[r * lds + q];
  }

  // ------------------------------------------------------------------------------------------- passes

  /// Key features, values and stabilizers of the whole sequence of (b, hkv). Returns the largest kmax over
  /// the allowed keys (-inf when there is none): bidirectional attention's c.
  static T prepare(const Ctx& c, const Work& w, int64_t b, int64_t hkv, int64_t L) {
    const LinearProblem& p = *c.p;
    for (int64_t j0 = 0; j0 < p.Sk; j0 += c.C) {
      const int64_t n = imin(c.C, p.Sk - j0);
      load_rows(p.k, b, hkv, j0, n, p.D, w.x, c.DP);
      features(c, w.x, n, w.phik + j0 * c.FP, false, w.kmax + j0, w.kf + j0);
      load_rows(p.v, b, hkv, j0, n, p.Dv, w.vb + j0 * c.DvP, c.DvP);
    }
    for (int64_t j = 0; j < p.Sk; ++j) {
      w.gck[j] = T(0);
      if (!c.stab) w.kmax[j] = T(0);
      if (j >= L) {
        std::memset(w.phik + j * c.FP, 0, sizeof(T) * c.FP);
        std::memset(w.vb + j * c.DvP, 0, sizeof(T) * c.DvP);
        w.kmax[j] = neg_inf();
      }
    }
    // c_t and the key attaining it (strict > keeps the first on ties).
    T cur = neg_inf();
    int32_t at = -1;
    for (int64_t j = 0; j < (p.causal ? p.S : p.Sk); ++j) {
      if (j < L && w.kmax[j] > cur) cur = w.kmax[j], at = static_cast<int32_t>(j);
      if (p.causal) w.c[j] = cur, w.cj[j] = at;
    }
    if (!p.causal)
      for (int64_t t = 0; t < p.S; ++t) w.c[t] = cur, w.cj[t] = at;
    return cur;
  }

  /// Pair factors of the causal chunk [t0, t0 + n): exp(kmax_j - c_t) (1 unstabilized) for allowed pairs
  /// j <= t, j < L, else 0.
  static void pair_factors(const Ctx& c, const Work& w, int64_t t0, int64_t n, int64_t L) {
    const int64_t CP = c.CP;
    for (int64_t t = 0; t < n; ++t) {
      T* r = w.Fac + t * CP;
      if (!c.stab) {
        for (int64_t j = 0; j < CP; ++j) r[j] = j <= t && t0 + j < L ? T(1) : T(0);
        continue;
      }
      const T ct = w.c[t0 + t];
      for (int64_t j = 0; j < CP; ++j) r[j] = j <= t && t0 + j < L ? w.kmax[t0 + j] - ct : T(0);
      for (int64_t j = 0; j < CP; j += W) Sd::store(r + j, Sd::exp(Sd::load(r + j)));
      for (int64_t j = 0; j < CP; ++j)
        if (!(j <= t && t0 + j < L)) r[j] = T(0);
    }
  }

  /// Query features of rows [t0, t0 + n) of head h into w.phiq / w.qf (q rows left in w.x).
  static void query_features(const Ctx& c, const Work& w, int64_t b, int64_t h, int64_t t0, int64_t n) {
    load_rows(c.p->q, b, h, t0, n, c.p->D, w.x, c.DP);
    features(c, w.x, n, w.phiq, true, nullptr, w.qf);
  }

  /// Pass 1 for query chunk [t0, t0 + n) of every head of the group: the state (relative to c_state) is
  /// the one before the chunk. Stores dnum / dden, gathers the key-stabilizer gradient, writes dq.
  static void query_chunk(const Ctx& c, const Work& w, int64_t b, int64_t hkv, int64_t t0, int64_t n, T c_state,
                          bool intra) {
    const LinearBwdProblem& bp = *c.bp;
    const LinearProblem& p = *c.p;
    const int64_t FP = c.FP, DvP = c.DvP, CP = c.CP, F = p.F, Dv = p.Dv;
    for (int64_t g = 0; g < c.G; ++g) {
      const int64_t h = hkv * c.G + g;
      query_features(c, w, b, h, t0, n);
      // num = rf_t phi(q_t)^T S + intra, den likewise.
      Gemm::template gemm<RL, NV, Store::Overwrite>(n, Dv, F, w.phiq, FP, 1, w.M, DvP, w.num, DvP);
      for (int64_t t = 0; t < n; ++t) {
        T d = T(0);
        for (int64_t f = 0; f < F; ++f) d += w.phiq[t * FP + f] * w.z[f];
        const T rf = c.stab ? fac(c_state, w.c[t0 + t]) : T(1);
        w.den[t] = d * rf;
        for (int64_t e = 0; e < Dv; ++e) w.num[t * DvP + e] *= rf;
      }
      if (intra) {
        Gemm::template gemm<RL, NV, Store::Overwrite>(n, n, F, w.phiq, FP, 1, w.phikT, CP, w.A, CP);
        for (int64_t t = 0; t < n; ++t) {
          T s = T(0);
          for (int64_t j = 0; j < n; ++j) s += (w.A[t * CP + j] *= w.Fac[t * CP + j]);
          w.den[t] += s;
        }
        Gemm::template gemm<RL, NV, Store::Accumulate>(n, Dv, n, w.A, CP, 1, w.vb + t0 * DvP, DvP, w.num, DvP);
      }
      // dnum, dden and the stabilizer gradient.
      T* dn = w.dnum + (g * p.S + t0) * DvP;
      T* dd = w.dden + g * p.S + t0;
      load_rows(bp.dout, b, h, t0, n, Dv, dn, DvP);
      for (int64_t t = 0; t < n; ++t) {
        T* y = w.num + t * DvP;
        T* gy = dn + t * DvP;
        if (!p.normalize) {
          dd[t] = T(0);
          continue;
        }
        const T den = w.den[t] + c.eps;
        const T r = den == T(0) ? T(0) : T(1) / den;
        T yy = T(0);
        for (int64_t e = 0; e < Dv; ++e) yy += gy[e] * y[e] * r;
        for (int64_t e = 0; e < Dv; ++e) gy[e] *= r;
        dd[t] = -yy * r;
        const int32_t j = w.cj[t0 + t];
        if (c.stab && j >= 0) w.gck[j] += c.eps * dd[t];
      }
      // dphi(q) = rf_t (S dnum + z dden) + P phi(K).
      Gemm::template gemm<RL, NV, Store::Overwrite>(n, F, Dv, dn, DvP, 1, w.MT, FP, w.dphi, FP);
      for (int64_t t = 0; t < n; ++t) {
        const T rf = c.stab ? fac(c_state, w.c[t0 + t]) : T(1);
        for (int64_t f = 0; f < F; ++f) w.dphi[t * FP + f] = (w.dphi[t * FP + f] + dd[t] * w.z[f]) * rf;
      }
      if (intra) {
        make_p(c, w, dn, dd, n);
        Gemm::template gemm<RL, NV, Store::Accumulate>(n, F, n, w.P, CP, 1, w.phik + t0 * FP, FP, w.dphi, FP);
      }
      if (!intra) add_head_queries(c, w, g, t0, n, c_state);  // bidirectional: every c_t is c_state
      chain(c, w, w.x, w.phiq, w.dphi, w.qf, n, -1, w.dx);
      store_rows(bp.dq, bp.dq_stride, b, h, t0, n, p.D, w.dx, c.DP);
    }
  }

  /// P = (dnum V^T + dden) * Fac for the chunk whose values are in w.vT.
  static void make_p(const Ctx& c, const Work& w, const T* dn, const T* dd, int64_t n) {
    const int64_t CP = c.CP;
    Gemm::template gemm<RL, NV, Store::Overwrite>(n, n, c.p->Dv, dn, c.DvP, 1, w.vT, CP, w.P, CP);
    for (int64_t t = 0; t < n; ++t)
      for (int64_t j = 0; j < n; ++j) w.P[t * CP + j] = (w.P[t * CP + j] + dd[t]) * w.Fac[t * CP + j];
  }

  /// Adds keys [j0, j0 + n) to the state, which moves from stabilizer c_state to c_new.
  static void add_keys(const Ctx& c, const Work& w, int64_t j0, int64_t n, T c_state, T c_new) {
    const LinearProblem& p = *c.p;
    const int64_t FP = c.FP, DvP = c.DvP, F = p.F;
    const T* src = w.phik + j0 * FP;
    if (c.stab) {
      const T r = fac(c_state, c_new);
      for (int64_t i = 0; i < F * DvP; ++i) w.M[i] *= r;
      for (int64_t f = 0; f < FP; ++f) w.z[f] *= r;
      for (int64_t j = 0; j < n; ++j) {
        const T kf = fac(w.kmax[j0 + j], c_new);
        for (int64_t f = 0; f < FP; ++f) w.rows[j * FP + f] = src[j * FP + f] * kf;
      }
      src = w.rows;
    }
    Gemm::template gemm<RL, NV, Store::Accumulate>(F, p.Dv, n, src, 1, FP, w.vb + j0 * DvP, DvP, w.M, DvP);
    for (int64_t j = 0; j < n; ++j)
      for (int64_t f = 0; f < F; ++f) w.z[f] += src[j * FP + f];
    transpose(w.M, F, p.Dv, DvP, w.MT, FP);
  }

  /// Adds head g's queries [t0, t0 + n) (features in w.phiq) to G, which is relative to c_ref, the c of
  /// the first of them that saw a key. w.GT is left stale (transpose after the last head).
  static void add_head_queries(const Ctx& c, const Work& w, int64_t g, int64_t t0, int64_t n, T c_ref) {
    const LinearProblem& p = *c.p;
    const int64_t FP = c.FP, DvP = c.DvP, F = p.F, Dv = p.Dv;
    const T* dn = w.dnum + (g * p.S + t0) * DvP;
    const T* dd = w.dden + g * p.S + t0;
    for (int64_t t = 0; t < n; ++t) {
      // c_t >= c_ref: the factor exp(c_ref - c_t) <= 1 (0 where c_t is -inf: the query saw no key)
      const T q2 = !c.stab ? T(1) : w.c[t0 + t] == neg_inf() ? T(0) : std::exp(c_ref - w.c[t0 + t]);
      for (int64_t e = 0; e < Dv; ++e) w.rows[t * DvP + e] = dn[e + t * DvP] * q2;
      for (int64_t f = 0; f < F; ++f) w.gz[f] += w.phiq[t * FP + f] * dd[t] * q2;
    }
    Gemm::template gemm<RL, NV, Store::Accumulate>(F, Dv, n, w.phiq, 1, FP, w.rows, DvP, w.G, DvP);
  }

  /// Causal pass 2: G moves to the smallest finite c of the chunk's queries [t0, t0 + n) (that of the
  /// first one that saw a key), before they are added.
  static void rebase(const Ctx& c, const Work& w, int64_t t0, int64_t n, T& c_ref) {
    int64_t first = 0;
    while (first < n && w.c[t0 + first] == neg_inf()) ++first;
    if (!c.stab || first == n) return;
    const T r = std::exp(w.c[t0 + first] - c_ref);
    for (int64_t i = 0; i < c.p->F * c.DvP; ++i) w.G[i] *= r;
    for (int64_t f = 0; f < c.FP; ++f) w.gz[f] *= r;
    c_ref = w.c[t0 + first];
  }

  /// Pass 2 for key chunk [j0, j0 + n): G (relative to c_ref) holds the queries after the chunk.
  /// Causal (`intra`): also the pairs inside the chunk, then the chunk's queries join G (c_ref follows).
  static void key_chunk(const Ctx& c, const Work& w, int64_t b, int64_t hkv, int64_t j0, int64_t n, T& c_ref,
                        bool intra, int64_t L) {
    const LinearBwdProblem& bp = *c.bp;
    const LinearProblem& p = *c.p;
    const int64_t FP = c.FP, DvP = c.DvP, CP = c.CP, F = p.F, Dv = p.Dv;
    T* dvr = w.num;  // dv rows [n][DvP]
    const T* phik = w.phik + j0 * FP;
    Gemm::template gemm<RL, NV, Store::Overwrite>(n, F, Dv, w.vb + j0 * DvP, DvP, 1, w.GT, FP, w.dphi, FP);
    Gemm::template gemm<RL, NV, Store::Overwrite>(n, Dv, F, phik, FP, 1, w.G, DvP, dvr, DvP);
    for (int64_t j = 0; j < n; ++j) {
      const T kf = c.stab ? fac(w.kmax[j0 + j], c_ref) : T(1);
      for (int64_t f = 0; f < F; ++f) w.dphi[j * FP + f] = (w.dphi[j * FP + f] + w.gz[f]) * kf;
      for (int64_t e = 0; e < Dv; ++e) dvr[j * DvP + e] *= kf;
    }
    if (intra) {
      rebase(c, w, j0, n, c_ref);
      for (int64_t g = 0; g < c.G; ++g) {
        query_features(c, w, b, hkv * c.G + g, j0, n);
        const T* dn = w.dnum + (g * p.S + j0) * DvP;
        const T* dd = w.dden + g * p.S + j0;
        Gemm::template gemm<RL, NV, Store::Overwrite>(n, n, F, w.phiq, FP, 1, w.phikT, CP, w.A, CP);
        for (int64_t i = 0; i < n * CP; ++i) w.A[i] *= w.Fac[i];
        make_p(c, w, dn, dd, n);
        Gemm::template gemm<RL, NV, Store::Accumulate>(n, F, n, w.P, 1, CP, w.phiq, FP, w.dphi, FP);
        Gemm::template gemm<RL, NV, Store::Accumulate>(n, Dv, n, w.A, 1, CP, dn, DvP, dvr, DvP);
        add_head_queries(c, w, g, j0, n, c_ref);
      }
      transpose(w.G, F, Dv, DvP, w.GT, FP);
    }
    load_rows(p.k, b, hkv, j0, n, p.D, w.x, c.DP);
    chain(c, w, w.x, phik, w.dphi, w.kf + j0, n, j0, w.dx);
    for (int64_t j = 0; j < n; ++j)
      if (j0 + j >= L) {
        std::memset(w.dx + j * c.DP, 0, sizeof(T) * c.DP);
        std::memset(dvr + j * DvP, 0, sizeof(T) * DvP);
      }
    store_rows(bp.dk, bp.dk_stride, b, hkv, j0, n, p.D, w.dx, c.DP);
    store_rows(bp.dv, bp.dv_stride, b, hkv, j0, n, Dv, dvr, DvP);
  }

  /// The chunk's key features and values transposed ([F][CP], [Dv][CP]) for the intra-chunk products.
  static void chunk_transposes(const Ctx& c, const Work& w, int64_t j0, int64_t n) {
    transpose(w.phik + j0 * c.FP, n, c.p->F, c.FP, w.phikT, c.CP);
    transpose(w.vb + j0 * c.DvP, n, c.p->Dv, c.DvP, w.vT, c.CP);
  }

  /// Loads a [F][Dv] / [F] state pair of (b, hkv) into M / z, and M's transpose into MT (zero when absent).
  static void load_state(const Ctx& c, const ViewN<4>& s, const ViewN<3>& z, int64_t b, int64_t hkv, T* M, T* MT,
                         T* zd) {
    const LinearProblem& p = *c.p;
    std::memset(M, 0, sizeof(T) * p.F * c.DvP);
    std::memset(zd, 0, sizeof(T) * c.FP);
    if (s.present) {
      const T* sb = static_cast<const T*>(s.data) + b * s.stride[0] + hkv * s.stride[1];
      const T* zb = static_cast<const T*>(z.data) + b * z.stride[0] + hkv * z.stride[1];
      for (int64_t f = 0; f < p.F; ++f) {
        for (int64_t e = 0; e < p.Dv; ++e) M[f * c.DvP + e] = sb[f * s.stride[2] + e * s.stride[3]];
        zd[f] = zb[f * z.stride[2]];
      }
    }
    transpose(M, p.F, p.Dv, c.DvP, MT, c.FP);
  }

  static void item(const Ctx& c, const Work& w, int64_t b, int64_t hkv) {
    const LinearBwdProblem& bp = *c.bp;
    const LinearProblem& p = *c.p;
    const int64_t L = key_count(p, b);
    const int64_t S = p.S, C = c.C;
    const T c_all = prepare(c, w, b, hkv, L);
    // Pass 1: forward.
    load_state(c, p.state_in, p.z_in, b, hkv, w.M, w.MT, w.z);
    load_state(c, bp.dstate_out, bp.dz_out, b, hkv, w.G, w.GT, w.gz);
    T c_state = neg_inf();
    if (p.causal) {
      for (int64_t t0 = 0; t0 < S; t0 += C) {
        const int64_t n = imin(C, S - t0);
        pair_factors(c, w, t0, n, L);
        chunk_transposes(c, w, t0, n);
        query_chunk(c, w, b, hkv, t0, n, c_state, true);
        add_keys(c, w, t0, n, c_state, w.c[t0 + n - 1]);
        c_state = w.c[t0 + n - 1];
      }
    } else {
      const T cg = c_all;
      for (int64_t j0 = 0; j0 < p.Sk; j0 += C) add_keys(c, w, j0, imin(C, p.Sk - j0), j0 == 0 ? neg_inf() : cg, cg);
      for (int64_t t0 = 0; t0 < S; t0 += C) query_chunk(c, w, b, hkv, t0, imin(C, S - t0), cg, false);
    }
    // Pass 2: reverse (bidirectional: G is complete after pass 1).
    if (p.causal) {
      T c_ref = S > 0 ? w.c[S - 1] : neg_inf();
      for (int64_t t0 = (S - 1) / C * C; S > 0 && t0 >= 0; t0 -= C) {
        const int64_t n = imin(C, S - t0);
        pair_factors(c, w, t0, n, L);
        chunk_transposes(c, w, t0, n);
        key_chunk(c, w, b, hkv, t0, n, c_ref, true, L);
      }
    } else {
      T cg = c_all;
      transpose(w.G, p.F, p.Dv, c.DvP, w.GT, c.FP);
      for (int64_t j0 = 0; j0 < p.Sk; j0 += C) key_chunk(c, w, b, hkv, j0, imin(C, p.Sk - j0), cg, false, L);
    }
    if (bp.dstate_in) {
      T* sd = static_cast<T*>(bp.dstate_in) + b * bp.dstate_in_stride[0] + hkv * bp.dstate_in_stride[1];
      T* zd = static_cast<T*>(bp.dz_in) + b * bp.dz_in_stride[0] + hkv * bp.dz_in_stride[1];
      for (int64_t f = 0; f < p.F; ++f) {
        for (int64_t e = 0; e < p.Dv; ++e) sd[f * bp.dstate_in_stride[2] + e * bp.dstate_in_stride[3]] = w.G[f * c.DvP + e];
        zd[f * bp.dz_in_stride[2]] = w.gz[f];
      }
    }
  }

  static void run(const LinearBwdProblem& bp) {
    const LinearProblem& p = bp.fwd;
    Ctx c;
    c.bp = &bp;
    c.p = &p;
    c.G = p.group();
    c.C = p.causal ? kLinearBwdChunk : 256;
    c.CP = round_up(c.C, W);
    c.FP = round_up(p.F, W);
    c.DP = round_up(p.D, W);
    c.DvP = round_up(p.Dv, W);
    c.eps = static_cast<T>(p.eps);
    c.stab = p.stabilized();
    c.proj = p.projected();
    c.half_log_m = static_cast<T>(0.5 * std::log(static_cast<double>(p.F)));
    c.fs2 = static_cast<T>(p.feature_scale * p.feature_scale);
    c.Wf = c.WfT = nullptr;
    Workspace shared(c.proj ? 2 * Workspace::need<T>(static_cast<std::size_t>(p.F * c.DP + p.D * c.FP)) : 64,
                     "linear attention backward's features");
    if (c.proj) {
      T* Wf = shared.take<T>(static_cast<std::size_t>(p.F * c.DP));
      T* WfT = shared.take<T>(static_cast<std::size_t>(p.D * c.FP));
      std::memset(Wf, 0, sizeof(T) * p.F * c.DP);
      std::memset(WfT, 0, sizeof(T) * p.D * c.FP);
      const ViewN<2>& f = p.features;
      const T fs = static_cast<T>(p.feature_scale);
      for (int64_t m = 0; m < p.F; ++m)
        for (int64_t d = 0; d < p.D; ++d)
          Wf[m * c.DP + d] = WfT[d * c.FP + m] =
              fs * load_float<T>(f.data, f.dtype, m * f.stride[0] + d * f.stride[1]);
      c.Wf = Wf;
      c.WfT = WfT;
    }
    const int64_t items = p.B * p.Hkv;
    parallel_with_scratch("linear attention backward", items > 1, work_bytes(c), /*zero=*/true, [&](void* mem) {
      const Work w = carve(mem, c);
      team_for(items, mem, [&](int64_t it) { item(c, w, it / p.Hkv, it % p.Hkv); });
    });
  }
};

/// Runs the backward core for every storage dtype with the ISA's two configurations.
template <class Cfg32, class Cfg64>
void run_linear_backward(const LinearBwdProblem& p) {
  run_for_dtype<LinearBwdKernel, Cfg32, Cfg64>(p.fwd.dtype, p);
}

}  // namespace ATTNKIT_ISA_NAMESPACE
}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
