#pragma once
// The tensor-core exact-attention kernel, second version ("attention_mma_v2" in runtime.cu's kCompiled; the
// dispatcher in attention.cu falls back to attention_mma.cuh where it is not enabled or does not apply).
// float16 / bfloat16, head dims 64 and 128, mma.sync.m16n8k16 with float32 accumulation. What changes
// against attention_mma.cuh, all for speed:
//   * 128 query rows per block for both head dims (4 warps x 2 m-tiles of 16 rows, or 8 warps x 1): each
//     K / V byte read from L2 feeds twice the work of the 64-row blocks (D = 128 used those);
//   * K and V double-buffered in shared memory: the copy of tile t+1 is issued right after the one barrier
//     of iteration t and overlaps all of tile t's work (QK^T, softmax, PV); one __syncthreads per tile;
//   * only the plain score (scale > 0) and the key ranges (causal, window, key_lengths, explicit ranges),
//     GQA and LSE: problems with a mask, bias, soft cap, ALiBi, a block-sparse layout or another scale go to
//     attention_mma.cuh (attention.cu decides), so the per-element work of a tile inside every row's range
//     ("clean", below) is max, one FMA (s * scale - offset, in natural-log units as math/softmax.h wants), one multiply
//     by log2(e) and ex2.approx (math::exp_via_exp2 with the hardware exp2), and the row sum;
//   * the output accumulator is rescaled only when some row of the warp moved its max (alpha != 1);
//   * the non-finite scan of V (see below) runs only on tiles where some row of the block has a masked key;
//   * the rows' key ranges live in shared memory (read only on tiles that need them): with 2 m-tiles of
//     D = 128 the accumulators take nearly all of the 255 registers;
//   * output rows are written as packed pairs where the output's last dim is contiguous.
//
// Masked keys and non-finite values (same contract as attention_mma.cuh): a masked (row, key) pair has
// P = 0, and 0 * inf would leak a value the contract says is never read. A tile where every valid row of
// the block sees every key of the tile ("clean") has no masked pair but padding (zero-filled rows);
// elsewhere (per-row ranges: causal diagonal, windows, explicit ranges) the block scans the tile's V for
// an infinity or NaN, and if one is there the warps accumulate PV element by element, the P values
// coming from the quad's registers by shuffles, skipping masked pairs.
//
// Tile shapes are variants (run_mma2 below), selected at run time by attention.cu (ATTNKIT_MMA_VARIANT, else
// by shape: 64-row blocks for problems with few query blocks per SM).

#include <climits>
#include <cstdint>

#include "cuda/attention_mma.cuh"

