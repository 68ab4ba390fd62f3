#pragma once
// Causal linear attention with an elementwise feature map (elu1, relu, identity) on tensor cores
// ("linear_attention_mma" in runtime.cu's kCompiled; linear.cu takes it only where has_kernel says so and
// linear_mma_causal accepts the problem, else the SIMT kernels of linear_causal.cuh / linear_v2.cuh run).
// float16 / bfloat16 q, k, v; D, Dv in {32, 64, 128}; chunks of C in {64, 128} keys (C = the causal chunk of
// linear.cu: p.chunk, else ATTNKIT_LINEAR_CUDA_CHUNK, else 64). Same semantics as cpu/linear_kernel.h's
// chunked causal form: keys j >= key_lengths[b] are never read, query t sees keys j <= t, the state before
// the first chunk is state_in (S_0, z_0), state_out the state after the last allowed key, GQA by h / G.
// Features are computed in float32 from the inputs (math/feature_maps.h) and rounded for the mma operands.
//
// Three launches, every sum in a fixed order (nothing depends on the launch configuration; no atomics):
//   inc_kernel   per (item = (b, hkv), chunk c, block of <= 64 features): I_c = phi(K_c)^T [V_c | 1] on tensor
//                cores, [D][DVA] float32 (DVA = Dv + 8: column Dv is the key-sum z, Dv+1.. are zeros). The
//                state must be float32-accurate (state_out is compared with a float32 tolerance), so phi(K)
//                enters as a sum of 16-bit parts (hi + lo for float16: 22 bits; hi + mid + lo for bfloat16:
//                24 bits) times the exact 16-bit V, one mma per part;
//   scan_kernel  per state element, chunks in increasing order: P_c = state before chunk c (in place over
//                I_c), starting from state_in, chunks without allowed keys skipped as on the CPU; the
//                final state to state_out;
//   out_kernel   per (b, h, chunk): warp w owns query rows 16w .. 16w + 15 of the chunk;
//                  scores s = phi(Q_c) phi(K_c)^T (16-bit features, keys j <= t of the chunk), masked j > t;
//                  O = phi(Q_c) P_c in bfloat16 parts (q_hi p_hi + q_hi p_lo + q_lo p_hi: ~16 bits, and
//                      bfloat16 has float32's range, so a state of any size is representable);
//                  O += s [V_c | 1] (s rounded to T; a row whose |s| exceeds 2^15 is scaled by an exact
//                      power of two first, and O with it, so float16 never overflows);
//                  out = linear_output(O[:, :Dv], O[:, Dv], eps) (or O unnormalized).
// Since the denominator comes from the same products as the numerator (the ones column), both see the
// same rounding. Fragment layouts and the ldmatrix / mma helpers are attention_mma.cuh's (namespace mma);
// tests/cuda_emu/linear_mma_fragments.py checks the addressing lane by lane, linear_mma_emu.py the rounding.
// Non-finite values as the CPU (cpu/linear_kernel.h): a chunk with a NaN / infinite value of an allowed key
// sums each warp's diagonal key tile element by element (masked pairs skipped); where a 16-bit low part
// times an infinity would give NaN instead of the CPU's infinity, the high part alone is used (inc pass 1,
// out_kernel's pbad). Operands are read by 16-byte loads where their rows allow it (Args::qvec ...).

#include <cfloat>
#include <cstdint>
#include <type_traits>

#include "attnkit/math/feature_maps.h"
#include "cpp/src/validate/linear.h"
#include "cuda/attention_mma.cuh"
#include "cuda/workspace.cuh"

