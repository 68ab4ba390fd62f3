// Dynamic linear attention on the GPU, chunked prefill, second version ("dla_prefill_v2", gated in
// cuda/runtime.cu kCompiled; dla.cu takes it when has_kernel("dla_prefill_v2") and the chunk fits in shared
// memory, else dla_prefill.cu). Same semantics and nearly the same arithmetic as dla_prefill.cu (which
// follows cpu/dla_prefill.h): the same chunk boundaries, scan, merge order, and the same formulas and
// summation orders for the decisions and states (the carried states' readout scales after the product, and
// p_r sums in another order: rounding only); what changed is where the data lives and who computes what:
//
// * The chunk (Q^T, K^T, V^T and V, the Gram products, the readout weights, the entry-list snapshots) lives
//   in dynamic shared memory instead of global scratch; the cache's state slots stay in global scratch.
// * The Gram lower triangles K K^T, V V^T (double) and Q K^T are register tiles of kTg x kTg per thread.
// * The scan's in-chunk pair sums p_r = sum_{open_lo <= j < r} e^{G_r-G_j} KK_rj VV_rj come from per-row
//   suffix sums computed in parallel before the scan (summed from j = r-1 down instead of up: a double
//   rounding difference only). The scores themselves do not depend on the scan beyond the start s of the
//   open state (A follows from s alone while no boundary intervenes), so a table of every row's score under
//   every possible s (carried in, or opened at chunk row s) is computed in parallel first (the A chains one
//   thread each, then one score per thread, each step the scan's own arithmetic); thread 0's serial scan
//   then only looks scores up and does the bookkeeping. Its merges pick the pair exactly as
//   math::dla_merge_pair does, from ratios cached per pair (recomputed where a pair changes).
// * The readout weights are computed one (row, unit) per thread (was one row per thread).
// * The readout: kRt rows x 1 column per thread in registers, y = P V, then each carried state's term
//   w_ru sum_d q_rd S_u[d][e] with S_u read from the slots (every warp reads the same rows: L1) and Q^T
//   from shared memory (16-byte broadcasts); no barrier inside (was: every output element re-reading every
//   state from global memory).
// * Column split: each (batch, head) item is run by `ns` blocks, each owning a slice of the Dv output
//   columns for the readout (the dominant O(L C Dk Dv) work per chunk). Every slice block runs the same
//   scan and keeps the full cache (the scan needs the whole open state), redundantly and deterministically
//   (identical code on identical data); only slice 0 writes the aux outputs and the cache.
//   ns: the tuning option "dla_split" (cpp/src/tuning.h; attnkit._tuning.tuning(dla_split=n) in Python;
//   1..8; 0, the default: automatic, about one block per SM: clamp(SMs / (B*H), 1, 4)), never more than Dv.
// * The states at the chunk's end: kDt state rows per thread (one column), K rows from shared memory.
//
// What stays serial per chunk (and bounds the speed at B*H ~ #SMs): thread 0's scan (with a merge at
// nearly every token when every token opens a state, as random data do) and the per-chunk barriers.
//
// Every reduction is a fixed loop of one thread or a fixed tree over the block: deterministic, and the
// results do not depend on ns (each output element is computed by exactly the same sequence of operations
// whichever block owns it).

#include "cuda/dla_common.cuh"
#include "cuda/dla_prefill_v2.cuh"
#include "cuda/workspace.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
namespace dla {
namespace v2 {

/// The block's view of its shared memory and scratch for the current item.
template <class St>
struct Blk {
  using R = acc_t<St>;
  const DLAProblem& p;
  int64_t L, LP, C, Dk, Dv, SS, b = 0, h = 0;
  bool decay;
  double n;
  R *slots, *QT, *KT, *Kc, *VT, *Vc, *QK, *lamc, *Win, *decj, *info;
  double *Suf, *KS, *Sc, *G, *eG, *er, *fj, *cp, *a2, *Bv, *Ac, *ratio, *red;
  int64_t *slot, *count, *start, *unit, *in_slot, *free_;
  int32_t *snap_unit, *snap_m, *anyU, *death, *rowOpen, *rowMerged;
  R* rowI;

  __device__ Blk(const DLAProblem& pr, const Lay& l, char* sm, char* gbase)
      : p(pr), L(l.L), LP(l.LP), C(pr.C), Dk(pr.Dk), Dv(pr.Dv), SS(pr.Dk * pr.Dv), decay(pr.log_decay.present),
        n(static_cast<double>(pr.Dk) * static_cast<double>(pr.Dv)) {
    slots = reinterpret_cast<R*>(gbase);
    QT = reinterpret_cast<R*>(sm + l.QT);
    KT = reinterpret_cast<R*>(sm + l.KT);
    Kc = reinterpret_cast<R*>(sm + l.Kc);
    VT = reinterpret_cast<R*>(sm + l.VT);
    Vc = reinterpret_cast<R*>(sm + l.Vc);
    QK = reinterpret_cast<R*>(sm + l.QK);
    lamc = reinterpret_cast<R*>(sm + l.lamc);
    Win = reinterpret_cast<R*>(sm + l.Win);
    decj = reinterpret_cast<R*>(sm + l.decj);
    info = reinterpret_cast<R*>(sm + l.info);
    Suf = reinterpret_cast<double*>(sm + l.Suf);
    KS = reinterpret_cast<double*>(sm + l.uni);
    Sc = KS;
    G = reinterpret_cast<double*>(sm + l.G);
    eG = reinterpret_cast<double*>(sm + l.eG);
    er = reinterpret_cast<double*>(sm + l.er);
    fj = reinterpret_cast<double*>(sm + l.fj);
    cp = reinterpret_cast<double*>(sm + l.cp);
    a2 = reinterpret_cast<double*>(sm + l.a2);
    Bv = reinterpret_cast<double*>(sm + l.Bv);
    Ac = reinterpret_cast<double*>(sm + l.Ac);
    ratio = reinterpret_cast<double*>(sm + l.ratio);
    red = reinterpret_cast<double*>(sm + l.red);
    slot = reinterpret_cast<int64_t*>(sm + l.slot);
    count = reinterpret_cast<int64_t*>(sm + l.count);
    start = reinterpret_cast<int64_t*>(sm + l.start);
    unit = reinterpret_cast<int64_t*>(sm + l.unit);
    in_slot = reinterpret_cast<int64_t*>(sm + l.in_slot);
    free_ = reinterpret_cast<int64_t*>(sm + l.free_);
    snap_unit = reinterpret_cast<int32_t*>(sm + l.snap_unit);
    snap_m = reinterpret_cast<int32_t*>(sm + l.snap_m);
    death = reinterpret_cast<int32_t*>(sm + l.death);
    rowOpen = reinterpret_cast<int32_t*>(sm + l.rowOpen);
    rowMerged = reinterpret_cast<int32_t*>(sm + l.rowMerged);
    rowI = reinterpret_cast<R*>(sm + l.rowI);
    anyU = reinterpret_cast<int32_t*>(sm + l.anyU);
  }

