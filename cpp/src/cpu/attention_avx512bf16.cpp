// Exact attention for bfloat16 inputs on CPUs with AVX512-BF16 (Zen 4, Intel Cooper Lake, Sapphire Rapids
// and later): the AVX-512 kernel of attention_avx512.cpp whose QK^T multiplies the stored bfloat16 pairs
// with vdpbf16ps (_mm512_dpbf16_ps: per float32 lane, acc += a.lo * b.lo + a.hi * b.hi, each half a
// bfloat16, float32 accumulation), 32 products per instruction where vfmadd231ps does 16, and no key
// conversion at all (keys are read in place). Compiled with -march=x86-64-v4 -mavx512bf16; chosen only
// when the CPU reports avx512_bf16 (cpu/isa.cpp, Isa::Avx512Bf16) and that self_check() below passed.
//
// Accuracy. q and k are bfloat16 values, so every product q_d * k_d is exact in float32 (8 x 8 significant
// bits), as in the float32-converted path: the scores differ from it only in the order of the float32
// additions (pairs first). The error rule of the tests is therefore untouched by QK^T.
//
// PV stays the float32 product of the AVX-512 kernel (V converted as its chunks are packed, P in float32).
// Rounding P to bfloat16 for a vdpbf16ps PV product (FlashAttention's choice) was considered and rejected:
// it changes every weight by up to 2^-9 relative while the row sum l is taken from the unrounded P, so for
// correlated roundings (e.g. V constant c, scores in two levels, one of whose exp() is not a bfloat16) the
// output is off by ~c * 2^-9 where the float32 "naive" baseline of the tests is exact: for |c| > 8 that
// passes 2 * naive + atol (1.6e-2) and the rule fails. FlashAttention's own tests compare against a
// reference that rounds P too, which this project's float64 oracle does not. (Normalising by the sum of
// the rounded P, or splitting P = hi + lo into two bfloat16 products, keeps the rule but respectively
// needs a second running sum in the online softmax, or costs as many instructions as float32 FMAs.)
//
// VERIFICATION. This unit has NOT been executed on AVX512-BF16 hardware: the machine it was written on is
// a Zen 3 (AVX2 only), Debian's qemu-user 7.2 TCG has no AVX-512 (it raises SIGILL on vdpbf16ps) and
// Intel SDE is not available to us. What was run: the whole AVX-512 build with its instructions emulated
// by SIMDe (-DATTNKIT_AVX512_EMULATION, cpu/avx512_emulation.h: x86-64-v3 code, this unit selected on AVX2
// CPUs after its self-check), against the ISA tests (CI, under ASan / UBSan) and the whole test suite
// (session 30). What was not: vdpbf16ps itself (SIMDe models its operand order and pairing; flush-to-zero
// of subnormal inputs changes nothing within the tolerance). So that a wrong result cannot ship silently, self_check() runs
// the instruction on small tiles with an exact answer (every NQV variant, odd D with an inf just past the
// last dimension, a key tail) before cpu/isa.cpp ever selects this path; on a mismatch the CPU is treated
// as plain AVX-512 and attnkit.info()["cpu_isa"] says "avx512", which tests/test_isa_paths.py flags on
// any CPU whose /proc/cpuinfo lists avx512_bf16.
#define ATTNKIT_ISA_NAMESPACE isa_avx512bf16
#include "cpu/attention_avx512_cfg.h"
#include "cpu/attention_decode.h"
#include "cpu/attention_exact.h"
#include "cpu/isa_entry_points.h"

namespace attnkit {
namespace detail {
namespace cpu {
namespace {

typedef float F16 __attribute__((vector_size(64)));
typedef uint32_t U16 __attribute__((vector_size(64)));

/// acc + a.lo * b.lo + a.hi * b.hi in each 32-bit lane, the halves being bfloat16: vdpbf16ps.
inline F16 dot_pairs(F16 acc, U16 a, U16 b) {
  return (F16)_mm512_dpbf16_ps((__m512)acc, (__m512bh)a, (__m512bh)b);
}

/// The PairDot of the bfloat16 tile configuration (see PairDotOf in cpu/attention_kernel.h): queries in
/// the 16 float32 lanes of a vector, each lane holding one query's dims (2i, 2i+1) as a bfloat16 pair; a
/// key's pair (k[2i], k[2i+1]) is one 32-bit word of its row, broadcast to every lane.
struct Bf16PairDot {
  static constexpr int W = 16;
  static constexpr int R = 6;  // keys per register block: 6 x NQV (<= 4) accumulators + NQV queries

  /// qp[i][l] = bits(q[2i][l]) | bits(q[2i+1][l]) << 16 (q[D][l] = 0 for odd D). qT holds bfloat16 values
  /// converted exactly to float32 (the bits shifted up by 16), so dropping the low 16 bits loses nothing.
  template <int NQV>
  static void pack_q(const float* qT, int64_t D, uint32_t* qp) {
    constexpr int BQ = W * NQV;
    for (int64_t i = 0; i < (D + 1) / 2; ++i) {
      const float* lo = qT + 2 * i * BQ;
      const bool has_hi = 2 * i + 1 < D;
      for (int l = 0; l < BQ; ++l) {
        uint32_t a, b = 0;
        std::memcpy(&a, lo + l, sizeof a);
        if (has_hi) std::memcpy(&b, lo + BQ + l, sizeof b);
        qp[i * BQ + l] = (a >> 16) | (b & 0xffff0000u);
      }
    }
  }