namespace attnkit {
namespace detail {
namespace cuda {

/// Runs the tensor-core causal path for head dim D (instantiated in linear_mma_<dtype>_d<D>.cu); false where
/// it does not apply (Dv, C, shared memory), having launched nothing.
template <class T, int D>
bool run_linear_mma(const LinearProblem& p, int64_t C, cudaStream_t stream);

namespace linmma {

struct Args {
  int64_t B, Hq, Hkv, G, S, C, nch;
  const void* q;
  const void* k;
  const void* v;
  int64_t qs[4], ks[4], vs[4];
  void* out;
  int64_t os[4];
  LinearMap map;
  bool normalize;
  float eps;
  bool qvec, kvec, vvec;  // rows of q / k / v readable by 16-byte loads (last stride 1, aligned)
  bool ovec;              // output pairs (d, d + 1), d even, writable by 4-byte stores
  const void* len;  // key_lengths or null
  DType len_dtype;
  int64_t len_stride;
  const float* s_in;  // [B, Hkv, D, Dv] or null
  int64_t sis[4];
  const float* z_in;
  int64_t zis[3];
  float* s_out;  // or null
  int64_t sos[4];
  float* z_out;
  int64_t zos[3];
};

struct ExpF {
  __device__ float operator()(float x) const { return expf(x); }
};

__device__ __forceinline__ float phi(LinearMap m, float x) {
  if (m == LinearMap::Elu1) return math::phi_elu1(x, ExpF());
  if (m == LinearMap::Relu) return math::phi_relu(x);
  return x;
}

/// Allowed keys of batch b, in [0, S].
__device__ __forceinline__ int64_t key_count(const Args& a, int64_t b) {
  int64_t L = a.len ? load_int(a.len, a.len_dtype, b * a.len_stride) : a.S;
  return L < 0 ? 0 : (L > a.S ? a.S : L);
}

/// Allowed keys of the chunk starting at j0 (j0 < S).
__device__ __forceinline__ int chunk_keys(int64_t j0, int64_t C, int64_t S, int64_t L) {
  int64_t n = S - j0 < C ? S - j0 : C;
  if (L - j0 < n) n = L - j0;
  return n < 0 ? 0 : static_cast<int>(n);
}

/// x rounded to P, and x minus that rounding (0 where the difference is not finite: x = +-inf).
template <class P>
__device__ __forceinline__ P split_part(float& x) {
  const P h = from_acc<P, float>(x);
  const float r = x - to_acc<float>(h);
  x = (r - r == 0.f) ? r : 0.f;
  return h;
}

__device__ __forceinline__ void ldsm_x2_t(uint32_t (&r)[2], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(mma::smem_addr(p)));
}

/// The scores sc (n-tiles of 8 keys; this thread's rows r0: [n][0..1], r1: [n][2..3]) times the row factors
/// dn0, dn1, rounded to T as the A operand of the PV product: k-step kt = keys 16 kt .. 16 kt + 15 (out_kernel's
/// and performer_causal_mma.cuh's).
template <class T, int NW>
__device__ __forceinline__ void pack_scores(uint32_t (&pk)[NW][4], const float (&sc)[2 * NW][4], float dn0, float dn1) {
#pragma unroll
  for (int kt = 0; kt < NW; ++kt) {
    pk[kt][0] = mma::pack2<T>(sc[2 * kt][0] * dn0, sc[2 * kt][1] * dn0);
    pk[kt][1] = mma::pack2<T>(sc[2 * kt][2] * dn1, sc[2 * kt][3] * dn1);
    pk[kt][2] = mma::pack2<T>(sc[2 * kt + 1][0] * dn0, sc[2 * kt + 1][1] * dn0);
    pk[kt][3] = mma::pack2<T>(sc[2 * kt + 1][2] * dn1, sc[2 * kt + 1][3] * dn1);
  }
}

/// The maxima over a row's four threads (a quad: lanes 4 gq .. 4 gq + 3), fmaxf (out_kernel's and
/// performer_causal_mma.cuh's row maxima of |scores|).
__device__ __forceinline__ void quad_fmax(float& mx0, float& mx1) {
#pragma unroll
  for (int o = 1; o < 4; o <<= 1) {
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, o));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, o));
  }
}

/// e >= 0 such that m 2^-e < 2^15: 0 for m <= 2^15 (and NaN, inf), else frexp's exponent of m minus 15
/// (m in [2^(x - 127), 2^(x - 126)) for the biased exponent x of a normal float), at most 113.
__device__ __forceinline__ int scale_exponent(float m) {
  if (!(m > 32768.f && m <= FLT_MAX)) return 0;
  return ((__float_as_int(m) >> 23) & 0xff) - 126 - 15;
}
/// 2^e for e in [-113, 113] (normal floats), exactly.
__device__ __forceinline__ float pow2(int e) { return __int_as_float((127 + e) << 23); }

/// Elements f8 .. f8 + 7 of a row (element f at row[f * cs]) as float: one 16-byte load where vec (then
/// cs = 1 and row + f8 is 16-byte aligned), else eight loads. Nothing is read where !ok (zeros).
template <class T>
__device__ __forceinline__ void load8(const T* row, int64_t cs, bool vec, bool ok, int f8, float (&x)[8]) {
  if (!ok) {
#pragma unroll
    for (int i = 0; i < 8; ++i) x[i] = 0.f;
  } else if (vec) {
    alignas(16) T t[8];
    *reinterpret_cast<uint4*>(t) = *reinterpret_cast<const uint4*>(row + f8);
#pragma unroll
    for (int i = 0; i < 8; ++i) x[i] = to_acc<float>(t[i]);
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) x[i] = to_acc<float>(row[(f8 + i) * cs]);
  }
}

/// Eight values rounded to P, stored at dst (16-byte aligned) by one 16-byte store.
template <class P>
__device__ __forceinline__ void store8(P* dst, const float (&x)[8]) {
  alignas(16) P t[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) t[i] = from_acc<P, float>(x[i]);
  *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(t);
}

