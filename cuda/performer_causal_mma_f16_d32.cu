// One instantiation of the causal tensor-core Performer path (performer_causal_mma.cuh): f16, head dim 32.
#include "cuda/performer_causal_mma.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
template bool run_performer_causal_mma<half_t, 32>(const LinearProblem& p, cudaStream_t stream);
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
