#pragma once
// Linear attention and Performer on the GPU (linear.cu), part 4: the kernels of the "v2" path, used only
// where has_kernel("linear_attention_v2") / has_kernel("performer_attention_v2") (ATTNKIT_CUDA_UNVERIFIED=1
// until a GPU check has passed; the v1 kernels stay the verified path). Included by linear.cu only.
//
// What v2 changes (same values up to rounding, same determinism):
//   - row kernels: the per-row passes (softmax key statistics, the query map and its normalizer, the causal
//     normalizer) take tiles of kRowTile rows with every row's sums split over kLanes fixed virtual lanes
//     (lane l takes the columns l, l + kLanes, ... in order; the lanes are then added in lane order by one
//     thread): consecutive threads read consecutive columns of a row (coalesced), where v1 gave every row
//     to one thread that walked it alone. The lanes are virtual, so the order of every sum is fixed by
//     kLanes, not by the block size. Maxima are exact in any grouping (NaN never enters, as in v1).
//   - elementwise passes (elementwise feature maps, the softmax key exponentials) over tiles of kRowTile
//     rows: the row pointer, whether the row is allowed and its offsets are found once per row, not once
//     per element with 64-bit divisions;
//   - bidirectional state: partial states S_s = phi(K_s)^T V_s over fixed key segments of `seg` keys
//     (parallel over item x segment x tile, where v1 ran one block per F x Dv tile over all keys), then
//     S = S_in r0 + the partials in segment order (state_sum_kernel);
//   - causal: the default chunk is the host's tuning choice (linear.cu), not necessarily the CPU's 32;
//   - every tiled product (tile_product) with kContig: each thread's 4 x 4 outputs are contiguous rows and
//     columns, so its shared-memory operands are vector loads (the v1 kernels instantiated with V2 = true).

#include "cuda/linear_features.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
namespace {

constexpr int kRowTile = 32;  // rows per tile of the row kernels
constexpr int kLanes = 32;    // virtual lanes of every per-row sum or maximum

/// The rows [m0, m0 + kRowTile) of a RowSet: allowed flag and row pointer, by the block (then a barrier).
template <class T>
__device__ __forceinline__ void tile_rows(const LinArgs& a, const RowSet& r, int64_t rows, int64_t m0, bool* rok,
                                          const T** rp) {
  for (int i = threadIdx.x; i < kRowTile; i += blockDim.x) {
    rok[i] = m0 + i < rows && row_allowed(a, r, m0 + i);
    rp[i] = rok[i] ? row_of<T>(r, m0 + i) : nullptr;
  }
  __syncthreads();
}

/// v2 of features_kernel for the elementwise maps (F = D): out[m][f] = phi(x[m][f]) for allowed rows.
template <class T>
__global__ void map_rows_kernel(const LinArgs a, const RowSet r, void* out_) {
  using A = acc_t<T>;
  A* out = static_cast<A*>(out_);
  __shared__ const T* rp[kRowTile];
  __shared__ bool rok[kRowTile];
  const int64_t rows = a.B * r.H * r.L, tiles = ceil_div(rows, kRowTile);
  const int F = static_cast<int>(a.F);
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t m0 = tile * kRowTile;
    tile_rows<T>(a, r, rows, m0, rok, rp);
    for (int i = threadIdx.x; i < kRowTile * F; i += blockDim.x) {
      const int rr = i / F, f = i - rr * F;
      if (rok[rr]) out[(m0 + rr) * a.F + f] = feature<T, A>(a, rp[rr], r.xs[3], f);
    }
    __syncthreads();  // rok, rp are rewritten for the next tile
  }
}

