#pragma once
// Performer (FAVOR+ softmax features), CAUSAL form, on tensor cores with the features computed inside the
// kernels that use them ("performer_attention_mma2_causal" in runtime.cu's kCompiled; linear.cu takes it only
// where has_kernel says so and performer_mma2_causal (performer_causal_mma.cu) accepts the problem, else the
// v2 / performer_mma.cuh causal kernels run). float16 / bfloat16; D, Dv in {32, 64, 128}; m a multiple of 64;
// chunks of C = 64 keys (p.chunk 0 or 64). Semantics of cpu/linear_kernel.h's causal_item and
// math/feature_maps.h; building blocks from performer_mma2.cuh (W' in 16-bit parts, the projections on
// tensor cores, the phi^T [V | 1] and phi(Q) [S | z] products) and linear_mma.cuh (masked intra-chunk scores
// times [V | 1], the power-of-two row scaling, the non-finite value handling).
//
// Stabilizer. The CPU keeps key j's features relative to c_j (the running maximum of the key exponents up to
// j), the state relative to c at the end of the previous chunk, and lets query t work relative to c_t (c at
// key min(t, kn - 1) of its chunk), so every factor exp(c_old - c_new) is <= 1. This path uses the same
// inequalities with finer references, one per slice of 64 features (a slice's maximum never exceeds the
// maximum over all features, so every factor below is still <= 1, every feature <= m^-1/2, nothing depends on
// a future key); the results equal the CPU's up to rounding:
//   mb[j][s]  = max_{f in slice s} (w_f . k'_j) - |k'_j|^2/2  (so m_j = max_s mb[j][s] is the CPU's key
//               maximum, and c_j = running max of m_j from c_prev is the CPU's c_j: max commutes);
//   R_s(c)    = max(mb[j][s] over the allowed keys before chunk c): the reference of slice s's rows of the
//               state before chunk c (max_s R_s(c) = the CPU's c_prev);
//   state_kernel  per (b, hkv, slice s), chunks in order (the state [64 features][Dv + 8] in registers):
//               writes P_c = the state before chunk c (relative to R_s(c)) and R_s(c); then per chunk the
//               projections of its 64 keys (m16n8k16, float32 accumulation), mb, the key features
//               relative to their own mb, phi_own = exp(e - |k'|^2/2 - mb - ln(m)/2), stored in 16 bits for
//               the intra-chunk scores (phk), then rebased to R_s(c + 1) (the CPU's rebase_keys: times
//               exp(mb - R)), the state rescaled by exp(R_s(c) - R_s(c + 1)) (the CPU's rescale_state) and
//               += phi^T [V | 1] (16-bit parts as performer_mma2's state_kernel);
//   final_kernel  state_out / z_out: the state after the last chunk times exp(R_s - max_s R_s) (relative to
//               the CPU's final c); with no allowed key the state_in unchanged, as the CPU;
//   out_kernel  per (b, h, chunk of 64 rows; warp w owns rows 16 w ..): c_prev = max_s R_s(c), c_j, c_t as
//               the CPU; per slice s: the query projections; the row maximum of the projections so far (the
//               CPU's query stabilizer max_f w_f . q', taken online: when it grows, the accumulated O and
//               scores of the row are multiplied by exp(old - new), flash-attention style, so the queries
//               are projected once); phi(q) = exp(e - max - ln(m)/2);
//                 O += (phi(q) g_t) P_c[s] with g_t = exp(R_s(c) - c_t) <= 1 (the CPU's exp(c_prev - c_t)), in
//                      bfloat16 hi / lo parts (three products, performer_mma2's out_kernel);
//                 scores += (phi(q) phi_own(K_c)^T)[t][j] exp(mb[j][s] - c_t) for j <= t, j < kn (the CPU's
//                      A[t][j] exp(c_j - c_t) with phi(k_j) relative to c_j; 16-bit features, float32 sums);
//               then O += scores [V | 1] (linear_mma.cuh out_kernel's product, rows scaled by powers of two
//               so that float16 neither overflows nor underflows), den = column Dv, out = linear_output.
//
// Arithmetic (per token and head, m = F, C = 64, NS = 2 parts of W' for float16, 3 for bfloat16, DVA = Dv + 8):
//   state_kernel (per key row and kv head): projections 2 m D NS + state update 2 m DVA NS;
//   out_kernel (per query row): projections 2 m D NS + state product 2 m DVA 3 + scores 2 C m 5/8 + scores x V
//   2 C DVA 5/8 (warp w computes key tiles 0..w: 10 of 16 tiles). B = 4, H = 16, S = 4096 (262144 rows per
//   side), D = Dv = 64, m = 256, float16: 139 k + 202 k = 341 kFLOP per token-head, 89 GFLOP (bfloat16: 116);
//   bytes: P (items nch m DVA float32 = 302 MB) written once and read once per query head, phk (16-bit key
//   features, 134 MB) written and read, q, k, v, out 34 MB each: ~0.9 GB. The old causal path (linear.cu:
//   phi(Q), phi(K) in float32 in global memory, 3xTF32 products) ran 2.04 million tokens/s (8 ms) on an H200;
//   at the bidirectional fused path's measured efficiency (117 GFLOP in 0.94 ms) this is ~0.7-0.8 ms, ~20-25
//   million tokens/s (10-12x). Unmeasured: the state_kernel's serial chunk loop (B Hkv m / 64 = 256 blocks
//   here, each over all S / 64 chunks; no cp.async pipelining).
//   Measured (H200, session 27): 10.7 / 11.5 million tokens/s at S = 4096 / 16384 (exact causal attention:
//   26.2 / 8.2); the bidirectional path, with the same tensor-core work per row and more instructions (two
//   query projections), 19.1 / 21.6: the causal path's extra ~0.7 ms is most likely the serial state_kernel.
//   A chunk-parallel state pass (one block per (item, chunk, slice) for the increments, then a scan over the
//   chunks, P_c stored pre-split into bfloat16 hi / lo) measured 0.89-0.97x this path on the H200 (the output
//   kernel got faster, 620 vs 799 us, but scan 443 + increments 400 us cost more than state_kernel's 623) and
//   was removed in session 28 (git history: commit 21a0372). Its one gain, P_c pre-split by the state pass,
//   could move into state_kernel.
//
// Determinism: every output and state element is one thread's fragment, summed in a fixed order (features in
// slice order, parts, keys in order, chunks in order), whatever the grid; no atomics.
// Non-finite values as the CPU: a value tile with a NaN / infinity sums the 16-bit parts of phi and the high
// part alone separately (performer_mma2's state_kernel); a state slice with a NaN / infinity drops the
// q_lo p_hi product; the diagonal key tile of a chunk with a NaN / infinite value is summed element by element
// with the masked pairs skipped (linear_mma.cuh's out_kernel).

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cuda/performer_mma2.cuh"

