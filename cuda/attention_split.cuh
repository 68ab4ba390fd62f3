#pragma once
// The merge of split-KV partial results, shared by the SIMT kernel's split form (attention_simt.cuh) and
// the decode kernel (attention_decode.cuh). Partial outputs are [nsplit][B*Hq*Sq][Dv] and partial LSEs
// [nsplit][B*Hq*Sq], in the accumulator type, row ro = (b * Hq + h) * Sq + i; each split's output is
// already normalised (its own softmax), its LSE -inf when it saw no allowed key.

#include <cstdint>

#include "attnkit/math/softmax.h"
#include "cpp/src/validate/attention.h"
#include "cuda/common.cuh"
#include "cuda/workspace.cuh"

namespace attnkit {
namespace detail {
namespace cuda {

/// Stream-ordered scratch for the partial results of nsplit > 1 splits (none for one split).
template <class A>
struct SplitScratch {
  Workspace ws;
  A* o = nullptr;    ///< [nsplit][rows][Dv]
  A* lse = nullptr;  ///< [nsplit][rows]
  SplitScratch(int nsplit, int64_t rows, int64_t Dv, cudaStream_t st)
      : ws(nsplit > 1 ? sizeof(A) * static_cast<std::size_t>(nsplit) * static_cast<std::size_t>(rows) *
                            static_cast<std::size_t>(Dv + 1)
                      : 0,
           st) {
    if (nsplit > 1) {
      o = ws.as<A>();
      lse = o + static_cast<int64_t>(nsplit) * rows * Dv;
    }
  }
};

/// Merges the splits' partial outputs (in split order, the merge rule of math/softmax.h) into out / lse.
/// One warp per row; lanes over Dv. Launch with blocks_for(B*Hq*Sq, blockDim.x / 32) blocks.
template <class T>
__global__ void merge_splits_kernel(const AttnProblem p, const void* part_o, const void* part_lse, int nsplit) {
  using A = acc_t<T>;
  const int64_t rows_total = p.B * p.Hq * p.Sq;
  const int64_t ro = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (ro >= rows_total) return;
  const int t = threadIdx.x % 32;
  const A* plse = static_cast<const A*>(part_lse);
  const A* po = static_cast<const A*>(part_o);
  const int64_t i = ro % p.Sq, h = (ro / p.Sq) % p.Hq, b = ro / (p.Sq * p.Hq);
  T* dst = static_cast<T*>(p.out) + b * p.out_stride[0] + h * p.out_stride[1] + i * p.out_stride[2];
  for (int64_t d0 = 0; d0 < p.Dv; d0 += 32) {
    const int64_t dv = d0 + t;
    A mx = math::neg_inf<A>(), sum = A(0), acc = A(0);
    for (int s = 0; s < nsplit; ++s) {
      A w;
      const A r = math::merge_step(mx, sum, plse[s * rows_total + ro], &w);
      const A x = dv < p.Dv ? po[(s * rows_total + ro) * p.Dv + dv] : A(0);
      acc = acc * r + (w == A(0) ? A(0) : w * x);
    }
    if (dv < p.Dv) dst[dv * p.out_stride[3]] = from_acc<T>(acc * math::merge_scale(mx, sum));
    if (d0 == 0 && t == 0 && p.lse)
      static_cast<A*>(p.lse)[b * p.lse_stride[0] + h * p.lse_stride[1] + i * p.lse_stride[2]] = math::merge_lse(mx, sum);
  }
  if (p.Dv == 0 && t == 0 && p.lse) {  // no values: the LSE alone
    A mx = math::neg_inf<A>(), sum = A(0), w;
    for (int s = 0; s < nsplit; ++s) math::merge_step(mx, sum, plse[s * rows_total + ro], &w);
    static_cast<A*>(p.lse)[b * p.lse_stride[0] + h * p.lse_stride[1] + i * p.lse_stride[2]] = math::merge_lse(mx, sum);
  }
}

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
