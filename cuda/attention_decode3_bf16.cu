// The flash-decoding kernel v3 for bf16_t (one dtype per translation unit: the build parallelises).
#include "cuda/attention_decode3.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
ATTNKIT_INSTANTIATE_DECODE3(bf16_t)
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