namespace attnkit {
namespace detail {
namespace cuda {

/// Runs the causal Performer softmax problem p with head dim D on this path (instantiated in
/// performer_causal_mma_<dtype>_d<D>.cu); false where it does not apply (Dv, shared memory, sizes), having
/// launched nothing.
template <class T, int D>
bool run_performer_causal_mma(const LinearProblem& p, cudaStream_t stream);

namespace pmc {

using pm2::kBlock;  // 128 threads: 4 warps of 16 rows
using pm2::kFB;     // 64 features per slice
using pm2::kLDF;    // row pitch of [keys][features] tiles (kFB + 8)
using pm2::kRows;   // 64: the chunk length C (keys per chunk = query rows per out_kernel block)
using pm2::Parts;
using pm2::add_phi_v;

template <class T>
struct Ext {
  const T* wp;   // [NS][F][D]: W' = sqrt(scale) W in 16-bit parts
  float* P;      // [items][nch][F][DVA]: the state before chunk c, rows of slice s relative to pref[..][s]
  float* pref;   // [items][nch][nfb]: R_s(c)
  float* mbk;    // [items][S][nfb]: mb[j][s] (allowed keys only)
  T* phk;        // [items][S][F]: phi_own(k_j) (times Parts::kPhiScale; allowed keys only)
  float* fin;    // [items][F][DVA]: the state after the last chunk, relative to rfin
  float* rfin;   // [items][nfb]
  int64_t nch, nfb;
  bool qvec, kvec, vvec;  // rows readable by 16-byte loads (linear_mma.cuh's Args::qvec ...)
};

/// Allowed keys of batch b, in [0, S] (causal: Sk = S).
__device__ __forceinline__ int64_t allowed_keys(const LinArgs& a, int64_t b) {
  const int64_t L = key_count(a, b);
  return L < 0 ? 0 : (L > a.S ? a.S : L);
}

/// Row j of the chunk's [V | 1 | 0] tile, columns n8 .. n8 + 7 (performer_mma2 state_kernel's load); zeros for
/// j >= kn. Returns whether a value read is NaN or infinite.
template <class T, int DV>
__device__ __forceinline__ bool load_v_row8(const T* vrow, int64_t cs, bool vec, int j, int kn, int n8, T* dst) {
  float v[8];
  bool bad = false;
  if (n8 < DV) {
    linmma::load8<T>(vrow, cs, vec, j < kn, n8, v);
#pragma unroll
    for (int q = 0; q < 8; ++q) bad |= !(fabsf(v[q]) <= FLT_MAX);
  } else {
#pragma unroll
    for (int q = 0; q < 8; ++q) v[q] = (q == 0 && j < kn) ? 1.f : 0.f;
  }
  linmma::store8<T>(dst, v);
  return bad;
}

// ------------------------------------------------------------------------------------------ state_kernel

template <class T, int D, int DV>
constexpr std::size_t state_smem() {
  constexpr int NS = Parts<T>::NS;
  return sizeof(uint16_t) * (static_cast<std::size_t>(NS) * kFB * (D + 8) + kRows * (D + 8) +
                             static_cast<std::size_t>(NS) * kRows * kLDF + kRows * (DV + 8)) +
         sizeof(float) * 2 * kRows;
}

/// Per (item, slice s), chunks in order: P_c, R_s(c), mb, phk, and the state after the last chunk (fin, rfin).
/// Warp w owns state rows (features) s 64 + 16 w + g, + 8 and the projections of keys 16 w + g, + 8.
template <class T, int D, int DV>
__global__ void __launch_bounds__(kBlock, 1) state_kernel(const LinArgs a, const Ext<T> x) {
  using PT = Parts<T>;
  constexpr int LDD = D + 8, NS = PT::NS, DVA = DV + 8, NV = DVA / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sW = reinterpret_cast<T*>(smem_raw);  // [NS][kFB][LDD]
  T* sK = sW + NS * kFB * LDD;             // [kRows][LDD]
  T* sP = sK + kRows * LDD;                // [NS][kRows][kLDF]: parts of phi, [keys][features]
  T* sV = sP + NS * kRows * kLDF;          // [kRows][DVA]: [V | 1 | 0]
  float* sH = reinterpret_cast<float*>(sV + kRows * DVA);  // [kRows]: |k'|^2/2
  float* sM = sH + kRows;                                  // [kRows]: mb of the chunk's keys (-inf past kn)
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, gq = lane / 4, tq = lane % 4;
  const int64_t total = a.B * a.Hkv * x.nfb;
  const float half_scale = static_cast<float>(a.half_scale), hlm = static_cast<float>(a.half_log_m);
  const float* si = static_cast<const float*>(a.s_in);
  const float* zi = static_cast<const float*>(a.z_in);
  for (int64_t blk = blockIdx.x; blk < total; blk += gridDim.x) {
    // 32-bit index math (run() takes fewer than 2^31 blocks): 64-bit division calls spilled in performer_mma2.
    const uint32_t ub = static_cast<uint32_t>(blk), unfb = static_cast<uint32_t>(x.nfb);
    const uint32_t uitem = ub / unfb, uh = static_cast<uint32_t>(a.Hkv), ub_ = uitem / uh;
    const int64_t item = uitem, fb = ub - uitem * unfb, b = ub_, hkv = uitem - ub_ * uh;
    const int64_t L = allowed_keys(a, b), f0 = fb * kFB;
    const int fr = warp * 16 + gq;  // this thread's state rows fr, fr + 8 of the slice
    pm2::load_w<T, D>(sW, x.wp, a.F, f0);  // visible after the first chunk's barrier
    // The running state, times kPhiScale (exact: a power of two), starting from state_in (relative to -inf).
    float acc[NV][4];
#pragma unroll
    for (int n = 0; n < NV; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t f = f0 + fr + (i / 2) * 8;
        const int col = n * 8 + 2 * tq + (i % 2);
        float s = 0.f;
        if (col < DV && si) s = si[b * a.sis[0] + hkv * a.sis[1] + f * a.sis[2] + col * a.sis[3]];
        if (col == DV && zi) s = zi[b * a.zis[0] + hkv * a.zis[1] + f * a.zis[2]];
        acc[n][i] = s * PT::kPhiScale;
      }
    float R = math::neg_inf<float>();
    const T* kg = static_cast<const T*>(a.k) + b * a.ks[0] + hkv * a.ks[1];
    const T* vg = static_cast<const T*>(a.v) + b * a.vs[0] + hkv * a.vs[1];
    constexpr float inv = 1.f / PT::kPhiScale;
    for (int64_t c = 0; c < x.nch; ++c) {
      const int64_t j0 = c * kRows;
      {  // the state before chunk c and its reference
        float* pc = x.P + ((item * x.nch + c) * a.F + f0 + fr) * DVA;
#pragma unroll
        for (int n = 0; n < NV; ++n) {
          *reinterpret_cast<float2*>(pc + n * 8 + 2 * tq) = make_float2(acc[n][0] * inv, acc[n][1] * inv);
          *reinterpret_cast<float2*>(pc + 8 * DVA + n * 8 + 2 * tq) = make_float2(acc[n][2] * inv, acc[n][3] * inv);
        }
        if (tid == 0) x.pref[(item * x.nch + c) * x.nfb + fb] = R;
      }
      const int kn = static_cast<int>(L - j0 < kRows ? (L - j0 > 0 ? L - j0 : 0) : kRows);
      if (kn == 0) continue;  // uniform over the block; the state stays as it is (the CPU skips the chunk)
      pm2::load_rows<T, D>(sK, kg + j0 * a.ks[2], a.ks[2], a.ks[3], x.kvec, kn);
      bool bad = false;
      for (int i = tid; i < kRows * NV; i += kBlock) {
        const int j = i / NV, n8 = i % NV * 8;
        bad |= load_v_row8<T, DV>(vg + (j0 + j) * a.vs[2], a.vs[3], x.vvec, j, kn, n8, sV + j * DVA + n8);
      }
      const bool vbad = __syncthreads_or(bad) != 0;  // uniform; sK, sV (and sW) visible
      if (tid < kRows) sH[tid] = pm2::row_sq<T, D>(sK + tid * LDD) * half_scale;  // |k'|^2/2
      __syncthreads();
      float e[kFB / 8][4];
      pm2::project<T, D>(sK, sW, e);
      const int r0 = warp * 16 + gq, r1 = r0 + 8;  // this thread's keys
      float mx0 = math::neg_inf<float>(), mx1 = math::neg_inf<float>();
      pm2::fold_max(e, mx0, mx1);
      pm2::quad_max(mx0, mx1);
      const float h0 = sH[r0], h1 = sH[r1];
      const float mb0 = math::favor_key_exponent(mx0, h0), mb1 = math::favor_key_exponent(mx1, h1);
      if (tq == 0) {
        sM[r0] = r0 < kn ? mb0 : math::neg_inf<float>();
        sM[r1] = r1 < kn ? mb1 : math::neg_inf<float>();
        float* mk = x.mbk + (item * a.S + j0) * x.nfb + fb;
        if (r0 < kn) mk[static_cast<int64_t>(r0) * x.nfb] = mb0;
        if (r1 < kn) mk[static_cast<int64_t>(r1) * x.nfb] = mb1;
      }
      __syncthreads();  // sM complete
      float cm = math::neg_inf<float>();
      for (int j = 0; j < kn; ++j) cm = math::favor_running_max(cm, sM[j]);
      const float Rn = math::favor_running_max(R, cm);  // R_s(c + 1)
      // Key features: phi_own = exp(e - (|k'|^2/2 + mb) - ln(m)/2) into phk, then rebased to Rn (times
      // exp(mb - Rn) <= 1, the CPU's rebase_keys) and split into 16-bit parts in sP.
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        const int j = hr ? r1 : r0;
        const bool ok = j < kn;
        const float mb = hr ? mb1 : mb0;
        const float off = (hr ? h1 : h0) + mb;  // the CPU's hK + cK
        const float rb = ok && mb != Rn ? DevExp()(mb - Rn) : 1.f;
        T* prow = x.phk + (item * a.S + j0 + j) * a.F + f0;
#pragma unroll
        for (int n = 0; n < kFB / 8; ++n) {
          float p0 = ok ? DevExp()(math::favor_feature_arg(e[n][2 * hr], off, hlm)) * PT::kPhiScale : 0.f;
          float p1 = ok ? DevExp()(math::favor_feature_arg(e[n][2 * hr + 1], off, hlm)) * PT::kPhiScale : 0.f;
          if (ok) *reinterpret_cast<uint32_t*>(prow + n * 8 + 2 * tq) = mma::pack2<T>(p0, p1);
          p0 *= rb;
          p1 *= rb;
#pragma unroll
          for (int sp = 0; sp < NS; ++sp) {
            const float q0 = to_acc<float>(linmma::split_part<T>(p0));
            const float q1 = to_acc<float>(linmma::split_part<T>(p1));
            *reinterpret_cast<uint32_t*>(sP + (sp * kRows + j) * kLDF + n * 8 + 2 * tq) = mma::pack2<T>(q0, q1);
          }
        }
      }
      // The state brought to Rn (the CPU's rescale_state: exp(R - Rn), 0 while nothing was accumulated).
      const float rs = DevExp()(math::favor_rescale_arg<float, float>(R, Rn));
      if (rs != 1.f) {
#pragma unroll
        for (int n = 0; n < NV; ++n)
#pragma unroll
          for (int i = 0; i < 4; ++i) acc[n][i] *= rs;
      }
      R = Rn;
      __syncthreads();  // sP complete
      add_phi_v<T, DV>(acc, sP, sV, vbad, warp, lane);  // acc += phi^T [V | 1]
      __syncthreads();  // sK, sV, sP, sH, sM are rewritten for the next chunk
    }
    float* fo = x.fin + (item * a.F + f0 + fr) * DVA;
#pragma unroll
    for (int n = 0; n < NV; ++n) {
      *reinterpret_cast<float2*>(fo + n * 8 + 2 * tq) = make_float2(acc[n][0] * inv, acc[n][1] * inv);
      *reinterpret_cast<float2*>(fo + 8 * DVA + n * 8 + 2 * tq) = make_float2(acc[n][2] * inv, acc[n][3] * inv);
    }
    if (tid == 0) x.rfin[item * x.nfb + fb] = R;
    __syncthreads();  // sW is rewritten for the next block (a block without keys passes no other barrier)
  }
}

/// state_out / z_out: fin times exp(R_s - max_s R_s) (relative to the CPU's final c), one thread per element.
template <class T, int DV>
__global__ void final_kernel(const LinArgs a, const Ext<T> x) {
  constexpr int DVA = DV + 8;
  const int64_t per = a.F * (DV + 1), total = a.B * a.Hkv * per;
  float* so = static_cast<float*>(a.s_out);
  float* zo = static_cast<float*>(a.z_out);
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t item = i / per, e = i % per, f = e / (DV + 1), n = e % (DV + 1), b = item / a.Hkv,
                  hkv = item % a.Hkv;
    float cf = math::neg_inf<float>();
    for (int64_t s = 0; s < x.nfb; ++s) cf = math::favor_running_max(cf, x.rfin[item * x.nfb + s]);
    const float r = x.rfin[item * x.nfb + f / kFB];
    float v = x.fin[(item * a.F + f) * DVA + n];
    if (r != cf) v *= DevExp()(math::favor_rescale_arg<float, float>(r, cf));
    if (n < DV && so) so[b * a.sos[0] + hkv * a.sos[1] + f * a.sos[2] + n * a.sos[3]] = v;
    if (n == DV && zo) zo[b * a.zos[0] + hkv * a.zos[1] + f * a.zos[2]] = v;
  }
}

// ------------------------------------------------------------------------------------------- out_kernel

template <class T, int D, int DV>
constexpr std::size_t out_smem() {
  constexpr int NS = Parts<T>::NS;
  return sizeof(uint16_t) * (static_cast<std::size_t>(NS) * kFB * (D + 8) + kRows * (D + 8) + kRows * (DV + 8) +
                             kRows * kLDF + 2 * static_cast<std::size_t>(kFB) * (DV + 8)) +
         sizeof(float) * 2 * kRows;
}

/// e >= -16 such that m 2^-e is in [2^14, 2^15) for a normal m > 0 (at most 2^15 with the clamp); 0 for
/// m = 0, NaN, inf. Scores of a row are scaled by 2^-e before they are rounded to the 16-bit type (exact).
__device__ __forceinline__ int row_exponent(float m) {
  if (!(m > 0.f && m <= FLT_MAX)) return 0;
  const int e = ((__float_as_int(m) >> 23) & 0xff) - 127 - 14;
  return e < -16 ? -16 : e;
}

/// Outputs of the 64 rows of chunk c of (b, h) per block; warp w owns rows 16 w .. 16 w + 15.
template <class T, int D, int DV>
__global__ void __launch_bounds__(kBlock, 1) out_kernel(const LinArgs a, const Ext<T> x) {
  using PT = Parts<T>;
  constexpr int LDD = D + 8, NS = PT::NS, DVA = DV + 8, NV = DVA / 8, NW = kRows / 16, NT = kRows / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sW = reinterpret_cast<T*>(smem_raw);  // [NS][kFB][LDD]
  T* sQ = sW + NS * kFB * LDD;             // [kRows][LDD]
  T* sV = sQ + kRows * LDD;                // [kRows][DVA]: [V | 1 | 0]
  T* sKf = sV + kRows * DVA;               // [kRows][kLDF]: phi_own of the chunk's keys, this slice
  bf16_t* sPh = reinterpret_cast<bf16_t*>(sKf + kRows * kLDF);  // [kFB][DVA]: state slice, bfloat16 hi
  bf16_t* sPl = sPh + kFB * DVA;                                // [kFB][DVA]: lo
  float* sM = reinterpret_cast<float*>(sPl + kFB * DVA);        // [kRows]: m_j, then mb[j][s] of the slice
  float* sC = sM + kRows;                                       // [kRows]: c_t of each row
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, gq = lane / 4, tq = lane % 4;
  const int64_t total = a.B * a.Hq * x.nch;
  const float hlm = static_cast<float>(a.half_log_m);
  const int r0 = warp * 16 + gq, r1 = r0 + 8;  // this thread's rows of the chunk
  for (int64_t blk = blockIdx.x; blk < total; blk += gridDim.x) {
    const uint32_t ub = static_cast<uint32_t>(blk), unc = static_cast<uint32_t>(x.nch), uhq = static_cast<uint32_t>(a.Hq);
    const uint32_t ubh = ub / unc, ub_ = ubh / uhq, uh = ubh - ub_ * uhq;  // 32-bit: see state_kernel
    const int64_t c = ub - ubh * unc, b = ub_, h = uh, hkv = uh / static_cast<uint32_t>(a.G);
    const int64_t item = b * a.Hkv + hkv, j0 = c * kRows;
    const int tn = static_cast<int>(a.S - j0 < kRows ? a.S - j0 : kRows);
    const int64_t L = allowed_keys(a, b);
    const int kn = static_cast<int>(L - j0 < tn ? (L - j0 > 0 ? L - j0 : 0) : tn);
    pm2::load_rows<T, D>(sQ, static_cast<const T*>(a.q) + b * a.qs[0] + h * a.qs[1] + j0 * a.qs[2], a.qs[2], a.qs[3],
                    x.qvec, tn);
    bool bad = false;
    const T* vg = static_cast<const T*>(a.v) + b * a.vs[0] + hkv * a.vs[1];
    for (int i = tid; i < kRows * NV; i += kBlock) {
      const int j = i / NV, n8 = i % NV * 8;
      bad |= load_v_row8<T, DV>(vg + (j0 + j) * a.vs[2], a.vs[3], x.vvec, j, kn, n8, sV + j * DVA + n8);
    }
    const float* pref = x.pref + (item * x.nch + c) * x.nfb;
    float cp = math::neg_inf<float>();  // the CPU's c_prev: max_s R_s(c)
    if (tid < kRows) {
      for (int64_t s = 0; s < x.nfb; ++s) cp = math::favor_running_max(cp, pref[s]);
      float mj = math::neg_inf<float>();  // the CPU's key maximum of key tid
      if (tid < kn)
        for (int64_t s = 0; s < x.nfb; ++s) mj = math::favor_running_max(mj, x.mbk[(item * a.S + j0 + tid) * x.nfb + s]);
      sM[tid] = mj;
    }
    // vbad: an allowed key of the chunk has a NaN / infinite value (linear_mma.cuh's out_kernel).
    const bool vbad = __syncthreads_or(bad) != 0;  // sQ, sV, sM visible
    if (tid < kRows) {  // c_t = c at key min(t, kn - 1) of the chunk (c_prev without keys), as the CPU
      float ct = cp;
      const int last = tid < kn ? tid : kn - 1;
      for (int j = 0; j <= last; ++j) ct = math::favor_running_max(ct, sM[j]);
      sC[tid] = ct;
    }
    __syncthreads();
    const float ct0 = sC[r0], ct1 = sC[r1];
    float mq0 = math::neg_inf<float>(), mq1 = math::neg_inf<float>();  // the query stabilizers so far
    float o[NV][4], sc[NT][4];
#pragma unroll
    for (int n = 0; n < NV; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) o[n][i] = 0.f;
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) sc[n][i] = 0.f;
    const float* Pc = x.P + (item * x.nch + c) * a.F * DVA;
    const T* kf = x.phk + (item * a.S + j0) * a.F;
    for (int64_t s = 0; s < x.nfb; ++s) {
      const int64_t f0 = s * kFB;
      __syncthreads();  // every warp is done with the previous slice's tiles (and with sM's m_j)
      pm2::load_w<T, D>(sW, x.wp, a.F, f0);
      const bool pb = pm2::load_state_hilo<DVA>(sPh, sPl, Pc + f0 * DVA);
      for (int i = tid; i < kRows * (kFB / 8); i += kBlock) {  // phi_own of the allowed keys, zeros past kn
        const int j = i / (kFB / 8), c8 = i % (kFB / 8) * 8;
        uint4 w = make_uint4(0u, 0u, 0u, 0u);
        if (j < kn) w = *reinterpret_cast<const uint4*>(kf + static_cast<int64_t>(j) * a.F + f0 + c8);
        *reinterpret_cast<uint4*>(sKf + j * kLDF + c8) = w;
      }
      if (tid < kRows) sM[tid] = tid < kn ? x.mbk[(item * a.S + j0 + tid) * x.nfb + s] : math::neg_inf<float>();
      const float rs = pref[s];  // R_s(c): the reference of this slice of P_c
      const bool pbad = __syncthreads_or(pb) != 0;
      float e[kFB / 8][4];
      pm2::project<T, D>(sQ, sW, e);
      // The query stabilizer, online: the largest projection so far; earlier slices' sums are rescaled.
      {
        float m0 = math::neg_inf<float>(), m1 = math::neg_inf<float>();
#pragma unroll
        for (int n = 0; n < kFB / 8; ++n) {
          m0 = math::softmax_new_max(math::softmax_new_max(m0, e[n][0]), e[n][1]);
          m1 = math::softmax_new_max(math::softmax_new_max(m1, e[n][2]), e[n][3]);
        }
#pragma unroll
        for (int q = 1; q < 4; q <<= 1) {
          m0 = math::softmax_new_max(m0, __shfl_xor_sync(0xffffffffu, m0, q));
          m1 = math::softmax_new_max(m1, __shfl_xor_sync(0xffffffffu, m1, q));
        }
        m0 = math::softmax_new_max(mq0, m0);
        m1 = math::softmax_new_max(mq1, m1);
        if (m0 != mq0) {
          const float fc = DevExp()(math::softmax_rescale_arg<float, float>(mq0, m0));
#pragma unroll
          for (int n = 0; n < NV; ++n) {
            o[n][0] *= fc;
            o[n][1] *= fc;
          }
#pragma unroll
          for (int n = 0; n < NT; ++n) {
            sc[n][0] *= fc;
            sc[n][1] *= fc;
          }
          mq0 = m0;
        }
        if (m1 != mq1) {
          const float fc = DevExp()(math::softmax_rescale_arg<float, float>(mq1, m1));
#pragma unroll
          for (int n = 0; n < NV; ++n) {
            o[n][2] *= fc;
            o[n][3] *= fc;
          }
#pragma unroll
          for (int n = 0; n < NT; ++n) {
            sc[n][2] *= fc;
            sc[n][3] *= fc;
          }
          mq1 = m1;
        }
      }
      // g_t = exp(R_s(c) - c_t) <= 1: the slice's state brought to the row's c_t (the CPU's exp(c_prev - c_t)).
      const float g0 = DevExp()(math::favor_rescale_arg<float, float>(rs, ct0));
      const float g1 = DevExp()(math::favor_rescale_arg<float, float>(rs, ct1));
      // phi(q) of k-step kt (features 16 kt ..; performer_mma2 out_kernel's packing): qT for the scores (times
      // kPhiScale), (phi(q) g) in bfloat16 hi / lo for the state product.
      uint32_t qT[kFB / 16][4];
#pragma unroll
      for (int kt = 0; kt < kFB / 16; ++kt) {
        uint32_t qh[4], ql[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int n = 2 * kt + r / 2, i0 = 2 * (r % 2);  // r: (row g, k lo), (g + 8, lo), (g, hi), (g + 8, hi)
          const float m = r % 2 ? mq1 : mq0, g = r % 2 ? g1 : g0;
          const float v0 = DevExp()(math::favor_feature_arg(e[n][i0], m, hlm));
          const float v1 = DevExp()(math::favor_feature_arg(e[n][i0 + 1], m, hlm));
          qT[kt][r] = mma::pack2<T>(v0 * PT::kPhiScale, v1 * PT::kPhiScale);
          float w0 = v0 * g, w1 = v1 * g;
          const float h0 = to_acc<float>(linmma::split_part<bf16_t>(w0));
          const float h1 = to_acc<float>(linmma::split_part<bf16_t>(w1));
          qh[r] = mma::pack2<bf16_t>(h0, h1);
          ql[r] = mma::pack2<bf16_t>(w0, w1);
        }
        linmma::add_state_hilo<NV, DVA>(o, qh, ql, sPh, sPl, kt, lane, pbad);
      }
      // Scores of this slice against the keys of key tiles np <= warp (linear_mma.cuh out_kernel's B loads),
      // each times exp(mb[j][s] - c_t) <= 1 where allowed (j <= t, j < kn).
#pragma unroll
      for (int np = 0; np < NW; ++np) {
        if (np <= warp) {
          float st[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
          for (int kt = 0; kt < kFB / 16; ++kt) {
            uint32_t bb[4];
            mma::ldsm_x4(bb, sKf + (np * 16 + (lane / 16) * 8 + lane % 8) * kLDF + kt * 16 + ((lane / 8) % 2) * 8);
            mma::mma16816<T>(st[0], qT[kt], bb[0], bb[1]);
            mma::mma16816<T>(st[1], qT[kt], bb[2], bb[3]);
          }
#pragma unroll
          for (int hh = 0; hh < 2; ++hh)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              const int t = i < 2 ? r0 : r1, j = (2 * np + hh) * 8 + 2 * tq + (i & 1);
              if (j <= t && j < kn)
                sc[2 * np + hh][i] +=
                    st[hh][i] * DevExp()(math::favor_rescale_arg<float, float>(sM[j], i < 2 ? ct0 : ct1));
            }
        }
      }
    }
    // The scores without the kPhiScale^2 (exact), each row scaled by 2^-e (max |s| 2^-e in [2^14, 2^15)).
    constexpr float kUnscale = 1.f / (PT::kPhiScale * PT::kPhiScale);
    float mx0 = 0.f, mx1 = 0.f;
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        sc[n][i] *= kUnscale;
        const float m = fabsf(sc[n][i]);
        if (i < 2)
          mx0 = fmaxf(mx0, m);
        else
          mx1 = fmaxf(mx1, m);
      }
    linmma::quad_fmax(mx0, mx1);
    const int e0 = row_exponent(mx0), e1 = row_exponent(mx1);
    const float dn0 = linmma::pow2(-e0), dn1 = linmma::pow2(-e1);
    uint32_t pk[NW][4];  // the scores as the A operand of the PV product, k-step kt = keys 16 kt ..
    linmma::pack_scores<T, NW>(pk, sc, dn0, dn1);
    linmma::add_scores_v<T, NV, NW, DVA>(o, pk, sV, vbad, e0, e1, dn0, dn1, warp, lane, r0, r1);  // + s' [V | 1]
    // The denominators: column DV (n-tile NV - 1, held by the quad's thread tq = 0).
    const float den0 = __shfl_sync(0xffffffffu, o[NV - 1][0], lane & ~3);
    const float den1 = __shfl_sync(0xffffffffu, o[NV - 1][2], lane & ~3);
#pragma unroll
    for (int n = 0; n < DV / 8; ++n)
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        const int t = hr ? r1 : r0;
        if (t >= tn) continue;
        const int64_t d = n * 8 + 2 * tq;
        store_out<T, float>(a, b, h, j0 + t, d, o[n][2 * hr], hr ? den1 : den0);
        store_out<T, float>(a, b, h, j0 + t, d + 1, o[n][2 * hr + 1], hr ? den1 : den0);
      }
    __syncthreads();  // sQ, sV, sM, sC are rewritten for the next block
  }
}

