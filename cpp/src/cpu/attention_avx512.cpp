// Exact attention for x86-64-v4 (AVX-512 F/BW/DQ/VL, 32 zmm registers).
#define ATTNKIT_ISA_NAMESPACE isa_avx512
#include "cpu/attention_avx512_cfg.h"
#include "cpu/attention_decode.h"
#include "cpu/attention_exact.h"
#include "cpu/isa_entry_points.h"

namespace attnkit {
namespace detail {
namespace cpu {

void exact_attention_avx512(const AttnProblem& p, bool weights) {
  if (decode_attention<16>(p, weights)) return;  // few query rows per kv head: the fused decode kernel
  exact_for_isa<Avx512F32, Avx512F64>(p, weights);
}

}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
