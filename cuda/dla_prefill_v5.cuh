#pragma once
// DLA prefill v5: v4 (dla_prefill_v4.cuh) with its passes C1 and C2 fused into ONE pass, v5_pass_c ("dla_prefill_v5",
// gated in cuda/runtime.cu kCompiled; launch_prefill_v4 takes it when has_kernel("dla_prefill_v5"), ATTNKIT_DLA_V5 is
// not "0" (read once), tuning dla_split != -2 (v4's C1 + C2 beside it, split automatic) and its layout fits in the
// device's shared memory; else v4's C1 + C2 run, as before). Passes A1, A2 and B are v4's, unchanged.
//
// Why. v4's C1 writes every entry's state at EVERY chunk start to global memory ((chunks + 1) x C x Dk x Dv per
// item: 1.09 GB at B = 4, H = 16, S = 4096, C = 16, D = 64) and C2 reads them back: the H200 profile of session 27
// (ncu, gpu_profile.py's config) measured C1 3168 us with 1063 MB written, C2 4863 us with 2160 MB read, 8.0 of the
// call's 14.5 ms. v5_pass_c keeps the states of one column slice of one item in SHARED MEMORY and walks the item's
// chunks in order: per chunk the readout of the chunk from the states at its start (C2's work), then the states
// at its end, in place (C1's work). Nothing but the inputs, y and the cache's states touches global memory.
//
// Work mapping: one block per (item, column slice of ncol2 = ceil(Dv / ns2) columns), grid-stride; the slice's
// states, C x Dk x ncol2 (R), after the readout layout (make_lay part 2). ns2: the smallest split whose states fit
// beside the layout and whose slices are at most 32 columns (the readout's work items, kRt rows x 1 column, then
// fill at most kThreads: 8 row groups x 32 columns at L = 64), doubled while the blocks stay under half the SMs;
// tuning dla_split > 0 asks for that split instead (at least the smallest that fits). Float32 states, D = 64,
// C = 16, L = 64: 2 slices of 32 columns, 89.7 KB of layout + 128 KB of states = 215.6 KB, one block per SM.
//
// Exactness. Every value is formed by v4's operations in v4's order: the readout is chunk_outputs' arithmetic on
// the same states (only their address changes: compact slice rows instead of Dk x Dv slots; and kUb states' sums
// over d are formed side by side, each in its own order), the state update is
// chunk_end_states' (the K rows from K^T instead of the row-major copy: the same values, the same sums), the lists
// are v4_replay's. So v5 gives v4's bits, whatever the split or grid (tests/cuda_emu/test_dla_v2.cpp checks v5 ==
// v4 bit for bit under several splits and grids, emulated, and both against the CPU).
//
// In place. The update writes entry i (chronological, at the chunk's end) over position i. Entry i's carried
// units are positions unit[i] .. (the next entry's first unit) - 1, and unit[i] >= i (every entry holds a unit), so
// no entry reads a position an earlier entry of the same thread has written; every (state row, column) element is
// one thread's, which runs the entries holding carried units first (pass 0: a prefix of the list), then those of
// chunk tokens only. One barrier separates the readout (which reads every row of a column) from the update.
//
// Expected time: an ESTIMATE, NOT MEASURED. H200, float16, B = 4, H = 16, D = 64, C = 16, S = 4096 (64 chunks),
// random data (a merge at nearly every token): 128 blocks (64 items x 2 slices), one per SM, 8 warps. Per chunk:
// loads of Q, K, V, lam (L2) ~8K cycles; Q K^T tiles ~5K; snapshots, weights, anyU ~12K; readout, 8 rows x 1 column
// per thread over m_in x Dk = 1024 (state, d) steps, 8 FMA each, the Q loads shared by kUb = 4 states (2 LDS.128
// broadcasts + 4 LDS per 32 FMA): FMA-issue bound, 8 warps x 1024 x 8 FMA / 4 schedulers ~16K (chunk_outputs'
// loop, 3 wavefronts per 8 FMA, would be shared-memory bound at ~25K); state update ~4K; barriers ~3K: ~48K cycles =
// ~24 us; 64 chunks ~1.6 ms (vs C1 + C2's measured 8.0 ms), so ~8 ms per call instead of 14.5 (~1.8x). Traffic: the inputs once per slice (~150 MB, L2 absorbs
// part), y 33 MB: ~0.05 ms of HBM instead of ~3.3 GB. What bounds v5 then: A2 (2.8 ms) and B (2.0 ms), per-item
// serial chains on 64 blocks / warps, and A1 (1.7 ms); at S = 16384 all four scale with S (~34 ms estimated vs
// exact causal's measured 8.0 ms): issue 10's target needs those chains shortened (B inside A2; A2's rounds
// overlapped) and the readout on tensor cores (3xTF32 / split bf16), not this pass alone.

