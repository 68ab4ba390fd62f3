// CUDA backend entry points. Mechanisms plug their kernels in here as they gain CUDA implementations;
// until a mechanism has one, a device call reports that clearly instead of running a slow fallback.
#include "cpp/src/backend.h"
#include "cuda/common.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
namespace {
[[noreturn]] void no_kernel(const char* what) {
  throw Error(ErrorKind::NotBuilt, std::string(what) +
                                       " has no CUDA kernel in this version of attnkit; pass NumPy arrays "
                                       "to run it on the CPU");
}
void require_device(int index) {
  const int n = device_count();
  if (n == 0) throw Error(ErrorKind::Runtime, "no CUDA device is available (cudaGetDeviceCount found none)");
  if (index < 0 || index >= n)
    throw Error(ErrorKind::Value, "CUDA device index " + std::to_string(index) + " is out of range [0, " +
                                      std::to_string(n) + ")");
}
}  // namespace

bool built() { return true; }

// No mechanism has a CUDA kernel yet (issue "The CUDA backend"); each one that gains one is named here.
bool has_kernel(const char*) { return false; }

std::shared_ptr<void> upload(const void* host, std::size_t bytes, int32_t device_index, void* stream) {
  require_device(device_index);
  DeviceGuard guard(device_index);
  void* dev = nullptr;
  ATTNKIT_CUDA_CHECK(cudaMalloc(&dev, bytes ? bytes : 1));
  std::shared_ptr<void> owner(dev, [device_index](void* ptr) {
    int prev = 0;
    if (cudaGetDevice(&prev) != cudaSuccess) return;
    cudaSetDevice(device_index);
    cudaFree(ptr);
    cudaSetDevice(prev);
  });
  ATTNKIT_CUDA_CHECK(cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, as_stream(stream)));
  // The host buffer belongs to the caller again once we return.
  ATTNKIT_CUDA_CHECK(cudaStreamSynchronize(as_stream(stream)));
  return owner;
}

void download(void* dst, const void* src, std::size_t bytes, int32_t device_index, void* stream) {
  require_device(device_index);
  DeviceGuard guard(device_index);
  ATTNKIT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, as_stream(stream)));
  ATTNKIT_CUDA_CHECK(cudaStreamSynchronize(as_stream(stream)));
}

int device_count() {
  int n = 0;
  // No driver or no GPU is not an error for this query: it simply means zero devices.
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

void attention(const AttnProblem& p) {
  require_device(p.device_index);
  no_kernel("attention");
}
void attention_weights(const AttnProblem& p) {
  require_device(p.device_index);
  no_kernel("attention_weights");
}
void attention_backward(const AttnBwdProblem& p) {
  require_device(p.fwd.device_index);
  no_kernel("attention_backward");
}
void merge_attention(const MergeProblem& p) {
  require_device(p.device_index);
  no_kernel("merge_attention");
}
void lsh_buckets(const LshBucketsProblem& p) {
  require_device(p.device_index);
  no_kernel("lsh_buckets");
}
void lsh_attention(const LshProblem& p) {
  require_device(p.base.device_index);
  no_kernel("lsh_attention");
}

void dynamic_linear_attention(const DLAProblem& p) {
  require_device(p.device_index);
  no_kernel("dynamic_linear_attention");
}

void linear_attention(const LinearProblem& p) {
  require_device(p.device_index);
  no_kernel(p.projected() ? "performer_attention" : "linear_attention");
}
void linformer_attention(const LinformerProblem& p) {
  require_device(p.attn.device_index);
  no_kernel("linformer_attention");
}
void rope(const RopeProblem& p) {
  require_device(p.device_index);
  no_kernel("rope");
}

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
