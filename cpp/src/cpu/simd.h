#pragma once
// Portable SIMD for the CPU kernels: GCC/Clang vector extensions, so one kernel source compiles to SSE2,
// AVX2 or AVX-512 code depending on the -march of the translation unit including it (see
// attnkit/math/config.h for why everything here sits in the per-ISA inline namespace).
//
// Only what the kernels need: unaligned load/store, broadcast, exp2 with exact zeros far below range,
// tanh, horizontal max/sum, and float<->storage conversion.

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "attnkit/math/config.h"
#include "attnkit/math/dtypes.h"
#include "attnkit/math/softmax.h"

#if defined(__SSE2__)
// GCC 12 reports its own _mm512_undefined_* idiom (`__m512 __Y = __Y;`) inside avx512fintrin.h as
// (maybe-)uninitialized once inlined (GCC bug 105593, fixed in 12.3 / 13): silence it for that header only.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#else
#include <immintrin.h>
#endif
#endif

/// The asm constraint that pins a vector to a register (`asm("" : ATTNKIT_VREG(x))`, so that GCC cannot fold
/// its load into every use): "+v", or "+m" where AVX-512 is emulated (cpu/avx512_emulation.h) and no
/// register of the target holds a 512-bit vector.
#if defined(ATTNKIT_AVX512_EMULATED)
#define ATTNKIT_VREG "+m"
#else
#define ATTNKIT_VREG "+v"
#endif

