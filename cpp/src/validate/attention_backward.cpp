#include "validate/attention_backward.h"

#include <string>

#include "validate/block_sparse.h"

namespace attnkit {
namespace detail {
namespace {

void require_lse(const TensorRef& lse) {
  if (!lse.defined())
    value_error("lse must be given: the log-sum-exp of the forward call (attention(..., return_lse=True))");
}

/// The gradient arguments, checked against the validated forward problem f (q, k, v are the forward's).
AttnBwdProblem with_grads(AttnProblem f, const AttentionGrads& g, const TensorRef& q, const TensorRef& k,
                          const TensorRef& v, bool has_bias) {
  AttnBwdProblem r;
  r.fwd = f;
  // dout: shaped and typed like out.
  {
    int64_t shape[4];
    for (int d = 0; d < q.ndim; ++d) shape[d] = q.shape[d];
    shape[q.ndim - 1] = f.Dv;
    require_defined(g.dout, "dout");
    require_sane(g.dout, "dout");
    require_floating(g.dout, "dout");
    require_shape(g.dout, shape, q.ndim, "dout");
    require_dtype(g.dout, f.dtype, "dout", "(the dtype of q)");
    require_same_device(g.dout, q, "dout", "q");
    r.dout = bhsd_view(g.dout, "dout");
  }
  require_output(g.dq, q.shape, q.ndim, f.dtype, "(the dtype of q)", q, "q", "dq");
  require_output(g.dk, k.shape, k.ndim, f.dtype, "(the dtype of q)", q, "q", "dk");
  require_output(g.dv, v.shape, v.ndim, f.dtype, "(the dtype of q)", q, "q", "dv");
  r.dq = g.dq.data;
  r.dk = g.dk.data;
  r.dv = g.dv.data;
  lead_strides(g.dq, r.dq_stride);
  lead_strides(g.dk, r.dk_stride);
  lead_strides(g.dv, r.dv_stride);
  if (g.dbias.defined()) {
    if (!has_bias) value_error("dbias can only be computed for a call with a bias (bias is absent)");
    const int64_t full[4] = {f.B, f.Hq, f.Sq, f.Sk};
    require_output(g.dbias, full, 4, accumulator_dtype(f.dtype), "(float64 for float64 inputs, else float32)", q,
                   "q", "dbias");
    r.dbias = g.dbias.data;
    lead_strides(g.dbias, r.dbias_stride);
  }
  return r;
}

}  // namespace

AttnBwdProblem validate_attention_backward(const AttentionBackwardParams& p) {
  require_lse(p.fwd.lse);
  const AttnProblem f = validate_attention(p.fwd, nullptr);
  return with_grads(f, p.grad, p.fwd.q, p.fwd.k, p.fwd.v, p.fwd.bias.defined());
}

AttnBwdProblem validate_block_sparse_backward(const BlockSparseBackwardParams& p) {
  require_lse(p.fwd.lse);
  const AttnProblem f = validate_block_sparse(p.fwd);
  return with_grads(f, p.grad, p.fwd.q, p.fwd.k, p.fwd.v, false);
}

}  // namespace detail
}  // namespace attnkit
