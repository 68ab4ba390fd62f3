// Dynamic linear attention on the GPU, chunked prefill, third version ("dla_prefill_v3", gated in
// cuda/runtime.cu kCompiled; dla.cu takes it when has_kernel("dla_prefill_v3"), the tuning option dla_split
// is >= 0 and the chunk fits in shared memory, else dla_prefill_v2.cu, else dla_prefill.cu). It is
// dla_prefill_v2.cu with the same phases, formulas and summation orders (so the same bits as v2, which
// tests/test_gpu_dla.py checks), and a faster serial part:
//
// * The scan runs on warp 0 with lane j holding chronological entry j in registers where C <= 32
//   (scan_warp: a merge is a few shuffles, one double division per lane and two 32-bit warp minimums, in
//   place of v2's O(C) loops over shared memory on one thread). ATTNKIT_DLA_CUDA_SCAN=0 (read once;
//   measurements and bisecting) takes the scalar scan below for every capacity; C > 32 always takes it.
// * The scalar scan (thread 0, one step per token of the chunk) no longer shifts the chronological entry
//   arrays at every merge. Entries are named by their first unit (cpu/dla_prefill.h: units 0 .. m_in-1 are the
//   entries carried in, m_in + r the chunk's row r), and units are chronological, so the entry list is a
//   doubly linked list over unit-indexed arrays (count, info, start, pair ratio with the next entry) plus an
//   unordered set of the live units; a merge is O(1) updates and one O(C) loop of loads only (no stores
//   between them) that finds the pair of math::dla_merge_pair: the smallest (ratio, unit) among the pairs
//   not involving the open entry, which is the first pair attaining the smallest ratio in chronological
//   order; when the oldest pair's ratio is NaN, math::dla_merge_pair never replaces it, and neither does
//   this. The chronological arrays the other phases read are rebuilt from the list once per chunk.
// * Index arithmetic inside a chunk in 32 bits (every chunk array is bounded by shared memory), global
//   offsets in 64 bits as before.
// * The readout weights find a unit's entry by binary search in the row's snapshot (v2: a linear search).
// * Latency: the chunk's inputs are loaded kLb per thread before they are stored (v2 waited for each load);
//   the log-decays are loaded by every thread, not one after another by thread 0; K S_open shares each load
//   of S_open[d][e] between kKsG rows (one column per thread when the block size is a multiple of Dv); the
//   readout's loop over the carried states' rows is unrolled (loads in flight together); an entry carried
//   through the chunk unchanged is not rewritten. None of these changes an operation's order.
//   Tried and left out: y = P V with a thread's kRt rows together (one V load per j for all of them):
//   ptxas spilled (40 bytes) in this kernel under -Xptxas=-warn-spills, with or without unrolling.
//
// What stays serial per chunk (and bounds the speed: B*H = 64 items is under one block per SM): the scan
// above (one merge decision after another), the per-row A chains and suffix sums (one thread per row, O(L)
// each), and about 15 phases separated by barriers, each latency-bound at these sizes. The phases of one
// chunk do not overlap those of the next; a design that does (a scan warp running ahead of warps doing the
// matrix products of earlier chunks) is what the target "faster than exact attention from S = 4096" needs:
// at S = 4096 exact causal attention takes 0.63 ms on an H200 (B = 4, H = 16, D = 64), i.e. about 19K
// cycles per 64-token chunk for everything that is not overlapped, and with random data (every token opens
// a state and merges) the 4096 merge decisions of an item alone take 4096 x ~150-350 cycles = 0.3-0.7 ms.
//
// v2's description of the rest (the chunk in shared memory, the score table, the column split ns, the
// state update) applies unchanged.

