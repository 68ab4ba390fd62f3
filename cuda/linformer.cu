// Linformer on the GPU: projection of K and V, then the exact kernel.
#include "cpp/src/backend.h"
#include "cuda/common.cuh"

namespace attnkit {
namespace detail {
namespace cuda {

void linformer_attention(const LinformerProblem& p) {
  require_device(p.attn.device_index);
  throw Error(ErrorKind::NotBuilt, std::string("linformer_attention") + " has no CUDA kernel in this version of attnkit");
}

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
