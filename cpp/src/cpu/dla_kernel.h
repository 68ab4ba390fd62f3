#pragma once
// The CPU kernel of dynamic linear attention (shared/specs/dla.md), written once over SIMD width and
// compiled per instruction set by dla_{generic,avx2,avx512}.cpp.
//
// Work. Each (batch, head) is one work item, run by one thread from the first token to the last (the
// cache makes it sequential), items in parallel: results do not depend on the thread count.
//
// Cache. The recurrent and chunked forms keep the cache of their item in scratch: C state slots of Dk x DvP elements (Dv padded
// to whole vectors, padding kept 0) and the chronological entry list (slot, count, info, start). Merging
// adds one slot into another and frees it; entries are reordered only in the small arrays, so a merge
// costs O(Dk * Dv) and never moves the other states. The cache arrays are read once at the start and
// written once at the end (in chronological order, unused entries 0).
//
// Three paths compute the same steps:
//   - decode (T = 1, the automatic choice): the step is decided from the input open state alone (three
//     scalars), then one pass reads each input state once, writes the output cache in its final order and
//     accumulates the readout: O(C * Dk * Dv), no scratch copy of the states.
//   - recurrent (short calls): token by token, O(C * Dk * Dv) per token. Decay is lazy: every
//     state is kept as S_i = rho * S~_i with one common factor rho (step 1 multiplies all states by the
//     same a_t), so a decay step costs O(1) instead of O(C * Dk * Dv); S~ is rescaled to rho = 1 when rho
//     falls below kRenorm and when the cache is written.
//   - chunked (prefill): per chunk of L tokens, the Gram matrices K K^T, V V^T (and k_t^T S_open v_t for
//     the open state carried in) give the three scalars of the information score of every token
//     (math/dla.h), so a scalar scan decides boundaries and merges in O(L^2); then outputs come from
//     matrix products, Y = (W o Dec o Q K^T) V + sum_i diag(w_i) Q S_i for the states carried in, and the
//     states at the chunk's end from K^T diag(dec) V per span. See chunk() for the details.
// Every matrix product goes through cpu/gemm_kernel.h's MicroGemm. Scores, A = ||S_open||^2 and p are
// combined in double (math/dla.h); A is recomputed from the stored state (recurrent form, and at every
// chunk start) rather than carried across many tokens, so float32 drift cannot build up in it.

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "attnkit/math/dla.h"
#include "cpu/gemm_kernel.h"
#include "check.h"
#include "cpu/kernel_common.h"
#include "cpu/parallel.h"
#include "cpu/simd.h"
#include "validate/dla.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace attnkit {
namespace detail {
namespace cpu {
inline namespace ATTNKIT_ISA_NAMESPACE {

/// Cfg provides T (float for float32/float16/bfloat16 inputs, double for float64), W (SIMD lanes), RL and
/// NV (register block of the products: RL rows x NV vectors).
template <class Cfg, class St>
struct DlaKernel {
  using T = typename Cfg::T;
  static constexpr int W = Cfg::W;
  static constexpr int RL = Cfg::RL;
  static constexpr int NV = Cfg::NV;
  using S = Simd<T, W>;
  using V = typename S::V;
  using Gemm = MicroGemm<T, W>;

  /// Chunk length of the automatic choice (16..128 measured within noise of each other at S = 4096, H = 8,
  /// D = 64, C = 30), and the longest call it runs token by token: from T = 2 on the chunked form was
  /// measured faster (1.1x at T = 2, 1.3-1.65x at T = 8..32), and T = 1 takes the decode path.
  static constexpr int64_t kDefaultChunk = 64;
  static constexpr int64_t kRecurrentMaxT = 1;
  /// The recurrent form rescales its states to rho = 1 before rho gets this small, so S~ = S / rho and
  /// k v^T / rho stay far from overflow.
  static constexpr double kRenorm = 1e-8;

  struct Ctx {
    const DLAProblem* p;
    int64_t L;      // chunk length; 0 = recurrent form
    int64_t Dk, DvP, LP, C;
    int64_t SS;     // elements per state slot (Dk * DvP)
    double n;       // Dk * Dv, the element count of N(X)
    bool decay;
    bool fused;     // the decode path (no state slots in scratch)
  };

  /// One thread's scratch, carved from one allocation.
  struct Work {
    // the cache of the current (batch, head)
    T* slots;          // [C][Dk][DvP]
    int64_t* slot;     // [C] entry -> slot
    int64_t* count;    // [C]
    T* info;           // [C]
    int64_t* start;    // [C]
    int64_t* unit;     // [C] chunked form: first unit of each entry (see chunk())
    int64_t* in_slot;  // [C] chunked form: slots of the entries carried into the chunk
    int64_t* free_;    // [C] stack of free slots
    // token rows (recurrent form and decode)
    T *qr, *kr, *vr, *u, *yr, *qw, *lr;  // [Dk], [Dk], [DvP], [DvP], [DvP], [Dk], [C]
    // chunk buffers
    T *Qc, *Kc, *KcT, *Vc, *VcT, *Vw, *Qw;  // [L][Dk], [L][Dk], [Dk][LP], [L][DvP], [DvP][LP], [L][DvP], [L][Dk]
    T *KK, *VV, *QK, *P;                    // [L][LP]
    T *KS, *Y;                              // [L][DvP]
    T *lamc, *Win;                          // [L][C]
    double *G, *eG, *er, *fj, *cp;          // [L]
    int64_t nfree;
    int64_t m;
  };

  static std::size_t align64(std::size_t b) { return (b + 63) / 64 * 64; }

  /// Lays the scratch out from `base` (nullptr: only counts) and returns its size in bytes.
  static std::size_t carve(char* base, const Ctx& c, Work& w) {
    std::size_t used = 0;
    auto take = [&](auto* type_tag, std::size_t n) {
      using X = std::remove_pointer_t<decltype(type_tag)>;
      X* r = base ? reinterpret_cast<X*>(base + used) : nullptr;
      used += align64(sizeof(X) * n);
      return r;
    };
    T* const t_ = nullptr;
    int64_t* const i_ = nullptr;
    double* const d_ = nullptr;
    const std::size_t L = static_cast<std::size_t>(c.L), LP = c.LP, Dk = c.Dk, DvP = c.DvP, C = c.C;
    w = Work{};
    w.slots = take(t_, c.fused ? 0 : C * c.SS);
    w.slot = take(i_, C);
    w.count = take(i_, C);
    w.info = take(t_, C);
    w.start = take(i_, C);
    w.unit = take(i_, C);
    w.in_slot = take(i_, C);
    w.free_ = take(i_, C);
    w.qr = take(t_, Dk);
    w.kr = take(t_, Dk);
    w.qw = take(t_, Dk);
    w.vr = take(t_, DvP);
    w.u = take(t_, DvP);
    w.yr = take(t_, DvP);
    w.lr = take(t_, C);
    if (L) {
      w.Qc = take(t_, L * Dk);
      w.Kc = take(t_, L * Dk);
      w.Qw = take(t_, L * Dk);
      w.KcT = take(t_, Dk * LP);
      w.Vc = take(t_, L * DvP);
      w.Vw = take(t_, L * DvP);
      w.VcT = take(t_, DvP * LP);
      w.KK = take(t_, L * LP);
      w.VV = take(t_, L * LP);
      w.QK = take(t_, L * LP);
      w.P = take(t_, L * LP);
      w.KS = take(t_, L * DvP);
      w.Y = take(t_, L * DvP);
      w.lamc = take(t_, L * C);
      w.Win = take(t_, L * C);
      w.G = take(d_, L);
      w.eG = take(d_, L);
      w.er = take(d_, L);
      w.fj = take(d_, L);
      w.cp = take(d_, L);
    }
    return used;
  }

  // ------------------------------------------------------------------------------------------ helpers

  /// sum_i a[i] * b[i] over n elements, vector partial sums reduced in double.
  static double dot(const T* a, const T* b, int64_t n) {
    const int64_t nv = n / W * W;
    V acc = V{};
    for (int64_t i = 0; i < nv; i += W) acc += S::load(a + i) * S::load(b + i);
    double r = S::template hsum<double>(acc);
    for (int64_t i = nv; i < n; ++i) r += static_cast<double>(a[i]) * static_cast<double>(b[i]);
    return r;
  }

  /// ||state||_F^2, row sums in T and the rows summed in double.
  static double sq_norm(const Ctx& c, const T* st) {
    double r = 0;
    for (int64_t d = 0; d < c.Dk; ++d) r += dot(st + d * c.DvP, st + d * c.DvP, c.DvP);
    return r;
  }

  static void scale_state(const Ctx& c, T* st, T a) {
    for (int64_t i = 0; i < c.SS; i += W) S::store(st + i, S::load(st + i) * a);
  }

  static void add_state(const Ctx& c, T* dst, const T* src) {
    for (int64_t i = 0; i < c.SS; i += W) S::store(dst + i, S::load(dst + i) + S::load(src + i));
  }

  static int64_t pop_free(Work& w) { return w.free_[--w.nfree]; }
  static void push_free(Work& w, int64_t s) { w.free_[w.nfree++] = s; }

  /// Step 4, full cache: merges entry pair (i, i+1) of the list into entry i (S, n and I summed, start_i
  /// kept) and returns i. With `slots`, also adds the states and frees slot i+1 (the chunked form merges
  /// the states at the chunk's end instead, through the entries' units).
  static int64_t merge_entries(const Ctx& c, Work& w, bool slots) {
    const int64_t m = w.m;
    const int64_t i = math::dla_merge_pair(w.info, w.count, m);
    if (slots) {
      add_state(c, w.slots + w.slot[i] * c.SS, w.slots + w.slot[i + 1] * c.SS);
      push_free(w, w.slot[i + 1]);
    }
    w.count[i] += w.count[i + 1];
    w.info[i] += w.info[i + 1];
    for (int64_t j = i + 1; j + 1 < m; ++j) {
      w.slot[j] = w.slot[j + 1];
      w.count[j] = w.count[j + 1];
      w.info[j] = w.info[j + 1];
      w.start[j] = w.start[j + 1];
      w.unit[j] = w.unit[j + 1];
    }
    w.m = m - 1;
    return i;
  }

  /// Appends an entry (count 1, info I, start) and returns its index.
  static int64_t append_entry(Work& w, T I, int64_t start) {
    const int64_t e = w.m++;
    w.count[e] = 1;
    w.info[e] = I;
    w.start[e] = start;
    return e;
  }

  // ---------------------------------------------------------------------------------- cache in / out

  /// Reads the entry list of cache_in (empty without one): slot[i] = i, count, info, start, unit[i] = i
  /// (the chunked form's unit of a carried entry).
  static void load_entries(const Ctx& c, Work& w, int64_t b, int64_t h) {
    const DLACacheViews& ci = c.p->cache_in;
    w.m = 0;
    if (!ci.present) return;
    auto at = [&](const ViewN<3>& x, int64_t i) { return b * x.stride[0] + h * x.stride[1] + i * x.stride[2]; };
    w.m = static_cast<const int64_t*>(ci.size.data)[b * ci.size.stride[0] + h * ci.size.stride[1]];
    for (int64_t i = 0; i < w.m; ++i) {
      w.slot[i] = i;
      w.unit[i] = i;
      w.count[i] = static_cast<const int64_t*>(ci.counts.data)[at(ci.counts, i)];
      w.info[i] = static_cast<const T*>(ci.info.data)[at(ci.info, i)];
      w.start[i] = static_cast<const int64_t*>(ci.starts.data)[at(ci.starts, i)];
    }
  }

  /// The entry list and the states of cache_in, into scratch (recurrent and chunked forms).
  static void load_cache(const Ctx& c, Work& w, int64_t b, int64_t h) {
    const DLAProblem& p = *c.p;
    load_entries(c, w, b, h);
    const ViewN<5>& sv = p.cache_in.states;
    for (int64_t i = 0; i < w.m; ++i) {
      const T* src = static_cast<const T*>(sv.data) + b * sv.stride[0] + h * sv.stride[1] + i * sv.stride[2];
      for (int64_t d = 0; d < c.Dk; ++d) {
        T* row = w.slots + i * c.SS + d * c.DvP;
        const T* srow = src + d * sv.stride[3];
        if (sv.stride[4] == 1)
          std::memcpy(row, srow, sizeof(T) * p.Dv);
        else
          for (int64_t e = 0; e < p.Dv; ++e) row[e] = srow[e * sv.stride[4]];
        for (int64_t e = p.Dv; e < c.DvP; ++e) row[e] = T(0);
      }
    }
    w.nfree = 0;
    for (int64_t s = c.C - 1; s >= w.m; --s) push_free(w, s);
  }

  /// Writes the cache (states multiplied by rho: the recurrent form's pending decay).
  static void store_cache(const Ctx& c, const Work& w, int64_t b, int64_t h, T rho) {
    const DLAProblem& p = *c.p;
    const DLACacheOut& co = p.cache_out;
    const OutN<5>& so = co.states;
    for (int64_t i = 0; i < c.C; ++i) {
      T* dst = static_cast<T*>(so.data) + b * so.stride[0] + h * so.stride[1] + i * so.stride[2];
      const T* src = i < w.m ? w.slots + w.slot[i] * c.SS : nullptr;
      for (int64_t d = 0; d < c.Dk; ++d) {
        T* row = dst + d * so.stride[3];
        const int64_t es = so.stride[4];
        if (!src) {
          for (int64_t e = 0; e < p.Dv; ++e) row[e * es] = T(0);
        } else if (rho == T(1)) {
          for (int64_t e = 0; e < p.Dv; ++e) row[e * es] = src[d * c.DvP + e];
        } else {
          for (int64_t e = 0; e < p.Dv; ++e) row[e * es] = rho * src[d * c.DvP + e];
        }
      }
    }
    store_entries(c, w, b, h);
  }

  /// Writes counts, info, starts (0 for unused entries) and size.
  static void store_entries(const Ctx& c, const Work& w, int64_t b, int64_t h) {
    const DLACacheOut& co = c.p->cache_out;
    for (int64_t i = 0; i < c.C; ++i) {
      const bool used = i < w.m;
      static_cast<int64_t*>(co.counts.data)[b * co.counts.stride[0] + h * co.counts.stride[1] + i * co.counts.stride[2]] =
          used ? w.count[i] : 0;
      static_cast<T*>(co.info.data)[b * co.info.stride[0] + h * co.info.stride[1] + i * co.info.stride[2]] =
          used ? w.info[i] : T(0);
      static_cast<int64_t*>(co.starts.data)[b * co.starts.stride[0] + h * co.starts.stride[1] + i * co.starts.stride[2]] =
          used ? w.start[i] : 0;
    }
    static_cast<int64_t*>(co.size.data)[b * co.size.stride[0] + h * co.size.stride[1]] = w.m;
  }

  // ------------------------------------------------------------------------------------- token access

  template <int N>
  static int64_t off(const ViewN<N>& x, int64_t b, int64_t h, int64_t t) {
    return b * x.stride[0] + h * x.stride[1] + t * x.stride[2];
  }

  /// Row t of a [B, H, T, n] input as T values (n elements; the caller pads).
  static void load_row(const ViewN<4>& x, int64_t b, int64_t h, int64_t t, int64_t n, T* dst) {
    const St* src = static_cast<const St*>(x.data) + off(x, b, h, t);
    const int64_t s = x.stride[3];
    if (s != 1) {
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(to_acc(src[i * s]));
    } else if constexpr (std::is_same<St, T>::value) {
      std::memcpy(dst, src, sizeof(T) * n);
    } else {
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(to_acc(src[i]));
    }
  }

  static double log_decay(const Ctx& c, int64_t b, int64_t h, int64_t t) {
    const ViewN<3>& g = c.p->log_decay;
    return load_float<double>(g.data, g.dtype, off(g, b, h, t));  // log_decay: any float dtype
  }

  static void write_token(const Ctx& c, int64_t b, int64_t h, int64_t t, const T* y, T score, bool opened,
                          int64_t merged) {
    const DLAProblem& p = *c.p;
    St* dst = static_cast<St*>(p.out.data) + b * p.out.stride[0] + h * p.out.stride[1] + t * p.out.stride[2];
    for (int64_t e = 0; e < p.Dv; ++e) dst[e * p.out.stride[3]] = from_acc<St>(y[e]);
    auto at = [&](const OutN<3>& o) { return b * o.stride[0] + h * o.stride[1] + t * o.stride[2]; };
    if (p.scores.present) static_cast<T*>(p.scores.data)[at(p.scores)] = score;
    if (p.boundaries.present) static_cast<uint8_t*>(p.boundaries.data)[at(p.boundaries)] = opened ? 1 : 0;
    if (p.merged.present) static_cast<int64_t*>(p.merged.data)[at(p.merged)] = merged;
  }

  // ------------------------------------------------------------------------------------ recurrent form

  /// S~_slot (+)= scale * k v^T: an outer product, MicroGemm with K = 1.
  template <Store kStore>
  static void outer(const Ctx& c, T* st, const T* k, const T* v, T scale) {
    Gemm::template gemm<RL, NV, kStore>(c.Dk, c.DvP, 1, k, 1, 0, v, c.DvP, st, c.DvP, scale);
  }

  static void recurrent(const Ctx& c, Work& w, int64_t b, int64_t h) {
    const DLAProblem& p = *c.p;
    double rho = 1.0;  // S_i = rho * S~_i for every entry
    // ||S~_open||^2, recomputed from the stored open state after every change
    double At = w.m > 0 ? sq_norm(c, w.slots + w.slot[w.m - 1] * c.SS) : 0.0;
    for (int64_t t = 0; t < p.T; ++t) {
      load_row(p.q, b, h, t, c.Dk, w.qr);
      load_row(p.k, b, h, t, c.Dk, w.kr);
      load_row(p.v, b, h, t, p.Dv, w.vr);
      for (int64_t e = p.Dv; e < c.DvP; ++e) w.vr[e] = T(0);
      load_row(p.lam, b, h, t, c.C, w.lr);
      // Step 1 (lazily): rho *= a_t. When rho would get small, fold it into the states first.
      if (c.decay) {
        const double r = rho * std::exp(log_decay(c, b, h, t));
        if (r < kRenorm) {
          for (int64_t i = 0; i < w.m; ++i) scale_state(c, w.slots + w.slot[i] * c.SS, static_cast<T>(r));
          At = w.m > 0 ? sq_norm(c, w.slots + w.slot[w.m - 1] * c.SS) : 0.0;
          rho = 1.0;
        } else {
          rho = r;
        }
      }
      // Steps 2-3 through the three scalars: A = ||S_open||^2, B = |k|^2 |v|^2, p = k^T S_open v.
      const double Bv = dot(w.kr, w.kr, c.Dk) * dot(w.vr, w.vr, c.DvP);
      double score = 0.0;
      if (w.m > 0) {
        const T* open = w.slots + w.slot[w.m - 1] * c.SS;
        Gemm::template gemm<1, NV, Store::Overwrite>(1, c.DvP, c.Dk, w.kr, 0, 1, open, c.DvP, w.u, c.DvP);
        const double pv = rho * dot(w.u, w.vr, c.DvP);
        score = math::dla_info_score(p.state_drift, rho * rho * At, Bv, pv, c.n);
      }
      const T I = static_cast<T>(score);
      // Step 4.
      const bool opens = math::dla_opens_state(I, p.tau, c.C, w.m);
      int64_t merged = -1;
      const T inv_rho = static_cast<T>(1.0 / rho);
      if (opens) {
        if (w.m == c.C) merged = merge_entries(c, w, true);
        const int64_t e = append_entry(w, I, p.position + t);
        w.slot[e] = pop_free(w);
        T* st = w.slots + w.slot[e] * c.SS;
        outer<Store::Overwrite>(c, st, w.kr, w.vr, inv_rho);
        At = sq_norm(c, st);
      } else {
        const int64_t e = w.m - 1;
        T* st = w.slots + w.slot[e] * c.SS;
        outer<Store::Accumulate>(c, st, w.kr, w.vr, inv_rho);
        w.count[e] += 1;
        w.info[e] += I;
        At = sq_norm(c, st);
      }
      // Step 5: y = rho * sum_i lam[m-1-i] * q^T S~_i.
      std::memset(w.yr, 0, sizeof(T) * c.DvP);
      for (int64_t i = 0; i < w.m; ++i) {
        const T li = w.lr[math::dla_lam_index(i, w.m)];
        if (li == T(0)) continue;
        const T wgt = static_cast<T>(rho * static_cast<double>(li));
        for (int64_t d = 0; d < c.Dk; ++d) w.qw[d] = wgt * w.qr[d];
        Gemm::template gemm<1, NV, Store::Accumulate>(1, c.DvP, c.Dk, w.qw, 0, 1, w.slots + w.slot[i] * c.SS, c.DvP,
                                                      w.yr, c.DvP);
      }
      write_token(c, b, h, t, w.yr, I, opens, merged);
    }
    store_cache(c, w, b, h, static_cast<T>(rho));
  }

  // -------------------------------------------------------------------------------------- decode path

  /// out[e] = a (s0[e] + s1[e]) + kd v[e] over one state row (s0, s1 optional, kd = 0: no token) and
  /// y[e] += wq out[e]: the merge, decay, insert and readout of a decode step, fused.
  static void fuse_row(T* out, const T* s0, const T* s1, T a, T kd, const T* v, T wq, T* y, int64_t n) {
    const int64_t nv = n / W * W;
    const V av = S::set1(a), kv = S::set1(kd), wv = S::set1(wq);
    for (int64_t e = 0; e < nv; e += W) {
      V x = V{};
      if (s0) x = s1 ? av * (S::load(s0 + e) + S::load(s1 + e)) : av * S::load(s0 + e);
      x += kv * S::load(v + e);
      S::store(out + e, x);
      S::store(y + e, S::load(y + e) + wv * x);
    }
    for (int64_t e = nv; e < n; ++e) {
      T x = T(0);
      if (s0) x = s1 ? a * (s0[e] + s1[e]) : a * s0[e];
      x += kd * v[e];
      out[e] = x;
      y[e] += wq * x;
    }
  }

  /// Whether the decode path can read and write the cache rows in place (unit stride along Dv).
  static bool can_fuse(const DLAProblem& p) {
    return p.T == 1 && p.chunk_size == 0 && (p.Dv == 1 || p.cache_out.states.stride[4] == 1) &&
           (!p.cache_in.present || p.Dv == 1 || p.cache_in.states.stride[4] == 1);
  }

  static void decode(const Ctx& c, Work& w, int64_t b, int64_t h) {
    const DLAProblem& p = *c.p;
    const int64_t Dk = c.Dk, Dv = p.Dv;
    // The entry list (small arrays); slot[i] = the input entry a new entry starts from (-1: none).
    load_entries(c, w, b, h);
    const T* in = nullptr;
    int64_t is2 = 0, is3 = 0;
    if (p.cache_in.present) {
      const ViewN<5>& sv = p.cache_in.states;
      in = static_cast<const T*>(sv.data) + b * sv.stride[0] + h * sv.stride[1];
      is2 = sv.stride[2];
      is3 = sv.stride[3];
    }
    load_row(p.q, b, h, 0, Dk, w.qr);
    load_row(p.k, b, h, 0, Dk, w.kr);
    load_row(p.v, b, h, 0, Dv, w.vr);
    load_row(p.lam, b, h, 0, c.C, w.lr);
    // Steps 1-3 on the input open state: A = a^2 ||S||^2, p = a k^T S v.
    const double a = c.decay ? std::exp(log_decay(c, b, h, 0)) : 1.0;
    const double Bv = dot(w.kr, w.kr, Dk) * dot(w.vr, w.vr, Dv);
    double score = 0.0;
    if (w.m > 0) {
      const T* open = in + (w.m - 1) * is2;
      Gemm::template gemm<1, NV, Store::Overwrite>(1, Dv, Dk, w.kr, 0, 1, open, is3, w.u, c.DvP);
      double sq = 0;
      for (int64_t d = 0; d < Dk; ++d) sq += dot(open + d * is3, open + d * is3, Dv);
      score = math::dla_info_score(p.state_drift, a * a * sq, Bv, a * dot(w.u, w.vr, Dv), c.n);
    }
    const T I = static_cast<T>(score);
    // Step 4 on the entry list; the newest entry always receives the token (joined or opened).
    const bool opens = math::dla_opens_state(I, p.tau, c.C, w.m);
    int64_t merged = -1;
    if (opens) {
      if (w.m == c.C) merged = merge_entries(c, w, false);
      w.slot[append_entry(w, I, p.position)] = -1;
    } else {
      w.count[w.m - 1] += 1;
      w.info[w.m - 1] += I;
    }
    // The fused pass (steps 1, 4 and 5 on the states), unused entries zeroed.
    const OutN<5>& so = p.cache_out.states;
    T* out = static_cast<T*>(so.data) + b * so.stride[0] + h * so.stride[1];
    const T at = static_cast<T>(a);
    std::memset(w.yr, 0, sizeof(T) * c.DvP);
    for (int64_t i = 0; i < c.C; ++i) {
      T* oi = out + i * so.stride[2];
      if (i >= w.m) {
        for (int64_t d = 0; d < Dk; ++d) std::memset(oi + d * so.stride[3], 0, sizeof(T) * Dv);
        continue;
      }
      const T* s0 = w.slot[i] >= 0 ? in + w.slot[i] * is2 : nullptr;
      const T* s1 = i == merged ? in + (merged + 1) * is2 : nullptr;
      const bool tok = i == w.m - 1;
      const T wq = w.lr[math::dla_lam_index(i, w.m)];
      for (int64_t d = 0; d < Dk; ++d)
        fuse_row(oi + d * so.stride[3], s0 ? s0 + d * is3 : nullptr, s1 ? s1 + d * is3 : nullptr, at,
                 tok ? w.kr[d] : T(0), w.vr, wq * w.qr[d], w.yr, Dv);
    }
    write_token(c, b, h, 0, w.yr, I, opens, merged);
    store_entries(c, w, b, h);
  }

  // -------------------------------------------------------------------------------------- chunked form

  /// C[r][0:N) (+)= sum_k A(r, k) B[k][:] for the rows r of a lower-triangular problem: row block
  /// [r0, r0 + RL) needs only the columns (ncols) or inner indices (kin) below r0 + RL.
  template <Store kStore>
  static void lower_rows(int64_t M, int64_t N, int64_t K, bool tri_cols, const T* a, int64_t am, int64_t ak,
                         const T* bm, int64_t ldb, T* cm, int64_t ldc) {
    for (int64_t r0 = 0; r0 < M; r0 += RL) {
      const int64_t rows = M - r0 < RL ? M - r0 : RL;
      const int64_t lim = r0 + rows;
      const int64_t n = tri_cols ? ((lim + W - 1) / W * W < N ? (lim + W - 1) / W * W : N) : N;
      const int64_t kk = tri_cols ? K : (lim < K ? lim : K);
      Gemm::template gemm<RL, NV, kStore>(rows, n, kk, a + r0 * am, am, ak, bm, ldb, cm + r0 * ldc, ldc);
    }
  }

  /// exp(G_r - G_j) for j <= r in a chunk, in double.
  static double dec(const Ctx& c, const Work& w, bool factored, int64_t r, int64_t j) {
    if (!c.decay) return 1.0;
    return factored ? w.er[r] * w.fj[j] : std::exp(w.G[r] - w.G[j]);
  }

  /// One chunk of Lc tokens [t0, t0 + Lc).
  ///
  /// Units. The scan describes every entry by its first "unit": units 0 .. m_in-1 are the entries carried
  /// into the chunk (their states S_u^in, slots in_slot[u]), units m_in + j are the chunk's tokens j. An
  /// entry covers the units from its own to the next entry's, so merges and appends change only the
  /// small arrays. With G_r = g_0 + ... + g_r (cumulative log-decay inside the chunk), after token r's
  /// decay a carried state is e^{G_r} S_u^in and token j <= r contributes e^{G_r - G_j} k_j v_j^T, so
  ///   open state, carried in:  p_r = e^{G_r} k_r^T S^in v_r + sum_{j in open, j < r} e^{G_r-G_j} KK_rj VV_rj
  ///   open state, opened at s: p_r = sum_{s <= j < r} e^{G_r-G_j} KK_rj VV_rj
  ///   B_r = KK_rr VV_rr,  A_{r+1} = a_{r+1}^2 (A_r + 2 p_r + B_r) (or a^2 B_r after a boundary),
  /// with A_0 = a_0^2 ||S_open^in||^2 computed from the stored state.
  /// Readout of token r (step 5): the entry holding unit u gets lam_r[m-1-i], so
  ///   y_r = sum_{u < m_in} w_ru e^{G_r} q_r^T S_u^in + sum_{j <= r} w_rj e^{G_r-G_j} (q_r . k_j) v_j.
  static void chunk(const Ctx& c, Work& w, int64_t b, int64_t h, int64_t t0, int64_t Lc) {
    const DLAProblem& p = *c.p;
    const int64_t Dk = c.Dk, DvP = c.DvP, LP = c.LP, C = c.C;
    // Pack the chunk (T values; K^T and V^T padded with zero columns up to LP).
    for (int64_t r = 0; r < Lc; ++r) {
      load_row(p.q, b, h, t0 + r, Dk, w.Qc + r * Dk);
      load_row(p.k, b, h, t0 + r, Dk, w.Kc + r * Dk);
      load_row(p.v, b, h, t0 + r, p.Dv, w.Vc + r * DvP);
      for (int64_t e = p.Dv; e < DvP; ++e) w.Vc[r * DvP + e] = T(0);
      load_row(p.lam, b, h, t0 + r, C, w.lamc + r * C);
    }
    for (int64_t d = 0; d < Dk; ++d)
      for (int64_t j = 0; j < LP; ++j) w.KcT[d * LP + j] = j < Lc ? w.Kc[j * Dk + d] : T(0);
    for (int64_t e = 0; e < DvP; ++e)
      for (int64_t j = 0; j < LP; ++j) w.VcT[e * LP + j] = j < Lc ? w.Vc[j * DvP + e] : T(0);
    // Decay inside the chunk. The pair factors e^{G_r - G_j} are products e^{G_r - G_0} e^{G_0 - G_j}
    // while the chunk's total decay keeps both in double's range (no exp per pair), else direct exps.
    bool factored = false;
    if (c.decay) {
      double G = 0;
      for (int64_t r = 0; r < Lc; ++r) {
        G += log_decay(c, b, h, t0 + r);
        w.G[r] = G;
        w.eG[r] = std::exp(G);
      }
      factored = w.G[0] - w.G[Lc - 1] <= 600.0;
      if (factored)
        for (int64_t r = 0; r < Lc; ++r) {
          w.er[r] = std::exp(w.G[r] - w.G[0]);
          w.fj[r] = std::exp(w.G[0] - w.G[r]);
        }
    }
    // Gram matrices, lower triangles (row r needs columns j <= r).
    lower_rows<Store::Overwrite>(Lc, LP, Dk, true, w.Kc, Dk, 1, w.KcT, LP, w.KK, LP);
    lower_rows<Store::Overwrite>(Lc, LP, DvP, true, w.Vc, DvP, 1, w.VcT, LP, w.VV, LP);
    lower_rows<Store::Overwrite>(Lc, LP, Dk, true, w.Qc, Dk, 1, w.KcT, LP, w.QK, LP);

    const int64_t m_in = w.m;
    for (int64_t u = 0; u < m_in; ++u) {
      w.in_slot[u] = w.slot[u];
      w.unit[u] = u;
    }
    // The open state carried in: k_r^T S^in v_r for every row, and ||S^in||^2.
    double A_after = 0.0;  // ||open state||^2 after the previous token's insert (before this token's decay)
    bool carried = m_in > 0;
    if (carried) {
      const T* open = w.slots + w.in_slot[m_in - 1] * c.SS;
      Gemm::template gemm<RL, NV, Store::Overwrite>(Lc, DvP, Dk, w.Kc, Dk, 1, open, DvP, w.KS, DvP);
      for (int64_t r = 0; r < Lc; ++r) w.cp[r] = dot(w.KS + r * DvP, w.Vc + r * DvP, DvP);
      A_after = sq_norm(c, open);
    }

    // The scalar scan: scores, boundaries and merges, and the readout weights of every row.
    int64_t open_lo = 0;  // first chunk token of the open state (tokens before it belong to older entries)
    for (int64_t r = 0; r < Lc; ++r) {
      const double a2 = c.decay ? std::exp(2.0 * log_decay(c, b, h, t0 + r)) : 1.0;
      const double A = a2 * A_after;
      const T* kkr = w.KK + r * LP;
      const T* vvr = w.VV + r * LP;
      double pr = carried ? (c.decay ? w.eG[r] : 1.0) * w.cp[r] : 0.0;
      for (int64_t j = open_lo; j < r; ++j)
        pr += dec(c, w, factored, r, j) * static_cast<double>(kkr[j]) * static_cast<double>(vvr[j]);
      const double Bv = static_cast<double>(kkr[r]) * static_cast<double>(vvr[r]);
      const double score = w.m > 0 ? math::dla_info_score(p.state_drift, A, Bv, pr, c.n) : 0.0;
      const T I = static_cast<T>(score);
      const bool opens = math::dla_opens_state(I, p.tau, C, w.m);
      int64_t merged = -1;
      if (opens) {
        if (w.m == C) merged = merge_entries(c, w, false);
        const int64_t e = append_entry(w, I, p.position + t0 + r);
        w.unit[e] = m_in + r;
        open_lo = r;
        carried = false;
        A_after = Bv;
      } else {
        w.count[w.m - 1] += 1;
        w.info[w.m - 1] += I;
        A_after = math::dla_joined_sq_norm(A, Bv, pr);
      }
      if (p.scores.present || p.boundaries.present || p.merged.present) {
        auto at = [&](const OutN<3>& o) { return b * o.stride[0] + h * o.stride[1] + (t0 + r) * o.stride[2]; };
        if (p.scores.present) static_cast<T*>(p.scores.data)[at(p.scores)] = I;
        if (p.boundaries.present) static_cast<uint8_t*>(p.boundaries.data)[at(p.boundaries)] = opens ? 1 : 0;
        if (p.merged.present) static_cast<int64_t*>(p.merged.data)[at(p.merged)] = merged;
      }
      // Readout weights of row r over the units (step 5, after the insert).
      T* prow = w.P + r * LP;
      T* wrow = w.Win + r * C;
      const T* qkr = w.QK + r * LP;
      const T* lr = w.lamc + r * C;
      for (int64_t i = 0; i < w.m; ++i) {
        const double li = static_cast<double>(lr[math::dla_lam_index(i, w.m)]);
        const int64_t ulo = w.unit[i], uhi = i + 1 < w.m ? w.unit[i + 1] : m_in + r + 1;
        const int64_t umid = uhi < m_in ? uhi : m_in;  // carried units [ulo, umid), tokens after
        const T wc = static_cast<T>(li * (c.decay ? w.eG[r] : 1.0));
        for (int64_t u = ulo; u < umid; ++u) wrow[u] = wc;
        const int64_t j0 = (ulo > m_in ? ulo : m_in) - m_in;
        if (c.decay) {
          for (int64_t j = j0; j < uhi - m_in; ++j)
            prow[j] = static_cast<T>(li * dec(c, w, factored, r, j) * static_cast<double>(qkr[j]));
        } else {
          const T lt = static_cast<T>(li);
          for (int64_t j = j0; j < uhi - m_in; ++j) prow[j] = lt * qkr[j];
        }
      }
      for (int64_t j = r + 1; j < LP; ++j) prow[j] = T(0);
    }

    // Outputs: Y = P V_c (lower-triangular P), then the carried states' terms.
    lower_rows<Store::Overwrite>(Lc, DvP, Lc, false, w.P, LP, 1, w.Vc, DvP, w.Y, DvP);
    for (int64_t u = 0; u < m_in; ++u) {
      bool any = false;
      for (int64_t r = 0; r < Lc; ++r) {
        const T wu = w.Win[r * C + u];
        any |= wu != T(0);
        for (int64_t d = 0; d < Dk; ++d) w.Qw[r * Dk + d] = wu * w.Qc[r * Dk + d];
      }
      if (any)
        Gemm::template gemm<RL, NV, Store::Accumulate>(Lc, DvP, Dk, w.Qw, Dk, 1, w.slots + w.in_slot[u] * c.SS, DvP,
                                                       w.Y, DvP);
    }
    for (int64_t r = 0; r < Lc; ++r) {
      const int64_t t = t0 + r;
      St* dst = static_cast<St*>(p.out.data) + b * p.out.stride[0] + h * p.out.stride[1] + t * p.out.stride[2];
      for (int64_t e = 0; e < p.Dv; ++e) dst[e * p.out.stride[3]] = from_acc<St>(w.Y[r * DvP + e]);
    }

    // States at the chunk's end: entry i = e^{G_last} (sum of its carried states) + K_i^T diag(dec) V_i over
    // its tokens. Entries that hold carried units first (they free the slots of the units merged into
    // them), then the entries made of chunk tokens only.
    const T* Vsrc = w.Vc;
    if (c.decay) {
      for (int64_t j = 0; j < Lc; ++j) {
        const T dj = static_cast<T>(dec(c, w, factored, Lc - 1, j));
        for (int64_t e = 0; e < DvP; ++e) w.Vw[j * DvP + e] = dj * w.Vc[j * DvP + e];
      }
      Vsrc = w.Vw;
    }
    const T E = static_cast<T>(c.decay ? w.eG[Lc - 1] : 1.0);
    for (int pass = 0; pass < 2; ++pass) {
      for (int64_t i = 0; i < w.m; ++i) {
        const int64_t ulo = w.unit[i], uhi = i + 1 < w.m ? w.unit[i + 1] : m_in + Lc;
        if ((ulo < m_in) != (pass == 0)) continue;
        T* st;
        Store how = Store::Accumulate;
        if (ulo < m_in) {
          const int64_t s = w.in_slot[ulo];
          st = w.slots + s * c.SS;
          const int64_t ue = uhi < m_in ? uhi : m_in;
          for (int64_t u = ulo + 1; u < ue; ++u) {
            add_state(c, st, w.slots + w.in_slot[u] * c.SS);
            push_free(w, w.in_slot[u]);
          }
          if (c.decay) scale_state(c, st, E);
          w.slot[i] = s;
        } else {
          w.slot[i] = pop_free(w);
          st = w.slots + w.slot[i] * c.SS;
          how = Store::Overwrite;
        }
        const int64_t j0 = (ulo > m_in ? ulo : m_in) - m_in, j1 = uhi - m_in;
        if (j1 > j0) {
          if (how == Store::Overwrite)
            Gemm::template gemm<RL, NV, Store::Overwrite>(Dk, DvP, j1 - j0, w.KcT + j0, LP, 1, Vsrc + j0 * DvP, DvP,
                                                          st, DvP);
          else
            Gemm::template gemm<RL, NV, Store::Accumulate>(Dk, DvP, j1 - j0, w.KcT + j0, LP, 1, Vsrc + j0 * DvP, DvP,
                                                           st, DvP);
        }
      }
    }
  }

  static void chunked(const Ctx& c, Work& w, int64_t b, int64_t h) {
    for (int64_t t0 = 0; t0 < c.p->T; t0 += c.L) {
      const int64_t Lc = c.p->T - t0 < c.L ? c.p->T - t0 : c.L;
      chunk(c, w, b, h, t0, Lc);
    }
    store_cache(c, w, b, h, T(1));
  }

  /// Returns false when scratch memory could not be allocated (the caller throws: no exceptions or
  /// std::string are instantiated in the per-ISA translation units).
  static void run(const DLAProblem& p) {
    Ctx c;
    c.p = &p;
    c.L = p.chunk_size > 0 ? p.chunk_size : p.chunk_size < 0 || p.T <= kRecurrentMaxT ? 0 : kDefaultChunk;
    if (c.L > p.T) c.L = p.T > 0 ? p.T : 0;
    c.Dk = p.Dk;
    c.DvP = (p.Dv + W - 1) / W * W;
    c.LP = (c.L + W - 1) / W * W;
    c.C = p.C;
    c.SS = c.Dk * c.DvP;
    c.n = static_cast<double>(p.Dk) * static_cast<double>(p.Dv);
    c.decay = p.log_decay.present;
    c.fused = can_fuse(p);
    const int64_t items = p.B * p.H;
    Work layout;
    const std::size_t bytes = carve(nullptr, c, layout);
    // Every scratch buffer is written before it is read: no zero-fill.
    parallel_with_scratch("DLA", items > 1, bytes, /*zero=*/false, [&](void* mem) {
      Work w{};
      if (mem) carve(static_cast<char*>(mem), c, w);
      team_for(items, mem, [&](int64_t it) {
        const int64_t b = it / p.H, h = it % p.H;
        if (c.fused) {
          decode(c, w, b, h);
          return;
        }
        load_cache(c, w, b, h);
        if (c.L == 0)
          recurrent(c, w, b, h);
        else
          chunked(c, w, b, h);
      });
    });
  }
};

/// Runs DLA for every storage dtype with the ISA's two configurations.
template <class Cfg32, class Cfg64>
void run_dla(const DLAProblem& p) {
  switch (p.dtype) {
    case DType::Float32: return DlaKernel<Cfg32, float>::run(p);
    case DType::Float64: return DlaKernel<Cfg64, double>::run(p);
    case DType::Float16: return DlaKernel<Cfg32, Half>::run(p);
    case DType::BFloat16: return DlaKernel<Cfg32, BFloat>::run(p);
    default: ATTNKIT_ASSERT(false, "DLA: a non-floating dtype passed validation");
  }
}

}  // namespace ATTNKIT_ISA_NAMESPACE
}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
