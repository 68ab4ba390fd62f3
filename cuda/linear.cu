// Kernelized linear attention and Performer (FAVOR+) on the GPU.
#include "cpp/src/backend.h"
#include "cuda/common.cuh"

namespace attnkit {
namespace detail {
namespace cuda {

void linear_attention(const LinearProblem& p) {
  require_device(p.device_index);
  throw Error(ErrorKind::NotBuilt, std::string(p.projected() ? "performer_attention" : "linear_attention") + " has no CUDA kernel in this version of attnkit");
}

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