namespace attnkit {
namespace detail {
namespace cuda {

/// Tile shape of the v2 kernel: NW warps, each KM m-tiles of 16 query rows; BK keys per K / V tile.
template <int D, int KM, int NW, int BK>
struct Mma2Shape {
  static constexpr int kThreads = 32 * NW;
  static constexpr int BQ = 16 * KM * NW;  // query rows per block
  static constexpr int LD = D + 8;         // shared-memory row pitch (elements): conflict-free ldmatrix
  static constexpr int NT = BK / 8;        // n-tiles of the score tile
  static constexpr int ND = D / 8;         // n-tiles of the output
  static constexpr int CH = D / 8;         // 16-byte chunks per row
  static constexpr int RPP = kThreads / CH;  // rows per pass of the copy loops
  // Blocks per SM the registers must allow (__launch_bounds__): 8 warps x 1 m-tile of D = 64 fits in 128
  // registers without spilling, so two such blocks share an SM (16 warps); 4 warps x 1 m-tile with
  // BK * D = 4096 (variant 4's 64-row blocks, 46 / 52 KiB of shared memory) in 128 registers for D = 64
  // (four blocks, 16 warps per SM) and 168 for D = 128 (three blocks: 128 spill); the others use up to 255.
  static constexpr int kMinBlocks =
      (NW == 8 && D == 64) ? 2 : (NW == 4 && KM == 1 && BK * D == 4096) ? (D == 64 ? 4 : 3) : 1;
  // Q, then two stages of (K, V).
  static constexpr std::size_t kSmem = sizeof(uint16_t) * static_cast<std::size_t>(BQ + 4 * BK) * LD;
  static_assert(kThreads % CH == 0 && BK % RPP == 0 && BQ % RPP == 0, "copy loops");
  static_assert(BK % 16 == 0 && D % 16 == 0, "mma tiles");
};

/// exp2 by the hardware approximation (flushes subnormal results to 0: they are below float's resolution
/// next to the row's largest term, which is 1).
struct Ex2Approx {
  __device__ __forceinline__ float operator()(float x) const {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
  }
};
/// exp(x) as math/softmax.h evaluates it (exp2(x * log2 e)), with the hardware exp2.
__device__ __forceinline__ float kexp_fast(float x) { return math::exp_via_exp2<float, float>(x, Ex2Approx()); }

/// Half c (0: the low one) of two packed T values, as float.
template <class T>
__device__ __forceinline__ float unpack_half(uint32_t w, int c) {
  const uint16_t bits = static_cast<uint16_t>(c ? w >> 16 : w & 0xFFFFu);
  if constexpr (std::is_same<T, half_t>::value)
    return __half2float(__ushort_as_half(bits));
  else
    return __uint_as_float(static_cast<uint32_t>(bits) << 16);
}

template <class T, int D, int KM, int NW, int BK>
__global__ void __launch_bounds__(32 * NW, (Mma2Shape<D, KM, NW, BK>::kMinBlocks)) exact_mma2_kernel(const AttnProblem p, bool per_row) {
  using S = Mma2Shape<D, KM, NW, BK>;
  constexpr int NTHR = S::kThreads, BQ = S::BQ, LD = S::LD, NT = S::NT, ND = S::ND, CH = S::CH, RPP = S::RPP;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sKV = sQ + BQ * LD;  // stage s: K at sKV + 2 s BK LD, V right after it
  __shared__ int s_lo, s_hi, s_maxlo, s_minhi;
  __shared__ int s_rlo[BQ], s_rhi[BQ];  // key range of each row of the block (empty past Sq)

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, gq = lane / 4, tq = lane % 4;
  // Causal and windowed blocks near the end see the most keys: they start first.
  const int qt = static_cast<int>(p.causal ? gridDim.x - 1 - blockIdx.x : blockIdx.x);
  const int q0 = qt * BQ;
  const int h = static_cast<int>(blockIdx.y), b = static_cast<int>(blockIdx.z);
  const int hkv = static_cast<int>(h / (p.Hq / p.Hkv));
  const T* qg = static_cast<const T*>(p.q.data) + b * p.q.stride[0] + h * p.q.stride[1];
  const int64_t ldq = p.q.stride[2];
  const int Sq = static_cast<int>(p.Sq);  // attention.cu: Sq, Sk < 2^30
  const int cc = tid % CH, r0 = tid / CH;  // this thread's 16-byte chunk of a row, first row of the copies

  // Q tile (rows past Sq zero-filled).
  for (int r = r0; r < BQ; r += RPP) {
    const int i = q0 + r;
    const bool ok = i < Sq;
    mma::cp_async16(sQ + r * LD + cc * 8, qg + static_cast<int64_t>(ok ? i : 0) * ldq + cc * 8, ok);
  }
  mma::cp_commit();

  // The rows' key ranges (in shared memory: registers are scarce in the main loop). The block visits the
  // union [s_lo, s_hi) of its rows' non-empty ranges; [s_maxlo, s_minhi) is the intersection of its valid
  // rows' ranges: a tile inside it ("clean") has no masked pair for any valid row.
  if (tid == 0) {
    s_lo = INT_MAX;
    s_hi = INT_MIN;
    s_maxlo = INT_MIN;
    s_minhi = INT_MAX;
  }
  __syncthreads();
  {
    const int64_t kv_len = valid_keys(p, b);
    for (int r = tid; r < BQ; r += NTHR) {
      const int i = q0 + r;
      math::KeyRange kr{0, 0};
      if (i < Sq) kr = row_keys(p, b, h, i, kv_len);
      const int rlo = static_cast<int>(kr.lo), rhi = static_cast<int>(kr.hi);
      s_rlo[r] = rlo;
      s_rhi[r] = rhi;
      if (i < Sq) {
        atomicMax(&s_maxlo, rlo);
        atomicMin(&s_minhi, rhi);
      }
      if (rhi > rlo) {
        atomicMin(&s_lo, rlo);
        atomicMax(&s_hi, rhi);
      }
    }
  }
  __syncthreads();
  const int ulo = s_lo, uhi = s_hi, clean_lo = s_maxlo, clean_hi = s_minhi;
  const int ntiles = uhi > ulo ? (uhi - ulo + BK - 1) / BK : 0;

  const float scale = static_cast<float>(p.scale);
  const float ninf = math::neg_inf<float>();

  // K and V rows [j0, jz) into stage st (rows past jz zero-filled), one commit group. The addresses come
  // from p each time (kernel parameters): registers are scarce in the main loop.
  auto load_kv = [&](int st, int j0, int jz) {
    T* dK = sKV + 2 * st * BK * LD;
    T* dV = dK + BK * LD;
    const T* kg = static_cast<const T*>(p.k.data) + b * p.k.stride[0] + hkv * p.k.stride[1] + cc * 8;
    const T* vg = static_cast<const T*>(p.v.data) + b * p.v.stride[0] + hkv * p.v.stride[1] + cc * 8;
    for (int r = r0; r < BK; r += RPP) {
      const int j = j0 + r;
      const bool ok = j < jz;
      const int64_t jj = ok ? j : 0;
      mma::cp_async16(dK + r * LD + cc * 8, kg + jj * p.k.stride[2], ok);
      mma::cp_async16(dV + r * LD + cc * 8, vg + jj * p.v.stride[2], ok);
    }
    mma::cp_commit();
  };

  float o[KM][ND][4];
  float m[KM][2], l[KM][2];
#pragma unroll
  for (int mt = 0; mt < KM; ++mt) {
#pragma unroll
    for (int n = 0; n < ND; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[mt][n][e] = 0.f;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      m[mt][r] = ninf;
      l[mt][r] = 0.f;
    }
  }

  if (ntiles > 0) load_kv(0, ulo, ulo + BK < uhi ? ulo + BK : uhi);
  for (int t = 0; t < ntiles; ++t) {
    const int j0 = ulo + t * BK, jz = j0 + BK < uhi ? j0 + BK : uhi;
    const bool clean = j0 >= clean_lo && jz <= clean_hi;  // block-uniform
    const T* cK = sKV + 2 * (t & 1) * BK * LD;
    const T* cV = cK + BK * LD;
    mma::cp_wait<0>();  // this thread's copies of Q and of tile t have landed
    __syncthreads();    // everyone's have; and every warp is done with tile t - 1 (the other stage)
    if (t + 1 < ntiles) load_kv((t + 1) & 1, j0 + BK, j0 + 2 * BK < uhi ? j0 + 2 * BK : uhi);

    // S = Q K^T (raw dot products).
    float s[KM][NT][4];
#pragma unroll
    for (int mt = 0; mt < KM; ++mt)
#pragma unroll
      for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][n][e] = 0.f;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      uint32_t a[KM][4];
#pragma unroll
      for (int mt = 0; mt < KM; ++mt)
        mma::ldsm_x4(a[mt], sQ + ((warp * KM + mt) * 16 + (lane % 16)) * LD + ks * 16 + (lane / 16) * 8);
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) {
        uint32_t bb[4];
        mma::ldsm_x4(bb, cK + (np * 16 + (lane / 16) * 8 + lane % 8) * LD + ks * 16 + ((lane / 8) % 2) * 8);
#pragma unroll
        for (int mt = 0; mt < KM; ++mt) {
          mma::mma16816<T>(s[mt][2 * np], a[mt], bb[0], bb[1]);
          mma::mma16816<T>(s[mt][2 * np + 1], a[mt], bb[2], bb[3]);
        }
      }
    }

