// One instantiation of the tensor-core causal linear attention (linear_mma.cuh): f16, head dim 64.
#include "cuda/linear_mma.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
template bool run_linear_mma<half_t, 64>(const LinearProblem& p, int64_t C, cudaStream_t stream);
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