// --------------------------------------------------------------------------------------------- host side

template <class T, int D, int DV>
bool run(const LinearProblem& p, cudaStream_t stream) {
  using PT = Parts<T>;
  constexpr int DVA = DV + 8;
  if (!linmma::smem_ok(state_kernel<T, D, DV>, state_smem<T, D, DV>(), p.device_index) ||
      !linmma::smem_ok(out_kernel<T, D, DV>, out_smem<T, D, DV>(), p.device_index))
    return false;
  LinArgs a = lin_args<float>(p);
  a.C = kRows;
  a.proj = true;
  a.stab = true;
  const int64_t items = p.B * p.Hkv, F = p.F, S = p.S, nch = ceil_div(S, kRows), nfb = F / kFB;
  const int64_t lim = int64_t{1} << 31;  // the kernels' 32-bit block index math
  if (items * nfb >= lim || p.B * p.Hq * nch >= lim) return false;
  auto vec = [](const void* ptr, const int64_t (&st)[4]) {  // linear_mma.cuh's run()
    return st[3] == 1 && reinterpret_cast<std::uintptr_t>(ptr) % 16 == 0 && st[0] % 8 == 0 && st[1] % 8 == 0 &&
           st[2] % 8 == 0;
  };
  const std::size_t wp_bytes = pm2::round16(sizeof(T) * static_cast<std::size_t>(PT::NS * F * p.D));
  const std::size_t p_bytes = pm2::round16(sizeof(float) * static_cast<std::size_t>(items * nch * F * DVA));
  const std::size_t pref_bytes = pm2::round16(sizeof(float) * static_cast<std::size_t>(items * nch * nfb));
  const std::size_t mbk_bytes = pm2::round16(sizeof(float) * static_cast<std::size_t>(items * S * nfb));
  const std::size_t phk_bytes = pm2::round16(sizeof(T) * static_cast<std::size_t>(items * S * F));
  const std::size_t fin_bytes = pm2::round16(sizeof(float) * static_cast<std::size_t>(items * F * DVA));
  const std::size_t rfin_bytes = pm2::round16(sizeof(float) * static_cast<std::size_t>(items * nfb));
  Workspace ws(wp_bytes + p_bytes + pref_bytes + mbk_bytes + phk_bytes + fin_bytes + rfin_bytes, stream);
  unsigned char* base = ws.as<unsigned char>();
  std::size_t off = 0;
  auto take = [&](std::size_t bytes) {
    unsigned char* ptr = base + off;
    off += bytes;
    return ptr;
  };
  Ext<T> x{};
  T* wp = reinterpret_cast<T*>(take(wp_bytes));
  x.wp = wp;
  x.P = reinterpret_cast<float*>(take(p_bytes));
  x.pref = reinterpret_cast<float*>(take(pref_bytes));
  x.mbk = reinterpret_cast<float*>(take(mbk_bytes));
  x.phk = reinterpret_cast<T*>(take(phk_bytes));
  x.fin = reinterpret_cast<float*>(take(fin_bytes));
  x.rfin = reinterpret_cast<float*>(take(rfin_bytes));
  x.nch = nch;
  x.nfb = nfb;
  x.qvec = vec(p.q.data, p.q.stride);
  x.kvec = vec(p.k.data, p.k.stride);
  x.vvec = vec(p.v.data, p.v.stride);

  pm2::wparts_kernel<T><<<blocks_for(F * p.D, 256), 256, 0, stream>>>(wp, p.features.data, p.features.dtype,
                                                                       p.features.stride[0], p.features.stride[1],
                                                                       F, p.D, static_cast<float>(p.feature_scale));
  ATTNKIT_CUDA_CHECK_LAUNCH();
  state_kernel<T, D, DV><<<linmma::grid_of(items * nfb), kBlock, state_smem<T, D, DV>(), stream>>>(a, x);
  ATTNKIT_CUDA_CHECK_LAUNCH();
  if (p.state_out || p.z_out) {
    final_kernel<T, DV><<<linmma::grid_of(ceil_div(items * F * (DV + 1), 256)), 256, 0, stream>>>(a, x);
    ATTNKIT_CUDA_CHECK_LAUNCH();
  }
  if (p.Hq > 0 && nch > 0) {
    out_kernel<T, D, DV><<<linmma::grid_of(p.B * p.Hq * nch), kBlock, out_smem<T, D, DV>(), stream>>>(a, x);
    ATTNKIT_CUDA_CHECK_LAUNCH();
  }
  return true;
}

}  // namespace pmc

template <class T, int D>
bool run_performer_causal_mma(const LinearProblem& p, cudaStream_t stream) {
  switch (p.Dv) {
    case 32: return pmc::run<T, D, 32>(p, stream);
    case 64: return pmc::run<T, D, 64>(p, stream);
    case 128: return pmc::run<T, D, 128>(p, stream);
    default: return false;
  }
}

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