  __device__ __forceinline__ double log_decay(int64_t t) const {
    return load_float<double>(p.log_decay.data, p.log_decay.dtype, at3(p.log_decay, b, h, t));
  }

  __device__ __forceinline__ double dec(bool factored, int64_t r, int64_t j) const {
    if (!decay) return 1.0;
    return factored ? er[r] * fj[j] : exp(G[r] - G[j]);
  }

  /// The merge ratio of the adjacent pair (i, i+1): math::dla_merge_pair's expression, verbatim.
  __device__ __forceinline__ double pair_ratio(int64_t i) const {
    return (static_cast<double>(info[i]) + static_cast<double>(info[i + 1])) /
           static_cast<double>(count[i] + count[i + 1]);
  }

  /// Thread 0: cpu/dla_cache.h merge_entries on the entry list (m == C entries), the pair chosen exactly as
  /// math::dla_merge_pair (first pair on ties, the same comparisons) but from cached ratios: ratio[j] holds
  /// pair_ratio(j) for every pair not involving the open entry (j <= m-3; an entry stops changing once it
  /// is not the open one, and merges recompute the pairs they touch), the open pair is computed here (its
  /// entry is final: this token opens a new one). Keeps the cache valid for j <= m-3 after the merge.
  __device__ int64_t merge_entries(int64_t& m, int64_t r) {
    ratio[m - 2] = pair_ratio(m - 2);
    int64_t i = 0;
    double best_ratio = 0;
#pragma unroll 4
    for (int64_t j = 0; j + 1 < m; ++j) {
      const double rj = ratio[j];
      if (j == 0 || rj < best_ratio) {  // strict: an equal ratio keeps the older pair
        i = j;
        best_ratio = rj;
      }
    }
    count[i] += count[i + 1];
    info[i] += info[i + 1];
    death[unit[i + 1]] = static_cast<int32_t>(r);  // entry i+1's first unit stops starting an entry at row r
    for (int64_t j = i + 1; j + 1 < m; ++j) {
      slot[j] = slot[j + 1];
      count[j] = count[j + 1];
      info[j] = info[j + 1];
      start[j] = start[j + 1];
      unit[j] = unit[j + 1];
      if (j + 1 <= m - 2) ratio[j] = ratio[j + 1];
    }
    --m;
    if (i >= 1) ratio[i - 1] = pair_ratio(i - 1);
    if (i + 1 < m) ratio[i] = pair_ratio(i);
    return i;
  }

  /// The information score of row r when the open state is the one carried in (s < 0) or the one opened at
  /// chunk row s < r, with no boundary since: the chain of A = ||S_open||^2 from the state's start, each
  /// step exactly the scan's arithmetic (dla_prefill.cu: A = a_r^2 A_after, p_r, then A_after =
  /// dla_joined_sq_norm or B_r). Chain s of thread s (s = -1: the carried state, A_open): A at every row
  /// r > s into Sc[r][s] (Ac[r] for s = -1), then score_table turns each entry into its score in place.
  __device__ void a_chain(int64_t s, int64_t Lc, double A_open) {
    double A_after = s < 0 ? A_open : Bv[s];
    for (int64_t r = s + 1; r < Lc; ++r) {
      const double A = (decay ? a2[r] : 1.0) * A_after;
      const double pr = pair_sum(s, r);
      (s < 0 ? Ac[r] : Sc[r * LP + s]) = A;
      A_after = math::dla_joined_sq_norm(A, Bv[r], pr);
    }
  }

  /// p_r of the open state started at s (s < 0: carried in), as the scan forms it.
  __device__ __forceinline__ double pair_sum(int64_t s, int64_t r) const {
    const int64_t open_lo = s < 0 ? 0 : s;
    double pr = s < 0 ? (decay ? eG[r] : 1.0) * cp[r] : 0.0;
    if (open_lo < r) pr += Suf[r * LP + open_lo];
    return pr;
  }

  /// Entry (r, s) of the table: the score (rounded to R, stored as double) from A in place.
  __device__ __forceinline__ void score_entry(int64_t s, int64_t r) {
    double& x = s < 0 ? Ac[r] : Sc[r * LP + s];
    x = static_cast<double>(static_cast<R>(math::dla_info_score(p.state_drift, x, Bv[r], pair_sum(s, r), n)));
  }

  /// Thread 0: dla_prefill.cu's scan, the scores read from the table. Per row it records the score, the
  /// boundary and the merged pair (rowI, rowOpen, rowMerged: the aux outputs, written by every thread after
  /// the scan) and, per unit, the row at which it stopped starting an entry (death, set to "never" by the
  /// block before the scan): the entry lists of every row follow from those (snapshots(), in parallel).
  __device__ void scan(int64_t t0, int64_t Lc, int64_t m_in, int64_t& m, int64_t& nfree) {
    for (int64_t u = 0; u < m_in; ++u) {
      in_slot[u] = slot[u];
      unit[u] = u;
    }
    for (int64_t j = 0; j + 2 < m; ++j) ratio[j] = pair_ratio(j);
    bool carried = m_in > 0;
    int64_t open_lo = 0;
    for (int64_t r = 0; r < Lc; ++r) {
      const R I = m == 0 ? R(0) : static_cast<R>(carried ? Ac[r] : Sc[r * LP + open_lo]);
      const bool opens = math::dla_opens_state(I, p.tau, C, m);
      int64_t merged = -1;
      if (opens) {
        if (m == C)
          merged = merge_entries(m, r);
        else if (m >= 2)
          ratio[m - 2] = pair_ratio(m - 2);  // the open entry's pair: final now
        count[m] = 1;
        info[m] = I;
        start[m] = p.position + t0 + r;
        unit[m] = m_in + r;
        ++m;
        open_lo = r;
        carried = false;
      } else {
        count[m - 1] += 1;
        info[m - 1] += I;
      }
      rowI[r] = I;
      rowOpen[r] = opens ? 1 : 0;
      rowMerged[r] = static_cast<int32_t>(merged);
    }
    assign_slots(m, Lc, m_in, nfree);
  }

  /// Thread 0, after a scan: the slots of the chunk's entries (cpu/dla_prefill.h's order): an entry holding
  /// carried units keeps its first unit's slot and frees the others', then the entries of chunk tokens only
  /// take free slots.
  __device__ void assign_slots(int64_t m, int64_t Lc, int64_t m_in, int64_t& nfree) {
    for (int pass = 0; pass < 2; ++pass)
      for (int64_t i = 0; i < m; ++i) {
        const int64_t ulo = unit[i], uhi = i + 1 < m ? unit[i + 1] : m_in + Lc;
        if ((ulo < m_in) != (pass == 0)) continue;
        if (ulo < m_in) {
          const int64_t ue = uhi < m_in ? uhi : m_in;
          for (int64_t u = ulo + 1; u < ue; ++u) free_[nfree++] = in_slot[u];
          slot[i] = in_slot[ulo];
        } else {
          slot[i] = free_[--nfree];
        }
      }
  }