// No namespaces here: dla_prefill_v2.cu includes this inside attnkit::detail::cuda::dla::v2.

/// Carried states per step of v5's readout: kUb units' sums over d at once, so that each load of Q^T (two 16-byte
/// broadcasts per d) serves kUb states (chunk_outputs: one state per load, 3 shared-memory wavefronts per 8 FMA;
/// here 2 + kUb per 8 kUb FMA). Each output element's operations and their order are chunk_outputs': acc_u over d
/// in order, then y += w_ru acc_u in unit order, skipped units never added.
constexpr int kUb = 4;

/// v5's readout (chunk_outputs' arithmetic, the states from the slice array st: entry u's row d, column c at
/// st[(u * Dk + d) * ncol2 + c]): y of the chunk's rows, the slice's columns e0 .. e0 + ncw - 1.
template <class St>
__device__ __forceinline__ void v5_outputs(Blk<St>& w, const DLAProblem& p, int64_t b, int64_t h, int tid, int nth,
                                           const acc_t<St>* st, int64_t ncol2, int64_t e0, int64_t ncw, int64_t t0,
                                           int64_t Lc, int64_t m_in) {
  using R = acc_t<St>;
  const int64_t C = w.C, Dk = w.Dk, Dv = w.Dv, LP = w.LP;
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
    for (int64_t u0 = 0; u0 < m_in; u0 += kUb) {
      const R* S[kUb];
      R acc[kUb][kRt];
#pragma unroll
      for (int k = 0; k < kUb; ++k) {
        // units past m_in read unit u0's state (in range) and are never added
        S[k] = st + w.in_slot[u0 + k < m_in ? u0 + k : u0] * Dk * ncol2 + c;
#pragma unroll
        for (int a = 0; a < kRt; ++a) acc[k][a] = R(0);
      }
      for (int64_t d = 0; d < Dk; ++d) {
        R q8[kRt];
        load_rows(w.QT + d * LP + r0, q8);  // rows past Lc are zero
#pragma unroll
        for (int k = 0; k < kUb; ++k) {
          const R sd = S[k][d * ncol2];
#pragma unroll
          for (int a = 0; a < kRt; ++a) acc[k][a] += q8[a] * sd;
        }
      }
#pragma unroll
      for (int k = 0; k < kUb; ++k) {
        const int64_t u = u0 + k;
        if (u >= m_in || !w.anyU[u]) continue;  // the CPU skips a state no row weights
#pragma unroll
        for (int a = 0; a < kRt; ++a) {
          const R wr = r0 + a < Lc ? w.Win[(r0 + a) * C + u] : R(0);
          y[a] += wr * acc[k][a];
        }
      }
    }
#pragma unroll
    for (int a = 0; a < kRt; ++a)
      if (r0 + a < Lc)
        static_cast<St*>(p.out.data)[at3(p.out, b, h, t0 + r0 + a) + e * p.out.stride[3]] = from_acc<St>(y[a]);
  }
}

