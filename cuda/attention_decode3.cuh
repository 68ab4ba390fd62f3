#pragma once
// The flash-decoding kernel, version 3 (internal name "attention_decode_v3" in cuda/runtime.cu: used only
// where has_kernel() enables it, else v2 / v1 run, attention.cu decides). float16 / bfloat16, head dims
// D = Dv = 64 or 128, Sq * G <= 16 rows per kv head (G = Hq / Hkv), every dense contract feature (score
// terms, key ranges and per-row data as v1 / v2: ScoreTerms, row_keys, valid_keys).
//
// Why: v2 (attention_decode2.cuh) reads K / V at 47-59% of an H200's bandwidth. It is a SIMT kernel: per
// 32 bytes of K + V a lane converts 16 values, does R (rows) x 16 FMAs, and every lane of a group repeats
// the softmax of every row; with ~100 instructions per 32 bytes the SMs' issue rate, not DRAM, bounds it.
// v3 does the products on tensor cores (mma.sync.m16n8k16, float32 accumulation, as attention_mma.cuh):
// one 16-row m-tile holds all the kv head's query rows (row r = i * G + (h - hkv * G), as v1 / v2; rows
// R..15 are padding: q = 0, never written), so each K / V byte is read from DRAM once per kv head and
// feeds all rows in ~1/10 of v2's instructions.
//
// Work. One block of 4 warps per (batch b, kv head, split); a split is a contiguous share of the keys
// whose size follows from the shapes only (decode3_geometry: a target grid size, a multiple of 64 keys,
// at least 256 keys). The block visits [a, z), the union of its rows' key ranges clipped to the split, as
// tiles of 16 keys: tile t = [a + 16 t, a + 16 t + 16) belongs to warp t % 4 (so the block reads
// consecutive rows). Each warp streams its tiles through its OWN NS-stage ring of shared-memory buffers
// with cp.async (16-byte copies, zero-fill past z): NS - 1 tiles (K and V: NS - 1 x 8 KiB at D = 128) are
// in flight per warp while it computes one; no block barrier in the loop (__syncwarp only). Per tile:
// S = Q K^T (Q's fragments stay in registers), score terms / key ranges per element where the tile is not
// inside every row's range (else only the scale), the warp's online softmax (math/softmax.h, as
// attention_mma.cuh), O += P V with P rounded to T (as the tensor-core exact kernels).
// Masked keys and non-finite values (as attention_mma.cuh): where a valid row of the warp has a masked
// (row, key) pair in a tile (per-row ranges, mask, bias = -inf) the warp scans the tile's V for an
// infinity / NaN; if there is one, that tile's PV runs element by element skipping masked pairs, so a
// value the contract says is never read cannot reach the output. Keys past z are zero-filled, not read.
// End: the warps' (m, l, O) are combined in warp order in shared memory (fixed order), giving the split's
// normalised output and LSE: written to out / lse when there is one split, else to the split scratch,
// merged in split order by merge3_kernel (merge2_kernel's body, attention_decode2.cuh), launched on sm_90+
// with programmatic dependent launch (its launch overlaps the decode grid's tail; it waits for that grid's
// completion before reading). Deterministic: fixed reduction orders, no atomics; the split count depends on
// the shapes and the tuning only, never on the device.
//
// Variants (speed only): NS (2, 3, 4; template; lowered where the device's shared memory is smaller), the
// target grid size, the merge's programmatic dependent launch. Defaults kDec3Stages / kDec3Blocks / on,
// else ATTNKIT_CUDA_DECODE3="stages,blocks,pdl" (read once per process; any part may be 0 or left out),
// overridden by the tuning options cuda_decode_stages / cuda_decode3_blocks / cuda_decode3_pdl.
// bench/gpu_sweeps.py (decode_sweep_rows) measures them side by side.

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "cpp/src/tuning.h"
#include "cuda/attention_decode2.cuh"
#include "cuda/attention_mma.cuh"

