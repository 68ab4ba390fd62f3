#pragma once
// Core vocabulary of the attnkit C++ API: element types, devices, the borrowed strided tensor view, and
// the error type every entry point throws.

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "attnkit/export.h"

namespace attnkit {

/// Element types. Floating types are the data types of q/k/v/out; Bool, Int32 and Int64 serve masks,
/// lengths and indices.
enum class DType : int32_t {
  Float32 = 0,
  Float64 = 1,
  Float16 = 2,   ///< IEEE binary16
  BFloat16 = 3,  ///< bfloat16 (the upper half of a float32)
  Bool = 4,      ///< one byte, 0 = false, anything else = true
  Int32 = 5,
  Int64 = 6,
};

/// Size of one element in bytes.
ATTNKIT_API std::size_t dtype_size(DType t);
/// "float32", "bfloat16", ...
ATTNKIT_API const char* dtype_name(DType t);
/// True for Float32, Float64, Float16 and BFloat16.
inline bool is_floating(DType t) { return static_cast<int32_t>(t) >= 0 && static_cast<int32_t>(t) <= 3; }

/// Where a tensor's memory lives.
enum class Device : int32_t { CPU = 0, CUDA = 1 };

/// Largest rank a TensorRef can describe.
constexpr int kMaxDims = 8;

/// A borrowed, strided view of memory owned by the caller. attnkit never frees it, never keeps it past
/// the call, and never writes to a tensor passed as an input.
struct TensorRef {
  void* data = nullptr;                ///< address of element [0, 0, ...]; may be null when numel() == 0
  DType dtype = DType::Float32;        ///< element type
  int32_t ndim = -1;                   ///< rank; -1 means "absent" (an optional argument left out)
  int64_t shape[kMaxDims] = {};        ///< sizes, outermost first
  int64_t strides[kMaxDims] = {};      ///< strides in ELEMENTS (not bytes); may be 0 or negative
  Device device = Device::CPU;         ///< where data lives
  int32_t device_index = 0;            ///< CUDA device ordinal (ignored on CPU)

  /// True unless this is the default "absent" view.
  bool defined() const { return ndim >= 0; }
  /// Number of elements (1 for a 0-d tensor).
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
};

/// Builds a TensorRef for a C-contiguous (row-major) array.
ATTNKIT_API TensorRef make_tensor(void* data, DType dtype, std::initializer_list<int64_t> shape,
                                  Device device = Device::CPU);

/// What kind of failure an Error reports; the Python bindings map Value to ValueError, Type to TypeError
/// and the others to RuntimeError.
enum class ErrorKind : int32_t {
  Value = 0,        ///< a bad shape or value in the arguments
  Type = 1,         ///< a bad dtype, device or array type in the arguments
  NotBuilt = 2,     ///< the backend needed was not compiled in (e.g. CUDA)
  Runtime = 3,      ///< a failure outside the caller's control (CUDA error, out of memory)
};

/// The one exception type attnkit throws. Messages name the argument and what was expected.
class ATTNKIT_API Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const noexcept { return kind_; }

 private:
  ErrorKind kind_;
};

/// Shape and element type of one output of a call, as the mechanism's validator derives it from the inputs.
struct OutputSpec {
  const char* name = "";           ///< the params field it fills: "out", "lse", "cache_out.states", ...
  DType dtype = DType::Float32;
  int32_t ndim = 0;
  int64_t shape[kMaxDims] = {};
};

/// Every output a call can write (optional ones included), from the <function>_outputs() queries: callers
/// allocate from these instead of restating the shape rules.
struct OutputSpecs {
  static constexpr int kMax = 12;
  int32_t count = 0;
  OutputSpec items[kMax];

  /// The output called `name`, or nullptr.
  const OutputSpec* find(const char* name) const {
    for (int i = 0; i < count; ++i) {
      const char* a = items[i].name;
      const char* b = name;
      while (*a && *a == *b) ++a, ++b;
      if (*a == *b) return &items[i];
    }
    return nullptr;
  }
};

}  // namespace attnkit
