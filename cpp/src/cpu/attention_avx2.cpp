// Exact attention for x86-64-v3 (AVX2 + FMA, 16 ymm registers).
#define ATTNKIT_ISA_NAMESPACE isa_avx2
#include "cpu/attention_kernel.h"
#include "cpu/isa_entry_points.h"

namespace attnkit {
namespace detail {
namespace cpu {
namespace {
// QK block: 6 keys x 2 vectors = 12 accumulators + 2 query vectors + 1 broadcast of 16 registers.
struct Avx2F32 {
  using T = float;
  static constexpr int W = 8, NQV = 2, BK = 64, R = 6, RL = 4, NV = 2;
};
struct Avx2F64 {
  using T = double;
  static constexpr int W = 4, NQV = 2, BK = 64, R = 6, RL = 4, NV = 2;
};
}  // namespace

void exact_attention_avx2(const AttnProblem& p, bool weights) { exact_for_isa<Avx2F32, Avx2F64>(p, weights); }

}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
