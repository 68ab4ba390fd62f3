#pragma once
// Counter-based random numbers: Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as
// 1, 2, 3", SC'11), keyed by (seed, stream). Every random quantity in attnkit (random features, Linformer
// projections, LSH rotations, BigBird blocks) is a pure function of (seed, stream, index), so it is the
// same on every backend, thread count and platform.
//
// Conventions:
//   key     = (seed low 32 bits, seed high 32 bits)
//   counter = (block low, block high, stream low, stream high)
// One block gives four 32-bit words. uniform(seed, stream, i) uses word i % 4 of block i / 4;
// normal(seed, stream, i) uses block i / 2: words 0-1 and 2-3 make two 53-bit uniforms u1, u2 and
// Box-Muller gives sqrt(-2 ln u1) * (cos, sin)(2 pi u2) for i even / odd. Normals are computed in double.

#include <cmath>
#include <cstdint>

#include "attnkit/math/config.h"

ATTNKIT_MATH_BEGIN

struct Philox4 {
  uint32_t v[4];
};

ATTNKIT_HD void philox_mulhilo(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(p >> 32);
  *lo = static_cast<uint32_t>(p);
}

/// Philox4x32 with 10 rounds.
ATTNKIT_HD Philox4 philox4x32_10(Philox4 ctr, uint32_t k0, uint32_t k1) {
  for (int r = 0; r < 10; ++r) {
    if (r) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(0xD2511F53u, ctr.v[0], &hi0, &lo0);
    philox_mulhilo(0xCD9E8D57u, ctr.v[2], &hi1, &lo1);
    ctr = Philox4{{hi1 ^ ctr.v[1] ^ k0, lo1, hi0 ^ ctr.v[3] ^ k1, lo0}};
  }
  return ctr;
}

/// Block `block` of stream `stream` under `seed`.
ATTNKIT_HD Philox4 philox_block(uint64_t seed, uint64_t stream, uint64_t block) {
  return philox4x32_10(Philox4{{static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
                                static_cast<uint32_t>(stream), static_cast<uint32_t>(stream >> 32)}},
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

/// Raw 32-bit word i of the stream.
ATTNKIT_HD uint32_t random_u32(uint64_t seed, uint64_t stream, uint64_t i) {
  return philox_block(seed, stream, i >> 2).v[i & 3];
}

/// Uniform double in [0, 1) with 32 random bits: word i of the stream times 2^-32.
ATTNKIT_HD double uniform01(uint64_t seed, uint64_t stream, uint64_t i) {
  return static_cast<double>(random_u32(seed, stream, i)) * 2.3283064365386963e-10;
}

/// Uniform integer in [0, n) (n >= 1) from word i, by the multiply-shift method (bias < n / 2^32).
ATTNKIT_HD uint32_t uniform_below(uint64_t seed, uint64_t stream, uint64_t i, uint32_t n) {
  return static_cast<uint32_t>((static_cast<uint64_t>(random_u32(seed, stream, i)) * n) >> 32);
}

/// Standard normal numbers 2 * pair and 2 * pair + 1 of the stream, from one Philox block (double
/// precision Box-Muller, see the header comment).
ATTNKIT_HD void normal_pair(uint64_t seed, uint64_t stream, uint64_t pair, double* z0, double* z1) {
  const Philox4 b = philox_block(seed, stream, pair);
  // 53-bit uniforms; u1 in (0, 1] so the log is finite.
  const double u1 = (static_cast<double>((static_cast<uint64_t>(b.v[0]) << 21) ^ (b.v[1] >> 11)) + 1.0) *
                    1.1102230246251565e-16;
  const double u2 = static_cast<double>((static_cast<uint64_t>(b.v[2]) << 21) ^ (b.v[3] >> 11)) *
                    1.1102230246251565e-16;
  using std::cos;
  using std::log;
  using std::sin;
  using std::sqrt;
  const double r = sqrt(-2.0 * log(u1));
  const double t = 6.283185307179586476925286766559 * u2;
  *z0 = r * cos(t);
  *z1 = r * sin(t);
}

/// Standard normal number i of the stream.
ATTNKIT_HD double normal(uint64_t seed, uint64_t stream, uint64_t i) {
  double z0, z1;
  normal_pair(seed, stream, i >> 1, &z0, &z1);
  return (i & 1) ? z1 : z0;
}

/// Stream ids of attnkit's random quantities (the high 32 bits name the purpose, the low bits an
/// index such as a head or a hash round), so different uses of one seed never share numbers.
enum : uint64_t {
  kStreamRandomFeatures = 0x52464541ull << 32,   // "RFEA"
  kStreamLinformer = 0x4C494E46ull << 32,        // "LINF"
  kStreamLsh = 0x4C534832ull << 32,              // "LSH2"
  kStreamBigBird = 0x42494742ull << 32,          // "BIGB"
};

ATTNKIT_MATH_END
