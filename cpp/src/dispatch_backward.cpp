// Public entry points of the backward passes: validate once, then hand the problem to the backend of the
// tensors' device. Output queries and support queries run the same validators.
#include "attnkit/backward.h"
#include "backend.h"

namespace attnkit {

void attention_backward(const AttentionBackwardParams& p) {
  const detail::AttnBwdProblem prob = detail::validate_attention_backward(p);
  detail::route("attention_backward", prob.fwd.device,
                [&] { detail::cuda::attention_backward(prob); },
                [&] { detail::cpu::attention_backward(prob); });
}

void block_sparse_attention_backward(const BlockSparseBackwardParams& p) {
  const detail::AttnBwdProblem prob = detail::validate_block_sparse_backward(p);
  detail::route("block_sparse_attention_backward", prob.fwd.device,
                [&] { detail::cuda::attention_backward(prob); },
                [&] { detail::cpu::attention_backward(prob); });
}

void linear_attention_backward(const LinearAttentionBackwardParams& p) {
  const detail::LinearBwdProblem prob = detail::validate_linear_attention_backward(p);
  detail::route("linear_attention_backward", prob.fwd.device,
                [&] { detail::cuda::linear_attention_backward(prob); },
                [&] { detail::cpu::linear_attention_backward(prob); });
}

void performer_attention_backward(const PerformerBackwardParams& p) {
  const detail::LinearBwdProblem prob = detail::validate_performer_backward(p);
  detail::route("performer_attention_backward", prob.fwd.device,
                [&] { detail::cuda::linear_attention_backward(prob); },
                [&] { detail::cpu::linear_attention_backward(prob); });
}

// Support and output queries: the same validators in inference mode (outputs not needed).
Support supported(const AttentionBackwardParams& p) {
  return detail::support("attention_backward",
                         [&](OutputSpecs* s) { return detail::validate_attention_backward(p, s).fwd.device; });
}
Support supported(const BlockSparseBackwardParams& p) {
  return detail::support("block_sparse_attention_backward",
                         [&](OutputSpecs* s) { return detail::validate_block_sparse_backward(p, s).fwd.device; });
}
Support supported(const LinearAttentionBackwardParams& p) {
  return detail::support("linear_attention_backward",
                         [&](OutputSpecs* s) { return detail::validate_linear_attention_backward(p, s).fwd.device; });
}
Support supported(const PerformerBackwardParams& p) {
  return detail::support("performer_attention_backward",
                         [&](OutputSpecs* s) { return detail::validate_performer_backward(p, s).fwd.device; });
}

OutputSpecs attention_backward_outputs(const AttentionBackwardParams& p) {
  return detail::infer_outputs([&](OutputSpecs* s) { detail::validate_attention_backward(p, s); });
}
OutputSpecs block_sparse_attention_backward_outputs(const BlockSparseBackwardParams& p) {
  return detail::infer_outputs([&](OutputSpecs* s) { detail::validate_block_sparse_backward(p, s); });
}
OutputSpecs linear_attention_backward_outputs(const LinearAttentionBackwardParams& p) {
  return detail::infer_outputs([&](OutputSpecs* s) { detail::validate_linear_attention_backward(p, s); });
}
OutputSpecs performer_attention_backward_outputs(const PerformerBackwardParams& p) {
  return detail::infer_outputs([&](OutputSpecs* s) { detail::validate_performer_backward(p, s); });
}

}  // namespace attnkit
