// Attention backward for x86-64-v3 (AVX2 + FMA, 16 ymm registers).
#define ATTNKIT_ISA_NAMESPACE isa_avx2
#include "cpu/attention_bwd_kernel.h"
#include "cpu/isa_entry_points.h"

namespace attnkit {
namespace detail {
namespace cpu {
namespace {
// Register block: 6 rows x 2 vectors = 12 accumulators + 2 B vectors + 1 broadcast of 16 registers.
struct Avx2F32 {
  using T = float;
  static constexpr int W = 8, BQ = 64, BK = 64, RB = 6, NVB = 2;
};
struct Avx2F64 {
  using T = double;
  static constexpr int W = 4, BQ = 64, BK = 64, RB = 6, NVB = 2;
};
}  // namespace

void attention_backward_avx2(const AttnBwdProblem& p) { run_attention_backward<Avx2F32, Avx2F64>(p); }

}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
