#pragma once
// Test builds only (CMake: -DATTNKIT_AVX512_EMULATION=<a SIMDe include directory>): force-included
// (-include) at the top of the AVX-512 translation units, which are then compiled for x86-64-v3. The
// native AVX2 intrinsics come first; SIMDe (https://github.com/simd-everywhere/simde, header-only, MIT;
// `pip install simde-py`) then defines every _mm512_* intrinsic the kernels call, and their __m512 types
// are GCC's own. Only after that the __AVX512*__ macros are set, so that the kernels' AVX-512 sections
// compile (SIMDe, seeing them first, would take the instructions for native). cpu/isa.cpp then offers
// the avx512 and avx512bf16 families on AVX2 CPUs: the AVX-512 kernels' logic (tile widths, masks, tails,
// the intrinsic sequences) runs and is tested on machines without the instructions. Never a release build:
// SIMDe models the instructions, it is not them, and the emulated kernels are slow.
#include <immintrin.h>

#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>

#define ATTNKIT_AVX512_EMULATED 1
#define __AVX512F__ 1
#define __AVX512BW__ 1
#define __AVX512DQ__ 1
#define __AVX512VL__ 1
#define __AVX512CD__ 1
