#pragma once
// The fused CPU decode kernel: exact attention for few query rows per kv head (Sq x G <= kDecodeMaxRows, the
// GQA group times the query rows) over long keys, for the AVX2 and AVX-512 builds (float32 accumulation of
// float32, float16 and bfloat16 inputs). Decoding reads every K and V row once and does little arithmetic
// per byte, so it runs at the rate it can stream K and V; this kernel streams each chunk of BK keys once for
// ALL the rows of the kv head:
//   - QK^T as dot products along D, RQ rows x KJ keys of vector accumulators (RQ * KJ = 8: 4 x 2, then
//     2 x 4 and 1 x 8 for the last R % 4 rows) per block, the keys read straight from the caller's rows
//     (float16 converted in the load by vcvtph2ps, bfloat16 by a 16-bit shift), the 8 sums of a block
//     reduced together by one transpose-add (reduce8);
//     From kGemmRows (20) rows per kv head on AVX2 (GQA with several query rows), QK is GEMM-shaped instead
//     (session 29): the chunk's K transposed once into kt[D][BK] (transpose_k, 8 x 8 blocks in registers,
//     16-bit converted on the way), then qk_gemm: blocks of 3 (or 2) rows x the 32 keys as 4 vectors, the
//     query values broadcast, each kt vector loaded once for the block's rows, no horizontal reduction;
//     each score sums its D products in order (one FMA chain: other last bits than the quad's lanes);
//   - the online softmax per row over the chunk's BK scores (float32, math/softmax.h);
//   - PV with the chunk's V rows in L1: register blocks of RL rows x NV value vectors, probabilities
//     broadcast (bfloat16 V read in pairs, the even and odd columns of each 2W, kPairs: the same sums);
//   - K and V rows kPrefetchKeys ahead prefetched into L2 while the current chunk is computed, spread over
//     its arithmetic (K over the first row block's dot products, V over its PV panels; each in ascending
//     address order where the rows are contiguous: the hardware prefetcher follows them), across split, kv
//     head and batch boundaries (one thread: into the next work item; several: a burst at each item's start).
// With more than kDirectRows rows, 16-bit chunks are converted once into float buffers instead.
//
// Same structure and guarantees as the generic kernel's split decoding (attention_exact.h): the keys are
// cut into splits whose points depend on the problem size only, each (batch, kv head, split) is one work
// item, partial results are merged in split order by merge_splits (cpu/split_merge.h, double). Bitwise
// independent of the thread count. Key ranges (causal, window, key_lengths) are supported: chunks that cut
// through a row's range mask its scores, and its PV skips the masked keys (a masked NaN value is never
// read); the other features (mask, bias, ALiBi, block-sparse layouts, explicit row ranges), float64 and
// non-unit element strides of K / V go to the generic kernel (decode_eligible).

#include <cstring>
#include <type_traits>

#include "attnkit/math/masks.h"
#include "attnkit/math/softmax.h"
#include "cpu/kernel_common.h"
#include "cpu/parallel.h"
#include "cpu/simd.h"
#include "cpu/split_merge.h"
#include "validate/attention.h"
#include "workspace.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif
#if defined(_OPENMP)
#include <omp.h>
#endif

