// Public entry points: validate once, then hand the problem to the backend of the tensors' device.
#include <cstdlib>

#include "attnkit/attnkit.h"
#include "backend.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace attnkit {
namespace {

/// The most threads one call uses: 4 per processor, at least 16, at most 1024. OpenMP would otherwise
/// try to start whatever OMP_NUM_THREADS or set_num_threads asked for (100000 threads and their scratch
/// crash the process); results do not depend on the number, so capping it changes nothing else.
int thread_cap() {
#if defined(_OPENMP)
  const int procs = omp_get_num_procs();
  return procs > 256 ? 1024 : (procs < 4 ? 16 : 4 * procs);
#else
  return 1;
#endif
}

/// Caps the calling thread's OpenMP team size at thread_cap() for the duration of one call, then
/// restores the caller's setting.
class ThreadCap {
 public:
  ThreadCap() {
#if defined(_OPENMP)
    saved_ = omp_get_max_threads();
    if (saved_ > thread_cap()) omp_set_num_threads(thread_cap());
#endif
  }
  ~ThreadCap() {
#if defined(_OPENMP)
    if (saved_ > thread_cap()) omp_set_num_threads(saved_);
#endif
  }
  ThreadCap(const ThreadCap&) = delete;
  ThreadCap& operator=(const ThreadCap&) = delete;

 private:
  int saved_ = 1;
};

}  // namespace

void attention(const AttentionParams& p) {
  const ThreadCap cap;
  const detail::AttnProblem prob = detail::validate_attention(p, nullptr);
  if (prob.device == Device::CUDA) return detail::cuda::attention(prob);
  detail::cpu::attention(prob);
}

void attention_weights(const AttentionParams& p, const TensorRef& weights) {
  const ThreadCap cap;
  const detail::AttnProblem prob = detail::validate_attention(p, &weights);
  if (prob.device == Device::CUDA) return detail::cuda::attention_weights(prob);
  detail::cpu::attention_weights(prob);
}

void merge_attention(const MergeParams& p) {
  const ThreadCap cap;
  const detail::MergeProblem prob = detail::validate_merge(p);
  if (prob.device == Device::CUDA) return detail::cuda::merge_attention(prob);
  detail::cpu::merge_attention(prob);
}

void block_sparse_attention(const BlockSparseParams& p) {
  const ThreadCap cap;
  const detail::AttnProblem prob = detail::validate_block_sparse(p);
  if (prob.device == Device::CUDA) return detail::cuda::attention(prob);
  detail::cpu::attention(prob);
}

void lsh_buckets(const LshBucketsParams& p) {
  const ThreadCap cap;
  const detail::LshBucketsProblem prob = detail::validate_lsh_buckets(p);
  if (prob.device == Device::CUDA) return detail::cuda::lsh_buckets(prob);
  detail::cpu::lsh_buckets(prob);
}

void lsh_attention(const LshAttentionParams& p) {
  const ThreadCap cap;
  const detail::LshProblem prob = detail::validate_lsh_attention(p);
  if (prob.base.device == Device::CUDA) return detail::cuda::lsh_attention(prob);
  detail::cpu::lsh_attention(prob);
}

void dynamic_linear_attention(const DLAParams& p) {
  const ThreadCap cap;
  const detail::DLAProblem prob = detail::validate_dla(p);
  if (prob.device == Device::CUDA) return detail::cuda::dynamic_linear_attention(prob);
  detail::cpu::dynamic_linear_attention(prob);
}

void linear_attention(const LinearAttentionParams& p) {
  const ThreadCap cap;
  const detail::LinearProblem prob = detail::validate_linear_attention(p);
  if (prob.device == Device::CUDA) return detail::cuda::linear_attention(prob);
  detail::cpu::linear_attention(prob);
}

void performer_attention(const PerformerParams& p) {
  const ThreadCap cap;
  const detail::LinearProblem prob = detail::validate_performer(p);
  if (prob.device == Device::CUDA) return detail::cuda::linear_attention(prob);
  detail::cpu::linear_attention(prob);
}

// Random features and projections are generated on the host in double precision (they are small and
// must be identical everywhere); the validators require host memory for them.
void random_features(const RandomFeaturesParams& p) {
  const ThreadCap cap;
  detail::cpu::random_features(detail::validate_random_features(p));
}

void linformer_projection(const LinformerProjectionParams& p) {
  const ThreadCap cap;
  detail::cpu::linformer_projection(detail::validate_linformer_projection(p));
}

void linformer_attention(const LinformerParams& p) {
  const ThreadCap cap;
  const detail::LinformerProblem prob = detail::validate_linformer(p);
  if (prob.attn.device == Device::CUDA) return detail::cuda::linformer_attention(prob);
  detail::cpu::linformer_attention(prob);
}

const char* version() { return ATTNKIT_VERSION_STRING; }
bool built_with_cuda() { return detail::cuda::built(); }
int cuda_device_count() { return detail::cuda::device_count(); }
const char* cpu_isa() { return detail::cpu::isa_name(); }

int get_num_threads() {
#if defined(_OPENMP)
  const int n = omp_get_max_threads();
  return n < thread_cap() ? n : thread_cap();
#else
  return 1;
#endif
}

void set_num_threads(int n) {
  if (n < 1) throw Error(ErrorKind::Value, "num_threads must be >= 1, got " + std::to_string(n));
#if defined(_OPENMP)
  omp_set_num_threads(n);
#endif
}

}  // namespace attnkit
