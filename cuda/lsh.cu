// LSH (Reformer) attention on the GPU.
#include "cpp/src/backend.h"
#include "cuda/common.cuh"

namespace attnkit {
namespace detail {
namespace cuda {

void lsh_buckets(const LshBucketsProblem& p) {
  require_device(p.device_index);
  throw Error(ErrorKind::NotBuilt, std::string("lsh_buckets") + " has no CUDA kernel in this version of attnkit");
}

void lsh_attention(const LshProblem& p) {
  require_device(p.base.device_index);
  throw Error(ErrorKind::NotBuilt, std::string("lsh_attention") + " has no CUDA kernel in this version of attnkit");
}

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
