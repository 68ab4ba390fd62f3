// CPU backend front: picks the micro-kernel family once from CPUID (and ATTNKIT_CPU_ISA), then routes
// every call to it.
#include <cstdlib>
#include <cstring>
#include <string>

#include "backend.h"
#include "cpu/kernels.h"

namespace attnkit {
namespace detail {
namespace cpu {
namespace {

enum class Isa { Generic = 0, Avx2 = 1, Avx512 = 2 };

Isa detect() {
  Isa best = Isa::Generic;
#if defined(ATTNKIT_HAVE_X86_KERNELS)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx2") &&
      __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2"))
    best = Isa::Avx512;
  else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2") &&
           __builtin_cpu_supports("f16c"))
    best = Isa::Avx2;
#endif
  // The environment may lower the choice (tests use it to exercise every path), never raise it.
  if (const char* env = std::getenv("ATTNKIT_CPU_ISA")) {
    Isa want = best;
    if (!std::strcmp(env, "generic")) want = Isa::Generic;
    else if (!std::strcmp(env, "avx2")) want = Isa::Avx2;
    else if (!std::strcmp(env, "avx512")) want = Isa::Avx512;
    if (static_cast<int>(want) < static_cast<int>(best)) best = want;
  }
  return best;
}

Isa isa() {
  static const Isa chosen = detect();
  return chosen;
}

[[noreturn]] void out_of_memory(const char* what) {
  throw Error(ErrorKind::Runtime, std::string("attnkit: out of memory allocating CPU ") + what + " scratch space");
}

void run_exact(const AttnProblem& p, bool weights) {
  if (p.empty_output()) return;
  bool ok = false;
  switch (isa()) {
#if defined(ATTNKIT_HAVE_X86_KERNELS)
    case Isa::Avx512: ok = exact_attention_avx512(p, weights); break;
    case Isa::Avx2: ok = exact_attention_avx2(p, weights); break;
#endif
    default: ok = exact_attention_generic(p, weights); break;
  }
  if (!ok) out_of_memory("attention");
}

}  // namespace

const char* isa_name() {
  switch (isa()) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "generic";
  }
}

void attention(const AttnProblem& p) { run_exact(p, false); }
void attention_weights(const AttnProblem& p) { run_exact(p, true); }

void linear_attention(const LinearProblem& p) {
  if (p.B == 0 || p.Hkv == 0) return;
  bool ok = false;
  switch (isa()) {
#if defined(ATTNKIT_HAVE_X86_KERNELS)
    case Isa::Avx512: ok = linear_attention_avx512(p); break;
    case Isa::Avx2: ok = linear_attention_avx2(p); break;
#endif
    default: ok = linear_attention_generic(p); break;
  }
  if (!ok) out_of_memory("linear attention");
}

void linformer_project(const LinformerProblem& p, void* kproj, void* vproj) {
  bool ok = false;
  switch (isa()) {
#if defined(ATTNKIT_HAVE_X86_KERNELS)
    case Isa::Avx512: ok = linformer_project_avx512(p, kproj, vproj); break;
    case Isa::Avx2: ok = linformer_project_avx2(p, kproj, vproj); break;
#endif
    default: ok = linformer_project_generic(p, kproj, vproj); break;
  }
  if (!ok) out_of_memory("Linformer projection");
}

}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
