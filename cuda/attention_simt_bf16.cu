// The SIMT exact-attention kernel for bf16_t (one dtype per translation unit: the build parallelises).
#include "cuda/attention_simt.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
ATTNKIT_INSTANTIATE_SIMT(bf16_t)
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
