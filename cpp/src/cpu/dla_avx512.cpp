// Dynamic linear attention for x86-64-v4 (AVX-512 F/BW/DQ/VL, 32 zmm registers).
#define ATTNKIT_ISA_NAMESPACE isa_avx512
#include "cpu/dla_kernel.h"
#include "cpu/isa_entry_points.h"

namespace attnkit {
namespace detail {
namespace cpu {
namespace {
// Product blocks of 6 rows x 4 vectors (64 float columns: a whole Dv = 64 row): 24 accumulators + 4 B
// vectors + 1 broadcast.
struct DlaAvx512F32 {
  using T = float;
  static constexpr int W = 16, RL = 6, NV = 4;
};
struct DlaAvx512F64 {
  using T = double;
  static constexpr int W = 8, RL = 6, NV = 4;
};
}  // namespace

void dla_avx512(const DLAProblem& p) { run_dla<DlaAvx512F32, DlaAvx512F64>(p); }

}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
