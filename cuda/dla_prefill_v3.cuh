#pragma once
// DLA prefill v3: v2 with the merge scan on one warp and batched chunk loads ("dla_prefill_v3", gated in
// cuda/runtime.cu kCompiled; dla.cu takes it through launch_prefill_v3 when has_kernel("dla_prefill_v3")).
// Included by dla_prefill_v2.cu after its Blk (the scan reads and writes Blk's shared-memory arrays); the
// rest of the kernel is v2's, unchanged. ATTNKIT_DLA_V3 (internal, a bit mask, read once in
// launch_prefill_v3): 1 = the warp scan, 2 = the batched loads, 4 = K S_open by row groups, default 3.
//
// Where a v2 chunk's time goes (H200 bench: float16, B = 4, H = 16, D = 64, C = 16, L = 64, random data, so
// every token opens a state and merges; 64 items x auto split 2 = 128 blocks of 256 threads, ~185 KB of
// shared memory: one block per SM, 8 warps; ONE launch per call, each block walks its item's chunks in
// order). Measured: 17.2 ms per call at S = 4096 = 64 chunks, i.e. ~270 us (~530K cycles) per chunk, all of
// it per-block latency (the 128 blocks run side by side). Estimates per chunk and block (cycles at 1.98 GHz;
// they sum to ~250K, so latencies run ~2x these, the shares are what matter):
//   loads of Q, K, V (4608 elements each), lam: ~40 dependent global loads per thread     25-40K
//   Gram tiles (136 threads, 1K F2F.F64 each at 16/clk/SM) ~9K; K S_open in double (262K DFMA, 524K
//     F2F.F64: throughput-bound) ~33K; suffix sums and A chains (one thread per row, 64 serial steps) ~8K
//   score table (~2.1K scores, 4 double divisions + 4 square roots each)                     ~7K
//   SCAN, thread 0 alone: 64 merges x (3 double divisions, a 15-ratio argmin and a ~8-entry shift of six
//     shared arrays) ~1.2-1.5K                                                               80-100K
//   snapshots, readout weights (an int64 division and a linear search per (row, unit)), anyU  10-15K
//   readout (the only split work; split 1 -> 2 saved 25 us per chunk, so ~25 us at split 2)  ~50K
//   state update (every state rewritten, by both slice blocks: 256 KB read + 256 KB written)  ~16K
// Sources of the gap to exact attention at S = 4096 (1.14 ms: 18 us per chunk step): the scan alone, at the
// warp's ~350 cycles per merge, is 22K cycles = 11 us per chunk; everything else is a chain of ~15
// latency-bound phases at 8 warps per SM. v3 removes the largest serial phase (the scan, 80-100K -> ~25K
// cycles), the load latency (25-40K -> ~10K), a quarter of K S_open's conversions and half its global loads
// (~33K -> ~25K): 1.2-1.6x expected, not the target. What would reach it:
// the open state is never merged (a merge happens only when a token opens a new one), so boundaries and
// scores need only the open state (spec invariant 7), the merges only the segments' (count, info), and the
// C-state update is column-separable; three passes then: (A) scores and boundaries per item (one state
// per chunk, not C), (B) the merge chain, a warp per item over all T tokens (the true serial bound: ~350
// cycles per merge, 0.7 ms at S = 4096, 2.9 ms at 16384), (C) readout and states as chunked multi-state
// linear attention split over Dv with no redundant work (tensor cores), overlapping (B).
//
// The warp scan. v2's scan is thread 0 walking the chunk's rows while the other 255 threads wait at a
// barrier; with every token a merge (C = 16), each row costs three double divisions (the cached pair ratios
// it refreshes), an argmin over C-1 ratios in shared memory and a shift of six shared arrays over ~C/2
// entries: ~1.2-1.5K cycles of dependent latency, 80-100K cycles (40-50 us) per 64-row chunk.
//
// What. Lane j of warp 0 holds chronological entry j (count, info, first unit, start) in registers (C <= 32).
// A merge is: every lane forms its pair's ratio from the current entries, math::dla_merge_pair's expression
// verbatim (one double division, all lanes at once); the pair is the smallest ratio, first lane on ties,
// from two 32-bit warp minimums (__reduce_min_sync, sm80+) over an order-preserving 64-bit key of the ratio
// and a ballot (-0 as +0: they compare equal; NaN ratios are never taken; when the first ratio is NaN, pair
// 0, as dla_merge_pair, which never replaces a NaN first ratio); then the lanes after the pair take their
// right neighbour's entry (shuffles) and the merged lane sums count and info (info in R, as the CPU): about
// 300-400 cycles per merge. Rows that join the open state are one predicated add. The outputs are exactly
// v2's scan's: rowI, rowOpen, rowMerged, death, the chronological arrays count/info/start/unit, in_slot and
// the slots (lane 0, assign_slots), so every later phase is v2's and the results are v2's bits
// (tests/cuda_emu/test_dla_v2.cpp checks v3 == v2 bit for bit and both against the CPU).

// No namespaces here: dla_prefill_v2.cu includes this inside attnkit::detail::cuda::dla::v2.

