// Linear attention / Performer backward for x86-64-v3 (AVX2 + FMA, 16 ymm registers).
#define ATTNKIT_ISA_NAMESPACE isa_avx2
#include "cpu/isa_entry_points.h"
#include "cpu/linear_bwd_kernel.h"

namespace attnkit {
namespace detail {
namespace cpu {
namespace {
// Register block: 4 rows x 2 vectors = 8 accumulators + 2 B vectors + 1 broadcast.
struct Avx2F32 {
  using T = float;
  static constexpr int W = 8, RL = 4, NV = 2;
};
struct Avx2F64 {
  using T = double;
  static constexpr int W = 4, RL = 4, NV = 2;
};
}  // namespace

void linear_attention_backward_avx2(const LinearBwdProblem& p) { run_linear_backward<Avx2F32, Avx2F64>(p); }

}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
