// One instantiation of the fused tensor-core Performer path (performer_mma2.cuh): bf16, head dim 32.
#include "cuda/performer_mma2.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
template bool run_performer_mma2<bf16_t, 32>(const LinearProblem& p, int64_t seg, cudaStream_t stream);
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
