#pragma once
// Bit-exact float16 / bfloat16 <-> float conversions (round to nearest even), identical on every backend.

#include <cstdint>
#include <cstring>

#include "attnkit/math/config.h"

ATTNKIT_MATH_BEGIN

/// The bits of a float and back: device intrinsics in CUDA device code, memcpy (the portable bit cast
/// that compilers turn into a register move) on the host.
ATTNKIT_HD uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
#endif
}
ATTNKIT_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, 4);
  return x;
#endif
}

/// bfloat16 (as its 16 bits) -> float: exact.
ATTNKIT_HD float bf16_to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

/// float -> bfloat16 bits, round to nearest even; NaN stays a (quiet) NaN.
ATTNKIT_HD uint16_t float_to_bf16(float x) {
  uint32_t u = float_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

/// IEEE binary16 bits -> float: exact (subnormals, infinities and NaN included).
ATTNKIT_HD float f16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  if (exp == 0x1fu) return bits_float(sign | 0x7f800000u | (man << 13));  // inf / nan
  if (exp != 0) return bits_float(sign | ((exp + 112u) << 23) | (man << 13));
  // zero or subnormal: man * 2^-24, exact in float
  const float mag = static_cast<float>(man) * 5.9604644775390625e-08f;
  return sign ? -mag : mag;
}

/// float -> IEEE binary16 bits, round to nearest even, overflow to infinity.
ATTNKIT_HD uint16_t float_to_f16(float x) {
  const uint32_t u = float_bits(x);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (a < 0x38800000u) {
    // Result is subnormal (or zero): round a * 2^24 to an integer, ties to even. Adding 0.5f (2^-1)
    // makes the float adder do the rounding: the sum's low mantissa bits hold round(a * 2^24).
    const float f = bits_float(a) + 0.5f;
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(float_bits(f) - 0x3f000000u));
  }
  // Normal: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits to nearest even.
  uint32_t r = a + 0xc8000fffu + ((a >> 13) & 1u);
  return static_cast<uint16_t>(sign | static_cast<uint16_t>(r >> 13));
}

ATTNKIT_MATH_END
