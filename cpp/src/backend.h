#pragma once
// The interface between dispatch.cpp and the backends. Backends receive validated problems only.

#include "validate/attention.h"
#include "validate/attention_backward.h"
#include "validate/block_sparse.h"
#include "validate/dla.h"
#include "validate/linear.h"

namespace attnkit {
namespace detail {

namespace cpu {
void attention(const AttnProblem& p);
void attention_weights(const AttnProblem& p);
void attention_backward(const AttnBwdProblem& p);  // exact and block-sparse
void merge_attention(const MergeProblem& p);
void lsh_buckets(const LshBucketsProblem& p);
void lsh_attention(const LshProblem& p);
void dynamic_linear_attention(const DLAProblem& p);
void linear_attention(const LinearProblem& p);  // linear_attention and performer_attention
void random_features(const RandomFeaturesProblem& p);
void linformer_projection(const LinformerProjectionProblem& p);
void linformer_attention(const LinformerProblem& p);
const char* isa_name();
}  // namespace cpu

namespace cuda {
/// Throws Error(NotBuilt) in builds without CUDA (cuda_stub.cpp).
void attention(const AttnProblem& p);
void attention_weights(const AttnProblem& p);
void attention_backward(const AttnBwdProblem& p);
void merge_attention(const MergeProblem& p);
void lsh_buckets(const LshBucketsProblem& p);
void lsh_attention(const LshProblem& p);
void dynamic_linear_attention(const DLAProblem& p);
void linear_attention(const LinearProblem& p);
void linformer_attention(const LinformerProblem& p);
bool built();
int device_count();
}  // namespace cuda

}  // namespace detail
}  // namespace attnkit
