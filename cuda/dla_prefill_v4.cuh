#pragma once
// DLA prefill v4: five kernels, A1 A2 B C1 C2 ("dla_prefill_v4", verified on an H200 in session 27; dla.cu takes
// it through launch_prefill_v4 when has_kernel("dla_prefill_v4"), ATTNKIT_DLA_V4 is not "0" and tuning dla_split
// >= 0; dla_split = -1 takes the first kernel, dla_prefill.cu, beside it). Included by dla_prefill_v2.cu after
// Blk (the passes reuse the removed v2 kernel's Blk, its shared-memory layout and its phases' arithmetic).
// tests/cuda_emu/dla_v4_emu.py checks the decomposition against the CPU backend; tests/cuda_emu/test_dla_v2.cpp
// emulates these bodies and checks v4 against the CPU (outputs, aux, cache) and v4 == v4 bit for bit under other
// grids, item groups and C2 column splits (launch-configuration independence). Until session 27 it also checked
// v4 == v2 bit for bit (v2 was removed then).
//
// Why it is exact. The open state is never merged while open (a merge happens only when a token opens a new
// state, and then the old open state is closed), so the scores and boundaries need only the open state (spec
// invariant 7); the merges need only the entries' (count, info); the readout and the C states are then plain
// multi-state linear attention on known spans, each value column independent. Every value is formed by v2's
// operations in v2's order (each element by one thread, fixed loops and block trees, no atomics): the bits are
// v2's, whatever the grid, the group or the split. So:
//
// (A1) v4_pass_a1, one block per (item, chunk), EVERY CHUNK AT ONCE: the chunk-local part of v2's phases 1-2b
//      (K, V; the Gram lower triangles K K^T and V V^T in double; the pair terms and suffix sums; the A chains and
//      scores of every open state opened at a chunk row s < r): nothing there depends on the state carried in.
//      Writes the score table (R), Suf[r][0] and Bv[r] of every chunk to global scratch.
// (A2) v4_pass_a2, one block per item, serial over its chunks: only the carried column. ||S_open||^2, then by
//      rounds of kA2Rows = 8 rows K S_open (double), k_r^T S_open v_r and thread 0's A chain and scores, stopping
//      at the first row that opens a state (no later row reads the carried state: random data stop in the first
//      round, v2 formed K S_open for all Lc rows); the rest of the table from A1; the lookups (a compare per row);
//      the open state at the chunk's end (v2's step 6 for that one entry). Writes every token's score and boundary.
// (B)  v4_pass_b, one warp per item over all T tokens: the merge chain (v3's warp scan on (count, info, start) in
//      lanes, C <= 32; thread 0 with math::dla_merge_pair otherwise). Writes merged[t], the aux outputs and the
//      cache's counts, info, starts and size.
// (C1) v4_pass_c1, one block per (item, column slice), serial over its chunks, the STATES ONLY: K and V of the
//      chunk, the entry list replayed by thread 0 from (boundary, merged) per row (v4_replay: a shift of one small
//      array per merge), v2's step 6 arithmetic from the entries at the chunk's start into those at its end. Keeps
//      the entries' states at EVERY chunk start (chronological, (chunks + 1) x C states per item: the array is the
//      state storage, no slot bookkeeping) and the entry count there; writes the cache's states.
// (C2) v4_pass_c2, one block per (item, chunk, C2 column slice: 1 by default), EVERY CHUNK AT ONCE: v2's readout
//      (Q K^T tiles, the replayed lists, snapshots, readout weights, outputs) from C1's states at the chunk's start.
//      Readout layout only (make_lay part 2: no score arrays, no K row-major, no V^T): two blocks per SM at D = 64.
// A1 and A2, then C1 and C2, run per item group (launch_prefill_v4: a group's tables, or its chunk-start states,
// stay under 2 GiB or a quarter of the free device memory; the two share one region, A being done before C starts;
// one group each for B = 4, H = 16, S = 4096, C = 16, D = 64: 70 MB of tables, 1.09 GB of states; an item that
// alone needs more takes the first kernel, dla_prefill.cu). All launches on the caller's stream, each waiting for the previous one.
//
// Expected time: an ESTIMATE, NOT MEASURED (nothing of v4 has run on a GPU). H200, float16, B = 4, H = 16, D = 64,
// C = 16, S = 4096 = 64 chunks of 64, random data (a boundary and a merge at nearly every token); cycles at
// 1.98 GHz from dla_prefill_v3.cuh's per-phase breakdown, doubled for latency as there (its sums ran ~2x short of
// v2's measured 17.2 ms):
//   A1  4096 blocks, ~190 KB shared memory: 1 per SM, 31 waves. Per block: K, V loads 7K + Gram 9K + suffix sums
//       and 64 A chains 8K + table 7K + writes 1K = 32K, x2 = 32 us; 31 x 32 us                        ~1.0 ms
//       (traffic: K, V 67 MB read, tables 70 MB written: ~0.03 ms of HBM)
//   A2  64 blocks, 64 chunks each. Per chunk: K, V loads 7K + A1's table 2K + ||S||^2 1K + one round of the
//       carried column (K S_open for 8 rows: 1/8 of v2's 33K, ~4K; cp 1K; thread 0's steps 3K) 8K + lookups 3K
//       + open-state update 4K + barriers 2K = 27K, x2 = 27 us; 64 x 27 us                               ~1.75 ms
//       (data with no boundary in a chunk run all 8 rounds: up to ~+35K per chunk, ~3.5 ms)
//   B   ~350 cycles per merge x 4096 tokens (unchanged)                                                  ~0.7 ms
//   C1  128 blocks (split 2), 64 chunks each. Per chunk: K, V loads 7K + replay 6K + state update of 32
//       columns (16 entries, one carried state each from L2) 8K + barriers 2K = 24K, x2 = 24 us           ~1.55 ms
//       (traffic: the chunk-start states, 1.09 GB written, read by C1 and by C2: ~3.3 GB, ~0.7 ms of HBM at
//       4.8 TB/s, spread under C1's latency and C2)
//   C2  4096 blocks, ~91 KB: 2 per SM, 15.5 waves. Per block: Q, K, V, lam loads 10K + Q K^T 5K (replay beside
//       it) + snapshots, weights 12K + readout of 64 columns (4.2M FMA: 16 states x 64 rows x 64 x 64) ~100K =
//       ~130K cycles = 65 us; 15.5 x 65 us = 1.0 ms if the two blocks of an SM overlap, 2.0 ms if not.
//       Bound: 17.2 G FMA in all = 0.51 ms at the H200's SIMT float32 peak                             1.0-2.0 ms
//   Total ~6-7 ms vs v2's measured 17.2 ms (~2.5-2.9x) and exact attention's measured 1.14 ms (still ~5-6x short
//   of issue 10's target). What bounds it now: three per-item serial chains (A2, B, C1: ~4 ms of the total) at
//   64-128 blocks on 132 SMs, launched one after another. Next: (a) B inside A2 (a warp that follows A2's chunks
//   one behind, through shared memory) so B's 0.7 ms hides; (b) B writes the entry starts at every chunk
//   boundary, so C1 and C2 need no replay, and C1's per-chunk work is one pass over the states; (c) C2's readout
//   on tensor cores (3xTF32 or split-bf16 to keep float32 accuracy; TF32 alone fails the CPU tolerance in float32);
//   (d) A1 with a trimmed layout (K^T, V^T, Suf, the table: ~112 KB, 2 blocks per SM).

