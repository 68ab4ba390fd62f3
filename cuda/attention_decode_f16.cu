// The flash-decoding kernel for half_t (one dtype per translation unit: the build parallelises).
#include "cuda/attention_decode.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
ATTNKIT_INSTANTIATE_DECODE(half_t)
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
