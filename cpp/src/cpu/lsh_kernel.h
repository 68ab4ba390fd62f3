#pragma once
// Angular LSH hashing, compiled per ISA: projections x R_r in float64 (so bucket choices match the
// float64 oracle) with the shared micro-GEMM, then argmax over [x R_r, -x R_r] with ties to the lowest
// bucket.

#include "cpu/gemm_kernel.h"
#include "cpu/kernels.h"
#include "cpu/simd.h"

namespace attnkit {
namespace detail {
namespace cpu {
inline namespace ATTNKIT_ISA_NAMESPACE {

template <int W, int RL, int NV>
void lsh_hash(const LshHashJob& job) {
  using Gemm = MicroGemm<double, W>;
  const int64_t half = job.num_buckets / 2, D = job.D;
  const int64_t rb = job.rows_per_block;
  double* X = job.scratch;            // [rb][D]
  double* P = job.scratch + rb * D;   // [rb][half]
  for (int64_t i0 = 0; i0 < job.n; i0 += rb) {
    const int64_t nr = job.n - i0 < rb ? job.n - i0 : rb;
    for (int64_t i = 0; i < nr; ++i)
      for (int64_t d = 0; d < D; ++d) {
        const int64_t idx = (i0 + i) * job.ldx + d * job.sd;
        switch (job.dtype) {
          case DType::Float32: X[i * D + d] = static_cast<const float*>(job.x)[idx]; break;
          case DType::Float64: X[i * D + d] = static_cast<const double*>(job.x)[idx]; break;
          case DType::Float16: X[i * D + d] = math::f16_to_float(static_cast<const uint16_t*>(job.x)[idx]); break;
          default: X[i * D + d] = math::bf16_to_float(static_cast<const uint16_t*>(job.x)[idx]); break;
        }
      }
    for (int64_t r = 0; r < job.num_hashes; ++r) {
      Gemm::template gemm<RL, NV, Store::Overwrite>(nr, half, D, X, D, 1, job.rot + r * D * half, half, P, half);
      for (int64_t i = 0; i < nr; ++i) {
        const double* pr = P + i * half;
        double best = pr[0];
        int64_t arg = 0;
        for (int64_t c = 1; c < half; ++c)
          if (pr[c] > best) best = pr[c], arg = c;
        for (int64_t c = 0; c < half; ++c)
          if (-pr[c] > best) best = -pr[c], arg = half + c;
        job.codes[r * job.n + i0 + i] = static_cast<int32_t>(arg);
      }
    }
  }
}

}  // namespace ATTNKIT_ISA_NAMESPACE
}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
