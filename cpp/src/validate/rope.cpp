#include "validate/rope.h"

#include <cmath>
#include <string>

namespace attnkit {
namespace detail {

RopeProblem validate_rope(const RopeParams& p, OutputSpecs* infer) {
  constexpr int64_t kMaxPosition = 2147483647;  // int32 range: what every model's position ids use
  RopeProblem r;
  r.x = bhsd_view(p.x, "x");
  require_floating(p.x, "x");
  r.device = p.x.device;
  r.device_index = p.x.device_index;
  r.stream = p.stream;
  r.dtype = p.x.dtype;
  r.B = r.x.shape[0];
  r.H = r.x.shape[1];
  r.S = r.x.shape[2];
  r.D = r.x.shape[3];
  if (!std::isfinite(p.base) || p.base <= 0) value_error("base must be finite and > 0, got " + std::to_string(p.base));
  r.base = p.base;
  r.interleaved = p.interleaved;
  r.rotary_dim = p.rotary_dim == 0 ? r.D : p.rotary_dim;
  if (p.rotary_dim == 0 && r.D % 2 != 0)
    value_error("x has an odd head dim D = " + std::to_string(r.D) +
                "; rotary embedding rotates pairs of dims, so pass an even rotary_dim < D");
  if (r.rotary_dim < 2 || r.rotary_dim > r.D || r.rotary_dim % 2 != 0)
    value_error("rotary_dim must be even and in [2, D] = [2, " + std::to_string(r.D) + "], got " +
                std::to_string(p.rotary_dim));
  Outputs outs(infer, p.x, "x");
  if (const TensorRef* o = outs.bind("out", p.out, p.x.shape, p.x.ndim, r.dtype, "(the dtype of x)")) {
    r.out = o->data;
    lead_strides(*o, r.out_stride);
  }
  if (p.positions.defined()) {
    const TensorRef& t = p.positions;
    require_sane(t, "positions");
    if (t.dtype != DType::Int32 && t.dtype != DType::Int64)
      type_error(std::string("positions must be int32 or int64, got ") + dtype_name(t.dtype));
    require_same_device(t, p.x, "positions", "x");
    const bool ok = (t.ndim == 1 && t.shape[0] == r.S) || (t.ndim == 2 && t.shape[0] == r.B && t.shape[1] == r.S);
    if (!ok)
      value_error("positions must have shape (S,) = (" + std::to_string(r.S) + ",) or (B, S) = (" +
                  std::to_string(r.B) + ", " + std::to_string(r.S) + "), got " + shape_str(t));
    const int64_t target[2] = {r.B, r.S};
    r.positions = broadcast_view(t, target, "positions", "[B, S]");
    if (t.device == Device::CPU) {
      for (int64_t b = 0; b < (t.ndim == 2 ? r.B : 1); ++b)
        for (int64_t s = 0; s < r.S; ++s) {
          const int64_t pos = read_int(r.positions.data, r.positions.dtype,
                                       b * r.positions.stride[0] + s * r.positions.stride[1]);
          if (pos < 0 || pos > kMaxPosition)
            value_error("positions[" + std::to_string(t.ndim == 2 ? b : s) + (t.ndim == 2 ? ", " + std::to_string(s) : "") +
                        "] = " + std::to_string(pos) + " is outside [0, 2^31 - 1]");
        }
    }
  }
  return r;
}

}  // namespace detail
}  // namespace attnkit