// No namespaces here: dla_prefill_v2.cu includes this inside attnkit::detail::cuda::dla::v2.

/// v4's global scratch beside the blocks' state slots: per item and token the score, boundary and merged
/// pair; per pass-B block the entry arrays of its serial fallback (C > 32 or blocks of < 32 threads).
struct V4Buf {
  void* I;        // R [items][T]
  uint8_t* O;     // [items][T]
  int32_t* M;     // [items][T]
  char* ent;      // per pass-B block: C x (int64 count, int64 start) then C x R info
  std::size_t ent_bytes;
  char* slotsA;   // per pass-A block: one Dk x Dv state (the open state)
  std::size_t slotA_bytes;
  // Passes A1 (the chunk-local score tables, every chunk at once), beside A2 (the carried column, serial):
  void* tab;        // R [nitems][nch][L][L]: the score of row r under the open state opened at chunk row s < r
  double* tsuf;     // [nitems][nch][L]: Suf[r][0] (the pair sum of row r over the chunk rows 0 .. r-1), r >= 1
  double* tbv;      // [nitems][nch][L]: Bv[r] = |k_r|^2 |v_r|^2
  // A1, A2, C1 and C2 run on the item group [item0, item0 + nitems) (launch_prefill_v4 bounds the arrays):
  char* chs;        // R [nitems][nch + 1][C][Dk][Dv]: every entry's state at every chunk start, chronological
  int32_t* mc;      // [nitems][nch + 1]: the entry count at every chunk start (and at the end)
  int64_t item0, nitems, nch;
  int64_t ns2, ncol2;  // C2's column split (slices of ncol2 columns; 1 slice by default)
};

/// Pass A2's rounds of the carried column (rows whose K S_open is formed at once).
constexpr int64_t kA2Rows = 8;

/// K^T (rows Lc .. LP-1 zero) and K row-major of rows t0 .. t0 + Lc - 1 (v3's batched loads).
template <class St>
__device__ __forceinline__ void v4_load_k(Blk<St>& w, const DLAProblem& p, int64_t b, int64_t h, int tid, int nth,
                                          int64_t t0, int64_t Lc) {
  using R = acc_t<St>;
  const int64_t LP = w.LP, Dk = w.Dk;
  batched(LP * Dk, tid, nth, [&](int64_t idx) {
    const int64_t r = idx / Dk, d = idx - r * Dk;
    return r < Lc ? ld<St>(p.k.data, at3(p.k, b, h, t0 + r) + d * p.k.stride[3]) : R(0);
  }, [&](int64_t idx, R k) {
    const int64_t r = idx / Dk, d = idx - r * Dk;
    w.KT[d * LP + r] = k;
    if (r < Lc) w.Kc[r * Dk + d] = k;
  });
}

