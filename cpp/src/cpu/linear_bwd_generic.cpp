// Linear attention / Performer backward, baseline instruction set (SSE2 on x86-64, NEON/ASIMD on AArch64).
#define ATTNKIT_ISA_NAMESPACE isa_generic
#include "cpu/isa_entry_points.h"
#include "cpu/linear_bwd_kernel.h"

namespace attnkit {
namespace detail {
namespace cpu {
namespace {
struct GenericF32 {
  using T = float;
  static constexpr int W = 4, RL = 4, NV = 2;
};
struct GenericF64 {
  using T = double;
  static constexpr int W = 2, RL = 4, NV = 2;
};
}  // namespace

void linear_attention_backward_generic(const LinearBwdProblem& p) { run_linear_backward<GenericF32, GenericF64>(p); }

}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
