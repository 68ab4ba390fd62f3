// Linear attention / Performer backward for x86-64-v4 (AVX-512 F/BW/DQ/VL, 32 zmm registers).
#define ATTNKIT_ISA_NAMESPACE isa_avx512
#include "cpu/isa_entry_points.h"
#include "cpu/linear_bwd_kernel.h"

namespace attnkit {
namespace detail {
namespace cpu {
namespace {
// Register block: 6 rows x 4 vectors (64 columns) = 24 accumulators + 4 B vectors + 1 broadcast.
struct Avx512F32 {
  using T = float;
  static constexpr int W = 16, RL = 6, NV = 4;
};
struct Avx512F64 {
  using T = double;
  static constexpr int W = 8, RL = 6, NV = 4;
};
}  // namespace

void linear_attention_backward_avx512(const LinearBwdProblem& p) { run_linear_backward<Avx512F32, Avx512F64>(p); }

}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
