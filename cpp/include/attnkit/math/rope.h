#pragma once
// Rotary position embedding (RoPE, Su et al. 2021): the angle and pair rules shared by every backend.

#include <cmath>
#include <cstdint>

#include "attnkit/math/config.h"

ATTNKIT_MATH_BEGIN

/// Inverse frequency of pair p of r rotated dims: base^(-2p / r), in double (float32 exponents lose
/// digits at long positions).
ATTNKIT_HD double rope_inv_freq(int64_t p, int64_t r, double base) {
  return std::pow(base, -2.0 * static_cast<double>(p) / static_cast<double>(r));
}

/// The two dims rotated together as pair p: (p, p + r/2), or (2p, 2p + 1) when interleaved.
ATTNKIT_HD void rope_pair(int64_t p, int64_t r, bool interleaved, int64_t& a, int64_t& b) {
  a = interleaved ? 2 * p : p;
  b = interleaved ? 2 * p + 1 : p + r / 2;
}

/// Rotation of (x_a, x_b) by the angle whose cosine and sine are c and s.
template <class T>
ATTNKIT_HD void rope_rotate(T xa, T xb, T c, T s, T& ya, T& yb) {
  ya = xa * c - xb * s;
  yb = xb * c + xa * s;
}

ATTNKIT_MATH_END