/// Elements [0, n) of a block-strided loop, kLb per thread at a time: load(idx) for all of them first (loads in
/// flight together), then store(idx, value) in the same order (v3's chunk loads).
constexpr int kLb = 4;
template <class Load, class Store>
__device__ __forceinline__ void batched(int64_t n, int tid, int nth, Load load, Store store) {
  using X = decltype(load(int64_t(0)));
  for (int64_t i0 = tid; i0 < n; i0 += static_cast<int64_t>(kLb) * nth) {
    X x[kLb] = {};
#pragma unroll
    for (int a = 0; a < kLb; ++a) {
      const int64_t idx = i0 + static_cast<int64_t>(a) * nth;
      if (idx < n) x[a] = load(idx);
    }
#pragma unroll
    for (int a = 0; a < kLb; ++a) {
      const int64_t idx = i0 + static_cast<int64_t>(a) * nth;
      if (idx < n) store(idx, x[a]);
    }
  }
}

/// v3's K S_open: KS[r][e] = sum_d K[r][d] S_open[d][e] in double, a thread per (group of kKsR rows, column e)
/// so that each load and conversion of S_open[d][e] serves kKsR rows (v2: one row per thread, two F2F.F64
/// conversions per DFMA at 16/clk/SM, and a global load of S_open per DFMA). Each element's sum is v2's: four
/// partial sums over d = a mod 4 in d order, then (u0 + u1) + (u2 + u3). Rows past Lc read KT's zero rows
/// (LP >= the rows rounded up to kKsR) and are not stored.
constexpr int kKsR = 2;  // not inlined: inlined (2 or 4 rows), or taking plain values, the kernel spilled 20 bytes
template <class St>
__device__ __noinline__ void ks_rows(Blk<St>& w, const acc_t<St>* open, int64_t Lc, int tid, int nth) {
  const int64_t Dk = w.Dk, Dv = w.Dv, LP = w.LP, ngr = (Lc + kKsR - 1) / kKsR;
  for (int64_t idx = tid; idx < ngr * Dv; idx += nth) {
    const int64_t g = idx / Dv, e = idx - g * Dv, r0 = g * kKsR;
    double u[kKsR][4];
#pragma unroll
    for (int j = 0; j < kKsR; ++j)
#pragma unroll
      for (int a = 0; a < 4; ++a) u[j][a] = 0;
    int64_t d = 0;
    for (; d + 4 <= Dk; d += 4) {
#pragma unroll
      for (int a = 0; a < 4; ++a) {
        const double s = static_cast<double>(open[(d + a) * Dv + e]);
        const acc_t<St>* kr = w.KT + (d + a) * LP + r0;
#pragma unroll
        for (int j = 0; j < kKsR; ++j) u[j][a] += static_cast<double>(kr[j]) * s;
      }
    }
    for (; d < Dk; ++d) {
      const double s = static_cast<double>(open[d * Dv + e]);
      const acc_t<St>* kr = w.KT + d * LP + r0;
#pragma unroll
      for (int j = 0; j < kKsR; ++j) u[j][0] += static_cast<double>(kr[j]) * s;
    }
#pragma unroll
    for (int j = 0; j < kKsR; ++j)
      if (r0 + j < Lc) w.KS[(r0 + j) * Dv + e] = (u[j][0] + u[j][1]) + (u[j][2] + u[j][3]);
  }
}

/// Warp 0 (all 32 lanes call it; C <= 32): the scan of Blk::scan on a chunk of Lc rows with m_in entries
/// carried in; returns the entry count after it. nfree: lane 0's free-slot count (assign_slots).
template <class St>
__device__ int64_t scan_warp(Blk<St>& w, int64_t t0, int64_t Lc, int64_t m_in, int64_t& nfree) {
  using R = acc_t<St>;
  const unsigned full = 0xffffffffu;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int mi = static_cast<int>(m_in), Cc = static_cast<int>(w.C);
  int64_t cnt = 0, st = 0;
  R inf = R(0);
  int un = 0;
  if (lane < mi) {
    w.in_slot[lane] = w.slot[lane];
    cnt = w.count[lane];
    inf = w.info[lane];
    st = w.start[lane];
    un = lane;
  }
  int mm = mi;
  bool carried = mi > 0;
  int64_t open_lo = 0;
  for (int64_t r = 0; r < Lc; ++r) {
    // The same shared address in every lane: I, opens, mm and the pair below are uniform over the warp.
    const R I = mm == 0 ? R(0) : static_cast<R>(carried ? w.Ac[r] : w.Sc[r * w.LP + open_lo]);
    const bool opens = math::dla_opens_state(I, w.p.tau, w.C, static_cast<int64_t>(mm));
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
        if (lane == best + 1) w.death[un] = static_cast<int32_t>(r);  // unit un stops starting an entry at r
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
        un = mi + static_cast<int>(r);
        st = w.p.position + t0 + r;
      }
      ++mm;
      open_lo = r;
      carried = false;
    } else if (lane == mm - 1) {
      cnt += 1;
      inf += I;
    }
    if (lane == 0) {
      w.rowI[r] = I;
      w.rowOpen[r] = opens ? 1 : 0;
      w.rowMerged[r] = merged;
    }
  }
  if (lane < mm) {
    w.unit[lane] = un;
    w.count[lane] = cnt;
    w.info[lane] = inf;
    w.start[lane] = st;
  }
  __syncwarp();
  if (lane == 0) w.assign_slots(static_cast<int64_t>(mm), Lc, m_in, nfree);
  return mm;
}

