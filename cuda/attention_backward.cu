// Gradients of exact and block-sparse attention on the GPU: a SIMT kernel (FlashAttention-2, Dao 2023,
// Algorithm 2) with the semantics of cpu/attention_bwd_kernel.h, every formula from math/attention_grad.h
// and every score term from attention_terms.cuh (the forward kernels' ScoreTerms, row_keys, valid_keys).
//
// Three kernels on the caller's stream, every value summed by one thread in a fixed order (nothing depends
// on the launch configuration, no atomics):
//   delta_kernel  one thread per query row: delta_i = dout_i . out_i; zeroes the row of dbias (the dq
//                 kernel writes the elements it visits, as the CPU's prologue / main pass);
//   dkdv_kernel   one block per (b, kv head, tile of kBK keys): for every query head of the GQA group and
//                 every chunk of kBQ rows that can see the tile, the kBQ x kBK probabilities P and
//                 dS = dL/dx (score_tile), then dV_tile += P^T dO and dK_tile += scale dS^T Q (chunks in
//                 order, rows in order inside a chunk); dK / dV are summed over the group's heads;
//   dq_kernel     one block per (b, query head, chunk of kBQ rows): the same tiles for the keys the chunk's
//                 rows can see, dQ_chunk += scale dS K_tile (tiles in key order), and dbias = dL/ds.
// Both kernels recompute P from lse with the same device function (score_tile), so they see the same P
// and dS bits; its dot products q_i . k_j and dout_i . v_j stage both sides in shared memory by slabs of
// kSlab dimensions (tile_dot), each pair summed by one thread over d in order.
// Accumulators live in workspace of A ([B Hkv Sk][D + Dv] and [B Hq Sq][D]: O(S), never S x S), each
// element owned by the one block that writes it; the block finally rounds its rows to the output dtype.
//
// Masks: a pair (i, j) takes part when j lies in row i's key range (row_keys: causal, window, key_lengths)
// and, block-sparse, when key block j / bk is in query block i / bq's CSR row (binary search); elsewhere
// P = dS = 0. A row without keys (lse = -inf) gets P = 0 (math::backward_prob_arg), so zero gradients.
// Chunks whose rows see no key of a tile are skipped (key ranges grow with the row, as the CPU relies on).
//
// float16 / bfloat16 problems that attention_backward_mma.cu takes (backward_mma_supported: D = Dv in
// {64, 128}, no layout or explicit ranges; mask / bias / softcap / ALiBi only under a second gate) run its
// tensor-core kernels after delta_kernel instead (gate "attention_backward_mma"); ATTNKIT_CUDA_BWD_SIMT=1 forces
// these SIMT kernels.
#include <algorithm>
#include <cstdint>

#include "attnkit/math/attention_grad.h"
#include "cpp/src/backend.h"
#include "cuda/attention_terms.cuh"
#include "cuda/workspace.cuh"