/// Pass A1 on one block per (item of the group, chunk), grid-stride, every chunk at once: v2's chunk-local part
/// of the scores (nothing here depends on the state carried into the chunk): the Gram lower triangles K K^T and
/// V V^T in double, Bv_r and the pair terms, the suffix sums, the A chains and the score table of every open
/// state opened at a chunk row s (0 <= s < r; v2's a_chain and score_entry, the same operations in the same
/// order). Writes the table (R: its entries are R-rounded), Suf[r][0] and Bv[r] of the chunk to buf.tab,
/// tsuf, tbv for pass A2.
template <class St>
__device__ void v4_pass_a1(const DLAProblem& p, const Lay& lay, const V4Buf& buf, char* sm) {
  using R = acc_t<St>;
  const int tid = static_cast<int>(threadIdx.x), nth = static_cast<int>(blockDim.x);
  Blk<St> w(p, lay, sm, nullptr);
  const int64_t L = w.L, LP = w.LP, T = p.T, nch = buf.nch;
  R* tab = static_cast<R*>(buf.tab);
  for (int64_t wk = blockIdx.x; wk < buf.nitems * nch; wk += gridDim.x) {
    const int64_t li = wk / nch, n = wk % nch, it = buf.item0 + li;
    const int64_t b = it / p.H, h = it % p.H;
    const int64_t t0 = n * L, Lc = T - t0 < L ? T - t0 : L;
    const int64_t ci = li * nch + n;  // the chunk's index in the group's tables
    w.b = b;
    w.h = h;
    __syncthreads();  // the previous work unit is done with the shared memory
    v4_load_k(w, p, b, h, tid, nth, t0, Lc);
    load_v_batched(w, p, b, h, tid, nth, t0, Lc);
    w.decay_sums(tid, t0, Lc);
    __syncthreads();
    const bool factored = w.decay && w.G[0] - w.G[Lc - 1] <= 600.0;
    w.decay_exps(tid, nth, t0, Lc, factored, true);
    __syncthreads();
    // v2's Gram tiles without Q K^T: Bv_r and the pair terms into Suf (double).
    {
      const int64_t nt = (Lc + kTg - 1) / kTg;
      for (int64_t idx = tid; idx < nt * nt; idx += nth) {
        const int64_t ti = idx / nt, tj = idx % nt;
        if (tj > ti) continue;
        const int64_t r0 = ti * kTg, j0 = tj * kTg;
        double kk[kTg][kTg], vv[kTg][kTg];
#pragma unroll
        for (int a = 0; a < kTg; ++a)
#pragma unroll
          for (int c = 0; c < kTg; ++c) {
            kk[a][c] = 0;
            vv[a][c] = 0;
          }
        w.gram_tile(w.KT, w.Dk, r0, j0, kk);
        w.gram_tile(w.VT, w.Dv, r0, j0, vv);
#pragma unroll
        for (int a = 0; a < kTg; ++a)
#pragma unroll
          for (int c = 0; c < kTg; ++c) {
            const int64_t r = r0 + a, j = j0 + c;
            if (r >= Lc || j > r) continue;
            if (j == r)
              w.Bv[r] = kk[a][c] * vv[a][c];
            else
              w.Suf[r * LP + j] = w.dec(factored, r, j) * kk[a][c] * vv[a][c];
          }
      }
    }
    __syncthreads();
    w.suffix_sums(tid, nth, Lc);
    __syncthreads();
    for (int64_t s = tid; s < Lc; s += nth) w.a_chain(s, Lc, 0.0);
    __syncthreads();
    for (int64_t idx = tid; idx < Lc * Lc; idx += nth) {
      const int64_t r = idx / Lc, s = idx % Lc;
      if (s < r) w.score_entry(s, r);
    }
    __syncthreads();
    for (int64_t idx = tid; idx < Lc * Lc; idx += nth) {
      const int64_t r = idx / Lc, s = idx % Lc;
      if (s < r) tab[ci * L * L + r * L + s] = static_cast<R>(w.Sc[r * LP + s]);
    }
    for (int64_t r = tid; r < Lc; r += nth) {
      buf.tbv[ci * L + r] = w.Bv[r];
      if (r > 0) buf.tsuf[ci * L + r] = w.Suf[r * LP];
    }
  }
}

