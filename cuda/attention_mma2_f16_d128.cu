// The tensor-core exact-attention kernel, version 2, for half_t, head dim 128 (one instantiation per
// translation unit; its tile-shape variants: attention_mma2.cuh).
#include "cuda/attention_mma2.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
ATTNKIT_INSTANTIATE_MMA2(half_t, 128)
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
