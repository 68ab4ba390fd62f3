// Exact attention for x86-64-v3 (AVX2 + FMA, 16 ymm registers).
#define ATTNKIT_ISA_NAMESPACE isa_avx2
#include "cpu/attention_decode.h"
#include "cpu/attention_exact.h"
#include "cpu/isa_entry_points.h"

namespace attnkit {
namespace detail {
namespace cpu {
namespace {
// float: 24 query lanes per tile. QK block: 4 keys x 3 vectors = 12 accumulators + 3 query vectors + 1
// broadcast of the 16 ymm registers (7 loads per 12 FMAs); PV block (o^T): 4 value columns x 3 lane
// vectors, the same shape. Against 16 lanes (6 x 2 / 4 x 2 blocks) 24 lanes ran 1.1-1.3x faster on Zen 3
// (bench/results/history/exact_avx2_tiles.json).
struct Avx2F32 {
  using T = float;
  static constexpr int W = 8, NQV = 3, BK = 64, R = 4, RL = 4, NV = 3;
};
// float16 / bfloat16: 48 query lanes, QK in blocks of 3 vectors as above. Their K / V chunks are
// converted as they are packed (one vector conversion, store and reload per 24 FMAs at 24 lanes, in a loop
// of its own that leaves the FMA pipes idle), so a tile twice as wide halves that cost per FLOP. Where K
// and V are converted once per call or thread instead (shorter heads), nothing is left to spread and
// the float32 tile's 24 lanes run (NQV_COPIED): causal S = 1024 and 4096 took 0.88-0.95x the time of 48
// lanes, the rest within noise (Zen 3, 1 thread, bench/results/history/lowp_avx2_s30.json).
struct Avx2Lowp : Avx2F32 {
  static constexpr int NQV = 6, QV = 3, NQV_COPIED = 3;
};
struct Avx2F64 {
  using T = double;
  static constexpr int W = 4, NQV = 2, BK = 64, R = 6, RL = 4, NV = 2;
};
}  // namespace

void exact_attention_avx2(const AttnProblem& p, bool weights) {
  if (decode_attention<8>(p, weights)) return;  // few query rows per kv head: the fused decode kernel
  exact_for_isa<Avx2F32, Avx2F64, Avx2Lowp>(p, weights);
}

}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
