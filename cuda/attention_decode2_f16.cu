// The flash-decoding kernel v2 for half_t (one dtype per translation unit: the build parallelises).
#include "cuda/attention_decode2.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
ATTNKIT_INSTANTIATE_DECODE2(half_t)
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
