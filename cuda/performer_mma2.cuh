#pragma once
// Performer (FAVOR+ softmax features), bidirectional form, with the features computed on tensor cores inside
// the kernels that use them ("performer_attention_mma2" in runtime.cu's kCompiled; linear.cu takes it only
// where has_kernel says so and performer_mma2_bidirectional accepts the problem, else the v2 / mma kernels of
// linear_v2.cuh / performer_mma.cuh run). float16 / bfloat16; D, Dv in {32, 64, 128}; m a multiple of 64.
// Semantics of cpu/linear_kernel.h's bidirectional form and math/feature_maps.h (the same steps as the v2
// path of linear.cu): key exponents e_jf - |k'_j|^2/2, the stabilizer c = running maximum over the allowed
// keys (key_max_kernel, shared with linear_bidirectional.cuh), key features exp(e - (|k'|^2/2 + c) - ln(m)/2),
// state S = S_in r0 + phi(K)^T V and z = z_in r0 + colsum phi(K) (r0: state_in_factor), query features
// exp(e - max_f e - ln(m)/2) per row, out = linear_output(phi(q) S, phi(q) . z, eps).
//
// Where the time of the v2 / mma path went (H200, B = 4, H = 16, S = 4096, D = Dv = 64, m = 256: 3.0 ms,
// 5.5 million tokens/s, against exact attention's 1.04 ms): 12 launches, the m-wide float32 features of every
// key and query row written to and read back from global memory (phi(K) written, read for the statistics,
// read and rewritten by the exponentials, read for z and for the states: 5 x 268 MB; phi(Q) written,
// rewritten by the query map, read for the output: 4 x 268 MB): ~2.4 GB, ~0.6 ms at the H200's bandwidth;
// the rest in 3xTF32 products (3 mma per product) fed through per-element shared-memory loads with 64-bit
// index math in lambdas. This path never stores a feature:
//   wparts_kernel   W' = sqrt(scale) W split into 16-bit parts [NS][m][D] (float16: hi + lo, 22 bits;
//                   bfloat16: hi + mid + lo, 24 bits), so x' . w = sum over parts of exact 16-bit products;
//   stats_kernel    per (b, hkv, 64 keys): the projections on tensor cores (m16n8k16, float32 accumulation),
//                   mK_j = max_f e_jf - |k'_j|^2/2 (= the CPU's max_f (e_jf - |k'_j|^2/2): rounding is
//                   monotonic), then key_max_kernel gives c (and c after the first chunk, for r0);
//   state_kernel    per (b, hkv, segment of `seg` keys, 64 features): per 64 keys the projections again,
//                   phi in float32 from the accumulators, split into 16-bit parts in shared memory (float16:
//                   times 2^8, exact, so that the small features stay normal numbers), then phi^T [V | 1]
//                   on tensor cores into registers over the segment: a partial state [64][Dv + 8] (column
//                   Dv: the partial z);
//   sum_kernel      per state element: S_in r0 + the partials in segment order (fixed: no atomics), into
//                   [B Hkv][m][Dv + 8] and state_out / z_out;
//   out_kernel      per (b, h, 64 query rows): pass 1 the projections for the row maxima, pass 2 the
//                   projections again, phi(q) = exp(e - max - ln(m)/2) in registers, split into bfloat16
//                   hi + lo A fragments (the accumulator layout of m16n8 is the A layout of m16n8k16) times
//                   the state slice in bfloat16 hi + lo (linear_mma.cuh's out_kernel products), the
//                   denominator from the z column, out = linear_output.
// Bytes (the example): q, k, v read 1, 2, 1 times (34 MB each), partial states 2 x 38 MB (seg 512), out 34 MB:
// ~0.25 GB instead of ~2.4 GB, 6 launches instead of 12. Tensor-core FLOPs (float16, NS = 2; R = 262144 rows
// per side): projections of the keys twice (stats, state) and of the queries twice (two passes), 4 x 2 R m D NS
// = 69 GFLOP; states 2 R m (Dv + 8) NS = 19 GFLOP; outputs 2 R m (Dv + 8) 3 = 29 GFLOP: 117 GFLOP (bfloat16:
// 161), ~0.4 ms at 300 TFLOP/s (a third of the H200's dense 16-bit peak, for these unpipelined loops), plus
// 134 M expf. Expected 0.4-0.7 ms, 23-40 million tokens/s, linear in S (exact attention: 15.7 at S = 4096,
// 4.25 at 16384). Unmeasured: the mma efficiency of these kernels (no cp.async pipelining, 4-warp blocks).
//
// Determinism: every output and state element is one thread's fragment summed in a fixed order (d, parts,
// keys of the segment in order; segments in order in sum_kernel), whatever the grid.
// Non-finite values as the CPU: a value tile with a NaN / infinity sums the 16-bit parts of phi and the high
// part alone separately and keeps the high part's result where the full sum is NaN and it is not (a low part
// 0 times an infinity, as linear_mma.cuh's inc_kernel); a state slice with a NaN / infinity drops the
// q_lo p_hi product (linear_mma.cuh's out_kernel).
// Fragment layouts and the ldmatrix / mma helpers: attention_mma.cuh (namespace mma) and linear_mma.cuh (the
// transposed loads); each use below copies a pattern of linear_mma.cuh's kernels (named at the use).

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cuda/linear_bidirectional.cuh"
#include "cuda/linear_mma.cuh"