/// Row j of the [V | 1 | 0] tile, columns n8 .. n8 + 7 (n8 a multiple of 8), into dst: V's values, the ones
/// column DV, zeros; all zeros for rows past the chunk's allowed keys (j >= kn). Returns whether a value read
/// is NaN or infinite.
template <class T, int DV>
__device__ __forceinline__ bool load_v8(const Args& a, const T* vg, int j, int kn, int n8, T* dst) {
  float x[8];
  bool bad = false;
  if (n8 < DV) {
    load8<T>(vg + j * a.vs[2], a.vs[3], a.vvec, j < kn, n8, x);
#pragma unroll
    for (int i = 0; i < 8; ++i) bad |= !(fabsf(x[i]) <= FLT_MAX);
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) x[i] = (i == 0 && j < kn) ? 1.f : 0.f;
  }
  store8<T>(dst, x);
  return bad;
}

/// Half c (0: the low one) of two packed T values, as float.
template <class T>
__device__ __forceinline__ float unpack16(uint32_t w, int c) {
  const uint16_t bits = static_cast<uint16_t>(c ? w >> 16 : w & 0xFFFFu);
  if constexpr (std::is_same<T, half_t>::value)
    return __half2float(__ushort_as_half(bits));
  else
    return __uint_as_float(static_cast<uint32_t>(bits) << 16);
}

template <class T, int D, int DV>
struct Shape {
  static constexpr int DVA = DV + 8;  // value columns, the ones column (z), zeros; row pitch of V / P tiles
  static constexpr int NV = DVA / 8;  // n-tiles of I_c and of O
  static constexpr int LDD = D + 8;   // row pitch of [rows][D] tiles (pitch = 16 bytes mod 32: ldmatrix
                                      // without bank conflicts; DVA is of that form too)
  static constexpr int FB = D < 64 ? D : 64;  // features per inc block (and per P slice of out_kernel)
  static constexpr int NFB = D / FB;
  static constexpr int NS = std::is_same<T, half_t>::value ? 2 : 3;  // 16-bit parts of phi(K) in inc
  static_assert(D % 32 == 0 && DV % 16 == 0, "tile sizes");
};

template <class T, int D, int DV>
constexpr std::size_t inc_smem(int C) {
  using S = Shape<T, D, DV>;
  return sizeof(uint16_t) * (static_cast<std::size_t>(S::NS) * C * (S::FB + 8) + static_cast<std::size_t>(C) * S::DVA);
}

