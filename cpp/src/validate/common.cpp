#include "validate/common.h"

#include <sstream>

namespace attnkit {
namespace detail {

void value_error(const std::string& msg) { throw Error(ErrorKind::Value, msg); }
void type_error(const std::string& msg) { throw Error(ErrorKind::Type, msg); }

std::string shape_str(const int64_t* shape, int n) {
  std::ostringstream os;
  os << '(';
  for (int i = 0; i < n; ++i) os << (i ? ", " : "") << shape[i];
  if (n == 1) os << ',';
  os << ')';
  return os.str();
}

std::string shape_str(const TensorRef& t) { return shape_str(t.shape, t.ndim); }

void require_defined(const TensorRef& t, const char* name) {
  if (!t.defined()) value_error(std::string(name) + " is required");
}

void require_sane(const TensorRef& t, const char* name) {
  if (t.ndim < 0 || t.ndim > kMaxDims)
    value_error(std::string(name) + ": rank " + std::to_string(t.ndim) + " is outside [0, " +
                std::to_string(kMaxDims) + "]");
  for (int i = 0; i < t.ndim; ++i)
    if (t.shape[i] < 0) value_error(std::string(name) + ": negative size in shape " + shape_str(t));
  if (static_cast<int32_t>(t.dtype) < 0 || static_cast<int32_t>(t.dtype) > 6)
    type_error(std::string(name) + ": unknown dtype code " + std::to_string(static_cast<int>(t.dtype)));
  if (t.data == nullptr && t.numel() > 0) value_error(std::string(name) + ": null data pointer");
}

void require_floating(const TensorRef& t, const char* name) {
  if (!is_floating(t.dtype))
    type_error(std::string(name) + " must be float32, float64, float16 or bfloat16, got " +
               dtype_name(t.dtype));
}

void require_dtype(const TensorRef& t, DType want, const char* name, const char* why) {
  if (t.dtype != want)
    type_error(std::string(name) + " must be " + dtype_name(want) + (why ? std::string(" ") + why : "") +
               ", got " + dtype_name(t.dtype));
}

void require_same_device(const TensorRef& t, const TensorRef& ref, const char* name, const char* ref_name) {
  if (t.device != ref.device || (t.device == Device::CUDA && t.device_index != ref.device_index)) {
    auto dev = [](const TensorRef& x) {
      return x.device == Device::CPU ? std::string("cpu") : "cuda:" + std::to_string(x.device_index);
    };
    type_error(std::string(name) + " is on " + dev(t) + " but " + ref_name + " is on " + dev(ref) +
               "; all arrays of one call must be on the same device");
  }
}

void require_writable_output(const TensorRef& t, const char* name) {
  if (t.numel() == 0) return;
  for (int i = 0; i < t.ndim; ++i)
    if (t.strides[i] == 0 && t.shape[i] > 1)
      value_error(std::string(name) + " has a zero stride on dimension " + std::to_string(i) +
                  " (a broadcast view); outputs need one element per index");
}

void require_shape(const TensorRef& t, const int64_t* shape, int n, const char* name) {
  bool ok = t.ndim == n;
  for (int i = 0; ok && i < n; ++i) ok = t.shape[i] == shape[i];
  if (!ok)
    value_error(std::string(name) + " must have shape " + shape_str(shape, n) + ", got " + shape_str(t));
}

template <int N>
ViewN<N> broadcast_view(const TensorRef& t, const int64_t (&target)[N], const char* name,
                        const char* target_desc) {
  ViewN<N> v;
  if (!t.defined()) return v;
  require_sane(t, name);
  if (t.ndim > N)
    value_error(std::string(name) + " of shape " + shape_str(t) + " is not broadcastable to " + target_desc +
                " = " + shape_str(target, N) + ": too many dimensions");
  v.present = true;
  v.data = t.data;
  v.dtype = t.dtype;
  const int off = N - t.ndim;
  for (int d = 0; d < N; ++d) {
    v.shape[d] = target[d];
    if (d < off) {
      v.stride[d] = 0;
      continue;
    }
    const int64_t s = t.shape[d - off];
    if (s == target[d]) {
      v.stride[d] = target[d] == 1 ? 0 : t.strides[d - off];
    } else if (s == 1) {
      v.stride[d] = 0;
    } else {
      value_error(std::string(name) + " of shape " + shape_str(t) + " is not broadcastable to " +
                  target_desc + " = " + shape_str(target, N));
    }
  }
  return v;
}

template ViewN<4> broadcast_view<4>(const TensorRef&, const int64_t (&)[4], const char*, const char*);
template ViewN<2> broadcast_view<2>(const TensorRef&, const int64_t (&)[2], const char*, const char*);
template ViewN<1> broadcast_view<1>(const TensorRef&, const int64_t (&)[1], const char*, const char*);

ViewN<4> bhsd_view(const TensorRef& t, const char* name) {
  require_defined(t, name);
  require_sane(t, name);
  if (t.ndim < 2 || t.ndim > 4)
    value_error(std::string(name) + " must be 4-D [B, H, S, D], 3-D [H, S, D] or 2-D [S, D], got shape " +
                shape_str(t));
  ViewN<4> v;
  v.present = true;
  v.data = t.data;
  v.dtype = t.dtype;
  const int off = 4 - t.ndim;
  for (int d = 0; d < 4; ++d) {
    v.shape[d] = d < off ? 1 : t.shape[d - off];
    v.stride[d] = d < off ? 0 : t.strides[d - off];
  }
  return v;
}

}  // namespace detail
}  // namespace attnkit