namespace attnkit {
namespace detail {
namespace cuda {

/// Runs the bidirectional Performer softmax problem p with head dim D on this path (instantiated in
/// performer_mma2_<dtype>_d<D>.cu); false where it does not apply (Dv, shared memory), having launched nothing.
template <class T, int D>
bool run_performer_mma2(const LinearProblem& p, int64_t seg, cudaStream_t stream);

namespace pm2 {

constexpr int kRows = 64;      // keys / query rows per tile: 4 warps of 16
constexpr int kFB = 64;        // features per slice
constexpr int kBlock = 128;    // threads per block
constexpr int kLDF = kFB + 8;  // row pitch of the [keys][features] parts (144 bytes: conflict-free ldmatrix)

template <class T>
struct Parts {
  static constexpr bool kHalf = std::is_same<T, half_t>::value;
  static constexpr int NS = kHalf ? 2 : 3;              // 16-bit parts of W' and of phi(K)
  static constexpr float kPhiScale = kHalf ? 256.f : 1.f;  // phi(K) <= m^-1/2 <= 1: times 2^8 stays < 65504
};

/// The path's own arguments, next to linear.cu's LinArgs.
template <class T>
struct Ext {
  const T* wp;   // [NS][F][D]
  float* mK;     // [B Hkv][Sk]
  float* cs;     // [B Hkv][2] (key_max_kernel)
  float* part;   // [B Hkv][nseg][F][Dv + 8]
  float* st;     // [B Hkv][F][Dv + 8]
  int64_t seg, nseg;
  bool qvec, kvec, vvec;  // rows readable by 16-byte loads (linear_mma.cuh's Args::qvec ...)
};

/// Rows [0, kRows) of a [B, H, L, D] operand from row t0 of (b, h) into s [kRows][D + 8]: rows >= n zeros.
template <class T, int D>
__device__ __forceinline__ void load_rows(T* s, const T* x0, int64_t rs, int64_t cs, bool vec, int n) {
  for (int i = threadIdx.x; i < kRows * (D / 8); i += kBlock) {
    const int r = i / (D / 8), c8 = i % (D / 8) * 8;
    float x[8];
    linmma::load8<T>(x0 + r * rs, cs, vec, r < n, c8, x);
    linmma::store8<T>(s + r * (D + 8) + c8, x);
  }
}

/// Features [f0, f0 + kFB) of the parts of W' into s [NS][kFB][D + 8] (16-byte copies: D % 8 == 0 and every
/// part's rows start 16-byte aligned).
template <class T, int D>
__device__ __forceinline__ void load_w(T* s, const T* wp, int64_t F, int64_t f0) {
  constexpr int NS = Parts<T>::NS;
  for (int i = threadIdx.x; i < NS * kFB * (D / 8); i += kBlock) {
    const int sr = i / (D / 8), c8 = i % (D / 8) * 8, part = sr / kFB, r = sr % kFB;
    *reinterpret_cast<uint4*>(s + sr * (D + 8) + c8) =
        *reinterpret_cast<const uint4*>(wp + (part * F + f0 + r) * D + c8);
  }
}

/// e[n][.] = x . w' for this warp's 16 rows (rows 16 warp + g, + 8 of sX) and the kFB features of the slice
/// in sW (n-tile n: features 8 n + 2 tq, + 1), summed over d and the parts of W'. The A operand is
/// linear_mma.cuh out_kernel's phi(Q) load, the B operand its phi(K) load (rows of sW are the n index).
template <class T, int D>
__device__ __forceinline__ void project(const T* sX, const T* sW, float (&e)[kFB / 8][4]) {
  constexpr int LDD = D + 8, NS = Parts<T>::NS;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int n = 0; n < kFB / 8; ++n)
#pragma unroll
    for (int i = 0; i < 4; ++i) e[n][i] = 0.f;
#pragma unroll 1  // (unrolled, the hoisted fragment loads spilled: bfloat16, D = 128)
  for (int ks = 0; ks < D / 16; ++ks) {
    uint32_t ax[4];
    mma::ldsm_x4(ax, sX + (warp * 16 + lane % 16) * LDD + ks * 16 + (lane / 16) * 8);
#pragma unroll
    for (int s = 0; s < NS; ++s)
#pragma unroll
      for (int np = 0; np < kFB / 16; ++np) {
        uint32_t bb[4];
        mma::ldsm_x4(bb, sW + (s * kFB + np * 16 + (lane / 16) * 8 + lane % 8) * LDD + ks * 16 + ((lane / 8) % 2) * 8);
        mma::mma16816<T>(e[2 * np], ax, bb[0], bb[1]);
        mma::mma16816<T>(e[2 * np + 1], ax, bb[2], bb[3]);
      }
  }
}

/// sum_d k_d^2 over the D elements of a tile row, in float32 with d in order (the CPU's order): |k'|^2 before
/// its half scale (stats_kernel, state_kernel and performer_causal_mma.cuh's state_kernel).
template <class T, int D>
__device__ __forceinline__ float row_sq(const T* row) {
  float sq = 0.f;
  for (int d = 0; d < D; ++d) {
    const float v = to_acc<float>(row[d]);
    sq += v * v;
  }
  return sq;
}

/// The running maxima of this thread's two rows (warp rows gq, gq + 8) over project()'s e, as softmax_new_max.
__device__ __forceinline__ void fold_max(const float (&e)[kFB / 8][4], float& mx0, float& mx1) {
#pragma unroll
  for (int n = 0; n < kFB / 8; ++n) {
    mx0 = math::softmax_new_max(math::softmax_new_max(mx0, e[n][0]), e[n][1]);
    mx1 = math::softmax_new_max(math::softmax_new_max(mx1, e[n][2]), e[n][3]);
  }
}

/// The maxima over a row's four threads (a quad: lanes 4 gq .. 4 gq + 3), as softmax_new_max.
__device__ __forceinline__ void quad_max(float& mx0, float& mx1) {
#pragma unroll
  for (int o = 1; o < 4; o <<= 1) {
    mx0 = math::softmax_new_max(mx0, __shfl_xor_sync(0xffffffffu, mx0, o));
    mx1 = math::softmax_new_max(mx1, __shfl_xor_sync(0xffffffffu, mx1, o));
  }
}

/// W' = fs W (rounded as scale_features_kernel: fs in float, then the product) split into NS parts.
template <class T>
__global__ void wparts_kernel(T* wp, const void* W, DType dt, int64_t s0, int64_t s1, int64_t F, int64_t D, float fs) {
  constexpr int NS = Parts<T>::NS;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < F * D; i += step) {
    float x = fs * load_float<float>(W, dt, (i / D) * s0 + (i % D) * s1);
#pragma unroll
    for (int s = 0; s < NS; ++s) wp[s * F * D + i] = linmma::split_part<T>(x);
  }
}

/// mK[item][j] = max_f e_jf - |k'_j|^2/2 for the allowed keys, one block per (item, 64 keys).
template <class T, int D>
__global__ void __launch_bounds__(kBlock) stats_kernel(const LinArgs a, const Ext<T> x) {
  constexpr int LDD = D + 8, NS = Parts<T>::NS;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);  // [kRows][LDD]
  T* sW = sK + kRows * LDD;                // [NS][kFB][LDD]
  float* sH = reinterpret_cast<float*>(sW + NS * kFB * LDD);  // [kRows]
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, gq = lane / 4, tq = lane % 4;
  const int64_t nt = ceil_div(a.Sk, kRows), total = a.B * a.Hkv * nt;
  const float half_scale = static_cast<float>(a.half_scale);
  for (int64_t blk = blockIdx.x; blk < total; blk += gridDim.x) {
    // 32-bit index math (run() takes fewer than 2^31 blocks): 64-bit division calls spilled their registers.
    const uint32_t ub = static_cast<uint32_t>(blk), unt = static_cast<uint32_t>(nt), uh = static_cast<uint32_t>(a.Hkv);
    const uint32_t uitem = ub / unt, ub_ = uitem / uh;
    const int64_t item = uitem, j0 = static_cast<int64_t>(ub - uitem * unt) * kRows, b = ub_, hkv = uitem - ub_ * uh;
    const int64_t L = key_count(a, b);
    const int kn = static_cast<int>(L - j0 < kRows ? (L - j0 > 0 ? L - j0 : 0) : kRows);
    if (kn == 0) continue;  // uniform over the block
    load_rows<T, D>(sK, static_cast<const T*>(a.k) + b * a.ks[0] + hkv * a.ks[1] + j0 * a.ks[2], a.ks[2], a.ks[3],
                    x.kvec, kn);
    __syncthreads();
    if (tid < kRows) sH[tid] = row_sq<T, D>(sK + tid * LDD) * half_scale;  // |k'|^2/2
    float mx0 = math::neg_inf<float>(), mx1 = math::neg_inf<float>();
    for (int64_t f0 = 0; f0 < a.F; f0 += kFB) {
      if (f0 > 0) __syncthreads();  // every warp is done with the previous slice
      load_w<T, D>(sW, x.wp, a.F, f0);
      __syncthreads();
      float e[kFB / 8][4];
      project<T, D>(sK, sW, e);
      fold_max(e, mx0, mx1);
    }
    quad_max(mx0, mx1);
    const int r0 = warp * 16 + gq, r1 = r0 + 8;
    float* mK = x.mK + item * a.Sk + j0;
    if (tq == 0 && r0 < kn) mK[r0] = math::favor_key_exponent(mx0, sH[r0]);
    if (tq == 0 && r1 < kn) mK[r1] = math::favor_key_exponent(mx1, sH[r1]);
    __syncthreads();  // sK, sW, sH are rewritten for the next block
  }
}

template <class T, int D, int DV>
constexpr std::size_t state_smem() {
  constexpr int NS = Parts<T>::NS;
  return sizeof(uint16_t) * (static_cast<std::size_t>(NS) * kFB * (D + 8) + kRows * (D + 8) +
                             static_cast<std::size_t>(NS) * kRows * kLDF + kRows * (DV + 8)) +
         sizeof(float) * kRows;
}

/// Partial states part[item][s][f][n] (n < Dv: S, n = Dv: z, beyond: 0) of the allowed keys of segment s,
/// one block per (item, segment, 64 features); warp w owns features 16 w .. 16 w + 15 of the slice.
/// Slice [f0, f0 + kFB) of a float32 state (st: its row f0, rows of DVA) into bfloat16 hi / lo parts sPh / sPl
/// ([kFB][DVA]; linear_mma.cuh out_kernel's split, the low part the rest); returns whether this thread read a
/// NaN / infinite value (the caller ORs it over the block). Also performer_causal_mma.cuh's.
template <int DVA>
__device__ __forceinline__ bool load_state_hilo(bf16_t* sPh, bf16_t* sPl, const float* st) {
  bool pb = false;
  for (int i = static_cast<int>(threadIdx.x) * 4; i < kFB * DVA; i += kBlock * 4) {
    const float4 w = *reinterpret_cast<const float4*>(st + i);
    float v[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int q = 0; q < 4; ++q) pb |= !(fabsf(v[q]) <= FLT_MAX);
    float hi[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) hi[q] = to_acc<float>(linmma::split_part<bf16_t>(v[q]));  // v: the rest
    *reinterpret_cast<uint2*>(sPh + i) = make_uint2(mma::pack2<bf16_t>(hi[0], hi[1]), mma::pack2<bf16_t>(hi[2], hi[3]));
    *reinterpret_cast<uint2*>(sPl + i) = make_uint2(mma::pack2<bf16_t>(v[0], v[1]), mma::pack2<bf16_t>(v[2], v[3]));
  }
  return pb;
}

/// acc += phi^T [V | 1] over one tile of kRows keys (state_kernel's and performer_causal_mma.cuh's state
/// products): A = the NS parts of phi transposed (sP, [NS][kRows][kLDF]; linear_mma.cuh inc_kernel's loads),
/// B = sV ([kRows][DV + 8]); warp w owns features [16w, 16w + 16). vbad (a NaN / infinite value in V): all parts
/// (t0) and the high part alone (t1) summed separately, per n-tile (n unrolled: acc stays in registers).
template <class T, int DV>
__device__ __forceinline__ void add_phi_v(float (&acc)[(DV + 8) / 8][4], const T* sP, const T* sV, bool vbad,
                                          int warp, int lane) {
  constexpr int NS = Parts<T>::NS, DVA = DV + 8, NV = DVA / 8;
  if (!vbad) {
#pragma unroll 1
    for (int ks = 0; ks < kRows / 16; ++ks) {
      uint32_t af[NS][4];
#pragma unroll
      for (int sp = 0; sp < NS; ++sp)
        mma::ldsm_x4_t(af[sp], sP + (sp * kRows + ks * 16 + (lane / 16) * 8 + lane % 8) * kLDF + warp * 16 +
                                   ((lane / 8) % 2) * 8);
#pragma unroll
      for (int n = 0; n < NV; ++n) {
        uint32_t bf[2];
        linmma::ldsm_x2_t(bf, sV + (ks * 16 + lane % 16) * DVA + n * 8);
#pragma unroll
        for (int sp = 0; sp < NS; ++sp) mma::mma16816<T>(acc[n], af[sp], bf[0], bf[1]);
      }
    }
  } else {
#pragma unroll
    for (int n = 0; n < NV; ++n) {
      float t0[4] = {0.f, 0.f, 0.f, 0.f}, t1[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll 1
      for (int ks = 0; ks < kRows / 16; ++ks) {
        uint32_t bf[2];
        linmma::ldsm_x2_t(bf, sV + (ks * 16 + lane % 16) * DVA + n * 8);
#pragma unroll
        for (int sp = 0; sp < NS; ++sp) {
          uint32_t af[4];
          mma::ldsm_x4_t(af, sP + (sp * kRows + ks * 16 + (lane / 16) * 8 + lane % 8) * kLDF + warp * 16 +
                                 ((lane / 8) % 2) * 8);
          mma::mma16816<T>(t0, af, bf[0], bf[1]);
          if (sp == 0) mma::mma16816<T>(t1, af, bf[0], bf[1]);
        }
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[n][i] += (isnan(t0[i]) && !isnan(t1[i])) ? t1[i] : t0[i];
    }
  }
}

template <class T, int D, int DV>
__global__ void __launch_bounds__(kBlock) state_kernel(const LinArgs a, const Ext<T> x) {
  using PT = Parts<T>;
  constexpr int LDD = D + 8, NS = PT::NS, DVA = DV + 8, NV = DVA / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sW = reinterpret_cast<T*>(smem_raw);  // [NS][kFB][LDD]
  T* sK = sW + NS * kFB * LDD;             // [kRows][LDD]
  T* sP = sK + kRows * LDD;                // [NS][kRows][kLDF]: parts of phi, [keys][features]
  T* sV = sP + NS * kRows * kLDF;          // [kRows][DVA]: [V | 1 | 0]
  float* sOff = reinterpret_cast<float*>(sV + kRows * DVA);  // [kRows]: |k'|^2/2 + c
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, gq = lane / 4, tq = lane % 4;
  const int64_t nfb = a.F / kFB, total = a.B * a.Hkv * x.nseg * nfb;
  const float half_scale = static_cast<float>(a.half_scale), hlm = static_cast<float>(a.half_log_m);
  for (int64_t blk = blockIdx.x; blk < total; blk += gridDim.x) {
    const uint32_t ub = static_cast<uint32_t>(blk), unfb = static_cast<uint32_t>(nfb);
    const uint32_t uns = static_cast<uint32_t>(x.nseg), uh = static_cast<uint32_t>(a.Hkv);
    const uint32_t uis = ub / unfb, uitem = uis / uns, ub_ = uitem / uh;  // 32-bit: see stats_kernel
    const int64_t fb = ub - uis * unfb, item = uitem, s = uis - uitem * uns;
    const int64_t b = ub_, hkv = uitem - ub_ * uh, L = key_count(a, b);
    const int64_t jb = s * x.seg, je = jb + x.seg < L ? jb + x.seg : L;
    const float c = x.cs[2 * item];
    load_w<T, D>(sW, x.wp, a.F, fb * kFB);  // made visible by the first chunk's barrier
    const T* kg = static_cast<const T*>(a.k) + b * a.ks[0] + hkv * a.ks[1];
    const T* vg = static_cast<const T*>(a.v) + b * a.vs[0] + hkv * a.vs[1];
    float acc[NV][4];
#pragma unroll
    for (int n = 0; n < NV; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[n][i] = 0.f;
    for (int64_t j0 = jb; j0 < je; j0 += kRows) {
      const int kn = static_cast<int>(je - j0 < kRows ? je - j0 : kRows);
      load_rows<T, D>(sK, kg + j0 * a.ks[2], a.ks[2], a.ks[3], x.kvec, kn);
      bool bad = false;
      for (int i = tid; i < kRows * NV; i += kBlock) {
        const int j = i / NV, n8 = i % NV * 8;
        float v[8];
        if (n8 < DV) {
          linmma::load8<T>(vg + (j0 + j) * a.vs[2], a.vs[3], x.vvec, j < kn, n8, v);
#pragma unroll
          for (int q = 0; q < 8; ++q) bad |= !(fabsf(v[q]) <= FLT_MAX);
        } else {
#pragma unroll
          for (int q = 0; q < 8; ++q) v[q] = (q == 0 && j < kn) ? 1.f : 0.f;
        }
        linmma::store8<T>(sV + j * DVA + n8, v);
      }
      const bool vbad = __syncthreads_or(bad) != 0;  // uniform; sK, sV (and sW) visible
      if (tid < kRows) sOff[tid] = row_sq<T, D>(sK + tid * LDD) * half_scale + c;  // the CPU's hK + c (key_exp_kernel)
      __syncthreads();
      {
        float e[kFB / 8][4];
        project<T, D>(sK, sW, e);
        // phi of keys 16 warp + gq (+ 8), features 8 n + 2 tq (+ 1): exp in float32, then the 16-bit parts.
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
          const int j = warp * 16 + gq + 8 * hr;
          const bool ok = j < kn;
          const float off = sOff[j];
#pragma unroll
          for (int n = 0; n < kFB / 8; ++n) {
            float p0 = ok ? DevExp()(math::favor_feature_arg(e[n][2 * hr], off, hlm)) * PT::kPhiScale : 0.f;
            float p1 = ok ? DevExp()(math::favor_feature_arg(e[n][2 * hr + 1], off, hlm)) * PT::kPhiScale : 0.f;
#pragma unroll
            for (int sp = 0; sp < NS; ++sp) {
              const float h0 = to_acc<float>(linmma::split_part<T>(p0));
              const float h1 = to_acc<float>(linmma::split_part<T>(p1));
              *reinterpret_cast<uint32_t*>(sP + (sp * kRows + j) * kLDF + n * 8 + 2 * tq) = mma::pack2<T>(h0, h1);
            }
          }
        }
      }
      __syncthreads();
      add_phi_v<T, DV>(acc, sP, sV, vbad, warp, lane);  // acc += phi^T [V | 1]
      __syncthreads();  // sK, sV, sP are rewritten for the next keys
    }
    // Rows f = fb kFB + 16 warp + gq (+ 8), columns 8 n + 2 tq (+ 1); the 2^-8 of float16's phi is exact.
    float* out = x.part + ((item * x.nseg + s) * a.F + fb * kFB + warp * 16 + gq) * DVA;
    constexpr float inv = 1.f / PT::kPhiScale;
#pragma unroll
    for (int n = 0; n < NV; ++n) {
      *reinterpret_cast<float2*>(out + n * 8 + 2 * tq) = make_float2(acc[n][0] * inv, acc[n][1] * inv);
      *reinterpret_cast<float2*>(out + 8 * DVA + n * 8 + 2 * tq) = make_float2(acc[n][2] * inv, acc[n][3] * inv);
    }
    __syncthreads();  // sW is rewritten for the next block (a block without keys passes no other barrier)
  }
}

/// st[item][f][n] = S_in r0 + the partials in segment order (n < Dv), z likewise (n = Dv), 0 beyond; and
/// state_out / z_out. One thread per element (state_sum_kernel / z_kernel of the v2 path).
template <class T, int DV>
__global__ void sum_kernel(const LinArgs a, const Ext<T> x) {
  constexpr int DVA = DV + 8;
  const int64_t per = a.F * DVA, total = a.B * a.Hkv * per;
  const float* si = static_cast<const float*>(a.s_in);
  const float* zi = static_cast<const float*>(a.z_in);
  float* so = static_cast<float*>(a.s_out);
  float* zo = static_cast<float*>(a.z_out);
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t item = i / per, e = i % per, f = e / DVA, n = e % DVA, b = item / a.Hkv, hkv = item % a.Hkv;
    float r = 0.f;
    if (n <= DV) {
      const int64_t L = key_count(a, b);
      if (n < DV && si) r = si[b * a.sis[0] + hkv * a.sis[1] + f * a.sis[2] + n * a.sis[3]];
      if (n == DV && zi) r = zi[b * a.zis[0] + hkv * a.zis[1] + f * a.zis[2]];
      const float r0 = state_in_factor(a, x.cs, item, L);
      if (r0 != 1.f) r *= r0;
      float s = 0.f;
      for (int64_t sg = 0; sg < x.nseg; ++sg) s += x.part[(item * x.nseg + sg) * per + e];
      r += s;
      if (n < DV && so) so[b * a.sos[0] + hkv * a.sos[1] + f * a.sos[2] + n * a.sos[3]] = r;
      if (n == DV && zo) zo[b * a.zos[0] + hkv * a.zos[1] + f * a.zos[2]] = r;
    }
    x.st[i] = r;
  }
}

template <class T, int D, int DV>
constexpr std::size_t out_smem() {
  constexpr int NS = Parts<T>::NS;
  return sizeof(uint16_t) * (static_cast<std::size_t>(NS) * kFB * (D + 8) + kRows * (D + 8) +
                             2 * static_cast<std::size_t>(kFB) * (DV + 8));
}

/// Outputs of 64 query rows of (b, h) per block; warp w owns rows 16 w .. 16 w + 15.
template <class T, int D, int DV>
__global__ void __launch_bounds__(kBlock, 1) out_kernel(const LinArgs a, const Ext<T> x) {
  constexpr int LDD = D + 8, NS = Parts<T>::NS, DVA = DV + 8, NV = DVA / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sW = reinterpret_cast<T*>(smem_raw);             // [NS][kFB][LDD]
  T* sQ = sW + NS * kFB * LDD;                        // [kRows][LDD]
  bf16_t* sPh = reinterpret_cast<bf16_t*>(sQ + kRows * LDD);  // [kFB][DVA]: state slice, bfloat16 hi
  bf16_t* sPl = sPh + kFB * DVA;                              // [kFB][DVA]: lo
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, gq = lane / 4, tq = lane % 4;
  const int64_t nt = ceil_div(a.S, kRows), total = a.B * a.Hq * nt;
  const float hlm = static_cast<float>(a.half_log_m);
  for (int64_t blk = blockIdx.x; blk < total; blk += gridDim.x) {
    const uint32_t ub = static_cast<uint32_t>(blk), unt = static_cast<uint32_t>(nt), uhq = static_cast<uint32_t>(a.Hq);
    const uint32_t ubh = ub / unt, ub_ = ubh / uhq, uh = ubh - ub_ * uhq;  // 32-bit: see stats_kernel
    const int64_t t0 = static_cast<int64_t>(ub - ubh * unt) * kRows, b = ub_, h = uh;
    const int64_t item = b * a.Hkv + uh / static_cast<uint32_t>(a.G);
    const int tn = static_cast<int>(a.S - t0 < kRows ? a.S - t0 : kRows);
    load_rows<T, D>(sQ, static_cast<const T*>(a.q) + b * a.qs[0] + h * a.qs[1] + t0 * a.qs[2], a.qs[2], a.qs[3],
                    x.qvec, tn);
    // Pass 1: each row's largest projection (the CPU's per-row query stabilizer).
    float mx0 = math::neg_inf<float>(), mx1 = math::neg_inf<float>();
    for (int64_t f0 = 0; f0 < a.F; f0 += kFB) {
      __syncthreads();  // the previous slice (and the previous block) is done with sW
      load_w<T, D>(sW, x.wp, a.F, f0);
      __syncthreads();
      float e[kFB / 8][4];
      project<T, D>(sQ, sW, e);
      fold_max(e, mx0, mx1);
    }
    quad_max(mx0, mx1);
    // Pass 2: O = phi(Q) [S | z] slice by slice.
    float o[NV][4];
#pragma unroll
    for (int n = 0; n < NV; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) o[n][i] = 0.f;
    const float* st = x.st + item * a.F * DVA;
    for (int64_t f0 = 0; f0 < a.F; f0 += kFB) {
      __syncthreads();
      load_w<T, D>(sW, x.wp, a.F, f0);
      const bool pb = load_state_hilo<DVA>(sPh, sPl, st + f0 * DVA);
      const bool pbad = __syncthreads_or(pb) != 0;
      float e[kFB / 8][4];
      project<T, D>(sQ, sW, e);
      // phi(q) as the A fragments of k-step kt (features 16 kt ..; linear_mma.cuh out_kernel's pk packing),
      // one k-step at a time (all four at once spilled: bfloat16, D = Dv = 128, sm_90).
#pragma unroll
      for (int kt = 0; kt < kFB / 16; ++kt) {
        uint32_t qh[4], ql[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int n = 2 * kt + r / 2, i0 = 2 * (r % 2);  // r: (row g, k lo), (g + 8, lo), (g, hi), (g + 8, hi)
          const float m = r % 2 ? mx1 : mx0;
          float v0 = DevExp()(math::favor_feature_arg(e[n][i0], m, hlm));
          float v1 = DevExp()(math::favor_feature_arg(e[n][i0 + 1], m, hlm));
          const float h0 = to_acc<float>(linmma::split_part<bf16_t>(v0));
          const float h1 = to_acc<float>(linmma::split_part<bf16_t>(v1));
          qh[r] = mma::pack2<bf16_t>(h0, h1);
          ql[r] = mma::pack2<bf16_t>(v0, v1);
        }
        linmma::add_state_hilo<NV, DVA>(o, qh, ql, sPh, sPl, kt, lane, pbad);
      }
    }
    // The denominators: column DV (n-tile NV - 1, held by the quad's thread tq = 0).
    const float den0 = __shfl_sync(0xffffffffu, o[NV - 1][0], lane & ~3);
    const float den1 = __shfl_sync(0xffffffffu, o[NV - 1][2], lane & ~3);
#pragma unroll
    for (int n = 0; n < DV / 8; ++n)
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        const int t = warp * 16 + gq + 8 * hr;
        if (t >= tn) continue;
        const int64_t d = n * 8 + 2 * tq;
        store_out<T, float>(a, b, h, t0 + t, d, o[n][2 * hr], hr ? den1 : den0);
        store_out<T, float>(a, b, h, t0 + t, d + 1, o[n][2 * hr + 1], hr ? den1 : den0);
      }
    __syncthreads();  // sQ is rewritten for the next block before its first barrier
  }
}

// --------------------------------------------------------------------------------------------- host side

inline std::size_t round16(std::size_t bytes) { return (bytes + 15) / 16 * 16; }

template <class T, int D, int DV>
bool run(const LinearProblem& p, int64_t seg, cudaStream_t stream) {
  using PT = Parts<T>;
  constexpr int DVA = DV + 8;
  const std::size_t stats_bytes = sizeof(uint16_t) * (kRows + PT::NS * kFB) * (D + 8) + sizeof(float) * kRows;
  if (!linmma::smem_ok(stats_kernel<T, D>, stats_bytes, p.device_index) ||
      !linmma::smem_ok(state_kernel<T, D, DV>, state_smem<T, D, DV>(), p.device_index) ||
      !linmma::smem_ok(out_kernel<T, D, DV>, out_smem<T, D, DV>(), p.device_index))
    return false;
  // LinArgs as linear.cu's run_linear fills them for this map (the fields the kernels here and the shared
  // key_max_kernel / state_in_factor / store_out read).
  LinArgs a = lin_args<float>(p);
  a.C = p.chunk > 0 ? p.chunk : 128;  // linear.cu's kDefaultBidirectionalChunk: key_max_kernel's first chunk
  a.proj = true;
  a.stab = true;
  // The kernels' 32-bit block index math.
  const int64_t lim = int64_t{1} << 31;
  if (p.B * p.Hkv * ceil_div(p.Sk, kRows) >= lim || p.B * p.Hq * ceil_div(p.S, kRows) >= lim ||
      p.B * p.Hkv * ceil_div(p.Sk, seg) * (p.F / kFB) >= lim)
    return false;
  auto vec = [](const void* ptr, const int64_t (&st)[4]) {  // linear_mma.cuh's run()
    return st[3] == 1 && reinterpret_cast<std::uintptr_t>(ptr) % 16 == 0 && st[0] % 8 == 0 && st[1] % 8 == 0 &&
           st[2] % 8 == 0;
  };
  const int64_t items = p.B * p.Hkv, F = p.F, nseg = ceil_div(p.Sk, seg);
  const std::size_t wp_bytes = round16(sizeof(T) * static_cast<std::size_t>(PT::NS * F * p.D));
  const std::size_t mk_bytes = round16(sizeof(float) * static_cast<std::size_t>(items * p.Sk));
  const std::size_t cs_bytes = round16(sizeof(float) * static_cast<std::size_t>(2 * items));
  const std::size_t part_bytes = sizeof(float) * static_cast<std::size_t>(items * nseg * F * DVA);
  const std::size_t st_bytes = sizeof(float) * static_cast<std::size_t>(items * F * DVA);
  Workspace ws(wp_bytes + mk_bytes + cs_bytes + part_bytes + st_bytes, stream);
  unsigned char* base = ws.as<unsigned char>();
  Ext<T> x{};
  x.wp = reinterpret_cast<const T*>(base);
  x.mK = reinterpret_cast<float*>(base + wp_bytes);
  x.cs = reinterpret_cast<float*>(base + wp_bytes + mk_bytes);
  x.part = reinterpret_cast<float*>(base + wp_bytes + mk_bytes + cs_bytes);
  x.st = reinterpret_cast<float*>(base + wp_bytes + mk_bytes + cs_bytes + part_bytes);
  x.seg = seg;
  x.nseg = nseg;
  x.qvec = vec(p.q.data, p.q.stride);
  x.kvec = vec(p.k.data, p.k.stride);
  x.vvec = vec(p.v.data, p.v.stride);

  wparts_kernel<T><<<blocks_for(F * p.D, 256), 256, 0, stream>>>(reinterpret_cast<T*>(base), p.features.data,
                                                                  p.features.dtype, p.features.stride[0],
                                                                  p.features.stride[1], F, p.D,
                                                                  static_cast<float>(p.feature_scale));
  ATTNKIT_CUDA_CHECK_LAUNCH();
  if (p.Sk > 0) {
    stats_kernel<T, D><<<linmma::grid_of(items * ceil_div(p.Sk, kRows)), kBlock, stats_bytes, stream>>>(a, x);
    ATTNKIT_CUDA_CHECK_LAUNCH();
  }
  key_max_kernel<T><<<linmma::grid_of(items), kThreads, 0, stream>>>(a, x.mK, x.cs);
  ATTNKIT_CUDA_CHECK_LAUNCH();
  if (nseg > 0) {
    state_kernel<T, D, DV><<<linmma::grid_of(items * nseg * (F / kFB)), kBlock, state_smem<T, D, DV>(), stream>>>(a, x);
    ATTNKIT_CUDA_CHECK_LAUNCH();
  }
  sum_kernel<T, DV><<<linmma::grid_of(ceil_div(items * F * DVA, 256)), 256, 0, stream>>>(a, x);
  ATTNKIT_CUDA_CHECK_LAUNCH();
  if (p.Hq > 0 && p.S > 0) {
    out_kernel<T, D, DV><<<linmma::grid_of(p.B * p.Hq * ceil_div(p.S, kRows)), kBlock, out_smem<T, D, DV>(), stream>>>(a, x);
    ATTNKIT_CUDA_CHECK_LAUNCH();
  }
  return true;
}

}  // namespace pm2

template <class T, int D>
bool run_performer_mma2(const LinearProblem& p, int64_t seg, cudaStream_t stream) {
  switch (p.Dv) {
    case 32: return pm2::run<T, D, 32>(p, seg, stream);
    case 64: return pm2::run<T, D, 64>(p, seg, stream);
    case 128: return pm2::run<T, D, 128>(p, seg, stream);
    default: return false;
  }
}
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