/// I_c for every (item, chunk, feature block): P[item][c][f][n], n < DVA. Blocks of 128 threads; rows of
/// the chunk past its allowed keys are zeros (never read).
template <class T, int D, int DV>
__global__ void __launch_bounds__(128, 4) inc_kernel(const Args a, float* P) {
  using S = Shape<T, D, DV>;
  constexpr int FB = S::FB, LDF = FB + 8, DVA = S::DVA, NV = S::NV, NS = S::NS, NFB = S::NFB;
  constexpr int MT = FB / 16, WPM = 4 / MT, NVW = (NV + WPM - 1) / WPM;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int C = static_cast<int>(a.C);
  T* sK = reinterpret_cast<T*>(smem_raw);  // [NS][C][LDF]: the parts of phi(K)
  T* sV = sK + NS * C * LDF;               // [C][DVA]
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, gq = lane / 4, tq = lane % 4;
  const int mt = warp % MT, wsub = warp / MT;  // this warp's m-tile (16 features), n-tiles wsub + i WPM
  const int64_t total = a.B * a.Hkv * a.nch * NFB, E = static_cast<int64_t>(D) * DVA;
  for (int64_t blk = blockIdx.x; blk < total; blk += gridDim.x) {
    // 32-bit index math (run() takes only problems with fewer than 2^31 blocks here): no 64-bit division
    // calls in this kernel (their register saves spilled).
    const uint32_t ub = static_cast<uint32_t>(blk), uic = ub / NFB, unch = static_cast<uint32_t>(a.nch);
    const uint32_t uitem = uic / unch, uhkv = static_cast<uint32_t>(a.Hkv), ubb = uitem / uhkv;
    const int fb = static_cast<int>(ub - uic * NFB);
    const int64_t ic = uic, c = uic - uitem * unch, b = ubb, hkv = uitem - ubb * uhkv;
    const int64_t j0 = c * C;
    const int kn = chunk_keys(j0, C, a.S, key_count(a, b));
    const T* kg = static_cast<const T*>(a.k) + b * a.ks[0] + hkv * a.ks[1] + j0 * a.ks[2] +
                  static_cast<int64_t>(fb) * FB * a.ks[3];
    const T* vg = static_cast<const T*>(a.v) + b * a.vs[0] + hkv * a.vs[1] + j0 * a.vs[2];
    for (int i = tid; i < C * (FB / 8); i += 128) {
      const int j = i / (FB / 8), f8 = i % (FB / 8) * 8;
      float x[8];
      load8<T>(kg + j * a.ks[2], a.ks[3], a.kvec, j < kn, f8, x);
#pragma unroll
      for (int e = 0; e < 8; ++e) x[e] = j < kn ? phi(a.map, x[e]) : 0.f;
#pragma unroll
      for (int s = 0; s < NS; ++s) {
        float h[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) h[e] = to_acc<float>(split_part<T>(x[e]));
        store8<T>(sK + (s * C + j) * LDF + f8, h);
      }
    }
    bool bad = false;
    for (int i = tid; i < C * (DVA / 8); i += 128) {
      const int j = i / (DVA / 8), n8 = i % (DVA / 8) * 8;
      bad |= load_v8<T, DV>(a, vg, j, kn, n8, sV + j * DVA + n8);
    }
    const bool vbad = __syncthreads_or(bad) != 0;  // a NaN / infinite value among the chunk's allowed keys
    float* out = P + ic * E;
    const int f = fb * FB + mt * 16 + gq;
    // Pass 0: the sum of all parts. Pass 1 (vbad only): the high parts alone, kept where pass 0 gave NaN
    // but pass 1 did not: a low part 0 (or of the other sign) times an infinite value makes NaN where
    // the CPU's float32 feature times that value gives the infinity.
#pragma unroll 1
    for (int pass = 0; pass < (vbad ? 2 : 1); ++pass) {
      float acc[NVW][4];
#pragma unroll
      for (int i = 0; i < NVW; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[i][e] = 0.f;
      for (int ks = 0; ks < C / 16; ++ks) {
        // A = phi(K)^T (features x keys) from the [keys][features] tile: transposed 8 x 8 loads.
        uint32_t af[NS][4];
#pragma unroll
        for (int s = 0; s < NS; ++s)
          mma::ldsm_x4_t(af[s], sK + (s * C + ks * 16 + (lane / 16) * 8 + lane % 8) * LDF + mt * 16 + ((lane / 8) % 2) * 8);
#pragma unroll
        for (int i = 0; i < NVW; ++i) {
          const int nt = i * WPM + wsub;
          if (nt < NV) {
            uint32_t bf[2];
            ldsm_x2_t(bf, sV + (ks * 16 + lane % 16) * DVA + nt * 8);
#pragma unroll
            for (int s = 0; s < NS; ++s)
              if (s == 0 || pass == 0) mma::mma16816<T>(acc[i], af[s], bf[0], bf[1]);
          }
        }
      }
#pragma unroll
      for (int i = 0; i < NVW; ++i) {
        const int nt = i * WPM + wsub;
        if (nt < NV) {
          float* o0 = out + f * DVA + nt * 8 + 2 * tq;
          float* o1 = o0 + 8 * DVA;
          if (pass == 0) {
            *reinterpret_cast<float2*>(o0) = make_float2(acc[i][0], acc[i][1]);
            *reinterpret_cast<float2*>(o1) = make_float2(acc[i][2], acc[i][3]);
          } else {  // this thread's own values of pass 0
            if (isnan(o0[0]) && !isnan(acc[i][0])) o0[0] = acc[i][0];
            if (isnan(o0[1]) && !isnan(acc[i][1])) o0[1] = acc[i][1];
            if (isnan(o1[0]) && !isnan(acc[i][2])) o1[0] = acc[i][2];
            if (isnan(o1[1]) && !isnan(acc[i][3])) o1[1] = acc[i][3];
          }
        }
      }
    }
    __syncthreads();  // the tiles are rewritten for the next block
  }
}

/// In place over P: P[item][c] becomes the state before chunk c; the state after the last chunk goes to
/// state_out / z_out. One thread per state element, chunks in order.
template <int D, int DV>
__global__ void scan_kernel(const Args a, float* P) {
  constexpr int DVA = DV + 8;
  constexpr int64_t E = static_cast<int64_t>(D) * DVA;
  const int64_t total = a.B * a.Hkv * E, step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const int64_t item = i / E, e = i % E, f = e / DVA, n = e % DVA, b = item / a.Hkv, hkv = item % a.Hkv;
    float s = 0.f;
    if (n < DV && a.s_in) s = a.s_in[b * a.sis[0] + hkv * a.sis[1] + f * a.sis[2] + n * a.sis[3]];
    if (n == DV && a.z_in) s = a.z_in[b * a.zis[0] + hkv * a.zis[1] + f * a.zis[2]];
    const int64_t L = key_count(a, b);
    float* p = P + item * a.nch * E + e;
    // Four chunks at a time: their loads are issued before the dependent adds.
    int64_t c = 0;
    for (; c + 4 <= a.nch; c += 4) {
      float x[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) x[u] = p[(c + u) * E];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        p[(c + u) * E] = s;
        if ((c + u) * a.C < L) s += x[u];  // a chunk without allowed keys leaves the state as it is
      }
    }
    for (; c < a.nch; ++c) {
      const float x = p[c * E];
      p[c * E] = s;
      if (c * a.C < L) s += x;
    }
    if (n < DV && a.s_out) a.s_out[b * a.sos[0] + hkv * a.sos[1] + f * a.sos[2] + n * a.sos[3]] = s;
    if (n == DV && a.z_out) a.z_out[b * a.zos[0] + hkv * a.zos[1] + f * a.zos[2]] = s;
  }
}

