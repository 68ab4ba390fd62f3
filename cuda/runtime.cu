// CUDA backend infrastructure: device queries, the layout upload and the value download used by the
// validators, and the list of mechanisms that have a CUDA kernel. Each mechanism's entry point lives in its
// own file (attention.cu, merge.cu, ...), one kernel family per translation unit so the build parallelises.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include "cpp/src/backend.h"
#include "cuda/common.cuh"

namespace attnkit {
namespace detail {
namespace cuda {

void require_device(int index) {
  // The runtime enumerates the devices once per process: a count once known is kept (one runtime query per
  // call otherwise, on every call's path). Zero is asked again (no driver yet is not cached).
  static std::atomic<int> known{0};
  int n = known.load(std::memory_order_relaxed);
  if (n == 0) {
    n = device_count();
    if (n > 0) known.store(n, std::memory_order_relaxed);
  }
  if (n == 0) throw Error(ErrorKind::Runtime, "no CUDA device is available (cudaGetDeviceCount found none)");
  if (index < 0 || index >= n)
    throw Error(ErrorKind::Value, "CUDA device index " + std::to_string(index) + " is out of range [0, " +
                                      std::to_string(n) + ")");
}

bool built() { return true; }

void allow_dynamic_smem(const void* kernel, int device, std::size_t bytes) {
  struct Allowed {
    const void* kernel;
    int device;
    std::size_t bytes;
  };
  static std::mutex mu;
  static std::vector<Allowed> allowed;  // a few dozen kernels at most: a linear scan
  std::lock_guard<std::mutex> lock(mu);
  Allowed* found = nullptr;
  for (Allowed& a : allowed)
    if (a.kernel == kernel && a.device == device) found = &a;
  if (found && found->bytes >= bytes) return;
  ATTNKIT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  if (found)
    found->bytes = bytes;
  else
    allowed.push_back({kernel, device, bytes});
}

namespace {
/// The kernels that have passed tools/gpu_check.sh on a real GPU (tests/test_gpu_*.py against the oracle and
/// the CPU backend, compute-sanitizer memcheck and racecheck over the small cases): they run on CUDA arrays in
/// every build. Public functions (an H100, 2026-11-26), then internal names that gate the second versions of
/// verified functions' kernels (an H100 and an H200, 2026-11-26): "attention_mma_v2" (attention_mma2.cuh) and
/// "attention_decode_v2" (attention_decode2.cuh), chosen in attention.cu; "attention_backward_mma", the
/// tensor-core backward of attention_backward_mma.cu, and "attention_backward_mma_terms", the same with mask,
/// bias / dbias, soft cap and ALiBi; "linear_attention_v2" and "performer_attention_v2" (linear_v2.cuh, chosen in linear.cu). Where a gate is
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
    "linear_attention_v2", "performer_attention_v2",
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
    // sanitizers clean; bench_gpu: v4 the fastest DLA prefill, v3 the fastest DLA decode step; DLA prefill v2
    // and v3, verified before, were removed then: v4 replaces both):
    "performer_attention_mma2_causal",  // causal Performer softmax on tensor cores (performer_causal_mma.cuh)
    "dla_prefill_v4",   // A1 A2 B C1 C2: tables, boundaries, merges, chunk-start states, readout (dla_prefill_v4.cuh)
    "dla_decode_v3"};   // the decode step in one kernel, L2 hints for the states (dla_decode_v3.cu; dla.cu)
/// Kernels in this build not yet verified on a GPU (public functions, or internal names of new paths): they
/// run only when the environment sets ATTNKIT_CUDA_UNVERIFIED=1 (how tools/gpu_check.sh tests them);
/// otherwise a public function says there is no kernel, and a gated path falls back to the verified one.
/// A kernel moves to kVerified once the check has passed on a GPU.
constexpr const char* kCompiled[] = {
    "dla_prefill_v5",   // v4 with C1 + C2 fused, the states in shared memory (dla_prefill_v5.cuh; launch_prefill_v4)
    // session 28: the backward passes of linear attention and Performer (linear_backward.cu): closed, these
    // public functions raise the select() reason that names the gate.
    "linear_attention_backward", "performer_attention_backward"};

template <std::size_t N>
bool listed(const char* const (&list)[N], const char* mechanism) {
  for (const char* k : list)
    if (*k && std::strcmp(k, mechanism) == 0) return true;
  return false;
}
}  // namespace

bool compiled_unverified(const char* mechanism) { return listed(kCompiled, mechanism); }

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

namespace {
constexpr std::size_t kMaxStaged = std::size_t(1) << 20;  // the staging buffer's bytes
constexpr std::size_t kAlign = 16;

std::size_t staged_size(std::size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

/// This thread's page-locked staging buffer of kMaxStaged bytes (made on first use, kept until the thread
/// ends).
struct Staging {
  char* ptr = nullptr;
  ~Staging() {
    if (ptr) (void)cudaFreeHost(ptr);
  }
  /// The buffer (current device: device_index, under a DeviceGuard).
  char* buffer() {
    if (!ptr) {
      void* p = nullptr;
      ATTNKIT_CUDA_CHECK(cudaHostAlloc(&p, kMaxStaged, cudaHostAllocPortable));
      ptr = static_cast<char*>(p);
    }
    return ptr;
  }
};
thread_local Staging staging;
}  // namespace

void download_many(int n, void* const* dst, const void* const* src, const std::size_t* bytes, int32_t device_index,
                   void* stream) {
  // Staged through this thread's page-locked buffer of kMaxStaged bytes: copies into pageable memory return
  // only once done, so only page-locked staging lets the n copies queue behind one wait. Large reads (over
  // kMaxStaged in all) take one download each instead.
  std::size_t total = 0;
  for (int i = 0; i < n; ++i) total += staged_size(bytes[i]);
  if (total == 0) return;
  if (total > kMaxStaged || n == 1 || !has_kernel("download_many")) {
    for (int i = 0; i < n; ++i)
      if (bytes[i]) download(dst[i], src[i], bytes[i], device_index, stream);
    return;
  }
  require_device(device_index);
  DeviceGuard guard(device_index);
  char* buf = staging.buffer();
  const cudaStream_t s = as_stream(stream);
  std::size_t off = 0;
  for (int i = 0; i < n; ++i) {
    if (bytes[i]) ATTNKIT_CUDA_CHECK(cudaMemcpyAsync(buf + off, src[i], bytes[i], cudaMemcpyDeviceToHost, s));
    off += staged_size(bytes[i]);
  }
  ATTNKIT_CUDA_CHECK(cudaStreamSynchronize(s));
  off = 0;
  for (int i = 0; i < n; ++i) {
    if (bytes[i]) std::memcpy(dst[i], buf + off, bytes[i]);
    off += staged_size(bytes[i]);
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
