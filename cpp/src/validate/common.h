#pragma once
// Building blocks of the per-mechanism validators: every check throws attnkit::Error with a message that
// names the argument and says what was expected.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "check.h"
#include "attnkit/types.h"

namespace attnkit {
namespace detail {

/// A tensor brought to a fixed rank N (leading broadcast dims get stride 0).
template <int N>
struct ViewN {
  const void* data = nullptr;
  DType dtype = DType::Float32;
  int64_t shape[N] = {};
  int64_t stride[N] = {};
  bool present = false;  ///< false for an optional argument that was left out
};

[[noreturn]] void value_error(const std::string& msg);
[[noreturn]] void type_error(const std::string& msg);

/// "(2, 3, 4)".
std::string shape_str(const int64_t* shape, int n);
std::string shape_str(const TensorRef& t);

void require_defined(const TensorRef& t, const char* name);
/// Float32/Float64/Float16/BFloat16, else TypeError.
void require_floating(const TensorRef& t, const char* name);
/// v >= 1 / v >= 0, else ValueError naming it.
void require_positive(int64_t v, const char* name);
void require_nonnegative(int64_t v, const char* name);
/// A dtype argument (not a tensor's) that must be floating, else TypeError.
void require_floating_code(DType t, const char* name);
/// A view of nothing in host memory: the device reference of outputs that are always written on the host.
const TensorRef& host_ref();
void require_dtype(const TensorRef& t, DType want, const char* name, const char* why = nullptr);
/// Same device (and device index) as ref, else TypeError.
void require_same_device(const TensorRef& t, const TensorRef& ref, const char* name, const char* ref_name);
/// Non-negative sizes, rank within [0, kMaxDims], and a data pointer when non-empty.
void require_sane(const TensorRef& t, const char* name);
/// An output must be writable without two elements sharing an address through a zero stride.
void require_writable_output(const TensorRef& t, const char* name);
/// Exact shape match, else ValueError naming the expected shape.
void require_shape(const TensorRef& t, const int64_t* shape, int n, const char* name);

/// Right-aligned NumPy broadcast of t onto target[N]: strides of broadcast dims become 0.
template <int N>
ViewN<N> broadcast_view(const TensorRef& t, const int64_t (&target)[N], const char* name,
                        const char* target_desc);

/// Rank-2/3/4 attention operand brought to [B, H, S, D] (missing leading dims of size 1, stride 0).
ViewN<4> bhsd_view(const TensorRef& t, const char* name);
/// A C-contiguous [B, H, S, D] view of a backend's own buffer (scratch a backend hands to another kernel).
inline ViewN<4> contiguous_view(const void* data, DType dtype, int64_t B, int64_t H, int64_t S, int64_t D) {
  ViewN<4> v;
  v.present = true;
  v.data = data;
  v.dtype = dtype;
  const int64_t shape[4] = {B, H, S, D};
  int64_t stride = 1;
  for (int d = 3; d >= 0; --d) {
    v.shape[d] = shape[d];
    v.stride[d] = stride;
    stride *= shape[d];
  }
  return v;
}


/// Accumulator (and log-sum-exp, state) dtype of an input dtype: Float64 for Float64, else Float32.
DType accumulator_dtype(DType t);

/// The attention operands q [B, Hq, Sq, D], k [B, Hkv, Sk, D] and v [B, Hkv, Sk, Dv], checked together:
/// one rank (2, 3 or 4), one floating dtype, one device, matching B / D / Sk, Hq % Hkv == 0, D >= 1 and
/// lengths the kernels can index.
struct QkvViews {
  ViewN<4> q, k, v;  ///< v absent when the caller passes no v
  int64_t B = 0, Hq = 0, Hkv = 0, Sq = 0, Sk = 0, D = 0, Dv = 0;
};
QkvViews qkv_views(const TensorRef& q, const TensorRef& k, const TensorRef* v);

/// Copies the validated operands, device, stream, dtype and sizes of qkv into problem r (the fields the
/// problem structs share); the query length goes to member `sq` (Sq or S).
template <class Problem>
void copy_geometry(Problem& r, const QkvViews& qkv, const TensorRef& q, void* stream, int64_t Problem::*sq) {
  r.q = qkv.q;
  r.k = qkv.k;
  r.v = qkv.v;
  r.device = q.device;
  r.device_index = q.device_index;
  r.stream = stream;
  r.dtype = q.dtype;
  r.B = qkv.B;
  r.Hq = qkv.Hq;
  r.Hkv = qkv.Hkv;
  r.*sq = qkv.Sq;
  r.Sk = qkv.Sk;
  r.D = qkv.D;
  r.Dv = qkv.Dv;
}

/// Checks an output argument: present, exactly `shape`, dtype `dtype` (`why` explains it, e.g. "(the dtype
/// of q)"), on ref's device, writable (no broadcast strides) unless `writable` is false.
void require_output(const TensorRef& t, const int64_t* shape, int n, DType dtype, const char* why,
                    const TensorRef& ref, const char* ref_name, const char* name, bool writable = true);

/// The outputs of one call. A validator runs in one of two modes: inference (`infer` given), where each
/// bind() records the output's name, shape and dtype for the caller to allocate from and binds nothing;
/// or checking, where bind() checks the tensor the caller passed against that same shape and dtype. The
/// shape rules therefore live once, in the validator.
class Outputs {
 public:
  /// read: the tensors are a forward call's results read back as inputs (the backward's out and lse): the
  /// same shape and dtype rules, but any strides (a broadcast view is fine to read).
  Outputs(OutputSpecs* infer, const TensorRef& ref, const char* ref_name, bool read = false)
      : infer_(infer), ref_(ref), ref_name_(ref_name), read_(read) {}
  bool inferring() const { return infer_ != nullptr; }
  /// Records or checks output `name` ([n] dims `shape`, `dtype`; `why` explains the dtype). Returns the
  /// tensor to write: always for a required output when checking, for an optional one when the caller
  /// passed it; nullptr when inferring or when an optional output is absent.
  const TensorRef* bind(const char* name, const TensorRef& t, const int64_t* shape, int n, DType dtype,
                        const char* why, bool required = true);

