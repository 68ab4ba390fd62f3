#pragma once
// The one threading shape of the CPU kernels (the CPU side of the workspace seam, see workspace.h): an
// OpenMP team in which every thread owns its scratch memory and runs worksharing loops. No exception may
// leave an OpenMP region (it would std::terminate), so a thread that cannot get its scratch only raises a
// flag, skips its share of the work, and the failure becomes an Error after the region.

#include <cstddef>
#include <cstdint>

#include "cpu/kernel_common.h"

namespace attnkit {
namespace detail {
namespace cpu {

/// Throws Error(Runtime): `what` could not get `bytes` of scratch memory per thread.
[[noreturn]] void out_of_memory(const char* what, std::size_t bytes);

inline namespace ATTNKIT_ISA_NAMESPACE {

/// Runs body(scratch) on a team of threads (one thread when `parallel` is false), each with its own
/// 64-byte aligned scratch of `bytes` (zero-filled when `zero`; null in a thread whose allocation failed,
/// which then must skip its work but still reach the team's worksharing loops). Throws after the region
/// when any thread could not allocate.
template <class Body>
void parallel_with_scratch(const char* what, bool parallel, std::size_t bytes, bool zero, Body&& body) {
  bool oom = false;
#if defined(_OPENMP)
#pragma omp parallel if (parallel)
#endif
  {
    Scratch scratch(bytes, zero);
    if (!scratch.ptr) {
#if defined(_OPENMP)
#pragma omp atomic write
#endif
      oom = true;
    }
    body(scratch.ptr);
  }
  if (oom) out_of_memory(what, bytes);
}

/// A worksharing loop over [0, n), one item at a time to whichever thread is free, inside the team of
/// parallel_with_scratch (an orphaned `omp for`; a plain loop outside a team). `f` is skipped when the
/// thread has no scratch (`mem` null). Items must not depend on which thread runs them.
template <class F>
void team_for(int64_t n, const void* mem, F&& f) {
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
  for (int64_t i = 0; i < n; ++i)
    if (mem) f(i);
}

/// team_for with equal contiguous shares per thread: for many cheap items of equal cost.
template <class F>
void team_for_static(int64_t n, const void* mem, F&& f) {
#if defined(_OPENMP)
#pragma omp for schedule(static)
#endif
  for (int64_t i = 0; i < n; ++i)
    if (mem) f(i);
}

}  // namespace ATTNKIT_ISA_NAMESPACE
}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