/// Pass A2 on one block per item of the group (grid-stride), serial over its chunks: only what depends on the
/// state carried into a chunk. Per chunk K and V; K S_open (double), k_r^T S_open v_r and ||S_open||^2 (v2's
/// open_terms), the carried A chain (thread 0) and its scores; the rest of the score table, Suf[r][0] and Bv
/// from pass A1; the lookups (no merge: one thread, a compare per row) and the open state at the chunk's end
/// by v2's step 6 arithmetic for that one entry. Writes the score (R) and boundary (u8) of every token.
template <class St>
__device__ void v4_pass_a2(const DLAProblem& p, const Lay& lay, const V4Buf& buf, char* sm) {
  using R = acc_t<St>;
  __shared__ int64_t sh_open;  // 1: the item's cache is not empty (an open state exists)
  __shared__ int64_t sh_lo;    // the open state's first chunk row after the scan, -1: the one carried in
  const int tid = static_cast<int>(threadIdx.x), nth = static_cast<int>(blockDim.x);
  Blk<St> w(p, lay, sm, buf.slotsA + static_cast<std::size_t>(blockIdx.x) * buf.slotA_bytes);
  const int64_t Dk = w.Dk, Dv = w.Dv, SS = w.SS, L = w.L, LP = w.LP, C = w.C, T = p.T, nch = buf.nch;
  const DLACacheViews& ci = p.cache_in;
  R* Ig = static_cast<R*>(buf.I);
  const R* tab = static_cast<const R*>(buf.tab);
  R* open = w.slots;  // the open state, Dk x Dv row-major (v2's slot layout)

  for (int64_t li = blockIdx.x; li < buf.nitems; li += gridDim.x) {
    const int64_t it = buf.item0 + li, b = it / p.H, h = it % p.H;
    w.b = b;
    w.h = h;
    const int64_t m0 =
        ci.present ? static_cast<const int64_t*>(ci.size.data)[b * ci.size.stride[0] + h * ci.size.stride[1]] : 0;
    if (m0 > 0) {
      const R* in = static_cast<const R*>(ci.states.data) + b * ci.states.stride[0] + h * ci.states.stride[1] +
                    (m0 - 1) * ci.states.stride[2];
      for (int64_t idx = tid; idx < SS; idx += nth) {
        const int64_t d = idx / Dv, e = idx % Dv;
        open[idx] = in[d * ci.states.stride[3] + e * ci.states.stride[4]];
      }
    }
    if (tid == 0) sh_open = m0 > 0 ? 1 : 0;

    for (int64_t n = 0; n < nch; ++n) {
      const int64_t t0 = n * L, Lc = T - t0 < L ? T - t0 : L, cix = li * nch + n;
      __syncthreads();  // the previous chunk (or the cache load) is complete
      const int64_t m_in = sh_open;  // 0 or 1 entries that matter: the open one
      // 1. K^T, K, V^T, V of the chunk (rows Lc .. LP-1 of the transposed arrays zero), loads batched; A1's
      //    Bv and Suf[r][0].
      v4_load_k(w, p, b, h, tid, nth, t0, Lc);
      load_v_batched(w, p, b, h, tid, nth, t0, Lc);
      for (int64_t r = tid; r < Lc; r += nth) {
        w.Bv[r] = buf.tbv[cix * L + r];
        if (r > 0) w.Suf[r * LP] = buf.tsuf[cix * L + r];
      }
      w.decay_sums(tid, t0, Lc);
      __syncthreads();
      const bool factored = w.decay && w.G[0] - w.G[Lc - 1] <= 600.0;
      w.decay_exps(tid, nth, t0, Lc, factored, true);
      __syncthreads();  // er, fj for decj
      if (w.decay)
        for (int64_t j = tid; j < Lc; j += nth) w.decj[j] = static_cast<R>(w.dec(factored, Lc - 1, j));
      // 2. The carried column, only as far as it is needed: the open state carried in is open until the first
      //    row whose score under it opens a state, and no later row reads it. So by rounds of kA2Rows rows: K
      //    S_open (double) and k_r^T S v_r of the round's rows (v2's open_terms sums, element for element), then
      //    thread 0 walks the round (v2's a_chain step and score_entry for s = -1, same operations) and stops at
      //    the first opening row. Random data open at nearly every row: one round instead of Lc rows of K S_open.
      if (m_in > 0) {  // uniform over the block
        double sq = 0;
        for (int64_t idx = tid; idx < SS; idx += nth) {
          const double x = static_cast<double>(open[idx]);
          sq += x * x;
        }
        double A_after = block_total(sq, w.red);  // ||S_open||^2, v2's block sum (synchronizes); thread 0's chain
        for (int64_t r0 = 0; r0 < Lc; r0 += kA2Rows) {
          const int64_t r1 = Lc - r0 < kA2Rows ? Lc : r0 + kA2Rows;
          for (int64_t idx = tid; idx < (r1 - r0) * Dv; idx += nth) {
            const int64_t r = r0 + idx / Dv, e = idx % Dv;
            double u[4] = {0, 0, 0, 0};
            int64_t d = 0;
            for (; d + 4 <= Dk; d += 4) {
#pragma unroll
              for (int a = 0; a < 4; ++a)
                u[a] += static_cast<double>(w.KT[(d + a) * LP + r]) * static_cast<double>(open[(d + a) * Dv + e]);
            }
            for (; d < Dk; ++d) u[0] += static_cast<double>(w.KT[d * LP + r]) * static_cast<double>(open[d * Dv + e]);
            w.KS[r * Dv + e] = (u[0] + u[1]) + (u[2] + u[3]);
          }
          __syncthreads();
          for (int64_t r = r0 + tid; r < r1; r += nth) {
            double acc = 0;
            for (int64_t e = 0; e < Dv; ++e) acc += w.KS[r * Dv + e] * static_cast<double>(w.Vc[r * Dv + e]);
            w.cp[r] = acc;
          }
          __syncthreads();
          if (tid == 0) {
            int64_t stop = r1 == Lc ? 1 : 0;
            for (int64_t r = r0; r < r1; ++r) {
              const double A = (w.decay ? w.a2[r] : 1.0) * A_after;
              const double pr = w.pair_sum(-1, r);
              w.Ac[r] = A;
              A_after = math::dla_joined_sq_norm(A, w.Bv[r], pr);
              w.score_entry(-1, r);
              if (math::dla_opens_state(static_cast<R>(w.Ac[r]), w.p.tau, C, 1)) {
                stop = 1;
                break;
              }
            }
            sh_lo = stop;
          }
          __syncthreads();
          if (sh_lo) break;  // uniform
        }
      }
      __syncthreads();  // KS is read (the table takes its place); cp, Ac; eG, a2, decj
      // 3. The rest of the score table: A1's entries (s >= 0).
      for (int64_t idx = tid; idx < Lc * Lc; idx += nth) {
        const int64_t r = idx / Lc, s = idx % Lc;
        if (s < r) w.Sc[r * LP + s] = static_cast<double>(tab[cix * L * L + r * L + s]);
      }
      __syncthreads();
      // 4. The boundaries: a lookup per row (the entry count matters only as empty / not: dla_opens_state).
      if (tid == 0) {
        bool carried = m_in > 0;
        int64_t open_lo = 0, mm = m_in;
        for (int64_t r = 0; r < Lc; ++r) {
          const R I = mm == 0 ? R(0) : static_cast<R>(carried ? w.Ac[r] : w.Sc[r * LP + open_lo]);
          const bool opens = math::dla_opens_state(I, w.p.tau, C, mm);
          if (opens) {
            open_lo = r;
            carried = false;
            mm = 1;
          }
          w.rowI[r] = I;
          w.rowOpen[r] = opens ? 1 : 0;
        }
        sh_lo = carried ? -1 : open_lo;
        sh_open = 1;
      }
      __syncthreads();
      for (int64_t r = tid; r < Lc; r += nth) {
        Ig[it * T + t0 + r] = w.rowI[r];
        buf.O[it * T + t0 + r] = static_cast<uint8_t>(w.rowOpen[r]);
      }
      // 5. The open state at the chunk's end: v2's step 6 for that entry (carried: E S + the chunk's sum over
      //    every row; opened at row lo: the sum over rows lo .. Lc-1), in place (each thread its elements).
      {
        const int64_t lo = sh_lo;
        const bool carries = lo < 0;
        const R E = static_cast<R>(w.decay ? w.eG[Lc - 1] : 1.0);
        const int64_t ndg = (Dk + kDt - 1) / kDt;
        for (int64_t wi = tid; wi < ndg * Dv; wi += nth) {
          const int64_t d0 = (wi / Dv) * kDt, e = wi % Dv;
          const int64_t nd = Dk - d0 < kDt ? Dk - d0 : kDt;
          const bool kvec = Dk % 4 == 0 && nd == kDt;
          R x[kDt];
#pragma unroll
          for (int a = 0; a < kDt; ++a) x[a] = R(0);
          R* s0 = open + d0 * Dv + e;
          if (carries) {
#pragma unroll
            for (int a = 0; a < kDt; ++a)
              if (a < nd) x[a] = s0[a * Dv];
            if (w.decay) {
#pragma unroll
              for (int a = 0; a < kDt; ++a) x[a] = x[a] * E;
            }
          }
          const int64_t j0 = carries ? 0 : lo, j1 = Lc;
          if (j1 > j0) {
            R acc[kDt];
            w.kv_rows(d0, e, nd, kvec, j0, j1, acc);
#pragma unroll
            for (int a = 0; a < kDt; ++a) x[a] = carries ? x[a] + acc[a] : acc[a];
          }
#pragma unroll
          for (int a = 0; a < kDt; ++a)
            if (a < nd) s0[a * Dv] = x[a];
        }
      }
    }
    __syncthreads();  // the next item reuses the shared memory and the open state
  }
}

