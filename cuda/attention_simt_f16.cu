// The SIMT exact-attention kernel for half_t (one dtype per translation unit: the build parallelises).
#include "cuda/attention_simt.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
ATTNKIT_INSTANTIATE_SIMT(half_t)
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