    // Key ranges (a masked pair's score becomes -inf), then the online softmax. The max is taken over the
    // raw dot products: scale > 0 and rounding is monotonic, so max(s) * scale is the max of the scaled
    // scores.
    uint32_t pk[KM][NT][2];  // P rounded to T, packed in pairs as the A operand of the PV product wants
#pragma unroll
    for (int mt = 0; mt < KM; ++mt) {
      float mx[2] = {ninf, ninf};
      // A full clean tile needs no range test (most tiles; rows past Sq see it too, and are never written).
      if (clean && jz - j0 == BK) {
#pragma unroll
        for (int n = 0; n < NT; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) mx[e / 2] = fmaxf(mx[e / 2], s[mt][n][e]);
      } else {
        const int row = (warp * KM + mt) * 16 + gq;
        const int lo[2] = {s_rlo[row], s_rlo[row + 8]}, hi[2] = {s_rhi[row], s_rhi[row + 8]};
#pragma unroll
        for (int n = 0; n < NT; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int r = e / 2;
            const int j = j0 + n * 8 + 2 * tq + (e & 1);
            const bool in = j < jz && j >= lo[r] && j < hi[r];
            const float x = in ? s[mt][n][e] : ninf;
            s[mt][n][e] = x;
            mx[r] = fmaxf(mx[r], x);
          }
      }
      float alpha[2], off[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        const float m_new = math::softmax_new_max(m[mt][r], mx[r] * scale);
        alpha[r] = kexp_fast(math::softmax_rescale_arg<float, float>(m[mt][r], m_new));
        m[mt][r] = m_new;
        l[mt][r] *= alpha[r];
        off[r] = math::softmax_offset<float, float>(m_new);
      }
      // exp(s * scale - offset): a masked score (-inf) gives 0 (the offset is finite or +inf).
#pragma unroll
      for (int n = 0; n < NT; ++n) {
        float pr[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          pr[e] = kexp_fast(fmaf(s[mt][n][e], scale, -off[e / 2]));
          l[mt][e / 2] += pr[e];
        }
        pk[mt][n][0] = mma::pack2<T>(pr[0], pr[1]);
        pk[mt][n][1] = mma::pack2<T>(pr[2], pr[3]);
      }
      if (__any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
        for (int n = 0; n < ND; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) o[mt][n][e] *= alpha[e / 2];
      }
    }

