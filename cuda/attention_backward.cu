// Gradients of exact and block-sparse attention on the GPU.
#include "cpp/src/backend.h"
#include "cuda/common.cuh"

namespace attnkit {
namespace detail {
namespace cuda {

void attention_backward(const AttnBwdProblem& p) {
  require_device(p.fwd.device_index);
  throw Error(ErrorKind::NotBuilt, std::string("attention_backward") + " has no CUDA kernel in this version of attnkit");
}

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
