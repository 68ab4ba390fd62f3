#pragma once
// Entry points of the per-ISA CPU kernel translation units (<mechanism>_{generic,avx2,avx512}.cpp).
// Each throws attnkit::Error (after its OpenMP region, cpu/parallel.h) when it cannot get its memory. Builds without the x86 kernels forward the x86 names to the generic ones, so
// callers can always name all three (cpu/isa.h by_isa).

#include <cstdint>

#include "validate/attention.h"
#include "validate/attention_backward.h"
#include "validate/dla.h"
#include "validate/linear.h"

namespace attnkit {
namespace detail {
namespace cpu {

void exact_attention_generic(const AttnProblem& p, bool weights);

/// LSH hashing: codes[r][i] = argmax over the num_buckets values ([x_i R_r, -x_i R_r]) for the n rows
/// x_i (row stride ldx, element stride sd, dtype) and every round r (see cpu/lsh_kernel.h).
struct LshHashJob {
  const void* x = nullptr;
  DType dtype = DType::Float32;
  int64_t n = 0, D = 0, ldx = 0, sd = 1;  ///< rows, dim, row stride and element stride (elements)
  const double* rot = nullptr;            ///< rotations [num_hashes][D][num_buckets / 2]
  const float* rot32 = nullptr;           ///< the same, rounded to float32
  const double* rot_norm_max = nullptr;   ///< [num_hashes]: max over columns c of |R_r[:, c]|_2
  int64_t num_buckets = 2, num_hashes = 1;
  int32_t* codes = nullptr;               ///< [num_hashes][n]
  int64_t rows_per_block = 1;             ///< rows projected at once (<= 64)
  float* scratch = nullptr;               ///< rows_per_block * (D + num_buckets / 2) floats
  double* scratch_d = nullptr;            ///< D + num_buckets / 2 doubles
};
void lsh_hash_generic(const LshHashJob& job);

#if defined(ATTNKIT_HAVE_X86_KERNELS)
void exact_attention_avx2(const AttnProblem& p, bool weights);
void exact_attention_avx512(const AttnProblem& p, bool weights);
/// bfloat16 exact attention with vdpbf16ps (AVX512-BF16 CPUs); returns false, doing nothing, for problems it
/// leaves to exact_attention_avx512 (other dtypes, the fused decode kernel's cases).
bool exact_attention_avx512bf16(const AttnProblem& p, bool weights);
/// Whether vdpbf16ps gives the bfloat16 unit exact scores on small tiles (run once, before selecting it).
bool exact_attention_avx512bf16_self_check();
void lsh_hash_avx2(const LshHashJob& job);
void lsh_hash_avx512(const LshHashJob& job);
#else
inline void exact_attention_avx2(const AttnProblem& p, bool weights) { exact_attention_generic(p, weights); }
inline void exact_attention_avx512(const AttnProblem& p, bool weights) { exact_attention_generic(p, weights); }
inline bool exact_attention_avx512bf16(const AttnProblem&, bool) { return false; }
inline bool exact_attention_avx512bf16_self_check() { return false; }
inline void lsh_hash_avx2(const LshHashJob& job) { lsh_hash_generic(job); }
inline void lsh_hash_avx512(const LshHashJob& job) { lsh_hash_generic(job); }
#endif

void attention_backward_generic(const AttnBwdProblem& p);
#if defined(ATTNKIT_HAVE_X86_KERNELS)
void attention_backward_avx2(const AttnBwdProblem& p);
void attention_backward_avx512(const AttnBwdProblem& p);
#else
inline void attention_backward_avx2(const AttnBwdProblem& p) { attention_backward_generic(p); }
inline void attention_backward_avx512(const AttnBwdProblem& p) { attention_backward_generic(p); }
#endif

void dla_generic(const DLAProblem& p);
#if defined(ATTNKIT_HAVE_X86_KERNELS)
void dla_avx2(const DLAProblem& p);
void dla_avx512(const DLAProblem& p);
#else
inline void dla_avx2(const DLAProblem& p) { dla_generic(p); }
inline void dla_avx512(const DLAProblem& p) { dla_generic(p); }
#endif

void linear_attention_backward_generic(const LinearBwdProblem& p);
#if defined(ATTNKIT_HAVE_X86_KERNELS)
void linear_attention_backward_avx2(const LinearBwdProblem& p);
void linear_attention_backward_avx512(const LinearBwdProblem& p);
#else
inline void linear_attention_backward_avx2(const LinearBwdProblem& p) { linear_attention_backward_generic(p); }
inline void linear_attention_backward_avx512(const LinearBwdProblem& p) { linear_attention_backward_generic(p); }
#endif

void linear_attention_generic(const LinearProblem& p);
/// Linformer's projections K' = E k, V' = F v into C-contiguous [B, Hkv, P, D] / [B, Hkv, P, Dv] buffers
/// of q's dtype.
void linformer_project_generic(const LinformerProblem& p, void* kproj, void* vproj);
#if defined(ATTNKIT_HAVE_X86_KERNELS)
void linear_attention_avx2(const LinearProblem& p);
void linear_attention_avx512(const LinearProblem& p);
void linformer_project_avx2(const LinformerProblem& p, void* kproj, void* vproj);
void linformer_project_avx512(const LinformerProblem& p, void* kproj, void* vproj);
#else
inline void linear_attention_avx2(const LinearProblem& p) { linear_attention_generic(p); }
inline void linear_attention_avx512(const LinearProblem& p) { linear_attention_generic(p); }
inline void linformer_project_avx2(const LinformerProblem& p, void* k, void* v) { linformer_project_generic(p, k, v); }
inline void linformer_project_avx512(const LinformerProblem& p, void* k, void* v) { linformer_project_generic(p, k, v); }
#endif
/// linformer_project_* for the ISA chosen at run time (cpu_features.cpp); throws when out of memory.
void linformer_project(const LinformerProblem& p, void* kproj, void* vproj);

}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