namespace attnkit {
namespace detail {
namespace cpu {
inline namespace ATTNKIT_ISA_NAMESPACE {

#if defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)

/// Query rows per kv head (Sq x G) the fused decode kernel takes.
constexpr int64_t kDecodeMaxRows = 32;

template <int W, class St>
struct DecodeKernel {
  using S = Simd<float, W>;
  using V = typename S::V;
  static constexpr int BK = 32;             // keys per chunk: K and V chunks of 16 KiB each at D = 128 (f32)
  static constexpr int kDirectRows = 4;     // up to this many rows, 16-bit K / V convert in the loads
  static constexpr int64_t kPrefetchKeys = 64;
  static constexpr int64_t kSplitItems = 64;      // as the generic kernel's split decoding
  static constexpr int64_t kSplitMinKeys = 2048;
  /// At most this many keys per split: each partial sums at most 512 chunks in float32 (the generic
  /// kernel's long-row segments give the same bound), and the merge runs in double.
  static constexpr int64_t kSplitMaxKeys = 512 * BK;

  // ------------------------------------------------------------------------------ vector primitives

  static inline V load(const float* p) { return S::load(p); }
  /// 8 elements at p as floats (AVX2 width whatever W is).
  static inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
  static inline __m256 load8(const Half* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static inline __m256 load8(const BFloat* p) {
    const __m256i x = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
  }
  static inline V load(const Half* p) {
    if constexpr (W == 8) {
      return (V)load8(p);
    } else {
      return (V)_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    }
  }
  static inline V load(const BFloat* p) {
    if constexpr (W == 8) {
      return (V)load8(p);
    } else {
      const __m512i x = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
      return (V)_mm512_castsi512_ps(_mm512_slli_epi32(x, 16));
    }
  }
  /// bfloat16 read in pairs (the fused kernel's own order, kPairs): 2W elements at p as two float vectors,
  /// the even ones (p[0], p[2], ..: each 16 bits shifted into its 32-bit lane's high half) and the odd ones
  /// (the lanes with their low half cleared). One load, one shift and one and per 2W elements, where two
  /// load()s take two widening shuffles and two shifts: the shuffles and shifts share Zen 3's FP1 with the
  /// FMAs, the and runs on any of the four pipes. Exact.
  static inline V load_even(const BFloat* p) {
    if constexpr (W == 8) {
      return (V)_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), 16));
    } else {
      return (V)_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_loadu_si512(p), 16));
    }
  }
  static inline V load_odd(const BFloat* p) {
    if constexpr (W == 8) {
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
      return (V)_mm256_castsi256_ps(_mm256_and_si256(x, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
    } else {
      return (V)_mm512_castsi512_ps(_mm512_and_si512(_mm512_loadu_si512(p), _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
    }
  }
  /// Whether PV reads E in pairs (load_even / load_odd): bfloat16 V read in place. Then the kernel's float
  /// rows of o hold each whole block of 2W columns as its even columns, then its odd ones (lane_of), and the
  /// output is written back in order: each output element sums the same products in the same order as
  /// with load(), so the results are bitwise the same. (QK reads K with load(): a dot product in pairs adds
  /// its terms in another order, and with the query rows in that order GCC spilled the quad's query vectors:
  /// GQA 32:8 bfloat16 in cache, 50 against 44 ns per key for float16.)
  template <class E>
  static constexpr bool kPairs = std::is_same<E, BFloat>::value;
  /// Value vectors per PV panel: row quads (RL = 4) 3 on AVX2 (12 accumulators + 3 value vectors + the
  /// broadcast: all 16 ymm registers; 4 x 2 left the FMA pipes waiting on 8 chains of 4-cycle FMAs),
  /// single rows (MHA) 8 (8 accumulators, the value loads folded into the FMAs; 1 x 4 had 4 chains). The
  /// same products summed in the same order per output element: results unchanged. bfloat16 pairs and
  /// AVX-512 as before. GQA 32:8 float32 in cache 0.89x the time, MHA from memory 0.89-0.91x (Zen 3,
  /// session 28).
  template <class E>
  static constexpr int kNV4 = W == 8 && !kPairs<E> ? 3 : 2;
  template <class E>
  static constexpr int kNV1 = W == 8 && !kPairs<E> ? 8 : 4;
  /// Where element d of a row of n elements sits in the kernel's o rows (pairs: see kPairs).
  static inline int64_t lane_of(int64_t d, int64_t n, bool pairs) {
    constexpr int64_t P = 2 * W;
    if (!pairs || d >= n / P * P) return d;
    return d / P * P + (d % 2) * W + (d % P) / 2;
  }
  static inline float scalar(float x) { return x; }
  static inline float scalar(Half x) { return to_acc(x); }
  static inline float scalar(BFloat x) { return to_acc(x); }

  /// One accumulator folded to 256 bits (AVX-512: its two halves added).
  static inline __m256 fold(V a) {
    if constexpr (W == 8) {
      return (__m256)a;
    } else {
      const __m512 z = (__m512)a;
      return _mm256_add_ps(_mm512_castps512_ps256(z), _mm512_extractf32x8_ps(z, 1));
    }
  }

  /// dst[i] = sum of the lanes of a_i, i < 8: pairwise adds (hadd), then the two 128-bit halves. The
  /// accumulators come by value: through a pointer GCC kept them in memory, spilled and reloaded them
  /// around the reduction (tens of moves per block of 8 dot products of 128 terms).
  static inline void reduce8(V a0, V a1, V a2, V a3, V a4, V a5, V a6, V a7, float* dst) {
    const __m256 t0 = _mm256_hadd_ps(fold(a0), fold(a1)), t1 = _mm256_hadd_ps(fold(a2), fold(a3));
    const __m256 t2 = _mm256_hadd_ps(fold(a4), fold(a5)), t3 = _mm256_hadd_ps(fold(a6), fold(a7));
    const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    _mm256_storeu_ps(dst, _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31)));
  }

  static inline void prefetch_l2(const void* p) {
    // GCC deletes a loop of nothing but __builtin_prefetch (no side effect), hence the asm. The address in a
    // register: with a memory operand ("m") GCC kept 7 of the 8 accumulators of the 4-row PV loop on the
    // stack (a load and a store per FMA; 34% of the samples of GQA 32:8 float16 decode in cache).
    asm volatile("prefetcht1 (%0)" : : "r"(p));
  }
  /// prefetcht1 inside a loop that does other work (GCC does not delete it): the builtin.
  static inline void prefetch_l2_in(const void* p) { __builtin_prefetch(p, 0, 2); }

  // ----------------------------------------------------------------------------------- micro-kernels

  /// Raw scores s[r * lds + j] = q_r . k_j of RQ rows (q: float rows, ld D) and the keys j < nk of a block
  /// of KJ = 8 / RQ (rows past nk repeat the last one; their sums are not stored).
  /// pf (when not null): pn rows (stride ldk, D elements each) prefetched into L2, one cache line per step
  /// of the D loop (the rest after it), so that the prefetches spread evenly over the arithmetic.
  template <int RQ, bool PF = false, class E>
  static inline void qk_block(const float* q, const E* k, int64_t ldk, int nk, int64_t D, float* s, int64_t lds,
                              const E* pf = nullptr, int pn = 0) {
    if constexpr (RQ == 4 && W == 8) {  // (AVX2; AVX-512 as before, not measured with qk_quad)
      qk_quad<PF>(q, k, ldk, nk, D, s, lds, pf, pn);
      return;
    }
    constexpr int KJ = 8 / RQ;
    const E* kr[KJ];
    for (int j = 0; j < KJ; ++j) kr[j] = k + (j < nk ? j : nk - 1) * ldk;
    V acc[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) acc[i] = V{};
    const int64_t Dw = D / W * W;
    const int64_t row_bytes = D * static_cast<int64_t>(sizeof(E));
    int64_t pl = 0;  // the next line to prefetch: byte pl of row pr of pf
    int pr = PF && pf ? 0 : pn;  // (PF false: the code of the kernel without these prefetches)
    for (int64_t d = 0; d < Dw; d += W) {  // (unrolled: the accumulators must stay in registers)
#pragma GCC unroll 4
      for (int l = 0; l < 4 / RQ; ++l)  // (RQ < 4: as many keys per block as lines per step more)
        if (PF && pr < pn) {
          prefetch_l2(reinterpret_cast<const char*>(pf + pr * ldk) + pl);
          if ((pl += 64) >= row_bytes) pl = 0, ++pr;
        }
      V qv[RQ];
#pragma GCC unroll 8
      for (int r = 0; r < RQ; ++r) qv[r] = S::load(q + r * D + d);
#pragma GCC unroll 8
      for (int j = 0; j < KJ; ++j) {
        V kv = load(kr[j] + d);
        // K in a register, read once for all RQ rows: GCC otherwise folds the load into every FMA (for
        // RQ = 2: 10 loads per 8 FMAs, more than Zen 3's two vector loads a cycle can feed). RQ = 4: 4 query
        // + 2 key vectors per 8 FMAs, 8 + 4 + 1 of the 16 ymm registers.
        if constexpr (RQ > 1) asm("" : ATTNKIT_VREG(kv));
#pragma GCC unroll 8
        for (int r = 0; r < RQ; ++r) acc[r * KJ + j] += qv[r] * kv;
      }
    }
    for (; PF && pr < pn; pl = 0, ++pr)
      for (; pl < row_bytes; pl += 64) prefetch_l2(reinterpret_cast<const char*>(pf + pr * ldk) + pl);
    alignas(32) float sums[8];
    reduce8(acc[0], acc[1], acc[2], acc[3], acc[4], acc[5], acc[6], acc[7], sums);
    for (int64_t d = Dw; d < D; ++d)  // odd D: the tail, after the vector part
      for (int r = 0; r < RQ; ++r)
        for (int j = 0; j < KJ; ++j) sums[r * KJ + j] += q[r * D + d] * scalar(kr[j][d]);
    for (int r = 0; r < RQ; ++r)
      for (int j = 0; j < nk && j < KJ; ++j) s[r * lds + j] = sums[r * KJ + j];
  }

  /// qk_block for a row quad (RQ = 4, KJ = 2 keys): the same sums in the same order, with less work per
  /// step around the 8 FMAs: the query vectors held in registers (4 + 2 loads per 8 FMAs, not 2 + 8), two
  /// steps per iteration with one prefetch of each of the two rows pf[0], pf[1] (a line of each row per
  /// two steps: every line of a float32 row, the rest after the loop), and the 8 sums stored as 4 pairs.
  template <bool PF, class E>
  static inline void qk_quad(const float* q, const E* k, int64_t ldk, int nk, int64_t D, float* s, int64_t lds,
                             const E* pf, int pn) {
    const E* k0 = k;
    const E* k1 = k + (nk > 1 ? ldk : 0);
    // Rows to prefetch (a row not to prefetch: the key row itself, already in cache; no branch per step).
    const char* p0 = reinterpret_cast<const char*>(PF && pf && pn > 0 ? pf : k0);
    const char* p1 = reinterpret_cast<const char*>(PF && pf && pn > 1 ? pf + ldk : k1);
    const int64_t rb = D * static_cast<int64_t>(sizeof(E));
    V a0{}, a1{}, a2{}, a3{}, a4{}, a5{}, a6{}, a7{};
    const float *q0 = q, *q1 = q + D, *q2 = q + 2 * D, *q3 = q + 3 * D;
    auto step = [&](int64_t d) __attribute__((always_inline)) {
      V x0 = S::load(q0 + d), x1 = S::load(q1 + d), x2 = S::load(q2 + d), x3 = S::load(q3 + d);
      asm("" : "+v"(x0), "+v"(x1), "+v"(x2), "+v"(x3));
      V y0 = load(k0 + d), y1 = load(k1 + d);
      asm("" : "+v"(y0), "+v"(y1));
      a0 += x0 * y0, a1 += x0 * y1, a2 += x1 * y0, a3 += x1 * y1;
      a4 += x2 * y0, a5 += x2 * y1, a6 += x3 * y0, a7 += x3 * y1;
    };
    const int64_t Dw = D / W * W;
    // The lines in ascending order, row p0's then row p1's (interleaving the two rows' lines measured 1.15x
    // the time from memory: the hardware prefetcher follows the software prefetches' stream).
    const char* pp = p0;
    const char* pe = p0 + rb;
    bool second = false;
    auto pf_next = [&]() __attribute__((always_inline)) {
      if (pp >= pe) {
        if (second) return;
        second = true, pp = p1, pe = p1 + rb;
      }
      prefetch_l2(pp);
      pp += 64;
    };
    int64_t d = 0;
    for (; d + 2 * W <= Dw; d += 2 * W) {
      if (PF) pf_next(), pf_next();
      step(d);
      step(d + W);
    }
    if (d < Dw) step(d);
    if (PF)
      while (!second || pp < pe) pf_next();
    alignas(32) float sums[8];
    reduce8(a0, a1, a2, a3, a4, a5, a6, a7, sums);
    if (Dw < D || nk < 2) {
      const E* kr[2] = {k0, k1};
      for (int64_t e = Dw; e < D; ++e)  // odd D: the tail, after the vector part
        for (int r = 0; r < 4; ++r)
          for (int j = 0; j < 2; ++j) sums[r * 2 + j] += q[r * D + e] * scalar(kr[j][e]);
      for (int r = 0; r < 4; ++r)
        for (int j = 0; j < nk && j < 2; ++j) s[r * lds + j] = sums[r * 2 + j];
      return;
    }
    const __m128 lo = _mm_load_ps(sums), hi = _mm_load_ps(sums + 4);
    _mm_storel_pi(reinterpret_cast<__m64*>(s), lo);
    _mm_storeh_pi(reinterpret_cast<__m64*>(s + lds), lo);
    _mm_storel_pi(reinterpret_cast<__m64*>(s + 2 * lds), hi);
    _mm_storeh_pi(reinterpret_cast<__m64*>(s + 3 * lds), hi);
  }

  // ------------------------------------------------------------- GEMM-shaped QK (many rows, AVX2)

  /// Whether the chunk's K is transposed once into kt[D][BK] (keys in the vector lanes) and QK runs as a
  /// small GEMM (qk_gemm): from kGemmRows rows per kv head on AVX2 (GQA with several query rows). The
  /// transpose (its loads the chunk's first touch of K) is shared by all the rows; the dot products along D
  /// (qk_quad) pay a horizontal reduction per 8 sums instead. Session 29, Zen 3, one thread, CPU time, main
  /// -> this: 32 rows (GQA 32:8 Sq = 8) 0.89-1.00x the time; 16 rows 0.84-0.90x in cache but 0.97-1.13x
  /// from memory, so 16 rows (and fewer) keep the quads.
  static constexpr int64_t kGemmRows = 20;

  /// kt[d][j] = k[j][d] (float) for d < D, j < BK: the keys j < nk of the chunk (rows past nk repeat the last
  /// one; their scores are not used). 8 x 8 blocks transposed in registers.
  template <class E>
  static void transpose_k(const E* k, int64_t ldk, int nk, int64_t D, float* kt) {
    const int64_t Dw = D / W * W;
    for (int j0 = 0; j0 < BK; j0 += 8) {
      const E* r[8];
      for (int i = 0; i < 8; ++i) r[i] = k + (j0 + i < nk ? j0 + i : nk - 1) * ldk;
      for (int64_t d = 0; d < Dw; d += 8) {
        __m256 t[8];
        if constexpr (std::is_same<E, float>::value) {
          // rows i and i + 4 of the block in the two 128-bit halves (the lane crossing in the loads)
          for (int i = 0; i < 4; ++i) {
            t[i] = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(r[i] + d)), _mm_loadu_ps(r[i + 4] + d), 1);
            t[i + 4] = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(r[i] + d + 4)),
                                            _mm_loadu_ps(r[i + 4] + d + 4), 1);
          }
        } else {
          __m256 x[8];
          for (int i = 0; i < 8; ++i) x[i] = (__m256)load8(r[i] + d);
          for (int i = 0; i < 4; ++i) {
            t[i] = _mm256_permute2f128_ps(x[i], x[i + 4], 0x20);
            t[i + 4] = _mm256_permute2f128_ps(x[i], x[i + 4], 0x31);
          }
        }
        for (int h = 0; h < 8; h += 4) {  // columns d + h .. d + h + 3
          const __m256 a0 = _mm256_unpacklo_ps(t[h], t[h + 1]), a1 = _mm256_unpackhi_ps(t[h], t[h + 1]);
          const __m256 a2 = _mm256_unpacklo_ps(t[h + 2], t[h + 3]), a3 = _mm256_unpackhi_ps(t[h + 2], t[h + 3]);
          float* o = kt + (d + h) * BK + j0;
          _mm256_storeu_ps(o, _mm256_shuffle_ps(a0, a2, 0x44));
          _mm256_storeu_ps(o + BK, _mm256_shuffle_ps(a0, a2, 0xEE));
          _mm256_storeu_ps(o + 2 * BK, _mm256_shuffle_ps(a1, a3, 0x44));
          _mm256_storeu_ps(o + 3 * BK, _mm256_shuffle_ps(a1, a3, 0xEE));
        }
      }
      for (int64_t d = Dw; d < D; ++d)
        for (int i = 0; i < 8; ++i) kt[d * BK + j0 + i] = scalar(r[i][d]);
    }
  }

  /// Raw scores s[r * BK + j] = q_r . k_j, r < RB, for all BK keys of the chunk from kt[D][BK]: RB x BK / W
  /// accumulators, the query values broadcast, each K vector loaded once for the RB rows; every score sums
  /// its D products in order (one FMA chain). pf (when not null): the pn rows (stride ldp, rb bytes each) of
  /// K to prefetch into L2, in ascending address order, npd lines per step of d (the rest after the loop).
  template <int RB, bool PF = false, class E = float>
  static inline void qk_gemm(const float* q, const float* kt, int64_t D, float* s, const E* pf = nullptr, int pn = 0,
                             int64_t ldp = 0, int npd = 0) {
    static_assert(W == 8 && BK == 32, "qk_gemm: AVX2, 4 key vectors");
    V a[RB][4];
    for (int r = 0; r < RB; ++r)
      for (int n = 0; n < 4; ++n) a[r][n] = V{};
    const int64_t rb = D * static_cast<int64_t>(sizeof(E));
    const char* pp = reinterpret_cast<const char*>(pf);
    const char* pe = pp + (PF && pf && pn > 0 ? rb : 0);
    int prow = 0;
    auto pf_next = [&]() __attribute__((always_inline)) {
      if (pp >= pe) {
        if (++prow >= pn) return;
        pp = reinterpret_cast<const char*>(pf + prow * ldp), pe = pp + rb;
      }
      prefetch_l2(pp);
      pp += 64;
    };
    for (int64_t d = 0; d < D; ++d) {
      if (PF)
        for (int i = 0; i < npd; ++i) pf_next();
      V b[RB];
#pragma GCC unroll 4
      for (int r = 0; r < RB; ++r) b[r] = q[r * D + d] - V{};  // (x - 0: a broadcast from memory)
#pragma GCC unroll 4
      for (int n = 0; n < 4; ++n) {
        V kv = S::load(kt + d * BK + n * W);
        asm("" : ATTNKIT_VREG(kv));
#pragma GCC unroll 4
        for (int r = 0; r < RB; ++r) a[r][n] += b[r] * kv;
      }
    }
    if (PF && pf)
      while (prow < pn && !(pp >= pe && prow + 1 >= pn)) pf_next();
    for (int r = 0; r < RB; ++r)
      for (int n = 0; n < 4; ++n) S::store(s + r * BK + n * W, a[r][n]);
  }

  /// o[r][d0 .. d0 + NV W) += sum_{j in [jb, je)} p[r][j] v[j][d0 ..] for RL rows (p: ld BK, o: ld ldo).
  /// pf (when not null): nl <= 4 cache lines at pf + j * pstep bytes for the keys j < pn (pv_rows: lines of
  /// rows of another chunk), prefetched into L2 one key at a time, so that the V prefetches spread evenly
  /// over the PV arithmetic.
  /// PAIRS (E bfloat16, NV even): vectors 2m and 2m + 1 of the panel are the even and odd elements of its
  /// block m of 2W columns (o in the pairs order, see kPairs).
  template <int RL, int NV, bool PF = false, bool PAIRS = false, class E>
  static inline void pv_panel(const float* p, const E* v, int64_t ldv, int jb, int je, float* o, int64_t ldo,
                              const E* pf = nullptr, int pn = 0, int nl = 0, int64_t pstep = 0) {
    // jb < je from here: for a loop that may not run GCC kept acc on the stack, a store and a reload of
    // every accumulator per panel (as in MicroGemm::block).
    if (jb >= je) return;
    V acc[RL][NV];
    for (int r = 0; r < RL; ++r)
      for (int n = 0; n < NV; ++n) acc[r][n] = S::load(o + r * ldo + n * W);
    for (int j = jb; j < je; ++j) {
      if (PF && j < pn) {  // (straight-line: with a loop over the lines GCC kept acc on the stack)
        // RL < 4 (MHA: 1 - 3 rows) the builtin, RL = 4 the asm (the RL = 4 quad measured slower with the
        // builtin in session 24: GQA 32:8, Sq=1, Sk 8192 / 32768, 1.07-1.10x the time, 2 processes). The asm
        // takes the address in a register: with a memory operand GCC kept 7 of the 8 accumulators on the
        // stack (prefetch_l2; session 26: float16 in cache 0.77-0.80x the time).
        const char* a = reinterpret_cast<const char*>(pf) + j * pstep;
        if constexpr (RL < 4) {
          prefetch_l2_in(a);
          if (nl > 1) prefetch_l2_in(a + 64);
          if (nl > 2) prefetch_l2_in(a + 128);
          if (nl > 3) prefetch_l2_in(a + 192);
        } else {
          prefetch_l2(a);
          if (nl > 1) prefetch_l2(a + 64);
          if (nl > 2) prefetch_l2(a + 128);
          if (nl > 3) prefetch_l2(a + 192);
        }
      }
      V vv[NV];
#pragma GCC unroll 8
      for (int n = 0; n < NV; ++n) {
        if constexpr (PAIRS)
          vv[n] = n % 2 == 0 ? load_even(v + j * ldv + n * W) : load_odd(v + j * ldv + (n - 1) * W);
        else
          vv[n] = load(v + j * ldv + n * W);
      }
#pragma GCC unroll 8
      for (int r = 0; r < RL; ++r) {
        const V pb = p[r * BK + j] - V{};  // (x - 0: a broadcast straight from memory, see MicroGemm)
#pragma GCC unroll 8
        for (int n = 0; n < NV; ++n) acc[r][n] += pb * vv[n];
      }
    }
    for (int r = 0; r < RL; ++r)
      for (int n = 0; n < NV; ++n) S::store(o + r * ldo + n * W, acc[r][n]);
  }

  /// PV of RL rows over keys [jb, je) of the chunk, all Dv columns: panels of NV vectors, then single
  /// vectors, then the scalar tail (Dv % W). Pairs (kPairs<E>): the panels and then single blocks of 2W
  /// columns over the whole blocks of 2W, read in pairs; the rest in order.
  /// pf, pn: rows [0, pn) of another chunk of V (stride ldv) prefetched into L2, spread over the panels (each
  /// prefetches the lines of its own columns not prefetched by the previous panel; not the Dv % W tail).
  template <int RL, int NV, bool PF = false, class E>
  static void pv_rows(const float* p, const E* v, int64_t ldv, int jb, int je, int64_t Dv, float* o, int64_t ldo,
                      const E* pf = nullptr, int pn = 0) {
    constexpr bool PR = kPairs<E>;
    static_assert(!PR || NV % 2 == 0, "pairs: panels of whole blocks of 2W columns");
    const int64_t Dw = Dv / W * W, Dp = PR ? Dv / (2 * W) * (2 * W) : Dw;
    int64_t d = 0;
    constexpr int64_t es = sizeof(E);
    int64_t next = 0;  // the first cache line (byte offset / 64 in a row) not yet prefetched
    auto pf_lines = [&](int64_t d1) {  // lines (at most 4) the panel ending at column d1 prefetches from `next`
      return PF && pf ? static_cast<int>(imin(4, imax(0, (d1 * es + 63) / 64 - next))) : 0;
    };
    const char* pfb = reinterpret_cast<const char*>(pf);
    // Where the prefetched rows are contiguous (ldv = Dv), the lines go in ascending address order over all
    // of them (each panel takes the next nl * pn lines of [pf, pf + pn rows), nl per key): the hardware
    // prefetcher follows the software prefetches' stream. Otherwise row j of each panel's key j, its own
    // lines [next, next + nl).
    const bool lin = ldv == Dv;
    const int64_t rstep = ldv * es;
    auto pf_at = [&]() { return reinterpret_cast<const E*>(pfb + 64 * (lin ? next * pn : next)); };
    auto pf_step = [&](int nl) { return lin ? 64 * static_cast<int64_t>(nl) : rstep; };
    for (; d + NV * W <= Dp; d += NV * W) {
      const int nl = pf_lines(d + NV * W);
      pv_panel<RL, NV, PF, PR>(p, v + d, ldv, jb, je, o + d, ldo, pf_at(), nl ? pn : 0, nl, pf_step(nl));
      next += nl;
    }
    if constexpr (PR)
      for (; d < Dp; d += 2 * W) {
        const int nl = pf_lines(d + 2 * W);
        pv_panel<RL, 2, PF, true>(p, v + d, ldv, jb, je, o + d, ldo, pf_at(), nl ? pn : 0, nl, pf_step(nl));
        next += nl;
      }
    for (; d < Dw; d += W) {
      const int nl = pf_lines(d + W);
      pv_panel<RL, 1, PF>(p, v + d, ldv, jb, je, o + d, ldo, pf_at(), nl ? pn : 0, nl, pf_step(nl));
      next += nl;
    }
    for (; d < Dv; ++d)
      for (int r = 0; r < RL; ++r) {
        float acc = o[r * ldo + d];
        for (int j = jb; j < je; ++j) acc += p[r * BK + j] * scalar(v[j * ldv + d]);
        o[r * ldo + d] = acc;
      }
  }

  // ----------------------------------------------------------------------------------------- driver

  struct Ctx {
    const AttnProblem* p;
    int64_t G, R;          // query heads per kv head; rows per kv head (Sq * G)
    int64_t nsplit, split_len;
    float scale, cap_in, cap_out;
    bool softcap, pack;    // pack: 16-bit chunks converted into float buffers first (R > kDirectRows)
    bool serial;           // one thread runs every work item in order (the stream continues into the next)
    bool pairs;            // o rows in the pairs order (kPairs: bfloat16 V read in place)
    bool gemm;             // K chunks transposed into kbuf and QK by qk_gemm (AVX2, R >= kGemmRows)
    float* part_o;         // [item][split][R][Dv] normalised partial outputs (nsplit > 1)
    float* part_lse;       // [item][split][R]
  };

  struct Work {
    float* q;     // [R][D]
    float* o;     // [R][DvP]
    float* s;     // [R][BK] scores, then probabilities
    float* kbuf;  // [BK][D] (pack), or the chunk's K transposed, kt[D][BK] (gemm)
    float* vbuf;  // [BK][Dv] (pack)
    float* m;     // [R]
    float* l;     // [R]
    int64_t* lo;  // [R] key range of each row
    int64_t* hi;
    double* acc;  // [Dv] merge accumulator
    int64_t* pf;  // [2]: work item + 1 whose first keys this thread prefetched already, and how many
  };

  static int64_t dvp(const AttnProblem& p) { return (p.Dv + W - 1) / W * W; }

  static std::size_t work_bytes(const Ctx& c) {
    const AttnProblem& p = *c.p;
    auto a = [](std::size_t n) { return (n + 63) / 64 * 64; };
    const std::size_t R = static_cast<std::size_t>(c.R);
    return a(4 * R * p.D) + a(4 * R * dvp(p)) + a(4 * R * BK) + a(4 * BK * p.D) + a(4 * BK * p.Dv) + 2 * a(4 * R) +
           2 * a(8 * R) + a(8 * p.Dv) + a(16);
  }

  static Work carve(void* mem, const Ctx& c) {
    const AttnProblem& p = *c.p;
    Carver cv(mem);
    Work w;
    w.q = cv.take<float>(c.R * p.D);
    w.o = cv.take<float>(c.R * dvp(p));
    w.s = cv.take<float>(c.R * BK);
    w.kbuf = cv.take<float>(BK * p.D);
    w.vbuf = cv.take<float>(BK * p.Dv);
    w.m = cv.take<float>(c.R);
    w.l = cv.take<float>(c.R);
    w.lo = cv.take<int64_t>(c.R);
    w.hi = cv.take<int64_t>(c.R);
    w.acc = cv.take<double>(p.Dv);
    w.pf = cv.take<int64_t>(2);
    return w;
  }

  /// Splits from the problem size only: enough work items for the cores when there are few kv heads, and
  /// at most kSplitMaxKeys keys each.
  static int64_t key_splits(const AttnProblem& p, int64_t* len) {
    *len = p.Sk;
    const int64_t items = p.B * p.Hkv;
    int64_t n = (p.Sk + kSplitMaxKeys - 1) / kSplitMaxKeys;
    if (items < kSplitItems) n = imax(n, imin(p.Sk / kSplitMinKeys, (kSplitItems + items - 1) / items));
    if (n <= 1) return 1;
    *len = ((p.Sk + n - 1) / n + BK - 1) / BK * BK;
    return (p.Sk + *len - 1) / *len;
  }

  /// Row r of the kv head: query row r / G, head hkv * G + r % G.
  static const St* q_row(const AttnProblem& p, int64_t b, int64_t h, int64_t i) {
    return static_cast<const St*>(p.q.data) + b * p.q.stride[0] + h * p.q.stride[1] + i * p.q.stride[2];
  }

  /// Prefetches rows [j, j + n) (clipped to end) of a [Sk][N] operand row block into L2.
  static void prefetch_rows(const St* base, int64_t ld, int64_t j, int64_t n, int64_t end, int64_t N) {
    n = imin(n, end - j);
    const int64_t bytes = N * static_cast<int64_t>(sizeof(St));
    for (int64_t r = 0; r < n; ++r) {
      const char* row = reinterpret_cast<const char*>(base + (j + r) * ld);
      for (int64_t o = 0; o < bytes; o += 64) prefetch_l2(row + o);
    }
  }

  /// The keys [lo, hi) a work item reads (the hull of its rows' key ranges within its split), from the K / V
  /// rows k, v of its (batch, kv head).
  struct Stream {
    const St* k = nullptr;
    const St* v = nullptr;
    int64_t lo = 0, hi = 0;
  };

  static int64_t kv_length(const AttnProblem& p, int64_t b) {
    return p.key_lengths.present ? load_int(p.key_lengths.data, p.key_lengths.dtype, b * p.key_lengths.stride[0]) : p.Sk;
  }

  static Stream stream_of(const Ctx& c, int64_t item, int64_t split) {
    const AttnProblem& p = *c.p;
    const int64_t b = item / p.Hkv, hkv = item % p.Hkv, kv_len = kv_length(p, b);
    const int64_t s_lo = split * c.split_len, s_hi = imin(p.Sk, s_lo + c.split_len);
    Stream st;
    st.k = static_cast<const St*>(p.k.data) + b * p.k.stride[0] + hkv * p.k.stride[1];
    st.v = static_cast<const St*>(p.v.data) + b * p.v.stride[0] + hkv * p.v.stride[1];
    st.lo = s_hi, st.hi = s_lo;
    for (int64_t r = 0; r < c.R; ++r) {
      const math::KeyRange kr = math::key_range(r / c.G, p.Sq, p.Sk, p.causal, p.window_left, p.window_right, kv_len);
      const int64_t lo = imax(kr.lo, s_lo), hi = imin(kr.hi, s_hi);
      if (hi > lo) st.lo = imin(st.lo, lo), st.hi = imax(st.hi, hi);
    }
    return st;
  }

  /// One (batch, kv head, split) work item (index it = item * nsplit + split); leaves the partial
  /// (nsplit > 1) or final results. Prefetching: K and V rows kPrefetchKeys ahead of each chunk. Where
  /// one thread runs the items in order (c.serial), the chunks near the end of the split prefetch the first
  /// rows of the next item, so the stream does not stall at the boundary; otherwise the item starts by
  /// prefetching its own first kPrefetchKeys rows (those not yet prefetched), in one burst.
  static void attend(const Ctx& c, const Work& w, int64_t it) {
    const AttnProblem& p = *c.p;
    const int64_t item = it / c.nsplit, split = it % c.nsplit;
    const int64_t b = item / p.Hkv, hkv = item % p.Hkv, R = c.R, D = p.D, Dv = p.Dv, DvP = dvp(p);
    const int64_t kv_len = kv_length(p, b);
    const int64_t s_lo = split * c.split_len, s_hi = imin(p.Sk, s_lo + c.split_len);
    int64_t hull_lo = s_hi, hull_hi = s_lo, inner_lo = s_lo, inner_hi = s_hi;
    for (int64_t r = 0; r < R; ++r) {
      const int64_t i = r / c.G, h = hkv * c.G + r % c.G;
      const math::KeyRange kr = math::key_range(i, p.Sq, p.Sk, p.causal, p.window_left, p.window_right, kv_len);
      w.lo[r] = imax(kr.lo, s_lo);
      w.hi[r] = imin(kr.hi, s_hi);
      if (w.hi[r] > w.lo[r]) {
        hull_lo = imin(hull_lo, w.lo[r]);
        hull_hi = imax(hull_hi, w.hi[r]);
      }
      inner_lo = imax(inner_lo, w.lo[r]);
      inner_hi = imin(inner_hi, w.hi[r]);
      const St* src = q_row(p, b, h, i);
      for (int64_t d = 0; d < D; ++d) w.q[r * D + d] = scalar(src[d * p.q.stride[3]]);
      w.m[r] = math::neg_inf<float>();
      w.l[r] = 0.0f;
    }
    std::memset(w.o, 0, sizeof(float) * R * DvP);
    const St* kbase = static_cast<const St*>(p.k.data) + b * p.k.stride[0] + hkv * p.k.stride[1];
    const St* vbase = static_cast<const St*>(p.v.data) + b * p.v.stride[0] + hkv * p.v.stride[1];
    const int64_t ldk = p.k.stride[2], ldv = p.v.stride[2];
    // The first rows: those the previous item of this thread did not prefetch.
    const int64_t done = w.pf[0] == it + 1 ? w.pf[1] : 0;
    if (hull_lo < hull_hi) {
      prefetch_rows(kbase, ldk, hull_lo + done, kPrefetchKeys - done, hull_hi, D);
      prefetch_rows(vbase, ldv, hull_lo + done, kPrefetchKeys - done, hull_hi, Dv);
    }
    Stream next;
    if (c.serial && it + 1 < c.nsplit * p.B * p.Hkv) next = stream_of(c, (it + 1) / c.nsplit, (it + 1) % c.nsplit);
    int64_t next_done = 0;  // rows [next.lo, next.lo + next_done) prefetched
    for (int64_t j0 = hull_lo; j0 < hull_hi; j0 += BK) {
      const int jn = static_cast<int>(imin(BK, hull_hi - j0));
      const bool edge = !(j0 >= inner_lo && j0 + jn <= inner_hi);
      const St* kc = kbase + j0 * ldk;
      const St* vc = vbase + j0 * ldv;
      // The rows to prefetch while this chunk is computed: [a, a + jn) of this item's keys, then of the next.
      const int64_t a = j0 + kPrefetchKeys;
      const St *pfk = nullptr, *pfv = nullptr;
      int pn = 0;
      if (a < hull_hi) {
        pfk = kbase + a * ldk, pfv = vbase + a * ldv;
        pn = static_cast<int>(imin(jn, hull_hi - a));
      } else if (next.lo < next.hi) {
        const int64_t n0 = next.lo + (a - hull_hi);
        pn = static_cast<int>(imax(0, imin(jn, next.hi - n0)));
        if (pn > 0) pfk = next.k + n0 * ldk, pfv = next.v + n0 * ldv;
        if (n0 == next.lo + next_done) next_done += pn;
      }
      if (c.gemm) transpose_k(kc, ldk, jn, D, w.kbuf);  // kt[D][BK] (qk_gemm)
      if (c.pack) {
        for (int j = 0; j < jn; ++j) {
          if (!c.gemm) convert_row(kc + j * ldk, 1, D, w.kbuf + j * D);
          convert_row(vc + j * ldv, 1, Dv, w.vbuf + j * Dv);
        }
        prefetch_rows(pfk, ldk, 0, pn, pn, D);
        prefetch_rows(pfv, ldv, 0, pn, pn, Dv);
        chunk(c, w, j0, jn, edge, w.kbuf, D, w.vbuf, Dv, nullptr, nullptr, 0, 0, 0);
      } else if (c.gemm) {
        chunk(c, w, j0, jn, edge, reinterpret_cast<const St*>(w.kbuf), BK, vc, ldv, pfk, pfv, ldk, ldv, pn);
      } else {
        chunk(c, w, j0, jn, edge, kc, ldk, vc, ldv, pfk, pfv, ldk, ldv, pn);
      }
    }
    w.pf[0] = next.lo < next.hi ? it + 2 : 0;
    w.pf[1] = next_done;
    finish(c, w, b, hkv, item, split);
  }

  /// Scores, softmax and PV of the chunk [j0, j0 + jn) (kc, vc: its K and V rows). pk / pv (when pn > 0,
  /// row strides pldk / pldv): pn <= jn rows of K / V to prefetch into L2 as the chunk is computed.
  template <class E>
  static void chunk(const Ctx& c, const Work& w, int64_t j0, int jn, bool edge, const E* kc, int64_t ldk, const E* vc,
                    int64_t ldv, const St* pk, const St* pv, int64_t pldk, int64_t pldv, int pn_all) {
    const AttnProblem& p = *c.p;
    const int64_t R = c.R, D = p.D, Dv = p.Dv, DvP = dvp(p);
    // QK^T: row quads (each K vector loaded once for four rows), then a pair and a single row for the rest
    // (R % 4), blocks of 8 / RQ keys. Quads against pairs, GQA 32:8 with one query row (R = 4), one thread,
    // Sk = 32768 streamed from memory: 100-114 against 128-177 ns per key of CPU time (likely: the K/V
    // prefetches, issued in the first pass, spread over all of QK instead of half of it; K read once).
    // The prefetches are spread: K 4 / RQ lines per step of the first row block's dot products, V one row
    // per key of its PV panels (edge chunks: V with K). Issued in bursts at each QK block, they all came in
    // the QK phase and none in PV, leaving memory idle there. (MHA, one row: spread instead of the bursts
    // of main, Sk 8192 / 32768, one thread: 0.92x the time, 80-73% -> 87% of the read ceiling;
    // bench/results/history/decode_avx2_s25.json.)
    const bool spread = std::is_same<E, St>::value;
    if (pn_all <= 0) pk = pv = nullptr, pn_all = 0;
    if constexpr (W == 8) {
      if (c.gemm) {  // kc: the chunk's K transposed, kt[D][BK] (attend); row blocks of 3, then 2 or 1
        if (pk && spread && edge) prefetch_rows(pv, pldv, 0, pn_all, pn_all, Dv);  // (PV per row: no V prefetches)
        const int npd = pk && spread ? static_cast<int>((pn_all * ((D * static_cast<int64_t>(sizeof(St)) + 63) / 64) + D - 1) / D) : 0;
        for (int64_t r = 0; r < R;) {
          const int RB = R - r >= 3 && R - r != 4 ? 3 : R - r >= 2 ? 2 : 1;
          const float* kt = reinterpret_cast<const float*>(kc);
          if (r == 0 && npd) {
            if (RB == 3)
              qk_gemm<3, true>(w.q, kt, D, w.s, pk, pn_all, pldk, npd);
            else
              qk_gemm<2, true>(w.q, kt, D, w.s, pk, pn_all, pldk, npd);
          } else if (RB == 3)
            qk_gemm<3>(w.q + r * D, kt, D, w.s + r * BK);
          else if (RB == 2)
            qk_gemm<2>(w.q + r * D, kt, D, w.s + r * BK);
          else
            qk_gemm<1>(w.q + r * D, kt, D, w.s + r * BK);
          r += RB;
        }
      }
    }
    for (int64_t r = c.gemm ? R : 0; r < R;) {
      const int RQ = r + 3 < R ? 4 : r + 1 < R ? 2 : 1;
      const int KJ = 8 / RQ;
      for (int j = 0; j < jn; j += KJ) {
        if (r == 0 && pk && spread && edge) prefetch_rows(pv, pldv, j, KJ, pn_all, Dv);
        const int nk = jn - j < KJ ? jn - j : KJ;
        float* s = w.s + r * BK + j;
        if (r == 0 && spread) {
          const int pn = static_cast<int>(imax(0, imin(KJ, pn_all - j)));
          const E* pf = pn ? reinterpret_cast<const E*>(pk + j * pldk) : nullptr;
          if (RQ == 4)
            qk_block<4, true>(w.q, kc + j * ldk, ldk, nk, D, s, BK, pf, pn);
          else if (RQ == 2)
            qk_block<2, true>(w.q, kc + j * ldk, ldk, nk, D, s, BK, pf, pn);
          else
            qk_block<1, true>(w.q, kc + j * ldk, ldk, nk, D, s, BK, pf, pn);
        } else if (RQ == 4)
          qk_block<4>(w.q + r * D, kc + j * ldk, ldk, nk, D, s, BK);
        else if (RQ == 2)
          qk_block<2>(w.q + r * D, kc + j * ldk, ldk, nk, D, s, BK);
        else
          qk_block<1>(w.q + r * D, kc + j * ldk, ldk, nk, D, s, BK);
      }
      r += RQ;
    }
    // Online softmax per row (math/softmax.h), probabilities in place.
    const V ninf = S::set1(math::neg_inf<float>());
    for (int64_t r = 0; r < R; ++r) {
      float* s = w.s + r * BK;
      V bm = ninf;
      for (int j = 0; j < BK; j += W) {
        V x = S::load(s + j) * c.scale;
        if (c.softcap) x = S::tanh(x * c.cap_in) * c.cap_out;
        S::store(s + j, x);
      }
      for (int j = jn; j < BK; ++j) s[j] = math::neg_inf<float>();  // past the last key
      if (edge)
        for (int j = 0; j < jn; ++j)
          if (j0 + j < w.lo[r] || j0 + j >= w.hi[r]) s[j] = math::neg_inf<float>();
      for (int j = 0; j < BK; j += W) bm = S::vmax(bm, S::load(s + j));
      const float m_old = w.m[r];
      const float m_new = math::softmax_new_max(m_old, S::hmax(bm));
      const V off = S::set1(math::softmax_offset<float, float>(m_new));
      const float alpha = S::exp(S::set1(math::softmax_rescale_arg<float, float>(m_old, m_new)))[0];
      V sum = V{};
      for (int j = 0; j < BK; j += W) {
        const V e = S::exp(S::load(s + j) - off);
        S::store(s + j, e);
        sum += e;
      }
      w.l[r] = w.l[r] * alpha + S::hsum(sum);
      w.m[r] = m_new;
      if (alpha != 1.0f) {
        float* o = w.o + r * DvP;
        for (int64_t d = 0; d < DvP; d += W) S::store(o + d, S::load(o + d) * alpha);
      }
    }
    // PV: row blocks over the whole chunk, or, where the chunk cuts a row's range, each row over its own
    // keys only (a masked key's value is never read: 0 * NaN would be NaN).
    if (edge) {
      for (int64_t r = 0; r < R; ++r) {
        const int jb = static_cast<int>(imax(0, w.lo[r] - j0)), je = static_cast<int>(imin(jn, w.hi[r] - j0));
        if (jb < je) pv_rows<1, 4>(w.s + r * BK, vc, ldv, jb, je, Dv, w.o + r * DvP, DvP);
      }
      return;
    }
    int64_t r = 0;
    for (; r + 4 <= R; r += 4) {
      if (r == 0 && spread)
        pv_rows<4, kNV4<E>, true>(w.s, vc, ldv, 0, jn, Dv, w.o, DvP, reinterpret_cast<const E*>(pv), pn_all);
      else
        pv_rows<4, kNV4<E>>(w.s + r * BK, vc, ldv, 0, jn, Dv, w.o + r * DvP, DvP);
    }
    if (r == 0 && spread) {  // R < 4: the V prefetches in the first (only) row block
      const E* pf = reinterpret_cast<const E*>(pv);
      switch (R) {
        case 3: pv_rows<3, 2, true>(w.s, vc, ldv, 0, jn, Dv, w.o, DvP, pf, pn_all); break;
        case 2: pv_rows<2, 4, true>(w.s, vc, ldv, 0, jn, Dv, w.o, DvP, pf, pn_all); break;
        default: pv_rows<1, kNV1<E>, true>(w.s, vc, ldv, 0, jn, Dv, w.o, DvP, pf, pn_all); break;
      }
      return;
    }
    switch (R - r) {
      case 3: pv_rows<3, 2>(w.s + r * BK, vc, ldv, 0, jn, Dv, w.o + r * DvP, DvP); break;
      case 2: pv_rows<2, 4>(w.s + r * BK, vc, ldv, 0, jn, Dv, w.o + r * DvP, DvP); break;
      case 1: pv_rows<1, 4>(w.s + r * BK, vc, ldv, 0, jn, Dv, w.o + r * DvP, DvP); break;
      default: break;
    }
  }

  /// out = o / l, lse = m + log l (empty rows: 0 and -inf), or the normalised partials of a split.
  static void finish(const Ctx& c, const Work& w, int64_t b, int64_t hkv, int64_t item, int64_t split) {
    const AttnProblem& p = *c.p;
    const int64_t DvP = dvp(p);
    for (int64_t r = 0; r < c.R; ++r) {
      const float sc = math::softmax_out_scale(w.m[r], w.l[r]);
      const float lse = math::softmax_lse(w.m[r], w.l[r]);
      const float* o = w.o + r * DvP;
      if (c.nsplit > 1) {
        const int64_t base = (item * c.nsplit + split) * c.R + r;
        float* dst = c.part_o + base * p.Dv;
        for (int64_t d = 0; d < p.Dv; ++d) dst[d] = o[lane_of(d, p.Dv, c.pairs)] * sc;
        c.part_lse[base] = lse;
        continue;
      }
      write_row(p, b, hkv * c.G + r % c.G, r / c.G, [&](int64_t d) { return o[lane_of(d, p.Dv, c.pairs)] * sc; }, lse);
    }
  }

  template <class F>
  static void write_row(const AttnProblem& p, int64_t b, int64_t h, int64_t i, F&& value, float lse) {
    St* dst = static_cast<St*>(p.out) + b * p.out_stride[0] + h * p.out_stride[1] + i * p.out_stride[2];
    for (int64_t d = 0; d < p.Dv; ++d) dst[d * p.out_stride[3]] = from_acc<St>(value(d));
    if (p.lse) static_cast<float*>(p.lse)[b * p.lse_stride[0] + h * p.lse_stride[1] + i * p.lse_stride[2]] = lse;
  }

  /// Merges the splits of a (batch, kv head) item row by row in split order (merge_splits, double).
  static void merge(const Ctx& c, const Work& w, int64_t item) {
    const AttnProblem& p = *c.p;
    const int64_t b = item / p.Hkv, hkv = item % p.Hkv;
    for (int64_t r = 0; r < c.R; ++r) {
      const int64_t base = item * c.nsplit * c.R + r;
      double lse;
      const double sc =
          merge_splits(c.part_o + base * p.Dv, c.R * p.Dv, c.part_lse + base, c.R, c.nsplit, p.Dv, w.acc, &lse);
      write_row(p, b, hkv * c.G + r % c.G, r / c.G, [&](int64_t d) { return static_cast<float>(w.acc[d] * sc); },
                static_cast<float>(lse));
    }
  }

  static void run(const AttnProblem& p) {
    Ctx c;
    c.p = &p;
    c.G = p.Hq / p.Hkv;
    c.R = p.Sq * c.G;
    c.scale = static_cast<float>(p.scale);
    c.softcap = p.softcap > 0;
    c.cap_in = c.softcap ? static_cast<float>(1.0 / p.softcap) : 0.0f;
    c.cap_out = static_cast<float>(p.softcap);
    c.pack = !std::is_same<St, float>::value && c.R > kDirectRows;
    c.pairs = kPairs<St> && !c.pack;
    c.gemm = W == 8 && c.R >= kGemmRows;
    c.nsplit = key_splits(p, &c.split_len);
    const int64_t items = p.B * p.Hkv;
    const std::size_t nparts = c.nsplit > 1 ? static_cast<std::size_t>(items * c.nsplit * c.R) : 0;
    Workspace ws(Workspace::need<float>(nparts * p.Dv) + Workspace::need<float>(nparts), "attention (decode split partials)");
    c.part_o = ws.take<float>(nparts * p.Dv);
    c.part_lse = ws.take<float>(nparts);
    const int64_t work = items * c.nsplit;
#if defined(_OPENMP)
    c.serial = work <= 1 || omp_get_max_threads() == 1;  // (a smaller team than that: no harm, only bursts)
#else
    c.serial = true;
#endif
    parallel_with_scratch("attention (decode)", work > 1, work_bytes(c), /*zero=*/true, [&](void* mem) {
      const Work w = carve(mem, c);
      team_for(work, mem, [&](int64_t it) { attend(c, w, it); });
      if (c.nsplit > 1) team_for(items, mem, [&](int64_t it) { merge(c, w, it); });  // after the barrier
    });
  }
};

