// Dynamic linear attention, baseline instruction set (SSE2 on x86-64, NEON/ASIMD on AArch64: 128-bit vectors).
#define ATTNKIT_ISA_NAMESPACE isa_generic
#include "cpu/dla_kernel.h"
#include "cpu/isa_entry_points.h"

namespace attnkit {
namespace detail {
namespace cpu {
namespace {
// Product blocks of 4 rows x 2 vectors: 8 accumulators + 2 B vectors + 1 broadcast of 16 registers.
struct DlaGenericF32 {
  using T = float;
  static constexpr int W = 4, RL = 4, NV = 2;
};
struct DlaGenericF64 {
  using T = double;
  static constexpr int W = 2, RL = 4, NV = 2;
};
}  // namespace

void dla_generic(const DLAProblem& p) { run_dla<DlaGenericF32, DlaGenericF64>(p); }

}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