namespace attnkit {
namespace detail {
namespace cuda {

constexpr int kDec3Warps = 4;
constexpr int kDec3Threads = 32 * kDec3Warps;
constexpr int kDec3Rows = 16;      // one m-tile: rows (Sq * G) per kv head served by v3
constexpr int kDec3Tile = 16;      // keys per warp tile
// Defaults from the decode sweeps on an H200: 2 stages had the best geometric-mean device rate over MHA / GQA,
// Sk 16K / 128K in session 22 (bench/results/gpu_h200_s22.json: 256 blocks 3597 GB/s; 3 stages 512 blocks: 3362),
// and session 27's sweep, the first with 128 blocks (gpu_h200_s27.json), put 128 blocks first: 3747 GB/s against
// 256's 3590 in the same run; GQA 32:8 at Sk = 16384 71% of the peak (256: 67%), at 131072 86% (84%).
constexpr int kDec3Stages = 2;     // default NS
constexpr int kDec3Blocks = 128;   // default target grid size (about one block per SM on 132 SMs)

/// Shared memory of v3 (elements of T unless said): Q [16][LD], then each warp's NS stages of (K [16][LD],
/// V [16][LD]), then each warp's P scratch for the element-wise PV (float [16][16]). After the key loop
/// the stage region holds the warps' combine data (float: O [NW][16][D], m, l, w [NW][16], scale [16]).
template <int D, int NS>
struct Dec3Shape {
  static constexpr int LD = D + 8;  // row pitch (elements): conflict-free ldmatrix
  static constexpr int CH = D / 8;  // 16-byte chunks per row
  static constexpr int ND = D / 8;  // n-tiles of the output
  static constexpr std::size_t kQ = static_cast<std::size_t>(kDec3Rows) * LD * 2;
  static constexpr std::size_t kStage = static_cast<std::size_t>(2 * kDec3Tile) * LD * 2;  // K + V, bytes
  static constexpr std::size_t kStages = kStage * NS * kDec3Warps;
  static constexpr std::size_t kCombine = sizeof(float) * (static_cast<std::size_t>(kDec3Warps) * kDec3Rows * (D + 3) + kDec3Rows);
  static constexpr std::size_t kP = sizeof(float) * kDec3Warps * kDec3Rows * kDec3Tile;
  static constexpr std::size_t kSmem = kQ + (kStages > kCombine ? kStages : kCombine) + kP;
  static_assert(kStages >= kCombine, "decode v3: the combine data reuses the stage buffers");
  static_assert(D % 16 == 0 && (kDec3Tile * CH) % 32 == 0, "decode v3: tiles");
};

/// Blocks per SM the registers must allow: 3 for D = 64 (its shared memory allows 3), else 2.
__host__ __device__ constexpr int dec3_min_blocks(int d) { return d <= 64 ? 3 : 2; }

template <class T, int D, int NS>
__global__ void __launch_bounds__(kDec3Threads, dec3_min_blocks(D)) decode3_kernel(const AttnProblem p, const DecodeGeom g) {
  using Sh = Dec3Shape<D, NS>;
  constexpr int LD = Sh::LD, CH = Sh::CH, ND = Sh::ND, NW = kDec3Warps, TK = kDec3Tile;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sStage = reinterpret_cast<T*>(smem_raw + Sh::kQ);
  float* sP = reinterpret_cast<float*>(smem_raw + Sh::kQ + (Sh::kStages > Sh::kCombine ? Sh::kStages : Sh::kCombine));
  __shared__ int64_t s_lo[kDec3Rows], s_hi[kDec3Rows], s_h[kDec3Rows], s_i[kDec3Rows];
  __shared__ float s_slope[kDec3Rows];
  __shared__ int64_t s_a, s_z;

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // Programmatic dependent launch (sm_90+, where run_decode3 launches merge3_kernel with it): the merge
  // grid may be scheduled once every block of this one has started; it waits (griddepcontrol.wait) for
  // this grid's completion and memory before reading anything, so the trigger's place is only a timing.
  // Without splits there is no merge: no trigger (a later kernel of the caller's waits for completion).
  if (g.nsplit > 1) asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, gq = lane / 4, tq = lane % 4;
  const int64_t bh = blockIdx.x / g.nsplit;
  const int split = static_cast<int>(blockIdx.x % g.nsplit);
  const int64_t hkv = bh % p.Hkv, b = bh / p.Hkv;
  const int64_t G = p.Hq / p.Hkv;
  const int R = static_cast<int>(p.Sq * G);  // valid rows (<= 16)
  const float ninf = math::neg_inf<float>();

  // Per-row data, one row per lane of warp 0 (lanes 16..31 repeat 0..15; 32-bit index math: G <= 16):
  // padding rows (r >= R) take row 0's head and position and an empty range. The block's key range is the
  // union of the rows' ranges (a min / max butterfly over the 16 rows) clipped to the split. Done in
  // parallel and before the first copy can start, so kept short.
  const int Gi = static_cast<int>(G);
  if (warp == 0) {
    const int r = lane % kDec3Rows, rr = r < R ? r : 0;
    const int64_t i = rr / Gi, h = hkv * G + rr % Gi;
    math::KeyRange kr = row_keys(p, b, h, i, valid_keys(p, b));
    if (r >= R) kr = {0, 0};
    if (lane < kDec3Rows) {
      s_lo[r] = kr.lo;
      s_hi[r] = kr.hi;
      s_h[r] = h;
      s_i[r] = i;
      s_slope[r] = alibi_slope<float>(p, b, h);
    }
    long long ulo = kr.hi > kr.lo ? kr.lo : INT64_MAX, uhi = kr.hi > kr.lo ? kr.hi : INT64_MIN;
#pragma unroll
    for (int o = kDec3Rows / 2; o > 0; o >>= 1) {
      const long long lo2 = __shfl_xor_sync(0xffffffffu, ulo, o), hi2 = __shfl_xor_sync(0xffffffffu, uhi, o);
      ulo = lo2 < ulo ? lo2 : ulo;
      uhi = hi2 > uhi ? hi2 : uhi;
    }
    if (lane == 0) {
      const int64_t u0 = static_cast<int64_t>(ulo), u1 = static_cast<int64_t>(uhi);
      const int64_t s_lo_k = static_cast<int64_t>(split) * g.split_keys, s_hi_k = s_lo_k + g.split_keys;
      const int64_t ka = u0 > s_lo_k ? u0 : s_lo_k, kz = u1 < s_hi_k ? u1 : s_hi_k;
      s_a = ka < kz ? ka : 0;  // an empty range (no row sees a key, or none in this split) as [0, 0)
      s_z = ka < kz ? kz : 0;
    }
  }
  // Q [16][LD] (bits of T; padding rows 0), from any strides.
  {
    const uint16_t* qd = static_cast<const uint16_t*>(p.q.data);
    uint16_t* sq = reinterpret_cast<uint16_t*>(sQ);
    for (int idx = tid; idx < kDec3Rows * D; idx += kDec3Threads) {
      const int r = idx / D, d = idx % D;
      uint16_t bits = 0;
      if (r < R) {
        const int64_t i = r / Gi, h = hkv * G + r % Gi;
        bits = qd[b * p.q.stride[0] + h * p.q.stride[1] + i * p.q.stride[2] + static_cast<int64_t>(d) * p.q.stride[3]];
      }
      sq[r * LD + d] = bits;
    }
  }
  __syncthreads();
  const int64_t a = s_a, z = s_z;

  // This lane's rows gq and gq + 8: head, position, range, slope; a padding row sees every key (its
  // result is never written, so its scores only need to be finite work).
  int64_t rh[2], ri[2], rlo[2], rhi[2];
  float rslope[2];
  bool rvalid[2];
#pragma unroll
  for (int x = 0; x < 2; ++x) {
    const int r = gq + 8 * x;
    rvalid[x] = r < R;
    rh[x] = s_h[r];
    ri[x] = s_i[r];
    rlo[x] = rvalid[x] ? s_lo[r] : INT64_MIN;
    rhi[x] = rvalid[x] ? s_hi[r] : INT64_MAX;
    rslope[x] = s_slope[r];
  }
  uint32_t qa[D / 16][4];
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) mma::ldsm_x4(qa[ks], sQ + (lane % 16) * LD + ks * 16 + (lane / 16) * 8);

