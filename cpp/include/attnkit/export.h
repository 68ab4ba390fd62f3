/* ATTNKIT_API: the symbol visibility of attnkit's public functions (C++ API and C ABI). Plain C. */
#ifndef ATTNKIT_EXPORT_H
#define ATTNKIT_EXPORT_H

#if defined(_WIN32)
#  if defined(ATTNKIT_SHARED) && defined(ATTNKIT_BUILDING)
#    define ATTNKIT_API __declspec(dllexport)
#  elif defined(ATTNKIT_SHARED)
#    define ATTNKIT_API __declspec(dllimport)
#  else
#    define ATTNKIT_API
#  endif
#else
#  define ATTNKIT_API __attribute__((visibility("default")))
#endif

#endif /* ATTNKIT_EXPORT_H */
