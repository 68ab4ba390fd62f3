// The flash-decoding kernel v3 for half_t (one dtype per translation unit: the build parallelises).
#include "cuda/attention_decode3.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
ATTNKIT_INSTANTIATE_DECODE3(half_t)
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
