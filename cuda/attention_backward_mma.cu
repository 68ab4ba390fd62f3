// Gradients of exact attention on tensor cores (float16 / bfloat16, sm80+ mma.sync.m16n8k16 with float32
// accumulation), FlashAttention-2 style (Dao 2023, Algorithm 2), with the ownership of the SIMT backward
// (attention_backward.cu) so that nothing is summed by atomics and nothing depends on the launch:
//   bwd_dkdv_kernel  one block (4 warps) per (b, kv head, tile of 64 keys), each warp 16 keys; for every
//                    query head of the GQA group and every chunk of QC rows that can see the tile (in
//                    order; QC = 64 for D = 64, 32 for D = 128, halved with score terms), S^T = K Q^T and
//                    dP^T = V dO^T on tensor cores, P^T and dS^T element by element in registers (from lse
//                    and delta), then dV += P^T dO and dK += dS^T Q with P^T / dS^T fed from registers as A
//                    fragments (the forward's P -> PV trick). dK / dV stay in registers for the whole group
//                    and are written once (dK times scale). The next chunk's Q / dO copy (cp.async, two
//                    stages) overlaps this chunk's products.
//   bwd_dq_kernel    one block per (b, query head, chunk of 64 rows), each warp 16 rows; for every key tile
//                    of 64 the chunk's rows can see (in key order), S = Q K^T, dP = dO V^T, P and dS, then
//                    dQ += dS K (the next tile's K / V copy overlapping). Written once (times scale); with
//                    a bias, dbias = dL/ds of the pairs that take part (delta_kernel zeroed the rows).
// delta (dout . out per row) comes from the SIMT file's delta_kernel, launched by its dispatcher.
//
// Coverage (backward_mma_supported): D = Dv in {64, 128}; q, k, v, dout rows contiguous and 16-byte
// aligned; key ranges from causal (bottom-right), windows and key_lengths; GQA; Sq != Sk; any S. With the
// second gate "attention_backward_mma_terms" also mask, bias + dbias, soft cap and ALiBi (kTerms kernels:
// ScoreTerms per pair, as score_tile). Routed to the SIMT kernels: block-sparse layouts, explicit row
// ranges, other head dims, float32 / float64, rows that are not contiguous or aligned.
//
// The score of a pair is dot * scale (ScoreTerms without terms), P = exp(x - lse) through
// math::backward_prob_arg / kexp and dS = math::softmax_grad, as in score_tile. Pairs outside a row's
// range, or with a row >= Sq or a key >= min(key_lengths, Sk), get P = dS = 0; K / V rows past the valid
// keys and Q / dO rows past Sq are zero-filled in shared memory (never read from global memory). A row
// without keys (lse = -inf) gets P = 0, so zero gradients. P and dS are rounded to the input dtype before
// the second products (as FlashAttention does). The two kernels compute q.k with the operands swapped
// (K Q^T against Q K^T); the tensor cores' sum order may differ in the last bits between the two, so P
// seen by dK/dV and by dQ agree to rounding, not necessarily to the bit (each result is deterministic).
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "attnkit/math/attention_grad.h"
#include "cpp/src/backend.h"
#include "cuda/attention_mma.cuh"