template <class T, int D, int DV, int C>
struct OutShape {
  using S = Shape<T, D, DV>;
  static constexpr bool kBF = std::is_same<T, bf16_t>::value;  // phi(Q) in T is its bfloat16 high part
  static constexpr int NW = C / 16, kThreads = 32 * NW, NT = C / 8;
  // phi(Q) bfloat16 hi and lo, phi(Q) in T (float16 only), phi(K), [V | 1], a slice of P (bfloat16 hi, lo).
  static constexpr std::size_t kSmem =
      sizeof(uint16_t) * (static_cast<std::size_t>(kBF ? 3 : 4) * C * S::LDD + static_cast<std::size_t>(C) * S::DVA +
                          2 * static_cast<std::size_t>(S::FB) * S::DVA);
};

/// o += q P for k-step kk (state rows 16 kk ..) of a state slice in bfloat16 hi / lo parts (sPh, sPl:
/// [rows][DVA]) and the query's A fragments qh / ql: three products, q_lo p_hi dropped where the slice holds a
/// NaN / infinite value (pbad: its low part is 0 and q_lo, often 0, times the infinite high part would make
/// NaN where the CPU's float32 product gives the infinity). Shared with performer_mma2.cuh and
/// performer_causal_mma.cuh.
template <int NV, int DVA>
__device__ __forceinline__ void add_state_hilo(float (&o)[NV][4], const uint32_t (&qh)[4], const uint32_t (&ql)[4],
                                               const bf16_t* sPh, const bf16_t* sPl, int kk, int lane, bool pbad) {
#pragma unroll
  for (int n = 0; n < NV; ++n) {
    uint32_t ph[2], pl[2];
    ldsm_x2_t(ph, sPh + (kk * 16 + lane % 16) * DVA + n * 8);
    ldsm_x2_t(pl, sPl + (kk * 16 + lane % 16) * DVA + n * 8);
    mma::mma16816<bf16_t>(o[n], qh, ph[0], ph[1]);
    mma::mma16816<bf16_t>(o[n], qh, pl[0], pl[1]);
    if (!pbad) mma::mma16816<bf16_t>(o[n], ql, ph[0], ph[1]);
  }
}

/// O = 2^e (O 2^-e + s' [V | 1]), s' = s 2^-e, for one warp's 16 rows (r0, r1: this thread's two) of a causal
/// chunk: pk the scaled scores as A operands (key tiles kt < warp in full, the diagonal tile kt = warp masked;
/// with a NaN / infinite value in V (vbad) the diagonal tile goes element by element, masked pairs skipped),
/// sV the chunk's [V | 1 | 0] rows (pitch DVA). Shared by out_kernel and performer_causal_mma.cuh.
template <class T, int NV, int NW, int DVA>
__device__ __forceinline__ void add_scores_v(float (&o)[NV][4], const uint32_t (&pk)[NW][4], const T* sV, bool vbad,
                                             int e0, int e1, float dn0, float dn1, int warp, int lane, int r0,
                                             int r1) {
  const int tq = lane % 4;
  if (e0 | e1) {
#pragma unroll
    for (int n = 0; n < NV; ++n) {
      o[n][0] *= dn0;
      o[n][1] *= dn0;
      o[n][2] *= dn1;
      o[n][3] *= dn1;
    }
  }
#pragma unroll
  for (int kt = 0; kt < NW; ++kt) {
    if (kt < warp || (kt == warp && !vbad)) {
#pragma unroll
      for (int n = 0; n < NV; ++n) {
        uint32_t bv[2];
        ldsm_x2_t(bv, sV + (kt * 16 + lane % 16) * DVA + n * 8);
        mma::mma16816<T>(o[n], pk[kt], bv[0], bv[1]);
      }
    }
  }
  if (vbad) {
    uint32_t dk[4];  // the diagonal tile's scores (pk[warp], selected with constant indices)
#pragma unroll
    for (int r = 0; r < 4; ++r) dk[r] = 0u;
#pragma unroll
    for (int kt = 0; kt < NW; ++kt)
      if (kt == warp)
#pragma unroll
        for (int r = 0; r < 4; ++r) dk[r] = pk[kt][r];
#pragma unroll
    for (int hf = 0; hf < 2; ++hf)
#pragma unroll 1
    for (int c8 = 0; c8 < 8; ++c8) {
      // Score (row, key warp 16 + 8 hf + c8): n-tile half hf, column c8, held by lane tq = c8 / 2.
      const int src = (lane & ~3) | (c8 / 2), j = warp * 16 + hf * 8 + c8;
      const float s0 = unpack16<T>(__shfl_sync(0xffffffffu, dk[2 * hf], src), c8 & 1);
      const float s1 = unpack16<T>(__shfl_sync(0xffffffffu, dk[2 * hf + 1], src), c8 & 1);
#pragma unroll
      for (int n = 0; n < NV; ++n) {
        const float v0 = to_acc<float>(sV[j * DVA + n * 8 + 2 * tq]);
        const float v1 = to_acc<float>(sV[j * DVA + n * 8 + 2 * tq + 1]);
        if (j <= r0) {
          o[n][0] += s0 * v0;
          o[n][1] += s0 * v1;
        }
        if (j <= r1) {
          o[n][2] += s1 * v0;
          o[n][3] += s1 * v1;
        }
      }
    }
  }
  if (e0 | e1) {
    const float up0 = pow2(e0), up1 = pow2(e1);
#pragma unroll
    for (int n = 0; n < NV; ++n) {
      o[n][0] *= up0;
      o[n][1] *= up0;
      o[n][2] *= up1;
      o[n][3] *= up1;
    }
  }
}

