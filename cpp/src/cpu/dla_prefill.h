#pragma once
// Dynamic linear attention on the CPU, part 3 of 3: the chunked form (prefill, and any call the decode path
// does not take). Per chunk of L tokens, the Gram matrices K K^T, V V^T (and k_t^T S_open v_t for the open
// state carried in) give the three scalars of the information score of every token (math/dla.h), so a
// scalar scan decides boundaries and merges in O(L^2); then outputs come from matrix products,
// Y = (W o Dec o Q K^T) V + sum_i diag(w_i) Q S_i for the states carried in, and the states at the chunk's
// end from K^T diag(dec) V per span. See chunk() for the details. Every matrix product goes through
// cpu/gemm_kernel.h's MicroGemm. Scores, A = ||S_open||^2 and p are combined in double (math/dla.h); A is
// recomputed from the stored state at every chunk start rather than carried across many tokens, so
// float32 drift cannot build up in it.

#include "cpu/dla_cache.h"

namespace attnkit {
namespace detail {
namespace cpu {
inline namespace ATTNKIT_ISA_NAMESPACE {

template <class Cfg, class St>
struct DlaPrefill : DlaBase<Cfg, St> {
  using Base = DlaBase<Cfg, St>;
  using typename Base::T;
  using typename Base::S;
  using typename Base::V;
  using typename Base::Gemm;
  using typename Base::Ctx;
  using typename Base::Work;
  using Base::W;
  using Base::RL;
  using Base::NV;
  using Base::dot;
  using Base::sq_norm;
  using Base::scale_state;
  using Base::add_state;
  using Base::pop_free;
  using Base::push_free;
  using Base::merge_entries;
  using Base::append_entry;
  using Base::store_cache;
  using Base::load_row;
  using Base::log_decay;

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
    store_cache(c, w, b, h);
  }

};

}  // namespace ATTNKIT_ISA_NAMESPACE
}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