namespace attnkit {
namespace detail {
namespace cuda {

namespace {

constexpr int kBwdThreads = 128;  // 4 warps
constexpr int kBwdBK = 64;        // keys per dK/dV block (16 per warp)
constexpr int kBwdBQ = 64;        // query rows per dQ block (16 per warp)

/// Query rows per chunk of the dK/dV kernel (fewer for D = 128, where dK and dV take 128 registers) and
/// shared memory: the dK/dV block holds its K, V tile and two stages of (Q, dO, lse, delta, key ranges) of
/// a chunk (the next chunk's copy overlaps this one's products); the dQ block holds its Q, dO rows and two
/// stages of (K, V) tiles.
template <int D, bool kTerms>
struct BwdShape {
  static constexpr int LD = D + 8;  // shared-memory row pitch (elements): conflict-free ldmatrix
  static constexpr int QC = (D > 64 ? 32 : 64) / (kTerms ? 2 : 1);  // (the score terms take registers too)
  static constexpr std::size_t kSmemKV = sizeof(uint16_t) * (2 * kBwdBK + 2 * 2 * QC) * LD +
                                         2 * (sizeof(float) * 2 * QC + sizeof(int64_t) * 2 * QC);
  static constexpr std::size_t kSmemQ = sizeof(uint16_t) * (2 * kBwdBQ + 2 * 2 * kBwdBK) * LD;
};

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t n, int64_t d) { return (n + d - 1) / d; }
__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/// Starts copying rows [r0, r0 + n) of a [rows][D] matrix with row stride ld (elements) into dst[n][LD];
/// rows r0 + r >= rz are zero-filled (nothing is read for them). The caller commits the cp.async group.
template <class T, int D, int LD>
__device__ __forceinline__ void load_tile(T* dst, const T* src, int64_t ld, int64_t r0, int n, int64_t rz) {
  constexpr int kChunks = D / 8;
  for (int c = static_cast<int>(threadIdx.x); c < n * kChunks; c += kBwdThreads) {
    const int r = c / kChunks, cc = c % kChunks;
    const bool ok = r0 + r < rz;
    mma::cp_async16(dst + r * LD + cc * 8, src + (ok ? r0 + r : 0) * ld + cc * 8, ok);
  }
}

/// acc[NT][4] += A B^T over k = 0 .. K - 1: A is 16 rows of sA (row pitch LD) from row a0, B is NT * 8 rows
/// of sB from row 0 (both row-major over k in shared memory): the forward's Q K^T fragment pattern.
template <class T, int K, int NT, int LD>
__device__ __forceinline__ void mma_abt(float (&acc)[NT][4], const T* sA, int a0, const T* sB, int lane) {
#pragma unroll
  for (int ks = 0; ks < K / 16; ++ks) {
    uint32_t a[4];
    mma::ldsm_x4(a, sA + (a0 + lane % 16) * LD + ks * 16 + (lane / 16) * 8);
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      uint32_t bb[4];
      mma::ldsm_x4(bb, sB + (np * 16 + (lane / 16) * 8 + lane % 8) * LD + ks * 16 + ((lane / 8) % 2) * 8);
      mma::mma16816<T>(acc[2 * np], a, bb[0], bb[1]);
      mma::mma16816<T>(acc[2 * np + 1], a, bb[2], bb[3]);
    }
  }
}

/// acc[D/8][4] += X B over k = 0 .. K - 1: X (16 x K) is given as accumulator fragments x[K/8][4] (rounded
/// to T here), B is K rows of sB (row-major, D columns, pitch LD) loaded transposed: the forward's P V
/// fragment pattern.
template <class T, int K, int D, int LD>
__device__ __forceinline__ void mma_xb(float (&acc)[D / 8][4], const float (&x)[K / 8][4], const T* sB, int lane) {
#pragma unroll
  for (int ks = 0; ks < K / 16; ++ks) {
    uint32_t a[4];
    a[0] = mma::pack2<T>(x[2 * ks][0], x[2 * ks][1]);
    a[1] = mma::pack2<T>(x[2 * ks][2], x[2 * ks][3]);
    a[2] = mma::pack2<T>(x[2 * ks + 1][0], x[2 * ks + 1][1]);
    a[3] = mma::pack2<T>(x[2 * ks + 1][2], x[2 * ks + 1][3]);
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      uint32_t bb[4];
      mma::ldsm_x4_t(bb, sB + (ks * 16 + ((lane / 8) % 2) * 8 + lane % 8) * LD + dp * 16 + (lane / 16) * 8);
      mma::mma16816<T>(acc[2 * dp], a, bb[0], bb[1]);
      mma::mma16816<T>(acc[2 * dp + 1], a, bb[2], bb[3]);
    }
  }
}

/// P and dS (= dL/dx, after the soft-cap's derivative) of pair (row i, key j) of query head (b, h) from its
/// raw dot products (q.k, dout.v), as score_tile computes them. kTerms: the score terms (mask, bias, soft
/// cap, ALiBi; slope = the row's ALiBi slope), and dL/ds written to dbrow[j * dbs] when dbrow is given
/// (the dQ kernel's rows of dbias); else the score is dot * scale.
template <bool kTerms>
__device__ __forceinline__ void prob_and_grad(const AttnProblem& p, const ScoreTerms<float>& terms, int64_t b,
                                              int64_t h, int64_t i, int64_t j, float slope, float dot, float dpv,
                                              float lse, float delta, float* dbrow, int64_t dbs, float& pr,
                                              float& ds) {
  const float x = kTerms ? terms(p, b, h, i, j, dot, slope) : dot * terms.scale;
  pr = kexp(math::backward_prob_arg(x, lse));
  ds = math::softmax_grad(pr, dpv, delta);
  if (kTerms) {
    if (dbrow) dbrow[j * dbs] = ds;
    if (terms.softcap) ds *= math::softcap_grad<float, float>(tanh(dot * terms.scale * terms.cap_in));
  }
}

template <class T, int D, bool kTerms>
__global__ void __launch_bounds__(kBwdThreads) bwd_dkdv_kernel(const AttnBwdProblem bp, const float* delta) {
  using Sh = BwdShape<D, kTerms>;
  constexpr int LD = Sh::LD, QC = Sh::QC, NQ = QC / 8, ND = D / 8;
  const AttnProblem& p = bp.fwd;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);
  T* sV = sK + kBwdBK * LD;
  T* sQ0 = sV + kBwdBK * LD;  // stage s: Q rows at sQ0 + s * 2 * QC * LD, dO rows QC * LD after them
  float* sLse0 = reinterpret_cast<float*>(sQ0 + 2 * 2 * QC * LD);  // stage s: + s * 2 * QC; delta + QC
  int64_t* sLo0 = reinterpret_cast<int64_t*>(sLse0 + 2 * 2 * QC);   // stage s: + s * 2 * QC; hi + QC
  // (the 16-bit tiles are 16 * LD bytes per row pair, so sLo0 is 8-byte aligned)

