#pragma once
// Register-blocked small matrix products for the CPU kernels (one source, compiled per ISA like
// everything that includes cpu/simd.h):
//
//   C[m][n] = scale * sum_k A(m, k) * B[k][n]        (Store::Overwrite)
//   C[m][n] += scale * sum_k A(m, k) * B[k][n]       (Store::Accumulate)
//
// A is read element by element through two strides, A(m, k) = a[m * am + k * ak] (so a transposed or
// row-major A costs the same: each element is broadcast), B and C by rows of vectors. This is the
// outer-product form every attention kernel uses (QK^T with keys broadcast over query lanes, PV with
// probabilities broadcast over value columns, phi(K)^T V for linear-attention states ...).
//
// Columns: N is covered by blocks of NV vectors, a block of the remaining whole vectors, and a scalar
// tail for N % W (callers that can pad N to a multiple of W avoid the tail).

#include <cstdint>
#include <type_traits>

#include "cpu/simd.h"

namespace attnkit {
namespace detail {
namespace cpu {
inline namespace ATTNKIT_ISA_NAMESPACE {

enum class Store { Overwrite, Accumulate };

/// The B operand of a product from stored rows: rows [j0, j0 + n) of head (b, h) of a [B, H, S, N] view of
/// storage type St, as rows of T. Read in place (ld = the view's row stride) when `direct` says they already
/// are T with unit element stride, else converted into buf with row stride ld = buf_ld (>= N), a vector at a
/// time for unit-stride 16-bit rows (convert_row): the conversion happens once per packed tile.
template <class T, class St, class View>
inline const T* operand_rows(const View& x, int64_t b, int64_t h, int64_t j0, int n, int64_t N, bool direct, T* buf,
                             int64_t buf_ld, int64_t& ld) {
  const St* base = static_cast<const St*>(x.data) + b * x.stride[0] + h * x.stride[1] + j0 * x.stride[2];
  if constexpr (std::is_same<St, T>::value) {
    if (direct) {
      ld = x.stride[2];
      return reinterpret_cast<const T*>(base);
    }
  }
  for (int j = 0; j < n; ++j) convert_row(base + j * x.stride[2], x.stride[3], N, buf + j * buf_ld);
  ld = buf_ld;
  return buf;
}

template <class T, int W>
struct MicroGemm {
  using S = Simd<T, W>;
  using V = typename S::V;

  /// One register block: RR rows of A times NVV vectors of B columns.
  template <int RR, int NVV, Store kStore>
  static inline void block(const T* __restrict a, int64_t am, int64_t ak, const T* __restrict b, int64_t ldb,
                           int64_t K, T scale, T* __restrict c, int64_t ldc) {
    V acc[RR][NVV];
    for (int r = 0; r < RR; ++r)
      for (int v = 0; v < NVV; ++v) acc[r][v] = V{};
    for (int64_t k = 0; k < K; ++k) {
      V bv[NVV];
      for (int v = 0; v < NVV; ++v) bv[v] = S::load(b + k * ldb + v * W);
      for (int r = 0; r < RR; ++r) {
        // x - 0 (not 0 + x, which must turn -0 into +0) lets the compiler broadcast straight from memory
        // (one vbroadcastss) instead of a scalar load, an add and a register broadcast.
        const V ab = a[r * am + k * ak] - V{};
        for (int v = 0; v < NVV; ++v) acc[r][v] += ab * bv[v];
      }
    }
    for (int r = 0; r < RR; ++r)
      for (int v = 0; v < NVV; ++v) {
        T* dst = c + r * ldc + v * W;
        if (kStore == Store::Accumulate)
          S::store(dst, S::load(dst) + acc[r][v] * scale);
        else
          S::store(dst, acc[r][v] * scale);
      }
  }

  /// NVV vectors of columns, all M rows in blocks of RL (the last block as tall as it is). The B panel
  /// (K x NVV vectors) stays in L1 while every row block streams past it.
  template <int RL, int NVV, Store kStore>
  static inline void panel(int64_t M, const T* a, int64_t am, int64_t ak, const T* b, int64_t ldb, int64_t K, T scale,
                           T* c, int64_t ldc) {
    int64_t m = 0;
    for (; m + RL <= M; m += RL) block<RL, NVV, kStore>(a + m * am, am, ak, b, ldb, K, scale, c + m * ldc, ldc);
    const T* am0 = a + m * am;
    T* cm = c + m * ldc;
    switch (M - m) {
      case 0: break;
      case 1: block<1, NVV, kStore>(am0, am, ak, b, ldb, K, scale, cm, ldc); break;
      case 2: block<2, NVV, kStore>(am0, am, ak, b, ldb, K, scale, cm, ldc); break;
      case 3: block<3, NVV, kStore>(am0, am, ak, b, ldb, K, scale, cm, ldc); break;
      case 4: block<4, NVV, kStore>(am0, am, ak, b, ldb, K, scale, cm, ldc); break;
      case 5: block<5, NVV, kStore>(am0, am, ak, b, ldb, K, scale, cm, ldc); break;
      case 6: block<6, NVV, kStore>(am0, am, ak, b, ldb, K, scale, cm, ldc); break;
      default: block<7, NVV, kStore>(am0, am, ak, b, ldb, K, scale, cm, ldc); break;
    }
  }

  /// The whole product: column panels of NV vectors (then one of the remaining whole vectors, then a
  /// scalar tail for N % W), each over all M rows in blocks of RL (<= 8). Every element of C is one
  /// register's sum over k in order, so the blocking never changes the result.
  template <int RL, int NV, Store kStore>
  static void gemm(int64_t M, int64_t N, int64_t K, const T* a, int64_t am, int64_t ak, const T* b, int64_t ldb,
                   T* c, int64_t ldc, T scale = T(1)) {
    static_assert(RL >= 1 && RL <= 8, "row blocks of 1..8");
    const int64_t Nv = N / W * W;
    int64_t n = 0;
    for (; n + NV * W <= Nv; n += NV * W) panel<RL, NV, kStore>(M, a, am, ak, b + n, ldb, K, scale, c + n, ldc);
    switch ((Nv - n) / W) {
      case 0: break;
      case 1: panel<RL, 1, kStore>(M, a, am, ak, b + n, ldb, K, scale, c + n, ldc); break;
      case 2: panel<RL, (NV > 2 ? 2 : 1), kStore>(M, a, am, ak, b + n, ldb, K, scale, c + n, ldc); break;
      default: panel<RL, (NV > 3 ? 3 : 1), kStore>(M, a, am, ak, b + n, ldb, K, scale, c + n, ldc); break;
    }
    for (n = Nv; n < N; ++n)  // scalar tail columns
      for (int64_t m = 0; m < M; ++m) {
        T acc = T(0);
        for (int64_t k = 0; k < K; ++k) acc += a[m * am + k * ak] * b[k * ldb + n];
        T* dst = c + m * ldc + n;
        *dst = kStore == Store::Accumulate ? *dst + acc * scale : acc * scale;
      }
  }
};

}  // namespace ATTNKIT_ISA_NAMESPACE
}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