#include "cuda/dla_common.cuh"
#include "cuda/dla_prefill_v2.cuh"
#include "cuda/workspace.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
namespace dla {
namespace v3 {

using v2::block_total;
using v2::kDt;
using v2::kRt;
using v2::kTg;
using v2::load_rows;

/// Elements each thread loads before storing them (the chunk's inputs), and rows sharing the loads of
/// S_open in K S_open.
constexpr int kLb = 4;
constexpr int kKsG = 4;

/// v2's layout plus the scan's unit-indexed arrays (C + L entries each: every unit of a chunk) and the set
/// of live units (C).
struct Lay : v2::Lay {
  std::size_t ucount, ustart, uratio, uinfo, uprv, unxt, upos, alive;
  int warp_scan;  // 1: the warp scan where it applies (default), 0: the linked-list scan of thread 0
};

inline Lay make_lay(const DLAProblem& p, std::size_t rsize, int64_t ns) {
  Lay l{};
  static_cast<v2::Lay&>(l) = v2::make_lay(p, rsize, ns);
  std::size_t used = l.smem;
  auto take = [&](std::size_t n, std::size_t esize) {
    const std::size_t at = used;
    used += (n * esize + 15) / 16 * 16;
    return at;
  };
  const std::size_t U = static_cast<std::size_t>(l.C + l.L), C = static_cast<std::size_t>(l.C);
  l.ucount = take(U, sizeof(int64_t));
  l.ustart = take(U, sizeof(int64_t));
  l.uratio = take(U, sizeof(double));
  l.uinfo = take(U, rsize);
  l.uprv = take(U, sizeof(int32_t));
  l.unxt = take(U, sizeof(int32_t));
  l.upos = take(U, sizeof(int32_t));
  l.alive = take(C, sizeof(int32_t));
  l.smem = used;
  l.warp_scan = 1;
  return l;
}

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
  // the scan's entry list, indexed by unit
  int64_t *ucount, *ustart;
  double* uratio;
  R* uinfo;
  int32_t *uprv, *unxt, *upos, *alive;

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
    ucount = reinterpret_cast<int64_t*>(sm + l.ucount);
    ustart = reinterpret_cast<int64_t*>(sm + l.ustart);
    uratio = reinterpret_cast<double*>(sm + l.uratio);
    uinfo = reinterpret_cast<R*>(sm + l.uinfo);
    uprv = reinterpret_cast<int32_t*>(sm + l.uprv);
    unxt = reinterpret_cast<int32_t*>(sm + l.unxt);
    upos = reinterpret_cast<int32_t*>(sm + l.upos);
    alive = reinterpret_cast<int32_t*>(sm + l.alive);
  }

  __device__ __forceinline__ double log_decay(int64_t t) const {
    return load_float<double>(p.log_decay.data, p.log_decay.dtype, at3(p.log_decay, b, h, t));
  }

  __device__ __forceinline__ double dec(bool factored, int64_t r, int64_t j) const {
    if (!decay) return 1.0;
    return factored ? er[r] * fj[j] : exp(G[r] - G[j]);
  }