    // Where rows see different keys, a non-finite value in V switches the tile to the slow PV.
    bool slow = false;
    if (per_row && !clean) {  // block-uniform
      bool bad = false;
      const int kn = jz - j0;
      for (int c = tid; c < kn * CH; c += NTHR)
        bad |= any_nonfinite<T>(*reinterpret_cast<const uint4*>(cV + (c / CH) * LD + (c % CH) * 8));
      slow = __syncthreads_or(bad) != 0;
    }
    if (!slow) {
#pragma unroll
      for (int ks = 0; ks < BK / 16; ++ks) {
        uint32_t a[KM][4];
#pragma unroll
        for (int mt = 0; mt < KM; ++mt) {
          a[mt][0] = pk[mt][2 * ks][0];
          a[mt][1] = pk[mt][2 * ks][1];
          a[mt][2] = pk[mt][2 * ks + 1][0];
          a[mt][3] = pk[mt][2 * ks + 1][1];
        }
#pragma unroll
        for (int dp = 0; dp < D / 16; ++dp) {
          uint32_t bb[4];
          mma::ldsm_x4_t(bb, cV + (ks * 16 + ((lane / 8) % 2) * 8 + lane % 8) * LD + dp * 16 + (lane / 16) * 8);
#pragma unroll
          for (int mt = 0; mt < KM; ++mt) {
            mma::mma16816<T>(o[mt][2 * dp], a[mt], bb[0], bb[1]);
            mma::mma16816<T>(o[mt][2 * dp + 1], a[mt], bb[2], bb[3]);
          }
        }
      }
    } else {
      // Element by element: P of key k = n * 8 + 2 * src + c of row gq (gq + 8) sits in lane gq * 4 + src
      // of the quad, as half c of pk[mt][n][0] (pk[mt][n][1]). The quad shares its rows, so this thread
      // tests the pair against its own ranges: masked pairs (out of range, as the CPU backend's pv_masked
      // skips them) never read their value.
#pragma unroll
      for (int mt = 0; mt < KM; ++mt) {
        const int row = (warp * KM + mt) * 16 + gq;
        const int lo[2] = {s_rlo[row], s_rlo[row + 8]}, hi[2] = {s_rhi[row], s_rhi[row + 8]};
#pragma unroll
        for (int n = 0; n < NT; ++n)
#pragma unroll 1
          for (int kk = 0; kk < 8; ++kk) {
            const int src = (lane & ~3) | (kk / 2), c = kk & 1, k = n * 8 + kk;
            const float p0 = unpack_half<T>(__shfl_sync(0xffffffffu, pk[mt][n][0], src), c);
            const float p1 = unpack_half<T>(__shfl_sync(0xffffffffu, pk[mt][n][1], src), c);
            const int j = j0 + k;
            const bool use0 = j < jz && j >= lo[0] && j < hi[0];
            const bool use1 = j < jz && j >= lo[1] && j < hi[1];
            if (use0 || use1) {
              const T* vrow = cV + k * LD + 2 * tq;
#pragma unroll
              for (int dn = 0; dn < ND; ++dn)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                  const float vv = to_acc<float>(vrow[dn * 8 + e]);
                  if (use0) o[mt][dn][e] += p0 * vv;
                  if (use1) o[mt][dn][2 + e] += p1 * vv;
                }
            }
          }
      }
    }
  }
  mma::cp_wait<0>();

  // Finalise: the row sums are spread over the quad.
