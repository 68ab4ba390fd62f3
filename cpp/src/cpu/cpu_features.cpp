// CPU backend front: picks the micro-kernel family once from CPUID (and ATTNKIT_CPU_ISA), then routes
// every call to it.
#include <cstdlib>
#include <cstring>
#include <string>

#include "backend.h"
#include "cpu/isa.h"
#include "cpu/kernels.h"

namespace attnkit {
namespace detail {
namespace cpu {
namespace {

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

[[noreturn]] void out_of_memory(const char* what) {
  throw Error(ErrorKind::Runtime, std::string("attnkit: out of memory allocating CPU ") + what + " scratch space");
}

void run_exact(const AttnProblem& p, bool weights) {
  if (p.empty_output()) return;
  const bool ok = by_isa([&] { return exact_attention_generic(p, weights); },
                         [&] { return exact_attention_avx2(p, weights); },
                         [&] { return exact_attention_avx512(p, weights); });
  if (!ok) out_of_memory("attention");
}

}  // namespace

Isa current_isa() {
  static const Isa chosen = detect();
  return chosen;
}

const char* isa_name() {
  switch (current_isa()) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "generic";
  }
}

void attention(const AttnProblem& p) { run_exact(p, false); }
void attention_weights(const AttnProblem& p) { run_exact(p, true); }

void attention_backward(const AttnBwdProblem& p) {
  if (p.fwd.B == 0 || p.fwd.Hkv == 0) return;  // nothing to write (Sq = 0 still zeroes dk, dv)
  const bool ok = by_isa([&] { return attention_backward_generic(p); }, [&] { return attention_backward_avx2(p); },
                         [&] { return attention_backward_avx512(p); });
  if (!ok) out_of_memory("attention backward");
}

void dynamic_linear_attention(const DLAProblem& p) {
  if (p.B * p.H == 0) return;
  const bool ok = by_isa([&] { return dla_generic(p); }, [&] { return dla_avx2(p); }, [&] { return dla_avx512(p); });
  if (!ok) out_of_memory("DLA");
}

void linear_attention(const LinearProblem& p) {
  if (p.B == 0 || p.Hkv == 0) return;
  const bool ok = by_isa([&] { return linear_attention_generic(p); }, [&] { return linear_attention_avx2(p); },
                         [&] { return linear_attention_avx512(p); });
  if (!ok) out_of_memory("linear attention");
}

void linformer_project(const LinformerProblem& p, void* kproj, void* vproj) {
  const bool ok = by_isa([&] { return linformer_project_generic(p, kproj, vproj); },
                         [&] { return linformer_project_avx2(p, kproj, vproj); },
                         [&] { return linformer_project_avx512(p, kproj, vproj); });
  if (!ok) out_of_memory("Linformer projection");
}

}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
