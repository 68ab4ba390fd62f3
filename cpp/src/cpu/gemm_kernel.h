#pragma once
// Register-blocked small matrix products for the CPU kernels (one source, compiled per ISA like
// everything that includes cpu/simd.h):
//
//   C[m][n] = scale * sum_k A(m, k) * B[k][n]        (Store::Overwrite)
//   C[m][n] += scale * sum_k A(m, k) * B[k][n]       (Store::Accumulate)
//   as Overwrite, and cmax[n] = max(cmax[n], C[0][n], ..., C[M-1][n])   (Store::OverwriteMax: the column
//   maxima in row order, as S::vmax(cmax, C[m]) would give them; the exact kernel's chunk max)
//   C[m][n] = C[m][n] * cmax[n] + scale * sum_k ...   (Store::AccumulateScaled: cmax holds a scale per
//   column, one FMA per stored element; the exact kernel's online-softmax rescale of o^T)
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

enum class Store { Overwrite, Accumulate, OverwriteMax, AccumulateScaled };

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
                           int64_t K, T scale, T* __restrict c, int64_t ldc, T* __restrict cmax) {
    V acc[RR][NVV];
    for (int r = 0; r < RR; ++r)
      for (int v = 0; v < NVV; ++v) acc[r][v] = V{};
    // K = 0 returns here, so the loop below runs at least once: GCC then keeps acc in registers from the
    // zeroing to the stores (for a loop that may not run it zeroed, spilled and reloaded acc on the stack).
    if (K <= 0) return store_block<RR, NVV, kStore>(acc, scale, c, ldc, cmax);
    // Unrolled 4 times (GCC does not unroll it at -O3): the counter, pointer steps and branch cost a quarter
    // as much per k. On Zen 3 (AVX2, 4 x 3 blocks) exact attention ran 1.08-1.14x faster for it
    // (bench/results/history/exact_avx2_s23_1thread.json). Same sums in the same k order: the outputs stayed bitwise
    // equal to the rolled loop's.
#pragma GCC unroll 4
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
    store_block<RR, NVV, kStore>(acc, scale, c, ldc, cmax);
  }

  template <int RR, int NVV, Store kStore>
  static inline void store_block(const V (&acc)[RR][NVV], T scale, T* __restrict c, int64_t ldc, T* __restrict cmax) {
    for (int v = 0; v < NVV; ++v) {
      V mx{};
      if (kStore == Store::OverwriteMax || kStore == Store::AccumulateScaled) mx = S::load(cmax + v * W);
      for (int r = 0; r < RR; ++r) {
        T* dst = c + r * ldc + v * W;
        const V x = acc[r][v] * scale;
        if (kStore == Store::Accumulate)
          S::store(dst, S::load(dst) + x);
        else if (kStore == Store::AccumulateScaled)
          S::store(dst, S::load(dst) * mx + x);
        else
          S::store(dst, x);
        if (kStore == Store::OverwriteMax) mx = S::vmax(mx, x);
      }
      if (kStore == Store::OverwriteMax) S::store(cmax + v * W, mx);
    }
  }

  /// NVV vectors of columns, all M rows in blocks of RL (the last block as tall as it is). The B panel
  /// (K x NVV vectors) stays in L1 while every row block streams past it.
  /// arb != 0: A is packed in row blocks of RL rows (A(m, k) = a[(m / RL) * arb + k * ak + m % RL * am]),
  /// the block of rows m .. m + RL - 1 starting at a + (m / RL) * arb.
  template <int RL, int NVV, Store kStore>
  static inline void panel(int64_t M, const T* a, int64_t am, int64_t ak, const T* b, int64_t ldb, int64_t K, T scale,
                           T* c, int64_t ldc, T* cmax, int64_t arb = 0) {
    const int64_t step = arb ? arb : RL * am;  // A elements from one row block to the next
    int64_t m = 0;
    const T* am0 = a;
    for (; m + RL <= M; m += RL, am0 += step) block<RL, NVV, kStore>(am0, am, ak, b, ldb, K, scale, c + m * ldc, ldc, cmax);
    T* cm = c + m * ldc;
    switch (M - m) {
      case 0: break;
      case 1: block<1, NVV, kStore>(am0, am, ak, b, ldb, K, scale, cm, ldc, cmax); break;
      case 2: block<2, NVV, kStore>(am0, am, ak, b, ldb, K, scale, cm, ldc, cmax); break;
      case 3: block<3, NVV, kStore>(am0, am, ak, b, ldb, K, scale, cm, ldc, cmax); break;
      case 4: block<4, NVV, kStore>(am0, am, ak, b, ldb, K, scale, cm, ldc, cmax); break;
      case 5: block<5, NVV, kStore>(am0, am, ak, b, ldb, K, scale, cm, ldc, cmax); break;
      case 6: block<6, NVV, kStore>(am0, am, ak, b, ldb, K, scale, cm, ldc, cmax); break;
      default: block<7, NVV, kStore>(am0, am, ak, b, ldb, K, scale, cm, ldc, cmax); break;
    }
  }

  /// The whole product: column panels of NV vectors (then one of the remaining whole vectors, then a
  /// scalar tail for N % W), each over all M rows in blocks of RL (<= 8). Every element of C is one
  /// register's sum over k in order, so the blocking never changes the result.
  /// cmax: N column maxima for Store::OverwriteMax, N column scales for Store::AccumulateScaled.
  /// arb: see panel (0: A(m, k) = a[m * am + k * ak]).
  template <int RL, int NV, Store kStore>
  static void gemm(int64_t M, int64_t N, int64_t K, const T* a, int64_t am, int64_t ak, const T* b, int64_t ldb,
                   T* c, int64_t ldc, T scale = T(1), T* cmax = nullptr, int64_t arb = 0) {
    static_assert(RL >= 1 && RL <= 8, "row blocks of 1..8");
    const int64_t Nv = N / W * W;
    int64_t n = 0;
    constexpr bool kCol = kStore == Store::OverwriteMax || kStore == Store::AccumulateScaled;
    auto cm = [cmax](int64_t col) { return kCol ? cmax + col : nullptr; };
    for (; n + NV * W <= Nv; n += NV * W) panel<RL, NV, kStore>(M, a, am, ak, b + n, ldb, K, scale, c + n, ldc, cm(n), arb);
    switch ((Nv - n) / W) {
      case 0: break;
      case 1: panel<RL, 1, kStore>(M, a, am, ak, b + n, ldb, K, scale, c + n, ldc, cm(n), arb); break;
      case 2: panel<RL, (NV > 2 ? 2 : 1), kStore>(M, a, am, ak, b + n, ldb, K, scale, c + n, ldc, cm(n), arb); break;
      default: panel<RL, (NV > 3 ? 3 : 1), kStore>(M, a, am, ak, b + n, ldb, K, scale, c + n, ldc, cm(n), arb); break;
    }
    for (n = Nv; n < N; ++n)  // scalar tail columns
      for (int64_t m = 0; m < M; ++m) {
        T acc = T(0);
        const T* ar = arb ? a + m / RL * arb + m % RL * am : a + m * am;
        for (int64_t k = 0; k < K; ++k) acc += ar[k * ak] * b[k * ldb + n];
        T* dst = c + m * ldc + n;
        const T x = acc * scale;
        *dst = kStore == Store::Accumulate ? *dst + x : kStore == Store::AccumulateScaled ? *dst * cmax[n] + x : x;
        if (kStore == Store::OverwriteMax) cmax[n] = cmax[n] > x ? cmax[n] : x;
      }
  }
};

}  // namespace ATTNKIT_ISA_NAMESPACE
}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