template <class T, int D, int DV, int C>
__global__ void __launch_bounds__(C * 2) out_kernel(const Args a, const float* P) {
  using S = Shape<T, D, DV>;
  using O = OutShape<T, D, DV, C>;
  constexpr int LDD = S::LDD, DVA = S::DVA, NV = S::NV, FB = S::FB, NFB = S::NFB, NW = O::NW, NT = O::NT;
  constexpr int NTHR = O::kThreads;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16_t* sQh = reinterpret_cast<bf16_t*>(smem_raw);  // [C][LDD]
  bf16_t* sQl = sQh + C * LDD;                         // [C][LDD]
  T* sK = reinterpret_cast<T*>(sQl + C * LDD);         // [C][LDD]
  T* sV = sK + C * LDD;                                // [C][DVA]
  bf16_t* sPh = reinterpret_cast<bf16_t*>(sV + C * DVA);  // [FB][DVA]
  bf16_t* sPl = sPh + FB * DVA;                           // [FB][DVA]
  T* sQ = O::kBF ? reinterpret_cast<T*>(sQh) : reinterpret_cast<T*>(sPl + FB * DVA);  // [C][LDD]
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, gq = lane / 4, tq = lane % 4;
  const int64_t total = a.B * a.Hq * a.nch, E = static_cast<int64_t>(D) * DVA;
  const int r0 = warp * 16 + gq, r1 = r0 + 8;  // this thread's rows of the chunk
  for (int64_t blk = blockIdx.x; blk < total; blk += gridDim.x) {
    const int64_t c = blk % a.nch, bh = blk / a.nch, b = bh / a.Hq, h = bh % a.Hq, hkv = h / a.G;
    const int64_t item = b * a.Hkv + hkv, j0 = c * C;
    const int tn = static_cast<int>(a.S - j0 < C ? a.S - j0 : C);
    const int kn = chunk_keys(j0, C, a.S, key_count(a, b));
    const T* qg = static_cast<const T*>(a.q) + b * a.qs[0] + h * a.qs[1] + j0 * a.qs[2];
    const T* kg = static_cast<const T*>(a.k) + b * a.ks[0] + hkv * a.ks[1] + j0 * a.ks[2];
    const T* vg = static_cast<const T*>(a.v) + b * a.vs[0] + hkv * a.vs[1] + j0 * a.vs[2];
    for (int i = tid; i < C * (D / 8); i += NTHR) {
      const int t = i / (D / 8), f8 = i % (D / 8) * 8;
      float x[8], y[8];
      load8<T>(qg + t * a.qs[2], a.qs[3], a.qvec, t < tn, f8, x);
      load8<T>(kg + t * a.ks[2], a.ks[3], a.kvec, t < kn, f8, y);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        x[e] = t < tn ? phi(a.map, x[e]) : 0.f;
        y[e] = t < kn ? phi(a.map, y[e]) : 0.f;
      }
      if (!O::kBF) store8<T>(sQ + t * LDD + f8, x);
      store8<T>(sK + t * LDD + f8, y);
      float h[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) h[e] = to_acc<float>(split_part<bf16_t>(x[e]));  // x becomes the remainder
      store8<bf16_t>(sQh + t * LDD + f8, h);
      store8<bf16_t>(sQl + t * LDD + f8, x);
    }
    bool bad = false;
    for (int i = tid; i < C * (DVA / 8); i += NTHR) {
      const int j = i / (DVA / 8), n8 = i % (DVA / 8) * 8;
      bad |= load_v8<T, DV>(a, vg, j, kn, n8, sV + j * DVA + n8);
    }
    // vbad: an allowed key of the chunk has a NaN / infinite value. Then the diagonal key tile of each warp
    // (the only one with masked pairs) is summed element by element, skipping the masked pairs: 0 * NaN
    // must not carry a future key's value into a past row (as on the CPU).
    const bool vbad = __syncthreads_or(bad) != 0;

    // Scores of this warp's rows against keys 0 .. 16 warp + 15 (key pairs of n-tiles np <= warp).
    float sc[NT][4];
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) sc[n][e] = 0.f;
#pragma unroll 1
    for (int ks = 0; ks < D / 16; ++ks) {
      uint32_t aq[4];
      mma::ldsm_x4(aq, sQ + (warp * 16 + lane % 16) * LDD + ks * 16 + (lane / 16) * 8);
#pragma unroll
      for (int np = 0; np < NW; ++np) {
        if (np <= warp) {
          uint32_t bb[4];
          mma::ldsm_x4(bb, sK + (np * 16 + (lane / 16) * 8 + lane % 8) * LDD + ks * 16 + ((lane / 8) % 2) * 8);
          mma::mma16816<T>(sc[2 * np], aq, bb[0], bb[1]);
          mma::mma16816<T>(sc[2 * np + 1], aq, bb[2], bb[3]);
        }
      }
    }
    // Causal mask (j > t: 0) and each row's largest |s|.
    float mx0 = 0.f, mx1 = 0.f;
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int t = e < 2 ? r0 : r1, j = n * 8 + 2 * tq + (e & 1);
        if (j > t) sc[n][e] = 0.f;
        const float m = fabsf(sc[n][e]);
        if (e < 2)
          mx0 = fmaxf(mx0, m);
        else
          mx1 = fmaxf(mx1, m);
      }
    quad_fmax(mx0, mx1);
    // Exponent e >= 0 with max |s| 2^-e < 2^15 (finite maxima; the scaling by 2^-e is exact).
    const int e0 = scale_exponent(mx0), e1 = scale_exponent(mx1);
    const float dn0 = pow2(-e0), dn1 = pow2(-e1);
    uint32_t pk[NW][4];  // the scores as the A operand of the PV product, k-step kt = keys 16 kt ..
    pack_scores<T, NW>(pk, sc, dn0, dn1);

    // O = phi(Q) P_c, the state in slices of FB features (bfloat16 hi / lo parts).
    float o[NV][4];
