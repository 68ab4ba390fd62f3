// Rotary position embedding on the GPU.
#include "cpp/src/backend.h"
#include "cuda/common.cuh"

namespace attnkit {
namespace detail {
namespace cuda {

void rope(const RopeProblem& p) {
  require_device(p.device_index);
  throw Error(ErrorKind::NotBuilt, std::string("rope") + " has no CUDA kernel in this version of attnkit");
}

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