 private:
  OutputSpecs* infer_;
  const TensorRef& ref_;
  const char* ref_name_;
  bool read_;
};

/// t's strides brought to rank N: missing leading dims get stride 0.
template <int N>
void lead_strides(const TensorRef& t, int64_t (&stride)[N]) {
  const int off = N - t.ndim;
  for (int d = 0; d < N; ++d) stride[d] = d < off ? 0 : t.strides[d - off];
}

/// Score scale: finite when given, 1/sqrt(D) when absent; with float32 accumulation (float32, float16 and
/// bfloat16 inputs) within float32's range, since the kernels hold it in the accumulation type.
double resolve_scale(const std::optional<double>& scale, int64_t D, DType dtype);

/// resolve_scale for a scale that multiplies scores (exact, block-sparse, LSH, Linformer): a nonzero scale the
/// accumulation type would hold as 0 is a ValueError too, since the kernels' 0 * inf would be NaN where the
/// oracle's product is +-inf. (Performer's scale goes in as sqrt(scale), which float32 holds: resolve_scale.)
double resolve_score_scale(const std::optional<double>& scale, int64_t D, DType dtype);

/// Throws ValueError naming `name` when x is beyond the range of the accumulation type of dtype (float32
/// for float32, float16 and bfloat16 inputs; float64 for float64): the kernels would hold it as inf.
void require_in_accumulator_range(double x, DType dtype, const char* name);

/// Optional key_lengths: [B] (or 0-d) Int32/Int64 on ref's device, values in [0, Sk].
ViewN<1> key_lengths_view(const TensorRef& t, const TensorRef& ref, int64_t B, int64_t Sk, void* stream);

/// Element i of an Int32 or Int64 array in host memory.
inline int64_t read_int(const void* base, DType t, int64_t i) {
  return t == DType::Int32 ? static_cast<const int32_t*>(base)[i] : static_cast<const int64_t*>(base)[i];
}

/// Reading values in validators (key_lengths ranges, DLA cache consistency, log-decay signs). This is the
/// one rule for every backend: host arrays are read in place; device arrays are copied to the host once,
/// the span their elements occupy, by HostValues (one detail::cuda::download on the call's stream, which
/// waits for it), and checked there. The copy costs one small synchronous transfer per checked argument
/// (a whole array at once: never one per row, since every transfer waits for the stream);
/// nothing else in a call synchronizes. Layout CSR arrays are the exception: they are validated on the
/// host where they are built, and kernels read the device copies of BlockLayout::ref_on.
class HostValues {
 public:
  /// The n elements data[i * stride] (i < n, any sign of stride) of dtype dt on ref's device.
  HostValues(const void* data, DType dt, int64_t n, int64_t stride, const TensorRef& ref, void* stream)
      : HostValues(data, dt, 1, &n, &stride, ref, stream) {
    stride_ = stride;
  }
  /// Every element of the strided array (ndim, shape, stride in elements) at data, copied in one transfer;
  /// elements are then addressed by their element offset from data (integer(offset) / real(offset)).
  HostValues(const void* data, DType dt, int ndim, const int64_t* shape, const int64_t* stride, const TensorRef& ref,
             void* stream);
  /// The same array, its transfer left to read_host_values (which reads several arrays with one wait).
  struct Deferred {};
  HostValues(Deferred, const void* data, DType dt, int ndim, const int64_t* shape, const int64_t* stride,
             const TensorRef& ref);
  /// Element i (i * stride elements from data) as int64 (Int32 / Int64 / Bool arrays) or double (floating
  /// arrays).
  int64_t integer(int64_t i) const;
  double real(int64_t i) const;

 private:
  friend void read_host_values(HostValues* const* vals, int n, const TensorRef& ref, void* stream);
  void span(int ndim, const int64_t* shape, const int64_t* stride, const TensorRef& ref);

  const char* base_;  ///< element 0, in host memory (once read)
  DType dt_;
  int64_t stride_;
  std::vector<char> copy_;
  const char* pending_ = nullptr;  ///< a deferred array's span on the device, until read_host_values
  int64_t lo_ = 0;                 ///< the span's first element offset relative to element 0 (<= 0)
};

/// Reads the deferred arrays vals[0..n) (HostValues::Deferred; nullptr entries are skipped), all on ref's
/// device, in one transfer each and ONE wait for the stream (cuda::download_many).
void read_host_values(HostValues* const* vals, int n, const TensorRef& ref, void* stream);

/// Every element of a validated view, copied to the host in one transfer (see HostValues).
template <int N>
HostValues host_values(const ViewN<N>& v, const TensorRef& ref, void* stream) {
  return HostValues(v.data, v.dtype, N, v.shape, v.stride, ref, stream);
}

/// Every element of a validated view, its transfer deferred to read_host_values.
template <int N>
HostValues deferred_host_values(const ViewN<N>& v, const TensorRef& ref) {
  return HostValues(HostValues::Deferred{}, v.data, v.dtype, N, v.shape, v.stride, ref);
}

}  // namespace detail
}  // namespace attnkit
