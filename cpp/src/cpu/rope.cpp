// Rotary position embedding on the CPU. Work items are (batch, position) rows: each computes the r/2
// cosines and sines of its position once (double precision, math/rope.h) and applies them to every head,
// so the transcendental cost is O(B * S * r / 2), not O(B * H * S * r / 2). Any strides, in place allowed.
#include <vector>

#include "attnkit/math/rope.h"
#include "backend.h"
#include "check.h"
#include "cpu/kernel_common.h"
#include "cpu/parallel.h"

namespace attnkit {
namespace detail {
namespace cpu {
namespace {

/// A: compute type; DT: the storage dtype, a constant so load_float / store_float fold their switch.
template <class A, DType DT>
void rope_rows(const RopeProblem& p) {
  const int64_t half = p.rotary_dim / 2;
  const int64_t rows = p.B * p.S;
  std::vector<double> inv_freq(static_cast<std::size_t>(half));
  for (int64_t i = 0; i < half; ++i) inv_freq[i] = math::rope_inv_freq(i, p.rotary_dim, p.base);
  const auto& x = p.x;
  parallel_with_scratch("rope", rows * p.H * p.D > 32768, sizeof(A) * 2 * half, /*zero=*/false, [&](void* mem) {
    A* cs = static_cast<A*>(mem);
    team_for_static(rows, mem, [&](int64_t row) {
      const int64_t b = row / p.S, s = row % p.S;
      const int64_t pos = p.positions.present
                              ? load_int(p.positions.data, p.positions.dtype,
                                         b * p.positions.stride[0] + s * p.positions.stride[1])
                              : s;
      for (int64_t i = 0; i < half; ++i) {
        const double theta = static_cast<double>(pos) * inv_freq[i];
        cs[2 * i] = static_cast<A>(std::cos(theta));
        cs[2 * i + 1] = static_cast<A>(std::sin(theta));
      }
      for (int64_t h = 0; h < p.H; ++h) {
        const int64_t xo = b * x.stride[0] + h * x.stride[1] + s * x.stride[2];
        const int64_t oo = b * p.out_stride[0] + h * p.out_stride[1] + s * p.out_stride[2];
        const int64_t xs = x.stride[3], os = p.out_stride[3];
        for (int64_t i = 0; i < half; ++i) {
          int64_t da, db;
          math::rope_pair(i, p.rotary_dim, p.interleaved, da, db);
          A ya, yb;
          math::rope_rotate(load_float<A>(x.data, DT, xo + da * xs), load_float<A>(x.data, DT, xo + db * xs),
                            cs[2 * i], cs[2 * i + 1], ya, yb);
          store_float<A>(p.out, DT, oo + da * os, ya);
          store_float<A>(p.out, DT, oo + db * os, yb);
        }
        for (int64_t d = p.rotary_dim; d < p.D; ++d)
          store_float<A>(p.out, DT, oo + d * os, load_float<A>(x.data, DT, xo + d * xs));
      }
    });
  });
}

}  // namespace

void rope(const RopeProblem& p) {
  if (p.B * p.H * p.S * p.D == 0) return;
  switch (p.dtype) {
    case DType::Float64: return rope_rows<double, DType::Float64>(p);
    case DType::Float16: return rope_rows<float, DType::Float16>(p);
    case DType::BFloat16: return rope_rows<float, DType::BFloat16>(p);
    case DType::Float32: return rope_rows<float, DType::Float32>(p);
    default: ATTNKIT_ASSERT(false, "rope: a non-floating dtype passed validation");
  }
}

}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
