// The fused tensor-core Performer path (performer_mma2.cuh): which problems it takes, its tuning, and the dtype /
// head-dim dispatch to the instantiations in performer_mma2_<dtype>_d<D>.cu. Called by linear.cu where
// has_kernel("performer_attention_mma2").
#include <cstdlib>
#include <cstring>

#include "cuda/performer_mma2.cuh"

namespace attnkit {
namespace detail {
namespace cuda {

// The kernels are compiled in performer_mma2_<dtype>_d<D>.cu only.
extern template bool run_performer_mma2<half_t, 32>(const LinearProblem& p, int64_t seg, cudaStream_t stream);
extern template bool run_performer_mma2<half_t, 64>(const LinearProblem& p, int64_t seg, cudaStream_t stream);
extern template bool run_performer_mma2<half_t, 128>(const LinearProblem& p, int64_t seg, cudaStream_t stream);
extern template bool run_performer_mma2<bf16_t, 32>(const LinearProblem& p, int64_t seg, cudaStream_t stream);
extern template bool run_performer_mma2<bf16_t, 64>(const LinearProblem& p, int64_t seg, cudaStream_t stream);
extern template bool run_performer_mma2<bf16_t, 128>(const LinearProblem& p, int64_t seg, cudaStream_t stream);

namespace {
/// Internal tuning, read once (for the benchmark's sweep and for bisecting on the GPU; not a public interface):
///   ATTNKIT_PERFORMER_MMA2=0       off (linear.cu runs the v2 / performer_mma.cuh kernels);
///   ATTNKIT_PERFORMER_MMA2_SEG=n   keys per partial state of state_kernel (a multiple of 64 in [64, 2^20],
///                                  default 512): more segments mean more parallel blocks and more partial
///                                  states to write and add. Only rounding depends on it (fixed order).
struct Mma2Tuning {
  bool off = false;
  int64_t seg = 512;
};

const Mma2Tuning& mma2_tuning() {
  static const Mma2Tuning t = [] {
    Mma2Tuning r;
    const char* off = std::getenv("ATTNKIT_PERFORMER_MMA2");
    r.off = off && std::strcmp(off, "0") == 0;
    const char* e = std::getenv("ATTNKIT_PERFORMER_MMA2_SEG");
    if (e && *e) {
      char* end = nullptr;
      const long long v = std::strtoll(e, &end, 10);
      if (end && *end == 0 && v >= 64 && v <= (int64_t{1} << 20) && v % 64 == 0) r.seg = static_cast<int64_t>(v);
    }
    return r;
  }();
  return t;
}
}  // namespace

/// Runs the bidirectional Performer softmax problem p on the fused path and returns true, or returns false
/// (nothing launched) where it does not apply: causal, another map, not float16 / bfloat16, D or Dv outside
/// {32, 64, 128}, m not a positive multiple of 64 (or above 8192), or not enough shared memory.
bool performer_mma2_bidirectional(const LinearProblem& p, cudaStream_t stream) {
  const Mma2Tuning& t = mma2_tuning();
  if (t.off || p.causal || !p.stabilized() || p.state_dtype != DType::Float32) return false;
  if (p.F < 64 || p.F % 64 != 0 || p.F > 8192) return false;
  const bool f16 = p.dtype == DType::Float16;
  if (!f16 && p.dtype != DType::BFloat16) return false;
  switch (p.D) {
    case 32: return f16 ? run_performer_mma2<half_t, 32>(p, t.seg, stream) : run_performer_mma2<bf16_t, 32>(p, t.seg, stream);
    case 64: return f16 ? run_performer_mma2<half_t, 64>(p, t.seg, stream) : run_performer_mma2<bf16_t, 64>(p, t.seg, stream);
    case 128:
      return f16 ? run_performer_mma2<half_t, 128>(p, t.seg, stream) : run_performer_mma2<bf16_t, 128>(p, t.seg, stream);
    default: return false;
  }
}

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
