#pragma once
// Building blocks of the per-mechanism validators: every check throws attnkit::Error with a message that
// names the argument and says what was expected.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

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

/// Checks an output argument: present, exactly `shape`, dtype `dtype` (`why` explains it, e.g. "(the dtype
/// of q)"), on ref's device, writable (no broadcast strides).
void require_output(const TensorRef& t, const int64_t* shape, int n, DType dtype, const char* why,
                    const TensorRef& ref, const char* ref_name, const char* name);

/// t's strides brought to rank N: missing leading dims get stride 0.
template <int N>
void lead_strides(const TensorRef& t, int64_t (&stride)[N]) {
  const int off = N - t.ndim;
  for (int d = 0; d < N; ++d) stride[d] = d < off ? 0 : t.strides[d - off];
}

/// Score scale: finite when given, 1/sqrt(D) when absent.
double resolve_scale(const std::optional<double>& scale, int64_t D);

/// Optional key_lengths: [B] (or 0-d) Int32/Int64 on ref's device, values in [0, Sk] (checked on the CPU).
ViewN<1> key_lengths_view(const TensorRef& t, const TensorRef& ref, int64_t B, int64_t Sk);

/// Element i of an Int32 or Int64 array.
inline int64_t read_int(const void* base, DType t, int64_t i) {
  return t == DType::Int32 ? static_cast<const int32_t*>(base)[i] : static_cast<const int64_t*>(base)[i];
}

}  // namespace detail
}  // namespace attnkit