#pragma unroll
    for (int n = 0; n < NV; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[n][e] = 0.f;
    const float* Pc = P + (item * a.nch + c) * E;
    for (int sl = 0; sl < NFB; ++sl) {
      if (sl > 0) __syncthreads();  // every warp is done with the previous slice
      bool pb = false;
      for (int i = tid * 4; i < FB * DVA; i += NTHR * 4) {
        const float4 w = *reinterpret_cast<const float4*>(Pc + static_cast<int64_t>(sl) * FB * DVA + i);
        float x[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int e = 0; e < 4; ++e) pb |= !(fabsf(x[e]) <= FLT_MAX);
        alignas(8) bf16_t hi[4], lo[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          hi[e] = split_part<bf16_t>(x[e]);
          lo[e] = from_acc<bf16_t, float>(x[e]);
        }
        *reinterpret_cast<uint2*>(sPh + i) = *reinterpret_cast<const uint2*>(hi);
        *reinterpret_cast<uint2*>(sPl + i) = *reinterpret_cast<const uint2*>(lo);
      }
      // A NaN / infinite state value: its low part is 0, and q_lo (often 0) times the infinite high part
      // would make NaN where the CPU's float32 product gives the infinity; such slices drop q_lo p_hi.
      const bool pbad = __syncthreads_or(pb) != 0;
#pragma unroll 1
      for (int kk = 0; kk < FB / 16; ++kk) {
        const int col = sl * FB + kk * 16 + (lane / 16) * 8;
        uint32_t qh[4], ql[4];
        mma::ldsm_x4(qh, sQh + (warp * 16 + lane % 16) * LDD + col);
        mma::ldsm_x4(ql, sQl + (warp * 16 + lane % 16) * LDD + col);
        add_state_hilo<NV, DVA>(o, qh, ql, sPh, sPl, kk, lane, pbad);
      }
    }
    // O = 2^e (O 2^-e + s' [V | 1]) with s' = s 2^-e.
    add_scores_v<T, NV, NW, DVA>(o, pk, sV, vbad, e0, e1, dn0, dn1, warp, lane, r0, r1);
    // The denominators: column DV (n-tile NV - 1, held by the quad's thread tq = 0).
    const float den0 = __shfl_sync(0xffffffffu, o[NV - 1][0], lane & ~3);
    const float den1 = __shfl_sync(0xffffffffu, o[NV - 1][2], lane & ~3);
    T* og = static_cast<T*>(a.out) + b * a.os[0] + h * a.os[1] + j0 * a.os[2];
#pragma unroll
    for (int n = 0; n < DV / 8; ++n) {
      const int64_t d = n * 8 + 2 * tq;
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        const int t = hr ? r1 : r0;
        if (t >= tn) continue;
        const float den = hr ? den1 : den0;
        float x0 = o[n][2 * hr], x1 = o[n][2 * hr + 1];
        if (a.normalize) {
          x0 = math::linear_output(x0, den, a.eps);
          x1 = math::linear_output(x1, den, a.eps);
        }
        T* dst = og + t * a.os[2];
        if (a.ovec) {
          *reinterpret_cast<uint32_t*>(dst + d) = mma::pack2<T>(x0, x1);
        } else {
          dst[d * a.os[3]] = from_acc<T, float>(x0);
          dst[(d + 1) * a.os[3]] = from_acc<T, float>(x1);
        }
      }
    }
    __syncthreads();  // the tiles are rewritten for the next block
  }
}