/// The order-preserving 64-bit key of a merge ratio (v3's warp scan): -0 as +0, NaN never taken.
__device__ __forceinline__ uint64_t v4_ratio_key(double ratio) {
  const uint64_t bits = static_cast<uint64_t>(__double_as_longlong(ratio + 0.0));
  return (bits >> 63) != 0 ? ~bits : bits | (uint64_t(1) << 63);
}

/// Pass B on one warp (or thread 0) per item, grid-stride: the merge chain over all T tokens from pass A's
/// scores and boundaries and the entries' (count, info); writes merged per token, the aux outputs and the
/// cache's counts, info, starts and size.
template <class St>
__device__ void v4_pass_b(const DLAProblem& p, const V4Buf& buf) {
  using R = acc_t<St>;
  const int tid = static_cast<int>(threadIdx.x), nth = static_cast<int>(blockDim.x);
  const int64_t items = p.B * p.H, T = p.T, C = p.C;
  const DLACacheViews& ci = p.cache_in;
  const DLACacheOut& co = p.cache_out;
  const R* Ig = static_cast<const R*>(buf.I);
  const bool warp = C <= 32 && nth >= 32;
  for (int64_t it = blockIdx.x; it < items; it += gridDim.x) {
    const int64_t b = it / p.H, h = it % p.H;
    const int64_t m0 =
        ci.present ? static_cast<const int64_t*>(ci.size.data)[b * ci.size.stride[0] + h * ci.size.stride[1]] : 0;
    auto aux = [&](int64_t t, R I, bool opens, int32_t merged) {
      buf.M[it * T + t] = merged;
      if (p.scores.present) static_cast<R*>(p.scores.data)[at3(p.scores, b, h, t)] = I;
      if (p.boundaries.present) static_cast<uint8_t*>(p.boundaries.data)[at3(p.boundaries, b, h, t)] = opens ? 1 : 0;
      if (p.merged.present) static_cast<int64_t*>(p.merged.data)[at3(p.merged, b, h, t)] = merged;
    };
    if (warp && tid < 32) {
      const unsigned full = 0xffffffffu;
      const int lane = tid, Cc = static_cast<int>(C);
      int64_t cnt = 0, st = 0;
      R inf = R(0);
      if (lane < m0) {
        cnt = static_cast<const int64_t*>(ci.counts.data)[at3(ci.counts, b, h, lane)];
        inf = static_cast<const R*>(ci.info.data)[at3(ci.info, b, h, lane)];
        st = static_cast<const int64_t*>(ci.starts.data)[at3(ci.starts, b, h, lane)];
      }
      int mm = static_cast<int>(m0);
      for (int64_t t0 = 0; t0 < T; t0 += 32) {
        const int nb = T - t0 < 32 ? static_cast<int>(T - t0) : 32;
        R myI = R(0);
        int myO = 0;
        if (lane < nb) {
          myI = Ig[it * T + t0 + lane];
          myO = buf.O[it * T + t0 + lane];
        }
        int32_t myM = -1;
        for (int k = 0; k < nb; ++k) {
          const R I = __shfl_sync(full, myI, k);
          const bool opens = __shfl_sync(full, myO, k) != 0;
          int merged = -1;
          if (opens) {
            if (mm == Cc) {  // v3's warp merge (dla_prefill_v3.cuh scan_warp), C >= 2 here
              const R inf_n = __shfl_down_sync(full, inf, 1);
              const int64_t cnt_n = __shfl_down_sync(full, cnt, 1);
              const int64_t st_n = __shfl_down_sync(full, st, 1);
              const double ratio =
                  (static_cast<double>(inf) + static_cast<double>(inf_n)) / static_cast<double>(cnt + cnt_n);
              const double r0 = __shfl_sync(full, ratio, 0);
              int best = 0;
              if (r0 == r0) {
                uint64_t key = ~uint64_t(0);
                if (lane < mm - 1 && ratio == ratio) key = v4_ratio_key(ratio);
                const unsigned khi = static_cast<unsigned>(key >> 32), klo = static_cast<unsigned>(key & 0xffffffffu);
                const unsigned mhi = __reduce_min_sync(full, khi);
                const unsigned mlo = __reduce_min_sync(full, khi == mhi ? klo : 0xffffffffu);
                const unsigned sel = __ballot_sync(full, khi == mhi && klo == mlo);
                best = __ffs(static_cast<int>(sel)) - 1;
              }
              merged = best;
              if (lane == best) {
                cnt += cnt_n;
                inf += inf_n;
              } else if (lane > best) {
                cnt = cnt_n;
                inf = inf_n;
                st = st_n;
              }
              --mm;
            }
            if (lane == mm) {
              cnt = 1;
              inf = I;
              st = p.position + t0 + k;
            }
            ++mm;
          } else if (lane == mm - 1) {
            cnt += 1;
            inf += I;
          }
          if (lane == k) myM = merged;
        }
        if (lane < nb) aux(t0 + lane, myI, myO != 0, myM);
      }
      if (lane < Cc) {
        const bool used = lane < mm;
        static_cast<int64_t*>(co.counts.data)[at3(co.counts, b, h, lane)] = used ? cnt : 0;
        static_cast<R*>(co.info.data)[at3(co.info, b, h, lane)] = used ? inf : R(0);
        static_cast<int64_t*>(co.starts.data)[at3(co.starts, b, h, lane)] = used ? st : 0;
      }
      if (lane == 0) static_cast<int64_t*>(co.size.data)[b * co.size.stride[0] + h * co.size.stride[1]] = mm;
    } else if (!warp && tid == 0) {  // C > 32 or a block of < 32 threads: v2's scan bookkeeping, serial
      int64_t* count = reinterpret_cast<int64_t*>(buf.ent + static_cast<std::size_t>(blockIdx.x) * buf.ent_bytes);
      int64_t* start = count + C;
      R* info = reinterpret_cast<R*>(start + C);
      int64_t m = m0;
      for (int64_t i = 0; i < m; ++i) {
        count[i] = static_cast<const int64_t*>(ci.counts.data)[at3(ci.counts, b, h, i)];
        info[i] = static_cast<const R*>(ci.info.data)[at3(ci.info, b, h, i)];
        start[i] = static_cast<const int64_t*>(ci.starts.data)[at3(ci.starts, b, h, i)];
      }
      for (int64_t t = 0; t < T; ++t) {
        const R I = Ig[it * T + t];
        const bool opens = buf.O[it * T + t] != 0;
        int64_t merged = -1;
        if (opens) {
          if (m == C) {
            const int64_t i = math::dla_merge_pair(info, count, m);
            merged = i;
            count[i] += count[i + 1];
            info[i] += info[i + 1];
            for (int64_t j = i + 1; j + 1 < m; ++j) {
              count[j] = count[j + 1];
              info[j] = info[j + 1];
              start[j] = start[j + 1];
            }
            --m;
          }
          count[m] = 1;
          info[m] = I;
          start[m] = p.position + t;
          ++m;
        } else {
          count[m - 1] += 1;
          info[m - 1] += I;
        }
        aux(t, I, opens, static_cast<int32_t>(merged));
      }
      for (int64_t i = 0; i < C; ++i) {
        const bool used = i < m;
        static_cast<int64_t*>(co.counts.data)[at3(co.counts, b, h, i)] = used ? count[i] : 0;
        static_cast<R*>(co.info.data)[at3(co.info, b, h, i)] = used ? info[i] : R(0);
        static_cast<int64_t*>(co.starts.data)[at3(co.starts, b, h, i)] = used ? start[i] : 0;
      }
      static_cast<int64_t*>(co.size.data)[b * co.size.stride[0] + h * co.size.stride[1]] = m;
    }
    __syncthreads();
  }
}

