#pragma once
// The tensor-core exact-attention kernel (float16 / bfloat16, sm80+ mma.sync.m16n8k16 with float32
// accumulation), FlashAttention-2 style: a block of 4 warps owns 64 or 128 query rows of one (batch, head),
// each warp KM m-tiles of 16 rows; K and V tiles of BK keys stream through shared memory with cp.async
// (V's copy overlaps QK^T, the next K's copy overlaps PV); scores and the online softmax stay in
// registers, and P feeds the PV product from registers. Every score term of the contract applies per
// element (attention_terms.cuh); the keys visited are the union of the block's row ranges clipped to the
// layout's allowed blocks, exactly as in the SIMT kernel.
//
// Requirements (checked by mma_supported in attention.cu): D = Dv in {32, 64, 96, 128, 256}; q, k, v rows
// contiguous and 16-byte aligned; block-sparse layouts with bq a multiple of the block's rows (a block
// never straddles query blocks).
//
// Masked keys and non-finite values: P is 0 for a masked (row, key) pair, and 0 * NaN would leak a value
// that the contract says is never read. Keys outside every row's range are never loaded (their rows are
// zero-filled), so padding (key_lengths) costs nothing. Where rows of one block see different keys
// (causal, windows, masks, bias, explicit ranges) each V tile is scanned once in shared memory; a tile
// holding an infinity or NaN accumulates PV element by element, skipping masked pairs.

#include <cstdint>
#include <type_traits>

#include "cuda/attention_terms.cuh"
#include "cuda/workspace.cuh"

namespace attnkit {
namespace detail {
namespace cuda {

namespace mma {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
/// 16-byte asynchronous copy; zero-fills the destination when !pred (and reads nothing).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool pred) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(pred ? 16 : 0));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

/// d += a * b for one m16n8k16 tile.
template <class T>
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma16816<half_t>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma16816<bf16_t>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/// Two floats rounded to T, packed (x in the low half).
template <class T>
__device__ __forceinline__ uint32_t pack2(float x, float y);
template <>
__device__ __forceinline__ uint32_t pack2<half_t>(float x, float y) {
  const __half2 h = __floats2half2_rn(x, y);
  return *reinterpret_cast<const uint32_t*>(&h);
}
template <>
__device__ __forceinline__ uint32_t pack2<bf16_t>(float x, float y) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
  return *reinterpret_cast<const uint32_t*>(&h);
}

}  // namespace mma

/// Tile shape: KM m-tiles of 16 query rows per warp (2 halves the shared-memory reads per tensor-core
/// operation: each K / V fragment feeds KM products), BK keys per tile, chosen per head dim so that the
/// accumulators stay in registers.
template <int D, int KM>
struct MmaShape {
  static constexpr int BQ = 64 * KM;                      // query rows per block (4 warps)
  static constexpr int BK = D > 128 ? 32 : 64;
  static constexpr int LD = D + 8;  // shared-memory row pitch (elements): conflict-free ldmatrix
  static constexpr std::size_t kSmem = sizeof(uint16_t) * (BQ + 2 * BK) * LD;
  static constexpr std::size_t kSmemSlow = kSmem + sizeof(float) * BQ * BK;  // + P for the slow PV
};

/// The keys a block visits, tile by tile: runs [a, z) (the union of its rows' ranges, or its intersection
/// with each run of consecutive allowed key blocks) cut into tiles of BK keys [j0, jz).
struct KeyTiles {
  const int32_t* col = nullptr;
  int64_t bk = 0, ulo = 0, uhi = 0, e = 0, e_end = 0, z = 0, j = 0;