  /// The merge ratio of the adjacent pair (entry of unit u, entry of unit x): math::dla_merge_pair's
  /// expression, verbatim, on the unit-indexed arrays.
  __device__ __forceinline__ double unit_ratio(int32_t u, int32_t x) const {
    return (static_cast<double>(uinfo[u]) + static_cast<double>(uinfo[x])) /
           static_cast<double>(ucount[u] + ucount[x]);
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

  /// Thread 0: dla_prefill.cu's scan, the scores read from the table, on the linked entry list (see the top
  /// of the file). Per row it records the score, the boundary and the merged pair (rowI, rowOpen, rowMerged:
  /// the aux outputs, written by every thread after the scan) and, per unit, the row at which it stopped
  /// starting an entry (death, set to "never" by the block before the scan): the entry lists of every row
  /// follow from those (snapshot(), in parallel). At the end it writes the chronological arrays (unit,
  /// count, info, start) and the slots, as v2's scan leaves them.
  /// Invariants while scanning: the live units are alive[0 .. mm) (any order), upos[u] is u's place there;
  /// the list runs from head to tail through unxt (uprv back), tail is the open entry; uratio[u] equals
  /// unit_ratio(u, unxt[u]) for every live u but the tail and the tail's predecessor (that pair is
  /// computed when the tail stops being open, as v2 and dla_merge_pair see it then).
  __device__ void scan(int64_t t0, int64_t Lc, int64_t m_in, int64_t& m, int64_t& nfree) {
    int64_t* __restrict__ cnt = ucount;
    R* __restrict__ inf = uinfo;
    double* __restrict__ rat = uratio;
    int32_t* __restrict__ prv = uprv;
    int32_t* __restrict__ nxt = unxt;
    int32_t* __restrict__ pos = upos;
    int32_t* __restrict__ live = alive;
    const int32_t mi = static_cast<int32_t>(m_in), Cc = static_cast<int32_t>(C);
    for (int32_t u = 0; u < mi; ++u) {
      in_slot[u] = slot[u];
      cnt[u] = count[u];
      inf[u] = info[u];
      ustart[u] = start[u];
      prv[u] = u - 1;
      nxt[u] = u + 1 < mi ? u + 1 : -1;
      live[u] = u;
      pos[u] = u;
    }
    for (int32_t u = 0; u + 2 < mi; ++u) rat[u] = unit_ratio(u, u + 1);
    int32_t head = mi > 0 ? 0 : -1, tail = mi - 1, mm = mi;
    bool carried = mi > 0;
    int32_t open_lo = 0;
    const int32_t L32 = static_cast<int32_t>(LP);
    for (int32_t r = 0; r < static_cast<int32_t>(Lc); ++r) {
      const R I = mm == 0 ? R(0) : static_cast<R>(carried ? Ac[r] : Sc[r * L32 + open_lo]);
      const bool opens = math::dla_opens_state(I, p.tau, C, static_cast<int64_t>(mm));
      int32_t merged = -1;
      if (opens) {
        if (mm >= 2) rat[prv[tail]] = unit_ratio(prv[tail], tail);  // the open entry's pair: final now
        if (mm == Cc) {  // C >= 2 here (capacity 1 never opens into a non-empty cache)
          // math::dla_merge_pair: the first pair in chronological order with the smallest ratio. Its first
          // ratio is never replaced when it is NaN; NaN ratios after it are never taken.
          int32_t best = head;
          double br = rat[head];
          if (br == br) {  // not NaN
#pragma unroll 4
            for (int32_t k = 0; k < mm; ++k) {
              const int32_t u = live[k];
              const double x = rat[u];
              if (u != tail && (x < br || (x == br && u < best))) {
                best = u;
                br = x;
              }
            }
          }
          int32_t idx = 0;  // the chronological index of the pair: live units before it
#pragma unroll 4
          for (int32_t k = 0; k < mm; ++k) idx += live[k] < best ? 1 : 0;
          merged = idx;
          // Entry y = the one after best joins best (cpu/dla_cache.h merge_entries: S, n and I summed).
          const int32_t y = nxt[best], z = nxt[y];
          cnt[best] += cnt[y];
          inf[best] += inf[y];
          death[y] = r;  // unit y stops starting an entry at row r
          nxt[best] = z;
          if (z >= 0)
            prv[z] = best;
          else
            tail = best;
          const int32_t ky = pos[y], last = live[mm - 1];
          live[ky] = last;
          pos[last] = ky;
          --mm;
          // The pairs the merge changed (all entries are final: this row appends a new open one).
          if (prv[best] >= 0) rat[prv[best]] = unit_ratio(prv[best], best);
          if (z >= 0) rat[best] = unit_ratio(best, z);
        }
        const int32_t un = mi + r;
        cnt[un] = 1;
        inf[un] = I;
        ustart[un] = p.position + t0 + r;
        prv[un] = tail;
        nxt[un] = -1;
        if (tail >= 0)
          nxt[tail] = un;
        else
          head = un;
        tail = un;
        live[mm] = un;
        pos[un] = mm;
        ++mm;
        open_lo = r;
        carried = false;
      } else {
        cnt[tail] += 1;
        inf[tail] += I;
      }
      rowI[r] = I;
      rowOpen[r] = opens ? 1 : 0;
      rowMerged[r] = merged;
    }
    // The chronological entry list for the phases after the scan.
    {
      int32_t i = 0;
      for (int32_t u = head; u >= 0; u = nxt[u], ++i) {
        unit[i] = u;
        count[i] = cnt[u];
        info[i] = inf[u];
        start[i] = ustart[u];
      }
    }
    m = mm;
    assign_slots(m, Lc, m_in, nfree);
  }

  /// Warp 0, lanes = entries (C <= 32, the block at least one warp): the same scan as scan(), with the
  /// entry list in registers, lane j holding chronological entry j (count, info, first unit, start). At a
  /// merge every lane forms its pair's ratio from the current entries, math::dla_merge_pair's expression
  /// verbatim (the CPU also recomputes every ratio at every merge), and the pair is the smallest ratio,
  /// first lane on ties, from two 32-bit warp minimums over an order-preserving 64-bit key of the ratio
  /// (-0 as +0: they compare equal; NaN ratios never taken; when the first ratio is NaN, pair 0, as
  /// dla_merge_pair, which never replaces a NaN first ratio). Then the lanes after the pair shift down
  /// by one (shuffles) and the merged lane sums count and info (info in R, as the CPU). Same outputs as
  /// scan(): rowI, rowOpen, rowMerged, death, the chronological arrays and the slots (lane 0).
  __device__ int64_t scan_warp(int64_t t0, int64_t Lc, int64_t m_in, int64_t& nfree) {
    const unsigned full = 0xffffffffu;
    const int lane = static_cast<int>(threadIdx.x);  // warp 0
    const int mi = static_cast<int>(m_in), Cc = static_cast<int>(C);
    int64_t cnt = 0, st = 0;
    R inf = R(0);
    int un = 0;
    if (lane < mi) {
      in_slot[lane] = slot[lane];
      cnt = count[lane];
      inf = info[lane];
      st = start[lane];
      un = lane;
    }
    int mm = mi;
    bool carried = mi > 0;
    int open_lo = 0;
    const int32_t L32 = static_cast<int32_t>(LP);
    for (int r = 0; r < static_cast<int>(Lc); ++r) {
      // the same address in every lane: I, opens, mm and the pair below are uniform over the warp
      const R I = mm == 0 ? R(0) : static_cast<R>(carried ? Ac[r] : Sc[r * L32 + open_lo]);
      const bool opens = math::dla_opens_state(I, p.tau, C, static_cast<int64_t>(mm));
      int merged = -1;
      if (opens) {
        if (mm == Cc) {  // C >= 2 here (capacity 1 never opens into a non-empty cache)
          const R inf_n = __shfl_down_sync(full, inf, 1);
          const int64_t cnt_n = __shfl_down_sync(full, cnt, 1);
          const int un_n = __shfl_down_sync(full, un, 1);
          const int64_t st_n = __shfl_down_sync(full, st, 1);
          // lanes >= mm - 1 hold no pair (their ratio, maybe 0 / 0, is never looked at)
          const double ratio =
              (static_cast<double>(inf) + static_cast<double>(inf_n)) / static_cast<double>(cnt + cnt_n);
          const double r0 = __shfl_sync(full, ratio, 0);
          int best = 0;
          if (r0 == r0) {  // the first ratio is not NaN
            uint64_t key = ~uint64_t(0);
            if (lane < mm - 1 && ratio == ratio) {
              const uint64_t bits = static_cast<uint64_t>(__double_as_longlong(ratio + 0.0));  // -0 -> +0
              key = (bits >> 63) != 0 ? ~bits : bits | (uint64_t(1) << 63);
            }
            const unsigned khi = static_cast<unsigned>(key >> 32), klo = static_cast<unsigned>(key & 0xffffffffu);
            const unsigned mhi = __reduce_min_sync(full, khi);
            const unsigned mlo = __reduce_min_sync(full, khi == mhi ? klo : 0xffffffffu);
            const unsigned sel = __ballot_sync(full, khi == mhi && klo == mlo);
            best = __ffs(static_cast<int>(sel)) - 1;  // sel holds lane 0's pair at least: r0 is a number
          }
          merged = best;
          if (lane == best + 1) death[un] = r;  // unit un stops starting an entry at row r
          if (lane == best) {
            cnt += cnt_n;
            inf += inf_n;
          } else if (lane > best) {
            cnt = cnt_n;
            inf = inf_n;
            un = un_n;
            st = st_n;
          }
          --mm;
        }
        if (lane == mm) {
          cnt = 1;
          inf = I;
          un = mi + r;
          st = p.position + t0 + r;
        }
        ++mm;
        open_lo = r;
        carried = false;
      } else if (lane == mm - 1) {
        cnt += 1;
        inf += I;
      }
      if (lane == 0) {
        rowI[r] = I;
        rowOpen[r] = opens ? 1 : 0;
        rowMerged[r] = merged;
      }
    }
    if (lane < mm) {
      unit[lane] = un;
      count[lane] = cnt;
      info[lane] = inf;
      start[lane] = st;
    }
    __syncwarp();
    if (lane == 0) assign_slots(static_cast<int64_t>(mm), Lc, m_in, nfree);
    return mm;
  }

  /// Thread 0, after a scan: the slots of the chunk's entries (cpu/dla_prefill.h's order): an entry holding
  /// carried units keeps its first unit's slot and frees the others', then the entries of chunk tokens
  /// only take free slots.
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
};

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
      // 1. The chunk, transposed (Q^T, K^T, V^T; rows Lc .. LP-1 zero) and V row-major.
      // (32-bit index arithmetic inside the chunk: every product below is bounded by shared memory)
      const int32_t Dk32 = static_cast<int32_t>(Dk), Dv32 = static_cast<int32_t>(Dv), C32 = static_cast<int32_t>(C);
      // Each thread loads kLb elements before storing them (v2 loaded and stored one at a time: the
      // compiler cannot move a global load above a shared-memory store through generic pointers, so every
      // element waited for its own load).
      {
        const int32_t n = static_cast<int32_t>(LP * Dk);
        for (int32_t i0 = tid; i0 < n; i0 += kLb * nth) {
          R q[kLb], k[kLb];
          int32_t rr[kLb], dd[kLb];
#pragma unroll
          for (int a = 0; a < kLb; ++a) {
            const int32_t idx = i0 + a * nth;
            rr[a] = idx / Dk32;
            dd[a] = idx % Dk32;
            q[a] = R(0);
            k[a] = R(0);
            if (idx < n && rr[a] < Lc) {
              q[a] = ld<St>(p.q.data, at3(p.q, b, h, t0 + rr[a]) + dd[a] * p.q.stride[3]);
              k[a] = ld<St>(p.k.data, at3(p.k, b, h, t0 + rr[a]) + dd[a] * p.k.stride[3]);
            }
          }
#pragma unroll
          for (int a = 0; a < kLb; ++a) {
            if (i0 + a * nth >= n) break;
            w.QT[dd[a] * LP + rr[a]] = q[a];
            w.KT[dd[a] * LP + rr[a]] = k[a];
            if (rr[a] < Lc) w.Kc[rr[a] * Dk + dd[a]] = k[a];
          }
        }
      }
      {
        const int32_t n = static_cast<int32_t>(LP * Dv);
        for (int32_t i0 = tid; i0 < n; i0 += kLb * nth) {
          R v[kLb];
          int32_t rr[kLb], ee[kLb];
#pragma unroll
          for (int a = 0; a < kLb; ++a) {
            const int32_t idx = i0 + a * nth;
            rr[a] = idx / Dv32;
            ee[a] = idx % Dv32;
            v[a] = idx < n && rr[a] < Lc ? ld<St>(p.v.data, at3(p.v, b, h, t0 + rr[a]) + ee[a] * p.v.stride[3]) : R(0);
          }
#pragma unroll
          for (int a = 0; a < kLb; ++a) {
            if (i0 + a * nth >= n) break;
            w.VT[ee[a] * LP + rr[a]] = v[a];
            if (rr[a] < Lc) w.Vc[rr[a] * Dv + ee[a]] = v[a];
          }
        }
      }
      {
        const int32_t n = static_cast<int32_t>(Lc * C);
        for (int32_t i0 = tid; i0 < n; i0 += kLb * nth) {
          R x[kLb];
#pragma unroll
          for (int a = 0; a < kLb; ++a) {
            const int32_t idx = i0 + a * nth, r = idx / C32, c = idx % C32;
            x[a] = idx < n ? ld<St>(p.lam.data, at3(p.lam, b, h, t0 + r) + c * p.lam.stride[3]) : R(0);
          }
#pragma unroll
          for (int a = 0; a < kLb; ++a)
            if (i0 + a * nth < n) w.lamc[i0 + a * nth] = x[a];
        }
      }
      if (w.decay) {  // uniform over the block
        // g_r into a2 by every thread (v2: thread 0 loaded them one after another), then thread 0's sums
        // in the same order.
        for (int32_t r = tid; r < static_cast<int32_t>(Lc); r += nth) w.a2[r] = w.log_decay(t0 + r);
        __syncthreads();
        if (tid == 0) {
          double G = 0;
          for (int64_t r = 0; r < Lc; ++r) {
            G += w.a2[r];
            w.G[r] = G;
          }
        }
      }
      __syncthreads();
      const bool factored = w.decay && w.G[0] - w.G[Lc - 1] <= 600.0;
      if (w.decay)
        for (int64_t r = tid; r < Lc; r += nth) {
          w.eG[r] = exp(w.G[r]);
          w.a2[r] = exp(2.0 * w.a2[r]);  // a_r^2 (each thread rewrites only its own rows' g_r)
          if (factored) {
            w.er[r] = exp(w.G[r] - w.G[0]);
            w.fj[r] = exp(w.G[0] - w.G[r]);
          }
        }
      __syncthreads();  // er, fj for the pair decays below
      // 2. Gram lower triangles in kTg x kTg tiles: QK (R), Bv_r = KK_rr VV_rr and the pair terms
      //    e^{G_r-G_j} KK_rj VV_rj (j < r) into Suf (double).
      {
        const int32_t nt = static_cast<int32_t>((Lc + kTg - 1) / kTg);
        for (int32_t idx = tid; idx < nt * nt; idx += nth) {
          const int32_t ti = idx / nt, tj = idx % nt;
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
          for (int64_t e = 0; e < Dv; ++e) {
            const R* vd = w.VT + e * LP;
            R vr[kTg], vj[kTg];
#pragma unroll
            for (int a = 0; a < kTg; ++a) {
              vr[a] = vd[r0 + a];
              vj[a] = vd[j0 + a];
            }
#pragma unroll
            for (int a = 0; a < kTg; ++a)
#pragma unroll
              for (int c = 0; c < kTg; ++c) vv[a][c] += static_cast<double>(vr[a]) * static_cast<double>(vj[c]);
          }
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
        if (nth % Dv32 == 0) {
          // Each thread owns one column e (nth is a multiple of Dv) and the rows r = r_first + k * rstep;
          // kKsG rows at a time share every load of S_open[d][e] (v2 loaded it once per row). Per row the
          // same four partial sums over d mod 4 in the same order as below: the same bits.
          const int32_t e = tid % Dv32, rstep = nth / Dv32, L32 = static_cast<int32_t>(Lc);
          for (int32_t rg = tid / Dv32; rg < L32; rg += kKsG * rstep) {
            double u[kKsG][4];
#pragma unroll
            for (int g = 0; g < kKsG; ++g)
#pragma unroll
              for (int a = 0; a < 4; ++a) u[g][a] = 0;
            int32_t d = 0;
#pragma unroll 2
            for (; d + 4 <= Dk32; d += 4) {
              double sv[4];
#pragma unroll
              for (int a = 0; a < 4; ++a) sv[a] = static_cast<double>(open[(d + a) * Dv32 + e]);
#pragma unroll
              for (int g = 0; g < kKsG; ++g) {
                const int32_t r = rg + g * rstep;
                if (r < L32) {  // rows up to LP are zero in KT, but stay inside the chunk anyway
#pragma unroll
                  for (int a = 0; a < 4; ++a) u[g][a] += static_cast<double>(w.KT[(d + a) * LP + r]) * sv[a];
                }
              }
            }
            for (; d < Dk32; ++d) {
              const double sv = static_cast<double>(open[d * Dv32 + e]);
#pragma unroll
              for (int g = 0; g < kKsG; ++g) {
                const int32_t r = rg + g * rstep;
                if (r < L32) u[g][0] += static_cast<double>(w.KT[d * LP + r]) * sv;
              }
            }
#pragma unroll
            for (int g = 0; g < kKsG; ++g) {
              const int32_t r = rg + g * rstep;
              if (r < L32) w.KS[r * Dv32 + e] = (u[g][0] + u[g][1]) + (u[g][2] + u[g][3]);
            }
          }
        } else {
          for (int32_t idx = tid; idx < static_cast<int32_t>(Lc * Dv); idx += nth) {
            const int32_t r = idx / Dv32, e = idx % Dv32;
            double u[4] = {0, 0, 0, 0};  // four partial sums over d (latency), added in a fixed order
            int64_t d = 0;
            for (; d + 4 <= Dk; d += 4) {
#pragma unroll
              for (int a = 0; a < 4; ++a)
                u[a] += static_cast<double>(w.KT[(d + a) * LP + r]) * static_cast<double>(open[(d + a) * Dv + e]);
            }
            for (; d < Dk; ++d) u[0] += static_cast<double>(w.KT[d * LP + r]) * static_cast<double>(open[d * Dv + e]);
            w.KS[idx] = (u[0] + u[1]) + (u[2] + u[3]);
          }
        }
        double sq = 0;
        for (int64_t idx = tid; idx < SS; idx += nth) {
          const double s = static_cast<double>(open[idx]);
          sq += s * s;
        }
        A_open = block_total(sq, w.red);  // synchronizes: KS and the Gram tiles are complete
        for (int64_t r = tid; r < Lc; r += nth) {
          double acc = 0;
          for (int64_t e = 0; e < Dv; ++e) acc += w.KS[r * Dv + e] * static_cast<double>(w.Vc[r * Dv + e]);
          w.cp[r] = acc;
        }
      }
      __syncthreads();  // the Gram tiles are complete
      // Suffix sums of the pair terms: Suf[r][j] = sum_{j <= j' < r} e^{G_r-G_j'} KK_rj' VV_rj'.
      for (int64_t r = tid; r < Lc; r += nth) {
        double acc = 0;
        for (int64_t j = r - 1; j >= 0; --j) {
          acc += w.Suf[r * LP + j];
          w.Suf[r * LP + j] = acc;
        }
      }
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
        const int32_t ns0 = m_in > 0 ? 1 : 0, NS = static_cast<int32_t>(Lc) + ns0;  // s = -1 (carried), 0 .. Lc-1
        for (int32_t idx = tid; idx < static_cast<int32_t>(Lc) * NS; idx += nth) {
          const int32_t r = idx / NS, s = idx % NS - ns0;
          if (s < r) w.score_entry(s, r);
        }
      }
      __syncthreads();
      // 3. The scan: warp 0 with the entries in lanes where they fit (lay.warp_scan: C <= 32, a block of at
      //    least 32 threads, not switched off), else thread 0 on the linked list.
      if (lay.warp_scan && nth >= 32 && C <= 32) {
        if (tid < 32) {
          const int64_t mw = w.scan_warp(t0, Lc, m_in, nfree);  // nfree: lane 0's
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
      {
        const int32_t NU = static_cast<int32_t>(m_in + Lc);
        for (int32_t idx = tid; idx < static_cast<int32_t>(Lc) * NU; idx += nth) {
          const int32_t r = idx / NU, U = idx % NU;
          if (U > m_in + r) continue;
          const int64_t mr = w.snap_m[r];
          const int32_t* units = w.snap_unit + r * C;
          // The entry holding unit U: the last i with units[i] <= U (units ascend, units[0] = 0 <= U; v2
          // searched down from mr - 1 for the same i).
          int32_t lo = 0, hi = static_cast<int32_t>(mr) - 1;
          while (lo < hi) {
            const int32_t mid = (lo + hi + 1) / 2;
            if (units[mid] <= U)
              lo = mid;
            else
              hi = mid - 1;
          }
          const int64_t i = lo;
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
      __syncthreads();
      for (int64_t u = tid; u < m_in; u += nth) {
        int32_t any = 0;
        for (int64_t r = 0; r < Lc; ++r) any |= w.Win[r * C + u] != R(0) ? 1 : 0;
        w.anyU[u] = any;
      }
      __syncthreads();  // anyU
      // 5. Outputs of this block's columns, kRt rows x 1 column per thread in registers: y = P V (j in
      //    order), then each carried state's term w_ru (q_r^T S_u[:, e]) in unit order (dla_prefill.cu and
      //    the CPU scale q by w_ru before the product: a rounding difference only, and half the multiplies).
      //    S_u is read from the slots (global scratch, L1-resident: every warp reads the same rows), q from
      //    Q^T in shared memory.
      {
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
            // Unrolled so that several loads of S (global scratch, L1 / L2) are in flight at once; the sums
            // keep v2's order.
            const int32_t Dv32s = static_cast<int32_t>(Dv);
#pragma unroll 8
            for (int32_t d = 0; d < Dk32; ++d) {
              const R sd = S[d * Dv32s];
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
      __syncthreads();  // the carried states are read; now they may be overwritten
      // 6. States at the chunk's end (every column: the next chunk's scan needs the whole open state),
      //    kDt state rows d of one column e per thread; entries in the CPU's order.
      {
        const R E = static_cast<R>(w.decay ? w.eG[Lc - 1] : 1.0);
        const int64_t ndg = (Dk + kDt - 1) / kDt;
        for (int64_t wi = tid; wi < ndg * Dv; wi += nth) {
          const int64_t d0 = (wi / Dv) * kDt, e = wi % Dv;
          const int64_t nd = Dk - d0 < kDt ? Dk - d0 : kDt;
          const bool kvec = Dk % 4 == 0 && nd == kDt;
          for (int pass = 0; pass < 2; ++pass)
            for (int64_t i = 0; i < m_out; ++i) {
              const int64_t ulo = w.unit[i], uhi = i + 1 < m_out ? w.unit[i + 1] : m_in + Lc;
              const bool carries = ulo < m_in;
              if (carries != (pass == 0)) continue;
              const int64_t j0 = (ulo > m_in ? ulo : m_in) - m_in, j1 = uhi - m_in;
              // An entry carried in unchanged (one unit, no token of this chunk, no decay) keeps its slot
              // (slot[i] == in_slot[ulo]) and its values: v2 wrote them back unchanged, v3 skips it.
              if (carries && !w.decay && uhi == ulo + 1) continue;
              R x[kDt];
#pragma unroll
              for (int a = 0; a < kDt; ++a) x[a] = R(0);
              if (carries) {
                const R* s0 = w.slots + w.in_slot[ulo] * SS + d0 * Dv + e;
#pragma unroll
                for (int a = 0; a < kDt; ++a)
                  if (a < nd) x[a] = s0[a * Dv];
                const int64_t ue = uhi < m_in ? uhi : m_in;
                for (int64_t u = ulo + 1; u < ue; ++u) {
                  const R* su = w.slots + w.in_slot[u] * SS + d0 * Dv + e;
#pragma unroll
                  for (int a = 0; a < kDt; ++a)
                    if (a < nd) x[a] = x[a] + su[a * Dv];
                }
                if (w.decay) {
#pragma unroll
                  for (int a = 0; a < kDt; ++a) x[a] = x[a] * E;
                }
              }
              if (j1 > j0) {
                R acc[kDt];
#pragma unroll
                for (int a = 0; a < kDt; ++a) acc[a] = R(0);
                for (int64_t j = j0; j < j1; ++j) {
                  const R vj = w.decay ? w.decj[j] * w.Vc[j * Dv + e] : w.Vc[j * Dv + e];
                  R k8[kDt];
                  if (kvec) {
                    load_rows(w.Kc + j * Dk + d0, k8);  // 16-byte aligned: Dk % 4 == 0, d0 % 8 == 0
                  } else {
#pragma unroll
                    for (int a = 0; a < kDt; ++a) k8[a] = a < nd ? w.KT[(d0 + a) * LP + j] : R(0);
                  }
#pragma unroll
                  for (int a = 0; a < kDt; ++a)
                    if (a < nd) acc[a] += k8[a] * vj;
                }
#pragma unroll
                for (int a = 0; a < kDt; ++a) x[a] = carries ? x[a] + acc[a] : acc[a];
              }
              R* dst = w.slots + w.slot[i] * SS + d0 * Dv + e;
#pragma unroll
              for (int a = 0; a < kDt; ++a)
                if (a < nd) dst[a * Dv] = x[a];
            }
        }
      }
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

// ---- host side and kernel wrapper (tests/cuda_emu/run.sh cuts the file here)
}  // namespace v3
}  // namespace dla
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit

#include <cstdlib>
#include <cstring>

#include "tuning.h"

namespace attnkit {
namespace detail {
namespace cuda {
namespace dla {
namespace v3 {

template <class St>
__global__ void __launch_bounds__(kThreads) dla_prefill_v3_kernel(const DLAProblem p, const Lay lay, char* scratch) {
  extern __shared__ __align__(16) unsigned char dla_v3_smem[];
  prefill_body<St>(p, lay, scratch, reinterpret_cast<char*>(dla_v3_smem));
}

/// Blocks per item: tuning dla_split (v2's rule), else the environment's ATTNKIT_DLA_CUDA_SPLIT (1..8, read
/// once; for measurements), else automatic: clamp(SMs / (B*H), 1, 4).
inline int64_t choose_split(const DLAProblem& p) {
  static const int64_t env = [] {
    const char* e = std::getenv("ATTNKIT_DLA_CUDA_SPLIT");
    const long v = e ? std::strtol(e, nullptr, 10) : 0;
    return static_cast<int64_t>(v >= 1 && v <= kMaxDlaSplit ? v : 0);
  }();
  int64_t ns = tuning().dla_split.load();
  if (ns == 0) ns = env;
  if (ns <= 0) {
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

}  // namespace v3

template <class St>
bool launch_prefill_v3(const DLAProblem& p, cudaStream_t stream) {
  using R = acc_t<St>;
  const int64_t items = p.B * p.H;
  if (items == 0) return true;
  if (p.C + (p.chunk_size > 0 ? p.chunk_size : kDefaultChunk) > 0x3fffffff) return false;  // int32 unit names
  v3::Lay lay = v3::make_lay(p, sizeof(R), v3::choose_split(p));
  // ATTNKIT_DLA_CUDA_SCAN (read once; measurements and bisecting on a GPU, not a public interface): 0 = the
  // linked-list scan on thread 0 for every capacity, else (default) the warp scan where C <= 32.
  static const int warp_scan = [] {
    const char* e = std::getenv("ATTNKIT_DLA_CUDA_SCAN");
    return e && std::strcmp(e, "0") == 0 ? 0 : 1;
  }();
  lay.warp_scan = warp_scan;
  int optin = 0;
  ATTNKIT_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, p.device_index));
  // Static shared memory of the kernel (sh_m) and a margin stay out of the dynamic part.
  if (optin <= 0 || lay.smem + 1024 > static_cast<std::size_t>(optin)) return false;
  ATTNKIT_CUDA_CHECK(cudaFuncSetAttribute(v3::dla_prefill_v3_kernel<St>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(lay.smem)));
  const unsigned grid = grid_for(items * lay.ns, lay.gbytes, p.device_index);
  Workspace ws(grid * lay.gbytes, stream);
  v3::dla_prefill_v3_kernel<St><<<grid, kThreads, lay.smem, stream>>>(p, lay, ws.as<char>());
  ATTNKIT_CUDA_CHECK_LAUNCH();
  return true;
}

template bool launch_prefill_v3<float>(const DLAProblem&, cudaStream_t);
template bool launch_prefill_v3<double>(const DLAProblem&, cudaStream_t);
template bool launch_prefill_v3<half_t>(const DLAProblem&, cudaStream_t);
template bool launch_prefill_v3<bf16_t>(const DLAProblem&, cudaStream_t);

}  // namespace dla
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