namespace attnkit {
namespace detail {
namespace cpu {
inline namespace ATTNKIT_ISA_NAMESPACE {

template <class T>
struct LaneIntOf;
template <>
struct LaneIntOf<float> {
  using type = int32_t;
};
template <>
struct LaneIntOf<double> {
  using type = int64_t;
};

template <class T, int W>
struct Simd {
  using I = typename LaneIntOf<T>::type;
  typedef T V __attribute__((vector_size(sizeof(T) * W)));
  typedef I VI __attribute__((vector_size(sizeof(T) * W)));
  static constexpr int kW = W;

  static inline V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  }
  static inline void store(T* p, V v) { std::memcpy(p, &v, sizeof(V)); }
  static inline VI loadi(const I* p) {
    VI v;
    std::memcpy(&v, p, sizeof(VI));
    return v;
  }
  static inline V set1(T x) { return V{} + x; }
  static inline VI set1i(I x) { return VI{} + x; }
  static inline V zero() { return V{}; }
  static inline V vmax(V a, V b) { return a > b ? a : b; }
  static inline V vmin(V a, V b) { return a < b ? a : b; }
  /// Sum of the lanes in lane order, accumulated in R from 0 (a fixed order: results never depend on the
  /// machine's reduction tree).
  template <class R = T>
  static inline R hsum(V v) {
    R s = R(0);
    for (int i = 0; i < W; ++i) s += static_cast<R>(v[i]);
    return s;
  }
  static inline T hmax(V v) {
    T m = v[0];
    for (int i = 1; i < W; ++i) m = v[i] > m ? v[i] : m;
    return m;
  }
  static inline V to_float(VI v) { return __builtin_convertvector(v, V); }

  /// min(hi, max(lo, x)), NaN passing: x86 max/min return their second operand when either is NaN, so
  /// with x second they take two instructions (`x < lo ? lo : x` means the same but compiles to a
  /// compare and a blend per bound).
  static inline V clamp_nan_passing(V x, T lo, T hi);

  /// 2^x: exactly 0 for x < -126.5 (float; -1022.5 double), so masked scores (-inf) give exactly 0; a
  /// subnormal on [-126.5, -126); saturation above the range; NaN for NaN (IEEE propagation: a NaN score
  /// must reach the softmax sum). Max relative error ~1 ulp (float) on the range the kernels use.
  static inline V exp2(V x);

  /// 2^x for x <= 0, -inf or NaN (the exact kernel's online softmax: s - max): as exp2 (exactly 0 at or
  /// below -127 (float; -1023 double), NaN for NaN) without the upper clamp, with the exponent bias folded
  /// into the rounding constant, and for float a degree-5 polynomial (max relative error 1.7e-7, exp2's
  /// degree 6: 7.9e-8). 512-bit vectors: exp2 itself. Always inlined (GCC keeps exp2 out of line in the
  /// attention files: a call per vector).
  __attribute__((always_inline)) static inline V exp2_nonpos(V x);

  /// max(x, lo), NaN passing (x86 max returns its second operand when either is NaN).
  __attribute__((always_inline)) static inline V max_nan_passing(V x, T lo);

  /// e^x = 2^(x log2 e); callers pass small arguments (s - max), where the product's rounding is tiny.
  static inline V exp(V x) { return math::exp_via_exp2<V, T>(x, [](V y) { return exp2(y); }); }

  /// tanh(x), within about 2 ulp (float; 8 ulp double) relative. 1 - 2 / (e^(2|x|) + 1) through exp2 has a
  /// few ulp of 1 of absolute error, which is that relative error only where tanh is not small: below
  /// |x| = 0.4 (float; 0.125 double) the odd Taylor series through x^15 serves instead (truncation below
  /// 1e-9 / 1e-17 relative there). Without it softcap c tanh(s / c) at a large cap c, where s / c is tiny,
  /// lost the scores to cancellation (c = 1e6 in float: 5% of a score; s / c < 3e-8: every score 0).
  /// When every lane is below the switch (softcaps' usual scores: |s| < 0.4 c) the series alone runs, no
  /// exponential or division: the same values, cheaper than before the series was added.
  static inline V tanh(V x) {
    constexpr T kSwitch = static_cast<T>(std::is_same<T, double>::value ? 0.125 : 0.4);
    const V ax = x < V{} ? -x : x;
    const V x2 = x * x;
    V p = V{} + static_cast<T>(-929569.0 / 638512875.0);
    p = p * x2 + static_cast<T>(21844.0 / 6081075.0);
    p = p * x2 + static_cast<T>(-1382.0 / 155925.0);
    p = p * x2 + static_cast<T>(62.0 / 2835.0);
    p = p * x2 + static_cast<T>(-17.0 / 315.0);
    p = p * x2 + static_cast<T>(2.0 / 15.0);
    p = p * x2 + static_cast<T>(-1.0 / 3.0);
    const V small = x + x * (x2 * p);
    if (all_less(ax, kSwitch)) return small;
    const V e = exp2(ax * static_cast<T>(2.0 * 1.4426950408889634073599246810019));  // e^(2|x|)
    V t = static_cast<T>(1) - static_cast<T>(2) / (e + static_cast<T>(1));
    t = x < V{} ? -t : t;
    return ax < kSwitch ? small : t;
  }

  /// Whether every lane of a is below b (false for a NaN lane).
  static inline bool all_less(V a, T b);
};

namespace simd_impl {
// 2^f on [-0.5, 0.5]: degree-6 minimax-style fit for float (max rel. error 1e-7 in float32 Horner form),
// degree-13 Taylor series of e^(f ln 2) for double (truncation error < 5e-18).
template <class V>
inline V exp2_poly(V f, float) {
  V p = V{} + 1.5337580407503992e-04f;
  p = p * f + 1.3399859890341759e-03f;
  p = p * f + 9.618519805371761e-03f;
  p = p * f + 5.550329014658928e-02f;
  p = p * f + 2.4022646248340607e-01f;
  p = p * f + 6.931471824645996e-01f;
  p = p * f + 1.0f;
  return p;
}
/// Degree 5 for float (Simd::exp2_nonpos): a relative-error minimax fit with p(0) = 1, max relative error
/// 9e-8 exactly, 1.7e-7 in float32 Horner form (degree 6 above: 7.9e-8).
template <class V>
__attribute__((always_inline)) inline V exp2_poly5(V f) {
  V p = V{} + 1.3264698209241033e-03f;
  p = p * f + 9.671509265899658e-03f;
  p = p * f + 5.550733953714371e-02f;
  p = p * f + 2.4022242426872253e-01f;
  p = p * f + 6.931470036506653e-01f;
  p = p * f + 1.0f;
  return p;
}
template <class V>
inline V exp2_poly(V f, double) {
  // c_k = ln(2)^k / k!
  constexpr double c[14] = {1.0,
                            0.6931471805599453,
                            0.2402265069591007,
                            0.05550410866482158,
                            0.009618129107628477,
                            0.0013333558146428443,
                            0.00015403530393381606,
                            1.525273380405984e-05,
                            1.3215486790144307e-06,
                            1.0178086009239699e-07,
                            7.054911620801123e-09,
                            4.445538271870811e-10,
                            2.567843599348821e-11,
                            1.3691488853904124e-12};
  V p = V{} + c[13];
  for (int k = 12; k >= 0; --k) p = p * f + c[k];
  return p;
}
template <class T>
struct Exp2Consts;
// lo = -bias: an argument clamped there rounds to n = -bias, whose biased exponent field is 0, so 2^n
// is built as +0.0 and p * 2^n is exactly 0 (NaN stays NaN): no select for the masked scores.
template <>
struct Exp2Consts<float> {
  static constexpr float lo = -127.0f, hi = 127.0f, magic = 12582912.0f;  // 1.5 * 2^23
  static constexpr int shift = 23, bias = 127;
};
template <>
struct Exp2Consts<double> {
  static constexpr double lo = -1023.0, hi = 1023.0, magic = 6755399441055744.0;  // 1.5 * 2^52
  static constexpr int shift = 52, bias = 1023;
};
}  // namespace simd_impl

template <class T, int W>
inline typename Simd<T, W>::V Simd<T, W>::clamp_nan_passing(V x, T lo, T hi) {
  constexpr bool f = std::is_same<T, float>::value;
#if defined(__AVX512F__)
  if constexpr (sizeof(V) == 64 && f) return (V)_mm512_min_ps((__m512)set1(hi), _mm512_max_ps((__m512)set1(lo), (__m512)x));
  if constexpr (sizeof(V) == 64 && !f) return (V)_mm512_min_pd((__m512d)set1(hi), _mm512_max_pd((__m512d)set1(lo), (__m512d)x));
#endif
#if defined(__AVX__)
  if constexpr (sizeof(V) == 32 && f) return (V)_mm256_min_ps((__m256)set1(hi), _mm256_max_ps((__m256)set1(lo), (__m256)x));
  if constexpr (sizeof(V) == 32 && !f) return (V)_mm256_min_pd((__m256d)set1(hi), _mm256_max_pd((__m256d)set1(lo), (__m256d)x));
#endif
#if defined(__SSE2__)
  if constexpr (sizeof(V) == 16 && f) return (V)_mm_min_ps((__m128)set1(hi), _mm_max_ps((__m128)set1(lo), (__m128)x));
  if constexpr (sizeof(V) == 16 && !f) return (V)_mm_min_pd((__m128d)set1(hi), _mm_max_pd((__m128d)set1(lo), (__m128d)x));
#endif
  const V xc = x < lo ? set1(lo) : x;
  return xc > hi ? set1(hi) : xc;
}

template <class T, int W>
inline bool Simd<T, W>::all_less(V a, T b) {
  constexpr bool f = std::is_same<T, float>::value;
#if defined(__AVX512F__)
  if constexpr (sizeof(V) == 64 && f) return _mm512_cmp_ps_mask((__m512)a, (__m512)set1(b), _CMP_LT_OQ) == 0xffff;
  if constexpr (sizeof(V) == 64 && !f) return _mm512_cmp_pd_mask((__m512d)a, (__m512d)set1(b), _CMP_LT_OQ) == 0xff;
#endif
#if defined(__AVX__)
  if constexpr (sizeof(V) == 32 && f) return _mm256_movemask_ps(_mm256_cmp_ps((__m256)a, (__m256)set1(b), _CMP_LT_OQ)) == 0xff;
  if constexpr (sizeof(V) == 32 && !f) return _mm256_movemask_pd(_mm256_cmp_pd((__m256d)a, (__m256d)set1(b), _CMP_LT_OQ)) == 0xf;
#endif
#if defined(__SSE2__)
  if constexpr (sizeof(V) == 16 && f) return _mm_movemask_ps(_mm_cmplt_ps((__m128)a, (__m128)set1(b))) == 0xf;
  if constexpr (sizeof(V) == 16 && !f) return _mm_movemask_pd(_mm_cmplt_pd((__m128d)a, (__m128d)set1(b))) == 0x3;
#endif
  for (int i = 0; i < W; ++i)
    if (!(a[i] < b)) return false;
  return true;
}

template <class T, int W>
inline typename Simd<T, W>::V Simd<T, W>::exp2(V x) {
  using C = simd_impl::Exp2Consts<T>;
#if defined(__AVX512F__)
  if constexpr (std::is_same<T, float>::value && W == 16) {
    // vscalefps scales by 2^n over the whole range (denormals and underflow to 0 included), so only the
    // lower clamp that keeps f finite for x = -inf is needed.
    const V xc = clamp_nan_passing(x, -160.0f, 128.0f);
    __m512 xv;
    std::memcpy(&xv, &xc, 64);
    // (maskz forms: the unmasked ones trip GCC 12's -Wmaybe-uninitialized inside immintrin.h)
    const __m512 n = _mm512_maskz_roundscale_ps(0xffff, xv, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    V f;
    const __m512 fv = _mm512_sub_ps(xv, n);
    std::memcpy(&f, &fv, 64);
    const V p = simd_impl::exp2_poly(f, T{});
    __m512 pv;
    std::memcpy(&pv, &p, 64);
    const __m512 r = _mm512_maskz_scalef_ps(0xffff, pv, n);
    V out;
    std::memcpy(&out, &r, 64);
    return out;
  }
#endif
  // NaN passes the clamps; p is then NaN and the float multiply by 2^n keeps it NaN (adding n to p's
  // exponent bits would not).
  const V xc = clamp_nan_passing(x, C::lo, C::hi);
  const V t = xc + C::magic;
  const V n = t - C::magic;  // round(xc) as a float
  const V p = simd_impl::exp2_poly(xc - n, T{});
  // 2^n from the biased exponent: (round(xc) + bias) << shift, with the bias folded into the constant.
  const VI e = (VI)t - ((VI)set1(C::magic) - static_cast<I>(C::bias));
  return p * (V)(e << C::shift);
}

template <class T, int W>
__attribute__((always_inline)) inline typename Simd<T, W>::V Simd<T, W>::max_nan_passing(V x, T lo) {
  constexpr bool f = std::is_same<T, float>::value;
#if defined(__AVX512F__)
  if constexpr (sizeof(V) == 64 && f) return (V)_mm512_max_ps((__m512)set1(lo), (__m512)x);
  if constexpr (sizeof(V) == 64 && !f) return (V)_mm512_max_pd((__m512d)set1(lo), (__m512d)x);
#endif
#if defined(__AVX__)
  if constexpr (sizeof(V) == 32 && f) return (V)_mm256_max_ps((__m256)set1(lo), (__m256)x);
  if constexpr (sizeof(V) == 32 && !f) return (V)_mm256_max_pd((__m256d)set1(lo), (__m256d)x);
#endif
#if defined(__SSE2__)
  if constexpr (sizeof(V) == 16 && f) return (V)_mm_max_ps((__m128)set1(lo), (__m128)x);
  if constexpr (sizeof(V) == 16 && !f) return (V)_mm_max_pd((__m128d)set1(lo), (__m128d)x);
#endif
  return x < lo ? set1(lo) : x;
}

template <class T, int W>
__attribute__((always_inline)) inline typename Simd<T, W>::V Simd<T, W>::exp2_nonpos(V x) {
  using C = simd_impl::Exp2Consts<T>;
#if defined(__AVX512F__)
  // 512-bit vectors keep exp2 itself (float: vscalefps, nothing to fold; double: no AVX-512 CPU has run
  // this path yet, so it stays the one that has).
  if constexpr (sizeof(V) == 64) return exp2(x);
#endif
  // t = xc + 1.5 * 2^shift + bias holds round(xc) + bias in its low bits (xc <= 0: at most bias, at least
  // 0), which the shift moves into the exponent field while the constant's own bits shift out: 2^n with no
  // integer subtract; n = -bias (xc = -bias, or -inf clamped there) gives +0.0, so p * 2^n is exactly 0.
  constexpr T magic = C::magic + static_cast<T>(C::bias);
  const V xc = max_nan_passing(x, C::lo);
  const V t = xc + magic;
  const V n = t - magic;
  V p;
  if constexpr (std::is_same<T, float>::value)
    p = simd_impl::exp2_poly5(xc - n);
  else
    p = simd_impl::exp2_poly(xc - n, T{});
  return p * (V)((VI)t << C::shift);
}

/// True when the first n values of rows 0 .. rows-1 (leading dim ld) are all finite: x * 0 is 0 for
/// finite x and NaN for NaN and +-inf. Kernels call it once per chunk before a product whose masked
/// entries are zeros (0 * NaN = NaN would read a masked value into the result).
template <class T, int W>
inline bool rows_finite(const T* x, int64_t ld, int64_t rows, int64_t n) {
  using S = Simd<T, W>;
  typename S::V acc{};
  T tail = T(0);
  const int64_t nw = n / W * W;
  for (int64_t j = 0; j < rows; ++j) {
    const T* r = x + j * ld;
    for (int64_t d = 0; d < nw; d += W) acc += S::load(r + d) * T(0);
    for (int64_t d = nw; d < n; ++d) tail += r[d] * T(0);
  }
  for (int i = 0; i < W; ++i) tail += acc[i];
  return tail == T(0);
}

/// Storage types: how elements of an input array become accumulator values and back.
struct Half {
  uint16_t bits;
};
struct BFloat {
  uint16_t bits;
};

inline float to_acc(float x) { return x; }
inline double to_acc(double x) { return x; }
#if defined(__F16C__)
inline float to_acc(Half x) { return _cvtsh_ss(x.bits); }  // one vcvtph2ps, the same value
#else
inline float to_acc(Half x) { return math::f16_to_float(x.bits); }
#endif
inline float to_acc(BFloat x) { return math::bf16_to_float(x.bits); }

template <class St>
inline St from_acc(float x);
template <>
inline float from_acc<float>(float x) { return x; }
template <>
inline Half from_acc<Half>(float x) { return Half{math::float_to_f16(x)}; }
template <>
inline BFloat from_acc<BFloat>(float x) { return BFloat{math::float_to_bf16(x)}; }
template <class St>
inline St from_acc(double x) {
  return static_cast<St>(x);
}

namespace simd_impl {
typedef uint16_t H4 __attribute__((vector_size(8)));
typedef uint32_t U4 __attribute__((vector_size(16)));
typedef int32_t M4 __attribute__((vector_size(16)));
typedef float F4 __attribute__((vector_size(16)));

/// float16 bits -> float for 4 lanes, exact and bit-identical to math::f16_to_float: the exponent is
/// rebiased in place; inf / NaN get the rest of the float exponent; zeros and subnormals are made normal by
/// one more exponent step, whose 2^-14 an exact subtraction then removes. Portable vector code for the
/// generic build, whose baseline (SSE2, NEON) has no half-precision conversion.
inline void f16_to_float_lanes(const uint16_t* src, float* dst) {
  H4 h;
  std::memcpy(&h, src, sizeof(H4));
  const U4 u = __builtin_convertvector(h, U4);
  const U4 sign = (u & 0x8000u) << 16;
  U4 em = (u & 0x7fffu) << 13;
  const U4 e = em & 0x0f800000u;  // the float16 exponent field, in the float's position
  em += 0x38000000u;              // (127 - 15) << 23
  const U4 special = (U4)(M4)(e == 0x0f800000u), tiny = (U4)(M4)(e == 0u);
  em += special & 0x38000000u;    // inf / NaN: exponent field all ones
  const U4 em_sub = em + 0x00800000u;
  F4 sub;
  std::memcpy(&sub, &em_sub, sizeof(F4));
  sub -= 6.103515625e-05f;  // 2^-14
  U4 sub_bits;
  std::memcpy(&sub_bits, &sub, sizeof(U4));
  const U4 bits = ((tiny & sub_bits) | (~tiny & em)) | sign;
  std::memcpy(dst, &bits, sizeof(U4));
}

/// bfloat16 bits -> float for 4 lanes: the 16 bits become the float's high half (exact).
inline void bf16_to_float_lanes(const uint16_t* src, float* dst) {
  H4 h;
  std::memcpy(&h, src, sizeof(H4));
  const U4 u = __builtin_convertvector(h, U4) << 16;
  std::memcpy(dst, &u, sizeof(U4));
}

/// Lanes per step of the vector conversions of this build, and the step itself.
#if defined(__AVX512F__)
constexpr int kCvtLanes = 16;
inline void cvt_lanes(const Half* s, float* d) {
  _mm512_storeu_ps(d, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s))));
}
inline void cvt_lanes(const BFloat* s, float* d) {
  const __m512i x = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s)));
  _mm512_storeu_si512(d, _mm512_slli_epi32(x, 16));
}
#elif defined(__AVX2__) && defined(__F16C__)
constexpr int kCvtLanes = 8;
inline void cvt_lanes(const Half* s, float* d) {
  _mm256_storeu_ps(d, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s))));
}
inline void cvt_lanes(const BFloat* s, float* d) {
  const __m256i x = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s)));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(d), _mm256_slli_epi32(x, 16));
}
/// 16 bfloat16 -> 16 floats: one 256-bit load, one vpermq (quadwords 0 2 1 3, so each 128-bit lane holds
/// elements 0-3 / 8-11 and 4-7 / 12-15) and two unpacks with zero (each 16 bits into a float's high half),
/// where two cvt_lanes take two vpmovzxwd and two shifts: ~25% fewer cycles per element on Zen 3. Exact.
constexpr int kCvtBf16Lanes = 16;
inline void cvt_bf16_wide(const BFloat* s, float* d) {
  const __m256i x = _mm256_permute4x64_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s)), 0xd8);
  const __m256i z = _mm256_setzero_si256();
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(d), _mm256_unpacklo_epi16(z, x));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + 8), _mm256_unpackhi_epi16(z, x));
}
#else
constexpr int kCvtLanes = 4;
inline void cvt_lanes(const Half* s, float* d) { f16_to_float_lanes(&s->bits, d); }
inline void cvt_lanes(const BFloat* s, float* d) { bf16_to_float_lanes(&s->bits, d); }
#endif
}  // namespace simd_impl