  const int tid = static_cast<int>(threadIdx.x), warp = tid / 32, lane = tid % 32, gq = lane / 4, tq = lane % 4;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * kBwdBK, hkv = blockIdx.y, b = blockIdx.z;
  const int64_t G = p.Hq / p.Hkv;  // Hkv >= 1 here (backward_mma_supported)
  const int64_t klen = valid_keys(p, b), kend = min64(klen, p.Sk);
  const int64_t jn = max64(0, min64(kBwdBK, kend - j0));  // valid keys of the tile
  const ScoreTerms<float> terms(p);
  const float scale = terms.scale;
  const T* kg = static_cast<const T*>(p.k.data) + b * p.k.stride[0] + hkv * p.k.stride[1];
  const T* vg = static_cast<const T*>(p.v.data) + b * p.v.stride[0] + hkv * p.v.stride[1];

  // Whether chunk (group head g, rows from i0) sees a key of the tile: key ranges grow with the row, so the
  // chunk sees keys in [lo(i0), hi(i0 + n - 1)) (block-uniform). seek moves (g, i0) to the first chunk at
  // or after it that does; false when none is left.
  auto seek = [&](int64_t& g, int64_t& i0) -> bool {
    while (g < G) {
      if (i0 >= p.Sq) {
        ++g;
        i0 = 0;
        continue;
      }
      const int64_t h = hkv * G + g, n = min64(QC, p.Sq - i0);
      const math::KeyRange first = row_keys(p, b, h, i0, klen), last = row_keys(p, b, h, i0 + n - 1, klen);
      if (!(last.hi <= j0 || first.lo >= j0 + jn || last.hi <= first.lo)) return true;
      i0 += QC;
    }
    return false;
  };
  // Starts the copy of chunk (g, i0) into stage st (cp.async for Q / dO, plain stores for the rest: both
  // visible after the caller's wait and barrier) and commits its group.
  auto load_chunk = [&](int64_t g, int64_t i0, int st) {
    const int64_t h = hkv * G + g;
    T* sQ = sQ0 + st * 2 * QC * LD;
    load_tile<T, D, LD>(sQ, static_cast<const T*>(p.q.data) + b * p.q.stride[0] + h * p.q.stride[1], p.q.stride[2],
                        i0, QC, p.Sq);
    load_tile<T, D, LD>(sQ + QC * LD,
                        static_cast<const T*>(bp.dout.data) + b * bp.dout.stride[0] + h * bp.dout.stride[1],
                        bp.dout.stride[2], i0, QC, p.Sq);
    mma::cp_commit();
    float* sLse = sLse0 + st * 2 * QC;
    int64_t* sLo = sLo0 + st * 2 * QC;
    const float* lse = static_cast<const float*>(p.lse) + b * p.lse_stride[0] + h * p.lse_stride[1];
    for (int r = tid; r < QC; r += kBwdThreads) {
      const int64_t i = i0 + r;
      const bool ok = i < p.Sq;
      sLse[r] = ok ? lse[i * p.lse_stride[2]] : 0.f;
      sLse[QC + r] = ok ? delta[(b * p.Hq + h) * p.Sq + i] : 0.f;
      const math::KeyRange kr = ok ? row_keys(p, b, h, i, klen) : math::KeyRange{0, 0};
      sLo[r] = kr.lo;
      sLo[QC + r] = kr.hi;
    }
  };

