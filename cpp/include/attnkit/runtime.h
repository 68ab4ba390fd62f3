#pragma once
// What this build of attnkit can do, and CPU thread control.

#include <string>

#include "attnkit/types.h"

namespace attnkit {

/// The library version, "MAJOR.MINOR.PATCH".
ATTNKIT_API const char* version();
/// True when the CUDA backend was compiled in.
ATTNKIT_API bool built_with_cuda();
/// Number of CUDA devices visible (0 without CUDA, without a driver or without a GPU).
ATTNKIT_API int cuda_device_count();
/// Whether the public function `mechanism` (e.g. "attention", "lsh_attention") runs on CUDA arrays in this
/// build and process: its kernel has been verified on a GPU, or the environment sets
/// ATTNKIT_CUDA_UNVERIFIED=1 for kernels compiled but not yet verified. False in builds without CUDA.
ATTNKIT_API bool cuda_has_kernel(const char* mechanism);
/// The CPU micro-kernel family in use: "avx512bf16" (AVX-512 plus vdpbf16ps for bfloat16 exact attention),
/// "avx512", "avx2" or "generic". ATTNKIT_CPU_ISA=generic|avx2|avx512|avx512bf16 in the environment lowers
/// (never raises) the choice made from CPUID.
ATTNKIT_API const char* cpu_isa();
/// Threads the CPU backend uses for the next call (OpenMP; 1 without OpenMP): the OpenMP setting, capped
/// at 4 per processor (at least 16, at most 1024).
ATTNKIT_API int get_num_threads();
/// Sets the CPU thread count for later calls from this thread (n >= 1; calls use at most the cap above).
ATTNKIT_API void set_num_threads(int n);

/// Whether a call can run, and where: the answer of the same selection the call itself makes (dispatch
/// asks it before every call and raises Error(NotBuilt) with `reason` when ok is false).
struct Support {
  bool ok = false;
  std::string backend;  ///< "cpu/avx512", "cpu/avx2", "cpu/generic", "cuda" ...
  std::string reason;   ///< why not, when ok is false
};

/// Backend tuning options: switches that change speed, never a result beyond rounding, process-wide.
///   "linear_chunk": linear attention / Performer chunk length, 0 = tuned default, else 1..1024;
///   "dla_chunk":    DLA, 0 = automatic, L >= 1 = chunks of L tokens (1: token by token);
///   "cuda_decode", "cuda_decode_keys", "cuda_decode_blocks", "cuda_decode_stages", "cuda_decode3_blocks",
///   "cuda_decode3_pdl": the CUDA decode kernel's version and variants (cpp/src/tuning.h), 0 = defaults;
///   "cuda_scratch": CUDA scratch from attnkit's pool per device (0, the default) or the default pool (1).
///   "dla_split":    DLA prefill on CUDA, blocks per (batch, head) (output column slices), 0 = automatic, else 1..8
///                   (-1: the first CUDA prefill kernel, -2: v4's passes C1 + C2 instead of v5's fused pass; both
///                   for measurements).
///   "dla_decode":   DLA decode step on CUDA, 0 = automatic, 2 = the two-kernel step (for measurements).
/// Throws Error(Value) for an unknown name or a value out of range. Meant for tests and measurements.
ATTNKIT_API void set_tuning(const char* name, int64_t value);
ATTNKIT_API int64_t get_tuning(const char* name);

}  // namespace attnkit
