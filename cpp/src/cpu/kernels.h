#pragma once
// Entry points of the per-ISA CPU kernel translation units. Each returns false when it could not
// allocate its scratch memory; the (ISA-neutral) caller turns that into an attnkit::Error.

#include "validate/attention.h"
#include "validate/linear.h"

namespace attnkit {
namespace detail {
namespace cpu {

bool exact_attention_generic(const AttnProblem& p, bool weights);
bool exact_attention_avx2(const AttnProblem& p, bool weights);
bool exact_attention_avx512(const AttnProblem& p, bool weights);

bool linear_attention_generic(const LinearProblem& p);
bool linear_attention_avx2(const LinearProblem& p);
bool linear_attention_avx512(const LinearProblem& p);

/// Linformer's projections K' = E k, V' = F v into C-contiguous [B, Hkv, P, D] / [B, Hkv, P, Dv] buffers
/// of q's dtype.
bool linformer_project_generic(const LinformerProblem& p, void* kproj, void* vproj);
bool linformer_project_avx2(const LinformerProblem& p, void* kproj, void* vproj);
bool linformer_project_avx512(const LinformerProblem& p, void* kproj, void* vproj);
/// The above for the ISA chosen at run time (cpu_features.cpp); throws when out of memory.
void linformer_project(const LinformerProblem& p, void* kproj, void* vproj);

}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
