// Dynamic linear attention on the GPU, the chunked prefill's fast path: DLA prefill v4 (dla_prefill_v4.cuh's five
// kernels, A1 A2 B C1 C2; verified on an H200 in session 27) and the building blocks it shares with the second
// prefill kernel it replaced (session 27 removed that kernel, "dla_prefill_v2", and its variant v3 with the warp
// scan: v4 was faster in every measured case and covers every dtype; they survive only as this file's name, the
// v2 namespace and Lay / Blk). dla.cu takes v4 (launch_prefill_v4) unless ATTNKIT_DLA_V4=0, tuning dla_split =
// -1, or v4 declines (false: its layout does not fit in the device's shared memory, or a single item's score
// tables pass the scratch budget); then dla_prefill.cu, the first kernel, runs. Same semantics and nearly the
// same arithmetic as dla_prefill.cu (which follows cpu/dla_prefill.h): the same chunk boundaries, scan, merge
// order, and the same formulas and summation orders for the decisions and states (the carried states' readout
// scales after the product, and p_r sums in another order: rounding only):
//
// * Each chunk (Q^T, K^T, V^T and V, the Gram products, the readout weights, the entry-list snapshots) lives in
//   dynamic shared memory (Lay, dla_prefill_v2.cuh); the Gram lower triangles K K^T, V V^T (double) and Q K^T
//   are register tiles of kTg x kTg per thread.
// * The scan's in-chunk pair sums p_r = sum_{open_lo <= j < r} e^{G_r-G_j} KK_rj VV_rj come from per-row suffix
//   sums (summed from j = r-1 down instead of up: a double rounding difference only); the scores depend on the
//   scan only through the start s of the open state, so a table of every row's score under every possible s is
//   computed in parallel (the A chains one thread each, then one score per thread, each step the scan's own
//   arithmetic).
// * The readout weights one (row, unit) per thread; the readout kRt rows x 1 column per thread in registers:
//   y = P V, then each carried state's term w_ru sum_d q_rd S_u[d][e]; the states at a chunk's end kDt state
//   rows per thread (one column), K rows from shared memory.
//
// Every reduction is a fixed loop of one thread or a fixed tree over the block: deterministic, and the results do
// not depend on the launch (each output element is computed by the same sequence of operations whichever block
// owns it).

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


// Batched chunk loads (batched): V^T and V (rows Lc .. LP-1 of V^T zero) of rows t0 .. t0 + Lc - 1 of item (b, h).
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

#include "cuda/dla_prefill_v4.cuh"  // v4: five kernels (score tables, boundaries, merge chain, chunk-start states, readout)
#include "cuda/dla_prefill_v5.cuh"  // v5: v4 with C1 and C2 fused (the states of a column slice in shared memory)

// ---- host side and kernel wrapper (tests/cuda_emu/run.sh cuts the file here)
}  // namespace v2
}  // namespace dla
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit

#include <cstdlib>
#include <cstring>

#include "cpp/src/backend.h"
#include "tuning.h"

