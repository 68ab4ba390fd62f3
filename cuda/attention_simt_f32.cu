// The SIMT exact-attention kernel for float (one dtype per translation unit: the build parallelises).
#include "cuda/attention_simt.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
ATTNKIT_INSTANTIATE_SIMT(float)
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
