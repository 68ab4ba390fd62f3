// Gradients of exact, block-sparse, linear and Performer attention on the GPU (none has a CUDA kernel yet).
#include "cpp/src/backend.h"
#include "cuda/common.cuh"

namespace attnkit {
namespace detail {
namespace cuda {

void attention_backward(const AttnBwdProblem& p) {
  require_device(p.fwd.device_index);
  throw Error(ErrorKind::NotBuilt, std::string("attention_backward") + " has no CUDA kernel in this version of attnkit");
}

void linear_attention_backward(const LinearBwdProblem& p) {
  require_device(p.fwd.device_index);
  throw Error(ErrorKind::NotBuilt, std::string(p.fwd.projected() ? "performer_attention_backward" : "linear_attention_backward") +
                                       " has no CUDA kernel in this version of attnkit");
}

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
