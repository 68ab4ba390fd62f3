#include "validate/common.h"

#include "validate/checked.h"

#include <cmath>
#include <limits>
#include <sstream>

#include "attnkit/math/dtypes.h"
#include "backend.h"

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
  int64_t n = 1;  // numel() must not wrap (a C++ caller can describe any shape)
  for (int i = 0; i < t.ndim; ++i)
    if (__builtin_mul_overflow(n, t.shape[i], &n))
      value_error(std::string(name) + ": the number of elements of shape " + shape_str(t) + " overflows int64");
  if (static_cast<int32_t>(t.dtype) < 0 || static_cast<int32_t>(t.dtype) > 6)
    type_error(std::string(name) + ": unknown dtype code " + std::to_string(static_cast<int>(t.dtype)));
  if (t.data == nullptr && t.numel() > 0) value_error(std::string(name) + ": null data pointer");
}

void require_floating(const TensorRef& t, const char* name) {
  if (!is_floating(t.dtype))
    type_error(std::string(name) + " must be float32, float64, float16 or bfloat16, got " +
               dtype_name(t.dtype));
}

void require_positive(int64_t v, const char* name) {
  if (v < 1) value_error(std::string(name) + " must be >= 1, got " + std::to_string(v));
}

void require_nonnegative(int64_t v, const char* name) {
  if (v < 0) value_error(std::string(name) + " must be >= 0, got " + std::to_string(v));
}

void require_floating_code(DType t, const char* name) {
  const int code = static_cast<int>(t);
  if (code < 0 || code > 6 || !is_floating(t))
    type_error(std::string(name) + " must be float32, float64, float16 or bfloat16, got " +
               (code < 0 || code > 6 ? "dtype code " + std::to_string(code) : std::string(dtype_name(t))));
}

