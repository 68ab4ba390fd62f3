// C ABI: errors, version and runtime queries, tensor conversion, handle registry (c_api/common.h).
#include <cmath>
#include <new>

#include "c_api/common.h"

namespace attnkit::capi {

namespace {
thread_local std::string last_error;
}

void set_last_error(const std::string& message) { last_error = message; }

void fail(ErrorKind kind, const std::string& message) { throw Error(kind, message); }

TensorRef tensor(const attnkit_tensor* t, const std::string& name) {
  if (t == nullptr) fail(ErrorKind::Value, name + " is NULL (a tensor is required)");
  TensorRef r;
  if (t->dtype < ATTNKIT_FLOAT32 || t->dtype > ATTNKIT_INT64)
    fail(ErrorKind::Type, name + ".dtype: unknown dtype code " + std::to_string(t->dtype) +
                              " (expected ATTNKIT_FLOAT32 .. ATTNKIT_INT64, 0..6)");
  if (t->device != ATTNKIT_CPU && t->device != ATTNKIT_CUDA)
    fail(ErrorKind::Type, name + ".device: unknown device code " + std::to_string(t->device) +
                              " (expected ATTNKIT_CPU = 0 or ATTNKIT_CUDA = 1)");
  if (t->rank < 0 || t->rank > ATTNKIT_MAX_RANK)
    fail(ErrorKind::Value, name + ".rank must be in [0, " + std::to_string(ATTNKIT_MAX_RANK) + "], got " +
                               std::to_string(t->rank));
  if (t->rank > 0 && t->shape == nullptr) fail(ErrorKind::Value, name + ".shape is NULL");
  r.data = t->data;
  r.dtype = static_cast<DType>(t->dtype);
  r.device = static_cast<Device>(t->device);
  r.device_index = t->device_index;
  r.ndim = t->rank;
  int64_t stride = 1;
  for (int d = t->rank - 1; d >= 0; --d) {
    if (t->shape[d] < 0)
      fail(ErrorKind::Value, name + ".shape[" + std::to_string(d) + "] must be >= 0, got " +
                                 std::to_string(t->shape[d]));
    r.shape[d] = t->shape[d];
    r.strides[d] = t->strides != nullptr ? t->strides[d] : stride;
    stride *= t->shape[d];
  }
  if (r.data == nullptr && r.numel() > 0) fail(ErrorKind::Value, name + ".data is NULL");
  return r;
}

TensorRef optional_tensor(const attnkit_tensor* t, const std::string& name) {
  return t == nullptr ? TensorRef() : tensor(t, name);
}

std::optional<double> scale_of(int32_t has_scale, double scale, const char* name) {
  if (!flag(has_scale, name)) return std::nullopt;
  return scale;
}

bool flag(int32_t value, const char* name) {
  if (value != 0 && value != 1)
    fail(ErrorKind::Value, std::string(name) + " must be 0 or 1, got " + std::to_string(value));
  return value == 1;
}

void Registry::add(const void* h) {
  std::lock_guard<std::mutex> lock(mu_);
  live_.insert(h);
}

void Registry::check(const void* h, const char* name) const {
  if (h == nullptr) fail(ErrorKind::Value, std::string(name) + " is NULL (expected a live " + kind_ + ")");
  std::lock_guard<std::mutex> lock(mu_);
  if (live_.count(h) == 0)
    fail(ErrorKind::Value, std::string(name) + " is not a live " + kind_ + " (destroyed, or never created by " +
                               "attnkit_" + kind_ + "_*)");
}

void Registry::remove(const void* h, const char* name) {
  std::lock_guard<std::mutex> lock(mu_);
  if (live_.erase(h) == 0)
    fail(ErrorKind::Value, std::string(name) + " is not a live " + kind_ + " (destroyed twice, or never " +
                               "created by attnkit_" + kind_ + "_*)");
}

}  // namespace attnkit::capi

using attnkit::capi::guard;

extern "C" {

const char* attnkit_last_error(void) { return attnkit::capi::last_error.c_str(); }

const char* attnkit_status_name(attnkit_status status) {
  switch (status) {
    case ATTNKIT_OK: return "ok";
    case ATTNKIT_ERROR_VALUE: return "value_error";
    case ATTNKIT_ERROR_TYPE: return "type_error";
    case ATTNKIT_ERROR_NOT_BUILT: return "not_built";
    case ATTNKIT_ERROR_RUNTIME: return "runtime_error";
    default: return "unknown";
  }
}

const char* attnkit_version(void) { return attnkit::version(); }

int32_t attnkit_abi_version(void) { return ATTNKIT_ABI_VERSION; }

int32_t attnkit_built_with_cuda(void) { return attnkit::built_with_cuda() ? 1 : 0; }
int32_t attnkit_cuda_has_kernel(const char* mechanism) { return attnkit::cuda_has_kernel(mechanism) ? 1 : 0; }

const char* attnkit_cpu_isa(void) { return attnkit::cpu_isa(); }

attnkit_status attnkit_set_num_threads(int32_t n) {
  return guard([&] { attnkit::set_num_threads(n); });
}

int32_t attnkit_get_num_threads(void) { return attnkit::get_num_threads(); }

attnkit_status attnkit_set_tuning(const char* name, int64_t value) {
  return guard([&] {
    if (!name) attnkit::capi::fail(attnkit::ErrorKind::Value, "name is NULL");
    attnkit::set_tuning(name, value);
  });
}

attnkit_status attnkit_get_tuning(const char* name, int64_t* value) {
  return guard([&] {
    if (!name) attnkit::capi::fail(attnkit::ErrorKind::Value, "name is NULL");
    if (!value) attnkit::capi::fail(attnkit::ErrorKind::Value, "value is NULL");
    *value = attnkit::get_tuning(name);
  });
}

}  // extern "C"
