#pragma once
// Shared machinery of the C ABI (attnkit/c_api.h): the exception-to-status guard, the thread-local error
// message, attnkit_tensor -> TensorRef conversion that names the argument, options structs read by
// struct_size, and the registry of live handles. Internal.

#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_set>

#include "attnkit/attnkit.h"
#include "attnkit/c_api.h"

namespace attnkit::capi {

/// Sets the thread's last-error message (empty = success).
void set_last_error(const std::string& message);

[[noreturn]] void fail(ErrorKind kind, const std::string& message);

/// Runs f, turning every exception into a status and the thread's last-error message. Never throws.
template <class F>
attnkit_status guard(F&& f) noexcept {
  try {
    set_last_error(std::string());
    f();
    return ATTNKIT_OK;
  } catch (const Error& e) {
    try { set_last_error(e.what()); } catch (...) {}
    return static_cast<attnkit_status>(e.kind()) + 1;  // one status per ErrorKind (c_api.h)
  } catch (const std::bad_alloc&) {
    try { set_last_error("out of memory"); } catch (...) {}
    return ATTNKIT_ERROR_RUNTIME;
  } catch (const std::exception& e) {
    try { set_last_error(e.what()); } catch (...) {}
    return ATTNKIT_ERROR_RUNTIME;
  } catch (...) {
    try { set_last_error("unknown C++ exception"); } catch (...) {}
    return ATTNKIT_ERROR_RUNTIME;
  }
}

/// The TensorRef of a required tensor argument: NULL, bad rank, dtype, device, shape and data errors
/// name the argument (e.g. "q.dtype").
TensorRef tensor(const attnkit_tensor* t, const std::string& name);
/// As tensor(), but NULL gives the absent TensorRef.
TensorRef optional_tensor(const attnkit_tensor* t, const std::string& name);

/// Sets p.q, p.k, p.v and p.out (every mechanism's params struct has them) from required tensors.
template <class Params>
void set_qkv_out(Params& p, const attnkit_tensor* q, const attnkit_tensor* k, const attnkit_tensor* v,
                 const attnkit_tensor* out) {
  p.q = tensor(q, "q");
  p.k = tensor(k, "k");
  p.v = tensor(v, "v");
  p.out = tensor(out, "out");
}

/// The scale of an options struct: absent unless has_scale (which must be 0 or 1).
std::optional<double> scale_of(int32_t has_scale, double scale, const char* name);
/// A C int flag that must be 0 or 1.
bool flag(int32_t value, const char* name);

/// The options a call uses: the defaults overlaid with the first struct_size bytes the caller passed
/// (a caller compiled against an older header passes fewer fields). NULL = defaults.
template <class Opts>
Opts options(const Opts* given, const Opts& defaults, const char* name) {
  Opts o = defaults;
  if (given == nullptr) return o;
  const uint32_t size = given->struct_size;
  if (size < sizeof(uint32_t) || size > sizeof(Opts))
    fail(ErrorKind::Value, std::string(name) + ".struct_size is " + std::to_string(size) + ", expected " +
                               std::to_string(sizeof(Opts)) + " (fill it with the header's " + name +
                               " default function; a larger size means a header newer than this library)");
  std::memcpy(static_cast<void*>(&o), static_cast<const void*>(given), size);
  return o;
}

/// Live handles of one kind: a destroyed, foreign or NULL handle is reported, never dereferenced.
class Registry {
 public:
  explicit Registry(const char* kind) : kind_(kind) {}
  void add(const void* h);
  /// Throws Error(Value) naming `name` unless h is live.
  void check(const void* h, const char* name) const;
  /// Removes a live handle (throws like check() otherwise).
  void remove(const void* h, const char* name);

 private:
  const char* kind_;
  mutable std::mutex mu_;
  std::unordered_set<const void*> live_;
};

/// Writes a new handle through `out` (named `name`), registering it; deletes it if that fails.
template <class H>
void publish(H* h, H** out, Registry& reg, const char* name) {
  if (out == nullptr) {
    delete h;
    fail(ErrorKind::Value, std::string(name) + " is NULL (it receives the new handle)");
  }
  try {
    reg.add(h);
  } catch (...) {
    delete h;
    throw;
  }
  *out = h;
}

}  // namespace attnkit::capi
