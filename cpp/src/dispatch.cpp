// Public entry points: validate once, then hand the problem to the backend of the tensors' device.
#include <cstdlib>

#include "attnkit/attnkit.h"
#include "backend.h"
#include "tuning.h"

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
  // Read once: omp_get_num_procs asks the kernel for the thread's affinity on every call (libgomp), and
  // every call of every function (a CUDA call too) passes here; a cap from the first call's processor
  // count is as good as any (results do not depend on the number of threads).
  static const int cap = [] {
    const int procs = omp_get_num_procs();
    return procs > 256 ? 1024 : (procs < 4 ? 16 : 4 * procs);
  }();
  return cap;
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

namespace detail {

Support select(const char* mechanism, Device device) {
  Support s;
  if (device == Device::CPU) {
    s.ok = true;
    s.backend = std::string("cpu/") + cpu::isa_name();
    return s;
  }
  s.backend = "cuda";
  if (!cuda::built())
    s.reason = "attnkit was built without CUDA: rebuild with nvcc on the PATH (or -DATTNKIT_CUDA=ON) to use GPU arrays";
  else if (!cuda::has_kernel(mechanism) && cuda::compiled_unverified(mechanism))
    s.reason = std::string(mechanism) +
               " has no CUDA kernel enabled in this build: its kernel is compiled but not yet verified on a GPU "
               "(set ATTNKIT_CUDA_UNVERIFIED=1 to run it); pass NumPy arrays to run it on the CPU";
  else if (!cuda::has_kernel(mechanism))
    s.reason = std::string(mechanism) +
               " has no CUDA kernel in this version of attnkit; pass NumPy arrays to run it on the CPU";
  else
    s.ok = true;
  return s;
}

}  // namespace detail

void attention(const AttentionParams& p) {
  const ThreadCap cap;
  const detail::AttnProblem prob = detail::validate_attention(p, nullptr);
  detail::route("attention", prob.device,
                [&] { detail::cuda::attention(prob); },
                [&] { detail::cpu::attention(prob); });
}

void attention_weights(const AttentionParams& p, const TensorRef& weights) {
  const ThreadCap cap;
  const detail::AttnProblem prob = detail::validate_attention(p, &weights);
  detail::route("attention_weights", prob.device,
                [&] { detail::cuda::attention_weights(prob); },
                [&] { detail::cpu::attention_weights(prob); });
}

void merge_attention(const MergeParams& p) {
  const ThreadCap cap;
  const detail::MergeProblem prob = detail::validate_merge(p);
  detail::route("merge_attention", prob.device,
                [&] { detail::cuda::merge_attention(prob); },
                [&] { detail::cpu::merge_attention(prob); });
}

void block_sparse_attention(const BlockSparseParams& p) {
  const ThreadCap cap;
  const detail::AttnProblem prob = detail::validate_block_sparse(p);
  detail::route("block_sparse_attention", prob.device,
                [&] { detail::cuda::attention(prob); },
                [&] { detail::cpu::attention(prob); });
}

void lsh_buckets(const LshBucketsParams& p) {
  const ThreadCap cap;
  const detail::LshBucketsProblem prob = detail::validate_lsh_buckets(p);
  detail::route("lsh_buckets", prob.device,
                [&] { detail::cuda::lsh_buckets(prob); },
                [&] { detail::cpu::lsh_buckets(prob); });
}

void lsh_attention(const LshAttentionParams& p) {
  const ThreadCap cap;
  const detail::LshProblem prob = detail::validate_lsh_attention(p);
  detail::route("lsh_attention", prob.base.device,
                [&] { detail::cuda::lsh_attention(prob); },
                [&] { detail::cpu::lsh_attention(prob); });
}

void dynamic_linear_attention(const DLAParams& p) {
  const ThreadCap cap;
  const detail::DLAProblem prob = detail::validate_dla(p);
  detail::route("dynamic_linear_attention", prob.device,
                [&] { detail::cuda::dynamic_linear_attention(prob); },
                [&] { detail::cpu::dynamic_linear_attention(prob); });
}

void linear_attention(const LinearAttentionParams& p) {
  const ThreadCap cap;
  const detail::LinearProblem prob = detail::validate_linear_attention(p);
  detail::route("linear_attention", prob.device,
                [&] { detail::cuda::linear_attention(prob); },
                [&] { detail::cpu::linear_attention(prob); });
}

void performer_attention(const PerformerParams& p) {
  const ThreadCap cap;
  const detail::LinearProblem prob = detail::validate_performer(p);
  detail::route("performer_attention", prob.device,
                [&] { detail::cuda::linear_attention(prob); },
                [&] { detail::cpu::linear_attention(prob); });
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
  detail::route("linformer_attention", prob.attn.device,
                [&] { detail::cuda::linformer_attention(prob); },
                [&] { detail::cpu::linformer_attention(prob); });
}

// Support queries: the validator (in inference mode: outputs are not needed) and the same selection.
using detail::support;