const TensorRef& host_ref() {
  static const TensorRef host;
  return host;
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

DType accumulator_dtype(DType t) { return t == DType::Float64 ? DType::Float64 : DType::Float32; }

QkvViews qkv_views(const TensorRef& q, const TensorRef& k, const TensorRef* v) {
  constexpr int64_t kMaxLen = kMaxSeqLen;
  QkvViews r;
  r.q = bhsd_view(q, "q");
  r.k = bhsd_view(k, "k");
  if (k.ndim != q.ndim)
    value_error("k must have the rank of q (" + std::to_string(q.ndim) + "-D), got shape " + shape_str(k));
  require_floating(q, "q");
  require_dtype(k, q.dtype, "k", "(the dtype of q)");
  require_same_device(k, q, "k", "q");
  if (v) {
    r.v = bhsd_view(*v, "v");
    if (v->ndim != q.ndim)
      value_error("v must have the rank of q (" + std::to_string(q.ndim) + "-D), got shape " + shape_str(*v));
    require_dtype(*v, q.dtype, "v", "(the dtype of q)");
    require_same_device(*v, q, "v", "q");
  }
  r.B = r.q.shape[0];
  r.Hq = r.q.shape[1];
  r.Sq = r.q.shape[2];
  r.D = r.q.shape[3];
  r.Hkv = r.k.shape[1];
  r.Sk = r.k.shape[2];
  r.Dv = v ? r.v.shape[3] : 0;
  if (r.k.shape[0] != r.B)
    value_error("k has batch size " + std::to_string(r.k.shape[0]) + " but q has " + std::to_string(r.B));
  if (r.k.shape[3] != r.D)
    value_error("k has head dim " + std::to_string(r.k.shape[3]) + " but q has " + std::to_string(r.D) +
                "; q and k must share the head dim");
  if (r.Hkv == 0 ? r.Hq != 0 : r.Hq % r.Hkv != 0)
    value_error("k has " + std::to_string(r.Hkv) + " heads, which does not divide the " + std::to_string(r.Hq) +
                " heads of q (grouped-query attention needs Hq % Hkv == 0)");
  if (v) {
    const int64_t want[3] = {r.B, r.Hkv, r.Sk};
    for (int d = 0; d < 3; ++d)
      if (r.v.shape[d] != want[d])
        value_error("v of shape " + shape_str(*v) + " does not match k of shape " + shape_str(k) +
                    " (v must be [B, Hkv, Sk, Dv] with k's B, Hkv and Sk)");
  }
  if (r.D < 1) value_error("q and k must have a head dim of at least 1, got 0");
  if (r.Sq > kMaxLen || r.Sk > kMaxLen)  // the argument named, as every other shape error names it
    value_error(std::string(r.Sq > kMaxLen ? "q" : "k") + " has sequence length " +
                std::to_string(r.Sq > kMaxLen ? r.Sq : r.Sk) + ": lengths above " + std::to_string(kMaxLen) +
                " are not supported");
  return r;
}

void require_output(const TensorRef& t, const int64_t* shape, int n, DType dtype, const char* why,
                    const TensorRef& ref, const char* ref_name, const char* name, bool writable) {
  require_defined(t, name);
  require_sane(t, name);
  require_shape(t, shape, n, name);
  require_dtype(t, dtype, name, why);
  require_same_device(t, ref, name, ref_name);
  if (writable) require_writable_output(t, name);
}

const TensorRef* Outputs::bind(const char* name, const TensorRef& t, const int64_t* shape, int n, DType dtype,
                               const char* why, bool required) {
  if (infer_) {
    ATTNKIT_ASSERT(infer_->count < OutputSpecs::kMax && n <= kMaxDims, "too many outputs");
    OutputSpec& s = infer_->items[infer_->count++];
    s.name = name;
    s.dtype = dtype;
    s.ndim = n;
    for (int d = 0; d < n; ++d) s.shape[d] = shape[d];
    return nullptr;
  }
  if (!required && !t.defined()) return nullptr;
  require_output(t, shape, n, dtype, why, ref_, ref_name_, name, !read_);
  return &t;
}

void require_in_accumulator_range(double x, DType dtype, const char* name) {
  const bool f32 = accumulator_dtype(dtype) == DType::Float32;
  const double max = f32 ? std::numeric_limits<float>::max() : std::numeric_limits<double>::max();
  if (std::fabs(x) <= max) return;
  std::ostringstream os;
  os << name << " = " << x << " is beyond the " << (f32 ? "float32" : "float64") << " range (|" << name
     << "| <= " << max << "): " << dtype_name(dtype) << " inputs compute in " << (f32 ? "float32" : "float64")
     << ", where it would be inf";
  value_error(os.str());
}

double resolve_scale(const std::optional<double>& scale, int64_t D, DType dtype) {
  if (!scale.has_value()) return 1.0 / std::sqrt(static_cast<double>(D));
  if (!std::isfinite(*scale)) value_error("scale must be finite, got " + std::to_string(*scale));
  require_in_accumulator_range(*scale, dtype, "scale");
  return *scale;
}

double resolve_score_scale(const std::optional<double>& scale, int64_t D, DType dtype) {
  const double s = resolve_scale(scale, D, dtype);
  if (s != 0 && accumulator_dtype(dtype) == DType::Float32 && static_cast<float>(s) == 0.0f) {
    std::ostringstream os;
    os << "scale = " << s << " is nonzero but below the float32 range (float32 holds |scale| <= 2^-150 ~ 7e-46 as 0): "
       << dtype_name(dtype) << " inputs compute in float32, where an infinite score times it would be NaN, not "
       << "+-inf; pass scale=0 for uniform weights";
    value_error(os.str());
  }
  return s;
}

void HostValues::span(int ndim, const int64_t* shape, const int64_t* stride, const TensorRef& ref) {
  int64_t lo = 0, hi = 0;  // the element offsets the array spans, relative to data
  for (int d = 0; d < ndim; ++d) {
    if (shape[d] == 0) return;  // no elements: nothing to read
    const int64_t last = (shape[d] - 1) * stride[d];
    (last < 0 ? lo : hi) += last;
  }
  if (ref.device == Device::CPU) return;
  const std::size_t item = dtype_size(dt_);
  copy_.resize(static_cast<std::size_t>(hi - lo + 1) * item);
  pending_ = base_ + lo * static_cast<int64_t>(item);
  lo_ = lo;
}

HostValues::HostValues(const void* data, DType dt, int ndim, const int64_t* shape, const int64_t* stride,
                       const TensorRef& ref, void* stream)
    : base_(static_cast<const char*>(data)), dt_(dt), stride_(1) {
  span(ndim, shape, stride, ref);
  if (!pending_) return;
  cuda::download(copy_.data(), pending_, copy_.size(), ref.device_index, stream);
  pending_ = nullptr;
  base_ = copy_.data() - lo_ * static_cast<int64_t>(dtype_size(dt_));
}

HostValues::HostValues(Deferred, const void* data, DType dt, int ndim, const int64_t* shape, const int64_t* stride,
                       const TensorRef& ref)
    : base_(static_cast<const char*>(data)), dt_(dt), stride_(1) {
  span(ndim, shape, stride, ref);
}

void read_host_values(HostValues* const* vals, int n, const TensorRef& ref, void* stream) {
  std::vector<void*> dst;
  std::vector<const void*> src;
  std::vector<std::size_t> bytes;
  for (int i = 0; i < n; ++i) {
    HostValues* v = vals[i];
    if (!v || !v->pending_) continue;
    dst.push_back(v->copy_.data());
    src.push_back(v->pending_);
    bytes.push_back(v->copy_.size());
  }
  if (!dst.empty())
    cuda::download_many(static_cast<int>(dst.size()), dst.data(), src.data(), bytes.data(), ref.device_index, stream);
  for (int i = 0; i < n; ++i) {
    HostValues* v = vals[i];
    if (!v || !v->pending_) continue;
    v->pending_ = nullptr;
    v->base_ = v->copy_.data() - v->lo_ * static_cast<int64_t>(dtype_size(v->dt_));
  }
}

int64_t HostValues::integer(int64_t i) const {
  const char* at = base_ + i * stride_ * static_cast<int64_t>(dtype_size(dt_));
  switch (dt_) {
    case DType::Int32: return *reinterpret_cast<const int32_t*>(at);
    case DType::Int64: return *reinterpret_cast<const int64_t*>(at);
    case DType::Bool: return *reinterpret_cast<const uint8_t*>(at) != 0;
    default: ATTNKIT_ASSERT(false, "HostValues::integer on a floating array");
  }
}

double HostValues::real(int64_t i) const {
  const char* at = base_ + i * stride_ * static_cast<int64_t>(dtype_size(dt_));
  switch (dt_) {
    case DType::Float32: return *reinterpret_cast<const float*>(at);
    case DType::Float64: return *reinterpret_cast<const double*>(at);
    case DType::Float16: return math::f16_to_float(*reinterpret_cast<const uint16_t*>(at));
    case DType::BFloat16: return math::bf16_to_float(*reinterpret_cast<const uint16_t*>(at));
    default: ATTNKIT_ASSERT(false, "HostValues::real on an integer array");
  }
}

ViewN<1> key_lengths_view(const TensorRef& t, const TensorRef& ref, int64_t B, int64_t Sk, void* stream) {
  ViewN<1> r;
  if (!t.defined()) return r;
  require_sane(t, "key_lengths");
  if (t.dtype != DType::Int32 && t.dtype != DType::Int64)
    type_error(std::string("key_lengths must be int32 or int64, got ") + dtype_name(t.dtype));
  require_same_device(t, ref, "key_lengths", "q");
  if (t.ndim > 1)
    value_error("key_lengths must have shape (B,) = (" + std::to_string(B) + ",), got " + shape_str(t));
  const int64_t b[1] = {B};
  r = broadcast_view(t, b, "key_lengths", "[B]");
  const HostValues lens(r.data, r.dtype, B, r.stride[0], ref, stream);
  for (int64_t i = 0; i < B; ++i) {
    const int64_t len = lens.integer(i);
    if (len < 0 || len > Sk)
      value_error("key_lengths[" + std::to_string(i) + "] = " + std::to_string(len) + " is outside [0, Sk] = [0, " +
                  std::to_string(Sk) + "]");
  }
  return r;
}

}  // namespace detail
}  // namespace attnkit