/// v5's state update (chunk_end_states' arithmetic, in place in the slice array st, see the file comment): the
/// m_out entries at the chunk's end from the m_in at its start and the chunk's Lc rows (w.unit from v4_replay).
template <class St>
__device__ __forceinline__ void v5_end_states(Blk<St>& w, int tid, int nth, acc_t<St>* st, int64_t ncol2, int64_t e0,
                                              int64_t ncw, int64_t Lc, int64_t m_in, int64_t m_out) {
  using R = acc_t<St>;
  const int64_t Dk = w.Dk;
  const R E = static_cast<R>(w.decay ? w.eG[Lc - 1] : 1.0);
  const int64_t ndg = (Dk + kDt - 1) / kDt;
  for (int64_t wi = tid; wi < ndg * ncw; wi += nth) {
    const int64_t d0 = (wi / ncw) * kDt, c = wi % ncw, e = e0 + c;
    const int64_t nd = Dk - d0 < kDt ? Dk - d0 : kDt;
    for (int pass = 0; pass < 2; ++pass)
      for (int64_t i = 0; i < m_out; ++i) {
        const int64_t ulo = w.unit[i], uhi = i + 1 < m_out ? w.unit[i + 1] : m_in + Lc;
        const bool carries = ulo < m_in;
        if (carries != (pass == 0)) continue;
        R x[kDt];
#pragma unroll
        for (int a = 0; a < kDt; ++a) x[a] = R(0);
        if (carries) {
          const R* s0 = st + (ulo * Dk + d0) * ncol2 + c;
#pragma unroll
          for (int a = 0; a < kDt; ++a)
            if (a < nd) x[a] = s0[a * ncol2];
          const int64_t ue = uhi < m_in ? uhi : m_in;
          for (int64_t u = ulo + 1; u < ue; ++u) {
            const R* su = st + (u * Dk + d0) * ncol2 + c;
#pragma unroll
            for (int a = 0; a < kDt; ++a)
              if (a < nd) x[a] = x[a] + su[a * ncol2];
          }
          if (w.decay) {
#pragma unroll
            for (int a = 0; a < kDt; ++a) x[a] = x[a] * E;
          }
        }
        const int64_t j0 = (ulo > m_in ? ulo : m_in) - m_in, j1 = uhi - m_in;
        if (j1 > j0) {
          R acc[kDt];
          w.kv_rows(d0, e, nd, false, j0, j1, acc);  // K rows from K^T (the readout layout has no row-major K)
#pragma unroll
          for (int a = 0; a < kDt; ++a) x[a] = carries ? x[a] + acc[a] : acc[a];
        }
        R* dst = st + (i * Dk + d0) * ncol2 + c;
#pragma unroll
        for (int a = 0; a < kDt; ++a)
          if (a < nd) dst[a * ncol2] = x[a];
      }
  }
}

