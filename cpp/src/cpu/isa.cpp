// CPUID detection: the CPU micro-kernel family, chosen once (lowered, never raised, by ATTNKIT_CPU_ISA).
#include <cstdlib>
#include <cstring>

#include "cpu/isa.h"
#include "cpu/isa_entry_points.h"

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
  // AVX512-BF16 only where the bfloat16 unit's self-check computes exact scores on this CPU (that unit has
  // not run on such hardware yet; see attention_avx512bf16.cpp): otherwise the plain AVX-512 path.
  if (best == Isa::Avx512 && __builtin_cpu_supports("avx512bf16") && exact_attention_avx512bf16_self_check())
    best = Isa::Avx512Bf16;
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
    else if (!std::strcmp(env, "avx512bf16")) want = Isa::Avx512Bf16;
    if (static_cast<int>(want) < static_cast<int>(best)) best = want;
  }
  return best;
}

}  // namespace

Isa current_isa() {
  static const Isa chosen = detect();
  return chosen;
}

const char* isa_name() {
  switch (current_isa()) {
    case Isa::Avx512Bf16: return "avx512bf16";
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "generic";
  }
}

}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