/// dst[i] = to_acc(src[i * stride]) for i < n: the conversion of a row of an operand as its tile is
/// packed. Unit-stride float16 / bfloat16 rows convert a vector at a time (F16C / AVX-512 vcvtph2ps, or
/// a 16-bit shift for bfloat16), so a 16-bit input costs one extra instruction per vector of the packed
/// tile instead of a scalar conversion per element. Exact: the same values as to_acc.
template <class T, class St>
inline void convert_row(const St* src, int64_t stride, int64_t n, T* dst) {
  int64_t i = 0;
  if constexpr (std::is_same<T, float>::value && (std::is_same<St, Half>::value || std::is_same<St, BFloat>::value)) {
    if (stride == 1) {
#if defined(__AVX2__) && defined(__F16C__) && !defined(__AVX512F__)
      if constexpr (std::is_same<St, BFloat>::value)
        for (; i + simd_impl::kCvtBf16Lanes <= n; i += simd_impl::kCvtBf16Lanes)
          simd_impl::cvt_bf16_wide(src + i, dst + i);
#endif
      for (; i + simd_impl::kCvtLanes <= n; i += simd_impl::kCvtLanes) simd_impl::cvt_lanes(src + i, dst + i);
    }
  }
  for (; i < n; ++i) dst[i] = static_cast<T>(to_acc(src[i * stride]));
}

