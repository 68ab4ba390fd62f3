// merge_attention on the CPU: one pass over the parts per row (math/softmax.h merge_step), rows split
// across threads. Works on any rank and strides.
#include "attnkit/math/softmax.h"
#include "backend.h"
#include "cpu/kernel_common.h"
#include "cpu/parallel.h"

namespace attnkit {
namespace detail {
namespace cpu {
namespace {


template <class A>
void merge_rows(const MergeProblem& p) {
  const int64_t P = p.parts;
  const int nd = p.nd;
  parallel_with_scratch("merge_attention", p.rows * P * (p.Dv + 1) > 32768, sizeof(A) * p.Dv, /*zero=*/false,
                        [&](void* mem) {
    A* acc = static_cast<A*>(mem);
    team_for_static(p.rows, mem, [&](int64_t r) {
      A mx = math::neg_inf<A>(), sum = A(0);
      for (int64_t d = 0; d < p.Dv; ++d) acc[d] = A(0);
      for (int64_t k = 0; k < P; ++k) {
        const TensorRef& lt = p.lses[k];
        const A lse = static_cast<const A*>(lt.data)[merge_row_offset(r, p.shape, lt.strides, nd)];
        A w_part;
        const A w_old = math::merge_step(mx, sum, lse, &w_part);
        if (w_part == A(0) && w_old == A(1)) continue;
        const TensorRef& ot = p.outs[k];
        const int64_t oo = merge_row_offset(r, p.shape, ot.strides, nd);
        const int64_t os = ot.strides[nd];
        for (int64_t d = 0; d < p.Dv; ++d) acc[d] = acc[d] * w_old + w_part * load_float<A>(ot.data, ot.dtype, oo + d * os);
      }
      // acc holds sum_p exp(lse_p - mx) out_p; dividing by sum gives sum_p exp(lse_p - lse) out_p.
      const A inv = math::merge_scale(mx, sum);
      const int64_t oo = merge_row_offset(r, p.shape, p.out.strides, nd);
      for (int64_t d = 0; d < p.Dv; ++d) store_float<A>(p.out.data, p.out.dtype, oo + d * p.out.strides[nd], acc[d] * inv);
      if (p.lse.defined())
        static_cast<A*>(p.lse.data)[merge_row_offset(r, p.shape, p.lse.strides, nd)] = math::merge_lse(mx, sum);
    });
  });
}

}  // namespace

void merge_attention(const MergeProblem& p) {
  if (p.rows == 0) return;
  if (p.lse_dtype == DType::Float64)
    merge_rows<double>(p);
  else
    merge_rows<float>(p);
}

}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
