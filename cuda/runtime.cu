// CUDA backend infrastructure: device queries, the layout upload and the value download used by the
// validators, and the list of mechanisms that have a CUDA kernel. Each mechanism's entry point lives in its
// own file (attention.cu, merge.cu, ...), one kernel family per translation unit so the build parallelises.
#include <cstdlib>
#include <cstring>

#include "cpp/src/backend.h"
#include "cuda/common.cuh"

namespace attnkit {
namespace detail {
namespace cuda {

void require_device(int index) {
  const int n = device_count();
  if (n == 0) throw Error(ErrorKind::Runtime, "no CUDA device is available (cudaGetDeviceCount found none)");
  if (index < 0 || index >= n)
    throw Error(ErrorKind::Value, "CUDA device index " + std::to_string(index) + " is out of range [0, " +
                                      std::to_string(n) + ")");
}

bool built() { return true; }

namespace {
/// The kernels that have passed tools/gpu_check.sh on a real GPU (tests/test_gpu_*.py against the oracle and
/// the CPU backend, compute-sanitizer memcheck and racecheck over the small cases): they run on CUDA arrays in
/// every build. Public functions (an H100, 2026-11-26), then internal names that gate the second versions of
/// verified functions' kernels (an H100 and an H200, 2026-11-26): "attention_mma_v2" (attention_mma2.cuh) and
/// "attention_decode_v2" (attention_decode2.cuh), chosen in attention.cu; "attention_backward_mma", the
/// tensor-core backward of attention_backward_mma.cu, and "attention_backward_mma_terms", the same with mask,
/// bias / dbias, soft cap and ALiBi; "dla_prefill_v2" (the second DLA prefill kernel; removed in session 27 with
/// v3, v4 replacing both: the name no longer gates anything);
/// "linear_attention_v2" and "performer_attention_v2" (linear_v2.cuh, chosen in linear.cu). Where a gate is
/// closed (a name moved back to kCompiled) the function keeps its first kernel.
constexpr const char* kVerified[] = {
    "attention",          "attention_weights",
    "block_sparse_attention", "merge_attention",
    "rope",               "linear_attention",
    "performer_attention", "linformer_attention",
    "lsh_buckets",        "lsh_attention",
    "dynamic_linear_attention", "attention_backward",
    "block_sparse_attention_backward",
    "attention_mma_v2",   "attention_decode_v2",
    "attention_backward_mma", "attention_backward_mma_terms",
    "dla_prefill_v2",     "linear_attention_v2",
    "performer_attention_v2",
    "attention_mma_v2_small",   // variants 3 and 4 of attention_mma2.cuh (64-row blocks; chosen by env only)
    "performer_attention_mma",  // Performer's products on tensor cores (performer_mma.cuh, chosen in linear.cu)
    "linear_attention_mma",     // causal linear attention on tensor cores (linear_mma.cuh, chosen in linear.cu)
    // an H200, 2026-11-27:
    "linear_attention_mma_c128",  // linear_mma.cuh's default chunk 128 (64 while it was gated; linear.cu)
    "attention_decode_v3",        // the tensor-core decode kernel (attention_decode3.cuh; attention.cu)
    "dla_decode_v2",              // the two-kernel DLA decode step (dla_decode_v2.cu, chosen in dla.cu)
    "download_many",              // download_many's staged copies behind one wait (else one download per array)
    "performer_attention_mma2",   // bidirectional Performer softmax, fused features (performer_mma2.cuh; linear.cu)
    // an H200, session 27 (tools/gpu_check.sh at 7a1bcfb: 1581 of 1582 tests, the one a test tolerance; both
    // sanitizers clean; bench_gpu: v4 the fastest DLA prefill, v3 the fastest DLA decode step):
    "performer_attention_mma2_causal",  // causal Performer softmax on tensor cores (performer_causal_mma.cuh)
    "dla_prefill_v3",   // (removed in session 27 with v2: v4 replaces both; the name gates nothing)
    "dla_prefill_v4",   // A1 A2 B C1 C2: tables, boundaries, merges, chunk-start states, readout (dla_prefill_v4.cuh)
    "dla_decode_v3"};   // the decode step in one kernel, L2 hints for the states (dla_decode_v3.cu; dla.cu)
/// Kernels in this build not yet verified on a GPU (public functions, or internal names of new paths): they
/// run only when the environment sets ATTNKIT_CUDA_UNVERIFIED=1 (how tools/gpu_check.sh tests them);
/// otherwise a public function says there is no kernel, and a gated path falls back to the verified one.
/// A kernel moves to kVerified once the check has passed on a GPU.
constexpr const char* kCompiled[] = {
    "dla_prefill_v5",   // v4 with C1 + C2 fused, the states in shared memory (dla_prefill_v5.cuh; launch_prefill_v4)
    "performer_attention_mma3_causal"};  // the causal Performer's chunk-parallel state pass (performer_causal_mma.cuh)

template <std::size_t N>
bool listed(const char* const (&list)[N], const char* mechanism) {
  for (const char* k : list)
    if (*k && std::strcmp(k, mechanism) == 0) return true;
  return false;
}
}  // namespace

bool has_kernel(const char* mechanism) {
  if (listed(kVerified, mechanism)) return true;
  static const bool unverified = [] {
    const char* e = std::getenv("ATTNKIT_CUDA_UNVERIFIED");
    return e && std::strcmp(e, "1") == 0;
  }();
  return unverified && listed(kCompiled, mechanism);
}

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

void download_many(int n, void* const* dst, const void* const* src, const std::size_t* bytes, int32_t device_index,
                   void* stream) {
  // Staged through this thread's page-locked buffer of kMaxStaged bytes (made on first use, kept until the
  // thread ends): copies into pageable memory return only once done, so only page-locked staging lets the n
  // copies queue behind one wait. Large reads (over kMaxStaged in all) take one download each instead.
  constexpr std::size_t kMaxStaged = std::size_t(1) << 20;
  constexpr std::size_t kAlign = 16;
  std::size_t total = 0;
  for (int i = 0; i < n; ++i) total += (bytes[i] + kAlign - 1) / kAlign * kAlign;
  if (total == 0) return;
  if (total > kMaxStaged || n == 1 || !has_kernel("download_many")) {
    for (int i = 0; i < n; ++i)
      if (bytes[i]) download(dst[i], src[i], bytes[i], device_index, stream);
    return;
  }
  struct Staging {
    char* ptr = nullptr;
    ~Staging() {
      if (ptr) (void)cudaFreeHost(ptr);
    }
  };
  thread_local Staging staging;
  require_device(device_index);
  DeviceGuard guard(device_index);
  if (!staging.ptr) {
    void* p = nullptr;
    ATTNKIT_CUDA_CHECK(cudaHostAlloc(&p, kMaxStaged, cudaHostAllocPortable));
    staging.ptr = static_cast<char*>(p);
  }
  const cudaStream_t s = as_stream(stream);
  std::size_t off = 0;
  for (int i = 0; i < n; ++i) {
    if (bytes[i]) ATTNKIT_CUDA_CHECK(cudaMemcpyAsync(staging.ptr + off, src[i], bytes[i], cudaMemcpyDeviceToHost, s));
    off += (bytes[i] + kAlign - 1) / kAlign * kAlign;
  }
  ATTNKIT_CUDA_CHECK(cudaStreamSynchronize(s));
  off = 0;
  for (int i = 0; i < n; ++i) {
    if (bytes[i]) std::memcpy(dst[i], staging.ptr + off, bytes[i]);
    off += (bytes[i] + kAlign - 1) / kAlign * kAlign;
  }
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

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