/// v2 of key_stats_kernel: per allowed key row hK = |k'|^2/2 and mK = max_f (e_f - hK).
template <class T>
__global__ void key_stats_rows_kernel(const LinArgs a, const RowSet r, const void* e_, void* hK_, void* mK_) {
  using A = acc_t<T>;
  const A* e = static_cast<const A*>(e_);
  A* hK = static_cast<A*>(hK_);
  A* mK = static_cast<A*>(mK_);
  __shared__ const T* rp[kRowTile];
  __shared__ bool rok[kRowTile];
  __shared__ A part[kRowTile][kLanes];
  __shared__ A hs[kRowTile];
  const int64_t rows = a.B * r.H * r.L, tiles = ceil_div(rows, kRowTile), F = a.F, D = a.D;
  const A half_scale = static_cast<A>(a.half_scale);
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t m0 = tile * kRowTile;
    tile_rows<T>(a, r, rows, m0, rok, rp);
    for (int i = threadIdx.x; i < kRowTile * kLanes; i += blockDim.x) {
      const int rr = i / kLanes, l = i % kLanes;
      if (!rok[rr]) continue;
      A s = A(0);
      for (int64_t d = l; d < D; d += kLanes) {
        const A x = to_acc<A>(rp[rr][d * r.xs[3]]);
        s += x * x;
      }
      part[rr][l] = s;
    }
    __syncthreads();
    for (int rr = threadIdx.x; rr < kRowTile; rr += blockDim.x) {
      if (!rok[rr]) continue;
      A s = A(0);
      for (int l = 0; l < kLanes; ++l) s += part[rr][l];
      hs[rr] = s * half_scale;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < kRowTile * kLanes; i += blockDim.x) {
      const int rr = i / kLanes, l = i % kLanes;
      if (!rok[rr]) continue;
      const A* er = e + (m0 + rr) * F;
      A mx = math::neg_inf<A>();
      for (int64_t f = l; f < F; f += kLanes) mx = math::softmax_new_max(mx, math::favor_key_exponent(er[f], hs[rr]));
      part[rr][l] = mx;
    }
    __syncthreads();
    for (int rr = threadIdx.x; rr < kRowTile; rr += blockDim.x) {
      if (!rok[rr]) continue;
      A mx = math::neg_inf<A>();
      for (int l = 0; l < kLanes; ++l) mx = math::softmax_new_max(mx, part[rr][l]);
      hK[m0 + rr] = hs[rr];
      mK[m0 + rr] = mx;
    }
    __syncthreads();
  }
}

/// v2 of key_exp_kernel: phi(k) = exp(e - (hK + c) - ln(m)/2) in place; c = cs[m] (causal, per key) or the
/// item's final maximum cs[2 item] (bidirectional).
template <class T>
__global__ void key_exp_rows_kernel(const LinArgs a, const RowSet r, void* e_, const void* hK_, const void* cs_,
                                    bool per_key) {
  using A = acc_t<T>;
  A* e = static_cast<A*>(e_);
  const A* hK = static_cast<const A*>(hK_);
  const A* cs = static_cast<const A*>(cs_);
  __shared__ A off[kRowTile];
  __shared__ bool rok[kRowTile];
  const int64_t rows = a.B * r.H * r.L, tiles = ceil_div(rows, kRowTile);
  const int F = static_cast<int>(a.F);
  const A hlm = static_cast<A>(a.half_log_m);
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t m0 = tile * kRowTile;
    for (int i = threadIdx.x; i < kRowTile; i += blockDim.x) {
      const int64_t m = m0 + i;
      rok[i] = m < rows && row_allowed(a, r, m);
      off[i] = rok[i] ? hK[m] + (per_key ? cs[m] : cs[2 * (m / r.L)]) : A(0);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < kRowTile * F; i += blockDim.x) {
      const int rr = i / F, f = i - rr * F;
      if (!rok[rr]) continue;
      A* x = e + (m0 + rr) * a.F + f;
      *x = DevExp()(math::favor_feature_arg(*x, off[rr], hlm));
    }
    __syncthreads();
  }
}

