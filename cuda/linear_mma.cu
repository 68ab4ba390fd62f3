// The tensor-core causal linear attention (linear_mma.cuh): which problems it takes, and the dtype / head-dim
// dispatch to the instantiations in linear_mma_<dtype>_d<D>.cu. Called by linear.cu where
// has_kernel("linear_attention_mma").
#include <cstdlib>
#include <cstring>

#include "cuda/linear_mma.cuh"

namespace attnkit {
namespace detail {
namespace cuda {

// The kernels are compiled in linear_mma_<dtype>_d<D>.cu only.
extern template bool run_linear_mma<half_t, 32>(const LinearProblem& p, int64_t C, cudaStream_t stream);
extern template bool run_linear_mma<half_t, 64>(const LinearProblem& p, int64_t C, cudaStream_t stream);
extern template bool run_linear_mma<half_t, 128>(const LinearProblem& p, int64_t C, cudaStream_t stream);
extern template bool run_linear_mma<bf16_t, 32>(const LinearProblem& p, int64_t C, cudaStream_t stream);
extern template bool run_linear_mma<bf16_t, 64>(const LinearProblem& p, int64_t C, cudaStream_t stream);
extern template bool run_linear_mma<bf16_t, 128>(const LinearProblem& p, int64_t C, cudaStream_t stream);

/// Runs the causal form of p on tensor cores with chunks of C keys and returns true, or returns false
/// (nothing launched) where the path does not apply: not causal, a Performer map, not float16 / bfloat16,
/// D or Dv outside {32, 64, 128}, C outside {64, 128}, or not enough shared memory on the device.
/// ATTNKIT_LINEAR_CUDA_MMA=0 (read once; internal, for the benchmark's side-by-side rows) turns the path off:
/// linear.cu then runs the SIMT kernels with the same chunk.
bool linear_mma_causal(const LinearProblem& p, int64_t C, cudaStream_t stream) {
  static const bool off = [] {
    const char* e = std::getenv("ATTNKIT_LINEAR_CUDA_MMA");
    return e && std::strcmp(e, "0") == 0;
  }();
  if (off) return false;
  if (!p.causal || p.projected() || p.F != p.D || p.S != p.Sk || p.state_dtype != DType::Float32) return false;
  if (p.S >= (int64_t{1} << 31)) return false;
  const bool f16 = p.dtype == DType::Float16;
  if (!f16 && p.dtype != DType::BFloat16) return false;
  switch (p.D) {
    case 32: return f16 ? run_linear_mma<half_t, 32>(p, C, stream) : run_linear_mma<bf16_t, 32>(p, C, stream);
    case 64: return f16 ? run_linear_mma<half_t, 64>(p, C, stream) : run_linear_mma<bf16_t, 64>(p, C, stream);
    case 128: return f16 ? run_linear_mma<half_t, 128>(p, C, stream) : run_linear_mma<bf16_t, 128>(p, C, stream);
    default: return false;
  }
}

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
