// random_features: host-side generation in double precision from the shared Philox generator
// (math/random.h), then one rounding to the requested dtype. A pure function of its arguments (the
// construction is documented in attnkit/linear.h); threads split the work by block of rows, so the result
// does not depend on their number.
#include <algorithm>
#include <cmath>
#include <memory>
#include <new>
#include <vector>

#include "attnkit/math/random.h"
#include "backend.h"
#include "cpu/kernel_common.h"
#include "cpu/parallel.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace attnkit {
namespace detail {
namespace cpu {
namespace {

/// Buffers of one block, carved from a thread's scratch (so nothing inside the work loop allocates).
struct BlockWork {
  double *g, *gt, *q, *vs, *betas, *rdiag;  // D x D, D x D, D x D, D x D, D, D
  static std::size_t bytes(int64_t D) { return sizeof(double) * static_cast<std::size_t>(4 * D * D + 2 * D); }
  BlockWork(void* mem, int64_t D) {
    double* m = static_cast<double*>(mem);
    g = m, gt = g + D * D, q = gt + D * D, vs = q + D * D, betas = vs + D * D, rdiag = betas + D;
  }
};

/// Orthonormal factor Q of the QR factorization A = Q R of the n x n row-major matrix w.gt (destroyed),
/// into w.q (row-major), with the sign correction diag(R) > 0 that makes it unique and, for Gaussian A,
/// Haar-distributed (Mezzadri, "How to generate random matrices from the classical compact groups",
/// 2007). Householder reflections in double precision.
void orthonormal_factor(BlockWork& w, int64_t n) {
  double* a = w.gt;
  for (int64_t k = 0; k < n; ++k) {
    double norm2 = 0;
    for (int64_t i = k; i < n; ++i) norm2 += a[i * n + k] * a[i * n + k];
    const double alpha = a[k * n + k] >= 0 ? -std::sqrt(norm2) : std::sqrt(norm2);  // no cancellation in v
    double* v = &w.vs[k * n];
    double vnorm2 = 0;
    for (int64_t i = k; i < n; ++i) {
      v[i] = a[i * n + k] - (i == k ? alpha : 0.0);
      vnorm2 += v[i] * v[i];
    }
    w.rdiag[k] = alpha;
    w.betas[k] = vnorm2 > 0 ? 2.0 / vnorm2 : 0.0;  // 0: the column is already alpha e_1, H_k = I
    for (int64_t j = k; j < n && vnorm2 > 0; ++j) {
      double s = 0;
      for (int64_t i = k; i < n; ++i) s += v[i] * a[i * n + j];
      s *= w.betas[k];
      for (int64_t i = k; i < n; ++i) a[i * n + j] -= s * v[i];
    }
  }
  // Q = H_0 H_1 ... H_{n-1} I, accumulated from the right end; then column k times sign(R_kk).
  double* q = w.q;
  std::fill(q, q + n * n, 0.0);
  for (int64_t i = 0; i < n; ++i) q[i * n + i] = 1.0;
  for (int64_t k = n - 1; k >= 0; --k) {
    if (w.betas[k] == 0) continue;
    const double* v = &w.vs[k * n];
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t i = k; i < n; ++i) s += v[i] * q[i * n + j];
      s *= w.betas[k];
      for (int64_t i = k; i < n; ++i) q[i * n + j] -= s * v[i];
    }
  }
  for (int64_t k = 0; k < n; ++k)
    if (w.rdiag[k] < 0)
      for (int64_t i = 0; i < n; ++i) q[i * n + k] = -q[i * n + k];
}

/// Rows [b * D, b * D + rows) of W: block b of the construction documented in attnkit/linear.h.
void feature_block(const RandomFeaturesProblem& p, int64_t b, BlockWork& w) {
  const int64_t D = p.D, rows = std::min<int64_t>(D, p.m - b * D);
  const uint64_t stream = math::kStreamRandomFeatures + static_cast<uint64_t>(b);
  const double* g = w.g;
  for (int64_t i = 0; i < D * D; ++i) w.g[i] = math::normal(p.seed, stream, static_cast<uint64_t>(i));
  const double sqrt_d = std::sqrt(static_cast<double>(D));
  if (p.orthogonal) {
    // Rows of the block = Gram-Schmidt of G's rows = columns of Q in G^T = Q R.
    for (int64_t i = 0; i < D; ++i)
      for (int64_t j = 0; j < D; ++j) w.gt[j * D + i] = g[i * D + j];
    orthonormal_factor(w, D);
    for (int64_t r = 0; r < rows; ++r) {
      double norm = sqrt_d;
      if (p.scaling == FeatureScaling::Chi) {
        double s = 0;
        for (int64_t d = 0; d < D; ++d) {
          const double z = math::normal(p.seed, stream, static_cast<uint64_t>(D * D + r * D + d));
          s += z * z;
        }
        norm = std::sqrt(s);
      }
      const int64_t row = b * D + r;
      for (int64_t d = 0; d < D; ++d)
        store_float(p.out, p.out_dtype, row * p.out_stride[0] + d * p.out_stride[1], norm * w.q[d * D + r]);
    }
  } else {
    for (int64_t r = 0; r < rows; ++r) {
      double factor = 1.0;
      if (p.scaling == FeatureScaling::SqrtD) {
        double s = 0;
        for (int64_t d = 0; d < D; ++d) s += g[r * D + d] * g[r * D + d];
        factor = s > 0 ? sqrt_d / std::sqrt(s) : 0.0;
      }
      const int64_t row = b * D + r;
      for (int64_t d = 0; d < D; ++d)
        store_float(p.out, p.out_dtype, row * p.out_stride[0] + d * p.out_stride[1], factor * g[r * D + d]);
    }
  }
}

}  // namespace

void random_features(const RandomFeaturesProblem& p) {
  const int64_t blocks = (p.m + p.D - 1) / p.D;
  parallel_with_scratch("random_features", blocks > 1, BlockWork::bytes(p.D), /*zero=*/false, [&](void* mem) {
    BlockWork w(mem, p.D);
    team_for(blocks, mem, [&](int64_t b) { feature_block(p, b, w); });
  });
}

}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
