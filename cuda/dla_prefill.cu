// Dynamic linear attention on the GPU, the chunked form (prefill, and every call the decode kernel does not
// take): cpu/dla_prefill.h step for step, with the same chunk boundaries (L = dla_chunk, else 64, at most
// T), the same scalar scan deciding boundaries and merges, and the same merge order.
//
// One block of kThreads per (batch, head) item (grid-stride over the items); its cache lives in the block's
// global scratch (C state slots of Dk x Dv and the entry list). Per chunk of Lc tokens:
//   1. all threads: the chunk's Q, K, V, lam as the accumulator type; thread 0 the cumulative log-decay G,
//      then per row r: e^{G_r}, e^{2 g_r} and the factored pair decays (the CPU's formulas);
//   2. all threads: the Gram lower triangles K K^T, V V^T (double: they decide boundaries) and Q K^T, one
//      (r, j) entry per thread; the carried open state's k_r^T S v_r (one warp per row r, lanes along Dv,
//      double) and ||S_open||^2 (block sum, double);
//   3. thread 0: the scalar scan over the chunk's tokens (the CPU's loop verbatim: scores, boundaries,
//      merges, the per-token outputs), recording the entry list after each token (snapshots), then the slot
//      plan of the chunk's end;
//   4. one thread per row: the readout weights P (tokens) and Win (carried states) from the snapshots;
//   5. one thread per output element (r, e): y = sum_j P_rj v_j + sum_u Win_ru q_r^T S_u;
//   6. one thread per state element (d, e): every entry's state at the chunk's end, entries in the CPU's
//      order (those holding carried states first), so a slot is read before it is reused.
// Every reduction is a fixed loop of one thread or a fixed tree (block_sum / warp_sum): deterministic.

#include "cuda/dla_common.cuh"
#include "cuda/workspace.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
namespace dla {
namespace {

/// One block's scratch: byte offsets from its base, and its size.
struct Layout {
  int64_t L;  ///< chunk length
  std::size_t bytes;
  std::size_t slots, Qc, Kc, Vc, lamc, Win, QK, P, decj, info;  // accumulator type
  std::size_t KK, VV, G, eG, er, fj, cp, a2;                    // double
  std::size_t slot, count, start, unit, in_slot, free_, snap_unit, snap_m, anyU;  // int64
};

Layout make_layout(const DLAProblem& p, std::size_t rsize) {
  Layout l{};
  l.L = p.chunk_size > 0 ? p.chunk_size : kDefaultChunk;
  if (l.L > p.T) l.L = p.T > 0 ? p.T : 1;
  const std::size_t L = static_cast<std::size_t>(l.L), C = static_cast<std::size_t>(p.C);
  const std::size_t Dk = static_cast<std::size_t>(p.Dk), Dv = static_cast<std::size_t>(p.Dv);
  std::size_t used = 0;
  auto take = [&](std::size_t n, std::size_t esize) {
    const std::size_t at = used;
    used += (n * esize + 255) / 256 * 256;
    return at;
  };
  l.slots = take(C * Dk * Dv, rsize);
  l.Qc = take(L * Dk, rsize);
  l.Kc = take(L * Dk, rsize);
  l.Vc = take(L * Dv, rsize);
  l.lamc = take(L * C, rsize);
  l.Win = take(L * C, rsize);
  l.QK = take(L * L, rsize);
  l.P = take(L * L, rsize);
  l.decj = take(L, rsize);
  l.info = take(C, rsize);
  l.KK = take(L * L, sizeof(double));
  l.VV = take(L * L, sizeof(double));
  l.G = take(L, sizeof(double));
  l.eG = take(L, sizeof(double));
  l.er = take(L, sizeof(double));
  l.fj = take(L, sizeof(double));
  l.cp = take(L, sizeof(double));
  l.a2 = take(L, sizeof(double));
  l.slot = take(C, sizeof(int64_t));
  l.count = take(C, sizeof(int64_t));
  l.start = take(C, sizeof(int64_t));
  l.unit = take(C, sizeof(int64_t));
  l.in_slot = take(C, sizeof(int64_t));
  l.free_ = take(C, sizeof(int64_t));
  l.snap_unit = take(L * C, sizeof(int64_t));
  l.snap_m = take(L, sizeof(int64_t));
  l.anyU = take(C, sizeof(int64_t));
  l.bytes = used;
  return l;
}

/// One block's view of its scratch and of the problem, for item (b, h).
template <class St>
struct Block {
  using R = acc_t<St>;
  const DLAProblem& p;
  int64_t L, C, Dk, Dv, SS, b = 0, h = 0;
  bool decay;
  double n;
  R *slots, *Qc, *Kc, *Vc, *lamc, *Win, *QK, *P, *decj, *info;
  double *KK, *VV, *G, *eG, *er, *fj, *cp, *a2;
  int64_t *slot, *count, *start, *unit, *in_slot, *free_, *snap_unit, *snap_m, *anyU;

