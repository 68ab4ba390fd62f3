// Linear attention and Performer (forward and backward) and Linformer projections, baseline instruction
// set (SSE2 on x86-64, NEON/ASIMD on AArch64: 128-bit vectors).
#define ATTNKIT_ISA_NAMESPACE isa_generic
#include "cpu/isa_entry_points.h"
#include "cpu/linear_bwd_kernel.h"
#include "cpu/linear_kernel.h"
#include "cpu/linformer_kernel.h"

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

void linear_attention_generic(const LinearProblem& p) { run_linear<GenericF32, GenericF64>(p); }
void linear_attention_backward_generic(const LinearBwdProblem& p) { run_linear_backward<GenericF32, GenericF64>(p); }

void linformer_project_generic(const LinformerProblem& p, void* kproj, void* vproj) {
  run_linformer_projection<GenericF32, GenericF64>(p, kproj, vproj);
}

}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
