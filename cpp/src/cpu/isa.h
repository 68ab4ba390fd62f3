#pragma once
// The CPU micro-kernel family in use, chosen once from CPUID (lowered, never raised, by ATTNKIT_CPU_ISA).
// Each mechanism's ISA-neutral driver switches on it to call its <mechanism>_{generic,avx2,avx512}
// entry point.

namespace attnkit {
namespace detail {
namespace cpu {

/// Avx512Bf16: AVX-512 plus AVX512-BF16 (vdpbf16ps), which only bfloat16 exact attention uses
/// (attention_avx512bf16.cpp); every other kernel runs its AVX-512 build there.
enum class Isa { Generic = 0, Avx2 = 1, Avx512 = 2, Avx512Bf16 = 3 };

Isa current_isa();

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
