// The tensor-core exact-attention kernel for half_t, head dim 256 (one instantiation per translation unit).
#include "cuda/attention_mma.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
ATTNKIT_INSTANTIATE_MMA(half_t, 256)
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
