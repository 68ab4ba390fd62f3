#include "validate/attention.h"

#include "validate/checked.h"

#include <cmath>
#include <string>

namespace attnkit {
namespace detail {

AttnProblem validate_attention(const AttentionParams& p, const TensorRef* weights, OutputSpecs* infer,
                               bool read_out) {
  const bool want_weights = weights != nullptr;
  AttnProblem r;
  const QkvViews qkv = qkv_views(p.q, p.k, want_weights ? nullptr : &p.v);
  copy_geometry(r, qkv, p.q, p.stream, &AttnProblem::Sq);

  // Output(s), shaped like q with the last dim replaced, same rank as q.
  Outputs outs(infer, p.q, "q", read_out);
  {
    int64_t shape[4];
    for (int d = 0; d < p.q.ndim; ++d) shape[d] = p.q.shape[d];
    shape[p.q.ndim - 1] = want_weights ? r.Sk : r.Dv;
    if (const TensorRef* o = outs.bind(want_weights ? "weights" : "out", want_weights ? *weights : p.out, shape,
                                       p.q.ndim, r.dtype, "(the dtype of q)")) {
      r.out = o->data;
      lead_strides(*o, r.out_stride);
    }
  }
  if (!want_weights)
    if (const TensorRef* l = outs.bind("lse", p.lse, p.q.shape, p.q.ndim - 1, accumulator_dtype(r.dtype),
                                       "(float64 for float64 inputs, else float32)", /*required=*/false)) {
      r.lse = l->data;
      lead_strides(*l, r.lse_stride);
    }

  // Scalars.
  r.scale = resolve_score_scale(p.scale, r.D, r.dtype);
  if (!std::isfinite(p.softcap) || p.softcap < 0)
    value_error("softcap must be a finite value > 0 (or 0 for none), got " + std::to_string(p.softcap));
  if (p.softcap > 0) {  // the kernels hold c and 1/c in the accumulation type (inf there: NaN scores)
    require_in_accumulator_range(p.softcap, r.dtype, "softcap");
    require_in_accumulator_range(1.0 / p.softcap, r.dtype, "1 / softcap");
  }
  r.softcap = p.softcap;
  r.causal = p.causal;
  // A window side reaching past the sequence allows exactly what Sq + Sk does: clamping keeps every
  // position sum (i + a + right + 1) far from int64 overflow.
  const int64_t reach = r.Sq + r.Sk;
  r.window_left = p.window_left < 0 ? -1 : clamp_i64(p.window_left, 0, reach);
  r.window_right = p.window_right < 0 ? -1 : clamp_i64(p.window_right, 0, reach);

  // Masking operands.
  const int64_t full[4] = {r.B, r.Hq, r.Sq, r.Sk};
  const char* full_desc = "[B, Hq, Sq, Sk]";
  if (p.mask.defined()) {
    require_dtype(p.mask, DType::Bool, "mask", "(True = attend; use bias for additive float masks)");
    require_same_device(p.mask, p.q, "mask", "q");
    r.mask = broadcast_view(p.mask, full, "mask", full_desc);
  }
  if (p.bias.defined()) {
    require_sane(p.bias, "bias");
    require_floating(p.bias, "bias");
    require_same_device(p.bias, p.q, "bias", "q");
    r.bias = broadcast_view(p.bias, full, "bias", full_desc);
  }
  r.key_lengths = key_lengths_view(p.key_lengths, p.q, r.B, r.Sk, p.stream);
  if (p.alibi_slopes.defined()) {
    require_sane(p.alibi_slopes, "alibi_slopes");
    require_floating(p.alibi_slopes, "alibi_slopes");
    require_same_device(p.alibi_slopes, p.q, "alibi_slopes", "q");
    if (p.alibi_slopes.ndim < 1 || p.alibi_slopes.ndim > 2 ||
        p.alibi_slopes.shape[p.alibi_slopes.ndim - 1] != r.Hq ||
        (p.alibi_slopes.ndim == 2 && p.alibi_slopes.shape[0] != r.B))
      value_error("alibi_slopes must have shape (Hq,) = (" + std::to_string(r.Hq) + ",) or (B, Hq) = (" +
                  std::to_string(r.B) + ", " + std::to_string(r.Hq) + "), got " + shape_str(p.alibi_slopes));
    const int64_t bh[2] = {r.B, r.Hq};
    r.alibi = broadcast_view(p.alibi_slopes, bh, "alibi_slopes", "[B, Hq]");
  }
  return r;
}

MergeProblem validate_merge(const MergeParams& p, OutputSpecs* infer) {
  MergeProblem r;
  if (p.outs.empty()) value_error("outs must hold at least one partial result");
  if (p.lses.size() != p.outs.size())
    value_error("lses must hold one entry per entry of outs (" + std::to_string(p.outs.size()) + "), got " +
                std::to_string(p.lses.size()));
  const TensorRef& o0 = p.outs[0];
  require_defined(o0, "outs[0]");
  require_sane(o0, "outs[0]");
  require_floating(o0, "outs[0]");
  if (o0.ndim < 1) value_error("outs[0] must have at least one dimension (the value dim), got a 0-d array");
  r.device = o0.device;
  r.device_index = o0.device_index;
  r.stream = p.stream;
  r.dtype = o0.dtype;
  r.lse_dtype = accumulator_dtype(o0.dtype);
  r.nd = o0.ndim - 1;
  for (int d = 0; d < o0.ndim; ++d) r.shape[d] = o0.shape[d];
  r.Dv = o0.shape[o0.ndim - 1];
  r.rows = 1;
  for (int d = 0; d < r.nd; ++d) r.rows *= o0.shape[d];
  for (std::size_t i = 0; i < p.outs.size(); ++i) {
    const std::string on = "outs[" + std::to_string(i) + "]";
    const std::string ln = "lses[" + std::to_string(i) + "]";
    const TensorRef& o = p.outs[i];
    const TensorRef& l = p.lses[i];
    require_defined(o, on.c_str());
    require_sane(o, on.c_str());
    require_shape(o, r.shape, o0.ndim, on.c_str());
    require_dtype(o, r.dtype, on.c_str(), "(the dtype of outs[0])");
    require_same_device(o, o0, on.c_str(), "outs[0]");
    require_defined(l, ln.c_str());
    require_sane(l, ln.c_str());
    require_shape(l, r.shape, r.nd, ln.c_str());
    require_dtype(l, r.lse_dtype, ln.c_str(), "(float64 for float64 outs, else float32)");
    require_same_device(l, o0, ln.c_str(), "outs[0]");
  }
  r.parts = static_cast<int64_t>(p.outs.size());
  r.outs = p.outs.data();
  r.lses = p.lses.data();
  Outputs outs(infer, o0, "outs[0]");
  if (const TensorRef* o = outs.bind("out", p.out, r.shape, o0.ndim, r.dtype, "(the dtype of outs)")) r.out = *o;
  if (const TensorRef* l = outs.bind("lse", p.lse, r.shape, r.nd, r.lse_dtype, "(float64 for float64 outs, else float32)",
                                     /*required=*/false))
    r.lse = *l;
  return r;
}

}  // namespace detail
}  // namespace attnkit
