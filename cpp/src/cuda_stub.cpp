// Compiled instead of the CUDA backend when attnkit is built without nvcc: device tensors get a clear
// error rather than a crash.
#include "backend.h"

namespace attnkit {
namespace detail {
namespace cuda {
namespace {
[[noreturn]] void not_built() {
  throw Error(ErrorKind::NotBuilt,
              "attnkit was built without CUDA: rebuild with nvcc on the PATH (or -DATTNKIT_CUDA=ON) to use "
              "GPU arrays");
}
}  // namespace

void attention(const AttnProblem&) { not_built(); }
void attention_weights(const AttnProblem&) { not_built(); }
void attention_backward(const AttnBwdProblem&) { not_built(); }
void linear_attention_backward(const LinearBwdProblem&) { not_built(); }
void merge_attention(const MergeProblem&) { not_built(); }
void lsh_buckets(const LshBucketsProblem&) { not_built(); }
void lsh_attention(const LshProblem&) { not_built(); }
void dynamic_linear_attention(const DLAProblem&) { not_built(); }
void linear_attention(const LinearProblem&) { not_built(); }
void linformer_attention(const LinformerProblem&) { not_built(); }
std::shared_ptr<void> upload(const void*, std::size_t, int32_t, void*) { not_built(); }
void download(void*, const void*, std::size_t, int32_t, void*) { not_built(); }
void download_many(int, void* const*, const void* const*, const std::size_t*, int32_t, void*) { not_built(); }
void rope(const RopeProblem&) { not_built(); }
bool built() { return false; }
bool has_kernel(const char*) { return false; }
bool compiled_unverified(const char*) { return false; }
int device_count() { return 0; }

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
