#include "validate/attention.h"

#include <cmath>
#include <limits>
#include <string>

namespace attnkit {
namespace detail {
namespace {

constexpr int64_t kMaxLen = std::numeric_limits<int32_t>::max() - 1;  // kernels index keys in int32 lanes

DType acc_dtype(DType t) { return t == DType::Float64 ? DType::Float64 : DType::Float32; }

int64_t read_int(const void* base, DType t, int64_t index) {
  return t == DType::Int32 ? static_cast<const int32_t*>(base)[index] : static_cast<const int64_t*>(base)[index];
}

}  // namespace

AttnProblem validate_attention(const AttentionParams& p, const TensorRef* weights) {
  const bool want_weights = weights != nullptr;
  AttnProblem r;
  r.q = bhsd_view(p.q, "q");
  r.k = bhsd_view(p.k, "k");
  if (p.k.ndim != p.q.ndim)
    value_error("k must have the rank of q (" + std::to_string(p.q.ndim) + "-D), got shape " + shape_str(p.k));
  require_floating(p.q, "q");
  require_dtype(p.k, p.q.dtype, "k", "(the dtype of q)");
  require_same_device(p.k, p.q, "k", "q");
  if (!want_weights) {
    r.v = bhsd_view(p.v, "v");
    if (p.v.ndim != p.q.ndim)
      value_error("v must have the rank of q (" + std::to_string(p.q.ndim) + "-D), got shape " + shape_str(p.v));
    require_dtype(p.v, p.q.dtype, "v", "(the dtype of q)");
    require_same_device(p.v, p.q, "v", "q");
  }
  r.device = p.q.device;
  r.device_index = p.q.device_index;
  r.stream = p.stream;
  r.dtype = p.q.dtype;
  r.B = r.q.shape[0];
  r.Hq = r.q.shape[1];
  r.Sq = r.q.shape[2];
  r.D = r.q.shape[3];
  r.Hkv = r.k.shape[1];
  r.Sk = r.k.shape[2];
  r.Dv = want_weights ? 0 : r.v.shape[3];

  if (r.k.shape[0] != r.B)
    value_error("k has batch size " + std::to_string(r.k.shape[0]) + " but q has " + std::to_string(r.B));
  if (r.k.shape[3] != r.D)
    value_error("k has head dim " + std::to_string(r.k.shape[3]) + " but q has " + std::to_string(r.D) +
                "; q and k must share the head dim");
  if (r.Hkv == 0 ? r.Hq != 0 : r.Hq % r.Hkv != 0)
    value_error("k has " + std::to_string(r.Hkv) + " heads, which does not divide the " + std::to_string(r.Hq) +
                " heads of q (grouped-query attention needs Hq % Hkv == 0)");
  if (!want_weights) {
    const int64_t want[3] = {r.B, r.Hkv, r.Sk};
    for (int d = 0; d < 3; ++d)
      if (r.v.shape[d] != want[d])
        value_error("v of shape " + shape_str(p.v) + " does not match k of shape " + shape_str(p.k) +
                    " (v must be [B, Hkv, Sk, Dv] with k's B, Hkv and Sk)");
  }
  if (r.D < 1) value_error("q and k must have a head dim of at least 1, got 0");
  if (r.Sq > kMaxLen || r.Sk > kMaxLen)
    value_error("sequence lengths above " + std::to_string(kMaxLen) + " are not supported");

  // Output(s), shaped like q with the last dim replaced, same rank as q.
  const TensorRef& out = want_weights ? *weights : p.out;
  const char* out_name = want_weights ? "weights" : "out";
  require_defined(out, out_name);
  require_sane(out, out_name);
  {
    int64_t shape[4];
    for (int d = 0; d < p.q.ndim; ++d) shape[d] = p.q.shape[d];
    shape[p.q.ndim - 1] = want_weights ? r.Sk : r.Dv;
    require_shape(out, shape, p.q.ndim, out_name);
  }
  require_dtype(out, r.dtype, out_name, "(the dtype of q)");
  require_same_device(out, p.q, out_name, "q");
  require_writable_output(out, out_name);
  {
    const int off = 4 - out.ndim;
    r.out = out.data;
    for (int d = 0; d < 4; ++d) r.out_stride[d] = d < off ? 0 : out.strides[d - off];
  }
  if (!want_weights && p.lse.defined()) {
    require_sane(p.lse, "lse");
    int64_t shape[3];
    for (int d = 0; d < p.q.ndim - 1; ++d) shape[d] = p.q.shape[d];
    require_shape(p.lse, shape, p.q.ndim - 1, "lse");
    require_dtype(p.lse, acc_dtype(r.dtype), "lse", "(float64 for float64 inputs, else float32)");
    require_same_device(p.lse, p.q, "lse", "q");
    require_writable_output(p.lse, "lse");
    const int off = 3 - p.lse.ndim;
    r.lse = p.lse.data;
    for (int d = 0; d < 3; ++d) r.lse_stride[d] = d < off ? 0 : p.lse.strides[d - off];
  }

  // Scalars.
  if (p.scale.has_value()) {
    if (!std::isfinite(*p.scale)) value_error("scale must be finite, got " + std::to_string(*p.scale));
    r.scale = *p.scale;
  } else {
    r.scale = 1.0 / std::sqrt(static_cast<double>(r.D));
  }
  if (!std::isfinite(p.softcap) || p.softcap < 0)
    value_error("softcap must be a finite value > 0 (or 0 for none), got " + std::to_string(p.softcap));
  r.softcap = p.softcap;
  r.causal = p.causal;
  r.window_left = p.window_left < 0 ? -1 : p.window_left;
  r.window_right = p.window_right < 0 ? -1 : p.window_right;

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
  if (p.key_lengths.defined()) {
    require_sane(p.key_lengths, "key_lengths");
    if (p.key_lengths.dtype != DType::Int32 && p.key_lengths.dtype != DType::Int64)
      type_error(std::string("key_lengths must be int32 or int64, got ") + dtype_name(p.key_lengths.dtype));
    require_same_device(p.key_lengths, p.q, "key_lengths", "q");
    if (p.key_lengths.ndim > 1)
      value_error("key_lengths must have shape (B,) = (" + std::to_string(r.B) + ",), got " +
                  shape_str(p.key_lengths));
    const int64_t b[1] = {r.B};
    r.key_lengths = broadcast_view(p.key_lengths, b, "key_lengths", "[B]");
    if (r.device == Device::CPU) {
      for (int64_t i = 0; i < r.B; ++i) {
        const int64_t len = read_int(r.key_lengths.data, r.key_lengths.dtype, i * r.key_lengths.stride[0]);
        if (len < 0 || len > r.Sk)
          value_error("key_lengths[" + std::to_string(i) + "] = " + std::to_string(len) +
                      " is outside [0, Sk] = [0, " + std::to_string(r.Sk) + "]");
      }
    }
  }
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

MergeProblem validate_merge(const MergeParams& p) {
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
  r.lse_dtype = acc_dtype(o0.dtype);
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
  r.outs = p.outs;
  r.lses = p.lses;
  require_defined(p.out, "out");
  require_sane(p.out, "out");
  require_shape(p.out, r.shape, o0.ndim, "out");
  require_dtype(p.out, r.dtype, "out", "(the dtype of outs)");
  require_same_device(p.out, o0, "out", "outs[0]");
  require_writable_output(p.out, "out");
  r.out = p.out;
  if (p.lse.defined()) {
    require_sane(p.lse, "lse");
    require_shape(p.lse, r.shape, r.nd, "lse");
    require_dtype(p.lse, r.lse_dtype, "lse", "(float64 for float64 outs, else float32)");
    require_same_device(p.lse, o0, "lse", "outs[0]");
    require_writable_output(p.lse, "lse");
    r.lse = p.lse;
  }
  return r;
}

}  // namespace detail
}  // namespace attnkit