  /// Row r's entry list after its insert (the scan's list at that point), rebuilt from the scan's record:
  /// entries are chronological and each is named by its first unit, so the list is the units u <= m_in + r
  /// that start an entry at row r: carried units (u < m_in) and the chunk rows that opened a state, unless
  /// merged away at a row <= r (death[u] <= r).
  __device__ void snapshot(int64_t r, int64_t m_in) {
    int32_t n = 0;
    int32_t* out = snap_unit + r * C;
    for (int64_t u = 0; u <= m_in + r; ++u) {
      const bool starts = (u < m_in || rowOpen[u - m_in] != 0) && death[u] > r;
      if (starts) out[n++] = static_cast<int32_t>(u);
    }
    snap_m[r] = n;
  }

  // G[r] = the sum of the chunk's log decays up to row r (thread 0; with decay only).
  __device__ __forceinline__ void decay_sums(int tid, int64_t t0, int64_t Lc) {
    if (decay && tid == 0) {
      double g = 0;
      for (int64_t r = 0; r < Lc; ++r) {
        g += log_decay(t0 + r);
        G[r] = g;
      }
    }
  }

  // The chunk's decay exponentials from G (with decay only): eG, a2 (with_a2), er and fj (factored).
  __device__ __forceinline__ void decay_exps(int tid, int nth, int64_t t0, int64_t Lc, bool factored, bool with_a2) {
    if (decay)
      for (int64_t r = tid; r < Lc; r += nth) {
        eG[r] = exp(G[r]);
        if (with_a2) a2[r] = exp(2.0 * log_decay(t0 + r));
        if (factored) {
          er[r] = exp(G[r] - G[0]);
          fj[r] = exp(G[0] - G[r]);
        }
      }
  }

  // g[a][c] += X_{r0+a} . X_{j0+c} (double) of one kTg x kTg Gram tile, from X^T (n rows of stride LP): the VV
  // tiles (V^T, Dv) and v4's KK tiles (K^T, Dk).
  __device__ __forceinline__ void gram_tile(const R* XT, int64_t n, int64_t r0, int64_t j0,
                                            double (&g)[kTg][kTg]) const {
    for (int64_t e = 0; e < n; ++e) {
      const R* vd = XT + e * LP;
      R vr[kTg], vj[kTg];
#pragma unroll
      for (int a = 0; a < kTg; ++a) {
        vr[a] = vd[r0 + a];
        vj[a] = vd[j0 + a];
      }
#pragma unroll
      for (int a = 0; a < kTg; ++a)
#pragma unroll
        for (int c = 0; c < kTg; ++c) g[a][c] += static_cast<double>(vr[a]) * static_cast<double>(vj[c]);
    }
  }

  // The open state S carried in: KS = K S (double; rows from `first`, v3's ks_rows did the rest), cp[r] =
  // k_r^T S v_r, and ||S||^2 returned (block_total synchronizes: KS is complete before cp reads it).
  __device__ __forceinline__ double open_terms(const R* open, int64_t first, int tid, int nth, int64_t Lc) {
    for (int64_t idx = first; idx < Lc * Dv; idx += nth) {
      const int64_t r = idx / Dv, e = idx % Dv;
      double u[4] = {0, 0, 0, 0};  // four partial sums over d (latency), added in a fixed order
      int64_t d = 0;
      for (; d + 4 <= Dk; d += 4) {
#pragma unroll
        for (int a = 0; a < 4; ++a)
          u[a] += static_cast<double>(KT[(d + a) * LP + r]) * static_cast<double>(open[(d + a) * Dv + e]);
      }
      for (; d < Dk; ++d) u[0] += static_cast<double>(KT[d * LP + r]) * static_cast<double>(open[d * Dv + e]);
      KS[idx] = (u[0] + u[1]) + (u[2] + u[3]);
    }
    double sq = 0;
    for (int64_t idx = tid; idx < SS; idx += nth) {
      const double s = static_cast<double>(open[idx]);
      sq += s * s;
    }
    const double A_open = block_total(sq, red);
    for (int64_t r = tid; r < Lc; r += nth) {
      double acc = 0;
      for (int64_t e = 0; e < Dv; ++e) acc += KS[r * Dv + e] * static_cast<double>(Vc[r * Dv + e]);
      cp[r] = acc;
    }
    return A_open;
  }

  // Suffix sums of the pair terms: Suf[r][j] = sum_{j <= j' < r} e^{G_r-G_j'} KK_rj' VV_rj'.
  __device__ __forceinline__ void suffix_sums(int tid, int nth, int64_t Lc) {
    for (int64_t r = tid; r < Lc; r += nth) {
      double acc = 0;
      for (int64_t j = r - 1; j >= 0; --j) {
        acc += Suf[r * LP + j];
        Suf[r * LP + j] = acc;
      }
    }
  }

  // acc = sum over the chunk's rows j in [j0, j1) of (decayed) v_j[e] k_j[d0 + a], a < nd (the CPU's order).
  __device__ __forceinline__ void kv_rows(int64_t d0, int64_t e, int64_t nd, bool kvec, int64_t j0, int64_t j1,
                                          R (&acc)[kDt]) const {
#pragma unroll
    for (int a = 0; a < kDt; ++a) acc[a] = R(0);
    for (int64_t j = j0; j < j1; ++j) {
      const R vj = decay ? decj[j] * Vc[j * Dv + e] : Vc[j * Dv + e];
      R k8[kDt];
      if (kvec) {
        load_rows(Kc + j * Dk + d0, k8);  // 16-byte aligned: Dk % 4 == 0, d0 % 8 == 0
      } else {
#pragma unroll
        for (int a = 0; a < kDt; ++a) k8[a] = a < nd ? KT[(d0 + a) * LP + j] : R(0);
      }
#pragma unroll
      for (int a = 0; a < kDt; ++a)
        if (a < nd) acc[a] += k8[a] * vj;
    }
  }

