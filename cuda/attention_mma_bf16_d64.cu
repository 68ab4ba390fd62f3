// The tensor-core exact-attention kernel for bf16_t, head dim 64 (one instantiation per translation unit).
#include "cuda/attention_mma.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
ATTNKIT_INSTANTIATE_MMA(bf16_t, 64)
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
