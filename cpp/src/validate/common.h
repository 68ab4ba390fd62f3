#pragma once
// Building blocks of the per-mechanism validators: every check throws attnkit::Error with a message that
// names the argument and says what was expected.

#include <cstdint>
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

}  // namespace detail
}  // namespace attnkit
