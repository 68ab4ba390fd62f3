// Exact attention on the GPU.
#include "cpp/src/backend.h"
#include "cuda/common.cuh"

namespace attnkit {
namespace detail {
namespace cuda {

void attention(const AttnProblem& p) {
  require_device(p.device_index);
  throw Error(ErrorKind::NotBuilt, std::string("attention") + " has no CUDA kernel in this version of attnkit");
}

void attention_weights(const AttnProblem& p) {
  require_device(p.device_index);
  throw Error(ErrorKind::NotBuilt, std::string("attention_weights") + " has no CUDA kernel in this version of attnkit");
}

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
