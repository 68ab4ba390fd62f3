#pragma once
// The CPU micro-kernel family in use, chosen once from CPUID (lowered, never raised, by ATTNKIT_CPU_ISA).
// Each mechanism's ISA-neutral driver switches on it to call its <mechanism>_{generic,avx2,avx512}
// entry point.

#include <cstring>

namespace attnkit {
namespace detail {
namespace cpu {

/// Avx512Bf16: AVX-512 plus AVX512-BF16 (vdpbf16ps), which only bfloat16 exact attention uses
/// (attention_avx512bf16.cpp); every other kernel runs its AVX-512 build there.
enum class Isa { Generic = 0, Avx2 = 1, Avx512 = 2, Avx512Bf16 = 3 };

Isa current_isa();

/// What CPUID says of the CPU, as far as the choice of family needs it.
struct CpuFeatures {
  bool avx2 = false, fma = false, bmi2 = false, f16c = false;          // x86-64-v3 as the AVX2 kernels use it
  bool avx512f = false, avx512bw = false, avx512dq = false, avx512vl = false;
  bool avx512bf16 = false;  // and the bfloat16 unit's self-check passed (attention_avx512bf16.cpp)
};

/// The family for a CPU with features f: the best it has, never above `limit` (ATTNKIT_CPU_ISA's value,
/// or nullptr; unknown names lower nothing). An AVX-512 CPU without a usable BF16 unit runs the AVX-512
/// kernels, not the AVX2 ones. Pure, so the tests can call it with any features.
inline Isa choose_isa(const CpuFeatures& f, const char* limit) {
  Isa best = Isa::Generic;
  const bool v3 = f.avx2 && f.fma && f.bmi2 && f.f16c;
  if (v3) best = Isa::Avx2;
  if (v3 && f.avx512f && f.avx512bw && f.avx512dq && f.avx512vl) best = f.avx512bf16 ? Isa::Avx512Bf16 : Isa::Avx512;
  if (limit) {
    Isa want = best;
    const auto is = [limit](const char* name) { return std::strcmp(limit, name) == 0; };
    if (is("generic")) want = Isa::Generic;
    else if (is("avx2")) want = Isa::Avx2;
    else if (is("avx512")) want = Isa::Avx512;
    else if (is("avx512bf16")) want = Isa::Avx512Bf16;
    if (static_cast<int>(want) < static_cast<int>(best)) best = want;
  }
  return best;
}

/// Calls generic(), avx2() or avx512() per current_isa() (which is Generic in builds without the x86
/// kernels; cpu/isa_entry_points.h maps their x86 entry points to the generic ones there).
template <class G, class A2, class A5>
auto by_isa(G&& generic, A2&& avx2, A5&& avx512) {
  switch (current_isa()) {
    case Isa::Avx512Bf16:
    case Isa::Avx512: return avx512();
    case Isa::Avx2: return avx2();
    default: return generic();
  }
}

}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