/// v2 of query_den_kernel: the softmax map of query rows with each row's maximum (in place, stabilized
/// maps), then (den_ given: bidirectional) den = phi(q) . z of the row's kv head.
template <class T>
__global__ void query_rows_kernel(const LinArgs a, void* phiQ_, void* den_) {
  using A = acc_t<T>;
  A* phiQ = static_cast<A*>(phiQ_);
  A* den = static_cast<A*>(den_);
  __shared__ A part[kRowTile][kLanes];
  __shared__ A mxs[kRowTile];
  __shared__ const A* zs[kRowTile];
  const int64_t F = a.F, Dv = a.Dv, rows = a.B * a.Hq * a.S, tiles = ceil_div(rows, kRowTile);
  const A hlm = static_cast<A>(a.half_log_m);
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t m0 = tile * kRowTile;
    const int nr = static_cast<int>(rows - m0 < kRowTile ? rows - m0 : kRowTile);
    if (den)
      for (int rr = threadIdx.x; rr < nr; rr += blockDim.x) {
        const int64_t bh = (m0 + rr) / a.S, item = (bh / a.Hq) * a.Hkv + (bh % a.Hq) / a.G;
        zs[rr] = static_cast<const A*>(a.states) + item * (F * Dv + F) + F * Dv;
      }
    if (a.stab) {
      for (int i = threadIdx.x; i < nr * kLanes; i += blockDim.x) {
        const int rr = i / kLanes, l = i % kLanes;
        const A* ph = phiQ + (m0 + rr) * F;
        A mx = math::neg_inf<A>();
        for (int64_t f = l; f < F; f += kLanes) mx = math::softmax_new_max(mx, ph[f]);
        part[rr][l] = mx;
      }
      __syncthreads();
      for (int rr = threadIdx.x; rr < nr; rr += blockDim.x) {
        A mx = math::neg_inf<A>();
        for (int l = 0; l < kLanes; ++l) mx = math::softmax_new_max(mx, part[rr][l]);
        mxs[rr] = mx;
      }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < nr * kLanes; i += blockDim.x) {
      const int rr = i / kLanes, l = i % kLanes;
      A* ph = phiQ + (m0 + rr) * F;
      const A mx = a.stab ? mxs[rr] : A(0);
      A s = A(0);
      for (int64_t f = l; f < F; f += kLanes) {
        A x = ph[f];
        if (a.stab) ph[f] = x = DevExp()(math::favor_feature_arg(x, mx, hlm));
        if (den) s += x * zs[rr][f];
      }
      part[rr][l] = s;
    }
    __syncthreads();
    if (den)
      for (int rr = threadIdx.x; rr < nr; rr += blockDim.x) {
        A s = A(0);
        for (int l = 0; l < kLanes; ++l) s += part[rr][l];
        den[m0 + rr] = s;
      }
    __syncthreads();
  }
}

/// v2 of causal_den_kernel: per query row rq = exp(c_prev - c_t) (1 unstabilized) and
/// den = (phi(q_t) . z_c) rq + sum_{j <= t} A[t][j].
template <class T>
__global__ void causal_den_rows_kernel(const LinArgs a, const void* phiQ_, const void* cK_, const void* P_,
                                       const void* Am_, void* den_, void* rq_, int64_t nch) {
  using A = acc_t<T>;
  const A* phiQ = static_cast<const A*>(phiQ_);
  const A* cKall = static_cast<const A*>(cK_);
  const A* P = static_cast<const A*>(P_);
  const A* Am = static_cast<const A*>(Am_);
  A* den = static_cast<A*>(den_);
  A* rqa = static_cast<A*>(rq_);
  __shared__ A part[kRowTile][kLanes];
  __shared__ A part2[kRowTile][kLanes];
  __shared__ const A* zs[kRowTile];
  __shared__ A rqs[kRowTile];
  __shared__ int64_t jns[kRowTile];
  const int64_t F = a.F, Dv = a.Dv, E = F * Dv + F, C = a.C, rows = a.B * a.Hq * a.S;
  const int64_t tiles = ceil_div(rows, kRowTile);
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t m0 = tile * kRowTile;
    const int nr = static_cast<int>(rows - m0 < kRowTile ? rows - m0 : kRowTile);
    for (int rr = threadIdx.x; rr < nr; rr += blockDim.x) {
      const int64_t m = m0 + rr;
      const int64_t bh = m / a.S, t = m % a.S, b = bh / a.Hq, h = bh % a.Hq, item = b * a.Hkv + h / a.G;
      const int64_t c = t / C, j0 = c * C, tl = t - j0;
      const int64_t L = key_count(a, b), kn = chunk_keys(j0, C, a.S, L);
      A rq = A(1);
      if (a.stab) {
        const A* ck = cKall + item * a.Sk;
        const A cp = c_at(ck, j0 < L ? j0 : L);
        const A ct = kn > 0 ? ck[j0 + (tl < kn ? tl : kn - 1)] : cp;
        rq = DevExp()(math::favor_rescale_arg<A, A>(cp, ct));
      }
      zs[rr] = P + (item * nch + c) * E + F * Dv;
      rqs[rr] = rq;
      jns[rr] = tl + 1 < kn ? tl + 1 : kn;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < nr * kLanes; i += blockDim.x) {
      const int rr = i / kLanes, l = i % kLanes;
      const A* ph = phiQ + (m0 + rr) * F;
      const A* z = zs[rr];
      A s = A(0);
      for (int64_t f = l; f < F; f += kLanes) s += ph[f] * z[f];
      const A* ar = Am + (m0 + rr) * C;
      A sa = A(0);
      for (int64_t j = l; j < jns[rr]; j += kLanes) sa += ar[j];
      part[rr][l] = s;
      part2[rr][l] = sa;
    }
    __syncthreads();
    for (int rr = threadIdx.x; rr < nr; rr += blockDim.x) {
      A s = A(0), sa = A(0);
      for (int l = 0; l < kLanes; ++l) {
        s += part[rr][l];
        sa += part2[rr][l];
      }
      const A rq = rqs[rr];
      if (rq != A(1)) s *= rq;
      den[m0 + rr] = s + sa;
      rqa[m0 + rr] = rq;
    }
    __syncthreads();
  }
}