/// Q K^T lower triangle of the chunk in v2's kTg x kTg tiles (the same sums as v2's step 2), into w.QK.
template <class St>
__device__ __forceinline__ void v4_qk_tiles(Blk<St>& w, int tid, int nth, int64_t Lc) {
  using R = acc_t<St>;
  const int64_t Dk = w.Dk, LP = w.LP;
  const int64_t nt = (Lc + kTg - 1) / kTg;
  for (int64_t idx = tid; idx < nt * nt; idx += nth) {
    const int64_t ti = idx / nt, tj = idx % nt;
    if (tj > ti) continue;
    const int64_t r0 = ti * kTg, j0 = tj * kTg;
    R qk[kTg][kTg];
#pragma unroll
    for (int a = 0; a < kTg; ++a)
#pragma unroll
      for (int c = 0; c < kTg; ++c) qk[a][c] = R(0);
    for (int64_t d = 0; d < Dk; ++d) {
      const R* kd = w.KT + d * LP;
      const R* qd = w.QT + d * LP;
      R kj[kTg], qr[kTg];
#pragma unroll
      for (int a = 0; a < kTg; ++a) {
        kj[a] = kd[j0 + a];
        qr[a] = qd[r0 + a];
      }
#pragma unroll
      for (int a = 0; a < kTg; ++a)
#pragma unroll
        for (int c = 0; c < kTg; ++c) qk[a][c] += qr[a] * kj[c];
    }
#pragma unroll
    for (int a = 0; a < kTg; ++a)
#pragma unroll
      for (int c = 0; c < kTg; ++c) {
        const int64_t r = r0 + a, j = j0 + c;
        if (r < Lc && j <= r) w.QK[r * LP + j] = qk[a][c];
      }
  }
}