  float dk[ND][4], dv[ND][4];
#pragma unroll
  for (int n = 0; n < ND; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[n][e] = dv[n][e] = 0.f;

  int64_t g = 0, i0 = 0;
  bool have = jn > 0 && seek(g, i0);
  if (have) {
    load_tile<T, D, LD>(sK, kg, p.k.stride[2], j0, kBwdBK, kend);
    load_tile<T, D, LD>(sV, vg, p.v.stride[2], j0, kBwdBK, kend);
    mma::cp_commit();
    load_chunk(g, i0, 0);
  }
  int st = 0;
  while (have) {
    int64_t g2 = g, i2 = i0 + QC;
    const bool more = seek(g2, i2);
    if (more) {
      load_chunk(g2, i2, st ^ 1);
      mma::cp_wait<1>();  // K, V and this chunk have landed; the next chunk may be in flight
    } else {
      mma::cp_wait<0>();
    }
    __syncthreads();
    const T* sQ = sQ0 + st * 2 * QC * LD;
    const T* sO = sQ + QC * LD;  // dout rows
    const float* sLse = sLse0 + st * 2 * QC;
    const float* sDelta = sLse + QC;
    const int64_t* sLo = sLo0 + st * 2 * QC;
    const int64_t* sHi = sLo + QC;
    const int64_t h = hkv * G + g, n = min64(QC, p.Sq - i0);
    const float slope = kTerms ? alibi_slope<float>(p, b, h) : 0.f;
    // Every pair of the chunk x tile takes part (no per-pair test): the first row has the smallest hi,
    // the last row the largest lo.
    const math::KeyRange first = row_keys(p, b, h, i0, klen), last = row_keys(p, b, h, i0 + n - 1, klen);
    const bool full = n == QC && jn == kBwdBK && last.lo <= j0 && j0 + kBwdBK <= first.hi;

    // S^T (this warp's 16 keys x QC rows) and dP^T.
    float s[NQ][4], dp[NQ][4];
#pragma unroll
    for (int c = 0; c < NQ; ++c)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[c][e] = dp[c][e] = 0.f;
    mma_abt<T, D, NQ, LD>(s, sK, warp * 16, sQ, lane);
    mma_abt<T, D, NQ, LD>(dp, sV, warp * 16, sO, lane);
    // P^T and dS^T in place: element (key gq + 8 (e / 2), row c * 8 + 2 tq + (e & 1)).
#pragma unroll
    for (int c = 0; c < NQ; ++c)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = c * 8 + 2 * tq + (e & 1);
        const int64_t j = j0 + warp * 16 + gq + 8 * (e / 2);
        const bool in = full || (r < n && j < kend && j >= sLo[r] && j < sHi[r]);
        float pr = 0.f, ds = 0.f;
        if (in)
          prob_and_grad<kTerms>(p, terms, b, h, i0 + r, j, slope, s[c][e], dp[c][e], sLse[r], sDelta[r], nullptr, 0,
                                pr, ds);
        s[c][e] = pr;
        dp[c][e] = ds;
      }
    mma_xb<T, QC, D, LD>(dv, s, sO, lane);
    mma_xb<T, QC, D, LD>(dk, dp, sQ, lane);
    __syncthreads();  // every warp is done with this stage before the next iteration refills it
    g = g2;
    i0 = i2;
    st ^= 1;
    have = more;
  }
  mma::cp_wait<0>();  // (K and V are in flight when no chunk sees the tile)

