// The causal tensor-core Performer path (performer_causal_mma.cuh): which problems it takes, its switch, and the
// dtype / head-dim dispatch to the instantiations in performer_causal_mma_<dtype>_d<D>.cu. Called by linear.cu
// where has_kernel("performer_attention_mma2_causal").
#include <cstdlib>
#include <cstring>

#include "cuda/performer_causal_mma.cuh"

namespace attnkit {
namespace detail {
namespace cuda {

// The kernels are compiled in performer_causal_mma_<dtype>_d<D>.cu only.
extern template bool run_performer_causal_mma<half_t, 32>(const LinearProblem& p, cudaStream_t stream);
extern template bool run_performer_causal_mma<half_t, 64>(const LinearProblem& p, cudaStream_t stream);
extern template bool run_performer_causal_mma<half_t, 128>(const LinearProblem& p, cudaStream_t stream);
extern template bool run_performer_causal_mma<bf16_t, 32>(const LinearProblem& p, cudaStream_t stream);
extern template bool run_performer_causal_mma<bf16_t, 64>(const LinearProblem& p, cudaStream_t stream);
extern template bool run_performer_causal_mma<bf16_t, 128>(const LinearProblem& p, cudaStream_t stream);

/// Runs the causal Performer softmax problem p on the tensor-core path and returns true, or returns false
/// (nothing launched) where it does not apply: bidirectional, another map, not float16 / bfloat16, D or Dv
/// outside {32, 64, 128}, m not a positive multiple of 64 (or above 8192), a chunk other than 64 asked for
/// (p.chunk, or linear.cu's ATTNKIT_LINEAR_CUDA_CHUNK: the caller passes it as `chunk`; 0 = default), no query
/// heads, or not enough shared memory. ATTNKIT_PERFORMER_CAUSAL_MMA=0 (read once; internal, for the benchmark's
/// side-by-side rows and for bisecting on the GPU) turns the path off: linear.cu then runs the previous
/// causal kernels.
bool performer_mma2_causal(const LinearProblem& p, int64_t chunk, cudaStream_t stream) {
  static const bool off = [] {
    const char* e = std::getenv("ATTNKIT_PERFORMER_CAUSAL_MMA");
    return e && std::strcmp(e, "0") == 0;
  }();
  if (off || !p.causal || !p.stabilized() || p.state_dtype != DType::Float32) return false;
  if (chunk != 0 && chunk != pmc::kRows) return false;
  if (p.S != p.Sk || p.Hq == 0 || p.S >= (int64_t{1} << 31)) return false;
  if (p.F < 64 || p.F % 64 != 0 || p.F > 8192) return false;
  const bool f16 = p.dtype == DType::Float16;
  if (!f16 && p.dtype != DType::BFloat16) return false;
  switch (p.D) {
    case 32: return f16 ? run_performer_causal_mma<half_t, 32>(p, stream) : run_performer_causal_mma<bf16_t, 32>(p, stream);
    case 64: return f16 ? run_performer_causal_mma<half_t, 64>(p, stream) : run_performer_causal_mma<bf16_t, 64>(p, stream);
    case 128:
      return f16 ? run_performer_causal_mma<half_t, 128>(p, stream) : run_performer_causal_mma<bf16_t, 128>(p, stream);
    default: return false;
  }
}

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
