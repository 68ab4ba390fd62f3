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

namespace attnkit {
namespace detail {
namespace cpu {
namespace {

/// Buffers of one block of `rows` output rows, carved from a thread's scratch (nothing inside the work loop
/// allocates). Everything is D x rows (not D x D): the cost of a block follows the rows it returns.
struct BlockWork {
  double *g, *gt, *q, *vs, *betas, *rdiag;  // D x rows (four), rows, rows
  int64_t n;                                // D * rows
  static std::size_t bytes(int64_t D, int64_t rows) {
    return sizeof(double) * static_cast<std::size_t>(4 * D * rows + 2 * rows);
  }
  BlockWork(void* mem, int64_t D, int64_t rows) : n(D * rows) {
    double* m = static_cast<double*>(mem);
    g = m, gt = g + n, q = gt + n, vs = q + n, betas = vs + n, rdiag = betas + rows;
  }
};

/// First `cols` columns of the orthonormal factor Q of the QR factorization A = Q R of the n x n matrix A
/// whose first `cols` columns are w.gt (n x cols, row-major, destroyed), into w.q (n x cols, row-major),
/// with the sign correction diag(R) > 0 that makes it unique and, for Gaussian A, Haar-distributed
/// (Mezzadri, "How to generate random matrices from the classical compact groups", 2007). Householder
/// reflections in double precision. Column k of Q is H_0 ... H_k e_k and H_k depends only on the first
/// k + 1 columns of A, so the thin factorization gives bit for bit the columns of the full one at
/// O(n * cols^2) instead of O(n^3).
void orthonormal_factor(BlockWork& w, int64_t n, int64_t cols) {
  double* a = w.gt;
  for (int64_t k = 0; k < cols; ++k) {
    double norm2 = 0;
    for (int64_t i = k; i < n; ++i) norm2 += a[i * cols + k] * a[i * cols + k];
    const double alpha = a[k * cols + k] >= 0 ? -std::sqrt(norm2) : std::sqrt(norm2);  // no cancellation in v
    double* v = &w.vs[k * n];
    double vnorm2 = 0;
    for (int64_t i = k; i < n; ++i) {
      v[i] = a[i * cols + k] - (i == k ? alpha : 0.0);
      vnorm2 += v[i] * v[i];
    }
    w.rdiag[k] = alpha;
    w.betas[k] = vnorm2 > 0 ? 2.0 / vnorm2 : 0.0;  // 0: the column is already alpha e_1, H_k = I
    for (int64_t j = k; j < cols && vnorm2 > 0; ++j) {
      double s = 0;
      for (int64_t i = k; i < n; ++i) s += v[i] * a[i * cols + j];
      s *= w.betas[k];
      for (int64_t i = k; i < n; ++i) a[i * cols + j] -= s * v[i];
    }
  }
  // Q = H_0 H_1 ... H_{cols-1} [e_0 .. e_{cols-1}], accumulated from the right end; then column k times
  // sign(R_kk).
  double* q = w.q;
  std::fill(q, q + w.n, 0.0);
  for (int64_t i = 0; i < cols; ++i) q[i * cols + i] = 1.0;
  for (int64_t k = cols - 1; k >= 0; --k) {
    if (w.betas[k] == 0) continue;
    const double* v = &w.vs[k * n];
    for (int64_t j = 0; j < cols; ++j) {
      double s = 0;
      for (int64_t i = k; i < n; ++i) s += v[i] * q[i * cols + j];
      s *= w.betas[k];
      for (int64_t i = k; i < n; ++i) q[i * cols + j] -= s * v[i];
    }
  }
  for (int64_t k = 0; k < cols; ++k)
    if (w.rdiag[k] < 0)
      for (int64_t i = 0; i < n; ++i) q[i * cols + k] = -q[i * cols + k];
}

/// Rows of block b of W (rows [b * D, b * D + rows)): the construction documented in attnkit/linear.h.
/// Only the Gaussian rows the block returns are drawn (row r of G is normals r * D .. r * D + D - 1).
void feature_block(const RandomFeaturesProblem& p, int64_t b, BlockWork& w) {
  const int64_t D = p.D, rows = std::min<int64_t>(D, p.m - b * D);
  const uint64_t stream = math::kStreamRandomFeatures + static_cast<uint64_t>(b);
  const double* g = w.g;
  for (int64_t i = 0; i < rows * D; ++i) w.g[i] = math::normal(p.seed, stream, static_cast<uint64_t>(i));
  const double sqrt_d = std::sqrt(static_cast<double>(D));
  if (p.orthogonal) {
    // Rows of the block = Gram-Schmidt of G's rows = columns of Q in G^T = Q R.
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < D; ++j) w.gt[j * rows + i] = g[i * D + j];
    orthonormal_factor(w, D, rows);
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
        store_float(p.out, p.out_dtype, row * p.out_stride[0] + d * p.out_stride[1], norm * w.q[d * rows + r]);
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
  const int64_t blocks = p.m / p.D + (p.m % p.D != 0);
  const int64_t rows = std::min(p.D, p.m);
  parallel_with_scratch("random_features", blocks > 1, BlockWork::bytes(p.D, rows), /*zero=*/false, [&](void* mem) {
    BlockWork w(mem, p.D, rows);
    team_for(blocks, mem, [&](int64_t b) { feature_block(p, b, w); });
  });
}

}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
