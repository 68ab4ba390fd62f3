// Linear attention and Performer (forward and backward) and Linformer projections for x86-64-v3 (AVX2 +
// FMA, 16 ymm registers).
#define ATTNKIT_ISA_NAMESPACE isa_avx2
#include "cpu/isa_entry_points.h"
#include "cpu/linear_bwd_kernel.h"
#include "cpu/linear_kernel.h"
#include "cpu/linformer_kernel.h"

namespace attnkit {
namespace detail {
namespace cpu {
namespace {
// Register block: 6 rows x 2 vectors = 12 accumulators + 2 B vectors + 1 broadcast (as the exact kernel's
// PV block; 4 x 2 was 3-14% slower on Zen 3, 1 thread, S = 4096).
struct Avx2F32 {
  using T = float;
  static constexpr int W = 8, RL = 6, NV = 2;
};
struct Avx2F64 {
  using T = double;
  static constexpr int W = 4, RL = 4, NV = 2;
};
}  // namespace

void linear_attention_avx2(const LinearProblem& p) { run_linear<Avx2F32, Avx2F64>(p); }
void linear_attention_backward_avx2(const LinearBwdProblem& p) { run_linear_backward<Avx2F32, Avx2F64>(p); }

void linformer_project_avx2(const LinformerProblem& p, void* kproj, void* vproj) {
  run_linformer_projection<Avx2F32, Avx2F64>(p, kproj, vproj);
}

}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