namespace attnkit {
namespace detail {
namespace cuda {
namespace dla {
namespace v2 {

inline int64_t choose_split(const DLAProblem& p) {
  int64_t ns = tuning().dla_split.load();
  if (ns <= 0) {  // 0: automatic (-1 never gets here: dla.cu takes the first kernel)
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

// v5's fused pass C (dla_prefill_v5.cuh): one block per (item, column slice), the slice's states in shared memory
// after the readout layout (at byte st_off), one block per SM.
template <class St>
__global__ void __launch_bounds__(kThreads, 1) dla_prefill_v5_c(const DLAProblem p, const Lay lay, const V4Buf buf,
                                                                std::size_t st_off) {
  extern __shared__ __align__(16) unsigned char dla_v5c_smem[];
  v5_pass_c<St>(p, lay, buf, reinterpret_cast<char*>(dla_v5c_smem), st_off);
}

/// v5's column split (dla_prefill_v5.cuh): false when even one column's states do not fit beside the readout layout
/// (v4's C1 + C2 run instead). lay2: make_lay(p, rsize, 1, 2); want: tuning dla_split (> 0: that split, at least the
/// smallest that fits). Sets ns2 slices of ncol2 columns, the states' byte offset st_off and the dynamic smem bytes.
inline bool v5_split(const DLAProblem& p, const Lay& lay2, std::size_t rsize, std::size_t optin, int64_t sms,
                     int64_t want, int64_t& ns2, int64_t& ncol2, std::size_t& st_off, std::size_t& smem) {
  const int64_t Dv = p.Dv, items = p.B * p.H;
  if (Dv <= 0 || p.Dk <= 0 || p.C <= 0) return false;
  st_off = (lay2.smem + 15) / 16 * 16;
  auto ncol_of = [&](int64_t ns) { return (Dv + ns - 1) / ns; };
  auto bytes = [&](int64_t ncol) {
    return st_off + static_cast<std::size_t>(p.C) * static_cast<std::size_t>(p.Dk) * static_cast<std::size_t>(ncol) *
                        rsize;
  };
  int64_t ns = 1;
  while (ns < Dv && bytes(ncol_of(ns)) + 1024 > optin) ++ns;  // static shared memory and a margin stay out
  if (bytes(ncol_of(ns)) + 1024 > optin) return false;
  if (want > 0) {
    if (ns < want) ns = want < Dv ? want : Dv;
  } else {
    const int64_t n32 = (Dv + 31) / 32;  // slices of at most 32 columns: the readout's work items fill the block
    if (ns < n32) ns = n32;
    while (items * ns * 2 <= sms && ns * 2 <= Dv) ns *= 2;  // few items: more slices, up to about one per SM
  }
  ncol2 = ncol_of(ns);
  ns2 = (Dv + ncol2 - 1) / ncol2;
  smem = bytes(ncol2);
  return true;
}

}  // namespace v2
template <class St>
bool launch_prefill_v4(const DLAProblem& p, cudaStream_t stream) {
  using R = acc_t<St>;
  using namespace v2;
  const int64_t items = p.B * p.H;
  if (items == 0) return true;
  const int64_t ns = choose_split(p);
  Lay lay = make_lay(p, sizeof(R), ns);
  const Lay lay1 = make_lay(p, sizeof(R), ns, 1), lay2 = make_lay(p, sizeof(R), 1, 2);
  int optin = 0;
  ATTNKIT_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, p.device_index));
  // Static shared memory of the passes (a few int64) and a margin stay out of the dynamic part.
  if (optin <= 0 || lay.smem + 1024 > static_cast<std::size_t>(optin)) return false;
  // The per-item arrays of passes A1 / A2 (a score table per chunk) and C1 / C2 ((chunks + 1) x C states): each
  // pair runs in item groups whose arrays stay under the budget (2 GiB, or a quarter of the free device memory
  // where that is more); an item that alone needs more (very long T) takes the first kernel
  // (dla_prefill.cu). The results do not depend on
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
  // v5 (dla_prefill_v5.cuh, gate "dla_prefill_v5"): C1 and C2 fused, no chunk-start states in global memory.
  // ATTNKIT_DLA_V5=0 (read once) turns it off; tuning dla_split = -2 takes v4's C1 + C2 beside it.
  static const bool v5_enabled = has_kernel("dla_prefill_v5") && [] {
    const char* e = std::getenv("ATTNKIT_DLA_V5");
    return !(e && std::strcmp(e, "0") == 0);
  }();
  int64_t ns5 = 0, ncol5 = 0;
  std::size_t st_off5 = 0, smem5 = 0;
  bool v5 = false;
  if (v5_enabled && tuning().dla_split.load() != -2) {
    int sms = 0;
    ATTNKIT_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, p.device_index));
    v5 = v5_split(p, lay2, sizeof(R), static_cast<std::size_t>(optin), sms, tuning().dla_split.load(), ns5, ncol5,
                  st_off5, smem5);
  }
  if ((!v5 && chs_item > budget) || tab_item > budget) return false;
  auto group = [&](std::size_t per_item) {
    const int64_t ng = static_cast<int64_t>((static_cast<std::size_t>(items) * per_item + budget - 1) / budget);
    return ng > 1 ? (items + ng - 1) / ng : items;
  };
  const int64_t gitemsA = group(tab_item), gitemsC = v5 ? items : group(chs_item);
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
  const std::size_t nS = v5 ? 0 : up(static_cast<std::size_t>(gitemsC) * chs_item);
  const std::size_t nTab = up(gch * L * L * sizeof(R)), nTs = up(gch * L * sizeof(double));
  const std::size_t nMc = v5 ? 0 : up(static_cast<std::size_t>(gitemsC * (nch + 1)) * sizeof(int32_t));
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
  if (v5) {  // one pass over every item: the states of each (item, slice) in shared memory
    buf.item0 = 0;
    buf.nitems = items;
    buf.ns2 = ns5;
    buf.ncol2 = ncol5;
    ATTNKIT_CUDA_CHECK(cudaFuncSetAttribute(dla_prefill_v5_c<St>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(smem5)));
    const unsigned grid5 = grid_for(items * ns5, 0, p.device_index);
    dla_prefill_v5_c<St><<<grid5, kThreads, smem5, stream>>>(p, lay2, buf, st_off5);
    ATTNKIT_CUDA_CHECK_LAUNCH();
    return true;
  }
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

}  // namespace dla
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