  __device__ Block(const DLAProblem& pr, const Layout& l, char* base)
      : p(pr), L(l.L), C(pr.C), Dk(pr.Dk), Dv(pr.Dv), SS(pr.Dk * pr.Dv), decay(pr.log_decay.present),
        n(static_cast<double>(pr.Dk) * static_cast<double>(pr.Dv)) {
    slots = reinterpret_cast<R*>(base + l.slots);
    Qc = reinterpret_cast<R*>(base + l.Qc);
    Kc = reinterpret_cast<R*>(base + l.Kc);
    Vc = reinterpret_cast<R*>(base + l.Vc);
    lamc = reinterpret_cast<R*>(base + l.lamc);
    Win = reinterpret_cast<R*>(base + l.Win);
    QK = reinterpret_cast<R*>(base + l.QK);
    P = reinterpret_cast<R*>(base + l.P);
    decj = reinterpret_cast<R*>(base + l.decj);
    info = reinterpret_cast<R*>(base + l.info);
    KK = reinterpret_cast<double*>(base + l.KK);
    VV = reinterpret_cast<double*>(base + l.VV);
    G = reinterpret_cast<double*>(base + l.G);
    eG = reinterpret_cast<double*>(base + l.eG);
    er = reinterpret_cast<double*>(base + l.er);
    fj = reinterpret_cast<double*>(base + l.fj);
    cp = reinterpret_cast<double*>(base + l.cp);
    a2 = reinterpret_cast<double*>(base + l.a2);
    slot = reinterpret_cast<int64_t*>(base + l.slot);
    count = reinterpret_cast<int64_t*>(base + l.count);
    start = reinterpret_cast<int64_t*>(base + l.start);
    unit = reinterpret_cast<int64_t*>(base + l.unit);
    in_slot = reinterpret_cast<int64_t*>(base + l.in_slot);
    free_ = reinterpret_cast<int64_t*>(base + l.free_);
    snap_unit = reinterpret_cast<int64_t*>(base + l.snap_unit);
    snap_m = reinterpret_cast<int64_t*>(base + l.snap_m);
    anyU = reinterpret_cast<int64_t*>(base + l.anyU);
  }

  __device__ __forceinline__ double log_decay(int64_t t) const {
    return load_float<double>(p.log_decay.data, p.log_decay.dtype, at3(p.log_decay, b, h, t));
  }

  /// exp(G_r - G_j) for j <= r in the chunk, in double (the CPU's dec()).
  __device__ __forceinline__ double dec(bool factored, int64_t r, int64_t j) const {
    if (!decay) return 1.0;
    return factored ? er[r] * fj[j] : exp(G[r] - G[j]);
  }