namespace simd_impl {
#if defined(__AVX2__) && defined(__F16C__)
/// 8 floats -> 8 float16 / bfloat16 bits at d, round to nearest even, bit-identical to from_acc: vcvtps2ph
/// for float16 and the integer rounding of math::float_to_bf16 for bfloat16. A vector holding a NaN
/// returns false (nothing stored) and goes to the scalar conversion, whose NaN bits differ from the
/// hardware's.
inline bool round_lanes(__m256 x, Half* d) {
  if (_mm256_movemask_ps(_mm256_cmp_ps(x, x, _CMP_UNORD_Q))) return false;
  _mm_storeu_si128(reinterpret_cast<__m128i*>(d), _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  return true;
}
inline bool round_lanes(__m256 x, BFloat* d) {
  if (_mm256_movemask_ps(_mm256_cmp_ps(x, x, _CMP_UNORD_Q))) return false;
  const __m256i u = _mm256_castps_si256(x);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), odd), 16);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(d),
                   _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)));
  return true;
}
#endif
}  // namespace simd_impl

/// dst[i * stride] = from_acc<St>(src[i] * scale) for i < n: an output row's normalisation and its one
/// rounding to the storage type. Unit-stride float16 / bfloat16 rows round 8 lanes at a time (element by
/// element, float_to_f16 held ~9% of a causal float16 call's samples at S = 1024, D = 64, and rounding by
/// vector made that call ~1.2x faster on Zen 3); the same bits.
template <class St>
inline void store_row_scaled(const float* src, float scale, int64_t n, St* dst, int64_t stride) {
  int64_t i = 0;
#if defined(__AVX2__) && defined(__F16C__)
  if constexpr (std::is_same<St, Half>::value || std::is_same<St, BFloat>::value) {
    if (stride == 1) {
      const __m256 sc = _mm256_set1_ps(scale);
      for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_mul_ps(_mm256_loadu_ps(src + i), sc);
        if (!simd_impl::round_lanes(x, dst + i))
          for (int l = 0; l < 8; ++l) dst[i + l] = from_acc<St>(src[i + l] * scale);
      }
    }
  }
#endif
  for (; i < n; ++i) dst[i * stride] = from_acc<St>(src[i] * scale);
}
template <class St>
inline void store_row_scaled(const double* src, double scale, int64_t n, St* dst, int64_t stride) {
  for (int64_t i = 0; i < n; ++i) dst[i * stride] = from_acc<St>(src[i] * scale);
}

template <class St>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

}  // namespace ATTNKIT_ISA_NAMESPACE
}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
