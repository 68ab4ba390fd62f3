// The flash-decoding kernel v2 for bf16_t (one dtype per translation unit: the build parallelises).
#include "cuda/attention_decode2.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
ATTNKIT_INSTANTIATE_DECODE2(bf16_t)
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
