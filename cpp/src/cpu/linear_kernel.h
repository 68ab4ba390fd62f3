#pragma once
// The CPU linear-attention core, written once over SIMD width and compiled per instruction set by
// linear_{generic,avx2,avx512}.cpp. Feature maps (elu+1, relu, identity, Performer softmax / relu) sit in
// front of one core; their meaning is in attnkit/math/feature_maps.h.
//
// Work items are (batch, kv head): the query heads of a GQA group share the kv head's state, which is
// computed once (causal attention with fewer pairs than threads splits a group's heads over items that
// each recompute it). Features are produced chunk by chunk (C rows) into per-thread scratch, never for a whole
// sequence. With phi(K_c)^T stored transposed, [F][C], every product is the register-blocked outer-product
// micro-kernel of cpu/gemm_kernel.h:
//
//   causal (Katharopoulos et al. 2020, sec. 3.3; the chunked form of Yang et al., "Gated Linear Attention",
//   2024, sec. 2), per chunk c and query head:
//       A    = phi(Q_c) phi(K_c)^T  masked to j <= t                      [C][C]
//       out  = phi(Q_c) S_prev + A V_c,   den = phi(Q_c) . z_prev + rowsum(A)
//   then, once per kv head, S += phi(K_c)^T V_c and z += colsum phi(K_c).
//   bidirectional: S = sum over all allowed keys (chunk by chunk), then out = phi(Q) S per query chunk; the
//   query chunks of all (batch, kv head) pairs are spread over the threads.
//
// Performer's softmax features carry a stabilizer (math/feature_maps.h): key j's features are stored
// relative to c_j, the running maximum of the key exponents up to j, and the state relative to c at the
// end of the previous chunk. A query at t works relative to c_t, so every term is multiplied by a factor
// exp(c_j - c_t) <= 1: the intra-chunk scores by exp(c_j - c_t), the carried state by exp(c_prev - c_t)
// (like a decay in gated linear attention). Nothing can overflow, and no future key changes a past
// output, not even through rounding.
//
// Keys j >= key_lengths[b] are never read. Determinism: each output element and each state is computed by
// one thread in a fixed order, whatever the number of threads.

#include <cmath>
#include <cstring>
#include <type_traits>

