#pragma once
// Configuration shared by the header-only math used on both CPU and GPU.
//
// ATTNKIT_HD marks a function callable from host and device code. The math is written once, as
// templates over the value type where it makes sense, so the CPU kernels can call it on SIMD vectors
// (GCC/Clang vector extensions) and the CUDA kernels on scalars: the two backends cannot drift.
//
// ATTNKIT_ISA_NAMESPACE: the CPU backend compiles the same kernels several times with different
// instruction sets (-march=x86-64-v3, -v4, baseline). Every inline function those translation units
// instantiate must have a distinct mangled name per instruction set, or the linker may keep the AVX-512
// copy for the baseline caller. Each ISA translation unit defines ATTNKIT_ISA_NAMESPACE before including
// anything of ours, and all our inline code lives in that inline namespace.

#if defined(__CUDACC__)
#  define ATTNKIT_HD __host__ __device__ __forceinline__
#else
#  define ATTNKIT_HD inline
#endif

#ifndef ATTNKIT_ISA_NAMESPACE
#  define ATTNKIT_ISA_NAMESPACE isa_base
#endif

#define ATTNKIT_MATH_BEGIN \
  namespace attnkit {      \
  namespace math {         \
  inline namespace ATTNKIT_ISA_NAMESPACE {
#define ATTNKIT_MATH_END \
  }                      \
  }                      \
  }