/// Pass C of v5 on one block per (item of the group, column slice of buf.ncol2 columns), grid-stride, serial over
/// the item's chunks: per chunk v4's C2 readout from the slice's states at the chunk start (shared memory at byte
/// st_off of sm), then v4's C1 update of those states to the chunk's end, in place; at the end the cache's states
/// (the slice's columns; pass B wrote the rest of the cache).
template <class St>
__device__ void v5_pass_c(const DLAProblem& p, const Lay& lay, const V4Buf& buf, char* sm, std::size_t st_off) {
  using R = acc_t<St>;
  __shared__ int64_t sh_m;
  const int tid = static_cast<int>(threadIdx.x), nth = static_cast<int>(blockDim.x);
  Blk<St> w(p, lay, sm, nullptr);
  R* st = reinterpret_cast<R*>(sm + st_off);
  const int64_t C = w.C, Dk = w.Dk, Dv = w.Dv, L = w.L, LP = w.LP, T = p.T, nch = buf.nch;
  const int64_t ns2 = buf.ns2, ncol2 = buf.ncol2;
  const DLACacheViews& ci = p.cache_in;
  const DLACacheOut& co = p.cache_out;

  for (int64_t wk = blockIdx.x; wk < buf.nitems * ns2; wk += gridDim.x) {
    const int64_t li = wk / ns2, slice = wk % ns2, it = buf.item0 + li;
    const int64_t b = it / p.H, h = it % p.H;
    const int64_t e0 = slice * ncol2, e1 = e0 + ncol2 < Dv ? e0 + ncol2 : Dv, ncw = e1 - e0;
    w.b = b;
    w.h = h;
    __syncthreads();  // the previous work unit is done with the shared memory
    const int64_t m0 =
        ci.present ? static_cast<const int64_t*>(ci.size.data)[b * ci.size.stride[0] + h * ci.size.stride[1]] : 0;
    if (tid == 0) sh_m = m0;
    if (m0 > 0) {  // the slice's columns of the carried states
      const R* in = static_cast<const R*>(ci.states.data) + b * ci.states.stride[0] + h * ci.states.stride[1];
      for (int64_t idx = tid; idx < m0 * Dk * ncw; idx += nth) {
        const int64_t i = idx / (Dk * ncw), d = (idx / ncw) % Dk, c = idx % ncw;
        st[(i * Dk + d) * ncol2 + c] =
            in[i * ci.states.stride[2] + d * ci.states.stride[3] + (e0 + c) * ci.states.stride[4]];
      }
    }

    for (int64_t n = 0; n < nch; ++n) {
      const int64_t t0 = n * L, Lc = T - t0 < L ? T - t0 : L;
      __syncthreads();  // the previous chunk (or the cache load) is complete
      const int64_t m_in = sh_m;
      // 1. Q^T, K^T (rows Lc .. LP-1 zero), V row-major and the lambdas of the chunk (batched loads, as C2), the
      //    rows' boundaries (pass A2) and merges (pass B).
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
      __syncthreads();  // every thread has read m_in; the chunk's arrays, G
      const bool factored = w.decay && w.G[0] - w.G[Lc - 1] <= 600.0;
      w.decay_exps(tid, nth, t0, Lc, factored, false);
      // 2. Q K^T (v2's tiles); the entry lists replayed by thread 0 meanwhile (carried entry u at position u).
      v4_qk_tiles(w, tid, nth, Lc);
      if (tid == 0) sh_m = v4_replay(w, Lc, m_in, 0, true);
      __syncthreads();  // QK, the lists and deaths, the entry count at the chunk's end; er, fj
      const int64_t m_out = sh_m;
      for (int64_t r = tid; r < Lc; r += nth) w.snapshot(r, m_in);
      if (w.decay)
        for (int64_t j = tid; j < Lc; j += nth) w.decj[j] = static_cast<R>(w.dec(factored, Lc - 1, j));
      __syncthreads();
      // 3. Readout weights (v2's), one (row r, unit U <= m_in + r) per thread; the states no row weights.
      readout_weights(w, tid, nth, Lc, m_in, factored);
      __syncthreads();
      used_states(w, tid, nth, Lc, m_in);
      __syncthreads();
      // 4. Outputs of the slice's columns from the states at the chunk's start.
      v5_outputs(w, p, b, h, tid, nth, st, ncol2, e0, ncw, t0, Lc, m_in);
      __syncthreads();  // every state is read: now they may be overwritten
      // 5. The states at the chunk's end, the slice's columns, in place.
      v5_end_states(w, tid, nth, st, ncol2, e0, ncw, Lc, m_in, m_out);
    }
    __syncthreads();
    // The cache's states, the slice's columns (chronological, unused entries zero).
    {
      const int64_t mf = sh_m;
      R* outs = static_cast<R*>(co.states.data) + b * co.states.stride[0] + h * co.states.stride[1];
      for (int64_t idx = tid; idx < C * Dk * ncw; idx += nth) {
        const int64_t i = idx / (Dk * ncw), d = (idx / ncw) % Dk, c = idx % ncw;
        outs[i * co.states.stride[2] + d * co.states.stride[3] + (e0 + c) * co.states.stride[4]] =
            i < mf ? st[(i * Dk + d) * ncol2 + c] : R(0);
      }
    }
  }
}