#include "attnkit/math/feature_maps.h"
#include "cpu/gemm_kernel.h"
#include "check.h"
#include "cpu/kernel_common.h"
#include "cpu/parallel.h"
#include "workspace.h"
#include "cpu/simd.h"
#include "validate/linear.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace attnkit {
namespace detail {
namespace cpu {
inline namespace ATTNKIT_ISA_NAMESPACE {

/// Causal chunk length when the caller leaves it to us. Per token and head the chunked form costs
/// O(C (F + Dv)) for the intra-chunk products plus O(F Dv) for the state, and shorter chunks mean more,
/// smaller products. Measured on AVX-512 (2 threads, H = 8, D = 64, S = 4096 .. 16384,
/// bench/bench_linear.py --chunks, several runs): 16 to 64 within 5-10% of each other, 32 or 64 the
/// fastest for elu+1 (F = 64) and Performer (F = 256) depending on the run; 128 and above clearly slower.
constexpr int64_t kDefaultLinearChunk = 32;
/// Bidirectional attention's block of keys (state updates) and of query rows (work items): larger blocks
/// mean fewer passes over the state; 128 measured 5-8% faster than 32 (same setting).
constexpr int64_t kDefaultBidirectionalChunk = 128;

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

/// Tile configuration: Cfg provides T (accumulator type), W (SIMD lanes), RL (rows per register block)
/// and NV (vectors per register block) of the micro-kernel.
template <class Cfg, class St>
struct LinearKernel {
  using T = typename Cfg::T;
  using S = Simd<T, Cfg::W>;
  using V = typename S::V;
  using Gemm = MicroGemm<T, Cfg::W>;
  static constexpr int W = Cfg::W;
  static constexpr int RL = Cfg::RL;
  static constexpr int NV = Cfg::NV;
  static constexpr bool kSameType = std::is_same<St, T>::value;

  struct Ctx {
    const LinearProblem* p;
    int64_t G, C, CP, FP, DvP;
    T eps;
    T half_log_m;   // Performer softmax: ln(m) / 2 (the m^-1/2 factor of every feature)
    T half_scale;   // Performer softmax: scale / 2, so |x'|^2 / 2 = half_scale * |x|^2
    bool stab;      // stabilized features (Performer softmax)
    bool proj;      // projected features (Performer)
    bool v_direct;  // V rows read in place
    const T* wT;    // Performer: (sqrt(scale) W)^T [D][FP], padded columns zero
    T* states;      // bidirectional: per (b, hkv) state [F][DvP] and normalizer [FP]
    T* norms;
  };

  /// Per-thread scratch.
  struct Work {
    T* S;      // [F][DvP]  running state (causal)
    T* z;      // [FP]      running normalizer (causal)
    T* kT;     // [D][CP]   key chunk, transposed
    T* phiKT;  // [F][CP]   key features, transposed; columns >= kn are zero
    T* cK;     // [CP]      stabilizer c_j of each key of the chunk
    T* hK;     // [CP]      |k'_j|^2 / 2, then the exponent offset of key j
    T* vbuf;   // [CP][DvP] packed values
    T* qbuf;   // [CP][D]   packed queries (projected maps)
    T* phiQ;   // [CP][FP]  query features; padded columns zero
    T* A;      // [CP][CP]  masked intra-chunk scores
    T* o;      // [CP][DvP] output accumulator
    T* den;    // [CP]      denominators
    T* cQ;     // [CP]      stabilizer c_t of each query row
  };

  static std::size_t work_bytes(const Ctx& c) {
    const LinearProblem& p = *c.p;
    const int64_t n = p.F * c.DvP + c.FP + p.D * c.CP + p.F * c.CP + 2 * c.CP + c.CP * c.DvP + c.CP * p.D +
                      c.CP * c.FP + c.CP * c.CP + c.CP * c.DvP + 2 * c.CP;
    return sizeof(T) * static_cast<std::size_t>(n) + 16 * 64;
  }

  static Work carve(void* base, const Ctx& c) {
    const LinearProblem& p = *c.p;
    Carver cv(base);
    Work w;
    w.S = cv.take<T>(p.F * c.DvP);
    w.z = cv.take<T>(c.FP);
    w.kT = cv.take<T>(p.D * c.CP);
    w.phiKT = cv.take<T>(p.F * c.CP);
    w.cK = cv.take<T>(c.CP);
    w.hK = cv.take<T>(c.CP);
    w.vbuf = cv.take<T>(c.CP * c.DvP);
    w.qbuf = cv.take<T>(c.CP * p.D);
    w.phiQ = cv.take<T>(c.CP * c.FP);
    w.A = cv.take<T>(c.CP * c.CP);
    w.o = cv.take<T>(c.CP * c.DvP);
    w.den = cv.take<T>(c.CP);
    w.cQ = cv.take<T>(c.CP);
    return w;
  }

  // ------------------------------------------------------------------------------------------ operands

  static const St* row_ptr(const ViewN<4>& x, int64_t b, int64_t h, int64_t t) {
    return static_cast<const St*>(x.data) + b * x.stride[0] + h * x.stride[1] + t * x.stride[2];
  }

  static int64_t key_count(const Ctx& c, int64_t b) {
    const LinearProblem& p = *c.p;
    return p.key_lengths.present ? load_int(p.key_lengths.data, p.key_lengths.dtype, b * p.key_lengths.stride[0])
                                 : p.Sk;
  }

  /// Value rows [j0, j0 + n) of (b, hkv) as T rows of DvP columns: in place when possible, else packed.
  static const T* value_rows(const Ctx& c, const Work& w, int64_t b, int64_t hkv, int64_t j0, int n, int64_t& ld) {
    return operand_rows<T, St>(c.p->v, b, hkv, j0, n, c.p->Dv, c.v_direct, w.vbuf, c.DvP, ld);
  }

  /// Applies an elementwise map (elu1 / relu / identity) to n (a multiple of W) values.
  static void map_elementwise(LinearMap map, T* x, int64_t n) {
    if (map == LinearMap::Elu1) {
      for (int64_t i = 0; i < n; i += W)
        S::store(x + i, math::phi_elu1(S::load(x + i), [](V a) { return S::exp(a); }));
    } else if (map == LinearMap::Relu) {
      for (int64_t i = 0; i < n; i += W) S::store(x + i, math::phi_relu(S::load(x + i)));
    }
  }

  // ------------------------------------------------------------------------------------------ features

  /// Key features of rows [j0, j0 + kn) of (b, hkv) into w.phiKT ([F][CP], columns >= kn zero). Stabilized
  /// maps also get w.cK[j] = c_j, the running maximum from c_prev on. Returns the stabilizer after the
  /// chunk (c_prev when kn == 0 or unstabilized).
  static T key_features(const Ctx& c, const Work& w, int64_t b, int64_t hkv, int64_t j0, int kn, T c_prev) {
    const LinearProblem& p = *c.p;
    const int64_t CP = c.CP, D = p.D, F = p.F;
    const int64_t knP = round_up(kn, W);
    // k chunk transposed, kT[d][j], zero beyond kn; elementwise maps (F = D) transform it in place.
    const ViewN<4>& k = p.k;
    T* kT = c.proj ? w.kT : w.phiKT;
    for (int64_t d = 0; d < D; ++d)
      for (int64_t j = kn; j < knP; ++j) kT[d * CP + j] = T(0);
    for (int j = 0; j < kn; ++j) {
      const St* kr = row_ptr(k, b, hkv, j0 + j);
      for (int64_t d = 0; d < D; ++d) kT[d * CP + j] = static_cast<T>(to_acc(kr[d * k.stride[3]]));
    }
    if (!c.proj) {
      // phi(0) may be nonzero (elu1), so the padding is cleared again.
      for (int64_t f = 0; f < F; ++f) {
        map_elementwise(p.map, w.phiKT + f * CP, knP);
        for (int64_t j = kn; j < knP; ++j) w.phiKT[f * CP + j] = T(0);
      }
      return c_prev;
    }
    // Projections W' k_j for every feature f: eT[f][j] = sum_d wT[d][f] kT[d][j].
    Gemm::template gemm<RL, NV, Store::Overwrite>(F, knP, D, c.wT, 1, c.FP, w.kT, CP, w.phiKT, CP);
    if (!c.stab) {
      for (int64_t f = 0; f < F; ++f) {
        T* e = w.phiKT + f * CP;
        for (int64_t j = 0; j < knP; j += W) S::store(e + j, math::performer_relu<T>(S::load(e + j)));
        for (int64_t j = kn; j < knP; ++j) e[j] = T(0);
      }
      return c_prev;
    }
    // Softmax features: exponent e = W'k - |k'|^2/2; key maximum over f; running maximum c_j.
    for (int64_t j = 0; j < knP; j += W) {
      V sq = V{};
      for (int64_t d = 0; d < D; ++d) {
        const V x = S::load(w.kT + d * CP + j);
        sq += x * x;
      }
      const V half_sq = sq * c.half_scale;
      V mx = S::set1(math::neg_inf<T>());
      for (int64_t f = 0; f < F; ++f) mx = S::vmax(mx, math::favor_key_exponent(S::load(w.phiKT + f * CP + j), half_sq));
      S::store(w.hK + j, half_sq);
      S::store(w.cK + j, mx);
    }
    T cur = c_prev;
    for (int j = 0; j < kn; ++j) w.cK[j] = cur = math::favor_running_max(cur, w.cK[j]);
    for (int64_t j = kn; j < knP; ++j) w.cK[j] = cur;
    // phi = m^-1/2 exp(e - c_j): one offset per key, h_j + c_j, then exp along the rows.
    for (int64_t j = 0; j < knP; j += W) S::store(w.hK + j, S::load(w.hK + j) + S::load(w.cK + j));
    const V hlm = S::set1(c.half_log_m);
    for (int64_t f = 0; f < F; ++f) {
      T* e = w.phiKT + f * CP;
      for (int64_t j = 0; j < knP; j += W)
        S::store(e + j, S::exp(math::favor_feature_arg(S::load(e + j), S::load(w.hK + j), hlm)));
      for (int64_t j = kn; j < knP; ++j) e[j] = T(0);
    }
    return cur;
  }

  /// Query features of rows [t0, t0 + tn) of query head h into w.phiQ ([CP][FP], padded columns zero).
  static void query_features(const Ctx& c, const Work& w, int64_t b, int64_t h, int64_t t0, int tn) {
    const LinearProblem& p = *c.p;
    const ViewN<4>& q = p.q;
    const int64_t D = p.D, F = p.F, FP = c.FP;
    if (!c.proj) {
      for (int t = 0; t < tn; ++t) {
        const St* qr = row_ptr(q, b, h, t0 + t);
        T* dst = w.phiQ + t * FP;
        for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<T>(to_acc(qr[d * q.stride[3]]));
        for (int64_t d = D; d < FP; ++d) dst[d] = T(0);
        map_elementwise(p.map, dst, FP);
        for (int64_t d = D; d < FP; ++d) dst[d] = T(0);
      }
      return;
    }
    // Projections e[t][f] = sum_d q[t][d] wT[d][f] (q read in place when it is T-typed: any strides).
    const T* a = w.qbuf;
    int64_t am = D, ak = 1;
    bool direct = false;
    if constexpr (kSameType) {
      a = reinterpret_cast<const T*>(row_ptr(q, b, h, t0));
      am = q.stride[2];
      ak = q.stride[3];
      direct = true;
    }
    if (!direct) {
      for (int t = 0; t < tn; ++t) {
        const St* qr = row_ptr(q, b, h, t0 + t);
        for (int64_t d = 0; d < D; ++d) w.qbuf[t * D + d] = static_cast<T>(to_acc(qr[d * q.stride[3]]));
      }
    }
    Gemm::template gemm<RL, NV, Store::Overwrite>(tn, FP, D, a, am, ak, c.wT, FP, w.phiQ, FP);
    const int64_t Fv = F / W * W;
    for (int t = 0; t < tn; ++t) {
      T* e = w.phiQ + t * FP;
      if (!c.stab) {
        for (int64_t f = 0; f < FP; f += W) S::store(e + f, math::performer_relu<T>(S::load(e + f)));
      } else {
        // Per-row stabilizer: the largest projection (math/feature_maps.h).
        V mv = S::set1(math::neg_inf<T>());
        for (int64_t f = 0; f < Fv; f += W) mv = S::vmax(mv, S::load(e + f));
        T mx = S::hmax(mv);
        for (int64_t f = Fv; f < F; ++f) mx = e[f] > mx ? e[f] : mx;
        const V cv = S::set1(mx), hlm = S::set1(c.half_log_m);
        for (int64_t f = 0; f < FP; f += W) S::store(e + f, S::exp(math::favor_feature_arg(S::load(e + f), cv, hlm)));
      }
      for (int64_t f = F; f < FP; ++f) e[f] = T(0);
    }
  }

  // ---------------------------------------------------------------------------------------- core steps

  /// out = phi(Q) S and den = phi(Q) . z for tn rows (the contribution of the state).
  static void state_product(const Ctx& c, const Work& w, const T* Sst, const T* z, int tn) {
    const int64_t F = c.p->F, FP = c.FP;
    Gemm::template gemm<RL, NV, Store::Overwrite>(tn, c.DvP, F, w.phiQ, FP, 1, Sst, c.DvP, w.o, c.DvP);
    for (int t = 0; t < tn; ++t) {
      const T* ph = w.phiQ + t * FP;
      V acc = V{};
      for (int64_t f = 0; f < FP; f += W) acc += S::load(ph + f) * S::load(z + f);
      w.den[t] = S::hsum(acc);
    }
  }

  /// S += phi(K_c)^T V_c and z += colsum phi(K_c) over the kn keys of the chunk.
  static void state_update(const Ctx& c, const Work& w, T* Sst, T* z, const T* vp, int64_t ldv, int kn) {
    const int64_t F = c.p->F, CP = c.CP;
    Gemm::template gemm<RL, NV, Store::Accumulate>(F, c.DvP, kn, w.phiKT, CP, 1, vp, ldv, Sst, c.DvP);
    const int64_t knP = round_up(kn, W);
    for (int64_t f = 0; f < F; ++f) {
      const T* ph = w.phiKT + f * CP;
      V acc = V{};
      for (int64_t j = 0; j < knP; j += W) acc += S::load(ph + j);
      z[f] += S::hsum(acc);
    }
  }

  /// Rescales a stabilized state accumulated against c_old to c_new (no-op when they are equal).
  static void rescale_state(const Ctx& c, T* Sst, T* z, T c_old, T c_new) {
    const T r = std::exp(math::favor_rescale_arg<T, T>(c_old, c_new));
    if (r == T(1)) return;
    const int64_t F = c.p->F;
    const V rv = S::set1(r);
    for (int64_t i = 0; i < F * c.DvP; i += W) S::store(Sst + i, S::load(Sst + i) * rv);
    for (int64_t f = 0; f < c.FP; f += W) S::store(z + f, S::load(z + f) * rv);
  }

  /// Brings the key features of the chunk from their own stabilizers c_j to c_end (the state's).
  static void rebase_keys(const Ctx& c, const Work& w, int kn, T c_end) {
    bool moved = false;
    for (int j = 0; j < kn; ++j) moved |= w.cK[j] != c_end;
    if (!moved) return;
    const V ce = S::set1(c_end);
    const int64_t knP = round_up(kn, W);
    for (int64_t f = 0; f < c.p->F; ++f) {
      T* ph = w.phiKT + f * c.CP;
      for (int64_t j = 0; j < knP; j += W) S::store(ph + j, S::load(ph + j) * S::exp(S::load(w.cK + j) - ce));
    }
  }

  /// Writes tn finished rows of query head h: normalized or not, in the output dtype.
  static void store_rows(const Ctx& c, const Work& w, int64_t b, int64_t h, int64_t t0, int tn) {
    const LinearProblem& p = *c.p;
    for (int t = 0; t < tn; ++t) {
      St* dst = static_cast<St*>(p.out) + b * p.out_stride[0] + h * p.out_stride[1] + (t0 + t) * p.out_stride[2];
      const T* o = w.o + t * c.DvP;
      const int64_t os = p.out_stride[3];
      if (p.normalize) {
        const T den = w.den[t];
        for (int64_t d = 0; d < p.Dv; ++d) dst[d * os] = from_acc<St>(math::linear_output(o[d], den, c.eps));
      } else {
        for (int64_t d = 0; d < p.Dv; ++d) dst[d * os] = from_acc<St>(o[d]);
      }
    }
  }

  /// Loads the initial state of (b, hkv) (zero when absent).
  static void load_state(const Ctx& c, int64_t b, int64_t hkv, T* Sst, T* z) {
    const LinearProblem& p = *c.p;
    std::memset(Sst, 0, sizeof(T) * p.F * c.DvP);
    std::memset(z, 0, sizeof(T) * c.FP);
    if (!p.state_in.present) return;
    const ViewN<4>& s = p.state_in;
    const ViewN<3>& zi = p.z_in;
    const T* sb = static_cast<const T*>(s.data) + b * s.stride[0] + hkv * s.stride[1];
    const T* zb = static_cast<const T*>(zi.data) + b * zi.stride[0] + hkv * zi.stride[1];
    for (int64_t f = 0; f < p.F; ++f) {
      for (int64_t d = 0; d < p.Dv; ++d) Sst[f * c.DvP + d] = sb[f * s.stride[2] + d * s.stride[3]];
      z[f] = zb[f * zi.stride[2]];
    }
  }

  static void save_state(const Ctx& c, int64_t b, int64_t hkv, const T* Sst, const T* z) {
    const LinearProblem& p = *c.p;
    // z_out, not state_out: with Dv = 0 the state is empty (its data may be null) but z still has F entries.
    if (!p.z_out) return;
    T* sb = static_cast<T*>(p.state_out) + b * p.state_out_stride[0] + hkv * p.state_out_stride[1];
    T* zb = static_cast<T*>(p.z_out) + b * p.z_out_stride[0] + hkv * p.z_out_stride[1];
    for (int64_t f = 0; f < p.F; ++f) {
      for (int64_t d = 0; d < p.Dv; ++d) sb[f * p.state_out_stride[2] + d * p.state_out_stride[3]] = Sst[f * c.DvP + d];
      zb[f * p.z_out_stride[2]] = z[f];
    }
  }

  // ------------------------------------------------------------------------------------------ causal

  /// One causal work item: every chunk of (b, hkv) for query heads [g0, g1) of the group. Items that split
  /// a group recompute the same key features and state in the same order, so every output is the same
  /// bits whatever the split; the item with g0 = 0 writes the final state.
  static void causal_item(const Ctx& c, const Work& w, int64_t b, int64_t hkv, int64_t g0, int64_t g1) {
    const LinearProblem& p = *c.p;
    const int64_t L = key_count(c, b), CP = c.CP;
    load_state(c, b, hkv, w.S, w.z);
    T c_prev = math::neg_inf<T>();
    for (int64_t t0 = 0; t0 < p.S; t0 += c.C) {
      const int tn = static_cast<int>(imin(c.C, p.S - t0));
      const int kn = static_cast<int>(imax(0, imin(tn, L - t0)));
      const int64_t knP = round_up(kn, W);
      T c_end = c_prev;
      int64_t ldv = 0;
      const T* vp = nullptr;
      bool v_finite = true;
      if (kn > 0) {
        c_end = key_features(c, w, b, hkv, t0, kn, c_prev);
        vp = value_rows(c, w, b, hkv, t0, kn, ldv);
        v_finite = rows_finite<T, W>(vp, ldv, kn, p.Dv);
      }
      for (int64_t g = g0; g < g1; ++g) {
        const int64_t h = hkv * c.G + g;
        query_features(c, w, b, h, t0, tn);
        state_product(c, w, w.S, w.z, tn);
        if (c.stab) {
          // Query t works relative to c_t (the running maximum at key min(t, kn - 1)); the carried state
          // was accumulated against c_prev.
          for (int t = 0; t < tn; ++t) {
            const T ct = kn > 0 ? w.cK[t < kn ? t : kn - 1] : c_prev;
            w.cQ[t] = ct;
            const T r = std::exp(math::favor_rescale_arg<T, T>(c_prev, ct));
            if (r != T(1)) {
              T* o = w.o + t * c.DvP;
              for (int64_t d = 0; d < c.DvP; d += W) S::store(o + d, S::load(o + d) * r);
              w.den[t] *= r;
            }
          }
        }
        if (kn > 0) {
          Gemm::template gemm<RL, NV, Store::Overwrite>(tn, knP, p.F, w.phiQ, c.FP, 1, w.phiKT, CP, w.A, CP);
          for (int t = 0; t < tn; ++t) {
            T* a = w.A + t * CP;
            const int64_t jn = imin(t + 1, kn);  // keys j <= t of the chunk
            if (c.stab && w.cK[0] != w.cQ[t]) {  // else c_j = c_t for every j <= t (c is non-decreasing)
              const V ct = S::set1(w.cQ[t]);
              for (int64_t j = 0; j < round_up(jn, W); j += W)
                S::store(a + j, S::load(a + j) * S::exp(S::load(w.cK + j) - ct));
            }
            for (int64_t j = jn; j < knP; ++j) a[j] = T(0);
            T s = T(0);
            for (int64_t j = 0; j < jn; ++j) s += a[j];
            w.den[t] += s;
          }
          if (v_finite) {
            Gemm::template gemm<RL, NV, Store::Accumulate>(tn, c.DvP, kn, w.A, CP, 1, vp, ldv, w.o, c.DvP);
          } else {  // a NaN / inf value: 0 * NaN must not carry a future key's value into a past row
            for (int t = 0; t < tn; ++t)
              for (int64_t j = 0; j < imin(t + 1, kn); ++j)
                for (int64_t d = 0; d < p.Dv; ++d) w.o[t * c.DvP + d] += w.A[t * CP + j] * vp[j * ldv + d];
          }
        }
        store_rows(c, w, b, h, t0, tn);
      }
      if (kn > 0) {
        if (c.stab) {
          // Bring the state and this chunk's keys to the stabilizer at the chunk's end.
          rescale_state(c, w.S, w.z, c_prev, c_end);
          rebase_keys(c, w, kn, c_end);
        }
        state_update(c, w, w.S, w.z, vp, ldv, kn);
        c_prev = c_end;
      }
    }
    if (g0 == 0) save_state(c, b, hkv, w.S, w.z);
  }

  // ----------------------------------------------------------------------------------- bidirectional

  /// The state of (b, hkv) over all allowed keys, into c.states / c.norms (stabilized: relative to the
  /// maximum over all allowed keys, the per-sequence stabilizer).
  static void state_item(const Ctx& c, const Work& w, int64_t b, int64_t hkv) {
    const LinearProblem& p = *c.p;
    const int64_t item = b * p.Hkv + hkv, L = key_count(c, b);
    T* Sst = c.states + item * p.F * c.DvP;
    T* z = c.norms + item * c.FP;
    load_state(c, b, hkv, Sst, z);
    T c_prev = math::neg_inf<T>();
    for (int64_t j0 = 0; j0 < L; j0 += c.C) {
      const int kn = static_cast<int>(imin(c.C, L - j0));
      const T c_end = key_features(c, w, b, hkv, j0, kn, c_prev);
      if (c.stab) {
        rescale_state(c, Sst, z, c_prev, c_end);
        rebase_keys(c, w, kn, c_end);
      }
      int64_t ldv;
      const T* vp = value_rows(c, w, b, hkv, j0, kn, ldv);
      state_update(c, w, Sst, z, vp, ldv, kn);
      c_prev = c_end;
    }
    save_state(c, b, hkv, Sst, z);
  }

  /// Outputs of query rows [t0, t0 + C) of every head of kv head (b, hkv), from the finished state.
  static void query_item(const Ctx& c, const Work& w, int64_t b, int64_t hkv, int64_t t0) {
    const LinearProblem& p = *c.p;
    const int64_t item = b * p.Hkv + hkv;
    const int tn = static_cast<int>(imin(c.C, p.S - t0));
    for (int64_t g = 0; g < c.G; ++g) {
      const int64_t h = hkv * c.G + g;
      query_features(c, w, b, h, t0, tn);
      state_product(c, w, c.states + item * p.F * c.DvP, c.norms + item * c.FP, tn);
      store_rows(c, w, b, h, t0, tn);
    }
  }

  // ---------------------------------------------------------------------------------------------- run

  /// Returns false when scratch memory could not be allocated (the caller throws: no exceptions or
  /// std::string are instantiated in the per-ISA translation units).
  static void run(const LinearProblem& p) {
    Ctx c;
    c.p = &p;
    c.G = p.group();
    c.C = p.chunk > 0 ? p.chunk : (p.causal ? kDefaultLinearChunk : kDefaultBidirectionalChunk);
    c.CP = round_up(c.C, W);
    c.FP = round_up(p.F, W);
    c.DvP = round_up(p.Dv, W);
    c.eps = static_cast<T>(p.eps);
    c.stab = p.stabilized();
    c.proj = p.projected();
    c.half_log_m = static_cast<T>(0.5 * std::log(static_cast<double>(p.F)));
    c.half_scale = static_cast<T>(0.5 * p.feature_scale * p.feature_scale);
    c.v_direct = kSameType && p.v.stride[3] == 1 && p.Dv % W == 0;
    c.wT = nullptr;
    c.states = c.norms = nullptr;

    // Shared read-only and bidirectional buffers, allocated once per call.
    const int64_t items = p.B * p.Hkv;
    const bool bidir = !p.causal;
    const int64_t shared_elems = (c.proj ? p.D * c.FP : 0) +
                                 (bidir ? items * (p.F * c.DvP + c.FP) : 0);
    Workspace shared(sizeof(T) * static_cast<std::size_t>(shared_elems) + 2 * 64, "linear attention's shared buffers");
    {
      if (c.proj) {
        T* wT = shared.take<T>(static_cast<std::size_t>(p.D * c.FP));
        const ViewN<2>& f = p.features;
        const T fs = static_cast<T>(p.feature_scale);
        for (int64_t m = 0; m < p.F; ++m)
          for (int64_t d = 0; d < p.D; ++d)
            wT[d * c.FP + m] = fs * load_float<T>(f.data, f.dtype, m * f.stride[0] + d * f.stride[1]);
        c.wT = wT;
      }
      if (bidir) {
        c.states = shared.take<T>(static_cast<std::size_t>(items * p.F * c.DvP));
        c.norms = shared.take<T>(static_cast<std::size_t>(items * c.FP));
      }
    }
    const int64_t qchunks = (p.S + c.C - 1) / c.C;
    // Causal: with fewer (batch, kv head) pairs than threads (MQA / GQA prefill), the query heads of a
    // group are split over several items, each recomputing the key side (see causal_item).
    int64_t splits = 1;
#if defined(_OPENMP)
    const int64_t threads = omp_get_max_threads();
    if (!bidir && items < threads) splits = imin(c.G, (threads + items - 1) / items);
#endif
    const std::size_t bytes = work_bytes(c);
    parallel_with_scratch("linear attention", (bidir ? items * qchunks : items * splits) > 1, bytes, /*zero=*/true,
                          [&](void* mem) {
      const Work w = carve(mem, c);
      if (!bidir) {
        team_for(items * splits, mem, [&](int64_t it) {
          const int64_t bh = it / splits, part = it % splits;
          causal_item(c, w, bh / p.Hkv, bh % p.Hkv, part * c.G / splits, (part + 1) * c.G / splits);
        });
      } else {
        team_for(items, mem, [&](int64_t it) { state_item(c, w, it / p.Hkv, it % p.Hkv); });
        // (the implicit barrier of the loop above: every state is complete before any query reads it)
        team_for(items * qchunks, mem, [&](int64_t it) {
          query_item(c, w, it / qchunks / p.Hkv, it / qchunks % p.Hkv, it % qchunks * c.C);
        });
      }
    });
  }
};

/// Runs Kernel<Cfg, St>::run(p) for the storage type St of `dtype`: Cfg64 for float64, Cfg32 (float
/// accumulation) for float32 and the 16-bit types.
template <template <class, class> class Kernel, class Cfg32, class Cfg64, class P>
void run_for_dtype(DType dtype, const P& p) {
  switch (dtype) {
    case DType::Float32: return Kernel<Cfg32, float>::run(p);
    case DType::Float64: return Kernel<Cfg64, double>::run(p);
    case DType::Float16: return Kernel<Cfg32, Half>::run(p);
    case DType::BFloat16: return Kernel<Cfg32, BFloat>::run(p);
    default: ATTNKIT_ASSERT(false, "linear attention: a non-floating dtype passed validation");
  }
}

/// Runs the linear-attention core for every storage dtype with the ISA's two configurations.
template <class Cfg32, class Cfg64>
void run_linear(const LinearProblem& p) {
  run_for_dtype<LinearKernel, Cfg32, Cfg64>(p.dtype, p);
}

}  // namespace ATTNKIT_ISA_NAMESPACE
}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
