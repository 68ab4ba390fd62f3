// Dynamic linear attention on the GPU.
#include "cpp/src/backend.h"
#include "cuda/common.cuh"

namespace attnkit {
namespace detail {
namespace cuda {

void dynamic_linear_attention(const DLAProblem& p) {
  require_device(p.device_index);
  throw Error(ErrorKind::NotBuilt, std::string("dynamic_linear_attention") + " has no CUDA kernel in this version of attnkit");
}

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
