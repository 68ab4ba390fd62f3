#pragma once
// Dynamic linear attention on the CPU, part 2 of 3: the decode path (T = 1, the automatic choice). The step
// is decided from the input open state alone (three scalars), then one pass reads each input state once,
// writes the output cache in its final order and accumulates the readout: O(C * Dk * Dv), no scratch copy
// of the states.

#include "cpu/dla_cache.h"

namespace attnkit {
namespace detail {
namespace cpu {
inline namespace ATTNKIT_ISA_NAMESPACE {

template <class Cfg, class St>
struct DlaDecode : DlaBase<Cfg, St> {
  using Base = DlaBase<Cfg, St>;
  using typename Base::T;
  using typename Base::S;
  using typename Base::V;
  using typename Base::Gemm;
  using typename Base::Ctx;
  using typename Base::Work;
  using Base::W;
  using Base::NV;
  using Base::dot;
  using Base::merge_entries;
  using Base::append_entry;
  using Base::load_entries;
  using Base::store_entries;
  using Base::load_row;
  using Base::log_decay;
  using Base::write_token;

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

};

}  // namespace ATTNKIT_ISA_NAMESPACE
}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