  // Step 6, the states at the chunk's end for columns e0 .. e0 + ncw - 1: kDt state rows d of one column e per
  // thread (tid of nth); the m_out entries from the m_in carried ones and the chunk's Lc rows, in the CPU's order.
  __device__ __forceinline__ void chunk_end_states(int tid, int nth, int64_t e0, int64_t ncw, int64_t Lc,
                                                   int64_t m_in, int64_t m_out) {
    const R E = static_cast<R>(decay ? eG[Lc - 1] : 1.0);
    const int64_t ndg = (Dk + kDt - 1) / kDt;
    for (int64_t wi = tid; wi < ndg * ncw; wi += nth) {
      const int64_t d0 = (wi / ncw) * kDt, e = e0 + wi % ncw;
      const int64_t nd = Dk - d0 < kDt ? Dk - d0 : kDt;
      const bool kvec = Dk % 4 == 0 && nd == kDt;
      for (int pass = 0; pass < 2; ++pass)
        for (int64_t i = 0; i < m_out; ++i) {
          const int64_t ulo = unit[i], uhi = i + 1 < m_out ? unit[i + 1] : m_in + Lc;
          const bool carries = ulo < m_in;
          if (carries != (pass == 0)) continue;
          R x[kDt];
#pragma unroll
          for (int a = 0; a < kDt; ++a) x[a] = R(0);
          if (carries) {
            const R* s0 = slots + in_slot[ulo] * SS + d0 * Dv + e;
#pragma unroll
            for (int a = 0; a < kDt; ++a)
              if (a < nd) x[a] = s0[a * Dv];
            const int64_t ue = uhi < m_in ? uhi : m_in;
            for (int64_t u = ulo + 1; u < ue; ++u) {
              const R* su = slots + in_slot[u] * SS + d0 * Dv + e;
#pragma unroll
              for (int a = 0; a < kDt; ++a)
                if (a < nd) x[a] = x[a] + su[a * Dv];
            }
            if (decay) {
#pragma unroll
              for (int a = 0; a < kDt; ++a) x[a] = x[a] * E;
            }
          }
          const int64_t j0 = (ulo > m_in ? ulo : m_in) - m_in, j1 = uhi - m_in;
          if (j1 > j0) {
            R acc[kDt];
            kv_rows(d0, e, nd, kvec, j0, j1, acc);
#pragma unroll
            for (int a = 0; a < kDt; ++a) x[a] = carries ? x[a] + acc[a] : acc[a];
          }
          R* dst = slots + slot[i] * SS + d0 * Dv + e;
#pragma unroll
          for (int a = 0; a < kDt; ++a)
            if (a < nd) dst[a * Dv] = x[a];
        }
    }
  }
};

#include "cuda/dla_prefill_v3.cuh"  // v3: the warp scan, batched loads

// v3's batched chunk loads: V^T and V (rows Lc .. LP-1 of V^T zero) of rows t0 .. t0 + Lc - 1 of item (b, h).
template <class St>
__device__ __forceinline__ void load_v_batched(Blk<St>& w, const DLAProblem& p, int64_t b, int64_t h, int tid,
                                               int nth, int64_t t0, int64_t Lc) {
  using R = acc_t<St>;
  const int64_t LP = w.LP, Dv = w.Dv;
  batched(LP * Dv, tid, nth, [&](int64_t idx) {
    const int64_t r = idx / Dv, e = idx - r * Dv;
    return r < Lc ? ld<St>(p.v.data, at3(p.v, b, h, t0 + r) + e * p.v.stride[3]) : R(0);
  }, [&](int64_t idx, R v) {
    const int64_t r = idx / Dv, e = idx - r * Dv;
    w.VT[e * LP + r] = v;
    if (r < Lc) w.Vc[r * Dv + e] = v;
  });
}

// v3's batched chunk loads: Q^T, K^T (rows Lc .. LP-1 zero), K, V^T, V and the lambdas of rows t0 .. t0 + Lc - 1.
template <class St>
__device__ __forceinline__ void load_chunk_batched(Blk<St>& w, const DLAProblem& p, int64_t b, int64_t h, int tid,
                                                   int nth, int64_t t0, int64_t Lc) {
  using R = acc_t<St>;
  const int64_t LP = w.LP, Dk = w.Dk, C = w.C;
  struct QKv {
    R q, k;
  };
  batched(LP * Dk, tid, nth, [&](int64_t idx) {
    const int64_t r = idx / Dk, d = idx - r * Dk;
    QKv x{R(0), R(0)};
    if (r < Lc) {
      x.q = ld<St>(p.q.data, at3(p.q, b, h, t0 + r) + d * p.q.stride[3]);
      x.k = ld<St>(p.k.data, at3(p.k, b, h, t0 + r) + d * p.k.stride[3]);
    }
    return x;
  }, [&](int64_t idx, const QKv& x) {
    const int64_t r = idx / Dk, d = idx - r * Dk;
    w.QT[d * LP + r] = x.q;
    w.KT[d * LP + r] = x.k;
    if (r < Lc) w.Kc[r * Dk + d] = x.k;
  });
  load_v_batched(w, p, b, h, tid, nth, t0, Lc);
  batched(Lc * C, tid, nth, [&](int64_t idx) {
    const int64_t r = idx / C, c = idx - r * C;
    return ld<St>(p.lam.data, at3(p.lam, b, h, t0 + r) + c * p.lam.stride[3]);
  }, [&](int64_t idx, R x) { w.lamc[idx] = x; });
}

// Step 4, the readout weights, one (row r, unit U <= m_in + r) per thread: Win for carried units, P (in place over
// QK) for the chunk's tokens.
template <class St>
__device__ __forceinline__ void readout_weights(Blk<St>& w, int tid, int nth, int64_t Lc, int64_t m_in, bool factored) {
  using R = acc_t<St>;
  const int64_t C = w.C, LP = w.LP;
  const int64_t NU = m_in + Lc;
  for (int64_t idx = tid; idx < Lc * NU; idx += nth) {
    const int64_t r = idx / NU, U = idx % NU;
    if (U > m_in + r) continue;
    const int64_t mr = w.snap_m[r];
    const int32_t* units = w.snap_unit + r * C;
    int64_t i = mr - 1;
    while (i > 0 && units[i] > U) --i;
    const double li = static_cast<double>(w.lamc[r * C + math::dla_lam_index(i, mr)]);
    if (U < m_in) {
      w.Win[r * C + U] = static_cast<R>(li * (w.decay ? w.eG[r] : 1.0));
    } else {
      const int64_t j = U - m_in;
      R* pj = w.QK + r * LP + j;
      if (w.decay)
        *pj = static_cast<R>(li * w.dec(factored, r, j) * static_cast<double>(*pj));
      else
        *pj = static_cast<R>(li) * *pj;
    }
  }
}

// anyU[u]: some row of the chunk weights carried state u (the CPU skips a state no row weights).
template <class St>
__device__ __forceinline__ void used_states(Blk<St>& w, int tid, int nth, int64_t Lc, int64_t m_in) {
  using R = acc_t<St>;
  const int64_t C = w.C;
  for (int64_t u = tid; u < m_in; u += nth) {
    int32_t any = 0;
    for (int64_t r = 0; r < Lc; ++r) any |= w.Win[r * C + u] != R(0) ? 1 : 0;
    w.anyU[u] = any;
  }
}

// Step 5, the outputs of columns e0 .. e0 + ncw - 1, kRt rows x 1 column per thread in registers (see prefill_body).
template <class St>
__device__ __forceinline__ void chunk_outputs(Blk<St>& w, const DLAProblem& p, int64_t b, int64_t h, int tid, int nth,
                                              int64_t e0, int64_t ncw, int64_t t0, int64_t Lc, int64_t m_in) {
  using R = acc_t<St>;
  const int64_t C = w.C, Dk = w.Dk, Dv = w.Dv, SS = w.SS, LP = w.LP;
  const int64_t ngr = (Lc + kRt - 1) / kRt, nwi = ngr * ncw;
  for (int64_t wi = tid; wi < nwi; wi += nth) {
    const int64_t g = wi / ncw, c = wi % ncw, e = e0 + c, r0 = g * kRt;
    R y[kRt];
#pragma unroll
    for (int a = 0; a < kRt; ++a) {
      y[a] = R(0);
      const int64_t r = r0 + a;
      if (r < Lc)
        for (int64_t j = 0; j <= r; ++j) y[a] += w.QK[r * LP + j] * w.Vc[j * Dv + e];
    }
    for (int64_t u = 0; u < m_in; ++u) {
      if (!w.anyU[u]) continue;  // the CPU skips a state no row weights
      const R* S = w.slots + w.in_slot[u] * SS + e;
      R wr[kRt], acc[kRt];
#pragma unroll
      for (int a = 0; a < kRt; ++a) {
        wr[a] = r0 + a < Lc ? w.Win[(r0 + a) * C + u] : R(0);
        acc[a] = R(0);
      }
      for (int64_t d = 0; d < Dk; ++d) {
        const R sd = S[d * Dv];
        R q8[kRt];
        load_rows(w.QT + d * LP + r0, q8);  // rows past Lc are zero
#pragma unroll
        for (int a = 0; a < kRt; ++a) acc[a] += q8[a] * sd;
      }
#pragma unroll
      for (int a = 0; a < kRt; ++a) y[a] += wr[a] * acc[a];
    }
#pragma unroll
    for (int a = 0; a < kRt; ++a)
      if (r0 + a < Lc)
        static_cast<St*>(p.out.data)[at3(p.out, b, h, t0 + r0 + a) + e * p.out.stride[3]] = from_acc<St>(y[a]);
  }
}

/// The kernel body (a device function so that the host emulation can hand it its shared memory).
template <class St>
__device__ void prefill_body(const DLAProblem& p, const Lay& lay, char* scratch, char* sm) {
  using R = acc_t<St>;
  __shared__ int64_t sh_m;
  const int tid = static_cast<int>(threadIdx.x), nth = static_cast<int>(blockDim.x);
  Blk<St> w(p, lay, sm, scratch + static_cast<std::size_t>(blockIdx.x) * lay.gbytes);
  const int64_t C = w.C, Dk = w.Dk, Dv = w.Dv, SS = w.SS, L = w.L, LP = w.LP, items = p.B * p.H;
  const int64_t ns = lay.ns, ncol = lay.ncol;
  const DLACacheViews& ci = p.cache_in;
  const DLACacheOut& co = p.cache_out;

  for (int64_t wk = blockIdx.x; wk < items * ns; wk += gridDim.x) {
    const int64_t it = wk / ns, slice = wk % ns;
    const int64_t b = it / p.H, h = it % p.H;
    const int64_t e0 = slice * ncol, e1 = e0 + ncol < Dv ? e0 + ncol : Dv, ncw = e1 - e0;
    const bool lead = slice == 0;  // writes the aux outputs and the cache
    w.b = b;
    w.h = h;
    int64_t m = 0, nfree = 0;  // thread 0's
    if (tid == 0) {
      if (ci.present) m = static_cast<const int64_t*>(ci.size.data)[b * ci.size.stride[0] + h * ci.size.stride[1]];
      for (int64_t i = 0; i < m; ++i) {
        w.slot[i] = i;
        w.count[i] = static_cast<const int64_t*>(ci.counts.data)[at3(ci.counts, b, h, i)];
        w.info[i] = static_cast<const R*>(ci.info.data)[at3(ci.info, b, h, i)];
        w.start[i] = static_cast<const int64_t*>(ci.starts.data)[at3(ci.starts, b, h, i)];
      }
      for (int64_t s = C - 1; s >= m; --s) w.free_[nfree++] = s;
      sh_m = m;
    }
    __syncthreads();
    {
      const int64_t m0 = sh_m;
      const R* in = m0 > 0 ? static_cast<const R*>(ci.states.data) + b * ci.states.stride[0] + h * ci.states.stride[1]
                           : nullptr;
      for (int64_t idx = tid; idx < m0 * SS; idx += nth) {
        const int64_t i = idx / SS, d = (idx % SS) / Dv, e = idx % Dv;
        w.slots[idx] = in[i * ci.states.stride[2] + d * ci.states.stride[3] + e * ci.states.stride[4]];
      }
    }

    for (int64_t t0 = 0; t0 < p.T; t0 += L) {
      const int64_t Lc = p.T - t0 < L ? p.T - t0 : L;
      __syncthreads();  // the previous chunk (or the cache load) is complete
      const int64_t m_in = sh_m;
      // 1. The chunk, transposed (Q^T, K^T, V^T; rows Lc .. LP-1 zero) and V row-major. v3 (lay.batch_loads):
      //    kLb elements loaded per thread before they are stored (v2 waited for each load: ~40 global-memory
      //    round trips per thread and chunk at L = 64, D = 64, C = 16); the same values either way.
      if (lay.batch_loads) {
        load_chunk_batched(w, p, b, h, tid, nth, t0, Lc);
      } else {
        for (int64_t idx = tid; idx < LP * Dk; idx += nth) {
          const int64_t r = idx / Dk, d = idx % Dk;
          R q = R(0), k = R(0);
          if (r < Lc) {
            q = ld<St>(p.q.data, at3(p.q, b, h, t0 + r) + d * p.q.stride[3]);
            k = ld<St>(p.k.data, at3(p.k, b, h, t0 + r) + d * p.k.stride[3]);
          }
          w.QT[d * LP + r] = q;
          w.KT[d * LP + r] = k;
          if (r < Lc) w.Kc[r * Dk + d] = k;
        }
        for (int64_t idx = tid; idx < LP * Dv; idx += nth) {
          const int64_t r = idx / Dv, e = idx % Dv;
          const R v = r < Lc ? ld<St>(p.v.data, at3(p.v, b, h, t0 + r) + e * p.v.stride[3]) : R(0);
          w.VT[e * LP + r] = v;
          if (r < Lc) w.Vc[r * Dv + e] = v;
        }
        for (int64_t idx = tid; idx < Lc * C; idx += nth) {
          const int64_t r = idx / C, c = idx % C;
          w.lamc[idx] = ld<St>(p.lam.data, at3(p.lam, b, h, t0 + r) + c * p.lam.stride[3]);
        }
      }
      w.decay_sums(tid, t0, Lc);
      __syncthreads();
      const bool factored = w.decay && w.G[0] - w.G[Lc - 1] <= 600.0;
      w.decay_exps(tid, nth, t0, Lc, factored, true);
      __syncthreads();  // er, fj for the pair decays below
      // 2. Gram lower triangles in kTg x kTg tiles: QK (R), Bv_r = KK_rr VV_rr and the pair terms
      //    e^{G_r-G_j} KK_rj VV_rj (j < r) into Suf (double).
      {
        const int64_t nt = (Lc + kTg - 1) / kTg;
        for (int64_t idx = tid; idx < nt * nt; idx += nth) {
          const int64_t ti = idx / nt, tj = idx % nt;
          if (tj > ti) continue;
          const int64_t r0 = ti * kTg, j0 = tj * kTg;
          double kk[kTg][kTg], vv[kTg][kTg];
          R qk[kTg][kTg];
#pragma unroll
          for (int a = 0; a < kTg; ++a)
#pragma unroll
            for (int c = 0; c < kTg; ++c) {
              kk[a][c] = 0;
              vv[a][c] = 0;
              qk[a][c] = R(0);
            }
          // Rows past Lc read the zero rows up to LP (LP >= nt * kTg since kRt is a multiple of kTg).
          for (int64_t d = 0; d < Dk; ++d) {
            const R* kd = w.KT + d * LP;
            const R* qd = w.QT + d * LP;
            R kr[kTg], kj[kTg], qr[kTg];
#pragma unroll
            for (int a = 0; a < kTg; ++a) {
              kr[a] = kd[r0 + a];
              kj[a] = kd[j0 + a];
              qr[a] = qd[r0 + a];
            }
#pragma unroll
            for (int a = 0; a < kTg; ++a)
#pragma unroll
              for (int c = 0; c < kTg; ++c) {
                kk[a][c] += static_cast<double>(kr[a]) * static_cast<double>(kj[c]);
                qk[a][c] += qr[a] * kj[c];
              }
          }
          w.gram_tile(w.VT, Dv, r0, j0, vv);
#pragma unroll
          for (int a = 0; a < kTg; ++a)
#pragma unroll
            for (int c = 0; c < kTg; ++c) {
              const int64_t r = r0 + a, j = j0 + c;
              if (r >= Lc || j > r) continue;
              w.QK[r * LP + j] = qk[a][c];
              if (j == r)
                w.Bv[r] = kk[a][c] * vv[a][c];
              else
                w.Suf[r * LP + j] = w.dec(factored, r, j) * kk[a][c] * vv[a][c];
            }
        }
      }
      // The open state carried in: K S_open (double) then k_r^T S v_r, and ||S_open||^2.
      double A_open = 0.0;
      if (m_in > 0) {  // uniform over the block
        const R* open = w.slots + w.slot[m_in - 1] * SS;
        if (lay.ks_rows) ks_rows<St>(w, open, Lc, tid, nth);  // v3: the same sums, kKsR rows per thread
        A_open = w.open_terms(open, lay.ks_rows ? Lc * Dv : tid, tid, nth, Lc);  // synchronizes
      }
      __syncthreads();  // the Gram tiles are complete
      // Suffix sums of the pair terms: Suf[r][j] = sum_{j <= j' < r} e^{G_r-G_j'} KK_rj' VV_rj'.
      w.suffix_sums(tid, nth, Lc);
      if (w.decay)
        for (int64_t j = tid; j < Lc; j += nth) w.decj[j] = static_cast<R>(w.dec(factored, Lc - 1, j));
      __syncthreads();
      // 2b. The score table: every row's score under every possible open state (carried in, or opened at
      //     chunk row s), so that the scan only looks scores up. The A chains (one thread each, cheap), then
      //     the scores (one entry per thread).
      for (int64_t s = tid - (m_in > 0 ? 1 : 0); s < Lc; s += nth) w.a_chain(s, Lc, A_open);
      __syncthreads();
      for (int64_t u = tid; u < m_in + Lc; u += nth) w.death[u] = 0x7fffffff;  // never (until the scan says)
      {
        const int64_t ns0 = m_in > 0 ? 1 : 0, NS = Lc + ns0;  // s = -1 (carried), 0 .. Lc-1
        for (int64_t idx = tid; idx < Lc * NS; idx += nth) {
          const int64_t r = idx / NS, s = idx % NS - ns0;
          if (s < r) w.score_entry(s, r);
        }
      }
      __syncthreads();
      // 3. The scan: thread 0 (v2), or warp 0 with the entries in lanes (v3, dla_prefill_v3.cuh) where
      //    lay.warp_scan is set, C <= 32 and the block has a whole first warp. Same outputs.
      if (lay.warp_scan && C <= 32 && nth >= 32) {
        if (tid < 32) {
          const int64_t mw = scan_warp<St>(w, t0, Lc, m_in, nfree);  // nfree: lane 0's
          if (tid == 0) {
            m = mw;
            sh_m = mw;
          }
        }
      } else if (tid == 0) {
        w.scan(t0, Lc, m_in, m, nfree);
        sh_m = m;
      }
      __syncthreads();
      const int64_t m_out = sh_m;
      // 3b. The aux outputs (slice 0) and every row's entry list, one row per thread.
      for (int64_t r = tid; r < Lc; r += nth) {
        if (lead) {
          const int64_t t = t0 + r;
          if (p.scores.present) static_cast<R*>(p.scores.data)[at3(p.scores, b, h, t)] = w.rowI[r];
          if (p.boundaries.present)
            static_cast<uint8_t*>(p.boundaries.data)[at3(p.boundaries, b, h, t)] = w.rowOpen[r] ? 1 : 0;
          if (p.merged.present)
            static_cast<int64_t*>(p.merged.data)[at3(p.merged, b, h, t)] = static_cast<int64_t>(w.rowMerged[r]);
        }
        w.snapshot(r, m_in);
      }
      __syncthreads();
      // 4. Readout weights, one (row r, unit U <= m_in + r) per thread: Win for carried units, P (in place
      //    over QK) for the chunk's tokens.
      readout_weights(w, tid, nth, Lc, m_in, factored);
      __syncthreads();
      used_states(w, tid, nth, Lc, m_in);
      __syncthreads();  // anyU
      // 5. Outputs of this block's columns, kRt rows x 1 column per thread in registers: y = P V (j in
      //    order), then each carried state's term w_ru (q_r^T S_u[:, e]) in unit order (dla_prefill.cu and
      //    the CPU scale q by w_ru before the product: a rounding difference only, and half the multiplies).
      //    S_u is read from the slots (global scratch, L1-resident: every warp reads the same rows), q from
      //    Q^T in shared memory.
      chunk_outputs(w, p, b, h, tid, nth, e0, ncw, t0, Lc, m_in);
      __syncthreads();  // the carried states are read; now they may be overwritten
      // 6. States at the chunk's end (every column: the next chunk's scan needs the whole open state),
      //    kDt state rows d of one column e per thread; entries in the CPU's order.
      w.chunk_end_states(tid, nth, 0, Dv, Lc, m_in, m_out);
    }
    __syncthreads();

    // The cache out (slice 0), chronological, unused entries zero.
    const int64_t mf = sh_m;
    if (lead) {
      R* outs = static_cast<R*>(co.states.data) + b * co.states.stride[0] + h * co.states.stride[1];
      for (int64_t idx = tid; idx < C * SS; idx += nth) {
        const int64_t i = idx / SS, de = idx % SS, d = de / Dv, e = de % Dv;
        outs[i * co.states.stride[2] + d * co.states.stride[3] + e * co.states.stride[4]] =
            i < mf ? w.slots[w.slot[i] * SS + de] : R(0);
      }
      for (int64_t i = tid; i < C; i += nth) {
        const bool used = i < mf;
        static_cast<int64_t*>(co.counts.data)[at3(co.counts, b, h, i)] = used ? w.count[i] : 0;
        static_cast<R*>(co.info.data)[at3(co.info, b, h, i)] = used ? w.info[i] : R(0);
        static_cast<int64_t*>(co.starts.data)[at3(co.starts, b, h, i)] = used ? w.start[i] : 0;
      }
      if (tid == 0) static_cast<int64_t*>(co.size.data)[b * co.size.stride[0] + h * co.size.stride[1]] = mf;
    }
    __syncthreads();  // the next item reuses the scratch and the shared memory
  }
}

#include "cuda/dla_prefill_v4.cuh"  // v4: five kernels (score tables, boundaries, merge chain, chunk-start states, readout)

// ---- host side and kernel wrapper (tests/cuda_emu/run.sh cuts the file here)
}  // namespace v2
}  // namespace dla
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit

