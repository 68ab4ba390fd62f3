// The flash-decoding kernel for double (one dtype per translation unit: the build parallelises).
#include "cuda/attention_decode.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
ATTNKIT_INSTANTIATE_DECODE(double)
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