  // This thread's keys gq and gq + 8 of the warp's 16; columns n * 8 + 2 tq + {0, 1}.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t j = j0 + warp * 16 + gq + 8 * r;
    if (j >= p.Sk) continue;
    T* dkr = static_cast<T*>(bp.dk) + b * bp.dk_stride[0] + hkv * bp.dk_stride[1] + j * bp.dk_stride[2];
    T* dvr = static_cast<T*>(bp.dv) + b * bp.dv_stride[0] + hkv * bp.dv_stride[1] + j * bp.dv_stride[2];
#pragma unroll
    for (int n = 0; n < ND; ++n)
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int64_t d = n * 8 + 2 * tq + c;
        dkr[d * bp.dk_stride[3]] = from_acc<T>(scale * dk[n][2 * r + c]);
        dvr[d * bp.dv_stride[3]] = from_acc<T>(dv[n][2 * r + c]);
      }
  }
}

template <class T, int D, bool kTerms>
__global__ void __launch_bounds__(kBwdThreads, 1) bwd_dq_kernel(const AttnBwdProblem bp, const float* delta) {
  using Sh = BwdShape<D, kTerms>;
  constexpr int LD = Sh::LD, NK = kBwdBK / 8, ND = D / 8;
  const AttnProblem& p = bp.fwd;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sO = sQ + kBwdBQ * LD;
  T* sK0 = sO + kBwdBQ * LD;  // stage s: K rows at sK0 + s * 2 * kBwdBK * LD, V rows kBwdBK * LD after them

  const int tid = static_cast<int>(threadIdx.x), warp = tid / 32, lane = tid % 32, gq = lane / 4, tq = lane % 4;
  // Causal chunks near the end see the most keys: they start first.
  const int64_t qt = p.causal ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  const int64_t i0 = qt * kBwdBQ, h = blockIdx.y, b = blockIdx.z;
  const int64_t hkv = h / (p.Hq / p.Hkv);
  const int64_t n = min64(kBwdBQ, p.Sq - i0);
  const int64_t klen = valid_keys(p, b), kend = min64(klen, p.Sk);
  const ScoreTerms<float> terms(p);
  const float scale = terms.scale;
  const T* qg = static_cast<const T*>(p.q.data) + b * p.q.stride[0] + h * p.q.stride[1];
  const T* og = static_cast<const T*>(bp.dout.data) + b * bp.dout.stride[0] + h * bp.dout.stride[1];
  const T* kg = static_cast<const T*>(p.k.data) + b * p.k.stride[0] + hkv * p.k.stride[1];
  const T* vg = static_cast<const T*>(p.v.data) + b * p.v.stride[0] + hkv * p.v.stride[1];

  // This thread's rows gq and gq + 8 of the warp's 16: lse, delta, key range.
  float lse_r[2], delta_r[2];
  int64_t lo_r[2], hi_r[2];
  float* dbrow[2];  // kTerms: the rows of dbias (when asked for)
  const float slope = kTerms ? alibi_slope<float>(p, b, h) : 0.f;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = i0 + warp * 16 + gq + 8 * r;
    const bool ok = i < p.Sq;
    dbrow[r] = kTerms && ok && bp.dbias ? static_cast<float*>(bp.dbias) + b * bp.dbias_stride[0] +
                                              h * bp.dbias_stride[1] + i * bp.dbias_stride[2]
                                        : nullptr;
    lse_r[r] = ok ? static_cast<const float*>(p.lse)[b * p.lse_stride[0] + h * p.lse_stride[1] + i * p.lse_stride[2]]
                  : 0.f;
    delta_r[r] = ok ? delta[(b * p.Hq + h) * p.Sq + i] : 0.f;
    const math::KeyRange kr = ok ? row_keys(p, b, h, i, klen) : math::KeyRange{0, 0};
    lo_r[r] = kr.lo;
    hi_r[r] = kr.hi;
  }
  // The block's keys: [lo(i0), hi(i0 + n - 1)) clipped to the valid keys (ranges grow with the row).
  // A tile [j0, j0 + 64) is inside every row's range when full_lo <= j0 and j0 + 64 <= full_hi (the last
  // row has the largest lo, the first row the smallest hi).
  int64_t lo, hi, full_lo, full_hi;
  {
    const math::KeyRange first = row_keys(p, b, h, i0, klen), last = row_keys(p, b, h, i0 + n - 1, klen);
    lo = max64(0, first.lo);
    hi = min64(kend, last.hi);
    full_lo = last.lo;
    full_hi = n == kBwdBQ ? min64(first.hi, kend) : -1;  // (-1: rows past Sq, never full)
  }

  float dq[ND][4];