#pragma unroll
  for (int mt = 0; mt < KM; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float lr = l[mt][r];
      lr += __shfl_xor_sync(0xffffffffu, lr, 1);
      lr += __shfl_xor_sync(0xffffffffu, lr, 2);
      const int i = q0 + (warp * KM + mt) * 16 + gq + 8 * r;
      if (i >= Sq) continue;
      const float sc = math::softmax_out_scale(m[mt][r], lr);
      T* dst = static_cast<T*>(p.out) + b * p.out_stride[0] + h * p.out_stride[1] + i * p.out_stride[2];
      if (p.out_stride[3] == 1 && (reinterpret_cast<uintptr_t>(dst) & 3u) == 0) {
#pragma unroll
        for (int n = 0; n < ND; ++n)
          *reinterpret_cast<uint32_t*>(dst + n * 8 + 2 * tq) =
              mma::pack2<T>(o[mt][n][2 * r] * sc, o[mt][n][2 * r + 1] * sc);
      } else {
#pragma unroll
        for (int n = 0; n < ND; ++n)
#pragma unroll
          for (int c = 0; c < 2; ++c)
            dst[(n * 8 + 2 * tq + c) * p.out_stride[3]] = from_acc<T>(o[mt][n][2 * r + c] * sc);
      }
      if (p.lse && tq == 0)
        static_cast<float*>(p.lse)[b * p.lse_stride[0] + h * p.lse_stride[1] + i * p.lse_stride[2]] =
            math::softmax_lse(m[mt][r], lr);
    }
}

template <class T, int D, int KM, int NW, int BK>
void launch_mma2(const AttnProblem& p, bool per_row, cudaStream_t st) {
  using S = Mma2Shape<D, KM, NW, BK>;
  allow_dynamic_smem(exact_mma2_kernel<T, D, KM, NW, BK>, S::kSmem);
  const dim3 grid(static_cast<unsigned>((p.Sq + S::BQ - 1) / S::BQ), static_cast<unsigned>(p.Hq),
                  static_cast<unsigned>(p.B));
  exact_mma2_kernel<T, D, KM, NW, BK><<<grid, S::kThreads, S::kSmem, st>>>(p, per_row);
  ATTNKIT_CUDA_CHECK_LAUNCH();
}