/// Thread 0: the chunk's entry list replayed from the rows' boundaries and pass B's merged pairs (no ratio, no
/// division): unit[i] = the first unit of entry i (units: the m_in entries at the chunk start, then the chunk's
/// rows m_in + r), in_slot[u] = base + u (entry u's state at the chunk start, chronological in the chunk-start
/// array), death[u] = the row at which unit u stopped starting an entry (with_death; the readout's snapshots).
/// Returns the entry count at the chunk's end.
template <class St>
__device__ int64_t v4_replay(Blk<St>& w, int64_t Lc, int64_t m_in, int64_t base, bool with_death) {
  for (int64_t u = 0; u < m_in; ++u) {
    w.in_slot[u] = base + u;
    w.unit[u] = u;
  }
  int64_t m = m_in;
  for (int64_t r = 0; r < Lc; ++r) {
    if (!w.rowOpen[r]) continue;
    const int64_t i = w.rowMerged[r];
    if (i >= 0) {
      if (with_death) w.death[w.unit[i + 1]] = static_cast<int32_t>(r);
      for (int64_t j = i + 1; j + 1 < m; ++j) w.unit[j] = w.unit[j + 1];
      --m;
    }
    w.unit[m] = m_in + r;
    ++m;
  }
  return m;
}

/// Elements of one item's chunk-start states in V4Buf::chs: (nch + 1) chunk starts x C entries x Dk x Dv.
__device__ __forceinline__ int64_t v4_chs_item(const V4Buf& buf, int64_t C, int64_t SS) {
  return (buf.nch + 1) * C * SS;
}

/// Pass C1 on one block per (item of the group, column slice), grid-stride: the states only, serial over the
/// chunks (the short chain): per chunk K and V (no Q, no lam), the entry list replayed (v4_replay), and v2's
/// step 6 arithmetic (chunk_end_states) from the entries at the chunk's start (chunk-start array n) into the
/// entries at its end (array n + 1), the slice's columns; the entry count at every chunk start into buf.mc
/// (slice 0). Then the cache's states (the slice's columns) from array nch.
template <class St>
__device__ void v4_pass_c1(const DLAProblem& p, const Lay& lay, const V4Buf& buf, char* sm) {
  using R = acc_t<St>;
  __shared__ int64_t sh_mc;
  const int tid = static_cast<int>(threadIdx.x), nth = static_cast<int>(blockDim.x);
  Blk<St> w(p, lay, sm, buf.chs);
  const int64_t C = w.C, Dk = w.Dk, Dv = w.Dv, SS = w.SS, L = w.L, T = p.T, nch = buf.nch;
  const int64_t ns = lay.ns, ncol = lay.ncol, per_item = v4_chs_item(buf, C, SS);
  const DLACacheViews& ci = p.cache_in;
  const DLACacheOut& co = p.cache_out;

  for (int64_t wk = blockIdx.x; wk < buf.nitems * ns; wk += gridDim.x) {
    const int64_t li = wk / ns, slice = wk % ns, it = buf.item0 + li;
    const int64_t b = it / p.H, h = it % p.H;
    const int64_t e0 = slice * ncol, e1 = e0 + ncol < Dv ? e0 + ncol : Dv, ncw = e1 - e0;
    w.b = b;
    w.h = h;
    w.slots = reinterpret_cast<R*>(buf.chs) + li * per_item;
    const int64_t m0 =
        ci.present ? static_cast<const int64_t*>(ci.size.data)[b * ci.size.stride[0] + h * ci.size.stride[1]] : 0;
    if (tid == 0) sh_mc = m0;
    if (m0 > 0) {  // the slice's columns of the carried states: chunk-start array 0
      const R* in = static_cast<const R*>(ci.states.data) + b * ci.states.stride[0] + h * ci.states.stride[1];
      for (int64_t idx = tid; idx < m0 * Dk * ncw; idx += nth) {
        const int64_t i = idx / (Dk * ncw), d = (idx / ncw) % Dk, e = e0 + idx % ncw;
        w.slots[i * SS + d * Dv + e] = in[i * ci.states.stride[2] + d * ci.states.stride[3] + e * ci.states.stride[4]];
      }
    }

    for (int64_t n = 0; n < nch; ++n) {
      const int64_t t0 = n * L, Lc = T - t0 < L ? T - t0 : L;
      __syncthreads();  // the previous chunk (or the cache load) is complete
      const int64_t m_in = sh_mc;
      // 1. K^T, K, V^T, V of the chunk (v3's batched loads), the rows' boundaries and merges.
      v4_load_k(w, p, b, h, tid, nth, t0, Lc);
      load_v_batched(w, p, b, h, tid, nth, t0, Lc);
      for (int64_t r = tid; r < Lc; r += nth) {
        w.rowOpen[r] = buf.O[it * T + t0 + r];
        w.rowMerged[r] = buf.M[it * T + t0 + r];
      }
      w.decay_sums(tid, t0, Lc);
      __syncthreads();
      const bool factored = w.decay && w.G[0] - w.G[Lc - 1] <= 600.0;
      w.decay_exps(tid, nth, t0, Lc, factored, false);
      // 2. The entry lists (thread 0): chunk-start array n in, array n + 1 out (chronological).
      if (tid == 0) {
        if (slice == 0) buf.mc[li * (nch + 1) + n] = static_cast<int32_t>(m_in);
        const int64_t m = v4_replay(w, Lc, m_in, n * C, false);
        for (int64_t i = 0; i < m; ++i) w.slot[i] = (n + 1) * C + i;
        sh_mc = m;
      }
      __syncthreads();  // the lists; er, fj for decj
      const int64_t m_out = sh_mc;
      if (w.decay)
        for (int64_t j = tid; j < Lc; j += nth) w.decj[j] = static_cast<R>(w.dec(factored, Lc - 1, j));
      __syncthreads();
      // 3. States at the chunk's end, the slice's columns (v2's step 6 arithmetic; reads array n, writes n + 1).
      w.chunk_end_states(tid, nth, e0, ncw, Lc, m_in, m_out);
    }
    __syncthreads();
    // The cache's states, the slice's columns (chronological, unused entries zero); pass B wrote the rest.
    {
      const int64_t mf = sh_mc;
      if (tid == 0 && slice == 0) buf.mc[li * (nch + 1) + nch] = static_cast<int32_t>(mf);
      const R* fin = w.slots + nch * C * SS;
      R* outs = static_cast<R*>(co.states.data) + b * co.states.stride[0] + h * co.states.stride[1];
      for (int64_t idx = tid; idx < C * Dk * ncw; idx += nth) {
        const int64_t i = idx / (Dk * ncw), d = (idx / ncw) % Dk, e = e0 + idx % ncw;
        outs[i * co.states.stride[2] + d * co.states.stride[3] + e * co.states.stride[4]] =
            i < mf ? fin[i * SS + d * Dv + e] : R(0);
      }
    }
    __syncthreads();  // the next work unit reuses the shared memory
  }
}

