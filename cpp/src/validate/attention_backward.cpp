#include "validate/attention_backward.h"

#include <string>

#include "validate/block_sparse.h"

namespace attnkit {
namespace detail {

ViewN<4> dout_view(const TensorRef& dout, const TensorRef& q, int64_t Dv, DType dtype) {
  int64_t shape[kMaxDims];
  for (int d = 0; d < q.ndim; ++d) shape[d] = q.shape[d];
  shape[q.ndim - 1] = Dv;
  require_defined(dout, "dout");
  require_sane(dout, "dout");
  require_floating(dout, "dout");
  require_shape(dout, shape, q.ndim, "dout");
  require_dtype(dout, dtype, "dout", "(the dtype of q)");
  require_same_device(dout, q, "dout", "q");
  return bhsd_view(dout, "dout");
}

namespace {

void require_lse(const TensorRef& lse) {
  if (!lse.defined())
    value_error("lse must be given: the log-sum-exp of the forward call (attention(..., return_lse=True))");
}

/// The gradient arguments, checked against the validated forward problem f (q, k, v are the forward's);
/// the outputs are bound through `outs` (inferred or checked).
AttnBwdProblem with_grads(AttnProblem f, const AttentionGrads& g, const TensorRef& q, const TensorRef& k,
                          const TensorRef& v, bool has_bias, Outputs& outs) {
  AttnBwdProblem r;
  r.fwd = f;
  r.dout = dout_view(g.dout, q, f.Dv, f.dtype);
  const char* why = "(the dtype of q)";
  if (const TensorRef* t = outs.bind("grad.dq", g.dq, q.shape, q.ndim, f.dtype, why)) {
    r.dq = t->data;
    lead_strides(*t, r.dq_stride);
  }
  if (const TensorRef* t = outs.bind("grad.dk", g.dk, k.shape, k.ndim, f.dtype, why)) {
    r.dk = t->data;
    lead_strides(*t, r.dk_stride);
  }
  if (const TensorRef* t = outs.bind("grad.dv", g.dv, v.shape, v.ndim, f.dtype, why)) {
    r.dv = t->data;
    lead_strides(*t, r.dv_stride);
  }
  if (!has_bias) {
    if (g.dbias.defined()) value_error("dbias can only be computed for a call with a bias (bias is absent)");
    return r;
  }
  const int64_t full[4] = {f.B, f.Hq, f.Sq, f.Sk};
  if (const TensorRef* t = outs.bind("grad.dbias", g.dbias, full, 4, accumulator_dtype(f.dtype),
                                     "(float64 for float64 inputs, else float32)", false)) {
    r.dbias = t->data;
    lead_strides(*t, r.dbias_stride);
  }
  return r;
}

}  // namespace

AttnBwdProblem validate_attention_backward(const AttentionBackwardParams& p, OutputSpecs* infer) {
  require_lse(p.fwd.lse);
  const AttnProblem f = validate_attention(p.fwd, nullptr, nullptr, /*read_out=*/true);
  Outputs outs(infer, p.fwd.q, "q");
  return with_grads(f, p.grad, p.fwd.q, p.fwd.k, p.fwd.v, p.fwd.bias.defined(), outs);
}

AttnBwdProblem validate_block_sparse_backward(const BlockSparseBackwardParams& p, OutputSpecs* infer) {
  require_lse(p.fwd.lse);
  const AttnProblem f = validate_block_sparse(p.fwd, nullptr, /*read_out=*/true);
  Outputs outs(infer, p.fwd.q, "q");
  return with_grads(f, p.grad, p.fwd.q, p.fwd.k, p.fwd.v, false, outs);
}

}  // namespace detail
}  // namespace attnkit
