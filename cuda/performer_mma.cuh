#pragma once
// Performer (the projected feature maps: softmax and ReLU random features) on tensor cores, float16 and
// bfloat16 inputs: the products of the v2 path (linear_v2.cuh, linear_causal.cuh, linear_bidirectional.cuh)
// by mma.sync instead of the SIMT tile_product, everything else (key statistics, stabilizer, exponentials,
// normalizers, the causal scan, state_in / state_out) unchanged. Gated in linear.cu by
// has_kernel("performer_attention_mma") and performer_mma_wanted(); included by linear.cu only.
//
// Products taken over (same loaders and stores as the SIMT kernels they replace, so the same semantics):
//   - the projections x' W^T of queries and keys (features_kernel's projected branch);
//   - bidirectional: the partial states phi(K_s)^T V_s (state_part_kernel) and out = phi(Q) S (out_kernel);
//   - causal: the chunk increments phi(K_c)^T V_c (inc_kernel), the intra-chunk scores phi(Q_c) phi(K_c)^T
//     (scores_kernel), and the outputs (phi(Q_c) P_c) rq + A V_c (causal_out_kernel) as ONE product over
//     the concatenated k axis [F features | kn keys]: [phi(Q_c) rq | A] x [P_c ; V_c].
//
// Precision: the operands are float32 (features, states, scaled W) or exact 16-bit values (x, V). The mma is
// TF32 m16n8k8 with float32 accumulation, and every float32 operand is split into hi + lo TF32 parts
// ("3xTF32": a_hi b_hi + a_hi b_lo + a_lo b_hi, the lo*lo term dropped, about 2^-22 relative), so each
// product has float32-level accuracy and float32 range (no float16 overflow of large states, no bfloat16
// rounding of features): the CPU's tolerance rule holds as for the SIMT kernels. 16-bit inputs are exact in
// TF32 (11 / 8 significant bits, float32 exponent range), so x and V take one part, not two.
// Why not 16-bit mma with hi/lo parts: float16 parts overflow for states above 65504 and lose precision
// under 2^-14 (subnormals), bfloat16 parts give only 16 significant bits; TF32 avoids both at the price of
// half the per-instruction rate, and these products are memory-bound at Performer's sizes anyway.
// Inf / NaN: a non-finite operand enters through the hi * hi pass only (tf32_parts), so a product is +-Inf
// or NaN as in float32; masked causal pairs never multiply a NaN / Inf value (pm_causal_out_kernel).
//
// Determinism: each output element is accumulated by one thread's mma fragment in a fixed k order (k tiles
// of kMmaKS, then k steps of 8, then the parts lo*hi, hi*lo, hi*hi), independent of the grid size.
//
// Internal switch, read once (for the benchmark's sweep and for bisecting a failure on the GPU; not a public
// interface): ATTNKIT_PERFORMER_MMA = bit mask of the products taken over, default 7:
//   1 projections, 2 state products (bidirectional partial states, causal chunk increments),
//   4 output products (bidirectional out, causal scores and outputs); 0 gives the v2 SIMT path.
// The other knobs of linear.cu (ATTNKIT_LINEAR_CUDA_CHUNK, _SEG, _V1) apply as before.
// Supported (else the v2 SIMT kernels run): float16 / bfloat16, D in {32, 64, 128}, m a multiple of 16 up
// to 512 (the code itself is generic in D, m and Dv: every tile is zero-padded).

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "cpp/src/backend.h"
#include "cuda/linear_bidirectional.cuh"
#include "cuda/linear_causal.cuh"
#include "cuda/linear_v2.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
namespace {

constexpr int kMmaKS = 32;  // k per shared-memory stage of mma_tile_product (4 mma k steps of 8)

__device__ __forceinline__ uint32_t tf32_of(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}

/// TF32 parts of an operand x: hi (rounded to nearest), lo = x - hi (0 where x is not finite), and hf = hi
/// where x is finite, else 0: the factor that meets the OTHER operand's lo part. With the passes
/// a_lo b_hf + a_hf b_lo + a_hi b_hi an infinite or NaN x enters through hi * hi only, so x * y is +-Inf or NaN
/// exactly as in float32 (a lo of 0 never meets an Inf: 0 * Inf would be NaN).
__device__ __forceinline__ void tf32_parts(float x, uint32_t& hi, uint32_t& lo, uint32_t& hf) {
  hi = tf32_of(x);
  const bool fin = isfinite(x);
  lo = tf32_of(fin ? x - __uint_as_float(hi) : 0.0f);
  hf = fin ? hi : 0u;
}

__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/// Tensor-core twin of tile_product (linear_features.cuh) for float operands, same interface and contract:
/// C[m][n] = sum_k la(m, k) lb(k, n) over the TM x TN tile at (m0, n0), handed to st(m, n, value) for
/// m < M, n < N only; operands read only inside [0, M) x [0, K) and [0, K) x [0, N) (zeros outside);
/// kAK / kBK: the operand is contiguous along k (coalesced load order). kSplitA / kSplitB: the operand is a
/// float32 value (split into hi + lo TF32 parts) rather than a 16-bit one (exact in TF32).
/// TM, TN in {32, 64}. The block must have exactly kThreads = 256 threads (8 warps: TM / 16 warps along
/// rows, the rest along columns); every thread must call it.
template <int TM, int TN, bool kAK, bool kBK, bool kSplitA, bool kSplitB, class LA, class LB, class ST>
__device__ __forceinline__ void mma_tile_product(int64_t M, int64_t N, int64_t K, int64_t m0, int64_t n0, LA la,
                                                 LB lb, ST st) {
  static_assert((TM == 32 || TM == 64) && (TN == 32 || TN == 64), "tile");
  constexpr int kWarps = kThreads / 32, WM = TM / 16, WN = kWarps / WM, NT = TN / (8 * WN);
  static_assert(NT >= 1 && NT * 8 * WN == TN, "tile columns per warp");
  constexpr int AP = kMmaKS + 4, BP = TN + 8;  // padded rows: conflict-free fragment reads
  __shared__ float As[TM][AP];
  __shared__ float Bs[kMmaKS][BP];
  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int rb = (warp / WN) * 16, cb = (warp % WN) * (NT * 8);
  float acc[NT][4];
#pragma unroll
  for (int n = 0; n < NT; ++n)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[n][i] = 0.0f;
  for (int64_t k0 = 0; k0 < K; k0 += kMmaKS) {
    for (int i = tid; i < kMmaKS * TM; i += kThreads) {
      const int kk = kAK ? i % kMmaKS : i / TM, mm = kAK ? i / kMmaKS : i % TM;
      As[mm][kk] = (m0 + mm < M && k0 + kk < K) ? static_cast<float>(la(m0 + mm, k0 + kk)) : 0.0f;
    }
    for (int i = tid; i < kMmaKS * TN; i += kThreads) {
      const int kk = kBK ? i % kMmaKS : i / TN, nn = kBK ? i / kMmaKS : i % TN;
      Bs[kk][nn] = (n0 + nn < N && k0 + kk < K) ? static_cast<float>(lb(k0 + kk, n0 + nn)) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int ks = 0; ks < kMmaKS; ks += 8) {
      const float ax[4] = {As[rb + g][ks + t], As[rb + g + 8][ks + t], As[rb + g][ks + t + 4],
                           As[rb + g + 8][ks + t + 4]};
      uint32_t ahi[4], alo[4], ahf[4];  // alo used where kSplitA, ahf where kSplitB
#pragma unroll
      for (int i = 0; i < 4; ++i) tf32_parts(ax[i], ahi[i], alo[i], ahf[i]);
#pragma unroll
      for (int n = 0; n < NT; ++n) {
        const int col = cb + n * 8 + g;
        const float bx[2] = {Bs[ks + t][col], Bs[ks + t + 4][col]};
        uint32_t bhi[2], blo[2], bhf[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) tf32_parts(bx[i], bhi[i], blo[i], bhf[i]);
        if (kSplitA) mma_tf32(acc[n], alo, bhf);
        if (kSplitB) mma_tf32(acc[n], ahf, blo);
        mma_tf32(acc[n], ahi, bhi);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int n = 0; n < NT; ++n)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t m = m0 + rb + g + (i >> 1) * 8, c = n0 + cb + n * 8 + 2 * t + (i & 1);
      if (m < M && c < N) st(m, c, acc[n][i]);
    }
}

// ------------------------------------------------------------------------------------------------ kernels
// Each is the SIMT kernel named in its comment with tile_product replaced by mma_tile_product; T is half_t
// or bf16_t (A = float). Launched with kThreads threads.

/// features_kernel, projected maps: raw projections out[m][f] = x'_m . w_f (ReLU features finished).
template <class T>
__global__ void __launch_bounds__(kThreads, 2) pm_features_kernel(const LinArgs a, const RowSet r, void* out_) {
  using A = acc_t<T>;
  A* out = static_cast<A*>(out_);
  __shared__ const T* rp[kTM];
  __shared__ bool rok[kTM];
  const A* wS = static_cast<const A*>(a.wS);
  const int64_t F = a.F, D = a.D, rows = a.B * r.H * r.L;
  const int64_t mt = ceil_div(rows, kTM), nt = ceil_div(F, kTN);
  for (int64_t tile = blockIdx.x; tile < mt * nt; tile += gridDim.x) {
    const int64_t m0 = (tile / nt) * kTM, n0 = (tile % nt) * kTN;
    for (int64_t i = threadIdx.x; i < kTM; i += blockDim.x) {
      rok[i] = m0 + i < rows && row_allowed(a, r, m0 + i);
      rp[i] = rok[i] ? row_of<T>(r, m0 + i) : nullptr;
    }
    __syncthreads();
    mma_tile_product<kTM, kTN, true, true, false, true>(
        rows, F, D, m0, n0,
        [&](int64_t m, int64_t d) { return rok[m - m0] ? to_acc<A>(rp[m - m0][d * r.xs[3]]) : A(0); },
        [&](int64_t d, int64_t f) { return wS[f * D + d]; },
        [&](int64_t m, int64_t f, A s) {
          if (rok[m - m0]) out[m * F + f] = a.stab ? s : math::performer_relu<A>(s);
        });
    __syncthreads();  // rp, rok are rewritten for the next tile
  }
}

/// state_part_kernel: part[item][s] [F][Dv] = phi(K_s)^T V_s over the allowed keys of segment s.
template <class T>
__global__ void __launch_bounds__(kThreads, 2)
    pm_state_part_kernel(const LinArgs a, const void* phiK_, void* part_, int64_t seg, int64_t nseg) {
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
    mma_tile_product<kTM, kTN, false, false, true, false>(
        F, Dv, kn, m0, n0, [&](int64_t f, int64_t j) { return ph[j * F + f]; },
        [&](int64_t j, int64_t d) { return to_acc<A>(v[j * a.vs[2] + d * a.vs[3]]); },
        [&](int64_t f, int64_t d, A x) { out[f * Dv + d] = x; });
  }
}

/// out_kernel: out = phi(Q) S / (den + eps) by tiles of query rows x Dv of each (b, h).
template <class T>
__global__ void __launch_bounds__(kThreads, 2) pm_out_kernel(const LinArgs a, const void* phiQ_, const void* den_) {
  using A = acc_t<T>;
  const A* phiQ = static_cast<const A*>(phiQ_);
  const A* den = static_cast<const A*>(den_);
  const int64_t F = a.F, Dv = a.Dv;
  const int64_t mt = ceil_div(a.S, kTM), nt = ceil_div(Dv, kTN), per = mt * nt;
  for (int64_t tile = blockIdx.x; tile < a.B * a.Hq * per; tile += gridDim.x) {
    const int64_t bh = tile / per, b = bh / a.Hq, h = bh % a.Hq, item = b * a.Hkv + h / a.G;
    const int64_t m0 = (tile % per) / nt * kTM, n0 = (tile % per) % nt * kTN;
    const A* ph = phiQ + bh * a.S * F;
    const A* S = static_cast<const A*>(a.states) + item * (F * Dv + F);
    const A* dn = den + bh * a.S;
    mma_tile_product<kTM, kTN, true, false, true, true>(
        a.S, Dv, F, m0, n0, [&](int64_t t, int64_t f) { return ph[t * F + f]; },
        [&](int64_t f, int64_t d) { return S[f * Dv + d]; },
        [&](int64_t t, int64_t d, A o) { store_out<T, A>(a, b, h, t, d, o, dn[t]); });
  }
}

/// inc_kernel: inc[item][c] = [F][Dv] then [F] of chunk c (keys relative to the chunk's last stabilizer).
template <class T>
__global__ void __launch_bounds__(kThreads, 2)
    pm_inc_kernel(const LinArgs a, const void* phiK_, const void* cK_, void* inc_, int64_t nch) {
  using A = acc_t<T>;
  const A* phiK = static_cast<const A*>(phiK_);
  const A* cKall = static_cast<const A*>(cK_);
  A* inc = static_cast<A*>(inc_);
  const int64_t F = a.F, Dv = a.Dv, E = F * Dv + F;
  const int64_t mt = ceil_div(F, kTM), nt = ceil_div(Dv, kTN) > 0 ? ceil_div(Dv, kTN) : 1, per = mt * nt;
  for (int64_t tile = blockIdx.x; tile < a.B * a.Hkv * nch * per; tile += gridDim.x) {
    const int64_t ic = tile / per, item = ic / nch, c = ic % nch, b = item / a.Hkv, hkv = item % a.Hkv;
    const int64_t m0 = (tile % per) / nt * kTM, n0 = (tile % per) % nt * kTN;
    const int64_t L = key_count(a, b), j0 = c * a.C, kn = chunk_keys(j0, a.C, a.S, L);
    const A* ph = phiK + (item * a.Sk + j0) * F;
    const A* ck = a.stab ? cKall + item * a.Sk + j0 : nullptr;
    const A c_end = a.stab && kn > 0 ? ck[kn - 1] : A(0);
    const T* v = static_cast<const T*>(a.v) + b * a.vs[0] + hkv * a.vs[1] + j0 * a.vs[2];
    A* out = inc + ic * E;
    auto key = [&](int64_t j, int64_t f) {
      A x = ph[j * F + f];
      if (a.stab && ck[j] != c_end) x *= DevExp()(ck[j] - c_end);
      return x;
    };
    if (Dv > 0)  // uniform over the block (Dv is a kernel argument)
      mma_tile_product<kTM, kTN, false, false, true, false>(
          F, Dv, kn, m0, n0, [&](int64_t f, int64_t j) { return key(j, f); },
          [&](int64_t j, int64_t d) { return to_acc<A>(v[j * a.vs[2] + d * a.vs[3]]); },
          [&](int64_t f, int64_t d, A s) { out[f * Dv + d] = s; });
    if (n0 == 0) {
      const int64_t f1 = m0 + kTM < F ? m0 + kTM : F;
      for (int64_t f = m0 + threadIdx.x; f < f1; f += blockDim.x) {
        A s = A(0);
        for (int64_t j = 0; j < kn; ++j) s += key(j, f);
        out[F * Dv + f] = s;
      }
    }
  }
}

/// scores_kernel: Am[row][j] (rows of phi(Q), j < C) = phi(q_t) . phi(k_j) exp(c_j - c_t) for j <= t, j < kn.
template <class T, int TM>
__global__ void __launch_bounds__(kThreads, 2) pm_scores_kernel(const LinArgs a, const void* phiQ_, const void* phiK_,
                                                             const void* cK_, void* Am_, int64_t nch) {
  using A = acc_t<T>;
  const A* phiQ = static_cast<const A*>(phiQ_);
  const A* phiK = static_cast<const A*>(phiK_);
  const A* cKall = static_cast<const A*>(cK_);
  A* Am = static_cast<A*>(Am_);
  const int64_t F = a.F, C = a.C;
  const int64_t mt = ceil_div(C, TM), per = mt * mt;
  for (int64_t tile = blockIdx.x; tile < a.B * a.Hq * nch * per; tile += gridDim.x) {
    const int64_t bc = tile / per, bh = bc / nch, c = bc % nch, b = bh / a.Hq, h = bh % a.Hq;
    const int64_t item = b * a.Hkv + h / a.G;
    const int64_t m0 = (tile % per) / mt * TM, n0 = (tile % per) % mt * TM;
    const int64_t L = key_count(a, b), j0 = c * C, kn = chunk_keys(j0, C, a.S, L);
    const int64_t tn = C < a.S - j0 ? C : a.S - j0;
    const A* q = phiQ + (bh * a.S + j0) * F;
    const A* k = phiK + (item * a.Sk + j0) * F;
    const A* ck = a.stab ? cKall + item * a.Sk : nullptr;
    A* out = Am + (bh * a.S + j0) * C;
    mma_tile_product<TM, TM, true, true, true, true>(
        tn, kn, F, m0, n0, [&](int64_t t, int64_t f) { return q[t * F + f]; },
        [&](int64_t f, int64_t j) { return k[j * F + f]; },
        [&](int64_t t, int64_t j, A s) {
          if (j > t) return;
          if (a.stab) {
            const A ct = ck[j0 + (t < kn ? t : kn - 1)];
            if (ck[j0] != ct) s *= DevExp()(ck[j0 + j] - ct);
          }
          out[t * C + j] = s;
        });
  }
}

/// causal_out_kernel: out rows of chunk c = (phi(Q_c) P_c) rq + sum_{j <= t, j < kn} A[t][j] v_j, as one
/// product over k in [0, F + kn): A operand [phi(q_t) rq_t | A[t][j] (0 for j > t)], B operand [P_c ; V_c].
/// (rq multiplies phi(q_t) before the product instead of the sum after it: one rounding moved.) Where the
/// tile's V columns hold a NaN / Inf, the product covers the F part only and A V is summed per row.
template <class T, int TM>
__global__ void __launch_bounds__(kThreads, 2)
    pm_causal_out_kernel(const LinArgs a, const void* phiQ_, const void* P_, const void* Am_, const void* den_,
                         const void* rq_, int64_t nch) {
  using A = acc_t<T>;
  const A* phiQ = static_cast<const A*>(phiQ_);
  const A* P = static_cast<const A*>(P_);
  const A* Am = static_cast<const A*>(Am_);
  const A* den = static_cast<const A*>(den_);
  const A* rqa = static_cast<const A*>(rq_);
  const int64_t F = a.F, Dv = a.Dv, E = F * Dv + F, C = a.C;
  const int64_t mt = ceil_div(C, TM), nt = ceil_div(Dv, kTN), per = mt * nt;
  for (int64_t tile = blockIdx.x; tile < a.B * a.Hq * nch * per; tile += gridDim.x) {
    const int64_t bc = tile / per, bh = bc / nch, c = bc % nch, b = bh / a.Hq, h = bh % a.Hq;
    const int64_t item = b * a.Hkv + h / a.G, hkv = h / a.G;
    const int64_t m0 = (tile % per) / nt * TM, n0 = (tile % per) % nt * kTN;
    const int64_t L = key_count(a, b), j0 = c * C, kn = chunk_keys(j0, C, a.S, L);
    const int64_t tn = C < a.S - j0 ? C : a.S - j0;
    const int64_t row0 = bh * a.S + j0;
    const A* q = phiQ + row0 * F;
    const A* S = P + (item * nch + c) * E;
    const T* v = static_cast<const T*>(a.v) + b * a.vs[0] + hkv * a.vs[1] + j0 * a.vs[2];
    // A NaN / Inf value in the tile's columns: 0 * NaN must not carry a future key's value into a past row
    // (the masked A[t][j] of j > t are zeros in the product), so then A V is summed per row over j <= t
    // after the product, as causal_out_kernel does (the CPU guards the same way).
    bool bad = false;
    const int64_t d1 = n0 + kTN < Dv ? n0 + kTN : Dv;
    for (int64_t i = threadIdx.x; i < kn * (d1 - n0); i += blockDim.x) {
      const int64_t j = i / (d1 - n0), d = n0 + i % (d1 - n0);
      if (!isfinite(to_acc<A>(v[j * a.vs[2] + d * a.vs[3]]))) bad = true;
    }
    const bool vbad = __syncthreads_or(bad) != 0;  // uniform over the block
    mma_tile_product<TM, kTN, true, false, true, true>(
        tn, Dv, vbad ? F : F + kn, m0, n0,
        [&](int64_t t, int64_t k) {
          if (k < F) {
            const A rq = rqa[row0 + t], x = q[t * F + k];
            return rq != A(1) ? x * rq : x;
          }
          const int64_t j = k - F;
          return j <= t ? Am[(row0 + t) * C + j] : A(0);
        },
        [&](int64_t k, int64_t d) { return k < F ? S[k * Dv + d] : to_acc<A>(v[(k - F) * a.vs[2] + d * a.vs[3]]); },
        [&](int64_t t, int64_t d, A o) {
          if (vbad) {
            const int64_t jn = t + 1 < kn ? t + 1 : kn;
            const A* ar = Am + (row0 + t) * C;
            A s = A(0);
            for (int64_t j = 0; j < jn; ++j) s += ar[j] * to_acc<A>(v[j * a.vs[2] + d * a.vs[3]]);
            o += s;
          }
          store_out<T, A>(a, b, h, j0 + t, d, o, den[row0 + t]);
        });
  }
}

// --------------------------------------------------------------------------------------------- host side

/// ATTNKIT_PERFORMER_MMA (see the file comment), read once: the mask of products taken over.
inline int performer_mma_mask() {
  static const int m = [] {
    const char* e = std::getenv("ATTNKIT_PERFORMER_MMA");
    if (!e || !*e) return 7;
    char* end = nullptr;
    const long v = std::strtol(e, &end, 10);
    return (end && *end == 0 && v >= 0 && v <= 7) ? static_cast<int>(v) : 7;
  }();
  return m;
}

template <class T>
constexpr bool kPerformerMmaType = std::is_same<T, half_t>::value || std::is_same<T, bf16_t>::value;

/// The mask of products the mma path takes for this problem (0: none), given that the v2 path runs.
template <class T>
int performer_mma_wanted(const LinearProblem& p) {
  if (!kPerformerMmaType<T> || !p.projected()) return 0;
  if (!(p.D == 32 || p.D == 64 || p.D == 128) || p.F < 16 || p.F > 512 || p.F % 16 != 0) return 0;
  if (!has_kernel("performer_attention_mma")) return 0;
  return performer_mma_mask();
}

constexpr int kPmFeatures = 1, kPmStates = 2, kPmOutputs = 4;

// Launchers: no-ops for the other dtypes (never instantiated with them: the caller's mask is 0 there).
template <class T>
void pm_features(unsigned grid, cudaStream_t s, const LinArgs& a, const RowSet& r, void* out) {
  if constexpr (kPerformerMmaType<T>) pm_features_kernel<T><<<grid, kThreads, 0, s>>>(a, r, out);
}
template <class T>
void pm_state_part(unsigned grid, cudaStream_t s, const LinArgs& a, const void* phiK, void* part, int64_t seg,
                   int64_t nseg) {
  if constexpr (kPerformerMmaType<T>) pm_state_part_kernel<T><<<grid, kThreads, 0, s>>>(a, phiK, part, seg, nseg);
}
template <class T>
void pm_out(unsigned grid, cudaStream_t s, const LinArgs& a, const void* phiQ, const void* den) {
  if constexpr (kPerformerMmaType<T>) pm_out_kernel<T><<<grid, kThreads, 0, s>>>(a, phiQ, den);
}
template <class T>
void pm_inc(unsigned grid, cudaStream_t s, const LinArgs& a, const void* phiK, const void* cK, void* P, int64_t nch) {
  if constexpr (kPerformerMmaType<T>) pm_inc_kernel<T><<<grid, kThreads, 0, s>>>(a, phiK, cK, P, nch);
}
template <class T>
void pm_scores(bool small, unsigned grid, cudaStream_t s, const LinArgs& a, const void* phiQ, const void* phiK,
               const void* cK, void* Am, int64_t nch) {
  if constexpr (kPerformerMmaType<T>) {
    if (small)
      pm_scores_kernel<T, 32><<<grid, kThreads, 0, s>>>(a, phiQ, phiK, cK, Am, nch);
    else
      pm_scores_kernel<T, kTM><<<grid, kThreads, 0, s>>>(a, phiQ, phiK, cK, Am, nch);
  }
}
template <class T>
void pm_causal_out(bool small, unsigned grid, cudaStream_t s, const LinArgs& a, const void* phiQ, const void* P,
                   const void* Am, const void* den, const void* rq, int64_t nch) {
  if constexpr (kPerformerMmaType<T>) {
    if (small)
      pm_causal_out_kernel<T, 32><<<grid, kThreads, 0, s>>>(a, phiQ, P, Am, den, rq, nch);
    else
      pm_causal_out_kernel<T, kTM><<<grid, kThreads, 0, s>>>(a, phiQ, P, Am, den, rq, nch);
  }
}

}  // namespace
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