/// Whether the fused decode kernel takes p: attention (not weights) of float32 / float16 / bfloat16, at
/// most kDecodeMaxRows query rows per kv head, unit element strides of K and V, and no feature beyond key ranges
/// and softcap.
inline bool decode_eligible(const AttnProblem& p, bool weights) {
  const bool dtype = p.dtype == DType::Float32 || p.dtype == DType::Float16 || p.dtype == DType::BFloat16;
  return !weights && dtype && p.Sq >= 1 && p.Hkv >= 1 && p.Sq * (p.Hq / p.Hkv) <= kDecodeMaxRows &&
         p.k.stride[3] == 1 && p.v.stride[3] == 1 && !p.mask.present && !p.bias.present && !p.alibi.present &&
         !p.sparse && !p.row_lo;
}

/// Runs p through the fused decode kernel when decode_eligible; returns whether it did.
template <int W>
bool decode_attention(const AttnProblem& p, bool weights) {
  if (!decode_eligible(p, weights)) return false;
  switch (p.dtype) {
    case DType::Float32: DecodeKernel<W, float>::run(p); break;
    case DType::Float16: DecodeKernel<W, Half>::run(p); break;
    default: DecodeKernel<W, BFloat>::run(p); break;
  }
  return true;
}

#endif  // AVX2

}  // namespace ATTNKIT_ISA_NAMESPACE
}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