/// Pass C2 on one block per (item of the group, chunk, column slice of buf.ns2), grid-stride, every chunk at
/// once: v2's readout (steps 2, 4, 5: Q K^T tiles, snapshots, readout weights, outputs) of the chunk from the
/// entries' states at its start (C1's chunk-start array n, read-only) and the entry list replayed from pass A's
/// boundaries and pass B's merges; writes y of the chunk's rows, the slice's columns.
template <class St>
__device__ void v4_pass_c2(const DLAProblem& p, const Lay& lay, const V4Buf& buf, char* sm) {
  using R = acc_t<St>;
  const int tid = static_cast<int>(threadIdx.x), nth = static_cast<int>(blockDim.x);
  Blk<St> w(p, lay, sm, buf.chs);
  const int64_t C = w.C, Dk = w.Dk, Dv = w.Dv, SS = w.SS, L = w.L, LP = w.LP, T = p.T, nch = buf.nch;
  const int64_t ns2 = buf.ns2, ncol2 = buf.ncol2, per_item = v4_chs_item(buf, C, SS);

  for (int64_t wk = blockIdx.x; wk < buf.nitems * nch * ns2; wk += gridDim.x) {
    const int64_t li = wk / (nch * ns2), n = (wk / ns2) % nch, slice = wk % ns2, it = buf.item0 + li;
    const int64_t b = it / p.H, h = it % p.H;
    const int64_t e0 = slice * ncol2, e1 = e0 + ncol2 < Dv ? e0 + ncol2 : Dv, ncw = e1 - e0;
    const int64_t t0 = n * L, Lc = T - t0 < L ? T - t0 : L;
    w.b = b;
    w.h = h;
    w.slots = reinterpret_cast<R*>(buf.chs) + li * per_item;
    const int64_t m_in = buf.mc[li * (nch + 1) + n];
    __syncthreads();  // the previous work unit is done with the shared memory
    // 1. Q^T, K^T (rows Lc .. LP-1 zero), V row-major and the lambdas of the chunk (v3's batched loads), the
    //    rows' boundaries and merges.
    {
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
      });
      batched(Lc * Dv, tid, nth, [&](int64_t idx) {
        const int64_t r = idx / Dv, e = idx - r * Dv;
        return ld<St>(p.v.data, at3(p.v, b, h, t0 + r) + e * p.v.stride[3]);
      }, [&](int64_t idx, R x) { w.Vc[idx] = x; });
      batched(Lc * C, tid, nth, [&](int64_t idx) {
        const int64_t r = idx / C, c = idx - r * C;
        return ld<St>(p.lam.data, at3(p.lam, b, h, t0 + r) + c * p.lam.stride[3]);
      }, [&](int64_t idx, R x) { w.lamc[idx] = x; });
    }
    for (int64_t r = tid; r < Lc; r += nth) {
      w.rowOpen[r] = buf.O[it * T + t0 + r];
      w.rowMerged[r] = buf.M[it * T + t0 + r];
    }
    for (int64_t u = tid; u < m_in + Lc; u += nth) w.death[u] = 0x7fffffff;
    w.decay_sums(tid, t0, Lc);
    __syncthreads();
    const bool factored = w.decay && w.G[0] - w.G[Lc - 1] <= 600.0;
    w.decay_exps(tid, nth, t0, Lc, factored, false);
    // 2. Q K^T (v2's tiles); the entry lists replayed by thread 0 meanwhile.
    v4_qk_tiles(w, tid, nth, Lc);
    if (tid == 0) (void)v4_replay(w, Lc, m_in, n * C, true);
    __syncthreads();  // QK, the lists and deaths; er, fj for the weights
    for (int64_t r = tid; r < Lc; r += nth) w.snapshot(r, m_in);
    __syncthreads();
    // 3. Readout weights (v2's), one (row r, unit U <= m_in + r) per thread.
    readout_weights(w, tid, nth, Lc, m_in, factored);
    __syncthreads();
    used_states(w, tid, nth, Lc, m_in);
    __syncthreads();
    // 4. Outputs of the slice's columns (v2's step 5), the carried states from chunk-start array n.
    chunk_outputs(w, p, b, h, tid, nth, e0, ncw, t0, Lc, m_in);
  }
}
