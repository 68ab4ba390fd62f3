// One instantiation of the tensor-core causal linear attention (linear_mma.cuh): bf16, head dim 32.
#include "cuda/linear_mma.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
template bool run_linear_mma<bf16_t, 32>(const LinearProblem& p, int64_t C, cudaStream_t stream);
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
