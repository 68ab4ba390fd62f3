// What cpp/include/attnkit/types.h declares: dtype sizes and names, make_tensor; and the internal
// assertion failure of check.h.
#include <sstream>

#include "attnkit/attnkit.h"
#include "validate/common.h"

namespace attnkit {

std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::Float32: return 4;
    case DType::Float64: return 8;
    case DType::Float16: return 2;
    case DType::BFloat16: return 2;
    case DType::Bool: return 1;
    case DType::Int32: return 4;
    case DType::Int64: return 8;
  }
  throw Error(ErrorKind::Type, "unknown dtype code " + std::to_string(static_cast<int>(t)));
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
    case DType::Bool: return "bool";
    case DType::Int32: return "int32";
    case DType::Int64: return "int64";
  }
  return "unknown";
}

TensorRef make_tensor(void* data, DType dtype, std::initializer_list<int64_t> shape, Device device) {
  if (shape.size() > static_cast<std::size_t>(kMaxDims))
    throw Error(ErrorKind::Value, "make_tensor: rank " + std::to_string(shape.size()) + " exceeds " +
                                      std::to_string(kMaxDims));
  TensorRef t;
  t.data = data;
  t.dtype = dtype;
  t.device = device;
  t.ndim = static_cast<int32_t>(shape.size());
  int i = 0;
  for (int64_t s : shape) t.shape[i++] = s;
  int64_t stride = 1;
  for (int d = t.ndim - 1; d >= 0; --d) {
    t.strides[d] = stride;
    stride *= t.shape[d];
  }
  return t;
}

namespace detail {

void assert_failed(const char* cond, const char* what, const char* file, int line) {
  throw Error(ErrorKind::Runtime, std::string("attnkit internal error (a bug; please report it): ") + what + " [" +
                                      cond + " at " + file + ":" + std::to_string(line) + "]");
}

}  // namespace detail
}  // namespace attnkit
