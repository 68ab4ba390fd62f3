// CPU backend entry points (backend.h): each mechanism's ISA-neutral driver routes a validated problem
// to the micro-kernel family of cpu/isa.h.
#include <string>

#include "backend.h"
#include "cpu/isa.h"
#include "cpu/isa_entry_points.h"
#include "cpu/parallel.h"

namespace attnkit {
namespace detail {
namespace cpu {

void out_of_memory(const char* what, std::size_t bytes) {
  throw Error(ErrorKind::Runtime, std::string("attnkit: out of memory allocating ") + std::to_string(bytes) +
                                      " bytes of CPU scratch space for " + what);
}

namespace {
void exact_dispatch(const AttnProblem& p, bool weights) {
  if (p.empty_output()) return;
  by_isa([&] { exact_attention_generic(p, weights); }, [&] { exact_attention_avx2(p, weights); }, [&] {
    if (current_isa() == Isa::Avx512Bf16 && exact_attention_avx512bf16(p, weights)) return;
    exact_attention_avx512(p, weights);
  });
}
}  // namespace

void attention(const AttnProblem& p) { exact_dispatch(p, false); }
void attention_weights(const AttnProblem& p) { exact_dispatch(p, true); }

void attention_backward(const AttnBwdProblem& p) {
  if (p.fwd.B == 0 || p.fwd.Hkv == 0) return;  // nothing to write (Sq = 0 still zeroes dk, dv)
  by_isa([&] { attention_backward_generic(p); }, [&] { attention_backward_avx2(p); },
         [&] { attention_backward_avx512(p); });
}

void linear_attention_backward(const LinearBwdProblem& p) {
  if (p.fwd.B == 0 || p.fwd.Hkv == 0) return;  // nothing to write
  by_isa([&] { linear_attention_backward_generic(p); }, [&] { linear_attention_backward_avx2(p); },
         [&] { linear_attention_backward_avx512(p); });
}

void dynamic_linear_attention(const DLAProblem& p) {
  if (p.B * p.H == 0) return;
  by_isa([&] { dla_generic(p); }, [&] { dla_avx2(p); }, [&] { dla_avx512(p); });
}

void linear_attention(const LinearProblem& p) {
  if (p.B == 0 || p.Hkv == 0) return;
  by_isa([&] { linear_attention_generic(p); }, [&] { linear_attention_avx2(p); },
         [&] { linear_attention_avx512(p); });
}

void linformer_project(const LinformerProblem& p, void* kproj, void* vproj) {
  by_isa([&] { linformer_project_generic(p, kproj, vproj); }, [&] { linformer_project_avx2(p, kproj, vproj); },
         [&] { linformer_project_avx512(p, kproj, vproj); });
}

}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
