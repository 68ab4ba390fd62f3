#pragma once
// The interface between dispatch.cpp and the backends. Backends receive validated problems only.

#include <cstddef>
#include <memory>

#include "attnkit/runtime.h"
#include "validate/attention.h"
#include "validate/attention_backward.h"
#include "validate/block_sparse.h"
#include "validate/dla.h"
#include "validate/linear.h"
#include "validate/rope.h"

namespace attnkit {
namespace detail {

namespace cpu {
void attention(const AttnProblem& p);
void attention_weights(const AttnProblem& p);
void attention_backward(const AttnBwdProblem& p);  // exact and block-sparse
void linear_attention_backward(const LinearBwdProblem& p);  // linear and Performer
void merge_attention(const MergeProblem& p);
void lsh_buckets(const LshBucketsProblem& p);
void lsh_attention(const LshProblem& p);
void dynamic_linear_attention(const DLAProblem& p);
void linear_attention(const LinearProblem& p);  // linear_attention and performer_attention
void random_features(const RandomFeaturesProblem& p);
void linformer_projection(const LinformerProjectionProblem& p);
void linformer_attention(const LinformerProblem& p);
void rope(const RopeProblem& p);
const char* isa_name();
}  // namespace cpu

namespace cuda {
/// Throws Error(NotBuilt) in builds without CUDA (cuda_stub.cpp).
void attention(const AttnProblem& p);
void attention_weights(const AttnProblem& p);
void attention_backward(const AttnBwdProblem& p);
void linear_attention_backward(const LinearBwdProblem& p);
void merge_attention(const MergeProblem& p);
void lsh_buckets(const LshBucketsProblem& p);
void lsh_attention(const LshProblem& p);
void dynamic_linear_attention(const DLAProblem& p);
void linear_attention(const LinearProblem& p);
void linformer_attention(const LinformerProblem& p);
void rope(const RopeProblem& p);
bool built();
int device_count();
/// Whether this build has a CUDA kernel for `mechanism` (the names of the public functions).
bool has_kernel(const char* mechanism);
/// Whether this build has a kernel for `mechanism` that is compiled but not yet verified on a GPU (runtime.cu's
/// kCompiled list), whatever ATTNKIT_CUDA_UNVERIFIED says: the reason select() gives when it is off names it.
bool compiled_unverified(const char* mechanism);
/// Copies `bytes` of host memory to a new allocation on CUDA device `device_index` (ordered on `stream`);
/// the returned pointer frees it. For long-lived read-only data (layout CSR copies).
std::shared_ptr<void> upload(const void* host, std::size_t bytes, int32_t device_index, void* stream);
/// Copies `bytes` of device memory to host memory `dst` and waits for it on `stream`: the one path by which
/// a validator reads the values of a device array (see validate/common.h).
void download(void* dst, const void* src, std::size_t bytes, int32_t device_index, void* stream);
/// n downloads as one: copies bytes[i] of device memory src[i] to host memory dst[i] for every i and waits
/// for the stream once (download waits once per array; each wait costs a round trip to the device).
void download_many(int n, void* const* dst, const void* const* src, const std::size_t* bytes, int32_t device_index,
                   void* stream);
}  // namespace cuda

/// The one selection of a backend for a call, used by dispatch (which raises Error(NotBuilt) with the
/// reason) and by the public supported() queries alike.
Support select(const char* mechanism, Device device);

/// A support query: runs validate(&specs) in inference mode (outputs not needed), which returns the
/// tensors' device, and the same selection as dispatch.
template <class F>
Support support(const char* mechanism, F&& validate_device) {
  OutputSpecs specs;
  return select(mechanism, validate_device(&specs));
}

/// An output query: runs validate(&specs) in inference mode and returns the outputs it recorded.
template <class F>
OutputSpecs infer_outputs(F&& validate) {
  OutputSpecs specs;
  validate(&specs);
  return specs;
}

/// Runs a validated call on the backend of `device` after select() has said it can.
template <class CudaF, class CpuF>
void route(const char* mechanism, Device device, CudaF&& on_cuda, CpuF&& on_cpu) {
  const Support s = select(mechanism, device);
  if (!s.ok) throw Error(ErrorKind::NotBuilt, s.reason);
  if (device == Device::CUDA)
    on_cuda();
  else
    on_cpu();
}

}  // namespace detail
}  // namespace attnkit