#include <cstdlib>

#include "tuning.h"

namespace attnkit {
namespace detail {
namespace cuda {
namespace dla {
namespace v2 {

template <class St>
__global__ void __launch_bounds__(kThreads) dla_prefill_v2_kernel(const DLAProblem p, const Lay lay, char* scratch) {
  extern __shared__ __align__(16) unsigned char dla_v2_smem[];
  prefill_body<St>(p, lay, scratch, reinterpret_cast<char*>(dla_v2_smem));
}

inline int64_t choose_split(const DLAProblem& p) {
  int64_t ns = tuning().dla_split.load();
  if (ns <= 0) {  // 0: automatic; -2 (v2 beside v3, dla.cu) too
    int sms = 0;
    ATTNKIT_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, p.device_index));
    const int64_t items = p.B * p.H;
    ns = items > 0 ? static_cast<int64_t>(sms) / items : 1;
    if (ns > 4) ns = 4;
    if (ns < 1) ns = 1;
  }
  if (ns > p.Dv) ns = p.Dv;
  if (ns < 1) ns = 1;
  return ns;
}

// (kThreads, 1) on the passes with v2's full layout: with kThreads alone ptxas held them to 128 registers and
// spilled 20-60 bytes.
template <class St>
__global__ void __launch_bounds__(kThreads, 1) dla_prefill_v4_a1(const DLAProblem p, const Lay lay, const V4Buf buf) {
  extern __shared__ __align__(16) unsigned char dla_v4a1_smem[];
  v4_pass_a1<St>(p, lay, buf, reinterpret_cast<char*>(dla_v4a1_smem));
}

template <class St>
__global__ void __launch_bounds__(kThreads, 1) dla_prefill_v4_a2(const DLAProblem p, const Lay lay, const V4Buf buf) {
  extern __shared__ __align__(16) unsigned char dla_v4a2_smem[];
  v4_pass_a2<St>(p, lay, buf, reinterpret_cast<char*>(dla_v4a2_smem));
}

template <class St>
__global__ void __launch_bounds__(32) dla_prefill_v4_b(const DLAProblem p, const V4Buf buf) {
  v4_pass_b<St>(p, buf);
}

// C1: one chain of chunks per (item, slice) block, the states only; C2: every chunk at once, two blocks per SM
// (the readout's layout, make_lay part 2, fits twice in an SM's shared memory at D = 64).
template <class St>
__global__ void __launch_bounds__(kThreads, 1) dla_prefill_v4_c1(const DLAProblem p, const Lay lay, const V4Buf buf) {
  extern __shared__ __align__(16) unsigned char dla_v4c1_smem[];
  v4_pass_c1<St>(p, lay, buf, reinterpret_cast<char*>(dla_v4c1_smem));
}

template <class St>
__global__ void __launch_bounds__(kThreads, 2) dla_prefill_v4_c2(const DLAProblem p, const Lay lay, const V4Buf buf) {
  extern __shared__ __align__(16) unsigned char dla_v4c2_smem[];
  v4_pass_c2<St>(p, lay, buf, reinterpret_cast<char*>(dla_v4c2_smem));
}

}  // namespace v2

namespace v2 {

/// v2 (v3flags = 0) or v3 (bit 0: the warp scan, bit 1: batched chunk loads, bit 2: K S_open by row groups)
/// on the same kernel.
template <class St>
bool launch(const DLAProblem& p, cudaStream_t stream, int v3flags) {
  using R = acc_t<St>;
  const int64_t items = p.B * p.H;
  if (items == 0) return true;
  Lay lay = make_lay(p, sizeof(R), choose_split(p));
  lay.warp_scan = (v3flags & 1) != 0 ? 1 : 0;
  lay.batch_loads = (v3flags & 2) != 0 ? 1 : 0;
  lay.ks_rows = (v3flags & 4) != 0 ? 1 : 0;
  int optin = 0;
  ATTNKIT_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, p.device_index));
  // Static shared memory of the kernel (sh_m) and a margin stay out of the dynamic part.
  if (optin <= 0 || lay.smem + 1024 > static_cast<std::size_t>(optin)) return false;
  ATTNKIT_CUDA_CHECK(cudaFuncSetAttribute(dla_prefill_v2_kernel<St>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(lay.smem)));
  const unsigned grid = grid_for(items * lay.ns, lay.gbytes, p.device_index);
  Workspace ws(grid * lay.gbytes, stream);
  dla_prefill_v2_kernel<St><<<grid, kThreads, lay.smem, stream>>>(p, lay, ws.as<char>());
  ATTNKIT_CUDA_CHECK_LAUNCH();
  return true;
}

}  // namespace v2

