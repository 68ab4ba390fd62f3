// Public entry points of the backward passes: validate once, then hand the problem to the backend of the
// tensors' device.
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

Support supported(const AttentionBackwardParams& p) {
  return detail::select("attention_backward", detail::validate_attention_backward(p).fwd.device);
}
Support supported(const BlockSparseBackwardParams& p) {
  return detail::select("block_sparse_attention_backward", detail::validate_block_sparse_backward(p).fwd.device);
}

}  // namespace attnkit
