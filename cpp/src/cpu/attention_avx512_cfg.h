#pragma once
// Tile configurations of the AVX-512 exact-attention kernel, shared by attention_avx512.cpp and
// attention_avx512bf16.cpp (which adds vdpbf16ps for bfloat16 QK^T to the float32 one).

namespace attnkit {
namespace detail {
namespace cpu {
inline namespace ATTNKIT_ISA_NAMESPACE {

// QK block: 6 keys x 4 vectors (64 query lanes) = 24 accumulators + 4 query vectors.
// PV block (o^T): 6 value columns x 4 lane vectors = 24 accumulators + 4 probability vectors.
struct Avx512F32 {
  using T = float;
  static constexpr int W = 16, NQV = 4, BK = 64, R = 6, RL = 6, NV = 4;
};
struct Avx512F64 {
  using T = double;
  static constexpr int W = 8, NQV = 4, BK = 64, R = 6, RL = 6, NV = 4;
};

}  // namespace ATTNKIT_ISA_NAMESPACE
}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