  /// acc[r][v] += the pair products of query vector v of qrow and key r's pair kw[r].
  template <int RR, int NQV>
  __attribute__((always_inline)) static inline void step(F16 (&acc)[RR][NQV], const uint32_t* qrow,
                                                         const uint32_t (&kw)[RR]) {
    U16 qv[NQV];
#pragma GCC unroll 4
    for (int v = 0; v < NQV; ++v) std::memcpy(&qv[v], qrow + v * W, sizeof(U16));
#pragma GCC unroll 8
    for (int r = 0; r < RR; ++r) {
      const U16 kb = U16{} + kw[r];
#pragma GCC unroll 4
      for (int v = 0; v < NQV; ++v) acc[r][v] = dot_pairs(acc[r][v], qv[v], kb);
    }
  }

  /// One register block: s[r][lanes] = scale * q . k_r for RR keys k (bits, row stride ldk elements).
  /// Accumulators stay in registers (RR x NQV <= 24 of the 32 zmm), hence the unrolled constant loops.
  template <int RR, int NQV>
  static void block(const uint32_t* qp, const uint16_t* k, int64_t ldk, int64_t D, float scale, float* s) {
    constexpr int BQ = W * NQV;
    F16 acc[RR][NQV];
#pragma GCC unroll 8
    for (int r = 0; r < RR; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NQV; ++v) acc[r][v] = F16{};
    const int64_t pairs = D / 2;
    uint32_t kw[RR];
    for (int64_t i = 0; i < pairs; ++i) {
#pragma GCC unroll 8
      for (int r = 0; r < RR; ++r) std::memcpy(&kw[r], k + r * ldk + 2 * i, sizeof(uint32_t));
      step<RR, NQV>(acc, qp + i * BQ, kw);
    }
    if (D & 1) {  // the last dim alone: the key's high half must be 0, not the next element (0 * inf = NaN)
#pragma GCC unroll 8
      for (int r = 0; r < RR; ++r) kw[r] = k[r * ldk + D - 1];
      step<RR, NQV>(acc, qp + pairs * BQ, kw);
    }
#pragma GCC unroll 8
    for (int r = 0; r < RR; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NQV; ++v) {
        const F16 x = acc[r][v] * scale;
        std::memcpy(s + r * BQ + v * W, &x, sizeof(F16));
      }
  }

  template <int NQV>
  static void qk(const uint32_t* qp, const uint16_t* k, int64_t ldk, int64_t D, float scale, int jn, float* sT) {
    constexpr int BQ = W * NQV;
    int j = 0;
    for (; j + R <= jn; j += R) block<R, NQV>(qp, k + j * ldk, ldk, D, scale, sT + j * BQ);
    const uint16_t* kj = k + j * ldk;
    float* sj = sT + j * BQ;
    switch (jn - j) {
      case 0: break;
      case 1: block<1, NQV>(qp, kj, ldk, D, scale, sj); break;
      case 2: block<2, NQV>(qp, kj, ldk, D, scale, sj); break;
      case 3: block<3, NQV>(qp, kj, ldk, D, scale, sj); break;
      case 4: block<4, NQV>(qp, kj, ldk, D, scale, sj); break;
      default: block<5, NQV>(qp, kj, ldk, D, scale, sj); break;
    }
  }
};
static_assert(Bf16PairDot::R == 6, "qk's tail switch covers R - 1 = 5 keys");

// The AVX-512 float32 configuration with the bfloat16 QK^T (R keys x NQV vectors: the same register block).
struct Avx512Bf16 : Avx512F32 {
  using PairDot = Bf16PairDot;
};

/// QK^T of NQV query vectors against 13 keys (two register blocks and a tail of 1) at D = 67 (odd), with
/// small multiples of 1/8 (every sum exact in float32) and +inf just past each key's last dim: true when
/// every score equals the exact one.
template <int NQV>
bool check_tile() {
  constexpr int BQ = 16 * NQV, D = 67, J = 13, LDK = 70;
  float qT[D * BQ];
  uint32_t qp[(D + 1) / 2 * BQ];
  uint16_t k[J * LDK];
  float s[J * BQ];
  auto val = [](int64_t a, int64_t b) { return static_cast<float>((a * 7 + b * 3) % 17 - 8) / 8.0f; };
  for (int d = 0; d < D; ++d)
    for (int l = 0; l < BQ; ++l) qT[d * BQ + l] = val(d, l);
  for (int j = 0; j < J; ++j)
    for (int d = 0; d < LDK; ++d) k[j * LDK + d] = d < D ? math::float_to_bf16(val(j + 5, d)) : uint16_t{0x7f80};
  Bf16PairDot::pack_q<NQV>(qT, D, qp);
  Bf16PairDot::qk<NQV>(qp, k, LDK, D, 0.5f, J, s);
  for (int j = 0; j < J; ++j)
    for (int l = 0; l < BQ; ++l) {
      double ref = 0;
      for (int d = 0; d < D; ++d) ref += static_cast<double>(val(d, l)) * val(j + 5, d);
      if (s[j * BQ + l] != static_cast<float>(ref * 0.5)) return false;
    }
  return true;
}

}  // namespace

bool exact_attention_avx512bf16_self_check() {
  return check_tile<1>() && check_tile<2>() && check_tile<3>() && check_tile<4>();
}

bool exact_attention_avx512bf16(const AttnProblem& p, bool weights) {
  if (p.dtype != DType::BFloat16 || decode_eligible(p, weights)) return false;  // the AVX-512 unit's cases
  exact_for_isa<Avx512F32, Avx512F64, Avx512F32, Avx512Bf16>(p, weights);
  return true;
}

}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
