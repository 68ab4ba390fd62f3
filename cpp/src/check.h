#pragma once
// ATTNKIT_ASSERT: internal invariants (never user input, which validators check with a message naming the
// argument). A failed assertion is a bug in attnkit; it throws Error(Runtime) saying where, rather than
// aborting the caller's process. (Named check.h so that it can never shadow the C library's assert.h.)

#include "attnkit/types.h"

namespace attnkit {
namespace detail {
[[noreturn]] void assert_failed(const char* cond, const char* what, const char* file, int line);
}  // namespace detail
}  // namespace attnkit

#define ATTNKIT_ASSERT(cond, what)                                                       \
  do {                                                                                   \
    if (!(cond)) ::attnkit::detail::assert_failed(#cond, what, __FILE__, __LINE__);      \
  } while (0)