#pragma unroll
  for (int c = 0; c < ND; ++c)
#pragma unroll
    for (int e = 0; e < 4; ++e) dq[c][e] = 0.f;

  auto load_kv = [&](int64_t j0, int st) {
    T* sK = sK0 + st * 2 * kBwdBK * LD;
    load_tile<T, D, LD>(sK, kg, p.k.stride[2], j0, kBwdBK, kend);
    load_tile<T, D, LD>(sK + kBwdBK * LD, vg, p.v.stride[2], j0, kBwdBK, kend);
    mma::cp_commit();
  };
  load_tile<T, D, LD>(sQ, qg, p.q.stride[2], i0, kBwdBQ, p.Sq);
  load_tile<T, D, LD>(sO, og, bp.dout.stride[2], i0, kBwdBQ, p.Sq);
  mma::cp_commit();
  int64_t j0 = lo / kBwdBK * kBwdBK;
  if (j0 < hi) load_kv(j0, 0);
  for (int st = 0; j0 < hi; j0 += kBwdBK, st ^= 1) {
    const bool more = j0 + kBwdBK < hi;
    if (more) {
      load_kv(j0 + kBwdBK, st ^ 1);
      mma::cp_wait<1>();  // Q, dO and this tile have landed; the next tile may be in flight
    } else {
      mma::cp_wait<0>();
    }
    __syncthreads();
    const T* sK = sK0 + st * 2 * kBwdBK * LD;
    const T* sV = sK + kBwdBK * LD;
    const bool full = full_lo <= j0 && j0 + kBwdBK <= full_hi;  // every pair takes part

    float s[NK][4], dp[NK][4];
#pragma unroll
    for (int c = 0; c < NK; ++c)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[c][e] = dp[c][e] = 0.f;
    mma_abt<T, D, NK, LD>(s, sQ, warp * 16, sK, lane);
    mma_abt<T, D, NK, LD>(dp, sO, warp * 16, sV, lane);
    // dS in place of dP: element (row gq + 8 (e / 2), key c * 8 + 2 tq + (e & 1)).
#pragma unroll
    for (int c = 0; c < NK; ++c)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e / 2;
        const int64_t j = j0 + c * 8 + 2 * tq + (e & 1);
        const bool in = full || (j < kend && j >= lo_r[r] && j < hi_r[r]);
        float pr = 0.f, ds = 0.f;
        if (in)
          prob_and_grad<kTerms>(p, terms, b, h, i0 + warp * 16 + gq + 8 * r, j, slope, s[c][e], dp[c][e], lse_r[r],
                                delta_r[r], dbrow[r], bp.dbias_stride[3], pr, ds);
        dp[c][e] = ds;
      }
    mma_xb<T, kBwdBK, D, LD>(dq, dp, sK, lane);
    __syncthreads();  // every warp is done with this stage before the next iteration refills it
  }
  mma::cp_wait<0>();  // (Q / dO are in flight when the block has no keys)

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = i0 + warp * 16 + gq + 8 * r;
    if (i >= p.Sq) continue;
    T* dst = static_cast<T*>(bp.dq) + b * bp.dq_stride[0] + h * bp.dq_stride[1] + i * bp.dq_stride[2];
#pragma unroll
    for (int c = 0; c < ND; ++c)
#pragma unroll
      for (int e = 0; e < 2; ++e) dst[(c * 8 + 2 * tq + e) * bp.dq_stride[3]] = from_acc<T>(scale * dq[c][2 * r + e]);
  }
}