  /// Thread 0: step 4's merge of the pair chosen by math/dla.h in the entry list (cpu/dla_cache.h
  /// merge_entries without states: the chunk's end merges those through the units). Returns the pair index.
  __device__ int64_t merge_entries(int64_t& m) {
    const int64_t i = math::dla_merge_pair(info, count, m);
    count[i] += count[i + 1];
    info[i] += info[i + 1];
    for (int64_t j = i + 1; j + 1 < m; ++j) {
      slot[j] = slot[j + 1];
      count[j] = count[j + 1];
      info[j] = info[j + 1];
      start[j] = start[j + 1];
      unit[j] = unit[j + 1];
    }
    --m;
    return i;
  }

  /// Thread 0: the scalar scan of chunk [t0, t0 + Lc) (cpu/dla_prefill.h chunk(), its loop over r), then the
  /// slot of every entry at the chunk's end (the CPU's two passes, on the entry list only). m and nfree are
  /// thread 0's running entry count and free-slot stack height.
  __device__ void scan(int64_t t0, int64_t Lc, int64_t m_in, double A_open, bool factored, int64_t& m,
                       int64_t& nfree) {
    for (int64_t u = 0; u < m_in; ++u) {
      in_slot[u] = slot[u];
      unit[u] = u;
    }
    double A_after = m_in > 0 ? A_open : 0.0;
    bool carried = m_in > 0;
    int64_t open_lo = 0;
    for (int64_t r = 0; r < Lc; ++r) {
      const double A = (decay ? a2[r] : 1.0) * A_after;
      const double* kkr = KK + r * L;
      const double* vvr = VV + r * L;
      double pr = carried ? (decay ? eG[r] : 1.0) * cp[r] : 0.0;
      for (int64_t j = open_lo; j < r; ++j) pr += dec(factored, r, j) * kkr[j] * vvr[j];
      const double Bv = kkr[r] * vvr[r];
      const double score = m > 0 ? math::dla_info_score(p.state_drift, A, Bv, pr, n) : 0.0;
      const R I = static_cast<R>(score);
      const bool opens = math::dla_opens_state(I, p.tau, C, m);
      int64_t merged = -1;
      if (opens) {
        if (m == C) merged = merge_entries(m);
        count[m] = 1;
        info[m] = I;
        start[m] = p.position + t0 + r;
        unit[m] = m_in + r;
        ++m;
        open_lo = r;
        carried = false;
        A_after = Bv;
      } else {
        count[m - 1] += 1;
        info[m - 1] += I;
        A_after = math::dla_joined_sq_norm(A, Bv, pr);
      }
      const int64_t t = t0 + r;
      if (p.scores.present) static_cast<R*>(p.scores.data)[at3(p.scores, b, h, t)] = I;
      if (p.boundaries.present) static_cast<uint8_t*>(p.boundaries.data)[at3(p.boundaries, b, h, t)] = opens ? 1 : 0;
      if (p.merged.present) static_cast<int64_t*>(p.merged.data)[at3(p.merged, b, h, t)] = merged;
      snap_m[r] = m;
      for (int64_t i = 0; i < m; ++i) snap_unit[r * C + i] = unit[i];
    }
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

  /// Row r's readout weights (step 5, after row r's insert): P[r][j] for the chunk's tokens j <= r, Win[r][u]
  /// for the carried units u < m_in; from the entry list snapshot of row r.
  __device__ void weights(int64_t r, int64_t m_in, bool factored) {
    const int64_t m = snap_m[r];
    const int64_t* units = snap_unit + r * C;
    const R* qkr = QK + r * L;
    R* prow = P + r * L;
    R* wrow = Win + r * C;
    for (int64_t i = 0; i < m; ++i) {
      const double li = static_cast<double>(lamc[r * C + math::dla_lam_index(i, m)]);
      const int64_t ulo = units[i], uhi = i + 1 < m ? units[i + 1] : m_in + r + 1;
      const int64_t umid = uhi < m_in ? uhi : m_in;
      const R wc = static_cast<R>(li * (decay ? eG[r] : 1.0));
      for (int64_t u = ulo; u < umid; ++u) wrow[u] = wc;
      const int64_t j0 = (ulo > m_in ? ulo : m_in) - m_in;
      if (decay) {
        for (int64_t j = j0; j < uhi - m_in; ++j)
          prow[j] = static_cast<R>(li * dec(factored, r, j) * static_cast<double>(qkr[j]));
      } else {
        const R lt = static_cast<R>(li);
        for (int64_t j = j0; j < uhi - m_in; ++j) prow[j] = lt * qkr[j];
      }
    }
  }

  /// State element idx = d * Dv + e of every entry at the chunk's end (cpu/dla_prefill.h, its two passes):
  /// e^{G_last} (sum of the carried states) + sum over the entry's tokens of k_jd (dec_j v_je).
  __device__ void update_states(int64_t idx, int64_t Lc, int64_t m_in, int64_t m) {
    const int64_t d = idx / Dv, e = idx % Dv;
    const R E = static_cast<R>(decay ? eG[Lc - 1] : 1.0);
    for (int pass = 0; pass < 2; ++pass)
      for (int64_t i = 0; i < m; ++i) {
        const int64_t ulo = unit[i], uhi = i + 1 < m ? unit[i + 1] : m_in + Lc;
        const bool carries = ulo < m_in;
        if (carries != (pass == 0)) continue;
        R x = R(0);
        if (carries) {
          x = slots[in_slot[ulo] * SS + idx];
          const int64_t ue = uhi < m_in ? uhi : m_in;
          for (int64_t u = ulo + 1; u < ue; ++u) x = x + slots[in_slot[u] * SS + idx];
          if (decay) x = x * E;
        }
        const int64_t j0 = (ulo > m_in ? ulo : m_in) - m_in, j1 = uhi - m_in;
        if (j1 > j0) {
          R acc = R(0);
          for (int64_t j = j0; j < j1; ++j)
            acc += Kc[j * Dk + d] * (decay ? decj[j] * Vc[j * Dv + e] : Vc[j * Dv + e]);
          x = carries ? x + acc : acc;
        }
        slots[slot[i] * SS + idx] = x;
      }
  }
};

template <class St>
__global__ void __launch_bounds__(kThreads) dla_prefill_kernel(const DLAProblem p, const Layout lay, char* scratch) {
  using R = acc_t<St>;
  __shared__ double red[kThreads];
  __shared__ int64_t sh_m;
  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  Block<St> w(p, lay, scratch + static_cast<std::size_t>(blockIdx.x) * lay.bytes);
  const int64_t C = w.C, Dk = w.Dk, Dv = w.Dv, SS = w.SS, L = w.L, items = p.B * p.H;
  const DLACacheViews& ci = p.cache_in;
  const DLACacheOut& co = p.cache_out;

  for (int64_t it = blockIdx.x; it < items; it += gridDim.x) {
    const int64_t b = it / p.H, h = it % p.H;
    w.b = b;
    w.h = h;
    // The cache in: entry i in slot i; the free slots C-1 .. m stacked so that m is popped first.
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
      for (int64_t idx = tid; idx < m0 * SS; idx += kThreads) {
        const int64_t i = idx / SS, d = (idx % SS) / Dv, e = idx % Dv;
        w.slots[idx] = in[i * ci.states.stride[2] + d * ci.states.stride[3] + e * ci.states.stride[4]];
      }
    }

    for (int64_t t0 = 0; t0 < p.T; t0 += L) {
      const int64_t Lc = p.T - t0 < L ? p.T - t0 : L;
      __syncthreads();  // the previous chunk (or the cache load) is complete
      const int64_t m_in = sh_m;
      // 1. The chunk's rows, and the decay inside the chunk.
      for (int64_t idx = tid; idx < Lc * Dk; idx += kThreads) {
        const int64_t r = idx / Dk, d = idx % Dk;
        w.Qc[idx] = ld<St>(p.q.data, at3(p.q, b, h, t0 + r) + d * p.q.stride[3]);
        w.Kc[idx] = ld<St>(p.k.data, at3(p.k, b, h, t0 + r) + d * p.k.stride[3]);
      }
      for (int64_t idx = tid; idx < Lc * Dv; idx += kThreads) {
        const int64_t r = idx / Dv, e = idx % Dv;
        w.Vc[idx] = ld<St>(p.v.data, at3(p.v, b, h, t0 + r) + e * p.v.stride[3]);
      }
      for (int64_t idx = tid; idx < Lc * C; idx += kThreads) {
        const int64_t r = idx / C, c = idx % C;
        w.lamc[idx] = ld<St>(p.lam.data, at3(p.lam, b, h, t0 + r) + c * p.lam.stride[3]);
      }
      if (w.decay && tid == 0) {
        double G = 0;
        for (int64_t r = 0; r < Lc; ++r) {
          G += w.log_decay(t0 + r);
          w.G[r] = G;
        }
      }
      __syncthreads();
      // The pair decays are products e^{G_r - G_0} e^{G_0 - G_j} while the chunk's total decay keeps both in
      // double's range, else direct exps (the CPU's rule).
      const bool factored = w.decay && w.G[0] - w.G[Lc - 1] <= 600.0;
      if (w.decay)
        for (int64_t r = tid; r < Lc; r += kThreads) {
          w.eG[r] = exp(w.G[r]);
          w.a2[r] = exp(2.0 * w.log_decay(t0 + r));
          if (factored) {
            w.er[r] = exp(w.G[r] - w.G[0]);
            w.fj[r] = exp(w.G[0] - w.G[r]);
          }
        }
      // 2. Gram lower triangles.
      for (int64_t idx = tid; idx < Lc * Lc; idx += kThreads) {
        const int64_t r = idx / Lc, j = idx % Lc;
        if (j > r) continue;
        double kk = 0, vv = 0;
        R qk = R(0);
        for (int64_t d = 0; d < Dk; ++d) {
          kk += static_cast<double>(w.Kc[r * Dk + d]) * static_cast<double>(w.Kc[j * Dk + d]);
          qk += w.Qc[r * Dk + d] * w.Kc[j * Dk + d];
        }
        for (int64_t e = 0; e < Dv; ++e) vv += static_cast<double>(w.Vc[r * Dv + e]) * static_cast<double>(w.Vc[j * Dv + e]);
        w.KK[r * L + j] = kk;
        w.VV[r * L + j] = vv;
        w.QK[r * L + j] = qk;
      }
      // The open state carried in: k_r^T S v_r per row, and ||S||^2.
      double A_open = 0.0;
      if (m_in > 0) {  // uniform over the block
        const R* open = w.slots + w.slot[m_in - 1] * SS;
        for (int64_t r = warp; r < Lc; r += kWarps) {
          double acc = 0;
          for (int64_t e = lane; e < Dv; e += 32) {
            double u = 0;
            for (int64_t d = 0; d < Dk; ++d) u += static_cast<double>(w.Kc[r * Dk + d]) * static_cast<double>(open[d * Dv + e]);
            acc += u * static_cast<double>(w.Vc[r * Dv + e]);
          }
          acc = warp_sum(acc);
          if (lane == 0) w.cp[r] = acc;
        }
        double sq = 0;
        for (int64_t idx = tid; idx < SS; idx += kThreads) {
          const double s = static_cast<double>(open[idx]);
          sq += s * s;
        }
        A_open = block_sum(sq, red);
      }
      __syncthreads();
      if (w.decay)  // after the sync: er[Lc - 1] and every fj[j] are written
        for (int64_t j = tid; j < Lc; j += kThreads) w.decj[j] = static_cast<R>(w.dec(factored, Lc - 1, j));
      // 3. The scalar scan.
      if (tid == 0) {
        w.scan(t0, Lc, m_in, A_open, factored, m, nfree);
        sh_m = m;
      }
      __syncthreads();
      const int64_t m_out = sh_m;
      // 4. Readout weights.
      for (int64_t r = tid; r < Lc; r += kThreads) w.weights(r, m_in, factored);
      __syncthreads();
      for (int64_t u = tid; u < m_in; u += kThreads) {
        int64_t any = 0;
        for (int64_t r = 0; r < Lc; ++r) any |= w.Win[r * C + u] != R(0) ? 1 : 0;
        w.anyU[u] = any;
      }
      __syncthreads();
      // 5. Outputs: Y = P V_c, then each carried state's term (the CPU skips a state no row weights).
      for (int64_t idx = tid; idx < Lc * Dv; idx += kThreads) {
        const int64_t r = idx / Dv, e = idx % Dv;
        R y = R(0);
        for (int64_t j = 0; j <= r; ++j) y += w.P[r * L + j] * w.Vc[j * Dv + e];
        for (int64_t u = 0; u < m_in; ++u) {
          if (!w.anyU[u]) continue;
          const R wu = w.Win[r * C + u];
          const R* S = w.slots + w.in_slot[u] * SS;
          R acc = R(0);
          for (int64_t d = 0; d < Dk; ++d) acc += (wu * w.Qc[r * Dk + d]) * S[d * Dv + e];
          y += acc;
        }
        static_cast<St*>(p.out.data)[at3(p.out, b, h, t0 + r) + e * p.out.stride[3]] = from_acc<St>(y);
      }
      __syncthreads();  // the carried states are read; now they may be overwritten
      // 6. States at the chunk's end.
      for (int64_t idx = tid; idx < SS; idx += kThreads) w.update_states(idx, Lc, m_in, m_out);
    }
    __syncthreads();

    // The cache out, chronological, unused entries zero.
    const int64_t mf = sh_m;
    R* outs = static_cast<R*>(co.states.data) + b * co.states.stride[0] + h * co.states.stride[1];
    for (int64_t idx = tid; idx < C * SS; idx += kThreads) {
      const int64_t i = idx / SS, de = idx % SS, d = de / Dv, e = de % Dv;
      outs[i * co.states.stride[2] + d * co.states.stride[3] + e * co.states.stride[4]] =
          i < mf ? w.slots[w.slot[i] * SS + de] : R(0);
    }
    for (int64_t i = tid; i < C; i += kThreads) {
      const bool used = i < mf;
      static_cast<int64_t*>(co.counts.data)[at3(co.counts, b, h, i)] = used ? w.count[i] : 0;
      static_cast<R*>(co.info.data)[at3(co.info, b, h, i)] = used ? w.info[i] : R(0);
      static_cast<int64_t*>(co.starts.data)[at3(co.starts, b, h, i)] = used ? w.start[i] : 0;
    }
    if (tid == 0) static_cast<int64_t*>(co.size.data)[b * co.size.stride[0] + h * co.size.stride[1]] = mf;
    __syncthreads();  // the next item reuses the scratch
  }
}

}  // namespace

template <class St>
void launch_prefill(const DLAProblem& p, cudaStream_t stream) {
  const int64_t items = p.B * p.H;
  if (items == 0) return;
  const Layout lay = make_layout(p, sizeof(acc_t<St>));
  const unsigned grid = grid_for(items, lay.bytes, p.device_index);
  Workspace ws(grid * lay.bytes, stream);
  dla_prefill_kernel<St><<<grid, kThreads, 0, stream>>>(p, lay, ws.as<char>());
  ATTNKIT_CUDA_CHECK_LAUNCH();
}

template void launch_prefill<float>(const DLAProblem&, cudaStream_t);
template void launch_prefill<double>(const DLAProblem&, cudaStream_t);
template void launch_prefill<half_t>(const DLAProblem&, cudaStream_t);
template void launch_prefill<bf16_t>(const DLAProblem&, cudaStream_t);

}  // namespace dla
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
