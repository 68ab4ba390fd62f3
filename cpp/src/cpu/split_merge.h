#pragma once
// The merge of one row's split partial results (math::merge_step in double, in split order), shared by the
// split decoding of the exact kernel (attention_exact.h merge_tile) and the fused decode kernel
// (attention_decode.h merge): one implementation, so both give the same bits for the same partials.

#include <cstdint>

#include "attnkit/math/softmax.h"
#include "cpu/kernel_common.h"

namespace attnkit {
namespace detail {
namespace cpu {
inline namespace ATTNKIT_ISA_NAMESPACE {

/// Merges nsplit partial results of one row in split order: the outputs of Dv values at o + s * o_step and
/// their lse at lse[s * lse_step]. Leaves acc[d] = sum_s exp(lse_s - mx) o_s[d] (Dv doubles) and returns
/// the factor that normalises it (math::merge_scale); *merged_lse receives the merged lse.
template <class T>
inline double merge_splits(const T* o, int64_t o_step, const T* lse, int64_t lse_step, int64_t nsplit, int64_t Dv,
                           double* acc, double* merged_lse) {
  double mx = math::neg_inf<double>(), sum = 0.0;
  for (int64_t d = 0; d < Dv; ++d) acc[d] = 0.0;
  for (int64_t s = 0; s < nsplit; ++s) {
    double w_part;
    const double w_old = math::merge_step(mx, sum, static_cast<double>(lse[s * lse_step]), &w_part);
    if (w_part == 0.0 && w_old == 1.0) continue;
    const T* os = o + s * o_step;
    for (int64_t d = 0; d < Dv; ++d) acc[d] = acc[d] * w_old + w_part * static_cast<double>(os[d]);
  }
  *merged_lse = math::merge_lse(mx, sum);
  return math::merge_scale(mx, sum);
}

}  // namespace ATTNKIT_ISA_NAMESPACE
}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