template <class T, int D, bool kTerms>
void launch_backward_mma(const AttnBwdProblem& bp, const float* delta, cudaStream_t st) {
  using Sh = BwdShape<D, kTerms>;
  const AttnProblem& p = bp.fwd;
  if (p.B * p.Hkv * p.Sk > 0) {
    ATTNKIT_CUDA_CHECK(cudaFuncSetAttribute(bwd_dkdv_kernel<T, D, kTerms>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(Sh::kSmemKV)));
    const dim3 grid(static_cast<unsigned>(ceil_div(p.Sk, kBwdBK)), static_cast<unsigned>(p.Hkv),
                    static_cast<unsigned>(p.B));
    bwd_dkdv_kernel<T, D, kTerms><<<grid, kBwdThreads, Sh::kSmemKV, st>>>(bp, delta);
    ATTNKIT_CUDA_CHECK_LAUNCH();
  }
  if (p.B * p.Hq * p.Sq > 0) {
    ATTNKIT_CUDA_CHECK(cudaFuncSetAttribute(bwd_dq_kernel<T, D, kTerms>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(Sh::kSmemQ)));
    const dim3 grid(static_cast<unsigned>(ceil_div(p.Sq, kBwdBQ)), static_cast<unsigned>(p.Hq),
                    static_cast<unsigned>(p.B));
    bwd_dq_kernel<T, D, kTerms><<<grid, kBwdThreads, Sh::kSmemQ, st>>>(bp, delta);
    ATTNKIT_CUDA_CHECK_LAUNCH();
  }
}

/// Whether the problem has score terms beyond dot * scale (dbias needs a bias).
bool has_terms(const AttnProblem& p) { return p.mask.present || p.bias.present || p.alibi.present || p.softcap > 0; }

bool rows_ok(const ViewN<4>& v) {
  if (v.stride[3] != 1 || reinterpret_cast<uintptr_t>(v.data) % 16 != 0) return false;
  for (int d = 0; d < 3; ++d)
    if (v.stride[d] % 8 != 0 && v.shape[d] > 1) return false;
  return true;
}

}  // namespace

bool backward_mma_supported(const AttnBwdProblem& bp) {
  const AttnProblem& p = bp.fwd;
  // ATTNKIT_CUDA_BWD_SIMT=1 (internal, read once): always the SIMT kernels (the tests compare both paths).
  static const bool force_simt = [] {
    const char* e = std::getenv("ATTNKIT_CUDA_BWD_SIMT");
    return e && std::strcmp(e, "1") == 0;
  }();
  if (force_simt) return false;
  if (p.dtype != DType::Float16 && p.dtype != DType::BFloat16) return false;
  if (p.D != p.Dv || (p.D != 64 && p.D != 128)) return false;
  if (p.sparse || p.row_lo) return false;
  // Score terms: a second gate, so that the plain kernels can be verified without them.
  if (has_terms(p) && !has_kernel("attention_backward_mma_terms")) return false;
  if (p.B > 65535 || p.Hq > 65535 || p.Hkv < 1 || p.Hq % p.Hkv != 0) return false;
  if (p.Sq > (int64_t{1} << 36) || p.Sk > (int64_t{1} << 36)) return false;  // grid.x = S / 64 < 2^31
  return rows_ok(p.q) && rows_ok(p.k) && rows_ok(p.v) && rows_ok(bp.dout);
}

void run_backward_mma(const AttnBwdProblem& bp, const float* delta, cudaStream_t st) {
  const bool f16 = bp.fwd.dtype == DType::Float16, d64 = bp.fwd.D == 64;
  if (has_terms(bp.fwd)) {
    if (d64)
      f16 ? launch_backward_mma<half_t, 64, true>(bp, delta, st) : launch_backward_mma<bf16_t, 64, true>(bp, delta, st);
    else
      f16 ? launch_backward_mma<half_t, 128, true>(bp, delta, st)
          : launch_backward_mma<bf16_t, 128, true>(bp, delta, st);
  } else {
    if (d64)
      f16 ? launch_backward_mma<half_t, 64, false>(bp, delta, st)
          : launch_backward_mma<bf16_t, 64, false>(bp, delta, st);
    else
      f16 ? launch_backward_mma<half_t, 128, false>(bp, delta, st)
          : launch_backward_mma<bf16_t, 128, false>(bp, delta, st);
  }
}

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
