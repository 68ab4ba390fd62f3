// The SIMT exact-attention kernel for double (one dtype per translation unit: the build parallelises).
#include "cuda/attention_simt.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
ATTNKIT_INSTANTIATE_SIMT(double)
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
