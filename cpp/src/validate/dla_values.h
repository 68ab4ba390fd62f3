#pragma once
// The value checks of dynamic_linear_attention (log_decay finite and <= 0; the input cache's sizes in
// [0, C] and spans contiguous from 0 that cover cache.position), apart from the rest of its validation so
// that a CUDA decode step can be launched before the host waits for them (dispatch.cpp). On a device the
// checked arrays must be read on the host, and a read waits: for the previous step's kernels, which made the
// cache, and then for the copies. validate_dla (validate/dla.cpp) reads and checks them before it returns;
// validate_dla_deferred leaves them to a DLAValueCheck, whose start() enqueues the copies on the call's
// stream (behind one event, not waited for) and whose finish() waits for them alone (not for the kernels
// launched in between) and checks. A bad value still raises, naming the argument, before the call returns;
// only the kernels have then run on it (the decode kernels bound the cache size, so they stay in memory),
// writing outputs the caller never receives.

#include <cstddef>
#include <cstdint>
#include <vector>

#include "validate/dla.h"

namespace attnkit {
namespace detail {

class DLAValueCheck {
 public:
  DLAValueCheck() = default;
  /// Waits for copies still in flight (an exception between start and finish): the staging buffer they
  /// land in is the thread's, reused by its next read.
  ~DLAValueCheck();
  DLAValueCheck(const DLAValueCheck&) = delete;
  DLAValueCheck& operator=(const DLAValueCheck&) = delete;

  /// Whether there is anything to check (a log_decay or an input cache).
  bool any() const { return n_ > 0; }
  /// Enqueues the reads of the checked device arrays on the call's stream without waiting (where they
  /// cannot be staged, or the gate "dla_launch_before_checks" is closed, reads them here, waiting). Nothing
  /// for host arrays. Idempotent.
  void start();
  /// Waits for the reads (start() first if it was not called) and checks the values: Error(Value) naming
  /// the argument. Idempotent.
  void finish();

 private:
  friend DLAProblem validate_dla_deferred(const DLAParams& p, DLAValueCheck* values);
  struct Array {
    const void* data = nullptr;
    DType dtype = DType::Float32;
    int ndim = 0;
    int64_t shape[3] = {};
    int64_t stride[3] = {};
    std::vector<char> copy;  ///< the span's values on the host (device arrays)
    const char* span = nullptr;  ///< the span's first byte on the device (nullptr: nothing to read)
    int64_t lo = 0;              ///< the span's first element relative to element 0 (<= 0)
  };
  void add(Array* a, const void* data, DType dt, int ndim, const int64_t* shape, const int64_t* stride);
  void check();

  Array arrays_[4];  ///< log_decay, cache.size, cache.counts, cache.starts (those present)
  int n_ = 0;
  Array *decay_ = nullptr, *size_ = nullptr, *counts_ = nullptr, *starts_ = nullptr;
  int64_t B_ = 0, H_ = 0, T_ = 0, C_ = 0, position_ = 0;
  TensorRef ref_;  ///< q: its device
  void* stream_ = nullptr;
  bool started_ = false, async_ = false, done_ = false;
};

/// validate_dla (validate/dla.h) without the value checks, which it leaves to *values.
DLAProblem validate_dla_deferred(const DLAParams& p, DLAValueCheck* values);

namespace cuda {
/// download_many's staged copies (cuda/runtime.cu) without its wait: the copies into this thread's
/// page-locked staging buffer are enqueued on `stream` and an event recorded behind them; finish_downloads
/// waits for that event alone and copies the values to dst. False (nothing enqueued) where they do not fit
/// the staging buffer, the gate "dla_launch_before_checks" is closed, or another staged read is pending:
/// the caller then takes download_many. Throws Error(NotBuilt) in builds without CUDA.
bool start_downloads(int n, void* const* dst, const void* const* src, const std::size_t* bytes, int32_t device_index,
                     void* stream);
/// Waits for the staged copies of start_downloads and copies them out (Error(Runtime) on a CUDA failure).
void finish_downloads();
/// Waits for the staged copies of start_downloads, if any, and forgets them (no errors).
void abandon_downloads() noexcept;
/// Whether the CUDA call of p may run its kernels before the value checks: the decode step (T = 1), whose
/// kernels bound the cache size they read, where the gate "dla_launch_before_checks" is open. False in
/// builds without CUDA.
bool dla_launch_before_checks(const DLAProblem& p);
}  // namespace cuda

}  // namespace detail
}  // namespace attnkit