template <class St>
bool launch_prefill_v2(const DLAProblem& p, cudaStream_t stream) {
  return v2::launch<St>(p, stream, 0);
}

template <class St>
bool launch_prefill_v3(const DLAProblem& p, cudaStream_t stream) {
  // ATTNKIT_DLA_V3 (internal, read once; side-by-side measurements and bisecting on a GPU, not a public
  // interface): a bit mask of v3's changes, 1 = the warp scan, 2 = batched chunk loads, 4 = K S_open by row
  // groups; default 3 (4 calls a non-inlined function taking the block's Blk by reference, which may keep Blk
  // in local memory: bench_gpu's sweep "dla v3 +ks" measures 7 beside the default).
  static const int flags = [] {
    const char* e = std::getenv("ATTNKIT_DLA_V3");
    return e && *e ? static_cast<int>(std::strtol(e, nullptr, 10)) & 7 : 3;
  }();
  return v2::launch<St>(p, stream, flags);
}

template <class St>
bool launch_prefill_v4(const DLAProblem& p, cudaStream_t stream) {
  using R = acc_t<St>;
  using namespace v2;
  const int64_t items = p.B * p.H;
  if (items == 0) return true;
  const int64_t ns = choose_split(p);
  Lay lay = make_lay(p, sizeof(R), ns);
  lay.batch_loads = 1;
  const Lay lay1 = make_lay(p, sizeof(R), ns, 1), lay2 = make_lay(p, sizeof(R), 1, 2);
  int optin = 0;
  ATTNKIT_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, p.device_index));
  // Static shared memory of the passes (a few int64) and a margin stay out of the dynamic part.
  if (optin <= 0 || lay.smem + 1024 > static_cast<std::size_t>(optin)) return false;
  // The per-item arrays of passes A1 / A2 (a score table per chunk) and C1 / C2 ((chunks + 1) x C states): each
  // pair runs in item groups whose arrays stay under the budget (2 GiB, or a quarter of the free device memory
  // where that is more); an item that alone needs more (very long T) takes v3 / v2. The results do not depend on
  // the groups (each item's values are formed by the same operations whichever group holds it).
  std::size_t budget = std::size_t(2) << 30;
  {
    std::size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess)
      (void)cudaGetLastError();  // no budget beyond the fixed one; nothing left for the launch checks to see
    else if (free_b / 4 > budget)
      budget = free_b / 4;
  }
  const int64_t nch = (p.T + lay.L - 1) / lay.L;
  const std::size_t L = static_cast<std::size_t>(lay.L);
  const std::size_t chs_item = static_cast<std::size_t>((nch + 1) * p.C * p.Dk * p.Dv) * sizeof(R);
  const std::size_t tab_item = static_cast<std::size_t>(nch) * (L * L * sizeof(R) + 2 * L * sizeof(double));
  if (chs_item > budget || tab_item > budget) return false;
  auto group = [&](std::size_t per_item) {
    const int64_t ng = static_cast<int64_t>((static_cast<std::size_t>(items) * per_item + budget - 1) / budget);
    return ng > 1 ? (items + ng - 1) / ng : items;
  };
  const int64_t gitemsA = group(tab_item), gitemsC = group(chs_item);
  ATTNKIT_CUDA_CHECK(cudaFuncSetAttribute(dla_prefill_v4_a1<St>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(lay.smem)));
  ATTNKIT_CUDA_CHECK(cudaFuncSetAttribute(dla_prefill_v4_a2<St>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(lay.smem)));
  ATTNKIT_CUDA_CHECK(cudaFuncSetAttribute(dla_prefill_v4_c1<St>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(lay1.smem)));
  ATTNKIT_CUDA_CHECK(cudaFuncSetAttribute(dla_prefill_v4_c2<St>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(lay2.smem)));
  auto up = [](std::size_t n) { return (n + 255) / 256 * 256; };
  const std::size_t T = static_cast<std::size_t>(p.T), C = static_cast<std::size_t>(p.C);
  const std::size_t slotA = up(static_cast<std::size_t>(p.Dk * p.Dv) * sizeof(R));
  const std::size_t ent = up(C * (2 * sizeof(int64_t) + sizeof(R)));
  const unsigned gridA = grid_for(gitemsA, slotA, p.device_index);
  const unsigned gridB = static_cast<unsigned>(items < 65535 ? items : 65535);
  const std::size_t nI = up(static_cast<std::size_t>(items) * T * sizeof(R));
  const std::size_t nO = up(static_cast<std::size_t>(items) * T);
  const std::size_t nM = up(static_cast<std::size_t>(items) * T * sizeof(int32_t));
  const std::size_t nA = gridA * slotA, nE = gridB * ent;
  const std::size_t gch = static_cast<std::size_t>(gitemsA) * static_cast<std::size_t>(nch);
  const std::size_t nS = up(static_cast<std::size_t>(gitemsC) * chs_item);
  const std::size_t nTab = up(gch * L * L * sizeof(R)), nTs = up(gch * L * sizeof(double));
  const std::size_t nMc = up(static_cast<std::size_t>(gitemsC * (nch + 1)) * sizeof(int32_t));
  // A's tables and C's chunk-start states share one region: every A launch precedes B, every C launch follows it.
  const std::size_t nR = nS > nTab + 2 * nTs ? nS : nTab + 2 * nTs;
  Workspace ws(nR + nA + nI + nO + nM + nE + nMc, stream);
  char* base = ws.as<char>();
  V4Buf buf{};
  char* at = base;
  buf.chs = at;
  buf.tab = at;
  buf.tsuf = reinterpret_cast<double*>(at + nTab);
  buf.tbv = reinterpret_cast<double*>(at + nTab + nTs);
  at += nR;
  buf.slotsA = at;
  buf.slotA_bytes = slotA;
  at += nA;
  buf.I = at;
  at += nI;
  buf.O = reinterpret_cast<uint8_t*>(at);
  at += nO;
  buf.M = reinterpret_cast<int32_t*>(at);
  at += nM;
  buf.ent = at;
  buf.ent_bytes = ent;
  at += nE;
  buf.mc = reinterpret_cast<int32_t*>(at);
  buf.nch = nch;
  buf.ns2 = 1;
  buf.ncol2 = p.Dv;
  for (int64_t i0 = 0; i0 < items; i0 += gitemsA) {  // A1: every chunk's table; A2: the chains of chunks
    buf.item0 = i0;
    buf.nitems = items - i0 < gitemsA ? items - i0 : gitemsA;
    if (nch > 0) {
      const unsigned grid1 = grid_for(buf.nitems * nch, 0, p.device_index);
      dla_prefill_v4_a1<St><<<grid1, kThreads, lay.smem, stream>>>(p, lay, buf);
      ATTNKIT_CUDA_CHECK_LAUNCH();
      const unsigned grid2 = grid_for(buf.nitems, 0, p.device_index);
      dla_prefill_v4_a2<St><<<grid2 < gridA ? grid2 : gridA, kThreads, lay.smem, stream>>>(p, lay, buf);
      ATTNKIT_CUDA_CHECK_LAUNCH();
    }
  }
  dla_prefill_v4_b<St><<<gridB, 32, 0, stream>>>(p, buf);
  ATTNKIT_CUDA_CHECK_LAUNCH();
  for (int64_t i0 = 0; i0 < items; i0 += gitemsC) {  // C1: the chains of chunk-start states; C2: every readout
    buf.item0 = i0;
    buf.nitems = items - i0 < gitemsC ? items - i0 : gitemsC;
    const unsigned grid1 = grid_for(buf.nitems * lay1.ns, 0, p.device_index);
    const unsigned grid2 = grid_for(buf.nitems * nch * buf.ns2, 0, p.device_index);
    dla_prefill_v4_c1<St><<<grid1, kThreads, lay1.smem, stream>>>(p, lay1, buf);
    ATTNKIT_CUDA_CHECK_LAUNCH();
    if (nch > 0) {
      dla_prefill_v4_c2<St><<<grid2, kThreads, lay2.smem, stream>>>(p, lay2, buf);
      ATTNKIT_CUDA_CHECK_LAUNCH();
    }
  }
  return true;
}

template bool launch_prefill_v4<float>(const DLAProblem&, cudaStream_t);
template bool launch_prefill_v4<double>(const DLAProblem&, cudaStream_t);
template bool launch_prefill_v4<half_t>(const DLAProblem&, cudaStream_t);
template bool launch_prefill_v4<bf16_t>(const DLAProblem&, cudaStream_t);
template bool launch_prefill_v2<float>(const DLAProblem&, cudaStream_t);
template bool launch_prefill_v2<double>(const DLAProblem&, cudaStream_t);
template bool launch_prefill_v2<half_t>(const DLAProblem&, cudaStream_t);
template bool launch_prefill_v2<bf16_t>(const DLAProblem&, cudaStream_t);
template bool launch_prefill_v3<float>(const DLAProblem&, cudaStream_t);
template bool launch_prefill_v3<double>(const DLAProblem&, cudaStream_t);
template bool launch_prefill_v3<half_t>(const DLAProblem&, cudaStream_t);
template bool launch_prefill_v3<bf16_t>(const DLAProblem&, cudaStream_t);

}  // namespace dla
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