  __device__ bool next_run() {
    while (e < e_end) {
      int64_t a = ulo, zz = uhi;
      if (col) {
        int64_t e2 = e + 1;
        while (e2 < e_end && col[e2] == col[e2 - 1] + 1) ++e2;
        const int64_t ba = static_cast<int64_t>(col[e]) * bk, bz = static_cast<int64_t>(col[e2 - 1] + 1) * bk;
        a = ba > ulo ? ba : ulo;
        zz = bz < uhi ? bz : uhi;
        e = e2;
      } else {
        e = e_end;
      }
      if (zz > a) {
        j = a;
        z = zz;
        return true;
      }
    }
    return false;
  }
  /// The next tile of at most BK keys; false when done.
  template <int BK>
  __device__ bool next(int64_t& j0, int64_t& jz) {
    if (j >= z && !next_run()) return false;
    j0 = j;
    jz = j + BK < z ? j + BK : z;
    j = jz;
    return true;
  }
};

/// Whether 8 packed 16-bit values hold an infinity or NaN (exponent all ones).
template <class T>
__device__ __forceinline__ bool any_nonfinite(uint4 x) {
  constexpr uint32_t lo = std::is_same<T, half_t>::value ? 0x7C00u : 0x7F80u, hi = lo << 16;
  const uint32_t w[4] = {x.x, x.y, x.z, x.w};
  bool bad = false;
#pragma unroll
  for (int i = 0; i < 4; ++i) bad |= (w[i] & lo) == lo || (w[i] & hi) == hi;
  return bad;
}

template <class T, int D, int KM>
__device__ __forceinline__ void exact_mma_body(const AttnProblem& p, bool per_row) {
  using S = MmaShape<D, KM>;
  constexpr int BQ = S::BQ, BK = S::BK, LD = S::LD, NT = BK / 8, ND = D / 8;
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + BQ * LD;
  T* sV = sK + BK * LD;
  float* sP = reinterpret_cast<float*>(sV + BK * LD);  // slow PV only (allocated when per_row)
  __shared__ int s_lo, s_hi;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, gq = lane / 4, tq = lane % 4;
  // Causal and windowed blocks near the end see the most keys: they start first.
  const int64_t qt = p.causal ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  const int64_t q0 = qt * BQ;
  const int64_t h = blockIdx.y, b = blockIdx.z;
  const int64_t hkv = h / (p.Hq / p.Hkv);
  const T* qg = static_cast<const T*>(p.q.data) + b * p.q.stride[0] + h * p.q.stride[1];
  const T* kg = static_cast<const T*>(p.k.data) + b * p.k.stride[0] + hkv * p.k.stride[1];
  const T* vg = static_cast<const T*>(p.v.data) + b * p.v.stride[0] + hkv * p.v.stride[1];

  // Q tile.
  for (int c = tid; c < BQ * kChunks; c += 128) {
    const int r = c / kChunks, cc = c % kChunks;
    const int64_t i = q0 + r;
    const bool ok = i < p.Sq;
    mma::cp_async16(sQ + r * LD + cc * 8, qg + (ok ? i : 0) * p.q.stride[2] + cc * 8, ok);
  }
  mma::cp_commit();

  // This thread's rows: gq and gq + 8 of each of the warp's KM m-tiles, and their key ranges.
  const int64_t kv_len = valid_keys(p, b);
  int64_t row[KM][2], lo[KM][2], hi[KM][2];
  if (tid == 0) {
    s_lo = INT32_MAX;
    s_hi = INT32_MIN;
  }
  __syncthreads();
#pragma unroll
  for (int mt = 0; mt < KM; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      row[mt][r] = q0 + (warp * KM + mt) * 16 + gq + 8 * r;
      math::KeyRange kr{0, 0};
      if (row[mt][r] < p.Sq) kr = row_keys(p, b, h, row[mt][r], kv_len);
      lo[mt][r] = kr.lo;
      hi[mt][r] = kr.hi;
      if (kr.hi > kr.lo) {
        atomicMin(&s_lo, static_cast<int>(kr.lo));
        atomicMax(&s_hi, static_cast<int>(kr.hi));
      }
    }
  __syncthreads();
  KeyTiles tiles;
  tiles.ulo = s_lo;
  tiles.uhi = s_hi;
  tiles.e_end = s_hi > s_lo ? 1 : 0;
  if (p.sparse && tiles.e_end) {
    const int64_t rr = (p.layout.heads > 1 ? h : 0) * p.layout.nqb + q0 / p.layout.bq;
    tiles.col = p.layout.col_idx;
    tiles.bk = p.layout.bk;
    tiles.e = p.layout.row_ptr[rr];
    tiles.e_end = p.layout.row_ptr[rr + 1];
  }

  const ScoreTerms<float> terms(p);
  const float slope = alibi_slope<float>(p, b, h);
  const bool plain = !terms.softcap && !terms.bias_tile && !p.alibi.present;
  const float ninf = math::neg_inf<float>();

  auto load_rows = [&](T* dst, const T* src, int64_t ld, int64_t j0, int64_t jz) {
    for (int c = tid; c < BK * kChunks; c += 128) {
      const int r = c / kChunks, cc = c % kChunks;
      const bool ok = j0 + r < jz;
      mma::cp_async16(dst + r * LD + cc * 8, src + (ok ? j0 + r : 0) * ld + cc * 8, ok);
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

  int64_t j0, jz;
  bool have = tiles.next<BK>(j0, jz);
  if (have) {
    load_rows(sK, kg, p.k.stride[2], j0, jz);
    load_rows(sV, vg, p.v.stride[2], j0, jz);
  }
  while (have) {
    mma::cp_wait<1>();  // Q and this K have landed; V may be in flight
    __syncthreads();
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
        mma::ldsm_x4(bb, sK + (np * 16 + (lane / 16) * 8 + lane % 8) * LD + ks * 16 + ((lane / 8) % 2) * 8);
#pragma unroll
        for (int mt = 0; mt < KM; ++mt) {
          mma::mma16816<T>(s[mt][2 * np], a[mt], bb[0], bb[1]);
          mma::mma16816<T>(s[mt][2 * np + 1], a[mt], bb[2], bb[3]);
        }
      }
    }
    __syncthreads();  // every warp is done with K
    int64_t n0, nz;
    const bool more = tiles.next<BK>(n0, nz);
    if (more) load_rows(sK, kg, p.k.stride[2], n0, nz);

    // Score terms and key ranges, then the online softmax; masked pairs are remembered in `masked`
    // (bit n * 4 + e) for the slow PV.
    uint32_t masked[KM];
#pragma unroll
    for (int mt = 0; mt < KM; ++mt) {
      masked[mt] = 0;
      float mx[2] = {ninf, ninf};
      // A tile inside both rows' ranges needs no range test (most tiles).
      const bool inside = jz - j0 == BK && j0 >= lo[mt][0] && jz <= hi[mt][0] && j0 >= lo[mt][1] && jz <= hi[mt][1];
      if (inside && plain) {
#pragma unroll
        for (int n = 0; n < NT; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float x = s[mt][n][e] * terms.scale;
            s[mt][n][e] = x;
            mx[e / 2] = x > mx[e / 2] ? x : mx[e / 2];
          }
      } else {
#pragma unroll
        for (int n = 0; n < NT; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int r = e / 2;
            const int64_t j = j0 + n * 8 + 2 * tq + (e & 1);
            const bool in = j < jz && j >= lo[mt][r] && j < hi[mt][r];
            float x = s[mt][n][e];
            if (!in)
              x = ninf;
            else if (plain)
              x *= terms.scale;
            else
              x = terms(p, b, h, row[mt][r], j, x, slope);
            s[mt][n][e] = x;
            if (x == ninf) masked[mt] |= 1u << (n * 4 + e);
            mx[r] = x > mx[r] ? x : mx[r];
          }
      }
      float alpha[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        const float m_new = math::softmax_new_max(m[mt][r], mx[r]);
        alpha[r] = kexp(math::softmax_rescale_arg<float, float>(m[mt][r], m_new));
        m[mt][r] = m_new;
        l[mt][r] *= alpha[r];
      }
      const float off[2] = {math::softmax_offset<float, float>(m[mt][0]), math::softmax_offset<float, float>(m[mt][1])};
#pragma unroll
      for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float x = s[mt][n][e];
          const float pr = x == ninf ? 0.f : kexp(x - off[e / 2]);
          l[mt][e / 2] += pr;
          s[mt][n][e] = pr;
        }
#pragma unroll
      for (int n = 0; n < ND; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[mt][n][e] *= alpha[e / 2];
    }

    mma::cp_wait<1>();  // V has landed (the next K may be in flight)
    if (!more) mma::cp_wait<0>();
    __syncthreads();
    // Where rows see different keys, a non-finite value in the tile switches it to the slow PV.
    bool slow = false;
    if (per_row) {
      bool bad = false;
      const int kn = static_cast<int>(jz - j0);
      for (int c = tid; c < kn * kChunks; c += 128)
        bad |= any_nonfinite<T>(*reinterpret_cast<const uint4*>(sV + (c / kChunks) * LD + (c % kChunks) * 8));
      slow = __syncthreads_or(bad) != 0;
    }
    if (!slow) {
#pragma unroll
      for (int ks = 0; ks < BK / 16; ++ks) {
        uint32_t a[KM][4];
#pragma unroll
        for (int mt = 0; mt < KM; ++mt) {
          a[mt][0] = mma::pack2<T>(s[mt][2 * ks][0], s[mt][2 * ks][1]);
          a[mt][1] = mma::pack2<T>(s[mt][2 * ks][2], s[mt][2 * ks][3]);
          a[mt][2] = mma::pack2<T>(s[mt][2 * ks + 1][0], s[mt][2 * ks + 1][1]);
          a[mt][3] = mma::pack2<T>(s[mt][2 * ks + 1][2], s[mt][2 * ks + 1][3]);
        }
#pragma unroll
        for (int dp = 0; dp < D / 16; ++dp) {
          uint32_t bb[4];
          mma::ldsm_x4_t(bb, sV + (ks * 16 + ((lane / 8) % 2) * 8 + lane % 8) * LD + dp * 16 + (lane / 16) * 8);
#pragma unroll
          for (int mt = 0; mt < KM; ++mt) {
            mma::mma16816<T>(o[mt][2 * dp], a[mt], bb[0], bb[1]);
            mma::mma16816<T>(o[mt][2 * dp + 1], a[mt], bb[2], bb[3]);
          }
        }
      }
    } else {
      // Element by element from shared memory: masked pairs (-1) never read their value.
      const int kn = static_cast<int>(jz - j0);
#pragma unroll
      for (int mt = 0; mt < KM; ++mt) {
        float* prow = sP + (warp * KM + mt) * 16 * BK;
#pragma unroll
        for (int n = 0; n < NT; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e)
            prow[(gq + 8 * (e / 2)) * BK + n * 8 + 2 * tq + (e & 1)] =
                (masked[mt] >> (n * 4 + e)) & 1u ? -1.f : s[mt][n][e];
        __syncwarp();
#pragma unroll
        for (int n = 0; n < ND; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float* pr = prow + (gq + 8 * (e / 2)) * BK;
            const int d = n * 8 + 2 * tq + (e & 1);
            float acc = o[mt][n][e];
            for (int k = 0; k < kn; ++k)
              if (pr[k] != -1.f) acc += pr[k] * to_acc<float>(sV[k * LD + d]);
            o[mt][n][e] = acc;
          }
        __syncwarp();
      }
    }
    __syncthreads();  // every warp is done with V
    if (more) load_rows(sV, vg, p.v.stride[2], n0, nz);
    j0 = n0;
    jz = nz;
    have = more;
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
      if (row[mt][r] >= p.Sq) continue;
      const float sc = math::softmax_out_scale(m[mt][r], lr);
      T* dst = static_cast<T*>(p.out) + b * p.out_stride[0] + h * p.out_stride[1] + row[mt][r] * p.out_stride[2];
#pragma unroll
      for (int n = 0; n < ND; ++n)
#pragma unroll
        for (int c = 0; c < 2; ++c)
          dst[(n * 8 + 2 * tq + c) * p.out_stride[3]] = from_acc<T>(o[mt][n][2 * r + c] * sc);
      if (p.lse && tq == 0)
        static_cast<float*>(p.lse)[b * p.lse_stride[0] + h * p.lse_stride[1] + row[mt][r] * p.lse_stride[2]] =
            math::softmax_lse(m[mt][r], lr);
    }
}

template <class T, int D, int KM>
__global__ void __launch_bounds__(128, 1) exact_mma_kernel(const AttnProblem p, bool per_row) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  // Two m-tiles per warp spill registers in sm_80 code: there the host launches KM = 1 only.
  if constexpr (KM > 1)
    __trap();
  else
#endif
    exact_mma_body<T, D, KM>(p, per_row);
}

/// Whether the current device runs the two-m-tile blocks (sm_90 and later; see exact_mma_kernel).
inline bool wide_blocks_ok() {
  int dev = 0, major = 0;
  ATTNKIT_CUDA_CHECK(cudaGetDevice(&dev));
  ATTNKIT_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  return major >= 9;
}

template <class T, int D, int KM>
void launch_mma(const AttnProblem& p, bool per_row, cudaStream_t st) {
  using S = MmaShape<D, KM>;
  const std::size_t smem = per_row ? S::kSmemSlow : S::kSmem;
  allow_dynamic_smem(exact_mma_kernel<T, D, KM>, smem);
  const dim3 grid(static_cast<unsigned>((p.Sq + S::BQ - 1) / S::BQ), static_cast<unsigned>(p.Hq),
                  static_cast<unsigned>(p.B));
  exact_mma_kernel<T, D, KM><<<grid, 128, smem, st>>>(p, per_row);
  ATTNKIT_CUDA_CHECK_LAUNCH();
}

/// Runs the tensor-core kernel: 128 query rows per block for head dims up to 64 on sm_90+ where the
/// problem has them (and the layout's query blocks hold whole blocks), else 64 (larger head dims and sm_80:
/// two m-tiles' accumulators would spill).
template <class T, int D>
void run_mma(const AttnProblem& p) {
  if (p.empty_output()) return;
  const cudaStream_t st = as_stream(p.stream);
  const bool per_row = p.causal || p.window_left >= 0 || p.window_right >= 0 || p.mask.present || p.bias.present ||
                       p.row_lo != nullptr;
  constexpr bool kWide = D <= 64;
  if constexpr (kWide) {
    if (p.Sq > 64 && (!p.sparse || p.layout.bq % MmaShape<D, 2>::BQ == 0) && wide_blocks_ok())
      return launch_mma<T, D, 2>(p, per_row, st);
  }
  launch_mma<T, D, 1>(p, per_row, st);
}

#define ATTNKIT_INSTANTIATE_MMA(T, D) template void run_mma<T, D>(const AttnProblem&);

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
