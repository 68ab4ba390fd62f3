// The tensor-core exact-attention kernel, version 2, for bf16_t, head dim 128 (one instantiation per
// translation unit; its tile-shape variants: attention_mma2.cuh).
#include "cuda/attention_mma2.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
ATTNKIT_INSTANTIATE_MMA2(bf16_t, 128)
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
