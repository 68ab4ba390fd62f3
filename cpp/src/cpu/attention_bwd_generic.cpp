// Attention backward, baseline instruction set (SSE2 on x86-64, NEON/ASIMD on AArch64: 128-bit vectors).
#define ATTNKIT_ISA_NAMESPACE isa_generic
#include "cpu/attention_bwd_kernel.h"
#include "cpu/isa_entry_points.h"

namespace attnkit {
namespace detail {
namespace cpu {
namespace {
struct GenericF32 {
  using T = float;
  static constexpr int W = 4, BQ = 64, BK = 64, RB = 4, NVB = 2;
};
struct GenericF64 {
  using T = double;
  static constexpr int W = 2, BQ = 64, BK = 64, RB = 4, NVB = 2;
};
}  // namespace

void attention_backward_generic(const AttnBwdProblem& p) { run_attention_backward<GenericF32, GenericF64>(p); }

}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
