// CPUID detection: the CPU micro-kernel family, chosen once (lowered, never raised, by ATTNKIT_CPU_ISA).
#include <cstdlib>

#include "cpu/isa.h"
#include "cpu/isa_entry_points.h"

namespace attnkit {
namespace detail {
namespace cpu {
namespace {

Isa detect() {
  CpuFeatures f;
#if defined(ATTNKIT_HAVE_X86_KERNELS)
  __builtin_cpu_init();
  f.avx2 = __builtin_cpu_supports("avx2");
  f.fma = __builtin_cpu_supports("fma");
  f.bmi2 = __builtin_cpu_supports("bmi2");
  f.f16c = __builtin_cpu_supports("f16c");
  f.avx512f = __builtin_cpu_supports("avx512f");
  f.avx512bw = __builtin_cpu_supports("avx512bw");
  f.avx512dq = __builtin_cpu_supports("avx512dq");
  f.avx512vl = __builtin_cpu_supports("avx512vl");
  // AVX512-BF16 only where the bfloat16 unit's self-check computes exact scores on this CPU (that unit has
  // not run on such hardware yet; see attention_avx512bf16.cpp): otherwise the plain AVX-512 path.
#if defined(ATTNKIT_AVX512_EMULATED)  // test builds: the AVX-512 units emulated by SIMDe (cpu/avx512_emulation.h)
  f.avx512f = f.avx512bw = f.avx512dq = f.avx512vl = f.avx2;
  const bool bf16 = true;
#else
  const bool bf16 = __builtin_cpu_supports("avx512bf16");
#endif
  f.avx512bf16 = f.avx512f && f.avx512bw && f.avx512dq && f.avx512vl && bf16 && exact_attention_avx512bf16_self_check();
#endif
  // The environment may lower the choice (tests use it to exercise every path), never raise it.
  return choose_isa(f, std::getenv("ATTNKIT_CPU_ISA"));
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