namespace attnkit {
namespace detail {
namespace cuda {

// attention_backward_mma.cu: whether the tensor-core kernels take the problem (float16 / bfloat16, D = Dv
// in {64, 128}, no layout, rows contiguous; see there), and the launch of its dK/dV and dQ kernels given
// delta ([B Hq Sq] floats, from delta_kernel, which also zeroes dbias).
bool backward_mma_supported(const AttnBwdProblem& bp);
void run_backward_mma(const AttnBwdProblem& bp, const float* delta, cudaStream_t stream);

namespace {

constexpr int kThreads = 256;
constexpr int kBQ = 32;  // query rows of a score tile
constexpr int kBK = 32;  // keys of a score tile (kBQ * kBK = 4 pairs per thread)
constexpr int kSlab = 32;  // dimensions per shared-memory slab of the dot products
static_assert(kBQ == kBK, "tile_dot loads both sides with one loop");

__host__ __device__ __forceinline__ int64_t cdiv(int64_t n, int64_t d) { return (n + d - 1) / d; }
__host__ __device__ __forceinline__ int64_t imin64(int64_t a, int64_t b) { return a < b ? a : b; }
__host__ __device__ __forceinline__ int64_t imax64(int64_t a, int64_t b) { return a > b ? a : b; }

/// The backward problem plus the workspace pointers, passed by value to every kernel.
struct BwdArgs {
  AttnBwdProblem bp;
  int64_t G;     // query heads per kv head
  void* delta;   // [B Hq Sq] of A
  void* kv_acc;  // [B Hkv Sk][D + Dv] of A: dK then dV of each key
  void* dq_acc;  // [B Hq Sq][D] of A
};

template <class T, class A>
__device__ __forceinline__ A elem(const ViewN<4>& x, int64_t b, int64_t h, int64_t i, int64_t d) {
  return to_acc<A>(static_cast<const T*>(x.data)[b * x.stride[0] + h * x.stride[1] + i * x.stride[2] + d * x.stride[3]]);
}

/// Whether key j of query row i (query head h) lies in an allowed block of the block-sparse layout.
__device__ __forceinline__ bool sparse_allowed(const AttnProblem& p, int64_t h, int64_t i, int64_t j) {
  const LayoutView& L = p.layout;
  const int64_t r = (L.heads > 1 ? h : 0) * L.nqb + i / L.bq;
  const int64_t kb = j / L.bk;
  int64_t lo = L.row_ptr[r], hi = L.row_ptr[r + 1];
  while (lo < hi) {  // first entry >= kb in the sorted CSR row
    const int64_t mid = (lo + hi) / 2;
    if (L.col_idx[mid] < kb)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < L.row_ptr[r + 1] && L.col_idx[lo] == kb;
}

/// out[ii][jj] = x_i . y_j (x: rows [i0, i0 + n) of head (b, h) of xv; y: rows [j0, j0 + jn) of kv head
/// (b, hkv) of yv) over dimensions d = 0 .. Dx - 1 in order, both sides staged in shared memory by slabs of
/// kSlab dimensions (coalesced loads). Each pair is summed by one thread in place in out. Every thread must
/// call it; ends with a barrier.
template <class T, class A>
__device__ void tile_dot(const ViewN<4>& xv, const ViewN<4>& yv, int64_t Dx, int64_t b, int64_t h, int64_t hkv,
                         int64_t i0, int64_t n, int64_t j0, int64_t jn, A (*sX)[kSlab + 1], A (*sY)[kSlab + 1],
                         A (*out)[kBK]) {
  const int tid = static_cast<int>(threadIdx.x), nt = static_cast<int>(blockDim.x);
  for (int e = tid; e < kBQ * kBK; e += nt) out[e / kBK][e % kBK] = A(0);
  for (int64_t d0 = 0; d0 < Dx; d0 += kSlab) {
    const int w = static_cast<int>(imin64(kSlab, Dx - d0));
    for (int x = tid; x < kBQ * kSlab; x += nt) {  // kBQ == kBK rows on both sides
      const int r = x / kSlab, dd = x % kSlab;
      if (dd < w && r < n) sX[r][dd] = elem<T, A>(xv, b, h, i0 + r, d0 + dd);
      if (dd < w && r < jn) sY[r][dd] = elem<T, A>(yv, b, hkv, j0 + r, d0 + dd);
    }
    __syncthreads();
    for (int e = tid; e < kBQ * kBK; e += nt) {
      const int ii = e / kBK, jj = e % kBK;
      if (ii >= n || jj >= jn) continue;
      A s = out[ii][jj];
      for (int dd = 0; dd < w; ++dd) s += sX[ii][dd] * sY[jj][dd];
      out[ii][jj] = s;
    }
    __syncthreads();  // sX / sY are reloaded by the next slab
  }
}

/// Shared memory of a block: the tile's P and dS, and the slabs of tile_dot.
template <class A>
struct TileSmem {
  A P[kBQ][kBK];
  A DS[kBQ][kBK];
  A X[kBQ][kSlab + 1];
  A Y[kBK][kSlab + 1];
};

/// P and dS (= dL/dx, after the soft-cap's derivative) of rows [i0, i0 + n) of query head (b, h) against
/// keys [j0, j0 + jn) into sm.P / sm.DS (zero outside the n x jn pairs and for pairs that do not take
/// part). dbias_out: write dL/ds of every pair that takes part to dbias (the dq kernel only). The dot
/// products come first (q.k into P, dout.v into DS), then each pair's thread turns them into P and dS in
/// place. Every thread must call it; ends with a barrier.
template <class T, class A>
__device__ void score_tile(const BwdArgs& a, int64_t b, int64_t h, int64_t i0, int64_t n, int64_t j0, int64_t jn,
                           int64_t klen, bool dbias_out, TileSmem<A>& sm) {
  const AttnBwdProblem& bp = a.bp;
  const AttnProblem& p = bp.fwd;
  const int64_t hkv = h / a.G;
  tile_dot<T, A>(p.q, p.k, p.D, b, h, hkv, i0, n, j0, jn, sm.X, sm.Y, sm.P);
  tile_dot<T, A>(bp.dout, p.v, p.Dv, b, h, hkv, i0, n, j0, jn, sm.X, sm.Y, sm.DS);
  const ScoreTerms<A> terms(p);
  const A slope = alibi_slope<A>(p, b, h);
  const A* delta = static_cast<const A*>(a.delta);
  for (int e = static_cast<int>(threadIdx.x); e < kBQ * kBK; e += static_cast<int>(blockDim.x)) {
    const int ii = e / kBK, jj = e % kBK;
    A pr = A(0), ds = A(0);
    if (ii < n && jj < jn) {
      const int64_t i = i0 + ii, j = j0 + jj;
      const math::KeyRange kr = row_keys(p, b, h, i, klen);
      if (j >= kr.lo && j < kr.hi && (!p.sparse || sparse_allowed(p, h, i, j))) {
        const A dot = sm.P[ii][jj], dp = sm.DS[ii][jj];
        const A x = terms(p, b, h, i, j, dot, slope);
        const A lse = static_cast<const A*>(p.lse)[b * p.lse_stride[0] + h * p.lse_stride[1] + i * p.lse_stride[2]];
        pr = kexp(math::backward_prob_arg(x, lse));
        ds = math::softmax_grad(pr, dp, delta[(b * p.Hq + h) * p.Sq + i]);
        if (dbias_out && bp.dbias)
          static_cast<A*>(bp.dbias)[b * bp.dbias_stride[0] + h * bp.dbias_stride[1] + i * bp.dbias_stride[2] +
                                    j * bp.dbias_stride[3]] = ds;
        if (terms.softcap) ds *= math::softcap_grad<A, A>(tanh(dot * terms.scale * terms.cap_in));
      }
    }
    sm.P[ii][jj] = pr;
    sm.DS[ii][jj] = ds;
  }
  __syncthreads();
}

/// delta of every query row, and the row of dbias zeroed.
template <class T>
__global__ void delta_kernel(const BwdArgs a) {
  using A = acc_t<T>;
  const AttnBwdProblem& bp = a.bp;
  const AttnProblem& p = bp.fwd;
  const int64_t rows = p.B * p.Hq * p.Sq;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < rows; r += step) {
    const int64_t i = r % p.Sq, bh = r / p.Sq, h = bh % p.Hq, b = bh / p.Hq;
    const T* o = static_cast<const T*>(p.out) + b * p.out_stride[0] + h * p.out_stride[1] + i * p.out_stride[2];
    A acc = A(0);
    for (int64_t d = 0; d < p.Dv; ++d) acc += elem<T, A>(bp.dout, b, h, i, d) * to_acc<A>(o[d * p.out_stride[3]]);
    static_cast<A*>(a.delta)[r] = acc;
    if (bp.dbias) {
      A* db = static_cast<A*>(bp.dbias) + b * bp.dbias_stride[0] + h * bp.dbias_stride[1] + i * bp.dbias_stride[2];
      for (int64_t j = 0; j < p.Sk; ++j) db[j * bp.dbias_stride[3]] = A(0);
    }
  }
}

/// dK and dV of key tile (b, kv head, tile), summed over the query heads of the GQA group.
template <class T>
__global__ void dkdv_kernel(const BwdArgs a) {
  using A = acc_t<T>;
  __shared__ TileSmem<A> sm;
  const AttnBwdProblem& bp = a.bp;
  const AttnProblem& p = bp.fwd;
  const int64_t G = a.G, D = p.D, Dv = p.Dv, E = D + Dv, nkt = cdiv(p.Sk, kBK);
  const A scale = static_cast<A>(p.scale);
  for (int64_t blk = blockIdx.x; blk < p.B * p.Hkv * nkt; blk += gridDim.x) {
    const int64_t item = blk / nkt, b = item / p.Hkv, hkv = item % p.Hkv, j0 = (blk % nkt) * kBK;
    const int64_t klen = valid_keys(p, b);
    const int64_t jt = imin64(kBK, p.Sk - j0);                        // keys of the tile
    const int64_t jn = imax64(0, imin64(jt, imin64(klen, p.Sk) - j0));  // ... below key_lengths
    A* acc = static_cast<A*>(a.kv_acc) + (item * p.Sk + j0) * E;
    for (int64_t x = threadIdx.x; x < jt * E; x += blockDim.x) acc[x] = A(0);
    __syncthreads();
    for (int64_t g = 0; g < G && jn > 0; ++g) {
      const int64_t h = hkv * G + g;
      for (int64_t i0 = 0; i0 < p.Sq; i0 += kBQ) {
        const int64_t n = imin64(kBQ, p.Sq - i0);
        if (!p.row_lo) {  // key ranges grow with the row: the chunk sees keys in [lo(i0), hi(i0 + n - 1))
          const math::KeyRange first = row_keys(p, b, h, i0, klen), last = row_keys(p, b, h, i0 + n - 1, klen);
          if (last.hi <= j0 || first.lo >= j0 + jn || last.hi <= first.lo) continue;
        }
        score_tile<T, A>(a, b, h, i0, n, j0, jn, klen, false, sm);
        for (int64_t x = threadIdx.x; x < jn * E; x += blockDim.x) {
          const int64_t jj = x / E, d = x % E;
          A s = A(0);
          if (d < D) {
            for (int64_t ii = 0; ii < n; ++ii) s += sm.DS[ii][jj] * elem<T, A>(p.q, b, h, i0 + ii, d);
            acc[x] += scale * s;
          } else {
            for (int64_t ii = 0; ii < n; ++ii) s += sm.P[ii][jj] * elem<T, A>(bp.dout, b, h, i0 + ii, d - D);
            acc[x] += s;
          }
        }
        __syncthreads();  // sm is rewritten by the next chunk
      }
    }
    for (int64_t x = threadIdx.x; x < jt * E; x += blockDim.x) {
      const int64_t j = j0 + x / E, d = x % E;
      if (d < D)
        static_cast<T*>(bp.dk)[b * bp.dk_stride[0] + hkv * bp.dk_stride[1] + j * bp.dk_stride[2] +
                               d * bp.dk_stride[3]] = from_acc<T, A>(acc[x]);
      else
        static_cast<T*>(bp.dv)[b * bp.dv_stride[0] + hkv * bp.dv_stride[1] + j * bp.dv_stride[2] +
                               (d - D) * bp.dv_stride[3]] = from_acc<T, A>(acc[x]);
    }
    __syncthreads();  // acc is this block's own, but the next tile's zeroing must not pass a slow thread
  }
}

/// dQ of query chunk (b, query head, chunk), and dbias of its rows.
template <class T>
__global__ void dq_kernel(const BwdArgs a) {
  using A = acc_t<T>;
  __shared__ TileSmem<A> sm;
  const AttnBwdProblem& bp = a.bp;
  const AttnProblem& p = bp.fwd;
  const int64_t D = p.D, nqt = cdiv(p.Sq, kBQ);
  const A scale = static_cast<A>(p.scale);
  for (int64_t blk = blockIdx.x; blk < p.B * p.Hq * nqt; blk += gridDim.x) {
    const int64_t bh = blk / nqt, b = bh / p.Hq, h = bh % p.Hq, hkv = h / a.G, i0 = (blk % nqt) * kBQ;
    const int64_t n = imin64(kBQ, p.Sq - i0);
    const int64_t klen = valid_keys(p, b), kend = imin64(klen, p.Sk);
    int64_t lo = 0, hi = kend;
    if (!p.row_lo) {
      lo = row_keys(p, b, h, i0, klen).lo;
      hi = imin64(hi, row_keys(p, b, h, i0 + n - 1, klen).hi);
    }
    A* acc = static_cast<A*>(a.dq_acc) + (bh * p.Sq + i0) * D;
    for (int64_t x = threadIdx.x; x < n * D; x += blockDim.x) acc[x] = A(0);
    __syncthreads();
    for (int64_t j0 = imax64(lo, 0) / kBK * kBK; j0 < hi; j0 += kBK) {
      const int64_t jn = imin64(kBK, kend - j0);
      score_tile<T, A>(a, b, h, i0, n, j0, jn, klen, true, sm);
      for (int64_t x = threadIdx.x; x < n * D; x += blockDim.x) {
        const int64_t ii = x / D, d = x % D;
        A s = A(0);
        for (int64_t jj = 0; jj < jn; ++jj) s += sm.DS[ii][jj] * elem<T, A>(p.k, b, hkv, j0 + jj, d);
        acc[x] += scale * s;
      }
      __syncthreads();  // sm is rewritten by the next tile
    }
    for (int64_t x = threadIdx.x; x < n * D; x += blockDim.x) {
      const int64_t i = i0 + x / D, d = x % D;
      static_cast<T*>(bp.dq)[b * bp.dq_stride[0] + h * bp.dq_stride[1] + i * bp.dq_stride[2] + d * bp.dq_stride[3]] =
          from_acc<T, A>(acc[x]);
    }
    __syncthreads();
  }
}

template <class T>
void run_backward(const AttnBwdProblem& bp, cudaStream_t stream) {
  using A = acc_t<T>;
  const AttnProblem& p = bp.fwd;
  const int64_t rows = p.B * p.Hq * p.Sq, keys = p.B * p.Hkv * p.Sk;
  if constexpr (sizeof(T) == 2) {
    // The tensor-core kernels (attention_backward_mma.cu), while not verified on a GPU only under
    // ATTNKIT_CUDA_UNVERIFIED=1; they need delta only.
    if (has_kernel("attention_backward_mma") && backward_mma_supported(bp)) {
      Workspace ws(sizeof(float) * static_cast<std::size_t>(rows), stream);
      BwdArgs a{};
      a.bp = bp;
      a.G = p.group();
      a.delta = ws.as<float>();
      if (rows > 0) {
        delta_kernel<T><<<blocks_for(rows, kThreads), kThreads, 0, stream>>>(a);
        ATTNKIT_CUDA_CHECK_LAUNCH();
      }
      run_backward_mma(bp, ws.as<float>(), stream);
      return;
    }
  }
  const int64_t n_delta = rows, n_kv = keys * (p.D + p.Dv), n_dq = rows * p.D;
  Workspace ws(sizeof(A) * static_cast<std::size_t>(n_delta + n_kv + n_dq), stream);
  BwdArgs a{};
  a.bp = bp;
  a.G = p.group();
  a.delta = ws.as<A>();
  a.kv_acc = ws.as<A>() + n_delta;
  a.dq_acc = ws.as<A>() + n_delta + n_kv;
  auto grid = [](int64_t blocks) { return static_cast<unsigned>(std::min<int64_t>(blocks, int64_t{1} << 20)); };
  if (rows > 0) {
    delta_kernel<T><<<blocks_for(rows, kThreads), kThreads, 0, stream>>>(a);
    ATTNKIT_CUDA_CHECK_LAUNCH();
  }
  if (keys > 0) {
    dkdv_kernel<T><<<grid(p.B * p.Hkv * cdiv(p.Sk, kBK)), kThreads, 0, stream>>>(a);
    ATTNKIT_CUDA_CHECK_LAUNCH();
  }
  if (rows > 0) {
    dq_kernel<T><<<grid(p.B * p.Hq * cdiv(p.Sq, kBQ)), kThreads, 0, stream>>>(a);
    ATTNKIT_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace

void attention_backward(const AttnBwdProblem& p) {
  require_device(p.fwd.device_index);
  DeviceGuard g(p.fwd.device_index);
  const cudaStream_t stream = as_stream(p.fwd.stream);
  dispatch_float(p.fwd.dtype, [&](auto tag) { run_backward<decltype(tag)>(p, stream); });
}

// linear_attention_backward (linear attention and Performer): linear_backward.cu.

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
