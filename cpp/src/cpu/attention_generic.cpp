// Exact attention, baseline instruction set (SSE2 on x86-64, NEON/ASIMD on AArch64: 128-bit vectors).
#define ATTNKIT_ISA_NAMESPACE isa_generic
#include "cpu/attention_exact.h"
#include "cpu/isa_entry_points.h"

namespace attnkit {
namespace detail {
namespace cpu {
namespace {
struct GenericF32 {
  using T = float;
  static constexpr int W = 4, NQV = 2, BK = 64, R = 4, RL = 4, NV = 2;
};
struct GenericF64 {
  using T = double;
  static constexpr int W = 2, NQV = 2, BK = 64, R = 4, RL = 4, NV = 2;
};
}  // namespace

void exact_attention_generic(const AttnProblem& p, bool weights) {
  exact_for_isa<GenericF32, GenericF64>(p, weights);
}

}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
