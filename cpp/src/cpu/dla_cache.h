#pragma once
// Dynamic linear attention on the CPU (shared/specs/dla.md), part 1 of 3: what the decode path
// (cpu/dla_decode.h) and the chunked prefill (cpu/dla_prefill.h) share: the per-call context, one thread's
// scratch, the entry list of the cache, reading and writing the cache, and token access. cpu/dla_kernel.h
// runs them; everything is written once over SIMD width and compiled per instruction set by
// dla_{generic,avx2,avx512}.cpp.
//
// Work. Each (batch, head) is one work item, run by one thread from the first token to the last (the
// cache makes it sequential), items in parallel: results do not depend on the thread count.
//
// Cache. The chunked form keeps the cache of its item in scratch: C state slots of Dk x DvP elements (Dv
// padded to whole vectors, padding kept 0) and the chronological entry list (slot, count, info, start).
// Merging adds one slot into another and frees it; entries are reordered only in the small arrays, so a
// merge costs O(Dk * Dv) and never moves the other states. The cache arrays are read once at the start and
// written once at the end (in chronological order, unused entries 0).

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

namespace attnkit {
namespace detail {
namespace cpu {
inline namespace ATTNKIT_ISA_NAMESPACE {

/// Cfg provides T (float for float32/float16/bfloat16 inputs, double for float64), W (SIMD lanes), RL and
/// NV (register block of the products: RL rows x NV vectors).
template <class Cfg, class St>
struct DlaBase {
  using T = typename Cfg::T;
  static constexpr int W = Cfg::W;
  static constexpr int RL = Cfg::RL;
  static constexpr int NV = Cfg::NV;
  using S = Simd<T, W>;
  using V = typename S::V;
  using Gemm = MicroGemm<T, W>;

  /// Chunk length of the automatic choice (16..128 measured within noise of each other at S = 4096, H = 8,
  /// D = 64, C = 30; from T = 2 on the chunked form was measured faster than token by token, and T = 1
  /// takes the decode path).
  static constexpr int64_t kDefaultChunk = 64;

  struct Ctx {
    const DLAProblem* p;
    int64_t L;      // chunk length (>= 1)
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
    // token rows (decode)
    T *qr, *kr, *vr, *u, *yr, *lr;  // [Dk], [Dk], [DvP], [DvP], [DvP], [C]
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

  /// The entry list and the states of cache_in, into scratch (chunked form).
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

  /// Writes the cache from scratch (chunked form).
  static void store_cache(const Ctx& c, const Work& w, int64_t b, int64_t h) {
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
        } else {
          for (int64_t e = 0; e < p.Dv; ++e) row[e * es] = src[d * c.DvP + e];
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

};

}  // namespace ATTNKIT_ISA_NAMESPACE
}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