/// The tile shapes of the v2 kernel (ATTNKIT_MMA_VARIANT, read by attention.cu, which picks 0 or 3 by shape
/// when it is not set):
///   0: 4 warps x 2 m-tiles (128 rows), 128 keys per tile for D = 64, 64 for D = 128;
///   1: 4 warps x 2 m-tiles, 64 keys per tile for D = 64, 32 for D = 128;
///   2: 8 warps x 1 m-tile (128 rows), 64 keys per tile (D = 64: two blocks per SM, 128 registers);
///   3: 4 warps x 1 m-tile (64 rows), the key tiles of 0 (128 / 64): twice the blocks of 0, for problems
///      with few query blocks per SM (short sequences, few heads), where 0 leaves SMs idle or runs a
///      ragged last wave. A row's arithmetic does not depend on KM (each m-tile's products, max, sums and
///      rescales are its own), so with the same key tiles 3 gives 0's bits wherever the tiles start at the
///      same key (the block's first visible key: 0 without a left window or explicit row ranges; the slow
///      PV of a tile with a non-finite V is chosen per block, so it too can differ): attention.cu may pick
///      3 by shape without changing results;
///   4: 4 warps x 1 m-tile (64 rows), 64 keys per tile for D = 64, 32 for D = 128 (46 / 52 KiB of shared
///      memory: four / three blocks per SM, twice 3's warps per SM); only by ATTNKIT_MMA_VARIANT (its key
///      tiles round differently from 0's).
///   3 and 4 are gated by "attention_mma_v2_small" (runtime.cu) until verified on a GPU.
/// 0 was the fastest for both head dims on an H100 (tools/gpu_check.sh, 2026-11-26, S = 4096, f16 / bf16,
/// causal and not; bench/results/gpu_h100.json's exact_variant rows, where 0 and 1 were the other way round).
///
/// float16 and bfloat16 compile to the same code (checked 2026-11-26 with nvcc 13.0, sm_90 and sm_80,
/// cuobjdump -sass): per variant, the main loop (without the slow PV) has the same instruction count for
/// both dtypes (e.g. D = 64, variant 0: 2298 instructions per 128-key tile, of them 256 HMMA, 132
/// MUFU.EX2, 64 F2FP.{F16,BF16}.F32.PACK_AB, one per pair of P values), the same registers (255 / 254 /
/// 128 / 219), no spills and no local memory; the only differences are the HMMA type and the integer
/// adds' spelling (IADD3 vs VIADD). Only the slow PV differs (bfloat16 widens V with a shift, float16 with
/// HADD2.F32). bfloat16's lower numbers in the benchmark's call times (a constant ~0.15-0.2 ms per call
/// at every S, the same for the v1 kernel, none at S = 16384) are host work of the bfloat16 call path
/// (PyTorch tensors through DLPack), which call timing includes; bench_gpu.py's variant rows also give
/// device times.
constexpr int kMma2Variants = 5;

template <class T, int D>
void run_mma2(const AttnProblem& p, int variant) {
  static_assert(D == 64 || D == 128, "the v2 kernel has head dims 64 and 128");
  if (p.empty_output()) return;
  const cudaStream_t st = as_stream(p.stream);
  const bool per_row = p.causal || p.window_left >= 0 || p.window_right >= 0 || p.row_lo != nullptr;
  switch (variant) {
    case 1: return launch_mma2<T, D, 2, 4, D == 64 ? 64 : 32>(p, per_row, st);
    case 2: return launch_mma2<T, D, 1, 8, 64>(p, per_row, st);
    case 3: return launch_mma2<T, D, 1, 4, D == 64 ? 128 : 64>(p, per_row, st);
    case 4: return launch_mma2<T, D, 1, 4, D == 64 ? 64 : 32>(p, per_row, st);
    default: return launch_mma2<T, D, 2, 4, D == 64 ? 128 : 64>(p, per_row, st);
  }
}

#define ATTNKIT_INSTANTIATE_MMA2(T, D) template void run_mma2<T, D>(const AttnProblem&, int);

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