/// Bidirectional partial states: part[item][s] [F][Dv] = phi(K_s)^T V_s over the allowed keys of key segment
/// s ([s seg, (s + 1) seg)), keys in order; segments without keys get zeros. Blocks: (item, s, F tile, Dv tile).
template <class T>
__global__ void state_part_kernel(const LinArgs a, const void* phiK_, void* part_, int64_t seg, int64_t nseg) {
  using A = acc_t<T>;
  const A* phiK = static_cast<const A*>(phiK_);
  A* part = static_cast<A*>(part_);
  const int64_t F = a.F, Dv = a.Dv;
  const int64_t mt = ceil_div(F, kTM), nt = ceil_div(Dv, kTN), per = mt * nt;
  for (int64_t tile = blockIdx.x; tile < a.B * a.Hkv * nseg * per; tile += gridDim.x) {
    const int64_t is = tile / per, item = is / nseg, s = is % nseg, b = item / a.Hkv, hkv = item % a.Hkv;
    const int64_t m0 = (tile % per) / nt * kTM, n0 = (tile % per) % nt * kTN;
    const int64_t L = key_count(a, b), j0 = s * seg;
    const int64_t kn = L - j0 < seg ? (L - j0 > 0 ? L - j0 : 0) : seg;
    const A* ph = phiK + (item * a.Sk + j0) * F;
    const T* v = static_cast<const T*>(a.v) + b * a.vs[0] + hkv * a.vs[1] + j0 * a.vs[2];
    A* out = part + is * F * Dv;
    tile_product<A, kTM, kTN, false, false, true>(
        F, Dv, kn, m0, n0, [&](int64_t f, int64_t j) { return ph[j * F + f]; },
        [&](int64_t j, int64_t d) { return to_acc<A>(v[j * a.vs[2] + d * a.vs[3]]); },
        [&](int64_t f, int64_t d, A x) { out[f * Dv + d] = x; });
  }
}

/// S of every (b, hkv) = S_in r0 + the partial states in segment order, into a.states and state_out.
template <class T>
__global__ void state_sum_kernel(const LinArgs a, const void* part_, const void* cs_, int64_t nseg) {
  using A = acc_t<T>;
  const A* part = static_cast<const A*>(part_);
  const A* cs = static_cast<const A*>(cs_);
  const int64_t F = a.F, Dv = a.Dv, FD = F * Dv;
  const A* si = static_cast<const A*>(a.s_in);
  A* so = static_cast<A*>(a.s_out);
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < a.B * a.Hkv * FD; i += step) {
    const int64_t item = i / FD, e = i % FD, f = e / Dv, d = e % Dv, b = item / a.Hkv, hkv = item % a.Hkv;
    const int64_t L = key_count(a, b);
    A x = si ? si[b * a.sis[0] + hkv * a.sis[1] + f * a.sis[2] + d * a.sis[3]] : A(0);
    const A r0 = state_in_factor(a, cs, item, L);
    if (r0 != A(1)) x *= r0;
    A s = A(0);
    for (int64_t sg = 0; sg < nseg; ++sg) s += part[(item * nseg + sg) * FD + e];
    x += s;
    static_cast<A*>(a.states)[item * (FD + F) + e] = x;
    if (so) so[b * a.sos[0] + hkv * a.sos[1] + f * a.sos[2] + d * a.sos[3]] = x;
  }
}

}  // namespace
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