inline unsigned grid_of(int64_t blocks) {
  return static_cast<unsigned>(blocks < (int64_t{1} << 30) ? blocks : (int64_t{1} << 30));
}

template <class K>
bool smem_ok(K kernel, std::size_t bytes, int device) {
  int optin = 0;
  ATTNKIT_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  if (bytes > static_cast<std::size_t>(optin)) return false;
  allow_dynamic_smem(reinterpret_cast<const void*>(kernel), device, bytes);
  return true;
}

template <class T, int D, int DV, int C>
bool run(const LinearProblem& p, cudaStream_t stream) {
  Args a{};
  a.B = p.B;
  a.Hq = p.Hq;
  a.Hkv = p.Hkv;
  a.G = p.group();
  a.S = p.S;
  a.C = C;
  a.nch = (p.S + C - 1) / C;
  copy_linear_operands(a, p);
  auto vec = [](const void* x, const int64_t (&st)[4]) {
    return st[3] == 1 && reinterpret_cast<std::uintptr_t>(x) % 16 == 0 && st[0] % 8 == 0 && st[1] % 8 == 0 &&
           st[2] % 8 == 0;
  };
  a.qvec = vec(p.q.data, p.q.stride);
  a.kvec = vec(p.k.data, p.k.stride);
  a.vvec = vec(p.v.data, p.v.stride);
  a.ovec = p.out_stride[3] == 1 && reinterpret_cast<std::uintptr_t>(p.out) % 4 == 0 && p.out_stride[0] % 2 == 0 &&
           p.out_stride[1] % 2 == 0 && p.out_stride[2] % 2 == 0;
  a.out = p.out;
  a.map = p.map;
  a.normalize = p.normalize;
  a.eps = static_cast<float>(p.eps);  // as the CPU: eps rounded once to the accumulator type
  a.len = p.key_lengths.present ? p.key_lengths.data : nullptr;
  a.len_dtype = p.key_lengths.dtype;
  a.len_stride = p.key_lengths.stride[0];
  a.s_in = p.state_in.present ? static_cast<const float*>(p.state_in.data) : nullptr;
  a.z_in = p.state_in.present ? static_cast<const float*>(p.z_in.data) : nullptr;
  a.s_out = static_cast<float*>(p.state_out);
  a.z_out = static_cast<float*>(p.z_out);

  using S = Shape<T, D, DV>;
  using O = OutShape<T, D, DV, C>;
  const std::size_t inc_bytes = inc_smem<T, D, DV>(C);
  if (!smem_ok(inc_kernel<T, D, DV>, inc_bytes, p.device_index) ||
      !smem_ok(out_kernel<T, D, DV, C>, O::kSmem, p.device_index))
    return false;
  const int64_t items = p.B * p.Hkv, E = static_cast<int64_t>(D) * S::DVA;
  if (items * a.nch * S::NFB >= (int64_t{1} << 31)) return false;  // inc_kernel's 32-bit block index
  Workspace ws(sizeof(float) * static_cast<std::size_t>(items * a.nch * E), stream);
  float* P = ws.as<float>();
  if (a.nch > 0) {
    inc_kernel<T, D, DV><<<grid_of(items * a.nch * S::NFB), 128, inc_bytes, stream>>>(a, P);
    ATTNKIT_CUDA_CHECK_LAUNCH();
  }
  scan_kernel<D, DV><<<grid_of((items * E + 255) / 256), 256, 0, stream>>>(a, P);
  ATTNKIT_CUDA_CHECK_LAUNCH();
  if (a.nch > 0 && p.Hq > 0) {
    out_kernel<T, D, DV, C><<<grid_of(p.B * p.Hq * a.nch), O::kThreads, O::kSmem, stream>>>(a, P);
    ATTNKIT_CUDA_CHECK_LAUNCH();
  }
  return true;
}

}  // namespace linmma

template <class T, int D>
bool run_linear_mma(const LinearProblem& p, int64_t C, cudaStream_t stream) {
  if (C != 64 && C != 128) return false;
  switch (p.Dv) {
    case 32: return C == 64 ? linmma::run<T, D, 32, 64>(p, stream) : linmma::run<T, D, 32, 128>(p, stream);
    case 64: return C == 64 ? linmma::run<T, D, 64, 64>(p, stream) : linmma::run<T, D, 64, 128>(p, stream);
    case 128: return C == 64 ? linmma::run<T, D, 128, 64>(p, stream) : linmma::run<T, D, 128, 128>(p, stream);
    default: return false;
  }
}

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
