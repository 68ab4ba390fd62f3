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

namespace {
/// Runs a validator in inference mode: its output specs (every input checked first).
template <class F>
OutputSpecs infer(F&& validate) {
  OutputSpecs specs;
  validate(&specs);
  return specs;
}
}  // namespace

// Support queries validate the inputs (outputs inferred, so they need not be allocated yet).
Support supported(const AttentionBackwardParams& p) {
  OutputSpecs s;
  return detail::select("attention_backward", detail::validate_attention_backward(p, &s).fwd.device);
}
Support supported(const BlockSparseBackwardParams& p) {
  OutputSpecs s;
  return detail::select("block_sparse_attention_backward", detail::validate_block_sparse_backward(p, &s).fwd.device);
}
Support supported(const LinearAttentionBackwardParams& p) {
  OutputSpecs s;
  return detail::select("linear_attention_backward", detail::validate_linear_attention_backward(p, &s).fwd.device);
}
Support supported(const PerformerBackwardParams& p) {
  OutputSpecs s;
  return detail::select("performer_attention_backward", detail::validate_performer_backward(p, &s).fwd.device);
}

OutputSpecs attention_backward_outputs(const AttentionBackwardParams& p) {
  return infer([&](OutputSpecs* s) { detail::validate_attention_backward(p, s); });
}
OutputSpecs block_sparse_attention_backward_outputs(const BlockSparseBackwardParams& p) {
  return infer([&](OutputSpecs* s) { detail::validate_block_sparse_backward(p, s); });
}
OutputSpecs linear_attention_backward_outputs(const LinearAttentionBackwardParams& p) {
  return infer([&](OutputSpecs* s) { detail::validate_linear_attention_backward(p, s); });
}
OutputSpecs performer_attention_backward_outputs(const PerformerBackwardParams& p) {
  return infer([&](OutputSpecs* s) { detail::validate_performer_backward(p, s); });
}

}  // namespace attnkit