  const ScoreTerms<float> terms(p);
  const bool plain = !terms.softcap && !terms.bias_tile && !p.alibi.present;
  const T* kg = static_cast<const T*>(p.k.data) + b * p.k.stride[0] + hkv * p.k.stride[1];
  const T* vg = static_cast<const T*>(p.v.data) + b * p.v.stride[0] + hkv * p.v.stride[1];
  const int64_t ks2 = p.k.stride[2], vs2 = p.v.stride[2];

  // The warp's tiles: t = warp + NW * k, k < nw.
  const int64_t nt = (z - a + TK - 1) / TK;
  const int64_t nw = warp < nt ? (nt - 1 - warp) / NW + 1 : 0;
  T* wstage = sStage + static_cast<int64_t>(warp) * NS * 2 * TK * LD;
  auto load_tile = [&](int64_t k) {
    const int64_t j0 = a + (warp + NW * k) * TK;
    T* sk = wstage + static_cast<int>(k % NS) * 2 * TK * LD;
    T* sv = sk + TK * LD;
#pragma unroll
    for (int x = 0; x < TK * CH / 32; ++x) {
      const int c = lane + 32 * x, r = c / CH, cc = c % CH;
      const int64_t j = j0 + r;
      const bool ok = j < z;
      const int64_t jj = ok ? j : a;
      mma::cp_async16(sk + r * LD + cc * 8, kg + jj * ks2 + cc * 8, ok);
      mma::cp_async16(sv + r * LD + cc * 8, vg + jj * vs2 + cc * 8, ok);
    }
  };