Support supported(const AttentionParams& p) {
  return support("attention", [&](OutputSpecs* s) { return detail::validate_attention(p, nullptr, s).device; });
}
Support supported(const MergeParams& p) {
  return support("merge_attention", [&](OutputSpecs* s) { return detail::validate_merge(p, s).device; });
}
Support supported(const BlockSparseParams& p) {
  return support("block_sparse_attention", [&](OutputSpecs* s) { return detail::validate_block_sparse(p, s).device; });
}
Support supported(const LshBucketsParams& p) {
  return support("lsh_buckets", [&](OutputSpecs* s) { return detail::validate_lsh_buckets(p, s).device; });
}
Support supported(const LshAttentionParams& p) {
  return support("lsh_attention", [&](OutputSpecs* s) { return detail::validate_lsh_attention(p, s).base.device; });
}
Support supported(const DLAParams& p) {
  return support("dynamic_linear_attention", [&](OutputSpecs* s) { return detail::validate_dla(p, s).device; });
}
Support supported(const LinearAttentionParams& p) {
  return support("linear_attention", [&](OutputSpecs* s) { return detail::validate_linear_attention(p, s).device; });
}
Support supported(const PerformerParams& p) {
  return support("performer_attention", [&](OutputSpecs* s) { return detail::validate_performer(p, s).device; });
}
Support supported(const LinformerParams& p) {
  return support("linformer_attention", [&](OutputSpecs* s) { return detail::validate_linformer(p, s).attn.device; });
}
Support supported(const RopeParams& p) {
  return support("rope", [&](OutputSpecs* s) { return detail::validate_rope(p, s).device; });
}

// Output queries: the same validators in inference mode.
using detail::infer_outputs;

OutputSpecs attention_outputs(const AttentionParams& p) {
  return infer_outputs([&](OutputSpecs* s) { detail::validate_attention(p, nullptr, s); });
}
OutputSpecs attention_weights_outputs(const AttentionParams& p) {
  const TensorRef none;
  return infer_outputs([&](OutputSpecs* s) { detail::validate_attention(p, &none, s); });
}
OutputSpecs merge_attention_outputs(const MergeParams& p) {
  return infer_outputs([&](OutputSpecs* s) { detail::validate_merge(p, s); });
}
OutputSpecs block_sparse_attention_outputs(const BlockSparseParams& p) {
  return infer_outputs([&](OutputSpecs* s) { detail::validate_block_sparse(p, s); });
}
OutputSpecs lsh_buckets_outputs(const LshBucketsParams& p) {
  return infer_outputs([&](OutputSpecs* s) { detail::validate_lsh_buckets(p, s); });
}
OutputSpecs lsh_attention_outputs(const LshAttentionParams& p) {
  return infer_outputs([&](OutputSpecs* s) { detail::validate_lsh_attention(p, s); });
}
OutputSpecs dynamic_linear_attention_outputs(const DLAParams& p) {
  return infer_outputs([&](OutputSpecs* s) { detail::validate_dla(p, s); });
}
OutputSpecs linear_attention_outputs(const LinearAttentionParams& p) {
  return infer_outputs([&](OutputSpecs* s) { detail::validate_linear_attention(p, s); });
}
OutputSpecs performer_attention_outputs(const PerformerParams& p) {
  return infer_outputs([&](OutputSpecs* s) { detail::validate_performer(p, s); });
}
OutputSpecs random_features_outputs(const RandomFeaturesParams& p) {
  return infer_outputs([&](OutputSpecs* s) { detail::validate_random_features(p, s); });
}
OutputSpecs linformer_projection_outputs(const LinformerProjectionParams& p) {
  return infer_outputs([&](OutputSpecs* s) { detail::validate_linformer_projection(p, s); });
}
OutputSpecs linformer_attention_outputs(const LinformerParams& p) {
  return infer_outputs([&](OutputSpecs* s) { detail::validate_linformer(p, s); });
}

OutputSpecs rope_outputs(const RopeParams& p) {
  return infer_outputs([&](OutputSpecs* s) { detail::validate_rope(p, s); });
}

void rope(const RopeParams& p) {
  const detail::RopeProblem prob = detail::validate_rope(p);
  detail::route("rope", prob.device,
                [&] { detail::cuda::rope(prob); },
                [&] { detail::cpu::rope(prob); });
}

const char* version() { return ATTNKIT_VERSION_STRING; }
bool built_with_cuda() { return detail::cuda::built(); }
int cuda_device_count() { return detail::cuda::device_count(); }
bool cuda_has_kernel(const char* mechanism) { return mechanism && detail::cuda::built() && detail::cuda::has_kernel(mechanism); }
const char* cpu_isa() { return detail::cpu::isa_name(); }

void set_tuning(const char* name, int64_t value) { detail::set_tuning(name ? name : "", value); }
int64_t get_tuning(const char* name) { return detail::get_tuning(name ? name : ""); }

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
