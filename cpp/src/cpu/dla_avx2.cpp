// Dynamic linear attention for x86-64-v3 (AVX2 + FMA, 16 ymm registers).
#define ATTNKIT_ISA_NAMESPACE isa_avx2
#include "cpu/dla_kernel.h"
#include "cpu/isa_entry_points.h"

namespace attnkit {
namespace detail {
namespace cpu {
namespace {
// Product blocks of 4 rows x 3 vectors: 12 accumulators + 3 B vectors + 1 broadcast of 16 registers.
struct DlaAvx2F32 {
  using T = float;
  static constexpr int W = 8, RL = 4, NV = 3;
};
struct DlaAvx2F64 {
  using T = double;
  static constexpr int W = 4, RL = 4, NV = 3;
};
}  // namespace

void dla_avx2(const DLAProblem& p) { run_dla<DlaAvx2F32, DlaAvx2F64>(p); }

}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