  float o[ND][4];
#pragma unroll
  for (int n = 0; n < ND; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[n][e] = 0.f;
  float m[2] = {ninf, ninf}, l[2] = {0.f, 0.f};

  // Prologue: NS - 1 tiles in flight (one commit group per tile slot, empty past the warp's tiles, so
  // the group count per iteration is uniform).
#pragma unroll
  for (int s = 0; s < NS - 1; ++s) {
    if (s < nw) load_tile(s);
    mma::cp_commit();
  }
#pragma unroll 1
  for (int64_t k = 0; k < nw; ++k) {
    if (k + NS - 1 < nw) load_tile(k + NS - 1);  // into the stage tile k - 1 used (done: __syncwarp below)
    mma::cp_commit();
    mma::cp_wait<NS - 1>();  // this lane's copies of tile k have landed
    __syncwarp();            // ... and every lane's
    const T* sk = wstage + static_cast<int>(k % NS) * 2 * TK * LD;
    const T* sv = sk + TK * LD;
    const int64_t j0 = a + (warp + NW * k) * TK;
    const int64_t jz = j0 + TK < z ? j0 + TK : z;

    float s[2][4];
#pragma unroll
    for (int n = 0; n < 2; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = 0.f;
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
      uint32_t bb[4];
      mma::ldsm_x4(bb, sk + ((lane / 16) * 8 + lane % 8) * LD + ks * 16 + ((lane / 8) % 2) * 8);
      mma::mma16816<T>(s[0], qa[ks], bb[0], bb[1]);
      mma::mma16816<T>(s[1], qa[ks], bb[2], bb[3]);
    }

    // Score terms and key ranges; masked pairs in `masked` (bit n * 4 + e); `flag`: a valid row has a
    // masked pair on a loaded key (j < jz), whose V may hold a value never to be read.
    uint32_t masked = 0;
    bool flag = false;
    float mx[2] = {ninf, ninf};
    const bool inside = jz - j0 == TK && j0 >= rlo[0] && jz <= rhi[0] && j0 >= rlo[1] && jz <= rhi[1];
    if (inside && plain) {
#pragma unroll
      for (int n = 0; n < 2; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float x = s[n][e] * terms.scale;
          s[n][e] = x;
          mx[e / 2] = x > mx[e / 2] ? x : mx[e / 2];
        }
    } else {
#pragma unroll
      for (int n = 0; n < 2; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int x2 = e / 2;
          const int64_t j = j0 + n * 8 + 2 * tq + (e & 1);
          const bool in = j < jz && j >= rlo[x2] && j < rhi[x2];
          float x = s[n][e];
          if (!in)
            x = ninf;
          else if (plain)
            x *= terms.scale;
          else
            x = terms(p, b, rh[x2], ri[x2], j, x, rslope[x2]);
          s[n][e] = x;
          if (x == ninf) {
            masked |= 1u << (n * 4 + e);
            if (j < jz && rvalid[x2]) flag = true;
          }
          mx[x2] = x > mx[x2] ? x : mx[x2];
        }
    }
    float alpha[2];
#pragma unroll
    for (int x2 = 0; x2 < 2; ++x2) {
      mx[x2] = fmaxf(mx[x2], __shfl_xor_sync(0xffffffffu, mx[x2], 1));
      mx[x2] = fmaxf(mx[x2], __shfl_xor_sync(0xffffffffu, mx[x2], 2));
      const float m_new = math::softmax_new_max(m[x2], mx[x2]);
      alpha[x2] = kexp(math::softmax_rescale_arg<float, float>(m[x2], m_new));
      m[x2] = m_new;
      l[x2] *= alpha[x2];
    }
    const float off[2] = {math::softmax_offset<float, float>(m[0]), math::softmax_offset<float, float>(m[1])};
#pragma unroll
    for (int n = 0; n < 2; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float x = s[n][e];
        const float pr = x == ninf ? 0.f : kexp(x - off[e / 2]);
        l[e / 2] += pr;
        s[n][e] = pr;
      }
#pragma unroll
    for (int n = 0; n < ND; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[n][e] *= alpha[e / 2];

    // A masked pair in the warp: scan the tile's V (loaded rows) for a non-finite value.
    bool slow = false;
    if (__any_sync(0xffffffffu, flag)) {
      const int kn = static_cast<int>(jz - j0);
      bool bad = false;
      for (int c = lane; c < kn * CH; c += 32)
        bad |= any_nonfinite<T>(*reinterpret_cast<const uint4*>(sv + (c / CH) * LD + (c % CH) * 8));
      slow = __any_sync(0xffffffffu, bad);
    }
    if (!slow) {
      uint32_t pa[4];
      pa[0] = mma::pack2<T>(s[0][0], s[0][1]);
      pa[1] = mma::pack2<T>(s[0][2], s[0][3]);
      pa[2] = mma::pack2<T>(s[1][0], s[1][1]);
      pa[3] = mma::pack2<T>(s[1][2], s[1][3]);
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t bb[4];
        mma::ldsm_x4_t(bb, sv + (((lane / 8) % 2) * 8 + lane % 8) * LD + dp * 16 + (lane / 16) * 8);
        mma::mma16816<T>(o[2 * dp], pa, bb[0], bb[1]);
        mma::mma16816<T>(o[2 * dp + 1], pa, bb[2], bb[3]);
      }
    } else {
      // Element by element: masked pairs (-1) never read their value.
      const int kn = static_cast<int>(jz - j0);
      float* prow = sP + warp * kDec3Rows * TK;
#pragma unroll
      for (int n = 0; n < 2; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          prow[(gq + 8 * (e / 2)) * TK + n * 8 + 2 * tq + (e & 1)] = (masked >> (n * 4 + e)) & 1u ? -1.f : s[n][e];
      __syncwarp();
#pragma unroll
      for (int n = 0; n < ND; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float* pr = prow + (gq + 8 * (e / 2)) * TK;
          const int d = n * 8 + 2 * tq + (e & 1);
          float acc = o[n][e];
          for (int kk = 0; kk < kn; ++kk)
            if (pr[kk] != -1.f) acc += pr[kk] * to_acc<float>(sv[kk * LD + d]);
          o[n][e] = acc;
        }
    }
    __syncwarp();  // every lane is done with this stage (and sP) before it is refilled
  }
  mma::cp_wait<0>();

  // Row sums over the quad, then the warps' results to shared memory (the stage region, once every warp
  // is done with it) and their combine in warp order.
#pragma unroll
  for (int x2 = 0; x2 < 2; ++x2) {
    l[x2] += __shfl_xor_sync(0xffffffffu, l[x2], 1);
    l[x2] += __shfl_xor_sync(0xffffffffu, l[x2], 2);
  }
  __syncthreads();
  float* sO = reinterpret_cast<float*>(sStage);  // [NW][16][D]
  float* sM = sO + NW * kDec3Rows * D;           // [NW][16]
  float* sL = sM + NW * kDec3Rows;
  float* sW = sL + NW * kDec3Rows;
  float* sSc = sW + NW * kDec3Rows;  // [16]
#pragma unroll
  for (int n = 0; n < ND; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) sO[(warp * kDec3Rows + gq + 8 * (e / 2)) * D + n * 8 + 2 * tq + (e & 1)] = o[n][e];
  if (tq == 0) {
#pragma unroll
    for (int x2 = 0; x2 < 2; ++x2) {
      sM[warp * kDec3Rows + gq + 8 * x2] = m[x2];
      sL[warp * kDec3Rows + gq + 8 * x2] = l[x2];
    }
  }
  __syncthreads();
  const int64_t rows_total = p.B * p.Hq * p.Sq;
  if (tid < R) {
    const int r = tid;
    float M = ninf;
    for (int w = 0; w < NW; ++w) M = sM[w * kDec3Rows + r] > M ? sM[w * kDec3Rows + r] : M;
    float L = 0.f;
    for (int w = 0; w < NW; ++w) {
      const float wt = kexp(math::softmax_rescale_arg<float, float>(sM[w * kDec3Rows + r], M));
      sW[w * kDec3Rows + r] = wt;
      L += sL[w * kDec3Rows + r] * wt;
    }
    sSc[r] = math::softmax_out_scale(M, L);
    const int64_t h = s_h[r], i = s_i[r];
    const float lse = math::softmax_lse(M, L);
    if (g.nsplit > 1)
      static_cast<float*>(g.part_lse)[split * rows_total + (b * p.Hq + h) * p.Sq + i] = lse;
    else if (p.lse)
      static_cast<float*>(p.lse)[b * p.lse_stride[0] + h * p.lse_stride[1] + i * p.lse_stride[2]] = lse;
  }
  __syncthreads();
  for (int idx = tid; idx < R * D; idx += kDec3Threads) {
    const int r = idx / D, d = idx % D;
    float acc = 0.f;
    for (int w = 0; w < NW; ++w) {
      const float wt = sW[w * kDec3Rows + r];
      acc += wt == 0.f ? 0.f : wt * sO[(w * kDec3Rows + r) * D + d];
    }
    acc *= sSc[r];
    const int64_t h = s_h[r], i = s_i[r];
    if (g.nsplit > 1)
      static_cast<float*>(g.part_o)[(split * rows_total + (b * p.Hq + h) * p.Sq + i) * p.Dv + d] = acc;
    else
      static_cast<T*>(p.out)[b * p.out_stride[0] + h * p.out_stride[1] + i * p.out_stride[2] +
                             static_cast<int64_t>(d) * p.out_stride[3]] = from_acc<T>(acc);
  }
}

/// merge2_kernel's split merge (attention_decode2.cuh), launched with programmatic dependent launch on
/// sm_90+: it first waits for the decode grid (a no-op when launched without the attribute).
template <class T>
__global__ void merge3_kernel(const AttnProblem p, const void* part_o, const void* part_lse, int nsplit) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
  merge2_body<T>(p, part_o, part_lse, nsplit);
}

// ------------------------------------------------------------------------------------------------ host
/// Whether v3 takes problem p (p must already satisfy decode_supported, which checks the K / V rows'
/// 16-byte alignment and strides): float16 / bfloat16, D = Dv in {64, 128}, at most 16 rows per kv head.
inline bool decode3_supported(const AttnProblem& p) {
  if (p.dtype != DType::Float16 && p.dtype != DType::BFloat16) return false;
  if (p.D != p.Dv || (p.D != 64 && p.D != 128)) return false;
  return p.Sq * p.group() <= kDec3Rows;
}

struct Dec3Choice {
  int stages;      // NS: 2, 3 or 4
  int64_t blocks;  // target grid size
  bool pdl;        // the merge by programmatic dependent launch (where the device has it: sm_90+)
};

/// The variant: tuning options cuda_decode_stages / cuda_decode3_blocks / cuda_decode3_pdl when set
/// (non-zero), else ATTNKIT_CUDA_DECODE3="stages,blocks,pdl" (read once per process; any part may be left
/// out or 0; pdl 1 = on, 2 = off), else kDec3Stages / kDec3Blocks / on. Values out of range are ignored.
inline Dec3Choice decode3_choice() {
  static const Dec3Choice env = [] {
    Dec3Choice c{kDec3Stages, kDec3Blocks, true};
    const char* e = std::getenv("ATTNKIT_CUDA_DECODE3");
    if (!e) return c;
    char* end = nullptr;
    const long long s = std::strtoll(e, &end, 10);
    if (end != e && s >= 2 && s <= 4) c.stages = static_cast<int>(s);
    const char* comma = std::strchr(e, ',');
    if (comma) {
      const long long bl = std::strtoll(comma + 1, &end, 10);
      if (end != comma + 1 && bl >= 64 && bl <= 65536) c.blocks = bl;
      const char* comma2 = std::strchr(comma + 1, ',');
      if (comma2) {
        const long long pd = std::strtoll(comma2 + 1, &end, 10);
        if (end != comma2 + 1 && (pd == 1 || pd == 2)) c.pdl = pd == 1;
      }
    }
    return c;
  }();
  Dec3Choice c = env;
  const int64_t ts = tuning().cuda_decode_stages.load();
  const int64_t tb = tuning().cuda_decode3_blocks.load();
  const int64_t tp = tuning().cuda_decode3_pdl.load();
  if (ts >= 2 && ts <= 4) c.stages = static_cast<int>(ts);
  if (tb >= 64 && tb <= 65536) c.blocks = tb;
  if (tp == 1 || tp == 2) c.pdl = tp == 1;
  return c;
}

/// Splits for a grid of about `target` blocks: multiples of 64 keys (4 warps x 16-key tiles), at least 256
/// keys each; from the shapes and the chosen target only.
inline DecodeGeom decode3_geometry(const AttnProblem& p, int64_t target) {
  DecodeGeom g;
  g.nrc = 1;
  const int64_t bh = p.B * p.Hkv > 0 ? p.B * p.Hkv : 1;
  const int64_t want = (target + bh - 1) / bh;
  int64_t per = (p.Sk + want - 1) / want;
  per = (per + 63) / 64 * 64;
  if (per < 256) per = 256;
  g.split_keys = per;
  const int64_t n = (p.Sk + per - 1) / per;
  g.nsplit = static_cast<int>(n > 1 ? n : 1);
  return g;
}

template <class T, int D, int NS>
void launch_decode3(const AttnProblem& p, const DecodeGeom& g, cudaStream_t st) {
  using Sh = Dec3Shape<D, NS>;
  allow_dynamic_smem(decode3_kernel<T, D, NS>, Sh::kSmem);
  const int64_t blocks = p.B * p.Hkv * g.nsplit;
  decode3_kernel<T, D, NS><<<static_cast<unsigned>(blocks), kDec3Threads, Sh::kSmem, st>>>(p, g);
  ATTNKIT_CUDA_CHECK_LAUNCH();
}

/// The stage count the device's shared memory allows (at most `stages`, at least 2): an sm_86 / sm_89 GPU
/// runs the sm_80 code with 99 KiB per block, less than 3 or 4 stages of D = 128 take. The stages change
/// how far ahead the copies run, never which warp reads which keys or any reduction order, so the
/// results do not depend on this choice.
template <int D>
int decode3_stages_fitting(int stages, int device) {
  int optin = 0;
  ATTNKIT_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  const std::size_t limit = optin > 1024 ? static_cast<std::size_t>(optin) - 1024 : 0;  // static shared data
  if (stages >= 4 && Dec3Shape<D, 4>::kSmem <= limit) return 4;
  if (stages >= 3 && Dec3Shape<D, 3>::kSmem <= limit) return 3;
  return 2;
}

template <class T, int D>
void launch_decode3_stages(const AttnProblem& p, const DecodeGeom& g, int stages, cudaStream_t st) {
  stages = decode3_stages_fitting<D>(stages, p.device_index);
  if (stages <= 2)
    launch_decode3<T, D, 2>(p, g, st);
  else if (stages == 3)
    launch_decode3<T, D, 3>(p, g, st);
  else
    launch_decode3<T, D, 4>(p, g, st);
}

/// Runs v3 for storage type T (p must satisfy decode_supported and decode3_supported); instantiated once
/// per dtype in attention_decode3_<dtype>.cu.
template <class T>
void run_decode3(const AttnProblem& p) {
  if (p.empty_output()) return;
  const cudaStream_t st = as_stream(p.stream);
  const Dec3Choice choice = decode3_choice();
  DecodeGeom g = decode3_geometry(p, choice.blocks);
  const int64_t rows = p.B * p.Hq * p.Sq;
  const SplitScratch<float> scratch(g.nsplit, rows, p.Dv, st);
  g.part_o = scratch.o;
  g.part_lse = scratch.lse;
  if (p.D == 64)
    launch_decode3_stages<T, 64>(p, g, choice.stages, st);
  else
    launch_decode3_stages<T, 128>(p, g, choice.stages, st);
  if (g.nsplit > 1) {
    const int64_t warps = rows * ((p.Dv + 31) / 32);
    int major = 0;
    if (choice.pdl)
      ATTNKIT_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, p.device_index));
    if (major >= 9) {
      cudaLaunchConfig_t cfg = {};
      cfg.gridDim = dim3(blocks_for(warps, 4));
      cfg.blockDim = dim3(128);
      cfg.dynamicSmemBytes = 0;
      cfg.stream = st;
      cudaLaunchAttribute attr[1];
      attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
      attr[0].val.programmaticStreamSerializationAllowed = 1;
      cfg.attrs = attr;
      cfg.numAttrs = 1;
      const void* po = g.part_o;
      const void* pl = g.part_lse;
      const int ns = g.nsplit;
      ATTNKIT_CUDA_CHECK(cudaLaunchKernelEx(&cfg, merge3_kernel<T>, p, po, pl, ns));
    } else {
      merge3_kernel<T><<<blocks_for(warps, 4), 128, 0, st>>>(p, g.part_o, g.part_lse, g.nsplit);
      ATTNKIT_CUDA_CHECK_LAUNCH();
    }
  }
}

#define ATTNKIT_INSTANTIATE_DECODE3(T) template void run_decode3<T>(const AttnProblem&);

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
