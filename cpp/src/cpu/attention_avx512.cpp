// Exact attention for x86-64-v4 (AVX-512 F/BW/DQ/VL, 32 zmm registers).
#define ATTNKIT_ISA_NAMESPACE isa_avx512
#include "cpu/attention_decode.h"
#include "cpu/attention_exact.h"
#include "cpu/isa_entry_points.h"

namespace attnkit {
namespace detail {
namespace cpu {
namespace {
// QK block: 6 keys x 4 vectors (64 query lanes) = 24 accumulators + 4 query vectors.
// PV block: 6 lanes x 4 value vectors (64 columns) = 24 accumulators + 4 value vectors.
struct Avx512F32 {
  using T = float;
  static constexpr int W = 16, NQV = 4, BK = 64, R = 6, RL = 6, NV = 4;
};
struct Avx512F64 {
  using T = double;
  static constexpr int W = 8, NQV = 4, BK = 64, R = 6, RL = 6, NV = 4;
};
}  // namespace

void exact_attention_avx512(const AttnProblem& p, bool weights) {
  if (decode_attention<16>(p, weights)) return;  // few query rows per kv head: the fused decode kernel
  exact_for_isa<Avx512F32, Avx512F64>(p, weights);
}

}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
